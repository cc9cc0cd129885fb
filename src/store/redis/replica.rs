//! This process as a replica of the Redis store: it acknowledges each invalidation it applied
//! (the sequence number it reached, `{p}:applied`) with a heartbeat (`{p}:replicas`, scored by
//! Redis's clock), and a writer waits for every live replica to reach its own change.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::scripts::{ACK, ROLL_CALL};
use super::{Inner, RedisStore};
use crate::store::propagation::{FORGET, HEARTBEAT, Propagation, Seen, tally};

/// A serving process's identity and the nudge that sends its acknowledgement now.
pub(super) struct Replica {
    pub id: String,
    pub nudge: Notify,
}

/// How often a waiting writer asks again.
const POLL: Duration = Duration::from_millis(2);

impl RedisStore {
    /// Registers this process as a replica named `id` and keeps its heartbeat and
    /// acknowledgements flowing, while subscribed to the invalidation feed (a replica that lost
    /// its subscription falls silent, and writers report it as not acknowledged).
    pub fn spawn_replica(&self, id: String) -> tokio::task::JoinHandle<()> {
        let replica = Arc::new(Replica {
            id,
            nudge: Notify::new(),
        });
        let _ = self.inner.replica.set(Arc::clone(&replica));
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = replica.nudge.notified() => {}
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                if !inner.subscribed.load(Ordering::Acquire) {
                    continue;
                }
                let store = RedisStore { inner };
                let applied = store.inner.applied.load(Ordering::Acquire);
                let mut inv = ACK.prepare_invoke();
                inv.key(store.inner.keys.replicas())
                    .key(store.inner.keys.applied())
                    .arg(&replica.id)
                    .arg(applied)
                    .arg(u64::try_from(FORGET.as_millis()).unwrap_or(u64::MAX));
                if let Err(e) = store.eval::<String>(inv).await {
                    tracing::debug!(error = %e, "replica heartbeat failed");
                }
            }
        })
    }

    /// Waits until every live replica has applied everything this process wrote, or `timeout`.
    pub async fn await_propagation(&self, timeout: Duration) -> Propagation {
        let token = self.inner.written.load(Ordering::Acquire);
        let started = Instant::now();
        loop {
            let report = self.roll_call(token, started.elapsed()).await;
            match report {
                Some(p) if p.complete() || started.elapsed() >= timeout => return p,
                None if started.elapsed() >= timeout => {
                    return Propagation {
                        tracked: true,
                        late: vec!["the replica list cannot be read (Redis unreachable)".into()],
                        waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(0),
                        ..Propagation::default()
                    };
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
    }

    async fn roll_call(&self, token: u64, waited: Duration) -> Option<Propagation> {
        let mut inv = ROLL_CALL.prepare_invoke();
        inv.key(self.inner.keys.replicas())
            .key(self.inner.keys.applied());
        let rows: Vec<String> = self.eval(inv).await.ok()?;
        let now: u64 = rows.first()?.parse().ok()?;
        let seen: Vec<Seen> = rows[1..]
            .chunks_exact(3)
            .filter_map(|r| {
                let beat: f64 = r[1].parse().ok()?;
                let applied: u64 = r[2].parse().ok()?;
                Some(Seen {
                    id: r[0].clone(),
                    silent: Duration::from_millis(now.saturating_sub(beat as u64)),
                    applied: applied >= token,
                })
            })
            .collect();
        Some(tally(&seen, waited))
    }
}

impl Inner {
    /// Applied everything up to `seq`: acknowledge now.
    pub(super) fn applied_up_to(&self, seq: u64) {
        self.applied.fetch_max(seq, Ordering::AcqRel);
        if let Some(r) = self.replica.get() {
            r.nudge.notify_one();
        }
    }
}
