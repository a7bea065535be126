# conform.tcl -- the conformance script of docs/writing-a-runtime.md, section 4.
#
# Argument: empty  -> runs until it is aborted (a loop of short, interruptible sleeps).
#           other  -> sends the Argument back octet for octet as a 532 result and ends
#                     normally (noError).
# Profile: any (safe, restricted, trusted); it needs no file or network access.

set arg [smx argument]
if {$arg eq ""} {
    while 1 {
        after 50
    }
}
smx result -binary $arg
return
