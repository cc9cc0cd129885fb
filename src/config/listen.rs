//! `[listen]` (the proxied port, its TLS, upgrades and tunnels) and `[ops]` (health and
//! metrics).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::check::{Check, DurationValue, Size};
use crate::tls::{CertFiles, SniCert, TlsConfig};

#[derive(Clone, Debug)]
pub struct ListenConfig {
    pub address: SocketAddr,
    pub header_read_timeout: Duration,
    pub max_request_body: u64,
    pub drain_timeout: Duration,
    /// Every connection starts with a PROXY protocol (v1 or v2) header naming the client.
    pub proxy_protocol: bool,
    /// Terminate TLS on the listener.
    pub tls: Option<TlsConfig>,
    /// Forward authenticated `CONNECT` requests to the upstream (refused with 405 otherwise).
    pub allow_connect: bool,
    /// `Upgrade` protocols passed through to the upstream (lower case); never `h2c`.
    pub upgrades: Vec<String>,
    /// A tunnel with no byte moving either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// No tunnel lives longer than this.
    pub tunnel_max_lifetime: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 keep-alive
    /// and HTTP/2 alike). Before its first request a connection has `header_read_timeout`
    /// from accept to a complete head: PROXY header, TLS, protocol detection, preface, head.
    pub idle_timeout: Duration,
    /// A client that sends nothing of its body for this long gets 408.
    pub body_read_timeout: Duration,
    /// HTTP/2 PING interval on idle connections, and how long an answer may take.
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// Open connections at most, in all (over it: refused at accept).
    pub max_connections: usize,
    /// Open connections at most from one client address (trusted proxies are exempt).
    pub max_connections_per_ip: usize,
    /// The largest request head, HTTP/1.1 and HTTP/2 alike (431 / stream reset beyond).
    pub max_header_bytes: usize,
    /// What happens to request headers whose names contain `_`.
    pub underscore_headers: UnderscoreHeaders,
    /// HTTP/1.1 requests are served by keygate's own path (`http1 = "fast"`, the default);
    /// `"hyper"` sends every connection through hyper.
    pub http1_fast: bool,
}

/// Header names with `_` (`X_Api_Key`, `Transfer_Encoding`): CGI-style servers read them as
/// their `-` spelling, so they never reach the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnderscoreHeaders {
    /// Removed before forwarding (nginx's default).
    Drop,
    /// The request is refused with 400.
    Refuse,
}

#[derive(Clone, Debug)]
pub struct OpsConfig {
    pub address: SocketAddr,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawListen {
    address: Option<String>,
    header_read_timeout: Option<DurationValue>,
    max_request_body: Option<Size>,
    drain_timeout: Option<DurationValue>,
    proxy_protocol: Option<bool>,
    tls: Option<RawTls>,
    allow_connect: Option<bool>,
    upgrades: Option<Vec<String>>,
    tunnel_idle_timeout: Option<DurationValue>,
    tunnel_max_lifetime: Option<DurationValue>,
    idle_timeout: Option<DurationValue>,
    body_read_timeout: Option<DurationValue>,
    http2_keepalive_interval: Option<DurationValue>,
    http2_keepalive_timeout: Option<DurationValue>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    max_header_bytes: Option<Size>,
    underscore_headers: Option<String>,
    http1: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawTls {
    cert_file: Option<String>,
    key_file: Option<String>,
    client_ca_file: Option<String>,
    reload_interval: Option<DurationValue>,
    sni: Vec<RawSni>,
}

#[derive(Deserialize)]
struct RawSni {
    names: Vec<String>,
    cert_file: String,
    key_file: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawOps {
    address: Option<String>,
}

pub(super) fn validate(c: &mut Check<'_>, raw: RawListen) -> ListenConfig {
    let secs = Duration::from_secs;
    let listen = ListenConfig {
        address: c.addr("listen.address", raw.address, "0.0.0.0:8080"),
        header_read_timeout: c.duration(
            "listen.header_read_timeout",
            raw.header_read_timeout,
            secs(10),
        ),
        max_request_body: c.size("listen.max_request_body", raw.max_request_body, 10 << 20),
        drain_timeout: c.duration("listen.drain_timeout", raw.drain_timeout, secs(30)),
        proxy_protocol: raw.proxy_protocol.unwrap_or(false),
        tls: None,
        allow_connect: raw.allow_connect.unwrap_or(false),
        upgrades: raw
            .upgrades
            .unwrap_or_else(|| vec!["websocket".into()])
            .into_iter()
            .map(|u| u.trim().to_ascii_lowercase())
            .collect(),
        tunnel_idle_timeout: c.duration(
            "listen.tunnel_idle_timeout",
            raw.tunnel_idle_timeout,
            secs(600),
        ),
        tunnel_max_lifetime: c.duration(
            "listen.tunnel_max_lifetime",
            raw.tunnel_max_lifetime,
            secs(24 * 3600),
        ),
        idle_timeout: c.duration("listen.idle_timeout", raw.idle_timeout, secs(60)),
        body_read_timeout: c.duration("listen.body_read_timeout", raw.body_read_timeout, secs(30)),
        http2_keepalive_interval: c.duration(
            "listen.http2_keepalive_interval",
            raw.http2_keepalive_interval,
            secs(30),
        ),
        http2_keepalive_timeout: c.duration(
            "listen.http2_keepalive_timeout",
            raw.http2_keepalive_timeout,
            secs(10),
        ),
        max_connections: c.positive("listen.max_connections", raw.max_connections, 10_000),
        max_connections_per_ip: c.positive(
            "listen.max_connections_per_ip",
            raw.max_connections_per_ip,
            1_000,
        ),
        max_header_bytes: {
            let n = c.size("listen.max_header_bytes", raw.max_header_bytes, 64 << 10);
            if !(1024..=(1 << 20)).contains(&n) {
                c.problem("listen.max_header_bytes: between 1KiB and 1MiB".into());
            }
            usize::try_from(n.clamp(1024, 1 << 20)).unwrap_or(64 << 10)
        },
        underscore_headers: match raw.underscore_headers.as_deref() {
            None | Some("drop") => UnderscoreHeaders::Drop,
            Some("refuse") => UnderscoreHeaders::Refuse,
            Some(other) => {
                c.problem(format!(
                    "listen.underscore_headers: {other:?} is not \"drop\" or \"refuse\""
                ));
                UnderscoreHeaders::Drop
            }
        },
        http1_fast: match raw.http1.as_deref() {
            None | Some("fast") => true,
            Some("hyper") => false,
            Some(other) => {
                c.problem(format!(
                    "listen.http1: {other:?} is not \"fast\" or \"hyper\""
                ));
                true
            }
        },
    };
    for u in &listen.upgrades {
        if u == "h2c" || u.is_empty() || !u.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            c.problem(format!(
                "listen.upgrades: {u:?} cannot be passed through (one protocol token; never h2c)"
            ));
        }
    }
    ListenConfig {
        tls: raw.tls.and_then(|t| validate_tls(c, t)),
        ..listen
    }
}

pub(super) fn validate_ops(c: &mut Check<'_>, raw: RawOps, listen: &ListenConfig) -> OpsConfig {
    let ops = OpsConfig {
        address: c.addr("ops.address", raw.address, "127.0.0.1:9090"),
    };
    if ops.address == listen.address && ops.address.port() != 0 {
        c.problem("ops.address: must differ from listen.address".into());
    }
    ops
}

fn validate_tls(c: &mut Check<'_>, raw: RawTls) -> Option<TlsConfig> {
    let (Some(cert), Some(key)) = (raw.cert_file, raw.key_file) else {
        c.problem("listen.tls: cert_file and key_file are required".into());
        return None;
    };
    let cfg = TlsConfig {
        default: CertFiles {
            cert_file: c.file(cert),
            key_file: c.file(key),
        },
        sni: raw
            .sni
            .into_iter()
            .map(|s| SniCert {
                names: s.names,
                files: CertFiles {
                    cert_file: c.file(s.cert_file),
                    key_file: c.file(s.key_file),
                },
            })
            .collect(),
        client_ca_file: raw.client_ca_file.map(|f| c.file(f)),
        reload_interval: c.duration(
            "listen.tls.reload_interval",
            raw.reload_interval,
            Duration::from_secs(10),
        ),
    };
    for (i, s) in cfg.sni.iter().enumerate() {
        if s.names.is_empty() {
            c.problem(format!(
                "listen.tls.sni[{i}].names: at least one server name"
            ));
        }
        for name in &s.names {
            let bare = name.strip_prefix("*.").unwrap_or(name);
            let valid = !bare.is_empty()
                && bare.split('.').all(|label| {
                    !label.is_empty()
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !valid {
                c.problem(format!(
                    "listen.tls.sni[{i}].names: {name:?} is not a host name (a wildcard is only a leading \"*.\")"
                ));
            }
        }
    }
    // Load everything now, so a bad file is reported by check-config, not at the first handshake.
    match crate::tls::Listener::new(&cfg) {
        Ok(_) => Some(cfg),
        Err(e) => {
            c.problem(format!("listen.tls: {e}"));
            None
        }
    }
}
