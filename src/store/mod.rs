//! Where key records live: [`KeyRecord`], the [`KeyStore`] trait every backend implements, and
//! [`Store`], the enum the rest of keygate holds. In the request path the verifier calls
//! [`KeyStore::find_by_hash`] only after the offline checks and both caches missed.

mod changes;
mod file;
mod propagation;
mod record;
mod redis;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::broadcast;

pub use changes::Listener;
pub use file::FileStore;
pub use propagation::{Propagation, default_replica_id};
pub use record::{KeyPatch, KeyRateLimit, KeyRecord, KeyState, KeyView, MintError, NewRecord};
pub use redis::{
    AUDIT_STREAMS, Layout, Migration, RedisStore, Steer, run_migrate, shard_of_hash, shard_of_id,
};
pub(crate) use redis::{Lua, ScriptCall};

use crate::key::LookupHash;
use crate::time::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no key with id {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("the store is read-only ({0})")]
    ReadOnly(String),
    /// The backend cannot be reached or answered with an error: retryable.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
}

/// Fails unless `change` left the identity of `before` alone (see [`KeyStore::update`]).
pub(crate) fn check_identity_kept(before: &KeyRecord, after: &KeyRecord) -> Result<(), StoreError> {
    if before.id != after.id
        || before.lookup_hash != after.lookup_hash
        || before.phc != after.phc
        || before.owner != after.owner
    {
        return Err(StoreError::Conflict(format!(
            "key {}: id, hash and owner cannot be changed",
            before.id
        )));
    }
    Ok(())
}

/// A change other replicas and caches must hear about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Drop whatever is cached for this lookup hash (positive and negative).
    Key(LookupHash),
    /// Drop everything: the listener may have missed changes.
    All,
}

/// One backend of key records. Implementations keep no plaintext keys: only lookup hashes and
/// Argon2id PHC strings.
pub trait KeyStore: Send + Sync {
    /// The record whose lookup hash is `hash`, in whatever state (revoked, expired, …).
    fn find_by_hash(
        &self,
        hash: LookupHash,
    ) -> impl Future<Output = Result<Option<Arc<KeyRecord>>, StoreError>> + Send;

    fn get(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<Arc<KeyRecord>>, StoreError>> + Send;

    /// Every record, oldest first.
    fn list(&self) -> impl Future<Output = Result<Vec<Arc<KeyRecord>>, StoreError>> + Send;

    /// `owner`'s records, oldest first.
    fn list_owner(
        &self,
        owner: &str,
    ) -> impl Future<Output = Result<Vec<Arc<KeyRecord>>, StoreError>> + Send {
        async move {
            let mut all = self.list().await?;
            all.retain(|r| r.owner == owner);
            Ok(all)
        }
    }

    /// What a rotation's successor of the record with `hash` must satisfy (a sharded store
    /// keeps a lineage in one shard, so a rotation is one atomic write); `None`: anything.
    fn lineage(
        &self,
        _hash: &LookupHash,
    ) -> impl Future<Output = Result<Option<Steer>, StoreError>> + Send {
        async { Ok(None) }
    }

    /// Adds a record; fails with `Conflict` if its id or lookup hash exists.
    fn insert(&self, record: KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Atomically adds `new` and retires `old_id`: revoked now, or expiring at `old_expires_at`
    /// when a grace period applies. Returns the updated old record.
    fn rotate(
        &self,
        old_id: &str,
        new: KeyRecord,
        old_expires_at: Option<Timestamp>,
    ) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send;

    /// Applies `change` to the record `id` atomically and returns the result. `change` may run
    /// more than once (compare-and-set retries) and must not touch the id, lookup hash, PHC
    /// string or owner.
    fn update<F>(
        &self,
        id: &str,
        change: F,
    ) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send
    where
        F: Fn(&mut KeyRecord) -> Result<(), StoreError> + Send + Sync + 'static;

    /// Revokes `id` for good (a no-op on a revoked key). Returns the updated record.
    fn revoke(
        &self,
        id: &str,
        at: Timestamp,
    ) -> impl Future<Output = Result<KeyRecord, StoreError>> + Send {
        self.update(id, move |rec| {
            rec.revoked_at.get_or_insert(at);
            Ok(())
        })
    }

    /// Raises `last_used_at` for a batch of key ids (coalesced by the caller).
    fn record_usage(
        &self,
        usage: Vec<(String, Timestamp)>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the backend answers now (for `/readyz`).
    fn health(&self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Changes made by this process or seen from others.
    fn subscribe(&self) -> broadcast::Receiver<Invalidation>;

    /// Whether every change is being heard right now. While it is not (a lost Redis
    /// subscription), cached records cannot be trusted to be current and are re-read.
    fn invalidations_live(&self) -> bool {
        true
    }
}

/// The configured backend. An enum rather than `dyn KeyStore` so calls stay static.
#[derive(Clone, Debug)]
pub enum Store {
    File(FileStore),
    Redis(RedisStore),
}

impl KeyStore for Store {
    async fn find_by_hash(&self, hash: LookupHash) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        match self {
            Store::File(s) => s.find_by_hash(hash).await,
            Store::Redis(s) => s.find_by_hash(hash).await,
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Arc<KeyRecord>>, StoreError> {
        match self {
            Store::File(s) => s.get(id).await,
            Store::Redis(s) => s.get(id).await,
        }
    }

    async fn list(&self) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        match self {
            Store::File(s) => s.list().await,
            Store::Redis(s) => s.list().await,
        }
    }

    async fn list_owner(&self, owner: &str) -> Result<Vec<Arc<KeyRecord>>, StoreError> {
        match self {
            Store::File(s) => s.list_owner(owner).await,
            Store::Redis(s) => s.list_owner(owner).await,
        }
    }

    async fn lineage(&self, hash: &LookupHash) -> Result<Option<Steer>, StoreError> {
        match self {
            Store::File(s) => s.lineage(hash).await,
            Store::Redis(s) => s.lineage(hash).await,
        }
    }

    async fn insert(&self, record: KeyRecord) -> Result<(), StoreError> {
        match self {
            Store::File(s) => s.insert(record).await,
            Store::Redis(s) => s.insert(record).await,
        }
    }

    async fn rotate(
        &self,
        old_id: &str,
        new: KeyRecord,
        old_expires_at: Option<Timestamp>,
    ) -> Result<KeyRecord, StoreError> {
        match self {
            Store::File(s) => s.rotate(old_id, new, old_expires_at).await,
            Store::Redis(s) => s.rotate(old_id, new, old_expires_at).await,
        }
    }

    async fn update<F>(&self, id: &str, change: F) -> Result<KeyRecord, StoreError>
    where
        F: Fn(&mut KeyRecord) -> Result<(), StoreError> + Send + Sync + 'static,
    {
        match self {
            Store::File(s) => s.update(id, change).await,
            Store::Redis(s) => s.update(id, change).await,
        }
    }

    async fn record_usage(&self, usage: Vec<(String, Timestamp)>) -> Result<(), StoreError> {
        match self {
            Store::File(s) => s.record_usage(usage).await,
            Store::Redis(s) => s.record_usage(usage).await,
        }
    }

    async fn health(&self) -> Result<(), StoreError> {
        match self {
            Store::File(s) => s.health().await,
            Store::Redis(s) => s.health().await,
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Invalidation> {
        match self {
            Store::File(s) => s.subscribe(),
            Store::Redis(s) => s.subscribe(),
        }
    }

    fn invalidations_live(&self) -> bool {
        match self {
            Store::File(s) => s.invalidations_live(),
            Store::Redis(s) => s.invalidations_live(),
        }
    }
}

impl Store {
    /// Calls `listener` with every change, synchronously: a write through this process returns
    /// only after its listeners applied it (the verifier's cache drops the old record), and
    /// changes heard from other writers are applied as soon as they arrive.
    pub fn on_change(&self, listener: Listener) {
        match self {
            Store::File(s) => s.changes().listen(listener),
            Store::Redis(s) => s.changes().listen(listener),
        }
    }

    /// Records the revocation lag of changes seen from other writers in `metrics`.
    pub fn report_to(&self, metrics: std::sync::Arc<crate::telemetry::Metrics>) {
        match self {
            Store::File(s) => s.changes().report_to(metrics),
            Store::Redis(s) => s.changes().report_to(metrics),
        }
    }

    /// Serves this store as the replica `id`: acknowledges every change it applies, with a
    /// heartbeat, so writers can wait until every running proxy has it (see `propagation`).
    pub fn spawn_replica(&self, id: String) -> Vec<tokio::task::JoinHandle<()>> {
        match self {
            Store::File(s) => s.spawn_replica(id).into_iter().collect(),
            Store::Redis(s) => vec![s.spawn_replica(id)],
        }
    }

    /// Waits (up to `timeout`) until every live replica has applied what this process wrote.
    pub async fn await_propagation(&self, timeout: std::time::Duration) -> Propagation {
        match self {
            Store::File(s) => s.await_propagation(timeout).await,
            Store::Redis(s) => s.await_propagation(timeout).await,
        }
    }

    /// Opens the configured backend. Redis connections are made lazily.
    pub fn open(cfg: &crate::config::StoreConfig) -> Result<Store, StoreError> {
        use crate::config::StoreConfig;
        match cfg {
            StoreConfig::File {
                path, read_only, ..
            } => Ok(Store::File(FileStore::open(path, *read_only)?)),
            StoreConfig::Redis(r) => Ok(Store::Redis(RedisStore::open(r)?)),
        }
    }

    /// The file backend's store file, written empty when missing (for `serve`, which then
    /// watches it); `Some(path)` when it was created.
    pub fn create_if_missing(
        &self,
        cfg: &crate::config::StoreConfig,
    ) -> Result<Option<std::path::PathBuf>, StoreError> {
        match (self, cfg) {
            (Store::File(s), crate::config::StoreConfig::File { path, .. }) => {
                Ok(s.create_if_missing()?.then(|| path.clone()))
            }
            _ => Ok(None),
        }
    }

    /// Starts the backend's background work: file watching, or the invalidation subscription.
    pub fn spawn_background(
        &self,
        cfg: &crate::config::StoreConfig,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        use crate::config::StoreConfig;
        match (self, cfg) {
            (
                Store::File(s),
                StoreConfig::File {
                    reload_interval, ..
                },
            ) => vec![s.spawn_watcher(*reload_interval)],
            (Store::Redis(s), _) => vec![s.spawn_subscriber()],
            (Store::File(_), StoreConfig::Redis(_)) => Vec::new(),
        }
    }
}
