//! What one request carries through the path and what it learned on the way, for the response,
//! the access log, the metrics and the audit trail — whatever the outcome.

use std::sync::Arc;

use http::header::HeaderValue;
use http::{Method, Request, Uri, Version};

use super::headers::request_id;
use crate::error::Hints;
use crate::policy::Trace;

pub(super) struct Context {
    pub request_id: HeaderValue,
    pub method: Method,
    pub uri: Uri,
    /// An HTTP/1 request whose body was not read (yet): if keygate answers it, the connection
    /// closes, so the unread bytes can never be parsed as another request.
    pub unread_body: bool,
    /// Client address, route and rate-limit state, as the policy found them.
    pub trace: Trace,
    /// What the route accepts, for the hints in a rejection.
    pub hints: Hints,
    pub key_id: Option<Arc<str>>,
    /// The verified key's owner, for the access log.
    pub owner: Option<Arc<str>>,
    pub version: Version,
    /// The client's `User-Agent` (at most 256 bytes kept), for the access log.
    pub user_agent: Option<HeaderValue>,
    /// The request body's length when known up front (`Content-Length`), for the access log.
    pub request_bytes: Option<u64>,
    /// Display prefix of a key that failed verification.
    pub key_prefix: Option<String>,
    /// The error code when keygate rejected the request.
    pub code: Option<&'static str>,
    /// Why, for the access log.
    pub reason: Option<String>,
    /// When the request went upstream (`None`: not forwarded); the round trip to the
    /// response head is measured from it when the request finishes.
    pub sent_at: Option<std::time::Instant>,
    /// When the request began: the key cache's freshness and the request's duration are
    /// measured from it.
    pub started: std::time::Instant,
    /// The wall clock then, read with `started`: a key's expiry is checked against it (unless
    /// a Redis stage waited first), and the response's `Date` and the audit minute are it plus
    /// the time since.
    pub wall: crate::time::WallClock,
}

/// A request's two clock readings, taken together when it begins: monotonic (durations, the
/// key cache's freshness) and wall (expiry, `Date`, the audit minute).
pub(super) fn clocks() -> (std::time::Instant, crate::time::WallClock) {
    (std::time::Instant::now(), crate::time::WallClock::now())
}

impl Context {
    /// `access_log`: the request will be logged (only then is its `User-Agent` kept). `started`
    /// and `wall`: the request's clock readings ([`clocks`]).
    pub fn new<B: http_body::Body>(
        req: &Request<B>,
        access_log: bool,
        (started, wall): (std::time::Instant, crate::time::WallClock),
    ) -> Context {
        Context {
            request_id: request_id(req.headers()),
            unread_body: req.version() <= Version::HTTP_11 && !req.body().is_end_stream(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            owner: None,
            version: req.version(),
            user_agent: access_log
                .then(|| req.headers().get(http::header::USER_AGENT))
                .flatten()
                .filter(|v| v.len() <= 256)
                .cloned(),
            request_bytes: req.body().size_hint().exact(),
            trace: Trace::default(),
            hints: Hints::default(),
            key_id: None,
            key_prefix: None,
            code: None,
            reason: None,
            sent_at: None,
            started,
            wall,
        }
    }
}
