//! `[keys]`: how keys look (labels, brand prefix), how long they may be, the pepper, legacy keys.

use serde::Deserialize;

use super::check::Check;
use super::secret::{Getenv, Secret, read_secret};
use crate::key::{Argon2Cost, Labels};

#[derive(Clone, Debug)]
pub struct KeysConfig {
    pub labels: Labels,
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
    if let Err(p) = crate::key::KeyFormat::new(&labels)
        && labels.problems().is_empty()
    {
        c.problem(p);
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
        labels,
        max_length: c.positive("keys.max_length", raw.max_length, 256),
        pepper,
        accept_legacy: raw.accept_legacy.unwrap_or(false),
    }
}
