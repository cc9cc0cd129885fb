//! The `redis` backend, shared by many replicas.
//!
//! # Layout
//! Every key lives under one Cluster hash tag, `{<prefix>}`, so that each multi-key operation
//! (a Lua script) stays on one slot on a Cluster too. The key store is small (about 1 KB a key);
//! one slot is the price of atomic rotation across records.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{p}:rec:<lookup hash hex>` | string | the record as JSON (without `last_used_at`) |
//! | `{p}:id:<key id>` | string | the lookup hash hex (the id index) |
//! | `{p}:owner:<owner>` | set | key ids of that owner (the owner index) |
//! | `{p}:ids` | sorted set | key ids in creation order (score from the `{p}:seq` counter) |
//! | `{p}:used` | hash | key id → last used, unix seconds (written in batches) |
//! | `{p}:invalidate` | pub/sub channel | the lookup hash hex of a changed record (or `*`), then the same stamped `<hash>@<Redis time, ms>` for the revocation-lag metric; replicas of the previous release read the first and skip the second, so a rolling upgrade never misses a change |
//! | `{p}:audit` | stream | audit events, field `e` = the event JSON, capped with `MAXLEN ~` |
//! | `{p}:usage:<key id>:<hour>` | hash | `<minute>:<status class>` → requests (expires after 26 h) |
//!
//! Writes are Lua scripts that check, write and `PUBLISH` in one atomic step; updates are
//! compare-and-set on the record's JSON, retried when another writer got there first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Script,
    Value,
};
use tokio::sync::{OnceCell, broadcast};

use super::{Invalidation, KeyRecord, KeyStore, StoreError};
use crate::config::{RedisConfig, RedisTopology};
use crate::key::LookupHash;
use crate::time::Timestamp;

/// Compare-and-set retries before giving up on a contended record.
const CAS_RETRIES: usize = 8;
/// How often an idle subscription is pinged, so a silently dead one is noticed.
const SUBSCRIPTION_PING: Duration = Duration::from_secs(5);

static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: rec, id, owner, ids, seq; ARGV: json, hash, id, channel
        if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 'conflict' end
        redis.call('SET', KEYS[1], ARGV[1])
        redis.call('SET', KEYS[2], ARGV[2])
        redis.call('SADD', KEYS[3], ARGV[3])
        redis.call('ZADD', KEYS[4], redis.call('INCR', KEYS[5]), ARGV[3])
        local t = redis.call('TIME'); local at = '@' .. string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))
        redis.call('PUBLISH', ARGV[4], ARGV[2]); redis.call('PUBLISH', ARGV[4], ARGV[2] .. at)
        return 'ok'",
    )
});

static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: rec; ARGV: expected, updated, channel, hash
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'changed' end
        redis.call('SET', KEYS[1], ARGV[2])
        local t = redis.call('TIME'); local at = '@' .. string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))
        redis.call('PUBLISH', ARGV[3], ARGV[4]); redis.call('PUBLISH', ARGV[3], ARGV[4] .. at)
        return 'ok'",
    )
});

static ROTATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: old rec, new rec, new id, owner, ids, seq
        -- ARGV: expected old, updated old, new json, new hash, new id, channel, old hash
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'changed' end
        if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return 'conflict' end
        redis.call('SET', KEYS[1], ARGV[2])
        redis.call('SET', KEYS[2], ARGV[3])
        redis.call('SET', KEYS[3], ARGV[4])
        redis.call('SADD', KEYS[4], ARGV[5])
        redis.call('ZADD', KEYS[5], redis.call('INCR', KEYS[6]), ARGV[5])
        local t = redis.call('TIME'); local at = '@' .. string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))
        redis.call('PUBLISH', ARGV[6], ARGV[7]); redis.call('PUBLISH', ARGV[6], ARGV[7] .. at)
        redis.call('PUBLISH', ARGV[6], ARGV[4]); redis.call('PUBLISH', ARGV[6], ARGV[4] .. at)
        return 'ok'",
    )
});

static USAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"-- KEYS: used; ARGV: id, unix seconds, id, unix seconds, ...
        for i = 1, #ARGV, 2 do
          local cur = redis.call('HGET', KEYS[1], ARGV[i])
          if not cur or tonumber(cur) < tonumber(ARGV[i + 1]) then
            redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
          end
        end
        return 'ok'",
    )
});

/// Key names, all under one hash tag.
#[derive(Clone, Debug)]
struct Keys {
    tag: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Keys {
            tag: format!("{{{prefix}}}"),
        }
    }
    fn rec(&self, hash: &str) -> String {
        format!("{}:rec:{hash}", self.tag)
    }
    fn id(&self, id: &str) -> String {
        format!("{}:id:{id}", self.tag)
    }
    fn owner(&self, owner: &str) -> String {
        format!("{}:owner:{owner}", self.tag)
    }
    fn ids(&self) -> String {
        format!("{}:ids", self.tag)
    }
    fn seq(&self) -> String {
        format!("{}:seq", self.tag)
    }
    fn used(&self) -> String {
        format!("{}:used", self.tag)
    }
    fn channel(&self) -> String {
        format!("{}:invalidate", self.tag)
    }
    fn audit(&self) -> String {
        format!("{}:audit", self.tag)
    }
    fn usage(&self, id: &str, hour: u64) -> String {
        format!("{}:usage:{id}:{hour}", self.tag)
    }
}

/// A connection to whichever topology is configured. Cheap to clone; reconnects by itself.
#[derive(Clone)]
enum Conn {
    Standalone(ConnectionManager),
    Cluster(Arc<LazyCluster>),
    Sentinel(Arc<SentinelConn>),
}

struct LazyCluster {
    client: redis::cluster::ClusterClient,
    conn: OnceCell<ClusterConnection>,
}

impl LazyCluster {
    async fn get(&self) -> RedisResult<ClusterConnection> {
        self.conn
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
    }
}

/// The current master as reported by the sentinels; re-resolved after a connection error or a
/// `READONLY` answer (the old master was demoted by a failover).
struct SentinelConn {
    client: tokio::sync::Mutex<SentinelClient>,
    /// The master's address (as the sentinel named it) and a connection to it.
    current: RwLock<Option<(String, MultiplexedConnection)>>,
    config: AsyncConnectionConfig,
}

impl SentinelConn {
    async fn master(&self) -> RedisResult<redis::Client> {
        self.client.lock().await.async_get_client().await
    }

    async fn get(&self) -> RedisResult<MultiplexedConnection> {
        if let Some((_, c)) = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(c);
        }
        self.connect_to_master().await
    }

    async fn connect_to_master(&self) -> RedisResult<MultiplexedConnection> {
        let master = self.master().await?;
        let addr = format!("{:?}", master.get_connection_info().addr());
        let conn = master
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((addr, conn.clone()));
        Ok(conn)
    }

    /// Before a write: ask the sentinel who the master is now, and move if it changed. During
    /// a failover the old master keeps accepting writes until it is demoted, and those writes
    /// are lost when it resyncs; writes are rare (key management), so one sentinel round trip
    /// each is cheap insurance.
    async fn ensure_master(&self) -> RedisResult<()> {
        let master = self.master().await?;
        let addr = format!("{:?}", master.get_connection_info().addr());
        let same = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(current, _)| *current == addr);
        if !same {
            let conn = master
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some((addr, conn));
        }
        Ok(())
    }

    fn observe<T>(&self, result: &RedisResult<T>) {
        if let Err(e) = result
            && (e.is_io_error()
                || e.is_connection_dropped()
                || e.is_timeout()
                || e.code() == Some("READONLY"))
        {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => {
                Box::pin(async move { c.get().await?.req_packed_command(cmd).await })
            }
            Conn::Sentinel(s) => Box::pin(async move {
                let result = s.get().await?.req_packed_command(cmd).await;
                s.observe(&result);
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => Box::pin(async move {
                c.get()
                    .await?
                    .req_packed_commands(pipeline, offset, count)
                    .await
            }),
            Conn::Sentinel(s) => Box::pin(async move {
                let result = s
                    .get()
                    .await?
                    .req_packed_commands(pipeline, offset, count)
                    .await;
                s.observe(&result);
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(_) | Conn::Sentinel(_) => 0,
        }
    }
}

/// Where the invalidation subscription connects.
enum PubSubSource {
    Client(redis::Client),
    /// Cluster: `PUBLISH` reaches every node, so any reachable seed will do.
    AnyOf(Vec<redis::Client>),
    Sentinel(Arc<SentinelConn>),
}

impl PubSubSource {
    /// Under Sentinel, the current master's address (as the sentinels report it).
    async fn master_addr(&self) -> Option<String> {
        match self {
            PubSubSource::Sentinel(s) => {
                let client = s.master().await.ok()?;
                Some(format!("{:?}", client.get_connection_info().addr()))
            }
            PubSubSource::Client(_) | PubSubSource::AnyOf(_) => None,
        }
    }

    async fn connect(&self) -> RedisResult<redis::aio::PubSub> {
        match self {
            PubSubSource::Client(c) => c.get_async_pubsub().await,
            PubSubSource::AnyOf(clients) => {
                let mut last = None;
                for c in clients {
                    match c.get_async_pubsub().await {
                        Ok(p) => return Ok(p),
                        Err(e) => last = Some(e),
                    }
                }
                Err(last.unwrap_or_else(|| (redis::ErrorKind::Client, "no cluster nodes").into()))
            }
            PubSubSource::Sentinel(s) => s.master().await?.get_async_pubsub().await,
        }
    }
}

struct Inner {
    /// The configured key prefix; other modules (the rate limiter) namespace their keys by it.
    prefix: String,
    /// True while subscribed to the invalidation channel.
    subscribed: AtomicBool,
    conn: Conn,
    keys: Keys,
    timeout: Duration,
    changes: broadcast::Sender<Invalidation>,
    source: PubSubSource,
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

fn with_password(url: &str, password: Option<&str>) -> Result<redis::ConnectionInfo, StoreError> {
    let info = url
        .into_connection_info()
        .map_err(|e| StoreError::Unavailable(format!("redis url: {e}")))?;
    Ok(match password {
        Some(p) => {
            let redis = info.redis_settings().clone().set_password(p);
            info.set_redis_settings(redis)
        }
        None => info,
    })
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
        let (conn, source) = match &cfg.topology {
            RedisTopology::Standalone { url } => {
                let client = redis::Client::open(with_password(url, pw)?).map_err(unavailable)?;
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
        let (changes, _) = broadcast::channel(1024);
        Ok(RedisStore {
            inner: Arc::new(Inner {
                subscribed: AtomicBool::new(false),
                conn,
                keys: Keys::new(&cfg.key_prefix),
                prefix: cfg.key_prefix.clone(),
                timeout: cfg.timeout,
                changes,
                source,
            }),
        })
    }

    /// Runs a command with the store timeout: slower counts as unreachable.
    async fn run<T, F>(&self, f: impl FnOnce(Conn) -> F) -> Result<T, StoreError>
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

    async fn query<T: redis::FromRedisValue + Send>(&self, cmd: Cmd) -> Result<T, StoreError> {
        self.run(|mut c| async move { cmd.query_async(&mut c).await })
            .await
    }

    /// The stored JSON of `id`, exactly as stored (for compare-and-set), and its lookup hash.
    async fn raw_by_id(&self, id: &str) -> Result<Option<(String, String)>, StoreError> {
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

    async fn record_by_id(
        &self,
        id: &str,
    ) -> Result<Option<(String, String, KeyRecord)>, StoreError> {
        match self.raw_by_id(id).await? {
            None => Ok(None),
            Some((json, hash)) => {
                let rec = parse(&json)?;
                Ok(Some((json, hash, rec)))
            }
        }
    }

    async fn last_used(&self, ids: &[String]) -> Result<Vec<Option<u64>>, StoreError> {
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

    /// Runs a pipeline of writes (on the current master).
    async fn write_pipe(&self, pipe: Pipeline) -> Result<(), StoreError> {
        self.run(|mut c| async move {
            if let Conn::Sentinel(s) = &c {
                s.ensure_master().await?;
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// Appends audit events (JSON) to the capped stream.
    pub(crate) async fn audit_append(
        &self,
        events: &[String],
        max_len: u64,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for e in events {
            pipe.cmd("XADD")
                .arg(self.inner.keys.audit())
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len)
                .arg("*")
                .arg("e")
                .arg(e)
                .ignore();
        }
        // All or nothing: a retried batch must not leave half of itself behind.
        pipe.atomic();
        self.write_pipe(pipe).await
    }

    /// The newest audit event (JSON), if any.
    pub(crate) async fn audit_last(&self) -> Result<Option<String>, StoreError> {
        let entries: Vec<(String, Vec<String>)> = self
            .query(
                redis::cmd("XREVRANGE")
                    .arg(self.inner.keys.audit())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .clone(),
            )
            .await?;
        Ok(entries
            .into_iter()
            .next()
            .and_then(|(_, f)| f.into_iter().nth(1)))
    }

    /// Audit events (JSON) in stored order, between two unix-millisecond bounds.
    pub(crate) async fn audit_read(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<String>, StoreError> {
        let entries: Vec<(String, Vec<String>)> = self
            .query(
                redis::cmd("XRANGE")
                    .arg(self.inner.keys.audit())
                    .arg(from_ms)
                    .arg(to_ms)
                    .clone(),
            )
            .await?;
        Ok(entries
            .into_iter()
            .filter_map(|(_, fields)| {
                let mut it = fields.into_iter();
                while let Some(name) = it.next() {
                    let value = it.next()?;
                    if name == "e" {
                        return Some(value);
                    }
                }
                None
            })
            .collect())
    }

    /// Adds per-minute request counts: `(key id, minute start, counts by status class)`.
    pub(crate) async fn usage_add(
        &self,
        batch: &[(String, u64, [u64; 5])],
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (id, minute, counts) in batch {
            let key = self.inner.keys.usage(id, minute / 3600 * 3600);
            for (class, n) in counts.iter().enumerate().filter(|(_, n)| **n > 0) {
                pipe.cmd("HINCRBY")
                    .arg(&key)
                    .arg(format!("{minute}:{}", class + 1))
                    .arg(*n)
                    .ignore();
            }
            pipe.cmd("EXPIRE").arg(&key).arg(26 * 3600).ignore();
        }
        // One flush is seen whole or not at all by readers.
        pipe.atomic();
        self.write_pipe(pipe).await
    }

    /// Per-minute counts of `id` for the hours starting at `hours` (unix seconds).
    pub(crate) async fn usage_read(
        &self,
        id: &str,
        hours: &[u64],
    ) -> Result<Vec<(u64, [u64; 5])>, StoreError> {
        let mut pipe = redis::pipe();
        for h in hours {
            pipe.cmd("HGETALL").arg(self.inner.keys.usage(id, *h));
        }
        let maps: Vec<std::collections::HashMap<String, u64>> = self
            .run(|mut c| async move { pipe.query_async(&mut c).await })
            .await?;
        let mut out: std::collections::BTreeMap<u64, [u64; 5]> = std::collections::BTreeMap::new();
        for (field, n) in maps.into_iter().flatten() {
            let Some((minute, class)) = field.split_once(':') else {
                continue;
            };
            if let (Ok(m), Ok(c @ 1..=5)) = (minute.parse::<u64>(), class.parse::<usize>()) {
                out.entry(m).or_default()[c - 1] += n;
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Runs a write script (on the current master: see [`SentinelConn::ensure_master`]).
    async fn script(
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
                let _ = inner.changes.send(Invalidation::All);
                let changes = inner.changes.clone();
                let master = inner.source.master_addr().await;
                let weak_inner = Arc::downgrade(&inner);
                drop(inner);
                follow(ps, changes, timeout, weak_inner.clone(), master).await;
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
    changes: broadcast::Sender<Invalidation>,
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
                if let Ok(at_ms) = stamp.parse::<u64>() {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                    crate::telemetry::REVOCATION_LAG
                        .observe(Duration::from_millis(now_ms.saturating_sub(at_ms)));
                }
                let _ = changes.send(inv);
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

fn parse(json: &str) -> Result<KeyRecord, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("redis record: {e}")))
}

/// The stored form: `last_used_at` lives in the `used` hash, not in the record.
fn to_json(rec: &KeyRecord) -> Result<String, StoreError> {
    let mut rec = rec.clone();
    rec.last_used_at = None;
    serde_json::to_string(&rec).map_err(|e| StoreError::Corrupt(e.to_string()))
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
            .arg(to_json(&record)?)
            .arg(&hash)
            .arg(&record.id)
            .arg(keys.channel());
        let outcome = self.script(inv).await?;
        script_outcome(&outcome, &format!("key {}", record.id)).map(|_| ())?;
        let _ = self
            .inner
            .changes
            .send(Invalidation::Key(record.lookup_hash));
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
                .arg(&expected)
                .arg(to_json(&old)?)
                .arg(&new_json)
                .arg(&new_hash)
                .arg(&new.id)
                .arg(keys.channel())
                .arg(&old_hash);
            if script_outcome(&self.script(inv).await?, &format!("key {}", new.id))? {
                let _ = self.inner.changes.send(Invalidation::Key(old.lookup_hash));
                let _ = self.inner.changes.send(Invalidation::Key(new.lookup_hash));
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
            super::check_identity_kept(&before, &rec)?;
            if rec == before {
                return Ok(rec);
            }
            let mut inv = UPDATE.prepare_invoke();
            inv.key(self.inner.keys.rec(&hash))
                .arg(&expected)
                .arg(to_json(&rec)?)
                .arg(self.inner.keys.channel())
                .arg(&hash);
            if script_outcome(&self.script(inv).await?, id)? {
                let _ = self.inner.changes.send(Invalidation::Key(rec.lookup_hash));
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
