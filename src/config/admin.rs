//! `[admin]`: the operator API's listener, its tokens and its per-token limits.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::check::Check;
use super::listen::{ListenConfig, OpsConfig};
use super::secret::{Getenv, Secret, read_secret};

/// Where the admin API listens: never the proxied port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminAddress {
    Tcp(SocketAddr),
    /// `unix:/path/to/socket`
    Unix(PathBuf),
}

impl fmt::Display for AdminAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminAddress::Tcp(a) => write!(f, "{a}"),
            AdminAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct AdminConfig {
    pub address: AdminAddress,
    /// Named bearer tokens; none configured means the admin API is off.
    pub tokens: Vec<AdminToken>,
    /// Operations per token per minute (the defaults follow the seed documents: 30/10/5).
    pub list_per_minute: u64,
    pub create_per_minute: u64,
    pub rotate_per_minute: u64,
    /// Updates and revocations.
    pub write_per_minute: u64,
}

#[derive(Clone, Debug)]
pub struct AdminToken {
    /// Recorded as the actor of every change made with this token.
    pub name: String,
    pub token: Secret,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawAdmin {
    address: Option<String>,
    tokens_env: Option<String>,
    tokens_file: Option<String>,
    list_per_minute: Option<u64>,
    create_per_minute: Option<u64>,
    rotate_per_minute: Option<u64>,
    write_per_minute: Option<u64>,
}

pub(super) fn validate(
    c: &mut Check<'_>,
    raw: RawAdmin,
    listen: &ListenConfig,
    ops: &OpsConfig,
    getenv: Getenv<'_>,
) -> AdminConfig {
    let address = match raw.address.as_deref() {
        Some(a) if a.starts_with("unix:") => AdminAddress::Unix(c.file(&a[5..])),
        other => {
            let a = c.addr("admin.address", other.map(str::to_owned), "127.0.0.1:9091");
            if a.port() != 0 && (a == listen.address || a == ops.address) {
                c.problem("admin.address: must differ from listen.address and ops.address".into());
            }
            AdminAddress::Tcp(a)
        }
    };
    let tokens = read_secret(
        c,
        "admin.tokens",
        raw.tokens_env,
        "KEYGATE_ADMIN_TOKENS",
        raw.tokens_file,
        getenv,
    )
    .map(|bytes| parse_tokens(c, &bytes))
    .unwrap_or_default();
    AdminConfig {
        address,
        tokens,
        list_per_minute: c.positive("admin.list_per_minute", raw.list_per_minute, 30),
        create_per_minute: c.positive("admin.create_per_minute", raw.create_per_minute, 10),
        rotate_per_minute: c.positive("admin.rotate_per_minute", raw.rotate_per_minute, 5),
        write_per_minute: c.positive("admin.write_per_minute", raw.write_per_minute, 30),
    }
}

/// `name:token` entries separated by newlines or commas (`#` starts a comment line). A single
/// bare token is named `admin`. Problems never echo a token.
fn parse_tokens(c: &mut Check<'_>, bytes: &[u8]) -> Vec<AdminToken> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        c.problem("admin.tokens: must be UTF-8".into());
        return Vec::new();
    };
    let entries: Vec<&str> = text
        .split(['\n', ','])
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let mut out: Vec<AdminToken> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let (name, token) = match entry.split_once(':') {
            Some((n, t)) => (n.trim(), t.trim()),
            None if entries.len() == 1 => ("admin", *entry),
            None => {
                c.problem(format!(
                    "admin.tokens: entry {} has no name; write name:token",
                    i + 1
                ));
                continue;
            }
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            c.problem(format!(
                "admin.tokens: entry {}: the name must be A-Z a-z 0-9 _ - .",
                i + 1
            ));
        } else if token.len() < 16 {
            c.problem(format!(
                "admin.tokens: the token named {name:?} is shorter than 16 characters"
            ));
        } else if out.iter().any(|t| t.name == name) {
            c.problem(format!("admin.tokens: the name {name:?} is used twice"));
        } else {
            out.push(AdminToken {
                name: name.to_owned(),
                token: Secret::new(token.as_bytes().to_vec()),
            });
        }
    }
    out
}
