//! The admin API: key management and the audit trail over HTTP/JSON, on its own listener
//! (loopback by default, or a unix socket), never on the proxied port.
//!
//! Every request carries `Authorization: Bearer <admin token>`; tokens are compared in constant
//! time, all of them every time. The token's name is the actor recorded in the audit trail.
//! Operations are rate limited per token (list/read, create, rotate, other writes) through the
//! proxy's limiter, with the proxy's headers and 429. Changes go through the running proxy's
//! store handle, so they reach its cache at once and other replicas through the store's
//! invalidation feed.
//!
//! The routes are [`ROUTES`]; `openapi.json` documents exactly those (a test holds them equal).

pub mod client;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use ipnet::IpNet;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use crate::audit::{self, Action, Audit};
use crate::cli::{InvalidRequest, KeyTool};
use crate::config::{AdminAddress, AdminConfig, AdminToken};
use crate::key::{Environment, KeyType};
use crate::policy::ratelimit::{Algorithm, Counter, Decision, Limit, Subject};
use crate::proxy::App;
use crate::proxy::headers::set_rate_limit_headers;
use crate::store::{KeyPatch, KeyRateLimit, KeyRecord, KeyState, NewRecord, StoreError};
use crate::time::Timestamp;

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Largest accepted request body.
const MAX_BODY: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    CreateKey,
    ListKeys,
    GetKey,
    UpdateKey,
    RotateKey,
    RevokeKey,
    KeyUsage,
    ListAudit,
    OpenApi,
}

/// Every route: method, path template, operation.
pub const ROUTES: &[(&str, &str, Op)] = &[
    ("POST", "/v1/keys", Op::CreateKey),
    ("GET", "/v1/keys", Op::ListKeys),
    ("GET", "/v1/keys/{id}", Op::GetKey),
    ("PATCH", "/v1/keys/{id}", Op::UpdateKey),
    ("POST", "/v1/keys/{id}/rotate", Op::RotateKey),
    ("POST", "/v1/keys/{id}/revoke", Op::RevokeKey),
    ("GET", "/v1/keys/{id}/usage", Op::KeyUsage),
    ("GET", "/v1/audit", Op::ListAudit),
    ("GET", "/v1/openapi.json", Op::OpenApi),
];

/// The operation for `method path` and the `{id}` it names, if any. `None` when no route has
/// this path; `Some(Err(()))` when the path exists for other methods.
fn route<'p>(method: &Method, path: &'p str) -> Option<Result<(Op, Option<&'p str>), ()>> {
    let mut path_matched = false;
    for (m, template, op) in ROUTES {
        let mut id = None;
        let mut t = template.split('/');
        let mut p = path.split('/');
        let matched = loop {
            match (t.next(), p.next()) {
                (None, None) => break true,
                (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg),
                (Some(a), Some(b)) if a == b => {}
                _ => break false,
            }
        };
        if matched {
            if method.as_str() == *m {
                return Some(Ok((*op, id)));
            }
            path_matched = true;
        }
    }
    path_matched.then_some(Err(()))
}

/// Which per-token limit an operation counts against.
#[derive(Clone, Copy)]
enum OpClass {
    Read,
    Create,
    Rotate,
    Write,
}

impl Op {
    fn class(self) -> OpClass {
        match self {
            Op::CreateKey => OpClass::Create,
            Op::RotateKey => OpClass::Rotate,
            Op::UpdateKey | Op::RevokeKey => OpClass::Write,
            Op::ListKeys | Op::GetKey | Op::KeyUsage | Op::ListAudit | Op::OpenApi => OpClass::Read,
        }
    }
}

/// An error answer: `{"error":{"code","message"}}`, like the proxy's.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no key with id {id}"),
        )
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        if let Some(InvalidRequest(m)) = e.downcast_ref::<InvalidRequest>() {
            return ApiError::bad_request(m.clone());
        }
        match e.downcast_ref::<StoreError>() {
            Some(StoreError::NotFound(id)) => ApiError::not_found(id),
            Some(StoreError::Conflict(m)) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            Some(StoreError::ReadOnly(m)) => ApiError::new(
                StatusCode::CONFLICT,
                "read_only",
                format!("the store is read-only ({m})"),
            ),
            Some(StoreError::Unavailable(_) | StoreError::Corrupt(_)) => {
                tracing::warn!(error = %e, "admin: store error");
                ApiError {
                    retry_after: Some(Duration::from_secs(2)),
                    ..ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "store_unavailable",
                        "the key store is unavailable; retry shortly",
                    )
                }
            }
            None => {
                tracing::warn!(error = %format!("{e:#}"), "admin: request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

type Reply = Result<(StatusCode, serde_json::Value), ApiError>;

/// The admin API of one running proxy.
pub struct Admin {
    tool: KeyTool,
    audit: Arc<Audit>,
    tokens: Vec<AdminToken>,
    /// For the proxy's rate limiter and header styles.
    app: Arc<App>,
    config: AdminConfig,
    environment: Environment,
}

impl Admin {
    pub fn new(
        tool: KeyTool,
        audit: Arc<Audit>,
        config: &AdminConfig,
        app: Arc<App>,
        environment: Environment,
    ) -> Admin {
        Admin {
            tool: tool.with_audit(Arc::clone(&audit)),
            audit,
            tokens: config.tokens.clone(),
            app,
            config: config.clone(),
            environment,
        }
    }

    /// The name of the token the request carries. Every token is compared, by SHA-256 digest
    /// so that neither content nor length shows in the timing.
    fn actor(&self, req: &Request<Incoming>) -> Option<&str> {
        let value = req.headers().get(AUTHORIZATION)?.as_bytes();
        let (scheme, presented) = value.split_at_checked(7)?;
        if !scheme.eq_ignore_ascii_case(b"Bearer ") {
            return None;
        }
        let presented = Sha256::digest(presented);
        let mut found = None;
        for t in &self.tokens {
            if bool::from(Sha256::digest(t.token.expose()).ct_eq(&presented)) {
                found = Some(t.name.as_str());
            }
        }
        found
    }

    async fn check_limit(&self, actor: &str, class: OpClass) -> Decision {
        let (name, per_minute) = match class {
            OpClass::Read => ("admin_read", self.config.list_per_minute),
            OpClass::Create => ("admin_create", self.config.create_per_minute),
            OpClass::Rotate => ("admin_rotate", self.config.rotate_per_minute),
            OpClass::Write => ("admin_write", self.config.write_per_minute),
        };
        let counter = Counter {
            subject: Subject::Key(Arc::from(format!("admin:{actor}"))),
            name: Arc::from(name),
        };
        let limit = Limit {
            limit: per_minute,
            window: Duration::from_secs(60),
            algorithm: Algorithm::FixedWindow,
        };
        let mut d = self
            .app
            .policy
            .load()
            .limiter()
            .acquire(&[(counter, limit)])
            .await;
        d.pop().unwrap_or(Decision {
            allowed: true,
            limit: per_minute,
            remaining: per_minute,
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
            window: limit.window,
        })
    }

    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let mut rate = None;
        let result = self.dispatch(req, &mut rate).await;
        let mut resp = match result {
            Ok((status, body)) => json_response(status, body.to_string()),
            Err(e) => {
                let body = serde_json::json!({"error": {"code": e.code, "message": e.message}});
                let mut r = json_response(e.status, body.to_string());
                if let Some(after) = e.retry_after {
                    r.headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
                }
                if e.status == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer realm=\"keygate-admin\""),
                    );
                }
                r
            }
        };
        if let Some(d) = rate {
            set_rate_limit_headers(
                resp.headers_mut(),
                &d,
                self.app.policy.load().header_styles(),
            );
        }
        Ok(resp)
    }

    async fn dispatch(&self, req: Request<Incoming>, rate: &mut Option<Decision>) -> Reply {
        // Authentication first: without a token, nothing about the API (not even which paths
        // exist) is revealed.
        let Some(actor) = self.actor(&req).map(str::to_owned) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
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
            return Err(ApiError {
                retry_after: Some(d.retry_after),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!(
                        "admin rate limit exceeded; retry after {} s",
                        d.retry_after.as_secs().max(1)
                    ),
                )
            });
        }
        let query = Query::parse(req.uri().query().unwrap_or(""))?;
        let body = read_body(req).await?;
        let id = id.unwrap_or_default();
        let now = Timestamp::now();
        match op {
            Op::OpenApi => serde_json::from_str(OPENAPI)
                .map(|v| (StatusCode::OK, v))
                .map_err(|e| ApiError::from(anyhow::Error::from(e))),
            Op::CreateKey => {
                let req: CreateRequest = parse_json(&body)?;
                let new = req.into_new_record(self.environment)?;
                let (key, rec) = self.tool.create(new, &actor).await?;
                Ok((
                    StatusCode::CREATED,
                    serde_json::json!({ "key": key.key, "record": rec.view(now) }),
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
                Ok((
                    StatusCode::OK,
                    serde_json::to_value(rec.view(now)).unwrap_or_default(),
                ))
            }
            Op::RotateKey => {
                let req: RotateRequest = if body.is_empty() {
                    RotateRequest::default()
                } else {
                    parse_json(&body)?
                };
                let grace = req.grace_period.map(Secs::duration).transpose()?;
                let (key, new, old) = self.tool.rotate(&id, grace, &actor).await?;
                Ok((
                    StatusCode::OK,
                    serde_json::json!({ "key": key.key, "record": new.view(now), "previous": old.view(now) }),
                ))
            }
            Op::RevokeKey => {
                let rec = self.tool.revoke(&id, &actor).await?;
                Ok((
                    StatusCode::OK,
                    serde_json::to_value(rec.view(now)).unwrap_or_default(),
                ))
            }
            Op::KeyUsage => self.usage(&id).await,
            Op::ListAudit => self.audit_events(&query).await,
        }
    }

    async fn list(&self, q: &Query) -> Reply {
        let now = Timestamp::now();
        let environment = q
            .get("env")
            .map(|e| {
                Environment::parse(e).ok_or_else(|| ApiError::bad_request("env: live or test"))
            })
            .transpose()?;
        let state = q
            .get("state")
            .map(|s| match s {
                "active" => Ok(KeyState::Active),
                "expired" => Ok(KeyState::Expired),
                "revoked" => Ok(KeyState::Revoked),
                _ => Err(ApiError::bad_request("state: active, expired or revoked")),
            })
            .transpose()?;
        let limit = q.limit(50, 200)?;
        let all = self.tool.list(q.get("owner")).await?;
        let start = match q.get("cursor") {
            None => 0,
            Some(c) => {
                all.iter().position(|r| r.id == c).ok_or_else(|| {
                    ApiError::bad_request("cursor: not a key id from this listing")
                })? + 1
            }
        };
        let matching = all[start..].iter().filter(|r| {
            environment.is_none_or(|e| r.environment == e)
                && state.is_none_or(|s| r.state(now) == s)
        });
        let page: Vec<&Arc<KeyRecord>> = matching.take(limit + 1).collect();
        let next_cursor = (page.len() > limit).then(|| page[limit - 1].id.clone());
        let data: Vec<_> = page.iter().take(limit).map(|r| r.view(now)).collect();
        Ok((
            StatusCode::OK,
            serde_json::json!({ "data": data, "next_cursor": next_cursor }),
        ))
    }

    async fn usage(&self, id: &str) -> Reply {
        let rec = self.tool.get(id).await?;
        let now = Timestamp::now();
        let usage = self.audit.usage(id).await.map_err(anyhow::Error::from)?;
        let mut body = serde_json::json!({ "key": usage });
        // During a rotation's grace period, the old and the new key side by side.
        let (old_id, new_id) = match (&rec.rotated_from, &rec.rotated_to) {
            (_, Some(to)) => (Some(rec.id.clone()), Some(to.clone())),
            (Some(from), None) => (Some(from.clone()), Some(rec.id.clone())),
            (None, None) => (None, None),
        };
        if let (Some(old_id), Some(new_id)) = (old_id, new_id) {
            let old = self.tool.get(&old_id).await?;
            if old.state(now) == KeyState::Active {
                let old_usage = self
                    .audit
                    .usage(&old_id)
                    .await
                    .map_err(anyhow::Error::from)?;
                let new_usage = self
                    .audit
                    .usage(&new_id)
                    .await
                    .map_err(anyhow::Error::from)?;
                body["rotation"] = serde_json::json!({
                    "old": { "key_id": old_id, "works_until": old.expires_at, "usage": old_usage },
                    "new": { "key_id": new_id, "usage": new_usage },
                });
            }
        }
        Ok((StatusCode::OK, body))
    }

    async fn audit_events(&self, q: &Query) -> Reply {
        let filter = audit::Filter {
            key_id: q.get("key_id").map(str::to_owned),
            owner: q.get("owner").map(str::to_owned),
            action: q
                .get("action")
                .map(|a| {
                    Action::parse(a).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "action: one of {}",
                            Action::ALL.map(Action::as_str).join(", ")
                        ))
                    })
                })
                .transpose()?,
            since: q.time("since")?,
            until: q.time("until")?,
        };
        let limit = q.limit(100, 1000)?;
        let (events, more) = self.audit.events(&filter, limit).await.map_err(|e| {
            tracing::warn!(error = %e, "admin: cannot read the audit trail");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit trail cannot be read right now",
            )
        })?;
        Ok((
            StatusCode::OK,
            serde_json::json!({ "events": events, "more": more }),
        ))
    }
}

fn json_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Responses may carry a new key: never cache them.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request body exceeds {MAX_BODY} bytes"),
        )),
        Err(_) => Err(ApiError::bad_request("could not read the request body")),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Query parameters, percent-decoded.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Result<Query, ApiError> {
        let mut out = Vec::new();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (k, v) = (percent_decode(k), percent_decode(v));
            match (k, v) {
                (Some(k), Some(v)) => out.push((k, v)),
                _ => return Err(ApiError::bad_request("malformed query string")),
            }
        }
        Ok(Query(out))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get("limit") {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::bad_request(format!("limit: 1–{max}"))),
            },
        }
    }

    /// RFC 3339 or unix seconds.
    fn time(&self, name: &str) -> Result<Option<Timestamp>, ApiError> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>().map(Timestamp::from_unix).or_else(|_| {
                    serde_json::from_value::<Timestamp>(serde_json::Value::String(v.to_owned()))
                        .map_err(|_| {
                            ApiError::bad_request(format!("{name}: RFC 3339 time or unix seconds"))
                        })
                })
            })
            .transpose()
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A duration as whole seconds or a human string (`"24h"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum Secs {
    Seconds(u64),
    Text(String),
}

impl Secs {
    /// At most 100 years.
    fn duration(self) -> Result<Duration, ApiError> {
        const MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
        let d = match self {
            Secs::Seconds(s) => Duration::from_secs(s),
            Secs::Text(t) => humantime::parse_duration(&t)
                .map_err(|e| ApiError::bad_request(format!("{t:?} is not a duration: {e}")))?,
        };
        if d > MAX {
            return Err(ApiError::bad_request("durations are limited to 100 years"));
        }
        Ok(d)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    owner: String,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default, rename = "type")]
    key_type: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    expires_in: Option<Secs>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    ip_allowlist: Vec<IpNet>,
    #[serde(default)]
    rate_limit: Option<KeyRateLimit>,
}

impl CreateRequest {
    fn into_new_record(self, default_env: Environment) -> Result<NewRecord, ApiError> {
        let environment = match self.environment.as_deref() {
            None => default_env,
            Some(e) => Environment::parse(e)
                .ok_or_else(|| ApiError::bad_request("environment: live or test"))?,
        };
        let key_type = match self.key_type.as_deref() {
            None | Some("secret") => KeyType::Secret,
            Some("publishable") => KeyType::Publishable,
            Some(_) => return Err(ApiError::bad_request("type: secret or publishable")),
        };
        Ok(NewRecord {
            name: self.name,
            scopes: self.scopes,
            expires_in: self.expires_in.map(Secs::duration).transpose()?,
            metadata: self.metadata,
            ip_allowlist: self.ip_allowlist,
            rate_limit: self.rate_limit,
            ..NewRecord::new(self.owner, environment, key_type)
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    grace_period: Option<Secs>,
}

/// A bound admin listener.
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl AdminListener {
    /// Binds `address`. A stale unix socket file from an earlier run is replaced.
    pub async fn bind(address: &AdminAddress) -> std::io::Result<AdminListener> {
        match address {
            AdminAddress::Tcp(a) => {
                if !a.ip().is_loopback() {
                    tracing::warn!(address = %a, "the admin API listens beyond loopback: keep it off public networks");
                }
                Ok(AdminListener::Tcp(TcpListener::bind(a).await?))
            }
            AdminAddress::Unix(p) => {
                use std::os::unix::fs::FileTypeExt;
                // Replace a stale socket from an earlier run, never any other kind of file.
                if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
                    std::fs::remove_file(p)?;
                }
                let l = UnixListener::bind(p)?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
                Ok(AdminListener::Unix(l, p.clone()))
            }
        }
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            AdminListener::Tcp(l) => l.local_addr().ok(),
            AdminListener::Unix(..) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            AdminListener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            AdminListener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

/// Serves the admin API until `stop` resolves.
pub async fn serve(listener: AdminListener, admin: Arc<Admin>, stop: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    // HTTP/1.1 only: the admin API needs nothing more, and this keeps the header timeout.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let mut stop = std::pin::pin!(stop);
    loop {
        let conn: Box<dyn IoStream> = tokio::select! {
            _ = &mut stop => break,
            accepted = accept(&listener) => match accepted {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let admin = Arc::clone(&admin);
        let service = service_fn(move |req| Arc::clone(&admin).handle(req));
        let fut = graceful.watch(builder.serve_connection(TokioIo::new(conn), service));
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(error = %e, "admin connection closed with an error");
            }
        });
    }
    if let AdminListener::Unix(_, p) = &listener {
        let _ = std::fs::remove_file(p);
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}

trait IoStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> IoStream for T {}

async fn accept(listener: &AdminListener) -> std::io::Result<Box<dyn IoStream>> {
    Ok(match listener {
        AdminListener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            Box::new(s)
        }
        AdminListener::Unix(l, _) => {
            let (s, _) = l.accept().await?;
            Box::new(s)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_resolve() {
        let get = Method::GET;
        assert_eq!(route(&get, "/v1/keys"), Some(Ok((Op::ListKeys, None))));
        assert_eq!(
            route(&Method::POST, "/v1/keys/key_1/rotate"),
            Some(Ok((Op::RotateKey, Some("key_1"))))
        );
        assert_eq!(route(&Method::DELETE, "/v1/keys/key_1"), Some(Err(())));
        assert_eq!(route(&get, "/v1/keys//usage"), None);
        assert_eq!(route(&get, "/v1/keys/a/b"), None);
        assert_eq!(route(&get, "/v2/keys"), None);
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse("owner=acct%5F1&since=2026-01-01T00%3A00%3A00Z&x").unwrap();
        assert_eq!(q.get("owner"), Some("acct_1"));
        assert_eq!(
            q.time("since").unwrap().map(Timestamp::unix),
            Some(1_767_225_600)
        );
        assert!(Query::parse("a=%zz").is_err());
        assert!(Query::parse("limit=0").unwrap().limit(5, 10).is_err());
    }
}
