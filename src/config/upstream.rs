//! `[upstream]`: the API keygate protects, and how it is reached.

use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use super::check::{Check, DurationValue};
use crate::tls::{CertFiles, UpstreamTls};

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// `http://host:port`; requests keep their own path and query.
    pub url: Uri,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Forward the client's `Host` (true) or the upstream's authority (false).
    pub preserve_host: bool,
    /// For `https://` upstreams.
    pub tls: UpstreamTls,
    /// Speak HTTP/2 to the upstream (ALPN `h2` over TLS, prior knowledge over `http://`).
    pub http2: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawUpstream {
    url: Option<String>,
    connect_timeout: Option<DurationValue>,
    response_timeout: Option<DurationValue>,
    pool_idle_timeout: Option<DurationValue>,
    pool_max_idle_per_host: Option<usize>,
    preserve_host: Option<bool>,
    ca_file: Option<String>,
    client_cert_file: Option<String>,
    client_key_file: Option<String>,
    http2: Option<bool>,
}

/// `required`: a proxy listener runs (auth-only mode forwards nothing).
pub(super) fn validate(c: &mut Check<'_>, raw: RawUpstream, required: bool) -> UpstreamConfig {
    let secs = Duration::from_secs;
    let url = match raw.url {
        None if !required => Uri::from_static("http://127.0.0.1"),
        None => {
            c.problem("upstream.url: required, e.g. \"http://127.0.0.1:3000\"".into());
            Uri::from_static("http://127.0.0.1")
        }
        Some(s) => match s.parse::<Uri>() {
            Ok(u)
                if matches!(u.scheme_str(), Some("http" | "https"))
                    && u.authority().is_some()
                    && u.path() == "/"
                    && u.query().is_none() =>
            {
                u
            }
            _ => {
                c.problem(format!(
                    "upstream.url: {s:?} must be http://host:port or https://host:port with no path or query"
                ));
                Uri::from_static("http://127.0.0.1")
            }
        },
    };
    let upstream = UpstreamConfig {
        url,
        connect_timeout: c.duration("upstream.connect_timeout", raw.connect_timeout, secs(2)),
        response_timeout: c.duration("upstream.response_timeout", raw.response_timeout, secs(30)),
        pool_idle_timeout: c.duration(
            "upstream.pool_idle_timeout",
            raw.pool_idle_timeout,
            secs(90),
        ),
        pool_max_idle_per_host: raw.pool_max_idle_per_host.unwrap_or(256),
        preserve_host: raw.preserve_host.unwrap_or(true),
        tls: UpstreamTls {
            ca_file: raw.ca_file.map(|f| c.file(f)),
            client: match (raw.client_cert_file, raw.client_key_file) {
                (Some(cert), Some(key)) => Some(CertFiles {
                    cert_file: c.file(cert),
                    key_file: c.file(key),
                }),
                (None, None) => None,
                _ => {
                    c.problem(
                        "upstream.client_cert_file and client_key_file: set both or neither".into(),
                    );
                    None
                }
            },
        },
        http2: raw.http2.unwrap_or(false),
    };
    if upstream.url.scheme_str() == Some("https") {
        if let Err(e) = crate::tls::upstream_client_config(&upstream.tls) {
            c.problem(format!("upstream: {e}"));
        }
    } else if upstream.tls != UpstreamTls::default() {
        c.problem("upstream.ca_file / client_cert_file: only apply to an https:// upstream".into());
    }
    upstream
}
