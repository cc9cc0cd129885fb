//! Keep-alive connections to a plain `http://` HTTP/1.1 upstream: the hot path's client.
//!
//! A request takes the most recently used idle connection (or opens one) and is exchanged on
//! it in the caller's task with keygate's own codec ([`super::h1::client`]): no task and no
//! channel per request. The connection goes back to the pool when the response body has been
//! read to its end — from the body itself ([`PooledBody`]), so no connection is shared before
//! its previous exchange is over. An idle connection the upstream closed is noticed before it
//! is used; an idempotent request that found its reused connection closed without a byte of
//! answer is sent again on another connection when its body can be replayed (none, or
//! buffered), never otherwise. Upgrades go over a connection of their own through hyper, which hands it over
//! for the tunnel. Connections are dialled by hyper-util's `HttpConnector` (connect timeout,
//! happy eyeballs over the resolved addresses, `TCP_NODELAY`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service as _;

use super::body::UpstreamBody;
use super::h1::client::{self, ClientError, Conn, Decoding, Framing};
use crate::telemetry::PoolStats;
use std::sync::atomic::Ordering;

mod fetch;
pub use fetch::Fetch;

/// A request written as its HTTP/1.1 head (origin-form target, keygate's framing), with its
/// method and the body that follows the head.
pub struct Written {
    pub head: Vec<u8>,
    pub framing: Framing,
    pub method: http::Method,
    pub body: UpstreamBody,
    /// When it set out (the pool's clock for this request).
    pub sent_at: Instant,
}

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    /// Dialling failed (its source says why: a timed-out connect is an `io::Error` of kind
    /// `TimedOut`).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    Http(hyper::Error),
    Exchange(ClientError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
            SendError::Exchange(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(&**e),
            SendError::Http(e) => Some(e),
            SendError::Exchange(e) => Some(e),
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

pub struct H1Pool {
    /// `http://host:port` of the upstream.
    target: Uri,
    connector: HttpConnector,
    idle_timeout: Duration,
    max_idle: usize,
    /// Most recently used at the back; the oldest (first to expire) at the front.
    idle: Mutex<VecDeque<Idle>>,
    /// The task closing expired idle connections runs (started with the first connection).
    reaping: std::sync::atomic::AtomicBool,
    stats: Arc<PoolStats>,
}

/// How many pooled connections one request tries before opening a new one.
const REUSE_ATTEMPTS: usize = 2;
/// How many busy idle-list entries a checkout passes over before opening a new connection.
const CHECKOUT_SCAN: usize = 4;

impl H1Pool {
    /// `connector` carries the connect timeout and socket options.
    pub fn new(
        target: Uri,
        connector: HttpConnector,
        idle_timeout: Duration,
        max_idle: usize,
        stats: Arc<PoolStats>,
    ) -> Arc<Self> {
        Arc::new(H1Pool {
            target,
            connector,
            idle_timeout,
            max_idle,
            idle: Mutex::new(VecDeque::new()),
            reaping: std::sync::atomic::AtomicBool::new(false),
            stats,
        })
    }

    /// Sends `req` and resolves to the response head; its body hands the connection back.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        // Origin-form (`/path?query`) on the wire, as a client of an origin server sends it.
        if req.uri().authority().is_some() {
            let target = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(target);
        }
        if req.headers().contains_key(http::header::UPGRADE) {
            return Box::pin(self.send_upgrade(req)).await;
        }
        let mut head = Vec::with_capacity(1024);
        let framing = client::encode_head(&req, &mut head);
        let (parts, body) = req.into_parts();
        let written = Written {
            head,
            framing,
            method: parts.method,
            body,
            sent_at: Instant::now(),
        };
        self.send_written(written, 0).await
    }

    /// Sends a request already written as a head (see [`Written`]): [`Fetch`] for the common
    /// case, which takes the rest here.
    pub fn fetch(self: &Arc<Self>, written: Written, deadline: tokio::time::Instant) -> Fetch<'_> {
        Fetch::new(self, written, deadline)
    }

    /// Sends a request already written as a head (see [`Written`]), after `tried` pooled
    /// connections failed it (`REUSE_ATTEMPTS` or more: straight to a new connection).
    async fn send_written(
        self: &Arc<Self>,
        written: Written,
        tried: usize,
    ) -> Result<Response<PooledBody>, SendError> {
        let Written {
            head,
            framing,
            method,
            mut body,
            sent_at,
        } = written;
        // Sent again only if idempotent (RFC 9110 §9.2.2): the upstream may have acted on it
        // before the connection dropped, and only a body that can be replayed.
        let replayable =
            idempotent(&method) && (framing == Framing::None || matches!(body, Either::Right(_)));
        for attempt in tried..REUSE_ATTEMPTS {
            // A retry comes after a failed exchange, which may have taken a while.
            let now = if attempt == 0 {
                sent_at
            } else {
                Instant::now()
            };
            let Some(conn) = self.checkout(now) else {
                break;
            };
            let replay = replayable.then(|| body_copy(&body));
            match self.exchange(conn, &head, body, framing, &method).await {
                Ok(resp) => {
                    self.stats.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(resp);
                }
                // Closed while idle, before any answer: another connection may take it.
                Err(ClientError::Closed | ClientError::Io(_)) if replay.is_some() => {
                    body = replay.into_iter().flatten().next().unwrap_or(body_none());
                }
                Err(e) => return Err(SendError::Exchange(e)),
            }
        }
        let conn = self.connect().await?;
        self.exchange(conn, &head, body, framing, &method)
            .await
            .map_err(SendError::Exchange)
    }

    /// One request and its response head on `conn`.
    async fn exchange(
        self: &Arc<Self>,
        mut conn: Conn,
        head: &[u8],
        mut body: UpstreamBody,
        framing: Framing,
        method: &http::Method,
    ) -> Result<Response<PooledBody>, ClientError> {
        let mut buf = crate::proxy::h1::spare::take();
        let (mut r, mut w) = conn.stream.split();
        let (parsed, body_sent) = if framing == Framing::None {
            tokio::io::AsyncWriteExt::write_all(&mut w, head).await?;
            (client::read_head(&mut r, &mut buf, method).await?, true)
        } else {
            let mut out = Vec::with_capacity(head.len() + 256);
            out.extend_from_slice(head);
            let writing = client::write_body(&mut w, &mut out, &mut body, framing);
            let reading = client::read_head(&mut r, &mut buf, method);
            tokio::pin!(writing, reading);
            tokio::select! {
                biased;
                written = &mut writing => {
                    written?;
                    (reading.await?, true)
                }
                // Answered before the body was through (an early 413, say): the connection
                // cannot carry another request.
                parsed = &mut reading => (parsed?, false),
            }
        };
        drop(body);
        Ok(self.answered(conn, buf, parsed, body_sent, Instant::now()))
    }

    /// The response whose head `conn` answered (read into `buf`): its body is read from
    /// `conn`, which comes back here at the body's end if `body_sent` and the head allow it.
    /// `since`: a clock reading from the exchange, no later than its end; the connection's
    /// idle time counts from it (a little early, so it is retired a little early, never late).
    fn answered(
        self: &Arc<Self>,
        conn: Conn,
        buf: BytesMut,
        head: client::ResponseHead,
        body_sent: bool,
        since: Instant,
    ) -> Response<PooledBody> {
        let client::ResponseHead {
            response,
            fields,
            framing,
            reusable,
        } = head;
        let decoding = Decoding::new(conn, buf, framing, reusable && body_sent);
        response.map(|()| PooledBody {
            inner: Inner::Own {
                decoding,
                home: Arc::clone(self),
                since,
            },
            fields: Some(fields),
        })
    }

    /// An upgrade: a connection of its own through hyper, which hands it to the tunnel.
    async fn send_upgrade(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        let io = self.dial().await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(SendError::Http)?;
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        let resp = sender.send_request(req).await.map_err(SendError::Http)?;
        Ok(resp.map(PooledBody::unpooled))
    }

    /// The most recently used idle connection that still looks open, among the last few
    /// checked in; closed and expired ones met on the way are dropped.
    /// `now`: when the request set out (one clock read per request, not one per step).
    fn checkout(&self, now: Instant) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut looked = 0;
        while let Some(c) = idle.pop_back() {
            looked += 1;
            if !self.expired(&c, now) {
                self.count_idle(&idle);
                return Some(c.conn);
            }
            if looked >= CHECKOUT_SCAN {
                break;
            }
        }
        self.count_idle(&idle);
        None
    }

    fn count_idle(&self, idle: &VecDeque<Idle>) {
        self.stats.idle.store(idle.len() as u64, Ordering::Relaxed);
    }

    /// `now`: when the connection's idle time began (see [`H1Pool::answered`]).
    fn checkin(&self, conn: Conn, now: Instant) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // By age only, here on every request: whether a connection is still open is asked
        // where it matters (the one a checkout takes) and by the reaper.
        while idle.front().is_some_and(|c| self.aged(c, now)) {
            idle.pop_front();
        }
        // Full: the oldest goes, never the connection that just proved itself.
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle { conn, since: now });
        self.count_idle(&idle);
    }

    /// Drops (closes) the oldest idle connections while they are expired or closed.
    fn evict_expired(&self, idle: &mut VecDeque<Idle>, now: Instant) {
        while idle.front().is_some_and(|c| self.expired(c, now)) {
            idle.pop_front();
        }
    }

    /// Idle too long, or closed by the upstream.
    fn expired(&self, c: &Idle, now: Instant) -> bool {
        self.aged(c, now) || !c.conn.looks_alive()
    }

    /// Idle longer than `idle_timeout`.
    fn aged(&self, c: &Idle, now: Instant) -> bool {
        now.saturating_duration_since(c.since) > self.idle_timeout
    }

    /// Closes expired idle connections even when no request comes to do it, until the pool
    /// itself is gone.
    fn start_reaper(self: &Arc<Self>) {
        if self
            .reaping
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let pool = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(pool) = pool.upgrade() else { return };
                let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                pool.evict_expired(&mut idle, Instant::now());
                pool.count_idle(&idle);
            }
        });
    }

    /// A new TCP connection to the upstream.
    async fn dial(&self) -> Result<hyper_util::rt::TokioIo<tokio::net::TcpStream>, SendError> {
        self.connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))
    }

    async fn connect(self: &Arc<Self>) -> Result<Conn, SendError> {
        self.start_reaper();
        let io = self.dial().await?;
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        Ok(Conn::new(io.into_inner(), Arc::clone(&self.stats)))
    }
}

/// Whether a request may be sent again after its connection dropped (RFC 9110 §9.2.2): the
/// upstream may have acted on it already.
fn idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::PUT
            | http::Method::DELETE
            | http::Method::TRACE
    )
}

/// A copy of a body that can be sent again (none, or buffered).
fn body_copy(body: &UpstreamBody) -> Option<UpstreamBody> {
    match body {
        Either::Right(full) => Some(Either::Right(full.clone())),
        Either::Left(_) => None,
    }
}

fn body_none() -> UpstreamBody {
    Either::Right(http_body_util::Full::new(Bytes::new()))
}

/// An upstream response body; when it has been read to its end, its connection goes back to
/// the pool (a body dropped before its end takes its connection down with it).
pub struct PooledBody {
    inner: Inner,
    /// The response's fields as the upstream sent them, from keygate's own codec: not yet in
    /// the response's header map (see [`client::Fields`]). Taken by keygate's writer, or put
    /// into the map before anything else sees the response.
    fields: Option<client::Fields>,
}

enum Inner {
    /// From hyper: an upgrade, HTTP/2 or TLS upstream (never pooled here).
    Hyper(Incoming),
    Own {
        decoding: Decoding,
        home: Arc<H1Pool>,
        /// See [`H1Pool::answered`].
        since: Instant,
    },
}

impl PooledBody {
    /// A body whose connection is not pooled here.
    pub fn unpooled(inner: Incoming) -> Self {
        PooledBody {
            inner: Inner::Hyper(inner),
            fields: None,
        }
    }

    /// The response's fields not yet in its header map (see [`PooledBody::fields`]).
    pub fn take_fields(&mut self) -> Option<client::Fields> {
        self.fields.take()
    }

    /// Whether the response head came through keygate's own codec, which drops hop-by-hop
    /// headers as it parses.
    pub fn hop_by_hop_dropped(&self) -> bool {
        matches!(self.inner, Inner::Own { .. })
    }

    fn release(&mut self) {
        if let Inner::Own {
            decoding,
            home,
            since,
        } = &mut self.inner
            && let Some(conn) = decoding.take_leftover()
        {
            home.checkin(conn, *since);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.inner {
            Inner::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::Own { decoding, .. } => {
                let polled = decoding.poll_frame(cx).map_err(Into::into);
                if decoding.is_done() {
                    self.release();
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Hyper(b) => b.is_end_stream(),
            Inner::Own { decoding, .. } => decoding.is_done(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Hyper(b) => b.size_hint(),
            Inner::Own { decoding, .. } => decoding.size_hint(),
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304, `Content-Length: 0`) may never be polled.
        self.release();
        // The read buffer serves another exchange, unless the fields still share it.
        self.fields = None;
        if let Inner::Own { decoding, .. } = &mut self.inner {
            crate::proxy::h1::spare::give(decoding.take_buf());
        }
    }
}
