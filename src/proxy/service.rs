//! The request path, top to bottom. Each stage is one call into the module that owns it; any
//! rejection leaves through [`App::handle`], the single rescue point that turns an
//! [`AuthError`] into a response and logs it.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderValue};
use http::{Request, Response, Version};
use http_body::Body as _;
use http_body_util::{Either, Full, Limited};
use hyper::body::Incoming;

use super::headers::{self, ConnInfo, Forward, HeaderPlan, X_REQUEST_ID, request_id};
use super::pool::PooledBody;
use super::upstream::Upstream;
use crate::audit::Audit;
use crate::auth::{self, Verifier};
use crate::config::Carrier;
use crate::error::AuthError;
use crate::policy::ratelimit::Decision;
use crate::policy::{self, PathError, Permit, Policy};
use crate::telemetry::{Held, Metrics};

/// What the client receives: the upstream's streamed body, or keygate's JSON error.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// Everything a request needs, shared by all connections.
pub struct App {
    pub(crate) verifier: Arc<Verifier>,
    /// Swapped whole on a configuration reload.
    pub(crate) policy: arc_swap::ArcSwap<Policy>,
    pub(crate) upstream: Upstream,
    pub(crate) plan: HeaderPlan,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) carriers: Vec<Carrier>,
    pub(crate) max_key_length: usize,
    pub(crate) max_request_body: u64,
    pub(crate) honor_method_override: bool,
    pub(crate) audit: Arc<Audit>,
    /// One `keygate::access` log line per request.
    pub(crate) access_log: bool,
    /// Forward authenticated `CONNECT` requests to the upstream (a forward proxy).
    pub(crate) allow_connect: bool,
    /// `Upgrade` protocols passed through (lower case), e.g. `websocket`.
    pub(crate) upgrades: Vec<String>,
    pub(crate) tunnel_limits: super::tunnel::Limits,
}

/// What the request path learned, for the audit trail (usage and failures).
#[derive(Default)]
struct Seen {
    route: Option<Arc<str>>,
    client_ip: Option<std::net::IpAddr>,
    key_id: Option<Arc<str>>,
    /// Display prefix of a key that failed verification.
    key_prefix: Option<String>,
    /// The error code when keygate rejected the request.
    code: Option<&'static str>,
    /// Why, for the access log.
    reason: Option<String>,
    /// Upstream round trip to the response head, microseconds (0: not forwarded).
    upstream_us: u64,
}

/// The route label of requests refused before routing (e.g. a malformed path).
static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("-"));

/// A rejection, with the rate-limit state to report on it when a limit was involved.
struct Rejection {
    err: AuthError,
    rate: Option<Decision>,
}

impl From<AuthError> for Rejection {
    fn from(err: AuthError) -> Self {
        Rejection { err, rate: None }
    }
}

impl From<(AuthError, Option<Decision>)> for Rejection {
    fn from((err, rate): (AuthError, Option<Decision>)) -> Self {
        Rejection { err, rate }
    }
}

impl From<PathError> for Rejection {
    fn from(e: PathError) -> Self {
        Rejection {
            err: AuthError::BadPath(e),
            rate: None,
        }
    }
}

impl App {
    /// The hyper service: never fails, every error becomes a response here.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = std::time::Instant::now();
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        let _in_flight = Held::enter(&self.metrics.in_flight);
        let request_id = request_id(req.headers());
        // An HTTP/1 request whose body we never read leaves unread bytes on the connection;
        // closing it is the only way those bytes can never be parsed as another request.
        let unread_body = req.version() <= Version::HTTP_11 && !req.body().is_end_stream();
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let mut seen = Seen::default();

        let (mut resp, rate) = match self.proxy(req, &conn, &request_id, &mut seen).await {
            Ok((resp, rate)) => {
                self.metrics.forwarded.fetch_add(1, Ordering::Relaxed);
                (resp.map(Either::Left), rate)
            }
            Err(Rejection { err, rate }) => {
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                seen.code = Some(err.code());
                if !self.access_log {
                    tracing::info!(
                        request_id = ?request_id, client.ip = %conn.peer.ip(), %method, path = uri.path(),
                        status = err.status().as_u16(), code = err.code(), "request rejected: {err}"
                    );
                } else {
                    seen.reason = Some(err.to_string());
                }
                let mut resp = err
                    .into_response(request_id.to_str().unwrap_or_default())
                    .map(Either::Right);
                if unread_body {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                (resp, rate)
            }
        };
        if let Some(d) = rate {
            headers::set_rate_limit_headers(
                resp.headers_mut(),
                &d,
                self.policy.load().header_styles(),
            );
        }
        let status = resp.status().as_u16();
        self.audit_request(&seen, &method, status, conn.peer.ip());
        let elapsed = started.elapsed();
        self.metrics.request_seconds.observe(elapsed);
        let route = seen.route.as_ref().unwrap_or(&NO_ROUTE);
        self.metrics.by_route.add(route, seen.code.unwrap_or("ok"));
        if self.access_log {
            tracing::info!(
                target: "keygate::access",
                request_id = request_id.to_str().unwrap_or_default(),
                method = %method,
                path = uri.path(),
                route = &**route,
                status,
                code = seen.code.unwrap_or("ok"),
                key_id = seen.key_id.as_deref().unwrap_or("-"),
                client_ip = %seen.client_ip.unwrap_or(conn.peer.ip()),
                duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                upstream_us = seen.upstream_us,
                reason = seen.reason.as_deref().unwrap_or(""),
                "access"
            );
        }
        resp.headers_mut().insert(X_REQUEST_ID.clone(), request_id);
        Ok(resp)
    }

    /// Feeds the audit trail's per-minute aggregates: usage of a verified key (any status) and
    /// rejected authentications (401/403).
    fn audit_request(
        &self,
        seen: &Seen,
        method: &http::Method,
        status: u16,
        peer: std::net::IpAddr,
    ) {
        let ip = seen.client_ip.unwrap_or(peer);
        if let (Some(key), Some(route)) = (&seen.key_id, &seen.route) {
            self.audit.key_used(key, route, method, status, ip);
        }
        if let Some(code) = seen.code.filter(|_| status == 401 || status == 403) {
            let key = seen.key_id.as_deref().or(seen.key_prefix.as_deref());
            self.audit.auth_failed(code, key, ip);
        }
    }

    /// The request path. Cheap, attacker-controlled checks first; nothing that costs a store
    /// round trip or an Argon2 run happens before the per-IP limits.
    async fn proxy(
        &self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
        seen: &mut Seen,
    ) -> Result<(Response<PooledBody>, Option<Decision>), Rejection> {
        // One policy for the whole request, even if a reload swaps it meanwhile.
        let policy = self.policy.load_full();
        let client_ip = policy.client_ip(conn.peer.ip(), req.headers())?; // 400
        seen.client_ip = Some(client_ip);
        let connect = req.method() == http::Method::CONNECT;
        if connect && !self.allow_connect {
            return Err(AuthError::MethodNotAllowed("CONNECT").into()); // 405
        }
        // CONNECT names a host:port, not a path: it is routed as "/".
        let normalized = match policy::normalize(if connect { "/" } else { req.uri().path() })? {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        }; // 400
        let path = if connect {
            "/"
        } else {
            normalized.as_deref().unwrap_or_else(|| req.uri().path())
        };
        let route = policy.route(req.method(), path);
        seen.route = Some(Arc::clone(&route.name));
        policy.check_ip(client_ip, route)?; // 403
        policy.check_ip_limits(client_ip, route).await?; // 429

        // A CONNECT tunnel is never public: it always needs a key.
        let (identity, permit) = if route.public && !connect {
            (None, Permit { rate: None })
        } else {
            let carriers = if route.carriers.is_empty() {
                &self.carriers
            } else {
                &route.carriers
            };
            let identity = {
                let cred =
                    auth::extract(req.headers(), &self.carriers, carriers, self.max_key_length)?; // 401
                match self.verifier.verify(&cred).await {
                    Ok(identity) => identity,
                    Err(err) => {
                        seen.key_id = self.verifier.cached_key_id(cred.key);
                        seen.key_prefix = self.verifier.display_prefix(cred.key).map(str::to_owned);
                        if matches!(err, AuthError::InvalidKey(_)) {
                            policy.record_failed_auth(client_ip).await;
                        }
                        return Err(err.into()); // 401 / 503
                    }
                }
            };
            seen.key_id = Some(Arc::clone(identity.key_id()));
            let method =
                policy.effective_method(req.method(), req.headers(), self.honor_method_override);
            let permit = policy
                .authorize(&identity, route, &method, client_ip)
                .await?; // 403 / 429
            (Some(identity), permit)
        };

        self.check_declared_length(&req).map_err(|e| Rejection {
            err: e,
            rate: permit.rate,
        })?; // 413
        let mut req = req.map(|body| Limited::new(body, self.body_limit()));
        if connect {
            return self
                .forward_connect(req, conn, client_ip, identity.as_ref(), request_id)
                .await
                .map(|resp| (resp.map(PooledBody::unpooled), permit.rate))
                .map_err(|err| Rejection {
                    err,
                    rate: permit.rate,
                });
        }
        // An authenticated upgrade (WebSocket, …): forwarded with its Upgrade header; if the
        // upstream switches protocols, both connections are joined into a tunnel.
        let upgrade = self.upgrade_of(&req);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
        let client_ip = conn.ip_value(client_ip);
        self.plan.prepare_request(
            &mut req,
            &Forward {
                client_ip: &client_ip,
                identity: identity.as_ref(),
                request_id,
                normalized_path: normalized.as_deref(),
                keep_method_override: self.honor_method_override,
                https: conn.tls,
            },
        );
        if let Some(proto) = upgrade {
            req.headers_mut().insert(http::header::UPGRADE, proto);
            req.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let sent_at = std::time::Instant::now();
        let forwarding = Held::enter(&self.metrics.upstream_in_flight);
        let result = self.upstream.send(req, self.max_request_body).await;
        drop(forwarding);
        let took = sent_at.elapsed();
        self.metrics.upstream_seconds.observe(took);
        seen.upstream_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        match result {
            Ok(mut resp) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                let Some(client_upgrade) = client_upgrade else {
                    tracing::warn!(
                        "the upstream switched protocols on a request that did not ask to"
                    );
                    return Err(Rejection {
                        err: AuthError::UpstreamUnavailable,
                        rate: permit.rate,
                    });
                };
                self.spawn_tunnel(client_upgrade, &mut resp);
                Ok((resp, permit.rate))
            }
            Ok(resp) => Ok((resp, permit.rate)),
            Err(err) => {
                if matches!(
                    err,
                    AuthError::UpstreamUnavailable | AuthError::UpstreamTimeout
                ) {
                    self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(Rejection {
                    err,
                    rate: permit.rate,
                }) // 502 / 504 / 413 while streaming
            }
        }
    }

    /// An authenticated `CONNECT` (only with `listen.allow_connect`): sent as-is (authority-form
    /// target, identity headers added) over a fresh connection to the upstream — a forward proxy
    /// keygate guards — and tunnelled once it answers 2xx.
    async fn forward_connect(
        &self,
        mut req: Request<super::upstream::UpstreamBody>,
        conn: &ConnInfo,
        client_ip: std::net::IpAddr,
        identity: Option<&crate::auth::Identity>,
        request_id: &HeaderValue,
    ) -> Result<Response<Incoming>, AuthError> {
        let target = req.uri().clone();
        let client_upgrade = hyper::upgrade::on(&mut req);
        let client_ip = conn.ip_value(client_ip);
        self.plan.prepare_request(
            &mut req,
            &Forward {
                client_ip: &client_ip,
                identity,
                request_id,
                normalized_path: None,
                keep_method_override: false,
                https: conn.tls,
            },
        );
        *req.uri_mut() = target;
        // Signed over the target actually sent (`host:port`), not the routing path.
        self.plan.sign(&mut req, identity);
        let mut resp = self.upstream.connect_tunnel(req).await?;
        if resp.status().is_success() {
            self.spawn_tunnel(client_upgrade, &mut resp);
        }
        Ok(resp)
    }

    /// Joins the client's connection and the upstream's, once both have been handed over by
    /// hyper, into a bounded tunnel.
    fn spawn_tunnel<B>(&self, client: hyper::upgrade::OnUpgrade, upstream: &mut Response<B>) {
        tokio::spawn(super::tunnel::run(
            client,
            hyper::upgrade::on(upstream),
            self.tunnel_limits,
            Arc::clone(&self.metrics),
        ));
    }

    /// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` and an
    /// `Upgrade` header), when the upstream leg can carry it (HTTP/1.1).
    fn upgrade_of<B>(&self, req: &Request<B>) -> Option<HeaderValue> {
        if req.version() != Version::HTTP_11 || self.upstream.is_http2() {
            return None;
        }
        let asks = req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        // Only listed protocols: `h2c` in particular would turn the tunnel into an HTTP/2
        // connection to the upstream that keygate never sees into.
        let proto = req.headers().get(http::header::UPGRADE)?;
        let allowed = proto.to_str().is_ok_and(|p| {
            self.upgrades
                .iter()
                .any(|a| a.eq_ignore_ascii_case(p.trim()))
        });
        (asks && allowed).then(|| proto.clone())
    }

    fn body_limit(&self) -> usize {
        usize::try_from(self.max_request_body).unwrap_or(usize::MAX)
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
