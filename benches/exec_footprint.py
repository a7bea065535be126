#!/usr/bin/env python3
"""Fds and memory per live script in the exec runtime (issue 12).

Drives `smx exec-runtime` over raw pipes: starts N scripts `/bin/sleep 1000` (the exec
runtime runs ELF binaries directly), waits until all are executing, and reads the
runtime's VmRSS and open fds from /proc, against the same runtime with no script.

    python3 benches/exec_footprint.py SMX_BINARY [N]
"""
import os, subprocess, sys, time

smx = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
rt = subprocess.Popen([smx, "exec-runtime"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
pid = rt.pid

def rss_kb():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])

def fds():
    return len(os.listdir(f"/proc/{pid}/fd"))

def line():
    return rt.stdout.readline().decode()

rt.stdin.write(b"hello 1\r\n"); rt.stdin.flush(); line()
time.sleep(0.2)
rss0, fd0 = rss_kb(), fds()
t = time.time()
batch = 200
for base in range(0, n, batch):
    m = min(batch, n - base)
    rt.stdin.write(b"".join(b'start %d %d "/bin/sleep" trusted "1000"\r\n' % (i + 2, i + 2)
                            for i in range(base, base + m)))
    rt.stdin.flush()
    got = 0
    while got < m:
        l = line()
        if l.startswith("231"):
            got += 1
        elif l.startswith("5") and " 3 " in l[:12] and l.startswith("536"):
            print("error:", l.strip(), file=sys.stderr)
            got += 1
spawn_s = time.time() - t
time.sleep(0.5)
rss1, fd1 = rss_kb(), fds()
print(f"{n} live scripts: runtime RSS {rss0} KB -> {rss1} KB, "
      f"{(rss1 - rss0) / n:.2f} KB/script; fds {fd0} -> {fd1}, {(fd1 - fd0) / n:.2f} fds/script; "
      f"{n / spawn_s:.0f} starts/s")
rt.stdin.close()
rt.wait(timeout=60)
