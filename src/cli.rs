//! Key management shared by the CLI (`keygate keys …` on the store), the admin API and
//! `keygate dev`: create, list, show, update, rotate, revoke and import, each change recorded
//! in the audit trail with its actor. The full key is printed once, at creation or rotation,
//! and nowhere else.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::audit::{Action, Audit, Event};
use crate::config::Config;
use crate::key::{Environment, KeyFormat, KeyHasher, KeyType, NewKey, new_key_id};
use crate::store::{KeyPatch, KeyRecord, KeyStore, NewRecord, Store, StoreError};
use crate::time::Timestamp;

/// Key management over a store.
pub struct KeyTool {
    store: Store,
    format: KeyFormat,
    hasher: KeyHasher,
    audit: Option<Arc<Audit>>,
    max_key_length: usize,
}

impl KeyTool {
    pub fn new(store: Store, format: KeyFormat, hasher: KeyHasher) -> Self {
        KeyTool {
            store,
            format,
            hasher,
            audit: None,
            max_key_length: 256,
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
        Ok(KeyTool {
            max_key_length: cfg.keys.max_length,
            ..KeyTool::new(store, format, hasher)
        })
    }

    /// Records every change in `audit`.
    pub fn with_audit(mut self, audit: Arc<Audit>) -> Self {
        self.audit = Some(audit);
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn record(
        &self,
        action: Action,
        actor: &str,
        rec: &KeyRecord,
        changes: serde_json::Value,
    ) {
        if let Some(audit) = &self.audit {
            let mut e = Event::new(action);
            e.actor = Some(actor.to_owned());
            e.key_id = Some(rec.id.clone());
            e.owner = Some(rec.owner.clone());
            e.environment = Some(rec.environment.as_str().to_owned());
            if !changes.is_null() {
                e.changes = Some(changes);
            }
            audit.record_change(e).await;
        }
    }

    pub async fn create(&self, req: NewRecord, actor: &str) -> anyhow::Result<(NewKey, KeyRecord)> {
        let problems = req.problems();
        if !problems.is_empty() {
            bail!(InvalidRequest(problems.join("; ")));
        }
        let (key, record) = self.mint(req).await?;
        self.store.insert(record.clone()).await?;
        let attrs = serde_json::json!({
            "type": record.key_type, "name": record.name, "scopes": record.scopes,
            "expires_at": record.expires_at,
        });
        self.record(Action::KeyCreated, actor, &record, attrs).await;
        Ok((key, record))
    }

    /// Issues a successor with the same attributes and retires `id`: at once, or after `grace`.
    pub async fn rotate(
        &self,
        id: &str,
        grace: Option<Duration>,
        actor: &str,
    ) -> anyhow::Result<(NewKey, KeyRecord, KeyRecord)> {
        let now = Timestamp::now();
        let old = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let (key, mut new) = self.mint(NewRecord::successor_of(&old, now)).await?;
        new.rotated_from = Some(old.id.clone());
        let old_expires = grace
            .filter(|g| !g.is_zero())
            .map(|g| now.saturating_add(g));
        let old = self.store.rotate(id, new.clone(), old_expires).await?;
        let details = serde_json::json!({
            "new_key_id": new.id,
            "old_key_works_until": old.revoked_at.is_none().then_some(old.expires_at).flatten(),
        });
        self.record(Action::KeyRotated, actor, &old, details).await;
        let origin = serde_json::json!({ "rotated_from": old.id });
        self.record(Action::KeyCreated, actor, &new, origin).await;
        Ok((key, new, old))
    }

    pub async fn revoke(&self, id: &str, actor: &str) -> anyhow::Result<KeyRecord> {
        let before = self.store.get(id).await?;
        let rec = self.store.revoke(id, Timestamp::now()).await?;
        if before.is_some_and(|b| b.revoked_at.is_none()) {
            self.record(Action::KeyRevoked, actor, &rec, serde_json::Value::Null)
                .await;
        }
        Ok(rec)
    }

    /// Applies `patch`; records what changed (nothing recorded when nothing changed).
    pub async fn update(
        &self,
        id: &str,
        patch: KeyPatch,
        actor: &str,
    ) -> anyhow::Result<KeyRecord> {
        let problems = patch.problems();
        if !problems.is_empty() {
            bail!(InvalidRequest(problems.join("; ")));
        }
        // The diff of the write that won (the closure reruns on compare-and-set retries).
        let diff = Arc::new(std::sync::Mutex::new(serde_json::Map::new()));
        let seen = Arc::clone(&diff);
        let rec = self
            .store
            .update(id, move |rec| {
                // A rotated key's grace period may be shortened, never extended or removed.
                if rec.rotated_to.is_some()
                    && let Some(to) = &patch.expires_at
                    && to.is_none_or(|t| rec.expires_at.is_none_or(|cur| t > cur))
                {
                    return Err(StoreError::Conflict(format!(
                        "key {} was rotated: its expiry can only be brought forward",
                        rec.id
                    )));
                }
                *seen.lock().unwrap_or_else(|e| e.into_inner()) = patch.apply(rec);
                Ok(())
            })
            .await?;
        let changes = std::mem::take(&mut *diff.lock().unwrap_or_else(|e| e.into_inner()));
        if !changes.is_empty() {
            self.record(Action::KeyUpdated, actor, &rec, changes.into())
                .await;
        }
        Ok(rec)
    }

    pub async fn get(&self, id: &str) -> anyhow::Result<Arc<KeyRecord>> {
        Ok(self
            .store
            .get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?)
    }

    pub async fn list(&self, owner: Option<&str>) -> anyhow::Result<Vec<Arc<KeyRecord>>> {
        let mut all = self.store.list().await?;
        if let Some(owner) = owner {
            all.retain(|r| r.owner == owner);
        }
        Ok(all)
    }

    /// Stores existing plaintext keys (hashed; the plaintext is dropped) so a legacy API's
    /// customers keep their keys. Keys already in the store are skipped. Returns what happened
    /// to each row, in order.
    pub async fn import(&self, rows: Vec<ImportRow>, actor: &str) -> Vec<ImportOutcome> {
        let mut out = Vec::with_capacity(rows.len());
        for (i, row) in rows.into_iter().enumerate() {
            let line = i + 1;
            match self.import_one(row, actor).await {
                Ok(Some(rec)) => out.push(ImportOutcome::Imported { line, id: rec.id }),
                Ok(None) => out.push(ImportOutcome::AlreadyPresent { line }),
                Err(e) => out.push(ImportOutcome::Failed {
                    line,
                    error: format!("{e:#}"),
                }),
            }
        }
        out
    }

    async fn import_one(&self, row: ImportRow, actor: &str) -> anyhow::Result<Option<KeyRecord>> {
        let key = row.key.trim().to_owned();
        if key.len() < 16
            || key.len() > self.max_key_length
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            bail!(
                "key: 16–{} printable ASCII characters without spaces (keys.max_length)",
                self.max_key_length
            );
        }
        let parsed = self.format.parse(&key).ok();
        let environment = match (row.env.as_deref(), &parsed) {
            (Some("live"), _) => Environment::Live,
            (Some("test"), _) => Environment::Test,
            (Some(other), _) => bail!("env: {other:?} is not live or test"),
            (None, Some(p)) => p.environment,
            (None, None) => Environment::Live,
        };
        let key_type = match (row.key_type.as_deref(), &parsed) {
            (Some("secret"), _) => KeyType::Secret,
            (Some("publishable"), _) => KeyType::Publishable,
            (Some(other), _) => bail!("type: {other:?} is not secret or publishable"),
            (None, Some(p)) => p.key_type,
            (None, None) => KeyType::Secret,
        };
        let display_prefix = match &parsed {
            Some(p) => p.display_prefix().to_owned(),
            // A legacy key shows at most an eighth of itself, and never more than 4 characters.
            None => key[..(key.len() / 8).min(4)].to_owned(),
        };
        let req = NewRecord {
            name: row.name,
            scopes: row.scopes.into_vec(),
            ..NewRecord::new(row.owner, environment, key_type)
        };
        let problems = req.problems();
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        let lookup_hash = self.hasher.lookup_hash(&key);
        if self.store.find_by_hash(lookup_hash).await?.is_some() {
            return Ok(None);
        }
        let hasher = self.hasher.clone();
        let phc = tokio::task::spawn_blocking(move || hasher.phc(&key)).await??;
        let (_, mut rec) = self.mint(req).await?;
        rec.id = new_key_id();
        rec.lookup_hash = lookup_hash;
        rec.phc = phc;
        rec.display_prefix = display_prefix;
        self.store.insert(rec.clone()).await?;
        self.record(
            Action::KeyImported,
            actor,
            &rec,
            serde_json::json!({ "scopes": rec.scopes }),
        )
        .await;
        Ok(Some(rec))
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

/// A request the caller must fix (answered 400 by the admin API).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

/// One existing key to import (a CSV row or a JSON line).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportRow {
    pub key: String,
    pub owner: String,
    #[serde(default)]
    pub scopes: Scopes,
    #[serde(default)]
    pub env: Option<String>,
    #[serde(default, rename = "type")]
    pub key_type: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// Scopes as a JSON array, or (CSV) one string separated by spaces, commas or semicolons.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
pub enum Scopes {
    #[default]
    None,
    List(Vec<String>),
    Text(String),
}

impl Scopes {
    fn into_vec(self) -> Vec<String> {
        match self {
            Scopes::None => Vec::new(),
            Scopes::List(v) => v,
            Scopes::Text(s) => s
                .split([' ', ',', ';'])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum ImportOutcome {
    Imported { line: usize, id: String },
    AlreadyPresent { line: usize },
    Failed { line: usize, error: String },
}

/// Reads import rows: JSON lines, or CSV with a header row (`key,owner,scopes,env,type,name`).
/// Errors name the line but never echo a key.
pub fn read_import(text: &str, csv: bool) -> Result<Vec<ImportRow>, String> {
    if csv {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(text.as_bytes());
        reader
            .deserialize::<ImportRow>()
            .enumerate()
            .map(|(i, r)| r.map_err(|e| format!("row {}: {}", i + 2, redact_csv(&e))))
            .collect()
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str::<ImportRow>(l).map_err(|e| {
                    format!("line {}: not an import row (column {})", i + 1, e.column())
                })
            })
            .collect()
    }
}

fn redact_csv(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::Deserialize { err, .. } => match err.field() {
            Some(f) => format!("field {}: {}", f + 1, err.kind()),
            None => err.kind().to_string(),
        },
        _ => "malformed CSV".into(),
    }
}

/// Human output for a freshly issued key; `view` is the record as the admin API shows it.
pub fn render_new_key(key: &str, view: &serde_json::Value, verb: &str) -> String {
    let field = |name: &str| view[name].as_str().unwrap_or("-").to_owned();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{verb} {} ({}) for {}: {} {} key",
        field("id"),
        field("display_prefix"),
        field("owner"),
        field("environment"),
        field("type"),
    );
    if let Some(scopes) = view["scopes"].as_array().filter(|s| !s.is_empty()) {
        let scopes: Vec<&str> = scopes.iter().filter_map(|s| s.as_str()).collect();
        let _ = writeln!(out, "scopes:  {}", scopes.join(", "));
    }
    if let Some(t) = view["expires_at"].as_str() {
        let _ = writeln!(out, "expires: {t}");
    }
    let _ = writeln!(
        out,
        "\nThis is the only time the key is shown. Store it now:\n\n    {key}\n"
    );
    out
}

/// A fixed-width table of key metadata, from records as the admin API shows them.
pub fn render_table(views: &[serde_json::Value]) -> String {
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
    let rows: Vec<[String; 9]> = views
        .iter()
        .map(|v| {
            let f = |name: &str, none: &str| v[name].as_str().unwrap_or(none).to_owned();
            let scopes: Vec<&str> = v["scopes"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
                .unwrap_or_default();
            [
                f("id", "-"),
                f("display_prefix", "-"),
                f("owner", "-"),
                f("environment", "-"),
                f("type", "-"),
                f("state", "-"),
                if scopes.is_empty() {
                    "-".into()
                } else {
                    scopes.join(",")
                },
                f("created_at", "-"),
                f("last_used_at", "never"),
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
