//! `keygate store migrate`: moves a single-slot store to the sharded layout while the fleet
//! keeps serving.
//!
//! 1. Every live replica must report the layout it serves (releases before sharding do not,
//!    and could not read the new one): otherwise nothing changes.
//! 2. `{p}:layout` becomes `migrating:<n>`, announced on the invalidation channel. From then on
//!    the single-slot scripts refuse to write, so the single-slot copy of every record is
//!    frozen; writers move a record before changing it; readers look in both layouts.
//! 3. Once every live replica reports `migrating:<n>`, each record is moved (sharded copy
//!    first, then the single-slot copy dropped), so at every instant a reader finds it.
//! 4. `{p}:layout` becomes `sharded:<n>`, announced the same way.
//!
//! Run again after an interruption, it resumes where it stopped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;

use super::scripts::SET_LAYOUT;
use super::{Layout, RedisStore};
use crate::store::StoreError;

/// How long the migration waits for every replica to report a layout.
const CONVERGE: Duration = Duration::from_secs(30);
/// Records moved concurrently.
const PARALLEL: usize = 32;

/// What a migration did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migration {
    pub moved: usize,
    pub shards: u16,
    /// Already sharded: nothing was done.
    pub already: bool,
}

impl RedisStore {
    /// Migrates a single-slot store to `shards` shards (see the module docs); `progress` hears
    /// what happens, for people.
    pub async fn migrate(
        &self,
        shards: u16,
        mut progress: impl FnMut(&str),
    ) -> Result<Migration, StoreError> {
        self.forget_layout();
        let n = match self.layout().await? {
            Layout::Sharded(n) => {
                return Ok(Migration {
                    shards: n,
                    already: true,
                    ..Migration::default()
                });
            }
            Layout::Migrating(n) => {
                progress(&format!("resuming a migration to {n} shards"));
                n
            }
            Layout::SingleSlot => {
                let layouts = self.live_layouts().await?;
                let old: Vec<&str> = layouts
                    .iter()
                    .filter(|(_, l)| l.is_empty())
                    .map(|(id, _)| id.as_str())
                    .collect();
                if !old.is_empty() {
                    return Err(StoreError::Conflict(format!(
                        "these replicas run a keygate release that cannot read the sharded layout: {}; upgrade them first",
                        old.join(", ")
                    )));
                }
                self.set_layout(Layout::SingleSlot, Layout::Migrating(shards))
                    .await?;
                progress(&format!(
                    "layout set to {}; waiting for every replica to serve it",
                    Layout::Migrating(shards)
                ));
                shards
            }
        };
        self.converge(Layout::Migrating(n), &mut progress).await?;
        let ids: Vec<String> = self
            .query(
                redis::cmd("ZRANGE")
                    .arg(self.inner.keys.ids())
                    .arg(0)
                    .arg(-1)
                    .clone(),
            )
            .await?;
        progress(&format!("moving {} records", ids.len()));
        let mut moved = 0;
        let mut results = futures_util::stream::iter(ids.iter().map(|id| self.move_record(id, n)))
            .buffer_unordered(PARALLEL);
        while let Some(r) = results.next().await {
            if r? {
                moved += 1;
            }
        }
        drop(results);
        self.set_layout(Layout::Migrating(n), Layout::Sharded(n))
            .await?;
        progress(&format!(
            "moved {moved} records; layout set to {}",
            Layout::Sharded(n)
        ));
        self.converge(Layout::Sharded(n), &mut progress).await?;
        Ok(Migration {
            moved,
            shards: n,
            already: false,
        })
    }

    /// Moves `{p}:layout` from `from` to `to` and announces it; refused when another migration
    /// set something else meanwhile.
    async fn set_layout(&self, from: Layout, to: Layout) -> Result<(), StoreError> {
        let keys = &self.inner.keys;
        let mut inv = SET_LAYOUT.prepare_invoke();
        inv.key(keys.layout())
            .arg(match from {
                Layout::SingleSlot => String::new(),
                other => other.marker(),
            })
            .arg(to.marker())
            .arg(keys.channel());
        let answer = self.script(inv).await?;
        if answer != "ok" {
            return Err(StoreError::Conflict(format!(
                "the layout is {answer:?} now, not {from}: another migration is running; let it finish, then run this again"
            )));
        }
        self.replicated(&keys.layout()).await?;
        self.forget_layout();
        Ok(())
    }

    /// Live replicas and the layout each reports (empty: a release that does not report one).
    async fn live_layouts(&self) -> Result<Vec<(String, String)>, StoreError> {
        let (_, layouts) = self
            .roll_call_rows(0, &BTreeMap::new())
            .await
            .ok_or_else(|| StoreError::Unavailable("redis: cannot read the replica list".into()))?;
        Ok(layouts)
    }

    /// Waits until every live replica reports `layout`.
    async fn converge(
        &self,
        layout: Layout,
        progress: &mut impl FnMut(&str),
    ) -> Result<(), StoreError> {
        let want = layout.marker();
        let started = Instant::now();
        loop {
            let layouts = self.live_layouts().await?;
            let late: Vec<String> = layouts
                .iter()
                .filter(|(_, l)| *l != want)
                .map(|(id, l)| format!("{id} ({})", if l.is_empty() { "old release" } else { l }))
                .collect();
            if late.is_empty() {
                progress(&format!("{} live replicas serve {want}", layouts.len()));
                return Ok(());
            }
            if started.elapsed() > CONVERGE {
                return Err(StoreError::Unavailable(format!(
                    "replicas still not serving {want} after {}s: {}; run the migration again once they are",
                    CONVERGE.as_secs(),
                    late.join(", ")
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `keygate store migrate`: migrates the configured Redis store, printing progress; false on
/// failure (said why on stderr).
pub async fn run_migrate(cfg: &crate::config::StoreConfig, shards: Option<u16>) -> bool {
    let crate::config::StoreConfig::Redis(r) = cfg else {
        eprintln!("error: store migrate applies to backend = \"redis\" only");
        return false;
    };
    let store = match RedisStore::open(r) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return false;
        }
    };
    // Boxed: keeps the binary's `run` future within the compiler's type-depth limit.
    let migration = Box::pin(store.migrate(shards.unwrap_or(r.shards), |m| println!("{m}")));
    match migration.await {
        Ok(m) if m.already => {
            println!("already sharded ({} shards): nothing to do", m.shards);
            true
        }
        Ok(m) => {
            println!(
                "ok: {} records moved; the store is sharded ({} shards)",
                m.moved, m.shards
            );
            true
        }
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}
