//! The rate-limit headers of a decision, in the configured styles: `X-RateLimit-*`,
//! `RateLimit-*` and the IETF draft's structured `RateLimit-Policy` / `RateLimit`. Every
//! surface that limits (the proxy, the admin API, the self-service API) reports through this.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::Decision;
use crate::config::HeaderStyles;

/// Sets the rate-limit headers of one decision in the configured styles.
pub fn set_rate_limit_headers(headers: &mut HeaderMap, d: &Decision, styles: HeaderStyles) {
    headers.reserve(8);
    let now = || crate::time::Timestamp::now().unix();
    rate_limit_fields(d, styles, now, |name, value| {
        if let Ok(v) = HeaderValue::from_bytes(value) {
            headers.insert(name.clone(), v);
        }
    });
}

/// The rate-limit fields of one decision in the configured styles, handed to `field` as name
/// and value, in order (each figure formatted once). `unix_now` is asked only for the
/// `X-RateLimit-Reset` style (a Unix time).
pub fn rate_limit_fields(
    d: &Decision,
    styles: HeaderStyles,
    unix_now: impl FnOnce() -> u64,
    mut field: impl FnMut(&'static HeaderName, &[u8]),
) {
    let reset_secs = d.reset.as_secs() + u64::from(d.reset.subsec_nanos() > 0);
    let (mut limit, mut remaining, mut reset) = (
        itoa::Buffer::new(),
        itoa::Buffer::new(),
        itoa::Buffer::new(),
    );
    let (limit, remaining) = (limit.format(d.limit), remaining.format(d.remaining));
    if styles.x_ratelimit {
        let reset_at = unix_now() + reset_secs;
        field(&X_RATELIMIT_LIMIT, limit.as_bytes());
        field(&X_RATELIMIT_REMAINING, remaining.as_bytes());
        field(&X_RATELIMIT_RESET, reset.format(reset_at).as_bytes());
    }
    if styles.ratelimit {
        field(&RATELIMIT_LIMIT, limit.as_bytes());
        field(&RATELIMIT_REMAINING, remaining.as_bytes());
        field(&RATELIMIT_RESET, reset.format(reset_secs).as_bytes());
    }
    if styles.structured {
        let policy = format!("\"default\";q={};w={}", d.limit, d.window.as_secs().max(1));
        let state = format!("\"default\";r={};t={reset_secs}", d.remaining);
        field(&RATELIMIT_POLICY, policy.as_bytes());
        field(&RATELIMIT, state.as_bytes());
    }
}

/// Whether `name` (lower-case) is a rate-limit field of one of `styles`.
pub fn is_rate_limit_field(name: &[u8], styles: HeaderStyles) -> bool {
    match name {
        b"x-ratelimit-limit" | b"x-ratelimit-remaining" | b"x-ratelimit-reset" => {
            styles.x_ratelimit
        }
        b"ratelimit-limit" | b"ratelimit-remaining" | b"ratelimit-reset" => styles.ratelimit,
        b"ratelimit-policy" | b"ratelimit" => styles.structured,
        _ => false,
    }
}

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
