//! The request head, parsed once with `httparse` (the parser hyper itself uses) into the
//! `http::Request` the pipeline decides on. Only the plain case is taken: HTTP/1.1, an
//! origin-form target, a method other than `CONNECT`, at most one `Content-Length` (digits
//! only) or one `Transfer-Encoding: chunked` — never both —, no `Upgrade`, no `Expect`.
//! Anything else, including every malformed head, is [`Head::Other`]: hyper reads the same
//! bytes and answers them exactly as it does without the fast path, errors included.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

/// hyper's limit on the number of request headers (more: 431).
pub const MAX_HEADERS: usize = 100;

/// How a request body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
}

#[derive(Debug)]
pub enum Head {
    /// More bytes are needed.
    Partial,
    /// A plain request (now in the caller's request), its body's framing, and whether the
    /// client asked to close after it.
    Request { framing: Framing, close: bool },
    /// Not for the fast path: the connection goes to hyper from this byte on.
    Other,
}

/// Parses the head at the start of `buf`; a complete one is split off it (the body's first
/// bytes stay) and written into `req`, whose method, target, version, fields and extensions it
/// replaces (its body is the caller's). The connection's one request is filled in place: it is
/// not built and moved per request, and its field map keeps its room from one request to the
/// next. `req` is left as it was unless the result is [`Head::Request`] — bar its fields on the
/// one path that cannot happen (see `undo`), where the caller hands the connection on anyway.
/// `max_head`: a head not complete within this many bytes is hyper's (431).
pub fn parse<B>(buf: &mut BytesMut, max_head: usize, req: &mut Request<B>) -> Head {
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Head::Partial,
        _ => return Head::Other,
    };
    if len > max_head || parsed.version != Some(1) {
        return Head::Other;
    }
    let (Some(method), Some(path)) = (parsed.method, parsed.path) else {
        return Head::Other;
    };
    if !path.starts_with('/') || method == "CONNECT" {
        return Head::Other;
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Head::Other;
    };
    // Everything that can send the request to hyper is decided before anything is taken
    // from the buffer: hyper must see the head whole.
    let (mut length, mut chunked, mut close) = (None, false, false);
    // Offsets into the buffer, so the values share the head's allocation once split off.
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    // On the stack for a usual request (an allocation and its release saved).
    let mut fields: smallvec::SmallVec<[_; 16]> = smallvec::SmallVec::new();
    for h in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Head::Other;
        };
        let value = h.value;
        if name == header::CONTENT_LENGTH {
            match digits(value) {
                Some(n) if length.is_none() => length = Some(n),
                _ => return Head::Other,
            }
        } else if name == header::TRANSFER_ENCODING {
            if chunked || !value.eq_ignore_ascii_case(b"chunked") {
                return Head::Other;
            }
            chunked = true;
        } else if name == header::UPGRADE || name == header::EXPECT {
            return Head::Other;
        } else if name == header::CONNECTION {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Head::Other;
                }
            }
        }
        fields.push((name, at(value)));
    }
    if length.is_some() && chunked {
        return Head::Other;
    }
    let path_at = at(path.as_bytes());
    let head: Bytes = buf.split_to(len).freeze();
    let slice = |(start, n): (usize, usize)| head.slice(start..start + n);
    // httparse admits no value or target these refuse; were one to, the head goes back.
    let undo = |buf: &mut BytesMut| {
        let mut whole = BytesMut::from(&head[..]);
        whole.extend_from_slice(buf);
        *buf = whole;
        Head::Other
    };
    let Ok(uri) = Uri::from_maybe_shared(slice(path_at)) else {
        return undo(buf);
    };
    // Only the client's fields: the forwarder writes its own straight into the upstream head
    // (the map grows on the rare paths that still edit it). Nothing of an earlier request stays.
    let headers = req.headers_mut();
    headers.clear();
    headers.reserve(fields.len());
    for (name, span) in fields.drain(..) {
        let Ok(value) = HeaderValue::from_maybe_shared(slice(span)) else {
            return undo(buf);
        };
        headers.append(name, value);
    }
    let framing = match (length, chunked) {
        (Some(0), _) | (None, false) => Framing::Empty,
        (Some(n), _) => Framing::Length(n),
        (None, true) => Framing::Chunked,
    };
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    req.extensions_mut().clear();
    Head::Request { framing, close }
}

/// A request's state once answered: its fields, target and extensions let go (they share the
/// head's bytes), its field map's room kept for the next request on the connection unless it
/// grew past `keep` fields.
pub fn release<B: Default>(req: &mut Request<B>, keep: usize) {
    *req.body_mut() = B::default();
    if req.headers().capacity() > keep {
        *req.headers_mut() = HeaderMap::new();
    } else {
        req.headers_mut().clear();
    }
    *req.uri_mut() = Uri::default();
    req.extensions_mut().clear();
}

/// A `Content-Length` value: ASCII digits only, at most 19 of them (fits a u64).
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Head {
        parse(&mut BytesMut::from(s), 8192, &mut Request::new(()))
    }

    #[test]
    fn plain_requests_are_taken_with_their_framing() {
        let mut buf = BytesMut::from("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: k\r\n\r\nrest");
        let mut req = Request::new(());
        let Head::Request { framing, close } = parse(&mut buf, 8192, &mut req) else {
            panic!("not taken");
        };
        assert_eq!((framing, close), (Framing::Empty, false));
        assert_eq!(req.uri().path(), "/a");
        assert_eq!(req.uri().query(), Some("b=1"));
        assert_eq!(req.headers()["x-api-key"], "k");
        assert_eq!(&buf[..], b"rest");
        let framing = |s: &str| match head(s) {
            Head::Request { framing, .. } => Some(framing),
            _ => None,
        };
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n"),
            Some(Framing::Length(5))
        );
        assert_eq!(
            framing("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Some(Framing::Chunked)
        );
        assert!(matches!(
            head("GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n"),
            Head::Request { close: true, .. }
        ));
    }

    /// The connection's one request, filled again: nothing of the one before stays, answered
    /// and released or not.
    #[test]
    fn a_refilled_request_keeps_nothing_of_the_last() {
        let mut req = Request::new(());
        let first = "POST /one?x=1 HTTP/1.1\r\nHost: a\r\nX-Auth-Owner: acct_1\r\nContent-Length: 2\r\n\r\nhi";
        let second = "GET /two HTTP/1.1\r\nHost: b\r\n\r\n";
        for released in [false, true] {
            assert!(matches!(
                parse(&mut BytesMut::from(first), 8192, &mut req),
                Head::Request { .. }
            ));
            req.extensions_mut().insert(7u8);
            if released {
                release(&mut req, 32);
                assert!(req.headers().is_empty() && req.extensions().get::<u8>().is_none());
            }
            assert!(matches!(
                parse(&mut BytesMut::from(second), 8192, &mut req),
                Head::Request { .. }
            ));
            assert_eq!((req.method(), req.uri().path()), (&Method::GET, "/two"));
            assert_eq!(req.uri().query(), None);
            let names: Vec<&str> = req.headers().keys().map(|n| n.as_str()).collect();
            assert_eq!(names, ["host"]);
            assert_eq!(req.headers()["host"], "b");
            assert!(req.extensions().get::<u8>().is_none());
        }
        // A map grown past what a connection keeps is let go.
        let many: String = (0..40).map(|i| format!("X-{i}: 1\r\n")).collect();
        let big = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            parse(&mut BytesMut::from(big.as_str()), 8192, &mut req),
            Head::Request { .. }
        ));
        release(&mut req, 32);
        assert_eq!(req.headers().capacity(), 0);
    }

    #[test]
    fn anything_unusual_goes_to_hyper() {
        for s in [
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(s);
            assert!(
                matches!(parse(&mut buf, 8192, &mut Request::new(())), Head::Other),
                "{s:?} was taken"
            );
            assert_eq!(&buf[..], s.as_bytes(), "hyper must see the whole head");
        }
        assert!(matches!(
            head("GET / HTTP/1.1\r\nHost: x\r\n"),
            Head::Partial
        ));
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(9000));
        assert!(matches!(head(&long), Head::Other));
        let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert!(matches!(
            head(&format!("GET / HTTP/1.1\r\n{many}\r\n")),
            Head::Other
        ));
    }
}
