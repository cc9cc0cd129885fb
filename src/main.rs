//! The `keygate` binary: parses the command line and calls into the library. Nothing else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use keygate::cli::{KeyTool, render_json_new_key, render_new_key, render_table};
use keygate::config::Config;
use keygate::key::{Environment, KeyType};
use keygate::proxy::Proxy;
use keygate::store::{KeyRateLimit, NewRecord};
use keygate::time::Timestamp;

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "An API-key authenticating reverse proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// Path to the configuration file.
    #[arg(long, short, env = "KEYGATE_CONFIG", default_value = "sidecar.toml")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(ConfigArg),
    /// Validate the configuration and exit (0 = valid, 2 = invalid).
    CheckConfig(ConfigArg),
    /// Zero-config trial: a built-in echo upstream, a temporary store and a test key.
    Dev {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Manage keys in the configured store.
    Keys {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key; prints it once.
    Create {
        #[arg(long)]
        owner: String,
        #[arg(long, value_enum, default_value = "live")]
        env: EnvArg,
        #[arg(long = "type", value_enum, default_value = "secret")]
        key_type: TypeArg,
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
        /// A rate-limit tier from `[rate_limits.tiers]`, e.g. `pro`.
        #[arg(long, conflicts_with = "rate_limit")]
        tier: Option<String>,
        /// The key's own rate limit, e.g. `100/1m`.
        #[arg(long = "rate-limit", value_parser = parse_rate)]
        rate_limit: Option<(u64, Duration)>,
        #[arg(long)]
        json: bool,
    },
    /// List keys (metadata only).
    List {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one key's metadata.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Issue a successor and retire the key (at once, or after --grace).
    Rotate {
        id: String,
        /// Keep the old key working this long, e.g. `1h`.
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<Duration>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key for good.
    Revoke {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum EnvArg {
    Live,
    Test,
}

#[derive(Clone, Copy, ValueEnum)]
enum TypeArg {
    Secret,
    Publishable,
}

fn parse_net_arg(s: &str) -> Result<ipnet::IpNet, String> {
    keygate::config::parse_net(s).ok_or_else(|| format!("{s:?} is not an IP address or CIDR"))
}

fn parse_rate(s: &str) -> Result<(u64, Duration), String> {
    let (n, w) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not LIMIT/WINDOW, e.g. 100/1m"))?;
    let n: u64 = n
        .trim()
        .parse()
        .map_err(|_| format!("{n:?} is not a number"))?;
    let w = humantime::parse_duration(w.trim()).map_err(|e| format!("{w:?}: {e}"))?;
    if n == 0 || w.as_secs() == 0 {
        return Err("limit and window (whole seconds) must be greater than zero".into());
    }
    Ok((n, w))
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// mimalloc: the request path allocates small, short-lived buffers on every request, where
/// glibc's allocator showed up at ~8% of CPU in profiles (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::CheckConfig(a) => {
            return match load_config(&a.config) {
                Ok(_) => {
                    println!("{}: ok", a.config.display());
                    ExitCode::SUCCESS
                }
                Err(code) => code,
            };
        }
        Command::Serve(a) => match load_config(&a.config) {
            Ok(cfg) => serve(cfg).await,
            Err(code) => return code,
        },
        Command::Dev { listen } => keygate::dev::run(listen, shutdown_signal()).await,
        Command::Keys { config, command } => match load_config(&config.config) {
            Ok(cfg) => keys(&cfg, command).await,
            Err(code) => return code,
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprint!("{}: {e}", path.display());
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    keygate::telemetry::init_logging(&cfg.log);
    let proxy_listener = tokio::net::TcpListener::bind(cfg.listen.address).await?;
    let ops_listener = tokio::net::TcpListener::bind(cfg.ops.address).await?;
    tracing::info!(
        listen = %proxy_listener.local_addr()?, ops = %ops_listener.local_addr()?,
        upstream = %cfg.upstream.url, environment = %cfg.environment, "keygate serving"
    );
    let proxy = Proxy::new(&cfg)?;
    proxy
        .serve(proxy_listener, ops_listener, shutdown_signal())
        .await
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn keys(cfg: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let tool = KeyTool::from_config(cfg)?;
    let now = Timestamp::now();
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
            tier,
            rate_limit,
            json,
        } => {
            let ip_allowlist = allow_ip;
            let rate_limit = match (tier, rate_limit) {
                (Some(tier), _) => Some(KeyRateLimit::Tier { tier }),
                (None, Some((limit, window))) => Some(KeyRateLimit::Explicit {
                    limit,
                    window_secs: window.as_secs(),
                }),
                (None, None) => None,
            };
            let req = NewRecord {
                key_type: match key_type {
                    TypeArg::Secret => KeyType::Secret,
                    TypeArg::Publishable => KeyType::Publishable,
                },
                environment: match env {
                    EnvArg::Live => Environment::Live,
                    EnvArg::Test => Environment::Test,
                },
                owner,
                name,
                scopes: scopes.into_iter().filter(|s| !s.is_empty()).collect(),
                expires_in,
                metadata: metadata.into_iter().collect::<BTreeMap<_, _>>(),
                ip_allowlist,
                rate_limit,
            };
            let (key, rec) = tool.create(req).await?;
            print!(
                "{}",
                if json {
                    render_json_new_key(&key, &rec) + "\n"
                } else {
                    render_new_key(&key, &rec, "Created")
                }
            );
        }
        KeysCommand::List { owner, json } => {
            let records = tool.list(owner.as_deref()).await?;
            if json {
                let views: Vec<_> = records.iter().map(|r| r.view(now)).collect();
                println!("{}", serde_json::to_string_pretty(&views)?);
            } else {
                print!("{}", render_table(&records));
            }
        }
        KeysCommand::Show { id, json } => {
            let rec = tool.get(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rec.view(now))?);
            } else {
                print!("{}", render_table(&[rec]));
            }
        }
        KeysCommand::Rotate { id, grace, json } => {
            let (key, new, old) = tool.rotate(&id, grace).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "key": key.key, "record": new.view(now), "previous": old.view(now) })
                );
            } else {
                print!("{}", render_new_key(&key, &new, "Rotated to"));
                match old.expires_at.filter(|_| old.revoked_at.is_none()) {
                    Some(t) => println!("{} keeps working until {t}.", old.id),
                    None => println!("{} is revoked.", old.id),
                }
            }
        }
        KeysCommand::Revoke { id, json } => {
            let rec = tool.revoke(&id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rec.view(now))?);
            } else {
                println!(
                    "Revoked {} ({}…) of {}.",
                    rec.id, rec.display_prefix, rec.owner
                );
            }
        }
    }
    Ok(())
}
