# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_smx_global_optspecs
    string join \n v/verbose h/help V/version
end

function __fish_smx_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_smx_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_smx_using_subcommand
    set -l cmd (__fish_smx_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c smx -n "__fish_smx_needs_command" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_needs_command" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_needs_command" -s V -l version -d 'Print version'
complete -c smx -n "__fish_smx_needs_command" -f -a "run" -d 'Run a script to completion through an in-process host and print its result'
complete -c smx -n "__fish_smx_needs_command" -f -a "conform" -d 'Check a runtime against RFC 3179 section 6.1 from the outside'
complete -c smx -n "__fish_smx_needs_command" -f -a "daemon" -d 'Run the host as a service with a local control socket'
complete -c smx -n "__fish_smx_needs_command" -f -a "config" -d 'Check a config file as the daemon loads it, reporting every problem'
complete -c smx -n "__fish_smx_needs_command" -f -a "ps" -d 'List the runs the daemon knows (smRunTable) that you may see'
complete -c smx -n "__fish_smx_needs_command" -f -a "status" -d 'Show every column of one run'
complete -c smx -n "__fish_smx_needs_command" -f -a "suspend" -d 'Suspend a run (smRunControl suspend)'
complete -c smx -n "__fish_smx_needs_command" -f -a "resume" -d 'Resume a suspended run (smRunControl resume)'
complete -c smx -n "__fish_smx_needs_command" -f -a "abort" -d 'Abort a run (smRunControl abort); it ends with halted'
complete -c smx -n "__fish_smx_needs_command" -f -a "set" -d 'Change a run\'s lifetime (smRunLifeTime) and/or expire time (smRunExpireTime)'
complete -c smx -n "__fish_smx_needs_command" -f -a "events" -d 'Follow the daemon\'s run events (state changes, results, errors, terminations)'
complete -c smx -n "__fish_smx_needs_command" -f -a "script" -d 'Scripts in the daemon (smScriptTable): install, list, remove'
complete -c smx -n "__fish_smx_needs_command" -f -a "launch" -d 'Launch buttons in the daemon (smLaunchTable): add, list, start, remove'
complete -c smx -n "__fish_smx_needs_command" -f -a "runtimes" -d 'List the runtimes of the effective configuration (smLangTable)'
complete -c smx -n "__fish_smx_needs_command" -f -a "completions" -d 'Print a shell completion script (source it, or install it where your shell looks)'
complete -c smx -n "__fish_smx_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c smx -n "__fish_smx_using_subcommand run" -l config -d 'Config file extending the embedded default. Not with --daemon, which runs the script under the daemon\'s own config (SMX_CONFIG is then not read)' -r -F
complete -c smx -n "__fish_smx_using_subcommand run" -l runtime -d 'Runtime to use; default: by the script\'s extension, else `exec` for executables' -r
complete -c smx -n "__fish_smx_using_subcommand run" -l owner -d 'smLaunchOwner; must be mapped to an OS profile in the config. Without it the script runs as you' -r
complete -c smx -n "__fish_smx_using_subcommand run" -l profile -d 'Runtime security profile (only without --owner; default: the runtime\'s first)' -r
complete -c smx -n "__fish_smx_using_subcommand run" -l argument -d 'smLaunchArgument as text' -r
complete -c smx -n "__fish_smx_using_subcommand run" -l argument-hex -d 'smLaunchArgument as hex octets' -r
complete -c smx -n "__fish_smx_using_subcommand run" -l lifetime -d 'smLaunchLifeTime in seconds, 0 to 21474836 (the script is aborted when it runs out)' -r
complete -c smx -n "__fish_smx_using_subcommand run" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand run" -l json -d 'Print the finished run as one JSON object instead of the bare result'
complete -c smx -n "__fish_smx_using_subcommand run" -l daemon -d 'Run through `smx daemon` instead of an in-process host'
complete -c smx -n "__fish_smx_using_subcommand run" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand run" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand conform" -l transport -d 'How the runtime talks SMX: stdin/stdout or a TCP connection back to smx' -r -f -a "pipe\t''
tcp\t''"
complete -c smx -n "__fish_smx_using_subcommand conform" -l profile -d 'A runtime security profile the runtime accepts' -r
complete -c smx -n "__fish_smx_using_subcommand conform" -l script -d 'A conformance script in the runtime\'s language (see docs/writing-a-runtime.md); without it the checks that need a running script are skipped' -r -F
complete -c smx -n "__fish_smx_using_subcommand conform" -l cookie -d 'With --transport tcp: how the runtime gets its cookie, from the fd SMX_COOKIE_FD names or (RFC 2593-era runtimes such as Scotty\'s Tnm) from SMX_COOKIE' -r -f -a "fd\t''
env\t''"
complete -c smx -n "__fish_smx_using_subcommand conform" -l timeout -d 'How long to wait for each expected reply' -r
complete -c smx -n "__fish_smx_using_subcommand conform" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand conform" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand daemon" -l config -d 'Config file extending the embedded default (re-read on SIGHUP)' -r -F
complete -c smx -n "__fish_smx_using_subcommand daemon" -l socket -d 'Control socket (default: [control] socket, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand daemon" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand daemon" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand config; and not __fish_seen_subcommand_from check help" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand config; and not __fish_seen_subcommand_from check help" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand config; and not __fish_seen_subcommand_from check help" -f -a "check" -d 'Load the config as `smx daemon` would and report every problem with file:line:column'
complete -c smx -n "__fish_smx_using_subcommand config; and not __fish_seen_subcommand_from check help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c smx -n "__fish_smx_using_subcommand config; and __fish_seen_subcommand_from check" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand config; and __fish_seen_subcommand_from check" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "check" -d 'Load the config as `smx daemon` would and report every problem with file:line:column'
complete -c smx -n "__fish_smx_using_subcommand config; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c smx -n "__fish_smx_using_subcommand ps" -l owner -d 'Only this owner\'s runs' -r
complete -c smx -n "__fish_smx_using_subcommand ps" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand ps" -l json -d 'Print the rows as one JSON array'
complete -c smx -n "__fish_smx_using_subcommand ps" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand ps" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand status" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand status" -l refresh -d 'Ask the runtime for the current state first (SMX `status`)'
complete -c smx -n "__fish_smx_using_subcommand status" -l json -d 'Print the row as one JSON object'
complete -c smx -n "__fish_smx_using_subcommand status" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand status" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand suspend" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand suspend" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand suspend" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand resume" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand resume" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand resume" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand abort" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand abort" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand abort" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand set" -l lifetime -d 'Seconds the run may still execute; 0 aborts it now' -r
complete -c smx -n "__fish_smx_using_subcommand set" -l expire -d 'Seconds the row stays after the run terminated; 0 removes it then' -r
complete -c smx -n "__fish_smx_using_subcommand set" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand set" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand set" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand events" -l owner -d 'Only events of this owner\'s runs' -r
complete -c smx -n "__fish_smx_using_subcommand events" -l run -d 'Only events of this run' -r
complete -c smx -n "__fish_smx_using_subcommand events" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand events" -l json -d 'One JSON object per event'
complete -c smx -n "__fish_smx_using_subcommand events" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand events" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand script; and not __fish_seen_subcommand_from install list remove help" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand script; and not __fish_seen_subcommand_from install list remove help" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand script; and not __fish_seen_subcommand_from install list remove help" -f -a "install" -d 'Store a script for an owner and enable it (smScriptTable, RFC 3165 7.1 and 7.2)'
complete -c smx -n "__fish_smx_using_subcommand script; and not __fish_seen_subcommand_from install list remove help" -f -a "list" -d 'List the scripts you may see (smScriptTable)'
complete -c smx -n "__fish_smx_using_subcommand script; and not __fish_seen_subcommand_from install list remove help" -f -a "remove" -d 'Disable and destroy a script (RFC 3165 7.4)'
complete -c smx -n "__fish_smx_using_subcommand script; and not __fish_seen_subcommand_from install list remove help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from install" -l source -d 'smScriptSource: a URL the daemon pulls the script from instead of FILE (file: read as the owner\'s OS user, http:, https:)' -r
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from install" -l language -d 'smScriptLanguage: a runtime name or an smLangIndex (default: by NAME\'s extension, else FILE\'s, else exec)' -r
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from install" -l descr -d 'smScriptDescr (0..255 octets)' -r
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from install" -l storage -d 'smScriptStorageType: nonVolatile scripts survive a restart of the daemon (it needs [host] state_dir); default volatile' -r
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from install" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from install" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from install" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from list" -l owner -d 'Only this owner\'s scripts' -r
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from list" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from list" -l json -d 'The rows as a JSON array, with the smScriptTable column names'
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from list" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from remove" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from remove" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from help" -f -a "install" -d 'Store a script for an owner and enable it (smScriptTable, RFC 3165 7.1 and 7.2)'
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from help" -f -a "list" -d 'List the scripts you may see (smScriptTable)'
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Disable and destroy a script (RFC 3165 7.4)'
complete -c smx -n "__fish_smx_using_subcommand script; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c smx -n "__fish_smx_using_subcommand launch; and not __fish_seen_subcommand_from add list start remove help" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand launch; and not __fish_seen_subcommand_from add list start remove help" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand launch; and not __fish_seen_subcommand_from add list start remove help" -f -a "add" -d 'Create a launch button for a script (an smLaunchTable row, enabled)'
complete -c smx -n "__fish_smx_using_subcommand launch; and not __fish_seen_subcommand_from add list start remove help" -f -a "list" -d 'List the launch buttons you may see (smLaunchTable)'
complete -c smx -n "__fish_smx_using_subcommand launch; and not __fish_seen_subcommand_from add list start remove help" -f -a "start" -d 'Start a run from a launch button (smLaunchStart)'
complete -c smx -n "__fish_smx_using_subcommand launch; and not __fish_seen_subcommand_from add list start remove help" -f -a "remove" -d 'Disable and destroy a launch button'
complete -c smx -n "__fish_smx_using_subcommand launch; and not __fish_seen_subcommand_from add list start remove help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from add" -l script -d 'The script, as SOWNER/SNAME (smLaunchScriptOwner, smLaunchScriptName); a bare SNAME is one of OWNER\'s scripts' -r
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from add" -l argument -d 'smLaunchArgument as text' -r
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from add" -l argument-hex -d 'smLaunchArgument as hex octets' -r
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from add" -l max-running -d 'smLaunchMaxRunning: runs that may execute at once (default 1)' -r
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from add" -l max-completed -d 'smLaunchMaxCompleted: finished runs kept, the oldest go first (default 1)' -r
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from add" -l lifetime -d 'smLaunchLifeTime in seconds: a run is aborted when it runs out (default 3600)' -r
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from add" -l expire -d 'smLaunchExpireTime in seconds: a finished run\'s row stays this long (default 3600)' -r
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from add" -l storage -d 'smLaunchStorageType: nonVolatile buttons survive a restart of the daemon (it needs [host] state_dir); default volatile' -r
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from add" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from add" -l autostart -d 'smLaunchAdminStatus autostart: start a run whenever the button becomes enabled, such as when the daemon starts'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from add" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from list" -l owner -d 'Only this owner\'s buttons' -r
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from list" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from list" -l json -d 'The rows as a JSON array, with the smLaunchTable column names'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from list" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from start" -l argument -d 'smLaunchArgument as text' -r
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from start" -l argument-hex -d 'smLaunchArgument as hex octets' -r
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from start" -l index -d 'smRunIndex for the new run (default: a fresh one, as smLaunchStart 0 gives)' -r
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from start" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from start" -l wait -d 'Wait until the run has terminated; print its result and exit as `smx run` does'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from start" -l json -d 'Print the run row as JSON (with --wait: the finished row, as `smx status --json`)'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from start" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from start" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from remove" -l socket -d 'The daemon\'s control socket (default: SMX_SOCKET, else /run/smx/smx.sock for root, $XDG_RUNTIME_DIR/smx.sock otherwise)' -r -F
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from remove" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from help" -f -a "add" -d 'Create a launch button for a script (an smLaunchTable row, enabled)'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from help" -f -a "list" -d 'List the launch buttons you may see (smLaunchTable)'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from help" -f -a "start" -d 'Start a run from a launch button (smLaunchStart)'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Disable and destroy a launch button'
complete -c smx -n "__fish_smx_using_subcommand launch; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c smx -n "__fish_smx_using_subcommand runtimes" -l config -d 'Config file extending the embedded default' -r -F
complete -c smx -n "__fish_smx_using_subcommand runtimes" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand runtimes" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand completions" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug); RUST_LOG overrides'
complete -c smx -n "__fish_smx_using_subcommand completions" -s h -l help -d 'Print help'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "run" -d 'Run a script to completion through an in-process host and print its result'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "conform" -d 'Check a runtime against RFC 3179 section 6.1 from the outside'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "daemon" -d 'Run the host as a service with a local control socket'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "config" -d 'Check a config file as the daemon loads it, reporting every problem'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "ps" -d 'List the runs the daemon knows (smRunTable) that you may see'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "status" -d 'Show every column of one run'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "suspend" -d 'Suspend a run (smRunControl suspend)'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "resume" -d 'Resume a suspended run (smRunControl resume)'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "abort" -d 'Abort a run (smRunControl abort); it ends with halted'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "set" -d 'Change a run\'s lifetime (smRunLifeTime) and/or expire time (smRunExpireTime)'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "events" -d 'Follow the daemon\'s run events (state changes, results, errors, terminations)'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "script" -d 'Scripts in the daemon (smScriptTable): install, list, remove'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "launch" -d 'Launch buttons in the daemon (smLaunchTable): add, list, start, remove'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "runtimes" -d 'List the runtimes of the effective configuration (smLangTable)'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "completions" -d 'Print a shell completion script (source it, or install it where your shell looks)'
complete -c smx -n "__fish_smx_using_subcommand help; and not __fish_seen_subcommand_from run conform daemon config ps status suspend resume abort set events script launch runtimes completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c smx -n "__fish_smx_using_subcommand help; and __fish_seen_subcommand_from config" -f -a "check" -d 'Load the config as `smx daemon` would and report every problem with file:line:column'
complete -c smx -n "__fish_smx_using_subcommand help; and __fish_seen_subcommand_from script" -f -a "install" -d 'Store a script for an owner and enable it (smScriptTable, RFC 3165 7.1 and 7.2)'
complete -c smx -n "__fish_smx_using_subcommand help; and __fish_seen_subcommand_from script" -f -a "list" -d 'List the scripts you may see (smScriptTable)'
complete -c smx -n "__fish_smx_using_subcommand help; and __fish_seen_subcommand_from script" -f -a "remove" -d 'Disable and destroy a script (RFC 3165 7.4)'
complete -c smx -n "__fish_smx_using_subcommand help; and __fish_seen_subcommand_from launch" -f -a "add" -d 'Create a launch button for a script (an smLaunchTable row, enabled)'
complete -c smx -n "__fish_smx_using_subcommand help; and __fish_seen_subcommand_from launch" -f -a "list" -d 'List the launch buttons you may see (smLaunchTable)'
complete -c smx -n "__fish_smx_using_subcommand help; and __fish_seen_subcommand_from launch" -f -a "start" -d 'Start a run from a launch button (smLaunchStart)'
complete -c smx -n "__fish_smx_using_subcommand help; and __fish_seen_subcommand_from launch" -f -a "remove" -d 'Disable and destroy a launch button'
