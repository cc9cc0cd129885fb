//! [`KeyStore`] over Redis: reads are single commands, writes are the scripts in
//! [`super::scripts`], updates compare-and-set on the stored JSON.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::broadcast;

use super::layout::{self, Layout, Steer};
use super::scripts::{INSERT, ROTATE, UPDATE, USAGE};
use super::{CAS_RETRIES, RedisStore};
use crate::key::LookupHash;
use crate::store::{Invalidation, KeyRecord, KeyStore, StoreError};
use crate::time::Timestamp;

pub(super) fn parse(json: &str) -> Result<KeyRecord, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("redis record: {e}")))
}

/// The stored form: `last_used_at` lives in the `used` hash, not in the record.
pub(super) fn to_json(rec: &KeyRecord) -> Result<String, StoreError> {
    let mut rec = rec.clone();
    rec.last_used_at = None;
    serde_json::to_string(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// What a write answers when the layout changed under it (the caller reads it and retries).
const MOVED: &str = "redis: the store layout changed under this write; retry";

pub(super) fn moved() -> StoreError {
    StoreError::Unavailable(MOVED.into())
}

fn is_moved(e: &StoreError) -> bool {
    matches!(e, StoreError::Unavailable(m) if m == MOVED)
}

/// The label of a shard's sequence in invalidation stamps (`<shard>/<n>`; empty single-slot).
pub(super) fn label(shard: Option<u16>) -> String {
    shard.map_or_else(String::new, |s| format!("{s}/"))
}

impl RedisStore {
    /// What a write script answered: done (`ok:<sequence>`, remembered per shard so the writer
    /// can wait for every replica to acknowledge it), the record changed under us, a conflict,
    /// or (single-slot) the store is being sharded.
    pub(super) fn outcome(
        &self,
        outcome: &str,
        what: &str,
        shard: Option<u16>,
    ) -> Result<bool, StoreError> {
        if let Some(seq) = outcome
            .strip_prefix("ok:")
            .and_then(|n| n.parse::<u64>().ok())
        {
            match shard {
                None => {
                    self.inner.written.fetch_max(seq, Ordering::AcqRel);
                }
                Some(s) => {
                    let mut w = self
                        .inner
                        .written_shards
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let e = w.entry(s).or_default();
                    *e = (*e).max(seq);
                }
            }
            return Ok(true);
        }
        if outcome == "moved" {
            self.forget_layout();
            return Err(moved());
        }
        script_outcome(outcome, what)
    }

    /// Runs `op` in the current layout, again (up to twice) when the layout changed under it.
    /// Boxed: the nested write futures would otherwise overflow the compiler's type depth in
    /// every crate that awaits a store write.
    fn in_layout<'a, T, F, Fut>(
        &'a self,
        op: F,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'a>>
    where
        T: Send + 'a,
        F: Fn(Layout) -> Fut + Send + Sync + 'a,
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'a,
    {
        Box::pin(async move {
            let mut last = None;
            for _ in 0..3 {
                let layout = self.layout().await?;
                match op(layout).await {
                    Err(e) if is_moved(&e) => last = Some(e),
                    other => return other,
                }
            }
            Err(last.unwrap_or_else(moved))
        })
    }
}

pub(super) fn script_outcome(outcome: &str, what: &str) -> Result<bool, StoreError> {
    match outcome {
        "ok" => Ok(true),
        "changed" => Ok(false),
        "conflict" => Err(StoreError::Conflict(format!("{what} exists"))),
        other => Err(StoreError::Unavailable(format!(
            "redis script answered {other:?}"
        ))),
    }
}

/// A record with its place in the listing (the listing's score).
pub(super) type Listed = (f64, Arc<KeyRecord>);

/// Records in listing order (creation; ties by id).
fn oldest_first(mut all: Vec<Listed>) -> Vec<Arc<KeyRecord>> {
    all.sort_by(|(a, ra), (b, rb)| a.total_cmp(b).then_with(|| ra.id.cmp(&rb.id)));
    all.into_iter().map(|(_, r)| r).collect()
}

/// The single-slot layout.
impl RedisStore {
    async fn single_find(&self, hash: &str) -> Result<Option<String>, StoreError> {
        let key = self.inner.keys.rec(hash);
        self.query(redis::cmd("GET").arg(key).clone()).await
    }

    async fn single_get(&self, id: &str) -> Result<Option<KeyRecord>, StoreError> {
        let Some((_, _, mut rec)) = self.record_by_id(id).await? else {
            return Ok(None);
        };
        rec.last_used_at = self
            .last_used(&[rec.id.clone()])
            .await?
            .first()
            .copied()
            .flatten()
            .map(Timestamp::from_unix);
        Ok(Some(rec))
    }

    pub(super) async fn single_list(&self) -> Result<Vec<Listed>, StoreError> {
        let keys = &self.inner.keys;
        let scored: Vec<(String, f64)> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(keys.ids())
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .clone(),
            )
            .await?;
        if scored.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = scored.iter().map(|(id, _)| id.clone()).collect();
        let score_of: std::collections::HashMap<&str, f64> =
            scored.iter().map(|(id, s)| (id.as_str(), *s)).collect();
        let id_keys: Vec<String> = ids.iter().map(|id| keys.id(id)).collect();
        let hashes: Vec<Option<String>> =
            self.query(redis::cmd("MGET").arg(id_keys).clone()).await?;
        let rec_keys: Vec<String> = hashes.iter().flatten().map(|h| keys.rec(h)).collect();
        let jsons: Vec<Option<String>> = if rec_keys.is_empty() {
            Vec::new()
        } else {
            self.query(redis::cmd("MGET").arg(rec_keys).clone()).await?
        };
        let used = self.last_used(&ids).await?;
        let used_by_id: std::collections::HashMap<&str, u64> = ids
            .iter()
            .zip(&used)
            .filter_map(|(id, u)| u.map(|u| (id.as_str(), u)))
            .collect();
        let mut out = Vec::with_capacity(jsons.len());
        for json in jsons.into_iter().flatten() {
            let mut rec = parse(&json)?;
            rec.last_used_at = used_by_id
                .get(rec.id.as_str())
                .copied()
                .map(Timestamp::from_unix);
            let score = score_of.get(rec.id.as_str()).copied().unwrap_or(0.0);
            out.push((score, Arc::new(rec)));
        }
        Ok(out)
    }

    async fn single_insert(&self, record: &KeyRecord) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        let hash = record.lookup_hash.to_hex();
        let mut inv = INSERT.prepare_invoke();
        inv.key(keys.rec(&hash))
            .key(keys.id(&record.id))
            .key(keys.owner(&record.owner))
            .key(keys.ids())
            .key(keys.seq())
            .key(keys.invseq())
            .key(keys.layout())
            .arg(to_json(record)?)
            .arg(&hash)
            .arg(&record.id)
            .arg(keys.channel())
            .arg("");
        let outcome = self.script(inv).await?;
        self.outcome(&outcome, &format!("key {}", record.id), None)?;
        self.replicated(&keys.invseq()).await
    }

    async fn single_rotate(
        &self,
        old_id: &str,
        new: &KeyRecord,
        old_expires_at: Option<Timestamp>,
    ) -> Result<KeyRecord, StoreError> {
        let keys = &self.inner.keys;
        let new_json = to_json(new)?;
        let new_hash = new.lookup_hash.to_hex();
        for _ in 0..CAS_RETRIES {
            let (expected, old_hash, mut old) = self
                .record_by_id(old_id)
                .await?
                .ok_or_else(|| StoreError::NotFound(old_id.to_owned()))?;
            old.retire_for(&new.id, old_expires_at, Timestamp::now())?;
            let mut inv = ROTATE.prepare_invoke();
            inv.key(keys.rec(&old_hash))
                .key(keys.rec(&new_hash))
                .key(keys.id(&new.id))
                .key(keys.owner(&new.owner))
                .key(keys.ids())
                .key(keys.seq())
                .key(keys.invseq())
                .key(keys.layout())
                .arg(&expected)
                .arg(to_json(&old)?)
                .arg(&new_json)
                .arg(&new_hash)
                .arg(&new.id)
                .arg(keys.channel())
                .arg(&old_hash)
                .arg("");
            let done = self.script(inv).await?;
            if self.outcome(&done, &format!("key {}", new.id), None)? {
                self.replicated(&keys.invseq()).await?;
                return Ok(old);
            }
        }
        Err(StoreError::Conflict(format!(
            "key {old_id} is being changed concurrently; retry"
        )))
    }

    async fn single_usage(&self, usage: &[(String, Timestamp)]) -> Result<(), StoreError> {
        let mut inv = USAGE.prepare_invoke();
        inv.key(self.inner.keys.used())
            .key(self.inner.keys.layout());
        for (id, at) in usage {
            inv.arg(id).arg(at.unix());
        }
        let outcome = self.script(inv).await?;
        self.outcome(&outcome, "usage", None).map(|_| ())
    }

    /// One compare-and-set of a record (either layout): `Ok(false)` when it changed under us.
    pub(super) async fn cas(
        &self,
        rec_key: String,
        invseq: String,
        guard: String,
        shard: Option<u16>,
        (expected, hash): (&str, &str),
        rec: &KeyRecord,
    ) -> Result<bool, StoreError> {
        let mut inv = UPDATE.prepare_invoke();
        inv.key(&rec_key)
            .key(&invseq)
            .key(guard)
            .arg(expected)
            .arg(to_json(rec)?)
            .arg(self.inner.keys.channel())
            .arg(hash)
            .arg(label(shard));
        let done = self.outcome(&self.script(inv).await?, &rec.id, shard)?;
        if done {
            self.replicated(&rec_key).await?;
        }
        Ok(done)
    }
}

impl KeyStore for RedisStore {
    async fn find_by_hash(&self, hash: LookupHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let hex = hash.to_hex();
        let json = match self.layout().await? {
            Layout::SingleSlot => self.single_find(&hex).await?,
            Layout::Sharded(n) => self.sharded_find(&hash, &hex, n).await?,
            // The single-slot copy first: a record moved between the two reads is then found
            // in its shard.
            Layout::Migrating(n) => {
                let single = self.single_find(&hex).await?;
                match self.sharded_find(&hash, &hex, n).await? {
                    Some(j) => Some(j),
                    None => single,
                }
            }
        };
        json.map(|j| parse(&j).map(Arc::new)).transpose()
    }

    async fn get(&self, id: &str) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let rec = match self.layout().await? {
            Layout::SingleSlot => self.single_get(id).await?,
            Layout::Sharded(n) => self.sharded_get(id, n).await?,
            Layout::Migrating(n) => match self.single_get(id).await? {
                None => self.sharded_get(id, n).await?,
                Some(single) => Some(self.sharded_get(id, n).await?.unwrap_or(single)),
            },
        };
        Ok(rec.map(Arc::new))
    }

    async fn list(&self) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        let all = match self.layout().await? {
            Layout::SingleSlot => self.single_list().await?,
            Layout::Sharded(n) => self.sharded_list(n, None).await?,
            Layout::Migrating(n) => {
                let single = self.single_list().await?;
                let mut sharded = self.sharded_list(n, None).await?;
                let moved: std::collections::HashSet<String> =
                    sharded.iter().map(|(_, r)| r.id.clone()).collect();
                sharded.extend(single.into_iter().filter(|(_, r)| !moved.contains(&r.id)));
                sharded
            }
        };
        Ok(oldest_first(all))
    }

    async fn list_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        match self.layout().await? {
            Layout::Sharded(n) => Ok(oldest_first(self.sharded_list(n, Some(owner)).await?)),
            _ => {
                let mut all = self.list().await?;
                all.retain(|r| r.owner == owner);
                Ok(all)
            }
        }
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let record = &record;
        self.in_layout(|layout| async move {
            match layout {
                Layout::SingleSlot => self.single_insert(record).await,
                Layout::Migrating(n) | Layout::Sharded(n) => {
                    self.sharded_insert(record, n, layout).await
                }
            }
        })
        .await?;
        self.inner
            .changes
            .publish(Invalidation::Key(record.lookup_hash));
        Ok(())
    }

    async fn rotate(
        &self,
        old_id: &str,
        mut new: KeyRecord,
        old_expires_at: Option<Timestamp>,
    ) -> Result<KeyRecord, StoreError> {
        new.rotated_from = Some(old_id.to_owned());
        let new = &new;
        let old = self
            .in_layout(|layout| async move {
                match layout {
                    Layout::SingleSlot => self.single_rotate(old_id, new, old_expires_at).await,
                    Layout::Migrating(n) | Layout::Sharded(n) => {
                        if let Layout::Migrating(n) = layout {
                            self.move_record(old_id, n).await?;
                        }
                        self.sharded_rotate(old_id, new, old_expires_at, n).await
                    }
                }
            })
            .await?;
        self.inner
            .changes
            .publish(Invalidation::Key(old.lookup_hash));
        self.inner
            .changes
            .publish(Invalidation::Key(new.lookup_hash));
        Ok(old)
    }

    async fn update<F>(&self, id: &str, change: F) -> Result<KeyRecord, StoreError>
    where
        F: Fn(&mut KeyRecord) -> Result<(), StoreError> + Send + Sync + 'static,
    {
        let change = &change;
        let rec = self
            .in_layout(|layout| async move {
                if let Layout::Migrating(n) = layout {
                    self.move_record(id, n).await?;
                }
                for _ in 0..CAS_RETRIES {
                    let found = match layout.shards() {
                        None => self.record_by_id(id).await?,
                        Some(n) => self.sharded_record_by_id(id, n).await?,
                    };
                    let (expected, hash, before) =
                        found.ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
                    let mut rec = before.clone();
                    change(&mut rec)?;
                    crate::store::check_identity_kept(&before, &rec)?;
                    if rec == before {
                        return Ok(rec);
                    }
                    let keys = &self.inner.keys;
                    let (rec_key, invseq, guard, shard) = match layout.shards() {
                        None => (keys.rec(&hash), keys.invseq(), keys.layout(), None),
                        Some(n) => {
                            let s = layout::shard_of_hash(&rec.lookup_hash, n);
                            let rec_key = keys.srec(s, &hash);
                            (rec_key.clone(), keys.sharded(s, "invseq"), rec_key, Some(s))
                        }
                    };
                    if self
                        .cas(rec_key, invseq, guard, shard, (&expected, &hash), &rec)
                        .await?
                    {
                        return Ok(rec);
                    }
                }
                Err(StoreError::Conflict(format!(
                    "key {id} is being changed concurrently; retry"
                )))
            })
            .await?;
        self.inner
            .changes
            .publish(Invalidation::Key(rec.lookup_hash));
        Ok(rec)
    }

    async fn record_usage(&self, usage: Vec<(String, Timestamp)>) -> Result<(), StoreError> {
        if usage.is_empty() {
            return Ok(());
        }
        let usage = &usage;
        self.in_layout(|layout| async move {
            match layout.shards() {
                None => self.single_usage(usage).await,
                Some(n) => self.sharded_usage(usage, n).await,
            }
        })
        .await
    }

    async fn lineage(&self, hash: &LookupHash) -> Result<Option<Steer>, StoreError> {
        Ok(self.layout().await?.shards().map(|shards| Steer {
            shards,
            shard: layout::shard_of_hash(hash, shards),
        }))
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.query::<String>(redis::cmd("PING")).await.map(|_| ())
    }

    fn subscribe(&self) -> broadcast::Receiver<Invalidation> {
        self.inner.changes.subscribe()
    }

    fn invalidations_live(&self) -> bool {
        self.inner.subscribed.load(Ordering::Acquire)
    }
}
