//! The composition root: builds the store, verifier, policy, audit trail, forwarder, admin API
//! and ops endpoints from the typed configuration, handing each only what it needs; serves
//! them; reloads the policy on SIGHUP and file changes; shuts down gracefully (stop accepting,
//! report not-ready, let in-flight requests finish up to the drain timeout, flush key usage and
//! the audit aggregates).

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::{self, Admin, AdminListener};
use crate::audit::Audit;
use crate::auth::{Verifier, VerifierSettings};
use crate::config::ListenConfig;
use crate::config::{Config, MethodOverride};
use crate::key::{KeyFormat, KeyHasher};
use crate::manage::KeyTool;
use crate::net::IpSet;
use crate::policy::Policy;
use crate::proxy::{
    App, ConnInfo, Edge, FastPath, Forwarder, Gate, Listening, Ops, Timing, TunnelLimits,
    accept_loop, http_builder,
};
use crate::self_service::SelfService;
use crate::store::Store;
use crate::telemetry::Metrics;

/// A configured keygate, ready to serve. Holds the background tasks (store watcher, usage and
/// audit flushers, config watcher) for as long as it lives.
pub struct Server {
    app: Arc<App>,
    ops: Arc<Ops>,
    draining: Arc<AtomicBool>,
    drain_timeout: Duration,
    /// `[listen]`: timeouts, caps, head limits for the listeners.
    listen: ListenConfig,
    /// Exempt from the per-client connection cap (they carry many clients).
    trusted_proxies: IpSet,
    usage_interval: Duration,
    audit: Arc<Audit>,
    audit_interval: Duration,
    admin: Option<(Arc<Admin>, Option<AdminListener>)>,
    /// The auth-only listener (`[authz]`), when it runs.
    authz: Option<TcpListener>,
    tls: Option<Arc<crate::tls::Listener>>,
    /// Shared with the request path and the admin API; swapped on reload.
    policy: Arc<ArcSwap<Policy>>,
    /// Reloaded on SIGHUP and when it changes on disk.
    config_file: Option<std::path::PathBuf>,
    background: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the store and builds the request path. Must run inside a tokio runtime.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let store = Store::open(&config.store)?;
        if let Some(path) = store.create_if_missing(&config.store)? {
            tracing::info!(path = %path.display(), "no key store file; created an empty one");
        }
        let format = KeyFormat::with_shape(&config.keys.labels, config.keys.shape)
            .map_err(anyhow::Error::msg)?;
        let hasher = KeyHasher::with_cost(
            config.keys.pepper.as_ref().map(|p| p.expose()),
            config.keys.argon2,
        );
        let metrics = Arc::new(Metrics::default());
        store.report_to(Arc::clone(&metrics));
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
        let mut background = store.spawn_background(&config.store);
        // This process serves the store: it acknowledges every change it applies, so writers
        // (the admin API here or elsewhere, the CLI) can tell when every proxy has it.
        let replica_id = config
            .propagation
            .replica_id
            .clone()
            .unwrap_or_else(crate::store::default_replica_id);
        background.extend(store.spawn_replica(replica_id));
        let draining = Arc::new(AtomicBool::new(false));
        let policy = Arc::new(ArcSwap::from_pointee(Policy::new(
            &config.policy,
            config.environment,
            &store,
            Arc::clone(&metrics),
        )));
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
            policy: Arc::clone(&policy),
            honor_method_override: config.auth.method_override == MethodOverride::Honor,
            forwarder: Forwarder::new(config, Arc::clone(&metrics)).map_err(anyhow::Error::msg)?,
            metrics: Arc::clone(&metrics),
            carriers: config.auth.carriers.clone(),
            max_key_length: config.keys.max_length,
            audit: Arc::clone(&audit),
            access_log: config.log.access,
            errors: config.errors.clone(),
            underscores: config.listen.underscore_headers,
            authz_check_path: config.authz.check_path.clone(),
            authz_path_prefix: config.authz.path_prefix.clone(),
            // Always there: a reload may mount `[self_service]`.
            self_service: SelfService::new(
                KeyTool::with_store(store.clone(), config)?.with_audit(Arc::clone(&audit)),
            ),
            edge: Edge {
                allow_connect: config.listen.allow_connect,
                upgrades: config.listen.upgrades.clone(),
                tunnel_limits: TunnelLimits {
                    idle: config.listen.tunnel_idle_timeout,
                    max_lifetime: config.listen.tunnel_max_lifetime,
                },
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
                Arc::clone(&policy),
                config.environment,
            );
            Some((Arc::new(admin), None))
        };
        let ops = Arc::new(Ops::new(verifier, metrics, Arc::clone(&draining)));
        Ok(Server {
            app,
            ops,
            draining,
            drain_timeout: config.listen.drain_timeout,
            listen: config.listen.clone(),
            trusted_proxies: IpSet::new(&config.policy.ip.trusted_proxies),
            usage_interval: config.auth.last_used_flush_interval,
            audit,
            audit_interval: config.audit.flush_interval,
            admin,
            authz: None,
            tls,
            policy,
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
        reload(&self.policy, &self.app.verifier, &self.app.metrics, path).await
    }

    /// Answers authorization checks (auth-only mode) on `listener`, beside the proxy listener
    /// or instead of it.
    pub fn with_authz_listener(mut self, listener: TcpListener) -> Self {
        self.authz = Some(listener);
        self
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
    /// `proxy`: `None` in auth-only mode (then an authz listener must be set).
    pub async fn serve(
        mut self,
        proxy: impl Into<Option<TcpListener>>,
        ops: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let proxy = proxy.into();
        let builder = http_builder(&self.listen);

        let verifier = Arc::clone(&self.app.verifier);
        self.background.push(every(self.usage_interval, move || {
            let verifier = Arc::clone(&verifier);
            async move { verifier.flush_usage().await }
        }));

        if let Some(path) = self.config_file.clone() {
            self.background.push(tokio::spawn(watch_config(
                Arc::clone(&self.policy),
                Arc::clone(&self.app.verifier),
                Arc::clone(&self.app.metrics),
                path,
            )));
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

        let policy = Arc::clone(&self.policy);
        self.background.push(tokio::spawn(async move {
            // In-process rate-limit counters that hold nothing any more are dropped.
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                policy.load().limiter().sweep();
            }
        }));

        let (ops_stop_tx, ops_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ops_app = Arc::clone(&self.ops);
        let ops_task = tokio::spawn(accept_loop(
            ops,
            Listening {
                builder: builder.clone(),
                // Scrapers and probes: few, from anywhere the operator allows.
                gate: Gate::new(1024, usize::MAX, IpSet::default(), Arc::default()),
                timing: Timing::of(&self.listen),
                proxy_protocol: false,
                tls: None,
                make_service: move |_peer, _tls| {
                    let ops_app = Arc::clone(&ops_app);
                    service_fn(move |req| Arc::clone(&ops_app).handle(req))
                },
                fast: None,
            },
            ops_stop_rx,
        ));

        let gate = Gate::new(
            self.listen.max_connections,
            self.listen.max_connections_per_ip,
            self.trusted_proxies.clone(),
            Arc::clone(&self.app.metrics.connections),
        );
        let mut serving = Vec::new();
        // One stop signal per request listener.
        let mut stops = Vec::new();
        let mut stopped = || {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            stops.push(tx);
            rx
        };
        if let Some(proxy) = proxy {
            let app = Arc::clone(&self.app);
            serving.push(tokio::spawn(accept_loop(
                proxy,
                Listening {
                    builder: builder.clone(),
                    gate: Arc::clone(&gate),
                    timing: Timing::of(&self.listen),
                    proxy_protocol: self.listen.proxy_protocol,
                    tls: self
                        .tls
                        .as_ref()
                        .map(|t| (Arc::clone(t), Arc::clone(&self.app.metrics))),
                    make_service: move |peer, tls| {
                        let app = Arc::clone(&app);
                        let conn = ConnInfo::new(peer, tls);
                        service_fn(move |req: http::Request<hyper::body::Incoming>| {
                            Arc::clone(&app)
                                .handle(req.map(crate::proxy::Inbound::Hyper), conn.clone())
                        })
                    },
                    fast: self
                        .listen
                        .http1_fast
                        .then(|| FastPath::new(Arc::clone(&self.app), &self.listen)),
                },
                stopped(),
            )));
        }
        if let Some(authz) = self.authz.take() {
            let app = Arc::clone(&self.app);
            serving.push(tokio::spawn(accept_loop(
                authz,
                Listening {
                    builder,
                    // The same caps as the proxy listener (a front proxy is exempt from the
                    // per-client one when it is a trusted proxy, as it must be to be answered).
                    gate,
                    timing: Timing::of(&self.listen),
                    proxy_protocol: false,
                    tls: None,
                    make_service: move |peer, _tls| {
                        let app = Arc::clone(&app);
                        let conn = ConnInfo::new(peer, false);
                        service_fn(move |req| Arc::clone(&app).authorize(req, conn.clone()))
                    },
                    fast: None,
                },
                stopped(),
            )));
        }
        shutdown.await;
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        self.draining.store(true, Ordering::Relaxed);
        for stop in stops {
            let _ = stop.send(());
        }
        let drained = futures_util::future::join_all(serving);
        match tokio::time::timeout(self.drain_timeout, drained).await {
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

async fn reload(
    policy: &ArcSwap<Policy>,
    verifier: &Verifier,
    metrics: &Metrics,
    path: &std::path::Path,
) -> Result<(), String> {
    // Reading and validating touch the disk (and TLS files): off the runtime threads.
    let owned = path.to_owned();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&owned))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let cfg = match loaded {
        Ok(cfg) => cfg,
        Err(e) => {
            metrics
                .config_reload_failures
                .fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
    };
    let next = policy.load().reconfigured(&cfg.policy, verifier.store());
    policy.store(Arc::new(next));
    metrics.config_reloads.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

async fn watch_config(
    policy: Arc<ArcSwap<Policy>>,
    verifier: Arc<Verifier>,
    metrics: Arc<Metrics>,
    path: std::path::PathBuf,
) {
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
        match reload(&policy, &verifier, &metrics, &path).await {
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

/// How long an idle blocking thread of the single-threaded runtime waits for more work.
const BLOCKING_KEEP_ALIVE: std::time::Duration = std::time::Duration::from_millis(5);

/// The runtime: single-threaded when one CPU is available (a pinned sidecar, `cpus: 1`), where
/// it does the same work without the multi-thread scheduler's cross-thread bookkeeping;
/// `KEYGATE_RUNTIME=current_thread` / `multi_thread` chooses.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let choice = std::env::var("KEYGATE_RUNTIME");
    let single = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1)
        || choice.as_deref() == Ok("current_thread");
    if single && choice.as_deref() != Ok("multi_thread") {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // File work (the store file's stat every `reload_interval`, the replica's
            // acknowledgement) goes to a blocking thread that ends right after: a process with
            // one thread pays no file-table reference count on each of a request's syscalls.
            .thread_keep_alive(BLOCKING_KEEP_ALIVE)
            .build()
    } else {
        tokio::runtime::Runtime::new()
    }
}

/// `keygate serve`: binds the listeners, builds everything and serves until `shutdown`.
pub async fn run(
    cfg: Config,
    path: &Path,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    crate::telemetry::init_logging(&cfg.log);
    if !cfg.keys.argon2.meets_owasp() {
        tracing::warn!(
            memory_kib = cfg.keys.argon2.memory_kib,
            iterations = cfg.keys.argon2.iterations,
            "keys.argon2_* is below OWASP's recommendation (19456 KiB, 2 iterations): new keys are cheaper to brute-force"
        );
    }
    let bind = |what: &'static str, setting: &'static str, addr: std::net::SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for the {what} ({setting})"))
    };
    let proxy_listener = match cfg.authz.mode.proxies() {
        true => Some(bind("proxy", "listen.address", cfg.listen.address).await?),
        false => None,
    };
    let authz_listener = match cfg.authz.mode.authorizes() {
        true => Some(bind("authorization checks", "authz.address", cfg.authz.address).await?),
        false => None,
    };
    let ops_listener = bind("ops endpoints", "ops.address", cfg.ops.address).await?;
    let shown = |l: &Option<TcpListener>| match l.as_ref().map(TcpListener::local_addr) {
        Some(Ok(a)) => a.to_string(),
        _ => "-".to_owned(),
    };
    tracing::info!(
        listen = %shown(&proxy_listener), authz = %shown(&authz_listener),
        ops = %ops_listener.local_addr()?, environment = %cfg.environment,
        upstream = %if cfg.authz.mode.proxies() { cfg.upstream.url.to_string() } else { "-".into() },
        "keygate serving"
    );
    let mut server = Server::new(&cfg)?.with_config_file(path.to_owned());
    if let Some(l) = authz_listener {
        server = server.with_authz_listener(l);
    }
    if server.admin_enabled() {
        let admin = AdminListener::bind(&cfg.admin.address)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} for the admin API (admin.address)",
                    cfg.admin.address
                )
            })?;
        tracing::info!(admin = %admin.describe(), tokens = cfg.admin.tokens.len(), "admin API serving");
        server = server.with_admin_listener(admin);
    } else {
        tracing::info!("admin API off: no admin tokens configured (KEYGATE_ADMIN_TOKENS)");
    }
    server.serve(proxy_listener, ops_listener, shutdown).await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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
