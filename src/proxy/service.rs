//! The request path, top to bottom: [`App::pipeline`] is admit → authenticate → authorize →
//! forward, one call each, every stage returning a value that proves it passed (the policy's
//! admission, the verifier's identity, the policy's permit); [`App::finish`] is the single
//! rescue point that turns a [`Rejection`] into a response and records the request (metrics,
//! access log, audit). CONNECT and upgrades are handled beside this path, in `upgrade.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONNECTION, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};

use super::body::{BodyError, ClientStream, Inbound};
use super::conn::ConnInfo;
use super::context::Context;
use super::forward::Forwarder;
use super::headers::effective_method;
use super::pool::PooledBody;
use super::screen::screen;
use super::stamp::Stamp;
use super::upgrade::Edge;
use crate::audit::Audit;
use crate::auth::{self, AuthFailure, Identity, Verifier};
use crate::config::{Carrier, ErrorContract};
use crate::error::Rejection;
use crate::policy::{Admitted, Policy, RequestView};
use crate::self_service::SelfService;
use crate::telemetry::{Held, Metrics};

/// What the client receives: the upstream's streamed body, or keygate's JSON error.
pub type ProxyBody = Either<PooledBody, Full<Bytes>>;

/// Everything a request needs, shared by all connections. Built by the composition root
/// (`crate::server`).
pub struct App {
    pub(crate) verifier: Arc<Verifier>,
    /// Swapped whole on a configuration reload.
    pub(crate) policy: Arc<arc_swap::ArcSwap<Policy>>,
    pub(crate) forwarder: Forwarder,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) carriers: Vec<Carrier>,
    pub(crate) max_key_length: usize,
    pub(crate) honor_method_override: bool,
    pub(crate) audit: Arc<Audit>,
    /// One `keygate::access` log line per request.
    pub(crate) access_log: bool,
    /// CONNECT and upgrades.
    pub(crate) edge: Edge,
    /// How rejections look to clients.
    pub(crate) errors: ErrorContract,
    /// The self-service key API, when mounted.
    pub(crate) self_service: SelfService,
    /// Header names with `_`: dropped before forwarding, or refused.
    pub(crate) underscores: crate::config::UnderscoreHeaders,
    /// Auth-only mode: where header-dialect checks arrive (`authz.check_path`), and what is
    /// stripped from the path of the others (`authz.path_prefix`).
    pub(crate) authz_check_path: String,
    pub(crate) authz_path_prefix: String,
}

/// A response for hyper to send: the upstream's fields (keygate's codec) and the stamp's put
/// into the header map (keygate's own writer writes both itself).
fn for_hyper(mut resp: Response<ProxyBody>, stamp: Stamp) -> Response<ProxyBody> {
    let fields = match resp.body_mut() {
        Either::Left(body) => body.take_fields(),
        Either::Right(_) => None,
    };
    if let Some(fields) = fields {
        fields.into_map(resp.headers_mut());
    }
    stamp.apply(resp.headers_mut());
    resp
}

/// A policy stage: run in place when `in_memory` (see [`ready_now`]), else boxed and awaited.
/// Either way its state is never part of every request's future.
macro_rules! stage {
    ($in_memory:expr, $stage:expr) => {
        if $in_memory {
            // Pinned where it is made: the stage's state is not copied into `ready_now`.
            ready_now(std::pin::pin!($stage))?
        } else {
            Box::pin($stage).await
        }
    };
}

/// A stage that cannot wait (its limiter is in process), run to its end now. It waiting
/// anyway would be a bug: the request then fails closed, as if the key store were down.
fn ready_now<F: Future>(stage: std::pin::Pin<&mut F>) -> Result<F::Output, Rejection> {
    match stage.poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
        std::task::Poll::Ready(out) => Ok(out),
        std::task::Poll::Pending => {
            tracing::error!("an in-process policy stage waited; request refused");
            Err(Rejection::Auth(AuthFailure::Unavailable {
                retry_after: std::time::Duration::from_secs(1),
            }))
        }
    }
}

/// The route label of requests refused before routing (e.g. a malformed path).
static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("-"));

impl App {
    /// The hyper service: never fails, every error becomes a response here.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Inbound>,
        conn: ConnInfo,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let (resp, stamp) = self.handle_h1(&mut req, &conn).await;
        Ok(for_hyper(resp, stamp))
    }

    /// [`App::handle`] for keygate's own HTTP/1.1 writer: the response, and the fields it
    /// writes into the head itself. The request stays with the caller (it is a few hundred
    /// bytes, and every layer it were moved into would copy it); what is forwarded or handed
    /// on is taken out of it.
    /// An `async` block rather than an `async fn`, here and in [`App::pipeline`]: an `async fn`
    /// moves its arguments into locals of its own, so its future holds each of them twice,
    /// and every request's future is built and copied whole.
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub fn handle_h1<'a>(
        &'a self,
        req: &'a mut Request<Inbound>,
        conn: &'a ConnInfo,
    ) -> impl Future<Output = (Response<ProxyBody>, Stamp)> + 'a {
        async move {
            let clocks = super::context::clocks();
            self.metrics.requests.fetch_add(1, Ordering::Relaxed);
            let _in_flight = Held::enter(&self.metrics.in_flight);
            let mut cx = Context::new(req, self.access_log, clocks);
            let result = self.pipeline(req, conn, &mut cx, false).await;
            self.finish_stamped(result, &mut cx, conn)
        }
    }

    /// The request path. Cheap, attacker-controlled checks first; nothing that costs a store
    /// round trip or an Argon2 run happens before the per-IP limits. `authz`: an authorization
    /// check (auth-only mode), answered instead of forwarded once permitted.
    #[allow(clippy::manual_async_fn)] // on purpose: see `handle_h1`
    pub(super) fn pipeline<'a>(
        &'a self,
        req: &'a mut Request<Inbound>,
        conn: &'a ConnInfo,
        cx: &'a mut Context,
        authz: bool,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Rejection>> + 'a {
        async move {
            screen(req, self.underscores)?; // 400 / 501
            // One policy for the whole request, even if a reload swaps it meanwhile.
            let policy = self.policy.load_full();
            let connect = self.edge.screen_connect(req.method())?; // 405
            if connect && authz {
                return Err(Rejection::MethodNotAllowed("CONNECT")); // 405
            }
            // CONNECT names a host:port, not a path: it is routed as "/".
            let path = if connect { "/" } else { req.uri().path() };
            // An in-process limiter answers without waiting: its stages run in place, and
            // only a Redis one's (boxed) are awaited. Either way, the same stage.
            let in_memory = policy.limiter().in_memory();
            let admitted = stage!(
                in_memory,
                policy.admit(
                    conn.peer.ip(),
                    req.headers(),
                    req.method(),
                    path,
                    &mut cx.trace
                )
            )?; // 400 / 403 / 429
            cx.hints.carriers = admitted.route().accepts;
            // A CONNECT tunnel is never public: it always needs a key.
            let permit = if admitted.route().public && !connect {
                policy.public(admitted)
            } else {
                let identity = self.authenticate(req, &admitted, &policy, cx).await?; // 401 / 503
                let method =
                    effective_method(req.method(), req.headers(), self.honor_method_override);
                // A restriction on a JSON field: the body is read (bounded) before the decision.
                let body = match policy.body_needed(&admitted, &identity) {
                    None => None,
                    // Boxed, like the other rare paths below: their state would otherwise make
                    // every request's future larger, and hyper moves that future per request.
                    Some(cap) => Some(Box::pin(self.buffer(req, cap)).await?), // 400 / 413
                };
                let view = RequestView {
                    method: &method,
                    path: req.uri().path(),
                    query: req.uri().query(),
                    headers: req.headers(),
                    body: body.as_deref(),
                };
                stage!(
                    in_memory,
                    policy.authorize(identity, admitted, &view, &mut cx.trace.rate)
                )? // 403 / 429
            };
            if authz {
                return self.allow(req, &permit, conn, cx);
            }
            if connect {
                let (forwarder, metrics) = (&self.forwarder, &self.metrics);
                return Box::pin(self.edge.connect(
                    forwarder,
                    metrics,
                    std::mem::take(req),
                    &permit,
                    conn,
                    &cx.request_id,
                ))
                .await
                .map(|r| r.map(Either::Left));
            }
            // The self-service key API answers here; nothing reaches the upstream.
            if permit.route().self_service {
                let request_id = cx.request_id.to_str().unwrap_or_default().to_owned();
                return Box::pin(self.self_service.handle(
                    &permit,
                    std::mem::take(req),
                    &policy,
                    &mut cx.trace.rate,
                    &self.errors,
                    &request_id,
                ))
                .await
                .map(|r| r.map(Either::Right));
            }
            // Forwarded: the round trip is this future's one wait on the common path.
            self.forwarder.check_declared_length(req)?; // 413
            let sent_at = Instant::now();
            // The client's side of an upgrade the request asks for; then the request is taken
            // apart by `send` (never moved into this future's state), and the round trip is
            // awaited where it was made (not passed back through another call).
            let upgrade = self.edge.upgrade_of(req, self.forwarder.is_http2());
            let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut *req));
            // Pinned where it is made: awaited by reference, the exchange's state (a few hundred
            // bytes) is not copied into this future's awaitee.
            let sent = std::pin::pin!(self.forwarder.send(
                req,
                &permit,
                conn,
                &cx.request_id,
                upgrade,
                sent_at
            ));
            // Nothing of the decision is needed while the upstream answers.
            drop(permit);
            drop(policy);
            let mut result = sent.await;
            // The round trip is read off the clock once, in `finish`, right after this returns.
            cx.sent_at = Some(sent_at);
            self.received(&mut result, client_upgrade);
            result.map(|r| r.map(Either::Left)) // 502 / 504
        }
    }

    /// The credential from the route's carriers, verified; a failure is remembered (audit
    /// trail, failed-auth throttle).
    async fn authenticate<B>(
        &self,
        req: &Request<B>,
        admitted: &Admitted<'_>,
        policy: &Policy,
        cx: &mut Context,
    ) -> Result<Identity, Rejection> {
        let route = admitted.route();
        let carriers = if route.carriers.is_empty() {
            &self.carriers
        } else {
            &route.carriers
        };
        let cred = auth::extract(req.headers(), &self.carriers, carriers, self.max_key_length)?;
        // A cached key is answered without a future; the store's answer, boxed (the rare
        // path), keeps its state out of every request's.
        // The request's clock reading, unless a stage before waited on Redis.
        let (now, wall) = match policy.limiter().in_memory() {
            true => (cx.started, cx.wall.timestamp()),
            false => (Instant::now(), crate::time::Timestamp::now()),
        };
        let verified = match self.verifier.probe(&cred, now, wall) {
            auth::Probe::Answered(result) => result,
            auth::Probe::Fill(pending) => Box::pin(self.verifier.fill_probe(pending)).await,
        };
        match verified {
            Ok(identity) => {
                cx.key_id = Some(Arc::clone(identity.key_id()));
                cx.owner = Some(Arc::clone(identity.owner()));
                Ok(identity)
            }
            Err(err) => {
                cx.key_id = self.verifier.cached_key_id(&cred.key);
                cx.key_prefix = self.verifier.display_prefix(&cred.key).map(str::to_owned);
                if matches!(err, AuthFailure::Invalid(_)) {
                    stage!(
                        policy.limiter().in_memory(),
                        policy.record_failed_auth(admitted.client_ip())
                    );
                }
                Err(err.into())
            }
        }
    }

    /// Reads the body whole (at most `cap` bytes, and never more than `listen.max_request_body`)
    /// so a rule can look into it; it replaces the streamed body in place, and is forwarded
    /// from memory.
    async fn buffer(&self, req: &mut Request<Inbound>, cap: u64) -> Result<Bytes, Rejection> {
        self.forwarder.check_declared_length(req)?; // 413
        let limit = cap.min(self.forwarder.max_request_body());
        // Whatever happens, the streamed body is gone from the request: on an error the
        // request is refused, and its (empty) replacement never sent.
        let incoming = std::mem::take(req.body_mut());
        let cap_usize = usize::try_from(limit).unwrap_or(usize::MAX);
        let body = ClientStream::new(incoming, cap_usize, self.forwarder.body_read_timeout());
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(BodyError::TooLarge) => return Err(Rejection::PayloadTooLarge { limit }),
            Err(BodyError::Timeout) => return Err(Rejection::BodyTimeout),
            Err(BodyError::Malformed) => {
                return Err(Rejection::BadBody("could not read the request body"));
            }
        };
        *req.body_mut() = Inbound::Buffered(Full::new(bytes.clone()));
        Ok(bytes)
    }

    /// The upstream's answer to a forwarded request, looked at in place (it is not moved): an
    /// upgrade it accepts becomes a tunnel; a failure is counted.
    fn received(
        &self,
        result: &mut Result<Response<PooledBody>, Rejection>,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) {
        match result {
            Ok(resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let Some(client_upgrade) = client_upgrade else {
                    tracing::warn!(
                        "the upstream switched protocols on a request that did not ask to"
                    );
                    *result = Err(Rejection::UpstreamUnavailable);
                    return;
                };
                self.edge.spawn_tunnel(&self.metrics, client_upgrade, resp);
            }
            Ok(_) => {}
            // 502 / 504 / 413 while streaming
            Err(err) => {
                if err.is_upstream_failure() {
                    self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// The rescue point: the response (the upstream's, or the rejection's JSON), its rate-limit
    /// headers and request id; then metrics, the audit trail and the access log.
    pub(super) fn finish(
        &self,
        result: Result<Response<ProxyBody>, Rejection>,
        cx: &mut Context,
        conn: &ConnInfo,
    ) -> Response<ProxyBody> {
        let (resp, stamp) = self.finish_stamped(result, cx, conn);
        for_hyper(resp, stamp)
    }

    /// [`App::finish`], with the rate-limit headers and the request id left to the caller, and
    /// the upstream's fields (keygate's codec) left out of the header map.
    fn finish_stamped(
        &self,
        result: Result<Response<ProxyBody>, Rejection>,
        cx: &mut Context,
        conn: &ConnInfo,
    ) -> (Response<ProxyBody>, Stamp) {
        let resp = match result {
            Ok(resp) => {
                if matches!(resp.body(), Either::Left(_)) {
                    self.metrics.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                resp
            }
            Err(err) => {
                self.metrics.rejected.fetch_add(1, Ordering::Relaxed);
                cx.code = Some(err.code());
                if !self.access_log {
                    tracing::info!(
                        request_id = ?cx.request_id, client.ip = %conn.peer.ip(), method = %cx.method,
                        path = cx.uri.path(), status = err.status().as_u16(), code = err.code(),
                        "request rejected: {err}"
                    );
                } else {
                    cx.reason = Some(err.to_string());
                }
                let mut resp = err
                    .respond(
                        &self.errors,
                        &cx.hints,
                        cx.request_id.to_str().unwrap_or_default(),
                    )
                    .map(Either::Right);
                if cx.unread_body {
                    resp.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
        };
        let status = resp.status().as_u16();
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(cx.started);
        // The wall clock now, for the audit trail's minute and the response's `Date`: the
        // request's reading plus the time since (not a second reading).
        let wall = cx.wall.after(elapsed);
        self.audit_request(cx, status, conn.peer.ip(), wall);
        let upstream = cx.sent_at.map(|at| now.saturating_duration_since(at));
        let route = cx.trace.route.as_ref().unwrap_or(&NO_ROUTE);
        self.metrics
            .by_route
            .record(route, cx.code.unwrap_or("ok"), elapsed, upstream);
        if self.access_log {
            tracing::info!(
                target: "keygate::access",
                request_id = cx.request_id.to_str().unwrap_or_default(),
                method = %cx.method,
                path = cx.uri.path(),
                route = &**route,
                status,
                code = cx.code.unwrap_or("ok"),
                key_id = cx.key_id.as_deref().unwrap_or("-"),
                owner = cx.owner.as_deref().unwrap_or("-"),
                client_ip = %cx.trace.client_ip.unwrap_or(conn.peer.ip()),
                http_version = ?cx.version,
                user_agent = cx.user_agent.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
                request_bytes = cx.request_bytes,
                response_bytes = http_body::Body::size_hint(resp.body()).exact(),
                duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                upstream_us = upstream.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                reason = cx.reason.as_deref().unwrap_or(""),
                "access"
            );
        }
        // The request is done with its id: the stamp takes it (a clone would allocate).
        let stamp = Stamp {
            request_id: std::mem::replace(&mut cx.request_id, HeaderValue::from_static("")),
            rate: cx.trace.rate.report(),
            at: now,
            unix: wall.unix(),
        };
        (resp, stamp)
    }

    /// Feeds the audit trail's per-minute aggregates: usage of a verified key (any status) and
    /// rejected authentications (401/403).
    fn audit_request(
        &self,
        cx: &Context,
        status: u16,
        peer: std::net::IpAddr,
        now: crate::time::Timestamp,
    ) {
        let ip = cx.trace.client_ip.unwrap_or(peer);
        if let (Some(key), Some(route)) = (&cx.key_id, &cx.trace.route) {
            self.audit.key_used(key, route, &cx.method, status, ip, now);
        }
        if let Some(code) = cx.code.filter(|_| status == 401 || status == 403) {
            let key = cx.key_id.as_deref().or(cx.key_prefix.as_deref());
            self.audit.auth_failed(code, key, ip, now);
        }
    }
}
