//! Keep-alive connections to a plain `http://` HTTP/1.1 upstream: the hot path's client.
//!
//! A request takes the most recently used idle connection (or opens one) and sends on it in the
//! caller's task. The connection goes back to the pool when the response body has been read to
//! its end — from the body itself ([`PooledBody`]), so no task is spawned per request and no
//! connection is shared before its previous exchange is over. A request that never left (the
//! idle connection had been closed meanwhile) is sent again on another connection; one that
//! left is never resent. Connections are dialled by hyper-util's `HttpConnector` (connect
//! timeout, happy eyeballs over the resolved addresses, `TCP_NODELAY`).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service as _;

use super::body::UpstreamBody;
use crate::telemetry::PoolStats;
use std::sync::atomic::Ordering;

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    /// Dialling failed (its source says why: a timed-out connect is an `io::Error` of kind
    /// `TimedOut`).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    Http(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Http(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(&**e),
            SendError::Http(e) => Some(e),
        }
    }
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
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
        // Origin-form (`/path?query`) on the wire, as a client of an origin server sends it;
        // hyper's connection writes whatever form the URI has.
        if req.uri().authority().is_some() {
            let target = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(target);
        }
        for _ in 0..REUSE_ATTEMPTS {
            let Some(mut sender) = self.checkout() else {
                break;
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.stats.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(self.wrap(resp, sender));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: the connection had closed (or was busy); let it go.
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Http(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        let resp = sender.send_request(req).await.map_err(SendError::Http)?;
        Ok(self.wrap(resp, sender))
    }

    fn wrap(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: SendRequest<UpstreamBody>,
    ) -> Response<PooledBody> {
        // A connection that switched protocols is a tunnel now, never reusable.
        let home = (resp.status() != http::StatusCode::SWITCHING_PROTOCOLS)
            .then(|| (sender, Arc::clone(self)));
        resp.map(|inner| PooledBody { inner, home })
    }

    /// The most recently used idle connection that can take a request now, among the last
    /// few checked in. Closed and expired ones met on the way are dropped; one still finishing
    /// its previous exchange (a request body the upstream answered early) stays for later.
    fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let mut i = idle.len();
        let mut looked = 0;
        while i > 0 && looked < CHECKOUT_SCAN {
            i -= 1;
            let c = &idle[i];
            if self.expired(c) {
                idle.remove(i);
            } else if c.sender.is_ready() {
                let taken = idle.remove(i).map(|c| c.sender);
                self.count_idle(&idle);
                return taken;
            } else {
                looked += 1;
            }
        }
        self.count_idle(&idle);
        None
    }

    fn count_idle(&self, idle: &VecDeque<Idle>) {
        self.stats.idle.store(idle.len() as u64, Ordering::Relaxed);
    }

    fn checkin(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        self.evict_expired(&mut idle);
        // Full: the oldest goes, never the connection that just proved itself.
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle {
            sender,
            since: Instant::now(),
        });
        self.count_idle(&idle);
    }

    /// Drops (closes) the oldest idle connections while they are expired or closed.
    fn evict_expired(&self, idle: &mut VecDeque<Idle>) {
        while idle.front().is_some_and(|c| self.expired(c)) {
            idle.pop_front();
        }
    }

    /// Idle too long, or closed by the upstream.
    fn expired(&self, c: &Idle) -> bool {
        c.sender.is_closed() || c.since.elapsed() > self.idle_timeout
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
                pool.evict_expired(&mut idle);
                pool.count_idle(&idle);
            }
        });
    }

    async fn connect(self: &Arc<Self>) -> Result<SendRequest<UpstreamBody>, SendError> {
        self.start_reaper();
        let io = self
            .connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(SendError::Http)?;
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::clone(&self.stats);
        tokio::spawn(async move {
            let _open = crate::telemetry::Held::enter(&stats.open);
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// An upstream response body; when it has been read to its end, its connection goes back to
/// the pool (a body dropped before its end takes its connection down with it).
pub struct PooledBody {
    inner: Incoming,
    home: Option<(SendRequest<UpstreamBody>, Arc<H1Pool>)>,
}

impl PooledBody {
    /// A body whose connection is not pooled here.
    pub fn unpooled(inner: Incoming) -> Self {
        PooledBody { inner, home: None }
    }

    fn release(&mut self) {
        if let Some((sender, pool)) = self.home.take() {
            pool.checkin(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            // Trailers end a body too; servers may drop it right after them.
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => self.release(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304, `Content-Length: 0`) may never be polled.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
