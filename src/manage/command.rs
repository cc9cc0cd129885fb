//! The `keygate keys …` commands: their arguments (clap) and what they do — on the configured
//! store directly (the actor is `cli:$USER`), or through a running instance's admin API
//! (`--admin-url`). Both answer with the admin API's JSON shapes, so output is rendered one way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;

use super::args::{
    EnvArg, StateArg, TypeArg, parse_meta, parse_net_arg, parse_rate, parse_restriction,
};
use super::remote as admin_client;
use super::render::{render_detail, render_new_key, render_table};
use super::{ImportOutcome, KeyTool, read_import};
use crate::config::Config;
use crate::key::Environment;
use crate::store::{KeyPatch, KeyRateLimit, NewRecord};
use crate::time::Timestamp;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints it once.
    Create {
        /// Who the key belongs to (an account or customer id).
        #[arg(long)]
        owner: String,
        /// The key's environment; default: the one the configured instance serves.
        #[arg(long, value_enum)]
        env: Option<EnvArg>,
        /// `secret` (server side) or `publishable` (safe in a browser or app).
        #[arg(long = "type", value_enum, default_value = "secret")]
        key_type: TypeArg,
        /// A label for people, e.g. `billing-prod`.
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated scopes, e.g. `payments:read,payments:write`.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, e.g. `30d`, `12h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        /// Free metadata, `key=value`; repeatable.
        #[arg(long = "meta", value_parser = parse_meta)]
        metadata: Vec<(String, String)>,
        /// Client addresses allowed to use the key (IP or CIDR); repeatable. Default: any.
        #[arg(long = "allow-ip", value_parser = parse_net_arg)]
        allow_ip: Vec<ipnet::IpNet>,
        /// Allowed values of a request attribute (`[attributes.<name>]`), e.g.
        /// `country=NG,KE`; repeatable.
        #[arg(long = "restrict", value_parser = parse_restriction)]
        restrict: Vec<(String, Vec<String>)>,
        /// A rate-limit tier from `[rate_limits.tiers]`, e.g. `pro`.
        #[arg(long, conflicts_with = "rate_limit")]
        tier: Option<String>,
        /// The key's own rate limit, e.g. `100/1m`.
        #[arg(long = "rate-limit", value_parser = parse_rate)]
        rate_limit: Option<(u64, Duration)>,
        /// Print JSON (the admin API's shapes) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List keys (metadata only).
    List {
        /// Only this owner's keys.
        #[arg(long)]
        owner: Option<String>,
        /// Only keys of this environment.
        #[arg(long, value_enum)]
        env: Option<EnvArg>,
        /// Only keys in this state.
        #[arg(long, value_enum)]
        state: Option<StateArg>,
        /// Print JSON (the admin API's shapes) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one key's metadata.
    Show {
        /// The key's id (`key_…`).
        id: String,
        /// Print JSON (the admin API's shapes) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a key's name, scopes, IP allowlist, rate limit or expiry.
    Update {
        /// The key's id (`key_…`).
        id: String,
        /// A label for people, e.g. `billing-prod`.
        #[arg(long)]
        name: Option<String>,
        /// Replaces the scopes (comma-separated).
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        /// Replaces the IP allowlist; repeatable.
        #[arg(long = "allow-ip", value_parser = parse_net_arg)]
        allow_ip: Option<Vec<ipnet::IpNet>>,
        /// Replaces the attribute restrictions (`country=NG,KE`; repeatable).
        #[arg(long = "restrict", value_parser = parse_restriction)]
        restrict: Option<Vec<(String, Vec<String>)>>,
        /// Lifts every attribute restriction.
        #[arg(long, conflicts_with = "restrict")]
        no_restrictions: bool,
        /// A rate-limit tier from `[rate_limits.tiers]`, e.g. `pro`.
        #[arg(long, conflicts_with = "rate_limit")]
        tier: Option<String>,
        /// The key's own rate limit, e.g. `100/1m`.
        #[arg(long = "rate-limit", value_parser = parse_rate)]
        rate_limit: Option<(u64, Duration)>,
        /// New lifetime from now, e.g. `30d`.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "no_expiry")]
        expires_in: Option<Duration>,
        /// Remove the expiry.
        #[arg(long)]
        no_expiry: bool,
        /// Print JSON (the admin API's shapes) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Issue a successor and retire the key (at once, or after --grace).
    Rotate {
        /// The key's id (`key_…`).
        id: String,
        /// Keep the old key working this long, e.g. `1h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<Duration>,
        /// Print JSON (the admin API's shapes) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key for good.
    Revoke {
        /// The key's id (`key_…`).
        id: String,
        /// Print JSON (the admin API's shapes) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Request counts of the last 24 hours (admin API only: counts live in the proxy).
    Usage { id: String },
    /// Import existing plaintext keys (hashed on the way in; the plaintext is not kept).
    /// JSON lines, or CSV with a header `key,owner,scopes,env,type,name`. Store only.
    Import {
        /// The file to import.
        file: PathBuf,
        /// The file is CSV (default: JSON lines).
        #[arg(long)]
        csv: bool,
    },
}

/// Runs a `keys` command against a running instance's admin API.
pub async fn run_remote(admin_url: &str, command: KeysCommand) -> anyhow::Result<()> {
    let client = admin_client::AdminClient::from_env(admin_url)?;
    keys(&Backend::Admin(client), command).await
}

/// Where `keys …` commands go: the store directly, or a running instance's admin API. Both
/// answer with the admin API's JSON shapes, so output is rendered one way.
enum Backend {
    Store(KeyTool),
    Admin(admin_client::AdminClient),
}

impl Backend {
    /// The environment keys are created in when none is given: the configured instance's (the
    /// admin API applies its own when the field is absent).
    fn environment(&self) -> Environment {
        match self {
            Backend::Store(tool) => tool.environment(),
            Backend::Admin(_) => Environment::Live,
        }
    }
}

/// Runs a `keys` command on the configured store.
pub async fn run_on_store(cfg: &Config, command: KeysCommand) -> anyhow::Result<()> {
    // Reading commands never create a store: a missing file is most likely a wrong --config.
    let reads_only = matches!(
        command,
        KeysCommand::List { .. } | KeysCommand::Show { .. } | KeysCommand::Usage { .. }
    );
    if let crate::config::StoreConfig::File { path, .. } = &cfg.store
        && reads_only
        && !path.exists()
    {
        anyhow::bail!(
            "no key store at {}: nothing to read (it is created by `keygate serve` or the \
             first `keys create`; relative paths are taken from the config file's folder)",
            path.display()
        );
    }
    let store = crate::store::Store::open(&cfg.store)?;
    let metrics = std::sync::Arc::new(crate::telemetry::Metrics::default());
    let audit = crate::audit::Audit::start(&cfg.audit, &store, metrics);
    let tool = KeyTool::with_store(store, cfg)?.with_audit(std::sync::Arc::clone(&audit));
    let result = match command {
        KeysCommand::Import { file, csv } => import(&tool, &file, csv).await,
        command => keys(&Backend::Store(tool), command).await,
    };
    audit.drain().await;
    result
}

fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

async fn import(tool: &KeyTool, file: &Path, csv: bool) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let rows = read_import(&text, csv).map_err(anyhow::Error::msg)?;
    let outcomes = tool.import(rows, &cli_actor()).await;
    let mut failed = 0;
    for o in &outcomes {
        match o {
            ImportOutcome::Imported { line, id } => println!("row {line}: imported as {id}"),
            ImportOutcome::AlreadyPresent { line } => println!("row {line}: already in the store"),
            ImportOutcome::Failed { line, error } => {
                failed += 1;
                println!("row {line}: FAILED: {error}");
            }
        }
    }
    if outcomes
        .iter()
        .any(|o| matches!(o, ImportOutcome::Imported { .. }))
    {
        println!("Proxies: {}.", tool.propagate().await.describe());
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} rows failed", outcomes.len());
    }
    Ok(())
}

/// `v` with how far the change has reached the proxies serving the store.
async fn with_propagation(tool: &KeyTool, mut v: serde_json::Value) -> serde_json::Value {
    v["propagated"] = serde_json::to_value(tool.propagate().await).unwrap_or_default();
    v
}

/// Says plainly whether the running proxies have the change (never a silent window).
fn print_propagation(v: &serde_json::Value) {
    if let Ok(p) = serde_json::from_value::<crate::store::Propagation>(v["propagated"].clone()) {
        println!("Proxies: {}.", p.describe());
    }
}

fn print_view(view: &serde_json::Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(view).unwrap_or_default());
    } else {
        print!("{}", render_table(std::slice::from_ref(view)));
    }
}

fn rate_limit_arg(tier: Option<String>, rate: Option<(u64, Duration)>) -> Option<KeyRateLimit> {
    match (tier, rate) {
        (Some(tier), _) => Some(KeyRateLimit::Tier { tier }),
        (None, Some((limit, window))) => Some(KeyRateLimit::Explicit {
            limit,
            window_secs: window.as_secs(),
        }),
        (None, None) => None,
    }
}

async fn keys(backend: &Backend, command: KeysCommand) -> anyhow::Result<()> {
    let now = Timestamp::now();
    let actor = cli_actor();
    let view = |r: &crate::store::KeyRecord| serde_json::to_value(r.view(now)).unwrap_or_default();
    match command {
        KeysCommand::Create {
            owner,
            env,
            key_type,
            name,
            scopes,
            expires_in,
            metadata,
            allow_ip,
            restrict,
            tier,
            rate_limit,
            json,
        } => {
            let req = NewRecord {
                name,
                scopes: scopes.into_iter().filter(|s| !s.is_empty()).collect(),
                expires_in,
                metadata: metadata.into_iter().collect::<BTreeMap<_, _>>(),
                ip_allowlist: allow_ip,
                rate_limit: rate_limit_arg(tier, rate_limit),
                restrictions: restrict.into_iter().collect(),
                ..NewRecord::new(
                    owner,
                    env.map_or(backend.environment(), Environment::from),
                    key_type.into(),
                )
            };
            let out = match backend {
                Backend::Store(tool) => {
                    let (key, rec) = tool.create(req, &actor).await?;
                    let propagated = tool.propagate().await;
                    serde_json::json!({ "key": key.key, "record": view(&rec), "propagated": propagated })
                }
                Backend::Admin(c) => {
                    let body = serde_json::json!({
                        "owner": req.owner, "environment": env.map(Environment::from), "type": req.key_type,
                        "name": req.name, "scopes": req.scopes,
                        "expires_in": req.expires_in.map(|d| d.as_secs()),
                        "metadata": req.metadata, "ip_allowlist": req.ip_allowlist,
                        "rate_limit": req.rate_limit, "restrictions": req.restrictions,
                    });
                    c.call("POST", "/v1/keys", Some(body)).await?
                }
            };
            if out["record"]["scopes"]
                .as_array()
                .is_some_and(Vec::is_empty)
            {
                eprintln!(
                    "warning: the key has no scopes, so it passes only routes that need none \
                     (give it --scopes, or set keys.default_scopes)"
                );
            }
            if json {
                println!("{out}");
            } else {
                print!(
                    "{}",
                    render_new_key(
                        out["key"].as_str().unwrap_or_default(),
                        &out["record"],
                        "Created"
                    )
                );
                print_propagation(&out);
            }
        }
        KeysCommand::List {
            owner,
            env,
            state,
            json,
        } => {
            let views: Vec<serde_json::Value> = match backend {
                Backend::Store(tool) => tool
                    .list(owner.as_deref())
                    .await?
                    .iter()
                    .filter(|r| env.is_none_or(|e| r.environment == e.into()))
                    .filter(|r| state.is_none_or(|s| r.state(now).as_str() == s.as_str()))
                    .map(|r| view(r))
                    .collect(),
                Backend::Admin(c) => {
                    let mut query = Vec::new();
                    if let Some(o) = &owner {
                        query.push(format!("owner={}", admin_client::encode(o)));
                    }
                    if let Some(e) = env {
                        query.push(format!("env={}", Environment::from(e)));
                    }
                    if let Some(s) = state {
                        query.push(format!("state={}", s.as_str()));
                    }
                    c.list_all(&query).await?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                print!("{}", render_table(&views));
            }
        }
        KeysCommand::Show { id, json } => {
            let v = match backend {
                Backend::Store(tool) => view(&*tool.get(&id).await?),
                Backend::Admin(c) => {
                    c.call(
                        "GET",
                        &format!("/v1/keys/{}", admin_client::encode(&id)),
                        None,
                    )
                    .await?
                }
            };
            if json {
                print_view(&v, true);
            } else {
                print!("{}", render_detail(&v));
            }
        }
        KeysCommand::Update {
            id,
            name,
            scopes,
            allow_ip,
            restrict,
            no_restrictions,
            tier,
            rate_limit,
            expires_in,
            no_expiry,
            json,
        } => {
            let patch = KeyPatch {
                name: name.map(Some),
                scopes,
                ip_allowlist: allow_ip,
                rate_limit: rate_limit_arg(tier, rate_limit).map(Some),
                expires_at: match (expires_in, no_expiry) {
                    (Some(d), _) => Some(Some(now.saturating_add(d))),
                    (None, true) => Some(None),
                    (None, false) => None,
                },
                metadata: None,
                restrictions: match (restrict, no_restrictions) {
                    (Some(r), _) => Some(r.into_iter().collect()),
                    (None, true) => Some(BTreeMap::new()),
                    (None, false) => None,
                },
            };
            let v = match backend {
                Backend::Store(tool) => {
                    let v = view(&tool.update(&id, patch, &actor).await?);
                    with_propagation(tool, v).await
                }
                Backend::Admin(c) => {
                    let mut body = serde_json::Map::new();
                    if let Some(n) = &patch.name {
                        body.insert("name".into(), serde_json::json!(n));
                    }
                    if let Some(s) = &patch.scopes {
                        body.insert("scopes".into(), serde_json::json!(s));
                    }
                    if let Some(a) = &patch.ip_allowlist {
                        body.insert("ip_allowlist".into(), serde_json::json!(a));
                    }
                    if let Some(r) = &patch.rate_limit {
                        body.insert("rate_limit".into(), serde_json::json!(r));
                    }
                    if let Some(e) = &patch.expires_at {
                        body.insert("expires_at".into(), serde_json::json!(e));
                    }
                    if let Some(r) = &patch.restrictions {
                        body.insert("restrictions".into(), serde_json::json!(r));
                    }
                    c.call(
                        "PATCH",
                        &format!("/v1/keys/{}", admin_client::encode(&id)),
                        Some(body.into()),
                    )
                    .await?
                }
            };
            print_view(&v, json);
            if !json {
                print_propagation(&v);
            }
        }
        KeysCommand::Rotate { id, grace, json } => {
            let out = match backend {
                Backend::Store(tool) => {
                    let (key, new, old) = tool.rotate(&id, grace, &actor).await?;
                    let propagated = tool.propagate().await;
                    serde_json::json!({
                        "key": key.key, "record": view(&new), "previous": view(&old),
                        "propagated": propagated,
                    })
                }
                Backend::Admin(c) => {
                    let body = serde_json::json!({ "grace_period": grace.map(|g| g.as_secs()) });
                    c.call(
                        "POST",
                        &format!("/v1/keys/{}/rotate", admin_client::encode(&id)),
                        Some(body),
                    )
                    .await?
                }
            };
            if json {
                println!("{out}");
            } else {
                print!(
                    "{}",
                    render_new_key(
                        out["key"].as_str().unwrap_or_default(),
                        &out["record"],
                        "Rotated to"
                    )
                );
                let old = &out["previous"];
                let old_id = old["id"].as_str().unwrap_or_default();
                match old["expires_at"]
                    .as_str()
                    .filter(|_| old["revoked_at"].is_null())
                {
                    Some(t) => println!("{old_id} keeps working until {t}."),
                    None => println!("{old_id} is revoked."),
                }
                print_propagation(&out);
            }
        }
        KeysCommand::Revoke { id, json } => {
            // Revoking twice changes nothing; say so rather than "Revoked" again.
            let before = match backend {
                Backend::Store(tool) => tool.get(&id).await.ok().map(|r| view(&r)),
                Backend::Admin(c) => c
                    .call(
                        "GET",
                        &format!("/v1/keys/{}", admin_client::encode(&id)),
                        None,
                    )
                    .await
                    .ok(),
            };
            let already = before
                .as_ref()
                .and_then(|b| b["revoked_at"].as_str().map(str::to_owned));
            let v = match backend {
                Backend::Store(tool) => {
                    let v = view(&tool.revoke(&id, &actor).await?);
                    with_propagation(tool, v).await
                }
                Backend::Admin(c) => {
                    c.call(
                        "POST",
                        &format!("/v1/keys/{}/revoke", admin_client::encode(&id)),
                        None,
                    )
                    .await?
                }
            };
            if json {
                print_view(&v, true);
            } else if let Some(at) = already {
                println!(
                    "{} ({}) of {} was already revoked (at {at}); nothing changed.",
                    v["id"].as_str().unwrap_or_default(),
                    v["display_prefix"].as_str().unwrap_or_default(),
                    v["owner"].as_str().unwrap_or_default()
                );
            } else {
                println!(
                    "Revoked {} ({}) of {}.",
                    v["id"].as_str().unwrap_or_default(),
                    v["display_prefix"].as_str().unwrap_or_default(),
                    v["owner"].as_str().unwrap_or_default()
                );
                print_propagation(&v);
            }
        }
        KeysCommand::Usage { id } => match backend {
            Backend::Admin(c) => {
                let v = c
                    .call(
                        "GET",
                        &format!("/v1/keys/{}/usage", admin_client::encode(&id)),
                        None,
                    )
                    .await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
            Backend::Store(_) => anyhow::bail!(
                "usage counts live in the running proxy: use --admin-url (and KEYGATE_ADMIN_TOKEN)"
            ),
        },
        KeysCommand::Import { .. } => anyhow::bail!(
            "import writes to the store: run it without --admin-url, where the store is reachable"
        ),
    }
    Ok(())
}
