#!/usr/bin/env tclsh
# smx_runtime.tcl -- SMX/1.1 (RFC 3179) runtime system for Tcl 8.6 scripts.
#
# Started by the smx host (see docs/writing-a-runtime.md). It reads SMX commands from stdin
# (or from a TCP connection when SMX_TRANSPORT=tcp) and writes replies and notifications to
# stdout (or the connection). Every run executes in its own child interpreter: a safe one
# (`interp create -safe`) for the profiles `safe` and `restricted`, a full one for `trusted`.
#
# tclsh has no threads here, so one script executes at a time (threading = "single"). The
# master stays responsive while a script runs: a command-count limit on the child calls back
# into the master every 1000 commands, and the child's `after <ms>` sleep and its event
# loop (`vwait`, `update`) poll the SMX channel as well. `suspend` parks the script inside
# that callback (a blocking read of the SMX channel, so it uses no CPU), `abort` cancels the
# child with `interp cancel -unwind`.
#
# See runtimes/tcl/README.md for the script API, the profiles and the exit code mapping.

package require Tcl 8.6

namespace eval ::smx {
    variable Version   SMX/1.1
    variable Transport pipe
    variable in        ""      ;# the channel SMX commands arrive on
    variable out       ""      ;# the channel SMX replies and notifications go to
    variable cookie    ""      ;# the TCP authenticator, upper-case hex
    variable stdioMoved 0      ;# 1 when SMX is not on fds 0/1 (TCP, or moved off in pipe mode)
    variable shutting  0
    variable skipping  0       ;# 1 while dropping the rest of an overlong input line
    variable Outbox    ""      ;# messages not yet written (see Send)

    variable Step       1000   ;# child commands between two polls of the SMX channel
    variable SleepSlice 20     ;# ms; granularity of the child's interruptible `after ms`
    variable MaxResult  65535  ;# octets of a 532/533 value (smRunResult keeps 65535)
    variable MaxError   4096   ;# octets of a 536/537 text (smRunError keeps 255)
    variable MaxLine    1048576

    variable U64Max 18446744073709551615

    # Run table: R(<run>,<field>); Order lists the known RunIds oldest first (the first one
    # that is not yet executing is the next to start).
    variable R
    array set R {}
    variable Order {}
    variable Current ""        ;# the run whose script is executing ("" when idle)

    variable Profiles {safe safe restricted safe trusted trusted}

    # Parse error messages of Tcl 8.6, whose errorCode is NONE.
    variable ParseMessages {
        {missing close-brace} {missing close-bracket} {missing "}
        {extra characters after close-quote} {extra characters after close-brace}
        {missing close-brace for variable name} {missing )}
        {unbalanced open paren} {unbalanced close paren}
    }

    # QuotedString escapes (RFC 3179 section 5.1): \\ \t \n \r \" and any other \x is x.
    variable Unescape {}
    for {set i 0x20} {$i <= 0x7e} {incr i} {
        set ch [format %c $i]
        lappend Unescape "\\$ch" $ch
    }
    lappend Unescape "\\\t" "\t"
    array set tmp $Unescape
    set tmp(\\t) "\t"; set tmp(\\n) "\n"; set tmp(\\r) "\r"
    set Unescape [array get tmp]
    unset tmp i ch
    variable Escape [list "\\" "\\\\" "\"" "\\\"" "\t" "\\t" "\n" "\\n" "\r" "\\r"]
}

# ---------------------------------------------------------------------------------------
# Diagnostics and output

proc ::smx::Log {msg} {
    catch {puts stderr "smx-tcl\[[pid]\]: $msg"}
}

# Queues one SMX message with CRLF; Flush writes what is queued. Messages leave together
# where the runtime would otherwise wait or run on (the end of a Poll, before and after a
# blocking read, a script's result, the end of a run): over TCP, where Tcl 8.6 cannot set
# TCP_NODELAY, a second message written alone would wait for the host's delayed ACK (40 ms).
proc ::smx::Send {msg} {
    variable Outbox
    append Outbox "$msg\r\n"
    if {[string length $Outbox] >= 65536} {
        Flush
    }
}

# Writes the queued messages. A failed write means the host is gone: exit.
proc ::smx::Flush {} {
    variable Outbox
    variable out
    variable in
    variable shutting
    if {$Outbox eq ""} {
        return
    }
    set data $Outbox
    set Outbox ""
    if {[catch {
        if {$out eq $in} {
            # TCP: one channel for both directions; write in blocking mode.
            set blocking [chan configure $out -blocking]
            chan configure $out -blocking 1
        }
        puts -nonewline $out $data
        flush $out
        if {$out eq $in} {
            chan configure $out -blocking $blocking
        }
    } err]} {
        if {!$shutting} {
            Log "cannot write to the SMX channel ($err), exiting"
            set shutting 1
            exit 0
        }
    }
}

# The wire form of an octet string: QuotedString when every octet is printable ASCII, SP,
# TAB, CR or LF, else upper-case HexString; "" when empty.
proc ::smx::Enc {bytes} {
    variable Escape
    if {[regexp {^[\t\n\r\x20-\x7e]*$} $bytes]} {
        return "\"[string map $Escape $bytes]\""
    }
    return [string toupper [binary encode hex $bytes]]
}

proc ::smx::Utf8 {text} {
    return [encoding convertto utf-8 $text]
}

# ---------------------------------------------------------------------------------------
# Parsing (RFC 3179 section 5.2, processed as section 6.1 says)

proc ::smx::IsDigits {s} {
    variable U64Max
    if {![regexp {^[0-9]+$} $s]} {
        return 0
    }
    set n [string trimleft $s 0]
    if {[string length $n] < 20} {
        return 1
    }
    return [expr {[string length $n] == 20 && [string compare $n $U64Max] <= 0}]
}

proc ::smx::Canon {digits} {
    set n [string trimleft $digits 0]
    if {$n eq ""} {
        set n 0
    }
    return $n
}

# A cursor over one line: L is the line, P the position.
proc ::smx::Token {} {
    upvar 1 L L P P
    set rest [string range $L $P end]
    regexp {^[^ \t\r\n]*} $rest tok
    incr P [string length $tok]
    return $tok
}

proc ::smx::Wsp {} {
    upvar 1 L L P P
    set c [string index $L $P]
    if {$c eq " " || $c eq "\t"} {
        incr P
        return 1
    }
    return 0
}

proc ::smx::AtEnd {} {
    upvar 1 L L P P
    return [expr {$P == [string length $L]}]
}

# A field ends at WSP, CR, LF or the end of the line, as a token does: `"a"x` or `ABZZ` is
# one bad field (so start blames the right parameter, section 6.1.2 item 1), not a good
# field followed by junk.
proc ::smx::FieldEnd {} {
    upvar 1 L L P P
    set c [string index $L $P]
    return [expr {$c eq "" || $c eq " " || $c eq "\t" || $c eq "\r" || $c eq "\n"}]
}

# QuotedString at P; sets the decoded value in var, returns 0 on a syntax error.
proc ::smx::Quoted {var} {
    upvar 1 L L P P $var value
    variable Unescape
    set rest [string range $L $P end]
    if {![regexp {^"((?:[\t\x20\x21\x23-\x5b\x5d-\x7e]|\\[\t\x20-\x7e])*)"} $rest all body]} {
        return 0
    }
    incr P [string length $all]
    set value [string map $Unescape $body]
    return 1
}

# HexString / QuotedString at P.
proc ::smx::Value {var} {
    upvar 1 L L P P $var value
    if {[string index $L $P] eq "\""} {
        return [Quoted value]
    }
    set rest [string range $L $P end]
    if {![regexp {^[0-9A-Fa-f]+} $rest hex] || [string length $hex] % 2} {
        return 0
    }
    incr P [string length $hex]
    set value [binary decode hex $hex]
    return 1
}

# Handles one input line (LF removed). Never raises.
proc ::smx::HandleLine {line} {
    if {[catch {Dispatch $line} err opts]} {
        Log "internal error handling a command: [dict get $opts -errorinfo]"
    }
}

proc ::smx::Dispatch {line} {
    # CRLF or, leniently, a bare LF.
    if {[string index $line end] eq "\r"} {
        set line [string range $line 0 end-1]
    }
    set L $line
    set P 0
    set word [Token]
    if {$word eq "" || ![Wsp]} {
        Discard $line
        return
    }
    set id [Token]
    if {![IsDigits $id]} {
        Discard $line
        return
    }
    # Replies carry the Id as a number (007 is 7), as the other runtimes write it.
    set id [Canon $id]
    set word [string tolower $word]
    switch -exact -- $word {
        hello {
            if {![AtEnd]} {
                Send "401 $id"
                return
            }
            Hello $id
        }
        start {
            if {![Wsp]} { Send "431 $id"; return }
            set run [Token]
            if {![IsDigits $run]} { Send "431 $id"; return }
            if {![Wsp] || ![Quoted script] || ![FieldEnd]} { Send "421 $id"; return }
            if {![Wsp]} { Send "432 $id"; return }
            set profile [Token]
            if {![regexp {^[0-9A-Za-z./:_-]+$} $profile]} { Send "432 $id"; return }
            if {![Wsp] || ![Value argument] || ![FieldEnd]} { Send "433 $id"; return }
            if {![AtEnd]} { Send "401 $id"; return }
            Start $id [Canon $run] $script $profile $argument
        }
        suspend - resume - abort - status {
            if {![Wsp]} { Send "431 $id"; return }
            set run [Token]
            if {![IsDigits $run]} { Send "431 $id"; return }
            if {![AtEnd]} { Send "401 $id"; return }
            [string totitle $word] $id [Canon $run]
        }
        default {
            Send "402 $id"
        }
    }
}

proc ::smx::Discard {line} {
    if {$line ne ""} {
        set shown [string range $line 0 80]
        regsub -all {[^\x20-\x7e]} $shown ? shown
        Log "discarding a message without command word and Id: $shown"
    }
}

# ---------------------------------------------------------------------------------------
# Reading the SMX channel

# Handles every complete line that can be read without blocking.
proc ::smx::Poll {} {
    variable in
    variable skipping
    variable MaxLine
    while 1 {
        if {[catch {gets $in line} n]} {
            Log "cannot read the SMX channel: $n"
            Shutdown
        }
        if {$n < 0} {
            if {[eof $in]} {
                Shutdown
            }
            if {[chan pending input $in] > $MaxLine} {
                Log "dropping an input line longer than $MaxLine octets"
                read $in [chan pending input $in]
                set skipping 1
            }
            Flush
            return
        }
        if {[eof $in]} {
            # A last line without its LF is not a message.
            Discard $line
            Shutdown
        }
        if {$skipping} {
            set skipping 0
            continue
        }
        HandleLine $line
    }
}

# Waits for and handles one line and those that came with it (no event loop: nothing else
# runs meanwhile).
proc ::smx::ReadBlocking {} {
    variable in
    variable skipping
    Flush
    chan configure $in -blocking 1
    set rc [catch {gets $in line} n]
    chan configure $in -blocking 0
    if {$rc} {
        Log "cannot read the SMX channel: $n"
        Shutdown
    }
    if {[eof $in]} {
        if {$n >= 0} {
            Discard $line
        }
        Shutdown
    }
    if {$n >= 0} {
        if {$skipping} {
            set skipping 0
            return
        }
        HandleLine $line
        # Then whatever else already arrived, so that the replies leave together (Poll
        # flushes when it runs out of complete lines).
        Poll
    }
}

# Connection closed: abort every run, say so if still possible, exit.
proc ::smx::Shutdown {} {
    variable R
    variable Order
    variable out
    variable shutting
    if {$shutting} {
        exit 0
    }
    set shutting 1
    foreach run $Order {
        if {[info exists R($run,child)] && $R($run,child) ne ""} {
            catch {interp cancel -unwind $R($run,child)}
        }
        Send "531 0 $run 7"
        Send "538 0 $run 2"
        foreach aid $R($run,aborts) {
            Send "232 $aid"
        }
    }
    Flush
    exit 0
}

# ---------------------------------------------------------------------------------------
# Commands

proc ::smx::Hello {id} {
    variable Version
    variable Transport
    variable cookie
    if {$Transport eq "tcp" && $cookie ne ""} {
        Send "211 $id $Version $cookie"
    } else {
        Send "211 $id $Version"
    }
}

proc ::smx::Start {id run script profile argument} {
    variable R
    variable Order
    variable Current
    variable Profiles
    # Section 6.1.2 items 2-4: RunId in use, Script readable, Profile known.
    if {[info exists R($run,state)]} {
        Send "431 $id"
        return
    }
    if {[string index $script 0] eq "~"} {
        # Tcl 8.6 would expand ~user in a file name.
        set script ./$script
    }
    if {[catch {
        if {![DirsOnTheWay $script] || ![file isfile $script]} {
            error "not a regular file"
        }
        set f [open $script r]
        try {
            chan configure $f -encoding utf-8 -eofchar \x1a
            set content [read $f]
        } finally {
            close $f
        }
    } err]} {
        Log "start $run: cannot read script $script: $err"
        Send "421 $id"
        return
    }
    if {![dict exists $Profiles $profile]} {
        Send "432 $id"
        return
    }
    set R($run,state)   1
    set R($run,script)  $script
    set R($run,profile) $profile
    set R($run,kind)    [dict get $Profiles $profile]
    set R($run,arg)     $argument
    set R($run,content) $content
    set R($run,child)   ""
    set R($run,aborts)  {}
    set R($run,exit)    ""
    set R($run,forbidden) {}
    set R($run,violation) ""
    if {$Current eq "" && [llength $Order] == 0} {
        # Nothing else is running: it executes next (the main loop starts it right away).
        set R($run,state) 2
        lappend Order $run
        Send "231 $id 2"
    } else {
        # One script at a time: queue it, initializing until the current run ends.
        lappend Order $run
        Send "231 $id 1"
    }
}

# Whether every component of a file name but the last is a directory, as open(2) requires.
# Tcl's file commands normalize a name first (to them "/etc/passwd/." and "/etc/passwd/x/.."
# are /etc/passwd), so a name that names no file would otherwise be read as a script.
proc ::smx::DirsOnTheWay {path} {
    set prefix ""
    foreach part [lrange [split $path /] 0 end-1] {
        append prefix $part /
        if {![file isdirectory $prefix]} {
            return 0
        }
    }
    return 1
}

proc ::smx::Known {id run} {
    variable R
    if {![info exists R($run,state)]} {
        Send "431 $id"
        return 0
    }
    return 1
}

proc ::smx::Status {id run} {
    variable R
    if {[Known $id $run]} {
        Send "231 $id $R($run,state)"
    }
}

proc ::smx::Suspend {id run} {
    variable R
    if {![Known $id $run]} {
        return
    }
    switch -- $R($run,state) {
        2 {
            if {$R($run,child) eq ""} {
                # Accepted but not executing yet (cannot normally happen): refuse.
                Send "434 $id"
                return
            }
            # We are called from inside the script's execution (the limit callback, its
            # sleep or its event loop): park right here until resume or abort.
            set R($run,state) 4
            Send "531 0 $run 4"
            Send "231 $id 4"
            Park $run
        }
        4 {
            Send "231 $id 4"
        }
        default {
            # initializing (queued) or aborting
            Send "434 $id"
        }
    }
}

proc ::smx::Resume {id run} {
    variable R
    if {![Known $id $run]} {
        return
    }
    switch -- $R($run,state) {
        4 {
            set R($run,state) 2
            Send "531 0 $run 2"
            Send "231 $id 2"
        }
        2 {
            Send "231 $id 2"
        }
        default {
            Send "434 $id"
        }
    }
}

proc ::smx::Abort {id run} {
    variable R
    if {![Known $id $run]} {
        return
    }
    if {$R($run,state) == 6} {
        # Already being aborted: answered together with the first abort.
        lappend R($run,aborts) $id
        return
    }
    if {$R($run,child) eq ""} {
        # Not executing yet (queued): it ends at once.
        lappend R($run,aborts) $id
        Finish $run 2
        return
    }
    if {[catch {interp cancel -unwind -- $R($run,child) "run aborted"} err]} {
        Log "abort $run: cannot cancel the interpreter: $err"
        Send "434 $id"
        return
    }
    lappend R($run,aborts) $id
    set R($run,state) 6
    # The script unwinds once control returns to it; Execute then sends 531 7, 538 2, 232.
}

# Blocks on the SMX channel until the run is resumed or aborted.
proc ::smx::Park {run} {
    variable R
    while {[info exists R($run,state)] && $R($run,state) == 4} {
        ReadBlocking
    }
}

# ---------------------------------------------------------------------------------------
# Running scripts

# Reports the end of a run and forgets it.
proc ::smx::Finish {run code {text ""}} {
    variable R
    variable Order
    variable MaxError
    if {$text ne ""} {
        Send "536 0 $run 2 [Enc [string range [Utf8 $text] 0 [expr {$MaxError - 1}]]]"
    }
    Send "531 0 $run 7"
    Send "538 0 $run $code"
    foreach aid $R($run,aborts) {
        Send "232 $aid"
    }
    array unset R "$run,*"
    set i [lsearch -exact $Order $run]
    if {$i >= 0} {
        set Order [lreplace $Order $i $i]
    }
    Flush
}

# The first run that waits to execute, or "".
proc ::smx::NextRun {} {
    variable R
    variable Order
    foreach run $Order {
        if {$R($run,child) eq "" && $R($run,state) in {1 2}} {
            return $run
        }
    }
    return ""
}

# Finds a syntax error without executing anything: `info complete` plus the byte code
# compiler (which turns a parse error into a `syntax` instruction). Returns {} or
# {message line}. Procedure bodies are compiled only when called; their parse errors are
# recognised when they are raised.
proc ::smx::SyntaxCheck {content} {
    if {[info complete $content] && [SyntaxError $content] eq ""} {
        return {}
    }
    set chunk ""
    set start 1
    set n 0
    foreach l [split $content \n] {
        incr n
        if {$chunk eq ""} {
            set start $n
            set chunk $l
        } else {
            append chunk \n $l
        }
        if {[info complete $chunk]} {
            set msg [SyntaxError $chunk]
            if {$msg ne ""} {
                return [list $msg $start]
            }
            set chunk ""
        }
    }
    if {$chunk ne ""} {
        set msg [SyntaxError $chunk]
        if {$msg eq ""} {
            set msg "incomplete command"
        }
        return [list $msg $start]
    }
    set msg [SyntaxError $content]
    if {$msg eq ""} {
        set msg "syntax error"
    }
    return [list $msg 1]
}

proc ::smx::SyntaxError {script} {
    if {[catch {::tcl::unsupported::disassemble script $script} d]} {
        return ""
    }
    set lines [split $d \n]
    set i [lsearch -regexp $lines {^\s*\(\d+\) syntax }]
    if {$i < 0} {
        return ""
    }
    if {$i >= 2 && [regexp {# "(.*)"\s*$} [lindex $lines $i-2] -> msg]} {
        return [string map {\\n " " \\\" \"} $msg]
    }
    return "syntax error"
}

proc ::smx::Execute {run} {
    variable R
    variable Current
    variable Step
    set Current $run
    if {$R($run,state) == 1} {
        set R($run,state) 2
        Send "531 0 $run 2"
        Flush
    }
    set path $R($run,script)
    if {[catch {Prepare $run} c]} {
        Log "run $run: cannot create the interpreter: $c"
        catch {interp delete $R($run,child)}
        set Current ""
        Finish $run 9 "cannot create an interpreter for profile $R($run,profile): $c"
        return
    }
    set syntax [SyntaxCheck $R($run,content)]
    set R($run,content) ""
    if {[llength $syntax] != 0} {
        lassign $syntax msg line
        catch {interp delete $c}
        set Current ""
        Finish $run 5 "$msg (line $line of $path)"
        return
    }

    set start [interp eval $c {::tcl::info::cmdcount}]
    interp limit $c command -value [expr {$start + $Step}] \
        -command [list ::smx::LimitCb $run]
    if {$R($run,kind) eq "safe"} {
        set code [catch {interp invokehidden $c -global -- source -encoding utf-8 $path} res opts]
    } else {
        set code [catch {interp eval $c [list ::source -encoding utf-8 $path]} res opts]
    }

    set hasResult 0
    set text ""
    if {$R($run,state) == 6} {
        set exit 2
    } elseif {$R($run,exit) ne ""} {
        if {$R($run,exit) == 0} {
            set exit 1
        } else {
            set exit 6
            set text "script called exit $R($run,exit)"
        }
    } elseif {$code == 0 || $code == 2} {
        set exit 1
        set hasResult [expr {$res ne ""}]
    } else {
        lassign [Classify $run $code $res $opts] exit text
    }
    if {$R($run,violation) ne "" && $exit ni {2 8}} {
        set exit 8
        set text $R($run,violation)
    }
    catch {interp delete $c}
    set R($run,child) ""
    set Current ""
    if {$hasResult} {
        Emit $run 532 [Utf8 $res] 1
    }
    Finish $run $exit $text
}

# Creates and equips the child interpreter of a run.
proc ::smx::Prepare {run} {
    variable R
    variable stdioMoved
    set safe [expr {$R($run,kind) eq "safe"}]
    if {$safe} {
        set c [interp create -safe]
    } else {
        set c [interp create]
    }
    set R($run,child) $c

    interp alias $c smx {} ::smx::Api $run
    # exit ends the run, never the runtime.
    if {$safe} {
        interp alias $c exit {} ::smx::ChildExit $run
    } else {
        interp eval $c {rename ::exit {}}
        interp alias $c ::exit {} ::smx::ChildExit $run
    }
    # `after <ms>` sleeps interruptibly; the other forms go to the real command.
    interp hide $c after
    interp alias $c after {} ::smx::ChildAfter $run
    interp alias $c ::tcl::SmxBgError {} ::smx::ChildBgError $run
    interp bgerror $c ::tcl::SmxBgError

    if {$safe} {
        # Holes a safe interpreter leaves open for a script that wants to hang the runtime:
        # sub-interpreters escape the command limit, pipes allow an uninterruptible read.
        interp eval $c {rename ::tcl::chan::pipe {}}
        interp hide $c interp
        # encoding without `encoding system`/`encoding dirs`, like the Safe Base offers.
        interp alias $c encoding {} ::smx::ChildEncoding
        if {$stdioMoved} {
            # stdout is not SMX: let the script write diagnostics to stdout and stderr.
            interp share {} stdout $c
            interp share {} stderr $c
        }
        set R($run,forbidden) [concat [interp hidden $c] {tcl::chan::pipe}]
        # A forbidden command is noted even if the script catches the error, so the run
        # still ends with securityViolation (as the Python runtime does).
        interp alias $c unknown {} ::smx::ChildUnknown $run
    }
    if {!$stdioMoved} {
        # SMX is still on stdin/stdout: keep the script away from them.
        if {!$safe} {
            interp eval $c {close stdin; close stdout}
        }
        interp hide $c puts
        interp alias $c puts {} ::smx::ChildPuts $c
    }

    set text [encoding convertfrom utf-8 $R($run,arg)]
    interp eval $c [list set ::argv $text]
    interp eval $c [list set ::argc [expr {[string is list $text] ? [llength $text] : 1}]]
    interp eval $c [list set ::argv0 $R($run,script)]
    interp eval $c [list set ::tcl_interactive 0]
    return $c
}

# Maps how a script failed onto {ExitCode text}.
proc ::smx::Classify {run code res opts} {
    variable R
    variable ParseMessages
    if {$code != 1} {
        return [list 6 "script ended with return code $code: $res"]
    }
    set ec [expr {[dict exists $opts -errorcode] ? [dict get $opts -errorcode] : "NONE"}]
    set info [expr {[dict exists $opts -errorinfo] ? [dict get $opts -errorinfo] : $res}]
    # Drop the frame the master added around the source command.
    while {[regsub {\n    (?:invoked from within|while executing)\n"(?:interp |::source |source )[^\n]*"\s*$} \
            $info "" info]} {}
    if {$res ne "" && [string first $res $info] != 0} {
        set info "$res\n$info"
    }
    if {[lrange $ec 0 1] eq {SMX INVALIDARGUMENT}} {
        # The script's own words say it all.
        return [list 7 $res]
    }
    if {[lrange $ec 0 1] eq {TCL PARSE} || ($ec eq "NONE" && $res in $ParseMessages)} {
        return [list 5 $info]
    }
    if {[lrange $ec 0 2] eq {TCL LOOKUP COMMAND}} {
        set name [string trimleft [lindex $ec 3] :]
        if {$name in $R($run,forbidden)} {
            set first [string first \n $info]
            if {$first < 0} {
                set first [string length $info]
            }
            set info "[string range $info 0 $first-1] (not allowed in profile\
                $R($run,profile))[string range $info $first end]"
            return [list 8 $info]
        }
    }
    if {[lrange $ec 0 2] eq {TCL OPERATION INTERP} && [lindex $ec end] eq "UNSAFE"} {
        return [list 8 $info]
    }
    if {[lrange $ec 0 1] eq {TCL LIMIT} && [lindex $ec 2] ne "COMMANDS"} {
        return [list 4 $info]
    }
    return [list 6 $info]
}

# `unknown` of a safe child: any unknown command is an error, as without the alias; a
# command the profile hides is also recorded as a violation of the run.
proc ::smx::ChildUnknown {run args} {
    variable R
    set cmd [lindex $args 0]
    if {[string trimleft $cmd :] in $R($run,forbidden) && $R($run,violation) eq ""} {
        set R($run,violation) "invalid command name \"$cmd\" (not allowed in profile $R($run,profile))"
    }
    return -code error -errorcode [list TCL LOOKUP COMMAND $cmd] "invalid command name \"$cmd\""
}

# The command-limit callback: re-arm, then answer whatever the host sent meanwhile.
proc ::smx::LimitCb {run} {
    variable R
    variable Step
    if {![info exists R($run,child)] || $R($run,child) eq ""} {
        return
    }
    set c $R($run,child)
    interp limit $c command -value [expr {[interp limit $c command -value] + $Step}]
    Poll
}

# Sends a 532/533/536/537 unless the run is being aborted.
proc ::smx::Emit {run code bytes {final 0}} {
    variable R
    variable MaxResult
    variable MaxError
    if {!$final && (![info exists R($run,state)] || $R($run,state) != 2)} {
        return
    }
    if {$code in {532 533}} {
        set max $MaxResult
    } else {
        set max $MaxError
    }
    Send "$code 0 $run 2 [Enc [string range $bytes 0 [expr {$max - 1}]]]"
    Flush
}

# ---------------------------------------------------------------------------------------
# Commands seen by the script

proc ::smx::Api {run args} {
    variable R
    if {[llength $args] == 0} {
        return -code error -errorcode {TCL WRONGARGS} \
            "wrong # args: should be \"smx subcommand ?arg ...?\""
    }
    set args [lassign $args sub]
    switch -exact -- $sub {
        result - event - error - exception {
            set binary 0
            switch -- [llength $args] {
                1 {}
                2 {
                    switch -- [lindex $args 0] {
                        -binary { set binary 1 }
                        -- {}
                        default { set bad 1 }
                    }
                }
                3 {
                    if {[lrange $args 0 1] eq {-binary --}} {
                        set binary 1
                    } else {
                        set bad 1
                    }
                }
                default { set bad 1 }
            }
            if {[info exists bad]} {
                return -code error -errorcode {TCL WRONGARGS} \
                    "wrong # args: should be \"smx $sub ?-binary? value\""
            }
            set value [lindex $args end]
            if {$binary} {
                if {[regexp {[^\x00-\xff]} $value]} {
                    return -code error -errorcode {SMX NOTBYTES} \
                        "smx $sub -binary: the value has characters above \\xFF; it is not a byte string"
                }
                set bytes $value
            } else {
                set bytes [encoding convertto utf-8 $value]
            }
            Emit $run [dict get {result 532 event 533 error 536 exception 537} $sub] $bytes
            return
        }
        argument - runid - profile {
            if {[llength $args] != 0} {
                return -code error -errorcode {TCL WRONGARGS} \
                    "wrong # args: should be \"smx $sub\""
            }
            return [dict get [list argument $R($run,arg) runid $run profile $R($run,profile)] $sub]
        }
        invalid-argument {
            if {[llength $args] != 1} {
                return -code error -errorcode {TCL WRONGARGS} \
                    "wrong # args: should be \"smx invalid-argument message\""
            }
            return -code error -errorcode {SMX INVALIDARGUMENT} [lindex $args 0]
        }
        default {
            return -code error -errorcode [list TCL LOOKUP SUBCOMMAND $sub] \
                "unknown subcommand \"$sub\": must be argument, error, event, exception,\
                invalid-argument, profile, result or runid"
        }
    }
}

proc ::smx::ChildExit {run args} {
    variable R
    if {[llength $args] > 1} {
        return -code error -errorcode {TCL WRONGARGS} "wrong # args: should be \"exit ?returnCode?\""
    }
    set status [expr {[llength $args] ? [lindex $args 0] : 0}]
    if {![string is entier -strict $status]} {
        return -code error -errorcode {TCL VALUE NUMBER} "expected integer but got \"$status\""
    }
    set R($run,exit) $status
    catch {interp cancel -unwind -- $R($run,child) "exit $status"}
    return -code error -errorcode {SMX EXIT} "exit $status"
}

# `after ms` as an interruptible sleep: poll the SMX channel every SleepSlice ms.
proc ::smx::ChildAfter {run args} {
    variable R
    variable SleepSlice
    set c $R($run,child)
    if {[llength $args] != 1 || ![string is entier -strict [lindex $args 0]]} {
        return [interp invokehidden $c after {*}$args]
    }
    set deadline [expr {[clock milliseconds] + [lindex $args 0]}]
    while 1 {
        Poll
        if {![info exists R($run,state)] || $R($run,state) != 2 || $R($run,exit) ne ""} {
            return -code error -errorcode {SMX ABORTED} "run aborted"
        }
        set left [expr {$deadline - [clock milliseconds]}]
        if {$left <= 0} {
            return
        }
        after [expr {min($left, $SleepSlice)}]
    }
}

proc ::smx::ChildBgError {run msg opts} {
    variable R
    if {[info exists R($run,state)] && $R($run,state) == 2} {
        Emit $run 536 [Utf8 "background error: $msg"]
    }
}

# puts for a child whose stdout would be the SMX channel (only without /proc or /dev/fd).
proc ::smx::ChildPuts {c args} {
    set nl 1
    if {[lindex $args 0] eq "-nonewline"} {
        set nl 0
        set args [lrange $args 1 end]
    }
    switch -- [llength $args] {
        1 { set chan stdout }
        2 { set chan [lindex $args 0] }
        default {
            return -code error -errorcode {TCL WRONGARGS} \
                "wrong # args: should be \"puts ?-nonewline? ?channelId? string\""
        }
    }
    if {$chan in {stdout stderr}} {
        if {$nl} {
            puts stderr [lindex $args end]
        } else {
            puts -nonewline stderr [lindex $args end]
        }
        return
    }
    set cmd [list interp invokehidden $c puts]
    if {!$nl} {
        lappend cmd -nonewline
    }
    return [{*}$cmd $chan [lindex $args end]]
}

proc ::smx::ChildEncoding {args} {
    set sub [lindex $args 0]
    if {$sub in {convertto convertfrom names}} {
        return [encoding {*}$args]
    }
    if {$sub eq "system" && [llength $args] == 1} {
        return [encoding system]
    }
    return -code error -errorcode {SMX SECURITY encoding} \
        "encoding $sub is not allowed in a safe interpreter"
}

# ---------------------------------------------------------------------------------------
# Transport set-up

# Opens /proc/self/fd/N again; a regular file in append mode so that it is not overwritten
# from the start (pipes cannot seek).
proc ::smx::Reopen {path access} {
    if {![catch {file stat $path st}] && $st(type) eq "file"} {
        lappend access APPEND
    }
    return [open $path $access]
}

# Pipe mode: move the SMX streams off fds 0 and 1 so that nothing a script does (puts,
# gets stdin, exec, background processes) can read or write them: fd 0 becomes /dev/null
# and fd 1 another way to stderr. Tcl cannot dup(2), so this takes one of:
#   1. opening /proc/self/fd/0 and /1 (or /dev/fd) again: works when the runtime may open
#      the pipes, i.e. unless the host created them as another user;
#   2. relays: `cat` processes that copy between the original fds and new pipes;
#   3. nothing: SMX stays on stdin/stdout, the children's stdin/stdout channels are
#      removed and `puts` to stdout goes to stderr (processes started by trusted scripts
#      still inherit fds 0 and 1 then).
proc ::smx::SetupPipe {} {
    variable in
    variable out
    variable stdioMoved
    set in stdin
    set out stdout
    if {[info exists ::env(SMX_TCL_STDIO)]} {
        set methods $::env(SMX_TCL_STDIO)
    } else {
        set methods {reopen relay}
    }
    set method ""
    foreach m $methods {
        switch -- $m {
            reopen {
                foreach dir {/proc/self/fd /dev/fd} {
                    if {[catch {open $dir/0 {RDONLY NONBLOCK}} newIn]} {
                        continue
                    }
                    if {[catch {Reopen $dir/1 {WRONLY NONBLOCK}} newOut]} {
                        close $newIn
                        continue
                    }
                    set method reopen
                    break
                }
            }
            relay {
                if {![catch {open "|cat <@stdin" r} newIn]} {
                    if {![catch {open "|cat >@stdout" w} newOut]} {
                        set method relay
                    } else {
                        chan configure $newIn -blocking 0
                        catch {close $newIn}
                    }
                }
            }
        }
        if {$method ne ""} {
            break
        }
    }
    if {$method eq ""} {
        Log "cannot move SMX off fds 0/1 (no usable /proc/self/fd, /dev/fd or cat):\
            scripts' stdout is redirected by puts only"
        return
    }
    # The first channel opened after a standard channel is closed takes its place.
    close stdin
    if {[catch {open /dev/null r} err]} {
        Log "cannot open /dev/null: $err"
    }
    close stdout
    if {[catch {Reopen /proc/self/fd/2 WRONLY}] && [catch {Reopen /dev/fd/2 WRONLY}]
            && [catch {open "|cat >@stderr" w}] && [catch {open /dev/null w} err]} {
        Log "cannot open a new stdout: $err"
    }
    catch {chan configure stdout -buffering line}
    set in $newIn
    set out $newOut
    set stdioMoved 1
    if {$method eq "relay"} {
        Log "SMX moved off fds 0/1 through cat relays (/proc/self/fd not usable)"
    }
}

proc ::smx::SetupTcp {} {
    variable in
    variable out
    variable cookie
    variable stdioMoved
    set host 127.0.0.1
    if {[info exists ::env(SMX_HOST)] && $::env(SMX_HOST) ne ""} {
        set host $::env(SMX_HOST)
    }
    if {![info exists ::env(SMX_PORT)]} {
        Log "SMX_TRANSPORT=tcp but SMX_PORT is not set"
        exit 1
    }
    if {[info exists ::env(SMX_COOKIE_FD)] && $::env(SMX_COOKIE_FD) ne ""} {
        set fd $::env(SMX_COOKIE_FD)
        set ok 0
        foreach dir {/proc/self/fd /dev/fd} {
            if {![catch {open $dir/$fd rb} f]} {
                catch {set cookie [string trim [read $f]]}
                catch {close $f}
                set ok 1
                break
            }
        }
        if {!$ok && [string is digit -strict $fd]} {
            # /proc refuses a pipe created by another user; a shell can still dup it.
            if {![catch {exec /bin/sh -c "exec cat <&$fd" 2>@stderr} c]} {
                set cookie [string trim $c]
                set ok 1
            }
        }
        if {!$ok} {
            Log "cannot read the cookie from fd $fd"
        }
    } elseif {[info exists ::env(SMX_COOKIE)]} {
        set cookie [string trim $::env(SMX_COOKIE)]
    }
    # Scripts (and the processes they start) need not see these.
    foreach v {SMX_COOKIE SMX_COOKIE_FD} {
        catch {unset ::env($v)}
    }
    if {[catch {socket $host $::env(SMX_PORT)} sock]} {
        Log "cannot connect to $host:$::env(SMX_PORT): $sock"
        exit 1
    }
    set in $sock
    set out $sock
    set stdioMoved 1
}

proc ::smx::Main {} {
    variable Transport
    variable in
    variable out
    if {[info exists ::env(SMX_TRANSPORT)] && $::env(SMX_TRANSPORT) eq "tcp"} {
        set Transport tcp
        SetupTcp
    } else {
        SetupPipe
    }
    chan configure $in -translation binary -blocking 0
    chan configure $out -translation binary -buffering full
    if {$in ne $out} {
        chan configure $out -blocking 1
    }
    # Runs the SMX commands when a script waits in the event loop (vwait, update).
    chan event $in readable ::smx::Poll
    interp bgerror {} ::smx::MasterBgError
    while 1 {
        set run [NextRun]
        if {$run ne ""} {
            Execute $run
        } else {
            ReadBlocking
        }
    }
}

proc ::smx::MasterBgError {msg opts} {
    Log "background error: [dict get $opts -errorinfo]"
}

# A test that sources this file (smx_runtime.test) sets ::smx_runtime_no_main first.
if {![info exists ::smx_runtime_no_main]} {
    ::smx::Main
}
