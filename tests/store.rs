//! One store test suite, run against every backend: the embedded file, standalone Redis, a
//! 3-master Redis Cluster, and Redis behind a sentinel — all real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::redis::{Redis, RedisCluster, RedisSentinel};
use keygate::config::{RedisConfig, RedisTopology, StoreConfig};
use keygate::key::{Environment, KeyFormat, KeyHasher, KeyType};
use keygate::store::{Invalidation, KeyRecord, KeyState, KeyStore, NewRecord, Store, StoreError};
use keygate::time::Timestamp;

fn mint(owner: &str) -> KeyRecord {
    mint_where(owner, |_| true)
}

/// A successor of `old` for `store.rotate`: in a sharded store, minted into `old`'s shard.
async fn successor(store: &Store, old: &KeyRecord) -> KeyRecord {
    let steer = store.lineage(&old.lookup_hash).await.unwrap();
    mint_where(&old.owner, |h| steer.is_none_or(|s| s.accepts(h)))
}

fn mint_where(owner: &str, accept: impl Fn(&keygate::key::LookupHash) -> bool) -> KeyRecord {
    let format = KeyFormat::new(&Default::default()).unwrap();
    let req = NewRecord {
        key_type: KeyType::Secret,
        environment: Environment::Live,
        owner: owner.into(),
        name: Some("n".into()),
        scopes: vec!["payments:read".into()],
        expires_in: None,
        metadata: [("team".to_owned(), "billing".to_owned())].into(),
        ip_allowlist: vec!["10.0.0.0/8".parse().unwrap()],
        rate_limit: Some(keygate::store::KeyRateLimit::Tier { tier: "pro".into() }),
        restrictions: [("country".to_owned(), vec!["NG".to_owned(), "KE".to_owned()])].into(),
    };
    req.mint_where(&format, &KeyHasher::new(None), Timestamp::now(), accept)
        .unwrap()
        .1
}

fn redis_store(topology: RedisTopology) -> Store {
    Store::open(&StoreConfig::Redis(RedisConfig {
        topology,
        password: None,
        key_prefix: "kgtest".into(),
        timeout: Duration::from_secs(2),
        shards: keygate::config::DEFAULT_SHARDS,
        write_replicas: 0,
    }))
    .unwrap()
}

/// What every backend must do.
async fn suite(store: Store) {
    store.health().await.unwrap();
    let a = mint("acct_a");
    let b = mint("acct_b");
    store.insert(a.clone()).await.unwrap();
    store.insert(b.clone()).await.unwrap();

    // Lookup by hash and by id return the record as inserted.
    let found = store.find_by_hash(a.lookup_hash).await.unwrap().unwrap();
    assert_eq!(*found, a);
    assert_eq!(*store.get(&b.id).await.unwrap().unwrap(), b);
    assert!(
        store
            .find_by_hash(mint("x").lookup_hash)
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.get("key_nope").await.unwrap().is_none());
    let ids: Vec<String> = store
        .list()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id.clone())
        .collect();
    assert_eq!(
        ids,
        vec![a.id.clone(), b.id.clone()],
        "listing is in creation order"
    );

    // Same id or same hash again: conflict, nothing changes.
    assert!(matches!(
        store.insert(a.clone()).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(store.list().await.unwrap().len(), 2);

    // Revocation is visible and announced.
    let mut rx = store.subscribe();
    let revoked = store.revoke(&a.id, Timestamp::now()).await.unwrap();
    assert_eq!(revoked.state(Timestamp::now()), KeyState::Revoked);
    assert_eq!(
        store
            .find_by_hash(a.lookup_hash)
            .await
            .unwrap()
            .unwrap()
            .state(Timestamp::now()),
        KeyState::Revoked
    );
    let inv = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Ok(Invalidation::Key(h)) = rx.recv().await
                && h == a.lookup_hash
            {
                return;
            }
        }
    })
    .await;
    assert!(inv.is_ok(), "revocation was not announced");
    assert!(matches!(
        store.revoke("key_nope", Timestamp::now()).await,
        Err(StoreError::NotFound(_))
    ));

    // Rotation without grace: one atomic step, old revoked, links both ways.
    let c = successor(&store, &b).await;
    let old = store.rotate(&b.id, c.clone(), None).await.unwrap();
    assert!(old.revoked_at.is_some());
    assert_eq!(old.rotated_to.as_deref(), Some(c.id.as_str()));
    let stored_c = store.get(&c.id).await.unwrap().unwrap();
    assert_eq!(stored_c.rotated_from.as_deref(), Some(b.id.as_str()));
    assert_eq!(
        store
            .find_by_hash(b.lookup_hash)
            .await
            .unwrap()
            .unwrap()
            .state(Timestamp::now()),
        KeyState::Revoked
    );
    // A retired key cannot be rotated again, and the failed attempt leaves nothing behind.
    let d = successor(&store, &b).await;
    assert!(matches!(
        store.rotate(&b.id, d.clone(), None).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.find_by_hash(d.lookup_hash).await.unwrap().is_none());

    // Rotation with grace: the old key stays active until the grace ends.
    let e = successor(&store, &c).await;
    let later = Timestamp::now().saturating_add(Duration::from_secs(3600));
    let old = store.rotate(&c.id, e.clone(), Some(later)).await.unwrap();
    assert_eq!(old.expires_at, Some(later));
    assert_eq!(old.state(Timestamp::now()), KeyState::Active);
    assert_eq!(
        store
            .find_by_hash(e.lookup_hash)
            .await
            .unwrap()
            .unwrap()
            .state(Timestamp::now()),
        KeyState::Active
    );

    // Usage: the latest time wins; an older report does not move it back.
    store
        .record_usage(vec![(e.id.clone(), Timestamp::from_unix(2_000_000_000))])
        .await
        .unwrap();
    store
        .record_usage(vec![(e.id.clone(), Timestamp::from_unix(1_000_000_000))])
        .await
        .unwrap();
    assert_eq!(
        store.get(&e.id).await.unwrap().unwrap().last_used_at,
        Some(Timestamp::from_unix(2_000_000_000))
    );
    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 4);
    assert_eq!(
        listed.iter().find(|r| r.id == e.id).unwrap().last_used_at,
        Some(Timestamp::from_unix(2_000_000_000))
    );
    // Usage is not an auth change: the record found by hash is otherwise unchanged.
    assert!(
        store
            .find_by_hash(e.lookup_hash)
            .await
            .unwrap()
            .unwrap()
            .same_for_auth(&e_with_link(&e, &c))
    );
}

fn e_with_link(e: &KeyRecord, from: &KeyRecord) -> KeyRecord {
    let mut e = e.clone();
    e.rotated_from = Some(from.id.clone());
    e
}

#[tokio::test]
async fn file_backend() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&StoreConfig::File {
        path: dir.path().join("keys.json"),
        read_only: false,
        reload_interval: Duration::from_millis(50),
    })
    .unwrap();
    suite(store).await;
}

#[tokio::test]
async fn redis_standalone_backend() {
    let redis = Redis::start();
    suite(redis_store(RedisTopology::Standalone { url: redis.url() })).await;
    // Everything lives under the configured prefix: records in shard tags, control keys
    // (the layout marker) under the prefix's own tag.
    let keys = redis.cmd("KEYS *");
    assert!(
        keys.contains("{kgtest}:layout") && keys.contains(":rec:") && keys.contains(":ids"),
        "{keys}"
    );
    assert!(
        !keys.lines().any(|l| l.starts_with("kg")
            || (l.contains(':') && !l.contains("{kgtest}") && !l.contains("{kgtest#"))),
        "{keys}"
    );
    assert!(
        !keys.contains("{kgtest}:rec:"),
        "a record in the single slot: {keys}"
    );
}

#[tokio::test]
async fn redis_cluster_backend() {
    let cluster = RedisCluster::start();
    suite(redis_store(RedisTopology::Cluster {
        nodes: cluster.urls(),
    }))
    .await;
}

#[tokio::test]
async fn redis_sentinel_backend() {
    let s = RedisSentinel::start();
    suite(redis_store(RedisTopology::Sentinel {
        sentinels: vec![s.sentinel_url()],
        master: "mymaster".into(),
    }))
    .await;
}

#[tokio::test]
async fn redis_changes_reach_other_replicas_over_pubsub() {
    let redis = Redis::start();
    let a = redis_store(RedisTopology::Standalone { url: redis.url() });
    let b = redis_store(RedisTopology::Standalone { url: redis.url() });
    let _sub = b.spawn_background(&StoreConfig::Redis(RedisConfig {
        topology: RedisTopology::Standalone { url: redis.url() },
        password: None,
        key_prefix: "kgtest".into(),
        timeout: Duration::from_secs(2),
        shards: keygate::config::DEFAULT_SHARDS,
        write_replicas: 0,
    }));
    let mut rx = b.subscribe();
    // The first message after subscribing is a full clear.
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap(),
        Invalidation::All
    );
    let rec = mint("acct_1");
    a.insert(rec.clone()).await.unwrap();
    a.revoke(&rec.id, Timestamp::now()).await.unwrap();
    // Two changes, each published bare (for replicas of the previous release) and stamped.
    for _ in 0..4 {
        let got = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, Invalidation::Key(rec.lookup_hash));
    }
    // A dropped subscription is re-established and announced as a full clear.
    let killed = redis.cmd("CLIENT KILL TYPE pubsub");
    assert!(killed.starts_with(":1"), "{killed}");
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap(),
        Invalidation::All
    );
}

#[tokio::test]
async fn redis_sentinel_failover_moves_writes_to_the_new_master() {
    let s = RedisSentinel::start_with_replica();
    let store = redis_store(RedisTopology::Sentinel {
        sentinels: vec![s.sentinel_url()],
        master: "mymaster".into(),
    });
    let before = mint("acct_a");
    store.insert(before.clone()).await.unwrap();
    // Replication is asynchronous: only a write the replica has can survive its promotion.
    let replica = s.replica.as_ref().unwrap().port;
    let probe = format!("EXISTS {}", common::redis::names::id("kgtest", &before.id));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !common::redis::raw_command(replica, &probe).is_some_and(|r| r.starts_with(":1")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica never got the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let promoted = s.failover();
    // The first command after the failover may hit the demoted master (READONLY) or a closed
    // connection; keygate re-resolves the master through the sentinel and goes on.
    let after = mint("acct_a");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match store.insert(after.clone()).await {
            Ok(()) | Err(StoreError::Conflict(_)) => break,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "store never recovered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    // Reads may meet a connection the failover closed once; keygate reconnects on the next.
    for (rec, what) in [
        (&before, "replicated data lost"),
        (&after, "new write not readable"),
    ] {
        let mut found = false;
        for _ in 0..50 {
            if let Ok(Some(_)) = store.find_by_hash(rec.lookup_hash).await {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(found, "{what}");
    }
    let on_new_master = common::redis::raw_command(
        promoted,
        &format!("EXISTS {}", common::redis::names::id("kgtest", &after.id)),
    )
    .unwrap();
    assert!(
        on_new_master.starts_with(":1"),
        "write did not land on the promoted master: {on_new_master}"
    );
}
