//! [`KeyStore`] over Redis: reads are single commands, writes are the scripts in
//! [`super::scripts`], updates compare-and-set on the stored JSON.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::broadcast;

use super::scripts::{INSERT, ROTATE, UPDATE, USAGE};
use super::{CAS_RETRIES, RedisStore};
use crate::key::LookupHash;
use crate::store::{Invalidation, KeyRecord, KeyStore, StoreError};
use crate::time::Timestamp;

pub(super) fn parse(json: &str) -> Result<KeyRecord, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("redis record: {e}")))
}

/// The stored form: `last_used_at` lives in the `used` hash, not in the record.
fn to_json(rec: &KeyRecord) -> Result<String, StoreError> {
    let mut rec = rec.clone();
    rec.last_used_at = None;
    serde_json::to_string(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl RedisStore {
    /// What a write script answered: done (`ok:<sequence>`, remembered so the writer can wait
    /// for every replica to acknowledge it), the record changed under us, or a conflict.
    fn outcome(&self, outcome: &str, what: &str) -> Result<bool, StoreError> {
        if let Some(seq) = outcome
            .strip_prefix("ok:")
            .and_then(|n| n.parse::<u64>().ok())
        {
            self.inner.written.fetch_max(seq, Ordering::AcqRel);
            return Ok(true);
        }
        script_outcome(outcome, what)
    }
}

fn script_outcome(outcome: &str, what: &str) -> Result<bool, StoreError> {
    match outcome {
        "ok" => Ok(true),
        "changed" => Ok(false),
        "conflict" => Err(StoreError::Conflict(format!("{what} exists"))),
        other => Err(StoreError::Unavailable(format!(
            "redis script answered {other:?}"
        ))),
    }
}

impl KeyStore for RedisStore {
    async fn find_by_hash(&self, hash: LookupHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let key = self.inner.keys.rec(&hash.to_hex());
        let json = self
            .query::<Option<String>>(redis::cmd("GET").arg(key).clone())
            .await?;
        json.map(|j| parse(&j).map(Arc::new)).transpose()
    }

    async fn get(&self, id: &str) -> Result<Option<Arc<KeyRecord>>, StoreError> {
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
        Ok(Some(Arc::new(rec)))
    }

    async fn list(&self) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        let keys = &self.inner.keys;
        let ids: Vec<String> = self
            .query(redis::cmd("ZRANGE").arg(keys.ids()).arg(0).arg(-1).clone())
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
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
            out.push(Arc::new(rec));
        }
        Ok(out)
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        let hash = record.lookup_hash.to_hex();
        let mut inv = INSERT.prepare_invoke();
        inv.key(keys.rec(&hash))
            .key(keys.id(&record.id))
            .key(keys.owner(&record.owner))
            .key(keys.ids())
            .key(keys.seq())
            .key(keys.invseq())
            .arg(to_json(&record)?)
            .arg(&hash)
            .arg(&record.id)
            .arg(keys.channel());
        let outcome = self.script(inv).await?;
        self.outcome(&outcome, &format!("key {}", record.id))
            .map(|_| ())?;
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
        let keys = &self.inner.keys;
        new.rotated_from = Some(old_id.to_owned());
        let new_json = to_json(&new)?;
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
                .arg(&expected)
                .arg(to_json(&old)?)
                .arg(&new_json)
                .arg(&new_hash)
                .arg(&new.id)
                .arg(keys.channel())
                .arg(&old_hash);
            if self.outcome(&self.script(inv).await?, &format!("key {}", new.id))? {
                self.inner
                    .changes
                    .publish(Invalidation::Key(old.lookup_hash));
                self.inner
                    .changes
                    .publish(Invalidation::Key(new.lookup_hash));
                return Ok(old);
            }
        }
        Err(StoreError::Conflict(format!(
            "key {old_id} is being changed concurrently; retry"
        )))
    }

    async fn update<F>(&self, id: &str, change: F) -> Result<KeyRecord, StoreError>
    where
        F: Fn(&mut KeyRecord) -> Result<(), StoreError> + Send + Sync + 'static,
    {
        for _ in 0..CAS_RETRIES {
            let (expected, hash, before) = self
                .record_by_id(id)
                .await?
                .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
            let mut rec = before.clone();
            change(&mut rec)?;
            crate::store::check_identity_kept(&before, &rec)?;
            if rec == before {
                return Ok(rec);
            }
            let mut inv = UPDATE.prepare_invoke();
            inv.key(self.inner.keys.rec(&hash))
                .key(self.inner.keys.invseq())
                .arg(&expected)
                .arg(to_json(&rec)?)
                .arg(self.inner.keys.channel())
                .arg(&hash);
            if self.outcome(&self.script(inv).await?, id)? {
                self.inner
                    .changes
                    .publish(Invalidation::Key(rec.lookup_hash));
                return Ok(rec);
            }
        }
        Err(StoreError::Conflict(format!(
            "key {id} is being changed concurrently; retry"
        )))
    }

    async fn record_usage(&self, usage: Vec<(String, Timestamp)>) -> Result<(), StoreError> {
        if usage.is_empty() {
            return Ok(());
        }
        let mut inv = USAGE.prepare_invoke();
        inv.key(self.inner.keys.used());
        for (id, at) in &usage {
            inv.arg(id).arg(at.unix());
        }
        self.script(inv).await.map(|_| ())
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
