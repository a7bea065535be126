# watchfile.py - watch a file and report every change as an event (533).
#
# Argument: "PATH [CHANGES [INTERVAL]]" (shell-style quoting, for paths with spaces):
#   PATH      the file to watch
#   CHANGES   end normally after this many changes (default 0: run until aborted)
#   INTERVAL  seconds between checks (default 1)
# A change is the file appearing, disappearing, or getting another size, mtime or inode.
# Each event reads like "modified /etc/hosts size=231 mtime=1700000000.0"; the first
# intermediate result (532) reports the initial state. The last event is the run's result.
# A missing or malformed argument ends the run with invalidArgument.
# Works under the `restricted` profile (it only calls os.stat).
import os
import shlex
import time

import smx

try:
    words = shlex.split(smx.argument_text)
    path = words[0]
    changes = int(words[1]) if len(words) > 1 else 0
    interval = float(words[2]) if len(words) > 2 else 1.0
    if len(words) > 3 or changes < 0 or interval <= 0:
        raise ValueError("too many words or a negative number")
except (ValueError, IndexError) as e:
    raise smx.ArgumentError("expected PATH [CHANGES [INTERVAL]], got %r (%s)"
                            % (smx.argument_text, e)) from None


def state():
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime, st.st_ino


def describe(what, st):
    if st is None:
        return "%s %s" % (what, path)
    return "%s %s size=%d mtime=%.1f" % (what, path, st[0], st[1])


last = state()
smx.result(describe("watching", last) if last else describe("watching (missing)", None))
seen = 0
while changes == 0 or seen < changes:
    time.sleep(interval)    # interruptible: abort and suspend take effect here
    now = state()
    if now == last:
        continue
    what = "created" if last is None else "deleted" if now is None else "modified"
    smx.event(describe(what, now))
    last = now
    seen += 1
