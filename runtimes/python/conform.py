# Conformance script for `smx conform --script runtimes/python/conform.py -- python3 runtimes/python/smx_runtime.py`
# (docs/writing-a-runtime.md section 4).
#
# Argument handling:
#   empty Argument      run until aborted: a loop of short, interruptible sleeps
#   non-empty Argument  send it back, octet for octet, as a 532 result and end normally (noError)
import time

import smx

if smx.argument:
    smx.result(smx.argument)
else:
    while True:
        time.sleep(0.1)
