#!/usr/bin/env python3
"""Load benchmark: what does keygate cost per request, next to nginx and a direct upstream?

Everything runs on loopback. On this 2-core machine the load generator (wrk) is pinned to
CPU 0 and every server to CPU 1, so the server core is the bottleneck and requests/s is the
inverse of the CPU a request costs on it.

Targets, measured in interleaved rounds (A B C D A B C D ...):
  direct       the upstream itself: nginx answering a fixed ~100-byte JSON
  nginx        nginx as a plain reverse proxy to it (keepalive to upstream, no access log)
  keygate      keygate (file store, cached key, in-process rate limiter) in front of it
  keygate-redis  keygate with the Redis store and the Redis rate limiter
plus floods against keygate: one well-formed bogus key (negative cache), and a malformed key.

AUTHZ=1 measures auth-only mode instead (same pinning and rounds):
  keygate        keygate as the proxy (the reference)
  keygate-authz  keygate's authorization listener asked directly (Envoy's HTTP shape): decisions
  nginx-authz    nginx with auth_request (deploy/authz/nginx.conf) asking keygate, then
                 proxying to the upstream; CPU is nginx's and keygate's together
  nginx          nginx as a plain reverse proxy

Reported per target: median requests/s over rounds at 64 connections and at 1 connection,
p50/p99 latency, CPU us per request of the proxy process (utime+stime from /proc/PID/stat
over the run / requests), syscalls per request (perf, when it works), Redis round trips per
request, and ratios against direct and nginx. A run during which other processes used more
than 5% of the server core is flagged. Also: RSS of keygate with 10,000 idle keep-alive
connections.

    python3 benches/load.py                # 3 rounds, 8 s per run: about 5 minutes
    ROUNDS=5 SECONDS=10 python3 benches/load.py

It installs nginx, wrk and redis-server with apt-get when missing, builds keygate in release
mode, and ends every process it started.
"""

import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
# A/B: another keygate binary (e.g. a build of an earlier commit) measured in the same rounds as
# "keygate-base", with the same file store configuration.
BASELINE = os.environ.get("KEYGATE_BASELINE")
# With a baseline: AB_ONLY=1 measures only keygate, keygate-base and nginx, at 64 connections, and
# prints the CPU ratio of each round's pairs (the quick check after a hot-path change: per-round
# ratios of neighbouring runs hold up far better than absolute figures on a noisy machine).
AB_ONLY = bool(BASELINE) and os.environ.get("AB_ONLY") == "1"
SECONDS = int(os.environ.get("SECONDS", "8"))
AUTHZ = os.environ.get("AUTHZ") == "1"
# LEASE=1: keygate-redis (a round trip per check) against keygate-redis-lease (lease_max = 256)
# and nginx, at 64 connections: Redis round trips and CPU per request.
LEASE = os.environ.get("LEASE") == "1"
CLIENT_CPU, SERVER_CPU = "0", "1"
TICK = os.sysconf("SC_CLK_TCK")
PROCS = []


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def ensure_tools():
    missing = [p for p, b in (("nginx", "nginx"), ("wrk", "wrk"), ("redis-server", "redis-server")) if not shutil.which(b)]
    if missing:
        log("installing", *missing)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, stdout=subprocess.DEVNULL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def start(cmd, cpu=SERVER_CPU, **kw):
    p = subprocess.Popen(["taskset", "-c", cpu, *cmd], stdout=subprocess.DEVNULL, stderr=kw.pop("stderr", subprocess.DEVNULL), **kw)
    PROCS.append(p)
    return p


def stop_all():
    for p in PROCS:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in PROCS:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_ticks(pids):
    return sum(cpu_split(pids))


def cpu_split(pids):
    """User and kernel clock ticks of `pids` (utime, stime)."""
    user = kernel = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])
            kernel += int(fields[12])
        except FileNotFoundError:
            pass
    return user, kernel


def core_busy(cpu):
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return sum(v) - v[3] - v[4]  # minus idle and iowait
    return 0


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]
    except OSError:
        return []


def nginx(conf_body, workdir, name):
    conf = os.path.join(workdir, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(
            f"""daemon off; master_process on; worker_processes 1; pid {workdir}/{name}.pid;
error_log {workdir}/{name}.err warn;
events {{ worker_connections 20000; }}
http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 120s;
client_body_temp_path {workdir}/{name}-body; proxy_temp_path {workdir}/{name}-proxy;
fastcgi_temp_path {workdir}/{name}-fcgi; uwsgi_temp_path {workdir}/{name}-uwsgi; scgi_temp_path {workdir}/{name}-scgi;
{conf_body} }}
"""
        )
    p = start(["nginx", "-c", conf, "-p", workdir])
    return p


WRK_RE = {
    "rps": re.compile(r"Requests/sec:\s+([\d.]+)"),
    "requests": re.compile(r"(\d+) requests in"),
    "p50": re.compile(r"50%\s+([\d.]+)(us|ms|s)"),
    "p99": re.compile(r"99%\s+([\d.]+)(us|ms|s)"),
    "non2xx": re.compile(r"Non-2xx or 3xx responses: (\d+)"),
}


def to_us(v, unit):
    return float(v) * {"us": 1, "ms": 1000, "s": 1_000_000}[unit]


def wrk(port, conns, header=None, path="/v1/items"):
    cmd = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{conns}", f"-d{SECONDS}s", "--latency"]
    for h in ([header] if isinstance(header, str) else header or []):
        cmd += ["-H", h]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = {"rps": float(WRK_RE["rps"].search(out).group(1)), "requests": int(WRK_RE["requests"].search(out).group(1))}
    for k in ("p50", "p99"):
        m = WRK_RE[k].search(out)
        r[k] = to_us(*m.groups()) if m else float("nan")
    m = WRK_RE["non2xx"].search(out)
    r["non2xx"] = int(m.group(1)) if m else 0
    return r


def perf_syscalls(pid, seconds, port, conns, header):
    """Syscalls of `pid` per request, over a separate short run (perf adds overhead)."""
    if not shutil.which("perf"):
        return None
    perf = subprocess.Popen(
        ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(pid), "--", "sleep", str(seconds)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    time.sleep(0.2)
    cmd = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds - 1}s"]
    if header:
        cmd += ["-H", header]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}/v1/items"], capture_output=True, text=True).stdout
    err = perf.communicate()[1]
    m = re.search(r"^(\d+),", err, re.M)
    req = WRK_RE["requests"].search(out)
    if not m or not req:
        return None
    return int(m.group(1)) / max(1, int(req.group(1)))


def redis_calls(port):
    """Data commands served by Redis so far (not PING/INFO/SUBSCRIBE housekeeping)."""
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "commandstats"], capture_output=True, text=True).stdout
    # Commands run inside a script (HGET, TIME, ...) are counted by Redis too; they are no round trips.
    data = ("get", "mget", "hmget", "zrange", "eval", "evalsha", "script|load")
    return sum(int(n) for c, n in re.findall(r"^cmdstat_([a-z|]+):calls=(\d+)", out, re.M) if c in data)


def well_formed_unknown_key():
    """A key with keygate's default shape and a valid checksum that no store holds."""
    import random
    import zlib
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    head = "sk_live_" + "".join(random.choice(alphabet) for _ in range(32))
    n, tail = zlib.crc32(head.encode()), ""
    for _ in range(6):
        tail = alphabet[n % 62] + tail
        n //= 62
    return head + tail


DISTINCT_LUA = """
local keys, i, sent = {}, 0, 0
for line in io.lines(os.getenv("KEYGATE_KEYS_FILE")) do keys[#keys + 1] = line end
request = function()
  i = i % #keys + 1
  return wrk.format(nil, nil, {["Authorization"] = "Bearer " .. keys[i]})
end
response = function()
  sent = sent + 1
  if sent >= #keys then wrk.thread:stop() end
end
"""


def distinct_bogus_keys(port, pid, work, n=1_000_000):
    """`n` distinct well-formed unknown keys, one request each, in two halves against `pid`:
    (requests, 2xx/3xx answers, req/s, RSS before, after the first half, after the second).
    Memory must stay bounded by the negative cache: the second half must not grow it again."""
    lua = os.path.join(work, "distinct.lua")
    with open(lua, "w") as f:
        f.write(DISTINCT_LUA)
    rss, requests, answered_ok, rates = [rss_kib(pid)], 0, 0, []
    for half in range(2):
        keys_file = os.path.join(work, f"bogus-keys-{half}.txt")
        with open(keys_file, "w") as f:
            f.writelines(well_formed_unknown_key() + "\n" for _ in range(n // 2))
        # The Lua script stops after one request per key; wrk still waits out -d.
        out = subprocess.run(["taskset", "-c", CLIENT_CPU, "wrk", "-t1", "-c64", f"-d{max(10, n // 30_000)}s",
                              "-s", lua, f"http://127.0.0.1:{port}/v1/items"], capture_output=True, text=True,
                             check=True, env={**os.environ, "KEYGATE_KEYS_FILE": keys_file}).stdout
        done = int(WRK_RE["requests"].search(out).group(1))
        m = WRK_RE["non2xx"].search(out)
        requests += done
        answered_ok += done - (int(m.group(1)) if m else 0)
        rate = re.search(r"Req/Sec\s+([\d.]+)(k?)", out)
        rates.append(float(rate.group(1)) * (1000 if rate.group(2) else 1))
        rss.append(rss_kib(pid))
    return requests, answered_ok, statistics.median(rates), *rss


def idle_connections_rss(port, pid, n=10_000):
    """RSS of `pid` after `n` keep-alive connections each made one request and went idle."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    rss_before = rss_kib(pid)
    socks = []
    req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        socks.append(s)
    for s in socks:
        s.settimeout(5)
        s.recv(4096)
    time.sleep(1)
    rss_after = rss_kib(pid)
    for s in socks:
        s.close()
    return rss_before, rss_after


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    if os.cpu_count() < 2:
        raise SystemExit("needs 2 CPUs (client and server pinned apart)")
    ensure_tools()
    log("building keygate (release)...")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "keygate")
    work = tempfile.mkdtemp(prefix="keygate-load-")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    try:
        run(binary, work)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


def run(binary, work):
    up_port, ngx_port, kg_port, kgr_port, redis_port = (free_port() for _ in range(5))
    body = '{"id":"item_123","object":"item","amount":1000,"currency":"eur","status":"succeeded"}'
    body += " " * max(0, 100 - len(body))
    upstream = nginx(
        f"server {{ listen 127.0.0.1:{up_port} backlog=4096; location / {{ default_type application/json; return 200 '{body}'; }} }}",
        work, "upstream")
    proxy = nginx(
        f"upstream app {{ server 127.0.0.1:{up_port}; keepalive 64; }}\n"
        f"server {{ listen 127.0.0.1:{ngx_port} backlog=4096; location / {{ proxy_pass http://app; "
        "proxy_http_version 1.1; proxy_set_header Connection \"\"; } }",
        work, "proxy")
    redis = start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", work])
    for p in (up_port, ngx_port, redis_port):
        wait_port(p)

    limits = '[rate_limits]\nkey = { limit = 1000000000, window = "1m" }\n'
    common = f'[upstream]\nurl = "http://127.0.0.1:{up_port}"\npool_max_idle_per_host = 1024\n[log]\nfilter = "error"\naccess = false\n'
    cfg_file = os.path.join(work, "kg.toml")
    authz_port = free_port()
    authz = (f'[authz]\nmode = "both"\naddress = "127.0.0.1:{authz_port}"\n[ip]\ntrusted_proxies = ["127.0.0.1"]\n'
             if AUTHZ else "")
    with open(cfg_file, "w") as f:
        # Caps above the idle-connection measurement's 10,000 (from one address).
        f.write(f'[listen]\naddress = "127.0.0.1:{kg_port}"\nmax_connections = 20000\n'
                f'max_connections_per_ip = 20000\n[ops]\naddress = "127.0.0.1:0"\n'
                f'[store]\npath = "{work}/keys.json"\n{common}{limits}{authz}')
    cfg_redis = os.path.join(work, "kg-redis.toml")
    with open(cfg_redis, "w") as f:
        f.write(f'[listen]\naddress = "127.0.0.1:{kgr_port}"\n[ops]\naddress = "127.0.0.1:0"\n'
                f'[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:{redis_port}"\n{common}'
                f'{limits}backend = "redis"\n')
    env = {**os.environ, "RUST_LOG": "error"}
    lease_port = free_port()
    cfg_lease = os.path.join(work, "kg-lease.toml")
    with open(cfg_lease, "w") as f:
        f.write(f'[listen]\naddress = "127.0.0.1:{lease_port}"\n[ops]\naddress = "127.0.0.1:0"\n'
                f'[store]\nbackend = "redis"\nurl = "redis://127.0.0.1:{redis_port}"\nkey_prefix = "lease"\n{common}'
                f'{limits}backend = "redis"\nlease_max = 256\n')

    def mint(cfg):
        out = subprocess.run([binary, "keys", "--config", cfg, "create", "--owner", "acct_load", "--scopes", "all", "--json"],
                             capture_output=True, text=True, check=True, env=env).stdout
        return json.loads(out)["key"]

    key = mint(cfg_file)
    key_redis = mint(cfg_redis)
    base_port = free_port()
    if BASELINE:
        cfg_base = os.path.join(work, "kg-base.toml")
        with open(cfg_base, "w") as f:
            # Settings an older build knows: no log.access (it had no access log).
            f.write(f'[listen]\naddress = "127.0.0.1:{base_port}"\n[ops]\naddress = "127.0.0.1:0"\n'
                    f'[store]\npath = "{work}/keys-base.json"\n'
                    + common.replace("access = false\n", "") + limits)
        out = subprocess.run([BASELINE, "keys", "--config", cfg_base, "create", "--owner", "acct_load", "--scopes",
                              "all", "--json"], capture_output=True, text=True, check=True, env=env).stdout
        key_base = json.loads(out)["key"]
        kgb = start([BASELINE, "serve", "--config", cfg_base], env=env)
        wait_port(base_port)
    kg = start([binary, "serve", "--config", cfg_file], env=env)
    kgr = start([binary, "serve", "--config", cfg_redis], env=env)
    wait_port(kg_port)
    wait_port(kgr_port)

    auth = f"Authorization: Bearer {key}"
    auth_redis = f"Authorization: Bearer {key_redis}"
    unknown_key = well_formed_unknown_key()

    servers = {
        "direct": (up_port, [upstream.pid] + children(upstream.pid), None),
        "nginx": (ngx_port, [proxy.pid] + children(proxy.pid), None),
        "keygate": (kg_port, [kg.pid], auth),
        "keygate-redis": (kgr_port, [kgr.pid], auth_redis),
    }
    if BASELINE:
        servers["keygate-base"] = (base_port, [kgb.pid], f"Authorization: Bearer {key_base}")
    if LEASE:
        key_lease = mint(cfg_lease)
        kgl = start([binary, "serve", "--config", cfg_lease], env=env)
        wait_port(lease_port)
        servers = {
            "keygate-redis": servers["keygate-redis"],
            "keygate-redis-lease": (lease_port, [kgl.pid], f"Authorization: Bearer {key_lease}"),
            "nginx": servers["nginx"],
        }
    if AUTHZ:
        wait_port(authz_port)
        ngxa_port = free_port()
        with open(os.path.join(ROOT, "deploy", "authz", "nginx.conf")) as f:
            shipped = f.read()
        conf = (shipped.replace("KEYGATE", f"127.0.0.1:{authz_port}").replace("LISTEN", f"127.0.0.1:{ngxa_port}")
                .replace("http://UPSTREAM", "http://app_authz"))
        ngxa = nginx(f"upstream app_authz {{ server 127.0.0.1:{up_port}; keepalive 64; }}\n{conf}", work, "authz")
        wait_port(ngxa_port)
        servers = {
            "keygate": servers["keygate"],
            # Envoy's HTTP shape: the check's own method and path are the request.
            "keygate-authz": (authz_port, [kg.pid], auth),
            "nginx-authz": (ngxa_port, [ngxa.pid] + children(ngxa.pid) + [kg.pid], auth),
            "nginx": servers["nginx"],
            "direct": servers["direct"],
        }
    upstream_pids = [upstream.pid] + children(upstream.pid)
    for name, (port, _, header) in servers.items():  # warm up: pools, caches, JIT-free but page cache
        hs = [header] if isinstance(header, str) else header or []
        wrk_short = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", "-c64", "-d1s"] + [a for h in hs for a in ("-H", h)]
        subprocess.run(wrk_short + [f"http://127.0.0.1:{port}/v1/items"], capture_output=True)

    if AB_ONLY:
        servers = {k: servers[k] for k in ("keygate", "keygate-base", "nginx")}
    results = {}
    for conns in (64,) if AB_ONLY or LEASE else (64, 1):
        for rnd in range(ROUNDS):
            for name, (port, pids, header) in servers.items():
                own = pids if name != "direct" else upstream_pids
                (u0, k0), b0, c0 = cpu_split(own), core_busy(SERVER_CPU), cpu_ticks(upstream_pids)
                t0 = u0 + k0
                rc0 = redis_calls(redis_port) if name.startswith("keygate-redis") else 0
                r = wrk(port, conns, header)
                (u1, k1), b1, c1 = cpu_split(own), core_busy(SERVER_CPU), cpu_ticks(upstream_pids)
                t1 = u1 + k1
                ours = (t1 - t0) + (0 if name == "direct" else (c1 - c0))
                if name.startswith("keygate-redis"):
                    # redis-server also runs on the server core; counted as "other" below
                    r["redis_rt"] = (redis_calls(redis_port) - rc0) / max(1, r["requests"])
                r["cpu_us"] = (t1 - t0) / TICK * 1e6 / max(1, r["requests"])
                r["user_us"] = (u1 - u0) / TICK * 1e6 / max(1, r["requests"])
                r["other_pct"] = max(0.0, ((b1 - b0) - ours) / max(1, (b1 - b0)) * 100)
                results.setdefault((name, conns), []).append(r)
                log(f"round {rnd + 1}/{ROUNDS} c={conns:>2} {name:<14} {r['rps']:>9.0f} req/s  p50 {r['p50']:>7.0f}us"
                    f"  cpu {r['cpu_us']:>6.1f}us/req (user {r['user_us']:>5.1f})  other {r['other_pct']:>4.1f}%")

    if AUTHZ:
        report_authz(results)
        return
    if LEASE:
        n_cpu = med(results[("nginx", 64)], "cpu_us")
        print(f"\nRedis limiter at 64 connections, {ROUNDS} interleaved rounds x {SECONDS}s (medians):")
        for name in ("keygate-redis", "keygate-redis-lease", "nginx"):
            rs = results[(name, 64)]
            rt = f"{med(rs, 'redis_rt'):.3f} Redis round trips/req" if name != "nginx" else ""
            print(f"  {name:<20} {med(rs, 'rps'):>9.0f} req/s  CPU {med(rs, 'cpu_us'):>6.1f} us/req "
                  f"({med(rs, 'cpu_us') / n_cpu:.2f}x nginx)  {rt}"
                  + ("  NON-2xx!" if any(r["non2xx"] for r in rs) else ""))
        return
    if AB_ONLY:
        print(f"\nA/B at 64 connections, {ROUNDS} rounds x {SECONDS}s, CPU us/req (user space): "
              + ", ".join(f"{n} {med(results[(n, 64)], 'cpu_us'):.1f} ({med(results[(n, 64)], 'user_us'):.1f})"
                          for n in servers))
        for other in ("keygate-base", "nginx"):
            pairs = [a["cpu_us"] / b["cpu_us"] for a, b in zip(results[("keygate", 64)], results[(other, 64)])]
            print(f"  per-round ratio keygate/{other}: " + " ".join(f"{r:.3f}" for r in pairs)
                  + f"  median {statistics.median(pairs):.3f}")
        return
    floods = {}
    for name, header in (("bogus key (unknown, well-formed)", f"Authorization: Bearer {unknown_key}"),
                         ("malformed key", "Authorization: Bearer sk_live_not_a_key")):
        rc0 = redis_calls(redis_port)
        r = wrk(kgr_port, 64, header)
        r["redis_total"] = redis_calls(redis_port) - rc0
        floods[name] = r

    syscalls = {}
    for name in ("nginx", "keygate"):
        port, pids, header = servers[name]
        pid = pids[-1] if name == "nginx" else pids[0]  # nginx: the worker
        syscalls[name] = perf_syscalls(pid, 4, port, 64, header)

    rss = idle_connections_rss(kg_port, kg.pid)
    distinct = distinct_bogus_keys(kg_port, kg.pid, work)
    report(results, floods, syscalls, rss, distinct)


def report_authz(results):
    print(f"\nauth-only mode: {ROUNDS} interleaved rounds x {SECONDS}s, wrk pinned to CPU {CLIENT_CPU}, "
          f"servers to CPU {SERVER_CPU}. Medians over rounds.\n")
    for conns in (64, 1):
        print(f"{conns} connection(s)")
        print(f"  {'target':<14} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'CPU us/req':>11} {'x keygate':>10} {'flags':<}")
        ref = med(results[("keygate", conns)], "cpu_us")
        for name in ("keygate", "keygate-authz", "nginx-authz", "nginx", "direct"):
            rs = results[(name, conns)]
            flags = []
            if max(r["other_pct"] for r in rs) > 5:
                flags.append(f"other CPU up to {max(r['other_pct'] for r in rs):.0f}%")
            if any(r["non2xx"] for r in rs):
                flags.append("NON-2xx!")
            cpu = med(rs, "cpu_us")
            print(f"  {name:<14} {med(rs, 'rps'):>9.0f} {med(rs, 'p50'):>8.0f} {med(rs, 'p99'):>8.0f} {cpu:>11.1f} "
                  f"{cpu / ref:>10.2f} {'; '.join(flags)}")
        print()


def med(rs, k):
    return statistics.median(r[k] for r in rs)


def report(results, floods, syscalls, rss, distinct):
    print(f"\nkeygate load benchmark: {ROUNDS} interleaved rounds x {SECONDS}s, wrk pinned to CPU {CLIENT_CPU}, "
          f"servers to CPU {SERVER_CPU}. Medians over rounds.\n")
    for conns in (64, 1):
        print(f"{conns} connection(s)")
        print(f"  {'target':<14} {'req/s':>9} {'p50 us':>8} {'p99 us':>8} {'CPU us/req':>11} {'x direct':>9} {'x nginx':>8} {'flags':<}")
        d = results[("direct", conns)]
        n = results[("nginx", conns)]
        for name in [n for n in ("direct", "nginx", "keygate", "keygate-redis", "keygate-base")
                     if (n, conns) in results]:
            rs = results[(name, conns)]
            flags = []
            if max(r["other_pct"] for r in rs) > 5:
                flags.append(f"other CPU up to {max(r['other_pct'] for r in rs):.0f}%")
            if any(r["non2xx"] for r in rs):
                flags.append("NON-2xx!")
            if name == "keygate-redis":
                flags.append(f"{med(rs, 'redis_rt'):.2f} redis round trips/req")
            cpu = med(rs, "cpu_us")
            print(f"  {name:<14} {med(rs, 'rps'):>9.0f} {med(rs, 'p50'):>8.0f} {med(rs, 'p99'):>8.0f} {cpu:>11.1f} "
                  f"{med(rs, 'rps') / med(d, 'rps'):>9.2f} {med(rs, 'rps') / med(n, 'rps'):>8.2f} {'; '.join(flags)}")
        if conns == 1:
            base = med(d, "p50")
            print(f"  added p50 over direct: nginx +{med(n, 'p50') - base:.0f}us, keygate "
                  f"+{med(results[('keygate', 1)], 'p50') - base:.0f}us, keygate-redis "
                  f"+{med(results[('keygate-redis', 1)], 'p50') - base:.0f}us")
        n_cpu, k_cpu = med(n, "cpu_us"), med(results[("keygate", conns)], "cpu_us")
        print(f"  keygate CPU per request vs nginx: {k_cpu / n_cpu:.2f}x")
        if ("keygate-base", conns) in results:
            b_cpu = med(results[("keygate-base", conns)], "cpu_us")
            print(f"  keygate CPU per request vs keygate-base: {k_cpu / b_cpu:.3f}x")
        print()
    print("Floods against keygate-redis, 64 connections (all must be 401):")
    for name, r in floods.items():
        print(f"  {name:<34} {r['rps']:>9.0f} req/s  non-401 responses: {r['requests'] - r['non2xx']}"
              f"  redis commands in total: {r['redis_total']}")
    n, ok, rate, before, half, after = distinct
    print(f"  {n:,} distinct unknown keys, one request each (keygate, file store, negative cache of 100,000):"
          f" ~{rate:,.0f} req/s, non-401 responses: {ok}; RSS {before / 1024:.1f} MiB before,"
          f" {half / 1024:.1f} after the first half, {after / 1024:.1f} after the second")
    print("\nSyscalls per request (perf, separate 4 s run at 64 connections):")
    for name, v in syscalls.items():
        print(f"  {name:<14} {'n/a' if v is None else f'{v:.2f}'}")
    print(f"\nkeygate RSS: {rss[0] / 1024:.1f} MiB before, {rss[1] / 1024:.1f} MiB with 10,000 idle keep-alive connections "
          f"({(rss[1] - rss[0]) / 10_000:.1f} KiB per connection)")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
