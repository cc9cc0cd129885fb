//! `keygate dev`: a zero-config trial. Starts a built-in echo upstream (it answers with what it
//! received, so a user sees exactly what an upstream behind keygate gets), the proxy in front of
//! it with a temporary store, mints a test key and prints `curl` commands to try.

pub mod echo;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;

use crate::config::Config;
use crate::key::{Environment, KeyType};
use crate::manage::KeyTool;
use crate::server::Server;
use crate::store::NewRecord;

pub async fn run(listen: SocketAddr, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("keygate-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(&dir, listen, shutdown).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(
    dir: &std::path::Path,
    listen: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let echo = echo::spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .context("starting the echo upstream")?;
    let store_path = dir.join("keys.json");
    let toml = format!(
        "environment = \"test\"\n\
         [listen]\naddress = \"{listen}\"\ndrain_timeout = \"2s\"\n\
         [upstream]\nurl = \"http://{echo}\"\n\
         [ops]\naddress = \"127.0.0.1:0\"\n\
         [store]\npath = {path:?}\n\
         [log]\nformat = \"text\"\n",
        path = store_path.display().to_string(),
    );
    let config =
        Config::from_toml(&toml, Vec::new(), |_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::telemetry::init_logging(&config.log);

    let proxy_listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen}; pick another with --listen 127.0.0.1:PORT")
        })?;
    let ops_listener = tokio::net::TcpListener::bind(config.ops.address).await?;
    let (addr, ops) = (proxy_listener.local_addr()?, ops_listener.local_addr()?);
    let proxy = Server::new(&config)?;

    let tool = KeyTool::with_store(proxy.store(), &config)?;
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

    println!(
        "\nkeygate dev is running.\n\n\
         proxy:     http://{addr}   (forwards to a built-in echo upstream at http://{echo})\n\
         ops:       http://{ops}/healthz  /readyz  /metrics\n\
         key store: {}\n\
         test key:  {} ({}…, owner {})\n\n\
         Try it:\n\n  \
         # 200: the echo shows what the upstream received (identity headers, no key)\n  \
         curl -s http://{addr}/v1/payments?limit=3 -H 'Authorization: Bearer {}'\n\n  \
         # 401: no key\n  \
         curl -s http://{addr}/v1/payments\n\n\
         Manage keys in another terminal:\n  \
         KEYGATE__UPSTREAM__URL=http://{echo} KEYGATE__STORE__PATH={} keygate keys --config /dev/null list\n\n\
         Ctrl-C stops it and deletes the temporary store.\n",
        store_path.display(),
        rec.id,
        rec.display_prefix,
        rec.owner,
        key.key,
        store_path.display(),
    );
    proxy.serve(proxy_listener, ops_listener, shutdown).await
}
