//! keygate's own HTTP/1.1 codec with arbitrary bytes: the request-head parser, the chunked
//! decoder and the upstream response-head parser. None may panic; a head handed to hyper
//! (`Other`) or not complete (`Partial`) must leave every byte in place; a head taken must have
//! the framing its headers say, with nothing ambiguous in them; a chunked body must decode the
//! same fed whole or a byte at a time, and never yield more bytes than it was given. (The
//! `pipeline` target drives the same path end to end through a live keygate.)
#![no_main]
use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, EXPECT, TRANSFER_ENCODING, UPGRADE};
use keygate::proxy::h1::chunked::{Decoder, Step};
use keygate::proxy::h1::client::parse_head;
use keygate::proxy::h1::head::{self, Framing, Head};
use libfuzzer_sys::fuzz_target;

/// The body decoded from `data` fed in pieces of `piece` bytes: (data, bytes left, ok).
fn chunked(data: &[u8], piece: usize) -> (Vec<u8>, Vec<u8>, bool) {
    let (mut d, mut buf, mut out) = (Decoder::default(), BytesMut::new(), Vec::new());
    let mut fed = data.chunks(piece);
    loop {
        match d.step(&mut buf) {
            Err(_) => return (out, Vec::new(), false),
            Ok(Step::Data(b)) => {
                assert!(!b.is_empty(), "an empty data frame");
                out.extend_from_slice(&b);
            }
            Ok(Step::Done) => {
                let mut rest = buf.to_vec();
                fed.for_each(|p| rest.extend_from_slice(p));
                return (out, rest, true);
            }
            Ok(Step::More) => match fed.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return (out, Vec::new(), false),
            },
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut req = http::Request::new(());
    match head::parse(&mut buf, 4096, &mut req) {
        Head::Other | Head::Partial => assert_eq!(&buf[..], data, "bytes lost before hyper"),
        Head::Request { framing, .. } => {
            let used = data.len() - buf.len();
            assert_eq!(&data[used..], &buf[..]);
            let h = req.headers();
            assert_eq!(req.version(), http::Version::HTTP_11);
            assert!(req.uri().path().starts_with('/'));
            assert!(req.method() != http::Method::CONNECT);
            assert!(!h.contains_key(UPGRADE) && !h.contains_key(EXPECT));
            assert!(h.get_all(CONTENT_LENGTH).iter().count() <= 1);
            assert!(h.get_all(TRANSFER_ENCODING).iter().count() <= 1);
            let length = h.get(CONTENT_LENGTH).map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            match framing {
                Framing::Chunked => {
                    assert!(length.is_none());
                    assert!(h[TRANSFER_ENCODING].as_bytes().eq_ignore_ascii_case(b"chunked"));
                }
                Framing::Length(n) => assert_eq!((length, h.contains_key(TRANSFER_ENCODING)), (Some(n), false)),
                Framing::Empty => {
                    assert!(!h.contains_key(TRANSFER_ENCODING));
                    assert!(length.is_none_or(|n| n == 0));
                }
            }
        }
    }
    let whole = chunked(data, data.len().max(1));
    let bytewise = chunked(data, 1);
    assert_eq!(whole, bytewise, "the chunked decoder depends on how bytes arrive");
    assert!(whole.0.len() <= data.len());
    let mut buf = BytesMut::from(data);
    for method in [http::Method::GET, http::Method::HEAD] {
        let _ = parse_head(&mut buf.clone(), &method);
    }
    let _ = parse_head(&mut buf, &http::Method::POST);
});
