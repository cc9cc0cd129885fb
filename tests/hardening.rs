//! Edge hardening through real sockets: connection caps and first-request/idle deadlines under
//! a slow-connection flood (HTTP/1 and HTTP/2 forms), path forms refused unless allowed,
//! path-override and underscore headers, Host and Transfer-Encoding screening, client body
//! faults that are the client's (400/408, never an upstream error), head size limits on both
//! protocols and the opt-in Basic carrier.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use http::Method;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate::key::{Environment, KeyType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn status_of(text: &str) -> Option<u16> {
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// The JSON `code` of a raw response (the default error layout), if it has a JSON body.
fn code_of(text: &str) -> Option<String> {
    let body = text.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    v["error"]["code"]
        .as_str()
        .or(v["code"].as_str())
        .map(str::to_owned)
}

/// This process's soft open-file limit (`.ci/run` raises it to the hard limit first; the flood
/// below needs ~2,000 descriptors for 1,000 connections and shrinks to fit a lower limit).
fn nofile() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            let line = t
                .lines()
                .find(|l| l.starts_with("Max open files"))?
                .to_owned();
            line.split_whitespace().nth(3)?.parse().ok()
        })
        .unwrap_or(1024)
}

fn metric(kg: &Keygate, line: &str) -> u64 {
    let text = kg.metrics.render(0);
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_connection_flood_is_capped_and_closed_while_others_are_served() {
    let limit = nofile();
    let n: usize = if limit >= 2600 {
        1000
    } else {
        ((limit as usize).saturating_sub(300) / 2).max(100)
    };
    let up = Upstream::start().await;
    let kg = Keygate::start(
        &up.url(),
        "[listen]\nheader_read_timeout = \"1s\"\nmax_connections_per_ip = 200\n",
    )
    .await;
    let (key, _) = kg.live_key().await;
    let other: IpAddr = "127.0.0.2".parse().unwrap();
    let r = get_from(other, &kg.url("/warm"), &[("x-api-key", &key)]).await;
    assert_eq!(r.status, 200);

    // Four kinds of never-finishing connection: silent, half an HTTP/1 head, half the HTTP/2
    // preface, and the preface with SETTINGS and a HEADERS frame that never ends its block.
    let mut h2_open = PREFACE.to_vec();
    h2_open.extend(frame(0x4, 0, 0, &[]));
    h2_open.extend(frame(0x1, 0, 1, &[0x82, 0x86, 0x84]));
    let forms: [&[u8]; 4] = [
        b"",
        b"GET / HTTP/1.1\r\nHost: x\r\n",
        b"PRI * HTTP/2.0\r\n",
        &h2_open,
    ];
    let started = Instant::now();
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = TcpStream::connect(kg.addr).await.unwrap();
        let _ = s.write_all(forms[i % 4]).await;
        conns.push((Instant::now(), s));
    }
    let opened = started.elapsed();

    // Meanwhile another client is served.
    for i in 0..20 {
        let r = get_from(
            other,
            &kg.url(&format!("/during/{i}")),
            &[("x-api-key", &key)],
        )
        .await;
        assert_eq!(
            r.status, 200,
            "a legitimate client was refused during the flood"
        );
    }

    // Every flood connection is closed by keygate: refused at once or closed at the deadline.
    let waits: Vec<_> = conns
        .into_iter()
        .map(|(at, mut s)| {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let deadline = at + Duration::from_secs(6);
                loop {
                    match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return Some(at.elapsed()),
                        Ok(Ok(_)) => continue,
                        Err(_) => return None,
                    }
                }
            })
        })
        .collect();
    let mut closed = Vec::with_capacity(n);
    for w in waits {
        closed.push(w.await.unwrap());
    }
    let open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        open, 0,
        "{open} of {n} slow connections still open after 6 s"
    );
    let slowest = closed.iter().flatten().max().copied().unwrap();
    assert!(
        slowest < Duration::from_secs(4),
        "slowest close {slowest:?}"
    );

    let refused = metric(
        &kg,
        "keygate_connections_refused_total{reason=\"max_connections_per_ip\"}",
    );
    let timed_out = metric(
        &kg,
        "keygate_connections_closed_total{reason=\"first_request_timeout\"}",
    );
    assert_eq!(
        refused + timed_out,
        n as u64,
        "refused {refused}, timed out {timed_out}"
    );
    if opened < Duration::from_millis(900) {
        // All opened inside one deadline: only the cap's worth can have been admitted.
        assert!(timed_out <= 200, "timed out {timed_out} > the per-IP cap");
    }
    assert!(
        refused > 0,
        "the per-IP cap never refused (opened in {opened:?})"
    );
    assert_eq!(up.hits(), 21, "a slow connection reached the upstream");
    let deadline = Instant::now() + Duration::from_secs(3);
    while metric(&kg, "keygate_connections_open") > 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(&kg, "keygate_connections_open") <= 2);
}

#[tokio::test]
async fn idle_connections_close_after_idle_timeout_on_both_protocols() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "[listen]\nidle_timeout = \"1s\"\n").await;
    let (key, _) = kg.live_key().await;

    // HTTP/1.1: two requests on one connection (keep-alive works), then silence.
    let mut s = TcpStream::connect(kg.addr).await.unwrap();
    let req = format!("GET /a HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\n\r\n");
    for _ in 0..2 {
        s.write_all(req.as_bytes()).await.unwrap();
        let text = read_all(&mut s, Duration::from_millis(300)).await;
        assert_eq!(status_of(&text), Some(200), "{text}");
    }
    let quiet_from = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("an idle HTTP/1.1 connection was kept past idle_timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(quiet_from.elapsed() >= Duration::from_millis(500));

    // HTTP/2: one request, then the connection ends on its own (GOAWAY and close).
    let stream = TcpStream::connect(kg.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(kg.url("/b"))
        .header("x-api-key", &key)
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("an idle HTTP/2 connection was kept past idle_timeout")
        .unwrap()
        .ok();
    assert!(
        metric(
            &kg,
            "keygate_connections_closed_total{reason=\"idle_timeout\"}"
        ) >= 2
    );
}

/// Path forms refused by default, each named by its `[paths] allow` entry.
const PATH_VECTORS: &[(&str, &str)] = &[
    ("semicolons", "/public/..;/admin"),
    ("semicolons", "/admin;x=1/users"),
    ("semicolons", "/a%3Bb"),
    ("encoded_delimiters", "/a%3Fb"),
    ("encoded_delimiters", "/a%23b"),
    ("double_encoding", "/a/%252e%252e/admin"),
    ("double_encoding", "/a/%25%32%65"),
    ("encoded_controls", "/a%01b"),
    ("encoded_controls", "/a%0d%0aX-Injected:%201"),
    ("trailing_dots", "/admin./users"),
    ("trailing_dots", "/admin%20/users"),
    ("invalid_utf8", "/a%c0%aeb"),
    ("invalid_utf8", "/a%ffb"),
    ("invalid_utf8", "/a/%e0%80%ae%e0%80%ae/admin"),
    ("invalid_utf8", "/a/..%c0%afadmin"),
];

#[tokio::test]
async fn path_forms_are_refused_unless_allowed() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    for (form, path) in PATH_VECTORS {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\n\r\n");
        let text = raw(kg.addr, req.as_bytes(), Duration::from_millis(300)).await;
        assert_eq!(status_of(&text), Some(400), "{form} {path}: {text}");
        assert_eq!(
            code_of(&text).as_deref(),
            Some("bad_request"),
            "{path}: {text}"
        );
    }
    // NUL is refused whatever is allowed.
    let req = format!("GET /a%00b HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\n\r\n");
    let text = raw(kg.addr, req.as_bytes(), Duration::from_millis(300)).await;
    assert_eq!(status_of(&text), Some(400), "{text}");
    // Raw bytes above 0x7f: refused (by hyper's parser or by keygate), never forwarded.
    let mut req = b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\nX-Api-Key: ".to_vec();
    req.extend_from_slice(key.as_bytes());
    req.extend_from_slice(b"\r\n\r\n");
    let text = raw(kg.addr, &req, Duration::from_millis(300)).await;
    assert_eq!(status_of(&text), Some(400), "{text}");
    assert_eq!(up.hits(), 0, "a refused path form reached the upstream");

    // With every form allowed, the same paths are forwarded as sent.
    let allow = "[paths]\nallow = [\"semicolons\", \"encoded_delimiters\", \"double_encoding\", \
                 \"encoded_controls\", \"trailing_dots\", \"raw_non_ascii\", \"invalid_utf8\"]\n";
    let kg = Keygate::start(&up.url(), allow).await;
    let (key, _) = kg.live_key().await;
    for (form, path) in PATH_VECTORS {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\n\r\n");
        let text = raw(kg.addr, req.as_bytes(), Duration::from_millis(300)).await;
        assert_eq!(
            status_of(&text),
            Some(200),
            "{form} allowed, {path}: {text}"
        );
    }
    assert_eq!(up.hits(), PATH_VECTORS.len() as u64);
    // An unknown form name is a configuration error that names the choices.
    let Err(err) = keygate::config::Config::from_toml(
        &Keygate::config_text(&up.url(), "", "[paths]\nallow = [\"semicolon\"]\n"),
        Vec::new(),
        |_| None,
    ) else {
        panic!("an unknown path form was accepted");
    };
    let err = err.to_string();
    assert!(err.contains("semicolons"), "{err}");
}

#[tokio::test]
async fn case_insensitive_routes_forward_the_canonical_path_and_keep_scopes() {
    let up = Upstream::start().await;
    let routes = "[[routes]]\nname = \"pay\"\nmethods = [\"POST\"]\npath = \"/v1/payments/{id}\"\n\
                  scope = \"payments:write\"\n\n[[routes]]\nname = \"rest\"\npath = \"/*\"\nscope = \"general\"\n";
    let kg = Keygate::start(
        &up.url(),
        &format!("[paths]\ncase_insensitive = true\n{routes}"),
    )
    .await;
    let (reader, _) = kg
        .mint(Environment::Live, KeyType::Secret, &["general"])
        .await;
    let (payer, _) = kg
        .mint(Environment::Live, KeyType::Secret, &["payments:write"])
        .await;
    let url = kg.url("/V1/Payments/Pay_1");
    let r = send(Method::POST, &url, &[("x-api-key", &reader)], empty()).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (403, "insufficient_scope")
    );
    let r = send(Method::POST, &url, &[("x-api-key", &payer)], empty()).await;
    assert_eq!(r.status, 200);
    // Literal segments take the route's case; the parameter keeps the client's.
    assert_eq!(r.json()["path"], "/v1/payments/Pay_1");

    // Without the setting the differently-cased path is another route.
    let kg = Keygate::start(&up.url(), routes).await;
    let (reader, _) = kg
        .mint(Environment::Live, KeyType::Secret, &["general"])
        .await;
    let r = send(
        Method::POST,
        &kg.url("/V1/Payments/Pay_1"),
        &[("x-api-key", &reader)],
        empty(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["path"], "/V1/Payments/Pay_1");
}

#[tokio::test]
async fn override_and_underscore_headers_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    let smuggled = [
        ("x-original-url", "/admin"),
        ("x-rewrite-url", "/admin"),
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-uri", "/admin"),
        ("true-client-ip", "10.0.0.1"),
        ("x-client-ip", "10.0.0.1"),
        ("x_auth_owner", "admin"),
        ("x_custom", "1"),
    ];
    let mut headers = vec![("x-api-key", key.as_str()), ("x-kept", "yes")];
    headers.extend(smuggled);
    let r = get(&kg.url("/h"), &headers).await;
    assert_eq!(r.status, 200);
    for (name, _) in smuggled {
        assert_eq!(r.upstream_header(name), None, "{name} reached the upstream");
    }
    assert_eq!(r.upstream_header("x-kept").as_deref(), Some("yes"));

    let kg = Keygate::start(&up.url(), "[listen]\nunderscore_headers = \"refuse\"\n").await;
    let (key, _) = kg.live_key().await;
    let hits = up.hits();
    let r = get(&kg.url("/h"), &[("x-api-key", &key), ("x_custom", "1")]).await;
    assert_eq!((r.status.as_u16(), r.code().as_str()), (400, "bad_request"));
    assert_eq!(up.hits(), hits);
}

#[tokio::test]
async fn host_and_transfer_coding_screening() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    let cases = [
        (
            format!("GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-Api-Key: {key}\r\n\r\n"),
            400,
            "bad_request",
        ),
        (
            format!("GET /a HTTP/1.1\r\nX-Api-Key: {key}\r\n\r\n"),
            400,
            "bad_request",
        ),
        (
            format!("GET http://a/x HTTP/1.1\r\nHost: b\r\nX-Api-Key: {key}\r\n\r\n"),
            400,
            "bad_request",
        ),
        (
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
            ),
            501,
            "not_implemented",
        ),
    ];
    for (req, status, code) in &cases {
        let text = raw(kg.addr, req.as_bytes(), Duration::from_millis(300)).await;
        assert_eq!(status_of(&text), Some(*status), "{req:?}: {text}");
        assert_eq!(code_of(&text).as_deref(), Some(*code), "{req:?}: {text}");
    }
    assert_eq!(up.hits(), 0, "a screened request reached the upstream");
    // HTTP/1.0 needs no Host; absolute-form matching its Host is fine.
    for req in [
        format!("GET /a HTTP/1.0\r\nX-Api-Key: {key}\r\n\r\n"),
        format!(
            "GET http://x/a HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let text = raw(kg.addr, req.as_bytes(), Duration::from_millis(300)).await;
        assert!(
            text.starts_with("HTTP/1.") && text[9..].starts_with("200"),
            "{req:?}: {text}"
        );
    }
}

#[tokio::test]
async fn client_body_faults_are_the_clients_not_the_upstreams() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "[listen]\nbody_read_timeout = \"1s\"\n").await;
    let (key, _) = kg.live_key().await;
    let head = format!("POST /a HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\n");
    let chunked = [
        "zz\r\nhello\r\n0\r\n\r\n",
        "ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        "5\r\nhelloXX\r\n0\r\n\r\n",
    ];
    for body in chunked {
        let req = format!("{head}Transfer-Encoding: chunked\r\n\r\n{body}");
        let text = raw(kg.addr, req.as_bytes(), Duration::from_millis(500)).await;
        let status = status_of(&text);
        assert!(status == Some(400) || status.is_none(), "{body:?}: {text}");
    }
    // Bare LF line ends in chunked framing are refused like any malformed chunk.
    let req = format!("{head}Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n");
    let text = raw(kg.addr, req.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(status_of(&text), Some(400), "{text}");
    // A body shorter than its Content-Length, then the client stops sending.
    let mut s = TcpStream::connect(kg.addr).await.unwrap();
    s.write_all(format!("{head}Content-Length: 10\r\n\r\nabc").as_bytes())
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let text = read_all(&mut s, Duration::from_secs(3)).await;
    let status = status_of(&text);
    assert!(status == Some(400) || status.is_none(), "{text}");

    // A body that stalls: 408 after body_read_timeout.
    let mut s = TcpStream::connect(kg.addr).await.unwrap();
    s.write_all(format!("{head}Content-Length: 100\r\n\r\n0123456789").as_bytes())
        .await
        .unwrap();
    let started = Instant::now();
    let text = read_all(&mut s, Duration::from_secs(4)).await;
    assert_eq!(status_of(&text), Some(408), "{text}");
    assert_eq!(code_of(&text).as_deref(), Some("request_timeout"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(
        kg.metrics.upstream_errors.load(Ordering::SeqCst),
        0,
        "a client's body fault was counted against the upstream"
    );

    // A GET with a body is forwarded with it.
    let req =
        format!("GET /g HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Length: 5\r\n\r\nhello");
    let text = raw(kg.addr, req.as_bytes(), Duration::from_millis(300)).await;
    assert_eq!(status_of(&text), Some(200), "{text}");
    assert!(text.contains("\"body_bytes\": 5"), "{text}");
}

#[tokio::test]
async fn one_head_limit_on_both_protocols() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    let h2: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let request = |size: usize| {
        http::Request::get(kg.url("/big"))
            .header("x-api-key", &key)
            .header("x-big", "a".repeat(size))
            .body(empty())
            .unwrap()
    };
    // 40 KiB of headers: fine on both.
    let r = client().request(request(40 * 1024)).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = h2.request(request(40 * 1024)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_2);
    let hits = up.hits();
    // 70 KiB: over the 64 KiB default on both.
    let r = client().request(request(70 * 1024)).await;
    assert!(
        matches!(&r, Ok(r) if r.status() == 431) || r.is_err(),
        "{r:?}"
    );
    let r = h2.request(request(70 * 1024)).await;
    assert!(
        matches!(&r, Ok(r) if r.status() == 431) || r.is_err(),
        "HTTP/2 accepted a 70 KiB head: {r:?}"
    );
    assert_eq!(up.hits(), hits, "an oversized head reached the upstream");
}

#[tokio::test]
async fn basic_carrier_is_opt_in_and_foreign_basic_is_forwarded() {
    let up = Upstream::start().await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let kg = Keygate::start(
        &up.url(),
        "[auth]\ncarriers = [\"bearer\", \"x-api-key\", \"basic\"]\n",
    )
    .await;
    let (key, _) = kg.live_key().await;
    let basic = format!("Basic {}", b64(&format!("{key}:")));
    let r = get(&kg.url("/b"), &[("authorization", &basic)]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.upstream_header("authorization"),
        None,
        "the key was forwarded"
    );
    // A password beside the key is not a key.
    let with_password = format!("Basic {}", b64(&format!("{key}:secret")));
    let r = get(&kg.url("/b"), &[("authorization", &with_password)]).await;
    assert_eq!(r.status, 401);
    assert!(!String::from_utf8_lossy(&r.body).contains(&key));
    let r = get(&kg.url("/b"), &[]).await;
    let challenge: Vec<_> = r.headers.get_all("www-authenticate").iter().collect();
    assert!(
        challenge
            .iter()
            .any(|v| v.to_str().unwrap().starts_with("Basic")),
        "{challenge:?}"
    );

    // Off by default: a Basic credential for the upstream's own use goes through beside an
    // X-Api-Key, and alone it is not taken for a key.
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    let theirs = format!("Basic {}", b64("user:pass"));
    let r = get(
        &kg.url("/b"),
        &[("x-api-key", &key), ("authorization", &theirs)],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("authorization").as_deref(),
        Some(theirs.as_str())
    );
    let r = get(
        &kg.url("/b"),
        &[(
            "authorization",
            &format!("Basic {}", b64(&format!("{key}:"))),
        )],
    )
    .await;
    assert_eq!(r.status, 401);
}
