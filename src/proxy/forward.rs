//! The forwarder: the only way to the upstream, and it takes a [`Permit`]. It prepares the
//! request from the permit (strips what the client may not send, injects the identity, the
//! forwarding headers and the normalised path — see [`super::headers`]) and sends it through
//! [`Upstream`].

use std::future::Future;
use std::sync::Arc;

use http::header::{CONNECTION, CONTENT_LENGTH, HeaderValue, UPGRADE};
use http::{Request, Response};
use hyper::body::Incoming;

use super::body::{Inbound, UpstreamBody, upstream_body};
use super::conn::ConnInfo;
use super::headers::{AuthzAnswer, Forward, HeaderPlan};
use super::pool::{PooledBody, Written};
use super::upstream::{Outgoing, Upstream};
use crate::config::Config;
use crate::error::Rejection;
use crate::policy::Permit;
use crate::telemetry::Metrics;

pub struct Forwarder {
    upstream: Upstream,
    plan: HeaderPlan,
    metrics: Arc<Metrics>,
    max_request_body: u64,
    body_read_timeout: std::time::Duration,
    keep_method_override: bool,
}

impl Forwarder {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Result<Self, String> {
        Ok(Forwarder {
            upstream: Upstream::new(&cfg.upstream, Arc::clone(&metrics.upstream_pool))?,
            plan: HeaderPlan::new(&cfg.auth, &cfg.upstream.url, cfg.upstream.preserve_host)?,
            metrics,
            max_request_body: cfg.listen.max_request_body,
            body_read_timeout: cfg.listen.body_read_timeout,
            keep_method_override: cfg.auth.method_override == crate::config::MethodOverride::Honor,
        })
    }

    pub fn max_request_body(&self) -> u64 {
        self.max_request_body
    }

    pub fn body_limit(&self) -> usize {
        usize::try_from(self.max_request_body).unwrap_or(usize::MAX)
    }

    /// How long the client may pause while sending its body.
    pub fn body_read_timeout(&self) -> std::time::Duration {
        self.body_read_timeout
    }

    pub fn is_http2(&self) -> bool {
        self.upstream.is_http2()
    }

    /// Rejects a body whose declared length is over the limit before streaming any of it.
    pub fn check_declared_length<B: http_body::Body>(
        &self,
        req: &Request<B>,
    ) -> Result<(), Rejection> {
        let declared = req.body().size_hint().exact().or_else(|| {
            req.headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
        });
        match declared {
            Some(n) if n > self.max_request_body => Err(Rejection::PayloadTooLarge {
                limit: self.max_request_body,
            }),
            _ => Ok(()),
        }
    }

    /// Prepares and sends a permitted request; `upgrade` is the protocol it asks to switch to.
    /// The preparation happens now; the returned future is the upstream round trip (no extra
    /// layer of future on the hot path). The body is limited (size, idle time) on its way.
    pub fn send<'a>(
        &'a self,
        req: &mut Request<Inbound>,
        permit: &Permit<'_>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
        upgrade: Option<HeaderValue>,
        sent_at: std::time::Instant,
    ) -> impl Future<Output = Result<Response<PooledBody>, Rejection>> + use<'a> {
        let client_ip = conn.ip_value(permit.client_ip());
        let fwd = self.forward_of(permit, conn, request_id, &client_ip);
        let (limit, idle) = (self.body_limit(), self.body_read_timeout);
        let outgoing = match upgrade {
            // The common case: the head written straight from the client's, no map edits, and
            // the request taken apart once (it is not moved whole again).
            None if self.upstream.takes_written() => {
                let mut head = Vec::with_capacity(1024);
                let framing = self.plan.encode_request(req, &fwd, &mut head);
                Outgoing::Written(Written {
                    head,
                    framing,
                    method: req.method().clone(),
                    body: upstream_body(std::mem::take(req.body_mut()), limit, idle),
                    sent_at,
                })
            }
            upgrade => {
                let mut req = std::mem::take(req).map(|body| upstream_body(body, limit, idle));
                self.plan.prepare_request(&mut req, &fwd);
                if let Some(proto) = upgrade {
                    req.headers_mut().insert(UPGRADE, proto);
                    req.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
                }
                Outgoing::Prepared(req)
            }
        };
        self.upstream.send(
            outgoing,
            self.max_request_body,
            &self.metrics.upstream_in_flight,
            sent_at,
        )
    }

    /// What a permitted request's forwarded form carries besides the client's headers.
    fn forward_of<'f>(
        &self,
        permit: &'f Permit<'_>,
        conn: &ConnInfo,
        request_id: &'f HeaderValue,
        client_ip: &'f HeaderValue,
    ) -> Forward<'f> {
        Forward {
            client_ip,
            identity: permit.identity(),
            request_id,
            normalized_path: permit.normalized_path(),
            keep_method_override: self.keep_method_override,
            https: conn.tls,
        }
    }

    /// The identity namespace (`x-auth-`).
    pub fn identity_prefix(&self) -> &str {
        self.plan.identity_prefix()
    }

    /// What an allowed authorization check tells the front proxy to set and remove.
    pub fn authz_answer<B>(
        &self,
        req: &Request<B>,
        permit: &Permit<'_>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
    ) -> AuthzAnswer {
        let client_ip = conn.ip_value(permit.client_ip());
        let fwd = self.forward_of(permit, conn, request_id, &client_ip);
        self.plan.authz_answer(req, &fwd)
    }

    /// Prepares and sends a permitted `CONNECT` (authority-form target, signed over it).
    pub async fn send_connect(
        &self,
        mut req: Request<UpstreamBody>,
        permit: &Permit<'_>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
    ) -> Result<Response<Incoming>, Rejection> {
        let target = req.uri().clone();
        let client_ip = conn.ip_value(permit.client_ip());
        self.plan.prepare_request(
            &mut req,
            &Forward {
                client_ip: &client_ip,
                identity: permit.identity(),
                request_id,
                normalized_path: None,
                keep_method_override: false,
                https: conn.tls,
            },
        );
        *req.uri_mut() = target;
        // Signed over the target actually sent (`host:port`), not the routing path.
        self.plan.sign(&mut req, permit.identity());
        self.upstream.connect_tunnel(req).await
    }
}
