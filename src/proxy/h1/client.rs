//! keygate's HTTP/1.1 client codec for the upstream pool: the prepared request written with
//! its head in one buffer (its body framed by keygate: a known length, else chunked), the
//! response head parsed with `httparse` (hop-by-hop headers dropped as it is read), and the
//! response body decoded by its framing (RFC 9112 §6.3: none for `HEAD`, 1xx, 204 and 304;
//! chunked; `Content-Length`; else to the connection's end).

use std::io;
use std::io::Write as _;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::chunked::{Decoder, Step};
use crate::proxy::headers::is_hop_by_hop;

/// The largest response head read from the upstream, and its most headers.
const MAX_RESPONSE_HEAD: usize = 64 << 10;
const MAX_RESPONSE_HEADERS: usize = 128;
const READ_SIZE: usize = 8192;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before answering")]
    Closed,
    #[error("the upstream's response is malformed: {0}")]
    Malformed(&'static str),
    /// The request body (the client's) failed; its error is the source.
    #[error("the request body failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A connection to the upstream, counted in the pool's `open` gauge while it lives.
pub struct Conn {
    pub stream: TcpStream,
    stats: std::sync::Arc<crate::telemetry::PoolStats>,
}

impl Conn {
    pub fn new(stream: TcpStream, stats: std::sync::Arc<crate::telemetry::PoolStats>) -> Conn {
        stats
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Conn { stream, stats }
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

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The request head in wire form and how its body follows: the body's own length when it is
/// known, else chunked; the client's `Content-Length` and `Transfer-Encoding` are never copied.
pub fn encode_head<B: Body>(req: &Request<B>, out: &mut Vec<u8>) -> Framing {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    start_line(req.method(), target, out);
    for (name, value) in req.headers() {
        if !is_framing(name) {
            field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    end_head(req.body(), req.headers(), out)
}

/// Starts a request head in `out` (cleared first): `METHOD target HTTP/1.1`.
pub fn start_line(method: &Method, target: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// One header line.
pub fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The headers that frame a message: keygate writes its own, never the client's.
pub fn is_framing(name: &HeaderName) -> bool {
    name == header::TRANSFER_ENCODING || name == header::CONTENT_LENGTH
}

/// Ends a request head with keygate's framing for `body` (`headers` are the client's, for
/// whether it declared a length) and says how the body follows.
pub fn end_head<B: Body>(body: &B, headers: &HeaderMap, out: &mut Vec<u8>) -> Framing {
    let framing = if body.is_end_stream() {
        // As sent: a client's `Content-Length: 0` stays (hyper's client keeps it too).
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some() {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        let _ = write!(out, "content-length: {n}\r\n");
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    out.extend_from_slice(b"\r\n");
    framing
}

/// Writes the request body after its head (`out` holds the head, sent with the first bytes
/// when they are already there).
pub async fn write_body<B>(
    w: &mut (impl AsyncWrite + Unpin),
    out: &mut Vec<u8>,
    body: &mut B,
    framing: Framing,
) -> Result<(), ClientError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut remaining = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    if framing != Framing::None {
        loop {
            let frame = if out.is_empty() {
                std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
            } else {
                // The head waits for the first body bytes only if they are already here.
                let now = super::io::frame_now(&mut *body).await;
                match now {
                    Some(f) => f,
                    None => {
                        w.write_all(out).await?;
                        out.clear();
                        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
                    }
                }
            };
            let data = match frame {
                None => break,
                Some(Err(e)) => return Err(ClientError::Body(e.into())),
                Some(Ok(f)) => match f.into_data() {
                    Ok(d) if !d.is_empty() => d,
                    _ => continue,
                },
            };
            if let Some(r) = &mut remaining {
                // Never more than the length declared: the rest would be another request.
                let n = (data.len() as u64).min(*r);
                *r -= n;
                out.extend_from_slice(&data[..n as usize]);
            } else {
                let _ = write!(out, "{:x}\r\n", data.len());
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            }
            w.write_all(out).await?;
            out.clear();
        }
        match remaining {
            None => out.extend_from_slice(b"0\r\n\r\n"),
            Some(0) => {}
            // The client's body ended short of its length: never reuse this connection.
            Some(_) => {
                return Err(ClientError::Body(Box::new(
                    crate::proxy::body::BodyError::Malformed,
                )));
            }
        }
    }
    if !out.is_empty() {
        w.write_all(out).await?;
        out.clear();
    }
    Ok(())
}

/// A parsed response head: the response (body to come), its body's framing, and whether the
/// connection may carry another request after it.
pub struct ResponseHead {
    pub response: Response<()>,
    pub framing: Framing,
    pub reusable: bool,
}

/// Reads a response head from `r` into `buf` (1xx interim responses are skipped).
pub async fn read_head(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    method: &Method,
) -> Result<ResponseHead, ClientError> {
    loop {
        if !buf.is_empty()
            && let Some(head) = parse_head(buf, method)?
        {
            if head.response.status().is_informational()
                && head.response.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                continue;
            }
            return Ok(head);
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(ClientError::Malformed("the response head is too large"));
        }
        buf.reserve(READ_SIZE);
        if tokio::io::AsyncReadExt::read_buf(r, buf).await? == 0 {
            return Err(ClientError::Closed);
        }
    }
}

pub fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, ClientError> {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(ClientError::Malformed("unparsable head")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(ClientError::Malformed("bad status"))?;
    let version = if parsed.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let reason = parsed
        .reason
        .filter(|r| Some(*r) != status.canonical_reason());
    let reason = reason.map(|r| Bytes::copy_from_slice(r.as_bytes()));
    let (mut length, mut te_chunked, mut te_other, mut close) = (None, false, false, false);
    let base = buf.as_ptr() as usize;
    let mut fields = Vec::with_capacity(parsed.headers.len());
    // Names the `Connection` header lists besides `close` and `keep-alive` (rare).
    let mut connection_named = Vec::new();
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| ClientError::Malformed("bad header name"))?;
        if name == header::CONTENT_LENGTH {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(ClientError::Malformed("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ClientError::Malformed("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            let chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            te_chunked = chunked;
            te_other |= !chunked;
        } else if name == header::CONNECTION {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive")
                    && let Ok(listed) = HeaderName::from_bytes(token)
                {
                    connection_named.push(listed);
                }
            }
        }
        fields.push((name, h.value.as_ptr() as usize - base, h.value.len()));
    }
    // The values share the head's allocation; rate-limit headers and the request id follow.
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(fields.len() + 10);
    // Hop-by-hop headers, and those the `Connection` header lists, never reach the client
    // (RFC 9110 §7.6.1); a 101 keeps the protocol it switched to.
    let switched = status == StatusCode::SWITCHING_PROTOCOLS;
    for (name, start, n) in fields {
        if (is_hop_by_hop(&name) || connection_named.contains(&name))
            && !(switched && name == header::UPGRADE)
        {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(start..start + n))
            .map_err(|_| ClientError::Malformed("bad header value"))?;
        headers.append(name, value);
    }
    let no_body = method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::None
    } else if te_chunked && !te_other {
        headers.remove(header::CONTENT_LENGTH);
        Framing::Chunked
    } else if te_chunked || te_other {
        headers.remove(header::CONTENT_LENGTH);
        Framing::UntilClose
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    if let Some(r) = reason.and_then(|r| hyper::ext::ReasonPhrase::try_from(r).ok()) {
        response.extensions_mut().insert(r);
    }
    // A message with both framings is answered as RFC 9112 §6.3 says, then not trusted again.
    let reusable = version == Version::HTTP_11
        && !close
        && !(length.is_some() && (te_chunked || te_other))
        && framing != Framing::UntilClose
        && status != StatusCode::SWITCHING_PROTOCOLS;
    Ok(Some(ResponseHead {
        response,
        framing,
        reusable,
    }))
}

/// A response body being read from its connection; at its end the connection is handed to
/// `done` (when it may carry another request).
pub struct Decoding {
    stream: Option<Conn>,
    buf: BytesMut,
    state: State,
    reusable: bool,
}

enum State {
    Length(u64),
    Chunked(Decoder),
    UntilClose,
    Done,
}

/// What a finished body leaves: the connection, if it can be reused (and nothing was read
/// past the body).
pub type Leftover = Option<Conn>;

impl Decoding {
    pub fn new(stream: Conn, buf: BytesMut, framing: Framing, reusable: bool) -> Self {
        let state = match framing {
            Framing::None => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Decoder::default()),
            Framing::UntilClose => State::UntilClose,
        };
        Decoding {
            stream: Some(stream),
            buf,
            state,
            reusable,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The connection, once the body is through and only if it is reusable.
    pub fn take_leftover(&mut self) -> Leftover {
        if !self.reusable || !self.is_done() || !self.buf.is_empty() {
            return None;
        }
        self.stream.take()
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientError>>> {
        loop {
            match &mut self.state {
                State::Done => return Poll::Ready(None),
                State::Length(0) => {
                    self.state = State::Done;
                    return Poll::Ready(None);
                }
                State::Length(r) if !self.buf.is_empty() => {
                    let n = usize::try_from(*r)
                        .unwrap_or(usize::MAX)
                        .min(self.buf.len());
                    *r -= n as u64;
                    if *r == 0 {
                        self.state = State::Done;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(self.buf.split_to(n).freeze()))));
                }
                State::UntilClose if !self.buf.is_empty() => {
                    let all = self.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(all))));
                }
                State::Chunked(d) => match d.step(&mut self.buf) {
                    Ok(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Step::Done) => {
                        self.state = State::Done;
                        return Poll::Ready(None);
                    }
                    Ok(Step::More) => {}
                    Err(_) => {
                        self.fail();
                        return Poll::Ready(Some(Err(ClientError::Malformed("bad chunk"))));
                    }
                },
                _ => {}
            }
            let Some(stream) = self.stream.as_mut() else {
                return Poll::Ready(Some(Err(ClientError::Closed)));
            };
            let polled = super::io::poll_read_buf(Pin::new(&mut stream.stream), cx, &mut self.buf);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    self.fail();
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Ok(0)) => {
                    if matches!(self.state, State::UntilClose) {
                        self.state = State::Done;
                        self.stream = None;
                        return Poll::Ready(None);
                    }
                    self.fail();
                    return Poll::Ready(Some(Err(ClientError::Closed)));
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn fail(&mut self) {
        self.stream = None;
        self.state = State::Done;
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &str) -> ResponseHead {
        let mut buf = BytesMut::from(head.as_bytes());
        match parse_head(&mut buf, &Method::GET) {
            Ok(Some(h)) => h,
            _ => panic!("not a complete head: {head:?}"),
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let head = parsed(
            "HTTP/1.1 200 OK\r\nX-Secret: 1\r\nConnection: keep-alive, X-Secret\r\n\
             Keep-Alive: timeout=5\r\nTrailer: x\r\nProxy-Connection: x\r\n\
             Upgrade: h2c\r\nContent-Length: 2\r\nX-Kept: a\r\nX-Kept: b\r\n\r\n",
        );
        let h = head.response.headers();
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-length", "x-kept"]);
        assert_eq!(h.get_all("x-kept").iter().count(), 2);
        assert_eq!(head.framing, Framing::Length(2));
        assert!(head.reusable);
    }

    #[test]
    fn a_switch_keeps_its_protocol_and_a_close_ends_reuse() {
        let head = parsed(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        );
        assert_eq!(head.response.headers()[header::UPGRADE], "websocket");
        assert!(!head.response.headers().contains_key(header::CONNECTION));
        let head =
            parsed("HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(!head.reusable);
        assert_eq!(head.framing, Framing::Chunked);
        assert!(head.response.headers().is_empty());
    }
}
