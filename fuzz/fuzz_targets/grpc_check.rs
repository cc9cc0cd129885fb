//! A gRPC `Check` call's body, as the authorization listener reads it: the frame, the
//! `CheckRequest`, the request it describes. Never panics; what comes out has no pseudo-header
//! and at most one `Host`.
#![no_main]
use keygate::proxy::grpc::{asked, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Mostly well-framed messages: the fuzzer's bytes as the message of a correct frame, and
    // as the whole body.
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(data.len() as u32).to_be_bytes());
    framed.extend_from_slice(data);
    for body in [data, &framed[..]] {
        let Ok(req) = decode(body) else { continue };
        let Ok(a) = asked(req) else { continue };
        assert!(a.headers.keys().all(|k| !k.as_str().starts_with(':')));
        assert!(a.headers.get_all(http::header::HOST).iter().count() <= 1);
    }
});
