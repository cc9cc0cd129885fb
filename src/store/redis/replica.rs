//! This process as a replica of the Redis store: it acknowledges each invalidation it applied
//! (the sequence number it reached, `{p}:applied`) with a heartbeat (`{p}:replicas`, scored by
//! Redis's clock), and a writer waits for every live replica to reach its own change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::scripts::{ACK, ROLL_CALL};
use super::{Inner, RedisStore};
use crate::store::propagation::{FORGET, HEARTBEAT, LIVE, Propagation, Seen, tally};

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
            // Shard sequences already acknowledged; all are sent again now and then, in case
            // this replica was forgotten meanwhile (silent for a minute).
            let mut sent: BTreeMap<u16, u64> = BTreeMap::new();
            let mut beats: u32 = 0;
            loop {
                tokio::select! {
                    _ = replica.nudge.notified() => {}
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                if !inner.subscribed.load(Ordering::Acquire) {
                    // Silent now, so possibly forgotten by the time it speaks again.
                    sent.clear();
                    continue;
                }
                let store = RedisStore { inner };
                beats = beats.wrapping_add(1);
                if beats.is_multiple_of(30) {
                    sent.clear();
                    // A replica that missed a `*layout` announcement catches up here.
                    store.forget_layout();
                }
                let (inv, fresh) = store.ack(&replica.id, &sent).await;
                match store.eval::<String>(inv).await {
                    Ok(_) => sent.extend(fresh),
                    Err(e) => {
                        sent.clear();
                        tracing::debug!(error = %e, "replica heartbeat failed");
                    }
                }
            }
        })
    }

    /// Waits until every live replica has applied everything this process wrote, or `timeout`.
    pub async fn await_propagation(&self, timeout: Duration) -> Propagation {
        let token = self.inner.written.load(Ordering::Acquire);
        let shards = self
            .inner
            .written_shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let started = Instant::now();
        loop {
            let report = self
                .roll_call_rows(token, &shards)
                .await
                .map(|(seen, _)| tally(&seen, started.elapsed()));
            match report {
                Some(p) if p.complete() => {
                    // Confirmed for every later wait too: later waits poll only newer writes.
                    let mut w = self
                        .inner
                        .written_shards
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    w.retain(|s, n| shards.get(s).is_none_or(|done| *n > *done));
                    return p;
                }
                Some(p) if started.elapsed() >= timeout => return p,
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

    /// This replica's heartbeat: the sequences it applied that `sent` does not hold yet, and the
    /// layout it serves (read now, so a replica told of a layout change reports the new one).
    /// Returns the script and the shard sequences it carries.
    async fn ack(
        &self,
        id: &str,
        sent: &BTreeMap<u16, u64>,
    ) -> (redis::ScriptInvocation<'static>, Vec<(u16, u64)>) {
        let keys = &self.inner.keys;
        let layout = match self.layout().await {
            Ok(l) => l.marker(),
            Err(_) => "unknown".into(),
        };
        let applied = self.inner.applied.load(Ordering::Acquire);
        let mut inv = ACK.prepare_invoke();
        inv.key(keys.replicas())
            .key(keys.applied())
            .key(keys.layouts())
            .arg(id)
            .arg(applied)
            .arg(u64::try_from(FORGET.as_millis()).unwrap_or(u64::MAX))
            .arg(layout)
            .arg(keys.applied_prefix());
        let fresh: Vec<(u16, u64)> = self
            .inner
            .applied_shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(s, n)| sent.get(s) != Some(n))
            .map(|(s, n)| (*s, *n))
            .collect();
        for (shard, seq) in &fresh {
            inv.arg(*shard).arg(*seq);
        }
        (inv, fresh)
    }

    /// Every live replica: its heartbeat age, whether it applied `token` (single-slot) and
    /// `shards` (shard → sequence), and the layout it serves.
    pub(super) async fn roll_call_rows(
        &self,
        token: u64,
        shards: &BTreeMap<u16, u64>,
    ) -> Option<(Vec<Seen>, Vec<(String, String)>)> {
        let keys = &self.inner.keys;
        let mut inv = ROLL_CALL.prepare_invoke();
        inv.key(keys.replicas())
            .key(keys.applied())
            .key(keys.layouts())
            .arg(keys.applied_prefix())
            .arg(token);
        for (shard, seq) in shards {
            inv.arg(*shard).arg(*seq);
        }
        let rows: Vec<String> = self.eval(inv).await.ok()?;
        let now: u64 = rows.first()?.parse().ok()?;
        let mut seen = Vec::new();
        let mut layouts = Vec::new();
        for r in rows[1..].chunks_exact(4) {
            let Ok(beat) = r[1].parse::<f64>() else {
                continue;
            };
            let silent = Duration::from_millis(now.saturating_sub(beat as u64));
            if silent <= LIVE {
                layouts.push((r[0].clone(), r[3].clone()));
            }
            seen.push(Seen {
                id: r[0].clone(),
                silent,
                applied: r[2] == "1",
            });
        }
        Some((seen, layouts))
    }
}

impl Inner {
    /// Whether `seq` (of `shard`, or single-slot) follows the last sequence heard: the same (a
    /// change publishes one stamp per record) or the next. Anything else means a message was
    /// lost (messages cross a Cluster's bus) or the sequence went back (a failover lost
    /// writes): nothing cached can be trusted then.
    pub(super) fn follows(&self, shard: Option<u16>, seq: u64) -> bool {
        let last = match shard {
            None => Some(self.applied.load(Ordering::Acquire)),
            Some(s) => self
                .applied_shards
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&s)
                .copied(),
        };
        last.is_none_or(|last| seq == last || seq == last + 1)
    }

    /// Applied everything up to `seq` (of `shard`, or single-slot), which is now the last
    /// sequence heard: acknowledge now.
    pub(super) fn applied_up_to(&self, shard: Option<u16>, seq: u64) {
        match shard {
            None => self.applied.store(seq, Ordering::Release),
            Some(s) => {
                self.applied_shards
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(s, seq);
            }
        }
        self.nudge();
    }

    /// Sends the heartbeat now (an acknowledgement, or a layout change, to report).
    pub(super) fn nudge(&self) {
        if let Some(r) = self.replica.get() {
            r.nudge.notify_one();
        }
    }
}
