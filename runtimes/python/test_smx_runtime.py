#!/usr/bin/env python3
"""Unit tests of the Python runtime (smx_runtime.py): its parser and command dispatch against
the golden vectors of tests/vectors/smx.txt, and the state machine of a run (RFC 3179 6.1).

Standard library only; run from the repository root with

    python3 -m unittest discover -s runtimes/python -p 'test_*.py'

The runtime is imported, not started: replies go to an in-memory channel, scripts run in
threads of this process (trusted profile only: the restricted profile installs a
process-wide audit hook). The restricted profile is tested against the real runtime process,
over its real pipes (RestrictedProcess; tests/runtimes.rs does the same through the host).
"""

import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.dont_write_bytecode = True     # no __pycache__ next to the shipped runtime
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import smx_runtime as rt  # noqa: E402

VECTORS = os.environ.get("SMX_VECTORS") or os.path.join(HERE, "..", "..", "tests", "vectors", "smx.txt")


def load_vectors(path=VECTORS):
    """[(line, section, text, message bytes, answer)] from the vector file (see its header)."""
    out = []
    with open(path, "rb") as f:
        lines = f.read().decode("ascii").split("\n")
    for n, raw in enumerate(lines, 1):
        if not raw or raw.startswith("#"):
            continue
        a, b = raw.index(" | "), raw.rindex(" | ")
        section, text, answer = raw[:a], raw[a + 3:b], raw[b + 3:]
        msg = re.sub(r"<([0-9A-F]{2})>", lambda m: chr(int(m.group(1), 16)), text).encode("latin-1")
        if not msg.endswith(b"\n"):
            msg += b"\r\n"
        out.append((n, section, text, msg, answer))
    return out


class Capture:
    """The SMX channel: collects what the runtime writes, one CRLF line each."""

    def __init__(self):
        self.cond = threading.Condition()
        self.data = b""

    def write(self, data):
        with self.cond:
            self.data += data
            self.cond.notify_all()

    def lines(self):
        with self.cond:
            return [l.decode("latin-1") for l in self.data.split(b"\r\n")[:-1]]

    def take(self):
        with self.cond:
            lines = [l.decode("latin-1") for l in self.data.split(b"\r\n")[:-1]]
            self.data = b""
            return lines

    def wait_for(self, line, timeout=5.0):
        """Waits until `line` has been written; returns every line so far."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                lines = [l.decode("latin-1") for l in self.data.split(b"\r\n")[:-1]]
                if line in lines:
                    return lines
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no %r within %.0f s; got %r" % (line, timeout, lines))
                self.cond.wait(left)


def fresh_runtime():
    """A runtime that has just said hello: no runs, no cookie, output captured."""
    cap = Capture()
    rt._chan = rt.Channel(cap.write)
    rt._cookie = None
    with rt._runs_lock:
        rt._runs.clear()
    return cap


class GoldenVectors(unittest.TestCase):
    """tests/vectors/smx.txt: every vector is answered exactly as the file says, byte for
    byte (511 messages aside, which section 6.1 allows for discarded lines)."""

    def test_every_vector(self):
        vectors = load_vectors()
        self.assertGreaterEqual(len(vectors), 250)
        failures = []
        for n, section, text, msg, answer in vectors:
            cap = fresh_runtime()
            rt._dispatch(msg)
            got = [l for l in cap.take() if not l.startswith("511 0 ")]
            want = [] if answer == "discard" else [answer]
            if got != want:
                failures.append("smx.txt:%d (%s) %s: want %s, got %r" % (n, section, text, answer, got))
            with rt._runs_lock:
                if rt._runs:
                    failures.append("smx.txt:%d: started a run" % n)
                    rt._runs.clear()
        self.assertEqual(failures, [], "\n" + "\n".join(failures))

    def test_a_discarded_line_may_say_why_in_a_well_formed_511(self):
        cap = fresh_runtime()
        rt._dispatch(b"garbage\r\n")
        lines = cap.take()
        self.assertEqual(len(lines), 1)
        self.assertRegex(lines[0], r'^511 0 "[\t -~]*"$')


class Parser(unittest.TestCase):
    """parse_command's values, which the vectors (answers only) cannot show."""

    def test_start_fields_decode(self):
        self.assertEqual(
            rt.parse_command(b'START 007 00042 "/s\\\\x\\ty\\q\\"" a-Z.0/9:_ 4142aBcD\r\n'),
            ("start", 7, 42, b'/s\\x\tyq"', "a-Z.0/9:_", b"AB\xab\xcd"))
        self.assertEqual(rt.parse_command(b'start\t1\t2\t"s"\tp\t"\\r\\n\t"\n'),
                         ("start", 1, 2, b"s", "p", b"\r\n\t"))
        self.assertEqual(rt.parse_command(b'start 1 2 "" p ""\r\n')[3:], (b"", "p", b""))

    def test_ids_are_u64(self):
        self.assertEqual(rt.parse_command(b"status 18446744073709551615 0\r\n"),
                         ("status", rt.U64_MAX, 0))
        with self.assertRaises(rt.Discard):
            rt.parse_command(b"status 18446744073709551616 0\r\n")
        with self.assertRaises(rt.Reject) as e:
            rt.parse_command(b"status 1 18446744073709551616\r\n")
        self.assertEqual((e.exception.code, e.exception.id), (431, 1))

    def test_field_end_blames_the_field(self):
        for line, code in [(b'start 1 2 "s"x p ""\r\n', 421), (b'start 1 2 "s" p ABZZ\r\n', 433),
                           (b'start 1 2 "s" p ""x\r\n', 433), (b'start 1 2 "s" p "" x\r\n', 401)]:
            with self.assertRaises(rt.Reject) as e:
                rt.parse_command(line)
            self.assertEqual(e.exception.code, code, line)

    def test_truncated_start_blames_the_argument(self):
        with self.assertRaises(rt.Reject) as e:
            rt.parse_command(b'start 1 2 "s" p "aaaa', truncated=True)
        self.assertEqual(e.exception.code, 433)
        with self.assertRaises(rt.Reject) as e:
            rt.parse_command(b"status 1 2", truncated=True)
        self.assertEqual(e.exception.code, 401)

    def test_octets_encoding(self):
        self.assertEqual(rt.encode_octets(b""), b'""')
        self.assertEqual(rt.encode_octets(b'a"\\\t\r\n'), b'"a\\"\\\\\\t\\r\\n"')
        self.assertEqual(rt.encode_octets(b"\x00\xff"), b"00FF")


class RunStateMachine(unittest.TestCase):
    """A run from start to 538 through suspend, resume and abort (6.1.2-6.1.7)."""

    @classmethod
    def setUpClass(cls):
        sys.modules["smx"] = rt._make_smx_module()
        rt._patch_modules()
        cls.dir = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.dir.cleanup()

    def script(self, name, text):
        path = os.path.join(self.dir.name, name)
        with open(path, "w") as f:
            f.write(text)
        return path.encode()

    def start(self, cid, run, path, argument=b'""'):
        rt._dispatch(b'start %d %d "%s" trusted %s\r\n' % (cid, run, path, argument))

    def test_result_then_end(self):
        cap = fresh_runtime()
        path = self.script("echo.py", "import smx\nsmx.result(smx.argument)\n")
        self.start(1, 7, path, b"00FF")
        lines = cap.wait_for("538 0 7 1")
        self.assertEqual(lines, ["231 1 2", "532 0 7 2 00FF", "531 0 7 7", "538 0 7 1"])
        rt._dispatch(b"status 2 7\r\n")
        self.assertEqual(cap.take()[-1], "431 2", "after its 538 a RunId is unknown")

    def test_suspend_resume_abort(self):
        cap = fresh_runtime()
        path = self.script("loop.py", "import time\nwhile True:\n    time.sleep(0.02)\n")
        self.start(1, 8, path)
        cap.wait_for("231 1 2")
        self.start(2, 8, path)
        cap.wait_for("431 2")                       # 6.1.2 item 2: RunId in use
        rt._dispatch(b"status 3 8\r\n")
        cap.wait_for("231 3 2")
        rt._dispatch(b"suspend 4 8\r\n")
        cap.wait_for("231 4 4")
        rt._dispatch(b"suspend 5 8\r\n")            # 6.1.3 item 2: already suspended
        cap.wait_for("231 5 4")
        rt._dispatch(b"status 6 8\r\n")
        cap.wait_for("231 6 4")
        rt._dispatch(b"resume 7 8\r\n")
        cap.wait_for("231 7 2")
        rt._dispatch(b"resume 8 8\r\n")             # 6.1.4 item 2: already running
        cap.wait_for("231 8 2")
        rt._dispatch(b"abort 9 8\r\n")
        lines = cap.wait_for("232 9")
        notes = [l for l in lines if l.startswith("531 0 8 ")]
        self.assertEqual(notes, ["531 0 8 3", "531 0 8 4", "531 0 8 5", "531 0 8 2",
                                 "531 0 8 6", "531 0 8 7"])
        self.assertLess(lines.index("538 0 8 2"), lines.index("232 9"), "538 before 232")
        rt._dispatch(b"abort 10 8\r\n")
        cap.wait_for("431 10")

    def test_syntax_error_is_language_error(self):
        cap = fresh_runtime()
        path = self.script("bad.py", "def f(:\n")
        self.start(1, 9, path)
        lines = cap.wait_for("538 0 9 5")
        self.assertEqual(lines[0], "231 1 2")
        self.assertTrue(lines[1].startswith("536 0 9 2 "), lines)
        self.assertEqual(lines[2:], ["531 0 9 7", "538 0 9 5"])

    def test_uncaught_error_and_argument_error(self):
        cap = fresh_runtime()
        self.start(1, 10, self.script("zero.py", "1/0\n"))
        cap.wait_for("538 0 10 6")
        self.start(2, 11, self.script("arg.py", "import smx\nraise smx.ArgumentError('no')\n"))
        lines = cap.wait_for("538 0 11 7")
        self.assertIn('536 0 11 2 "no"', lines)

    def test_unknown_profile_and_missing_script(self):
        cap = fresh_runtime()
        path = self.script("x.py", "pass\n")
        rt._dispatch(b'start 1 12 "%s" nope ""\r\n' % path)
        rt._dispatch(b'start 2 12 "%s/missing" trusted ""\r\n' % self.dir.name.encode())
        rt._dispatch(b'start 3 12 "%s" trusted ""\r\n' % self.dir.name.encode())
        self.assertEqual(cap.take(), ["432 1", "421 2", "421 3"])


RUNTIME = os.path.join(HERE, "smx_runtime.py")


def run_in_process(source, profile="restricted", timeout=20.0):
    """Runs `source` as one script in a fresh runtime process (python3 -I -S smx_runtime.py,
    SMX over its stdin/stdout pipes); returns every SMX line it wrote up to the 538."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "script.py")
        with open(path, "w") as f:
            f.write(source)
        proc = subprocess.Popen([sys.executable, "-I", "-S", RUNTIME], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            proc.stdin.write(b'hello 1\r\nstart 2 1 "%s" %s ""\r\n'
                             % (path.encode(), profile.encode()))
            proc.stdin.flush()
            data, deadline = b"", time.monotonic() + timeout
            while not re.search(rb"(^|\n)538 0 1 \d\r\n", data):
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                    raise AssertionError("no 538 within %.0f s; got %r" % (timeout, data))
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError("the runtime closed its stdout; got %r" % data)
                data += chunk
            return [l.decode("latin-1") for l in data.split(b"\r\n")[:-1]]
        finally:
            proc.stdin.close()
            proc.wait(10)
            proc.stdout.close()


# A script that tries `op(fd)` on every fd below 1024 and reports, as its result, the fds on
# which the restricted profile refused it (other errors, EBADF mostly, are not refusals).
_EVERY_FD = """import os, smx
refused = []
for fd in range(1024):
    try:
        OP
    except PermissionError:
        refused.append(fd)
    except (OSError, ValueError):
        pass
smx.result(" ".join(map(str, refused)))
"""


class RestrictedProcess(unittest.TestCase):
    """Issue 11 / RFC 3179 section 3 (runtime security profiles): what the `restricted`
    profile refuses, in a real runtime process. Every refusal ends the run with
    securityViolation (538 ... 8) and a 536 that names what was refused."""

    def assert_refused(self, source, text):
        lines = run_in_process(source)
        self.assertEqual(lines[-1], "538 0 1 8", lines)
        errors = [l for l in lines if l.startswith("536 0 1 ")]
        self.assertTrue(errors and text in errors[0], "%r not in %r" % (text, errors))
        return lines

    def test_device_files_fifos_and_set_id_modes_are_refused(self):
        rows = [
            ("mknod", "import os, smx\nos.mknod(smx.tmpdir + '/n')\n", "os.mknod("),
            ("mknod chr", "import os, smx, stat\n"
             "os.mknod(smx.tmpdir + '/c', stat.S_IFCHR | 0o600, os.makedev(1, 3))\n",
             "os.mknod("),
            ("mkfifo", "import os, smx\nos.mkfifo(smx.tmpdir + '/f')\n", "os.mkfifo("),
            ("chmod setuid", "import os, smx\np = smx.tmpdir + '/x'\nopen(p, 'w').close()\n"
             "os.chmod(p, 0o4755)\n", "os.chmod to set-user/group-ID mode 4755"),
            ("fchmod setgid", "import os, smx\np = smx.tmpdir + '/x'\nopen(p, 'w').close()\n"
             "os.fchmod(os.open(p, os.O_RDONLY), 0o2755)\n",
             "os.chmod to set-user/group-ID mode 2755"),
            ("os.open setuid", "import os, smx\n"
             "os.open(smx.tmpdir + '/y', os.O_CREAT | os.O_WRONLY, 0o4700)\n",
             "os.open with set-user/group-ID mode 4700"),
            ("mkdir setgid", "import os, smx\nos.mkdir(smx.tmpdir + '/d', 0o2700)\n",
             "os.mkdir to set-user/group-ID mode 2700"),
            ("hard link in from outside", "import os, smx\n"
             "os.link('/etc/passwd', smx.tmpdir + '/p')\n", "os.link outside smx.tmpdir"),
            ("hard link out", "import os, smx\np = smx.tmpdir + '/x'\nopen(p, 'w').close()\n"
             "os.link(p, '/tmp/smx-test-link-out')\n", "os.link outside smx.tmpdir"),
        ]
        for name, source, text in rows:
            with self.subTest(name):
                self.assert_refused(source, text)
        self.assertFalse(os.path.exists("/tmp/smx-test-link-out"))

    def test_the_same_calls_are_fine_under_trusted(self):
        lines = run_in_process("import os, smx, tempfile\nd = tempfile.mkdtemp()\n"
                               "os.mkfifo(d + '/f')\nos.chmod(d + '/f', 0o600)\n"
                               "smx.result('ok')\n", profile="trusted")
        self.assertEqual(lines[-3:], ['532 0 1 2 "ok"', "531 0 1 7", "538 0 1 1"])

    def test_forged_smx_lines_never_reach_the_channel(self):
        """os.write of a forged 532/538/533 to every fd: refused on the channel's fds, which
        sit high (not 0-2, where a script's writes end up in the log); the channel keeps
        working and carries nothing forged."""
        forge = "os.write(fd, b'532 0 1 2 \"forged\"\\r\\n538 0 1 1\\r\\n533 0 1 2 \"x\"\\r\\n')"
        lines = self.assert_refused(_EVERY_FD.replace("OP", forge),
                                    "os.write on the SMX channel (fd ")
        self.assertFalse([l for l in lines if "forged" in l or l.startswith("533")], lines)
        result = [l for l in lines if l.startswith("532 0 1 2 ")]
        refused = [int(fd) for fd in result[-1].split('"')[1].split()]
        self.assertGreaterEqual(len(refused), 2, "both pipe ends: %r" % lines)
        self.assertTrue(all(fd > 200 for fd in refused), "moved to high fds: %r" % refused)

    def test_every_way_to_reach_the_channel_fds_is_refused(self):
        rows = [
            ("dup", "os.dup(fd)", "os.dup on the SMX channel"),
            ("dup2 from", "os.dup2(fd, 100)", "os.dup2 on the SMX channel"),
            ("dup2 over", "os.dup2(2, fd)", "os.dup2 on the SMX channel"),
            ("close", "os.close(fd)", "os.close on the SMX channel"),
            ("read", "os.read(fd, 1)", "os.read on the SMX channel"),
            ("set_inheritable", "os.set_inheritable(fd, True)",
             "os.set_inheritable on the SMX channel"),
            ("set_blocking", "os.set_blocking(fd, False)", "os.set_blocking on the SMX channel"),
            ("fdopen", "os.fdopen(fd, 'wb', closefd=False)", "open of the SMX channel"),
            ("open(fd)", "open(fd, 'rb', closefd=False)", "open of the SMX channel"),
            ("/proc/self/fd", "open('/proc/self/fd/%d' % fd, 'rb')", "forbids open"),
            ("/dev/fd", "open('/dev/fd/%d' % fd, 'rb')", "forbids open"),
            ("fcntl", "__import__('fcntl').fcntl(fd, 2, 0)", "fcntl.fcntl on the SMX channel"),
            ("closerange", "os.closerange(fd, fd + 1)", "over the SMX channel"),
            ("from a thread of the script",
             "[(t := __import__('threading').Thread(target=os.dup, args=(fd,))).start(), t.join()]",
             "os.dup on the SMX channel"),
        ]
        for name, op, text in rows:
            with self.subTest(name):
                self.assert_refused(_EVERY_FD.replace("OP", op), text)

    def test_faulthandler_and_exit_are_refused(self):
        for name, source, text in [
            ("faulthandler", "import faulthandler\nfaulthandler.dump_traceback(2)\n",
             "faulthandler.dump_traceback("),
            ("os._exit", "import os\nos._exit(3)\n", "os._exit("),
        ]:
            with self.subTest(name):
                self.assert_refused(source, text)


if __name__ == "__main__":
    unittest.main()
