//! How far a change has reached the processes that serve a store ("replicas"): every serving
//! process acknowledges each change it applied (Redis: the invalidation sequence it reached;
//! the file store: the file contents it loaded), with a heartbeat, and a writer waits — bounded
//! — until every live replica has acknowledged its change, saying which have not.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A replica is live if it sent a heartbeat this recently.
pub const LIVE: Duration = Duration::from_secs(3);
/// A replica silent for longer is forgotten (it stopped, or was replaced).
pub const FORGET: Duration = Duration::from_secs(60);
/// How often a replica sends its heartbeat (and its acknowledgement, if nothing else sent it).
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// What a write's caller learns about where the change is in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Propagation {
    /// Serving processes the store knows of (live, or silent for less than a minute).
    pub replicas: usize,
    /// Of those, the ones that have applied the change.
    pub acknowledged: usize,
    /// The others, each with why (`replica-b: has not applied it`, `… no heartbeat for 7s`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub late: Vec<String>,
    /// From the start of the wait to the last acknowledgement (or to the end of the wait).
    pub waited_ms: u64,
    /// False where acknowledgements cannot be collected (a read-only store): there, running
    /// proxies apply the change at their next reload.
    pub tracked: bool,
}

impl Propagation {
    pub fn complete(&self) -> bool {
        self.acknowledged == self.replicas
    }

    /// One line for people: `applied by 3 of 3 replicas in 2 ms`, or who is late.
    pub fn describe(&self) -> String {
        if !self.tracked {
            return "running proxies apply it at their next reload of the store (store.reload_interval); acknowledgements cannot be collected for this store".into();
        }
        if self.replicas == 0 {
            return "no running proxy serves this store right now; each applies it when it starts"
                .into();
        }
        let mut s = format!(
            "applied by {} of {} running proxies in {} ms",
            self.acknowledged, self.replicas, self.waited_ms
        );
        if !self.late.is_empty() {
            s.push_str(&format!("; NOT confirmed by: {}", self.late.join(", ")));
        }
        s
    }
}

/// One replica as the store sees it.
pub(crate) struct Seen {
    pub id: String,
    /// Since its last heartbeat.
    pub silent: Duration,
    /// Whether it has applied the change waited for.
    pub applied: bool,
}

/// Counts who has applied the change, from a roll call.
pub(crate) fn tally(rows: &[Seen], waited: Duration) -> Propagation {
    let mut p = Propagation {
        tracked: true,
        waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
        ..Propagation::default()
    };
    for r in rows.iter().filter(|r| r.silent < FORGET) {
        p.replicas += 1;
        if r.silent <= LIVE && r.applied {
            p.acknowledged += 1;
        } else if r.silent > LIVE {
            p.late.push(format!(
                "{}: no heartbeat for {}s",
                r.id,
                r.silent.as_secs()
            ));
        } else {
            p.late.push(format!("{}: has not applied it", r.id));
        }
    }
    p.late.sort();
    p
}

/// A replica id for this process: `<host>-<pid>` (and `-2`, `-3`, … for further servers in one
/// process, as in tests).
pub fn default_replica_id() -> String {
    static SERVERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keygate".into());
    let clean: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    match n {
        0 => format!("{clean}-{}", std::process::id()),
        n => format!("{clean}-{}-{}", std::process::id(), n + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_and_silent_replicas_are_named() {
        let s = |id: &str, secs: u64, applied: bool| Seen {
            id: id.into(),
            silent: Duration::from_secs(secs),
            applied,
        };
        let p = tally(
            &[
                s("a", 0, true),
                s("b", 1, false),
                s("c", 10, true),
                s("gone", 120, false),
            ],
            Duration::from_millis(5),
        );
        assert_eq!((p.replicas, p.acknowledged), (3, 1));
        assert_eq!(p.late, ["b: has not applied it", "c: no heartbeat for 10s"]);
        assert!(!p.complete());
        assert!(p.describe().contains("NOT confirmed by: b"));
    }
}
