//! The request path, top to bottom. Each stage is one call into the module that owns it; any
//! rejection leaves through [`App::handle`], the single rescue point that turns an
//! [`AuthError`] into a response and logs it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderValue};
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;

use super::headers::{ConnInfo, HeaderPlan, X_REQUEST_ID, request_id};
use super::upstream::Upstream;
use crate::auth::{self, Verifier};
use crate::config::Carrier;
use crate::error::AuthError;
use crate::telemetry::Metrics;

/// What the client receives: the upstream's streamed body, or keygate's JSON error.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// Everything a request needs, shared by all connections.
pub struct App {
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) upstream: Upstream,
    pub(crate) plan: HeaderPlan,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) carriers: Vec<Carrier>,
    pub(crate) max_key_length: usize,
    pub(crate) max_request_body: u64,
}

impl App {
    /// The hyper service: never fails, every error becomes a response here.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<ProxyBody>, Infallible> {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let _in_flight = InFlight::enter(&self.metrics);
        let request_id = request_id(req.headers());
        // An HTTP/1 request whose body we never read leaves unread bytes on the connection;
        // closing it is the only way those bytes can never be parsed as another request.
        let unread_body = req.version() <= Version::HTTP_11 && !req.body().is_end_stream();
        let (method, uri) = (req.method().clone(), req.uri().clone());

        let mut resp = match self.proxy(req, &conn, &request_id).await {
            Ok(resp) => {
                self.metrics.forwarded.fetch_add(1, Ordering::Relaxed);
                resp.map(Either::Left)
            }
            Err(err) => {
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    request_id = ?request_id, client.ip = %conn.peer.ip(), %method, path = uri.path(),
                    status = err.status().as_u16(), code = err.code(), "request rejected: {err}"
                );
                let mut resp = err
                    .into_response(request_id.to_str().unwrap_or_default())
                    .map(Either::Right);
                if unread_body {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
        };
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        Ok(resp)
    }

    async fn proxy(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
    ) -> Result<Response<Incoming>, AuthError> {
        let identity = {
            let cred = auth::extract(
                req.headers(),
                &self.carriers,
                &self.carriers,
                self.max_key_length,
            )?; // 401
            self.verifier.verify(&cred).await? // 401 / 503
        };
        self.check_declared_length(&req)?; // 413
        let mut req = req.map(|body| {
            Limited::new(
                body,
                usize::try_from(self.max_request_body).unwrap_or(usize::MAX),
            )
        });
        self.plan
            .prepare_request(&mut req, conn, &identity, request_id);
        self.upstream.send(req, self.max_request_body).await // 502 / 504 / 413 while streaming
    }

    /// Rejects a body whose declared length is over the limit before streaming any of it.
    fn check_declared_length(&self, req: &Request<Incoming>) -> Result<(), AuthError> {
        let declared = req.body().size_hint().exact().or_else(|| {
            req.headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
        });
        match declared {
            Some(n) if n > self.max_request_body => Err(AuthError::PayloadTooLarge {
                limit: self.max_request_body,
            }),
            _ => Ok(()),
        }
    }
}

/// Counts a request as in flight until dropped, including when the client goes away mid-request.
struct InFlight<'a>(&'a Metrics);

impl<'a> InFlight<'a> {
    fn enter(metrics: &'a Metrics) -> Self {
        metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(metrics)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
