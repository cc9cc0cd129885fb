//! The forwarding client to the configured upstream, with connect and response-header timeouts
//! and the mapping of its failures to 502/504/413: keygate's own keep-alive pool
//! ([`super::pool`]) for plain HTTP/1.1, the hot path; a pooled hyper-util client for TLS
//! through rustls (`https://`) and for HTTP/2.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::{BodyError, UpstreamBody, body_error_in};
use super::headers::remove_hop_by_hop;
use super::pool::{Fetch, H1Pool, PooledBody, Written};
use crate::config::UpstreamConfig;
use crate::error::Rejection;
use crate::telemetry::{Held, PoolStats};
use std::sync::atomic::AtomicU64;

/// A request for the upstream: prepared (its header map edited for forwarding), or already
/// written as an HTTP/1.1 head for keygate's own codec (see [`Upstream::takes_written`]).
pub enum Outgoing {
    Prepared(Request<UpstreamBody>),
    Written(Written),
}

/// One client per kind of upstream: keygate's pool for plain HTTP/1.1 (the hot path);
/// hyper-util for plain HTTP/2 (prior knowledge) and for TLS.
enum Clients {
    Pooled(std::sync::Arc<H1Pool>),
    Plain(Client<HttpConnector, UpstreamBody>),
    Tls(Client<HttpsConnector<HttpConnector>, UpstreamBody>),
}

pub struct Upstream {
    client: Clients,
    response_timeout: Duration,
    http2: bool,
    connect_timeout: Duration,
    /// `host:port` of an `http://` upstream, for CONNECT.
    plain_addr: Option<String>,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig, pool: std::sync::Arc<PoolStats>) -> Result<Self, String> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .http2_only(cfg.http2);
        let plain_addr = (cfg.url.scheme_str() == Some("http"))
            .then(|| {
                // Host and port only: never the URL's user info.
                cfg.url
                    .authority()
                    .map(|a| format!("{}:{}", a.host(), a.port_u16().unwrap_or(80)))
            })
            .flatten();
        let client = if cfg.url.scheme_str() == Some("http") && !cfg.http2 {
            Clients::Pooled(H1Pool::new(
                cfg.url.clone(),
                connector,
                cfg.pool_idle_timeout,
                cfg.pool_max_idle_per_host,
                pool,
            ))
        } else if cfg.url.scheme_str() == Some("https") {
            connector.enforce_http(false);
            let tls = crate::tls::upstream_client_config(&cfg.tls)?;
            let connector_builder = HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_only();
            // ALPN offers exactly the version the client will speak.
            let https = if cfg.http2 {
                connector_builder.enable_http2().wrap_connector(connector)
            } else {
                connector_builder.enable_http1().wrap_connector(connector)
            };
            Clients::Tls(builder.build(https))
        } else {
            Clients::Plain(builder.build(connector))
        };
        Ok(Upstream {
            client,
            response_timeout: cfg.response_timeout,
            http2: cfg.http2,
            connect_timeout: cfg.connect_timeout,
            plain_addr,
        })
    }

    /// Whether requests may be handed over already written ([`Outgoing::Written`]): keygate's
    /// own HTTP/1.1 codec sends them.
    pub fn takes_written(&self) -> bool {
        matches!(self.client, Clients::Pooled(_))
    }

    /// Sends a request; the response body streams back untouched. `in_flight` is held one
    /// higher until the response head arrives. The request moves straight into the exchange's
    /// own future (only the common one is inline; the others are boxed), so this future holds
    /// no second copy of it.
    pub fn send<'a>(
        &'a self,
        req: Outgoing,
        body_limit: u64,
        in_flight: &'a AtomicU64,
        sent_at: std::time::Instant,
    ) -> Sent<'a> {
        // Settings are at most 10 years (config check); saturate anyway rather than panic.
        let deadline = sent_at
            .checked_add(self.response_timeout)
            .unwrap_or(sent_at + std::time::Duration::from_secs(u64::from(u32::MAX)));
        let deadline = tokio::time::Instant::from_std(deadline);
        let forwarding = Some(Held::enter(in_flight));
        let exchange = match (&self.client, req) {
            // The pool's exchange keeps the deadline itself, on the connection's timer.
            (Clients::Pooled(pool), Outgoing::Written(w)) => {
                Exchange::Pooled(pool.fetch(w, deadline))
            }
            (_, req) => Exchange::Other(Box::pin(async move {
                tokio::time::timeout_at(deadline, self.send_other(req, body_limit))
                    .await
                    .unwrap_or(Err(Rejection::UpstreamTimeout))
            })),
        };
        Sent {
            exchange,
            body_limit,
            forwarding,
        }
    }

    /// Everything but a written request: upgrades through the pool, and hyper-util's clients
    /// (their futures are large, and only these paths use them).
    async fn send_other(
        &self,
        req: Outgoing,
        body_limit: u64,
    ) -> Result<Response<PooledBody>, Rejection> {
        match (&self.client, req) {
            (Clients::Pooled(pool), Outgoing::Prepared(req)) => {
                pool.send(req).await.map_err(|e| classify(&e, body_limit))
            }
            (Clients::Plain(c), Outgoing::Prepared(req)) => through(c, req, body_limit).await,
            (Clients::Tls(c), Outgoing::Prepared(req)) => through(c, req, body_limit).await,
            // `send` takes written requests to the pool itself; only hyper's clients are left.
            (_, Outgoing::Written(_)) => {
                tracing::error!("a written request reached a client that writes its own");
                Err(Rejection::UpstreamUnavailable)
            }
        }
    }

    /// Sends a `CONNECT` over a new HTTP/1.1 connection to the upstream (not pooled: it becomes
    /// a tunnel). Plain `http://` upstreams only.
    pub async fn connect_tunnel(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Rejection> {
        let Some(addr) = &self.plain_addr else {
            tracing::warn!("CONNECT needs an http:// upstream");
            return Err(Rejection::UpstreamUnavailable);
        };
        let tcp = match tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(addr.as_str()),
        )
        .await
        {
            Err(_) => return Err(Rejection::UpstreamTimeout),
            Ok(Err(_)) => return Err(Rejection::UpstreamUnavailable),
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|_| Rejection::UpstreamUnavailable)?;
        tokio::spawn(conn.with_upgrades());
        match tokio::time::timeout(self.response_timeout, send.send_request(req)).await {
            Err(_) => Err(Rejection::UpstreamTimeout),
            Ok(Err(_)) => Err(Rejection::UpstreamUnavailable),
            Ok(Ok(mut resp)) => {
                remove_hop_by_hop(resp.headers_mut());
                Ok(resp)
            }
        }
    }

    pub fn is_http2(&self) -> bool {
        self.http2
    }
}

/// [`Upstream::send`]'s round trip: keygate's pooled exchange polled in place (the common case),
/// any other boxed; `in_flight` held until the response head is in, whose hop-by-hop fields
/// are dropped. Written by hand: the combinators it replaces moved the response once per layer.
pub struct Sent<'a> {
    exchange: Exchange<'a>,
    body_limit: u64,
    forwarding: Option<Held<'a>>,
}

type Answer = Result<Response<PooledBody>, Rejection>;

// The large variant is the common one: boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Exchange<'a> {
    Pooled(Fetch<'a>),
    Other(Pin<Box<dyn Future<Output = Answer> + Send + 'a>>),
}

impl Future for Sent<'_> {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let this = self.get_mut();
        let mut answer = match &mut this.exchange {
            Exchange::Pooled(fetch) => {
                ready!(Pin::new(fetch).poll(cx)).map_err(|e| classify(&e, this.body_limit))
            }
            Exchange::Other(other) => ready!(other.as_mut().poll(cx)),
        };
        this.forwarding = None;
        if let Ok(resp) = &mut answer {
            drop_hop_by_hop(resp);
        }
        Poll::Ready(answer)
    }
}

/// Drops the response's hop-by-hop headers (keygate's own codec drops them as it parses).
fn drop_hop_by_hop(resp: &mut Response<PooledBody>) {
    if resp.body().hop_by_hop_dropped() {
        return;
    }
    // A 101 keeps the protocol it switched to (only sent for an upgrade we forwarded).
    let switched = (resp.status() == http::StatusCode::SWITCHING_PROTOCOLS)
        .then(|| resp.headers().get(http::header::UPGRADE).cloned())
        .flatten();
    remove_hop_by_hop(resp.headers_mut());
    if let Some(proto) = switched {
        resp.headers_mut().insert(http::header::UPGRADE, proto);
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
    }
}

/// A request through a hyper-util client (its bodies are never pooled by keygate).
async fn through<C>(
    client: &Client<C, UpstreamBody>,
    req: Request<UpstreamBody>,
    body_limit: u64,
) -> Result<Response<PooledBody>, Rejection>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    match client.request(req).await {
        Ok(resp) => Ok(resp.map(PooledBody::unpooled)),
        Err(e) => Err(classify(&e, body_limit)),
    }
}

fn classify(e: &(dyn StdError + 'static), body_limit: u64) -> Rejection {
    // The client's body failing is the client's error, whatever the upstream made of it.
    match body_error_in(e) {
        Some(BodyError::TooLarge) => return Rejection::PayloadTooLarge { limit: body_limit },
        Some(BodyError::Malformed) => {
            return Rejection::BadBody("the request body is malformed or was cut short");
        }
        Some(BodyError::Timeout) => return Rejection::BodyTimeout,
        None => {}
    }
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return Rejection::UpstreamTimeout;
        }
        source = s.source();
    }
    tracing::warn!(error = %e, "upstream request failed");
    Rejection::UpstreamUnavailable
}
