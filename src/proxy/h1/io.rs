//! The connection's two halves, so the request body can be read while the response is
//! written, and put back together when hyper takes the connection over ([`Prefixed`] replays
//! what the fast path had already read).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// How much a read asks for when the buffer is empty.
const READ_SIZE: usize = 4096;

pub enum Reader {
    Plain(OwnedReadHalf),
    Tls(ReadHalf<Box<TlsStream>>),
    /// Lent to a request body.
    Taken,
}

pub enum Writer {
    Plain(OwnedWriteHalf),
    Tls(WriteHalf<Box<TlsStream>>),
}

/// The whole connection, for hyper.
pub enum Whole {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

pub fn split_plain(s: TcpStream) -> (Reader, Writer) {
    let (r, w) = s.into_split();
    (Reader::Plain(r), Writer::Plain(w))
}

pub fn split_tls(s: Box<TlsStream>) -> (Reader, Writer) {
    let (r, w) = tokio::io::split(s);
    (Reader::Tls(r), Writer::Tls(w))
}

/// Puts the halves back together; `None` if they are not two halves of one connection
/// (never, as the fast path uses them).
pub fn reunite(r: Reader, w: Writer) -> Option<Whole> {
    match (r, w) {
        (Reader::Plain(r), Writer::Plain(w)) => r.reunite(w).ok().map(Whole::Plain),
        (Reader::Tls(r), Writer::Tls(w)) if r.is_pair_of(&w) => Some(Whole::Tls(r.unsplit(w))),
        _ => None,
    }
}

impl Reader {
    /// Reads what is there into `buf`: 0 at end of stream. A plain connection waits for
    /// readiness before it reserves any buffer, so an idle keep-alive connection holds none.
    /// The read itself goes through `poll_read`, which takes a short read as proof the socket
    /// is drained: the next wait goes straight to epoll instead of trying a read that would
    /// only answer `EAGAIN` (one `recvfrom` fewer per request). A poll, not a future: the
    /// connection's wait polls it beside its timer (see `conn::serve`), and readiness is kept in
    /// the socket's one reader slot, not in a waiter list entry made and removed per wait.
    pub fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Reader::Plain(r) => {
                std::task::ready!(r.as_ref().poll_read_ready(cx))?;
                room(buf);
                poll_read_buf(Pin::new(r), cx, buf)
            }
            Reader::Tls(r) => {
                room(buf);
                poll_read_buf(Pin::new(r), cx, buf)
            }
            Reader::Taken => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Reader::Plain(r) => poll_read_buf(Pin::new(r), cx, buf),
            Reader::Tls(r) => poll_read_buf(Pin::new(r), cx, buf),
            Reader::Taken => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

/// Room for a read: a spare buffer when `buf` has none yet.
fn room(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = super::spare::take();
    }
    buf.reserve(READ_SIZE);
}

/// `poll_read` onto the end of a `BytesMut`, into its spare room (not zeroed first); at least
/// [`READ_SIZE`] of room is made.
pub(super) fn poll_read_buf<R: AsyncRead>(
    r: Pin<&mut R>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    buf.reserve(READ_SIZE);
    tokio_util::io::poll_read_buf(r, cx, buf)
}

impl Writer {
    /// Writes `bytes` whole; a client that takes none of them for `stall` is cut off (the
    /// write is first tried without waiting, so the usual case arms no timer).
    pub async fn write_all(
        &mut self,
        mut bytes: &[u8],
        stall: std::time::Duration,
    ) -> io::Result<()> {
        bytes = &bytes[self.try_write_now(bytes)?..];
        if bytes.is_empty() {
            return Ok(());
        }
        let write = async {
            match self {
                Writer::Plain(w) => w.write_all(bytes).await,
                Writer::Tls(w) => w.write_all(bytes).await,
            }
        };
        match tokio::time::timeout(stall, write).await {
            Ok(result) => result,
            Err(_) => Err(io::ErrorKind::TimedOut.into()),
        }
    }

    /// Writes what the socket takes without waiting: how much (a TLS stream is not tried).
    pub fn try_write_now(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let Writer::Plain(w) = self else {
            return Ok(0);
        };
        let mut done = 0;
        while done < bytes.len() {
            match w.try_write(&bytes[done..]) {
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Whether what is written may sit in a buffer of the writer's own until flushed (TLS).
    pub fn buffers(&self) -> bool {
        matches!(self, Writer::Tls(_))
    }

    /// Flushes what TLS buffered; a client that takes none of it for `stall` is cut off.
    pub async fn flush(&mut self, stall: std::time::Duration) -> io::Result<()> {
        match self {
            Writer::Plain(_) => Ok(()),
            Writer::Tls(w) => match tokio::time::timeout(stall, w.flush()).await {
                Ok(result) => result,
                Err(_) => Err(io::ErrorKind::TimedOut.into()),
            },
        }
    }
}

/// A body's next frame if it is already there (`None`: it would have to be waited for; the
/// body has registered the waker as usual).
pub async fn frame_now<B: http_body::Body + Unpin>(
    body: &mut B,
) -> Option<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(f) => Some(f),
            Poll::Pending => None,
        })
    })
    .await
}

pin_project_lite::pin_project! {
    /// A connection with bytes already read from it in front.
    pub struct Prefixed<I> {
        prefix: Bytes,
        #[pin]
        inner: I,
    }
}

impl<I> Prefixed<I> {
    pub fn new(prefix: Bytes, inner: I) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<I: AsyncRead> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for Prefixed<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, b)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
