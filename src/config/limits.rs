//! `[rate_limits]`: what a limit is, the backend, the header styles, and the limits per key,
//! per tier, per route category, per client IP and per failed authentication.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::check::{Check, DurationValue};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// `limit` requests per aligned window of `window` (the documents' behaviour).
    FixedWindow,
    /// Generic cell rate algorithm: a smooth rate of `limit` per `window`, bursts up to `limit`.
    Gcra,
}

/// Whose requests a limit counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Per {
    /// Each key's own.
    #[default]
    Key,
    /// All keys of one owner together (ZendFi: "rate-limited per merchant").
    Owner,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub limit: u64,
    pub window: Duration,
    pub algorithm: Algorithm,
    /// For per-key limits (default, tiers, environments, categories): whose requests count.
    pub per: Per,
}

impl Limit {
    /// `limit` per `window`, fixed windows, per key.
    pub fn new(limit: u64, window: Duration) -> Limit {
        Limit {
            limit,
            window,
            algorithm: Algorithm::FixedWindow,
            per: Per::Key,
        }
    }

    pub fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// GCRA emission interval in milliseconds (at least 1).
    pub fn interval_ms(&self) -> u64 {
        (self.window_ms() / self.limit.max(1)).max(1)
    }

    /// This limit shared by `replicas` processes each enforcing it alone.
    pub fn scaled(&self, replicas: u32) -> Limit {
        Limit {
            limit: self.limit.div_ceil(u64::from(replicas.max(1))),
            ..*self
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimiterBackend {
    Local,
    Redis,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderStyles {
    /// `X-RateLimit-Limit/Remaining/Reset` (reset as unix time).
    pub x_ratelimit: bool,
    /// `RateLimit-Limit/Remaining/Reset` (reset in seconds).
    pub ratelimit: bool,
    /// The IETF draft's structured `RateLimit-Policy` and `RateLimit` fields.
    pub structured: bool,
}

#[derive(Clone, Debug)]
pub struct RateLimitConfig {
    pub backend: LimiterBackend,
    /// Replicas sharing the limits; local fallback limits are divided by this.
    pub replicas: u32,
    /// Redis limiter: the largest batch of permits a replica leases at once (0: one round trip
    /// per request, exact to the request).
    pub lease_max: u64,
    pub key: Option<Limit>,
    pub ip: Option<Limit>,
    pub failed_auth: Option<Limit>,
    pub tiers: BTreeMap<String, Limit>,
    pub categories: BTreeMap<String, Limit>,
    /// Per-environment key limits (Zentra: sandbox 100/min): for keys of that environment,
    /// instead of the default and the tiers (a key's own explicit limit still wins).
    pub environments: Vec<(crate::key::Environment, Limit)>,
    pub headers: HeaderStyles,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawLimit {
    limit: Option<u64>,
    window: Option<DurationValue>,
    algorithm: Option<String>,
    per: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawRateLimits {
    backend: Option<String>,
    replicas: Option<u32>,
    lease_max: Option<u64>,
    key: Option<RawLimit>,
    ip: Option<RawLimit>,
    failed_auth: Option<RawLimit>,
    tiers: BTreeMap<String, RawLimit>,
    categories: BTreeMap<String, RawLimit>,
    environments: BTreeMap<String, RawLimit>,
    headers: Option<Vec<String>>,
}

fn validate_limit(c: &mut Check<'_>, field: &str, raw: RawLimit) -> Option<Limit> {
    let limit = match raw.limit {
        Some(n) if n > 0 => n,
        _ => {
            c.problem(format!("{field}.limit: required, greater than zero"));
            return None;
        }
    };
    let window = match raw.window {
        Some(w) => c.duration(&format!("{field}.window"), Some(w), Duration::from_secs(60)),
        None => {
            c.problem(format!("{field}.window: required, e.g. \"1m\" or \"1h\""));
            return None;
        }
    };
    let algorithm = match raw.algorithm.as_deref().unwrap_or("fixed_window") {
        "fixed_window" | "fixed" => Algorithm::FixedWindow,
        "gcra" | "smooth" => Algorithm::Gcra,
        other => {
            c.problem(format!(
                "{field}.algorithm: {other:?} is not \"fixed_window\" or \"gcra\""
            ));
            Algorithm::FixedWindow
        }
    };
    let per = match raw.per.as_deref().unwrap_or("key") {
        "key" => Per::Key,
        "owner" => Per::Owner,
        other => {
            c.problem(format!(
                "{field}.per: {other:?} is not \"key\" or \"owner\""
            ));
            Per::Key
        }
    };
    Some(Limit {
        limit,
        window,
        algorithm,
        per,
    })
}

pub(super) fn validate(
    c: &mut Check<'_>,
    raw: RawRateLimits,
    redis_store: bool,
) -> RateLimitConfig {
    let backend = match raw.backend.as_deref().unwrap_or("local") {
        "local" => LimiterBackend::Local,
        "redis" => {
            if !redis_store {
                c.problem("rate_limits.backend: \"redis\" needs store.backend = \"redis\" (it shares that connection)".into());
            }
            LimiterBackend::Redis
        }
        other => {
            c.problem(format!(
                "rate_limits.backend: {other:?} is not \"local\" or \"redis\""
            ));
            LimiterBackend::Local
        }
    };
    let mut headers = HeaderStyles::default();
    for h in raw
        .headers
        .unwrap_or_else(|| vec!["x-ratelimit".into(), "ratelimit".into()])
    {
        match h.to_ascii_lowercase().as_str() {
            "x-ratelimit" => headers.x_ratelimit = true,
            "ratelimit" => headers.ratelimit = true,
            "structured" | "ratelimit-policy" => headers.structured = true,
            other => c.problem(format!(
                "rate_limits.headers: {other:?} is not \"x-ratelimit\", \"ratelimit\" or \"structured\""
            )),
        }
    }
    let map = |c: &mut Check<'_>, kind: &str, m: BTreeMap<String, RawLimit>| {
        m.into_iter()
            .filter_map(|(k, v)| {
                let l = validate_limit(c, &format!("rate_limits.{kind}.{k}"), v)?;
                Some((k, l))
            })
            .collect::<BTreeMap<_, _>>()
    };
    RateLimitConfig {
        backend,
        replicas: match raw.replicas {
            Some(0) => {
                c.problem("rate_limits.replicas: must be at least 1".into());
                1
            }
            r => r.unwrap_or(1),
        },
        lease_max: match (raw.lease_max, backend) {
            (Some(n), LimiterBackend::Local) if n > 0 => {
                c.problem(
                    "rate_limits.lease_max: leases share a Redis limiter's counters; set backend = \"redis\"".into(),
                );
                0
            }
            (n, _) => n.unwrap_or(0),
        },
        key: raw
            .key
            .and_then(|l| validate_limit(c, "rate_limits.key", l)),
        ip: raw.ip.and_then(|l| validate_limit(c, "rate_limits.ip", l)),
        failed_auth: raw
            .failed_auth
            .and_then(|l| validate_limit(c, "rate_limits.failed_auth", l)),
        tiers: map(c, "tiers", raw.tiers),
        categories: map(c, "categories", raw.categories),
        environments: map(c, "environments", raw.environments)
            .into_iter()
            .filter_map(|(name, l)| match crate::key::Environment::parse(&name) {
                Some(e) => Some((e, l)),
                None => {
                    c.problem(format!(
                        "rate_limits.environments.{name}: not \"live\" or \"test\""
                    ));
                    None
                }
            })
            .collect(),
        headers,
    }
}
