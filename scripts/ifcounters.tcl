# ifcounters.tcl -- summarise the counters of one network interface from /proc/net/dev.
#
# Profile:  trusted (reads /proc/net/dev with `open`; the safe and restricted profiles
#           have no file access and end with securityViolation).
# Argument: the interface name, e.g. "eth0" or "lo". An empty or unknown name ends the run
#           with invalidArgument; its error text lists the interfaces that exist.
# Result:   "eth0 rx 123456 bytes 789 packets 0 errs 0 drop, tx ..." as one line.

set f [open /proc/net/dev r]
set lines [split [string trim [read $f]] \n]
close $f

# Two header lines, then "  name: rx_bytes rx_packets rx_errs rx_drop ... tx_bytes ...".
set counters [dict create]
foreach line [lrange $lines 2 end] {
    if {[regexp {^\s*([^:\s]+):\s*(.*)$} $line -> name rest]} {
        dict set counters $name $rest
    }
}

set ifname [string trim $argv]
if {$ifname eq "" || ![dict exists $counters $ifname]} {
    smx invalid-argument "unknown interface \"$ifname\"; have: [lsort [dict keys $counters]]"
}

lassign [dict get $counters $ifname] rxb rxp rxe rxd - - - - txb txp txe txd
return [format "%s rx %s bytes %s packets %s errs %s drop, tx %s bytes %s packets %s errs %s drop" \
    $ifname $rxb $rxp $rxe $rxd $txb $txp $txe $txd]
