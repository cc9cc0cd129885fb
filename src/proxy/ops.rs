//! The ops listener: `/healthz` (the process is up), `/readyz` (the store answers and we are not
//! draining; `/readyz?store=ignore`: not draining, whatever the store — for orchestrators that
//! should keep sending traffic while cached keys are served through a store outage) and
//! `/metrics` (Prometheus text). Separate from the proxied port so these paths never
//! shadow the upstream's own.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::auth::Verifier;
use crate::store::KeyStore;
use crate::telemetry::Metrics;

pub struct Ops {
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) draining: Arc<AtomicBool>,
}

impl Ops {
    pub async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Ok(json(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"status":"method not allowed"}"#.into(),
            ));
        }
        let resp = match req.uri().path() {
            "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#.into()),
            "/readyz" => {
                if self.draining.load(Ordering::Relaxed) {
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        r#"{"status":"draining"}"#.into(),
                    )
                } else if req.uri().query() == Some("store=ignore") {
                    json(StatusCode::OK, r#"{"status":"ready"}"#.into())
                } else {
                    match self.verifier.store().health().await {
                        Ok(()) => json(StatusCode::OK, r#"{"status":"ready","store":"ok"}"#.into()),
                        Err(e) => {
                            let body =
                                serde_json::json!({"status": "not ready", "store": e.to_string()});
                            json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
                        }
                    }
                }
            }
            "/metrics" => {
                let mut r = Response::new(Full::new(Bytes::from(
                    self.metrics.render(self.verifier.cached_entries()),
                )));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            _ => json(StatusCode::NOT_FOUND, r#"{"status":"not found"}"#.into()),
        };
        Ok(resp)
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
