//! The `keys …` commands: create, list, show, rotate, revoke, against the configured store.
//! The full key is printed once, at creation or rotation, and nowhere else.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::Config;
use crate::key::{KeyFormat, KeyHasher, NewKey};
use crate::store::{KeyRecord, KeyStore, NewRecord, Store};
use crate::time::Timestamp;

/// Key management over a store, shared by the CLI and `keygate dev`.
pub struct KeyTool {
    store: Store,
    format: KeyFormat,
    hasher: KeyHasher,
}

impl KeyTool {
    pub fn new(store: Store, format: KeyFormat, hasher: KeyHasher) -> Self {
        KeyTool {
            store,
            format,
            hasher,
        }
    }

    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        let store = Store::open(&cfg.store).context("opening the key store")?;
        KeyTool::with_store(store, cfg)
    }

    /// Key management over an already open store (e.g. a running proxy's).
    pub fn with_store(store: Store, cfg: &Config) -> anyhow::Result<Self> {
        let format = KeyFormat::new(&cfg.keys.labels).map_err(anyhow::Error::msg)?;
        let hasher = KeyHasher::new(cfg.keys.pepper.as_ref().map(|p| p.expose()));
        Ok(KeyTool::new(store, format, hasher))
    }

    pub async fn create(&self, req: NewRecord) -> anyhow::Result<(NewKey, KeyRecord)> {
        let problems = req.problems();
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        let (key, record) = self.mint(req).await?;
        self.store.insert(record.clone()).await?;
        Ok((key, record))
    }

    /// Issues a successor with the same attributes and retires `id`: at once, or after `grace`.
    pub async fn rotate(
        &self,
        id: &str,
        grace: Option<Duration>,
    ) -> anyhow::Result<(NewKey, KeyRecord, KeyRecord)> {
        let now = Timestamp::now();
        let old = self
            .store
            .get(id)
            .await?
            .with_context(|| format!("no key with id {id}"))?;
        let (key, mut new) = self.mint(NewRecord::successor_of(&old, now)).await?;
        new.rotated_from = Some(old.id.clone());
        let old_expires = grace
            .filter(|g| !g.is_zero())
            .map(|g| now.saturating_add(g));
        let old = self.store.rotate(id, new.clone(), old_expires).await?;
        Ok((key, new, old))
    }

    pub async fn revoke(&self, id: &str) -> anyhow::Result<KeyRecord> {
        Ok(self.store.revoke(id, Timestamp::now()).await?)
    }

    pub async fn get(&self, id: &str) -> anyhow::Result<Arc<KeyRecord>> {
        self.store
            .get(id)
            .await?
            .with_context(|| format!("no key with id {id}"))
    }

    pub async fn list(&self, owner: Option<&str>) -> anyhow::Result<Vec<Arc<KeyRecord>>> {
        let mut all = self.store.list().await?;
        if let Some(owner) = owner {
            all.retain(|r| r.owner == owner);
        }
        Ok(all)
    }

    /// Argon2id hashing is slow by design: off the runtime threads.
    async fn mint(&self, req: NewRecord) -> anyhow::Result<(NewKey, KeyRecord)> {
        let (format, hasher) = (self.format.clone(), self.hasher.clone());
        let minted =
            tokio::task::spawn_blocking(move || req.mint(&format, &hasher, Timestamp::now()))
                .await??;
        Ok(minted)
    }
}

/// Human output for a freshly issued key.
pub fn render_new_key(key: &NewKey, rec: &KeyRecord, verb: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{verb} {} ({}…) for {}: {} {} key",
        rec.id, rec.display_prefix, rec.owner, rec.environment, rec.key_type
    );
    if !rec.scopes.is_empty() {
        let _ = writeln!(out, "scopes:  {}", rec.scopes.join(", "));
    }
    if let Some(t) = rec.expires_at {
        let _ = writeln!(out, "expires: {t}");
    }
    let _ = writeln!(
        out,
        "\nThis is the only time the key is shown. Store it now:\n\n    {}\n",
        key.key
    );
    out
}

pub fn render_json_new_key(key: &NewKey, rec: &KeyRecord) -> String {
    serde_json::json!({ "key": key.key, "record": rec.view(Timestamp::now()) }).to_string()
}

/// A fixed-width table of key metadata.
pub fn render_table(records: &[Arc<KeyRecord>]) -> String {
    let now = Timestamp::now();
    let header = [
        "ID",
        "PREFIX",
        "OWNER",
        "ENV",
        "TYPE",
        "STATE",
        "SCOPES",
        "CREATED",
        "LAST USED",
    ];
    let rows: Vec<[String; 9]> = records
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                format!("{}…", r.display_prefix),
                r.owner.clone(),
                r.environment.to_string(),
                r.key_type.to_string(),
                r.state(now).as_str().to_owned(),
                if r.scopes.is_empty() {
                    "-".into()
                } else {
                    r.scopes.join(",")
                },
                r.created_at.to_string(),
                r.last_used_at
                    .map_or_else(|| "never".into(), |t| t.to_string()),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (cell, w) in cells.zip(widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}
