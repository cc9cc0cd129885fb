//! The one mapping from a rejection to an HTTP response: status, `code`, headers and the JSON
//! body ([`body`]). Each stage of the request path has its own error type — the credential's
//! [`AuthFailure`], the policy's [`Denial`] — and [`Rejection`] gathers them with the edge's own
//! (body size, method, upstream). Every answer keygate gives on its own account (rather than the
//! upstream's) is built here, and messages never contain key material. [`api`] is the same for
//! the key-management APIs.

pub mod api;
mod body;

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

pub use crate::auth::{AuthFailure, InvalidKey};
pub use crate::policy::{Denial, PathError};
pub use body::{error_body, error_response, json_response, no_store};

/// Why keygate answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("{0}")]
    Auth(#[from] AuthFailure),
    #[error("{0}")]
    Denied(#[from] Denial),
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// `CONNECT`: keygate is not a forward proxy.
    #[error("method {0} is not allowed")]
    MethodNotAllowed(&'static str),
    #[error("the upstream service is unavailable")]
    UpstreamUnavailable,
    #[error("the upstream service did not answer in time")]
    UpstreamTimeout,
}

impl From<InvalidKey> for Rejection {
    fn from(e: InvalidKey) -> Self {
        Rejection::Auth(AuthFailure::Invalid(e))
    }
}

impl From<PathError> for Rejection {
    fn from(e: PathError) -> Self {
        Rejection::Denied(Denial::BadPath(e))
    }
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Auth(a) => match a {
                AuthFailure::Missing | AuthFailure::Invalid(_) | AuthFailure::Expired => {
                    StatusCode::UNAUTHORIZED
                }
                AuthFailure::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            },
            Rejection::Denied(d) => match d {
                Denial::BadPath(_) | Denial::UnknownClient => StatusCode::BAD_REQUEST,
                Denial::WrongEnvironment { .. } => StatusCode::UNAUTHORIZED,
                Denial::IpNotAllowed(_)
                | Denial::KeyTypeNotAllowed
                | Denial::InsufficientScope(_) => StatusCode::FORBIDDEN,
                Denial::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            },
            Rejection::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Rejection::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The stable, documented machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Auth(a) => match a {
                AuthFailure::Missing => "unauthorized",
                AuthFailure::Invalid(_) => "invalid_key",
                AuthFailure::Expired => "expired_key",
                AuthFailure::Unavailable { .. } => "auth_unavailable",
            },
            Rejection::Denied(d) => match d {
                Denial::BadPath(_) | Denial::UnknownClient => "bad_request",
                Denial::WrongEnvironment { .. } => "wrong_environment",
                Denial::IpNotAllowed(_) => "ip_not_allowed",
                Denial::KeyTypeNotAllowed => "key_type_not_allowed",
                Denial::InsufficientScope(_) => "insufficient_scope",
                Denial::RateLimited { .. } => "rate_limited",
            },
            Rejection::PayloadTooLarge { .. } => "payload_too_large",
            Rejection::MethodNotAllowed(_) => "method_not_allowed",
            Rejection::UpstreamUnavailable => "upstream_unavailable",
            Rejection::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// Whether the upstream (not the client, not keygate) failed.
    pub fn is_upstream_failure(&self) -> bool {
        matches!(
            self,
            Rejection::UpstreamUnavailable | Rejection::UpstreamTimeout
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Rejection::Auth(AuthFailure::Unavailable { retry_after })
            | Rejection::Denied(Denial::RateLimited { retry_after }) => Some(*retry_after),
            _ => None,
        }
    }

    /// The JSON error response. `request_id` is echoed in the body (the caller sets the header).
    pub fn into_response(self, request_id: &str) -> Response<Full<Bytes>> {
        let mut resp = error_response(
            self.status(),
            self.code(),
            &self.to_string(),
            Some(request_id),
        );
        let h = resp.headers_mut();
        if self.status() == StatusCode::UNAUTHORIZED {
            h.insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"api\""),
            );
        }
        if let Some(after) = self.retry_after() {
            h.insert(RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::KeyFormatError;
    use http::header::CONTENT_TYPE;
    use http_body_util::BodyExt;
    use std::net::IpAddr;

    /// The error table of design.md, pinned.
    #[test]
    fn error_table() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let s = Duration::from_secs(3);
        let table: Vec<(Rejection, u16, &str)> = vec![
            (AuthFailure::Missing.into(), 401, "unauthorized"),
            (InvalidKey::Unknown.into(), 401, "invalid_key"),
            (
                AuthFailure::from(KeyFormatError::BadChecksum).into(),
                401,
                "invalid_key",
            ),
            (AuthFailure::Expired.into(), 401, "expired_key"),
            (
                Denial::WrongEnvironment {
                    key: "test",
                    instance: "live",
                }
                .into(),
                401,
                "wrong_environment",
            ),
            (
                Denial::InsufficientScope("payments:write".into()).into(),
                403,
                "insufficient_scope",
            ),
            (Denial::IpNotAllowed(ip).into(), 403, "ip_not_allowed"),
            (
                Denial::KeyTypeNotAllowed.into(),
                403,
                "key_type_not_allowed",
            ),
            (
                Denial::RateLimited { retry_after: s }.into(),
                429,
                "rate_limited",
            ),
            (
                Rejection::PayloadTooLarge { limit: 10 },
                413,
                "payload_too_large",
            ),
            (Denial::UnknownClient.into(), 400, "bad_request"),
            (PathError::AboveRoot.into(), 400, "bad_request"),
            (
                Rejection::MethodNotAllowed("CONNECT"),
                405,
                "method_not_allowed",
            ),
            (Rejection::UpstreamUnavailable, 502, "upstream_unavailable"),
            (Rejection::UpstreamTimeout, 504, "upstream_timeout"),
            (
                AuthFailure::Unavailable { retry_after: s }.into(),
                503,
                "auth_unavailable",
            ),
        ];
        for (err, status, code) in table {
            assert_eq!(
                (err.status().as_u16(), err.code()),
                (status, code),
                "{err:?}"
            );
        }
    }

    #[tokio::test]
    async fn response_shape() {
        let resp = Rejection::from(Denial::InsufficientScope("payments:write".into()))
            .into_response("req_1");
        assert_eq!(resp.status(), 403);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "insufficient_scope");
        assert_eq!(v["error"]["request_id"], "req_1");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("payments:write")
        );

        let resp = Rejection::from(AuthFailure::Missing).into_response("r");
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer realm=\"api\"");
        let resp = Rejection::from(Denial::RateLimited {
            retry_after: Duration::from_millis(10),
        })
        .into_response("r");
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        let resp = Rejection::from(Denial::IpNotAllowed("2001:db8::1".parse().unwrap()))
            .into_response("r");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("2001:db8::1"));
    }
}
