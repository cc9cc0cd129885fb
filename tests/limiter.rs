//! One limiter suite, run against both backends — the in-process limiter and the Redis one on a
//! real `redis-server` — like `tests/store.rs` does for keys: fixed windows, GCRA, consuming
//! only when every limit allows, independence of counters, exactness under concurrency, and the
//! headers a decision renders to.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::Redis;
use http::HeaderMap;
use keygate::config::{Algorithm, HeaderStyles, Limit, RedisConfig, RedisTopology, StoreConfig};
use keygate::policy::ratelimit::{
    Counter, Limiter, LocalLimiter, RedisLimiter, Subject, set_rate_limit_headers,
};
use keygate::store::Store;

fn counter(subject: &str, name: &str) -> Counter {
    Counter {
        subject: Subject::Key {
            id: subject.into(),
            owner: "acct".into(),
        },
        name: name.into(),
    }
}

fn limit(n: u64, window: Duration, algorithm: Algorithm) -> Limit {
    Limit {
        limit: n,
        window,
        algorithm,
        per: keygate::config::Per::Key,
    }
}

/// What every limiter must do. Counter names are unique per call, so one Redis serves both runs.
async fn suite(limiter: Arc<Limiter>, tag: &str) {
    let minute = Duration::from_secs(60);
    let name = |s: &str| format!("{tag}:{s}");

    // Fixed window: exactly N, then a rejection with a retry time inside the window.
    let fixed = limit(5, minute, Algorithm::FixedWindow);
    let mut allowed = 0;
    for _ in 0..20 {
        if limiter.acquire(&[(counter("a", &name("fw")), fixed)]).await[0].allowed {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5, "fixed window admits exactly its limit");
    let d = limiter.peek(counter("a", &name("fw")), fixed).await;
    assert_eq!((d.allowed, d.remaining, d.limit), (false, 0, 5));
    assert!(d.retry_after > Duration::ZERO && d.retry_after <= minute);
    assert!(
        limiter.acquire(&[(counter("b", &name("fw")), fixed)]).await[0].allowed,
        "counters of other subjects are independent"
    );

    // GCRA: a burst of N, then one slot per window / N.
    let gcra = limit(10, Duration::from_secs(10), Algorithm::Gcra);
    let mut allowed = 0;
    for _ in 0..30 {
        if limiter
            .acquire(&[(counter("a", &name("gcra")), gcra)])
            .await[0]
            .allowed
        {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10, "GCRA admits a burst of its limit");
    let d = limiter
        .acquire(&[(counter("a", &name("gcra")), gcra)])
        .await[0];
    assert!(!d.allowed);
    assert!(
        d.retry_after <= Duration::from_secs(1),
        "one slot frees every second: {:?}",
        d.retry_after
    );

    // Several limits are consumed only if all allow: the narrow one rejects eight of ten
    // requests, and those eight never count against the wide one.
    let wide = limit(100, minute, Algorithm::FixedWindow);
    let narrow = limit(2, minute, Algorithm::Gcra);
    for _ in 0..10 {
        limiter
            .acquire(&[
                (counter("c", &name("wide")), wide),
                (counter("c", &name("narrow")), narrow),
            ])
            .await;
    }
    let d = limiter.peek(counter("c", &name("wide")), wide).await;
    assert_eq!(d.remaining, 98, "rejected requests consumed nothing");

    // Exact under concurrency: 8 tasks × 50 requests against a limit of 100.
    let exact = limit(100, minute, Algorithm::FixedWindow);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            let c = counter("d", &name("exact"));
            tokio::spawn(async move {
                let mut n = 0;
                for _ in 0..50 {
                    if limiter.acquire(&[(c.clone(), exact)]).await[0].allowed {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 100, "exactly the limit under concurrency");

    // Headers: what the decision says, in each style.
    let hdr = limit(3, minute, Algorithm::FixedWindow);
    let d = limiter.acquire(&[(counter("e", &name("hdr")), hdr)]).await[0];
    let mut h = HeaderMap::new();
    set_rate_limit_headers(
        &mut h,
        &d,
        HeaderStyles {
            x_ratelimit: true,
            ratelimit: true,
            structured: true,
        },
    );
    assert_eq!(h["x-ratelimit-limit"], "3");
    assert_eq!(h["x-ratelimit-remaining"], "2");
    assert_eq!(h["ratelimit-limit"], "3");
    assert_eq!(h["ratelimit-remaining"], "2");
    let reset: u64 = h["ratelimit-reset"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&reset), "reset in seconds: {reset}");
    let reset_at: u64 = h["x-ratelimit-reset"].to_str().unwrap().parse().unwrap();
    let now = keygate::time::Timestamp::now().unix();
    assert!(reset_at > now && reset_at <= now + 61, "reset as unix time");
    assert_eq!(h["ratelimit-policy"], "\"default\";q=3;w=60");
    assert_eq!(h["ratelimit"], format!("\"default\";r=2;t={reset}"));
    let mut only_x = HeaderMap::new();
    set_rate_limit_headers(
        &mut only_x,
        &d,
        HeaderStyles {
            x_ratelimit: true,
            ..HeaderStyles::default()
        },
    );
    assert!(only_x.contains_key("x-ratelimit-limit") && !only_x.contains_key("ratelimit-limit"));
}

#[tokio::test]
async fn local_limiter() {
    suite(Arc::new(Limiter::Local(LocalLimiter::default())), "local").await;
}

#[tokio::test]
async fn redis_limiter() {
    let redis = Redis::start();
    let limiter = Limiter::Redis(RedisLimiter::new(redis_store(&redis), "kglimit", 1, 0));
    suite(Arc::new(limiter), "redis").await;
    // It really went through Redis: the counters are there.
    let keys = redis.cmd("KEYS *kglimit:rl*");
    assert!(keys.contains("redis:fw"), "{keys}");
}

fn redis_store(redis: &Redis) -> keygate::store::RedisStore {
    let Store::Redis(store) = Store::open(&StoreConfig::Redis(RedisConfig {
        topology: RedisTopology::Standalone { url: redis.url() },
        password: None,
        key_prefix: "kglimit".into(),
        timeout: Duration::from_secs(2),
        shards: keygate::config::DEFAULT_SHARDS,
        write_replicas: 0,
    }))
    .unwrap() else {
        unreachable!()
    };
    store
}

/// Script calls Redis has served (each one a round trip).
fn script_calls(redis: &Redis) -> u64 {
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
async fn leased_redis_limiter() {
    // The whole suite holds with leases too (fixed windows lease; GCRA stays exact).
    let redis = Redis::start();
    let limiter = Limiter::Redis(RedisLimiter::new(redis_store(&redis), "kglimit", 1, 64));
    suite(Arc::new(limiter), "leased").await;
}

#[tokio::test]
async fn three_leasing_replicas_admit_exactly_the_limit_with_few_round_trips() {
    let redis = Redis::start();
    // Three replicas: each its own limiter (its own leases) on one Redis.
    let replicas: Vec<Arc<Limiter>> = (0..3)
        .map(|_| {
            Arc::new(Limiter::Redis(RedisLimiter::new(
                redis_store(&redis),
                "kglimit",
                3,
                100,
            )))
        })
        .collect();
    let hour = Duration::from_secs(3600);
    let tight = limit(50, hour, Algorithm::FixedWindow);
    let before = script_calls(&redis);
    let mut tasks = Vec::new();
    for limiter in &replicas {
        for _ in 0..4 {
            let limiter = Arc::clone(limiter);
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0u64;
                for _ in 0..60 {
                    if limiter.acquire(&[(counter("k", "tight"), tight)]).await[0].allowed {
                        admitted += 1;
                    }
                }
                admitted
            }));
        }
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += t.await.unwrap();
    }
    assert_eq!(
        admitted, 50,
        "720 attempts from 3 replicas admit exactly the limit"
    );

    // A roomy limit at steady load: leases grow, round trips per request fall below 0.05.
    let roomy = limit(1_000_000, hour, Algorithm::FixedWindow);
    let mid = script_calls(&redis);
    let mut tasks = Vec::new();
    for limiter in &replicas {
        let limiter = Arc::clone(limiter);
        tasks.push(tokio::spawn(async move {
            for _ in 0..3000 {
                assert!(limiter.acquire(&[(counter("k", "roomy"), roomy)]).await[0].allowed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let calls = script_calls(&redis) - mid;
    assert!(calls * 20 < 9000, "{calls} round trips for 9,000 requests");
    assert!(mid > before, "the tight limit did go to Redis");
    // The shared counter holds what was leased, never more than the limit.
    let used = redis.cmd("HGET {kglimit:rl:o:acct}:k:k:tight c");
    assert_eq!(used.lines().last().map(str::trim), Some("50"), "{used}");
}
