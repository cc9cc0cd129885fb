//! Test harness: a real upstream, a real keygate on ephemeral ports, a real HTTP client.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod redis;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keygate::auth::Verifier;
use keygate::config::Config;
use keygate::key::{Environment, KeyType};
use keygate::manage::KeyTool;
use keygate::server::Server;
use keygate::store::NewRecord;
use keygate::telemetry::Metrics;
use tokio::net::TcpListener;

pub const ADMIN_TOKEN: &str = "test-admin-token-ops-0001";
pub const ADMIN_TOKEN_2: &str = "test-admin-token-deploy-0002";

pub type Body = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Polls `cond` until it holds or `timeout` passes. For eventual effects, instead of sleeps.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr, $($msg:tt)+) => {{
        let deadline = tokio::time::Instant::now() + $timeout;
        loop {
            if $cond { break; }
            if tokio::time::Instant::now() > deadline { panic!($($msg)+); }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// A real upstream server on an ephemeral port. Echoes what it received as JSON (see
/// `keygate::dev::echo`), counts hits, and has a few special paths:
/// `/download/<bytes>` streams that many bytes, `/slow/<ms>` answers after a delay.
pub struct Upstream {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    closed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&hits);
        let connections = Arc::new(AtomicU64::new(0));
        let accepted = Arc::clone(&connections);
        let closed = Arc::new(AtomicU64::new(0));
        let ended = Arc::clone(&closed);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let counter = Arc::clone(&counter);
                let ended = Arc::clone(&ended);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        upstream_handler(req)
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            hits,
            connections,
            closed,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Connections that have ended so far.
    pub fn closed(&self) -> u64 {
        self.closed.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn upstream_handler(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if let Some(n) = path
        .strip_prefix("/download/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        return Ok(Response::new(pattern_body(n)));
    }
    if let Some(ms) = path
        .strip_prefix("/slow/")
        .and_then(|n| n.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let resp = keygate::dev::echo::respond(req).await?;
    Ok(resp.map(|b| b.map_err(|never| match never {}).boxed()))
}

/// A streamed body of `n` bytes of a repeating pattern, produced 64 KiB at a time.
pub fn pattern_body(n: u64) -> Body {
    const CHUNK: u64 = 64 * 1024;
    let chunk = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let stream = futures_stream(n, CHUNK, chunk);
    StreamBody::new(stream).boxed()
}

fn futures_stream(
    total: u64,
    chunk_len: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>
+ Send {
    let mut sent = 0u64;
    futures_util::stream::poll_fn(move |_| {
        if sent >= total {
            return std::task::Poll::Ready(None);
        }
        let n = chunk_len.min(total - sent);
        sent += n;
        std::task::Poll::Ready(Some(Ok(Frame::data(chunk.slice(..n as usize)))))
    })
}

/// SHA-256 hex of the pattern body of `n` bytes, computed the same way the echo does.
pub fn pattern_sha256(n: u64) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let chunk: Vec<u8> = (0..64 * 1024u64).map(|i| (i % 251) as u8).collect();
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        h.update(&chunk[..k]);
        left -= k as u64;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A keygate running in this process on ephemeral ports, with its own store file.
pub struct Keygate {
    pub addr: SocketAddr,
    pub ops_addr: SocketAddr,
    /// The admin API (token [`ADMIN_TOKEN`], named `ops`; [`ADMIN_TOKEN_2`] is `deploy`).
    pub admin_addr: SocketAddr,
    /// The auth-only listener, when `[authz] mode` runs one.
    pub authz_addr: Option<SocketAddr>,
    pub store_path: PathBuf,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub verifier: Arc<Verifier>,
    pub audit: Arc<keygate::audit::Audit>,
    pub tool: KeyTool,
    /// The proxy's own store handle: writes are visible to it at once.
    pub store: keygate::store::Store,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Keygate {
    /// Starts keygate in front of `upstream_url`. `extra` is TOML appended to the base config
    /// (sections may be repeated only if the base does not define them: base defines none but
    /// the ones below).
    pub async fn start(upstream_url: &str, extra: &str) -> Keygate {
        Keygate::start_with_store(upstream_url, None, extra).await
    }

    /// Starts keygate on the Redis store at `redis_url` (key prefix `keygate`).
    pub async fn start_redis(upstream_url: &str, redis_url: &str, extra: &str) -> Keygate {
        Keygate::start_with_store(upstream_url, Some(redis_url), extra).await
    }

    async fn start_with_store(upstream_url: &str, redis_url: Option<&str>, extra: &str) -> Keygate {
        Keygate::start_full(upstream_url, "", redis_url, extra).await
    }

    /// With `store_section` (a whole `[store]` section) as the store.
    pub async fn start_store(upstream_url: &str, store_section: &str, extra: &str) -> Keygate {
        Keygate::start_full(
            upstream_url,
            "",
            Some(&format!("\u{0}{store_section}")),
            extra,
        )
        .await
    }

    /// Like [`Keygate::start_redis`], as the replica named `replica_id`.
    pub async fn start_redis_as(
        upstream_url: &str,
        redis_url: &str,
        replica_id: &str,
        extra: &str,
    ) -> Keygate {
        let url = format!("{redis_url}\"\nreplica_id = \"{replica_id}");
        Keygate::start_full(upstream_url, "", Some(&url), extra).await
    }

    /// Like [`Keygate::start`], with `upstream_lines` added to the `[upstream]` section.
    pub async fn start_with_upstream(
        upstream_url: &str,
        upstream_lines: &str,
        extra: &str,
    ) -> Keygate {
        Keygate::start_full(upstream_url, upstream_lines, None, extra).await
    }

    async fn start_full(
        upstream_url: &str,
        upstream_lines: &str,
        redis_url: Option<&str>,
        extra: &str,
    ) -> Keygate {
        let dir = tempfile::tempdir().unwrap();
        let store_path = dir.path().join("keys.json");
        let store = match redis_url {
            None => format!(
                "[store]\npath = {:?}\nreload_interval = \"50ms\"\n",
                store_path.display().to_string()
            ),
            Some(section) if section.starts_with('\u{0}') => section[1..].to_owned(),
            Some(url) => {
                format!("[store]\nbackend = \"redis\"\nurl = \"{url}\"\ntimeout = \"300ms\"\n")
            }
        };
        // Usage and failure aggregates are written often, so tests see them quickly.
        let store = format!("{upstream_lines}{store}[audit]\nflush_interval = \"100ms\"\n");
        let toml = Keygate::config_text(upstream_url, &store, extra);
        let config = Config::from_toml(&toml, Vec::new(), |name| {
            (name == "KEYGATE_ADMIN_TOKENS")
                .then(|| format!("ops:{ADMIN_TOKEN},deploy:{ADMIN_TOKEN_2}").into())
        })
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let proxy_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = proxy_listener.local_addr().unwrap();
        let ops_addr = ops_listener.local_addr().unwrap();
        let admin_listener = keygate::admin::AdminListener::bind(
            &keygate::config::AdminAddress::Tcp("127.0.0.1:0".parse().unwrap()),
        )
        .await
        .unwrap();
        let admin_addr = admin_listener.local_addr().unwrap();
        let mut proxy = Server::new(&config)
            .unwrap()
            .with_admin_listener(admin_listener);
        let mut authz_addr = None;
        if config.authz.mode.authorizes() {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            authz_addr = Some(l.local_addr().unwrap());
            proxy = proxy.with_authz_listener(l);
        }
        let proxy_listener = config.authz.mode.proxies().then_some(proxy_listener);
        let metrics = proxy.metrics();
        let verifier = proxy.verifier();
        let audit = proxy.audit();
        let proxy_store = proxy.store();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(proxy.serve(proxy_listener, ops_listener, async {
            let _ = rx.await;
        }));
        let tool = KeyTool::with_store(proxy_store.clone(), &config)
            .unwrap()
            .with_audit(Arc::clone(&audit));
        Keygate {
            addr,
            ops_addr,
            admin_addr,
            authz_addr,
            store_path,
            config,
            metrics,
            verifier,
            audit,
            tool,
            store: proxy_store,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    /// The base config; `extra` may add top-level keys and sections other than those here.
    pub fn config_text(upstream_url: &str, store_section: &str, extra: &str) -> String {
        let (top, sections) = split_top_level(extra);
        format!(
            "{top}\n[upstream]\nurl = \"{upstream_url}\"\nconnect_timeout = \"1s\"\nresponse_timeout = \"2s\"\n\
             {store_section}{sections}\n"
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn audit(&self) -> Arc<keygate::audit::Audit> {
        Arc::clone(&self.audit)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// A call to the admin API with the `ops` token.
    pub async fn admin(&self, method: Method, path: &str, body: Option<serde_json::Value>) -> Resp {
        let auth = bearer(ADMIN_TOKEN);
        let body = body.map_or_else(empty, |b| full(b.to_string()));
        send(
            method,
            &self.admin_url(path),
            &[("authorization", &auth)],
            body,
        )
        .await
    }

    /// Creates a key in this instance's store and returns it.
    pub async fn mint(
        &self,
        env: Environment,
        key_type: KeyType,
        scopes: &[&str],
    ) -> (String, String) {
        let (key, rec) = self
            .tool
            .create(
                NewRecord {
                    scopes: scopes.iter().map(|s| s.to_string()).collect(),
                    ..NewRecord::new("acct_1", env, key_type)
                },
                "test",
            )
            .await
            .unwrap();
        (key.key.clone(), rec.id)
    }

    pub async fn live_key(&self) -> (String, String) {
        self.mint(Environment::Live, KeyType::Secret, &["all"])
            .await
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for Keygate {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Splits TOML into its top-level assignments and its sections, so the base config can put
/// `environment = …` before its own sections.
fn split_top_level(extra: &str) -> (String, String) {
    match extra
        .find("\n[")
        .or_else(|| extra.starts_with('[').then_some(0))
    {
        Some(i) => (extra[..i].to_owned(), extra[i..].to_owned()),
        None => (extra.to_owned(), String::new()),
    }
}

/// A response read whole.
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The error code of a keygate error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// A header the upstream received, from the echo body.
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name].as_str().map(str::to_owned)
    }
}

pub fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: Body) -> Resp {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    read_whole(client().request(req.body(body).unwrap()).await.unwrap()).await
}

async fn read_whole(resp: Response<Incoming>) -> Resp {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    send(Method::GET, url, headers, empty()).await
}

pub fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

pub fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// A GET sent from a chosen local address (any 127.x.y.z works on loopback), to play a
/// trusted proxy or a particular client.
pub async fn get_from(local: std::net::IpAddr, url: &str, headers: &[(&str, &str)]) -> Resp {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(local));
    let client: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).build(connector);
    let mut req = Request::builder().method(Method::GET).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    read_whole(client.request(req.body(empty()).unwrap()).await.unwrap()).await
}

/// Mints a key with the given scopes and options through the proxy's own store.
pub async fn mint_with(
    kg: &Keygate,
    key_type: KeyType,
    scopes: &[&str],
    edit: impl FnOnce(&mut NewRecord),
) -> String {
    let mut req = NewRecord {
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..NewRecord::new("acct_1", Environment::Live, key_type)
    };
    edit(&mut req);
    kg.tool.create(req, "test").await.unwrap().0.key.clone()
}

/// Runs the `keygate` binary to completion.
pub fn keygate(args: &[&str]) -> std::process::Output {
    keygate_env(args, &[])
}

/// Runs the `keygate` binary to completion with these environment variables.
pub fn keygate_env(args: &[&str], envs: &[(String, String)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("KEYGATE_PEPPER")
        .output()
        .unwrap()
}

/// A `keygate serve` child process; killed on drop.
pub struct Served {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    /// Every line it logged so far.
    pub logs: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Served {
    pub fn start(cfg: &str) -> Served {
        Served::start_env(cfg, &[])
    }

    /// `keygate serve --config cfg` with these environment variables (e.g. `KEYGATE__…`
    /// overrides of a shipped profile).
    pub fn start_env(cfg: &str, envs: &[(String, String)]) -> Served {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_keygate"))
            .args(["serve", "--config", cfg])
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("KEYGATE_PEPPER")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = Arc::clone(&logs);
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                kept.lock().unwrap().push(line.clone());
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && let Some(listen) = v["fields"]["listen"].as_str().or(v["listen"].as_str())
                {
                    let _ = tx.send(listen.parse::<std::net::SocketAddr>().unwrap());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("keygate serve did not log its address");
        Served { child, addr, logs }
    }

    pub fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes raw bytes on a new connection and reads until the server closes or goes quiet for
/// `quiet`.
pub async fn raw(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> String {
    use tokio::io::AsyncWriteExt as _;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_all(&mut s, quiet).await
}

/// Reads until the peer closes or goes quiet for `quiet`.
pub async fn read_all(s: &mut tokio::net::TcpStream, quiet: Duration) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
