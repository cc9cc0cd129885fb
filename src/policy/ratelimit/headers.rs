//! The rate-limit headers of a decision, in the configured styles: `X-RateLimit-*`,
//! `RateLimit-*` and the IETF draft's structured `RateLimit-Policy` / `RateLimit`. Every
//! surface that limits (the proxy, the admin API, the self-service API) reports through this.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::Decision;
use crate::config::HeaderStyles;

/// Sets the rate-limit headers of one decision in the configured styles.
pub fn set_rate_limit_headers(headers: &mut HeaderMap, d: &Decision, styles: HeaderStyles) {
    let reset_secs = d.reset.as_secs() + u64::from(d.reset.subsec_nanos() > 0);
    headers.reserve(8);
    // Each figure formatted once; a second style shares the value.
    let (limit, remaining) = if styles.x_ratelimit || styles.ratelimit {
        (HeaderValue::from(d.limit), HeaderValue::from(d.remaining))
    } else {
        (HeaderValue::from_static(""), HeaderValue::from_static(""))
    };
    if styles.x_ratelimit {
        let reset_at = crate::time::Timestamp::now().unix() + reset_secs;
        headers.insert(X_RATELIMIT_LIMIT.clone(), limit.clone());
        headers.insert(X_RATELIMIT_REMAINING.clone(), remaining.clone());
        headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(reset_at));
    }
    if styles.ratelimit {
        headers.insert(RATELIMIT_LIMIT.clone(), limit);
        headers.insert(RATELIMIT_REMAINING.clone(), remaining);
        headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(reset_secs));
    }
    if styles.structured {
        let policy = format!("\"default\";q={};w={}", d.limit, d.window.as_secs().max(1));
        let state = format!("\"default\";r={};t={reset_secs}", d.remaining);
        if let (Ok(p), Ok(s)) = (
            HeaderValue::from_str(&policy),
            HeaderValue::from_str(&state),
        ) {
            headers.insert(RATELIMIT_POLICY.clone(), p);
            headers.insert(RATELIMIT.clone(), s);
        }
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
