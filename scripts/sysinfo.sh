#!/bin/sh
# sysinfo.sh: report who and where we are, uptime and load, for the exec runtime.
#
# Argument ($1, also on stdin): how many load samples to take, one per second (default 3).
# Each sample is an intermediate result (532); a load above the number of CPUs is reported
# as an event (533, which asks the agent for an smScriptResult notification).
# The final result (stdout) is a one-line summary.
set -eu
samples=${1:-3}
case $samples in
    ''|*[!0-9]*) echo "argument must be a number of samples, got '$samples'" >&2; exit 64 ;;
esac
cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
up=$(cut -d' ' -f1 /proc/uptime)
i=0
while [ "$i" -lt "$samples" ]; do
    load=$(cut -d' ' -f1 /proc/loadavg)
    echo "result sample $((i + 1))/$samples load $load" >&3
    if [ "$(echo "$load $cpus" | awk '{print ($1 > $2)}')" = 1 ]; then
        echo "event load $load exceeds $cpus CPUs" >&3
    fi
    i=$((i + 1))
    [ "$i" -lt "$samples" ] && sleep 1
done
echo "host $(uname -n) up ${up}s load $(cut -d' ' -f1-3 /proc/loadavg) cpus $cpus user $(id -un)"
