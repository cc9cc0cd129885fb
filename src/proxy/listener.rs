//! Listeners: the accept loop, shared by the proxy and ops listeners, and the life of each
//! connection. A connection is admitted by the [`Gate`] (global and per-client caps), then has
//! `header_read_timeout` from accept to a complete first request head — PROXY protocol header,
//! TLS handshake, protocol detection, HTTP/2 preface and SETTINGS, the head itself — and after
//! that is closed once nothing has been in flight for `idle_timeout` (HTTP/1.1 keep-alive and
//! HTTP/2 alike; HTTP/2 also pings). A connection that never finishes a head, such as an
//! HTTP/2 header block without END_HEADERS, has no request in flight and meets one of these
//! bounds. Shutdown stops accepting and closes every connection gracefully.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::gate::{Gate, Refusal};
use super::h1::{
    self,
    io::{Prefixed, Whole},
};
use super::proxy_protocol;
use crate::config::ListenConfig;
use crate::telemetry::Metrics;

/// The HTTP/1.1 + HTTP/2 connection builder both listeners use. One head limit for both
/// protocols: `max_header_bytes`.
pub fn http_builder(listen: &ListenConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let max_head = listen.max_header_bytes;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(listen.header_read_timeout)
        // Heads over max_header_bytes (or over 100 headers) are answered 431: hyper parses a
        // head in its read buffer and refuses one that does not fit.
        .max_buf_size(max_head.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        .keep_alive_interval(listen.http2_keepalive_interval)
        .keep_alive_timeout(listen.http2_keepalive_timeout);
    builder
}

/// How long a connection may take and wait.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// From accept to a complete first request head.
    pub first_request: Duration,
    /// With nothing in flight.
    pub idle: Duration,
}

impl Timing {
    pub fn of(listen: &ListenConfig) -> Timing {
        Timing {
            first_request: listen.header_read_timeout,
            idle: listen.idle_timeout,
        }
    }
}

/// TLS on a listener: the acceptor, where failures are counted.
pub type TlsAccept = (Arc<crate::tls::Listener>, Arc<Metrics>);

/// What a listener serves and how.
pub struct Listening<F> {
    pub builder: auto::Builder<TokioExecutor>,
    pub gate: Arc<Gate>,
    pub timing: Timing,
    /// Each connection starts with a PROXY protocol header, whose address then stands in for
    /// the socket peer.
    pub proxy_protocol: bool,
    pub tls: Option<TlsAccept>,
    /// The service of a connection from (client address, over TLS).
    pub make_service: F,
    /// keygate's own HTTP/1.1 path, taken first when set (the proxy listener); hyper gets
    /// the connection for HTTP/2 and anything else the fast path does not take.
    pub fast: Option<FastPath>,
}

/// What the HTTP/1.1 fast path serves with.
pub struct FastPath {
    pub app: Arc<super::App>,
    pub settings: h1::Settings,
}

impl FastPath {
    pub fn new(app: Arc<super::App>, listen: &ListenConfig) -> Self {
        FastPath {
            app,
            settings: h1::Settings {
                max_head: listen.max_header_bytes.max(8192),
                header_read_timeout: listen.header_read_timeout,
                idle: listen.idle_timeout,
                body_read_timeout: listen.body_read_timeout,
            },
        }
    }
}

/// Accepts connections until `stop`, then closes open ones gracefully and waits for them (the
/// caller bounds the wait). Accept errors such as EMFILE are logged and retried, never fatal.
pub async fn accept_loop<F, S, B>(
    listener: TcpListener,
    serving: Listening<F>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) where
    F: Fn(SocketAddr, bool) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let serving = Arc::new(serving);
    let (closing_tx, closing_rx) = watch::channel(false);
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
                // Over the global cap: closed before anything is read or spawned.
                let Ok(ticket) = serving.gate.enter() else {
                    tracing::debug!(client.ip = %peer.ip(), "connection refused: max_connections");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (serving, closing) = (Arc::clone(&serving), closing_rx.clone());
                tokio::spawn(async move {
                    let mut ticket = ticket;
                    let deadline = Instant::now() + serving.timing.first_request;
                    let mut stream = stream;
                    let peer = if serving.proxy_protocol {
                        match tokio::time::timeout_at(deadline, proxy_protocol::read_header(&mut stream)).await {
                            Ok(Ok(addr)) => addr.unwrap_or(peer),
                            Ok(Err(e)) => {
                                tracing::info!(error = %e, peer = %peer.ip(), "connection refused");
                                return;
                            }
                            Err(_) => {
                                serving.gate.counters().timed_out_head.fetch_add(1, Ordering::Relaxed);
                                tracing::info!(peer = %peer.ip(), "no PROXY protocol header in time; connection closed");
                                return;
                            }
                        }
                    } else {
                        peer
                    };
                    if let Err(Refusal::PerIp | Refusal::Global) = ticket.claim(peer.ip()) {
                        tracing::debug!(client.ip = %peer.ip(), "connection refused: max_connections_per_ip");
                        return;
                    }
                    let result = match &serving.tls {
                        None => {
                            let (stream, read, deadline) = match &serving.fast {
                                None => (stream, Bytes::new(), deadline),
                                Some(fast) => {
                                    let halves = h1::io::split_plain(stream);
                                    match fast_first(&serving, fast, halves, peer, false, deadline, closing.clone()).await {
                                        Some((Whole::Plain(s), read, deadline)) => (s, read, deadline),
                                        _ => return,
                                    }
                                }
                            };
                            let service = (serving.make_service)(peer, false);
                            Box::pin(serve(&serving, Prefixed::new(read, stream), service, deadline, closing)).await
                        }
                        Some((tls, metrics)) => {
                            let stream = match tokio::time::timeout_at(deadline, tls.acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    metrics.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(error = %e, client.ip = %peer.ip(), "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    metrics.tls_handshake_errors.fetch_add(1, Ordering::Relaxed);
                                    serving.gate.counters().timed_out_head.fetch_add(1, Ordering::Relaxed);
                                    tracing::debug!(client.ip = %peer.ip(), "TLS handshake timed out");
                                    return;
                                }
                            };
                            let stream = Box::new(stream);
                            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                            let (stream, read, deadline) = match &serving.fast {
                                Some(fast) if !h2 => {
                                    let halves = h1::io::split_tls(stream);
                                    match fast_first(&serving, fast, halves, peer, true, deadline, closing.clone()).await {
                                        Some((Whole::Tls(s), read, deadline)) => (s, read, deadline),
                                        _ => return,
                                    }
                                }
                                _ => (stream, Bytes::new(), deadline),
                            };
                            let service = (serving.make_service)(peer, true);
                            Box::pin(serve(&serving, Prefixed::new(read, stream), service, deadline, closing)).await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, client.ip = %peer.ip(), "connection closed with an error");
                    }
                    drop(ticket);
                });
            }
        }
    }
    drop(listener);
    let _ = closing_tx.send(true);
    // Every connection task holds a ticket until it ends.
    while serving.gate.open() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves a connection on the fast path; what it hands over is for hyper: the connection, the
/// bytes already read, and the deadline of the next head.
async fn fast_first<F>(
    serving: &Listening<F>,
    fast: &FastPath,
    halves: (h1::io::Reader, h1::io::Writer),
    peer: SocketAddr,
    tls: bool,
    first_request_by: Instant,
    mut closing: watch::Receiver<bool>,
) -> Option<(Whole, Bytes, Instant)> {
    let conn = super::ConnInfo::new(peer, tls);
    let counters = serving.gate.counters();
    let ended = h1::serve(
        &fast.app,
        halves,
        &conn,
        fast.settings,
        first_request_by,
        &mut closing,
        counters,
    )
    .await;
    match ended {
        h1::Ended::Closed => None,
        h1::Ended::HandOff { io, read, served } => {
            let deadline = if served == 0 {
                first_request_by
            } else {
                Instant::now() + serving.timing.first_request
            };
            Some((io, read, deadline))
        }
    }
}

/// Serves one connection until it ends: closed by the client, by an idle or first-request
/// timeout, or gracefully at shutdown.
async fn serve<I, S, B, F>(
    serving: &Listening<F>,
    io: I,
    service: S,
    first_request_by: Instant,
    mut closing: watch::Receiver<bool>,
) -> Result<(), Box<dyn StdError + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let activity = Arc::new(Activity::new(first_request_by));
    let service = Tracked {
        inner: service,
        activity: Arc::clone(&activity),
    };
    let conn = serving
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let timing = serving.timing;
    let counters = serving.gate.counters();
    // Once a graceful close has begun: when the connection is dropped regardless.
    let mut hard_stop: Option<Instant> = None;
    loop {
        let wake = hard_stop.unwrap_or_else(|| activity.deadline(timing));
        tokio::select! {
            result = conn.as_mut() => {
                // hyper's own head timer (for later requests' heads, and racing ours for the
                // first) ends the connection with a timeout error: counted the same way.
                let timed_out = result.as_ref().err().and_then(|e| e.downcast_ref::<hyper::Error>()).is_some_and(hyper::Error::is_timeout);
                if timed_out && hard_stop.is_none() && activity.requests.load(Ordering::Acquire) == 0 {
                    counters.timed_out_head.fetch_add(1, Ordering::Relaxed);
                }
                return result;
            }
            () = activity.changed.notified(), if hard_stop.is_none() => {} // a request ended: look again
            changed = closing.changed(), if hard_stop.is_none() => {
                if changed.is_ok() && *closing.borrow() {
                    conn.as_mut().graceful_shutdown();
                    // The server's drain timeout bounds what is still in flight.
                    hard_stop = Some(Instant::now() + Duration::from_secs(24 * 3600));
                }
            }
            () = tokio::time::sleep_until(wake) => {
                if hard_stop.is_some() {
                    return Ok(()); // dropped: closed
                }
                if let Some(why) = activity.expired(timing) {
                    match why {
                        Expired::FirstRequest => counters.timed_out_head.fetch_add(1, Ordering::Relaxed),
                        Expired::Idle => counters.closed_idle.fetch_add(1, Ordering::Relaxed),
                    };
                    conn.as_mut().graceful_shutdown();
                    // A peer that does not read its GOAWAY or close gets a short grace.
                    hard_stop = Some(Instant::now() + timing.first_request.min(Duration::from_secs(5)));
                }
            }
        }
    }
}

/// What a connection is doing: requests in flight, requests so far, when the last ended.
struct Activity {
    in_flight: AtomicU32,
    requests: AtomicU64,
    /// Milliseconds after `origin` the last request ended.
    last_ms: AtomicU64,
    origin: Instant,
    first_request_by: Instant,
    /// Told when a request ends, so an idle deadline is taken from then.
    changed: tokio::sync::Notify,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expired {
    FirstRequest,
    Idle,
}

impl Activity {
    fn new(first_request_by: Instant) -> Self {
        Activity {
            in_flight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            origin: Instant::now(),
            first_request_by,
            changed: tokio::sync::Notify::new(),
        }
    }

    /// When the connection should be looked at next.
    fn deadline(&self, timing: Timing) -> Instant {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Instant::now() + timing.idle;
        }
        if self.requests.load(Ordering::Acquire) == 0 {
            return self.first_request_by;
        }
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Acquire)) + timing.idle
    }

    /// Whether the connection has waited too long, and for what.
    fn expired(&self, timing: Timing) -> Option<Expired> {
        if self.in_flight.load(Ordering::Acquire) > 0 || Instant::now() < self.deadline(timing) {
            return None;
        }
        Some(if self.requests.load(Ordering::Acquire) == 0 {
            Expired::FirstRequest
        } else {
            Expired::Idle
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }
}

/// One request of the connection, from its head to its response head (the response body may
/// stream on: a graceful close lets it finish).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        let ms = u64::try_from(a.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        a.last_ms.store(ms, Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
        a.changed.notify_one();
    }
}

/// A service whose calls are counted in the connection's [`Activity`].
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: hyper::service::Service<Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Counted<S::Future> {
        let guard = self.activity.begin();
        Counted {
            inner: self.inner.call(req),
            _guard: guard,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future, holding its [`InFlight`] place until it resolves or is dropped.
    struct Counted<F> {
        #[pin]
        inner: F,
        _guard: InFlight,
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}
