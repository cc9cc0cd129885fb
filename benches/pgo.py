#!/usr/bin/env python3
"""Records the execution profile every x86-64 Linux build of keygate is optimised with
(`.cargo/keygate.profdata`, named in `.cargo/config.toml`): profile-guided optimisation.

An instrumented release build (`-Cprofile-generate`, its own target directory) serves the
workloads `load.py` measures, each for SECONDS (default 5):
  - a cached key through the in-process limiter (file store), at 64 connections and at 1;
  - the same through the Redis store and the Redis limiter;
  - floods of a well-formed unknown key and of a malformed one (the 401 paths stay optimised);
then stops gracefully (the counts are written at exit), and the counts are merged (`--sparse`)
into `.cargo/keygate.profdata`, and the compiler's version into `.cargo/keygate.profdata.rustc`
(the profile names functions as this compiler does; `.cargo/pgo-rustc` uses it with this
compiler only). Run it again after changing the request path: a function whose
code changed since the profile was recorded is optimised without it (LLVM checks each
function's control-flow hash), so a stale profile costs speed, never correctness.

    python3 benches/pgo.py          # then: cargo build --release, benches/load.py

Installs nginx, wrk and redis-server with apt-get when missing, and rustup's llvm-tools (for
llvm-profdata, which must match rustc's LLVM).
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

os.environ.setdefault("SECONDS", "5")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (shared helpers: free_port, wait_port, nginx, start, wrk, stop_all)

ROOT = load.ROOT
PROFILE = os.path.join(ROOT, ".cargo", "keygate.profdata")
TARGET_DIR = os.path.join(ROOT, "target", "pgo-generate")


def profdata_tool():
    """rustup's llvm-profdata for the active toolchain (installed when missing), and the
    compiler's version line (`rustc -V`)."""
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
    info = dict(line.split(": ", 1) for line in subprocess.run(["rustc", "-vV"], cwd=ROOT, capture_output=True,
                                                                text=True, check=True).stdout.splitlines()
                if ": " in line)
    tool = os.path.join(sysroot, "lib", "rustlib", info["host"], "bin", "llvm-profdata")
    if not os.path.exists(tool):
        subprocess.run(["rustup", "component", "add", "llvm-tools"], cwd=ROOT, check=True)
    version = subprocess.run(["rustc", "-V"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return tool, version.strip()


def instrumented(raw_dir):
    """The instrumented release build's path. `.cargo/pgo-rustc` leaves a compilation with
    profile flags of its own alone, so the old profile plays no part in the new one. The same
    flags each run (the counts' files are named at run time), so cargo rebuilds only what
    changed."""
    env = {**os.environ, "RUSTFLAGS": f"-Cprofile-generate={raw_dir}", "CARGO_TARGET_DIR": TARGET_DIR}
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "keygate"], cwd=ROOT, env=env,
                   check=True)
    return os.path.join(TARGET_DIR, "release", "keygate")


def train(binary, raw_dir, work):
    up_port, redis_port = load.free_port(), load.free_port()
    body = '{"id":"item_123","object":"item","amount":1000,"currency":"eur","status":"succeeded"}'
    load.nginx(f"server {{ listen 127.0.0.1:{up_port} backlog=4096; location / {{ default_type "
               f"application/json; return 200 '{body}'; }} }}", work, "upstream")
    load.start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", work])
    load.wait_port(up_port)
    load.wait_port(redis_port)
    # Only keygate's own runs are merged (the build scripts were instrumented too).
    env = {**os.environ, "RUST_LOG": "error", "LLVM_PROFILE_FILE": os.path.join(raw_dir, "keygate-%p-%m.profraw")}
    common = (f'[upstream]\nurl = "http://127.0.0.1:{up_port}"\npool_max_idle_per_host = 1024\n'
              '[log]\nfilter = "error"\naccess = false\n'
              '[rate_limits]\nkey = { limit = 1000000000, window = "1m" }\n')
    setups = [
        ("file", f'path = "{work}/keys.json"\n', ""),
        ("redis", f'backend = "redis"\nurl = "redis://127.0.0.1:{redis_port}"\n', 'backend = "redis"\n'),
    ]
    for tag, store, limiter in setups:
        port = load.free_port()
        cfg = os.path.join(work, f"{tag}.toml")
        with open(cfg, "w") as f:
            f.write(f'[listen]\naddress = "127.0.0.1:{port}"\n[ops]\naddress = "127.0.0.1:0"\n'
                    f'[store]\n{store}{common}{limiter}')
        out = subprocess.run([binary, "keys", "--config", cfg, "create", "--owner", "acct_load", "--scopes", "all",
                              "--json"], capture_output=True, text=True, check=True, env=env).stdout
        key = json.loads(out)["key"]
        server = load.start([binary, "serve", "--config", cfg], env=env)
        load.wait_port(port)
        runs = [(64, f"Authorization: Bearer {key}"), (1, f"Authorization: Bearer {key}")]
        if tag == "file":
            runs += [(64, f"Authorization: Bearer {load.well_formed_unknown_key()}"),
                     (64, "Authorization: Bearer not-a-key")]
        for conns, header in runs:
            r = load.wrk(port, conns, header)
            load.log(f"{tag:<5} c={conns:<2} {r['rps']:>8.0f} req/s  {header[:30]}...")
        server.send_signal(signal.SIGTERM)
        if server.wait(timeout=30) != 0:
            raise SystemExit(f"the instrumented keygate ({tag}) exited with {server.returncode}")


def main():
    load.ensure_tools()
    tool, rustc = profdata_tool()
    raw_dir = os.path.join(TARGET_DIR, "profiles")
    shutil.rmtree(raw_dir, ignore_errors=True)
    os.makedirs(raw_dir)
    work = tempfile.mkdtemp(prefix="keygate-pgo-")
    try:
        load.log("building keygate instrumented (release)...")
        binary = instrumented(raw_dir)
        train(binary, raw_dir, work)
        raws = glob.glob(os.path.join(raw_dir, "keygate-*.profraw"))
        if not raws:
            raise SystemExit("no profile was written")
        subprocess.run([tool, "merge", "--sparse", "-o", PROFILE] + raws, check=True)
        with open(PROFILE + ".rustc", "w") as f:
            f.write(rustc + "\n")
        load.log(f"wrote {os.path.relpath(PROFILE, ROOT)} ({os.path.getsize(PROFILE) // 1024} KiB) "
                 f"from {len(raws)} runs")
    finally:
        load.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
