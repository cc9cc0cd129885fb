//! The `keygate` binary: parses the command line and calls into the library. Nothing else.

// `run` awaits every command's future (serve, keys, store migrate), nested deep.
#![recursion_limit = "256"]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use keygate::config::Config;
use keygate::manage::command::{self as keys, KeysCommand};

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
    #[arg(
        long,
        short,
        env = "KEYGATE_CONFIG",
        default_value = "sidecar.toml",
        global = true
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Run the proxy.
    Serve(ConfigArg),
    /// Validate the configuration and exit (0 = valid, 2 = invalid).
    CheckConfig(ConfigArg),
    /// Write a minimal, loopback-bound configuration file to start from.
    Init {
        /// Where to write it.
        #[arg(long, short, default_value = "sidecar.toml")]
        config: PathBuf,
        /// The API keygate protects.
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        upstream: String,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Zero-config trial: a built-in echo upstream, a temporary store and a test key.
    Dev {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Put the trial in front of your own API (e.g. `http://127.0.0.1:3000`) instead of
        /// the built-in echo upstream.
        #[arg(long)]
        upstream: Option<String>,
        /// Run a shipped seed profile and show its contract: zentra, zendfi, zaropay, zynta.
        #[arg(long, value_parser = parse_profile)]
        profile: Option<&'static keygate::dev::Profile>,
    },
    /// Manage keys: in the configured store, or through a running instance's admin API.
    Keys {
        #[command(flatten)]
        config: ConfigArg,
        /// Talk to this admin API (e.g. `http://127.0.0.1:9091`) instead of the store; the
        /// token comes from `KEYGATE_ADMIN_TOKEN`.
        #[arg(long, env = "KEYGATE_ADMIN_URL", global = true)]
        admin_url: Option<String>,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Check a running instance's ops endpoint (for container health checks, where no curl
    /// exists): exit 0 if it answers 200.
    Probe {
        /// e.g. `http://127.0.0.1:9090/readyz`
        #[arg(default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
    /// The audit trail.
    Audit {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The key store itself.
    Store {
        #[command(flatten)]
        config: ConfigArg,
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Move a single-slot Redis store (releases before sharding) to the sharded layout while
    /// the fleet keeps serving; run after every replica runs this release. Resumable.
    Migrate {
        /// Shards to create (default: store.shards, 256).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4096))]
        shards: Option<u16>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the stored trail (exit 1 if it was tampered with).
    Verify,
}

/// mimalloc: the request path allocates small, short-lived buffers on every request, where
/// glibc's allocator showed up at ~8% of CPU in profiles (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit code for an invalid configuration.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match keygate::server::runtime() {
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
        Command::Init {
            config,
            upstream,
            force,
        } => keygate::dev::init::write_config(&config, &upstream, force),
        Command::Serve(a) => match load_config(&a.config) {
            Ok(cfg) => {
                keygate::server::run(cfg, &a.config, keygate::server::shutdown_signal()).await
            }
            Err(code) => return code,
        },
        Command::Dev {
            listen,
            upstream,
            profile,
        } => {
            let trial = keygate::dev::Trial {
                listen,
                upstream,
                profile,
            };
            keygate::dev::run(trial, keygate::server::shutdown_signal()).await
        }
        Command::Keys {
            admin_url: Some(url),
            command,
            ..
        } => keys::run_remote(&url, command).await,
        Command::Keys {
            config,
            admin_url: None,
            command,
        } => match load_config(&config.config) {
            Ok(cfg) => keys::run_on_store(&cfg, command).await,
            Err(code) => return code,
        },
        Command::Probe { url } => return exit(keygate::proxy::probe(&url).await),
        Command::Audit {
            config,
            command: AuditCommand::Verify,
        } => match load_config(&config.config) {
            Ok(cfg) => return exit(keygate::audit::verify_trail(&cfg).await),
            Err(code) => return code,
        },
        Command::Store {
            config,
            command: StoreCommand::Migrate { shards },
        } => match load_config(&config.config) {
            Ok(cfg) => return exit(keygate::store::run_migrate(&cfg.store, shards).await),
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

fn parse_profile(name: &str) -> Result<&'static keygate::dev::Profile, String> {
    keygate::dev::Profile::named(name).ok_or_else(|| {
        let names: Vec<&str> = keygate::dev::PROFILES.iter().map(|p| p.name).collect();
        format!("no profile {name:?}; one of {}", names.join(", "))
    })
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprint!("{}: {e}", path.display());
        ExitCode::from(EXIT_CONFIG)
    })
}
