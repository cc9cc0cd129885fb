//! The ops listener: `/healthz` (the process is up), `/readyz` (the store answers and we are not
//! draining; `/readyz?store=ignore`: not draining, whatever the store — for orchestrators that
//! should keep sending traffic while cached keys are served through a store outage) and
//! `/metrics` (Prometheus text). Separate from the proxied port so these paths never
//! shadow the upstream's own.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use crate::auth::Verifier;
use crate::error::{error_response, json_response};
use crate::store::KeyStore;
use crate::telemetry::Metrics;

pub struct Ops {
    verifier: Arc<Verifier>,
    metrics: Arc<Metrics>,
    draining: Arc<AtomicBool>,
}

impl Ops {
    pub fn new(verifier: Arc<Verifier>, metrics: Arc<Metrics>, draining: Arc<AtomicBool>) -> Self {
        Ops {
            verifier,
            metrics,
            draining,
        }
    }

    pub async fn handle<B>(
        self: Arc<Self>,
        req: Request<B>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Ok(error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the ops endpoints answer GET and HEAD",
                None,
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
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            _ => error_response(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such ops endpoint: /healthz, /readyz or /metrics",
                None,
            ),
        };
        Ok(resp)
    }
}

fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    json_response(status, Bytes::from(body))
}

/// `keygate probe`: whether the ops endpoint at `url` answers 200 (printing why not), for
/// container health checks where no curl exists.
pub async fn probe(url: &str) -> bool {
    use http_body_util::Empty;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let uri = match url.parse::<http::Uri>() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: {url}: {e}");
            return false;
        }
    };
    match tokio::time::timeout(Duration::from_secs(3), client.get(uri)).await {
        Ok(Ok(resp)) if resp.status().is_success() => true,
        Ok(Ok(resp)) => {
            eprintln!("{url}: {}", resp.status());
            false
        }
        Ok(Err(e)) => {
            eprintln!("{url}: {e}");
            false
        }
        Err(_) => {
            eprintln!("{url}: timed out");
            false
        }
    }
}
