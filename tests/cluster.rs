//! The sharded Redis store on a real Cluster, and the migration from the single-slot layout:
//! spread over three masters, lookups, rotations, revocations and the audit trail across
//! slots, a master failover during writes, and a single-slot store migrated while serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::redis::{Redis, RedisCluster};
use common::*;
use futures_util::StreamExt as _;
use keygate::key::{Environment, KeyFormat, KeyHasher, KeyType};
use keygate::store::{Layout, NewRecord, Store};
use keygate::time::Timestamp;

fn cluster_store(cluster: &RedisCluster, extra: &str) -> String {
    let nodes: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[store]\nbackend = \"redis\"\ncluster_nodes = [{}]\ntimeout = \"1s\"\n{extra}",
        nodes.join(", ")
    )
}

async fn create(kg: &Keygate, owner: &str) -> Result<(String, String), String> {
    kg.tool
        .create(
            NewRecord::new(owner, Environment::Live, KeyType::Secret),
            "test",
        )
        .await
        .map(|(k, r)| (k.key.clone(), r.id))
        .map_err(|e| e.to_string())
}

async fn status(kg: &Keygate, key: &str) -> u16 {
    get(&kg.url("/"), &[("authorization", &bearer(key))])
        .await
        .status
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_store_spreads_over_three_masters_and_works_across_slots() {
    let cluster = RedisCluster::start();
    let up = Upstream::start().await;
    let store = cluster_store(&cluster, "");
    let a = Keygate::start_store(&up.url(), &store, "").await;
    let b = Keygate::start_store(&up.url(), &store, "").await;

    // 1,000 keys over 10 owners, created through two processes (two audit writers).
    let made: Vec<(String, String)> = futures_util::stream::iter(0..1000)
        .map(|i| {
            let kg = if i % 2 == 0 { &a } else { &b };
            async move { create(kg, &format!("acct_{}", i % 10)).await.unwrap() }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    // Lookups from the presented key, each in its own slot, through both processes.
    for (key, _) in made.iter().take(100) {
        assert_eq!(status(&a, key).await, 200);
        assert_eq!(status(&b, key).await, 200);
    }
    // Rotations (successor in the predecessor's slot) and revocations, seen by the other
    // process before the call returned.
    for (key, id) in &made[100..120] {
        let (new_key, new, _) = a.tool.rotate(id, None, "test").await.unwrap();
        assert_eq!(status(&b, key).await, 401, "rotated key still works");
        assert_eq!(status(&b, &new_key.key).await, 200);
        assert_eq!(
            b.tool.get(&new.id).await.unwrap().rotated_from.as_deref(),
            Some(id.as_str())
        );
    }
    for (key, id) in &made[120..140] {
        b.tool.revoke(id, "test").await.unwrap();
        assert_eq!(status(&a, key).await, 401, "revoked key still works");
    }
    // The listing and the owner index, merged over every shard.
    assert_eq!(a.tool.list(None).await.unwrap().len(), 1020);
    let owner_3 = b.tool.list(Some("acct_3")).await.unwrap();
    assert!(owner_3.iter().all(|r| r.owner == "acct_3"));
    let all = a.tool.list(None).await.unwrap();
    let expected = all.iter().filter(|r| r.owner == "acct_3").count();
    assert!(expected >= 100);
    assert_eq!(owner_3.len(), expected);

    // Usage and audit flushed, then: each master holds 20-47% of the keys.
    a.audit().flush_aggregates().await;
    b.audit().flush_aggregates().await;
    a.audit().drain().await;
    b.audit().drain().await;
    let config = a.config.clone();
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let sizes: Vec<u64> = masters.iter().map(|p| cluster.dbsize(*p)).collect();
    let total: u64 = sizes.iter().sum();
    assert!(
        total >= 3000,
        "records, id entries and used fields: {sizes:?}"
    );
    eprintln!("keys per master: {sizes:?} of {total}");
    for s in &sizes {
        let share = *s as f64 / total as f64;
        assert!(
            (0.20..=0.47).contains(&share),
            "a master holds {:.1}% of the keys: {sizes:?}",
            share * 100.0
        );
    }

    // The audit trail: both writers' streams merged, every chain intact.
    let sink = keygate::audit::Sink::for_store_config(&config.audit, &config.store).unwrap();
    let lines = sink.read_lines(None, None).await.unwrap();
    let events: Vec<keygate::audit::Event> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let created = events
        .iter()
        .filter(|e| e.action == keygate::audit::Action::KeyCreated)
        .count();
    assert_eq!(created, 1020, "every creation and rotation is in the trail");
    let v = keygate::audit::verify(&events);
    assert!(v.problems.is_empty(), "{:?}", v.problems);
    assert!(v.chains >= 2, "one chain per writer: {}", v.chains);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_during_writes_loses_no_acknowledged_key() {
    // Two replicas each: the promoted replica still has one to acknowledge `WAIT 1`.
    let mut cluster = RedisCluster::start_with(2);
    let up = Upstream::start().await;
    let store = cluster_store(&cluster, "write_replicas = 1\n");
    let kg = Keygate::start_store(&up.url(), &store, "").await;
    let mut acked: Vec<(String, String)> = Vec::new();
    // A fresh cluster's replicas may still be syncing: a write they cannot acknowledge in time
    // is refused with "retry" (correctly), so the writes before the kill retry briefly.
    for i in 0..60 {
        let mut tries = 0;
        let made = loop {
            match create(&kg, &format!("acct_{}", i % 5)).await {
                Ok(made) => break made,
                Err(e) if tries < 20 => {
                    tries += 1;
                    eprintln!("before the kill, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("no write acknowledged before the kill: {e}"),
            }
        };
        acked.push(made);
    }
    // Kill a master (no graceful handover) while writes go on.
    let victim = cluster.masters()[0];
    cluster.kill(victim);
    let mut failed = 0;
    let mut last_error = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut after = 0;
    while after < 60 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes never recovered after the failover ({failed} failed, {after} succeeded; last: {last_error}); cluster: {:?}",
            cluster.masters()
        );
        match create(&kg, &format!("acct_{}", after % 5)).await {
            Ok(k) => {
                acked.push(k);
                after += 1;
            }
            Err(e) => {
                last_error = e;
                failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(
        failed > 0,
        "the failover was not noticed: the test proves nothing"
    );
    // Every acknowledged key is there and works, on the promoted replica too.
    for (key, id) in &acked {
        let mut ok = false;
        for _ in 0..40 {
            if kg.tool.get(id).await.is_ok() && status(&kg, key).await == 200 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "acknowledged key {id} was lost in the failover");
    }
    kg.stop().await.unwrap();
}

/// A record as the single-slot layout (releases before sharding) stored it.
fn write_single_slot(redis: &Redis, rec: &keygate::store::KeyRecord, seq: u64) {
    let hex = rec.lookup_hash.to_hex();
    let mut stored = rec.clone();
    stored.last_used_at = None;
    let json = serde_json::to_string(&stored).unwrap();
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_connection().unwrap();
    let _: () = ::redis::pipe()
        .cmd("SET")
        .arg(format!("{{keygate}}:rec:{hex}"))
        .arg(json)
        .cmd("SET")
        .arg(format!("{{keygate}}:id:{}", rec.id))
        .arg(&hex)
        .cmd("SADD")
        .arg(format!("{{keygate}}:owner:{}", rec.owner))
        .arg(&rec.id)
        .cmd("ZADD")
        .arg("{keygate}:ids")
        .arg(seq)
        .arg(&rec.id)
        .cmd("SET")
        .arg("{keygate}:seq")
        .arg(seq)
        .cmd("HSET")
        .arg("{keygate}:used")
        .arg(&rec.id)
        .arg(1_700_000_000)
        .query(&mut c)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_slot_store_migrates_while_serving_without_losing_a_key() {
    let redis = Redis::start();
    let format = KeyFormat::new(&Default::default()).unwrap();
    let hasher = KeyHasher::new(None);
    let mut keys = Vec::new();
    for i in 0..200u64 {
        let (key, rec) = NewRecord::new("acct_m", Environment::Live, KeyType::Secret)
            .mint(&format, &hasher, Timestamp::now())
            .unwrap();
        write_single_slot(&redis, &rec, i + 1);
        keys.push((key.key.clone(), rec.id));
    }
    let up = Upstream::start().await;
    let kg = Keygate::start_redis(&up.url(), &redis.url(), "").await;
    let Store::Redis(rs) = kg.store.clone() else {
        unreachable!()
    };
    assert_eq!(rs.layout().await.unwrap(), Layout::SingleSlot);
    for (key, _) in keys.iter().take(20) {
        assert_eq!(status(&kg, key).await, 200);
    }

    // Requests keep flowing during the migration; none may be refused.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (stop, refused, served) = (stop.clone(), refused.clone(), served.clone());
        let url = kg.url("/");
        let keys: Vec<String> = keys.iter().map(|(k, _)| k.clone()).collect();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[i % keys.len()];
                let s = get(&url, &[("authorization", &bearer(key))]).await.status;
                if s == 200 {
                    served.fetch_add(1, Ordering::Relaxed);
                } else {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                i += 7;
            }
        })
    };
    let migrator = keygate::store::RedisStore::open(match &kg.config.store {
        keygate::config::StoreConfig::Redis(r) => r,
        _ => unreachable!(),
    })
    .unwrap();
    while served.load(Ordering::Relaxed) < 30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut said = Vec::new();
    let m = migrator
        .migrate(64, |line| said.push(line.to_owned()))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{said:#?}"));
    assert_eq!(m.moved, 200, "{said:#?}");
    let at_end = served.load(Ordering::Relaxed);
    while served.load(Ordering::Relaxed) < at_end + 30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "a key was refused mid-migration"
    );
    // Run again: nothing to do.
    assert!(migrator.migrate(64, |_| {}).await.unwrap().already);

    assert_eq!(rs.layout().await.unwrap(), Layout::Sharded(64));
    assert!(
        redis.cmd("KEYS {keygate}:rec:*").starts_with("*0"),
        "single-slot records left"
    );
    let listed = kg.tool.list(None).await.unwrap();
    assert_eq!(listed.len(), 200);
    // Creation order and last use survive the move.
    let ids: Vec<&str> = listed.iter().map(|r| r.id.as_str()).collect();
    let want: Vec<&str> = keys.iter().map(|(_, id)| id.as_str()).collect();
    assert_eq!(ids, want);
    assert!(listed.iter().all(|r| r.last_used_at.is_some()));
    // Every key works; revocation and rotation work on the moved records.
    for (key, _) in &keys {
        assert_eq!(status(&kg, key).await, 200);
    }
    kg.tool.revoke(&keys[0].1, "test").await.unwrap();
    assert_eq!(status(&kg, &keys[0].0).await, 401);
    let (new_key, _, _) = kg.tool.rotate(&keys[1].1, None, "test").await.unwrap();
    assert_eq!(status(&kg, &keys[1].0).await, 401);
    assert_eq!(status(&kg, &new_key.key).await, 200);
    kg.stop().await.unwrap();
}
