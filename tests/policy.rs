//! Policy end to end: routes, scopes, key types, carriers, path normalisation, IP rules and rate
//! limits, through a real keygate in front of a real upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::redis::Redis;
use common::*;
use http::Method;
use keygate::key::{Environment, KeyType};
use keygate::store::KeyRateLimit;

/// A route table modelled on the source documents.
const ROUTES: &str = r#"
[ip]
trusted_proxies = ["127.0.0.2"]
deny = ["127.0.0.3"]

[[routes]]
name = "health"
path = "/health"
public = true

[[routes]]
name = "docs"
path = "/docs/*"
public = true

[[routes]]
name = "create-payment"
methods = ["POST"]
path = "/v1/payments"
scope = "payments:write"

[[routes]]
name = "read-payment"
methods = ["GET"]
path = "/v1/payments/{id}"
scope = "payments:read"
allow_publishable = true

[[routes]]
name = "transfers"
path = "/v1/transfers/*"
scope = "transfers:write"
carriers = ["x-api-key"]

[[routes]]
name = "admin"
path = "/v1/admin/*"
scope = "admin"

[[routes]]
name = "webhooks"
path = "/v1/webhooks/*"
scope = "webhooks:read"
report_only = ["scope"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn scopes_key_types_and_carriers() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), ROUTES).await;
    let reader = bearer(&mint_with(&kg, KeyType::Secret, &["payments:read"], |_| {}).await);
    let writer = bearer(&mint_with(&kg, KeyType::Secret, &["payments:write"], |_| {}).await);
    let read_only = bearer(&mint_with(&kg, KeyType::Secret, &["read"], |_| {}).await);
    let publishable = bearer(&mint_with(&kg, KeyType::Publishable, &["all"], |_| {}).await);
    let transfers = mint_with(&kg, KeyType::Secret, &["transfers:write"], |_| {}).await;

    let post = |auth: String| {
        let url = kg.url("/v1/payments");
        async move { send(Method::POST, &url, &[("authorization", &auth)], full("{}")).await }
    };
    let r = post(reader.clone()).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "insufficient_scope")
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("payments:write")
    );
    assert_eq!(post(writer.clone()).await.status, 200);
    // write implies read.
    assert_eq!(
        get(&kg.url("/v1/payments/pay_1"), &[("authorization", &writer)])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&kg.url("/v1/payments/pay_1"), &[("authorization", &reader)])
            .await
            .status,
        200
    );

    // A read-only key: reads anywhere (but admin), never writes.
    assert_eq!(
        get(&kg.url("/v1/customers"), &[("authorization", &read_only)])
            .await
            .status,
        200
    );
    let r = send(
        Method::DELETE,
        &kg.url("/v1/customers/c_1"),
        &[("authorization", &read_only)],
        empty(),
    )
    .await;
    assert_eq!(r.code(), "insufficient_scope");
    assert_eq!(post(read_only.clone()).await.code(), "insufficient_scope");
    assert_eq!(
        get(&kg.url("/v1/admin/users"), &[("authorization", &read_only)])
            .await
            .code(),
        "insufficient_scope"
    );

    // Publishable keys only where allowed.
    assert_eq!(
        get(
            &kg.url("/v1/payments/pay_1"),
            &[("authorization", &publishable)]
        )
        .await
        .status,
        200
    );
    let r = get(&kg.url("/v1/customers"), &[("authorization", &publishable)]).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "key_type_not_allowed")
    );

    // X-Api-Key-only route: Bearer is refused with 401, the header works.
    let r = get(
        &kg.url("/v1/transfers/t_1"),
        &[("authorization", &bearer(&transfers))],
    )
    .await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (401, "invalid_key"));
    assert_eq!(
        get(&kg.url("/v1/transfers/t_1"), &[("x-api-key", &transfers)])
            .await
            .status,
        200
    );

    // Public routes need no key and still never pass forged identity.
    let r = get(&kg.url("/health"), &[("x-auth-owner", "acct_admin")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-auth-owner"), None);
    assert_eq!(get(&kg.url("/docs/intro"), &[]).await.status, 200);
    assert_eq!(
        get(&kg.url("/v1/customers"), &[]).await.code(),
        "unauthorized"
    );
}

#[tokio::test]
async fn method_overrides_cannot_escalate() {
    let up = Upstream::start().await;
    let strip = Keygate::start(&up.url(), ROUTES).await;
    let read_only = bearer(&mint_with(&strip, KeyType::Secret, &["read"], |_| {}).await);
    let r = get(
        &strip.url("/v1/customers/c_1"),
        &[
            ("authorization", &read_only),
            ("x-http-method-override", "DELETE"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["method"], "GET");
    for h in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert_eq!(r.upstream_header(h), None);
    }

    let honor = Keygate::start(
        &up.url(),
        &format!("[auth]\nmethod_override = \"honor\"\n{ROUTES}"),
    )
    .await;
    let read_only = bearer(&mint_with(&honor, KeyType::Secret, &["read"], |_| {}).await);
    let r = get(
        &honor.url("/v1/customers/c_1"),
        &[("authorization", &read_only), ("x-http-method", "DELETE")],
    )
    .await;
    assert_eq!(r.code(), "insufficient_scope");
}

#[tokio::test]
async fn path_normalisation_leaves_no_bypass() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), ROUTES).await;
    let reader = bearer(&mint_with(&kg, KeyType::Secret, &["payments:read"], |_| {}).await);
    let read_only = bearer(&mint_with(&kg, KeyType::Secret, &["read"], |_| {}).await);
    // Spellings of POST /v1/payments all land on the create-payment route.
    for path in [
        "/v1/./payments",
        "//v1//payments",
        "/v1/x/../payments",
        "/v1/p%61yments",
        "/v1/payments/",
    ] {
        let r = send(
            Method::POST,
            &kg.url(path),
            &[("authorization", &reader)],
            empty(),
        )
        .await;
        assert_eq!(r.code(), "insufficient_scope", "{path}");
    }
    // Dot segments resolve before routing, and the upstream gets the same path.
    let r = get(
        &kg.url("/v1/payments/../admin/users"),
        &[("authorization", &read_only)],
    )
    .await;
    assert_eq!(r.code(), "insufficient_scope");
    assert_eq!(
        get(&kg.url("/docs/../v1/admin/users"), &[]).await.code(),
        "unauthorized"
    );
    let r = get(
        &kg.url("/v1//payments/./pay_1?x=1"),
        &[("authorization", &reader)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["path"], "/v1/payments/pay_1");
    assert_eq!(r.json()["query"], "x=1");
    // Ambiguous encodings are refused outright.
    for path in [
        "/v1/admin%2Fusers",
        "/v1/%2e%2e/admin/users",
        "/v1/a%00",
        "/docs/..%2fv1/admin",
        "/v1/%zz",
        "/../v1",
    ] {
        let r = get(&kg.url(path), &[("authorization", &reader)]).await;
        assert_eq!(
            (r.status.as_u16(), r.code().as_str()),
            (400, "bad_request"),
            "{path}"
        );
    }
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn ip_rules_trusted_proxies_and_allowlists() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), ROUTES).await;
    let office = bearer(
        &mint_with(&kg, KeyType::Secret, &["all"], |r| {
            r.ip_allowlist = vec!["10.0.0.0/8".parse().unwrap()]
        })
        .await,
    );
    let v6 = bearer(
        &mint_with(&kg, KeyType::Secret, &["all"], |r| {
            r.ip_allowlist = vec!["2001:db8::/32".parse().unwrap()]
        })
        .await,
    );
    let url = kg.url("/v1/customers");

    // From an untrusted peer, X-Forwarded-For changes nothing: the socket address is used.
    let r = get_from(
        ip("127.0.0.1"),
        &url,
        &[("authorization", &office), ("x-forwarded-for", "10.1.1.1")],
    )
    .await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "ip_not_allowed")
    );
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1"),
        "the seen IP is echoed"
    );
    // From the trusted proxy, the right-most untrusted hop is the client.
    let r = get_from(
        ip("127.0.0.2"),
        &url,
        &[
            ("authorization", &office),
            ("x-forwarded-for", "6.6.6.6, 10.1.1.1"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("10.1.1.1")
    );
    let r = get_from(
        ip("127.0.0.2"),
        &url,
        &[
            ("authorization", &office),
            ("x-forwarded-for", "10.1.1.1, 6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(r.code(), "ip_not_allowed");
    // IPv6 CIDR allowlist, and garbage from a trusted proxy fails closed.
    let via = |xff: &'static str| {
        let (url, v6) = (url.clone(), v6.clone());
        async move {
            get_from(
                ip("127.0.0.2"),
                &url,
                &[("authorization", &v6), ("x-forwarded-for", xff)],
            )
            .await
        }
    };
    assert_eq!(via("2001:db8:0:1::5").await.status, 200);
    assert_eq!(via("2001:db9::1").await.code(), "ip_not_allowed");
    assert_eq!(via("[2001:db8::5]:443").await.status, 200);
    assert_eq!(via("not-an-ip").await.code(), "bad_request");
    // The global deny list applies before any key work.
    let r = get_from(ip("127.0.0.3"), &url, &[]).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "ip_not_allowed")
    );
}

#[tokio::test]
async fn report_only_forwards_and_counts() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), ROUTES).await;
    let other = bearer(&mint_with(&kg, KeyType::Secret, &["payments:read"], |_| {}).await);
    let r = get(&kg.url("/v1/webhooks/wh_1"), &[("authorization", &other)]).await;
    assert_eq!(r.status, 200, "report-only scope rule must forward");
    assert_eq!(kg.metrics.report_only_denials.load(Ordering::SeqCst), 1);
}

const LIMITS: &str = r#"
[rate_limits]
key = { limit = 5, window = "1m" }
categories = { payments_create = { limit = 2, window = "1h" } }
tiers = { pro = { limit = 8, window = "1m" } }
headers = ["x-ratelimit", "ratelimit", "structured"]

[[routes]]
name = "create-payment"
methods = ["POST"]
path = "/v1/payments"
category = "payments_create"
"#;

#[tokio::test]
async fn key_and_category_limits_with_headers() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), LIMITS).await;
    let key = bearer(&mint_with(&kg, KeyType::Secret, &["all"], |_| {}).await);
    for expected_remaining in (0..5).rev() {
        let r = get(&kg.url("/v1/customers"), &[("authorization", &key)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["x-ratelimit-limit"], "5");
        assert_eq!(
            r.headers["x-ratelimit-remaining"],
            expected_remaining.to_string().as_str()
        );
        assert_eq!(
            r.headers["ratelimit-remaining"],
            expected_remaining.to_string().as_str()
        );
        let reset: u64 = r.headers["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            reset > keygate::time::Timestamp::now().unix()
                && reset <= keygate::time::Timestamp::now().unix() + 61
        );
        assert_eq!(r.headers["ratelimit-policy"], "\"default\";q=5;w=60");
    }
    let r = get(&kg.url("/v1/customers"), &[("authorization", &key)]).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (429, "rate_limited")
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(r.headers["x-ratelimit-remaining"], "0");
    assert_eq!(up.hits(), 5);

    // The category limit is tighter, per key, and reported as the one closest to exhaustion.
    let pro = bearer(
        &mint_with(&kg, KeyType::Secret, &["all"], |r| {
            r.rate_limit = Some(KeyRateLimit::Tier { tier: "pro".into() })
        })
        .await,
    );
    let create = || {
        let (url, pro) = (kg.url("/v1/payments"), pro.clone());
        async move { send(Method::POST, &url, &[("authorization", &pro)], empty()).await }
    };
    let r = create().await;
    assert_eq!(
        (
            r.status.as_u16(),
            r.headers["x-ratelimit-limit"].to_str().unwrap()
        ),
        (200, "2")
    );
    assert_eq!(create().await.status, 200);
    let r = create().await;
    assert_eq!(r.code(), "rate_limited");
    assert_eq!(r.headers["x-ratelimit-limit"], "2");
    // Rejected requests consumed nothing: the pro key's own limit (8) shows 6 left.
    let r = get(&kg.url("/v1/customers"), &[("authorization", &pro)]).await;
    assert_eq!(r.headers["x-ratelimit-limit"], "8");
    assert_eq!(r.headers["x-ratelimit-remaining"], "5");
}

#[tokio::test]
async fn a_client_kept_at_429_recovers_when_its_window_allows() {
    let up = Upstream::start().await;
    let kg = Keygate::start(
        &up.url(),
        "[rate_limits]\nkey = { limit = 2, window = \"1s\", algorithm = \"gcra\" }\n",
    )
    .await;
    let key = bearer(&mint_with(&kg, KeyType::Secret, &["all"], |_| {}).await);
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &key)]).await.status,
        200
    );
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &key)]).await.status,
        200
    );
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &key)]).await.status,
        429
    );
    // Hammering while limited does not push recovery back.
    assert_eventually!(
        get(&kg.url("/"), &[("authorization", &key)]).await.status == 200,
        Duration::from_secs(3),
        "never recovered while retrying"
    );
}

#[tokio::test]
async fn in_process_limiter_is_exact_under_concurrency() {
    let up = Upstream::start().await;
    let kg = Keygate::start(
        &up.url(),
        "[rate_limits]\nkey = { limit = 20, window = \"1m\" }\n",
    )
    .await;
    let key = bearer(&mint_with(&kg, KeyType::Secret, &["all"], |_| {}).await);
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let (url, key) = (kg.url("/"), key.clone());
            tokio::spawn(async move { get(&url, &[("authorization", &key)]).await.status.as_u16() })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 20);
}

#[tokio::test]
async fn ip_floor_and_failed_auth_throttle_run_before_verification() {
    let up = Upstream::start().await;
    let kg = Keygate::start(
        &up.url(),
        "[rate_limits]\nip = { limit = 6, window = \"1m\" }\nfailed_auth = { limit = 3, window = \"1m\" }\n",
    )
    .await;
    let key = bearer(&mint_with(&kg, KeyType::Secret, &["all"], |_| {}).await);
    let format = keygate::key::KeyFormat::new(&Default::default()).unwrap();
    for _ in 0..3 {
        let bogus = bearer(
            &format
                .generate(KeyType::Secret, Environment::Live)
                .unwrap()
                .key,
        );
        assert_eq!(
            get(&kg.url("/"), &[("authorization", &bogus)]).await.code(),
            "invalid_key"
        );
    }
    let misses = kg.metrics.cache_misses.load(Ordering::SeqCst);
    // Three failures: this address is now throttled, even with a valid key, before any lookup.
    let r = get(&kg.url("/"), &[("authorization", &key)]).await;
    assert_eq!(r.code(), "rate_limited");
    assert_eq!(kg.metrics.cache_misses.load(Ordering::SeqCst), misses);
    // Another client address is unaffected; the per-IP floor caps it at 6 requests.
    let other = ip("127.0.0.9");
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..8 {
            v.push(
                get_from(other, &kg.url("/"), &[("authorization", &key)])
                    .await
                    .status
                    .as_u16(),
            );
        }
        v
    };
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 200, 429, 429]);
    assert_eq!(kg.metrics.argon2_runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn redis_limits_are_shared_exactly_across_proxies() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let cfg = "[rate_limits]\nbackend = \"redis\"\nkey = { limit = 10, window = \"1m\" }\n";
    let a = Keygate::start_redis(&up.url(), &redis.url(), cfg).await;
    let b = Keygate::start_redis(&up.url(), &redis.url(), cfg).await;
    let key = bearer(&mint_with(&a, KeyType::Secret, &["all"], |_| {}).await);
    // Warm both caches (and Redis's script cache) first: 2 of the 10 are used here.
    assert_eq!(
        get(&a.url("/"), &[("authorization", &key)]).await.status,
        200
    );
    assert_eq!(
        get(&b.url("/"), &[("authorization", &key)]).await.status,
        200
    );
    let mut ok = 2;
    let before = evalsha_calls(&redis);
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let url = if i % 2 == 0 { a.url("/") } else { b.url("/") };
            let key = key.clone();
            tokio::spawn(async move { get(&url, &[("authorization", &key)]).await.status.as_u16() })
        })
        .collect();
    for t in tasks {
        if t.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 10, "two proxies on one Redis admit exactly N");
    // One script call per request (the per-key limit); cached keys cost no other round trip.
    let calls = evalsha_calls(&redis) - before;
    assert_eq!(calls, 30, "limiter round trips for 30 requests");
}

/// EVAL + EVALSHA calls Redis has served so far.
fn evalsha_calls(redis: &Redis) -> u64 {
    let stats = redis.cmd("INFO commandstats");
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

#[tokio::test]
async fn three_proxies_leasing_permits_admit_exactly_a_keys_limit() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let cfg = "[rate_limits]\nbackend = \"redis\"\nreplicas = 3\nlease_max = 100\n\
               key = { limit = 30, window = \"1h\" }\n";
    let mut fleet = Vec::new();
    for name in ["a", "b", "c"] {
        fleet.push(Keygate::start_redis_as(&up.url(), &redis.url(), name, cfg).await);
    }
    let key = bearer(&mint_with(&fleet[0], KeyType::Secret, &["all"], |_| {}).await);
    let mut tasks = Vec::new();
    for kg in &fleet {
        for _ in 0..3 {
            let (url, key) = (kg.url("/v1/items"), key.clone());
            tasks.push(tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..15 {
                    let r = get(&url, &[("authorization", &key)]).await;
                    match r.status.as_u16() {
                        200 => ok += 1,
                        429 => assert_eq!(r.code(), "rate_limited"),
                        other => panic!("status {other}"),
                    }
                }
                ok
            }));
        }
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    assert_eq!(
        admitted, 30,
        "135 requests over 3 proxies admit exactly the key's limit"
    );
    assert_eq!(up.hits(), 30);
}

#[tokio::test]
async fn redis_limiter_falls_back_when_redis_is_gone() {
    let mut redis = Redis::start();
    let up = Upstream::start().await;
    let cfg =
        "[rate_limits]\nbackend = \"redis\"\nreplicas = 2\nkey = { limit = 10, window = \"1m\" }\n";
    let kg = Keygate::start_redis(&up.url(), &redis.url(), cfg).await;
    let key = bearer(&mint_with(&kg, KeyType::Secret, &["all"], |_| {}).await);
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &key)]).await.status,
        200
    );
    redis.kill();
    // Cached key, Redis gone: traffic flows under the local limit (10 / 2 replicas = 5).
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(
            get(&kg.url("/"), &[("authorization", &key)])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn proxy_protocol_names_the_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let kg = Keygate::start(
        &up.url(),
        "[listen]\nproxy_protocol = true\nheader_read_timeout = \"1s\"\n",
    )
    .await;
    let key = mint_with(&kg, KeyType::Secret, &["all"], |r| {
        r.ip_allowlist = vec!["198.51.100.0/24".parse().unwrap()]
    })
    .await;
    let exchange = |preamble: Vec<u8>| {
        let (addr, key) = (kg.addr, key.clone());
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut req = preamble;
            req.extend_from_slice(
                format!(
                    "GET /x HTTP/1.1\r\nHost: h\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            );
            s.write_all(&req).await.unwrap();
            let mut out = Vec::new();
            // A reset (keygate closing with our bytes unread) reads as nothing received.
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
                .await
                .unwrap();
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let ok = exchange(b"PROXY TCP4 198.51.100.9 10.0.0.1 40000 443\r\n".to_vec()).await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("\"x-forwarded-for\": \"198.51.100.9\""), "{ok}");
    let outside = exchange(b"PROXY TCP4 203.0.113.1 10.0.0.1 40000 443\r\n".to_vec()).await;
    assert!(
        outside.starts_with("HTTP/1.1 403") && outside.contains("203.0.113.1"),
        "{outside}"
    );
    // No header: closed without an answer, and nothing reaches the upstream.
    let none = exchange(Vec::new()).await;
    assert!(none.is_empty(), "{none}");
    assert_eq!(up.hits(), 1);
}
