//! HTTP/2 abuse with legitimate traffic beside it: rapid reset, CONTINUATION flood and stream
//! floods, sent as hand-made frames on raw sockets. Legitimate requests on their own connection
//! must keep succeeding (≥ 99%) and the process's memory must stay bounded.
//!
//! The legitimate load is `h2load` (package `nghttp2-client`, installed by `.ci/run`) in its own
//! process; where it is missing the test says so and uses a hyper HTTP/2 client in this process
//! instead, which exercises the same listener.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{Keygate, Upstream, bearer};
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK: `:method GET`, `:scheme http`, `:path /`, `:authority x` (static-table references and
/// one literal).
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x01, b'x'];

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Legitimate traffic beside the attacks until `stop`: `h2load` runs of one second each
/// (4 connections, 8 streams each), or the in-process client when `h2load` is not installed.
/// Resolves to (succeeded, failed).
fn legit_traffic(
    addr: std::net::SocketAddr,
    key: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    let installed = std::process::Command::new("h2load")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("h2load is not installed (apt-get install nghttp2-client): in-process client");
        return legit_load(addr, key, stop);
    }
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, 0);
        while !stop.load(Ordering::Relaxed) {
            let key = key.clone();
            let (o, f) = tokio::task::spawn_blocking(move || h2load(addr, &key))
                .await
                .unwrap();
            ok += o;
            failed += f;
        }
        (ok, failed)
    })
}

/// One second of `h2load`: (requests answered 2xx, requests that failed).
fn h2load(addr: std::net::SocketAddr, key: &str) -> (u64, u64) {
    {
        let out = std::process::Command::new("h2load")
            .args(["-D", "1", "-c", "4", "-m", "8", "-T", "5"])
            .args(["-H", &format!("authorization: {}", bearer(key))])
            .arg(format!("http://{addr}/legit"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // "requests: 9000 total, 9000 started, 9000 done, 9000 succeeded, 0 failed, 0 errored, 0 timeout"
        // "status codes: 9000 2xx, 0 3xx, 0 4xx, 0 5xx"
        let field = |line: &str, what: &str| -> u64 {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(line))
                .unwrap_or_else(|| panic!("no {line:?} line in h2load output:\n{text}"));
            line.split(',')
                .find_map(|part| part.trim().strip_suffix(what))
                .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("no {what:?} in {line:?}"))
        };
        let (started, done) = (field("requests:", "started"), field("requests:", "done"));
        let ok = field("status codes:", "2xx");
        // Up to one stream per slot (4 × 8) may be cut by the deadline without an answer;
        // anything else unanswered or not 2xx failed.
        let cut = started.saturating_sub(done).saturating_sub(32);
        (
            ok,
            done.saturating_sub(ok).max(field("requests:", "failed")) + cut,
        )
    }
}

/// Legitimate authenticated HTTP/2 requests in a loop until `stop`; returns (ok, failed).
fn legit_load(
    addr: std::net::SocketAddr,
    key: String,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();
        for _ in 0..4 {
            let (key, stop, ok, failed) = (
                key.clone(),
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failed),
            );
            workers.push(tokio::spawn(async move {
                let mut sender = None;
                while !stop.load(Ordering::Relaxed) {
                    if sender.is_none() {
                        let tcp = TcpStream::connect(addr).await.unwrap();
                        let (s, conn) = hyper::client::conn::http2::handshake(
                            TokioExecutor::new(),
                            TokioIo::new(tcp),
                        )
                        .await
                        .unwrap();
                        tokio::spawn(conn);
                        sender = Some(s);
                    }
                    let Some(s) = sender.as_mut() else { continue };
                    let req = Request::get(format!("http://{addr}/legit"))
                        .header("authorization", bearer(&key))
                        .body(Empty::<Bytes>::new())
                        .unwrap();
                    let res =
                        tokio::time::timeout(Duration::from_secs(5), s.send_request(req)).await;
                    match res {
                        Ok(Ok(r)) if r.status() == 200 => {
                            let _ = r.into_body().collect().await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            sender = None;
                        }
                    }
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
        (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed))
    })
}

/// Reads until the server closes the connection (or `limit` passes); returns whether it closed
/// and whether a GOAWAY frame was seen.
async fn drain_until_closed(s: &mut TcpStream, limit: Duration) -> (bool, bool) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                if seen.len() < 1 << 20 {
                    seen.extend_from_slice(&buf[..n]);
                }
            }
            Err(_) => return (false, has_goaway(&seen)),
        }
    }
    (true, has_goaway(&seen))
}

fn has_goaway(bytes: &[u8]) -> bool {
    let mut i = 0;
    while i + 9 <= bytes.len() {
        let len = (usize::from(bytes[i]) << 16)
            | (usize::from(bytes[i + 1]) << 8)
            | usize::from(bytes[i + 2]);
        if bytes[i + 3] == 0x7 {
            return true;
        }
        i += 9 + len;
    }
    false
}

async fn attacker(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(PREFACE).await.unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_abuse_does_not_starve_legitimate_clients() {
    let up = Upstream::start().await;
    let kg = Keygate::start(&up.url(), "").await;
    let (key, _) = kg.live_key().await;
    let before = rss_kib();
    let stop = Arc::new(AtomicBool::new(false));
    let load = legit_traffic(kg.addr, key.clone(), Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(200)).await;

    // 1. Rapid reset: open streams and cancel them at once, far faster than they complete.
    let mut s = attacker(kg.addr).await;
    let mut burst = Vec::new();
    for i in 0..20_000u32 {
        let id = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, GET_BLOCK));
        burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        if burst.len() > 256 * 1024 {
            if s.write_all(&burst).await.is_err() {
                break;
            }
            burst.clear();
        }
    }
    let _ = s.write_all(&burst).await;
    let (closed, goaway) = drain_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(
        closed && goaway,
        "rapid reset: the server must send GOAWAY and close"
    );

    // 2. CONTINUATION flood: one header block that never ends.
    let mut s = attacker(kg.addr).await;
    s.write_all(&frame(HEADERS, 0, 1, GET_BLOCK)).await.unwrap();
    let junk = vec![0x40u8; 16 * 1024];
    let mut sent = 0u64;
    for _ in 0..4096 {
        if s.write_all(&frame(CONTINUATION, 0, 1, &junk))
            .await
            .is_err()
        {
            break;
        }
        sent += junk.len() as u64;
    }
    let (closed, _) = drain_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(closed, "CONTINUATION flood: the connection must be closed");
    assert!(
        sent < 64 << 20,
        "the server read {sent} bytes of one header block before closing"
    );

    // 3. Stream flood: many open streams that never finish, on several connections.
    let mut floods = Vec::new();
    for _ in 0..8 {
        let mut s = attacker(kg.addr).await;
        let mut burst = Vec::new();
        for i in 0..1000u32 {
            // HEADERS without END_STREAM: each stream waits for a body that never comes.
            burst.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, GET_BLOCK));
        }
        let _ = s.write_all(&burst).await;
        floods.push(s);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load.await.unwrap();
    drop(floods);
    let rate = ok as f64 / (ok + failed).max(1) as f64;
    assert!(ok > 100, "too little legitimate traffic to judge: {ok}");
    assert!(
        rate >= 0.99,
        "legitimate success {rate:.4} ({ok} ok, {failed} failed)"
    );
    let grown = rss_kib().saturating_sub(before);
    assert!(grown < 200 * 1024, "memory grew by {grown} KiB");
    eprintln!("legit: {ok} ok, {failed} failed; RSS +{grown} KiB");
}
