//! The `redis` backend, shared by many replicas.
//!
//! # Layout
//! Sharded (see [`layout`]): under shard tags `{<prefix>#<s>}`, with `s` from the lookup hash
//! (record, owner index, listing, sequence) or from the key id (id index, `used`, usage):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p#s}:rec:<lookup hash hex>` | string | the record as JSON (without `last_used_at`) |
//! | `{p#s}:owner:<owner>` | set | lookup hashes of that owner's records in shard `s` |
//! | `{p#s}:ids` | sorted set | lookup hashes by creation (Redis time, µs) |
//! | `{p#s}:invseq` | counter | shard `s`'s invalidation sequence |
//! | `{p#t}:id:<key id>` | string | the lookup hash hex (the id index) |
//! | `{p#t}:used` | hash | key id → last used, unix seconds (written in batches) |
//! | `{p#a}:audit`, `{p#t}:usage:…` | | the audit streams and usage counters (`audit::redis`) |
//! | `{p}:layout` | string | `migrating:<n>` or `sharded:<n>`; absent: single-slot |
//! | `{p}:replicas`, `{p}:applied[:<replica>]`, `{p}:layouts` | | heartbeats, acknowledgements, layouts served |
//! | `{p}:invalidate` | pub/sub channel | the lookup hash hex of a changed record (or `*`, or `*layout`), then the same stamped `<hash>@<Redis time, ms>#<sequence>` (`<shard>/<n>` sharded) for acknowledgements and the revocation-lag metric |
//!
//! Single-slot (releases before sharding, until `keygate store migrate`): the same names under
//! `{p}` (`{p}:ids` holds key ids, scored by the `{p}:seq` counter; `{p}:owner:*` key ids).
//!
//! Writes are Lua scripts that check, write and `PUBLISH` in one atomic step; updates are
//! compare-and-set on the record's JSON, retried when another writer got there first.
//!
//! Files: [`conn`] (topologies), [`scripts`] (the Lua), [`keystore`] (the `KeyStore`
//! implementation and the single-slot layout), [`sharded`] (the sharded layout), [`migrate`]
//! (the migration), [`replica`] (acknowledgements), [`subscriber`] (the invalidation feed).

mod conn;
mod keystore;
mod layout;
mod migrate;
mod pipe;
mod replica;
mod resp;
mod scripts;
mod sharded;
mod subscriber;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisResult};
use tokio::sync::OnceCell;

use super::changes::Changes;
use super::{KeyRecord, StoreError};
use crate::config::{RedisConfig, RedisTopology};
use conn::{Conn, LazyCluster, PubSubSource, SentinelConn, with_password};
pub use layout::{AUDIT_STREAMS, Layout, Steer, shard_of_hash, shard_of_id};
pub use migrate::{Migration, run_migrate};
pub(crate) use resp::{Lua, Reply, ScriptCall};

/// Compare-and-set retries before giving up on a contended record.
const CAS_RETRIES: usize = 8;
/// How often an idle subscription is pinged, so a silently dead one is noticed.
const SUBSCRIPTION_PING: Duration = Duration::from_secs(5);

/// Key names: the single-slot layout's and control keys under `{p}`, sharded ones under
/// `{p#<shard>}` (`#` cannot appear in a prefix, so no shard tag is another prefix's tag).
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    tag: String,
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            tag: format!("{{{prefix}}}"),
            prefix: prefix.to_owned(),
        }
    }
    /// `{p}:layout`: absent (single-slot), `migrating:<n>` or `sharded:<n>`.
    pub(super) fn layout(&self) -> String {
        format!("{}:layout", self.tag)
    }
    /// Replica id → the layout it serves (its heartbeat says).
    pub(super) fn layouts(&self) -> String {
        format!("{}:layouts", self.tag)
    }
    /// Prefix of `<replica id>` → a hash of shard → the shard sequence it applied.
    pub(super) fn applied_prefix(&self) -> String {
        format!("{}:applied:", self.tag)
    }
    /// A key under shard `s`'s hash tag.
    pub(crate) fn sharded(&self, s: u16, suffix: &str) -> String {
        format!("{{{}#{s}}}:{suffix}", self.prefix)
    }
    pub(super) fn srec(&self, s: u16, hash: &str) -> String {
        self.sharded(s, &format!("rec:{hash}"))
    }
    pub(super) fn sid(&self, s: u16, id: &str) -> String {
        self.sharded(s, &format!("id:{id}"))
    }
    pub(super) fn sowner(&self, s: u16, owner: &str) -> String {
        self.sharded(s, &format!("owner:{owner}"))
    }
    pub(super) fn rec(&self, hash: &str) -> String {
        format!("{}:rec:{hash}", self.tag)
    }
    pub(super) fn id(&self, id: &str) -> String {
        format!("{}:id:{id}", self.tag)
    }
    pub(super) fn owner(&self, owner: &str) -> String {
        format!("{}:owner:{owner}", self.tag)
    }
    pub(super) fn ids(&self) -> String {
        format!("{}:ids", self.tag)
    }
    pub(super) fn seq(&self) -> String {
        format!("{}:seq", self.tag)
    }
    pub(super) fn used(&self) -> String {
        format!("{}:used", self.tag)
    }
    /// The invalidation sequence: one number per change, in publish order.
    pub(super) fn invseq(&self) -> String {
        format!("{}:invseq", self.tag)
    }
    /// Serving replicas, scored by their last heartbeat (Redis time, ms).
    pub(super) fn replicas(&self) -> String {
        format!("{}:replicas", self.tag)
    }
    /// Replica id → the last invalidation sequence it applied.
    pub(super) fn applied(&self) -> String {
        format!("{}:applied", self.tag)
    }
    pub(super) fn channel(&self) -> String {
        format!("{}:invalidate", self.tag)
    }
    /// Any other key of keygate's under the tag (the audit stream, usage counters).
    pub(crate) fn tagged(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.tag)
    }
}

struct Inner {
    /// The configured key prefix; other modules (the rate limiter) namespace their keys by it.
    prefix: String,
    /// True while subscribed to the invalidation channel.
    subscribed: AtomicBool,
    conn: Conn,
    /// Standalone over TCP: the request path's scripts go through this lean connection.
    pipe: Option<pipe::Pipe>,
    keys: Keys,
    timeout: Duration,
    changes: Changes,
    source: PubSubSource,
    /// The highest invalidation sequence this process wrote (what its writers wait for).
    written: AtomicU64,
    /// The highest invalidation sequence this process applied (what it acknowledges).
    applied: AtomicU64,
    /// Sharded: per shard, the highest sequence this process wrote and not yet confirmed by
    /// every replica, and the last sequence it heard (what it acknowledges).
    written_shards: Mutex<BTreeMap<u16, u64>>,
    applied_shards: Mutex<BTreeMap<u16, u64>>,
    /// The layout as last read from `{p}:layout` (`None`: read it again).
    layout: RwLock<Option<Layout>>,
    /// The shard count a new store is created with.
    new_shards: u16,
    /// Replicas that must hold a write before it is acknowledged (`WAIT`).
    write_replicas: u32,
    /// The audit stream this process appends to (sharded).
    audit_stream: u16,
    /// Set when this process serves the store (see `replica`).
    replica: OnceLock<Arc<replica::Replica>>,
}

/// The `redis` backend. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("tag", &self.inner.keys.tag)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisStore {
    /// Builds the clients. Connections are made lazily, so keygate starts (not ready) while
    /// Redis is down and recovers by itself when it comes back.
    pub fn open(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let password = match &cfg.password {
            Some(p) => Some(
                std::str::from_utf8(p.expose())
                    .map_err(|_| StoreError::Unavailable("redis password must be UTF-8".into()))?
                    .to_owned(),
            ),
            None => None,
        };
        let pw = password.as_deref();
        let conn_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout));
        let mut pipe = None;
        let (conn, source) = match &cfg.topology {
            RedisTopology::Standalone { url } => {
                let info = with_password(url, pw)?;
                pipe = pipe::Pipe::new(&info, cfg.timeout);
                let client = redis::Client::open(info).map_err(unavailable)?;
                let manager_config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(cfg.timeout))
                    .set_response_timeout(Some(cfg.timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                let manager =
                    ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
                        .map_err(unavailable)?;
                (Conn::Standalone(manager), PubSubSource::Client(client))
            }
            RedisTopology::Cluster { nodes } => {
                let infos = nodes
                    .iter()
                    .map(|n| with_password(n, pw))
                    .collect::<Result<Vec<_>, _>>()?;
                let client = redis::cluster::ClusterClient::builder(infos.clone())
                    .connection_timeout(cfg.timeout)
                    .response_timeout(cfg.timeout)
                    .build()
                    .map_err(unavailable)?;
                let seeds = infos
                    .into_iter()
                    .map(redis::Client::open)
                    .collect::<RedisResult<Vec<_>>>();
                (
                    Conn::Cluster(Arc::new(LazyCluster {
                        client,
                        conn: OnceCell::new(),
                    })),
                    PubSubSource::AnyOf(seeds.map_err(unavailable)?),
                )
            }
            RedisTopology::Sentinel { sentinels, master } => {
                let node_info =
                    SentinelNodeConnectionInfo::default().set_redis_connection_info(match pw {
                        Some(p) => redis::RedisConnectionInfo::default().set_password(p),
                        None => redis::RedisConnectionInfo::default(),
                    });
                let client = SentinelClient::build(
                    sentinels.clone(),
                    master.clone(),
                    Some(node_info),
                    SentinelServerType::Master,
                )
                .map_err(unavailable)?;
                let s = Arc::new(SentinelConn {
                    client: tokio::sync::Mutex::new(client),
                    current: RwLock::new(None),
                    config: conn_config,
                });
                (Conn::Sentinel(Arc::clone(&s)), PubSubSource::Sentinel(s))
            }
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                subscribed: AtomicBool::new(false),
                conn,
                pipe,
                keys: Keys::new(&cfg.key_prefix),
                prefix: cfg.key_prefix.clone(),
                timeout: cfg.timeout,
                changes: Changes::new(),
                source,
                written: AtomicU64::new(0),
                applied: AtomicU64::new(0),
                written_shards: Mutex::new(BTreeMap::new()),
                applied_shards: Mutex::new(BTreeMap::new()),
                layout: RwLock::new(None),
                new_shards: cfg.shards,
                write_replicas: cfg.write_replicas,
                audit_stream: {
                    use rand::RngExt as _;
                    crate::key::os_rng().random_range(0..layout::AUDIT_STREAMS)
                },
                replica: OnceLock::new(),
            }),
        })
    }

    /// Runs a command with the store timeout: slower counts as unreachable.
    pub(crate) async fn run<T, F>(&self, f: impl FnOnce(Conn) -> F) -> Result<T, StoreError>
    where
        F: Future<Output = RedisResult<T>>,
    {
        // Two timeouts' worth: a reconnect plus the command.
        match tokio::time::timeout(self.inner.timeout * 2, f(self.inner.conn.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(unavailable("timed out")),
        }
    }

    pub(crate) async fn query<T: redis::FromRedisValue + Send>(
        &self,
        cmd: Cmd,
    ) -> Result<T, StoreError> {
        self.run(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// The stored JSON of `id`, exactly as stored (for compare-and-set), and its lookup hash.
    pub(super) async fn raw_by_id(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
        let keys = &self.inner.keys;
        let Some(hash) = self
            .query::<Option<String>>(redis::cmd("GET").arg(keys.id(id)).clone())
            .await?
        else {
            return Ok(None);
        };
        let json = self
            .query::<Option<String>>(redis::cmd("GET").arg(keys.rec(&hash)).clone())
            .await?;
        Ok(json.map(|j| (j, hash)))
    }

    pub(super) async fn record_by_id(
        &self,
        id: &str,
    ) -> Result<Option<(String, String, KeyRecord)>, StoreError> {
        match self.raw_by_id(id).await? {
            None => Ok(None),
            Some((json, hash)) => {
                let rec = keystore::parse(&json)?;
                Ok(Some((json, hash, rec)))
            }
        }
    }

    pub(super) async fn last_used(&self, ids: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.query(
            redis::cmd("HMGET")
                .arg(self.inner.keys.used())
                .arg(ids)
                .clone(),
        )
        .await
    }

    /// The store's layout, read from `{p}:layout` when not known. A store with no layout
    /// marker and no single-slot records is new: it is made sharded (the first process there
    /// decides, `SET NX`).
    pub async fn layout(&self) -> Result<Layout, StoreError> {
        if let Some(l) = *self.inner.layout.read().unwrap_or_else(|e| e.into_inner()) {
            return Ok(l);
        }
        let keys = &self.inner.keys;
        let get = redis::cmd("GET").arg(keys.layout()).clone();
        let mut marker: Option<String> = self.query(get.clone()).await?;
        if marker.is_none() {
            let single: u64 = self
                .query(
                    redis::cmd("EXISTS")
                        .arg(keys.seq())
                        .arg(keys.ids())
                        .arg(keys.invseq())
                        .clone(),
                )
                .await?;
            if single > 0 {
                return Ok(self.remember_layout(Layout::SingleSlot));
            }
            let fresh = Layout::Sharded(self.inner.new_shards);
            let set = redis::cmd("SET")
                .arg(keys.layout())
                .arg(fresh.marker())
                .arg("NX")
                .clone();
            self.write::<Option<String>>(set).await?;
            marker = self.query(get).await?;
        }
        let m = marker.unwrap_or_default();
        let layout = Layout::parse(&m).ok_or_else(|| {
            StoreError::Corrupt(format!("redis {}: {m:?} is not a layout", keys.layout()))
        })?;
        Ok(self.remember_layout(layout))
    }

    fn remember_layout(&self, layout: Layout) -> Layout {
        *self.inner.layout.write().unwrap_or_else(|e| e.into_inner()) = Some(layout);
        layout
    }

    /// Reads the layout again at its next use (it changed, or may have).
    pub(super) fn forget_layout(&self) {
        *self.inner.layout.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Waits until `write_replicas` replicas of the master holding `key` have every write made
    /// so far (Redis `WAIT`), so a failover cannot lose an acknowledged change.
    pub(super) async fn replicated(&self, key: &str) -> Result<(), StoreError> {
        let want = self.inner.write_replicas;
        if want == 0 {
            return Ok(());
        }
        // Half the command timeout: WAIT answers (with fewer replicas) before the client gives up.
        let ms = u64::try_from(self.inner.timeout.as_millis() / 2)
            .unwrap_or(u64::MAX)
            .max(1);
        let key = key.to_owned();
        let got: u64 = self
            .run(|c| async move { c.wait_replicas(&key, want, ms).await })
            .await?;
        if got < u64::from(want) {
            return Err(StoreError::Unavailable(format!(
                "redis: the change reached {got} of {want} replicas in time; a failover now could lose it, so it is not acknowledged (retry)"
            )));
        }
        Ok(())
    }

    /// The audit stream this process appends to, and every stream a reader merges (sharded:
    /// [`layout::AUDIT_STREAMS`] of them, plus the single-slot stream of before a migration).
    pub(crate) async fn audit_streams(&self) -> Result<(String, Vec<String>), StoreError> {
        let keys = &self.inner.keys;
        let single = keys.tagged("audit");
        Ok(match self.layout().await?.shards() {
            None => (single.clone(), vec![single]),
            Some(_) => {
                let mut all = vec![single];
                all.extend((0..layout::AUDIT_STREAMS).map(|a| keys.sharded(a, "audit")));
                (keys.sharded(self.inner.audit_stream, "audit"), all)
            }
        })
    }

    /// The key naming `suffix` for the key id `id`: in the id's shard, or under `{p}`
    /// single-slot; sharded, also the single-slot name (still read after a migration).
    pub(crate) async fn by_id(
        &self,
        id: &str,
        suffix: &str,
    ) -> Result<(String, Option<String>), StoreError> {
        let keys = &self.inner.keys;
        let single = keys.tagged(suffix);
        Ok(match self.layout().await?.shards() {
            None => (single, None),
            Some(n) => (
                keys.sharded(layout::shard_of_id(id, n), suffix),
                Some(single),
            ),
        })
    }

    pub(super) fn changes(&self) -> &Changes {
        &self.inner.changes
    }

    /// The configured key prefix, shared with the Redis rate limiter.
    pub fn key_prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Runs a script for another module (the rate limiter) over this store's connection, with
    /// the store timeout.
    pub(crate) async fn eval<T: redis::FromRedisValue + Send>(
        &self,
        invocation: redis::ScriptInvocation<'static>,
    ) -> Result<T, StoreError> {
        self.run(|mut c| async move { invocation.invoke_async::<T>(&mut c).await })
            .await
    }

    /// Runs one of keygate's scripts on the request path: over the lean connection where the
    /// topology has one (see [`pipe`]), else the `redis` crate's. An error reply is an error.
    pub(crate) async fn call(&self, call: &ScriptCall) -> Result<Reply, StoreError> {
        let Some(pipe) = &self.inner.pipe else {
            let inv = call.invocation();
            let value = self
                .run(|mut c| async move { inv.invoke_async::<redis::Value>(&mut c).await })
                .await?;
            return Reply::from_value(value).ok_or_else(|| unavailable("unexpected reply type"));
        };
        let mut reply = pipe
            .call(|out| call.write(out, false))
            .await
            .map_err(unavailable)?;
        if matches!(&reply, Reply::Error(e) if e.starts_with("NOSCRIPT")) {
            // Redis lost its script cache (a restart, `SCRIPT FLUSH`): the text loads it again.
            reply = pipe
                .call(|out| call.write(out, true))
                .await
                .map_err(unavailable)?;
        }
        match reply {
            Reply::Error(e) => Err(unavailable(e)),
            reply => Ok(reply),
        }
    }

    /// Runs a pipeline of writes (on the current master).
    pub(crate) async fn write_pipe(&self, pipe: Pipeline) -> Result<(), StoreError> {
        self.run(|mut c| async move {
            if let Conn::Sentinel(s) = &c {
                s.ensure_master().await?;
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// Runs a write command (on the current master: see [`SentinelConn::ensure_master`]).
    pub(super) async fn write<T: redis::FromRedisValue + Send>(
        &self,
        cmd: Cmd,
    ) -> Result<T, StoreError> {
        self.run(|mut c| async move {
            if let Conn::Sentinel(s) = &c {
                s.ensure_master().await?;
            }
            cmd.query_async::<T>(&mut c).await
        })
        .await
    }

    /// Runs a write script (on the current master: see [`SentinelConn::ensure_master`]).
    pub(super) async fn script(
        &self,
        invocation: redis::ScriptInvocation<'static>,
    ) -> Result<String, StoreError> {
        self.run(|mut c| async move {
            if let Conn::Sentinel(s) = &c {
                s.ensure_master().await?;
            }
            invocation.invoke_async::<String>(&mut c).await
        })
        .await
    }
}
