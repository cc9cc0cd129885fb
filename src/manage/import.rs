//! Importing a legacy API's keys: each plaintext key is hashed on the way in (lookup hash and
//! Argon2id) and dropped, so its owner keeps using it. JSON lines or CSV.

use serde::Deserialize;

use super::{KeyTool, ManageError};
use crate::audit::Action;
use crate::key::{Environment, KeyType, new_key_id};
use crate::store::{KeyRecord, KeyStore, NewRecord};

impl KeyTool {
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
                    error: e.to_string(),
                }),
            }
        }
        out
    }

    async fn import_one(
        &self,
        row: ImportRow,
        actor: &str,
    ) -> Result<Option<KeyRecord>, ManageError> {
        let key = row.key.trim().to_owned();
        if key.len() < 16
            || key.len() > self.max_key_length
            || !key.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(ManageError::Invalid(format!(
                "key: 16–{} printable ASCII characters without spaces (keys.max_length)",
                self.max_key_length
            )));
        }
        let parsed = self.format.parse(&key).ok();
        let environment = match (row.env.as_deref(), &parsed) {
            (Some("live"), _) => Environment::Live,
            (Some("test"), _) => Environment::Test,
            (Some(other), _) => {
                return Err(ManageError::Invalid(format!(
                    "env: {other:?} is not live or test"
                )));
            }
            (None, Some(p)) => p.environment,
            (None, None) => Environment::Live,
        };
        let key_type = match (row.key_type.as_deref(), &parsed) {
            (Some("secret"), _) => KeyType::Secret,
            (Some("publishable"), _) => KeyType::Publishable,
            (Some(other), _) => {
                return Err(ManageError::Invalid(format!(
                    "type: {other:?} is not secret or publishable"
                )));
            }
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
            return Err(ManageError::Invalid(problems.join("; ")));
        }
        // What the record is found by: the key, or (embedded id) its prefix and id.
        let (material, record_id) = match &parsed {
            Some(p) => (p.lookup_material().to_owned(), self.format.record_id_of(p)),
            None => (key.clone(), None),
        };
        let lookup_hash = self.hasher.lookup_hash(&material);
        if self.store.find_by_hash(lookup_hash).await?.is_some() {
            return Ok(None);
        }
        let hasher = self.hasher.clone();
        let phc = tokio::task::spawn_blocking(move || hasher.phc(&key))
            .await
            .map_err(ManageError::task)??;
        let (_, mut rec) = self.mint(req).await?;
        rec.id = record_id.unwrap_or_else(new_key_id);
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
}

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
