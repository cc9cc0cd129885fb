//! Listeners and lifecycle: builds the shared state from config, accepts connections on the
//! proxy and ops listeners (HTTP/1.1 and h2c prior knowledge), and shuts down gracefully:
//! stop accepting, report not-ready, let in-flight requests finish up to the drain timeout,
//! flush key usage.

pub mod headers;
mod ops;
mod pool;
pub mod proxy_protocol;
mod service;
mod tunnel;
mod upstream;

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin, AdminListener};
use crate::audit::Audit;
use crate::auth::{Verifier, VerifierSettings};
use crate::cli::KeyTool;
use crate::config::{Config, MethodOverride};
use crate::key::{KeyFormat, KeyHasher};
use crate::policy::Policy;
use crate::store::Store;
use crate::telemetry::Metrics;
use headers::{ConnInfo, HeaderPlan};
pub use service::{App, ProxyBody};

/// A configured proxy, ready to serve. Holds the background tasks (store watcher, invalidation
/// listener, usage flusher) for as long as it lives.
pub struct Proxy {
    app: Arc<App>,
    ops: Arc<ops::Ops>,
    draining: Arc<AtomicBool>,
    drain_timeout: Duration,
    header_read_timeout: Duration,
    proxy_protocol: bool,
    usage_interval: Duration,
    audit: Arc<Audit>,
    audit_interval: Duration,
    admin: Option<(Arc<Admin>, Option<AdminListener>)>,
    tls: Option<Arc<crate::tls::Listener>>,
    /// Reloaded on SIGHUP and when it changes on disk.
    config_file: Option<std::path::PathBuf>,
    background: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Opens the store and builds the request path. Must run inside a tokio runtime.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let store = Store::open(&config.store)?;
        let format = KeyFormat::new(&config.keys.labels).map_err(anyhow::Error::msg)?;
        let hasher = KeyHasher::new(config.keys.pepper.as_ref().map(|p| p.expose()));
        let metrics = Arc::new(Metrics::default());
        let settings = VerifierSettings {
            cache_ttl: config.auth.cache_ttl,
            stale_limit: config.auth.stale_limit,
            cache_max_entries: config.auth.cache_max_entries,
            negative_cache_ttl: config.auth.negative_cache_ttl,
            negative_cache_max_entries: config.auth.negative_cache_max_entries,
            argon2_concurrency: config.auth.argon2_concurrency,
            accept_legacy: config.keys.accept_legacy,
            retry_after: Duration::from_secs(2),
        };
        let verifier = Verifier::new(
            format,
            hasher,
            store.clone(),
            settings,
            Arc::clone(&metrics),
        );
        let mut background = vec![verifier.spawn_invalidation_listener()];
        background.extend(store.spawn_background(&config.store));
        let plan = HeaderPlan::new(
            &config.auth,
            &config.upstream.url,
            config.upstream.preserve_host,
        )
        .map_err(anyhow::Error::msg)?;
        let draining = Arc::new(AtomicBool::new(false));
        let policy = Policy::new(
            &config.policy,
            config.environment,
            &store,
            Arc::clone(&metrics),
        );
        let audit = Audit::start(&config.audit, &store, Arc::clone(&metrics));
        let tls = match &config.listen.tls {
            None => None,
            Some(t) => {
                let listener = crate::tls::Listener::new(t).map_err(anyhow::Error::msg)?;
                background.push(listener.spawn_reloader());
                Some(Arc::new(listener))
            }
        };
        let app = Arc::new(App {
            verifier: Arc::clone(&verifier),
            policy: arc_swap::ArcSwap::from_pointee(policy),
            honor_method_override: config.auth.method_override == MethodOverride::Honor,
            upstream: upstream::Upstream::new(&config.upstream).map_err(anyhow::Error::msg)?,
            plan,
            metrics: Arc::clone(&metrics),
            carriers: config.auth.carriers.clone(),
            max_key_length: config.keys.max_length,
            max_request_body: config.listen.max_request_body,
            audit: Arc::clone(&audit),
            access_log: config.log.access,
            allow_connect: config.listen.allow_connect,
            upgrades: config.listen.upgrades.clone(),
            tunnel_limits: tunnel::Limits {
                idle: config.listen.tunnel_idle_timeout,
                max_lifetime: config.listen.tunnel_max_lifetime,
            },
        });
        let admin = if config.admin.tokens.is_empty() {
            None
        } else {
            let tool = KeyTool::with_store(store.clone(), config)?;
            let admin = Admin::new(
                tool,
                Arc::clone(&audit),
                &config.admin,
                Arc::clone(&app),
                config.environment,
            );
            Some((Arc::new(admin), None))
        };
        let ops = Arc::new(ops::Ops {
            verifier,
            metrics,
            draining: Arc::clone(&draining),
        });
        Ok(Proxy {
            app,
            ops,
            draining,
            drain_timeout: config.listen.drain_timeout,
            header_read_timeout: config.listen.header_read_timeout,
            proxy_protocol: config.listen.proxy_protocol,
            usage_interval: config.auth.last_used_flush_interval,
            audit,
            audit_interval: config.audit.flush_interval,
            admin,
            tls,
            config_file: None,
            background,
        })
    }

    /// Whether admin tokens are configured (the admin API is off without them).
    pub fn admin_enabled(&self) -> bool {
        self.admin.is_some()
    }

    /// Reloads the route table, rate limits and IP rules from `path` on SIGHUP and whenever the
    /// file changes (polled every 2 s). An invalid new file is logged and the running
    /// configuration kept; open connections are never touched.
    pub fn with_config_file(mut self, path: std::path::PathBuf) -> Self {
        self.config_file = Some(path);
        self
    }

    /// Applies the policy part of `path` now. Returns the problems when the file is invalid.
    pub async fn reload_from(&self, path: &std::path::Path) -> Result<(), String> {
        reload(&self.app, path).await
    }

    /// Serves the admin API on `listener` (ignored when the admin API is off).
    pub fn with_admin_listener(mut self, listener: AdminListener) -> Self {
        if let Some((_, slot)) = &mut self.admin {
            *slot = Some(listener);
        }
        self
    }

    pub fn audit(&self) -> Arc<Audit> {
        Arc::clone(&self.audit)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.app.metrics)
    }

    /// The store this proxy reads; writes through it are visible to the proxy at once.
    pub fn store(&self) -> Store {
        self.app.verifier.store().clone()
    }

    pub fn verifier(&self) -> Arc<Verifier> {
        Arc::clone(&self.app.verifier)
    }

    /// Serves until `shutdown` resolves, then drains. Returns once every connection is closed
    /// or the drain timeout passed.
    pub async fn serve(
        mut self,
        proxy: TcpListener,
        ops: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            // Request heads over 64 KiB (or over 100 headers) are answered 431.
            .max_buf_size(64 * 1024)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(256);

        let verifier = Arc::clone(&self.app.verifier);
        self.background.push(every(self.usage_interval, move || {
            let verifier = Arc::clone(&verifier);
            async move { verifier.flush_usage().await }
        }));

        if let Some(path) = self.config_file.clone() {
            self.background
                .push(tokio::spawn(watch_config(Arc::clone(&self.app), path)));
        }

        let audit = Arc::clone(&self.audit);
        self.background.push(every(self.audit_interval, move || {
            let audit = Arc::clone(&audit);
            async move { audit.flush_aggregates().await }
        }));

        let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let admin_task = match self.admin.take() {
            Some((admin, Some(listener))) => {
                Some(tokio::spawn(admin::serve(listener, admin, async {
                    let _ = admin_stop_rx.await;
                })))
            }
            _ => None,
        };

        let app = Arc::clone(&self.app);
        self.background.push(tokio::spawn(async move {
            // In-process rate-limit counters that hold nothing any more are dropped.
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                app.policy.load().limiter().sweep();
            }
        }));

        let ops_graceful = GracefulShutdown::new();
        let (ops_stop_tx, ops_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ops_app = Arc::clone(&self.ops);
        let ops_task = tokio::spawn(accept_loop(
            ops,
            builder.clone(),
            ops_graceful,
            ops_stop_rx,
            None,
            None,
            move |_peer, _tls| {
                let ops_app = Arc::clone(&ops_app);
                service_fn(move |req| Arc::clone(&ops_app).handle(req))
            },
        ));

        let graceful = GracefulShutdown::new();
        let app = Arc::clone(&self.app);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let proxy_task = tokio::spawn(accept_loop(
            proxy,
            builder,
            graceful,
            stop_rx,
            self.proxy_protocol.then_some(self.header_read_timeout),
            self.tls.as_ref().map(|t| {
                (
                    Arc::clone(t),
                    self.header_read_timeout,
                    Arc::clone(&self.app.metrics),
                )
            }),
            move |peer, tls| {
                let app = Arc::clone(&app);
                let conn = ConnInfo::new(peer, tls);
                service_fn(move |req| Arc::clone(&app).handle(req, conn.clone()))
            },
        ));

        shutdown.await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        self.draining.store(true, Ordering::Relaxed);
        let _ = stop_tx.send(());
        match tokio::time::timeout(self.drain_timeout, proxy_task).await {
            Ok(_) => tracing::info!("drained"),
            Err(_) => {
                tracing::warn!(timeout = ?self.drain_timeout, "drain timeout passed; closing remaining connections")
            }
        }
        self.app.verifier.flush_usage().await;
        let _ = admin_stop_tx.send(());
        if let Some(t) = admin_task {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        self.audit.drain().await;
        let _ = ops_stop_tx.send(());
        let _ = tokio::time::timeout(Duration::from_secs(1), ops_task).await;
        for task in &self.background {
            task.abort();
        }
        Ok(())
    }
}

/// Runs `job` every `interval` (first after one interval), until the task is aborted.
fn every<F, Fut>(interval: Duration, job: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.tick().await;
        loop {
            tick.tick().await;
            job().await;
        }
    })
}

async fn reload(app: &App, path: &std::path::Path) -> Result<(), String> {
    // Reading and validating touch the disk (and TLS files): off the runtime threads.
    let owned = path.to_owned();
    let cfg = tokio::task::spawn_blocking(move || Config::load(&owned))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let next = app
        .policy
        .load()
        .reconfigured(&cfg.policy, app.verifier.store());
    app.policy.store(Arc::new(next));
    Ok(())
}

async fn watch_config(app: Arc<App>, path: std::path::PathBuf) {
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = stamp(&path);
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; watching the file only");
            None
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        let why = tokio::select! {
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => "SIGHUP",
            _ = tick.tick() => {
                let now = stamp(&path);
                if now == last { continue; }
                "file changed"
            }
        };
        last = stamp(&path);
        match reload(&app, &path).await {
            Ok(()) => tracing::info!(
                trigger = why,
                file = %path.display(),
                "configuration reloaded: routes, rate limits and IP rules (other settings apply at restart)"
            ),
            Err(e) => tracing::warn!(
                trigger = why,
                file = %path.display(),
                "new configuration rejected, keeping the running one: {e}"
            ),
        }
    }
}

/// Accepts connections until `stop`, then waits for open ones to finish (the caller bounds the
/// wait). Accept errors such as EMFILE are logged and retried, never fatal.
///
/// With `proxy_protocol` set, each connection must first send a PROXY protocol header within
/// that time; its address then stands in for the socket peer.
#[allow(clippy::too_many_arguments)]
async fn accept_loop<F, S, B>(
    listener: TcpListener,
    builder: auto::Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    proxy_protocol: Option<Duration>,
    tls: Option<(Arc<crate::tls::Listener>, Duration, Arc<Metrics>)>,
    make_service: F,
) where
    F: Fn(SocketAddr, bool) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let make_service = Arc::new(make_service);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Typically EMFILE: back off briefly instead of spinning or exiting.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (builder, watcher, make_service) = (builder.clone(), graceful.watcher(), Arc::clone(&make_service));
                let tls = tls.clone();
                tokio::spawn(async move {
                    let mut stream = stream;
                    let peer = match proxy_protocol {
                        None => peer,
                        Some(limit) => match tokio::time::timeout(limit, proxy_protocol::read_header(&mut stream)).await {
                            Ok(Ok(addr)) => addr.unwrap_or(peer),
                            Ok(Err(e)) => {
                                tracing::info!(error = %e, peer = %peer.ip(), "connection refused");
                                return;
                            }
                            Err(_) => {
                                tracing::info!(peer = %peer.ip(), "no PROXY protocol header in time; connection closed");
                                return;
                            }
                        },
                    };
                    let result = match tls {
                        None => {
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), make_service(peer, false));
                            watcher.watch(conn).await
                        }
                        Some((tls, limit, metrics)) => {
                            let stream = match tokio::time::timeout(limit, tls.acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    metrics.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(error = %e, client.ip = %peer.ip(), "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    metrics.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(client.ip = %peer.ip(), "TLS handshake timed out");
                                    return;
                                }
                            };
                            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), make_service(peer, true));
                            watcher.watch(conn).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, client.ip = %peer.ip(), "connection closed with an error");
                    }
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
}
