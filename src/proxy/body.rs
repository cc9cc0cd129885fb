//! Request bodies: as the client sends them (streamed, or — when a key's restriction must read
//! a JSON field first — buffered), and on their way upstream: streamed, never buffered beyond
//! that, capped at the configured size, and cut when the client stops sending. A failure of the
//! client's body is told apart from the upstream's ([`BodyError`]), so a malformed chunk is the
//! client's 400 and a stalled upload its 408 — never a 502 or 504 blamed on the upstream.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// The client's body: as it arrives (from hyper, or from keygate's own HTTP/1.1 path), or read
/// whole before authorization (a key's restriction on a JSON field) and replayed from memory.
/// One type for all three, so a request is never rebuilt to change its body's type.
pub enum Inbound {
    Hyper(Incoming),
    Fast(super::h1::FastBody),
    Buffered(Full<Bytes>),
}

impl Body for Inbound {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Inbound::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(|_| BodyError::Malformed),
            Inbound::Fast(b) => Pin::new(b).poll_frame(cx),
            Inbound::Buffered(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Inbound::Hyper(b) => b.is_end_stream(),
            Inbound::Fast(b) => b.is_end_stream(),
            Inbound::Buffered(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Inbound::Hyper(b) => b.size_hint(),
            Inbound::Fast(b) => b.size_hint(),
            Inbound::Buffered(b) => b.size_hint(),
        }
    }
}

/// What a request's body is left as once taken (forwarded, or handed to a path of its own).
impl Default for Inbound {
    fn default() -> Self {
        Inbound::Buffered(Full::default())
    }
}

/// The body sent upstream.
pub type UpstreamBody = Either<ClientStream, Full<Bytes>>;

/// What went wrong with the client's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the request body exceeds the size limit")]
    TooLarge,
    /// Malformed framing (a bad chunk size, a bare LF, an overflow, data short of its length)
    /// or a client that went away mid-body.
    #[error("the request body is malformed or was cut short")]
    Malformed,
    #[error("the request body did not arrive in time")]
    Timeout,
}

/// The client's body on its way upstream, a streamed one capped at `limit` bytes and cut after
/// `idle` without a byte.
pub fn upstream_body(body: Inbound, limit: usize, idle: Duration) -> UpstreamBody {
    match body {
        Inbound::Buffered(full) => Either::Right(full),
        incoming => Either::Left(ClientStream::new(incoming, limit, idle)),
    }
}

/// The client's streamed body, limited in size and in idle time. The timer exists only once
/// the body has had to wait (most bodies arrive with their head).
pub struct ClientStream {
    inner: Inbound,
    remaining: usize,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// A frame arrived since the timer was armed: push its deadline back before waiting.
    progressed: bool,
}

impl ClientStream {
    pub fn new(inner: Inbound, limit: usize, idle: Duration) -> Self {
        ClientStream {
            inner,
            remaining: limit,
            idle,
            timer: None,
            progressed: false,
        }
    }
}

impl Body for ClientStream {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if data.len() > this.remaining {
                        return Poll::Ready(Some(Err(BodyError::TooLarge)));
                    }
                    this.remaining -= data.len();
                }
                this.progressed = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let deadline = Instant::now() + this.idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if std::mem::take(&mut this.progressed) {
                    timer.as_mut().reset(deadline);
                }
                ready!(timer.as_mut().poll(cx));
                Poll::Ready(Some(Err(BodyError::Timeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's body, if it failed, among the causes of an error.
pub fn body_error_in(e: &(dyn std::error::Error + 'static)) -> Option<BodyError> {
    let mut source = Some(e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<BodyError>() {
            return Some(*b);
        }
        source = s.source();
    }
    None
}
