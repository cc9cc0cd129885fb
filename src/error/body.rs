//! The one JSON error body of the product. Every error keygate answers with itself — the proxy's
//! rejections (in the configured [`ErrorLayout`]), the key-management APIs', the ops
//! listener's (in the default one) — is written here.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

use crate::config::ErrorLayout;

/// The body: by default `{"error":{"code","message"[,"request_id"]}}`; field names, the
/// wrapper, and which fields appear follow `layout`.
pub fn error_body(
    layout: &ErrorLayout,
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: Option<&str>,
) -> Bytes {
    let mut fields = serde_json::Map::new();
    if let Some(f) = &layout.status {
        fields.insert(f.clone(), status.as_u16().into());
    }
    if let Some(f) = &layout.code {
        fields.insert(f.clone(), code.into());
    }
    if let Some(f) = &layout.message {
        fields.insert(f.clone(), message.into());
    }
    if let (Some(f), Some(id)) = (&layout.request_id, request_id) {
        fields.insert(f.clone(), id.into());
    }
    let body = match &layout.wrapper {
        Some(w) => serde_json::json!({ w.as_str(): fields }),
        None => serde_json::Value::Object(fields),
    };
    Bytes::from(body.to_string())
}

/// A JSON error response in the default layout.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: Option<&str>,
) -> Response<Full<Bytes>> {
    let layout = ErrorLayout::default();
    json_response(
        status,
        error_body(&layout, status, code, message, request_id),
    )
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Marks a response as never to be cached (it may carry a new key).
pub fn no_store<B>(mut r: Response<B>) -> Response<B> {
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
