//! `[audit]`: where the audit trail is kept and how often aggregates are written.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::check::{Check, DurationValue, Size};
use super::store::StoreConfig;

#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The JSON-lines file used with the file store (default: next to the store file).
    pub file: Option<PathBuf>,
    /// The file is rotated (`.1`, `.2`, …) when it would grow past this.
    pub max_file_size: u64,
    pub keep_files: usize,
    /// Approximate length the Redis stream is capped at (`XADD MAXLEN ~`).
    pub stream_max_len: u64,
    /// How often per-minute usage and failure aggregates are written.
    pub flush_interval: Duration,
    /// Events waiting for the sink; when full, new events are dropped and counted.
    pub queue: usize,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawAudit {
    file: Option<String>,
    max_file_size: Option<Size>,
    keep_files: Option<usize>,
    stream_max_len: Option<u64>,
    flush_interval: Option<DurationValue>,
    queue: Option<usize>,
}

pub(super) fn validate(c: &mut Check<'_>, raw: RawAudit, store: &StoreConfig) -> AuditConfig {
    AuditConfig {
        file: raw.file.map(|f| c.file(f)).or_else(|| match store {
            StoreConfig::File { path, .. } => {
                let mut p = path.clone().into_os_string();
                p.push(".audit.jsonl");
                Some(p.into())
            }
            StoreConfig::Redis(_) => None,
        }),
        max_file_size: c.size("audit.max_file_size", raw.max_file_size, 64 << 20),
        keep_files: raw.keep_files.unwrap_or(5),
        stream_max_len: c.positive("audit.stream_max_len", raw.stream_max_len, 1_000_000),
        flush_interval: c.duration(
            "audit.flush_interval",
            raw.flush_interval,
            Duration::from_secs(60),
        ),
        queue: c.positive("audit.queue", raw.queue, 10_000),
    }
}
