//! The `keygate` binary as a user runs it: config checking, key management, serving, signals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::*;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn write_config(dir: &Path, upstream: &str, extra: &str) -> String {
    let path = dir.join("sidecar.toml");
    let store = dir.join("keys.json");
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:0\"\ndrain_timeout = \"5s\"\n[ops]\naddress = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"{upstream}\"\n[store]\npath = {:?}\nreload_interval = \"50ms\"\n\
         [log]\nformat = \"json\"\n{extra}",
        store.display().to_string()
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[test]
fn check_config_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "environment = \"staging\"\nbogus = 1\n[listen]\naddress = \"nowhere\"\ndrain_timeout = \"forever\"\n[upstream]\nurl = \"http://127.0.0.1:3000\"\n",
    )
    .unwrap();
    let out = keygate(&["check-config", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    // Each problem points at its line and column.
    assert!(err.contains("bad.toml:4:1: listen.address:"), "{err}");
    assert!(err.contains("bad.toml:1:1: environment:"), "{err}");
    for needle in [
        "4 problems",
        "environment:",
        "bogus: unknown setting",
        "listen.address:",
        "listen.drain_timeout:",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
    // serve refuses the same file with the same exit code, before binding anything.
    let out = keygate(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));

    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/sidecar.toml.example");
    let out = keygate(&["check-config", "--config", example]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = keygate(&["check-config", "--config", "/nonexistent/keygate.toml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn key_lifecycle_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "http://127.0.0.1:9", "");
    let out = keygate(&[
        "keys",
        "--config",
        &cfg,
        "create",
        "--owner",
        "acct_42",
        "--env",
        "live",
        "--scopes",
        "payments:read,refunds:write",
        "--name",
        "billing",
        "--expires-in",
        "30d",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["record"]["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sk_live_"));
    assert_eq!(
        created["record"]["scopes"],
        serde_json::json!(["payments:read", "refunds:write"])
    );
    assert!(created["record"]["expires_at"].is_string());

    // Human output prints the key once too, with a warning.
    let out = keygate(&[
        "keys",
        "--config",
        &cfg,
        "create",
        "--owner",
        "acct_42",
        "--type",
        "publishable",
        "--env",
        "test",
    ]);
    let human = stdout(&out);
    assert!(
        human.contains("only time the key is shown") && human.contains("pk_test_"),
        "{human}"
    );

    // Nothing after creation shows the key: not list, not show, not the store file.
    let list = stdout(&keygate(&["keys", "--config", &cfg, "list"]));
    assert!(
        list.contains(&id) && list.contains("acct_42") && list.contains("active"),
        "{list}"
    );
    let list_json = stdout(&keygate(&[
        "keys", "--config", &cfg, "list", "--json", "--owner", "acct_42",
    ]));
    let show = stdout(&keygate(&["keys", "--config", &cfg, "show", &id]));
    assert!(
        list.contains("NAME") && list.contains("billing") && list.contains("EXPIRES"),
        "{list}"
    );
    assert!(
        show.lines()
            .any(|l| l.starts_with("name") && l.ends_with("billing")),
        "{show}"
    );
    assert!(
        show.contains("payments:read,refunds:write") && show.contains("expires"),
        "{show}"
    );
    let store = std::fs::read_to_string(dir.path().join("keys.json")).unwrap();
    let secret_part = &key["sk_live_".len()..];
    for (what, text) in [
        ("list", &list),
        ("list --json", &list_json),
        ("show", &show),
        ("store file", &store),
    ] {
        assert!(!text.contains(secret_part), "key material in {what}");
    }
    assert!(!list_json.contains("phc") && !list_json.contains("lookup_hash"));

    let out = keygate(&[
        "keys", "--config", &cfg, "rotate", &id, "--grace", "1h", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rotated: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(rotated["key"].as_str().unwrap(), key);
    assert_eq!(rotated["previous"]["rotated_to"], rotated["record"]["id"]);
    assert_eq!(rotated["record"]["rotated_from"], id.as_str());
    assert_eq!(
        rotated["previous"]["state"], "active",
        "grace keeps the old key active"
    );

    let out = keygate(&["keys", "--config", &cfg, "revoke", &id, "--json"]);
    let revoked: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(revoked["state"], "revoked");

    let out = keygate(&["keys", "--config", &cfg, "show", "key_doesnotexist"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key with id"));
    let out = keygate(&["keys", "--config", &cfg, "create", "--owner", "bad owner!"]);
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn cli_revocation_reaches_a_running_proxy() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), "");
    let served = Served::start(&cfg);
    let url = format!("http://{}/v1/charges", served.addr);

    let out = keygate(&[
        "keys", "--config", &cfg, "create", "--owner", "acct_7", "--json",
    ]);
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let auth = bearer(created["key"].as_str().unwrap());
    let id = created["record"]["id"].as_str().unwrap().to_owned();
    assert_eventually!(
        get(&url, &[("authorization", &auth)]).await.status == 200,
        Duration::from_secs(2),
        "new key not picked up"
    );
    assert!(
        keygate(&["keys", "--config", &cfg, "revoke", &id])
            .status
            .success()
    );
    // Within a second: the store file is polled every 50 ms here (250 ms by default).
    assert_eventually!(
        get(&url, &[("authorization", &auth)]).await.code() == "expired_key",
        Duration::from_secs(1),
        "revocation not honoured within a second"
    );
}

/// With the file store, the CLI waits for the running proxies' acknowledgements (beside the
/// store file) and says so: when `revoke` returns "applied by 1 of 1", the key is refused.
#[tokio::test]
async fn cli_revoke_says_which_running_proxies_applied_it() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), "");
    let out = keygate(&[
        "keys", "--config", &cfg, "create", "--owner", "acct_7", "--json",
    ]);
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        created["propagated"]["replicas"], 0,
        "no proxy yet: {created}"
    );
    let auth = bearer(created["key"].as_str().unwrap());
    let id = created["record"]["id"].as_str().unwrap().to_owned();

    let served = Served::start(&cfg);
    let url = format!("http://{}/v1/charges", served.addr);
    assert_eq!(get(&url, &[("authorization", &auth)]).await.status, 200);
    let out = keygate(&["keys", "--config", &cfg, "revoke", &id]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("Proxies: applied by 1 of 1 running proxies"),
        "{said}"
    );
    // No waiting: the proxy acknowledged the change before the CLI returned.
    assert_eq!(
        get(&url, &[("authorization", &auth)]).await.code(),
        "expired_key"
    );

    // A proxy that stops is reported, not silently counted.
    drop(served);
    let out = keygate(&[
        "keys", "--config", &cfg, "create", "--owner", "acct_7", "--json",
    ]);
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &created["propagated"];
    assert_eq!(
        (p["replicas"].as_u64(), p["acknowledged"].as_u64()),
        (Some(1), Some(0)),
        "{p}"
    );
    assert!(p["late"][0].as_str().unwrap().contains(':'), "{p}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), "");
    let out = keygate(&[
        "keys", "--config", &cfg, "create", "--owner", "acct_7", "--json",
    ]);
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let auth = bearer(created["key"].as_str().unwrap());
    let mut served = Served::start(&cfg);
    let addr = served.addr;

    let slow = tokio::spawn({
        let auth = auth.clone();
        async move {
            get(
                &format!("http://{addr}/slow/1500"),
                &[("authorization", &auth)],
            )
            .await
            .status
        }
    });
    assert_eventually!(
        up.hits() == 1,
        Duration::from_secs(5),
        "slow request never reached the upstream"
    );
    served.signal("-TERM");
    assert_eq!(
        slow.await.unwrap(),
        200,
        "in-flight request was cut by shutdown"
    );
    let status = tokio::task::spawn_blocking(move || {
        let s = served.child.wait();
        (s, served)
    })
    .await
    .unwrap()
    .0
    .unwrap();
    assert_eq!(status.code(), Some(0));
    // The listener is gone.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    // Usage was flushed on the way out.
    let list = stdout(&keygate(&["keys", "--config", &cfg, "list", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert!(
        v[0]["last_used_at"].is_string(),
        "last_used_at not flushed on shutdown: {list}"
    );
}

/// A keep-alive connection idle between requests is closed as soon as keygate begins to shut
/// down, not at its idle timeout nor at the drain's end.
#[tokio::test]
async fn sigterm_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "drain_timeout = \"5s\"\n",
        "drain_timeout = \"5s\"\nidle_timeout = \"300s\"\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let out = keygate(&[
        "keys", "--config", &cfg, "create", "--owner", "acct_7", "--json",
    ]);
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let mut served = Served::start(&cfg);
    let mut s = tokio::net::TcpStream::connect(served.addr).await.unwrap();
    let req = format!("GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The answer's body, then nothing: the connection waits for its next request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    served.signal("-TERM");
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the idle connection was still open {:?} after SIGTERM",
        started.elapsed()
    );
    let status = tokio::task::spawn_blocking(move || served.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn keys_commands_work_against_redis() {
    let redis = common::redis::Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redis.toml");
    std::fs::write(
        &path,
        format!("[upstream]\nurl = \"http://127.0.0.1:9\"\n[store]\nbackend = \"redis\"\nurl = \"{}\"\nkey_prefix = \"cli\"\n", redis.url()),
    )
    .unwrap();
    let cfg = path.to_str().unwrap();
    let out = keygate(&[
        "keys", "--config", cfg, "create", "--owner", "acct_r", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["record"]["id"].as_str().unwrap().to_owned();
    assert!(
        redis
            .cmd(&format!("EXISTS {}", common::redis::names::id("cli", &id)))
            .starts_with(":1"),
        "record not in Redis"
    );
    let list = stdout(&keygate(&["keys", "--config", cfg, "list"]));
    assert!(list.contains(&id));
    assert!(
        keygate(&["keys", "--config", cfg, "revoke", &id])
            .status
            .success()
    );
    let shown = stdout(&keygate(&["keys", "--config", cfg, "show", &id, "--json"]));
    assert!(shown.contains("\"revoked\""), "{shown}");
}

#[tokio::test]
async fn sighup_reloads_ip_rules_and_keeps_the_old_config_when_the_new_one_is_bad() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), "");
    let served = Served::start(&cfg);
    let out = keygate(&[
        "keys", "--config", &cfg, "create", "--owner", "acct_7", "--json",
    ]);
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let auth = bearer(created["key"].as_str().unwrap());
    let url = format!("http://{}/v1/charges", served.addr);
    assert_eventually!(
        get(&url, &[("authorization", &auth)]).await.status == 200,
        Duration::from_secs(3),
        "the new key never worked"
    );

    // Deny loopback and send SIGHUP: applied at once, without a restart.
    write_config(dir.path(), &up.url(), "[ip]\ndeny = [\"127.0.0.0/8\"]\n");
    served.signal("-HUP");
    assert_eventually!(
        get(&url, &[("authorization", &auth)]).await.code() == "ip_not_allowed",
        Duration::from_millis(1500),
        "SIGHUP did not apply the new IP rules"
    );

    // An invalid file is refused; the running rules stay.
    write_config(dir.path(), &up.url(), "[ip]\ndeny = [\"not-a-network\"]\n");
    served.signal("-HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        get(&url, &[("authorization", &auth)]).await.code(),
        "ip_not_allowed"
    );

    // Fixed again; the file watch alone picks it up (no signal).
    write_config(dir.path(), &up.url(), "");
    assert_eventually!(
        get(&url, &[("authorization", &auth)]).await.status == 200,
        Duration::from_secs(5),
        "the file watch did not reload"
    );
}

#[test]
fn relative_paths_follow_the_config_file_and_reading_never_creates_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let path = conf.join("sidecar.toml");
    std::fs::write(
        &path,
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[store]\npath = \"data/keys.json\"\n\
         [rate_limits.tiers]\npro = { limit = 10, window = 60 }\n",
    )
    .unwrap();
    std::fs::create_dir(conf.join("data")).unwrap();
    let cfg = path.to_str().unwrap();
    // Run from elsewhere: the store is the config folder's data/keys.json, never ./keys.json.
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(args)
            .current_dir(dir.path())
            .env_remove("KEYGATE_PEPPER")
            .output()
            .unwrap()
    };
    let out = run(&["keys", "--config", cfg, "list"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no key store at") && err.contains("conf/data/keys.json"),
        "{err}"
    );
    let created: Vec<_> = walk(dir.path());
    assert_eq!(
        created.len(),
        3,
        "a reading command created files: {created:?}"
    );

    let out = run(&[
        "keys",
        "--config",
        cfg,
        "create",
        "--owner",
        "acct_1",
        "--tier",
        "nonexistent",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no tier \"nonexistent\"") && err.contains("pro"),
        "{err}"
    );
    let out = run(&[
        "keys", "--config", cfg, "create", "--owner", "acct_1", "--tier", "pro",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(conf.join("data/keys.json").exists());
    assert!(!dir.path().join("keys.json").exists());
    let out = run(&["keys", "--config", cfg, "list", "--state", "bogus"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown state");
    let out = run(&["keys", "--config", cfg, "list", "--state", "active"]);
    assert!(stdout(&out).contains("acct_1"), "{}", stdout(&out));
}

/// Every file and folder under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[tokio::test]
async fn json_logs_are_flat_and_a_bad_rust_log_is_reported() {
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &up.url(), "");
    let out = keygate(&[
        "keys", "--config", &cfg, "create", "--owner", "acct_9", "--json",
    ]);
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let auth = bearer(created["key"].as_str().unwrap());
    let served = Served::start_env(&cfg, &[("RUST_LOG".into(), "keygate=[bogus".into())]);
    let r = send(
        http::Method::GET,
        &format!("http://{}/x", served.addr),
        &[("authorization", &auth), ("user-agent", "probe/1.0")],
        empty(),
    )
    .await;
    assert_eq!(r.status, 200);
    let access = || {
        served.logs.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == "access").then_some(v)
        })
    };
    assert_eventually!(access().is_some(), Duration::from_secs(5), "no access line");
    let v = access().unwrap();
    assert!(v.get("fields").is_none(), "not flat: {v}");
    assert_eq!(v["owner"], "acct_9");
    assert_eq!(v["user_agent"], "probe/1.0");
    assert_eq!(v["http_version"], "HTTP/1.1");
    assert_eq!(v["status"], 200);
    let logs = served.logs.lock().unwrap().clone();
    assert!(
        logs.iter().all(|l| !l.contains('\u{1b}')),
        "escape codes in piped logs"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("RUST_LOG is not a valid filter")),
        "a bad RUST_LOG went unreported: {logs:?}"
    );
    assert!(
        logs.iter()
            .all(|l| !l.contains(created["key"].as_str().unwrap()))
    );
}

#[test]
fn init_writes_a_loopback_config_that_serves_and_revoking_twice_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.toml");
    let p = path.to_str().unwrap();
    let out = keygate(&["init", "--config", p, "--upstream", "http://127.0.0.1:3999"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("keygate serve --config"));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("address = \"127.0.0.1:8080\"") && text.contains("http://127.0.0.1:3999")
    );
    assert!(text.lines().count() < 40, "init wrote the whole example");
    assert!(keygate(&["check-config", "--config", p]).status.success());
    // Never overwrites by accident.
    let again = keygate(&["init", "--config", p]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let out = keygate(&[
        "keys", "--config", p, "create", "--owner", "acct_2", "--json",
    ]);
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["record"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = stdout(&keygate(&["keys", "--config", p, "revoke", &id]));
    assert!(first.starts_with("Revoked "), "{first}");
    let second = stdout(&keygate(&["keys", "--config", p, "revoke", &id]));
    assert!(second.contains("was already revoked"), "{second}");
    // The store sits next to the config, not in the working directory.
    assert!(dir.path().join("keys.json").exists());
}

#[test]
fn a_bind_error_names_the_listener_and_its_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "http://127.0.0.1:9", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replacen(
        "address = \"127.0.0.1:0\"",
        &format!("address = \"localhost:{port}\""),
        1,
    );
    std::fs::write(&cfg, text).unwrap();
    let out = keygate(&["serve", "--config", &cfg]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port} for the proxy (listen.address)"
        )),
        "{err}"
    );
}
