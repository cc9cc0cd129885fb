//! The admin API: key management and the audit trail over HTTP/JSON, on its own listener
//! (loopback by default, or a unix socket), never on the proxied port: [`routes`] (the route
//! table), [`auth`] (tokens and per-token limits), [`request`] (parsing), [`handlers`],
//! [`listener`]. Errors use the key-management APIs' vocabulary (`crate::error::api`).
//!
//! Every request carries `Authorization: Bearer <admin token>`; the token's name is the actor
//! recorded in the audit trail. Changes go through the running proxy's store handle, so they
//! are in force in its cache when the call returns, and reach other replicas through the
//! store's invalidation feed.

mod auth;
mod handlers;
mod listener;
pub mod request;
mod routes;

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::audit::Audit;
use crate::config::{AdminConfig, AdminToken};
use crate::error::api::ApiError;
use crate::error::{json_response, no_store};
use crate::key::Environment;
use crate::manage::KeyTool;
use crate::policy::Policy;
use crate::policy::ratelimit::{Decision, set_rate_limit_headers};
use crate::store::KeyPatch;
use crate::time::Timestamp;
use handlers::{CreateRequest, RotateRequest};
pub use listener::{AdminListener, serve};
use request::{Query, Secs, parse_json, read_body};
use routes::route;
pub use routes::{Op, ROUTES};

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

type Reply = Result<(StatusCode, serde_json::Value), ApiError>;

/// The admin API of one running proxy.
pub struct Admin {
    tool: KeyTool,
    audit: Arc<Audit>,
    tokens: Vec<AdminToken>,
    /// For the proxy's rate limiter and header styles (swapped on reload).
    policy: Arc<ArcSwap<Policy>>,
    config: AdminConfig,
    environment: Environment,
}

impl Admin {
    pub fn new(
        tool: KeyTool,
        audit: Arc<Audit>,
        config: &AdminConfig,
        policy: Arc<ArcSwap<Policy>>,
        environment: Environment,
    ) -> Admin {
        Admin {
            tool: tool.with_audit(Arc::clone(&audit)),
            audit,
            tokens: config.tokens.clone(),
            policy,
            config: config.clone(),
            environment,
        }
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let mut rate = None;
        let result = self.dispatch(req, &mut rate).await;
        let mut resp = match result {
            // Responses may carry a new key: never cached.
            Ok((status, body)) => no_store(json_response(status, Bytes::from(body.to_string()))),
            Err(e) => e.into_response("Bearer realm=\"keygate-admin\""),
        };
        if let Some(d) = rate {
            set_rate_limit_headers(resp.headers_mut(), &d, self.policy.load().header_styles());
        }
        Ok(resp)
    }

    async fn dispatch(&self, req: Request<Incoming>, rate: &mut Option<Decision>) -> Reply {
        // Authentication first: without a token, nothing about the API (not even which paths
        // exist) is revealed.
        let Some(actor) = self.actor(&req).map(str::to_owned) else {
            return Err(ApiError::unauthorized(
                "admin token missing or not recognised: send `Authorization: Bearer <token>`",
            ));
        };
        let path = req.uri().path().to_owned();
        let (op, id) = match route(req.method(), &path) {
            Some(Ok((op, id))) => (op, id.map(str::to_owned)),
            Some(Err(())) => {
                return Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{} is not allowed on {path}", req.method()),
                ));
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such admin endpoint",
                ));
            }
        };
        let d = self.check_limit(&actor, op.class()).await;
        *rate = Some(d);
        if !d.allowed {
            return Err(ApiError::rate_limited("admin", d.retry_after));
        }
        let query = Query::parse(req.uri().query().unwrap_or(""))?;
        let body = read_body(req).await?;
        let id = id.unwrap_or_default();
        let now = Timestamp::now();
        match op {
            Op::OpenApi => Ok((StatusCode::OK, openapi().clone())),
            Op::SelfServiceOpenApi => match self.policy.load().self_service() {
                Some(c) => Ok((StatusCode::OK, crate::self_service::openapi(c))),
                None => Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "the self-service key API is not mounted: set [self_service] path",
                )),
            },
            Op::CreateKey => {
                let req: CreateRequest = parse_json(&body)?;
                let new = req.into_new_record(self.environment)?;
                let (key, rec) = self.tool.create(new, &actor).await?;
                let propagated = self.tool.propagate().await;
                Ok((
                    StatusCode::CREATED,
                    serde_json::json!({ "key": key.key, "record": rec.view(now), "propagated": propagated }),
                ))
            }
            Op::ListKeys => self.list(&query).await,
            Op::GetKey => {
                let rec = self.tool.get(&id).await?;
                Ok((
                    StatusCode::OK,
                    serde_json::to_value(rec.view(now)).unwrap_or_default(),
                ))
            }
            Op::UpdateKey => {
                let patch: KeyPatch = parse_json(&body)?;
                if patch.is_empty() {
                    return Err(ApiError::bad_request("nothing to change"));
                }
                let rec = self.tool.update(&id, patch, &actor).await?;
                Ok((StatusCode::OK, self.with_propagation(&rec).await))
            }
            Op::RotateKey => {
                let req: RotateRequest = if body.is_empty() {
                    RotateRequest::default()
                } else {
                    parse_json(&body)?
                };
                let grace = req.grace_period.map(Secs::duration).transpose()?;
                let (key, new, old) = self.tool.rotate(&id, grace, &actor).await?;
                let propagated = self.tool.propagate().await;
                Ok((
                    StatusCode::OK,
                    serde_json::json!({
                        "key": key.key, "record": new.view(now), "previous": old.view(now),
                        "propagated": propagated,
                    }),
                ))
            }
            Op::RevokeKey => {
                let rec = self.tool.revoke(&id, &actor).await?;
                Ok((StatusCode::OK, self.with_propagation(&rec).await))
            }
            Op::KeyUsage => self.usage(&id).await,
            Op::ListAudit => self.audit_events(&query).await,
        }
    }
}

impl Admin {
    /// A changed record as the API shows it, with how far the change has propagated: this
    /// process refuses the old state already; `propagated` says which other proxies do.
    async fn with_propagation(&self, rec: &crate::store::KeyRecord) -> serde_json::Value {
        let mut v = serde_json::to_value(rec.view(Timestamp::now())).unwrap_or_default();
        v["propagated"] = serde_json::to_value(self.tool.propagate().await).unwrap_or_default();
        v
    }
}

/// The OpenAPI document, parsed once (a test holds it valid and equal to [`ROUTES`]).
fn openapi() -> &'static serde_json::Value {
    static DOC: std::sync::LazyLock<serde_json::Value> =
        std::sync::LazyLock::new(|| serde_json::from_str(OPENAPI).unwrap_or_default());
    &DOC
}
