//! Microbenchmarks of the request path's pieces, each beside a baseline:
//!
//! - key parse + checksum, lookup hash (SHA-256 and peppered HMAC);
//! - verification: cache hit vs a raw Argon2id run (what every request would cost uncached);
//! - rate limiter vs a naive `Mutex<HashMap>` fixed window;
//! - IP allowlist over 1,000 CIDRs;
//! - path normalisation + route matching;
//! - the full in-process pipeline (keygate in front of a stub upstream) vs the upstream direct.
//!
//!     cargo bench --bench hot_path
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keygate::auth::Credential;
use keygate::config::PathRules;
use keygate::config::{Carrier, Config};
use keygate::key::{Environment, KeyFormat, KeyHasher, KeyType};
use keygate::manage::KeyTool;
use keygate::policy::ip::IpSet;
use keygate::policy::ratelimit::{Algorithm, Counter, Limit, LocalLimiter, Subject};
use keygate::policy::routes::PathPattern;
use keygate::server::Server;
use keygate::store::NewRecord;

fn keys(c: &mut Criterion) {
    let format = KeyFormat::new(&Default::default()).unwrap();
    let key = format
        .generate(KeyType::Secret, Environment::Live)
        .unwrap()
        .key;
    let plain = KeyHasher::new(None);
    let peppered = KeyHasher::new(Some(b"0123456789abcdef0123456789abcdef"));
    let mut g = c.benchmark_group("key");
    g.bench_function("parse_and_checksum", |b| {
        b.iter(|| format.parse(black_box(&key)).is_ok())
    });
    g.bench_function("lookup_hash_sha256", |b| {
        b.iter(|| plain.lookup_hash(black_box(&key)))
    });
    g.bench_function("lookup_hash_hmac", |b| {
        b.iter(|| peppered.lookup_hash(black_box(&key)))
    });
    g.finish();
}

fn verification(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = config_for("http://127.0.0.1:9", &dir.path().join("keys.json"), "");
    let (proxy, key) = rt.block_on(async {
        let proxy = Server::new(&config).unwrap();
        let key = mint(&proxy, &config).await;
        (proxy, key)
    });
    let verifier = proxy.verifier();
    let cred = Credential {
        key: key.as_str().into(),
        carrier: Carrier::Bearer,
    };
    rt.block_on(verifier.verify(&cred)).unwrap();
    let hasher = KeyHasher::new(None);
    let phc = hasher.phc(&key).unwrap();

    let mut g = c.benchmark_group("verify");
    g.bench_function("cache_hit", |b| {
        b.iter(|| rt.block_on(verifier.verify(black_box(&cred))).is_ok())
    });
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("argon2id_uncached", |b| {
        b.iter(|| hasher.verify(black_box(&key), &phc))
    });
    g.finish();
}

/// The baseline: what a first attempt at a limiter looks like.
#[derive(Default)]
struct NaiveLimiter {
    map: Mutex<HashMap<String, (u64, u64)>>,
    epoch: Option<Instant>,
}

impl NaiveLimiter {
    fn check(&self, key: &str, limit: u64, window: Duration) -> bool {
        let now = self.epoch.map_or(0, |e| e.elapsed().as_millis() as u64);
        let idx = now / window.as_millis() as u64;
        let mut map = self.map.lock().unwrap();
        let entry = map.entry(key.to_owned()).or_insert((idx, 0));
        if entry.0 != idx {
            *entry = (idx, 0);
        }
        if entry.1 >= limit {
            return false;
        }
        entry.1 += 1;
        true
    }
}

fn limiter(c: &mut Criterion) {
    let limit = Limit {
        limit: u64::MAX / 2,
        window: Duration::from_secs(60),
        algorithm: Algorithm::FixedWindow,
        per: keygate::config::Per::Key,
    };
    let gcra = Limit {
        algorithm: Algorithm::Gcra,
        limit: 1_000_000_000,
        ..limit
    };
    let local = LocalLimiter::default();
    let naive = NaiveLimiter {
        epoch: Some(Instant::now()),
        ..Default::default()
    };
    let counters: Vec<Counter> = (0..1000)
        .map(|i| Counter {
            subject: Subject::Key {
                id: format!("key_{i:020}").into(),
                owner: "acct_bench".into(),
            },
            name: "key".into(),
        })
        .collect();
    // One request's limits, prebuilt, as the policy holds them (no clone in the loop).
    let one: Vec<[(Counter, Limit); 1]> = counters.iter().map(|c| [(c.clone(), limit)]).collect();
    let one_gcra: Vec<[(Counter, Limit); 1]> =
        counters.iter().map(|c| [(c.clone(), gcra)]).collect();
    let names: Vec<String> = counters
        .iter()
        .map(|c| {
            let mut id = Vec::new();
            c.subject.write_id(&mut id);
            format!("{}:{}", String::from_utf8_lossy(&id), c.name)
        })
        .collect();
    let mut g = c.benchmark_group("limiter_1000_keys");
    let mut i = 0usize;
    g.bench_function("keygate_fixed_window", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            local.acquire(&one[i])
        })
    });
    g.bench_function("keygate_gcra", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            local.acquire(&one_gcra[i])
        })
    });
    g.bench_function("naive_mutex_hashmap", |b| {
        b.iter(|| {
            i = (i + 1) % 1000;
            naive.check(&names[i], limit.limit, limit.window)
        })
    });
    g.finish();

    // Contention: both cores hammering.
    let mut g = c.benchmark_group("limiter_2_threads_1000_keys");
    g.bench_function("keygate_fixed_window", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (local, one) = (&local, &one);
                    s.spawn(move || {
                        for n in 0..iters {
                            local.acquire(&one[((n as usize) * 7 + t) % 1000]);
                        }
                    });
                }
            });
            start.elapsed() / 2
        })
    });
    g.bench_function("naive_mutex_hashmap", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for t in 0..2 {
                    let (naive, names) = (&naive, &names);
                    s.spawn(move || {
                        for n in 0..iters {
                            naive.check(
                                &names[((n as usize) * 7 + t) % 1000],
                                limit.limit,
                                limit.window,
                            );
                        }
                    });
                }
            });
            start.elapsed() / 2
        })
    });
    g.finish();
}

fn ip_rules(c: &mut Criterion) {
    // 1,000 disjoint /24s (no aggregation possible), and an address in none of them.
    let nets: Vec<ipnet::IpNet> = (0..1000u32)
        .map(|i| {
            format!("{}.{}.{}.0/24", 10 + (i >> 8) * 2, i & 0xff, 7)
                .parse()
                .unwrap()
        })
        .collect();
    let set = IpSet::new(&nets);
    let miss: IpAddr = "203.0.113.7".parse().unwrap();
    let hit: IpAddr = nets[999].network().to_string().parse().unwrap();
    let mut g = c.benchmark_group("ip_allowlist_1000_cidrs");
    g.bench_function("keygate_set_miss", |b| {
        b.iter(|| set.contains(black_box(miss)))
    });
    g.bench_function("keygate_set_hit", |b| {
        b.iter(|| set.contains(black_box(hit)))
    });
    // The baseline: checking each network in turn.
    g.bench_function("linear_scan_miss", |b| {
        b.iter(|| nets.iter().any(|n| n.contains(&black_box(miss))))
    });
    g.finish();
}

fn routing(c: &mut Criterion) {
    let patterns: Vec<PathPattern> = [
        "/health",
        "/docs/*",
        "/v1/payments",
        "/v1/payments/{id}",
        "/v1/payments/{id}/capture",
        "/v1/transfers/*",
        "/v1/webhooks/*",
        "/v1/admin/*",
    ]
    .iter()
    .map(|p| PathPattern::parse(p).unwrap())
    .collect();
    let mut g = c.benchmark_group("path");
    g.bench_function("normalise_clean", |b| {
        b.iter(|| {
            keygate::policy::normalize(
                black_box("/v1/payments/pay_123/capture"),
                &PathRules::default(),
            )
        })
    });
    g.bench_function("normalise_dirty", |b| {
        b.iter(|| {
            keygate::policy::normalize(
                black_box("/v1//payments/./pay_%31%32/capture"),
                &PathRules::default(),
            )
        })
    });
    g.bench_function("match_8_routes_last", |b| {
        b.iter(|| {
            patterns
                .iter()
                .position(|p| p.matches(black_box("/v1/admin/users")))
        })
    });
    g.finish();
}

fn pipeline(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (proxy_addr, upstream_addr, key) = rt.block_on(async {
        let upstream = keygate::dev::echo::spawn(([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        let config = config_for(
            &format!("http://{upstream}"),
            &dir.path().join("keys.json"),
            "[rate_limits]\nkey = { limit = 1000000000, window = \"1m\" }\n",
        );
        let proxy = Server::new(&config).unwrap();
        let key = mint(&proxy, &config).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(proxy.serve(listener, ops, std::future::pending()));
        (addr, upstream, key)
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let call = |url: String, auth: Option<String>| {
        let client = client.clone();
        async move {
            let mut req = http::Request::get(url);
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let resp = client
                .request(req.body(Empty::new()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.into_body().collect().await.unwrap();
        }
    };
    let mut g = c.benchmark_group("pipeline_loopback");
    g.bench_function("direct_to_upstream", |b| {
        b.iter(|| rt.block_on(call(format!("http://{upstream_addr}/v1/x"), None)))
    });
    g.bench_function("through_keygate_cached_key", |b| {
        b.iter(|| {
            rt.block_on(call(
                format!("http://{proxy_addr}/v1/x"),
                Some(format!("Bearer {key}")),
            ))
        })
    });
    g.finish();
}

fn config_for(upstream: &str, store: &std::path::Path, extra: &str) -> Config {
    let toml = format!(
        "[upstream]\nurl = \"{upstream}\"\n[store]\npath = {:?}\n[log]\nfilter = \"error\"\n{extra}",
        store.display().to_string()
    );
    Config::from_toml(&toml, Vec::new(), |_| None).unwrap()
}

async fn mint(proxy: &Server, config: &Config) -> String {
    let tool = KeyTool::with_store(proxy.store(), config).unwrap();
    let (key, _) = tool
        .create(
            NewRecord {
                scopes: vec!["all".into()],
                ..NewRecord::new("acct_bench", Environment::Live, KeyType::Secret)
            },
            "bench",
        )
        .await
        .unwrap();
    key.key.clone()
}

criterion_group!(
    benches,
    keys,
    verification,
    limiter,
    ip_rules,
    routing,
    pipeline
);
criterion_main!(benches);
