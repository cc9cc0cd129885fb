//! `keygate dev`: a zero-config trial. Starts a built-in echo upstream (it answers with what it
//! received, so a user sees exactly what an upstream behind keygate gets) — or points at the
//! user's own API with `--upstream` — puts the proxy in front of it with a temporary store and
//! the admin API, mints keys and prints `curl` commands to try. `--profile` runs one of the
//! shipped seed profiles (`deploy/profiles/*.toml`) and shows its contract: a 200, its 401, its
//! 403s and its 429.

pub mod echo;
pub mod init;
mod profiles;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;

use crate::admin::AdminListener;
use crate::config::Config;
use crate::key::{Environment, KeyType};
use crate::manage::KeyTool;
use crate::server::Server;
use crate::store::NewRecord;
pub use profiles::{PROFILES, Profile};

/// What `keygate dev` runs.
pub struct Trial {
    pub listen: SocketAddr,
    /// `http://host:port` of the user's API; `None`: the built-in echo upstream.
    pub upstream: Option<String>,
    pub profile: Option<&'static Profile>,
}

pub async fn run(trial: Trial, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("keygate-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&dir, trial, shutdown).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(
    dir: &std::path::Path,
    trial: Trial,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let upstream = match &trial.upstream {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let echo = echo::spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .context("starting the echo upstream")?;
            format!("http://{echo}")
        }
    };
    let store_path = dir.join("keys.json");
    let base = trial.profile.map_or(DEFAULT_TRIAL, |p| p.config);
    // The profile as shipped, with what a trial needs instead of its listeners and store.
    let overrides = [
        ("LISTEN__ADDRESS", format!("\"{}\"", trial.listen)),
        ("LISTEN__DRAIN_TIMEOUT", "\"2s\"".to_owned()),
        ("UPSTREAM__URL", format!("\"{upstream}\"")),
        ("OPS__ADDRESS", "\"127.0.0.1:0\"".to_owned()),
        ("ADMIN__ADDRESS", "\"127.0.0.1:0\"".to_owned()),
        (
            "STORE__PATH",
            format!("{:?}", store_path.display().to_string()),
        ),
        ("STORE__RELOAD_INTERVAL", "\"250ms\"".to_owned()),
        ("LOG__FORMAT", "\"text\"".to_owned()),
    ]
    .map(|(k, v)| (format!("KEYGATE__{k}"), v));
    let admin_token = crate::key::random_base62(32);
    let config = Config::from_toml(base, overrides, |name| {
        (name == "KEYGATE_ADMIN_TOKENS").then(|| format!("dev:{admin_token}").into())
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::telemetry::init_logging(&config.log);

    let proxy_listener = tokio::net::TcpListener::bind(trial.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (proxy); pick another with --listen 127.0.0.1:PORT",
                trial.listen
            )
        })?;
    let ops_listener = tokio::net::TcpListener::bind(config.ops.address).await?;
    let admin_listener = AdminListener::bind(&config.admin.address).await?;
    let (addr, ops) = (proxy_listener.local_addr()?, ops_listener.local_addr()?);
    let admin = admin_listener.describe();
    let server = Server::new(&config)?.with_admin_listener(admin_listener);
    let tool = KeyTool::with_store(server.store(), &config)?;

    let url = format!("http://{addr}");
    let tries = match trial.profile {
        Some(p) => p.demo(&tool, &url, config.environment).await?,
        None => default_demo(&tool, &url).await?,
    };
    let upstream_line = match &trial.upstream {
        Some(u) => format!("forwards to your API at {u}"),
        None => format!("forwards to a built-in echo upstream at {upstream}"),
    };
    let title = trial.profile.map_or("keygate dev".to_owned(), |p| {
        format!("keygate dev --profile {}", p.name)
    });
    println!(
        "\n{title} is running.\n\n\
         proxy:     {url}   ({upstream_line})\n\
         ops:       http://{ops}/healthz  /readyz  /metrics\n\
         admin API: http://{admin}   (token: {admin_token})\n\
         key store: {}\n\n\
         Try it:\n\n{tries}\n\
         The admin API, from another terminal:\n  \
         curl -s http://{admin}/v1/keys -H 'Authorization: Bearer {admin_token}'\n\
         or the CLI through it:\n  \
         KEYGATE_ADMIN_TOKEN={admin_token} keygate keys --admin-url http://{admin} list\n\n\
         Ctrl-C stops it and deletes the temporary store.\n",
        store_path.display(),
    );
    server.serve(proxy_listener, ops_listener, shutdown).await
}

/// The trial without a profile: keygate's own defaults, a test-mode instance.
const DEFAULT_TRIAL: &str = "environment = \"test\"\n[upstream]\nurl = \"http://127.0.0.1:1\"\n";

async fn default_demo(tool: &KeyTool, url: &str) -> anyhow::Result<String> {
    let (key, rec) = tool
        .create(
            NewRecord {
                name: Some("keygate dev".into()),
                scopes: vec!["all".into()],
                ..NewRecord::new("acct_dev", Environment::Test, KeyType::Secret)
            },
            "dev",
        )
        .await?;
    Ok(format!(
        "  # a test key: {} ({}…, owner {})\n\n  \
         # 200: the upstream received the request with identity headers, without the key\n  \
         curl -s {url}/v1/payments?limit=3 -H 'Authorization: Bearer {}'\n\n  \
         # 401: no key\n  \
         curl -s {url}/v1/payments\n",
        rec.id, rec.display_prefix, rec.owner, key.key
    ))
}
