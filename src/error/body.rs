//! The one JSON error body of the product. Every error keygate answers with itself — the proxy's
//! rejections, the admin API's, the ops listener's — is written here.

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// `{"error":{"code","message"[,"request_id"]}}`.
pub fn error_body(code: &str, message: &str, request_id: Option<&str>) -> Bytes {
    let mut error = serde_json::Map::new();
    error.insert("code".into(), code.into());
    error.insert("message".into(), message.into());
    if let Some(id) = request_id {
        error.insert("request_id".into(), id.into());
    }
    Bytes::from(serde_json::json!({ "error": error }).to_string())
}

/// A JSON response with [`error_body`].
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    request_id: Option<&str>,
) -> Response<Full<Bytes>> {
    json_response(status, error_body(code, message, request_id))
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
