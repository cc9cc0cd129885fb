//! This process as a replica of the file store: beside the store file, `<file>.acks/<replica>`
//! holds the hash of the file contents the replica has loaded, rewritten at every load and every
//! second (its mtime is the heartbeat). A writer — the CLI, or an admin API on one of several
//! proxies sharing the file — waits until every live replica holds the hash of the file as it is
//! now, which includes the writer's change.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::FileStore;
use super::disk::{ContentHash, FileStamp, content_hash};
use crate::store::propagation::{FORGET, HEARTBEAT, Propagation, Seen, tally};

/// A serving process's identity and the nudge that writes its acknowledgement now.
pub(super) struct Replica {
    id: String,
    pub(super) nudge: Notify,
}

/// How often a waiting writer looks again (a replica notices another writer's change within its
/// `store.reload_interval`).
const POLL: Duration = Duration::from_millis(10);

fn hex(h: &ContentHash) -> String {
    h.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl FileStore {
    fn acks_dir(&self) -> PathBuf {
        let mut p = self.path().to_path_buf().into_os_string();
        p.push(".acks");
        p.into()
    }

    /// Registers this process as a replica named `id` and keeps its acknowledgement current.
    /// A read-only store (a mounted Secret) cannot hold acknowledgements: nothing is spawned.
    pub fn spawn_replica(&self, id: String) -> Option<tokio::task::JoinHandle<()>> {
        if self.is_read_only() {
            return None;
        }
        let replica = Arc::new(Replica {
            id,
            nudge: Notify::new(),
        });
        if self.set_replica(Arc::clone(&replica)).is_err() {
            return None;
        }
        let store = self.clone();
        Some(tokio::spawn(async move {
            let mut warned = false;
            loop {
                let hash = store.loaded_hash();
                let (dir, id) = (store.acks_dir(), replica.id.clone());
                let written =
                    tokio::task::spawn_blocking(move || write_ack(&dir, &id, hash.as_ref())).await;
                match written {
                    Ok(Err(e)) if !warned => {
                        warned = true;
                        tracing::warn!(error = %e, "cannot write this replica's acknowledgement beside the store file; writers will not see it");
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = replica.nudge.notified() => {}
                    _ = tokio::time::sleep(HEARTBEAT) => {}
                }
            }
        }))
    }

    /// Waits until every live replica has loaded the file as it is now, or `timeout`.
    pub async fn await_propagation(&self, timeout: Duration) -> Propagation {
        if self.is_read_only() {
            return Propagation::default();
        }
        let started = Instant::now();
        let mut current: Option<(FileStamp, ContentHash)> = None;
        loop {
            let (path, dir, known) = (self.path().to_path_buf(), self.acks_dir(), current);
            let polled = tokio::task::spawn_blocking(move || roll_call(&path, &dir, known)).await;
            let report = match polled {
                Ok(Ok((stamp_hash, mut seen))) => {
                    current = Some(stamp_hash);
                    // This process's own state is known here, not only from its file (which
                    // its replica task rewrites a moment after the change).
                    if let Some(me) = self.inner.replica.get()
                        && let Some(mine) = seen.iter_mut().find(|s| s.id == me.id)
                        && self.loaded_hash() == Some(stamp_hash.1)
                    {
                        mine.applied = true;
                    }
                    tally(&seen, started.elapsed())
                }
                _ => Propagation {
                    tracked: true,
                    late: vec!["the store file cannot be read".into()],
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(0),
                    ..Propagation::default()
                },
            };
            if report.complete() || started.elapsed() >= timeout {
                return report;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Writes `<dir>/<id>` (atomically) with `hash`, and forgets replicas silent for a minute.
fn write_ack(dir: &Path, id: &str, hash: Option<&ContentHash>) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(hash) = hash else { return Ok(()) };
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)?;
    }
    let tmp = dir.join(format!(".{id}.tmp"));
    fs::write(&tmp, format!("{}\n", hex(hash)))?;
    fs::rename(&tmp, dir.join(id))?;
    for entry in fs::read_dir(dir)?.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > FORGET);
        if old {
            let _ = fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The current file's hash (re-read only when the file changed) and every replica's state.
fn roll_call(
    path: &Path,
    dir: &Path,
    known: Option<(FileStamp, ContentHash)>,
) -> std::io::Result<((FileStamp, ContentHash), Vec<Seen>)> {
    let stamp = FileStamp::of(path)?;
    let hash = match known {
        Some((s, h)) if s == stamp => h,
        _ => content_hash(&fs::read(path)?),
    };
    let want = hex(&hash);
    let mut seen = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let silent = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
                .unwrap_or(FORGET);
            let applied = fs::read_to_string(entry.path()).is_ok_and(|c| c.trim() == want);
            seen.push(Seen {
                id: name,
                silent,
                applied,
            });
        }
    }
    Ok(((stamp, hash), seen))
}
