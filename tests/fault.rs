//! Hold the line: a real `keygate serve` process under steady load while Redis and then the
//! upstream are killed and restarted. Every request must get an answer (none hung), a revoked
//! key must never be let through, and service must come back by itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::redis::Redis;
use common::{Served, bearer, get, keygate};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// An upstream on a fixed port that can be killed (listener and every open connection) and
/// started again.
struct FlakyUpstream {
    port: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FlakyUpstream {
    async fn start() -> FlakyUpstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        FlakyUpstream {
            port,
            task: Some(tokio::spawn(Self::serve(l))),
        }
    }

    async fn serve(l: TcpListener) {
        // Dropping the set (when this task is aborted) aborts every connection.
        let mut conns = JoinSet::new();
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            conns.spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(
                        b"{\"ok\":true}",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    }

    fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    async fn restart(&mut self) {
        self.kill();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let l = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.task = Some(tokio::spawn(Self::serve(l)));
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

#[derive(Default, Debug)]
struct Tally {
    /// Outcome per (key kind, status or "hung").
    counts: BTreeMap<(&'static str, String), u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_the_line_through_redis_and_upstream_restarts() {
    let mut redis = Redis::start_persistent();
    let mut up = FlakyUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("sidecar.toml");
    std::fs::write(
        &cfg,
        format!(
            "[listen]\naddress = \"127.0.0.1:0\"\n[ops]\naddress = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"{}\"\nconnect_timeout = \"500ms\"\nresponse_timeout = \"2s\"\n\
             [store]\nbackend = \"redis\"\nurl = \"{}\"\ntimeout = \"300ms\"\n\
             [auth]\ncache_ttl = \"1s\"\n[log]\nformat = \"json\"\naccess = false\n",
            up.url(),
            redis.url()
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let served = Served::start(&cfg);
    let create = |owner: &str| {
        let out = keygate(&[
            "keys", "--config", &cfg, "create", "--owner", owner, "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let valid = create("acct_valid")["key"].as_str().unwrap().to_owned();
    let revoked = create("acct_revoked");
    let out = keygate(&[
        "keys",
        "--config",
        &cfg,
        "revoke",
        revoked["record"]["id"].as_str().unwrap(),
    ]);
    assert!(out.status.success());
    let revoked = revoked["key"].as_str().unwrap().to_owned();
    let url = format!("http://{}/v1/things", served.addr);
    let served_ok = || async {
        get(&url, &[("authorization", &bearer(&valid))])
            .await
            .status
            == 200
    };
    assert_eventually!(
        served_ok().await,
        Duration::from_secs(5),
        "the valid key never worked"
    );

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = JoinSet::new();
    for w in 0..8 {
        let (tally, stop, url) = (Arc::clone(&tally), Arc::clone(&stop), url.clone());
        let keys = [("valid", valid.clone()), ("revoked", revoked.clone())];
        workers.spawn(async move {
            let client = common::client();
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                let (kind, key) = &keys[i % 2];
                i += 1;
                let req = Request::get(&url)
                    .header("authorization", bearer(key))
                    .body(common::empty())
                    .unwrap();
                let outcome =
                    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                        Err(_) => "hung".to_owned(),
                        Ok(Err(_)) => "connection error".to_owned(),
                        Ok(Ok(r)) => r.status().as_u16().to_string(),
                    };
                *tally
                    .lock()
                    .unwrap()
                    .counts
                    .entry((kind, outcome))
                    .or_default() += 1;
            }
        });
    }

    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    up.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    up.restart().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}

    let tally = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!("hold the line: {:?}", tally.counts);
    let count = |kind: &'static str, outcome: &str| {
        tally
            .counts
            .get(&(kind, outcome.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(count("revoked", "200"), 0, "a revoked key was let through");
    let hung: u64 = tally
        .counts
        .iter()
        .filter(|((_, o), _)| o == "hung" || o == "connection error")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(hung, 0, "requests without an answer");
    for ((kind, outcome), _) in tally.counts.iter() {
        let allowed: &[&str] = match *kind {
            // Served, or refused safely while a dependency was down.
            "valid" => &["200", "502", "503", "504"],
            _ => &["401", "503"],
        };
        assert!(
            allowed.contains(&outcome.as_str()),
            "{kind} key answered {outcome}"
        );
    }
    assert!(
        count("valid", "200") > 100,
        "the valid key was hardly served"
    );
    assert!(
        count("valid", "502") + count("valid", "504") > 0,
        "the upstream outage was not seen"
    );

    // Recovered by itself: both dependencies are back.
    assert_eventually!(served_ok().await, Duration::from_secs(5), "no recovery");
    assert_eq!(
        get(&url, &[("authorization", &bearer(&revoked))])
            .await
            .code(),
        "expired_key"
    );
}
