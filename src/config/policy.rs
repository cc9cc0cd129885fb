//! The policy sections of `sidecar.toml`: `[[routes]]`, `[default_route]`, `[ip]` and
//! `[rate_limits]`, validated into the typed values `crate::policy` enforces.

use std::collections::BTreeMap;
use std::time::Duration;

use http::Method;
use ipnet::IpNet;
use serde::Deserialize;

use super::{Carrier, Check};
use crate::policy::ratelimit::{Algorithm, Limit};
use crate::policy::routes::PathPattern;

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawRoute {
    name: Option<String>,
    methods: Option<Vec<String>>,
    path: Option<String>,
    scope: Option<String>,
    category: Option<String>,
    carriers: Option<Vec<String>>,
    allow_publishable: Option<bool>,
    public: Option<bool>,
    report_only: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawIp {
    trusted_proxies: Option<Vec<String>>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawLimit {
    limit: Option<u64>,
    window: Option<String>,
    algorithm: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawRateLimits {
    backend: Option<String>,
    replicas: Option<u32>,
    key: Option<RawLimit>,
    ip: Option<RawLimit>,
    failed_auth: Option<RawLimit>,
    tiers: BTreeMap<String, RawLimit>,
    categories: BTreeMap<String, RawLimit>,
    headers: Option<Vec<String>>,
}

/// Rules that can be rolled out in report-only mode: the denial is logged and counted, and
/// the request is forwarded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReportOnly {
    pub scope: bool,
    pub ip: bool,
    pub environment: bool,
    pub rate_limit: bool,
}

#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub name: std::sync::Arc<str>,
    /// Empty: every method.
    pub methods: Vec<Method>,
    /// `None` only for the default route.
    pub pattern: Option<PathPattern>,
    pub scope: Option<String>,
    pub category: Option<String>,
    /// Empty: the global carriers.
    pub carriers: Vec<Carrier>,
    pub allow_publishable: bool,
    pub public: bool,
    pub report_only: ReportOnly,
}

#[derive(Clone, Debug, Default)]
pub struct IpConfig {
    /// Peers whose `Forwarded` / `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
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
    pub key: Option<Limit>,
    pub ip: Option<Limit>,
    pub failed_auth: Option<Limit>,
    pub tiers: BTreeMap<String, Limit>,
    pub categories: BTreeMap<String, Limit>,
    pub headers: HeaderStyles,
}

#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub routes: Vec<RouteConfig>,
    pub default_route: RouteConfig,
    pub ip: IpConfig,
    pub rate_limits: RateLimitConfig,
}

pub(super) fn validate(
    c: &mut Check<'_>,
    routes: Vec<RawRoute>,
    default_route: Option<RawRoute>,
    ip: RawIp,
    rate_limits: RawRateLimits,
    global_carriers: &[Carrier],
    redis_store: bool,
) -> PolicyConfig {
    let rate_limits = validate_rate_limits(c, rate_limits, redis_store);
    let mut names = std::collections::HashSet::new();
    let routes: Vec<RouteConfig> = routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("routes[{i}]");
            let route = validate_route(c, &field, r, false, global_carriers, &rate_limits);
            if !names.insert(route.name.clone()) {
                c.problem(format!("{field}.name: {:?} is used twice", route.name));
            }
            route
        })
        .collect();
    let default_route = validate_route(
        c,
        "default_route",
        default_route.unwrap_or_default(),
        true,
        global_carriers,
        &rate_limits,
    );
    let nets = |c: &mut Check<'_>, field: &str, v: Option<Vec<String>>| -> Vec<IpNet> {
        v.unwrap_or_default()
            .into_iter()
            .filter_map(|s| match parse_net(&s) {
                Some(n) => Some(n),
                None => {
                    c.problem(format!("{field}: {s:?} is not an IP address or CIDR"));
                    None
                }
            })
            .collect()
    };
    let ip = IpConfig {
        trusted_proxies: nets(c, "ip.trusted_proxies", ip.trusted_proxies),
        allow: nets(c, "ip.allow", ip.allow),
        deny: nets(c, "ip.deny", ip.deny),
    };
    PolicyConfig {
        routes,
        default_route,
        ip,
        rate_limits,
    }
}

/// An address (`10.0.0.1`, `::1`) or a network (`10.0.0.0/8`); IPv4-mapped IPv6 is taken as IPv4.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.parse::<std::net::IpAddr>().ok()?),
    };
    Some(
        match net {
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                Some(v4) if v6.prefix_len() >= 96 => {
                    IpNet::V4(ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok()?)
                }
                _ => net,
            },
            v4 => v4,
        }
        .trunc(),
    )
}

fn validate_route(
    c: &mut Check<'_>,
    field: &str,
    r: RawRoute,
    is_default: bool,
    global_carriers: &[Carrier],
    limits: &RateLimitConfig,
) -> RouteConfig {
    let pattern = match (r.path, is_default) {
        (Some(p), false) => match PathPattern::parse(&p) {
            Ok(p) => Some(p),
            Err(e) => {
                c.problem(format!("{field}.path: {e}"));
                None
            }
        },
        (None, false) => {
            c.problem(format!(
                "{field}.path: required (e.g. \"/v1/payments/{{id}}\" or \"/docs/*\")"
            ));
            None
        }
        (Some(_), true) => {
            c.problem(format!(
                "{field}.path: the default route applies to every other path"
            ));
            None
        }
        (None, true) => None,
    };
    if is_default && r.methods.is_some() {
        c.problem(format!(
            "{field}.methods: the default route applies to every method"
        ));
    }
    let methods = r
        .methods
        .unwrap_or_default()
        .into_iter()
        .filter_map(
            |m| match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    c.problem(format!("{field}.methods: {m:?} is not an HTTP method"));
                    None
                }
            },
        )
        .collect();
    let mut carriers = Vec::new();
    for name in r.carriers.unwrap_or_default() {
        match super::parse_carrier(&name) {
            Some(carrier) if global_carriers.contains(&carrier) => carriers.push(carrier),
            Some(_) => c.problem(format!(
                "{field}.carriers: {name:?} is not in auth.carriers, so keygate never reads it"
            )),
            None => c.problem(format!(
                "{field}.carriers: {name:?} is not \"authorization\" or \"x-api-key\""
            )),
        }
    }
    let mut report_only = ReportOnly::default();
    for rule in r.report_only.unwrap_or_default() {
        match rule.as_str() {
            "scope" => report_only.scope = true,
            "ip" => report_only.ip = true,
            "environment" => report_only.environment = true,
            "rate_limit" => report_only.rate_limit = true,
            other => c.problem(format!(
                "{field}.report_only: {other:?} is not \"scope\", \"ip\", \"environment\" or \"rate_limit\""
            )),
        }
    }
    if let Some(cat) = &r.category
        && !limits.categories.contains_key(cat)
    {
        c.problem(format!(
            "{field}.category: {cat:?} has no [rate_limits.categories.{cat}] limit"
        ));
    }
    let name = r.name.unwrap_or_else(|| {
        if is_default {
            "default".into()
        } else {
            field.to_owned()
        }
    });
    RouteConfig {
        name: name.into(),
        methods,
        pattern,
        scope: r.scope.filter(|s| !s.is_empty()),
        category: r.category,
        carriers,
        allow_publishable: r.allow_publishable.unwrap_or(false),
        public: r.public.unwrap_or(false),
        report_only,
    }
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
    Some(Limit {
        limit,
        window,
        algorithm,
    })
}

fn validate_rate_limits(
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
        key: raw
            .key
            .and_then(|l| validate_limit(c, "rate_limits.key", l)),
        ip: raw.ip.and_then(|l| validate_limit(c, "rate_limits.ip", l)),
        failed_auth: raw
            .failed_auth
            .and_then(|l| validate_limit(c, "rate_limits.failed_auth", l)),
        tiers: map(c, "tiers", raw.tiers),
        categories: map(c, "categories", raw.categories),
        headers,
    }
}
