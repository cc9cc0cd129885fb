//! The forwarding client: one pooled hyper-util client to the configured upstream, with connect
//! and response-header timeouts, and the mapping of its failures to 502/504/413.

use std::error::Error as StdError;
use std::time::Duration;

use http::{Request, Response};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::headers::remove_hop_by_hop;
use crate::config::UpstreamConfig;
use crate::error::AuthError;

/// The request body on its way upstream: streamed, never buffered, capped at the configured size.
pub type UpstreamBody = Limited<Incoming>;

pub struct Upstream {
    client: Client<HttpConnector, UpstreamBody>,
    response_timeout: Duration,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .build(connector);
        Upstream {
            client,
            response_timeout: cfg.response_timeout,
        }
    }

    /// Sends a prepared request; the response body streams back untouched.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
        body_limit: u64,
    ) -> Result<Response<Incoming>, AuthError> {
        let mut resp =
            match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
                Err(_) => return Err(AuthError::UpstreamTimeout),
                Ok(Err(e)) => return Err(classify(&e, body_limit)),
                Ok(Ok(resp)) => resp,
            };
        remove_hop_by_hop(resp.headers_mut());
        Ok(resp)
    }
}

fn classify(e: &hyper_util::client::legacy::Error, body_limit: u64) -> AuthError {
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(s) = source {
        if s.is::<LengthLimitError>() {
            return AuthError::PayloadTooLarge { limit: body_limit };
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return AuthError::UpstreamTimeout;
        }
        source = s.source();
    }
    tracing::warn!(error = %e, connect = e.is_connect(), "upstream request failed");
    AuthError::UpstreamUnavailable
}
