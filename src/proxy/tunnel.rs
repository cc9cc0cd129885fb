//! Tunnels: an upgraded client connection (WebSocket after a `101`, or an allowed `CONNECT`)
//! joined to the upgraded upstream connection. A tunnel ends when either side closes, when no
//! byte has moved in either direction for the idle timeout, or at its maximum lifetime, so a
//! tunnel can never outlive its welcome by much (note: revoking the key that opened it does not
//! close it before then).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::telemetry::{Held, Metrics};

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub idle: Duration,
    pub max_lifetime: Duration,
}

/// Records the time of the last byte moved (milliseconds since `start`).
struct Activity<T> {
    inner: T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Activity<T> {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Waits for both upgrades, then copies both ways within `limits`.
pub async fn run(client: OnUpgrade, upstream: OnUpgrade, limits: Limits, metrics: Arc<Metrics>) {
    let (c, u) = match (client.await, upstream.await) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let _open = Held::enter(&metrics.tunnels_open);
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut c = Activity {
        inner: TokioIo::new(c),
        start,
        last: Arc::clone(&last),
    };
    let mut u = Activity {
        inner: TokioIo::new(u),
        start,
        last: Arc::clone(&last),
    };
    let check = (limits.idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let watchdog = async {
        loop {
            tokio::time::sleep(check).await;
            let now = start.elapsed();
            let idle_for = now.saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if idle_for >= limits.idle {
                return "idle timeout";
            }
            if now >= limits.max_lifetime {
                return "maximum lifetime";
            }
        }
    };
    tokio::select! {
        r = tokio::io::copy_bidirectional(&mut c, &mut u) => match r {
            Ok((up, down)) => tracing::debug!(up, down, "tunnel closed"),
            Err(e) => tracing::debug!(error = %e, "tunnel ended"),
        },
        why = watchdog => tracing::debug!(reason = why, "tunnel closed by keygate"),
    }
}
