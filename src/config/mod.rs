//! `sidecar.toml` → validated, typed settings, one file per section. Each section's raw struct
//! mirrors the file with every field optional and is deserialized on its own, so a type error
//! in one section does not hide the others; [`Config::from_toml`] applies
//! `KEYGATE__SECTION__FIELD` environment overrides first and collects *every* problem into one
//! [`ConfigError`] before anything starts. After load nothing compares config strings.
//!
//! This module is a leaf of the crate: it knows the value types of `key` and `tls` and nothing
//! else, and every other module takes its settings from here.

mod admin;
mod attributes;
mod audit;
mod auth;
mod authz;
mod check;
mod errors;
mod ip;
mod keys;
mod limits;
mod listen;
mod locate;
mod log;
mod paths;
mod routes;
mod rules;
mod secret;
mod self_service;
mod store;
mod upstream;

use std::fmt;
use std::path::Path;

use crate::key::Environment;
use check::Check;

pub use admin::{AdminAddress, AdminConfig, AdminToken};
pub use attributes::{AttributeConfig, AttributeSource};
pub use audit::AuditConfig;
pub use auth::{AuthConfig, Carrier, CarrierSet, MethodOverride};
pub use authz::{AuthzConfig, Mode};
pub use errors::{ErrorContract, ErrorKind, ErrorLayout, TEMPLATE_FIELDS, placeholders};
pub use ip::{IpConfig, parse_net};
pub use keys::KeysConfig;
pub use limits::{Algorithm, HeaderStyles, Limit, LimiterBackend, Per, RateLimitConfig};
pub use listen::{ListenConfig, OpsConfig, UnderscoreHeaders};
pub use log::{LogConfig, LogFormat};
pub use paths::{PATH_FORMS, PathRules};
pub use routes::{PathPattern, RouteConfig};
pub use rules::{Rule, RuleKind, RuleSet};
pub use secret::Secret;
pub use self_service::{SelfServiceConfig, Shapes};
pub use store::{DEFAULT_SHARDS, PropagationConfig, RedisConfig, RedisTopology, StoreConfig};
pub use upstream::UpstreamConfig;

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

#[derive(Clone, Debug)]
pub struct Config {
    /// The environment this instance serves; keys of the other one get `wrong_environment`.
    pub environment: Environment,
    pub listen: ListenConfig,
    pub upstream: UpstreamConfig,
    pub ops: OpsConfig,
    pub store: StoreConfig,
    /// How key-management writes wait for the proxies serving the store.
    pub propagation: PropagationConfig,
    pub keys: KeysConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub policy: PolicyConfig,
    pub admin: AdminConfig,
    pub audit: AuditConfig,
    /// How keygate's own rejections look on the proxy port.
    pub errors: ErrorContract,
    /// The auth-only listener, and which listeners run.
    pub authz: AuthzConfig,
}

/// What the policy enforces; reloaded on SIGHUP and file changes.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    pub routes: Vec<RouteConfig>,
    pub default_route: RouteConfig,
    pub ip: IpConfig,
    pub rate_limits: RateLimitConfig,
    /// Request attributes keys can be restricted on.
    pub attributes: Vec<std::sync::Arc<AttributeConfig>>,
    /// The self-service key API on the proxy port (its route is the first in `routes`).
    pub self_service: Option<SelfServiceConfig>,
    /// Path forms refused before routing, and how literal segments match.
    pub paths: PathRules,
}

/// The prefix of environment variables that override file settings: `KEYGATE__UPSTREAM__URL`.
pub const ENV_OVERRIDE_PREFIX: &str = "KEYGATE__";

/// Top-level settings and sections; anything else in the file is an unknown setting.
const SECTIONS: &[&str] = &[
    "environment",
    "listen",
    "upstream",
    "ops",
    "store",
    "keys",
    "auth",
    "log",
    "routes",
    "default_route",
    "ip",
    "rate_limits",
    "admin",
    "audit",
    "errors",
    "attributes",
    "self_service",
    "paths",
    "authz",
];

impl Config {
    /// Reads and validates a config file, with overrides from the process environment.
    /// Relative file settings (store, audit, certificates, secret files, the admin socket) are
    /// taken from the file's folder, wherever the process runs.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            problems: vec![format!("cannot read {}: {e}", path.display())],
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        Config::from_toml_in(&text, Some(base), std::env::vars(), |name| {
            std::env::var_os(name)
        })
        .map_err(|mut e| {
            // Each problem points at where its setting is written (not for environment values).
            for p in &mut e.problems {
                let at = locate::setting_of(p)
                    .filter(|_| !p.ends_with(')') || !p.contains("environment variable"))
                    .and_then(|s| locate::locate(&text, s));
                if let Some((line, col)) = at {
                    *p = format!("{}:{line}:{col}: {p}", path.display());
                }
            }
            e
        })
    }

    /// Validates TOML text (relative file settings are relative to the working directory).
    /// `overrides` are `(name, value)` pairs (normally the environment); `getenv` resolves
    /// secrets named by `*_env` settings.
    pub fn from_toml(
        text: &str,
        overrides: impl IntoIterator<Item = (String, String)>,
        getenv: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Config, ConfigError> {
        Config::from_toml_in(text, None, overrides, getenv)
    }

    /// [`Config::from_toml`] with relative file settings taken from `base`.
    pub fn from_toml_in(
        text: &str,
        base: Option<&Path>,
        overrides: impl IntoIterator<Item = (String, String)>,
        getenv: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError {
            problems: vec![format!("not valid TOML: {}", e.to_string().trim())],
        })?;
        let overridden = apply_overrides(&mut table, overrides, &mut problems);
        let config = validate(table, base, &getenv, &mut problems);
        // A problem with a value from the environment names the variable, not the file.
        for p in &mut problems {
            if let Some((_, var)) = overridden.iter().find(|(setting, _)| {
                p.strip_prefix(setting.as_str())
                    .is_some_and(|rest| rest.starts_with(':') || rest.starts_with(' '))
            }) {
                p.push_str(&format!(" (from the environment variable {var})"));
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// Applies `KEYGATE__SECTION__SETTING` variables; returns `(setting, variable)` for each.
fn apply_overrides(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
    problems: &mut Vec<String>,
) -> Vec<(String, String)> {
    let mut applied = Vec::new();
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
        } else {
            applied.push((parts.join("."), name));
        }
    }
    applied
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

fn validate(
    mut table: toml::Table,
    base: Option<&Path>,
    getenv: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    problems: &mut Vec<String>,
) -> Config {
    let mut c = Check { problems, base };
    let mut unknown: Vec<String> = table
        .keys()
        .filter(|k| !SECTIONS.contains(&k.as_str()))
        .cloned()
        .collect();
    unknown.sort();
    for k in unknown {
        let hint = check::did_you_mean(&k, SECTIONS);
        c.problem(format!("{k}: unknown setting{hint}"));
    }
    let mut take = |name: &str| table.remove(name);

    let environment = match take("environment") {
        None => Environment::Live,
        Some(toml::Value::String(s)) if s == "live" => Environment::Live,
        Some(toml::Value::String(s)) if s == "test" => Environment::Test,
        Some(other) => {
            let shown = match &other {
                toml::Value::String(s) => format!("{s:?}"),
                v => v.to_string(),
            };
            c.problem(format!("environment: {shown} is not \"live\" or \"test\""));
            Environment::Live
        }
    };
    let raw = c.section("listen", take("listen"));
    let listen = listen::validate(&mut c, raw);
    let raw = c.section("ops", take("ops"));
    let ops = listen::validate_ops(&mut c, raw, &listen);
    let raw = c.section("authz", take("authz"));
    let authz = authz::validate(&mut c, raw, &listen, &ops);
    let raw = c.section("upstream", take("upstream"));
    let upstream = upstream::validate(&mut c, raw, authz.mode.proxies());
    let mut raw = c.section::<store::RawStore>("store", take("store"));
    let propagation = store::validate_propagation(&mut c, &mut raw);
    let store = store::validate(&mut c, raw, getenv);
    let raw = c.section("keys", take("keys"));
    let keys = keys::validate(&mut c, raw, getenv);
    let raw = c.section("auth", take("auth"));
    let auth = auth::validate(&mut c, raw, getenv);
    let raw = c.section("log", take("log"));
    let log = log::validate(&mut c, raw);
    let raw = c.section("rate_limits", take("rate_limits"));
    let rate_limits = limits::validate(&mut c, raw, matches!(store, StoreConfig::Redis(_)));
    let raw: std::collections::BTreeMap<String, attributes::RawAttribute> =
        c.section("attributes", take("attributes"));
    let attributes: Vec<std::sync::Arc<AttributeConfig>> = attributes::validate(&mut c, raw)
        .into_iter()
        .map(std::sync::Arc::new)
        .collect();
    let raw_routes: Vec<routes::RawRoute> = match take("routes") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| c.section(&format!("routes[{i}]"), Some(v)))
            .collect(),
        Some(_) => {
            c.problem("routes: must be an array of tables ([[routes]])".into());
            Vec::new()
        }
    };
    let mut names = std::collections::HashSet::new();
    let routes: Vec<RouteConfig> = raw_routes
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let field = format!("routes[{i}]");
            let route = routes::validate(
                &mut c,
                &field,
                r,
                false,
                &auth.carriers,
                &rate_limits,
                &attributes,
            );
            if !names.insert(route.name.clone()) {
                c.problem(format!("{field}.name: {:?} is used twice", route.name));
            }
            route
        })
        .collect();
    let raw = c.section("default_route", take("default_route"));
    let default_route = routes::validate(
        &mut c,
        "default_route",
        raw,
        true,
        &auth.carriers,
        &rate_limits,
        &attributes,
    );
    let raw = c.section("paths", take("paths"));
    let paths = paths::validate(&mut c, raw);
    let raw = c.section("ip", take("ip"));
    let raw_ss = c.section("self_service", take("self_service"));
    let self_service = self_service::validate(&mut c, raw_ss);
    let mut routes = routes;
    if let Some(ss) = &self_service {
        if routes.iter().any(|r| &*r.name == "self-service") {
            c.problem("routes: the name \"self-service\" is the self-service API's".into());
        }
        if let Some(route) = routes::self_service_route(&ss.path, &ss.scope, &auth.carriers) {
            routes.insert(0, route);
        }
    }
    for a in &attributes {
        for name in &a.routes {
            if !routes.iter().any(|r| *r.name == **name) && name != "default" {
                c.problem(format!(
                    "attributes.{}.routes: no route is named {name:?}",
                    a.name
                ));
            }
        }
    }
    let ip = ip::validate(&mut c, raw);
    let raw = c.section("admin", take("admin"));
    let admin = admin::validate(&mut c, raw, &listen, &ops, getenv);
    let raw = c.section("audit", take("audit"));
    let audit = audit::validate(&mut c, raw, &store);
    let mut errors = errors::validate(&mut c, take("errors"));
    errors.set_environment_labels(&keys.labels.live, &keys.labels.test);

    Config {
        environment,
        authz,
        listen,
        upstream,
        ops,
        store,
        propagation,
        keys,
        auth,
        log,
        policy: PolicyConfig {
            routes,
            default_route,
            ip,
            rate_limits,
            attributes,
            self_service,
            paths,
        },
        admin,
        audit,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
        assert!(
            c.policy
                .routes
                .iter()
                .any(|r| r.report_only.contains(RuleKind::Scope))
        );
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
    fn durations_beyond_ten_years_are_refused() {
        let text = "[upstream]\nurl = \"http://127.0.0.1:3000\"\nresponse_timeout = 9223372036854775807\n\
                    [listen]\nidle_timeout = \"11years\"\n";
        let err = load(text).unwrap_err();
        let all = err.problems.join("\n");
        assert!(
            all.contains("upstream.response_timeout: at most 10 years"),
            "{all}"
        );
        assert!(
            all.contains("listen.idle_timeout: at most 10 years"),
            "{all}"
        );
        let ok = "[upstream]\nurl = \"http://127.0.0.1:3000\"\nresponse_timeout = \"3650days\"\n";
        assert!(load(ok).is_ok());
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
    fn env_problems_name_the_variable_and_files_are_relative_to_the_config() {
        let vars = vec![(
            "KEYGATE__LISTEN__IDLE_TIMEOUT".to_owned(),
            "soon".to_owned(),
        )];
        let err = Config::from_toml("[upstream]\nurl = \"http://127.0.0.1:1\"\n", vars, |_| None)
            .err()
            .map(|e| e.problems)
            .unwrap_or_default();
        assert_eq!(err.len(), 1, "{err:?}");
        assert!(
            err[0].starts_with("listen.idle_timeout: \"soon\""),
            "{err:?}"
        );
        assert!(
            err[0].ends_with("(from the environment variable KEYGATE__LISTEN__IDLE_TIMEOUT)"),
            "{err:?}"
        );

        let text = "[upstream]\nurl = \"http://127.0.0.1:1\"\n[store]\npath = \"data/keys.json\"\n[audit]\nfile = \"/var/log/a.jsonl\"\n";
        let c = Config::from_toml_in(text, Some(Path::new("/etc/keygate")), Vec::new(), |_| None)
            .unwrap();
        assert!(
            matches!(&c.store, StoreConfig::File { path, .. } if path == Path::new("/etc/keygate/data/keys.json"))
        );
        assert_eq!(c.audit.file.as_deref(), Some(Path::new("/var/log/a.jsonl")));
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
}
