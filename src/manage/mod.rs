//! Key management shared by the CLI (`keygate keys …` on the store, [`command`]), the admin
//! API and `keygate dev`: create, list, show, update, rotate, revoke and import ([`import`]),
//! each change recorded in the audit trail with its actor. The full key is shown once, at
//! creation or rotation, and nowhere else. [`remote`] is the CLI's client of a running
//! instance's admin API; [`render`] its human output.

mod args;
pub mod command;
mod import;
pub mod remote;
pub mod render;

use std::sync::Arc;
use std::time::Duration;

use crate::audit::{Action, Audit, Event};
use crate::config::Config;
use crate::key::{KeyFormat, KeyHasher, NewKey, PhcError};
use crate::store::{KeyPatch, KeyRecord, KeyStore, NewRecord, Steer, Store, StoreError};
use crate::time::Timestamp;

pub use import::{ImportOutcome, ImportRow, Scopes, read_import};

/// Why a key-management operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    /// The request itself is wrong (a bad field); it names what to fix.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot hash the key: {0}")]
    Hash(#[from] PhcError),
    /// A blocking task (Argon2id) did not finish: the runtime is shutting down.
    #[error("a key-management task failed: {0}")]
    Task(String),
}

impl From<crate::store::MintError> for ManageError {
    fn from(e: crate::store::MintError) -> Self {
        match e {
            crate::store::MintError::Format(f) => ManageError::Invalid(format!("type: {f}")),
            crate::store::MintError::Hash(h) => ManageError::Hash(h),
            e @ crate::store::MintError::Steer(_) => ManageError::Task(e.to_string()),
        }
    }
}

impl ManageError {
    fn task(e: tokio::task::JoinError) -> ManageError {
        ManageError::Task(e.to_string())
    }
}

/// Key management over a store.
pub struct KeyTool {
    store: Store,
    format: KeyFormat,
    hasher: KeyHasher,
    audit: Option<Arc<Audit>>,
    max_key_length: usize,
    /// How long [`KeyTool::propagate`] waits for the proxies serving the store.
    propagation_timeout: Duration,
    /// What a key created without scopes gets (`keys.default_scopes`).
    default_scopes: Vec<String>,
    /// The attributes keys can be restricted on (`[attributes.<name>]`).
    attributes: Vec<String>,
    /// The environment the configured instance serves.
    environment: crate::key::Environment,
    /// `[rate_limits.tiers]` names a key may be put on (`None`: not checked).
    tiers: Option<Vec<String>>,
}

impl KeyTool {
    pub fn new(store: Store, format: KeyFormat, hasher: KeyHasher) -> Self {
        KeyTool {
            store,
            format,
            hasher,
            audit: None,
            max_key_length: 256,
            propagation_timeout: Duration::from_secs(1),
            default_scopes: Vec::new(),
            attributes: Vec::new(),
            tiers: None,
            environment: crate::key::Environment::Live,
        }
    }

    pub fn from_config(cfg: &Config) -> Result<Self, ManageError> {
        let store = Store::open(&cfg.store)?;
        KeyTool::with_store(store, cfg)
    }

    /// Key management over an already open store (e.g. a running proxy's).
    pub fn with_store(store: Store, cfg: &Config) -> Result<Self, ManageError> {
        let format = KeyFormat::with_shape(&cfg.keys.labels, cfg.keys.shape)
            .map_err(ManageError::Invalid)?;
        let hasher = KeyHasher::with_cost(
            cfg.keys.pepper.as_ref().map(|p| p.expose()),
            cfg.keys.argon2,
        );
        Ok(KeyTool {
            max_key_length: cfg.keys.max_length,
            propagation_timeout: cfg.propagation.timeout,
            default_scopes: cfg.keys.default_scopes.clone(),
            environment: cfg.environment,
            tiers: Some(cfg.policy.rate_limits.tiers.keys().cloned().collect()),
            attributes: cfg
                .policy
                .attributes
                .iter()
                .map(|a| a.name.clone())
                .collect(),
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

    /// The environment the configured instance serves (the default for new keys).
    pub fn environment(&self) -> crate::key::Environment {
        self.environment
    }

    /// Restrictions on attributes the configuration does not define can never be checked.
    fn unknown_attributes<'a>(&self, names: impl Iterator<Item = &'a String>) -> Vec<String> {
        names
            .filter(|n| !self.attributes.contains(n))
            .map(|n| format!("restrictions: no attribute {n:?} is configured ([attributes.{n}])"))
            .collect()
    }

    /// A tier that is not configured: refused rather than silently falling back to the default.
    fn unknown_tier(&self, limit: Option<&crate::store::KeyRateLimit>) -> Option<String> {
        let (Some(crate::store::KeyRateLimit::Tier { tier }), Some(tiers)) = (limit, &self.tiers)
        else {
            return None;
        };
        (!tiers.contains(tier)).then(|| match tiers.len() {
            0 => format!("rate_limit: no tier {tier:?}: no [rate_limits.tiers] are configured"),
            _ => format!(
                "rate_limit: no tier {tier:?} is configured (tiers: {})",
                tiers.join(", ")
            ),
        })
    }

    /// Waits (bounded by `store.propagation_timeout`) until every proxy serving the store has
    /// applied the changes made through this tool, and says which have not. This process's own
    /// cache applied them before the write returned.
    pub async fn propagate(&self) -> crate::store::Propagation {
        self.store.await_propagation(self.propagation_timeout).await
    }

    pub(super) async fn record(
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

    pub async fn create(
        &self,
        mut req: NewRecord,
        actor: &str,
    ) -> Result<(NewKey, KeyRecord), ManageError> {
        if req.scopes.is_empty() {
            req.scopes = self.default_scopes.clone();
        }
        let mut problems = req.problems();
        problems.extend(self.unknown_attributes(req.restrictions.keys()));
        problems.extend(self.unknown_tier(req.rate_limit.as_ref()));
        if !problems.is_empty() {
            return Err(ManageError::Invalid(problems.join("; ")));
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
    ) -> Result<(NewKey, KeyRecord, KeyRecord), ManageError> {
        let now = Timestamp::now();
        let old = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        let steer = self.store.lineage(&old.lookup_hash).await?;
        let (key, mut new) = self
            .mint_steered(NewRecord::successor_of(&old, now), steer)
            .await?;
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

    pub async fn revoke(&self, id: &str, actor: &str) -> Result<KeyRecord, ManageError> {
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
    ) -> Result<KeyRecord, ManageError> {
        let mut problems = patch.problems();
        if let Some(r) = &patch.restrictions {
            problems.extend(self.unknown_attributes(r.keys()));
        }
        problems.extend(self.unknown_tier(patch.rate_limit.as_ref().and_then(Option::as_ref)));
        if !problems.is_empty() {
            return Err(ManageError::Invalid(problems.join("; ")));
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

    pub async fn get(&self, id: &str) -> Result<Arc<KeyRecord>, ManageError> {
        Ok(self
            .store
            .get(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?)
    }

    pub async fn list(&self, owner: Option<&str>) -> Result<Vec<Arc<KeyRecord>>, ManageError> {
        Ok(match owner {
            Some(owner) => self.store.list_owner(owner).await?,
            None => self.store.list().await?,
        })
    }

    /// Argon2id hashing is slow by design: off the runtime threads.
    pub(super) async fn mint(&self, req: NewRecord) -> Result<(NewKey, KeyRecord), ManageError> {
        self.mint_steered(req, None).await
    }

    /// Mints a key whose lookup hash satisfies `steer` (a rotation's successor in a sharded
    /// store: same shard as its predecessor).
    async fn mint_steered(
        &self,
        req: NewRecord,
        steer: Option<Steer>,
    ) -> Result<(NewKey, KeyRecord), ManageError> {
        let (format, hasher) = (self.format.clone(), self.hasher.clone());
        let minted = tokio::task::spawn_blocking(move || {
            req.mint_where(&format, &hasher, Timestamp::now(), |h| {
                steer.is_none_or(|s| s.accepts(h))
            })
        })
        .await
        .map_err(ManageError::task)??;
        Ok(minted)
    }
}
