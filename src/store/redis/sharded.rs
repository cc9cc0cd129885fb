//! The sharded layout (see [`super::layout`]): a record, its owner-index and listing entries
//! in its lookup hash's shard; the id index and `used` in the id's shard. Writes claim the id
//! first (`SET NX`), then write the record in one script, so a failure between the two leaves
//! only an id entry pointing at no record, which reads ignore.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::try_join_all;

use super::keystore::{Listed, label, parse, script_outcome, to_json};
use super::layout::{Layout, shard_of_hash, shard_of_id};
use super::scripts::{CLAIM, DROP_SINGLE, RELEASE, S_INSERT, S_MOVE, S_ROTATE, USAGE};
use super::{CAS_RETRIES, RedisStore};
use crate::key::LookupHash;
use crate::store::{KeyRecord, StoreError};
use crate::time::Timestamp;

impl RedisStore {
    pub(super) async fn sharded_find(
        &self,
        hash: &LookupHash,
        hex: &str,
        n: u16,
    ) -> Result<Option<String>, StoreError> {
        let key = self.inner.keys.srec(shard_of_hash(hash, n), hex);
        self.query(redis::cmd("GET").arg(key).clone()).await
    }

    /// The stored JSON of `id` (for compare-and-set), its lookup hash and the record.
    pub(super) async fn sharded_record_by_id(
        &self,
        id: &str,
        n: u16,
    ) -> Result<Option<(String, String, KeyRecord)>, StoreError> {
        let keys = &self.inner.keys;
        let Some(hex) = self
            .query::<Option<String>>(
                redis::cmd("GET")
                    .arg(keys.sid(shard_of_id(id, n), id))
                    .clone(),
            )
            .await?
        else {
            return Ok(None);
        };
        let hash: LookupHash = hex
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("redis id index of {id}: {e}")))?;
        let Some(json) = self
            .query::<Option<String>>(
                redis::cmd("GET")
                    .arg(keys.srec(shard_of_hash(&hash, n), &hex))
                    .clone(),
            )
            .await?
        else {
            return Ok(None);
        };
        let rec = parse(&json)?;
        // An id claimed by a write that then failed points at another key's record or none.
        Ok((rec.id == id).then_some((json, hex, rec)))
    }

    pub(super) async fn sharded_get(
        &self,
        id: &str,
        n: u16,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let Some((_, _, mut rec)) = self.sharded_record_by_id(id, n).await? else {
            return Ok(None);
        };
        let used: Option<u64> = self
            .query(
                redis::cmd("HGET")
                    .arg(self.inner.keys.sharded(shard_of_id(id, n), "used"))
                    .arg(id)
                    .clone(),
            )
            .await?;
        rec.last_used_at = used.map(Timestamp::from_unix);
        Ok(Some(rec))
    }

    /// Every record (or `owner`'s, from the owner index) with its listing score, read shard by
    /// shard concurrently.
    pub(super) async fn sharded_list(
        &self,
        n: u16,
        owner: Option<&str>,
    ) -> Result<Vec<Listed>, StoreError> {
        let keys = &self.inner.keys;
        let per_shard = try_join_all((0..n).map(|s| async move {
            let ids = keys.sharded(s, "ids");
            let scored: Vec<(String, f64)> = match owner {
                None => {
                    self.query(
                        redis::cmd("ZRANGE")
                            .arg(&ids)
                            .arg(0)
                            .arg(-1)
                            .arg("WITHSCORES")
                            .clone(),
                    )
                    .await?
                }
                Some(o) => {
                    let members: Vec<String> = self
                        .query(redis::cmd("SMEMBERS").arg(keys.sowner(s, o)).clone())
                        .await?;
                    if members.is_empty() {
                        return Ok(Vec::new());
                    }
                    let scores: Vec<Option<f64>> = self
                        .query(redis::cmd("ZMSCORE").arg(&ids).arg(&members).clone())
                        .await?;
                    members
                        .into_iter()
                        .zip(scores)
                        .map(|(m, sc)| (m, sc.unwrap_or(0.0)))
                        .collect()
                }
            };
            if scored.is_empty() {
                return Ok::<_, StoreError>(Vec::new());
            }
            let rec_keys: Vec<String> = scored.iter().map(|(h, _)| keys.srec(s, h)).collect();
            let jsons: Vec<Option<String>> =
                self.query(redis::cmd("MGET").arg(rec_keys).clone()).await?;
            let mut out = Vec::with_capacity(jsons.len());
            for ((_, score), json) in scored.iter().zip(jsons) {
                if let Some(j) = json {
                    out.push((*score, parse(&j)?));
                }
            }
            Ok(out)
        }))
        .await?;
        let mut records: Vec<(f64, KeyRecord)> = per_shard.into_iter().flatten().collect();
        let mut by_id_shard: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, (_, r)) in records.iter().enumerate() {
            by_id_shard
                .entry(shard_of_id(&r.id, n))
                .or_default()
                .push(i);
        }
        let records_ref = &records;
        let used = try_join_all(by_id_shard.into_iter().map(|(t, idx)| async move {
            let ids: Vec<&str> = idx.iter().map(|i| records_ref[*i].1.id.as_str()).collect();
            let used: Vec<Option<u64>> = self
                .query(
                    redis::cmd("HMGET")
                        .arg(keys.sharded(t, "used"))
                        .arg(ids)
                        .clone(),
                )
                .await?;
            Ok::<_, StoreError>(idx.into_iter().zip(used).collect::<Vec<_>>())
        }))
        .await?;
        for (i, u) in used.into_iter().flatten() {
            records[i].1.last_used_at = u.map(Timestamp::from_unix);
        }
        Ok(records
            .into_iter()
            .map(|(score, r)| (score, Arc::new(r)))
            .collect())
    }

    /// Claims `id` for `hex` in the id index; a conflict when another key holds the id (a
    /// claim of our own, from an attempt that failed after it, is ours to reuse).
    /// Returns the entry's name and whether this call created it (only then may a failed write
    /// give it back).
    async fn claim_id(&self, id: &str, hex: &str, n: u16) -> Result<(String, bool), StoreError> {
        let key = self.inner.keys.sid(shard_of_id(id, n), id);
        let mut inv = CLAIM.prepare_invoke();
        inv.key(&key).arg(hex);
        match self.script(inv).await?.as_str() {
            "new" => Ok((key, true)),
            "mine" => Ok((key, false)),
            _ => Err(StoreError::Conflict(format!("key {id} exists"))),
        }
    }

    /// Gives back an id this call claimed when its write was refused as a conflict (never
    /// after an error: the write may have landed, and its key must stay revocable by id).
    async fn release_id(&self, key: &str, hex: &str, fresh: bool, why: &StoreError) {
        if !fresh || !matches!(why, StoreError::Conflict(_)) {
            return;
        }
        let mut inv = RELEASE.prepare_invoke();
        inv.key(key).arg(hex);
        let _ = self.script(inv).await;
    }

    pub(super) async fn sharded_insert(
        &self,
        record: &KeyRecord,
        n: u16,
        layout: Layout,
    ) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        let hex = record.lookup_hash.to_hex();
        if layout == Layout::Migrating(n) {
            let exists: u64 = self
                .query(
                    redis::cmd("EXISTS")
                        .arg(keys.id(&record.id))
                        .arg(keys.rec(&hex))
                        .clone(),
                )
                .await?;
            if exists > 0 {
                return Err(StoreError::Conflict(format!("key {} exists", record.id)));
            }
        }
        let (id_key, fresh) = self.claim_id(&record.id, &hex, n).await?;
        let s = shard_of_hash(&record.lookup_hash, n);
        let rec_key = keys.srec(s, &hex);
        let mut inv = S_INSERT.prepare_invoke();
        inv.key(&rec_key)
            .key(keys.sowner(s, &record.owner))
            .key(keys.sharded(s, "ids"))
            .key(keys.sharded(s, "invseq"))
            .arg(to_json(record)?)
            .arg(&hex)
            .arg(keys.channel())
            .arg(label(Some(s)));
        let written = self
            .script(inv)
            .await
            .and_then(|o| self.outcome(&o, &format!("key {}", record.id), Some(s)));
        if let Err(e) = written {
            self.release_id(&id_key, &hex, fresh, &e).await;
            return Err(e);
        }
        self.replicated(&id_key).await?;
        self.replicated(&rec_key).await
    }

    pub(super) async fn sharded_rotate(
        &self,
        old_id: &str,
        new: &KeyRecord,
        old_expires_at: Option<Timestamp>,
        n: u16,
    ) -> Result<KeyRecord, StoreError> {
        let keys = &self.inner.keys;
        let new_hex = new.lookup_hash.to_hex();
        let new_json = to_json(new)?;
        // The successor's id entry, once claimed, and whether this call created it.
        let mut claimed: Option<(String, bool)> = None;
        for _ in 0..CAS_RETRIES {
            let (expected, old_hex, mut old) = self
                .sharded_record_by_id(old_id, n)
                .await?
                .ok_or_else(|| StoreError::NotFound(old_id.to_owned()))?;
            let s = shard_of_hash(&old.lookup_hash, n);
            if shard_of_hash(&new.lookup_hash, n) != s {
                return Err(StoreError::Conflict(format!(
                    "key {old_id}: the successor was not minted into its predecessor's shard; retry"
                )));
            }
            old.retire_for(&new.id, old_expires_at, Timestamp::now())?;
            let (id_key, fresh) = match &claimed {
                Some(c) => c.clone(),
                None => claimed
                    .insert(self.claim_id(&new.id, &new_hex, n).await?)
                    .clone(),
            };
            let rec_key = keys.srec(s, &old_hex);
            let mut inv = S_ROTATE.prepare_invoke();
            inv.key(&rec_key)
                .key(keys.srec(s, &new_hex))
                .key(keys.sowner(s, &new.owner))
                .key(keys.sharded(s, "ids"))
                .key(keys.sharded(s, "invseq"))
                .arg(&expected)
                .arg(to_json(&old)?)
                .arg(&new_json)
                .arg(&new_hex)
                .arg(keys.channel())
                .arg(&old_hex)
                .arg(label(Some(s)));
            let done = match self
                .script(inv)
                .await
                .and_then(|o| self.outcome(&o, &format!("key {}", new.id), Some(s)))
            {
                Ok(d) => d,
                Err(e) => {
                    self.release_id(&id_key, &new_hex, fresh, &e).await;
                    return Err(e);
                }
            };
            if done {
                self.replicated(&id_key).await?;
                self.replicated(&rec_key).await?;
                return Ok(old);
            }
        }
        // Every attempt was refused before writing: the claim is ours to give back.
        let busy =
            StoreError::Conflict(format!("key {old_id} is being changed concurrently; retry"));
        if let Some((k, fresh)) = claimed {
            self.release_id(&k, &new_hex, fresh, &busy).await;
        }
        Err(busy)
    }

    pub(super) async fn sharded_usage(
        &self,
        usage: &[(String, Timestamp)],
        n: u16,
    ) -> Result<(), StoreError> {
        let mut by_shard: HashMap<u16, Vec<&(String, Timestamp)>> = HashMap::new();
        for u in usage {
            by_shard.entry(shard_of_id(&u.0, n)).or_default().push(u);
        }
        try_join_all(by_shard.into_iter().map(|(t, batch)| async move {
            let used = self.inner.keys.sharded(t, "used");
            let mut inv = USAGE.prepare_invoke();
            inv.key(&used).key(&used);
            for (id, at) in batch {
                inv.arg(id).arg(at.unix());
            }
            script_outcome(&self.script(inv).await?, "usage").map(|_| ())
        }))
        .await
        .map(|_| ())
    }

    /// Migrating: moves `id`'s single-slot record (with its listing place and last use) into
    /// its shard, then drops the single-slot copy. A record already moved is left alone; the
    /// single-slot copy no longer changes (its scripts refuse once the layout is set).
    pub(super) async fn move_record(&self, id: &str, n: u16) -> Result<bool, StoreError> {
        let keys = &self.inner.keys;
        let Some((json, hex)) = self.raw_by_id(id).await? else {
            return Ok(false);
        };
        let rec = parse(&json)?;
        let s = shard_of_hash(&rec.lookup_hash, n);
        let score: Option<f64> = self
            .query(redis::cmd("ZSCORE").arg(keys.ids()).arg(id).clone())
            .await?;
        let rec_key = keys.srec(s, &hex);
        let mut inv = S_MOVE.prepare_invoke();
        inv.key(&rec_key)
            .key(keys.sowner(s, &rec.owner))
            .key(keys.sharded(s, "ids"))
            .arg(&json)
            .arg(&hex)
            .arg(score.unwrap_or(0.0));
        script_outcome(&self.script(inv).await?, id)?;
        let id_key = keys.sid(shard_of_id(id, n), id);
        self.write::<()>(redis::cmd("SET").arg(&id_key).arg(&hex).clone())
            .await?;
        let used = self.last_used(&[id.to_owned()]).await?;
        if let Some(at) = used.first().copied().flatten() {
            self.sharded_usage(&[(id.to_owned(), Timestamp::from_unix(at))], n)
                .await?;
        }
        self.replicated(&id_key).await?;
        self.replicated(&rec_key).await?;
        // A writer of an earlier release may change the single-slot copy after it was copied:
        // carry that change over (compare-and-set on the copy, announced), then drop again.
        // What the single-slot copy held when copied, and what the sharded copy holds.
        let mut single_json = json.clone();
        let mut sharded_json = json;
        for _ in 0..CAS_RETRIES {
            let mut drop = DROP_SINGLE.prepare_invoke();
            drop.key(keys.rec(&hex))
                .key(keys.id(id))
                .key(keys.owner(&rec.owner))
                .key(keys.ids())
                .key(keys.used())
                .arg(id)
                .arg(&single_json);
            if script_outcome(&self.script(drop).await?, id)? {
                self.replicated(&keys.ids()).await?;
                return Ok(true);
            }
            let Some((now, _)) = self.raw_by_id(id).await? else {
                return Ok(true);
            };
            let changed = parse(&now)?;
            crate::store::check_identity_kept(&rec, &changed)?;
            let carried = self
                .cas(
                    rec_key.clone(),
                    keys.sharded(s, "invseq"),
                    rec_key.clone(),
                    Some(s),
                    (&sharded_json, &hex),
                    &changed,
                )
                .await?;
            if !carried {
                return Err(StoreError::Conflict(format!(
                    "key {id} was changed in both layouts during the migration (a writer of an earlier release is running); stop it and run the migration again"
                )));
            }
            sharded_json = to_json(&changed)?;
            single_json = now;
        }
        Err(StoreError::Conflict(format!(
            "key {id} keeps changing in the single-slot layout (a writer of an earlier release is running); stop it and run the migration again"
        )))
    }
}
