//! The hot path's exchange as one future written by hand ([`Fetch`]): a request without a
//! body on an idle pooled connection — its head written, the response head read and parsed —
//! in a future of a few hundred bytes. The `async fn`s it replaces for this case were a stack
//! of futures (~1.8 KiB), each built and then copied whole by the one above it, and into every
//! request's own future. Anything else — a body to send, no idle connection, retries beyond
//! the pooled attempts — goes on through [`H1Pool::send_written`], boxed: the same exchange
//! rules, the same retry rules.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::BytesMut;
use http::Response;
use tokio::io::AsyncWrite;

use super::{H1Pool, PooledBody, REUSE_ATTEMPTS, SendError, Written, idempotent};
use crate::proxy::h1::client::{self, ClientError, Conn, Framing};
use crate::proxy::h1::spare;

type Rest<'a> = Pin<Box<dyn Future<Output = Result<Response<PooledBody>, SendError>> + Send + 'a>>;

/// Sends a written request and resolves to its response head (see the module's doc).
pub struct Fetch<'a> {
    pool: &'a Arc<H1Pool>,
    /// `None` once answered.
    written: Option<Written>,
    /// The pooled connection the request is on, and how much of its head it has taken.
    conn: Option<Conn>,
    sent: usize,
    buf: BytesMut,
    /// Pooled connections tried so far.
    tried: usize,
    /// Everything but the common case, through the `async fn`s.
    rest: Option<Rest<'a>>,
    /// The response head is due by then (`upstream.response_timeout` from `sent_at`).
    deadline: tokio::time::Instant,
}

impl<'a> Fetch<'a> {
    pub fn new(pool: &'a Arc<H1Pool>, written: Written, deadline: tokio::time::Instant) -> Self {
        Fetch {
            deadline,
            pool,
            written: Some(written),
            conn: None,
            sent: 0,
            buf: BytesMut::new(),
            tried: 0,
            rest: None,
        }
    }

    /// The head out, then the response head in, on the connection taken.
    fn exchange(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<PooledBody>, ClientError>> {
        let (Some(conn), Some(written)) = (&mut self.conn, &self.written) else {
            return Poll::Ready(Err(ClientError::Closed));
        };
        while self.sent < written.head.len() {
            let n = ready!(Pin::new(&mut conn.stream).poll_write(cx, &written.head[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(ClientError::Io(std::io::ErrorKind::WriteZero.into())));
            }
            self.sent += n;
        }
        if self.buf.capacity() == 0 {
            self.buf = spare::take();
        }
        let head = ready!(client::poll_head(
            Pin::new(&mut conn.stream),
            cx,
            &mut self.buf,
            &written.method
        ))?;
        let Some(conn) = self.conn.take() else {
            return Poll::Ready(Err(ClientError::Closed));
        };
        // The first attempt's clock reading (a retry's would be later, and is not kept).
        let since = written.sent_at;
        self.written = None;
        self.pool.stats.reused.fetch_add(1, Ordering::Relaxed);
        let buf = std::mem::take(&mut self.buf);
        Poll::Ready(Ok(self.pool.answered(conn, buf, head, true, since)))
    }
}

/// No response head by the deadline (the client is answered 504).
fn timed_out() -> SendError {
    SendError::Exchange(ClientError::Io(std::io::ErrorKind::TimedOut.into()))
}

impl Future for Fetch<'_> {
    type Output = Result<Response<PooledBody>, SendError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            if let Some(rest) = &mut this.rest {
                return rest.as_mut().poll(cx);
            }
            let Some(written) = &this.written else {
                return Poll::Ready(Err(SendError::Exchange(ClientError::Closed)));
            };
            if this.conn.is_none() {
                // A retry comes after a failed exchange, which may have taken a while.
                let now = match this.tried {
                    0 => written.sent_at,
                    _ => Instant::now(),
                };
                let idle = (written.framing == Framing::None && this.tried < REUSE_ATTEMPTS)
                    .then(|| this.pool.checkout(now))
                    .flatten();
                match idle {
                    Some(conn) => {
                        this.conn = Some(conn);
                        this.sent = 0;
                        this.tried += 1;
                    }
                    None => {
                        // A body to send keeps every rule of the pooled attempts; with no idle
                        // connection left, or none left to try, a new one is opened.
                        let tried = match written.framing {
                            Framing::None => REUSE_ATTEMPTS,
                            _ => 0,
                        };
                        let written = this.written.take();
                        let (pool, deadline) = (this.pool, this.deadline);
                        this.rest = written.map(|w| -> Rest<'_> {
                            Box::pin(async move {
                                tokio::time::timeout_at(deadline, pool.send_written(w, tried))
                                    .await
                                    .unwrap_or_else(|_| Err(timed_out()))
                            })
                        });
                        continue;
                    }
                }
            }
            let retry = idempotent(&written.method);
            let exchanged = match this.exchange(cx) {
                Poll::Ready(exchanged) => exchanged,
                // Waiting on the upstream: by the deadline, on the connection's own timer.
                Poll::Pending => {
                    let Some(conn) = &mut this.conn else {
                        return Poll::Pending;
                    };
                    ready!(conn.poll_deadline(cx, this.deadline));
                    return Poll::Ready(Err(timed_out()));
                }
            };
            match exchanged {
                Ok(resp) => return Poll::Ready(Ok(resp)),
                // Closed while idle, before any answer: another connection may take it, if
                // the request may be sent twice (RFC 9110 §9.2.2; it has no body to replay).
                Err(ClientError::Closed | ClientError::Io(_)) if retry => {
                    this.conn = None;
                    this.buf.clear();
                }
                Err(e) => return Poll::Ready(Err(SendError::Exchange(e))),
            }
        }
    }
}
