//! `sidecar.toml` → validated, typed settings. The raw structs mirror the file with every field
//! optional; [`Config::from_toml`] fills defaults, applies `KEYGATE__SECTION__FIELD` environment
//! overrides, and collects *every* problem (unknown keys, bad addresses, durations, sizes, labels)
//! into one [`ConfigError`] before anything starts. After load nothing compares config strings.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use crate::key::{Environment, Labels};

mod policy;

pub use policy::{
    HeaderStyles, IpConfig, LimiterBackend, PolicyConfig, RateLimitConfig, ReportOnly, RouteConfig,
    parse_net,
};

/// Every problem found in a configuration, reported together.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid configuration ({} problem{}):",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    /// `Authorization: Bearer <key>`
    Bearer,
    /// `X-Api-Key: <key>`
    ApiKeyHeader,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The environment this instance serves; keys of the other one get `wrong_environment`.
    pub environment: Environment,
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub ops: OpsConfig,
    pub store: StoreConfig,
    pub keys: KeysConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub policy: PolicyConfig,
    pub admin: AdminConfig,
    pub audit: AuditConfig,
}

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

#[derive(Clone, Debug)]
pub struct AuditConfig {
    /// The JSON-lines file used with the file store (default: next to the store file).
    pub file: Option<PathBuf>,
    /// The file is rotated (`.1`, `.2`, …) when it would grow past this.
    pub max_file_size: u64,
    pub keep_files: usize,
    /// Approximate length the Redis stream is capped at (`XADD MAXLEN ~`).
    pub stream_max_len: u64,
    /// How often per-minute usage and failure aggregates are written.
    pub flush_interval: Duration,
    /// Events waiting for the sink; when full, new events are dropped and counted.
    pub queue: usize,
}

#[derive(Clone, Debug)]
pub struct ListenConfig {
    pub address: SocketAddr,
    pub header_read_timeout: Duration,
    pub max_request_body: u64,
    pub drain_timeout: Duration,
    /// Every connection starts with a PROXY protocol (v1 or v2) header naming the client.
    pub proxy_protocol: bool,
    /// Terminate TLS on the listener.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Forward authenticated `CONNECT` requests to the upstream (refused with 405 otherwise).
    pub allow_connect: bool,
    /// `Upgrade` protocols passed through to the upstream (lower case); never `h2c`.
    pub upgrades: Vec<String>,
    /// A tunnel with no byte moving either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// No tunnel lives longer than this.
    pub tunnel_max_lifetime: Duration,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// `http://host:port`; requests keep their own path and query.
    pub url: Uri,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Forward the client's `Host` (true) or the upstream's authority (false).
    pub preserve_host: bool,
    /// For `https://` upstreams.
    pub tls: crate::tls::UpstreamTls,
    /// Speak HTTP/2 to the upstream (ALPN `h2` over TLS, prior knowledge over `http://`).
    pub http2: bool,
}

#[derive(Clone, Debug)]
pub struct OpsConfig {
    pub address: SocketAddr,
}

#[derive(Clone, Debug)]
pub enum StoreConfig {
    File {
        path: PathBuf,
        read_only: bool,
        reload_interval: Duration,
    },
    Redis(RedisConfig),
}

/// Where Redis runs and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server (or a managed endpoint): `redis://host:port/db`.
    Standalone { url: String },
    /// Seed nodes of a Redis Cluster.
    Cluster { nodes: Vec<String> },
    /// Sentinels that know the current master named `master`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

#[derive(Clone, Debug)]
pub struct RedisConfig {
    pub topology: RedisTopology,
    pub password: Option<Secret>,
    /// Every key keygate writes starts with `{<prefix>}:`; the braces are a Cluster hash tag.
    pub key_prefix: String,
    /// Connect and command timeout: slower counts as unreachable.
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct KeysConfig {
    pub labels: Labels,
    /// Longest credential accepted; longer ones are rejected before any hashing.
    pub max_length: usize,
    pub pepper: Option<Secret>,
    /// Also accept keys not in keygate's format (imported with `keygate keys import`). They
    /// cannot be checked offline, so each distinct one costs a store lookup once.
    pub accept_legacy: bool,
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

/// Method-override headers (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MethodOverride {
    /// Removed before forwarding: the upstream only ever sees the real method.
    Strip,
    /// Forwarded, and the scope is checked against the overridden method.
    Honor,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
    /// One access log line per request (target `keygate::access`).
    pub access: bool,
}

// ---- raw form: what the file says ----

#[derive(Deserialize, Default)]
#[serde(default)]
struct Raw {
    environment: Option<String>,
    listen: RawListen,
    upstream: RawUpstream,
    ops: RawOps,
    store: RawStore,
    keys: RawKeys,
    auth: RawAuth,
    log: RawLog,
    routes: Vec<policy::RawRoute>,
    default_route: Option<policy::RawRoute>,
    ip: policy::RawIp,
    rate_limits: policy::RawRateLimits,
    admin: RawAdmin,
    audit: RawAudit,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawAdmin {
    address: Option<String>,
    tokens_env: Option<String>,
    tokens_file: Option<String>,
    list_per_minute: Option<u64>,
    create_per_minute: Option<u64>,
    rotate_per_minute: Option<u64>,
    write_per_minute: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawAudit {
    file: Option<String>,
    max_file_size: Option<Size>,
    keep_files: Option<usize>,
    stream_max_len: Option<u64>,
    flush_interval: Option<String>,
    queue: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawListen {
    address: Option<String>,
    header_read_timeout: Option<String>,
    max_request_body: Option<Size>,
    drain_timeout: Option<String>,
    proxy_protocol: Option<bool>,
    tls: Option<RawTls>,
    allow_connect: Option<bool>,
    upgrades: Option<Vec<String>>,
    tunnel_idle_timeout: Option<String>,
    tunnel_max_lifetime: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    reload_interval: Option<String>,
    sni: Vec<RawSni>,
}

#[derive(Deserialize)]
struct RawSni {
    names: Vec<String>,
    cert_file: String,
    key_file: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawUpstream {
    url: Option<String>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    pool_idle_timeout: Option<String>,
    pool_max_idle_per_host: Option<usize>,
    preserve_host: Option<bool>,
    ca_file: Option<String>,
    client_cert_file: Option<String>,
    client_key_file: Option<String>,
    http2: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawOps {
    address: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawStore {
    backend: Option<String>,
    path: Option<String>,
    read_only: Option<bool>,
    reload_interval: Option<String>,
    url: Option<String>,
    cluster_nodes: Option<Vec<String>>,
    sentinels: Option<Vec<String>>,
    sentinel_master: Option<String>,
    key_prefix: Option<String>,
    password_env: Option<String>,
    password_file: Option<String>,
    timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawKeys {
    prefix_template: Option<String>,
    secret_label: Option<String>,
    publishable_label: Option<String>,
    live_label: Option<String>,
    test_label: Option<String>,
    max_length: Option<usize>,
    pepper_env: Option<String>,
    pepper_file: Option<String>,
    accept_legacy: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawAuth {
    carriers: Option<Vec<String>>,
    forward_credential: Option<bool>,
    identity_header_prefix: Option<String>,
    cache_ttl: Option<String>,
    cache_max_entries: Option<u64>,
    negative_cache_ttl: Option<String>,
    negative_cache_max_entries: Option<u64>,
    argon2_concurrency: Option<usize>,
    last_used_flush_interval: Option<String>,
    stale_limit: Option<String>,
    method_override: Option<String>,
    signing_key_env: Option<String>,
    signing_key_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawLog {
    format: Option<String>,
    filter: Option<String>,
    access: Option<bool>,
}

/// A byte size: an integer, or a string such as `"10MiB"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

/// The prefix of environment variables that override file settings: `KEYGATE__UPSTREAM__URL`.
pub const ENV_OVERRIDE_PREFIX: &str = "KEYGATE__";

impl Config {
    /// Reads and validates a config file, with overrides from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![format!("{}: {e}", path.display())],
        })?;
        Config::from_toml(&text, std::env::vars(), |name| std::env::var_os(name))
    }

    /// Validates TOML text. `overrides` are `(name, value)` pairs (normally the environment);
    /// `getenv` resolves secrets named by `*_env` settings.
    pub fn from_toml(
        text: &str,
        overrides: impl IntoIterator<Item = (String, String)>,
        getenv: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![format!("not valid TOML: {}", e.to_string().trim())],
        })?;
        apply_overrides(&mut table, overrides, &mut problems);
        let mut unknown = Vec::new();
        let raw: Raw = serde_ignored::deserialize(toml::Value::Table(table), |path| {
            unknown.push(path.to_string());
        })
        .map_err(|e| ConfigError {
            problems: vec![e.to_string().trim().to_owned()],
        })?;
        problems.extend(unknown.into_iter().map(|p| format!("{p}: unknown setting")));
        let config = validate(raw, &getenv, &mut problems);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }
}

fn apply_overrides(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<String>,
) {
    for (name, value) in vars {
        let Some(path) = name.strip_prefix(ENV_OVERRIDE_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        if parts.iter().any(String::is_empty) {
            problems.push(format!("{name}: malformed override name"));
            continue;
        }
        // A value that parses as TOML (number, bool, array) is taken as such; anything else is a string.
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        if let Err(section) = set_path(table, &parts, parsed) {
            problems.push(format!("{name}: {section} is not a section"));
        }
    }
}

/// Sets `table[parts[0]][parts[1]]… = value`, creating sections; fails naming a non-section.
fn set_path(table: &mut toml::Table, parts: &[String], value: toml::Value) -> Result<(), String> {
    match parts {
        [] => Ok(()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => match table
            .entry(first.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => set_path(t, rest, value),
            _ => Err(first.clone()),
        },
    }
}

struct Check<'a> {
    problems: &'a mut Vec<String>,
}

impl Check<'_> {
    fn duration(&mut self, field: &str, raw: Option<String>, default: Duration) -> Duration {
        let Some(s) = raw else { return default };
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problems
                    .push(format!("{field}: must be greater than zero"));
                default
            }
            Err(e) => {
                self.problems.push(format!(
                    "{field}: {s:?} is not a duration ({e}); use e.g. \"250ms\", \"30s\", \"5m\""
                ));
                default
            }
        }
    }

    fn addr(&mut self, field: &str, raw: Option<String>, default: &str) -> SocketAddr {
        let s = raw.unwrap_or_else(|| default.to_owned());
        s.parse().unwrap_or_else(|_| {
            self.problems.push(format!(
                "{field}: {s:?} is not an address; use ip:port, e.g. \"0.0.0.0:8080\" or \"[::]:8080\""
            ));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    fn size(&mut self, field: &str, raw: Option<Size>, default: u64) -> u64 {
        match raw {
            None => default,
            Some(Size::Bytes(n)) => n,
            Some(Size::Text(s)) => parse_size(&s).unwrap_or_else(|| {
                self.problems.push(format!(
                    "{field}: {s:?} is not a size; use bytes or e.g. \"512KiB\", \"10MiB\", \"1GiB\""
                ));
                default
            }),
        }
    }

    fn positive<T: PartialOrd + Default + Copy>(
        &mut self,
        field: &str,
        raw: Option<T>,
        default: T,
    ) -> T {
        match raw {
            Some(v) if v > T::default() => v,
            Some(_) => {
                self.problems
                    .push(format!("{field}: must be greater than zero"));
                default
            }
            None => default,
        }
    }

    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn validate(
    raw: Raw,
    getenv: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    problems: &mut Vec<String>,
) -> Config {
    let mut c = Check { problems };
    let secs = Duration::from_secs;

    let environment = match raw.environment.as_deref().unwrap_or("live") {
        "live" => Environment::Live,
        "test" => Environment::Test,
        other => {
            c.problem(format!(
                "environment: {other:?} is not \"live\" or \"test\""
            ));
            Environment::Live
        }
    };

    let listen = ListenConfig {
        address: c.addr("listen.address", raw.listen.address, "0.0.0.0:8080"),
        header_read_timeout: c.duration(
            "listen.header_read_timeout",
            raw.listen.header_read_timeout,
            secs(10),
        ),
        max_request_body: c.size(
            "listen.max_request_body",
            raw.listen.max_request_body,
            10 << 20,
        ),
        drain_timeout: c.duration("listen.drain_timeout", raw.listen.drain_timeout, secs(30)),
        proxy_protocol: raw.listen.proxy_protocol.unwrap_or(false),
        tls: None,
        allow_connect: raw.listen.allow_connect.unwrap_or(false),
        upgrades: raw
            .listen
            .upgrades
            .unwrap_or_else(|| vec!["websocket".into()])
            .into_iter()
            .map(|u| u.trim().to_ascii_lowercase())
            .collect(),
        tunnel_idle_timeout: c.duration(
            "listen.tunnel_idle_timeout",
            raw.listen.tunnel_idle_timeout,
            secs(600),
        ),
        tunnel_max_lifetime: c.duration(
            "listen.tunnel_max_lifetime",
            raw.listen.tunnel_max_lifetime,
            secs(24 * 3600),
        ),
    };
    for u in &listen.upgrades {
        if u == "h2c" || u.is_empty() || !u.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            c.problem(format!(
                "listen.upgrades: {u:?} cannot be passed through (one protocol token; never h2c)"
            ));
        }
    }
    let listen = ListenConfig {
        tls: raw.listen.tls.and_then(|t| validate_tls(&mut c, t)),
        ..listen
    };

    let url = match raw.upstream.url {
        None => {
            c.problem("upstream.url: required, e.g. \"http://127.0.0.1:3000\"".into());
            Uri::from_static("http://127.0.0.1")
        }
        Some(s) => match s.parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && u.path() == "/"
                    && u.query().is_none() =>
            {
                u
            }
            _ => {
                c.problem(format!(
                    "upstream.url: {s:?} must be http://host:port or https://host:port with no path or query"
                ));
                Uri::from_static("http://127.0.0.1")
            }
        },
    };
    let upstream = UpstreamConfig {
        url,
        connect_timeout: c.duration(
            "upstream.connect_timeout",
            raw.upstream.connect_timeout,
            secs(2),
        ),
        response_timeout: c.duration(
            "upstream.response_timeout",
            raw.upstream.response_timeout,
            secs(30),
        ),
        pool_idle_timeout: c.duration(
            "upstream.pool_idle_timeout",
            raw.upstream.pool_idle_timeout,
            secs(90),
        ),
        pool_max_idle_per_host: raw.upstream.pool_max_idle_per_host.unwrap_or(256),
        preserve_host: raw.upstream.preserve_host.unwrap_or(true),
        tls: crate::tls::UpstreamTls {
            ca_file: raw.upstream.ca_file.map(PathBuf::from),
            client: match (raw.upstream.client_cert_file, raw.upstream.client_key_file) {
                (Some(cert), Some(key)) => Some(crate::tls::CertFiles {
                    cert_file: cert.into(),
                    key_file: key.into(),
                }),
                (None, None) => None,
                _ => {
                    c.problem(
                        "upstream.client_cert_file and client_key_file: set both or neither".into(),
                    );
                    None
                }
            },
        },
        http2: raw.upstream.http2.unwrap_or(false),
    };
    if upstream.url.scheme_str() == Some("https") {
        if let Err(e) = crate::tls::upstream_client_config(&upstream.tls) {
            c.problem(format!("upstream: {e}"));
        }
    } else if upstream.tls != crate::tls::UpstreamTls::default() {
        c.problem("upstream.ca_file / client_cert_file: only apply to an https:// upstream".into());
    }

    let ops = OpsConfig {
        address: c.addr("ops.address", raw.ops.address, "127.0.0.1:9090"),
    };
    if ops.address == listen.address && ops.address.port() != 0 {
        c.problem("ops.address: must differ from listen.address".into());
    }

    let store = validate_store(&mut c, raw.store, getenv);

    let d = Labels::default();
    let labels = Labels {
        template: raw.keys.prefix_template.unwrap_or(d.template),
        secret: raw.keys.secret_label.unwrap_or(d.secret),
        publishable: raw.keys.publishable_label.unwrap_or(d.publishable),
        live: raw.keys.live_label.unwrap_or(d.live),
        test: raw.keys.test_label.unwrap_or(d.test),
    };
    for p in labels.problems() {
        c.problem(p);
    }
    if let Err(p) = crate::key::KeyFormat::new(&labels)
        && labels.problems().is_empty()
    {
        c.problem(p);
    }
    let pepper = read_pepper(&mut c, raw.keys.pepper_env, raw.keys.pepper_file, getenv);
    let keys = KeysConfig {
        labels,
        max_length: c.positive("keys.max_length", raw.keys.max_length, 256),
        pepper,
        accept_legacy: raw.keys.accept_legacy.unwrap_or(false),
    };

    let mut carriers = Vec::new();
    for name in raw
        .auth
        .carriers
        .unwrap_or_else(|| vec!["authorization".into(), "x-api-key".into()])
    {
        let Some(carrier) = parse_carrier(&name) else {
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
        .auth
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
        forward_credential: raw.auth.forward_credential.unwrap_or(false),
        identity_prefix: identity_prefix.to_ascii_lowercase(),
        cache_ttl: c.duration("auth.cache_ttl", raw.auth.cache_ttl, secs(300)),
        cache_max_entries: c.positive(
            "auth.cache_max_entries",
            raw.auth.cache_max_entries,
            100_000,
        ),
        negative_cache_ttl: c.duration(
            "auth.negative_cache_ttl",
            raw.auth.negative_cache_ttl,
            secs(30),
        ),
        negative_cache_max_entries: c.positive(
            "auth.negative_cache_max_entries",
            raw.auth.negative_cache_max_entries,
            100_000,
        ),
        argon2_concurrency: c.positive(
            "auth.argon2_concurrency",
            raw.auth.argon2_concurrency,
            std::thread::available_parallelism().map_or(2, usize::from),
        ),
        last_used_flush_interval: c.duration(
            "auth.last_used_flush_interval",
            raw.auth.last_used_flush_interval,
            secs(60),
        ),
        stale_limit: c.duration("auth.stale_limit", raw.auth.stale_limit, secs(900)),
        signing_key: match read_secret(
            &mut c,
            "auth.signing_key",
            raw.auth.signing_key_env,
            "KEYGATE_SIGNING_KEY",
            raw.auth.signing_key_file,
            getenv,
        ) {
            Some(k) if k.len() < 32 => {
                c.problem("auth.signing_key: must be at least 32 bytes".into());
                None
            }
            k => k.map(Secret),
        },
        method_override: match raw.auth.method_override.as_deref().unwrap_or("strip") {
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

    let log = LogConfig {
        format: match raw.log.format.as_deref().unwrap_or("auto") {
            "auto" => LogFormat::Auto,
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                c.problem(format!(
                    "log.format: {other:?} is not \"auto\", \"text\" or \"json\""
                ));
                LogFormat::Auto
            }
        },
        filter: raw.log.filter.unwrap_or_else(|| "info".into()),
        access: raw.log.access.unwrap_or(true),
    };
    if tracing_subscriber::EnvFilter::try_new(&log.filter).is_err() {
        c.problem(format!(
            "log.filter: {:?} is not a valid filter (e.g. \"info\", \"keygate=debug\")",
            log.filter
        ));
    }

    let policy = policy::validate(
        &mut c,
        raw.routes,
        raw.default_route,
        raw.ip,
        raw.rate_limits,
        &auth.carriers,
        matches!(store, StoreConfig::Redis(_)),
    );

    let admin = validate_admin(&mut c, raw.admin, &listen, &ops, getenv);
    let audit = AuditConfig {
        file: raw.audit.file.map(PathBuf::from).or_else(|| match &store {
            StoreConfig::File { path, .. } => {
                let mut p = path.clone().into_os_string();
                p.push(".audit.jsonl");
                Some(p.into())
            }
            StoreConfig::Redis(_) => None,
        }),
        max_file_size: c.size("audit.max_file_size", raw.audit.max_file_size, 64 << 20),
        keep_files: raw.audit.keep_files.unwrap_or(5),
        stream_max_len: c.positive("audit.stream_max_len", raw.audit.stream_max_len, 1_000_000),
        flush_interval: c.duration("audit.flush_interval", raw.audit.flush_interval, secs(60)),
        queue: c.positive("audit.queue", raw.audit.queue, 10_000),
    };

    Config {
        environment,
        listen,
        upstream,
        ops,
        store,
        keys,
        auth,
        log,
        policy,
        admin,
        audit,
    }
}

fn validate_tls(c: &mut Check<'_>, raw: RawTls) -> Option<crate::tls::TlsConfig> {
    use crate::tls::{CertFiles, SniCert, TlsConfig};
    let (Some(cert), Some(key)) = (raw.cert_file, raw.key_file) else {
        c.problem("listen.tls: cert_file and key_file are required".into());
        return None;
    };
    let cfg = TlsConfig {
        default: CertFiles {
            cert_file: cert.into(),
            key_file: key.into(),
        },
        sni: raw
            .sni
            .into_iter()
            .map(|s| SniCert {
                names: s.names,
                files: CertFiles {
                    cert_file: s.cert_file.into(),
                    key_file: s.key_file.into(),
                },
            })
            .collect(),
        client_ca_file: raw.client_ca_file.map(PathBuf::from),
        reload_interval: c.duration(
            "listen.tls.reload_interval",
            raw.reload_interval,
            Duration::from_secs(10),
        ),
    };
    for (i, s) in cfg.sni.iter().enumerate() {
        if s.names.is_empty() {
            c.problem(format!(
                "listen.tls.sni[{i}].names: at least one server name"
            ));
        }
        for name in &s.names {
            let bare = name.strip_prefix("*.").unwrap_or(name);
            let valid = !bare.is_empty()
                && bare.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                c.problem(format!(
                    "listen.tls.sni[{i}].names: {name:?} is not a host name (a wildcard is only a leading \"*.\")"
                ));
            }
        }
    }
    // Load everything now, so a bad file is reported by check-config, not at the first handshake.
    match crate::tls::Listener::new(&cfg) {
        Ok(_) => Some(cfg),
        Err(e) => {
            c.problem(format!("listen.tls: {e}"));
            None
        }
    }
}

fn validate_admin(
    c: &mut Check<'_>,
    raw: RawAdmin,
    listen: &ListenConfig,
    ops: &OpsConfig,
    getenv: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> AdminConfig {
    let address = match raw.address.as_deref() {
        Some(a) if a.starts_with("unix:") => AdminAddress::Unix(PathBuf::from(&a[5..])),
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
    .map(|bytes| parse_admin_tokens(c, &bytes))
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
fn parse_admin_tokens(c: &mut Check<'_>, bytes: &[u8]) -> Vec<AdminToken> {
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
                token: Secret(token.as_bytes().to_vec()),
            });
        }
    }
    out
}

/// `"authorization"` (or `"bearer"`) and `"x-api-key"`, any case.
fn parse_carrier(name: &str) -> Option<Carrier> {
    match name.to_ascii_lowercase().as_str() {
        "authorization" | "bearer" => Some(Carrier::Bearer),
        "x-api-key" => Some(Carrier::ApiKeyHeader),
        _ => None,
    }
}

fn validate_store(
    c: &mut Check<'_>,
    raw: RawStore,
    getenv: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> StoreConfig {
    let backend = raw.backend.as_deref().unwrap_or("file");
    let file_only = [
        ("path", raw.path.is_some()),
        ("read_only", raw.read_only.is_some()),
        ("reload_interval", raw.reload_interval.is_some()),
    ];
    let redis_only = [
        ("url", raw.url.is_some()),
        ("cluster_nodes", raw.cluster_nodes.is_some()),
        ("sentinels", raw.sentinels.is_some()),
        ("sentinel_master", raw.sentinel_master.is_some()),
        ("key_prefix", raw.key_prefix.is_some()),
        ("password_env", raw.password_env.is_some()),
        ("password_file", raw.password_file.is_some()),
        ("timeout", raw.timeout.is_some()),
    ];
    let misplaced = |c: &mut Check<'_>, fields: &[(&str, bool)], other: &str| {
        for (name, set) in fields {
            if *set {
                c.problem(format!(
                    "store.{name}: only applies to backend = \"{other}\""
                ));
            }
        }
    };
    match backend {
        "file" => {
            misplaced(c, &redis_only, "redis");
            StoreConfig::File {
                path: PathBuf::from(raw.path.unwrap_or_else(|| "keys.json".into())),
                read_only: raw.read_only.unwrap_or(false),
                reload_interval: c.duration(
                    "store.reload_interval",
                    raw.reload_interval,
                    Duration::from_millis(250),
                ),
            }
        }
        "redis" => {
            misplaced(c, &file_only, "file");
            let check_url = |c: &mut Check<'_>, field: &str, u: &str| {
                if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                    c.problem(format!(
                        "store.{field}: {u:?} must start with redis:// or rediss://"
                    ));
                }
            };
            let topology = match (raw.url, raw.cluster_nodes, raw.sentinels) {
                (Some(url), None, None) => {
                    check_url(c, "url", &url);
                    RedisTopology::Standalone { url }
                }
                (None, Some(nodes), None) if !nodes.is_empty() => {
                    for n in &nodes {
                        check_url(c, "cluster_nodes", n);
                    }
                    RedisTopology::Cluster { nodes }
                }
                (None, None, Some(sentinels)) if !sentinels.is_empty() => {
                    for n in &sentinels {
                        check_url(c, "sentinels", n);
                    }
                    let master = raw.sentinel_master.unwrap_or_else(|| {
                        c.problem("store.sentinel_master: required with sentinels".into());
                        String::new()
                    });
                    RedisTopology::Sentinel { sentinels, master }
                }
                _ => {
                    c.problem(
                        "store: backend = \"redis\" needs exactly one of url, cluster_nodes or sentinels".into(),
                    );
                    RedisTopology::Standalone { url: String::new() }
                }
            };
            let key_prefix = raw.key_prefix.unwrap_or_else(|| "keygate".into());
            if key_prefix.is_empty()
                || !key_prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
            {
                c.problem(format!(
                    "store.key_prefix: {key_prefix:?} must be letters, digits, '_', '-', '.', ':'"
                ));
            }
            let password = read_secret(
                c,
                "store.password",
                raw.password_env,
                "KEYGATE_REDIS_PASSWORD",
                raw.password_file,
                getenv,
            )
            .map(Secret);
            RedisConfig {
                topology,
                password,
                key_prefix,
                timeout: c.duration("store.timeout", raw.timeout, Duration::from_millis(500)),
            }
            .into()
        }
        other => {
            c.problem(format!(
                "store.backend: {other:?} is not \"file\" or \"redis\""
            ));
            StoreConfig::File {
                path: "keys.json".into(),
                read_only: true,
                reload_interval: Duration::from_secs(1),
            }
        }
    }
}

impl From<RedisConfig> for StoreConfig {
    fn from(r: RedisConfig) -> Self {
        StoreConfig::Redis(r)
    }
}

/// A secret from the variable named by `<field>_env` (or `default_env` when set), or from
/// `<field>_file` (trailing whitespace trimmed). Both set is a problem.
fn read_secret(
    c: &mut Check<'_>,
    field: &str,
    env_name: Option<String>,
    default_env: &str,
    file: Option<String>,
    getenv: &dyn Fn(&str) -> Option<std::ffi::OsString>,
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
    let from_file = file.and_then(|path| match std::fs::read(&path) {
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

fn read_pepper(
    c: &mut Check<'_>,
    env_name: Option<String>,
    file: Option<String>,
    getenv: &dyn Fn(&str) -> Option<std::ffi::OsString>,
) -> Option<Secret> {
    match read_secret(c, "keys.pepper", env_name, "KEYGATE_PEPPER", file, getenv) {
        Some(p) if p.len() < 16 => {
            c.problem("keys: the pepper must be at least 16 bytes".into());
            None
        }
        p => p.map(Secret),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Vec::new(), |_| None)
    }

    #[test]
    fn the_example_file_loads() {
        let text = include_str!("../../sidecar.toml.example");
        let c = load(text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.upstream.url, "http://127.0.0.1:3000/");
        assert_eq!(c.policy.routes.len(), 7);
        assert_eq!(c.policy.rate_limits.categories.len(), 2);
        assert!(c.policy.routes.iter().any(|r| r.report_only.scope));
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load("[upstream]\nurl = \"http://127.0.0.1:3000\"\n").unwrap();
        assert_eq!(c.environment, Environment::Live);
        assert_eq!(c.listen.address, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.listen.max_request_body, 10 << 20);
        assert_eq!(
            c.auth.carriers,
            vec![Carrier::Bearer, Carrier::ApiKeyHeader]
        );
        assert_eq!(c.auth.identity_prefix, "x-auth-");
        assert!(c.keys.pepper.is_none());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            environment = "prod"
            colour = "blue"
            [listen]
            address = "localhost"
            drain_timeout = "soon"
            max_request_body = "ten"
            [upstream]
            url = "ftp://x"
            timeout = "1s"
            [auth]
            carriers = ["cookie"]
        "#;
        let err = load(text).unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "colour: unknown setting",
            "upstream.timeout: unknown setting",
            "environment:",
            "listen.address:",
            "listen.drain_timeout:",
            "listen.max_request_body:",
            "upstream.url:",
            "auth.carriers:",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        assert_eq!(err.problems.len(), 9, "{all}");
    }

    #[test]
    fn env_overrides_apply_with_types() {
        let vars = vec![
            (
                "KEYGATE__UPSTREAM__URL".to_owned(),
                "http://10.0.0.1:9000".to_owned(),
            ),
            (
                "KEYGATE__LISTEN__MAX_REQUEST_BODY".to_owned(),
                "1024".to_owned(),
            ),
            (
                "KEYGATE__AUTH__FORWARD_CREDENTIAL".to_owned(),
                "true".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = Config::from_toml("", vars, |_| None).unwrap();
        assert_eq!(c.upstream.url, "http://10.0.0.1:9000/");
        assert_eq!(c.listen.max_request_body, 1024);
        assert!(c.auth.forward_credential);
    }

    #[test]
    fn pepper_from_named_env_var() {
        let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[keys]\npepper_env = \"MY_PEPPER\"\n";
        let c = Config::from_toml(text, Vec::new(), |n| {
            (n == "MY_PEPPER").then(|| "0123456789abcdef0123".into())
        })
        .unwrap();
        assert_eq!(
            c.keys.pepper.as_ref().map(Secret::expose),
            Some(&b"0123456789abcdef0123"[..])
        );
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        let missing = load(text).unwrap_err();
        assert!(missing.problems[0].contains("MY_PEPPER is not set"));
    }

    #[test]
    fn redis_store_settings() {
        let base = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[store]\nbackend = \"redis\"\n";
        let c = load(&format!("{base}url = \"redis://10.0.0.1:6379/2\"\n")).unwrap();
        match c.store {
            StoreConfig::Redis(r) => {
                assert_eq!(
                    r.topology,
                    RedisTopology::Standalone {
                        url: "redis://10.0.0.1:6379/2".into()
                    }
                );
                assert_eq!(r.key_prefix, "keygate");
                assert_eq!(r.timeout, Duration::from_millis(500));
            }
            other => panic!("{other:?}"),
        }
        let c = Config::from_toml(
            &format!("{base}sentinels = [\"redis://s:26379\"]\nsentinel_master = \"m\"\n"),
            Vec::new(),
            |n| (n == "KEYGATE_REDIS_PASSWORD").then(|| "hunter2".into()),
        )
        .unwrap();
        let StoreConfig::Redis(r) = c.store else {
            panic!()
        };
        assert_eq!(
            r.password.as_ref().map(Secret::expose),
            Some(&b"hunter2"[..])
        );
        assert!(matches!(r.topology, RedisTopology::Sentinel { .. }));

        let err = load(&format!(
            "{base}url = \"http://x\"\ncluster_nodes = [\"redis://a:1\"]\npath = \"k.json\"\nkey_prefix = \"a b\"\n"
        ))
        .unwrap_err();
        let all = err.problems.join("\n");
        for needle in [
            "store.path: only applies",
            "exactly one of url, cluster_nodes or sentinels",
            "store.key_prefix",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        let err = load("[upstream]\nurl = \"http://127.0.0.1:1\"\n[store]\nurl = \"redis://a\"\n")
            .unwrap_err();
        assert!(
            err.problems[0].contains("store.url: only applies to backend = \"redis\""),
            "{err}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("1TiB"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }
}
