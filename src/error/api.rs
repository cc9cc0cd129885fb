//! Errors of the key-management APIs (the admin API; the self-service API on the proxy port):
//! one vocabulary, mapped exhaustively from [`ManageError`] and [`StoreError`] — no catch-all —
//! and written with the product's one error body.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

use super::body::{error_response, no_store};
use crate::manage::ManageError;
use crate::store::StoreError;

/// An error answer of a key-management API: `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400 `invalid_request`: the message names the field to fix.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no key with id {id}"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn rate_limited(what: &str, retry_after: Duration) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "{what} rate limit exceeded; retry after {} s",
                    retry_after.as_secs().max(1)
                ),
            )
        }
    }

    fn unavailable(code: &'static str, message: &str) -> ApiError {
        ApiError {
            retry_after: Some(Duration::from_secs(2)),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// The response; `realm` names the `WWW-Authenticate` realm of a 401.
    pub fn into_response(self, realm: &'static str) -> Response<Full<Bytes>> {
        let mut r = no_store(error_response(self.status, self.code, &self.message, None));
        if let Some(after) = self.retry_after {
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(realm));
        }
        r
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => ApiError::not_found(&id),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::ReadOnly(m) => ApiError::new(
                StatusCode::CONFLICT,
                "read_only",
                format!("the store is read-only ({m})"),
            ),
            StoreError::Unavailable(_) | StoreError::Corrupt(_) => {
                tracing::warn!(error = %e, "key-management API: store error");
                ApiError::unavailable(
                    "store_unavailable",
                    "the key store is unavailable; retry shortly",
                )
            }
        }
    }
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> Self {
        match e {
            ManageError::Invalid(m) => ApiError::bad_request(m),
            ManageError::Store(s) => s.into(),
            ManageError::Hash(_) | ManageError::Task(_) => {
                tracing::error!(error = %e, "key-management API: cannot mint a key");
                ApiError::unavailable("unavailable", "cannot issue a key right now; retry shortly")
            }
        }
    }
}
