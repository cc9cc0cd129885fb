//! Request ids: the client's `X-Request-Id` when it is sane, else one made here; sent upstream
//! and returned on every response.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-sent `X-Request-Id` kept as is.
const MAX_REQUEST_ID: usize = 128;

/// The client's `X-Request-Id` when it is sane, or a fresh one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = crate::fields::first(headers, &X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= MAX_REQUEST_ID
        && v.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return v.clone();
    }
    new_request_id()
}

/// `<process random>-<16 hex digits>`: a counter through a keyed permutation, so ids are
/// unique per process without an RNG call per request and do not show how many came before.
fn new_request_id() -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PROCESS: std::sync::OnceLock<(String, [u64; 2])> = std::sync::OnceLock::new();
    let (prefix, keys) = PROCESS.get_or_init(|| {
        (
            crate::key::random_base62(10),
            [rand::random(), rand::random()],
        )
    });
    id_value(
        prefix,
        scramble(COUNTER.fetch_add(1, Ordering::Relaxed), *keys),
    )
}

/// A bijection on u64 (splitmix64's finaliser between two key XORs): distinct counters give
/// distinct ids, and without the keys consecutive ids look unrelated.
fn scramble(n: u64, keys: [u64; 2]) -> u64 {
    let mut x = n ^ keys[0];
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (x ^ (x >> 31)) ^ keys[1]
}

/// `<prefix>-<n as 16 hex digits>`, built by hand: this runs on every request without an
/// `X-Request-Id`.
fn id_value(prefix: &str, n: u64) -> HeaderValue {
    let mut hex = [0u8; 17];
    hex[0] = b'-';
    for (i, digit) in hex[1..].iter_mut().enumerate() {
        *digit = b"0123456789abcdef"[((n >> ((15 - i) * 4)) & 0xf) as usize];
    }
    let mut id = Vec::with_capacity(prefix.len() + hex.len());
    id.extend_from_slice(prefix.as_bytes());
    id.extend_from_slice(&hex);
    HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_counter_is_hex_and_scrambled() {
        for n in [0, 1, 9, 10, 15, 16, 255, 4096, 0xdead_beef, u64::MAX] {
            assert_eq!(id_value("p", n), format!("p-{n:016x}").as_str(), "{n}");
        }
        let keys = [0x1234_5678_9abc_def0, 0x0fed_cba9_8765_4321];
        let ids: std::collections::HashSet<u64> = (0..10_000).map(|n| scramble(n, keys)).collect();
        assert_eq!(ids.len(), 10_000, "not a bijection");
        assert!(scramble(1, keys).abs_diff(scramble(0, keys)) > 1 << 32);
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        let a = request_id(&h);
        let b = request_id(&h);
        assert_ne!(a, b);
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(
            &X_REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(500)).unwrap(),
        );
        assert_ne!(request_id(&h).len(), 500);
    }
}
