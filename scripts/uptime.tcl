# uptime.tcl -- report the host's uptime and load averages (Tcl, smx runtime "tcl").
#
# Profile:  trusted. It reads /proc/uptime and /proc/loadavg with `open`, which a safe
#           interpreter (profiles safe and restricted) does not have: there it ends with
#           securityViolation.
# Argument: none. A non-empty argument is rejected (invalidArgument).
# Result:   one line, e.g. "up 3d 04:12:09, load 0.08 0.12 0.10, 2/311 tasks".

if {$argv ne ""} {
    smx invalid-argument "uptime.tcl takes no argument (got \"$argv\")"
}

proc slurp {path} {
    set f [open $path r]
    try {
        return [string trim [read $f]]
    } finally {
        close $f
    }
}

set secs [expr {int([lindex [slurp /proc/uptime] 0])}]
lassign [slurp /proc/loadavg] l1 l5 l15 tasks

set days [expr {$secs / 86400}]
set hms [format %02d:%02d:%02d [expr {$secs % 86400 / 3600}] [expr {$secs % 3600 / 60}] \
    [expr {$secs % 60}]]
set up [expr {$days > 0 ? "${days}d $hms" : $hms}]

# The script's return value is its result (a 532 sent before the run terminates).
return "up $up, load $l1 $l5 $l15, $tasks tasks"
