#!/usr/bin/env python3
"""User-space instructions per proxied request, counted by callgrind: the A/B check for hot-path
changes on a machine too noisy for CPU time to show a few percent.

keygate runs under `valgrind --tool=callgrind` (current-thread runtime) in front of an nginx
upstream returning a fixed JSON; after a warm-up, the counters are zeroed, wrk sends requests
for a while with a valid cached key, and the instructions executed (Ir, all threads) are divided
by the requests answered. Kernel work is not counted (see load.py for syscalls and CPU time).

    python3 benches/instructions.py                          # this tree's release build
    KEYGATE_BASELINE=/tmp/keygate-old python3 benches/instructions.py   # and another binary

Instruction counts are deterministic up to a fraction of a percent, so one run per binary is
enough. KEEP_DUMPS=/some/dir keeps the callgrind files for `callgrind_annotate`. Installs nginx, wrk and valgrind with apt-get when missing.
"""

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (shared helpers: free_port, wait_port, nginx, start, stop_all)

ROOT = load.ROOT
BASELINE = os.environ.get("KEYGATE_BASELINE")
SECONDS = int(os.environ.get("SECONDS", "6"))


def ensure_tools():
    load.ensure_tools()
    if not shutil.which("valgrind"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "valgrind"], check=True, stdout=subprocess.DEVNULL)


def upstream(work):
    """The nginx upstream every bench proxies to (a fixed JSON), listening; its port."""
    port = load.free_port()
    body = '{"id":"item_123","object":"item","amount":1000,"currency":"eur","status":"succeeded"}'
    load.nginx(f"server {{ listen 127.0.0.1:{port}; location / {{ default_type application/json; "
               f"return 200 '{body}'; }} }}", work, "upstream")
    load.wait_port(port)
    return port


def configured(binary, work, up_port, tag, extra=""):
    """A keygate config for `binary` (file store, the in-process limiter; `extra` TOML added) in
    front of the upstream at `up_port`, and a key minted in it: (port, config, env, key)."""
    port = load.free_port()
    cfg = os.path.join(work, f"{tag}.toml")
    with open(cfg, "w") as f:
        f.write(f'[listen]\naddress = "127.0.0.1:{port}"\n[ops]\naddress = "127.0.0.1:0"\n'
                f'[store]\npath = "{work}/{tag}-keys.json"\n[upstream]\nurl = "http://127.0.0.1:{up_port}"\n'
                '[log]\nfilter = "error"\n[rate_limits]\nkey = { limit = 1000000000, window = "1m" }\n' + extra)
    env = {**os.environ, "RUST_LOG": "error", "KEYGATE_RUNTIME": "current_thread"}
    out = subprocess.run([binary, "keys", "--config", cfg, "create", "--owner", "acct_load", "--scopes", "all",
                          "--json"], capture_output=True, text=True, check=True, env=env).stdout
    key = re.search(r'"key":\s*"([^"]+)"', out).group(1)
    return port, cfg, env, key


def measure(binary, work, up_port, tag):
    port, cfg, env, key = configured(binary, work, up_port, tag)
    dump = os.path.join(work, f"{tag}.callgrind")
    kg = load.start(["valgrind", "--tool=callgrind", f"--callgrind-out-file={dump}.%p", binary, "serve",
                     "--config", cfg], env=env, stderr=subprocess.DEVNULL)
    load.wait_port(port, timeout=120)
    url = f"http://127.0.0.1:{port}/v1/items"
    wrk = ["wrk", "-t1", "-c8", "-H", f"Authorization: Bearer {key}", url]
    subprocess.run(wrk[:1] + ["-d2s"] + wrk[1:], capture_output=True)  # warm up: pool, cache
    subprocess.run(["callgrind_control", "--zero", str(kg.pid)], check=True, capture_output=True)
    res = subprocess.run(wrk[:1] + [f"-d{SECONDS}s"] + wrk[1:], capture_output=True, text=True).stdout
    subprocess.run(["callgrind_control", "--dump", str(kg.pid)], check=True, capture_output=True)
    requests = int(re.search(r"(\d+) requests in", res).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", res)
    if non2xx:
        raise SystemExit(f"{tag}: {non2xx.group(1)} non-2xx responses")
    time.sleep(0.5)
    totals = []
    for path in glob.glob(f"{dump}.*"):
        with open(path) as f:
            m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
            if m and path.split(".")[-1] != str(kg.pid):  # the dump after zeroing, not the final one
                totals.append(int(m.group(1)))
    if os.environ.get("KEEP_DUMPS"):  # for callgrind_annotate --inclusive=yes
        for path in glob.glob(f"{dump}.*"):
            shutil.copy(path, os.environ["KEEP_DUMPS"])
    kg.terminate()
    kg.wait(timeout=30)
    if not totals:
        raise SystemExit(f"{tag}: no callgrind dump found")
    return min(totals) / max(1, requests), requests


def main():
    ensure_tools()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "keygate")
    with tempfile.TemporaryDirectory(prefix="keygate-ir-") as work:
        try:
            up_port = upstream(work)
            rows = [("keygate", *measure(binary, work, up_port, "keygate"))]
            if BASELINE:
                rows.append(("keygate-base", *measure(BASELINE, work, up_port, "base")))
        finally:
            load.stop_all()
    print("\nUser-space instructions per request (callgrind, cached key, 8 connections):")
    for name, ir, n in rows:
        print(f"  {name:<14} {ir:>10.0f} Ir/req  over {n} requests")
    if BASELINE:
        print(f"  keygate / keygate-base: {rows[0][1] / rows[1][1]:.3f}x")


if __name__ == "__main__":
    main()
