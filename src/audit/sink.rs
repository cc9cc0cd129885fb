//! Where sealed audit events are stored: the Redis stream with the Redis store, a rotated
//! JSON-lines file with the file store, or only the log line.

use super::Event;
use super::file::FileSink;
use crate::config::{AuditConfig, StoreConfig};
use crate::store::{RedisStore, Store, StoreError};
use crate::time::Timestamp;

/// Where sealed events are stored.
#[derive(Clone, Debug)]
pub enum Sink {
    File(FileSink),
    Redis {
        store: RedisStore,
        max_len: u64,
    },
    /// Only the log line (a read-only file store without an audit file).
    LogOnly,
}

impl Sink {
    pub fn for_config(cfg: &AuditConfig, store: &Store) -> Sink {
        match (store, &cfg.file) {
            (Store::Redis(r), _) => Sink::Redis {
                store: r.clone(),
                max_len: cfg.stream_max_len,
            },
            (Store::File(_), _) => Sink::file_or_log(cfg),
        }
    }

    /// The file store's sink: the audit file, or only the log line when there is none.
    fn file_or_log(cfg: &AuditConfig) -> Sink {
        match &cfg.file {
            Some(path) => Sink::File(FileSink::new(
                path.clone(),
                cfg.max_file_size,
                cfg.keep_files,
            )),
            None => Sink::LogOnly,
        }
    }

    /// Like [`Sink::for_config`] without an open store (`keygate audit verify`).
    pub fn for_store_config(cfg: &AuditConfig, store: &StoreConfig) -> Result<Sink, StoreError> {
        match store {
            StoreConfig::Redis(r) => Ok(Sink::Redis {
                store: RedisStore::open(r)?,
                max_len: cfg.stream_max_len,
            }),
            StoreConfig::File { .. } => Ok(Sink::file_or_log(cfg)),
        }
    }

    pub(super) async fn append(&self, lines: Vec<String>) -> Result<(), String> {
        match self {
            Sink::File(f) => {
                let f = f.clone();
                tokio::task::spawn_blocking(move || f.append(&lines))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("{}: {e}", self.describe()))
            }
            Sink::Redis { store, max_len } => super::redis::append(store, &lines, *max_len)
                .await
                .map_err(|e| e.to_string()),
            Sink::LogOnly => Ok(()),
        }
    }

    /// The hash of the newest stored event, for a new chain to link to.
    pub(super) async fn last_hash(&self) -> Result<Option<String>, String> {
        let line = match self {
            Sink::File(f) => {
                let f = f.clone();
                tokio::task::spawn_blocking(move || f.last_line())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
            }
            Sink::Redis { store, .. } => {
                super::redis::last(store).await.map_err(|e| e.to_string())?
            }
            Sink::LogOnly => None,
        };
        Ok(line.and_then(|l| serde_json::from_str::<Event>(&l).ok().map(|e| e.hash)))
    }

    /// Stored events as raw JSON lines, oldest first, optionally limited to a time range.
    pub async fn read_lines(
        &self,
        since: Option<Timestamp>,
        until: Option<Timestamp>,
    ) -> Result<Vec<String>, String> {
        match self {
            Sink::File(f) => {
                let f = f.clone();
                tokio::task::spawn_blocking(move || f.read_all())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
            Sink::Redis { store, .. } => {
                let from = since.map_or(0, |t| t.unix() * 1000);
                let to = until.map_or(u64::MAX, |t| t.unix().saturating_mul(1000) + 999);
                super::redis::read(store, from, to)
                    .await
                    .map_err(|e| e.to_string())
            }
            Sink::LogOnly => Err("no audit sink is configured (audit.file)".into()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Sink::File(f) => f.path().display().to_string(),
            Sink::Redis { store, .. } => format!(
                "redis audit streams {{{p}}}:audit and {{{p}#0..{}}}:audit",
                crate::store::AUDIT_STREAMS - 1,
                p = store.key_prefix()
            ),
            Sink::LogOnly => "log only".into(),
        }
    }
}
