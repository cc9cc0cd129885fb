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

use super::chunked::{Decoder, Step};
use super::field;
use crate::fields::name_is;
use crate::proxy::headers::is_hop_by_hop_name;

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

pub use super::upconn::Conn;

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
    let declared = is_length(req.headers().get(header::CONTENT_LENGTH));
    end_head(req.body(), declared, out)
}

/// Whether the first `Content-Length` value (`None`: there is none) declares a length.
pub fn is_length(first: Option<&HeaderValue>) -> bool {
    first
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some()
}

/// Starts a request head in `out` (cleared first): `METHOD target HTTP/1.1`.
pub fn start_line(method: &Method, target: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// The headers that frame a message: keygate writes its own, never the client's.
pub fn is_framing(name: &HeaderName) -> bool {
    name == header::TRANSFER_ENCODING || name == header::CONTENT_LENGTH
}

/// Ends a request head with keygate's framing for `body` (`declared`: the forwarded fields
/// declare a length) and says how the body follows.
pub fn end_head<B: Body>(body: &B, declared: bool, out: &mut Vec<u8>) -> Framing {
    let framing = if body.is_end_stream() {
        // As sent: a client's `Content-Length: 0` stays (hyper's client keeps it too).
        if declared {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        super::content_length(out, n);
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

/// A parsed response head: the response (body to come; its header map empty), the fields
/// the client may see as the upstream sent them, its body's framing, and whether the
/// connection may carry another request after it.
pub struct ResponseHead {
    pub response: Response<()>,
    pub fields: Fields,
    pub framing: Framing,
    pub reusable: bool,
}

/// The forwardable fields of a response head, in the head's own bytes: no header map is built
/// for a response keygate's writer sends on (it copies these lines), only for one hyper sends
/// ([`Fields::into_map`]). Hop-by-hop fields and those `Connection` lists are left out; httparse
/// has checked names are tokens and values are what `HeaderValue` takes (tab, space, visible
/// ASCII, obs-text).
#[derive(Debug, Default)]
pub struct Fields {
    head: Bytes,
    /// Name start and length, value start and length, in `head`.
    spans: Vec<[u32; 4]>,
}

impl Fields {
    /// Each field's name (as sent: any case) and value, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.spans.iter().map(|&[ns, nl, vs, vl]| {
            let (ns, nl, vs, vl) = (ns as usize, nl as usize, vs as usize, vl as usize);
            (&self.head[ns..ns + nl], &self.head[vs..vs + vl])
        })
    }

    /// Appends the fields `keep` keeps (it is given each name as sent) to `out`, each line as
    /// the upstream sent it up to its value's end (the name's case and the blanks after its
    /// colon too; trailing blanks httparse trimmed are left out), ended by CRLF. Lines next to
    /// each other in the head (CRLF between them) go in one copy. This relies on what
    /// [`parse_head`] lets through: no blank before a colon, no folded line (see there); a line
    /// whose name is not followed by its colon is written as `name: value` all the same.
    pub fn write_kept(&self, out: &mut Vec<u8>, mut keep: impl FnMut(&[u8]) -> bool) {
        let head = &self.head[..];
        let line = |out: &mut Vec<u8>, (start, end): (usize, usize)| {
            out.extend_from_slice(&head[start..end]);
            out.extend_from_slice(b"\r\n");
        };
        // Kept lines not yet written: from one's name to the last one's value.
        let mut run: Option<(usize, usize)> = None;
        for &[ns, nl, vs, vl] in &self.spans {
            let (ns, nl, vs, vl) = (ns as usize, nl as usize, vs as usize, vl as usize);
            if !keep(&head[ns..ns + nl]) {
                continue;
            }
            let end = vs + vl;
            // Not so as `parse_head` reads heads today, but never copied as is.
            let as_sent = head.get(ns + nl) == Some(&b':');
            match run {
                Some((start, last)) if as_sent && head.get(last..ns) == Some(b"\r\n") => {
                    run = Some((start, end));
                    continue;
                }
                Some(pending) => line(out, pending),
                None => {}
            }
            run = as_sent.then_some((ns, end));
            if !as_sent {
                field(out, &head[ns..ns + nl], &head[vs..end]);
            }
        }
        if let Some(pending) = run {
            line(out, pending);
        }
    }

    /// Appends the fields to `map` (values share the head's bytes).
    pub fn into_map(self, map: &mut HeaderMap) {
        map.reserve(self.spans.len());
        for &[ns, nl, vs, vl] in &self.spans {
            let (ns, nl, vs, vl) = (ns as usize, nl as usize, vs as usize, vl as usize);
            let name = HeaderName::from_bytes(&self.head[ns..ns + nl]);
            let value = HeaderValue::from_maybe_shared(self.head.slice(vs..vs + vl));
            // Both were checked when the head was parsed.
            if let (Ok(name), Ok(value)) = (name, value) {
                map.append(name, value);
            }
        }
    }
}

/// Reads a response head from `r` into `buf` (1xx interim responses are skipped).
pub async fn read_head(
    r: &mut (impl AsyncRead + Unpin),
    buf: &mut BytesMut,
    method: &Method,
) -> Result<ResponseHead, ClientError> {
    std::future::poll_fn(|cx| poll_head(Pin::new(&mut *r), cx, buf, method)).await
}

/// [`read_head`] as a poll, for futures written by hand: reads into `buf` until a final
/// response head is there (a short read is taken as a drained socket, as everywhere).
pub fn poll_head(
    mut r: Pin<&mut impl AsyncRead>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    method: &Method,
) -> Poll<Result<ResponseHead, ClientError>> {
    loop {
        if !buf.is_empty()
            && let Some(head) = parse_head(buf, method)?
        {
            if head.response.status().is_informational()
                && head.response.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                continue;
            }
            return Poll::Ready(Ok(head));
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Poll::Ready(Err(ClientError::Malformed(
                "the response head is too large",
            )));
        }
        buf.reserve(READ_SIZE);
        match std::task::ready!(super::io::poll_read_buf(r.as_mut(), cx, buf)) {
            Ok(0) => return Poll::Ready(Err(ClientError::Closed)),
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(e.into())),
        }
    }
}

/// A non-empty run of ASCII digits as a u64 (`None`: anything else, or too large).
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

pub fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, ClientError> {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    // The defaults, on purpose: no blank before a colon, no obsolete line folding, no invalid
    // line skipped. `Fields::write_kept` copies the lines as they are.
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
    let switched = status == StatusCode::SWITCHING_PROTOCOLS;
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let mut spans: Vec<[u32; 4]> = Vec::with_capacity(parsed.headers.len());
    // Names the `Connection` header lists besides `close` and `keep-alive` (rare).
    let mut connection_named: Vec<&[u8]> = Vec::new();
    for h in parsed.headers.iter() {
        let name = h.name.as_bytes();
        if name_is(name, b"content-length") {
            let n = decimal(h.value).ok_or(ClientError::Malformed("bad Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(ClientError::Malformed("conflicting Content-Length"));
            }
            length = Some(n);
        } else if name_is(name, b"transfer-encoding") {
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            let chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            te_chunked = chunked;
            te_other |= !chunked;
        } else if name_is(name, b"connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") {
                    connection_named.push(token);
                }
            }
        }
        // Hop-by-hop fields never reach the client (RFC 9110 §7.6.1); a 101 keeps the
        // protocol it switched to.
        if is_hop_by_hop_name(name) && !(switched && name_is(name, b"upgrade")) {
            continue;
        }
        spans.push([
            at(name),
            name.len() as u32,
            at(h.value),
            h.value.len() as u32,
        ]);
    }
    let no_body = method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::None
    } else if te_chunked && !te_other {
        Framing::Chunked
    } else if te_chunked || te_other {
        Framing::UntilClose
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // A body framed by Transfer-Encoding sends no Content-Length on; nor do the fields the
    // `Connection` header lists.
    let drop_length = !no_body && (te_chunked || te_other);
    if drop_length || !connection_named.is_empty() {
        let head = &buf[..len];
        spans.retain(|&[ns, nl, ..]| {
            let name = &head[ns as usize..(ns + nl) as usize];
            let listed = connection_named
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name))
                && !(switched && name_is(name, b"upgrade"));
            let framing = drop_length && name_is(name, b"content-length");
            !(listed || framing)
        });
    }
    // The fields keep the head's allocation.
    let fields = Fields {
        head: buf.split_to(len).freeze(),
        spans,
    };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
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
        fields,
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

    /// The read buffer, for another exchange (see [`super::spare`]).
    pub fn take_buf(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
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

    /// The head's response with its fields put into the header map.
    fn parsed_as(head: &str, method: Method) -> ResponseHead {
        let mut buf = BytesMut::from(head.as_bytes());
        match parse_head(&mut buf, &method) {
            Ok(Some(mut h)) => {
                std::mem::take(&mut h.fields).into_map(h.response.headers_mut());
                h
            }
            _ => panic!("not a complete head: {head:?}"),
        }
    }

    fn parsed(head: &str) -> ResponseHead {
        parsed_as(head, Method::GET)
    }

    #[test]
    fn a_response_length_is_digits_only_and_fits_a_u64() {
        for (value, want) in [
            ("5", Some(5)),
            ("0005", Some(5)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("+5", None),
            ("-1", None),
            ("5 ", Some(5)), // trailing whitespace is not part of a field value
            ("0x10", None),
            ("", None),
        ] {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n");
            let got = parse_head(&mut BytesMut::from(head.as_bytes()), &Method::GET);
            let got = match got {
                Ok(Some(h)) => match h.framing {
                    Framing::Length(n) => Some(n),
                    Framing::None => Some(0),
                    _ => None,
                },
                _ => None,
            };
            assert_eq!(got, want, "{value:?}");
        }
    }

    #[test]
    fn fields_keep_their_bytes_and_order_and_framing_fields_follow_the_rules() {
        let text = "HTTP/1.1 200 OK\r\nSet-Cookie: a\r\nX-Mixed-Case: Value\r\n\
                    Set-Cookie: b\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut buf = BytesMut::from(text.as_bytes());
        let head = parse_head(&mut buf, &Method::GET).ok().flatten();
        let head = head.unwrap_or_else(|| panic!("not parsed"));
        let fields: Vec<(String, String)> = head
            .fields
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into(),
                    String::from_utf8_lossy(v).into(),
                )
            })
            .collect();
        // Chunked framing: the Content-Length is not sent on.
        let want = [
            ("Set-Cookie", "a"),
            ("X-Mixed-Case", "Value"),
            ("Set-Cookie", "b"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(fields, want);
        assert_eq!(head.framing, Framing::Chunked);
        assert!(buf.is_empty());
        // A HEAD response keeps it: it describes the body a GET would have had.
        let head = parsed_as(text, Method::HEAD);
        assert_eq!(head.response.headers()[header::CONTENT_LENGTH], "5");
        assert_eq!(
            head.response.headers().get_all("set-cookie").iter().count(),
            2
        );
        // A value `HeaderValue` would refuse is refused here.
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nX-Bad: a\x7fb\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut buf, &Method::GET),
            Err(ClientError::Malformed(_))
        ));
    }

    /// Kept lines go out as sent, neighbours in one copy; a dropped line, a hop-by-hop one or a
    /// bare LF between two kept lines splits the copy, and every line ends in CRLF.
    #[test]
    fn kept_fields_are_written_as_sent_and_each_line_ends_in_crlf() {
        let text = "HTTP/1.1 200 OK\r\nServer: up\r\nX-Ows:\t v \r\nX-Empty:\r\n\
                    Connection: keep-alive\r\nX-Drop: 1\r\nX-Lf: a\nSet-Cookie: b\r\n\
                    Content-Length: 0\r\n\r\n";
        let mut buf = BytesMut::from(text.as_bytes());
        let head = parse_head(&mut buf, &Method::GET).ok().flatten();
        let head = head.unwrap_or_else(|| panic!("not parsed"));
        let mut out = b"<".to_vec();
        let mut seen = Vec::new();
        head.fields.write_kept(&mut out, |name| {
            seen.push(String::from_utf8_lossy(name).into_owned());
            !name.eq_ignore_ascii_case(b"x-drop")
        });
        assert_eq!(
            String::from_utf8_lossy(&out),
            "<Server: up\r\nX-Ows:\t v\r\nX-Empty:\r\nX-Lf: a\r\nSet-Cookie: b\r\nContent-Length: 0\r\n"
        );
        let names = [
            "Server",
            "X-Ows",
            "X-Empty",
            "X-Drop",
            "X-Lf",
            "Set-Cookie",
            "Content-Length",
        ];
        assert_eq!(seen, names);
        let mut none = Vec::new();
        head.fields.write_kept(&mut none, |_| false);
        assert!(none.is_empty());
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
