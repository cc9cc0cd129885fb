//! Many replicas on one Redis: shared keys, revocation across proxies, and safe failure when
//! Redis dies, hangs or loses the subscription. Real redis-server processes, real proxies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::redis::Redis;
use common::*;
use keygate::key::{Environment, KeyType};
use keygate::store::KeyStore;

#[tokio::test]
async fn keys_and_revocations_are_shared_between_proxies() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let a = Keygate::start_redis(&up.url(), &redis.url(), "").await;
    let b = Keygate::start_redis(&up.url(), &redis.url(), "").await;

    // Created through A's store, used through B.
    let (key, id) = a.live_key().await;
    let auth = bearer(&key);
    assert_eq!(
        get(&b.url("/"), &[("authorization", &auth)]).await.status,
        200
    );
    assert_eq!(
        get(&a.url("/"), &[("authorization", &auth)]).await.status,
        200
    );

    // Revoked through A: B (which has the key cached) refuses it within a second.
    a.tool.revoke(&id, "test").await.unwrap();
    assert_eventually!(
        get(&b.url("/"), &[("authorization", &auth)]).await.code() == "expired_key",
        Duration::from_secs(1),
        "revocation did not reach the other proxy"
    );
    assert_eq!(
        get(&a.url("/"), &[("authorization", &auth)]).await.code(),
        "expired_key"
    );
}

#[tokio::test]
async fn redis_down_fails_closed_and_recovers_by_itself() {
    let mut redis = Redis::start();
    let up = Upstream::start().await;
    let kg = Keygate::start_redis(&up.url(), &redis.url(), "").await;
    let ops = kg.ops_addr;

    let (cached, _) = kg.live_key().await;
    let (uncached, _) = kg.live_key().await;
    let (revoked, revoked_id) = kg.live_key().await;
    let format = keygate::key::KeyFormat::new(&Default::default()).unwrap();
    let bogus = format
        .generate(KeyType::Secret, Environment::Live)
        .unwrap()
        .key;
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &bearer(&cached))])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &bearer(&revoked))])
            .await
            .status,
        200
    );
    kg.tool.revoke(&revoked_id, "test").await.unwrap();
    assert_eventually!(
        get(&kg.url("/"), &[("authorization", &bearer(&revoked))])
            .await
            .code()
            == "expired_key",
        Duration::from_secs(1),
        "revocation not applied"
    );

    // Persist what we have, then kill Redis outright.
    assert!(redis.cmd("SAVE").starts_with("+OK"));
    redis.kill();

    let mut wrongly_allowed = 0;
    for _ in 0..3 {
        let r = get(&kg.url("/"), &[("authorization", &bearer(&cached))]).await;
        assert_eq!(
            r.status, 200,
            "a cached key must keep working while Redis is down"
        );
        for k in [&uncached, &bogus] {
            let r = get(&kg.url("/"), &[("authorization", &bearer(k))]).await;
            if r.status == 200 {
                wrongly_allowed += 1;
            }
            assert_eq!(
                (r.status.as_u16(), r.code().as_str()),
                (503, "auth_unavailable")
            );
            assert!(r.headers.contains_key("retry-after"));
        }
        let r = get(&kg.url("/"), &[("authorization", &bearer(&revoked))]).await;
        if r.status == 200 {
            wrongly_allowed += 1;
        }
        assert_eq!(get(&kg.url("/"), &[]).await.code(), "unauthorized");
    }
    assert_eq!(wrongly_allowed, 0);
    let ready = get(&format!("http://{ops}/readyz"), &[]).await;
    assert_eq!(ready.status, 503, "readyz must report the store down");
    let traffic = get(&format!("http://{ops}/readyz?store=ignore"), &[]).await;
    assert_eq!(
        traffic.status, 200,
        "the store-independent readiness stays up"
    );

    // Redis comes back (with its data): the proxy recovers without a restart.
    redis.restart();
    assert_eventually!(
        get(&kg.url("/"), &[("authorization", &bearer(&uncached))])
            .await
            .status
            == 200,
        Duration::from_secs(10),
        "valid key not accepted after Redis returned"
    );
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &bearer(&bogus))])
            .await
            .code(),
        "invalid_key"
    );
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &bearer(&revoked))])
            .await
            .code(),
        "expired_key"
    );
    assert_eventually!(
        get(&format!("http://{ops}/readyz"), &[]).await.status == 200,
        Duration::from_secs(5),
        "readyz did not recover"
    );
}

#[tokio::test]
async fn a_hung_redis_times_out_instead_of_hanging_requests() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let kg = Keygate::start_redis(&up.url(), &redis.url(), "").await;
    let (cached, _) = kg.live_key().await;
    let (uncached, _) = kg.live_key().await;
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &bearer(&cached))])
            .await
            .status,
        200
    );

    redis.pause();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        get(&kg.url("/"), &[("authorization", &bearer(&uncached))]),
    )
    .await
    .expect("request hung on a paused Redis");
    assert_eq!(r.code(), "auth_unavailable");
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &bearer(&cached))])
            .await
            .status,
        200
    );
    redis.resume();
    assert_eventually!(
        get(&kg.url("/"), &[("authorization", &bearer(&uncached))])
            .await
            .status
            == 200,
        Duration::from_secs(10),
        "not recovered after Redis resumed"
    );
}

#[tokio::test]
async fn stale_limit_bounds_how_long_cached_keys_outlive_the_store() {
    let mut redis = Redis::start();
    let up = Upstream::start().await;
    let serves = Keygate::start_redis(
        &up.url(),
        &redis.url(),
        "[auth]\ncache_ttl = \"1s\"\nstale_limit = \"1h\"\n",
    )
    .await;
    let strict = Keygate::start_redis(
        &up.url(),
        &redis.url(),
        "[auth]\ncache_ttl = \"1s\"\nstale_limit = \"1s\"\n",
    )
    .await;
    let (key, _) = serves.live_key().await;
    let auth = bearer(&key);
    assert_eq!(
        get(&serves.url("/"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&strict.url("/"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    redis.kill();
    // Past cache_ttl the record is due for a refresh, which fails.
    assert_eventually!(
        get(&strict.url("/"), &[("authorization", &auth)])
            .await
            .code()
            == "auth_unavailable",
        Duration::from_secs(5),
        "past the stale limit the key must not be accepted without the store"
    );
    assert_eq!(
        get(&serves.url("/"), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    assert!(serves.metrics.stale_served.load(Ordering::SeqCst) >= 1);
}

/// A key cached by a running keygate, then marked revoked in Redis without announcing it (so
/// still served from the cache): the store, the upstream, keygate, the `Authorization` value
/// and the record's Redis key.
async fn cached_then_revoked_unannounced() -> (Redis, Upstream, Keygate, String, String) {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let kg = Keygate::start_redis(&up.url(), &redis.url(), "").await;
    let (key, id) = kg.live_key().await;
    let auth = bearer(&key);
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &auth)]).await.status,
        200
    );
    let rec_key = revoke_unannounced(&redis, &id).await;
    assert_eq!(
        get(&kg.url("/"), &[("authorization", &auth)]).await.status,
        200,
        "still cached"
    );
    (redis, up, kg, auth, rec_key)
}

/// Marks key `id` revoked in Redis without announcing it; returns the record's key name.
async fn revoke_unannounced(redis: &Redis, id: &str) -> String {
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let hash: String = ::redis::cmd("GET")
        .arg(common::redis::names::id("keygate", id))
        .query_async(&mut conn)
        .await
        .unwrap();
    let rec_key = common::redis::names::rec("keygate", &hash);
    let json: String = ::redis::cmd("GET")
        .arg(&rec_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut rec: serde_json::Value = serde_json::from_str(&json).unwrap();
    rec["revoked_at"] = "2020-01-01T00:00:00Z".into();
    let _: () = ::redis::cmd("SET")
        .arg(&rec_key)
        .arg(rec.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    rec_key
}

#[tokio::test]
async fn lost_subscription_clears_the_cache() {
    // Revoked behind keygate's back, as if the invalidation had been lost.
    let (redis, _up, kg, auth, _) = cached_then_revoked_unannounced().await;

    // The subscription drops; on reconnect keygate must assume it missed changes.
    assert!(redis.cmd("CLIENT KILL TYPE pubsub").starts_with(":1"));
    assert_eventually!(
        get(&kg.url("/"), &[("authorization", &auth)]).await.code() == "expired_key",
        Duration::from_secs(5),
        "cache not cleared after the subscription was re-established"
    );
}

#[tokio::test]
async fn last_used_is_batched_and_flushed_on_shutdown() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let kg = Keygate::start_redis(&up.url(), &redis.url(), "").await;
    let (key, id) = kg.live_key().await;
    for _ in 0..20 {
        assert_eq!(
            get(&kg.url("/"), &[("authorization", &bearer(&key))])
                .await
                .status,
            200
        );
    }
    // No write per request: nothing recorded yet (the flush interval is 60 s).
    assert!(
        redis
            .cmd(&format!(
                "HGET {} {id}",
                common::redis::names::used("keygate", &id)
            ))
            .starts_with("$-1")
    );
    let store = kg.store.clone();
    kg.stop().await.unwrap();
    let rec = store.get(&id).await.unwrap().unwrap();
    assert!(
        rec.last_used_at.is_some(),
        "usage lost on graceful shutdown"
    );
}

#[tokio::test]
async fn cancelled_requests_leave_no_lookup_behind() {
    let redis = Redis::start();
    let up = Upstream::start().await;
    let kg = Keygate::start_redis(&up.url(), &redis.url(), "").await;
    let format = keygate::key::KeyFormat::new(&Default::default()).unwrap();
    redis.pause();
    // Clients that give up while keygate waits on the hung store.
    for _ in 0..20 {
        let bogus = bearer(
            &format
                .generate(KeyType::Secret, Environment::Live)
                .unwrap()
                .key,
        );
        let url = kg.url("/");
        let _ = tokio::time::timeout(Duration::from_millis(50), async move {
            get(&url, &[("authorization", &bogus)]).await
        })
        .await;
    }
    // Every lookup ends (store timeout) and leaves the flight map, waiters or not.
    assert_eventually!(
        kg.verifier.flights_in_progress() == 0,
        Duration::from_secs(5),
        "lookups leaked"
    );
    redis.resume();
}

#[tokio::test]
async fn a_gap_in_a_shards_invalidation_sequence_clears_the_cache() {
    // Revoked behind keygate's back, as if the invalidation had been lost on the way (messages
    // cross a Cluster's bus between nodes).
    let (redis, _up, kg, auth, rec_key) = cached_then_revoked_unannounced().await;
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // The shard's next change arrives numbered two ahead: one was missed.
    let shard = rec_key
        .split('#')
        .nth(1)
        .and_then(|r| r.split('}').next())
        .unwrap()
        .to_owned();
    let seq: u64 = ::redis::cmd("GET")
        .arg(format!("{{keygate#{shard}}}:invseq"))
        .query_async::<Option<u64>>(&mut conn)
        .await
        .unwrap()
        .unwrap_or(0);
    let other = "ab".repeat(32);
    let _: () = ::redis::cmd("PUBLISH")
        .arg("{keygate}:invalidate")
        .arg(format!("{other}@1#{shard}/{}", seq + 2))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eventually!(
        get(&kg.url("/"), &[("authorization", &auth)]).await.code() == "expired_key",
        Duration::from_secs(5),
        "a missed invalidation was not noticed"
    );
}
