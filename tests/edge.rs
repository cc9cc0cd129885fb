//! Edge protocol behaviour: upgrades (WebSocket-style tunnels), Expect: 100-continue, CONNECT,
//! HTTP/2 end to end with trailers, signed identity, trace headers and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Keygate, Upstream, bearer, get};
use http::Request;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads from `s` until `needle` appears (or the peer closes / 3 s pass); returns all read.
async fn read_until(s: &mut TcpStream, needle: &str) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !String::from_utf8_lossy(&buf).contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// Connects, sends `request`, and reads the response head (or what came within 3 s).
async fn exchange(addr: std::net::SocketAddr, request: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let head = read_until(&mut s, "\r\n\r\n").await;
    (s, head)
}

/// Echoes what arrives, upper-cased, until the peer closes.
async fn shout_back(mut s: TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if s.write_all(&buf[..n].to_ascii_uppercase()).await.is_err() {
            return;
        }
    }
}

/// A raw upstream that switches to any protocol it is asked for (`Upgrade: websocket`, and a
/// lenient `h2c` too) and then echoes bytes upper-cased; any other request gets `200 plain:<head
/// had http2-settings>`.
async fn upgrade_upstream() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                loop {
                    let head = read_until(&mut s, "\r\n\r\n").await;
                    if head.is_empty() {
                        return;
                    }
                    let lower = head.to_ascii_lowercase();
                    if let Some(proto) = ["websocket", "h2c"]
                        .into_iter()
                        .find(|p| lower.contains(&format!("upgrade: {p}")))
                    {
                        s.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {proto}\r\n\r\n").as_bytes())
                            .await
                            .unwrap();
                        return shout_back(s).await;
                    }
                    let body = format!("plain:{}", lower.contains("http2-settings"));
                    s.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await
                    .unwrap();
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn authenticated_upgrades_become_tunnels() {
    let up = upgrade_upstream().await;
    let kg = Keygate::start(&up, "").await;
    let (key, _) = kg.live_key().await;

    let (mut s, head) = exchange(kg.addr, &format!("GET /ws HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"));
    for msg in ["hello", "again, both ways"] {
        s.write_all(msg.as_bytes()).await.unwrap();
        let got = read_until(&mut s, &msg.to_uppercase()).await;
        assert_eq!(got, msg.to_uppercase());
    }
    drop(s);

    // Without a key the upgrade is refused like any request, and nothing is tunnelled.
    let (_, head) = exchange(
        kg.addr,
        "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}

#[tokio::test]
async fn an_upgrade_answered_without_101_is_no_tunnel() {
    let up = Upstream::start().await; // answers everything with 200
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    let (mut s, first) = exchange(kg.addr, &format!("GET /ws HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n")).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The connection still speaks HTTP: a request without a key is parsed and refused.
    let _ = read_until(&mut s, "}").await;
    s.write_all(b"GET /after HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let second = read_until(&mut s, "unauthorized").await;
    assert!(second.contains("HTTP/1.1 401"), "{second}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn expect_100_continue_only_after_authentication() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;

    let (_, head) = exchange(
        kg.addr,
        "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 401"),
        "no 100 before authentication: {head}"
    );

    let (mut s, interim) = exchange(kg.addr, &format!("POST /upload HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    s.write_all(b"hello").await.unwrap();
    let resp = read_until(&mut s, "}").await;
    assert!(resp.contains("HTTP/1.1 200"), "{resp}");
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn connect_is_refused() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    let (_, head) = exchange(kg.addr, &format!("CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\nauthorization: Bearer {key}\r\n\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert_eq!(up.hits(), 0);
}

/// h2c client → keygate → HTTP/2 upstream that sends trailers: the trailers arrive.
#[tokio::test]
async fn http2_end_to_end_keeps_trailers() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let version = format!(
                            "{:?};te={}",
                            req.version(),
                            req.headers()
                                .get("te")
                                .map_or("-", |v| v.to_str().unwrap_or("?"))
                        );
                        let frames = vec![
                            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(version))),
                            Ok(Frame::trailers({
                                let mut t = http::HeaderMap::new();
                                t.insert("grpc-status", "0".parse().unwrap());
                                t
                            })),
                        ];
                        Ok::<_, std::convert::Infallible>(http::Response::new(StreamBody::new(
                            futures_util::stream::iter(frames),
                        )))
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let kg = Keygate::start_with_upstream(&up, "http2 = true\n", "").await;
    let (key, _) = kg.live_key().await;

    let tcp = TcpStream::connect(kg.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get(format!("http://{}/rpc", kg.addr))
                .header("authorization", bearer(&key))
                .header("te", "trailers")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(
        collected.to_bytes(),
        "HTTP/2.0;te=trailers",
        "TE: trailers is kept (gRPC)"
    );
}

#[tokio::test]
async fn signed_identity_verifies_with_the_documented_recipe() {
    use hmac::Mac;
    let dir = tempfile::tempdir().unwrap();
    let secret = "0123456789abcdef0123456789abcdef-signing";
    let key_file = dir.path().join("signing.key");
    std::fs::write(&key_file, secret).unwrap();
    let up = Upstream::start().await;
    let kg = Keygate::start(
        &up.url(),
        &format!(
            "[auth]\nsigning_key_file = {:?}\n",
            key_file.display().to_string()
        ),
    )
    .await;
    let (key, id) = kg.live_key().await;
    let r = get(
        &kg.url("/v1/charges?limit=3"),
        &[
            ("authorization", &bearer(&key)),
            ("x-auth-signature", "t=1,v1=forged"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    let h = &r.json()["headers"];
    let sig = h["x-auth-signature"].as_str().unwrap();
    assert_ne!(
        sig, "t=1,v1=forged",
        "a client's signature never reaches the upstream"
    );
    // The recipe from the README, written out independently.
    let (t, v1) = sig.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let message = format!(
        "v1\n{t}\n{}\n{}\n{}\nGET\n/v1/charges?limit=3",
        h["x-auth-key-id"].as_str().unwrap(),
        h["x-auth-owner"].as_str().unwrap(),
        h["x-auth-scopes"].as_str().unwrap(),
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(v1, expected);
    assert_eq!(h["x-auth-key-id"], id.as_str());
    let age = keygate::time::Timestamp::now().unix() - t.parse::<u64>().unwrap();
    assert!(age < 5);
}

#[tokio::test]
async fn trace_headers_pass_and_metrics_count_by_route_and_outcome() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, id) = kg.live_key().await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = get(
        &kg.url("/a"),
        &[
            ("authorization", &bearer(&key)),
            ("traceparent", tp),
            ("x-request-id", "req-abc"),
        ],
    )
    .await;
    assert_eq!(r.json()["headers"]["traceparent"], tp);
    assert_eq!(r.json()["headers"]["x-request-id"], "req-abc");
    assert_eq!(r.headers["x-request-id"], "req-abc");
    let r = get(&kg.url("/a"), &[]).await;
    assert!(r.headers.contains_key("x-request-id"));
    get(&kg.url("/a"), &[("authorization", "Bearer sk_live_nope")]).await;
    // A second forwarded request rides the kept-alive upstream connection.
    let r = get(&kg.url("/b"), &[("authorization", &bearer(&key))]).await;
    assert_eq!(r.status, 200);

    let metrics = get(&format!("http://{}/metrics", kg.ops_addr), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body).into_owned();
    for line in [
        "keygate_route_requests_total{route=\"default\",outcome=\"ok\"} 2",
        "keygate_route_requests_total{route=\"default\",outcome=\"unauthorized\"} 1",
        "keygate_route_requests_total{route=\"default\",outcome=\"invalid_key\"} 1",
        "keygate_request_duration_seconds_count{route=\"default\"} 4",
        "keygate_request_duration_seconds_bucket{route=\"default\",le=\"+Inf\"} 4",
        "keygate_upstream_duration_seconds_count{route=\"default\"} 2",
        "keygate_store_lookup_duration_seconds_count 1",
        "keygate_upstream_in_flight 0",
        "keygate_upstream_connections_opened_total 1",
        "keygate_upstream_connections_reused_total 1",
        "keygate_upstream_connections_open 1",
        "keygate_upstream_connections_idle 1",
        "keygate_tls_handshake_errors_total 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(
        !text.contains(&key) && !text.contains(&id),
        "no key material or ids"
    );
}

#[tokio::test]
async fn connect_is_tunnelled_when_allowed() {
    // The upstream is a forward proxy: it answers CONNECT with 200 and echoes upper-cased.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = format!("http://{}", l.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let seen_up = std::sync::Arc::clone(&seen);
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let head = read_until(&mut s, "\r\n\r\n").await;
        *seen_up.lock().unwrap() = head;
        s.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .unwrap();
        shout_back(s).await;
    });
    let kg = Keygate::start(&up, "[listen]\nallow_connect = true\n").await;
    let (key, id) = kg.live_key().await;

    let (_, head) = exchange(
        kg.addr,
        "CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    let (mut s, head) = exchange(
        kg.addr,
        &format!("CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\nauthorization: Bearer {key}\r\n\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"through the tunnel").await.unwrap();
    assert_eq!(read_until(&mut s, "TUNNEL").await, "THROUGH THE TUNNEL");
    let upstream_saw = seen.lock().unwrap().to_ascii_lowercase();
    assert!(
        upstream_saw.starts_with("connect example.com:443 http/1.1"),
        "{upstream_saw}"
    );
    assert!(upstream_saw.contains(&format!("x-auth-key-id: {}", id.to_ascii_lowercase())));
    assert!(
        !upstream_saw.contains("authorization"),
        "the key stays with keygate"
    );
}

#[tokio::test]
async fn h2c_upgrades_are_never_passed_through() {
    let up = upgrade_upstream().await;
    let kg = Keygate::start(&up, "").await;
    let (key, _) = kg.live_key().await;
    let mut s = TcpStream::connect(kg.addr).await.unwrap();
    s.write_all(
        format!("GET / HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    // Forwarded as a plain request: the upstream saw neither the upgrade nor the settings.
    let resp = read_until(&mut s, "plain:").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let resp = resp + &read_until(&mut s, "e").await;
    assert!(resp.ends_with("plain:false"), "{resp}");
}

#[tokio::test]
async fn idle_tunnels_are_closed() {
    let up = upgrade_upstream().await;
    let kg = Keygate::start(&up, "[listen]\ntunnel_idle_timeout = \"300ms\"\n").await;
    let (key, _) = kg.live_key().await;
    let mut s = TcpStream::connect(kg.addr).await.unwrap();
    s.write_all(
        format!("GET /ws HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {key}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    assert!(
        read_until(&mut s, "\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 101")
    );
    s.write_all(b"ping").await.unwrap();
    assert_eq!(read_until(&mut s, "PING").await, "PING");
    let metrics = get(&format!("http://{}/metrics", kg.ops_addr), &[]).await;
    assert!(String::from_utf8_lossy(&metrics.body).contains("keygate_tunnels_open 1"));
    // Silence: keygate closes the tunnel.
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    assert_eventually!(
        String::from_utf8_lossy(
            &get(&format!("http://{}/metrics", kg.ops_addr), &[])
                .await
                .body
        )
        .contains("keygate_tunnels_open 0"),
        Duration::from_secs(2),
        "the tunnel gauge did not drop"
    );
}

#[tokio::test]
async fn connect_on_a_public_route_still_needs_a_key() {
    let up = upgrade_upstream().await;
    let kg = Keygate::start(
        &up,
        "[listen]\nallow_connect = true\n[default_route]\npublic = true\n",
    )
    .await;
    let mut s = TcpStream::connect(kg.addr).await.unwrap();
    s.write_all(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let head = read_until(&mut s, "\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}
