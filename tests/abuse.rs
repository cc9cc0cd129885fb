//! Fault and abuse tests: malformed framing, oversized heads, pipelining, upgrades, dying and
//! lying upstreams, floods of bogus keys, slow clients. Real sockets, bounded in time.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

#[tokio::test]
async fn ambiguous_framing_is_refused_never_forwarded() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    // Content-Length and Transfer-Encoding together, with a second request hidden where the
    // Content-Length says the body goes on. hyper reads the body as chunked (Transfer-Encoding
    // wins, RFC 9112 §6.1), forwards one re-framed request, and closes the connection, so the
    // hidden request is never parsed, let alone forwarded.
    let smuggle = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
         GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\n\r\n"
    );
    let text = raw(kg.addr, smuggle.as_bytes(), Duration::from_millis(500)).await;
    assert!(statuses(&text).len() <= 1, "{text}");
    assert!(!text.contains("/smuggled"), "{text}");
    assert!(up.hits() <= 1);
    let hits_before = up.hits();
    let cases = [
        // Two different Content-Lengths.
        format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc"
        ),
        // obs-fold (a header continued on the next line).
        format!("GET /a HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nX-Folded: a\r\n b\r\n\r\n"),
        // A Transfer-Encoding that is not chunked last.
        format!(
            "POST /a HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"
        ),
    ];
    for req in &cases {
        let text = raw(kg.addr, req.as_bytes(), Duration::from_millis(500)).await;
        let got = statuses(&text);
        assert!(got.is_empty() || got == vec![400], "{req:?} -> {text}");
    }
    assert_eq!(
        up.hits(),
        hits_before,
        "an ambiguously framed request reached the upstream"
    );

    // A bad chunk size mid-body: the request never completes upstream, the client gets no 2xx.
    let req = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    );
    let text = raw(kg.addr, req.as_bytes(), Duration::from_millis(500)).await;
    assert!(
        !statuses(&text).iter().any(|s| (200..300).contains(s)),
        "{text}"
    );
}

#[tokio::test]
async fn oversized_heads_get_431() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let text = raw(kg.addr, big.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(
        statuses(&text),
        vec![431],
        "{}",
        &text[..text.len().min(200)]
    );
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let text = raw(kg.addr, many.as_bytes(), Duration::from_millis(500)).await;
    assert_eq!(statuses(&text), vec![431], "{text}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn pipelined_requests_are_each_authenticated() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    let pipeline = format!(
        "GET /1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\n\r\n\
         GET /2 HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /3 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\n\r\n\
         GET /4 HTTP/1.1\r\nHost: x\r\nX-Api-Key: sk_live_forged\r\nConnection: close\r\n\r\n"
    );
    let text = raw(kg.addr, pipeline.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(statuses(&text), vec![200, 401, 200, 401], "{text}");
    assert_eq!(up.hits(), 2);
}

#[tokio::test]
async fn an_upgrade_not_accepted_upstream_is_no_tunnel() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    // The echo upstream answers 200, not 101: the connection must stay HTTP, so the second
    // request on it (without a key) is parsed and refused, not tunnelled to the upstream.
    // (tests/edge.rs has the tunnel that a 101 opens.)
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n\
         GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let text = raw(kg.addr, req.as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(statuses(&text), vec![200, 401], "{text}");
    // The upgrade was offered to the upstream (it declined with 200), and only once.
    assert!(text.contains("\"upgrade\": \"websocket\""), "{text}");
    assert_eq!(up.hits(), 1);
}

/// A raw TCP "upstream" that answers every connection with `reply` and closes.
async fn lying_upstream(reply: &'static [u8]) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn garbage_and_dying_upstreams_never_hang_the_client() {
    let garbage = lying_upstream(b"this is not http\r\n\r\n").await;
    let kg = Keygate::start(&format!("http://{garbage}"), "").await;
    let (key, _) = kg.live_key().await;
    let r = get(&kg.url("/"), &[("x-api-key", &key)]).await;
    assert_eq!(
        (r.status.as_u16(), r.code().as_str()),
        (502, "upstream_unavailable")
    );

    // Headers promise 1000 bytes, 5 arrive, then the upstream closes.
    let dying = lying_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nhello").await;
    let kg = Keygate::start(&format!("http://{dying}"), "").await;
    let (key, _) = kg.live_key().await;
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\n\r\n");
    let started = std::time::Instant::now();
    let text = raw(kg.addr, req.as_bytes(), Duration::from_secs(3)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the client was left hanging"
    );
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("hello"),
        "{text}"
    );
}

#[tokio::test]
async fn a_flood_of_distinct_bogus_keys_stays_bounded() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "[auth]\nnegative_cache_max_entries = 500\n").await;
    let format = keygate::key::KeyFormat::new(&Default::default()).unwrap();
    let client = client();
    let url: http::Uri = kg.url("/").parse().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for batch in 0..40 {
        let keys: Vec<String> = (0..100)
            .map(|_| {
                format
                    .generate(
                        keygate::key::KeyType::Secret,
                        keygate::key::Environment::Live,
                    )
                    .unwrap()
                    .key
            })
            .collect();
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            for key in keys {
                let req = http::Request::get(url.clone())
                    .header("x-api-key", key)
                    .body(empty())
                    .unwrap();
                let resp = client.request(req).await.unwrap();
                assert_eq!(resp.status(), 401, "batch {batch}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // 4,000 distinct unknown keys; the negative cache holds at most its bound.
    let entries = kg.verifier.negative_entries();
    assert!(entries <= 500 + 50, "negative cache grew to {entries}");
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn slowloris_connections_are_cut_while_others_are_served() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "[listen]\nheader_read_timeout = \"1s\"\n").await;
    let (key, _) = kg.live_key().await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut s = TcpStream::connect(kg.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow")
            .await
            .unwrap();
        slow.push(s);
    }
    // Normal clients keep getting answers meanwhile.
    for _ in 0..20 {
        assert_eq!(get(&kg.url("/"), &[("x-api-key", &key)]).await.status, 200);
    }
    // Every slow connection is closed by keygate (EOF or reset) within a bounded time.
    for mut s in slow {
        let mut buf = [0u8; 1024];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a slow connection was kept open");
    }
}
