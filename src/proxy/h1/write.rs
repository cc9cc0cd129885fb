//! The response on the fast path: status line, headers and framing in one buffer, sent with
//! the first body bytes when they are already there (one `write` for a typical response).
//! The framing is keygate's own, from the body's known length (`Content-Length`) or else
//! chunked; the upstream's `Content-Length` and `Transfer-Encoding` are never copied, so they
//! cannot disagree with what is sent. No body for `HEAD`, 1xx, 204 and 304.

use std::cell::RefCell;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame};

use super::field;
use super::io::Writer;
use crate::fields::name_is;
use crate::proxy::{ProxyBody, Stamp};

/// Body bytes at most copied next to the head (or a chunk header) rather than written alone.
const COALESCE: usize = 16 << 10;

/// Writes `resp` with `stamp`'s fields in its head. `close`: the connection closes after it
/// (the request asked to, or keygate is shutting down); set too when the response itself says
/// `Connection: close`. Whatever can be written without waiting is written here, without a
/// future: the head and the body bytes already there (a typical response, in one `write`);
/// [`Now::Later`] is the rest, for [`respond_rest`]. `Ok(false)`: the body did not end as
/// framed (the upstream's failed): the connection must close.
pub fn respond_now(
    w: &mut Writer,
    out: &mut Vec<u8>,
    (resp, stamp): (Response<ProxyBody>, Stamp),
    head_only: bool,
    close: &mut bool,
) -> Now {
    let (parts, mut body) = resp.into_parts();
    // The upstream's fields as it sent them, when keygate's codec read the response.
    let fields = match &mut body {
        http_body_util::Either::Left(pooled) => pooled.take_fields(),
        http_body_util::Either::Right(_) => None,
    };
    let status = parts.status;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    let reason = parts
        .extensions
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| r.as_bytes())
        .or_else(|| status.canonical_reason().map(str::as_bytes))
        .unwrap_or_default();
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // keygate writes its own length (a HEAD or 304 keeps the upstream's).
    let own_length = !no_body || status == StatusCode::NO_CONTENT;
    let (mut has_date, mut says_close, mut has_length) = (false, false, false);
    for (name, value) in &parts.headers {
        if name == header::TRANSFER_ENCODING || (own_length && name == header::CONTENT_LENGTH) {
            continue;
        }
        if name == header::CONNECTION {
            says_close |= has_close(value);
        }
        if stamp.replaces(name) {
            continue; // keygate's own value follows
        }
        has_date |= name == header::DATE;
        has_length |= name == header::CONTENT_LENGTH;
        field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(fields) = &fields {
        // As the upstream sent them (HTTP/1 names are case-insensitive), less those keygate
        // writes itself. Only a name as long as one of the stamp's is lower-cased and looked up.
        let mut lower = [0u8; 32];
        fields.write_kept(out, |name| {
            if name_is(name, header::CONTENT_LENGTH.as_str().as_bytes()) {
                // keygate's own length replaces it, unless the upstream's is the one sent
                has_length |= !own_length;
                return !own_length;
            }
            if name_is(name, header::DATE.as_str().as_bytes()) {
                has_date = true;
                return true;
            }
            if !Stamp::may_replace(name.len()) {
                return true;
            }
            let Some(lower) = lower.get_mut(..name.len()) else {
                return true; // longer than any of keygate's (see the stamp's test)
            };
            lower.copy_from_slice(name);
            lower.make_ascii_lowercase();
            !stamp.replaces_name(lower)
        });
    }
    // Let go of the upstream head's bytes now: the body's read buffer they share goes back to
    // the spares when the body is done (see `super::spare`).
    drop(fields);
    *close |= says_close;
    if *close && !says_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    // The response's wall-clock reading (the stamp's) for the `Date` and the reset time.
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        let unix = d.refresh(stamp.unix);
        stamp.write(out, unix);
        if !has_date {
            field(out, b"date", &d.text);
        }
    });
    let mut remaining = None;
    if head_only && !has_length {
        // A HEAD answered by keygate itself: the length its GET would have (as hyper sends).
        if let Some(n) = body.size_hint().exact().filter(|&n| n > 0) {
            super::content_length(out, n);
        }
    }
    if !no_body {
        match body.size_hint().exact() {
            Some(n) => {
                super::content_length(out, n);
                remaining = Some(n);
            }
            None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
    }
    out.extend_from_slice(b"\r\n");
    let mut rest = Rest {
        body,
        remaining,
        no_body,
        pending: None,
        ended: no_body,
        complete: true,
    };
    if !no_body {
        rest.take_ready(out);
    }
    if !rest.ended {
        return Now::Later(rest);
    }
    match w.try_write_now(out) {
        Err(e) => Now::Done(Err(e)),
        Ok(n) if n == out.len() && !w.buffers() => Now::Done(Ok(rest.complete)),
        Ok(n) => {
            out.drain(..n);
            Now::Later(rest)
        }
    }
}

/// What [`respond_now`] did: all of it, or not yet.
#[allow(clippy::large_enum_variant)] // returned by value once per response: boxing would allocate
pub enum Now {
    Done(io::Result<bool>),
    Later(Rest),
}

/// A response [`respond_now`] could not finish: its body's rest, and where the framing stands.
pub struct Rest {
    body: ProxyBody,
    /// Body bytes still to come, when framed by length (else chunked).
    remaining: Option<u64>,
    no_body: bool,
    /// A frame taken but not yet in `out` (too large to copy next to it).
    pending: Option<Bytes>,
    /// The body is through (its end, its failure or no body), and `out` ends the response.
    ended: bool,
    complete: bool,
}

impl Rest {
    /// Takes the body's frames that are already there into `out`, while they fit next to it.
    fn take_ready(&mut self, out: &mut Vec<u8>) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        while !self.ended {
            let frame = match Pin::new(&mut self.body).poll_frame(&mut cx) {
                std::task::Poll::Ready(f) => f,
                std::task::Poll::Pending => return,
            };
            match self.data_of(frame) {
                Some(data) if out.len() + data.len() + 32 > COALESCE => {
                    self.pending = Some(data);
                    return;
                }
                Some(data) => self.frame_into(out, &data),
                None => {}
            }
            if self.ended {
                self.end(out);
            }
        }
    }

    /// A frame's data; `None` for trailers (not sent, as hyper unless asked with TE), and at
    /// the body's end or failure, which end the response.
    fn data_of(&mut self, frame: Polled) -> Option<Bytes> {
        match frame {
            None => self.ended = true,
            Some(Err(_)) => {
                self.complete = false;
                self.ended = true;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(d) if !d.is_empty() => return self.fits(d),
                _ => {}
            },
        }
        None
    }

    /// `data`, unless it is more than the length declared: then the body is cut there.
    fn fits(&mut self, data: Bytes) -> Option<Bytes> {
        if let Some(r) = &mut self.remaining {
            if data.len() as u64 > *r {
                self.complete = false;
                self.ended = true;
                return None;
            }
            *r -= data.len() as u64;
        }
        Some(data)
    }

    /// A frame's bytes into `out`, with its chunk header when chunked.
    fn frame_into(&self, out: &mut Vec<u8>, data: &[u8]) {
        if self.remaining.is_none() {
            let _ = write!(out, "{:x}\r\n", data.len());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(data);
        }
    }

    /// The end of the body: the last chunk, or a length not reached (the body failed).
    fn end(&mut self, out: &mut Vec<u8>) {
        match self.remaining {
            None if self.complete => out.extend_from_slice(b"0\r\n\r\n"),
            Some(r) if r > 0 => self.complete = false,
            _ => {}
        }
    }
}

/// The rest of a response [`respond_now`] began. `stall`: how long the client may take none
/// of it (and the upstream send none of its body).
pub async fn respond_rest(
    w: &mut Writer,
    out: &mut Vec<u8>,
    mut rest: Rest,
    stall: std::time::Duration,
) -> io::Result<bool> {
    if rest.no_body {
        drop(rest.body);
        w.write_all(out, stall).await?;
        w.flush(stall).await?;
        return Ok(true);
    }
    if let Some(data) = rest.pending.take() {
        put_frame(w, out, &data, rest.remaining.is_none(), stall).await?;
    }
    while !rest.ended {
        // The head waits for the first body bytes only if they are already here.
        let frame = if out.is_empty() {
            next_frame(&mut rest.body, stall).await
        } else {
            match super::io::frame_now(&mut rest.body).await {
                Some(f) => f,
                None => {
                    w.write_all(out, stall).await?;
                    out.clear();
                    next_frame(&mut rest.body, stall).await
                }
            }
        };
        if let Some(data) = rest.data_of(frame) {
            put_frame(w, out, &data, rest.remaining.is_none(), stall).await?;
        }
        if rest.ended {
            rest.end(out);
        }
        if out.len() >= COALESCE {
            w.write_all(out, stall).await?;
            out.clear();
        }
    }
    if !out.is_empty() {
        w.write_all(out, stall).await?;
        out.clear();
    }
    w.flush(stall).await?;
    Ok(rest.complete)
}

/// A body frame after `out`, with its chunk header when `chunked`.
async fn put_frame(
    w: &mut Writer,
    out: &mut Vec<u8>,
    data: &Bytes,
    chunked: bool,
    stall: std::time::Duration,
) -> io::Result<()> {
    if chunked {
        let _ = write!(out, "{:x}\r\n", data.len());
    }
    put(w, out, data, stall).await?;
    if chunked {
        out.extend_from_slice(b"\r\n");
    }
    Ok(())
}

/// Appends `data` to `out`, or (when large) writes `out` and then `data` itself.
async fn put(
    w: &mut Writer,
    out: &mut Vec<u8>,
    data: &Bytes,
    stall: std::time::Duration,
) -> io::Result<()> {
    if out.len() + data.len() <= COALESCE {
        out.extend_from_slice(data);
        return Ok(());
    }
    w.write_all(out, stall).await?;
    out.clear();
    w.write_all(data, stall).await
}

type Polled = Option<Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>>;

/// The body's next frame, waiting for it at most `stall` (an upstream gone quiet mid-body
/// ends the response as failed, and the connection closes). The timer is armed only when the
/// frame is not already there.
async fn next_frame(body: &mut ProxyBody, stall: std::time::Duration) -> Polled {
    let now = super::io::frame_now(&mut *body).await;
    if let Some(frame) = now {
        return frame;
    }
    let waiting = std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx));
    match tokio::time::timeout(stall, waiting).await {
        Ok(frame) => frame,
        Err(_) => Some(Err("the response body stalled".into())),
    }
}

fn has_close(v: &HeaderValue) -> bool {
    v.as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

thread_local! {
    static DATE: RefCell<DateCache> = const { RefCell::new(DateCache { second: u64::MAX, text: Vec::new() }) };
}

/// The `Date` value, formatted once a second per thread.
struct DateCache {
    second: u64,
    text: Vec<u8>,
}

impl DateCache {
    /// Brings `text` up to `second` (Unix seconds, the response's wall-clock reading), and
    /// returns it.
    fn refresh(&mut self, second: u64) -> u64 {
        if second != self.second {
            self.second = second;
            let wall = UNIX_EPOCH + std::time::Duration::from_secs(second);
            self.text = httpdate::fmt_http_date(wall).into_bytes();
        }
        second
    }
}
