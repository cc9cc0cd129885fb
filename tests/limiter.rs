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
    store_at(&redis.url(), None, Duration::from_secs(2))
}

fn store_at(url: &str, password: Option<&str>, timeout: Duration) -> keygate::store::RedisStore {
    let Store::Redis(store) = Store::open(&StoreConfig::Redis(RedisConfig {
        topology: RedisTopology::Standalone { url: url.into() },
        password: password.map(|p| keygate::config::Secret::new(p.as_bytes().to_vec())),
        key_prefix: "kglimit".into(),
        timeout,
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

/// Admitted of `attempts` one-by-one checks of a fresh counter `name` (limit `n` per hour).
async fn admitted(limiter: &Limiter, name: &str, n: u64, attempts: usize) -> usize {
    let l = limit(n, Duration::from_secs(3600), Algorithm::FixedWindow);
    let mut admitted = 0;
    for _ in 0..attempts {
        if limiter.acquire(&[(counter("k", name), l)]).await[0].allowed {
            admitted += 1;
        }
    }
    admitted
}

/// A Redis limiter for one replica with a round trip per check.
fn exact(redis: &Redis) -> Arc<Limiter> {
    Arc::new(Limiter::Redis(RedisLimiter::new(
        redis_store(redis),
        "kglimit",
        1,
        0,
    )))
}

/// One check of counter `<prefix><i>`, whose limit is `i` per hour: whoever answers it (Redis
/// or the fallback), `remaining` must be below that limit. Whether it was admitted.
async fn check_own(limiter: &Limiter, prefix: &str, i: u64) -> bool {
    let l = limit(i, Duration::from_secs(3600), Algorithm::FixedWindow);
    let d = limiter
        .acquire(&[(counter("k", &format!("{prefix}{i}")), l)])
        .await;
    assert!(
        d[0].remaining < i,
        "counter {prefix}{i}: remaining {}",
        d[0].remaining
    );
    d[0].allowed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_each_get_their_own_counters_answer() {
    // Checks of 40 counters with 40 different limits, all in flight at once on one connection:
    // a reply handed to the wrong check would show as a count or a `remaining` of another limit.
    let redis = Redis::start();
    let limiter = exact(&redis);
    let mut tasks = Vec::new();
    for i in 1..=40u64 {
        for _ in 0..3 {
            let limiter = Arc::clone(&limiter);
            tasks.push(tokio::spawn(async move {
                let mut admitted = 0u64;
                for _ in 0..20 {
                    admitted += u64::from(check_own(&limiter, "c", i).await);
                }
                (i, admitted)
            }));
        }
    }
    let mut per_counter = std::collections::BTreeMap::new();
    for t in tasks {
        let (i, n) = t.await.unwrap();
        *per_counter.entry(i).or_insert(0) += n;
    }
    for (i, n) in per_counter {
        assert_eq!(n, i.min(60), "counter {i} admitted {n} of 60 attempts");
    }
    assert!(script_calls(&redis) >= 2400, "every check went to Redis");
    // Over keygate's own connection (the `redis` crate's does not name itself so).
    let clients = redis.cmd("CLIENT LIST");
    assert!(
        clients
            .lines()
            .any(|c| c.contains("name=keygate-limiter") && c.contains("cmd=evalsha")),
        "{clients}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_in_flight_across_a_restart_never_get_another_checks_answer() {
    let redis = Redis::start();
    let limiter = exact(&redis);
    let mut tasks = Vec::new();
    for i in 1..=30u64 {
        let limiter = Arc::clone(&limiter);
        tasks.push(tokio::spawn(async move {
            for _ in 0..60 {
                check_own(&limiter, "r", i).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    // Midway, twice: the server dies with checks in flight and comes back empty.
    let restarts = tokio::task::spawn_blocking(move || {
        let mut redis = redis;
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(120));
            redis.restart();
        }
        redis
    });
    for t in tasks {
        t.await.unwrap();
    }
    let redis = restarts.await.unwrap();
    assert!(
        script_calls(&redis) > 0,
        "checks reached the restarted server"
    );
}

#[tokio::test]
async fn a_redis_that_forgets_its_scripts_or_restarts_is_used_again_at_once() {
    let mut redis = Redis::start();
    let limiter = Limiter::Redis(RedisLimiter::new(redis_store(&redis), "kglimit", 1, 0));
    assert_eq!(admitted(&limiter, "flush", 10, 4).await, 4);
    // The script cache emptied (as by `SCRIPT FLUSH` or a failover): the next check loads it
    // again and the shared count goes on where it was.
    assert!(redis.cmd("SCRIPT FLUSH").contains("OK"));
    assert_eq!(admitted(&limiter, "flush", 10, 10).await, 6);
    let used = redis.cmd("HGET {kglimit:rl:o:acct}:k:k:flush c");
    assert_eq!(used.lines().last().map(str::trim), Some("10"), "{used}");

    // A restart (counters gone with it): a check sent on the dead connection falls back; the
    // next one connects again, at once, and Redis counts anew.
    redis.restart();
    admitted(&limiter, "poke", 10, 1).await;
    let calls = script_calls(&redis);
    let first = admitted(&limiter, "after", 3, 5).await;
    let used = redis.cmd("HGET {kglimit:rl:o:acct}:k:k:after c");
    assert_eq!(
        (first, used.lines().last().map(str::trim)),
        (3, Some("3")),
        "the checks after the restart went to the new server"
    );
    assert!(script_calls(&redis) > calls);
}

/// A Redis limiter (store timeout 300 ms) that has answered one check, then `redis` paused.
/// Two replicas are configured: the fallback admits half the limit, which tells the paths apart.
async fn paused_after_one_check(redis: &Redis) -> Limiter {
    let store = store_at(&redis.url(), None, Duration::from_millis(300));
    let limiter = Limiter::Redis(RedisLimiter::new(store, "kglimit", 2, 0));
    assert_eq!(admitted(&limiter, "warm", 10, 1).await, 1);
    redis.pause();
    limiter
}

#[tokio::test]
async fn a_silent_redis_costs_a_timeout_then_the_fallback_and_is_used_again_when_it_answers() {
    let redis = Redis::start();
    let limiter = paused_after_one_check(&redis).await;
    // One check waits out the timeout (300 ms); the next ones fall back at once: no
    // reconnecting to a server that just hung, no waiting again on a new connection.
    let hung = limit(10, Duration::from_secs(3600), Algorithm::FixedWindow);
    let (mut allowed, mut waits) = (0, Vec::new());
    for _ in 0..10 {
        let started = std::time::Instant::now();
        if limiter.acquire(&[(counter("k", "hung"), hung)]).await[0].allowed {
            allowed += 1;
        }
        waits.push(started.elapsed());
    }
    redis.resume();
    assert_eq!(allowed, 5, "the fallback's share");
    let slow = waits
        .iter()
        .filter(|w| **w >= Duration::from_millis(250))
        .count();
    assert_eq!(slow, 1, "checks that waited for the hung server: {waits:?}");
    // Redis answers again: the next checks are shared (the full limit, counted in Redis).
    let (mut shared, mut name) = (0, String::new());
    for attempt in 0..50 {
        name = format!("back{attempt}");
        shared = admitted(&limiter, &name, 4, 6).await;
        if shared == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let used = redis.cmd(&format!("HGET {{kglimit:rl:o:acct}}:k:k:{name} c"));
    assert_eq!(
        (shared, used.lines().last().map(str::trim)),
        (4, Some("4")),
        "shared limits are back once Redis answers"
    );
}

/// Callers that all give up before the store timeout (clients that went away) never time out
/// on a hung connection themselves: a later check finds it hung and falls back at once, rather
/// than every check queueing behind it for as long as the server hangs.
#[tokio::test]
async fn a_hung_redis_whose_callers_all_gave_up_is_found_hung_by_a_later_check() {
    let redis = Redis::start();
    let limiter = paused_after_one_check(&redis).await;
    let l = limit(10, Duration::from_secs(3600), Algorithm::FixedWindow);
    let paused = std::time::Instant::now();
    let mut answered_at = None;
    while paused.elapsed() < Duration::from_secs(2) {
        // Each caller gives up after 50 ms, well before the store timeout.
        let counters = [(counter("k", "gone"), l)];
        let check = limiter.acquire(&counters);
        if let Ok(d) = tokio::time::timeout(Duration::from_millis(50), check).await {
            assert!(d[0].allowed, "the fallback admits");
            answered_at = Some(paused.elapsed());
            break;
        }
    }
    redis.resume();
    let at = answered_at.expect("every check queued behind the hung connection for 2 s");
    assert!(
        at >= Duration::from_millis(250),
        "answered by the fallback {at:?} after Redis stopped: before the store timeout"
    );
}

#[tokio::test]
async fn the_password_and_database_in_the_settings_are_used() {
    let redis = Redis::start();
    assert!(redis.cmd("CONFIG SET requirepass s3cret-pw").contains("OK"));
    let url = format!("{}/3", redis.url());
    // Right password: the full limit, counted in Redis. Wrong one: the fallback's half.
    let right = Limiter::Redis(RedisLimiter::new(
        store_at(&url, Some("s3cret-pw"), Duration::from_secs(2)),
        "kglimit",
        2,
        0,
    ));
    assert_eq!(admitted(&right, "auth", 6, 8).await, 6);
    let wrong = Limiter::Redis(RedisLimiter::new(
        store_at(&url, Some("not-it"), Duration::from_secs(2)),
        "kglimit",
        2,
        0,
    ));
    assert_eq!(admitted(&wrong, "auth-wrong", 6, 8).await, 3);
    let keys = common::redis::raw_command_in(redis.port, "s3cret-pw", 3, "KEYS *auth*");
    assert!(keys.contains("k:auth"), "{keys}");
    assert!(!keys.contains("auth-wrong"), "{keys}");
}
