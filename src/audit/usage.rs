//! Usage counters: requests per key by status class and minute, kept for 24 hours — in this
//! process with the file store, in Redis (shared by every replica) with the Redis store — and
//! the report `GET /v1/keys/{id}/usage` answers with.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde::Serialize;

use crate::store::RedisStore;
use crate::time::Timestamp;

/// Per-minute request counts for the usage endpoint.
pub(super) enum UsageBook {
    /// This process's own counts (file store: one process serves the keys).
    Memory(Mutex<HashMap<String, BTreeMap<u64, [u64; 5]>>>),
    /// Shared by all replicas.
    Redis(RedisStore),
}

/// What `GET /v1/keys/{id}/usage` reports for one key.
#[derive(Debug, Serialize)]
pub struct Usage {
    pub key_id: String,
    pub total: BTreeMap<String, u64>,
    /// Minutes with requests, oldest first.
    pub per_minute: Vec<Bucket>,
    /// Hours with requests, oldest first.
    pub per_hour: Vec<Bucket>,
    /// The last minute with a request.
    pub last_request_minute: Option<Timestamp>,
}

#[derive(Debug, Serialize)]
pub struct Bucket {
    pub start: Timestamp,
    #[serde(flatten)]
    pub counts: BTreeMap<String, u64>,
}

impl Usage {
    pub(super) fn from_minutes(key_id: &str, minutes: &[(u64, [u64; 5])]) -> Usage {
        let mut total = [0u64; 5];
        let mut hours: BTreeMap<u64, [u64; 5]> = BTreeMap::new();
        for (m, c) in minutes {
            let h = hours.entry(m / 3600 * 3600).or_default();
            for i in 0..5 {
                total[i] += c[i];
                h[i] += c[i];
            }
        }
        Usage {
            key_id: key_id.to_owned(),
            total: class_counts(&total),
            per_minute: minutes
                .iter()
                .map(|(m, c)| Bucket {
                    start: Timestamp::from_unix(*m),
                    counts: class_counts(c),
                })
                .collect(),
            per_hour: hours
                .into_iter()
                .map(|(h, c)| Bucket {
                    start: Timestamp::from_unix(h),
                    counts: class_counts(&c),
                })
                .collect(),
            last_request_minute: minutes.last().map(|(m, _)| Timestamp::from_unix(*m)),
        }
    }

    pub fn requests(&self) -> u64 {
        self.total.values().sum()
    }
}

pub(super) fn minute_of(t: Timestamp) -> u64 {
    t.unix() / 60 * 60
}

pub(super) fn status_class(status: u16) -> usize {
    usize::from((status / 100).clamp(1, 5) - 1)
}

pub(super) fn class_counts(c: &[u64; 5]) -> BTreeMap<String, u64> {
    c.iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (format!("{}xx", i + 1), *n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_buckets_by_hour_and_class() {
        let u = Usage::from_minutes(
            "key_1",
            &[
                (3600, [0, 2, 0, 1, 0]),
                (3660, [0, 1, 0, 0, 0]),
                (7200, [0, 0, 0, 0, 4]),
            ],
        );
        assert_eq!(u.requests(), 8);
        assert_eq!(u.per_hour.len(), 2);
        assert_eq!(u.per_hour[0].counts["2xx"], 3);
        assert_eq!(u.per_hour[1].counts["5xx"], 4);
        assert_eq!(u.last_request_minute, Some(Timestamp::from_unix(7200)));
        assert_eq!(status_class(204), 1);
        assert_eq!(status_class(999), 4);
        assert_eq!(status_class(0), 0);
    }
}
