//! `[auth]`: where the credential is read from, what the upstream receives, the verified-key
//! caches, method overrides and signed identity.

use std::time::Duration;

use serde::Deserialize;

use super::check::{Check, DurationValue};
use super::secret::{Getenv, Secret, read_secret};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// `Authorization: Bearer <key>`
    Bearer,
    /// `X-Api-Key: <key>`
    ApiKeyHeader,
    /// `Authorization: Basic base64(<key>:)` — the key as username, no password (`curl -u`).
    Basic,
}

impl Carrier {
    /// `"authorization"` (or `"bearer"`) and `"x-api-key"`, any case.
    pub fn parse(name: &str) -> Option<Carrier> {
        match name.to_ascii_lowercase().as_str() {
            "authorization" | "bearer" => Some(Carrier::Bearer),
            "x-api-key" => Some(Carrier::ApiKeyHeader),
            "basic" => Some(Carrier::Basic),
            _ => None,
        }
    }
}

/// A set of carriers: what a route accepts, for the hints in its 401s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CarrierSet(u8);

impl CarrierSet {
    pub fn of(carriers: &[Carrier]) -> CarrierSet {
        CarrierSet(carriers.iter().fold(0, |acc, c| acc | c.bit()))
    }

    pub fn contains(self, c: Carrier) -> bool {
        self.0 & c.bit() != 0
    }

    /// How to send a key in these carriers, for people: `` `X-Api-Key: <key>` ``.
    pub fn hint(self) -> String {
        let mut ways = Vec::new();
        if self.contains(Carrier::Bearer) {
            ways.push("`Authorization: Bearer <key>`");
        }
        if self.contains(Carrier::ApiKeyHeader) {
            ways.push("`X-Api-Key: <key>`");
        }
        if self.contains(Carrier::Basic) {
            ways.push("`Authorization: Basic` with the key as username (`curl -u <key>:`)");
        }
        ways.join(" or ")
    }
}

impl Carrier {
    const fn bit(self) -> u8 {
        match self {
            Carrier::Bearer => 1,
            Carrier::ApiKeyHeader => 2,
            Carrier::Basic => 4,
        }
    }
}

/// Method-override headers (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodOverride {
    /// Removed before forwarding: the upstream only ever sees the real method.
    Strip,
    /// Forwarded, and the scope is checked against the overridden method.
    Honor,
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Accepted credential carriers, in order of precedence.
    pub carriers: Vec<Carrier>,
    pub forward_credential: bool,
    /// Lower-case, e.g. `x-auth-`. Every incoming header in this namespace is stripped.
    pub identity_prefix: String,
    pub cache_ttl: Duration,
    pub cache_max_entries: u64,
    pub negative_cache_ttl: Duration,
    pub negative_cache_max_entries: u64,
    pub argon2_concurrency: usize,
    pub last_used_flush_interval: Duration,
    /// While the store is unreachable, cached keys verified this recently keep working.
    pub stale_limit: Duration,
    /// What to do with `X-HTTP-Method-Override` and kin.
    pub method_override: MethodOverride,
    /// Signs the identity of every forwarded request (`<prefix>Signature`, HMAC-SHA256).
    pub signing_key: Option<Secret>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawAuth {
    carriers: Option<Vec<String>>,
    forward_credential: Option<bool>,
    identity_header_prefix: Option<String>,
    cache_ttl: Option<DurationValue>,
    cache_max_entries: Option<u64>,
    negative_cache_ttl: Option<DurationValue>,
    negative_cache_max_entries: Option<u64>,
    argon2_concurrency: Option<usize>,
    last_used_flush_interval: Option<DurationValue>,
    stale_limit: Option<DurationValue>,
    method_override: Option<String>,
    signing_key_env: Option<String>,
    signing_key_file: Option<String>,
}

pub(super) fn validate(c: &mut Check<'_>, raw: RawAuth, getenv: Getenv<'_>) -> AuthConfig {
    let secs = Duration::from_secs;
    let mut carriers = Vec::new();
    for name in raw
        .carriers
        .unwrap_or_else(|| vec!["authorization".into(), "x-api-key".into()])
    {
        let Some(carrier) = Carrier::parse(&name) else {
            c.problem(format!(
                "auth.carriers: {name:?} is not \"authorization\" or \"x-api-key\""
            ));
            continue;
        };
        if carriers.contains(&carrier) {
            c.problem(format!("auth.carriers: {name:?} listed twice"));
        }
        carriers.push(carrier);
    }
    if carriers.is_empty() {
        c.problem("auth.carriers: at least one carrier is required".into());
    }
    let identity_prefix = raw
        .identity_header_prefix
        .unwrap_or_else(|| "X-Auth-".into());
    if identity_prefix.len() < 2
        || !identity_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        c.problem(format!(
            "auth.identity_header_prefix: {identity_prefix:?} must be 2+ letters, digits or '-'"
        ));
    }
    let auth = AuthConfig {
        carriers,
        forward_credential: raw.forward_credential.unwrap_or(false),
        identity_prefix: identity_prefix.to_ascii_lowercase(),
        cache_ttl: c.duration("auth.cache_ttl", raw.cache_ttl, secs(300)),
        cache_max_entries: c.positive("auth.cache_max_entries", raw.cache_max_entries, 100_000),
        negative_cache_ttl: c.duration("auth.negative_cache_ttl", raw.negative_cache_ttl, secs(30)),
        negative_cache_max_entries: c.positive(
            "auth.negative_cache_max_entries",
            raw.negative_cache_max_entries,
            100_000,
        ),
        argon2_concurrency: c.positive(
            "auth.argon2_concurrency",
            raw.argon2_concurrency,
            std::thread::available_parallelism().map_or(2, usize::from),
        ),
        last_used_flush_interval: c.duration(
            "auth.last_used_flush_interval",
            raw.last_used_flush_interval,
            secs(60),
        ),
        stale_limit: c.duration("auth.stale_limit", raw.stale_limit, secs(900)),
        signing_key: match read_secret(
            c,
            "auth.signing_key",
            raw.signing_key_env,
            "KEYGATE_SIGNING_KEY",
            raw.signing_key_file,
            getenv,
        ) {
            Some(k) if k.len() < 32 => {
                c.problem("auth.signing_key: must be at least 32 bytes".into());
                None
            }
            k => k.map(Secret::new),
        },
        method_override: match raw.method_override.as_deref().unwrap_or("strip") {
            "strip" => MethodOverride::Strip,
            "honor" | "honour" => MethodOverride::Honor,
            other => {
                c.problem(format!(
                    "auth.method_override: {other:?} is not \"strip\" or \"honor\""
                ));
                MethodOverride::Strip
            }
        },
    };
    if auth.stale_limit < auth.cache_ttl {
        c.problem("auth.stale_limit: must be at least auth.cache_ttl".into());
    }
    auth
}
