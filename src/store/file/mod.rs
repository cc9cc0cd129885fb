//! The embedded backend: one JSON file the process owns. Writes take an exclusive lock on a
//! sibling `.lock` file (so the CLI and a running proxy can both write), re-read the file, apply
//! the change and replace the file atomically (temp file, fsync, rename, fsync directory).
//! A watcher polls the file's identity and reloads it when another writer changed it, or when a
//! GitOps tool swapped a mounted Secret; a file that fails to parse is logged and the last good
//! snapshot kept.

mod acks;
mod disk;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::broadcast;

use disk::{ContentHash, FORMAT_VERSION, FileData, FileStamp, io_err, read_file, write_atomically};

use super::changes::Changes;
use super::{Invalidation, KeyRecord, KeyStore, StoreError};
use crate::key::LookupHash;
use crate::time::Timestamp;

#[derive(Default)]
struct Snapshot {
    by_hash: HashMap<LookupHash, Arc<KeyRecord>>,
    by_id: HashMap<String, LookupHash>,
    /// Insertion order, for listings.
    order: Vec<LookupHash>,
}

impl Snapshot {
    fn build(keys: Vec<KeyRecord>) -> Result<Self, StoreError> {
        let mut s = Snapshot::default();
        for rec in keys {
            if s.by_id.insert(rec.id.clone(), rec.lookup_hash).is_some() {
                return Err(StoreError::Corrupt(format!("duplicate key id {}", rec.id)));
            }
            let hash = rec.lookup_hash;
            if s.by_hash.insert(hash, Arc::new(rec)).is_some() {
                return Err(StoreError::Corrupt(
                    "two records share a lookup hash".into(),
                ));
            }
            s.order.push(hash);
        }
        Ok(s)
    }

    fn records(&self) -> impl Iterator<Item = &Arc<KeyRecord>> {
        self.order.iter().filter_map(|h| self.by_hash.get(h))
    }

    /// Hashes whose authentication-relevant content differs between `self` and `next`.
    fn changes(&self, next: &Snapshot) -> Vec<LookupHash> {
        let mut out: Vec<LookupHash> = self
            .by_hash
            .iter()
            .filter(|(h, old)| {
                next.by_hash
                    .get(*h)
                    .is_none_or(|new| !old.same_for_auth(new))
            })
            .map(|(h, _)| *h)
            .collect();
        // New keys too: a negative-cache entry for them must go.
        out.extend(
            next.by_hash
                .keys()
                .filter(|h| !self.by_hash.contains_key(*h)),
        );
        out
    }
}

struct Inner {
    path: PathBuf,
    lock_path: PathBuf,
    read_only: bool,
    snapshot: RwLock<Arc<Snapshot>>,
    stamp: Mutex<Option<FileStamp>>,
    changes: Changes,
    /// The hash of the file contents the snapshot was built from (what this replica
    /// acknowledges).
    loaded: Mutex<Option<ContentHash>>,
    /// Set when this process serves the store (see `acks`).
    replica: OnceLock<Arc<acks::Replica>>,
}

/// The `file` backend. Cheap to clone; clones share one snapshot.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl FileStore {
    /// Opens the store file. A missing file is an empty store (created by the first write, or
    /// by [`FileStore::create_if_missing`]) unless read-only: then it is an error.
    pub fn open(path: impl Into<PathBuf>, read_only: bool) -> Result<Self, StoreError> {
        let path = path.into();
        let mut lock_path = path.clone().into_os_string();
        lock_path.push(".lock");
        let store = FileStore {
            inner: Arc::new(Inner {
                lock_path: lock_path.into(),
                path,
                read_only,
                snapshot: RwLock::new(Arc::new(Snapshot::default())),
                stamp: Mutex::new(None),
                changes: Changes::new(),
                loaded: Mutex::new(None),
                replica: OnceLock::new(),
            }),
        };
        if read_only || store.inner.path.exists() {
            store.reload(false)?;
        }
        Ok(store)
    }

    /// Writes an empty store file when there is none; true when it did.
    pub fn create_if_missing(&self) -> Result<bool, StoreError> {
        if self.inner.path.exists() || self.inner.read_only {
            return Ok(false);
        }
        self.write_locked(|_| Ok(()))?;
        Ok(true)
    }

    pub(super) fn changes(&self) -> &Changes {
        &self.inner.changes
    }

    fn is_read_only(&self) -> bool {
        self.inner.read_only
    }

    fn loaded_hash(&self) -> Option<ContentHash> {
        *self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_replica(&self, r: Arc<acks::Replica>) -> Result<(), Arc<acks::Replica>> {
        self.inner.replica.set(r)
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Polls the file every `interval` and reloads it when it changed; ends when the last
    /// clone of the store is dropped.
    pub fn spawn_watcher(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let store = FileStore { inner };
                // Stat and read are blocking file I/O: keep them off the runtime threads.
                let res = tokio::task::spawn_blocking(move || store.reload_if_changed()).await;
                match res {
                    Ok(Ok(true)) => tracing::info!("key store file changed; reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "key store file unreadable; keeping the last good copy")
                    }
                    Err(e) => tracing::error!(error = %e, "key store reload task failed"),
                }
            }
        })
    }

    fn current(&self) -> Arc<Snapshot> {
        // A poisoned lock only means a panic elsewhere while swapping an Arc: the value is intact.
        Arc::clone(
            &self
                .inner
                .snapshot
                .read()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Reloads when the file's identity changed since the last load. Returns whether it did.
    fn reload_if_changed(&self) -> Result<bool, StoreError> {
        self.reload(true)
    }

    /// Reads the file and installs it. The stamp mutex is held throughout, and writers hold it
    /// too, so a slow reload can never install an older file over a newer write.
    fn reload(&self, only_if_changed: bool) -> Result<bool, StoreError> {
        let path = &self.inner.path;
        let mut stamp_guard = self.inner.stamp.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = FileStamp::of(path).map_err(|e| io_err(path, e))?;
        if only_if_changed && *stamp_guard == Some(stamp) {
            return Ok(false);
        }
        let (keys, hash) = read_file(path)?;
        self.install(Snapshot::build(keys)?, hash);
        // Another writer's change, seen now: the time since the file was written.
        if only_if_changed
            && let Some(written) = stamp.modified
            && let Ok(lag) = written.elapsed()
        {
            self.inner.changes.observe_lag(lag);
        }
        *stamp_guard = Some(stamp);
        Ok(true)
    }

    /// Swaps in a new snapshot (built from file contents hashing to `hash`) and tells listeners
    /// what changed. Callers hold the stamp lock.
    fn install(&self, next: Snapshot, hash: ContentHash) {
        let next = Arc::new(next);
        let old = {
            let mut guard = self
                .inner
                .snapshot
                .write()
                .unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *guard, Arc::clone(&next))
        };
        for hash in old.changes(&next) {
            self.inner.changes.publish(Invalidation::Key(hash));
        }
        *self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner()) = Some(hash);
        if let Some(r) = self.inner.replica.get() {
            r.nudge.notify_one();
        }
    }

    /// Runs `change` on the freshest file contents under the writer lock and replaces the file.
    fn write_locked<T>(
        &self,
        change: impl FnOnce(&mut Vec<KeyRecord>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.inner.read_only {
            return Err(StoreError::ReadOnly(self.inner.path.display().to_string()));
        }
        let path = &self.inner.path;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.inner.lock_path)
            .map_err(|e| io_err(&self.inner.lock_path, e))?;
        lock.lock().map_err(|e| io_err(&self.inner.lock_path, e))?;
        let mut stamp_guard = self.inner.stamp.lock().unwrap_or_else(|e| e.into_inner());
        let mut keys = match read_file(path) {
            Err(StoreError::Unavailable(_)) if !path.exists() => Vec::new(),
            other => other?.0,
        };
        let out = change(&mut keys)?;
        let snapshot = Snapshot::build(keys.clone())?;
        let hash = write_atomically(
            path,
            &FileData {
                version: FORMAT_VERSION,
                keys,
            },
        )?;
        self.install(snapshot, hash);
        *stamp_guard = FileStamp::of(path).ok();
        drop(stamp_guard);
        drop(lock); // releases the flock
        Ok(out)
    }

    async fn write<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Vec<KeyRecord>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.write_locked(change))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store writer task failed: {e}")))?
    }
}

fn find_mut<'a>(keys: &'a mut [KeyRecord], id: &str) -> Result<&'a mut KeyRecord, StoreError> {
    keys.iter_mut()
        .find(|k| k.id == id)
        .ok_or_else(|| StoreError::NotFound(id.to_owned()))
}

impl KeyStore for FileStore {
    async fn find_by_hash(&self, hash: LookupHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        Ok(self.current().by_hash.get(&hash).cloned())
    }

    async fn get(&self, id: &str) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        let snap = self.current();
        Ok(snap
            .by_id
            .get(id)
            .and_then(|h| snap.by_hash.get(h))
            .cloned())
    }

    async fn list(&self) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        Ok(self.current().records().cloned().collect())
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        self.write(move |keys| {
            if keys
                .iter()
                .any(|k| k.id == record.id || k.lookup_hash == record.lookup_hash)
            {
                return Err(StoreError::Conflict(format!("key {} exists", record.id)));
            }
            keys.push(record);
            Ok(())
        })
        .await
    }

    async fn rotate(
        &self,
        old_id: &str,
        mut new: KeyRecord,
        old_expires_at: Option<Timestamp>,
    ) -> Result<KeyRecord, StoreError> {
        let old_id = old_id.to_owned();
        self.write(move |keys| {
            if keys
                .iter()
                .any(|k| k.id == new.id || k.lookup_hash == new.lookup_hash)
            {
                return Err(StoreError::Conflict(format!("key {} exists", new.id)));
            }
            let old = find_mut(keys, &old_id)?;
            old.retire_for(&new.id, old_expires_at, Timestamp::now())?;
            let updated = old.clone();
            new.rotated_from = Some(old_id);
            keys.push(new);
            Ok(updated)
        })
        .await
    }

    async fn update<F>(&self, id: &str, change: F) -> Result<KeyRecord, StoreError>
    where
        F: Fn(&mut KeyRecord) -> Result<(), StoreError> + Send + Sync + 'static,
    {
        let id = id.to_owned();
        self.write(move |keys| {
            let rec = find_mut(keys, &id)?;
            let mut next = rec.clone();
            change(&mut next)?;
            super::check_identity_kept(rec, &next)?;
            *rec = next;
            Ok(rec.clone())
        })
        .await
    }

    async fn record_usage(&self, usage: Vec<(String, Timestamp)>) -> Result<(), StoreError> {
        if self.inner.read_only || usage.is_empty() {
            return Ok(());
        }
        self.write(move |keys| {
            for (id, at) in usage {
                if let Some(rec) = keys.iter_mut().find(|k| k.id == id) {
                    rec.last_used_at = Some(rec.last_used_at.map_or(at, |t| t.max(at)));
                }
            }
            Ok(())
        })
        .await
    }

    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<Invalidation> {
        self.inner.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Environment, KeyFormat, KeyHasher, KeyType, Labels};
    use crate::store::NewRecord;

    fn mint(owner: &str) -> (String, KeyRecord) {
        let format = KeyFormat::new(&Labels::default()).unwrap();
        let req = NewRecord::new(owner, Environment::Live, KeyType::Secret);
        let (key, rec) = req
            .mint(&format, &KeyHasher::new(None), Timestamp::now())
            .unwrap();
        (key.key, rec)
    }

    #[tokio::test]
    async fn two_handles_on_one_file_see_each_others_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let a = FileStore::open(&path, false).unwrap();
        let b = FileStore::open(&path, false).unwrap();
        let (_, r1) = mint("acct_1");
        let (_, r2) = mint("acct_2");
        a.insert(r1.clone()).await.unwrap();
        // b writes without having reloaded: the write re-reads under the lock, losing nothing.
        b.insert(r2.clone()).await.unwrap();
        let ids: Vec<_> = b
            .list()
            .await
            .unwrap()
            .iter()
            .map(|r| r.id.clone())
            .collect();
        assert_eq!(ids, vec![r1.id.clone(), r2.id.clone()]);
        assert!(a.reload_if_changed().unwrap());
        assert!(a.get(&r2.id).await.unwrap().is_some());
        assert!(!a.reload_if_changed().unwrap());
    }

    #[tokio::test]
    async fn revoke_publishes_an_invalidation() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("k.json"), false).unwrap();
        let (_, rec) = mint("acct_1");
        store.insert(rec.clone()).await.unwrap();
        let mut rx = store.subscribe();
        store.revoke(&rec.id, Timestamp::now()).await.unwrap();
        assert_eq!(rx.recv().await.unwrap(), Invalidation::Key(rec.lookup_hash));
        // Usage bookkeeping is not an auth change: no invalidation.
        store
            .record_usage(vec![(rec.id.clone(), Timestamp::now())])
            .await
            .unwrap();
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn rotate_is_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().join("k.json"), false).unwrap();
        let (_, old) = mint("acct_1");
        let (_, new) = mint("acct_1");
        store.insert(old.clone()).await.unwrap();
        let updated = store.rotate(&old.id, new.clone(), None).await.unwrap();
        assert!(updated.revoked_at.is_some());
        assert_eq!(updated.rotated_to.as_deref(), Some(new.id.as_str()));
        let stored_new = store.get(&new.id).await.unwrap().unwrap();
        assert_eq!(stored_new.rotated_from.as_deref(), Some(old.id.as_str()));
        // A second rotation of the retired key fails and changes nothing.
        let (_, third) = mint("acct_1");
        assert!(matches!(
            store.rotate(&old.id, third, None).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.list().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn corrupt_file_keeps_last_good_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        let store = FileStore::open(&path, false).unwrap();
        let (_, rec) = mint("acct_1");
        store.insert(rec.clone()).await.unwrap();
        std::fs::write(&path, "{ not json").unwrap();
        assert!(matches!(
            store.reload_if_changed(),
            Err(StoreError::Corrupt(_))
        ));
        assert!(store.find_by_hash(rec.lookup_hash).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn read_only_store_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        // Opening never creates the file; a read-only open of a missing one fails.
        let rw = FileStore::open(&path, false).unwrap();
        assert!(!path.exists());
        assert!(FileStore::open(&path, true).is_err());
        assert!(rw.create_if_missing().unwrap());
        assert!(!rw.create_if_missing().unwrap());
        let ro = FileStore::open(&path, true).unwrap();
        let (_, rec) = mint("acct_1");
        assert!(matches!(ro.insert(rec).await, Err(StoreError::ReadOnly(_))));
    }
}
