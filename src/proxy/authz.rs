//! Auth-only mode: keygate answers another proxy's question "may this request pass?" instead
//! of forwarding it. The front proxy (nginx `auth_request`, Traefik `forwardAuth`, Envoy's HTTP
//! `ext_authz` service) sends the client's headers; the original method and URI come from
//! `X-Forwarded-Method`/`X-Forwarded-Uri` (Traefik), `X-Original-Method`/`X-Original-URI`
//! (nginx) or `X-Original-URL` (ingress-nginx) on a check sent to `authz.check_path`; on any
//! other path they are the check request's own (Envoy, after `authz.path_prefix`), and those
//! headers are refused there (only a client could have put them in). Only a peer in
//! `ip.trusted_proxies` is answered. The request then runs the proxy's own pipeline, so both
//! modes decide alike; an allow is `200` with the identity headers to set and the client
//! headers to remove, a denial is the response the proxy itself would send.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::body::Inbound;
use super::conn::ConnInfo;
use super::context::Context;
use super::grpc::{self, GrpcBody};
use super::headers::HEADERS_TO_REMOVE;
use super::service::{App, ProxyBody};
use crate::error::Rejection;
use crate::policy::{Denial, Permit};
use crate::telemetry::Held;

static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
/// ingress-nginx's `auth-url` sends the whole URL.
static X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
/// A denial's status and body, repeated as headers (see [`denial_in_headers`]).
static X_KEYGATE_STATUS: HeaderName = HeaderName::from_static("x-keygate-status");
static X_KEYGATE_BODY: HeaderName = HeaderName::from_static("x-keygate-body");

/// What the check listener answers: an HTTP check's response, or a gRPC `Check`'s.
pub type AuthzBody = Either<ProxyBody, GrpcBody>;

impl App {
    /// The authorization listener's service: never fails, like [`App::handle`].
    pub async fn authorize(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<AuthzBody>, Infallible> {
        if grpc::is_check(&req) {
            let resp = Box::pin(self.grpc_check(req, conn)).await;
            return Ok(resp.map(Either::Right));
        }
        Ok(self.http_check(req, conn).await.map(Either::Left))
    }

    /// A check over HTTP (nginx, Traefik, Envoy's HTTP service).
    async fn http_check(&self, mut req: Request<Incoming>, conn: ConnInfo) -> Response<ProxyBody> {
        let clocks = super::context::clocks();
        self.metrics.authz_checks.fetch_add(1, Ordering::Relaxed);
        let _in_flight = Held::enter(&self.metrics.in_flight);
        let original = self.original_request(&mut req, &conn);
        // After the rewrite: logs and the audit trail show the request asked about.
        let mut cx = Context::new(&req, self.access_log, clocks);
        let result = match original {
            Ok(()) => {
                let mut req = req.map(Inbound::Hyper);
                self.pipeline(&mut req, &conn, &mut cx, true).await
            }
            Err(e) => Err(e),
        };
        let resp = self.finish(result, &mut cx, &conn);
        denial_in_headers(resp).await
    }

    /// Envoy's gRPC `Check`: the request in its attributes runs the same pipeline.
    async fn grpc_check(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<GrpcBody> {
        let clocks = super::context::clocks();
        self.metrics.authz_checks.fetch_add(1, Ordering::Relaxed);
        let _in_flight = Held::enter(&self.metrics.in_flight);
        let peer = conn.peer.ip().to_canonical();
        let trusted = self.policy.load().trusts(peer);
        if !trusted {
            // Nothing is read from a peer that may not ask.
            return grpc::respond(
                None,
                grpc::code::PERMISSION_DENIED,
                "not a trusted proxy: checks are answered for ip.trusted_proxies only",
            );
        }
        let (mut parts, mut body) = req.into_parts();
        let asked = match self.read_check(&mut body).await {
            Ok(asked) => asked,
            Err(e) => return grpc::respond(None, e.code, e.message),
        };
        let rewritten = (|| {
            parts.method = Method::from_bytes(asked.method.as_bytes())
                .map_err(|_| Rejection::BadRequest("the original method is not a method"))?;
            parts.uri = origin_form(asked.target.as_bytes())?;
            Ok::<_, Rejection>(())
        })();
        parts.headers = asked.headers;
        if let Some(source) = asked.source {
            with_source(&mut parts.headers, source);
        }
        parts.version = http::Version::HTTP_11;
        let req = Request::from_parts(parts, body);
        let mut cx = Context::new(&req, self.access_log, clocks);
        let result = match rewritten {
            Err(e) => Err(e),
            Ok(()) => {
                let mut req = req.map(Inbound::Hyper);
                self.pipeline(&mut req, &conn, &mut cx, true).await
            }
        };
        let resp = self.finish(result, &mut cx, &conn);
        let (parts, body) = resp.into_parts();
        let bytes = match body {
            Either::Right(full) => match http_body_util::BodyExt::collect(full).await {
                Ok(c) => c.to_bytes(),
                Err(never) => match never {},
            },
            Either::Left(_) => bytes::Bytes::new(),
        };
        let check = grpc::answer(
            parts.status,
            &parts.headers,
            &bytes,
            self.forwarder.identity_prefix(),
        );
        grpc::respond(Some(&check), grpc::code::OK, "")
    }

    /// The one `CheckRequest` of the call, bounded in size and in total time.
    async fn read_check(&self, body: &mut Incoming) -> Result<grpc::Asked, grpc::CallError> {
        use http_body_util::BodyExt as _;
        let deadline = tokio::time::Instant::now() + self.forwarder.body_read_timeout();
        let mut buf = bytes::BytesMut::new();
        let failed = |message| grpc::CallError {
            code: grpc::code::INVALID_ARGUMENT,
            message,
        };
        loop {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => return Err(failed("the CheckRequest did not arrive in time")),
                Ok(None) => break,
                Ok(Some(Err(_))) => return Err(failed("the CheckRequest could not be read")),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if buf.len() + data.len() > grpc::MAX_MESSAGE {
                            return Err(failed("the CheckRequest is too large"));
                        }
                        buf.extend_from_slice(&data);
                    }
                }
            }
        }
        grpc::asked(grpc::decode(&buf)?)
    }

    /// Puts the original method and URI in place of the check request's own.
    fn original_request(
        &self,
        req: &mut Request<Incoming>,
        conn: &ConnInfo,
    ) -> Result<(), Rejection> {
        let peer = conn.peer.ip().to_canonical();
        if !self.policy.load().trusts(peer) {
            return Err(Denial::UntrustedPeer(peer).into()); // 403
        }
        let headers = req.headers();
        let methods = [&X_FORWARDED_METHOD, &X_ORIGINAL_METHOD];
        let targets = [&X_FORWARDED_URI, &X_ORIGINAL_URI, &X_ORIGINAL_URL];
        let method = one_of(headers, &methods)?.cloned();
        let target = one_of(headers, &targets)?.cloned();
        let headers = req.headers_mut();
        for name in methods.into_iter().chain(targets) {
            headers.remove(name);
        }
        let header_dialect = req.uri().path() == self.authz_check_path;
        match (header_dialect, method.is_some() || target.is_some()) {
            // Elsewhere the check's own line is the request: forwarding headers there can only
            // be the client's, trying to have keygate decide on another path.
            (false, true) => {
                return Err(Rejection::BadRequest(
                    "a check outside authz.check_path must not name an original method or URI",
                ));
            }
            (true, _) if target.is_none() || method.is_none() => {
                return Err(Rejection::BadRequest(
                    "a check on authz.check_path must name the original method and URI (X-Forwarded-Method and X-Forwarded-Uri, X-Original-Method and X-Original-URI or X-Original-URL)",
                ));
            }
            _ => {}
        }
        if let Some(m) = method {
            *req.method_mut() = Method::from_bytes(m.as_bytes())
                .map_err(|_| Rejection::BadRequest("the original method is not a method"))?;
        }
        let uri = match target {
            Some(t) => origin_form(t.as_bytes())?,
            None => self.strip_prefix(req.uri())?,
        };
        *req.uri_mut() = uri;
        Ok(())
    }

    /// The check request's own target without `authz.path_prefix` (Envoy's HTTP service).
    fn strip_prefix(&self, uri: &Uri) -> Result<Uri, Rejection> {
        let prefix = self.authz_path_prefix.as_str();
        let Some(pq) = uri.path_and_query() else {
            return Ok(uri.clone());
        };
        if prefix.is_empty() {
            return Ok(Uri::from(pq.clone()));
        }
        match pq.as_str().strip_prefix(prefix) {
            Some(rest) if rest.starts_with('/') => origin_form(rest.as_bytes()),
            Some(rest) if rest.is_empty() || rest.starts_with('?') => {
                origin_form(format!("/{rest}").as_bytes())
            }
            _ => Err(Rejection::BadRequest(
                "the check request names no original URI and its path does not start with authz.path_prefix",
            )),
        }
    }

    /// An allowed check: `200`, the headers to set, and the names to remove (as a list in
    /// Envoy's `x-envoy-auth-headers-to-remove`).
    pub(super) fn allow<B>(
        &self,
        req: &Request<B>,
        permit: &Permit<'_>,
        conn: &ConnInfo,
        cx: &Context,
    ) -> Result<Response<ProxyBody>, Rejection> {
        if permit.route().self_service {
            return Err(Rejection::BadRequest(
                "the self-service key API is served on the proxy listener, not the authorization endpoint",
            ));
        }
        // The proxy would forward the normalised path; a front proxy forwards the client's,
        // which its upstream may read as another path than the one decided on.
        if permit.normalized_path().is_some() {
            return Err(Rejection::BadRequest(
                "the path is not in normal form (auth-only mode decides only on paths forwarded as they are)",
            ));
        }
        let answer = self
            .forwarder
            .authz_answer(req, permit, conn, &cx.request_id);
        // The proxy would strip these before forwarding; a front proxy passes them on.
        if answer.unsafe_header.is_some() {
            return Err(Rejection::BadRequest(
                "the request carries a path or method override, or an underscore spelling of an identity or forwarding header, which auth-only mode cannot remove",
            ));
        }
        let mut resp = Response::new(Either::Right(Full::default()));
        *resp.status_mut() = StatusCode::OK;
        let headers = resp.headers_mut();
        headers.extend(answer.set);
        if !answer.remove.is_empty() {
            let list = answer
                .remove
                .iter()
                .map(HeaderName::as_str)
                .collect::<Vec<_>>()
                .join(",");
            if let Ok(v) = HeaderValue::from_str(&list) {
                headers.insert(HEADERS_TO_REMOVE.clone(), v);
            }
        }
        Ok(resp)
    }
}

/// The downstream address Envoy saw, as the right-most `X-Forwarded-For` hop (unless Envoy
/// already put it there), so the trusted-proxy resolution finds the client as on the proxy.
fn with_source(headers: &mut HeaderMap, source: std::net::IpAddr) {
    let ip = source.to_canonical().to_string();
    let xff = super::headers::X_FORWARDED_FOR.clone();
    let joined: Vec<&[u8]> = headers
        .get_all(&xff)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    let joined = joined.join(&b","[..]);
    let last = joined
        .rsplit(|b| *b == b',')
        .next()
        .map(|s| String::from_utf8_lossy(s).trim().to_owned());
    if last.as_deref() == Some(ip.as_str()) {
        return;
    }
    let value = if joined.is_empty() {
        ip
    } else {
        format!("{}, {ip}", String::from_utf8_lossy(&joined))
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(xff, v);
    }
}

/// A denial also carries its status and body as headers, for front proxies that cannot pass
/// an authorization service's response through (nginx `auth_request` turns any status but 401
/// and 403 into 500 and drops the body; its `auth_request_set` can read these headers and its
/// `return` replay them).
async fn denial_in_headers(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    if resp.status().is_success() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Either::Right(full) = body else {
        return Response::from_parts(parts, body);
    };
    let bytes = match http_body_util::BodyExt::collect(full).await {
        Ok(collected) => collected.to_bytes(),
        Err(never) => match never {},
    };
    parts.headers.insert(
        X_KEYGATE_STATUS.clone(),
        HeaderValue::from(parts.status.as_u16()),
    );
    // A JSON body has no raw control characters; anything else is not replayed.
    if bytes.len() <= 4096
        && let Ok(v) = HeaderValue::from_bytes(bytes.trim_ascii())
    {
        parts.headers.insert(X_KEYGATE_BODY.clone(), v);
    }
    Response::from_parts(parts, Either::Right(Full::new(bytes)))
}

/// The value the `names` carry (the dialects of different front proxies). One sent twice, or
/// two that disagree, is ambiguous: refused.
fn one_of<'h>(
    headers: &'h HeaderMap,
    names: &[&HeaderName],
) -> Result<Option<&'h HeaderValue>, Rejection> {
    let mut found: Option<&HeaderValue> = None;
    for name in names {
        let mut all = headers.get_all(*name).iter();
        let (Some(v), rest) = (all.next(), all.next()) else {
            continue;
        };
        if rest.is_some() {
            return Err(Rejection::BadRequest(
                "the original method or URI is sent more than once",
            ));
        }
        match found {
            Some(f) if f != v && !same_target(f, v) => {
                return Err(Rejection::BadRequest(
                    "the original method or URI headers disagree",
                ));
            }
            _ => found = found.or(Some(v)),
        }
    }
    Ok(found)
}

/// An absolute URL (ingress-nginx's `X-Original-URL`) and a request target that name the same
/// path and query.
fn same_target(a: &HeaderValue, b: &HeaderValue) -> bool {
    match (origin_form(a.as_bytes()), origin_form(b.as_bytes())) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// `/path?query` from the original request target. An absolute-form target keeps only its
/// path and query; `*` and authority-form name no path and are refused.
fn origin_form(raw: &[u8]) -> Result<Uri, Rejection> {
    let bad = || Rejection::BadRequest("the original URI is not a request target");
    let uri = Uri::try_from(raw).map_err(|_| bad())?;
    let pq = uri.path_and_query().ok_or_else(bad)?;
    if !pq.as_str().starts_with('/') {
        return Err(bad());
    }
    Ok(Uri::from(pq.clone()))
}
