//! Auth-only mode: the authorization endpoint decides exactly as the proxy does, for the same
//! requests, in each front proxy's dialect (Traefik `forwardAuth`, nginx `auth_request`, Envoy's
//! HTTP `ext_authz`); and a real nginx with `auth_request` in front of a real upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use http::Method;
use keygate::key::KeyType;
use keygate::store::KeyRateLimit;

const CONFIG: &str = r#"
[authz]
mode = "both"

[ip]
trusted_proxies = ["127.0.0.1"]

[[routes]]
name = "health"
path = "/health"
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
"#;

/// How a front proxy asks about a request.
#[derive(Clone, Copy, Debug)]
enum Dialect {
    /// `X-Forwarded-Method` / `X-Forwarded-Uri`, to any path.
    Traefik,
    /// `X-Original-Method` / `X-Original-URI`, to any path.
    Nginx,
    /// The original method and path as the check request's own.
    Envoy,
    /// Envoy's gRPC `ext_authz`: `Authorization/Check` with the request in its attributes.
    EnvoyGrpc,
}

/// (what, method, target, client headers)
type Case<'a> = (&'a str, Method, &'a str, Vec<(&'a str, &'a str)>);

const DIALECTS: [Dialect; 4] = [
    Dialect::Traefik,
    Dialect::Nginx,
    Dialect::Envoy,
    Dialect::EnvoyGrpc,
];

/// The same request asked about on the authorization listener.
async fn check(
    kg: &Keygate,
    dialect: Dialect,
    method: &Method,
    target: &str,
    headers: &[(&str, &str)],
) -> Resp {
    let addr = kg.authz_addr.unwrap();
    if let Dialect::EnvoyGrpc = dialect {
        return grpc_check(addr, method, target, headers).await;
    }
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    let m = method.as_str();
    let (method, url) = match dialect {
        Dialect::Traefik => {
            all.extend([("x-forwarded-method", m), ("x-forwarded-uri", target)]);
            (Method::GET, format!("http://{addr}/auth"))
        }
        Dialect::Nginx => {
            all.extend([("x-original-method", m), ("x-original-uri", target)]);
            (Method::GET, format!("http://{addr}/auth"))
        }
        Dialect::Envoy | Dialect::EnvoyGrpc => (method.clone(), format!("http://{addr}{target}")),
    };
    send(method, &url, &all, empty()).await
}

/// A gRPC `Check` from a real gRPC client (tonic, over h2c), asking about the request as Envoy
/// would describe it; the answer read back as the HTTP response Envoy would give.
async fn grpc_check(
    addr: std::net::SocketAddr,
    method: &Method,
    target: &str,
    headers: &[(&str, &str)],
) -> Resp {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address};
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request as AttrRequest,
    };
    use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
    use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

    let mut client = AuthorizationClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut map = std::collections::HashMap::new();
    for (k, v) in headers {
        // Envoy joins a repeated header's values with ",".
        map.entry(k.to_string())
            .and_modify(|e: &mut String| {
                e.push(',');
                e.push_str(v);
            })
            .or_insert_with(|| v.to_string());
    }
    map.insert(":authority".into(), "api.example.com".into());
    map.insert(":method".into(), method.to_string());
    map.insert(":path".into(), target.into());
    let request = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: "127.0.0.1".into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            }),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: method.to_string(),
                    path: target.into(),
                    host: "api.example.com".into(),
                    headers: map,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let answer = client.check(request).await.unwrap().into_inner();
    let mut out = http::HeaderMap::new();
    let put = |out: &mut http::HeaderMap,
               opts: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
        for o in opts {
            let h = o.header.as_ref().unwrap();
            out.append(
                http::HeaderName::from_bytes(h.key.as_bytes()).unwrap(),
                http::HeaderValue::from_str(&h.value).unwrap(),
            );
        }
    };
    match answer.http_response.unwrap() {
        HttpResponse::OkResponse(ok) => {
            assert_eq!(answer.status.unwrap().code, 0);
            put(&mut out, &ok.headers);
            // To the client: rate-limit headers, never the identity.
            for o in &ok.response_headers_to_add {
                let key = &o.header.as_ref().unwrap().key;
                assert!(!key.starts_with("x-auth-"), "{key} would go to the client");
            }
            put(&mut out, &ok.response_headers_to_add);
            if !ok.headers_to_remove.is_empty() {
                out.insert(
                    "x-envoy-auth-headers-to-remove",
                    ok.headers_to_remove.join(",").parse().unwrap(),
                );
            }
            Resp {
                status: http::StatusCode::OK,
                headers: out,
                body: bytes::Bytes::new(),
            }
        }
        HttpResponse::DeniedResponse(denied) => {
            assert_ne!(answer.status.unwrap().code, 0);
            put(&mut out, &denied.headers);
            Resp {
                status: http::StatusCode::from_u16(denied.status.unwrap().code as u16).unwrap(),
                headers: out,
                body: bytes::Bytes::from(denied.body),
            }
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

/// An error body without its per-request parts.
fn scrubbed(r: &Resp) -> serde_json::Value {
    fn scrub(v: &mut serde_json::Value) {
        if let Some(map) = v.as_object_mut() {
            map.remove("request_id");
            map.values_mut().for_each(scrub);
        }
    }
    let mut v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    scrub(&mut v);
    v
}

const IDENTITY: [&str; 5] = [
    "x-auth-key-id",
    "x-auth-owner",
    "x-auth-env",
    "x-auth-key-type",
    "x-auth-scopes",
];

/// The proxy's answer and the authorization endpoint's agree: same status and body on a
/// denial (and the same rate-limit and challenge headers); on an allow, the identity the
/// upstream got from the proxy is the identity the endpoint tells the front proxy to set.
fn assert_same(case: &str, dialect: Dialect, proxied: &Resp, checked: &Resp) {
    let what = format!("{case} ({dialect:?})");
    assert_eq!(checked.status, proxied.status, "{what}: status");
    if proxied.status.is_success() {
        for name in IDENTITY {
            assert_eq!(
                checked.headers.get(name).and_then(|v| v.to_str().ok()),
                proxied.upstream_header(name).as_deref(),
                "{what}: {name}"
            );
        }
        assert!(checked.body.is_empty(), "{what}: an allow has no body");
    } else {
        assert_eq!(scrubbed(checked), scrubbed(proxied), "{what}: body");
        for name in ["www-authenticate", "retry-after", "ratelimit-limit"] {
            assert_eq!(
                checked.headers.get(name),
                proxied.headers.get(name),
                "{what}: {name}"
            );
        }
    }
}

#[tokio::test]
async fn the_authorization_endpoint_decides_as_the_proxy_does() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), CONFIG).await;
    let reader = bearer(&mint_with(&kg, KeyType::Secret, &["payments:read"], |_| {}).await);
    let writer = bearer(&mint_with(&kg, KeyType::Secret, &["payments:write"], |_| {}).await);
    let publishable = bearer(&mint_with(&kg, KeyType::Publishable, &["all"], |_| {}).await);
    let transfers = mint_with(&kg, KeyType::Secret, &["transfers:write"], |_| {}).await;
    let fenced = bearer(
        &mint_with(&kg, KeyType::Secret, &["payments:read"], |r| {
            r.ip_allowlist = vec!["10.0.0.0/8".parse().unwrap()];
        })
        .await,
    );
    let test_key = bearer(
        &mint_with(&kg, KeyType::Secret, &["all"], |r| {
            r.environment = keygate::key::Environment::Test;
        })
        .await,
    );
    let (revoked_raw, revoked_id) = kg
        .mint(
            keygate::key::Environment::Live,
            KeyType::Secret,
            &["payments:read"],
        )
        .await;
    let revoked = bearer(&revoked_raw);
    kg.tool.revoke(&revoked_id, "test").await.unwrap();

    let transfers_bearer = bearer(&transfers);
    let xff = "x-forwarded-for";
    let cases: Vec<Case> = vec![
        ("public route", Method::GET, "/health", vec![]),
        (
            "public, spoofed identity",
            Method::GET,
            "/health",
            vec![("x-auth-owner", "evil")],
        ),
        ("no key", Method::GET, "/v1/payments/p1", vec![]),
        (
            "malformed key",
            Method::GET,
            "/v1/payments/p1",
            vec![("authorization", "Bearer sk_live_nope")],
        ),
        (
            "reader reads",
            Method::GET,
            "/v1/payments/p1?expand=x",
            vec![("authorization", &reader)],
        ),
        (
            "reader writes",
            Method::POST,
            "/v1/payments",
            vec![("authorization", &reader)],
        ),
        (
            "writer writes",
            Method::POST,
            "/v1/payments",
            vec![("authorization", &writer)],
        ),
        (
            "publishable writes",
            Method::POST,
            "/v1/payments",
            vec![("authorization", &publishable)],
        ),
        (
            "publishable reads",
            Method::GET,
            "/v1/payments/p1",
            vec![("authorization", &publishable)],
        ),
        (
            "x-api-key carrier",
            Method::POST,
            "/v1/transfers/t1",
            vec![("x-api-key", &transfers)],
        ),
        (
            "wrong carrier",
            Method::POST,
            "/v1/transfers/t1",
            vec![("authorization", &transfers_bearer)],
        ),
        (
            "allowlisted address",
            Method::GET,
            "/v1/payments/p1",
            vec![("authorization", &fenced), (xff, "10.1.2.3")],
        ),
        (
            "address off the allowlist",
            Method::GET,
            "/v1/payments/p1",
            vec![("authorization", &fenced), (xff, "192.0.2.7")],
        ),
        (
            "test key on live",
            Method::GET,
            "/v1/payments/p1",
            vec![("authorization", &test_key)],
        ),
        (
            "revoked key",
            Method::GET,
            "/v1/payments/p1",
            vec![("authorization", &revoked)],
        ),
        (
            "path parameter cannot hold a slash",
            Method::GET,
            "/v1/payments/p1/x",
            vec![("authorization", &reader)],
        ),
        (
            "matrix parameter",
            Method::GET,
            "/v1/pay;x/ments",
            vec![("authorization", &reader)],
        ),
        (
            "dot segment, refused after it resolves",
            Method::GET,
            "/v1/x/../transfers/t1",
            vec![("authorization", &reader)],
        ),
    ];
    for (case, method, target, headers) in &cases {
        for dialect in DIALECTS {
            let proxied = send(method.clone(), &kg.url(target), headers, empty()).await;
            let checked = check(&kg, dialect, method, target, headers).await;
            assert_same(case, dialect, &proxied, &checked);
        }
    }
    let table_hits = up.hits();
    // Spot checks, so agreement is not agreement on nothing.
    assert_eq!(
        status_of(
            &kg,
            Method::GET,
            "/v1/payments/p1",
            &[("authorization", &reader)]
        )
        .await,
        200
    );
    assert_eq!(
        status_of(
            &kg,
            Method::POST,
            "/v1/payments",
            &[("authorization", &reader)]
        )
        .await,
        403
    );
    assert_eq!(
        status_of(&kg, Method::GET, "/v1/payments/p1", &[]).await,
        401
    );
    assert_eq!(
        status_of(
            &kg,
            Method::GET,
            "/v1/payments/p1",
            &[("authorization", &revoked)]
        )
        .await,
        401
    );

    // What the front proxy must remove: the credential, and a client's identity headers.
    let r = check(
        &kg,
        Dialect::Traefik,
        &Method::GET,
        "/v1/payments/p1",
        &[("authorization", &reader), ("x-auth-tenant", "spoof")],
    )
    .await;
    assert_eq!(r.status, 200);
    let remove = r.headers["x-envoy-auth-headers-to-remove"]
        .to_str()
        .unwrap();
    let mut remove: Vec<&str> = remove.split(',').collect();
    remove.sort_unstable();
    assert_eq!(remove, ["authorization", "x-auth-tenant"]);
    assert_eq!(r.headers["x-auth-owner"], "acct_1");
    assert_eq!(r.headers["x-auth-scopes"], "payments:read");
    // What the proxy strips because an upstream could act on it, and a front proxy would pass
    // on, is refused; so is a path the proxy would have forwarded rewritten.
    for (dialect, target, extra) in [
        (
            Dialect::Traefik,
            "/v1/payments/p1",
            ("x-http-method-override", "DELETE"),
        ),
        (Dialect::Nginx, "/v1/payments/p1", ("x_auth_owner", "spoof")),
        (
            Dialect::Envoy,
            "/v1/payments/p1",
            ("x-rewrite-url", "/v1/admin/x"),
        ),
        (
            Dialect::EnvoyGrpc,
            "/v1/payments/p1",
            ("x_forwarded_for", "10.9.9.9"),
        ),
        (Dialect::Traefik, "/v1/payments//p1", ("accept", "*/*")),
        (
            Dialect::EnvoyGrpc,
            "/v1/payments/x/../p1",
            ("accept", "*/*"),
        ),
        (Dialect::Nginx, "/v1/payments/../admin", ("accept", "*/*")),
    ] {
        let headers = [("authorization", reader.as_str()), extra];
        let proxied = send(Method::GET, &kg.url(target), &headers, empty()).await;
        assert_eq!(
            proxied.status, 200,
            "the proxy strips or rewrites: {extra:?} {target}"
        );
        let r = check(&kg, dialect, &Method::GET, target, &headers).await;
        assert_eq!(r.status, 400, "{dialect:?} {extra:?} {target}");
        assert_eq!(r.code(), "bad_request");
    }
    let r = check(
        &kg,
        Dialect::Nginx,
        &Method::GET,
        "/health",
        &[("x-auth-owner", "evil")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-auth-owner").is_none());
    assert_eq!(r.headers["x-envoy-auth-headers-to-remove"], "x-auth-owner");
    assert_eq!(
        table_hits,
        (cases.len() * DIALECTS.len()) as u64 - up_misses(&cases, &kg).await
    );
}

async fn status_of(kg: &Keygate, m: Method, target: &str, h: &[(&str, &str)]) -> u16 {
    check(kg, Dialect::Traefik, &m, target, h)
        .await
        .status
        .as_u16()
}

/// How many of the cases the proxy refused (each was sent once per dialect): the upstream saw
/// every other proxied request and no authorization check at all.
async fn up_misses(cases: &[Case<'_>], kg: &Keygate) -> u64 {
    let mut refused = 0;
    for (_, method, target, headers) in cases {
        // Asked again on the authorization listener only: no upstream traffic.
        let r = check(kg, Dialect::Envoy, method, target, headers).await;
        if !r.status.is_success() {
            refused += DIALECTS.len() as u64;
        }
    }
    refused
}

#[tokio::test]
async fn limits_are_shared_and_a_denial_carries_the_proxys_headers() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), CONFIG).await;
    let key = bearer(
        &mint_with(&kg, KeyType::Secret, &["payments:read"], |r| {
            r.rate_limit = Some(KeyRateLimit::Explicit {
                limit: 3,
                window_secs: 60,
            });
        })
        .await,
    );
    let h = [("authorization", key.as_str())];
    let target = "/v1/payments/p1";
    // One budget for both listeners: proxy, check, proxy pass; then both refuse alike.
    assert_eq!(
        send(Method::GET, &kg.url(target), &h, empty()).await.status,
        200
    );
    let ok = check(&kg, Dialect::Traefik, &Method::GET, target, &h).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["ratelimit-limit"], "3");
    assert_eq!(ok.headers["ratelimit-remaining"], "1");
    assert_eq!(
        send(Method::GET, &kg.url(target), &h, empty()).await.status,
        200
    );
    let proxied = send(Method::GET, &kg.url(target), &h, empty()).await;
    let checked = check(&kg, Dialect::Traefik, &Method::GET, target, &h).await;
    assert_eq!(proxied.status, 429);
    assert_same("over the limit", Dialect::Traefik, &proxied, &checked);
    assert_eq!(checked.code(), "rate_limited");
    assert!(checked.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn only_trusted_peers_are_answered_and_ambiguity_is_refused() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), CONFIG).await;
    let (key, _) = kg.live_key().await;
    let auth = bearer(&key);
    let addr = kg.authz_addr.unwrap();
    // A peer outside ip.trusted_proxies may not say which request it asks about.
    let r = get_from(
        "127.0.0.9".parse().unwrap(),
        &format!("http://{addr}/auth"),
        &[("authorization", &auth), ("x-forwarded-uri", "/health")],
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "ip_not_allowed");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("trusted")
    );

    let url = format!("http://{addr}/auth");
    for (why, headers) in [
        (
            "two dialects disagree",
            vec![
                ("x-forwarded-uri", "/health"),
                ("x-original-uri", "/v1/payments/p1"),
            ],
        ),
        (
            "sent twice",
            vec![
                ("x-forwarded-uri", "/health"),
                ("x-forwarded-uri", "/health"),
            ],
        ),
        ("not a target", vec![("x-forwarded-uri", "*")]),
        ("empty target", vec![("x-forwarded-uri", "")]),
        (
            "authority form",
            vec![("x-forwarded-uri", "example.com:443")],
        ),
        (
            "not a method",
            vec![
                ("x-forwarded-uri", "/health"),
                ("x-forwarded-method", "GE T"),
            ],
        ),
    ] {
        let mut h = headers.clone();
        h.push(("authorization", &auth));
        let r = send(Method::GET, &url, &h, empty()).await;
        assert_eq!(r.status, 400, "{why}");
        assert_eq!(r.code(), "bad_request", "{why}");
    }
    // Agreeing dialects, and an absolute-form target (its path is what counts), as
    // ingress-nginx sends it.
    let get = ("x-original-method", "GET");
    for headers in [
        vec![
            get,
            ("x-forwarded-uri", "/health"),
            ("x-original-uri", "/health"),
        ],
        vec![get, ("x-original-uri", "http://api.example.com/health")],
        vec![
            get,
            ("x-original-url", "https://api.example.com/health"),
            ("x-original-uri", "/health"),
        ],
        // What Traefik and ingress-nginx add of their own: never refused.
        vec![
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/health"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api.example.com"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-server", "traefik-7c9f"),
            ("x-real-ip", "192.0.2.1"),
        ],
        vec![
            get,
            ("x-original-url", "https://api.example.com/health"),
            ("x-sent-from", "nginx-ingress-controller"),
            ("x-auth-request-redirect", "/health"),
            ("x-forwarded-scheme", "https"),
        ],
    ] {
        let r = send(Method::GET, &url, &headers, empty()).await;
        assert_eq!(r.status, 200, "{headers:?}");
    }
    // On authz.check_path the original method and URI must be named; anywhere else (Envoy's
    // shape) naming one is a client trying to have another path decided.
    let (key_h, uri_h) = (
        ("authorization", auth.as_str()),
        ("x-original-uri", "/health"),
    );
    for headers in [vec![key_h], vec![key_h, uri_h], vec![key_h, get]] {
        let r = send(Method::GET, &url, &headers, empty()).await;
        assert_eq!(r.status, 400, "{headers:?}");
        let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains("must name the original method and URI"),
            "{message}"
        );
    }
    let admin = format!("http://{addr}/v1/payments/p1");
    let r = send(Method::GET, &admin, &[uri_h], empty()).await;
    assert_eq!(
        r.status, 400,
        "an injected X-Original-URI is refused, not believed"
    );
    let r = send(
        Method::GET,
        &admin,
        &[("x-forwarded-method", "GET")],
        empty(),
    )
    .await;
    assert_eq!(r.status, 400);
    let r = send(Method::GET, &admin, &[], empty()).await;
    assert_eq!(r.status, 401, "the check's own path is what is decided");
    // Through nginx, a client's own X-Forwarded-Uri disagrees with nginx's X-Original-URI.
    let r = send(
        Method::GET,
        &url,
        &[
            key_h,
            ("x-original-uri", "/v1/payments/p1"),
            ("x-forwarded-uri", "/health"),
        ],
        empty(),
    )
    .await;
    assert_eq!(r.status, 400);

    // CONNECT is never authorised through the endpoint.
    let r = send(
        Method::GET,
        &url,
        &[
            ("authorization", &auth),
            ("x-forwarded-method", "CONNECT"),
            ("x-forwarded-uri", "/"),
        ],
        empty(),
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(
        up.hits(),
        0,
        "an authorization check never reaches the upstream"
    );
}

#[tokio::test]
async fn auth_only_mode_needs_no_upstream_and_strips_envoys_path_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("keys.json");
    // No [upstream] at all: nothing is forwarded in auth-only mode.
    let toml = format!(
        "[authz]\nmode = \"authz\"\npath_prefix = \"/ext\"\n[ip]\ntrusted_proxies = [\"127.0.0.1\"]\n\
         [store]\npath = {:?}\n",
        store.display().to_string()
    );
    let config = keygate::config::Config::from_toml(&toml, Vec::new(), |_| None).unwrap();
    let server = keygate::server::Server::new(&config).unwrap();
    let tool = keygate::manage::KeyTool::with_store(server.store(), &config).unwrap();
    let authz = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = authz.local_addr().unwrap();
    let server = server.with_authz_listener(authz);
    let task = tokio::spawn(server.serve(None, ops, std::future::pending()));
    let (key, _) = tool
        .create(
            keygate::store::NewRecord {
                scopes: vec!["all".into()],
                ..keygate::store::NewRecord::new(
                    "acct_9",
                    keygate::key::Environment::Live,
                    KeyType::Secret,
                )
            },
            "test",
        )
        .await
        .unwrap();
    let auth = bearer(&key.key);
    let r = get(
        &format!("http://{addr}/ext/v1/anything?x=1"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-auth-owner"], "acct_9");
    let r = get(&format!("http://{addr}/ext"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    let r = get(
        &format!("http://{addr}/v1/anything"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(
        r.status, 400,
        "a path outside the prefix is not Envoy's check"
    );
    let r = get(&format!("http://{addr}/ext/v1/anything"), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "unauthorized");
    task.abort();
}

/// nginx on PATH (or in /usr/sbin); `tests/run.sh` installs it.
fn nginx_binary() -> std::path::PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/sbin"])
    {
        let p = std::path::Path::new(dir).join("nginx");
        if p.is_file() {
            return p;
        }
    }
    panic!("nginx is not installed: run the tests with tests/run.sh, or apt-get install nginx");
}

/// A real nginx running the shipped `deploy/authz/nginx.conf`; killed on drop.
struct Nginx {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(keygate: std::net::SocketAddr, upstream: &str) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/authz/nginx.conf"),
        )
        .unwrap();
        let server = shipped
            .replace("KEYGATE", &keygate.to_string())
            .replace("LISTEN", &port.to_string())
            .replace("http://UPSTREAM", upstream);
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n access_log off;\n client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n scgi_temp_path {d}/scgi;\n{server}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let mut child = std::process::Command::new(nginx_binary())
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        for _ in 0..200 {
            if std::net::TcpStream::connect(port).is_ok() {
                return Nginx {
                    child,
                    addr: port,
                    _dir: dir,
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        panic!("nginx did not start:\n{log}");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn nginx_auth_request_in_front_of_an_upstream() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), CONFIG).await;
    let nginx = Nginx::start(kg.authz_addr.unwrap(), &up.url());
    let reader = mint_with(&kg, KeyType::Secret, &["payments:read"], |r| {
        r.rate_limit = Some(KeyRateLimit::Explicit {
            limit: 2,
            window_secs: 60,
        });
    })
    .await;
    let auth = bearer(&reader);

    // Allowed: the upstream gets the identity keygate vouches for, never the key.
    let r = get(
        &nginx.url("/v1/payments/p1?x=1"),
        &[("authorization", &auth), ("x-auth-owner", "evil")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.upstream_header("x-auth-owner").as_deref(), Some("acct_1"));
    assert_eq!(
        r.upstream_header("x-auth-scopes").as_deref(),
        Some("payments:read")
    );
    assert!(
        r.upstream_header("x-auth-key-id")
            .unwrap()
            .starts_with("key_")
    );
    assert_eq!(r.upstream_header("authorization"), None);
    assert_eq!(r.json()["path"], "/v1/payments/p1");
    assert_eq!(r.json()["query"], "x=1");
    assert_eq!(r.headers["ratelimit-limit"], "2");

    // Public: no identity at all, and the client's spoofed one is gone.
    let r = get(&nginx.url("/health"), &[("x-auth-owner", "evil")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_header("x-auth-owner"), None);

    // Refused: the status, JSON body and headers keygate's proxy sends.
    for (headers, status, code) in [
        (vec![], 401, "unauthorized"),
        (
            vec![("authorization", "Bearer sk_live_nope")],
            401,
            "invalid_key",
        ),
    ] {
        let via_nginx = get(&nginx.url("/v1/payments/p1"), &headers).await;
        let direct = get(&kg.url("/v1/payments/p1"), &headers).await;
        assert_eq!(via_nginx.status, status);
        assert_eq!(via_nginx.status, direct.status);
        assert_eq!(scrubbed(&via_nginx), scrubbed(&direct));
        assert_eq!(via_nginx.code(), code);
        assert_eq!(
            via_nginx.headers.get("www-authenticate"),
            direct.headers.get("www-authenticate")
        );
    }
    let r = send(
        Method::POST,
        &nginx.url("/v1/payments"),
        &[("authorization", &auth)],
        empty(),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.code(), "insufficient_scope");

    // Over the limit: nginx alone would say 500; the replay says 429 with its headers.
    let r = get(&nginx.url("/v1/payments/p2"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200);
    let r = get(&nginx.url("/v1/payments/p3"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.code(), "rate_limited");
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(r.headers["ratelimit-remaining"], "0");
    let hits = up.hits();
    assert_eq!(hits, 3, "only the allowed requests reached the upstream");

    // keygate gone: nginx fails closed.
    drop(kg);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let r = get(&nginx.url("/v1/payments/p1"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.code(), "auth_unavailable");
    assert_eq!(up.hits(), hits);
}

#[tokio::test]
async fn grpc_check_answers_in_envoys_terms() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), CONFIG).await;
    let addr = kg.authz_addr.unwrap();
    let key = bearer(
        &mint_with(&kg, KeyType::Secret, &["payments:read"], |r| {
            r.rate_limit = Some(KeyRateLimit::Explicit {
                limit: 1,
                window_secs: 60,
            });
        })
        .await,
    );
    let h = [("authorization", key.as_str()), ("x-auth-owner", "evil")];
    let ok = grpc_check(addr, &Method::GET, "/v1/payments/p1", &h).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["x-auth-owner"], "acct_1");
    assert_eq!(ok.headers["ratelimit-limit"], "1");
    assert_eq!(
        ok.headers["x-envoy-auth-headers-to-remove"],
        "authorization"
    );
    let over = grpc_check(addr, &Method::GET, "/v1/payments/p1", &h).await;
    assert_eq!(over.status, 429);
    assert_eq!(over.code(), "rate_limited");
    assert!(over.headers.contains_key("retry-after"));
    assert_eq!(over.headers["content-type"], "application/json");
    assert!(
        !over.headers.contains_key("x-keygate-body"),
        "the body travels as the body"
    );

    // Not a CheckRequest, or compressed: a gRPC error in the trailers, not a decision.
    for (message, status) in [
        (&b"\x00\x00\x00\x00\x09not proto"[..], "3"),
        (&b"\x00\x00\x00\x00\x05"[..], "3"),
        (&b"\x01\x00\x00\x00\x00"[..], "12"),
    ] {
        let (head, trailers) = h2_call(addr, message).await;
        assert_eq!(head.status, 200);
        assert_eq!(trailers["grpc-status"], status, "{message:?}");
    }
    assert_eq!(up.hits(), 0);
}

/// One raw gRPC call over h2c: the response head and its trailers.
async fn h2_call(
    addr: std::net::SocketAddr,
    message: &[u8],
) -> (http::response::Parts, http::HeaderMap) {
    use http_body_util::BodyExt as _;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!(
        "http://{addr}/envoy.service.auth.v3.Authorization/Check"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
        message,
    )))
    .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    (parts, collected.trailers().cloned().unwrap_or_default())
}
