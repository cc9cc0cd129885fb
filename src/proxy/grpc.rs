//! Envoy's gRPC `ext_authz` (`envoy.service.auth.v3.Authorization/Check`) on the check
//! listener. The `CheckRequest`'s attributes become the request asked about (method, path,
//! headers, the downstream address), the proxy's pipeline decides, and its answer — the same
//! one the HTTP check gives — is translated: an allow into an `OkHttpResponse` (identity headers
//! to set, headers to remove, rate-limit headers for the client), a denial into a
//! `DeniedHttpResponse` with the proxy's status, headers and JSON body.
//!
//! The gRPC framing is done here (one length-prefixed, uncompressed message each way, status in
//! the trailers) so the check goes through keygate's own listener, caps and timeouts rather
//! than a second server.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::address::Address as AnyAddress;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue as PbHeader, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame};
use prost::Message as _;

use super::headers::HEADERS_TO_REMOVE;

/// The method's path.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// A `CheckRequest` is a few KiB of headers (the request body is not read); anything far
/// larger is not one.
pub const MAX_MESSAGE: usize = 64 << 10;

/// Whether a request on the check listener is a gRPC `Check` call.
pub fn is_check<B>(req: &http::Request<B>) -> bool {
    req.uri().path() == CHECK_PATH
        && req
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Why a call cannot be answered with a decision: a gRPC status, not an HTTP denial.
#[derive(Debug)]
pub struct CallError {
    pub code: i32,
    pub message: &'static str,
}

/// google.rpc.Code values used here.
pub mod code {
    pub const OK: i32 = 0;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

fn invalid(message: &'static str) -> CallError {
    CallError {
        code: code::INVALID_ARGUMENT,
        message,
    }
}

/// The one message of a unary call's body (5-byte prefix: compressed flag, big-endian length).
pub fn decode(body: &[u8]) -> Result<CheckRequest, CallError> {
    let (head, rest) = body
        .split_first_chunk::<5>()
        .ok_or_else(|| invalid("no gRPC message"))?;
    if head[0] != 0 {
        return Err(CallError {
            code: code::UNIMPLEMENTED,
            message: "compressed messages are not supported",
        });
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len != rest.len() {
        return Err(invalid("exactly one gRPC message is expected"));
    }
    CheckRequest::decode(rest).map_err(|_| invalid("not a CheckRequest"))
}

/// What a `CheckRequest` asks about.
pub struct Asked {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    /// The downstream peer Envoy saw.
    pub source: Option<std::net::IpAddr>,
}

/// The request in a `CheckRequest`: its method, target and headers (from `headers` or, when
/// Envoy sends raw headers, `header_map`; pseudo-headers other than `:authority` dropped).
pub fn asked(req: CheckRequest) -> Result<Asked, CallError> {
    let attributes = req
        .attributes
        .ok_or_else(|| invalid("the CheckRequest has no attributes"))?;
    let source = attributes
        .source
        .and_then(|p| p.address)
        .and_then(|a| a.address)
        .and_then(|a| match a {
            AnyAddress::SocketAddress(s) => s.address.parse().ok(),
            _ => None,
        });
    let http = attributes
        .request
        .and_then(|r| r.http)
        .ok_or_else(|| invalid("the CheckRequest names no HTTP request"))?;
    let mut headers = HeaderMap::new();
    match http.header_map {
        Some(map) if !map.headers.is_empty() => {
            for h in &map.headers {
                let value = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value
                };
                add_header(&mut headers, &h.key, value)?;
            }
        }
        _ => {
            for (k, v) in &http.headers {
                // Envoy joins repeated headers with "," in this map.
                add_header(&mut headers, k, v.as_bytes())?;
            }
        }
    }
    if !headers.contains_key(http::header::HOST) && !http.host.is_empty() {
        add_header(&mut headers, ":authority", http.host.as_bytes())?;
    }
    Ok(Asked {
        method: http.method,
        target: http.path,
        headers,
        source,
    })
}

/// One header of the `CheckRequest`: `:authority` as `Host`, other pseudo-headers dropped.
fn add_header(headers: &mut HeaderMap, name: &str, value: &[u8]) -> Result<(), CallError> {
    let name = match name {
        ":authority" => http::header::HOST,
        n if n.starts_with(':') => return Ok(()),
        n => HeaderName::from_bytes(n.as_bytes()).map_err(|_| invalid("a bad header name"))?,
    };
    let value = HeaderValue::from_bytes(value).map_err(|_| invalid("a bad header value"))?;
    // `:authority` and `host` name one host: both sent and different is ambiguous.
    if name == http::header::HOST {
        return match headers.get(&name) {
            Some(v) if *v != value => Err(invalid("`:authority` and `host` disagree")),
            Some(_) => Ok(()),
            None => {
                headers.insert(name, value);
                Ok(())
            }
        };
    }
    headers.append(name, value);
    Ok(())
}

/// The proxy's HTTP answer (as the HTTP check gives it) as a `CheckResponse`. Headers in the
/// identity namespace and the request id go to the upstream request; the rest (rate limits,
/// challenges) to the client.
pub fn answer(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    identity_prefix: &str,
) -> CheckResponse {
    let option = |name: &HeaderName, value: &HeaderValue| HeaderValueOption {
        header: Some(PbHeader {
            key: name.as_str().to_owned(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    };
    let to_upstream = |n: &HeaderName| {
        n.as_str().starts_with(identity_prefix) || n == super::headers::X_REQUEST_ID
    };
    let skipped = |n: &HeaderName| n == HEADERS_TO_REMOVE || n == http::header::CONTENT_LENGTH;
    if status.is_success() {
        let mut ok = OkHttpResponse::default();
        for (name, value) in headers {
            if skipped(name) {
                continue;
            }
            if to_upstream(name) {
                ok.headers.push(option(name, value));
            } else {
                ok.response_headers_to_add.push(option(name, value));
            }
        }
        ok.headers_to_remove = headers
            .get(&HEADERS_TO_REMOVE)
            .and_then(|v| v.to_str().ok())
            .map(|list| list.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        return CheckResponse {
            status: Some(RpcStatus {
                code: code::OK,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::OkResponse(ok)),
            ..Default::default()
        };
    }
    let denied = DeniedHttpResponse {
        status: Some(HttpStatus {
            code: i32::from(status.as_u16()),
        }),
        headers: headers
            .iter()
            .filter(|(n, _)| !skipped(n) && !n.as_str().starts_with("x-keygate-"))
            .map(|(n, v)| option(n, v))
            .collect(),
        body: String::from_utf8_lossy(body).into_owned(),
    };
    CheckResponse {
        status: Some(RpcStatus {
            code: rpc_code(status),
            message: String::new(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(denied)),
        ..Default::default()
    }
}

/// The gRPC status of a denial (Envoy answers the client with the HTTP status inside).
fn rpc_code(status: StatusCode) -> i32 {
    match status.as_u16() {
        401 => code::UNAUTHENTICATED,
        429 => code::RESOURCE_EXHAUSTED,
        400 | 405 | 413 | 431 => code::INVALID_ARGUMENT,
        502..=504 => code::UNAVAILABLE,
        _ => code::PERMISSION_DENIED,
    }
}

/// A unary gRPC response: `message` (if any) and the status trailers.
pub fn respond(message: Option<&CheckResponse>, status: i32, text: &str) -> Response<GrpcBody> {
    let data = message.map(|m| {
        let mut buf = BytesMut::with_capacity(5 + m.encoded_len());
        buf.put_u8(0);
        buf.put_u32(u32::try_from(m.encoded_len()).unwrap_or(u32::MAX));
        // Encoding into a buffer with enough room cannot fail.
        let _ = m.encode(&mut buf);
        buf.freeze()
    });
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if let Ok(v) = HeaderValue::from_str(text)
        && !text.is_empty()
    {
        trailers.insert("grpc-message", v);
    }
    let mut resp = Response::new(GrpcBody {
        data,
        trailers: Some(trailers),
    });
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}

/// One data frame, then the trailers.
pub struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }
}
