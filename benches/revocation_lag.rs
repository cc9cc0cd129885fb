//! Revocation propagation between replicas: two keygate proxies share one Redis (a real
//! `redis-server` started here on an ephemeral port). For each round a key is created and warmed
//! into proxy B's cache, then revoked through proxy A's store; we time until B answers 401.
//!
//!     cargo bench --bench revocation_lag            # 200 rounds
//!     ROUNDS=1000 cargo bench --bench revocation_lag
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
        "[upstream]\nurl = \"http://{echo}\"\n[store]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\n[log]\nfilter = \"warn\"\n"
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
    let (_a_addr, a) = start_proxy(&config).await;
    let (b_addr, _b) = start_proxy(&config).await;
    let tool = KeyTool::with_store(a, &config).unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let status = |key: String| {
        let client = client.clone();
        async move {
            let req = http::Request::get(format!("http://{b_addr}/"))
                .header("authorization", format!("Bearer {key}"))
                .body(Empty::new())
                .unwrap();
            let resp = client.request(req).await.unwrap();
            let s = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            s
        }
    };

    let mut lags = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let (key, rec) = tool
            .create(
                NewRecord::new("acct_bench", Environment::Live, KeyType::Secret),
                "bench",
            )
            .await
            .unwrap();
        let key = key.key.clone();
        while status(key.clone()).await != 200 {}
        let t0 = Instant::now();
        tool.revoke(&rec.id, "bench").await.unwrap();
        while status(key.clone()).await != 401 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "revocation never arrived"
            );
        }
        lags.push(t0.elapsed());
    }
    lags.sort();
    let pct = |p: f64| {
        lags[((lags.len() as f64 * p).ceil() as usize)
            .saturating_sub(1)
            .min(lags.len() - 1)]
    };
    println!(
        "revocation lag over {rounds} revocations (revoke via proxy A's store → proxy B answers 401):\n  \
         p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        lags[lags.len() - 1]
    );
    let _ = redis.kill();
    let _ = redis.wait();
}
