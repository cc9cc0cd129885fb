//! The one mapping from a rejection to an HTTP response: status, `code`, headers and the JSON
//! body `{"error":{"code","message","request_id"}}`. Every answer keygate gives on its own
//! account (rather than the upstream's) is built here, and messages never contain key material.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::key::KeyFormatError;

/// Why keygate answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential in any accepted carrier.
    #[error("no API key: send it as `Authorization: Bearer <key>` or `X-Api-Key: <key>`")]
    Unauthorized,
    #[error("{0}")]
    InvalidKey(InvalidKey),
    /// Revoked, expired, or rotated past its grace period.
    #[error("API key has expired or been revoked")]
    ExpiredKey,
    #[error("API key is for the {key} environment; this endpoint serves {instance}")]
    WrongEnvironment {
        key: &'static str,
        instance: &'static str,
    },
    #[error("API key lacks the scope `{0}`")]
    InsufficientScope(String),
    #[error("requests from {0} are not allowed for this API key")]
    IpNotAllowed(IpAddr),
    #[error("publishable keys are not allowed here; use a secret key")]
    KeyTypeNotAllowed,
    #[error("rate limit exceeded; retry after {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("{0}")]
    BadRequest(&'static str),
    /// `CONNECT`: keygate is not a forward proxy.
    #[error("method {0} is not allowed")]
    MethodNotAllowed(&'static str),
    #[error("{0}")]
    BadPath(crate::policy::PathError),
    #[error("the upstream service is unavailable")]
    UpstreamUnavailable,
    #[error("the upstream service did not answer in time")]
    UpstreamTimeout,
    /// The store cannot be reached and the key is not in the cache.
    #[error("cannot verify API keys right now; retry shortly")]
    AuthUnavailable { retry_after: Duration },
}

/// The precise reason a credential is `invalid_key`. Safe to show: none echoes the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    #[error("{0}")]
    Format(KeyFormatError),
    #[error("API key is not recognised")]
    Unknown,
    #[error("API key sent more than once or in conflicting places")]
    Ambiguous,
    #[error("API key is too long")]
    TooLong,
    #[error("API key contains characters that are not allowed")]
    BadCharacters,
    #[error("Authorization header must use the Bearer scheme")]
    NotBearer,
    #[error("this endpoint does not accept the API key in that header")]
    WrongCarrier,
}

impl From<InvalidKey> for AuthError {
    fn from(e: InvalidKey) -> Self {
        AuthError::InvalidKey(e)
    }
}

impl From<KeyFormatError> for AuthError {
    fn from(e: KeyFormatError) -> Self {
        AuthError::InvalidKey(InvalidKey::Format(e))
    }
}

impl AuthError {
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::Unauthorized
            | AuthError::InvalidKey(_)
            | AuthError::ExpiredKey
            | AuthError::WrongEnvironment { .. } => StatusCode::UNAUTHORIZED,
            AuthError::InsufficientScope(_)
            | AuthError::IpNotAllowed(_)
            | AuthError::KeyTypeNotAllowed => StatusCode::FORBIDDEN,
            AuthError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AuthError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AuthError::BadRequest(_) | AuthError::BadPath(_) => StatusCode::BAD_REQUEST,
            AuthError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            AuthError::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            AuthError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            AuthError::AuthUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable, documented machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Unauthorized => "unauthorized",
            AuthError::InvalidKey(_) => "invalid_key",
            AuthError::ExpiredKey => "expired_key",
            AuthError::WrongEnvironment { .. } => "wrong_environment",
            AuthError::InsufficientScope(_) => "insufficient_scope",
            AuthError::IpNotAllowed(_) => "ip_not_allowed",
            AuthError::KeyTypeNotAllowed => "key_type_not_allowed",
            AuthError::RateLimited { .. } => "rate_limited",
            AuthError::PayloadTooLarge { .. } => "payload_too_large",
            AuthError::BadRequest(_) | AuthError::BadPath(_) => "bad_request",
            AuthError::MethodNotAllowed(_) => "method_not_allowed",
            AuthError::UpstreamUnavailable => "upstream_unavailable",
            AuthError::UpstreamTimeout => "upstream_timeout",
            AuthError::AuthUnavailable { .. } => "auth_unavailable",
        }
    }

    /// The JSON error response. `request_id` is echoed in the body (the caller sets the header).
    pub fn into_response(self, request_id: &str) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": { "code": self.code(), "message": self.to_string(), "request_id": request_id }
        });
        let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match &self {
            AuthError::Unauthorized
            | AuthError::InvalidKey(_)
            | AuthError::ExpiredKey
            | AuthError::WrongEnvironment { .. } => {
                h.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"api\""),
                );
            }
            AuthError::RateLimited { retry_after } | AuthError::AuthUnavailable { retry_after } => {
                h.insert(RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            }
            AuthError::InsufficientScope(_)
            | AuthError::IpNotAllowed(_)
            | AuthError::KeyTypeNotAllowed
            | AuthError::PayloadTooLarge { .. }
            | AuthError::BadRequest(_)
            | AuthError::BadPath(_)
            | AuthError::MethodNotAllowed(_)
            | AuthError::UpstreamUnavailable
            | AuthError::UpstreamTimeout => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// The error table of design.md, pinned.
    #[test]
    fn error_table() {
        let ip: IpAddr = "203.0.113.7".parse().unwrap();
        let s = Duration::from_secs(3);
        let table: Vec<(AuthError, u16, &str)> = vec![
            (AuthError::Unauthorized, 401, "unauthorized"),
            (InvalidKey::Unknown.into(), 401, "invalid_key"),
            (KeyFormatError::BadChecksum.into(), 401, "invalid_key"),
            (AuthError::ExpiredKey, 401, "expired_key"),
            (
                AuthError::WrongEnvironment {
                    key: "test",
                    instance: "live",
                },
                401,
                "wrong_environment",
            ),
            (
                AuthError::InsufficientScope("payments:write".into()),
                403,
                "insufficient_scope",
            ),
            (AuthError::IpNotAllowed(ip), 403, "ip_not_allowed"),
            (AuthError::KeyTypeNotAllowed, 403, "key_type_not_allowed"),
            (
                AuthError::RateLimited { retry_after: s },
                429,
                "rate_limited",
            ),
            (
                AuthError::PayloadTooLarge { limit: 10 },
                413,
                "payload_too_large",
            ),
            (AuthError::BadRequest("x"), 400, "bad_request"),
            (
                AuthError::MethodNotAllowed("CONNECT"),
                405,
                "method_not_allowed",
            ),
            (AuthError::UpstreamUnavailable, 502, "upstream_unavailable"),
            (AuthError::UpstreamTimeout, 504, "upstream_timeout"),
            (
                AuthError::AuthUnavailable { retry_after: s },
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
        let resp = AuthError::InsufficientScope("payments:write".into()).into_response("req_1");
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

        let resp = AuthError::Unauthorized.into_response("r");
        assert_eq!(resp.headers()[WWW_AUTHENTICATE], "Bearer realm=\"api\"");
        let resp = AuthError::RateLimited {
            retry_after: Duration::from_millis(10),
        }
        .into_response("r");
        assert_eq!(resp.headers()[RETRY_AFTER], "1");
        let resp = AuthError::IpNotAllowed("2001:db8::1".parse().unwrap()).into_response("r");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("2001:db8::1"));
    }
}
