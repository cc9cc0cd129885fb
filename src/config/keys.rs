//! `[keys]`: how keys look (labels, brand prefix), how long they may be, the pepper, legacy keys.

use serde::Deserialize;

use super::check::Check;
use super::secret::{Getenv, Secret, read_secret};
use crate::key::{Alphabet, Argon2Cost, KeyFormat, Labels, Shape};

#[derive(Clone, Debug)]
pub struct KeysConfig {
    pub labels: Labels,
    /// What follows the prefix: a checksummed random body, or an embedded id and a secret.
    pub shape: Shape,
    /// Scopes a key created without any gets (e.g. `["full_access"]`); empty: none.
    pub default_scopes: Vec<String>,
    /// Longest credential accepted; longer ones are rejected before any hashing.
    pub max_length: usize,
    pub pepper: Option<Secret>,
    /// Also accept keys not in keygate's format (imported with `keygate keys import`). They
    /// cannot be checked offline, so each distinct one costs a store lookup once.
    pub accept_legacy: bool,
    /// The Argon2id cost of new keys.
    pub argon2: Argon2Cost,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawKeys {
    prefix_template: Option<String>,
    secret_label: Option<String>,
    publishable_label: Option<String>,
    live_label: Option<String>,
    test_label: Option<String>,
    max_length: Option<usize>,
    pepper_env: Option<String>,
    pepper_file: Option<String>,
    accept_legacy: Option<bool>,
    shape: Option<String>,
    body_alphabet: Option<String>,
    body_length: Option<usize>,
    checksum: Option<bool>,
    id_length: Option<usize>,
    secret_length: Option<usize>,
    default_scopes: Option<Vec<String>>,
    argon2_memory_kib: Option<u32>,
    argon2_iterations: Option<u32>,
    argon2_parallelism: Option<u32>,
}

pub(super) fn validate(c: &mut Check<'_>, raw: RawKeys, getenv: Getenv<'_>) -> KeysConfig {
    let d = Labels::default();
    let labels = Labels {
        template: raw.prefix_template.unwrap_or(d.template),
        secret: raw.secret_label.unwrap_or(d.secret),
        publishable: raw.publishable_label.unwrap_or(d.publishable),
        live: raw.live_label.unwrap_or(d.live),
        test: raw.test_label.unwrap_or(d.test),
    };
    for p in labels.problems() {
        c.problem(p);
    }
    let alphabet = match raw.body_alphabet.as_deref() {
        None => None,
        Some(a) => Alphabet::parse(a).or_else(|| {
            c.problem(format!(
                "keys.body_alphabet: {a:?} is not \"base62\", \"hex\", \"base58\" or \"lower_alphanumeric\""
            ));
            None
        }),
    };
    let shape = match raw.shape.as_deref().unwrap_or("checksummed") {
        "checksummed" => {
            for (set, name) in [
                (raw.id_length.is_some(), "id_length"),
                (raw.secret_length.is_some(), "secret_length"),
            ] {
                if set {
                    c.problem(format!(
                        "keys.{name}: only applies to shape = \"embedded_id\""
                    ));
                }
            }
            Shape::Checksummed {
                alphabet: alphabet.unwrap_or(Alphabet::Base62),
                length: raw
                    .body_length
                    .unwrap_or(crate::key::format_defaults::RANDOM_LEN),
                checksum: raw.checksum.unwrap_or(true),
            }
        }
        "embedded_id" => {
            for (set, name) in [
                (raw.body_length.is_some(), "body_length"),
                (raw.checksum.is_some(), "checksum"),
            ] {
                if set {
                    c.problem(format!(
                        "keys.{name}: only applies to shape = \"checksummed\""
                    ));
                }
            }
            Shape::EmbeddedId {
                id_length: raw.id_length.unwrap_or(16),
                alphabet: alphabet.unwrap_or(Alphabet::Hex),
                secret_length: raw.secret_length.unwrap_or(48),
            }
        }
        other => {
            c.problem(format!(
                "keys.shape: {other:?} is not \"checksummed\" or \"embedded_id\""
            ));
            Shape::default()
        }
    };
    if let Some(p) = shape.problem() {
        c.problem(p);
    } else if let Err(p) = KeyFormat::with_shape(&labels, shape)
        && labels.problems().is_empty()
    {
        c.problem(p);
    }
    let default_scopes = raw.default_scopes.unwrap_or_default();
    for s in &default_scopes {
        if s.is_empty()
            || s.len() > 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'))
        {
            c.problem(format!("keys.default_scopes: {s:?} is not a scope"));
        }
    }
    let pepper = match read_secret(
        c,
        "keys.pepper",
        raw.pepper_env,
        "KEYGATE_PEPPER",
        raw.pepper_file,
        getenv,
    ) {
        Some(p) if p.len() < 16 => {
            c.problem("keys: the pepper must be at least 16 bytes".into());
            None
        }
        p => p.map(Secret::new),
    };
    let d = Argon2Cost::default();
    let argon2 = Argon2Cost {
        memory_kib: raw.argon2_memory_kib.unwrap_or(d.memory_kib),
        iterations: raw.argon2_iterations.unwrap_or(d.iterations),
        parallelism: raw.argon2_parallelism.unwrap_or(d.parallelism),
    };
    if let Some(p) = argon2.problem() {
        c.problem(format!("keys.argon2_*: {p}"));
    }
    KeysConfig {
        argon2,
        shape,
        default_scopes,
        labels,
        max_length: c.positive("keys.max_length", raw.max_length, 256),
        pepper,
        accept_legacy: raw.accept_legacy.unwrap_or(false),
    }
}
