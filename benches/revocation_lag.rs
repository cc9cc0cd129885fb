//! Revocation propagation between replicas: three keygate proxies share one Redis (a real
//! `redis-server` started here on an ephemeral port). For each round a key is created and
//! warmed into every proxy's cache, then revoked through proxy A's store. We time
//!
//! - the lag: from the revoke returning (without waiting) until B and C answer 401;
//! - the acknowledged write: from the start of the revoke until every replica acknowledged it
//!   (what the admin API waits for before answering), and check that B and C refuse the key
//!   the moment that returns.
//!
//! Run: `cargo bench --bench revocation_lag` (200 rounds each way), `ROUNDS=1000 …` for more.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keygate::config::Config;
use keygate::key::{Environment, KeyType};
use keygate::manage::KeyTool;
use keygate::server::Server;
use keygate::store::{NewRecord, Store};
use tokio::net::TcpListener;

fn main() {
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(run(rounds));
}

/// Starts a proxy; returns its address and its store handle.
async fn start_proxy(config: &Config) -> (SocketAddr, Store) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ops = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Server::new(config).unwrap();
    let store = proxy.store();
    tokio::spawn(proxy.serve(listener, ops, std::future::pending()));
    (addr, store)
}

async fn run(rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--dir", dir.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is required (apt-get install redis-server)");
    let echo = keygate::dev::echo::spawn(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let toml = format!(
        "[upstream]\nurl = \"http://{echo}\"\n[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\n[log]\nfilter = \"warn\"\n[keys]\nargon2_memory_kib = 8\nargon2_iterations = 1\n"
    );
    let config = Config::from_toml(&toml, Vec::new(), |_| None).unwrap();
    // Wait for Redis.
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (a_addr, a) = start_proxy(&config).await;
    let (b_addr, _b) = start_proxy(&config).await;
    let (c_addr, _c) = start_proxy(&config).await;
    let tool = KeyTool::with_store(a, &config).unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let status = |addr: SocketAddr, key: String| {
        let client = client.clone();
        async move {
            let req = http::Request::get(format!("http://{addr}/"))
                .header("authorization", format!("Bearer {key}"))
                .body(Empty::new())
                .unwrap();
            let resp = client.request(req).await.unwrap();
            let s = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            s
        }
    };
    while tool.propagate().await.replicas < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut lags = Vec::with_capacity(rounds * 2);
    let mut acked = Vec::with_capacity(rounds);
    let mut violations = 0;
    for round in 0..rounds * 2 {
        let (key, rec) = tool
            .create(
                NewRecord::new("acct_bench", Environment::Live, KeyType::Secret),
                "bench",
            )
            .await
            .unwrap();
        let key = key.key.clone();
        for addr in [a_addr, b_addr, c_addr] {
            while status(addr, key.clone()).await != 200 {}
        }
        let t0 = Instant::now();
        tool.revoke(&rec.id, "bench").await.unwrap();
        if round % 2 == 0 {
            // The lag a replica sees with no waiting: probe B and C until they refuse.
            for addr in [b_addr, c_addr] {
                while status(addr, key.clone()).await != 401 {
                    assert!(
                        t0.elapsed() < Duration::from_secs(10),
                        "revocation never arrived"
                    );
                }
                lags.push(t0.elapsed());
            }
        } else {
            // What the admin API does: wait for every acknowledgement, then answer.
            let p = tool.propagate().await;
            acked.push(t0.elapsed());
            assert_eq!(p.acknowledged, 3, "{p:?}");
            for addr in [a_addr, b_addr, c_addr] {
                if status(addr, key.clone()).await != 401 {
                    violations += 1;
                }
            }
        }
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(v.len() - 1)]
    };
    println!(
        "3 replicas on one Redis, {rounds} revocations each way:\n  \
         lag, revoke returned → replica B/C answers 401 (no waiting): p50 {:?}  p99 {:?}  max {:?}\n  \
         revoke + every replica acknowledged (what the admin API waits for): p50 {:?}  p99 {:?}  max {:?}\n  \
         old key accepted by any replica after the acknowledged revoke returned: {violations}",
        pct(&mut lags, 0.50),
        pct(&mut lags, 0.99),
        pct(&mut lags, 1.0),
        pct(&mut acked, 0.50),
        pct(&mut acked, 0.99),
        pct(&mut acked, 1.0),
    );
    let _ = redis.kill();
    let _ = redis.wait();
}
