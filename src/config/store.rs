//! `[store]`: where key records live — the embedded file, or Redis (standalone, Cluster or
//! Sentinel).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::check::{Check, DurationValue};
use super::secret::{Getenv, Secret, read_secret};

#[derive(Clone, Debug)]
pub enum StoreConfig {
    File {
        path: PathBuf,
        read_only: bool,
        reload_interval: Duration,
    },
    Redis(RedisConfig),
}

/// Where Redis runs and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server (or a managed endpoint): `redis://host:port/db`.
    Standalone { url: String },
    /// Seed nodes of a Redis Cluster.
    Cluster { nodes: Vec<String> },
    /// Sentinels that know the current master named `master`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

#[derive(Clone, Debug)]
pub struct RedisConfig {
    pub topology: RedisTopology,
    pub password: Option<Secret>,
    /// Every key keygate writes starts with `{<prefix>}:`; the braces are a Cluster hash tag.
    pub key_prefix: String,
    /// Connect and command timeout: slower counts as unreachable.
    pub timeout: Duration,
    /// Hash-tag shards of a new (or migrated) key store; an existing store keeps the count it
    /// was created with (see `store::redis::layout`).
    pub shards: u16,
    /// Replicas of the written master that must hold a key change (Redis `WAIT`) before the
    /// write is acknowledged; 0 does not wait.
    pub write_replicas: u32,
}

/// Shards of a new store by default: spreads over up to ~80 masters with a few shards each.
pub const DEFAULT_SHARDS: u16 = 256;

/// How a writer waits for the proxies serving the store to apply its change.
#[derive(Clone, Debug)]
pub struct PropagationConfig {
    /// How long a key-management write waits for every live replica's acknowledgement.
    pub timeout: Duration,
    /// This process's name among the replicas (default `<hostname>-<pid>`).
    pub replica_id: Option<String>,
}

impl From<RedisConfig> for StoreConfig {
    fn from(r: RedisConfig) -> Self {
        StoreConfig::Redis(r)
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawStore {
    backend: Option<String>,
    path: Option<String>,
    read_only: Option<bool>,
    reload_interval: Option<DurationValue>,
    url: Option<String>,
    cluster_nodes: Option<Vec<String>>,
    sentinels: Option<Vec<String>>,
    sentinel_master: Option<String>,
    key_prefix: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
    timeout: Option<DurationValue>,
    shards: Option<u16>,
    write_replicas: Option<u32>,
    propagation_timeout: Option<DurationValue>,
    replica_id: Option<String>,
}

pub(super) fn validate_propagation(c: &mut Check<'_>, raw: &mut RawStore) -> PropagationConfig {
    let timeout = c.duration(
        "store.propagation_timeout",
        raw.propagation_timeout.take(),
        Duration::from_secs(1),
    );
    let replica_id = raw.replica_id.take();
    if let Some(id) = &replica_id
        && (id.is_empty()
            || id.len() > 128
            || id.starts_with('.')
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')))
    {
        c.problem(format!(
            "store.replica_id: {id:?} must be 1-128 of A-Z a-z 0-9 _ - . (not starting with '.')"
        ));
    }
    PropagationConfig {
        timeout,
        replica_id,
    }
}

pub(super) fn validate(c: &mut Check<'_>, raw: RawStore, getenv: Getenv<'_>) -> StoreConfig {
    let backend = raw.backend.as_deref().unwrap_or("file");
    let file_only = [
        ("path", raw.path.is_some()),
        ("read_only", raw.read_only.is_some()),
        ("reload_interval", raw.reload_interval.is_some()),
    ];
    let redis_only = [
        ("url", raw.url.is_some()),
        ("cluster_nodes", raw.cluster_nodes.is_some()),
        ("sentinels", raw.sentinels.is_some()),
        ("sentinel_master", raw.sentinel_master.is_some()),
        ("key_prefix", raw.key_prefix.is_some()),
        ("password_env", raw.password_env.is_some()),
        ("password_file", raw.password_file.is_some()),
        ("timeout", raw.timeout.is_some()),
        ("shards", raw.shards.is_some()),
        ("write_replicas", raw.write_replicas.is_some()),
    ];
    let misplaced = |c: &mut Check<'_>, fields: &[(&str, bool)], other: &str| {
        for (name, set) in fields {
            if *set {
                c.problem(format!(
                    "store.{name}: only applies to backend = \"{other}\""
                ));
            }
        }
    };
    match backend {
        "file" => {
            misplaced(c, &redis_only, "redis");
            StoreConfig::File {
                path: c.file(raw.path.unwrap_or_else(|| "keys.json".into())),
                read_only: raw.read_only.unwrap_or(false),
                reload_interval: c.duration(
                    "store.reload_interval",
                    raw.reload_interval,
                    Duration::from_millis(250),
                ),
            }
        }
        "redis" => {
            misplaced(c, &file_only, "file");
            validate_redis(c, raw, getenv).into()
        }
        other => {
            c.problem(format!(
                "store.backend: {other:?} is not \"file\" or \"redis\""
            ));
            StoreConfig::File {
                path: "keys.json".into(),
                read_only: true,
                reload_interval: Duration::from_secs(1),
            }
        }
    }
}

fn validate_redis(c: &mut Check<'_>, raw: RawStore, getenv: Getenv<'_>) -> RedisConfig {
    let check_url = |c: &mut Check<'_>, field: &str, u: &str| {
        if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
            c.problem(format!(
                "store.{field}: {u:?} must start with redis:// or rediss://"
            ));
        }
    };
    let topology = match (raw.url, raw.cluster_nodes, raw.sentinels) {
        (Some(url), None, None) => {
            check_url(c, "url", &url);
            RedisTopology::Standalone { url }
        }
        (None, Some(nodes), None) if !nodes.is_empty() => {
            for n in &nodes {
                check_url(c, "cluster_nodes", n);
            }
            RedisTopology::Cluster { nodes }
        }
        (None, None, Some(sentinels)) if !sentinels.is_empty() => {
            for n in &sentinels {
                check_url(c, "sentinels", n);
            }
            let master = raw.sentinel_master.unwrap_or_else(|| {
                c.problem("store.sentinel_master: required with sentinels".into());
                String::new()
            });
            RedisTopology::Sentinel { sentinels, master }
        }
        _ => {
            c.problem(
                "store: backend = \"redis\" needs exactly one of url, cluster_nodes or sentinels"
                    .into(),
            );
            RedisTopology::Standalone { url: String::new() }
        }
    };
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "keygate".into());
    if key_prefix.is_empty()
        || !key_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        c.problem(format!(
            "store.key_prefix: {key_prefix:?} must be letters, digits, '_', '-', '.', ':'"
        ));
    }
    let password = read_secret(
        c,
        "store.password",
        raw.password_env,
        "KEYGATE_REDIS_PASSWORD",
        raw.password_file,
        getenv,
    )
    .map(Secret::new);
    let shards = raw.shards.unwrap_or(DEFAULT_SHARDS);
    if !(1..=4096).contains(&shards) {
        c.problem(format!("store.shards: {shards} must be 1-4096"));
    }
    let write_replicas = raw.write_replicas.unwrap_or(0);
    if write_replicas > 16 {
        c.problem(format!(
            "store.write_replicas: {write_replicas} must be 0-16"
        ));
    }
    RedisConfig {
        topology,
        password,
        key_prefix,
        timeout: c.duration("store.timeout", raw.timeout, Duration::from_millis(500)),
        shards,
        write_replicas,
    }
}
