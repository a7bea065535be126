# countdown.tcl -- count down from N, one intermediate result per second, then an event.
#
# Profile:  any; written for the safe profile (no file or network access).
# Argument: N, a whole number from 1 to 3600. Anything else ends the run with
#           invalidArgument.
# Results:  "N", "N-1", ... "1" as intermediate results (532) one second apart, then
#           "countdown from N finished" as a result that triggers an event (533,
#           smScriptResult), which is also the run's final result.
#
# `after 1000` sleeps in a way the runtime can interrupt, so suspend, resume and abort
# take effect during the wait.

set n [string trim $argv]
if {![string is digit -strict $n] || [scan $n %d] < 1 || [scan $n %d] > 3600} {
    smx invalid-argument "expected a whole number from 1 to 3600, got \"$argv\""
}
set n [scan $n %d]

for {set i $n} {$i > 0} {incr i -1} {
    smx result $i
    after 1000
}
smx event "countdown from $n finished"
