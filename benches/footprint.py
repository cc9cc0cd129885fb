#!/usr/bin/env python3
"""Footprint per proxied request: the distinct code and data a request touches, keygate next to
nginx as a plain reverse proxy. At 1 connection each request wakes the proxy twice (the client's
request, the upstream's answer) on a core the kernel and the upstream used in between, so what
it touches runs from cold caches: this, more than instructions executed, is what a request costs
there (see the README's #19 section).

Each proxy runs under `valgrind --tool=lackey --trace-mem=yes --trace-syscalls=yes` in front of
an nginx upstream returning a fixed JSON; one keep-alive client sends requests one at a time
(keygate: a cached key, the in-process limiter). The trace is cut at every `epoll_wait` (a
wake-up); per request: distinct instructions, distinct 64-byte code lines and data lines (stack
included), the median over the steady run of two consecutive wake-ups.

    python3 benches/footprint.py                 # this tree's release build and nginx
    KEYGATE_BASELINE=/tmp/keygate-old python3 benches/footprint.py

Under valgrind the SHA-256 of the key runs in software (~3,600 instructions, ~330 code lines that
SHA-NI does in a few); the figures are reported with and without it. Installs nginx, wrk and
valgrind with apt-get when missing.
"""

import bisect
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import instructions  # noqa: E402  (ensure_tools, upstream, configured)
import load  # noqa: E402  (free_port, wait_port, nginx, start, stop_all)

ROOT = load.ROOT
BASELINE = os.environ.get("KEYGATE_BASELINE")
REQUESTS = int(os.environ.get("REQUESTS", "700"))


class Segments(threading.Thread):
    """Reads lackey's trace: per wake-up, the distinct instructions, code lines and data lines
    touched, and the instructions and code lines outside `skip` (address ranges)."""

    def __init__(self, stream, skip):
        super().__init__(daemon=True)
        self.stream, self.segments = stream, []
        self.skip = sorted(skip)
        self.starts = [lo for lo, _ in self.skip]

    def skipped(self, a):
        i = bisect.bisect_right(self.starts, a) - 1
        return i >= 0 and a < self.skip[i][1]

    def run(self):
        code, data = set(), set()
        for line in self.stream:
            c = line[:1]
            if c == "I":
                code.add(int(line[3:].split(",", 1)[0], 16))
            elif c == " ":
                try:
                    data.add(int(line[3:].split(",", 1)[0], 16) >> 6)
                except ValueError:
                    pass
            elif line.startswith("SYSCALL") and "epoll_wait" in line:
                kept = [a for a in code if not self.skipped(a)] if self.skip else code
                self.segments.append((len(code), len({a >> 6 for a in code}), len(data),
                                      len(kept), len({a >> 6 for a in kept})))
                code, data = set(), set()


def client(port, n, header):
    """`n` requests one at a time on one keep-alive connection; how many were answered 200."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(600)  # the first request runs Argon2id under valgrind
    req = f"GET /v1/items HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{header}\r\n".encode()
    ok = 0
    for _ in range(n):
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += s.recv(65536)
        head, rest = buf.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
        while len(rest) < length:
            rest += s.recv(65536)
        ok += head.startswith(b"HTTP/1.1 200")
        time.sleep(0.002)  # the proxy parks between requests, as at 1 connection
    s.close()
    return ok


def traced(cmd, port, header, env=None, skip=()):
    r, w = os.pipe()
    p = load.start(["valgrind", "--tool=lackey", "--trace-mem=yes", "--trace-syscalls=yes", f"--log-fd={w}", *cmd],
                   env=env, pass_fds=(w,))
    os.close(w)
    reader = Segments(os.fdopen(r, errors="replace"), skip)
    reader.start()
    load.wait_port(port, timeout=120)
    ok = client(port, REQUESTS, header)
    p.terminate()
    p.wait(timeout=30)
    reader.join(timeout=120)
    if ok != REQUESTS:
        raise SystemExit(f"{cmd[0]}: {ok} of {REQUESTS} requests answered 200")
    return reader.segments


def per_request(segments):
    """Medians over the steady second half of two consecutive wake-ups (a request): each
    segment's figures summed pairwise."""
    tail = segments[len(segments) // 2:]
    pairs = list(zip(tail, tail[1:]))
    return tuple(statistics.median(a[i] + b[i] for a, b in pairs) for i in range(5))


def sha_ranges(binary):
    """Where the software SHA-256 lies in `binary`, as loaded under valgrind (PIE at 0x108000)."""
    out = subprocess.run(["nm", "-C", "-S", "--defined-only", binary], capture_output=True, text=True).stdout
    ranges = []
    for line in out.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[3].startswith(("sha2::", "<sha2::")):
            start, size = int(parts[0], 16) + 0x108000, int(parts[1], 16)
            ranges.append((start, start + size))
    return ranges


def keygate(binary, work, up_port, tag):
    # A cheap Argon2id for the key's one verification, traced line by line.
    port, cfg, env, key = instructions.configured(binary, work, up_port, tag,
                                                  "[keys]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n")
    return per_request(traced([binary, "serve", "--config", cfg], port, f"Authorization: Bearer {key}\r\n", env,
                              sha_ranges(binary)))


def nginx_proxy(work, up_port):
    port = load.free_port()
    conf = os.path.join(work, "traced.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off; master_process off; worker_processes 1; pid {work}/traced.pid;
error_log {work}/traced.err warn;
events {{ worker_connections 1024; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
client_body_temp_path {work}/t-body; proxy_temp_path {work}/t-proxy; fastcgi_temp_path {work}/t-fcgi;
uwsgi_temp_path {work}/t-uwsgi; scgi_temp_path {work}/t-scgi;
upstream app {{ server 127.0.0.1:{up_port}; keepalive 64; }}
server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; proxy_http_version 1.1;
proxy_set_header Connection ""; }} }} }}
""")
    return per_request(traced(["nginx", "-c", conf, "-p", work], port, ""))


def main():
    instructions.ensure_tools()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="keygate-footprint-")
    try:
        up_port = instructions.upstream(work)
        rows = [("nginx", nginx_proxy(work, up_port)),
                ("keygate", keygate(os.path.join(ROOT, "target", "release", "keygate"), work, up_port, "new"))]
        if BASELINE:
            rows.append(("keygate-base", keygate(BASELINE, work, up_port, "base")))
    finally:
        load.stop_all()
    print(f"\nFootprint per request (lackey, 1 connection, {REQUESTS} requests; median of two wake-ups):")
    print(f"  {'':<14} {'instructions':>12} {'code lines':>10} {'data lines':>10}   without SHA-256: "
          f"{'instructions':>12} {'code lines':>10}")
    ref = rows[0][1]
    for name, (ins, code, data, ins_nosha, code_nosha) in rows:
        print(f"  {name:<14} {ins:>12.0f} {code:>10.0f} {data:>10.0f}   {'':<16} {ins_nosha:>12.0f} "
              f"{code_nosha:>10.0f}  ({code_nosha / ref[4]:.2f}x nginx's code, {data / ref[2]:.2f}x its data)")


if __name__ == "__main__":
    main()
