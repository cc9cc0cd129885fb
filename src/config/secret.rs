//! Secrets (pepper, admin tokens, signing key, Redis password): read from the environment or a
//! file, never from the configuration file itself, and never shown by `Debug`.

use std::fmt;

use super::check::Check;

/// A secret read from the environment or a file. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Looks up environment variables (the process environment, or a test's map).
pub(super) type Getenv<'a> = &'a dyn Fn(&str) -> Option<std::ffi::OsString>;

/// A secret from the variable named by `<field>_env` (or `default_env` when set), or from
/// `<field>_file` (trailing whitespace trimmed). Both set is a problem.
pub(super) fn read_secret(
    c: &mut Check<'_>,
    field: &str,
    env_name: Option<String>,
    default_env: &str,
    file: Option<String>,
    getenv: Getenv<'_>,
) -> Option<Vec<u8>> {
    let from_env = match &env_name {
        Some(name) => match getenv(name) {
            Some(v) => Some(v.into_encoded_bytes()),
            None => {
                c.problem(format!(
                    "{field}_env: environment variable {name} is not set"
                ));
                None
            }
        },
        None => getenv(default_env).map(std::ffi::OsString::into_encoded_bytes),
    };
    let from_file = file.and_then(|path| match std::fs::read(c.file(&path)) {
        Ok(mut bytes) => {
            while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                bytes.pop();
            }
            Some(bytes)
        }
        Err(e) => {
            c.problem(format!("{field}_file: {path}: {e}"));
            None
        }
    });
    match (from_env, from_file) {
        (Some(_), Some(_)) => {
            c.problem(format!(
                "{field}: set both in the environment and in a file; keep one"
            ));
            None
        }
        (a, b) => a.or(b),
    }
}
