#!/usr/bin/env python3
"""Scale figures for the README's "Scale" section, measured in one run on this machine.

    cargo build --release && python3 benches/scale.py

1. Redis memory per key: KEYS keys (default 10,000) created through the admin API of a
   `keygate serve` on a sharded Redis store; `used_memory` before and after, over KEYS.
2. Cold start: keygate restarted (empty caches) and every one of the KEYS keys presented at
   once (CONNS connections, default 500): wall time, p50/p99/max latency, Argon2id runs (the
   verification pool is bounded: the wait is queueing); then the same keys again, cached.
3. Cache-miss lookups one master serves vs a 3-master Cluster: the lookup is one GET of a
   ~1 KB record, driven by redis-benchmark (GET, 900-byte values, random keys) against each.
   On this 2-core machine the Cluster's three masters share two cores with the client, so the
   ratio understates what three machines give.

Checks run with keygate in auth-only mode (no upstream in the measurement).
Real processes throughout; every port is ephemeral. Nothing here is a test.
"""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYGATE = os.environ.get("KEYGATE", os.path.join(ROOT, "target/release/keygate"))
KEYS = int(os.environ.get("KEYS", "10000"))
CONNS = int(os.environ.get("CONNS", "500"))
TOKEN = "ops:" + "s" * 32
PROCS = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def start(cmd, **kw):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    PROCS.append(p)
    return p


def redis_server(port, work, *extra):
    start(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", work, *extra])
    wait_port(port)


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def used_memory(port):
    info = redis_cli(port, "INFO", "memory")
    return int(re.search(r"used_memory:(\d+)", info).group(1))


def keygate(work, redis_port):
    port, admin, ops = free_port(), free_port(), free_port()
    cfg = os.path.join(work, "scale.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[listen]
address = "127.0.0.1:{free_port()}"
[ops]
address = "127.0.0.1:{ops}"
[authz]
mode = "authz"
address = "127.0.0.1:{port}"
[ip]
trusted_proxies = ["127.0.0.1/32"]
[store]
backend = "redis"
url = "redis://127.0.0.1:{redis_port}"
[admin]
address = "127.0.0.1:{admin}"
create_per_minute = 1000000
[log]
filter = "warn"
access = false
""")
    env = dict(os.environ, KEYGATE_ADMIN_TOKENS=TOKEN)
    p = start([KEYGATE, "serve", "-c", cfg], env=env)
    wait_port(port)
    wait_port(admin)
    return p, port, admin, ops


def create_keys(admin, n):
    token = TOKEN.split(":", 1)[1]

    def one(i):
        req = urllib.request.Request(
            f"http://127.0.0.1:{admin}/v1/keys",
            data=json.dumps({"owner": f"acct_{i % 1000}"}).encode(),
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)["key"]

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(one, range(n)))


def metric(ops, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{ops}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(name))


async def storm(port, keys, conns):
    """Every key presented once, over `conns` keep-alive connections, all starting at once."""
    latencies, statuses = [], {}
    queue = list(reversed(keys))

    async def worker():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            key = queue.pop()
            t = time.perf_counter()
            w.write(f"GET /v1/items HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\n\r\n".encode())
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            length = int(m.group(1)) if m else 0
            if length:
                await r.readexactly(length)
            latencies.append(time.perf_counter() - t)
            statuses[status] = statuses.get(status, 0) + 1
        w.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conns)))
    return time.perf_counter() - t0, sorted(latencies), statuses


def pct(xs, p):
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1000


def benchmark_get(port, cluster=False):
    args = ["redis-benchmark", "-p", str(port), "-t", "set,get", "-d", "900", "-n", "400000",
            "-r", "100000", "-c", "64", "-q", "--threads", "2"]
    if cluster:
        args.append("--cluster")
    out = subprocess.run(args, capture_output=True, text=True).stdout
    m = re.search(r"GET: ([\d.]+) requests per second", out)
    return float(m.group(1)) if m else float("nan")


def free_cluster_port():
    # The node's bus listens 10,000 higher: at most 55,535, with that port free too.
    while True:
        p = free_port()
        if p <= 55535:
            try:
                s = socket.socket()
                s.bind(("127.0.0.1", p + 10000))
                s.close()
                return p
            except OSError:
                pass


def cluster(work):
    ports = [free_cluster_port() for _ in range(3)]
    for p in ports:
        redis_server(p, work, "--cluster-enabled", "yes", "--cluster-config-file",
                     f"nodes-{p}.conf")
    subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                    "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, check=True)
    for _ in range(200):
        if all("cluster_state:ok" in redis_cli(p, "CLUSTER", "INFO") for p in ports):
            return ports
        time.sleep(0.1)
    raise SystemExit("cluster never came up")


def main():
    if not os.path.exists(KEYGATE):
        raise SystemExit(f"{KEYGATE} missing: cargo build --release")
    work = tempfile.mkdtemp(prefix="keygate-scale-")
    try:
        rport = free_port()
        redis_server(rport, work)
        kg, port, admin, ops = keygate(work, rport)
        before = used_memory(rport)
        log(f"creating {KEYS} keys through the admin API …")
        t = time.time()
        keys = create_keys(admin, KEYS)
        created_s = time.time() - t
        # last_used and usage flushes write later; the records and indexes are all there.
        per_key = (used_memory(rport) - before) / KEYS
        dbsize = int(redis_cli(rport, "DBSIZE"))
        kg.send_signal(signal.SIGTERM)
        kg.wait(30)

        log("cold start: restarting keygate, every key at once …")
        kg, port, admin, ops = keygate(work, rport)
        runs0 = metric(ops, "keygate_argon2_verifications_total")
        wall, lat, statuses = asyncio.run(storm(port, keys, CONNS))
        runs = metric(ops, "keygate_argon2_verifications_total") - runs0
        log("the same keys again, four times over (cached now) …")
        wall2, lat2, _ = asyncio.run(storm(port, keys * 4, CONNS))

        log("cache-miss lookups: redis-benchmark GET, one master vs a 3-master Cluster …")
        one = benchmark_get(rport)
        cports = cluster(work)
        three = benchmark_get(cports[0], cluster=True)

        print(f"keys: {KEYS} (created in {created_s:.1f} s, {KEYS / created_s:.0f}/s)")
        print(f"redis memory per key: {per_key:.0f} bytes ({dbsize / KEYS:.2f} Redis keys per key)")
        print(f"cold start, {KEYS} distinct keys over {CONNS} connections: {wall:.2f} s, "
              f"{KEYS / wall:.0f} checks/s, p50 {pct(lat, 0.5):.1f} ms, p99 {pct(lat, 0.99):.1f} ms, "
              f"max {lat[-1] * 1000:.1f} ms; statuses {statuses}; Argon2id runs {runs:.0f}")
        print(f"cached, {4 * KEYS} checks: {wall2:.2f} s, p99 {pct(lat2, 0.99):.1f} ms")
        print(f"GET of a 900-byte record: one master {one:.0f}/s, 3-master Cluster {three:.0f}/s "
              f"({three / one:.2f}x, same 2 cores)")
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
        for p in PROCS:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
