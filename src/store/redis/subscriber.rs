//! The invalidation feed: a subscription to `{p}:invalidate`, kept alive with pings and
//! re-established with backoff; while it is down, cached records are not trusted.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use redis::RedisResult;

use super::{Inner, RedisStore, SUBSCRIPTION_PING};
use crate::key::LookupHash;
use crate::store::Invalidation;

impl RedisStore {
    /// Keeps a subscription to the invalidation channel, reconnecting with backoff. After every
    /// (re)subscription the local caches are cleared: changes may have been missed meanwhile.
    pub fn spawn_subscriber(&self) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            let mut ever_subscribed = false;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let channel = inner.keys.channel();
                let timeout = inner.timeout * 2;
                let connected = tokio::time::timeout(timeout, async {
                    let mut ps = inner.source.connect().await?;
                    ps.subscribe(&channel).await?;
                    RedisResult::Ok(ps)
                })
                .await;
                let ps = match connected {
                    Ok(Ok(ps)) => ps,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "redis invalidation subscription failed; retrying");
                        drop(inner);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                    Err(_) => {
                        tracing::warn!("redis invalidation subscription timed out; retrying");
                        drop(inner);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                };
                backoff = Duration::from_millis(50);
                if ever_subscribed {
                    tracing::warn!(
                        "redis invalidation subscription re-established; clearing the key cache"
                    );
                } else {
                    tracing::info!("subscribed to redis invalidations");
                }
                ever_subscribed = true;
                inner.subscribed.store(true, Ordering::Release);
                inner.changes.publish(Invalidation::All);
                // The cache is clear and every later change will be heard: everything up to
                // the current sequences is applied. The layout may have changed meanwhile too.
                let store = RedisStore {
                    inner: Arc::clone(&inner),
                };
                store.forget_layout();
                store.catch_up().await;
                drop(store);
                let master = inner.source.master_addr().await;
                let weak_inner = Arc::downgrade(&inner);
                drop(inner);
                follow(ps, timeout, weak_inner.clone(), master).await;
                if let Some(inner) = weak_inner.upgrade() {
                    // Until we are subscribed again, cached records are re-read on every use.
                    inner.subscribed.store(false, Ordering::Release);
                }
                tracing::warn!("redis invalidation subscription lost; reconnecting");
            }
        })
    }
}

/// A stamp's sequence: `<n>` (single-slot) or `<shard>/<n>`.
fn parse_seq(s: &str) -> Option<(Option<u16>, u64)> {
    match s.split_once('/') {
        None => Some((None, s.parse().ok()?)),
        Some((shard, n)) => Some((Some(shard.parse().ok()?), n.parse().ok()?)),
    }
}

impl RedisStore {
    /// After (re)subscribing: every sequence as it stands now counts as applied.
    async fn catch_up(&self) {
        let keys = &self.inner.keys;
        if let Ok(Some(seq)) = self
            .query::<Option<u64>>(redis::cmd("GET").arg(keys.invseq()).clone())
            .await
        {
            self.inner.applied_up_to(None, seq);
        }
        let Ok(Some(n)) = self.layout().await.map(super::Layout::shards) else {
            return;
        };
        let seqs = futures_util::future::join_all((0..n).map(|s| async move {
            let key = keys.sharded(s, "invseq");
            (
                s,
                self.query::<Option<u64>>(redis::cmd("GET").arg(key).clone())
                    .await,
            )
        }))
        .await;
        for (s, seq) in seqs {
            // A shard never written counts from 0.
            if let Ok(seq) = seq {
                self.inner.applied_up_to(Some(s), seq.unwrap_or(0));
            }
        }
    }
}

/// Forwards invalidation messages until the subscription dies (stream end, failed ping, or —
/// under Sentinel — the master it listens to is no longer the master).
async fn follow(
    ps: redis::aio::PubSub,
    timeout: Duration,
    inner: std::sync::Weak<Inner>,
    master: Option<String>,
) {
    let (mut sink, mut stream) = ps.split();
    let mut ping = tokio::time::interval(SUBSCRIPTION_PING);
    ping.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return };
                let Ok(payload) = msg.get_payload::<String>() else { continue };
                let (hash, stamp) = payload.split_once('@').unwrap_or((&payload, ""));
                let Some(inner) = inner.upgrade() else { return };
                let inv = if hash == "*" {
                    Invalidation::All
                } else if hash == "*layout" {
                    // `keygate store migrate` moved the store: read the layout again, drop
                    // everything cached, and report the new layout in the next heartbeat.
                    RedisStore { inner: Arc::clone(&inner) }.forget_layout();
                    inner.changes.publish(Invalidation::All);
                    inner.nudge();
                    continue;
                } else {
                    match hash.parse::<LookupHash>() {
                        Ok(h) => Invalidation::Key(h),
                        Err(_) => continue,
                    }
                };
                // `<Redis ms>#<sequence>` single-slot, `<Redis ms>#<shard>/<sequence>` sharded.
                let (at, seq) = match stamp.split_once('#') {
                    Some((at, seq)) => (at, parse_seq(seq)),
                    None => (stamp, None),
                };
                if let Ok(at_ms) = at.parse::<u64>() {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    inner
                        .changes
                        .observe_lag(Duration::from_millis(now_ms.saturating_sub(at_ms)));
                }
                if let Some((shard, n)) = seq
                    && !inner.follows(shard, n)
                {
                    tracing::warn!(
                        shard = ?shard,
                        "an invalidation was missed (or the sequence went back in a failover); clearing the key cache"
                    );
                    inner.changes.publish(Invalidation::All);
                }
                inner.changes.publish(inv);
                // Applied (synchronously, above): acknowledge it.
                if let Some((shard, seq)) = seq {
                    inner.applied_up_to(shard, seq);
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(timeout, sink.ping::<String>()).await {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
                let Some(inner) = inner.upgrade() else { return };
                if master.is_some() && inner.source.master_addr().await != master {
                    tracing::warn!("redis master changed; moving the invalidation subscription");
                    return;
                }
            }
        }
    }
}
