#!/usr/bin/env python3
"""Offline checks of the deployment artifacts (run by .ci/run; see deploy/README.md).

1. Helm chart: `lint(strict)` and a client-side render (Helm 4's own library, through the
   helm-python-sdk wheel) for the default values and every file in helm/keygate/examples/;
   every rendered document validated against the Kubernetes 1.30 schemas (kubernetes-validate,
   strict: unknown fields are errors). Charts that must refuse bad values are checked to fail.
2. Chart ↔ binary: the sidecar.toml each rendering's ConfigMap carries is loaded by the real
   keygate binary (`check-config`); two of them (file store, Redis store) are served and a key
   created with the same config authenticates a request through them.
3. docker-compose.yml: `docker-compose config --quiet` (the real Compose v5 binary), and its
   sidecar.toml through `check-config`.
4. Dockerfile: hadolint.

Usage: deploy/check.py PATH_TO_KEYGATE_BINARY
"""

import glob
import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "helm", "keygate")
K8S = "1.30.0"
failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}")


def render(values):
    chart = helm.Chart.load(CHART)
    out = chart.render(values, name="kg", namespace="apps", is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def check_documents(name, docs):
    for path, doc in docs:
        kind = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, K8S, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            # CRDs (ServiceMonitor) have no bundled schema: check the parts keygate sets.
            ok = doc.get("apiVersion") == "monitoring.coreos.com/v1" and doc["spec"]["endpoints"]
            if not ok:
                fail(f"{name}: {path}: no schema for {kind}")
        except kubernetes_validate.ValidationError as e:
            fail(f"{name}: {path}: {kind}: {e.message} at {list(e.path)}")
        if doc.get("kind") in ("Deployment",):
            pod = doc["spec"]["template"]["spec"]
            kg = [c for c in pod["containers"] if c["name"] == "keygate"]
            if not kg:
                fail(f"{name}: {kind}: no keygate container")
                continue
            sc = kg[0].get("securityContext", {})
            if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                    and sc.get("capabilities", {}).get("drop") == ["ALL"]
                    and pod.get("securityContext", {}).get("runAsNonRoot")):
                fail(f"{name}: {kind}: keygate container is not locked down")
            probes = [kg[0][p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
            if [p["path"] for p in probes] != ["/readyz", "/healthz", "/readyz?store=ignore"] \
                    or any(p["port"] != "kg-ops" for p in probes):
                fail(f"{name}: {kind}: probes are not on the ops port")
            check_mounts(name, kind, pod, kg[0], config_of(docs))


def check_mounts(name, kind, pod, container, toml):
    """Every file the rendered config names is mounted, with the Secret item it needs, and the
    container ports are the ones the config listens on."""
    cfg = tomllib.loads(toml)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    files = [cfg.get(s, {}).get(f) for s, f in [("admin", "tokens_file"), ("keys", "pepper_file"),
                                                   ("store", "password_file")]]
    files += [cfg.get("listen", {}).get("tls", {}).get(f) for f in ("cert_file", "key_file", "client_ca_file")]
    for path in filter(None, files):
        folder, item = os.path.split(path)
        secret = volumes.get(mounts.get(folder, ""), {}).get("secret")
        items = [i["path"] for i in secret.get("items", [])] if secret else []
        # A Secret mounted whole (no items) holds its keys as files; TLS secrets are.
        if secret is None or (items and item not in items):
            fail(f"{name}: {kind}: {path} is not mounted from a Secret")
    if cfg.get("store", {}).get("backend", "file") == "file":
        folder = os.path.dirname(cfg["store"].get("path", "keys.json"))
        if folder not in mounts:
            fail(f"{name}: {kind}: the store folder {folder} is not a volume (read-only root)")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for name_, section in [("kg-http", "listen"), ("kg-ops", "ops")]:
        if not cfg[section]["address"].endswith(f":{ports.get(name_)}"):
            fail(f"{name}: {kind}: port {name_} does not match [{section}] address")


def config_of(docs):
    for _, doc in docs:
        if doc.get("kind") == "ConfigMap":
            return doc["data"]["sidecar.toml"]
    raise SystemExit("no ConfigMap rendered")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"owner": self.headers.get("X-Auth-Owner")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def local_env(toml, tmp, upstream_port, redis_url):
    """Overrides that point a rendered config at this machine: ports, the upstream, the store
    and the secret files the Kubernetes Secret would mount. Only settings the config uses are
    overridden, so the binary still checks the rest as rendered."""
    cfg = tomllib.loads(toml)
    secrets = os.path.join(tmp, "secrets")
    os.makedirs(secrets, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "KEYGATE__LISTEN__ADDRESS": f"127.0.0.1:{free_port()}",
        "KEYGATE__OPS__ADDRESS": f"127.0.0.1:{free_port()}",
        "KEYGATE__ADMIN__ADDRESS": f"127.0.0.1:{free_port()}",
        "KEYGATE__UPSTREAM__URL": f"http://127.0.0.1:{upstream_port}",
    })
    for section, field, value in [("admin", "tokens_file", "ops:check-admin-token-0123456789"),
                                  ("keys", "pepper_file", "check-pepper-0123456789abcdef"),
                                  ("store", "password_file", "unused-password")]:
        if field in cfg.get(section, {}):
            path = os.path.join(secrets, field)
            with open(path, "w") as f:
                f.write(value)
            env[f"KEYGATE__{section.upper()}__{field.upper()}"] = path
    tls = cfg.get("listen", {}).get("tls")
    if tls:
        # A throwaway CA-less certificate; the client CA file gets the same one.
        crt, key = os.path.join(secrets, "tls.crt"), os.path.join(secrets, "tls.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", key, "-out", crt, "-days", "1", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
        env["KEYGATE__LISTEN__TLS__CERT_FILE"] = crt
        env["KEYGATE__LISTEN__TLS__KEY_FILE"] = key
        if "client_ca_file" in tls:
            env["KEYGATE__LISTEN__TLS__CLIENT_CA_FILE"] = crt
    if cfg.get("store", {}).get("backend", "file") == "file":
        env["KEYGATE__STORE__PATH"] = os.path.join(tmp, "keys.json")
    else:
        # The Redis with a password when the config sends one.
        env["KEYGATE__STORE__URL"] = redis_url[1 if "password_file" in cfg["store"] else 0]
    return env


def keygate_config_checks(binary, name, toml, env, tmp):
    cfg = os.path.join(tmp, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(toml)
    r = subprocess.run([binary, "check-config", "-c", cfg], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"{name}: the binary refuses the chart's config: {r.stdout}{r.stderr}")
    return cfg


def serve_and_request(binary, name, cfg, env):
    before = len(failures)
    proc = subprocess.Popen([binary, "serve", "-c", cfg], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        ops = env["KEYGATE__OPS__ADDRESS"]
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://{ops}/readyz", timeout=1)
                break
            except Exception:
                time.sleep(0.1)
        else:
            fail(f"{name}: not ready")
            return
        out = subprocess.run([binary, "keys", "-c", cfg, "create", "--owner", "acct_chart", "--scopes", "all", "--json"],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            fail(f"{name}: keys create: {out.stderr}")
            return
        key = json.loads(out.stdout)["key"]
        listen = env["KEYGATE__LISTEN__ADDRESS"]
        req = urllib.request.Request(f"http://{listen}/v1/things", headers={"Authorization": f"Bearer {key}"})
        got = None
        for _ in range(50):  # the file store's watcher picks the new key up within its interval
            try:
                got = json.load(urllib.request.urlopen(req, timeout=2))
                break
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        if not got or got.get("owner") != "acct_chart":
            fail(f"{name}: an authenticated request did not pass: {got}")
        try:
            urllib.request.urlopen(f"http://{listen}/v1/things", timeout=2)
            fail(f"{name}: a request without a key passed")
        except urllib.error.HTTPError as e:
            if e.code != 401:
                fail(f"{name}: without a key: {e.code}")
        except (urllib.error.URLError, OSError) as e:
            fail(f"{name}: {e}")
        if len(failures) == before:
            print(f"ok: {name}: served with the chart's config; key → 200, no key → 401")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if failures:
            print(proc.stderr.read().decode(errors="replace")[-2000:])


def start_redis(tmp, password=None):
    port = free_port()
    auth = ["--requirepass", password] if password else []
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp] + auth, stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise SystemExit("redis-server did not start")


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    binary = os.path.abspath(sys.argv[1])

    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    tmp = tempfile.mkdtemp(prefix="keygate-check-")
    redis_proc, plain_url = start_redis(tmp)
    auth_proc, auth_url = start_redis(tmp, "unused-password")
    redis_url = (plain_url, auth_url)
    try:
        cases = [("default", {})] + [
            (os.path.basename(p)[:-5], yaml.safe_load(open(p)))
            for p in sorted(glob.glob(os.path.join(CHART, "examples", "*.yaml")))
        ]
        for name, values in cases:
            report = helm.lint(CHART, values, strict=True, kube_version=f"v{K8S}")
            bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
            if bad:
                fail(f"{name}: helm lint: {bad}")
            docs = render(values)
            check_documents(name, docs)
            kinds = sorted({d["kind"] for _, d in docs})
            print(f"ok: {name}: rendered and validated {len(docs)} documents ({', '.join(kinds)})")
            case_tmp = tempfile.mkdtemp(dir=tmp)
            toml = config_of(docs)
            env = local_env(toml, case_tmp, upstream.server_address[1], redis_url)
            cfg = keygate_config_checks(binary, name, toml, env, case_tmp)
            if name in ("file-store", "default", "standalone"):
                serve_and_request(binary, name, cfg, env)

        # The sidecar's app is bound to loopback and reachable only through keygate.
        docs = render(yaml.safe_load(open(os.path.join(CHART, "examples", "sidecar.yaml"))))
        demo = next(d for _, d in docs if d["kind"] == "Deployment")
        app = next(c for c in demo["spec"]["template"]["spec"]["containers"] if c["name"] == "app")
        if not any("127.0.0.1:3000" in a for a in app["args"]) or app.get("ports"):
            fail("sidecar demo: the app is not bound to loopback only")
        svc = next(d for _, d in docs if d["kind"] == "Service")
        if svc["spec"]["ports"][0]["targetPort"] != "kg-http":
            fail("sidecar: the Service does not target keygate's port")

        # Auth-only mode: the Service exposes the check port and no proxy port.
        docs = render(yaml.safe_load(open(os.path.join(CHART, "examples", "authz.yaml"))))
        svc = next(d for _, d in docs if d["kind"] == "Service")
        names = sorted(p["name"] for p in svc["spec"]["ports"])
        if names != ["authz", "ops"] or not any(p["targetPort"] == "kg-authz" for p in svc["spec"]["ports"]):
            fail(f"authz: the Service ports are {names}")
        else:
            print("ok: authz: the Service exposes the check listener only")

        # The auth-only snippets: YAML that parses; the core Kubernetes objects validate.
        for f in ("envoy", "istio", "ingress-nginx", "traefik"):
            docs = [d for d in yaml.safe_load_all(open(os.path.join(ROOT, "deploy", "authz", f + ".yaml"))) if d]
            core = [(f, d) for d in docs if d.get("apiVersion") in ("networking.k8s.io/v1",)]
            check_documents(f"deploy/authz/{f}.yaml", core)
            print(f"ok: deploy/authz/{f}.yaml parses ({len(docs)} documents, {len(core)} schema-validated)")

        # Values the chart must refuse.
        for name, values, expected in [
            ("file store with 3 replicas", {"store": {"backend": "file"}, "replicaCount": 3}, "more than one replica"),
            ("file store with Redis limits", {"store": {"backend": "file"}, "replicaCount": 1}, "rate_limits.backend=redis"),
            ("admin without a secret", {"admin": {"enabled": True}}, "secrets.existingSecret"),
            ("sidecar without a selector", {"mode": "sidecar"}, "sidecar.podSelector"),
            ("managed section in config", {"config": {"store": {"path": "/x"}}}, "set by the chart"),
            ("null in config", {"config": {"auth": {"cache_ttl": None}}}, "null values"),
            ("authz without trusted proxies", {"authz": {"mode": "authz"}}, "trusted_proxies"),
            ("authz mode with an Ingress", {"authz": {"mode": "authz"}, "ingress": {"enabled": True},
                                            "config": {"ip": {"trusted_proxies": ["10.0.0.0/8"]}}}, "auth-url"),
            ("unknown authz mode", {"authz": {"mode": "sidecar"}}, "proxy, authz or both"),
        ]:
            try:
                render(values)
                fail(f"chart accepted: {name}")
            except helm.HelmError as e:
                if expected not in str(e):
                    fail(f"chart refused {name} for another reason: {e}")
                else:
                    print(f"ok: refused {name}")

        # Awkward strings and keys survive the YAML → TOML rendering.
        tricky = {"store": {"backend": "file"}, "replicaCount": 1, "config": {
            "rate_limits": {"backend": "local", "tiers": {"gold tier": {"limit": 5, "window": "1m"}},
                            "categories": {"pay.create": {"limit": 5, "window": "1h"}}},
            "routes": [{"name": "quote\"back\\slash", "path": "/ünï/{id}", "scope": "a:b"}]}}
        cfg = tomllib.loads(config_of(render(tricky)))
        if "gold tier" not in cfg["rate_limits"]["tiers"] or "pay.create" not in cfg["rate_limits"]["categories"] \
                or cfg["routes"][0]["name"] != "quote\"back\\slash" or cfg["routes"][0]["path"] != "/ünï/{id}":
            fail(f"tricky values did not round-trip: {cfg}")
        else:
            print("ok: quoted keys, quotes, backslashes and unicode round-trip into sidecar.toml")

        # docker-compose
        compose = os.path.join(ROOT, "deploy", "docker-compose.yml")
        r = subprocess.run(["docker-compose", "-f", compose, "config", "--quiet"], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"docker-compose.yml: {r.stderr}")
        else:
            cfg = yaml.safe_load(subprocess.run(["docker-compose", "-f", compose, "config"],
                                                capture_output=True, text=True).stdout)
            published = {s: v.get("ports") for s, v in cfg["services"].items() if v.get("ports")}
            if list(published) != ["keygate"]:
                fail(f"docker-compose.yml: only keygate may publish ports, got {list(published)}")
            else:
                print("ok: docker-compose.yml validates; only keygate publishes a port")
        with open(os.path.join(ROOT, "deploy", "compose", "sidecar.toml")) as f:
            toml = f.read()
        env = local_env(toml, tempfile.mkdtemp(dir=tmp), upstream.server_address[1], redis_url)
        keygate_config_checks(binary, "compose", toml, env, tmp)
        print("ok: compose: the binary accepts deploy/compose/sidecar.toml")

        # Dockerfile
        r = subprocess.run(["hadolint", os.path.join(ROOT, "deploy", "Dockerfile")], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"hadolint: {r.stdout}{r.stderr}")
        else:
            print("ok: Dockerfile lints clean (hadolint)")
    finally:
        redis_proc.terminate()
        auth_proc.terminate()
        upstream.shutdown()

    if failures:
        print(f"\n{len(failures)} deployment check(s) failed")
        sys.exit(1)
    print("\nall deployment checks passed")


if __name__ == "__main__":
    main()
