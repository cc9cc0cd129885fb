//! The admin API and the audit trail, through real listeners, on both store backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::redis::Redis;
use common::{ADMIN_TOKEN, ADMIN_TOKEN_2, Keygate, Upstream, bearer, get, send};
use http::Method;
use serde_json::json;

async fn proxied(kg: &Keygate, key: &str) -> common::Resp {
    get(&kg.url("/v1/charges"), &[("authorization", &bearer(key))]).await
}

/// Audit events of `key_id` as (action, actor), in stored order, key usage left out.
async fn trail(kg: &Keygate, key_id: &str) -> Vec<(String, String)> {
    // Key changes are queued for the audit writer: read the trail once they reached it.
    kg.audit().drain().await;
    let r = kg
        .admin(Method::GET, &format!("/v1/audit?key_id={key_id}"), None)
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] != "key.used" && e["action"] != "auth.failed")
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

/// create → use → update → rotate with grace (both keys work) → grace ends (old key
/// `expired_key`) → revoke → the audit trail shows every step in order with its actor.
async fn lifecycle(kg: &Keygate) {
    // Create: the key is in this response only.
    let r = kg
        .admin(
            Method::POST,
            "/v1/keys",
            Some(json!({"owner": "acct_42", "name": "billing", "scopes": ["all"]})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["cache-control"], "no-store");
    let created = r.json();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["record"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["record"]["owner"], "acct_42");
    assert_eq!(proxied(kg, &key).await.status, 200);

    // Reads never carry the key or its hashes.
    let shown = kg.admin(Method::GET, &format!("/v1/keys/{id}"), None).await;
    assert_eq!(shown.status, 200);
    let text = String::from_utf8_lossy(&shown.body);
    assert!(!text.contains(&key) && !text.contains("phc") && !text.contains("lookup_hash"));

    // An update takes effect on the running proxy at once.
    let r = kg
        .admin(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"ip_allowlist": ["192.0.2.1/32"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["ip_allowlist"], json!(["192.0.2.1/32"]));
    assert_eventually!(
        proxied(kg, &key).await.code() == "ip_not_allowed",
        Duration::from_secs(2),
        "the allowlist change was not applied"
    );
    let r = kg
        .admin(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"ip_allowlist": []})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eventually!(
        proxied(kg, &key).await.status == 200,
        Duration::from_secs(2),
        "the allowlist was not lifted"
    );

    // Rotate with a grace period, as the other token: both keys work meanwhile.
    let r = send(
        Method::POST,
        &kg.admin_url(&format!("/v1/keys/{id}/rotate")),
        &[("authorization", &bearer(ADMIN_TOKEN_2))],
        common::full(json!({"grace_period": "3s"}).to_string()),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let rotation = r.json();
    let new_key = rotation["key"].as_str().unwrap().to_owned();
    let new_id = rotation["record"]["id"].as_str().unwrap().to_owned();
    assert_eq!(rotation["previous"]["rotated_to"], new_id.as_str());
    assert_eq!(proxied(kg, &key).await.status, 200, "old key in grace");
    assert_eq!(proxied(kg, &new_key).await.status, 200, "new key");

    // Usage of both, side by side, while the old key drains.
    #[allow(unused_assignments)] // read by the failure message
    let mut usage = serde_json::Value::Null;
    assert_eventually!(
        {
            usage = kg
                .admin(Method::GET, &format!("/v1/keys/{id}/usage"), None)
                .await
                .json();
            usage["rotation"]["new"]["usage"]["total"]["2xx"].as_u64() >= Some(1)
                && usage["rotation"]["old"]["usage"]["total"]["2xx"].as_u64() >= Some(3)
                && usage["key"]["total"]["4xx"].as_u64() >= Some(1)
        },
        Duration::from_secs(3),
        "usage during the grace period: {usage}"
    );
    assert_eq!(usage["rotation"]["old"]["key_id"], id.as_str());

    // The grace period ends by itself.
    assert_eventually!(
        proxied(kg, &key).await.code() == "expired_key",
        Duration::from_secs(8),
        "the old key still works after its grace period"
    );
    assert_eq!(proxied(kg, &new_key).await.status, 200);

    // Revoke: permanent, at once.
    let r = kg
        .admin(Method::POST, &format!("/v1/keys/{new_id}/revoke"), None)
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["state"], "revoked");
    assert_eventually!(
        proxied(kg, &new_key).await.code() == "expired_key",
        Duration::from_secs(2),
        "the revoked key still works"
    );

    // Every step, in order, with the right actor.
    assert_eq!(
        trail(kg, &id).await,
        [
            ("key.created".to_owned(), "ops".to_owned()),
            ("key.updated".into(), "ops".into()),
            ("key.updated".into(), "ops".into()),
            ("key.rotated".into(), "deploy".into()),
        ]
    );
    assert_eq!(
        trail(kg, &new_id).await,
        [
            ("key.created".to_owned(), "deploy".to_owned()),
            ("key.revoked".into(), "ops".into())
        ]
    );

    // Usage and failures reached the trail too, aggregated.
    let used = kg
        .admin(
            Method::GET,
            &format!("/v1/audit?key_id={id}&action=key.used"),
            None,
        )
        .await
        .json();
    let events = used["events"].as_array().unwrap();
    assert!(!events.is_empty());
    assert_eq!(events[0]["route"], "default");
    assert_eq!(events[0]["client_ips"], json!(["127.0.0.1"]));
    assert_eventually!(
        {
            let failed = kg
                .admin(Method::GET, "/v1/audit?action=auth.failed", None)
                .await
                .json();
            failed["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["key_id"] == id.as_str() && e["code"] == "expired_key")
        },
        Duration::from_secs(3),
        "the expired key's failures are not in the trail"
    );

    // The stored trail verifies.
    kg.audit().drain().await;
    let lines = kg.audit().sink().read_lines(None, None).await.unwrap();
    let events: Vec<keygate::audit::Event> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let v = keygate::audit::verify(&events);
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert!(v.events >= 6);
}

#[tokio::test]
async fn lifecycle_through_the_admin_api_on_the_file_store() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    lifecycle(&kg).await;
}

#[tokio::test]
async fn lifecycle_through_the_admin_api_on_redis() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let kg = Keygate::start_redis(&up.url(), &redis.url(), "").await;
    lifecycle(&kg).await;
    // The trail is a capped Redis stream.
    let len: u64 = common::redis::names::audit_streams("keygate")
        .iter()
        .map(|s| {
            redis
                .cmd(&format!("XLEN {s}"))
                .trim()
                .trim_start_matches(':')
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert!(len >= 6, "{len}");
}

#[tokio::test]
async fn wrong_or_missing_admin_token_is_401() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    for auth in [
        None,
        Some("Bearer not-the-admin-token-at-all".to_owned()),
        Some(format!("Basic {ADMIN_TOKEN}")),
        Some(bearer(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1])),
        Some(bearer(&format!("{ADMIN_TOKEN}x"))),
    ] {
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        let r = get(&kg.admin_url("/v1/keys"), &headers).await;
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.code(), "unauthorized");
        assert!(!String::from_utf8_lossy(&r.body).contains(ADMIN_TOKEN));
    }
    assert_eq!(kg.admin(Method::GET, "/v1/keys", None).await.status, 200);
}

#[tokio::test]
async fn the_admin_api_is_not_on_the_proxied_port() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    // The admin token is no API key: the proxy rejects it and never answers admin routes.
    let r = get(
        &kg.url("/v1/keys"),
        &[("authorization", &bearer(ADMIN_TOKEN))],
    )
    .await;
    assert_eq!(r.code(), "invalid_key");
    // With a valid API key, /v1/keys is the upstream's path, forwarded as-is.
    let r = get(&kg.url("/v1/keys"), &[("authorization", &bearer(&key))]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/v1/keys");
    assert!(kg.admin_addr.ip().is_loopback());
    // The default admin address is loopback.
    let dir = tempfile::tempdir().unwrap();
    let cfg = keygate::config::Config::from_toml(
        &format!(
            "[upstream]\nurl = \"http://127.0.0.1:1\"\n[store]\npath = {:?}\n",
            dir.path().join("keys.json").display().to_string()
        ),
        Vec::new(),
        |_| None,
    )
    .unwrap();
    assert_eq!(
        cfg.admin.address,
        keygate::config::AdminAddress::Tcp("127.0.0.1:9091".parse().unwrap())
    );
    assert!(
        cfg.admin.tokens.is_empty(),
        "no tokens: the admin API is off"
    );
    assert!(!keygate::server::Server::new(&cfg).unwrap().admin_enabled());
}

#[tokio::test]
async fn admin_operations_are_rate_limited_per_token() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "[admin]\ncreate_per_minute = 3\n").await;
    for i in 0..3 {
        let r = kg
            .admin(Method::POST, "/v1/keys", Some(json!({"owner": "acct_1"})))
            .await;
        assert_eq!(r.status, 201, "create {i}");
        assert_eq!(r.headers["x-ratelimit-limit"], "3");
    }
    let r = kg
        .admin(Method::POST, "/v1/keys", Some(json!({"owner": "acct_1"})))
        .await;
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.headers["x-ratelimit-remaining"], "0");
    // Reads have their own budget; the other token its own.
    assert_eq!(kg.admin(Method::GET, "/v1/keys", None).await.status, 200);
    let r = send(
        Method::POST,
        &kg.admin_url("/v1/keys"),
        &[("authorization", &bearer(ADMIN_TOKEN_2))],
        common::full(json!({"owner": "acct_1"}).to_string()),
    )
    .await;
    assert_eq!(r.status, 201);
}

#[tokio::test]
async fn bad_admin_requests_get_clear_errors() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let cases: Vec<(Method, &str, Option<serde_json::Value>, u16, &str)> = vec![
        (
            Method::POST,
            "/v1/keys",
            Some(json!({"owner": "a b"})),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/keys",
            Some(json!({"owner": "a", "role": "x"})),
            400,
            "invalid_request",
        ),
        (Method::POST, "/v1/keys", None, 400, "invalid_request"),
        (
            Method::PATCH,
            "/v1/keys/key_nope",
            Some(json!({"name": "x"})),
            404,
            "not_found",
        ),
        (
            Method::PATCH,
            "/v1/keys/key_nope",
            Some(json!({})),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/keys/key_nope/rotate",
            None,
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/keys?limit=0",
            None,
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/keys?cursor=key_nope",
            None,
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/audit?action=key.exploded",
            None,
            400,
            "invalid_request",
        ),
        (
            Method::DELETE,
            "/v1/keys/key_1",
            None,
            405,
            "method_not_allowed",
        ),
        (Method::GET, "/v1/nothing", None, 404, "not_found"),
        (
            Method::POST,
            "/v1/keys",
            Some(json!({"owner": "a", "expires_in": "1000000y"})),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/keys",
            Some(json!({"owner": "a", "expires_in": u64::MAX})),
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/audit?since=99999999999999999",
            None,
            200,
            "",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let r = kg.admin(method.clone(), path, body).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (status, code),
            "{method} {path}"
        );
    }
    let big = "x".repeat(70 * 1024);
    let r = kg
        .admin(Method::POST, "/v1/keys", Some(json!({"owner": big})))
        .await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn a_rotated_keys_grace_can_be_shortened_not_extended() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (_, id) = kg.live_key().await;
    let r = kg
        .admin(
            Method::POST,
            &format!("/v1/keys/{id}/rotate"),
            Some(json!({"grace_period": 3600})),
        )
        .await;
    assert_eq!(r.status, 200);
    let until = r.json()["previous"]["expires_at"]
        .as_str()
        .unwrap()
        .to_owned();
    for later in [json!(null), json!("2099-01-01T00:00:00Z")] {
        let r = kg
            .admin(
                Method::PATCH,
                &format!("/v1/keys/{id}"),
                Some(json!({"expires_at": later})),
            )
            .await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (409, "conflict"),
            "{later}"
        );
    }
    assert_eq!(
        kg.tool
            .get(&id)
            .await
            .unwrap()
            .expires_at
            .unwrap()
            .to_string(),
        until
    );
    let sooner = keygate::time::Timestamp::now().saturating_add(Duration::from_secs(60));
    let r = kg
        .admin(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"expires_at": sooner})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["expires_at"], json!(sooner));
}

#[tokio::test]
async fn the_admin_api_serves_on_a_unix_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("admin.sock");
    let kg = Keygate::start(&up.url(), "").await;
    let listener =
        keygate::admin::AdminListener::bind(&keygate::config::AdminAddress::Unix(sock.clone()))
            .await
            .unwrap();
    // A second proxy on the same store, serving its admin API on the socket.
    let proxy = keygate::server::Server::new(&{
        let mut c = kg.config.clone();
        c.admin.tokens = vec![keygate::config::AdminToken {
            name: "ops".into(),
            token: keygate::config::Secret::new(ADMIN_TOKEN.as_bytes().to_vec()),
        }];
        c
    })
    .unwrap()
    .with_admin_listener(listener);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(proxy.serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        async {
            let _ = stop_rx.await;
        },
    ));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut s = tokio::net::UnixStream::connect(&sock).await.unwrap();
    s.write_all(
        format!("GET /v1/keys HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {ADMIN_TOKEN}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"data\""));
    let _ = stop_tx.send(());
    task.await.unwrap().unwrap();
    assert!(!sock.exists(), "the socket is removed at shutdown");
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let mut ids = Vec::new();
    for owner in ["acct_a", "acct_b", "acct_a", "acct_a"] {
        let r = kg
            .admin(Method::POST, "/v1/keys", Some(json!({"owner": owner})))
            .await;
        ids.push(r.json()["record"]["id"].as_str().unwrap().to_owned());
    }
    kg.admin(Method::POST, &format!("/v1/keys/{}/revoke", ids[3]), None)
        .await;
    let page = |q: &'static str| {
        let kg = &kg;
        async move {
            kg.admin(Method::GET, &format!("/v1/keys?{q}"), None)
                .await
                .json()
        }
    };
    let p1 = page("owner=acct_a&limit=2").await;
    let got: Vec<&str> = p1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[0].as_str(), ids[2].as_str()]);
    let cursor = p1["next_cursor"].as_str().unwrap().to_owned();
    let p2 = kg
        .admin(
            Method::GET,
            &format!("/v1/keys?owner=acct_a&limit=2&cursor={cursor}"),
            None,
        )
        .await
        .json();
    assert_eq!(p2["data"][0]["id"], ids[3].as_str());
    assert!(p2["next_cursor"].is_null());
    let revoked = page("state=revoked").await;
    assert_eq!(revoked["data"].as_array().unwrap().len(), 1);
    assert_eq!(page("env=test").await["data"], json!([]));
}

/// The OpenAPI document and the router agree: every documented operation exists and every
/// route is documented; each answers something other than 404/405 on the real listener.
#[tokio::test]
async fn openapi_matches_the_routes() {
    let doc: serde_json::Value = serde_json::from_str(keygate::admin::OPENAPI).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = keygate::admin::ROUTES
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routed);

    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "[self_service]\npath = \"/me/keys\"\n").await;
    let (_, id) = kg.live_key().await;
    for (method, path) in &routed {
        let path = path.replace("{id}", &id);
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let r = kg
            .admin(method.clone(), &path, Some(json!({"name": "n"})))
            .await;
        assert!(
            ![404, 405].contains(&r.status.as_u16()),
            "{method} {path}: {}",
            r.status
        );
    }
    let served = kg.admin(Method::GET, "/v1/openapi.json", None).await.json();
    assert_eq!(served, doc);
    // The customer-facing document, as configured.
    let ss = kg
        .admin(Method::GET, "/v1/self-service/openapi.json", None)
        .await
        .json();
    assert!(
        ss["paths"]["/me/keys/{id}/rotate"]["post"].is_object(),
        "{ss}"
    );
}

#[tokio::test]
async fn cli_talks_to_the_admin_api() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let url = kg.admin_url("");
    let run = move |args: Vec<String>, token: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_keygate"))
                .arg("keys")
                .arg("--admin-url")
                .arg(url)
                .args(args)
                .env("KEYGATE_ADMIN_TOKEN", token)
                .output()
                .unwrap()
        })
    };
    let out = run(
        vec![
            "create".into(),
            "--owner".into(),
            "acct_cli".into(),
            "--json".into(),
        ],
        ADMIN_TOKEN,
    )
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert_eq!(proxied(&kg, &key).await.status, 200);

    let out = run(
        vec!["list".into(), "--owner".into(), "acct_cli".into()],
        ADMIN_TOKEN,
    )
    .await
    .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(created["record"]["id"].as_str().unwrap()),
        "{table}"
    );
    assert!(!table.contains(&key));

    let out = run(vec!["list".into()], "wrong-token-wrong-token")
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // The CLI's change is audited with the admin token's name.
    let id = created["record"]["id"].as_str().unwrap();
    assert_eq!(
        trail(&kg, id).await,
        [("key.created".to_owned(), "ops".to_owned())]
    );
}

#[tokio::test]
async fn imported_legacy_keys_authenticate_without_plaintext_in_the_store() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "[keys]\naccept_legacy = true\n").await;
    let legacy = "legacy-4c1f0e9a7d2b8e6f3a5c";
    let own = kg.tool.list(None).await.unwrap().len();
    assert_eq!(own, 0);
    let jsonl = format!(
        "{{\"key\": \"{legacy}\", \"owner\": \"acct_old\", \"scopes\": [\"all\"], \"env\": \"live\"}}\n\
         {{\"key\": \"short\", \"owner\": \"acct_old\"}}\n"
    );
    let rows = keygate::manage::read_import(&jsonl, false).unwrap();
    let outcomes = kg.tool.import(rows, "test").await;
    assert!(matches!(
        outcomes[0],
        keygate::manage::ImportOutcome::Imported { .. }
    ));
    assert!(matches!(
        outcomes[1],
        keygate::manage::ImportOutcome::Failed { .. }
    ));
    // Importing again skips it.
    let rows = keygate::manage::read_import(&jsonl, false).unwrap();
    assert_eq!(
        kg.tool.import(rows, "test").await[0],
        keygate::manage::ImportOutcome::AlreadyPresent { line: 1 }
    );

    let r = proxied(&kg, legacy).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["headers"]["x-auth-owner"], "acct_old");
    let store_text = std::fs::read_to_string(&kg.store_path).unwrap();
    assert!(!store_text.contains(legacy));
    assert!(!store_text.contains(&legacy[6..]));

    // CSV too, with scopes in one cell.
    let csv = "key,owner,scopes,env\nlegacy-csv-000000000000000042,acct_csv,payments:read;refunds:write,test\n";
    let rows = keygate::manage::read_import(csv, true).unwrap();
    assert_eq!(rows[0].owner, "acct_csv");
    kg.tool.import(rows, "test").await;
    let imported = kg.tool.list(Some("acct_csv")).await.unwrap();
    assert_eq!(imported[0].scopes, ["payments:read", "refunds:write"]);
    assert_eq!(imported[0].environment, keygate::key::Environment::Test);
}

#[tokio::test]
async fn legacy_keys_are_refused_unless_enabled() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let rows = keygate::manage::read_import(
        "{\"key\": \"legacy-4c1f0e9a7d2b8e6f3a5c\", \"owner\": \"acct_old\"}",
        false,
    )
    .unwrap();
    kg.tool.import(rows, "test").await;
    let r = proxied(&kg, "legacy-4c1f0e9a7d2b8e6f3a5c").await;
    assert_eq!(r.code(), "invalid_key");
    assert_eq!(
        kg.metrics
            .cache_misses
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test]
async fn audit_verify_detects_tampering() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    for owner in ["acct_1", "acct_2", "acct_3"] {
        kg.admin(Method::POST, "/v1/keys", Some(json!({"owner": owner})))
            .await;
    }
    kg.audit().drain().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sidecar.toml");
    std::fs::write(
        &cfg,
        format!(
            "[upstream]\nurl = \"{}\"\n[store]\npath = {:?}\nread_only = true\n",
            up.url(),
            kg.store_path.display().to_string()
        ),
    )
    .unwrap();
    let verify = || {
        Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["audit", "verify", "-c"])
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = verify();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 events"));

    let mut audit_path = kg.store_path.clone().into_os_string();
    audit_path.push(".audit.jsonl");
    let original = std::fs::read_to_string(&audit_path).unwrap();
    let tampered = [
        original.replacen("acct_2", "acct_9", 1),
        original
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| format!("{l}\n"))
            .collect(),
        {
            let mut l: Vec<&str> = original.lines().collect();
            l.swap(0, 1);
            l.join("\n") + "\n"
        },
    ];
    for t in tampered {
        std::fs::write(&audit_path, t).unwrap();
        let out = verify();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("TAMPERED"));
    }
}
