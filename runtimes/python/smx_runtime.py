#!/usr/bin/env python3
"""The Python 3 runtime system of smx: runs Python scripts for a Script MIB host over SMX/1.1.

smx (the host) starts this program and talks SMX/1.1 (RFC 3179) with it: commands arrive on
stdin (or a TCP connection, SMX_TRANSPORT=tcp), replies and notifications leave on the
original stdout. One process runs many scripts at once, one thread per run. The contract
is docs/writing-a-runtime.md; the script API and the profiles are described in README.md
next to this file.

Standard library only, Python >= 3.11; works with `python3 -I -S`.
"""

import builtins
import collections
import fcntl
import importlib.machinery
import os
import posix
import re
import shutil
import stat
import sys
import tempfile
import threading
import time
import traceback
import types
import _thread

# --------------------------------------------------------------------------------------------
# Constants

VERSION = b"SMX/1.1"
U64_MAX = 2**64 - 1
MAX_LINE = 1 << 20          # longest command line we buffer (an Argument of 65535 octets is ~131 KB)
MAX_RESULT = 65535          # smRunResult holds at most this many octets
MAX_ERROR = 4096            # the host keeps 255 octets of smRunError; send a bit more for its log
PROFILES = ("trusted", "restricted")

SUSPEND_TIMEOUT = 3.0       # give up suspending (434) after this long
BLOCKED_AFTER = 0.25        # a thread that used no CPU for this long is parked in a C call
ABORT_TIMEOUT = 4.0         # give up aborting (434) after this long
ASYNC_AFTER = 1.0           # then try an asynchronous exception (script swallowed the first one)
ABORT_GRACE = 2.0           # a script still running this long after an abort is frozen (see _abort_point)
SHUTDOWN_TIMEOUT = 3.0      # on EOF, wait this long for runs to stop (the host waits 5 s)

# RunState digits (RFC 3179 section 5.1)
INITIALIZING, EXECUTING, SUSPENDING, SUSPENDED, RESUMING, ABORTING, TERMINATED = range(1, 8)
# ExitCode digits
NO_ERROR, HALTED, LIFETIME, NO_RESOURCES, LANGUAGE_ERROR, RUNTIME_ERROR, INVALID_ARGUMENT, \
    SECURITY_VIOLATION, GENERIC_ERROR = range(1, 10)


def _code_file():
    return None


_RT_FILE = _code_file.__code__.co_filename  # frames of this file are never traced or stopped

_orig_start_new_thread = _thread.start_new_thread
_tls = threading.local()    # .run: the Run of a script thread; .policy: the Run if restricted
_real_stderr = sys.stderr
_log_lock = threading.Lock()


def _log(text):
    """Diagnostics on stderr (the host logs each line)."""
    try:
        with _log_lock:
            _real_stderr.write("smx-python: %s\n" % text)
            _real_stderr.flush()
    except Exception:
        pass


# --------------------------------------------------------------------------------------------
# Octet strings (RFC 3179 section 5.1)

_QUOTABLE = bytes(range(0x20, 0x7F)) + b"\t\n\r"
_ESCAPES = {0x5C: b"\\\\", 0x22: b'\\"', 0x09: b"\\t", 0x0A: b"\\n", 0x0D: b"\\r"}
_NEEDS_ESCAPE = re.compile(rb'[\\"\t\n\r]')


def encode_octets(value):
    """The wire form of an octet string: QuotedString if every octet is printable ASCII,
    space, tab, CR or LF (escaped), else an upper-case HexString; empty is ""."""
    if not value:
        return b'""'
    if not value.translate(None, _QUOTABLE):
        return b'"' + _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group()[0]], value) + b'"'
    return value.hex().upper().encode("ascii")


def encode_quoted_lossy(text):
    """A QuotedString for a 511 message; octets it cannot carry become \\xNN text."""
    raw = text.encode("utf-8", "backslashreplace")
    raw = b"".join(bytes([b]) if b in _QUOTABLE else b"\\x%02X" % b for b in raw)
    return b'"' + _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group()[0]], raw) + b'"'


def to_octets(value):
    """Script values to octets: bytes-like raw, str as UTF-8 (surrogateescape), else str()."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        value = str(value)
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace")


# --------------------------------------------------------------------------------------------
# Command parsing (RFC 3179 sections 5.2 and 6.1, mirroring the host's decoder)

_TOKEN = re.compile(rb"[^ \t\r\n]*")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_DIGITS = re.compile(rb"[0-9]+\Z")
_PROFILE = re.compile(rb"[0-9A-Za-z\-./:_]+\Z")
_WORDS = ("hello", "start", "suspend", "resume", "abort", "status")


class Reject(Exception):
    """A command that gets a negative reply: code, Id."""

    def __init__(self, code, cid, why):
        super().__init__(why)
        self.code = code
        self.id = cid


class Discard(Exception):
    """A message without a recognizable command word and Id (section 6.1)."""


def _digits(tok):
    if not _DIGITS.match(tok):
        return None
    n = int(tok)
    return n if n <= U64_MAX else None


class _Cursor:
    def __init__(self, msg):
        self.msg = msg
        self.pos = 0

    def token(self):
        m = _TOKEN.match(self.msg, self.pos)
        self.pos = m.end()
        return m.group()

    def wsp(self):
        if self.pos < len(self.msg) and self.msg[self.pos] in b" \t":
            self.pos += 1
            return True
        return False

    def field(self, check):
        if not self.wsp():
            return None
        return check(self.token())

    def quoted(self):
        """A QuotedString with the escapes of section 5.1, or None."""
        msg, i, n = self.msg, self.pos, len(self.msg)
        if i >= n or msg[i] != 0x22:
            return None
        out = bytearray()
        i += 1
        while i < n:
            c = msg[i]
            if c == 0x22:
                self.pos = i + 1
                return bytes(out)
            if c == 0x5C:
                if i + 1 >= n:
                    return None
                d = msg[i + 1]
                if d == 0x74:
                    out.append(9)
                elif d == 0x6E:
                    out.append(10)
                elif d == 0x72:
                    out.append(13)
                elif 0x21 <= d <= 0x7E or d in (0x20, 0x09):
                    out.append(d)
                else:
                    return None
                i += 2
            elif 0x21 <= c <= 0x7E or c in (0x20, 0x09):
                out.append(c)
                i += 1
            else:
                return None
        return None

    def value(self):
        """HexString / QuotedString, or None."""
        if self.pos < len(self.msg) and self.msg[self.pos] == 0x22:
            return self.quoted()
        m = _HEX.match(self.msg, self.pos)
        if m is None or len(m.group()) % 2:
            return None
        self.pos = m.end()
        return bytes.fromhex(m.group().decode("ascii"))

    def field_end(self):
        """A field ends at WSP, CR, LF or the end of the line, as a token does: `"a"x` or
        `ABZZ` is one bad field (so start blames the right parameter, section 6.1.2 item 1),
        not a good field followed by junk."""
        return self.pos >= len(self.msg) or self.msg[self.pos] in b" \t\r\n"

    def at_end(self):
        return self.msg[self.pos:] in (b"\r\n", b"\n")


def parse_command(msg, truncated=False):
    """Decodes one message (terminator included) into (word, id, fields...).

    Raises Discard or Reject with the reply code section 6.1 prescribes. With `truncated`
    (the prefix of an over-long line) a start whose Argument is cut gets 433, others 401.
    """
    c = _Cursor(msg)
    head = c.token()
    if not head or not c.wsp():
        raise Discard("no command word and Id")
    cid = _digits(c.token())
    if cid is None:
        raise Discard("no valid Id")
    word = head.decode("latin-1").lower()
    if word not in _WORDS:
        raise Reject(402, cid, "unknown command")
    if word == "hello":
        fields = ()
    elif word == "start":
        run = c.field(_digits)
        if run is None:
            raise Reject(431, cid, "bad RunId")
        if not c.wsp():
            raise Reject(421, cid, "bad Script")
        script = c.quoted()
        if script is None or not c.field_end():
            raise Reject(421, cid, "bad Script")
        profile = c.field(lambda t: t.decode("ascii") if _PROFILE.match(t) else None)
        if profile is None:
            raise Reject(432, cid, "bad Profile")
        if truncated:
            raise Reject(433, cid, "Argument too long")
        if not c.wsp():
            raise Reject(433, cid, "bad Argument")
        argument = c.value()
        if argument is None or not c.field_end():
            raise Reject(433, cid, "bad Argument")
        fields = (run, script, profile, argument)
    else:
        run = c.field(_digits)
        if run is None:
            raise Reject(431, cid, "bad RunId")
        fields = (run,)
    if truncated or not c.at_end():
        raise Reject(401, cid, "syntax error")
    return (word, cid) + fields


# --------------------------------------------------------------------------------------------
# The SMX channel: every message is one write under one lock, CRLF-terminated

class Channel:
    def __init__(self, write):
        self.lock = threading.RLock()
        self._write = write
        self.dead = False

    def send(self, *messages):
        """Writes whole messages (each a sequence of fields) in one go, in order."""
        data = b"".join(b" ".join(m) + b"\r\n" for m in messages)
        with self.lock:
            if self.dead:
                return False
            try:
                self._write(data)
                return True
            except (OSError, ValueError) as e:
                self.dead = True
                _log("SMX channel closed: %s" % e)
                return False


def _num(n):
    return b"%d" % n


def _pipe_writer(fd):
    write_fd = os.write     # the real one: script threads send through here (see _guard_os)

    def write(data):
        view = memoryview(data)
        while view:
            n = write_fd(fd, view)
            view = view[n:]
    return write


_chan = None            # the Channel
_runs = {}              # RunId -> Run (until its 538 is sent)
_runs_lock = threading.Lock()


def _reply(code, cid, *rest):
    _chan.send((_num(code), _num(cid)) + rest)


# --------------------------------------------------------------------------------------------
# Runs

class _Abort(BaseException):
    """Raised inside a script thread to stop it (abort or shutdown): synchronously by the
    tracer or the sleep/smx functions, asynchronously (PyThreadState_SetAsyncExc) as a
    fallback. Raising it from the tracer turns tracing off for the thread, so creating one
    turns it back on: a script that swallows it still meets the tracer again."""

    def __init__(self, *args):
        super().__init__(*args)
        run = _own_run()
        if run is not None and run.abort_req:
            if run.abort_raised is None:
                run.abort_raised = time.monotonic()
            _rearm(run)


class ArgumentError(Exception):
    """Raise it in a script to reject the Argument: the run ends with invalidArgument(7)."""


class SecurityViolation(PermissionError):
    """Raised when the restricted profile forbids an operation; the run ends with
    securityViolation(8) even if the script catches it."""


ArgumentError.__module__ = SecurityViolation.__module__ = "smx"


class Run:
    def __init__(self, rid, script, source, profile, argument):
        self.id = rid
        self.rid = _num(rid)
        self.script = script
        self.source = source
        self.profile = profile
        self.restricted = profile == "restricted"
        self.argument = argument
        self.state = EXECUTING          # changed under _chan.lock
        self.ended = False              # 538 sent; changed under _runs_lock + _chan.lock
        self.cond = threading.Condition()
        self.suspend_req = False        # the next four are changed under cond
        self.abort_req = False
        self.parked = False
        self.frozen = False
        self.abort_raised = None        # monotonic time _Abort was first raised
        self.in_script = False          # the thread is inside exec(); changed under async_lock
        self.async_lock = threading.Lock()
        self.async_used = False
        self.violation = None
        self.tmpdir = None
        self.tmproot = None
        self.ident = None               # the thread running the script
        self.go = threading.Event()
        self.done = threading.Event()
        self.ctl_q = collections.deque()
        self.ctl_busy = False
        self.ctl_lock = threading.Lock()
        self.ltrace = _make_tracer(self)

    def send(self, code, payload, state=None):
        """A 532/533/536/537 for this run (dropped once the run has ended)."""
        with _chan.lock:
            if self.ended:
                return False
            st = self.state if state is None else state
            return _chan.send((_num(code), b"0", self.rid, _num(st), encode_octets(payload)))

    def set_state(self, state):
        """Changes the state and sends 531; False if the run has already ended."""
        with _chan.lock:
            if self.ended:
                return False
            self.state = state
            _chan.send((b"531", b"0", self.rid, _num(state)))
            return True


def _make_tracer(run):
    """The local trace function installed on a script thread's frames while a suspend or
    abort is pending (line and opcode events). Without a request it removes itself."""

    def ltrace(frame, event, arg):
        if run.abort_req:
            if run.in_script and not frame.f_code.co_filename.startswith("<frozen"):
                _abort_point(run, frame)
            return ltrace
        if run.suspend_req:
            if not frame.f_code.co_filename.startswith("<frozen"):
                _park(run, frame)
            return ltrace
        frame.f_trace = None
        frame.f_trace_opcodes = False
        return None

    return ltrace


def _abort_point(run, frame=None):
    """In the run's own thread, with an abort pending: raise _Abort. A script that still
    runs ABORT_GRACE after the first one (it swallows them) is frozen here for good, in its
    own code or at a sleep/smx call (never holding runtime locks): it gets no CPU and never
    runs again, and the controller reports the run halted without it."""
    first = run.abort_raised
    if first is not None and time.monotonic() - first > ABORT_GRACE and (
            frame is None or frame.f_code.co_filename == run.script):
        with run.cond:
            run.frozen = True
            run.cond.notify_all()
            while True:
                run.cond.wait()
    raise _Abort()


def _park(run, frame=None):
    """In the run's own thread: block (no CPU) while a suspend is pending."""
    with run.cond:
        if run.suspend_req and not run.abort_req:
            run.parked = True
            run.cond.notify_all()
            while run.suspend_req and not run.abort_req:
                run.cond.wait()
            run.parked = False
            run.cond.notify_all()
        abort = run.abort_req
    if abort:
        _abort_point(run, frame)


def _own_run():
    """The Run whose main script thread is the current thread, else None."""
    run = getattr(_tls, "run", None)
    if run is not None and run.ident == threading.get_ident():
        return run
    return None


def _rearm(run):
    """Keeps suspend/abort working after something turned tracing off."""
    if sys.gettrace() is None and run.in_script:
        saved = getattr(_tls, "policy", None)
        _tls.policy = None
        try:
            sys.settrace(getattr)
        finally:
            _tls.policy = saved


def _checkpoint(run):
    """At an smx API call or sleep in the run's thread: honour abort and suspend."""
    if run.abort_req:
        _abort_point(run)
    if run.suspend_req:
        _park(run)
    _rearm(run)


# --------------------------------------------------------------------------------------------
# Interruptible sleep

_orig_sleep = time.sleep


def _seconds(secs):
    if isinstance(secs, (int, float)):
        value = float(secs)
    else:
        try:
            value = type(secs).__float__(secs)
        except AttributeError:
            raise TypeError("'%s' object cannot be interpreted as an integer or float"
                            % type(secs).__name__) from None
    if value != value:
        raise ValueError("Invalid value NaN (not a number)")
    if value < 0:
        raise ValueError("sleep length must be non-negative")
    return value


def sleep(secs):
    """time.sleep for scripts: returns early to stop at an abort, pauses while suspended."""
    run = _own_run()
    if run is None:
        return _orig_sleep(secs)
    secs = _seconds(secs)
    _checkpoint(run)
    deadline = time.monotonic() + secs
    with run.cond:
        while True:
            if run.abort_req:
                break
            if run.suspend_req:
                run.parked = True
                run.cond.notify_all()
                while run.suspend_req and not run.abort_req:
                    run.cond.wait()
                run.parked = False
                run.cond.notify_all()
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            run.cond.wait(remaining)
    _abort_point(run)


sleep.__wrapped__ = _orig_sleep


# --------------------------------------------------------------------------------------------
# Stopping and suspending a script thread from outside

_STOP_CODE = None   # the code object of _execute; frames above it belong to the script


def _install_tracer(run):
    """Sets the run's local tracer on every script frame of its thread's stack."""
    frame = sys._current_frames().get(run.ident)
    frames = []
    while frame is not None:
        if frame.f_code is _STOP_CODE:
            break
        if frame.f_code.co_filename != _RT_FILE:
            frames.append(frame)
        frame = frame.f_back
    else:
        return          # not inside the script (compiling, finishing): nothing to trace
    for f in frames:
        if f.f_trace is None or f.f_trace is run.ltrace:
            f.f_trace = run.ltrace
        f.f_trace_lines = True
        f.f_trace_opcodes = True    # a one-line loop (`while 1: pass`) has no line events


def _cpu_clock(run):
    try:
        return time.pthread_getcpuclockid(run.ident)
    except (AttributeError, OSError, TypeError, OverflowError):
        return None


def _cpu_time(clock):
    if clock is None:
        return None
    try:
        return time.clock_gettime(clock)
    except OSError:
        return None


_set_async_exc = None


def _async_exc_function():
    """PyThreadState_SetAsyncExc via ctypes, loaded once and scrubbed from sys.modules so a
    restricted script cannot pick up a loaded ctypes (its import is then audited again)."""
    global _set_async_exc
    if _set_async_exc is None:
        before = set(sys.modules)
        try:
            import ctypes
            f = ctypes.pythonapi.PyThreadState_SetAsyncExc
            f.restype = ctypes.c_int
            _set_async_exc = (f, ctypes.c_ulong, ctypes.py_object)
        except Exception as e:
            _log("no asynchronous exceptions (ctypes unavailable: %s)" % e)
            _set_async_exc = False
        for name in set(sys.modules) - before:
            if name == "ctypes" or name.startswith(("ctypes.", "_ctypes")):
                del sys.modules[name]
    return _set_async_exc


def _async_abort(run):
    """Raises _Abort asynchronously in a script that swallowed it (only inside exec())."""
    fn = _async_exc_function()
    if not fn:
        return
    f, c_ulong, py_object = fn
    with run.async_lock:
        if not run.in_script:
            return
        top = sys._current_frames().get(run.ident)
        if top is None or top.f_code.co_filename == _RT_FILE:
            return      # in the runtime's own code (it checks for aborts there itself)
        run.async_used = True
        f(c_ulong(run.ident), py_object(_Abort))


def _clear_async(run):
    fn = _async_exc_function()
    if fn:
        f, c_ulong, _ = fn
        f(c_ulong(run.ident), None)


def _stop_runs(runs, timeout):
    """Aborts the runs and waits until each has ended (or is frozen for good)."""
    for run in runs:
        with run.cond:
            run.abort_req = True
            run.cond.notify_all()
    start = time.monotonic()
    next_async = start + ASYNC_AFTER
    pending = list(runs)
    while pending:
        for run in pending:
            if run.frozen and not run.ended:
                _finish(run, HALTED, None)
        pending = [r for r in pending if not r.done.is_set()]
        if not pending:
            break
        now = time.monotonic()
        if now - start >= timeout:
            break
        for run in pending:
            _install_tracer(run)
            if now >= next_async:
                _async_abort(run)
        if now >= next_async:
            next_async = now + 0.5
        pending[0].done.wait(0.02 if now - start < 0.2 else 0.05)
    return [r for r in runs if not r.done.is_set()]


def _wait_parked(run):
    """After a suspend request: True once the thread is parked, or is blocked in a C call
    (no CPU used), so it cannot make progress and will park when it returns."""
    start = time.monotonic()
    clock = _cpu_clock(run)
    last_cpu, last_t = _cpu_time(clock), start
    while True:
        _install_tracer(run)
        with run.cond:
            run.cond.wait_for(lambda: run.parked or run.done.is_set(), 0.02)
            if run.parked:
                return True
        if run.done.is_set() or run.abort_req:
            return False
        now = time.monotonic()
        if now - start >= SUSPEND_TIMEOUT:
            return False
        if now - last_t >= BLOCKED_AFTER:
            cpu = _cpu_time(clock)
            if cpu is None or last_cpu is None:
                return True   # cannot measure: it has not reached a line in 0.25 s, so it waits
            if cpu - last_cpu < 0.02 * (now - last_t):
                return True
            last_cpu, last_t = cpu, now


# --------------------------------------------------------------------------------------------
# Control commands (suspend, resume, abort), serialized per run off the reader thread

def _enqueue(run, op):
    with run.ctl_lock:
        run.ctl_q.append(op)
        if run.ctl_busy:
            return
        run.ctl_busy = True
    _orig_start_new_thread(_ctl_worker, (run,))


def _ctl_worker(run):
    while True:
        with run.ctl_lock:
            if not run.ctl_q:
                run.ctl_busy = False
                return
            op = run.ctl_q.popleft()
        try:
            op()
        except Exception:
            _log("control command failed:\n" + traceback.format_exc())


def _do_suspend(run, cid):
    with _chan.lock:
        if run.ended or run.state not in (EXECUTING, SUSPENDED):
            return _reply(434, cid)
        if run.state == SUSPENDED:
            return _reply(231, cid, b"4")
        run.set_state(SUSPENDING)
    with run.cond:
        run.suspend_req = True
        run.cond.notify_all()
    ok = _wait_parked(run)
    if not ok:
        with run.cond:
            run.suspend_req = False
            run.cond.notify_all()
    with _chan.lock:
        if run.ended or run.state != SUSPENDING:
            return _reply(434, cid)
        if ok:
            run.set_state(SUSPENDED)
            return _reply(231, cid, b"4")
        run.set_state(EXECUTING)
        _reply(434, cid)


def _do_resume(run, cid):
    with _chan.lock:
        if run.ended or run.state not in (EXECUTING, SUSPENDED):
            return _reply(434, cid)
        if run.state == EXECUTING:
            return _reply(231, cid, b"2")
        run.set_state(RESUMING)
    with run.cond:
        run.suspend_req = False
        run.cond.notify_all()
        run.cond.wait_for(lambda: not run.parked or run.done.is_set(), 1.0)
    with _chan.lock:
        if run.ended or run.state != RESUMING:
            return _reply(434, cid)
        run.set_state(EXECUTING)
        _reply(231, cid, b"2")


def _do_abort(run, cid):
    with _chan.lock:
        if run.ended:
            return _reply(232, cid)
        if run.state != ABORTING:
            run.set_state(ABORTING)
    _stop_runs([run], ABORT_TIMEOUT)
    with _chan.lock:
        if run.ended:
            return _reply(232, cid)
        _log("run %d: could not be stopped within %.0f s" % (run.id, ABORT_TIMEOUT))
        _reply(434, cid)


# --------------------------------------------------------------------------------------------
# The run thread

# Whether a restricted script has ever run in this process: until one has, the wrappers of
# _guard_os go straight to the real function (a trusted runtime process, smx starts one
# per runtime profile, never pays for them). Never reset: threads a restricted script
# started may outlive its run.
_restricted_live = False


def _execute(run, code, globals_):
    global _restricted_live
    # Frames above this one belong to the script (see _install_tracer).
    _checkpoint(run)    # a suspend or abort that came while compiling
    try:
        if run.restricted:
            _restricted_live = True
            _tls.policy = run
        exec(code, globals_)
    finally:
        _tls.policy = None


_STOP_CODE = _execute.__code__


def _run_script(run, code, globals_):
    """Runs the compiled script; returns the exception that ended it, or None."""
    exc = None
    sys.settrace(getattr)       # a C-level no-op tracer: enables per-frame tracing cheaply
    try:
        with run.async_lock:
            run.in_script = True
        _execute(run, code, globals_)
    except BaseException as e:
        exc = e
    while True:     # no asynchronous exception may reach the runtime's own code after this
        try:
            with run.async_lock:
                run.in_script = False
                if run.async_used:
                    _clear_async(run)
            sys.settrace(None)
            return exc
        except _Abort as e:
            if exc is None:
                exc = e


def _guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
    """__import__ of restricted runs: the forbidden modules stay forbidden even when another
    run already loaded them (a cached import raises no audit event)."""
    if level == 0 and name.partition(".")[0] in _BLOCKED_IMPORTS:
        run = getattr(_tls, "policy", None)
        if run is not None:
            _violation(run, "import of %s" % name)
    return builtins.__import__(name, globals, locals, fromlist, level)


def _script_globals(run):
    script_builtins = dict(builtins.__dict__)   # a script's changes stay in its run
    if run.restricted:
        script_builtins["__import__"] = _guarded_import
    return {
        "__name__": "__main__",
        "__file__": run.script,
        "__doc__": None,
        "__package__": None,
        "__spec__": None,
        "__loader__": None,
        "__builtins__": script_builtins,
    }


def _clip(text):
    raw = to_octets(text)
    if len(raw) > MAX_ERROR:
        raw = raw[:MAX_ERROR - 4] + b" ..."
    return raw


def _syntax_message(run, e):
    if isinstance(e, SyntaxError):
        where = "%s, line %s" % (e.filename or run.script, e.lineno)
        head = "%s: %s (%s)" % (type(e).__name__, e.msg, where)
        detail = "".join(traceback.format_exception_only(type(e), e))
        return head + "\n" + detail
    return "%s: %s (%s)" % (type(e).__name__, e, run.script)


def _strip_runtime(te, seen=None):
    """Removes the runtime's frames from a TracebackException (and its chain)."""
    seen = seen if seen is not None else set()
    if te is None or id(te) in seen:
        return
    seen.add(id(te))
    te.stack = traceback.StackSummary.from_list(
        [f for f in te.stack if f.filename != _RT_FILE])
    _strip_runtime(te.__cause__, seen)
    _strip_runtime(te.__context__, seen)


def _exception_message(run, exc):
    """'ZeroDivisionError: division by zero (line 3)' then the traceback."""
    try:
        te = traceback.TracebackException(type(exc), exc, exc.__traceback__, compact=True)
        _strip_runtime(te)
        only = [l for l in "".join(te.format_exception_only()).splitlines() if l.strip()]
        head = only[-1].strip() if only else type(exc).__name__
        lines = [f.lineno for f in te.stack if f.filename == run.script]
        if lines:
            head += " (line %s)" % lines[-1]
        return head + "\n" + "".join(te.format())
    except Exception:
        return "%s: %s" % (type(exc).__name__, exc)


def _classify(run, exc):
    """(ExitCode, error text or None) for how the script ended."""
    if run.abort_req:
        return HALTED, None
    if run.violation is not None:
        return SECURITY_VIOLATION, run.violation
    if exc is None:
        return NO_ERROR, None
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None or code == 0:
            return NO_ERROR, None
        if isinstance(code, int):
            return RUNTIME_ERROR, "SystemExit: exit status %d" % code
        return RUNTIME_ERROR, str(code)
    if isinstance(exc, ArgumentError):
        return INVALID_ARGUMENT, str(exc) or "invalid argument"
    if isinstance(exc, SecurityViolation):
        return SECURITY_VIOLATION, str(exc) or "security violation"
    if isinstance(exc, MemoryError):
        try:
            return NO_RESOURCES, _exception_message(run, exc)
        except MemoryError:
            return NO_RESOURCES, "MemoryError"
    if isinstance(exc, _Abort):
        return HALTED, None
    return RUNTIME_ERROR, _exception_message(run, exc)


_warned_tmp = False

# The directory the runs' temporary directories are made in (None: the system's). It is
# this process's own, and a watchdog process removes it once this one is gone, however it
# ended: a runtime killed with SIGKILL (by the host after its shutdown grace, or by the
# parent-death signal) leaves no /tmp/smx-run* behind.
_tmp_parent = None


def _start_tmp_watchdog():
    """Makes _tmp_parent and forks its watchdog: a process in a session of its own (so
    that a kill of this runtime's process group spares it) that holds nothing but the
    read end of a pipe, waits for EOF (this process has exited, every fd closed), removes
    the directory and exits. Called once, before any thread starts."""
    global _tmp_parent
    try:
        parent = tempfile.mkdtemp(prefix="smx-run-")
    except OSError:
        return
    try:
        r, w = os.pipe()
        pid = os.fork()
    except OSError as e:
        _log("no watchdog for %s (%s): it stays if this runtime is killed" % (parent, e))
        _tmp_parent = parent
        return
    if pid == 0:
        try:
            os.setsid()
            os.closerange(0, r)
            os.closerange(r + 1, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 65536)
            while True:
                try:
                    if not os.read(r, 1):
                        break
                except InterruptedError:
                    continue
            shutil.rmtree(parent, ignore_errors=True)
        finally:
            os._exit(0)
    os.close(r)
    w = _hide_fd(w)             # a restricted script may not close it (see _private_fds)
    _watchdog.extend((w, pid))  # w open until this process ends; not inherited by exec
    _tmp_parent = parent


# The write end of the watchdog's pipe and its pid.
_watchdog = []


def _stop_tmp_watchdog():
    """At a clean exit: removes _tmp_parent, lets the watchdog go and reaps it, so that it
    does not end up a zombie of a PID 1 that does not reap."""
    if _tmp_parent:
        shutil.rmtree(_tmp_parent, ignore_errors=True)
    if not _watchdog:
        return
    w, pid = _watchdog
    os.close(w)
    deadline = time.monotonic() + 1.0
    while True:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] or time.monotonic() > deadline:
                return
        except ChildProcessError:
            return
        _orig_sleep(0.005)


def _run_main(run):
    global _warned_tmp
    _tls.run = run
    run.go.wait()
    code, msg = GENERIC_ERROR, "internal error"
    try:
        try:
            run.tmpdir = tempfile.mkdtemp(prefix="smx-run%d-" % run.id, dir=_tmp_parent)
            run.tmproot = os.path.realpath(run.tmpdir)
        except OSError as e:
            if not _warned_tmp:
                _warned_tmp = True
                _log("no temporary directory for runs (smx.tmpdir is None): %s" % e)
        try:
            compiled = compile(run.source, run.script, "exec", dont_inherit=True)
        except (SyntaxError, ValueError, OverflowError, RecursionError) as e:
            code, msg = LANGUAGE_ERROR, _syntax_message(run, e)
        except MemoryError:
            code, msg = NO_RESOURCES, "MemoryError while compiling %s" % run.script
        else:
            run.source = None
            if run.abort_req:
                code, msg = HALTED, None
            else:
                exc = _run_script(run, compiled, _script_globals(run))
                code, msg = _classify(run, exc)
                del exc
    except BaseException as e:
        code, msg = (HALTED, None) if run.abort_req else (GENERIC_ERROR, "internal error: %r" % e)
        _log("run %d: internal error:\n%s" % (run.id, traceback.format_exc()))
    finally:
        _flush_streams()
        _finish(run, code, msg)


def _finish(run, code, msg):
    """Ends a run: removes its temp dir, sends [536] 531 7, 538, forgets its RunId."""
    if run.tmpdir and not run.ended:
        shutil.rmtree(run.tmpdir, ignore_errors=True)
    with _runs_lock:
        if run.ended:
            return
        with _chan.lock:
            if msg:
                _chan.send((b"536", b"0", run.rid, _num(run.state), encode_octets(_clip(msg))))
            run.state = TERMINATED
            _chan.send((b"531", b"0", run.rid, b"7"), (b"538", b"0", run.rid, _num(code)))
            run.ended = True
        _runs.pop(run.id, None)
    with run.cond:
        run.done.set()
        run.cond.notify_all()


# --------------------------------------------------------------------------------------------
# The smx module seen by scripts

def _current_run(name):
    run = getattr(_tls, "run", None)
    if run is None:
        raise RuntimeError("smx.%s is only available inside an SMX run" % name)
    return run


def _notify(code, name, value):
    run = _current_run(name)
    if run.ident == threading.get_ident():
        _checkpoint(run)
    payload = to_octets(value)
    if code in (532, 533) and len(payload) > MAX_RESULT:
        _log("run %d: result of %d octets cut to %d" % (run.id, len(payload), MAX_RESULT))
        payload = payload[:MAX_RESULT]
    elif code in (536, 537):
        payload = _clip(payload)
    if not run.send(code, payload):
        _log("run %d: smx.%s after the run ended, dropped" % (run.id, name))


def result(value):
    """Sends an intermediate result (532); the last one is the run's result."""
    _notify(532, "result", value)


def event(value):
    """Sends an intermediate result that triggers an smScriptResult notification (533)."""
    _notify(533, "event", value)


def error(message):
    """Reports a non-fatal error (536); the script continues."""
    _notify(536, "error", message)


def exception(message):
    """Reports a non-fatal error that triggers an smScriptException notification (537)."""
    _notify(537, "exception", message)


def _smx_getattr(name):
    run = getattr(_tls, "run", None)
    getters = {
        "argument": lambda r: r.argument,
        "argument_text": lambda r: r.argument.decode("utf-8", "surrogateescape"),
        "run_id": lambda r: r.id,
        "profile": lambda r: r.profile,
        "script": lambda r: r.script,
        "tmpdir": lambda r: r.tmpdir,
    }
    if name in getters:
        if run is None:
            raise AttributeError("smx.%s is only available inside an SMX run" % name)
        return getters[name](run)
    raise AttributeError("module 'smx' has no attribute %r" % name)


def _make_smx_module():
    m = types.ModuleType("smx", """The SMX script API of the smx Python runtime.

Per run: argument (bytes), argument_text (str), run_id, profile, script, tmpdir.
Functions: result(v) 532, event(v) 533, error(msg) 536, exception(msg) 537, sleep(s).
Raise ArgumentError to end with invalidArgument; SecurityViolation marks a forbidden
operation under the restricted profile.""")
    m.result = result
    m.event = event
    m.error = error
    m.exception = exception
    m.sleep = sleep
    m.ArgumentError = ArgumentError
    m.SecurityViolation = SecurityViolation
    m.__getattr__ = _smx_getattr
    m.__dir__ = lambda: sorted(set(m.__dict__) | {"argument", "argument_text", "run_id",
                                                   "profile", "script", "tmpdir"})
    for f in (result, event, error, exception, sleep):
        f.__module__ = "smx"
    return m


# --------------------------------------------------------------------------------------------
# Script output: print() and tracebacks go to stderr, one prefixed line each

class _ScriptStream:
    """sys.stdout/sys.stderr replacement: in script threads lines get a '[run N] ' prefix."""

    _lock = threading.Lock()

    def __init__(self, real, key):
        self._real = real
        self._key = key

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        run = getattr(_tls, "run", None)
        if run is None:
            self._emit(s)
            return len(s)
        buf = getattr(_tls, self._key, "") + s
        if "\n" in buf or len(buf) > 65536:
            head, sep, buf = buf.rpartition("\n")
            if not sep:
                head, buf = buf, ""
            prefix = "[run %d] " % run.id
            self._emit("".join(prefix + line + "\n" for line in head.split("\n")))
        setattr(_tls, self._key, buf)
        return len(s)

    def flush(self):
        run = getattr(_tls, "run", None)
        buf = getattr(_tls, self._key, "")
        if run is not None and buf:
            setattr(_tls, self._key, "")
            self._emit("[run %d] %s\n" % (run.id, buf))
        try:
            self._real.flush()
        except (OSError, ValueError):
            pass

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def isatty(self):
        return False

    def _emit(self, text):
        try:
            with self._lock:
                self._real.write(text)
                self._real.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self._real, name)


def _flush_streams():
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------
# The restricted profile: one process-wide audit hook (PEP 578), checking the current thread

_BLOCKED_EVENTS = frozenset("""
    sys.addaudithook sys.settrace sys.setprofile sys._current_frames sys._current_exceptions
    gc.get_objects gc.get_referrers gc.get_referents
    subprocess.Popen os.system os.exec os.spawn os.posix_spawn os.fork os.forkpty os.startfile
    os.kill os.killpg signal.pthread_kill os.chdir os.putenv os.unsetenv os.add_dll_directory
    resource.setrlimit resource.prlimit sqlite3.enable_load_extension sqlite3.load_extension
    urllib.Request webbrowser.open ensurepip.bootstrap
""".split())
_BLOCKED_PREFIXES = ("socket.", "ctypes.", "ftplib.", "http.client.", "imaplib.", "nntplib.",
                     "poplib.", "smtplib.", "telnetlib.", "_winapi.", "winreg.", "msvcrt.")
_BLOCKED_IMPORTS = frozenset(("ctypes", "_ctypes", "_gdbm", "_dbm", "_posixshmem"))
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_NATIVE_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _resolve(run, path, dir_fd=None, follow=True):
    """The real absolute path (str), or None if it cannot be determined."""
    try:
        path = os.fsdecode(os.fspath(path))
    except TypeError:
        return None
    if not os.path.isabs(path):
        if dir_fd is not None and dir_fd != -1:
            try:
                base = os.readlink("/proc/self/fd/%d" % dir_fd)
            except OSError:
                return None
        else:
            base = os.getcwd()
        path = os.path.join(base, path)
    if follow:
        return os.path.realpath(path)
    head, tail = os.path.split(os.path.normpath(path))
    return os.path.join(os.path.realpath(head), tail)


def _inside(run, path, dir_fd=None, follow=True, native_ok=True):
    if isinstance(path, int):
        # An fd (fchmod, ftruncate, ...): what it refers to must be inside too.
        if path in _private_fds:
            return False
        try:
            path = os.readlink("/proc/self/fd/%d" % path)
        except OSError:
            return False
        if path.endswith(" (deleted)"):
            path = path[:-len(" (deleted)")]
        follow = False
    if run.tmproot is None:
        return False
    real = _resolve(run, path, dir_fd, follow)
    if real is None:
        return False
    if not native_ok and real.endswith(_NATIVE_SUFFIXES):
        return False
    return real == run.tmproot or real.startswith(run.tmproot + os.sep)


def _writes(mode, flags):
    if isinstance(flags, int):
        return bool(flags & _WRITE_FLAGS)
    return isinstance(mode, str) and any(c in mode for c in "wax+")


def _arg(args, i, default=None):
    return args[i] if len(args) > i else default


# Another process's (or this one's) fds by path: reading them could take what is meant for
# the host or for the runtime.
_FD_PATH = re.compile(r"/proc/(self|thread-self|\d+)/(task/\d+/)?fd/|/dev/fd/|/dev/std(in|out|err)$")


def _lexical(path):
    """The absolute, normalised form of a path without following links ("" if none)."""
    try:
        path = os.fsdecode(os.fspath(path))
    except TypeError:
        return ""
    return os.path.normpath(os.path.join(os.getcwd(), path))


def _path_rule(event, args, run):
    """None if a file-system event is allowed, else the offending path."""
    a = lambda i, d=None: _arg(args, i, d)
    if event == "open":
        if _is_private(a(0)) or _FD_PATH.match(_lexical(a(0))):
            return a(0)     # the SMX channel, by fd or through /proc/self/fd, /dev/fd: never
        if isinstance(a(0), int) or not _writes(a(1), a(2)) \
                or _inside(run, a(0), native_ok=False):
            return None
        return a(0)
    if event in ("os.remove", "os.rmdir"):
        return None if _inside(run, a(0), a(1), follow=False) else a(0)
    if event == "os.mkdir":
        return None if _inside(run, a(0), a(2), follow=False) else a(0)
    if event == "os.utime":
        return None if _inside(run, a(0), a(len(args) - 1)) else a(0)
    if event == "os.chown":
        return None if _inside(run, a(0), a(3)) else a(0)
    if event == "os.chmod":
        return None if _inside(run, a(0), a(2)) else a(0)
    if event in ("os.chflags", "os.lchflags", "os.truncate", "os.setxattr", "os.removexattr",
                 "shutil.chown", "shutil.rmtree"):
        return None if _inside(run, a(0)) else a(0)
    if event in ("os.rename", "os.link"):
        follow = event == "os.link"
        if not _inside(run, a(0), a(2), follow=follow):
            return a(0)
        return None if _inside(run, a(1), a(3), follow=False, native_ok=False) else a(1)
    if event == "os.symlink":
        dst = a(1)
        if not _inside(run, dst, a(2), follow=False, native_ok=False):
            return dst
        real_dst = _resolve(run, dst, a(2), follow=False)
        target = os.path.join(os.path.dirname(real_dst), os.fsdecode(os.fspath(a(0))))
        return None if _inside(run, target) else a(0)
    if event in ("shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree"):
        return None if _inside(run, a(1), native_ok=False) else a(1)
    if event == "shutil.move":
        if not _inside(run, a(0), follow=False):
            return a(0)
        return None if _inside(run, a(1), native_ok=False) else a(1)
    if event == "shutil.make_archive":
        return None if _inside(run, a(0)) else a(0)
    if event == "shutil.unpack_archive":
        return None if a(1) is None or _inside(run, a(1)) else a(1)
    if event == "sqlite3.connect":
        db = a(0)
        if isinstance(db, (str, bytes)):
            text = os.fsdecode(db)
            if text in ("", ":memory:") or (text.startswith("file:") and "mode=ro" in text):
                return None
        return None if _inside(run, db) else db
    return None


_PATH_EVENTS = frozenset("""
    open os.remove os.rmdir os.mkdir os.chmod os.utime os.chown os.chflags os.lchflags
    os.truncate os.setxattr os.removexattr os.rename os.link os.symlink shutil.chown
    shutil.rmtree shutil.copyfile shutil.copymode shutil.copystat shutil.copytree shutil.move
    shutil.make_archive shutil.unpack_archive sqlite3.connect
""".split())


_SET_ID_BITS = stat.S_ISUID | stat.S_ISGID


def _mode_rule(event, args):
    """What is wrong with the mode of a chmod/mkdir, wherever it is (None if nothing): a
    set-user-ID or set-group-ID file would let others act as the runtime's user."""
    mode = _arg(args, 1)
    if event in ("os.chmod", "os.mkdir") and isinstance(mode, int) and mode & _SET_ID_BITS:
        return "%s to set-user/group-ID mode %o: %s" % (event, mode, _describe(event, args))
    return None


# Audit events whose first argument is an fd: never one of the runtime's own.
_FD_EVENTS = frozenset("fcntl.fcntl fcntl.ioctl fcntl.flock fcntl.lockf os.lockf mmap.__new__".split())


def _describe(event, args):
    text = "%s%r" % (event, tuple(args))
    return text if len(text) <= 160 else text[:157] + "..."


def _violation(run, what):
    """Records a violation on the run (first one wins) and raises SecurityViolation."""
    line = None
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename == run.script:
            line = frame.f_lineno
            break
        frame = frame.f_back
    del frame
    msg = "security violation: profile restricted forbids %s" % what
    if line is not None:
        msg += " (line %d)" % line
    if run.violation is None:
        run.violation = msg
    raise SecurityViolation(msg)


def _audit(event, args):
    run = getattr(_tls, "policy", None)
    if run is None or getattr(_tls, "in_audit", False):
        return
    _tls.in_audit = True
    try:
        what = None
        if event in _BLOCKED_EVENTS or event.startswith(_BLOCKED_PREFIXES):
            what = _describe(event, args)
        elif event in _PATH_EVENTS:
            what = _mode_rule(event, args)
            bad = None if what else _path_rule(event, args, run)
            if bad is not None:
                if _is_private(bad):
                    what = "%s of the SMX channel: %s" % (event, _describe(event, args))
                else:
                    what = "%s outside smx.tmpdir: %s" % (event, _describe(event, args))
        elif event in _FD_EVENTS and args and _is_private(args[0]):
            what = "%s on the SMX channel: %s" % (event, _describe(event, args))
        elif event == "import" and args and args[0] in _BLOCKED_IMPORTS:
            what = "import of %s" % args[0]
        if what is not None:
            _violation(run, what)
    finally:
        _tls.in_audit = False


# The runtime's own fds: the SMX channel (and the tmp watchdog's pipe). They sit at high
# numbers, close-on-exec (_hide_fd); a restricted script may not use them by number (the
# wrappers of _guard_os and the `open` rule), nor open what they refer to by a path such as
# /proc/self/fd/N or /dev/fd/N (_private_files: their (st_dev, st_ino)).
_private_fds = set()
_private_files = set()


def _hide_fd(fd):
    """Moves fd above the numbers a script is likely to get (close-on-exec) and records it as
    private; returns the new fd."""
    try:
        soft = os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        soft = 1024
    low = max(3, (soft if 0 < soft < 1024 else 1024) - 16)
    try:
        new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
    except OSError:
        new = fd    # no room up there: it stays where it is (dup'ed fds are close-on-exec)
    else:
        os.close(fd)
    _private_fds.add(new)
    try:
        st = os.fstat(new)
        _private_files.add((st.st_dev, st.st_ino))
    except OSError:
        pass
    return new


def _is_private(path):
    """True if `path` (an fd or a path, followed) is one of the runtime's own fds."""
    if isinstance(path, bool):
        return False
    if isinstance(path, int):
        return path in _private_fds
    try:
        st = os.stat(path)
    except (OSError, TypeError, ValueError):
        return False
    return (st.st_dev, st.st_ino) in _private_files


# os functions that take fds but raise no audit event: (name, positions of fd arguments).
_FD_FUNCTIONS = (
    ("write", (0,)), ("writev", (0,)), ("pwrite", (0,)), ("pwritev", (0,)),
    ("read", (0,)), ("readv", (0,)), ("pread", (0,)), ("preadv", (0,)),
    ("sendfile", (0, 1)), ("splice", (0, 1)), ("copy_file_range", (0, 1)),
    ("dup", (0,)), ("dup2", (0, 1)), ("close", (0,)), ("set_inheritable", (0,)),
    ("set_blocking", (0,)), ("fsync", (0,)), ("fdatasync", (0,)), ("lseek", (0,)),
    ("login_tty", (0,)), ("tcsetpgrp", (0,)), ("posix_fallocate", (0,)),
    ("posix_fadvise", (0,)),
)
# os functions refused outright under restricted (no audit event either): device files and
# FIFOs, and ending the whole process (every run of the owner with it).
_REFUSED_FUNCTIONS = ("mknod", "mkfifo", "_exit", "abort")
_REFUSED_FAULTHANDLER = ("enable", "dump_traceback", "dump_traceback_later", "register")


def _guard_fd_function(name, real, positions):
    def guarded(*args, **kwargs):
        run = _restricted_live and getattr(_tls, "policy", None)
        if run:
            for i in positions:
                fd = args[i] if len(args) > i else None
                if isinstance(fd, int) and fd in _private_fds:
                    _violation(run, "os.%s on the SMX channel (fd %d)" % (name, fd))
        return real(*args, **kwargs)
    guarded.__name__ = guarded.__qualname__ = name
    guarded.__doc__ = real.__doc__
    return guarded


def _guard_refused(what, real):
    def guarded(*args, **kwargs):
        run = _restricted_live and getattr(_tls, "policy", None)
        if run:
            _violation(run, _describe(what, args))
        return real(*args, **kwargs)
    guarded.__name__ = guarded.__qualname__ = what.rpartition(".")[2]
    guarded.__doc__ = real.__doc__
    return guarded


def _guard_os_open(real):
    def open(path, flags, mode=0o777, *args, **kwargs):
        run = _restricted_live and getattr(_tls, "policy", None)
        if run and flags & os.O_CREAT and mode & _SET_ID_BITS:
            _violation(run, "os.open with set-user/group-ID mode %o: %r" % (mode, path))
        return real(path, flags, mode, *args, **kwargs)
    open.__doc__ = real.__doc__
    return open


def _closerange(real):
    def closerange(fd_low, fd_high):
        run = _restricted_live and getattr(_tls, "policy", None)
        if run and any(fd_low <= fd < fd_high for fd in _private_fds):
            _violation(run, "os.closerange(%d, %d) over the SMX channel" % (fd_low, fd_high))
        return real(fd_low, fd_high)
    closerange.__doc__ = real.__doc__
    return closerange


def _guard_os():
    """Wraps the os (= posix) functions CPython raises no audit event for, so that the
    restricted profile covers them: fd operations on the runtime's private fds, mknod and
    mkfifo, set-ID modes of os.open, os._exit, faulthandler's writers. Inert outside
    restricted script threads."""
    wrapped = {}
    for name, positions in _FD_FUNCTIONS:
        real = getattr(posix, name, None)
        if real is not None:
            wrapped[name] = _guard_fd_function(name, real, positions)
    for name in _REFUSED_FUNCTIONS:
        real = getattr(posix, name, None)
        if real is not None:
            wrapped[name] = _guard_refused("os." + name, real)
    wrapped["open"] = _guard_os_open(posix.open)
    wrapped["closerange"] = _closerange(posix.closerange)
    for name, fn in wrapped.items():
        setattr(posix, name, fn)
        setattr(os, name, fn)
    import faulthandler
    for name in _REFUSED_FAULTHANDLER:
        setattr(faulthandler, name, _guard_refused("faulthandler." + name,
                                                   getattr(faulthandler, name)))


# --------------------------------------------------------------------------------------------
# Patches of shared modules, all inert outside script threads

def _patch_modules():
    time.sleep = sleep
    _guard_os()

    orig_start = _thread.start_new_thread

    def start_new_thread(function, args, kwargs=None):
        """Threads a script starts inherit its run (API, output prefix, restrictions)."""
        run = getattr(_tls, "run", None)
        if run is not None:
            policy = getattr(_tls, "policy", None)
            inner = function

            def child(*a, **kw):
                _tls.run = run
                _tls.policy = policy
                return inner(*a, **kw)

            function = child
        if kwargs is None:
            return orig_start(function, args)
        return orig_start(function, args, kwargs)

    _thread.start_new_thread = _thread.start_new = start_new_thread
    threading._start_new_thread = start_new_thread

    try:
        import _posixsubprocess
    except ImportError:
        pass
    else:
        orig_fork_exec = _posixsubprocess.fork_exec

        def fork_exec(*a, **kw):
            run = getattr(_tls, "policy", None)
            if run is not None:
                _violation(run, "_posixsubprocess.fork_exec")
            return orig_fork_exec(*a, **kw)

        _posixsubprocess.fork_exec = fork_exec

    orig_gettempdir, orig_gettempdirb = tempfile.gettempdir, tempfile.gettempdirb

    def gettempdir():
        run = getattr(_tls, "policy", None)
        if run is not None and run.tmpdir:
            return run.tmpdir
        return orig_gettempdir()

    def gettempdirb():
        run = getattr(_tls, "policy", None)
        if run is not None and run.tmpdir:
            return os.fsencode(run.tmpdir)
        return orig_gettempdirb()

    tempfile.gettempdir, tempfile.gettempdirb = gettempdir, gettempdirb


# --------------------------------------------------------------------------------------------
# Command dispatch (on the reader thread)

_cookie = None


def _dispatch(line, truncated=False):
    try:
        cmd = parse_command(line, truncated)
    except Discard as e:
        _chan.send((b"511", b"0", encode_quoted_lossy("discarded a message: %s" % e)))
        return
    except Reject as e:
        _reply(e.code, e.id)
        return
    word, cid = cmd[0], cmd[1]
    if word == "hello":
        if _cookie:
            _reply(211, cid, VERSION, _cookie)
        else:
            _reply(211, cid, VERSION)
    elif word == "start":
        _start(cid, *cmd[2:])
    elif word == "status":
        with _runs_lock:
            run = _runs.get(cmd[2])
            if run is None:
                _reply(431, cid)
            else:
                with _chan.lock:
                    _reply(231, cid, _num(run.state))
    else:
        with _runs_lock:
            run = _runs.get(cmd[2])
        if run is None:
            return _reply(431, cid)
        op = {"suspend": _do_suspend, "resume": _do_resume, "abort": _do_abort}[word]
        _enqueue(run, lambda: op(run, cid))


def _read_script(path):
    """The script's bytes, or None if it is not a readable regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError):
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)


def _start(cid, rid, script, profile, argument):
    with _runs_lock:
        if rid in _runs:
            return _reply(431, cid)
    path = os.fsdecode(script)
    source = _read_script(path)
    if source is None:
        return _reply(421, cid)
    if profile not in PROFILES:
        return _reply(432, cid)
    run = Run(rid, path, source, profile, argument)
    with _runs_lock:
        if rid in _runs:
            return _reply(431, cid)
        _runs[rid] = run
    try:
        # A raw thread: threading.Thread.start() would wait for it, costing GIL hand-offs.
        run.ident = _orig_start_new_thread(_run_main, (run,))
    except RuntimeError as e:      # cannot start a thread: out of resources
        _log("run %d: cannot start a thread: %s" % (rid, e))
        _reply(231, cid, b"2")
        _finish(run, NO_RESOURCES, "cannot start a thread: %s" % e)
        return
    _reply(231, cid, b"2")
    run.go.set()


def _overlong(prefix):
    try:
        parse_command(prefix, truncated=True)
    except Discard:
        _chan.send((b"511", b"0", encode_quoted_lossy("discarded an over-long message")))
    except Reject as e:
        _reply(e.code, e.id)


def _serve(read):
    """Reads commands until EOF."""
    buf = b""
    discarding = False
    while True:
        try:
            data = read(1 << 16)
        except InterruptedError:
            continue
        except OSError as e:
            _log("reading the SMX channel failed: %s" % e)
            data = b""
        if not data:
            break
        buf += data
        if b"\n" not in data:
            if len(buf) > MAX_LINE and not discarding:
                _overlong(buf[:8192])
                discarding = True
            if discarding:
                buf = b""
            continue
        lines = buf.split(b"\n")
        buf = lines.pop()
        for line in lines:
            if discarding:
                discarding = False
                continue
            line += b"\n"
            try:
                if len(line) > MAX_LINE:
                    _overlong(line[:8192])
                else:
                    _dispatch(line)
            except Exception:
                _log("internal error handling a command:\n" + traceback.format_exc())
        if len(buf) > MAX_LINE and not discarding:
            _overlong(buf[:8192])
            discarding = True
            buf = b""
    if buf and not discarding:
        try:
            _dispatch(buf)      # unterminated last message: 401 (missing CRLF) if recognizable
        except Exception:
            _log("internal error handling a command:\n" + traceback.format_exc())


def _shutdown():
    """The SMX connection closed: abort every run, send what is left, exit 0."""
    with _runs_lock:
        runs = list(_runs.values())
    for run in runs:
        with _chan.lock:
            if not run.ended and run.state != ABORTING:
                run.set_state(ABORTING)
    stuck = _stop_runs(runs, SHUTDOWN_TIMEOUT)
    for run in stuck:
        _log("run %d did not stop; exiting anyway" % run.id)
        if run.tmpdir:
            shutil.rmtree(run.tmpdir, ignore_errors=True)
    _stop_tmp_watchdog()
    _flush_streams()
    os._exit(0)


# --------------------------------------------------------------------------------------------
# Startup

def _protect_std_fds():
    """Keeps SMX safe from script output: returns private (in_fd, out_fd) copies of the
    original stdin/stdout, points fd 0 at /dev/null and fd 1 at stderr."""
    in_fd, out_fd = _hide_fd(os.dup(0)), _hide_fd(os.dup(1))   # high, close-on-exec
    try:
        null = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        null, w = os.pipe()                     # no /dev/null (chroot): an empty pipe
        os.close(w)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdout = _ScriptStream(_real_stderr, "out_buf")
    sys.stderr = _ScriptStream(_real_stderr, "err_buf")
    return in_fd, out_fd


def _read_cookie():
    fd = os.environ.get("SMX_COOKIE_FD")
    raw = None
    if fd:
        try:
            n = int(fd)
            chunks = []
            while True:
                chunk = os.read(n, 4096)
                if not chunk:
                    break
                chunks.append(chunk)
            os.close(n)
            raw = b"".join(chunks)
        except (ValueError, OSError) as e:
            _log("cannot read the cookie from fd %s: %s" % (fd, e))
    if raw is None and os.environ.get("SMX_COOKIE"):
        raw = os.environ["SMX_COOKIE"].encode("ascii", "replace")
    os.environ.pop("SMX_COOKIE", None)      # children must not inherit it
    if raw is None:
        return None
    raw = raw.strip()
    if not raw or len(raw) % 2 or not _HEX.fullmatch(raw):
        _log("the cookie is not a HexString; answering hello without it")
        return None
    return raw


def main():
    global _chan, _cookie
    sys.dont_write_bytecode = True      # imports must not try to write .pyc files
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]  # no runtime internals
    # CPU-bound scripts hold the GIL for a whole switch interval each; a shorter one keeps the
    # command reader (and I/O-bound runs) responsive when some scripts busy-loop.
    sys.setswitchinterval(0.001)
    in_fd, out_fd = _protect_std_fds()
    _start_tmp_watchdog()
    transport = os.environ.get("SMX_TRANSPORT", "pipe") or "pipe"
    if transport == "tcp":
        import socket
        _cookie = _read_cookie()
        host = os.environ.get("SMX_HOST") or "127.0.0.1"
        try:
            port = int(os.environ["SMX_PORT"])
            sock = socket.create_connection((host, port))
        except (KeyError, ValueError, OSError) as e:
            _log("cannot connect to the host at %s:%s: %s"
                 % (host, os.environ.get("SMX_PORT"), e))
            return 1
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        os.close(in_fd)
        os.close(out_fd)
        _private_fds.difference_update((in_fd, out_fd))
        moved = socket.socket(fileno=_hide_fd(os.dup(sock.fileno())))
        sock.close()
        sock = moved
        _chan = Channel(sock.sendall)
        read = sock.recv
    elif transport == "pipe":
        _chan = Channel(_pipe_writer(out_fd))
        read = lambda n: os.read(in_fd, n)
    else:
        _log("unknown SMX_TRANSPORT %r (expected pipe or tcp)" % transport)
        return 2
    sys.modules["smx"] = _make_smx_module()
    _patch_modules()
    sys.addaudithook(_audit)
    try:
        _serve(read)
    except KeyboardInterrupt:
        pass
    _shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
