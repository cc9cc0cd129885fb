//! The authenticating proxy end to end: real upstream, real keygate, real HTTP over sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use keygate::key::{Environment, KeyType};
use keygate::store::{KeyStore, NewRecord};
use keygate::time::Timestamp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn valid_key_reaches_upstream_with_identity_and_without_credential() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, id) = kg
        .mint(
            Environment::Live,
            KeyType::Secret,
            &["payments:read", "payments:write"],
        )
        .await;

    for carrier in [("authorization", bearer(&key)), ("x-api-key", key.clone())] {
        let r = get(
            &kg.url("/v1/payments?limit=3&x=%2F"),
            &[(carrier.0, &carrier.1)],
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let echo = r.json();
        assert_eq!(echo["method"], "GET");
        assert_eq!(echo["path"], "/v1/payments");
        assert_eq!(echo["query"], "limit=3&x=%2F");
        assert_eq!(
            r.upstream_header("x-auth-key-id").as_deref(),
            Some(id.as_str())
        );
        assert_eq!(r.upstream_header("x-auth-owner").as_deref(), Some("acct_1"));
        assert_eq!(r.upstream_header("x-auth-env").as_deref(), Some("live"));
        assert_eq!(
            r.upstream_header("x-auth-key-type").as_deref(),
            Some("secret")
        );
        assert_eq!(
            r.upstream_header("x-auth-scopes").as_deref(),
            Some("payments:read,payments:write")
        );
        assert_eq!(r.upstream_header("authorization"), None);
        assert_eq!(r.upstream_header("x-api-key"), None);
        assert_eq!(
            r.upstream_header("x-forwarded-for").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            r.upstream_header("x-forwarded-proto").as_deref(),
            Some("http")
        );
        assert_eq!(
            r.upstream_header("x-forwarded-host"),
            Some(kg.addr.to_string())
        );
        // The request id the upstream saw is the one the client gets back.
        let rid = r.headers["x-request-id"].to_str().unwrap();
        assert_eq!(r.upstream_header("x-request-id").as_deref(), Some(rid));
        assert!(!String::from_utf8_lossy(&r.body).contains(&key));
    }
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn spoofed_identity_and_forwarding_headers_never_reach_upstream() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, id) = kg.live_key().await;
    let auth = bearer(&key);
    let r = get(
        &kg.url("/x"),
        &[
            ("authorization", &auth),
            ("x-auth-key-id", "key_forged"),
            ("X-AUTH-OWNER", "acct_admin"),
            ("x_auth_owner", "acct_admin"),
            ("x-auth-scopes", "all"),
            ("x-auth-anything", "1"),
            ("x-forwarded-for", "10.9.9.9"),
            ("forwarded", "for=10.9.9.9"),
            ("x-real-ip", "10.9.9.9"),
            ("x_forwarded_for", "10.9.9.9"),
            ("x_real_ip", "10.9.9.9"),
            // Naming our injected headers in Connection must not make keygate drop them.
            (
                "connection",
                "x-auth-key-id, x-forwarded-for, x-request-id, keep-alive",
            ),
            ("x-request-id", "req-from-client"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    let headers = echo["headers"].as_object().unwrap();
    let auth_headers: Vec<_> = headers
        .keys()
        .filter(|k| k.starts_with("x-auth") || k.starts_with("x_auth"))
        .collect();
    assert_eq!(auth_headers.len(), 5, "{auth_headers:?}");
    assert_eq!(
        r.upstream_header("x-auth-key-id").as_deref(),
        Some(id.as_str())
    );
    assert_eq!(r.upstream_header("x-auth-owner").as_deref(), Some("acct_1"));
    assert_eq!(r.upstream_header("x-auth-scopes").as_deref(), Some("all"));
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(r.upstream_header("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(r.upstream_header("forwarded"), None);
    assert_eq!(r.upstream_header("x_forwarded_for"), None);
    assert_eq!(r.upstream_header("x_real_ip"), None);
    assert_eq!(r.upstream_header("connection"), None);
    // A sane client request id is kept end to end.
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some("req-from-client")
    );
    assert_eq!(r.headers["x-request-id"], "req-from-client");
}

#[tokio::test]
async fn every_rejection_has_its_code() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (live, live_id) = kg.live_key().await;
    let (test_key, _) = kg.mint(Environment::Test, KeyType::Secret, &[]).await;
    let format = keygate::key::KeyFormat::new(&Default::default()).unwrap();
    let unknown = format
        .generate(KeyType::Secret, Environment::Live)
        .unwrap()
        .key;
    let mut typo = live.clone().into_bytes();
    let last = typo.len() - 10;
    typo[last] = if typo[last] == b'A' { b'B' } else { b'A' };
    let typo = String::from_utf8(typo).unwrap();

    // An expired key, written straight into the store.
    let hasher = keygate::key::KeyHasher::new(None);
    let (expired, mut rec) = NewRecord::new("acct_1", Environment::Live, KeyType::Secret)
        .mint(&format, &hasher, Timestamp::from_unix(1_000))
        .unwrap();
    rec.expires_at = Some(Timestamp::from_unix(2_000));
    kg.store.insert(rec).await.unwrap();

    let b = |k: &str| bearer(k);
    let long = "a".repeat(300);
    type Headers<'a> = Vec<(&'a str, String)>;
    let cases: Vec<(Headers, u16, &str)> = vec![
        (vec![], 401, "unauthorized"),
        (
            vec![("authorization", "Basic dXNlcjpwYXNz".into())],
            401,
            "invalid_key",
        ),
        (
            vec![("authorization", b("sk_live_short"))],
            401,
            "invalid_key",
        ),
        (vec![("authorization", b(&typo))], 401, "invalid_key"),
        (vec![("authorization", b(&unknown))], 401, "invalid_key"),
        (vec![("x-api-key", long)], 401, "invalid_key"),
        (
            vec![("authorization", b(&live)), ("x-api-key", unknown.clone())],
            401,
            "invalid_key",
        ),
        (
            vec![("authorization", b(&test_key))],
            401,
            "wrong_environment",
        ),
        (vec![("authorization", b(&expired.key))], 401, "expired_key"),
    ];
    for (headers, status, code) in cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = get(&kg.url("/v1/x"), &h).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (status, code),
            "{headers:?}"
        );
        let rid = r.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(r.json()["error"]["request_id"], rid.as_str());
        assert!(r.headers.contains_key("www-authenticate"));
        assert!(
            !String::from_utf8_lossy(&r.body).contains(&live[8..]),
            "key material in an error body"
        );
    }
    assert_eq!(up.hits(), 0, "no rejected request may reach the upstream");

    // Revoked keys are expired_key too.
    kg.tool.revoke(&live_id, "test").await.unwrap();
    assert_eventually!(
        get(&kg.url("/"), &[("authorization", &b(&live))])
            .await
            .code()
            == "expired_key",
        Duration::from_secs(5),
        "revoked key still accepted"
    );
}

#[tokio::test]
async fn body_limit_answers_413_both_declared_and_streamed() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "[listen]\nmax_request_body = 1024\n").await;
    let (key, _) = kg.live_key().await;
    let auth = bearer(&key);
    let r = send(
        Method::POST,
        &kg.url("/upload"),
        &[("authorization", &auth)],
        full(vec![b'x'; 2048]),
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (413, "payload_too_large")
    );
    assert_eq!(up.hits(), 0);
    // Chunked, no declared length: cut while streaming.
    let r = send(
        Method::POST,
        &kg.url("/upload"),
        &[("authorization", &auth)],
        pattern_body(64 * 1024),
    )
    .await;
    assert_eq!(
        r.status.as_u16(),
        413,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // Within the limit passes.
    let r = send(
        Method::POST,
        &kg.url("/upload"),
        &[("authorization", &auth)],
        full(vec![b'x'; 1024]),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_bytes"], 1024);
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    const SIZE: u64 = 64 << 20;
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "[listen]\nmax_request_body = \"1GiB\"\n").await;
    let (key, _) = kg.live_key().await;
    let auth = bearer(&key);
    let r = send(
        Method::PUT,
        &kg.url("/upload"),
        &[("authorization", &auth)],
        pattern_body(SIZE),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_bytes"], SIZE);
    assert_eq!(r.json()["body_sha256"], pattern_sha256(SIZE));

    let r = get(
        &kg.url(&format!("/download/{SIZE}")),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len() as u64, SIZE);
    use sha2::{Digest, Sha256};
    let got: String = Sha256::digest(&r.body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(got, pattern_sha256(SIZE));
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    // A port nothing listens on: bind, note, drop.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let kg = Keygate::start(&format!("http://{dead}"), "").await;
    let (key, _) = kg.live_key().await;
    let r = get(&kg.url("/"), &[("authorization", &bearer(&key))]).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (502, "upstream_unavailable")
    );
    assert_eq!(
        kg.metrics
            .upstream_errors
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );

    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await; // response_timeout = 2s in the harness
    let (key, _) = kg.live_key().await;
    let r = get(&kg.url("/slow/10000"), &[("authorization", &bearer(&key))]).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (504, "upstream_timeout")
    );
}

/// The response deadline on a reused upstream connection: its timer was set for the previous
/// request (an earlier deadline) and fires first; the slow request is still given its full
/// `response_timeout`, then answered 504, and the next request is served.
#[tokio::test]
async fn a_slow_answer_on_a_reused_upstream_connection_is_504_at_its_own_deadline() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await; // response_timeout = 2s in the harness
    let (key, _) = kg.live_key().await;
    let auth = bearer(&key);
    let headers = [("authorization", auth.as_str())];
    // The first request opens the upstream connection; the second, on it, arms its timer.
    for _ in 0..2 {
        assert_eq!(get(&kg.url("/"), &headers).await.status.as_u16(), 200);
    }
    // The idle pooled connection's timer is due 2s after that request: 1s after this one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = std::time::Instant::now();
    let r = get(&kg.url("/slow/10000"), &headers).await;
    let took = asked.elapsed();
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (504, "upstream_timeout")
    );
    assert!(
        took >= Duration::from_millis(1900),
        "504 after {took:?}, before its deadline"
    );
    assert_eq!(get(&kg.url("/"), &headers).await.status.as_u16(), 200);
}

#[tokio::test]
async fn concurrent_first_requests_share_one_argon2_run() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    let auth = bearer(&key);
    let before = kg
        .metrics
        .argon2_runs
        .load(std::sync::atomic::Ordering::SeqCst);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (url, auth) = (kg.url("/"), auth.clone());
        tasks.push(tokio::spawn(async move {
            get(&url, &[("authorization", &auth)]).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let runs = kg
        .metrics
        .argon2_runs
        .load(std::sync::atomic::Ordering::SeqCst)
        - before;
    assert_eq!(
        runs, 1,
        "100 concurrent first requests must share one Argon2id verification"
    );
    assert_eq!(up.hits(), 100);

    // The metric is exported on the ops listener.
    let m = get(&format!("http://{}/metrics", kg.ops_addr), &[]).await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains("keygate_argon2_verifications_total 1"),
        "{text}"
    );
    assert!(!text.contains(&key));
}

/// With more verified keys than `auth.cache_max_entries`, the shared cache lets keys go while a
/// thread's front may still hold them: their `last_used_at` is kept all the same, both the usage
/// before a key was let go of and the usage after it.
#[tokio::test]
async fn usage_of_keys_the_cache_let_go_of_is_still_recorded() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "[auth]\ncache_max_entries = 1\n").await;
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(kg.live_key().await);
    }
    let (churn, _) = kg.live_key().await;
    // The second request for a key is a cache hit, which this thread's front then remembers.
    let use_key = |key: &str| {
        let (url, auth) = (kg.url("/"), bearer(key));
        async move {
            for _ in 0..2 {
                assert_eq!(get(&url, &[("authorization", &auth)]).await.status, 200);
            }
        }
    };
    let use_all = || async {
        for (key, _) in &keys {
            use_key(key).await;
        }
    };
    let used = |usage: Vec<(String, Timestamp)>| -> std::collections::BTreeMap<String, u64> {
        usage.into_iter().map(|(id, at)| (id, at.unix())).collect()
    };
    use_all().await;
    let first = used(kg.verifier.take_usage());
    // A later second: the usage below is newer than what was taken above.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Another key's fill: the shared cache makes room for it, letting the others go, which
    // this thread's front still holds.
    use_key(&churn).await;
    use_all().await;
    let second = used(kg.verifier.take_usage());
    for (_, id) in &keys {
        let (Some(before), Some(after)) = (first.get(id), second.get(id)) else {
            panic!("usage of {id} lost: first {first:?}, then {second:?}");
        };
        assert!(after > before, "{id}: {before} then {after}");
    }
}

#[tokio::test]
async fn bogus_keys_are_answered_from_the_negative_cache() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let format = keygate::key::KeyFormat::new(&Default::default()).unwrap();
    let bogus = format
        .generate(KeyType::Secret, Environment::Live)
        .unwrap()
        .key;
    for _ in 0..5 {
        let r = get(&kg.url("/"), &[("authorization", &bearer(&bogus))]).await;
        assert_eq!(r.code(), "invalid_key");
    }
    let m = &kg.metrics;
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(
        m.cache_misses.load(SeqCst),
        1,
        "only the first bogus request may reach the store"
    );
    assert_eq!(m.negative_cache_hits.load(SeqCst), 4);
    assert_eq!(m.argon2_runs.load(SeqCst), 0);
    // A key created afterwards with a never-seen hash works at once.
    let (key, _) = kg.live_key().await;
    assert_eventually!(
        get(&kg.url("/"), &[("authorization", &bearer(&key))])
            .await
            .status
            == 200,
        Duration::from_secs(5),
        "new key not usable"
    );
}

#[tokio::test]
async fn rejected_body_never_becomes_a_second_request() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let req = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let mut s = tokio::net::TcpStream::connect(kg.addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // The connection must be closed by keygate after the 401 (read to EOF, bounded).
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1").count(),
        1,
        "a second response means the body was parsed: {text}"
    );
    assert!(text.to_ascii_lowercase().contains("connection: close"));
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, id) = kg.live_key().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let req = http::Request::get(kg.url("/h2?q=1"))
        .header("authorization", bearer(&key))
        .header("x-auth-owner", "forged")
        .body(empty())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    use http_body_util::BodyExt;
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["headers"]["x-auth-key-id"], id.as_str());
    assert_eq!(body["headers"]["x-auth-owner"], "acct_1");
    assert_eq!(body["headers"]["host"], kg.addr.to_string().as_str());
    assert_eq!(body["query"], "q=1");
}

#[tokio::test]
async fn store_changes_by_another_writer_reach_the_running_proxy() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    // A second handle on the same file stands in for the CLI in another process.
    let other = keygate::manage::KeyTool::from_config(&kg.config).unwrap();
    let (key, rec) = other
        .create(
            NewRecord::new("acct_9", Environment::Live, KeyType::Secret),
            "test",
        )
        .await
        .unwrap();
    let auth = bearer(&key.key);
    assert_eventually!(
        get(&kg.url("/"), &[("authorization", &auth)]).await.status == 200,
        Duration::from_secs(2),
        "key created by another writer not picked up"
    );
    other.revoke(&rec.id, "test").await.unwrap();
    assert_eventually!(
        get(&kg.url("/"), &[("authorization", &auth)]).await.code() == "expired_key",
        Duration::from_secs(2),
        "revocation by another writer not picked up"
    );
}

#[tokio::test]
async fn rotation_retires_the_old_key_and_grace_keeps_it_alive() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (old, old_id) = kg.live_key().await;
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &bearer(&old))])
            .await
            .status,
        200
    );

    let (new, new_rec, _) = kg.tool.rotate(&old_id, None, "test").await.unwrap();
    assert_eq!(new_rec.rotated_from.as_deref(), Some(old_id.as_str()));
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &bearer(&new.key))])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &bearer(&old))])
            .await
            .code(),
        "expired_key"
    );

    let (new2, _, prev) = kg
        .tool
        .rotate(&new_rec.id, Some(Duration::from_secs(3600)), "test")
        .await
        .unwrap();
    assert!(prev.revoked_at.is_none() && prev.expires_at.is_some());
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &bearer(&new.key))])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &bearer(&new2.key))])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn slow_header_senders_are_cut_off() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "[listen]\nheader_read_timeout = \"500ms\"\n").await;
    let mut s = tokio::net::TcpStream::connect(kg.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = Vec::new();
    // Bounded: keygate must close (with or without a 408) well before this.
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(
        n.is_ok(),
        "connection with an unfinished request head was kept open"
    );
    // Meanwhile a normal client is served.
    let (key, _) = kg.live_key().await;
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &bearer(&key))])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn readyz_and_healthz_on_the_ops_listener() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let ops = kg.ops_addr;
    assert_eq!(get(&format!("http://{ops}/healthz"), &[]).await.status, 200);
    let r = get(&format!("http://{ops}/readyz"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");
    // The proxied port does not answer these itself: they are the upstream's paths.
    let r = get(&kg.url("/healthz"), &[]).await;
    assert_eq!(r.code(), "unauthorized");
    kg.stop().await.unwrap();
}

/// keygate's keep-alive pool: sequential requests share one upstream connection whatever their
/// response (plain, HEAD, a large streamed body); concurrent ones each get their own and never
/// see another's response; a response the client abandons halfway costs only its connection;
/// a timed-out request does not poison the pool.
#[tokio::test]
async fn upstream_connections_are_reused_but_never_shared_mid_response() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    let auth = bearer(&key);
    let headers = [("authorization", auth.as_str())];
    for i in 0..5 {
        let r = get(&kg.url(&format!("/seq/{i}?q={i}")), &headers).await;
        // Origin-form on the wire, as from any client of an origin server.
        assert_eq!(r.json()["target"], format!("/seq/{i}?q={i}"));
    }
    let r = send(Method::HEAD, &kg.url("/head"), &headers, empty()).await;
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 0));
    let r = get(&kg.url("/download/300000"), &headers).await;
    assert_eq!((r.status.as_u16(), r.body.len()), (200, 300_000));
    let r = get(&kg.url("/after"), &headers).await;
    assert_eq!(r.json()["path"], "/after");
    assert_eq!(
        up.connections(),
        1,
        "sequential requests share one connection"
    );

    let concurrent = (0..8).map(|i| {
        let url = kg.url(&format!("/par/{i}"));
        let auth = auth.clone();
        tokio::spawn(async move { get(&url, &[("authorization", &auth)]).await })
    });
    for (i, r) in futures_util::future::join_all(concurrent)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap().json()["path"], format!("/par/{i}"));
    }

    // Abandon a large download after its first bytes.
    let mut s = tokio::net::TcpStream::connect(kg.addr).await.unwrap();
    let req =
        format!("GET /download/50000000 HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    drop(s);
    let r = send(Method::GET, &kg.url("/slow/10000"), &headers, empty()).await;
    assert_eq!(r.status.as_u16(), 504); // response_timeout = 2s in the harness
    for i in 0..20 {
        let r = get(&kg.url(&format!("/again/{i}")), &headers).await;
        assert_eq!(r.json()["path"], format!("/again/{i}"));
    }
}

/// A pooled connection the upstream drops without answering: an idempotent request is sent
/// again on another connection (the client never sees the drop); one that is not idempotent
/// is never sent twice (RFC 9110 §9.2.2) and is answered 502.
#[tokio::test]
async fn a_dropped_pooled_connection_resends_only_idempotent_requests() {
    use std::sync::{Arc, Mutex};
    // Answers the first request on each connection; reads the second, then drops the
    // connection without a byte of answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for answer in [true, false] {
                    let head = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break buf.drain(..end + 4).collect::<Vec<u8>>();
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let line = String::from_utf8_lossy(&head);
                    log.lock()
                        .unwrap()
                        .push(line.lines().next().unwrap_or("").to_owned());
                    if answer {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        s.write_all(ok).await.unwrap();
                    }
                }
            });
        }
    });
    let kg = Keygate::start(&format!("http://{addr}"), "").await;
    let (key, _) = kg.live_key().await;
    let auth = bearer(&key);
    let headers = [("authorization", auth.as_str())];
    let r = get(&kg.url("/first"), &headers).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
    // On the pooled connection, which drops it: sent again, on a new one.
    let r = get(&kg.url("/again"), &headers).await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"ok"[..]));
    // The same for a POST: sent once, and the client told.
    let r = send(Method::POST, &kg.url("/once"), &headers, empty()).await;
    assert_eq!(r.status.as_u16(), 502);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            "GET /first HTTP/1.1",
            "GET /again HTTP/1.1",
            "GET /again HTTP/1.1",
            "POST /once HTTP/1.1"
        ]
    );
}

/// Idle upstream connections are closed after `upstream.pool_idle_timeout` even when no request
/// comes along to notice.
#[tokio::test]
async fn idle_upstream_connections_are_closed_after_the_idle_timeout() {
    let up = Upstream::start().await;
    let kg = Keygate::start_with_upstream(&up.url(), "pool_idle_timeout = \"1s\"\n", "").await;
    let (key, _) = kg.live_key().await;
    let r = get(&kg.url("/once"), &[("authorization", &bearer(&key))]).await;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!((up.connections(), up.closed()), (1, 0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while up.closed() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Closed by keygate's reaper (1 s timeout, checked every second), not by a request.
    assert_eq!(up.connections(), 1);
}

/// An upstream that accepts no connection within `upstream.connect_timeout` is a 504, like one
/// that answers too late (not a 502: nothing refused).
#[tokio::test]
async fn upstream_connect_timeout_is_504() {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    sock.bind(&any.into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    // Fill the accept queue, never accepting: later SYNs are dropped and connects hang.
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let connect = tokio::net::TcpStream::connect(addr);
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(300), connect).await {
            fillers.push(s);
        }
    }
    let kg = Keygate::start(&format!("http://{addr}"), "").await; // connect_timeout = 1s
    let (key, _) = kg.live_key().await;
    let started = std::time::Instant::now();
    let r = get(&kg.url("/"), &[("authorization", &bearer(&key))]).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (504, "upstream_timeout")
    );
    // At the connect timeout (1 s), not the response timeout (2 s): the connect itself hung.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1900),
        "answered after {took:?}"
    );
    drop(fillers);
}
