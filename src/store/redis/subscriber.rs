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
                // the current sequence is applied.
                let store = RedisStore {
                    inner: Arc::clone(&inner),
                };
                if let Ok(Some(seq)) = store
                    .query::<Option<u64>>(redis::cmd("GET").arg(inner.keys.invseq()).clone())
                    .await
                {
                    inner.applied_up_to(seq);
                }
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
                let inv = if hash == "*" {
                    Invalidation::All
                } else {
                    match hash.parse::<LookupHash>() {
                        Ok(h) => Invalidation::Key(h),
                        Err(_) => continue,
                    }
                };
                // `<Redis ms>#<sequence>` (the sequence since this release).
                let (at, seq) = match stamp.split_once('#') {
                    Some((at, seq)) => (at, seq.parse::<u64>().ok()),
                    None => (stamp, None),
                };
                let Some(inner) = inner.upgrade() else { return };
                if let Ok(at_ms) = at.parse::<u64>() {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    inner
                        .changes
                        .observe_lag(Duration::from_millis(now_ms.saturating_sub(at_ms)));
                }
                inner.changes.publish(inv);
                // Applied (synchronously, above): acknowledge it.
                if let Some(seq) = seq {
                    inner.applied_up_to(seq);
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
