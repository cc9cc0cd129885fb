//! Beside the main path: `CONNECT` (refused unless configured, then forwarded and tunnelled)
//! and protocol upgrades (WebSocket), which become tunnels once the upstream answers 101.

use std::sync::Arc;

use http::header::{CONNECTION, HeaderValue, UPGRADE};
use http::{Method, Request, Response, Version};

use super::body::{Inbound, upstream_body};
use super::conn::ConnInfo;
use super::forward::Forwarder;
use super::pool::PooledBody;
use super::tunnel;
use crate::error::Rejection;
use crate::fields;
use crate::policy::Permit;
use crate::telemetry::Metrics;

/// What the edge lets through besides plain requests.
pub struct Edge {
    /// Forward authenticated `CONNECT` requests to the upstream (a forward proxy).
    pub allow_connect: bool,
    /// `Upgrade` protocols passed through (lower case), e.g. `websocket`.
    pub upgrades: Vec<String>,
    pub tunnel_limits: tunnel::Limits,
}

impl Edge {
    /// Whether the request is a `CONNECT`; refused (405) unless CONNECT is allowed.
    pub fn screen_connect(&self, method: &Method) -> Result<bool, Rejection> {
        let connect = method == Method::CONNECT;
        if connect && !self.allow_connect {
            return Err(Rejection::MethodNotAllowed("CONNECT"));
        }
        Ok(connect)
    }

    /// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` and an
    /// `Upgrade` header), when the upstream leg can carry it (HTTP/1.1).
    pub fn upgrade_of<B>(&self, req: &Request<B>, upstream_http2: bool) -> Option<HeaderValue> {
        if req.version() != Version::HTTP_11 || upstream_http2 {
            return None;
        }
        // Only listed protocols: `h2c` in particular would turn the tunnel into an HTTP/2
        // connection to the upstream that keygate never sees into. `Upgrade` is asked for
        // first: most requests have none, and then `Connection` is not looked at.
        let proto = fields::first(req.headers(), &UPGRADE)?;
        let asks = fields::values(req.headers(), &CONNECTION)
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
        let allowed = proto.to_str().is_ok_and(|p| {
            self.upgrades
                .iter()
                .any(|a| a.eq_ignore_ascii_case(p.trim()))
        });
        (asks && allowed).then(|| proto.clone())
    }
}

impl Edge {
    /// An authenticated `CONNECT` (only with `listen.allow_connect`): sent as-is (authority-form
    /// target, identity headers added) over a fresh connection to the upstream — a forward proxy
    /// keygate guards — and tunnelled once it answers 2xx.
    pub async fn connect(
        &self,
        forwarder: &Forwarder,
        metrics: &Arc<Metrics>,
        req: Request<Inbound>,
        permit: &Permit<'_>,
        conn: &ConnInfo,
        request_id: &HeaderValue,
    ) -> Result<Response<PooledBody>, Rejection> {
        forwarder.check_declared_length(&req)?; // 413
        let (limit, idle) = (forwarder.body_limit(), forwarder.body_read_timeout());
        let mut req = req.map(|body| upstream_body(body, limit, idle));
        let client_upgrade = hyper::upgrade::on(&mut req);
        let mut resp = forwarder
            .send_connect(req, permit, conn, request_id)
            .await?;
        if resp.status().is_success() {
            self.spawn_tunnel(metrics, client_upgrade, &mut resp);
        }
        Ok(resp.map(PooledBody::unpooled))
    }

    /// Joins the client's connection and the upstream's, once both have been handed over by
    /// hyper, into a bounded tunnel.
    pub fn spawn_tunnel<B>(
        &self,
        metrics: &Arc<Metrics>,
        client: hyper::upgrade::OnUpgrade,
        upstream: &mut Response<B>,
    ) {
        tokio::spawn(tunnel::run(
            client,
            hyper::upgrade::on(upstream),
            self.tunnel_limits,
            Arc::clone(metrics),
        ));
    }
}
