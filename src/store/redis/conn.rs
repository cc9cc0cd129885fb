//! A connection to whichever Redis topology is configured — standalone (a reconnecting
//! manager), Cluster, or the master behind Sentinels — and where the invalidation subscription
//! connects.

use std::sync::{Arc, RwLock};

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, Cmd, IntoConnectionInfo, Pipeline, RedisFuture, RedisResult, Value,
};
use tokio::sync::OnceCell;

use crate::store::StoreError;

/// A connection to whichever topology is configured. Cheap to clone; reconnects by itself.
#[derive(Clone)]
pub(crate) enum Conn {
    Standalone(ConnectionManager),
    Cluster(Arc<LazyCluster>),
    Sentinel(Arc<SentinelConn>),
}

pub(crate) struct LazyCluster {
    pub(super) client: redis::cluster::ClusterClient,
    pub(super) conn: OnceCell<ClusterConnection>,
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
pub(crate) struct SentinelConn {
    pub(super) client: tokio::sync::Mutex<SentinelClient>,
    /// The master's address (as the sentinel named it) and a connection to it.
    pub(super) current: RwLock<Option<(String, MultiplexedConnection)>>,
    pub(super) config: AsyncConnectionConfig,
}

impl SentinelConn {
    pub(super) async fn master(&self) -> RedisResult<redis::Client> {
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
    pub(crate) async fn ensure_master(&self) -> RedisResult<()> {
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

impl Conn {
    /// `WAIT <n> <ms>` on the master holding `key` (on a Cluster, routed to its slot's master:
    /// the connection that carried the write).
    pub(super) async fn wait_replicas(&self, key: &str, n: u32, ms: u64) -> RedisResult<u64> {
        let mut cmd = redis::cmd("WAIT");
        cmd.arg(n).arg(ms);
        match self {
            Conn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key, SlotAddr::Master);
                let v = c
                    .get()
                    .await?
                    .route_command(
                        cmd,
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                    )
                    .await?;
                Ok(redis::FromRedisValue::from_redis_value(v)?)
            }
            other => cmd.query_async(&mut other.clone()).await,
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
pub(super) enum PubSubSource {
    Client(redis::Client),
    /// Cluster: `PUBLISH` reaches every node, so any reachable seed will do.
    AnyOf(Vec<redis::Client>),
    Sentinel(Arc<SentinelConn>),
}

impl PubSubSource {
    /// Under Sentinel, the current master's address (as the sentinels report it).
    pub(super) async fn master_addr(&self) -> Option<String> {
        match self {
            PubSubSource::Sentinel(s) => {
                let client = s.master().await.ok()?;
                Some(format!("{:?}", client.get_connection_info().addr()))
            }
            PubSubSource::Client(_) | PubSubSource::AnyOf(_) => None,
        }
    }

    pub(super) async fn connect(&self) -> RedisResult<redis::aio::PubSub> {
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

pub(super) fn with_password(
    url: &str,
    password: Option<&str>,
) -> Result<redis::ConnectionInfo, StoreError> {
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
