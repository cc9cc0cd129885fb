//! A connection to the upstream as keygate's HTTP/1.1 client holds it: the socket, its place in
//! the pool's `open` gauge, and the one timer its requests' response deadlines share.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::net::TcpStream;

use super::Armed;

/// A connection to the upstream, counted in the pool's `open` gauge while it lives.
pub struct Conn {
    pub stream: TcpStream,
    stats: std::sync::Arc<crate::telemetry::PoolStats>,
    /// The response deadline of the request on it, made once per connection and re-armed
    /// lazily (see [`Conn::poll_deadline`]).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The waker the timer holds.
    armed: Armed,
}

impl Conn {
    pub fn new(stream: TcpStream, stats: std::sync::Arc<crate::telemetry::PoolStats>) -> Conn {
        stats
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Conn {
            stream,
            stats,
            timer: None,
            armed: Armed::default(),
        }
    }

    /// Ready once `deadline` has passed; until then the task is woken when it does. The
    /// connection's one timer is moved earlier when needed, and a timer set for an earlier
    /// request's (earlier) deadline is moved on when it fires: a keep-alive connection does not
    /// register a timer for every request. Nor is the timer polled again while it holds this
    /// task's waker and has not fired.
    pub fn poll_deadline(
        &mut self,
        cx: &mut Context<'_>,
        deadline: tokio::time::Instant,
    ) -> Poll<()> {
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if deadline < timer.deadline() {
            timer.as_mut().reset(deadline);
            self.armed.reset();
        }
        if !timer.is_elapsed() && self.armed.holds(cx) {
            return Poll::Pending;
        }
        loop {
            std::task::ready!(self.armed.poll(timer.as_mut(), cx));
            if tokio::time::Instant::now() >= deadline {
                return Poll::Ready(());
            }
            timer.as_mut().reset(deadline);
        }
    }

    /// Whether an idle connection still looks open: no end of stream or stray bytes arrived
    /// while it waited (readiness is checked without a syscall when nothing happened).
    pub fn looks_alive(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stats
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
