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
use crate::config::{Carrier, CarrierSet, ErrorContract, ErrorKind};
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
    /// The request body could not be read: malformed chunked framing, or a body cut short.
    #[error("{0}")]
    BadBody(&'static str),
    /// A request the edge refuses before routing (Host headers, header names).
    #[error("{0}")]
    BadRequest(&'static str),
    /// The client stopped sending its body for `listen.body_read_timeout`.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// A transfer coding other than `chunked` (e.g. `gzip, chunked`): never re-framed silently.
    #[error("Transfer-Encoding other than chunked is not supported")]
    UnsupportedTransferCoding,
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
    /// The default status (the contract may choose another).
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.kind().default_status_code().0)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The stable, documented machine-readable code (metrics and logs use it whatever the
    /// contract says to clients).
    pub fn code(&self) -> &'static str {
        self.kind().default_status_code().1
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

    /// Which kind of error this is, for the error contract.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Rejection::Auth(a) => match a {
                AuthFailure::Missing => ErrorKind::MissingKey,
                AuthFailure::Invalid(InvalidKey::Unknown) => ErrorKind::UnknownKey,
                AuthFailure::Invalid(InvalidKey::WrongCarrier) => ErrorKind::WrongCarrier,
                AuthFailure::Invalid(
                    InvalidKey::Format(_)
                    | InvalidKey::Ambiguous
                    | InvalidKey::TooLong
                    | InvalidKey::BadCharacters
                    | InvalidKey::NotBearer
                    | InvalidKey::BadBasic,
                ) => ErrorKind::MalformedKey,
                AuthFailure::Expired => ErrorKind::ExpiredKey,
                AuthFailure::Unavailable { .. } => ErrorKind::AuthUnavailable,
            },
            Rejection::Denied(d) => match d {
                Denial::BadPath(_) | Denial::UnknownClient => ErrorKind::BadRequest,
                Denial::WrongEnvironment { .. } => ErrorKind::WrongEnvironment,
                Denial::IpNotAllowed(_) | Denial::UntrustedPeer(_) => ErrorKind::IpNotAllowed,
                Denial::KeyTypeNotAllowed => ErrorKind::KeyTypeNotAllowed,
                Denial::InsufficientScope(_) => ErrorKind::InsufficientScope,
                Denial::RateLimited { .. } => ErrorKind::RateLimited,
                Denial::AttributeNotAllowed { .. } | Denial::AttributeMissing { .. } => {
                    ErrorKind::AttributeNotAllowed
                }
                Denial::AttributeUnreadable { .. } => ErrorKind::BadRequest,
            },
            Rejection::PayloadTooLarge { .. } => ErrorKind::PayloadTooLarge,
            Rejection::MethodNotAllowed(_) => ErrorKind::MethodNotAllowed,
            Rejection::BadBody(_) | Rejection::BadRequest(_) => ErrorKind::BadRequest,
            Rejection::BodyTimeout => ErrorKind::RequestTimeout,
            Rejection::UnsupportedTransferCoding => ErrorKind::NotImplemented,
            Rejection::UpstreamUnavailable => ErrorKind::UpstreamUnavailable,
            Rejection::UpstreamTimeout => ErrorKind::UpstreamTimeout,
        }
    }

    /// A message template's field, from what this rejection knows.
    fn field(
        &self,
        name: &str,
        contract: &ErrorContract,
        hints: &Hints,
        request_id: &str,
    ) -> String {
        match (name, self) {
            ("scope", Rejection::Denied(Denial::InsufficientScope(s))) => s.clone(),
            ("ip", Rejection::Denied(Denial::IpNotAllowed(ip) | Denial::UntrustedPeer(ip))) => {
                ip.to_string()
            }
            ("retry_after", _) => self
                .retry_after()
                .map(|d| d.as_secs().max(1).to_string())
                .unwrap_or_default(),
            ("request_id", _) => request_id.to_owned(),
            ("carriers", _) => hints.carriers.hint(),
            ("key_environment", Rejection::Denied(Denial::WrongEnvironment { key, .. })) => {
                contract.environment_label(key).to_owned()
            }
            ("environment", Rejection::Denied(Denial::WrongEnvironment { instance, .. })) => {
                contract.environment_label(instance).to_owned()
            }
            ("limit", Rejection::PayloadTooLarge { limit }) => limit.to_string(),
            (
                "attribute",
                Rejection::Denied(
                    Denial::AttributeNotAllowed { attribute, .. }
                    | Denial::AttributeMissing { attribute }
                    | Denial::AttributeUnreadable { attribute },
                ),
            ) => attribute.clone(),
            ("value", Rejection::Denied(Denial::AttributeNotAllowed { value, .. })) => {
                value.clone()
            }
            ("method", Rejection::MethodNotAllowed(m)) => (*m).to_owned(),
            _ => String::new(),
        }
    }

    /// The message a body carries when the contract does not reshape it: the error itself,
    /// with the carriers the route accepts where the client must choose one.
    fn default_message(&self, contract: &ErrorContract, hints: &Hints) -> String {
        match self {
            Rejection::Denied(Denial::WrongEnvironment { key, instance }) => format!(
                "API key is for the {} environment; this endpoint serves {}",
                contract.environment_label(key),
                contract.environment_label(instance)
            ),
            Rejection::Auth(AuthFailure::Missing) => {
                format!("no API key: send it as {}", hints.carriers.hint())
            }
            Rejection::Auth(AuthFailure::Invalid(InvalidKey::WrongCarrier)) => format!(
                "this endpoint does not accept the API key in that header; send it as {}",
                hints.carriers.hint()
            ),
            other => other.to_string(),
        }
    }

    /// The response under `contract`. `request_id` is echoed in the body (the caller sets the
    /// header); `hints` is what the route accepts.
    pub fn respond(
        self,
        contract: &ErrorContract,
        hints: &Hints,
        request_id: &str,
    ) -> Response<Full<Bytes>> {
        let (status, code, template) = contract.shape(self.kind());
        let status = StatusCode::from_u16(status).unwrap_or_else(|_| self.status());
        let message = match template {
            Some(t) => render(t, |name| self.field(name, contract, hints, request_id)),
            None => self.default_message(contract, hints),
        };
        let body = error_body(&contract.layout, status, code, &message, Some(request_id));
        let mut resp = json_response(status, body);
        let h = resp.headers_mut();
        if status == StatusCode::UNAUTHORIZED {
            if hints.carriers.contains(Carrier::Bearer) {
                h.append(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"api\""),
                );
            }
            if hints.carriers.contains(Carrier::Basic) {
                h.append(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"api\""),
                );
            }
        }
        if let Some(after) = self.retry_after() {
            h.insert(RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
        }
        resp
    }

    /// The response under the default contract, for a route accepting every carrier.
    pub fn into_response(self, request_id: &str) -> Response<Full<Bytes>> {
        self.respond(&ErrorContract::default(), &Hints::default(), request_id)
    }
}

/// What the route a rejected request took accepts, for the hints in the response.
#[derive(Clone, Copy, Debug)]
pub struct Hints {
    pub carriers: CarrierSet,
}

impl Default for Hints {
    fn default() -> Self {
        Hints {
            carriers: CarrierSet::of(&[Carrier::Bearer, Carrier::ApiKeyHeader]),
        }
    }
}

/// `template` with each `{name}` replaced by `field(name)`.
fn render(template: &str, field: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        match after.find('}') {
            Some(j) => {
                out.push_str(&field(&after[..j]));
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
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
            (Denial::UntrustedPeer(ip).into(), 403, "ip_not_allowed"),
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
            (Rejection::BodyTimeout, 408, "request_timeout"),
            (Rejection::UnsupportedTransferCoding, 501, "not_implemented"),
            (
                Rejection::BadRequest("two Host headers"),
                400,
                "bad_request",
            ),
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
