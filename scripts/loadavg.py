# loadavg.py - report the system load averages and uptime, read from /proc.
#
# Argument: "[SAMPLES [INTERVAL [THRESHOLD]]]", whitespace-separated, all optional:
#   SAMPLES    how many samples to take (default 1; 0 means until the run is aborted)
#   INTERVAL   seconds between samples (default 5)
#   THRESHOLD  1-minute load average above which a sample is sent as an event (533),
#              which makes the agent emit smScriptResult (default: the number of CPUs)
# Every sample is an intermediate result (532) such as
#   "load1=0.52 load5=0.58 load15=0.61 running=2/311 uptime=86400"
# and the last sample is the run's result. A malformed argument ends the run with
# invalidArgument. Works under the `restricted` profile (it only reads files).
import os
import time

import smx


def parse_argument(text):
    words = text.split()
    if len(words) > 3:
        raise smx.ArgumentError("expected [SAMPLES [INTERVAL [THRESHOLD]]], got %r" % text)
    try:
        samples = int(words[0]) if len(words) > 0 else 1
        interval = float(words[1]) if len(words) > 1 else 5.0
        threshold = float(words[2]) if len(words) > 2 else float(os.cpu_count() or 1)
    except ValueError as e:
        raise smx.ArgumentError("bad number in %r: %s" % (text, e)) from None
    if samples < 0 or interval < 0:
        raise smx.ArgumentError("SAMPLES and INTERVAL must not be negative")
    return samples, interval, threshold


def sample():
    with open("/proc/loadavg") as f:
        load1, load5, load15, running = f.read().split()[:4]
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return float(load1), "load1=%s load5=%s load15=%s running=%s uptime=%d" % (
        load1, load5, load15, running, uptime)


samples, interval, threshold = parse_argument(smx.argument_text)
taken = 0
while samples == 0 or taken < samples:
    if taken:
        time.sleep(interval)    # interruptible: abort and suspend take effect here
    load1, text = sample()
    if load1 > threshold:
        smx.event(text + " above=%g" % threshold)
    else:
        smx.result(text)
    taken += 1
