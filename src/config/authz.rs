//! `[authz]`: keygate as the API-key authority behind another proxy (nginx `auth_request`,
//! Traefik `forwardAuth`, Envoy's HTTP `ext_authz`), beside or instead of the proxy listener.

use std::net::SocketAddr;

use serde::Deserialize;

use super::check::Check;
use super::listen::{ListenConfig, OpsConfig};

/// Which listeners serve requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The reverse proxy only (the default).
    Proxy,
    /// The authorization endpoint only: no proxy listener, no upstream.
    Authz,
    /// Both listeners at once.
    Both,
}

impl Mode {
    pub fn proxies(self) -> bool {
        matches!(self, Mode::Proxy | Mode::Both)
    }

    pub fn authorizes(self) -> bool {
        matches!(self, Mode::Authz | Mode::Both)
    }
}

#[derive(Clone, Debug)]
pub struct AuthzConfig {
    pub mode: Mode,
    /// The authorization listener.
    pub address: SocketAddr,
    /// Where nginx, ingress-nginx and Traefik send their checks: a check on this path names the
    /// original request in headers (`X-Forwarded-Uri`, `X-Original-URI`, …) and must.
    pub check_path: String,
    /// Stripped from the path of a check on any other path (Envoy's HTTP service sends the
    /// original path after its `path_prefix`); such a check must not carry those headers.
    pub path_prefix: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawAuthz {
    mode: Option<String>,
    address: Option<String>,
    check_path: Option<String>,
    path_prefix: Option<String>,
}

pub(super) fn validate(
    c: &mut Check<'_>,
    raw: RawAuthz,
    listen: &ListenConfig,
    ops: &OpsConfig,
) -> AuthzConfig {
    let mode = match raw.mode.as_deref() {
        None | Some("proxy") => Mode::Proxy,
        Some("authz") => Mode::Authz,
        Some("both") => Mode::Both,
        Some(other) => {
            c.problem(format!(
                "authz.mode: {other:?} is not \"proxy\", \"authz\" or \"both\""
            ));
            Mode::Proxy
        }
    };
    let address = c.addr("authz.address", raw.address, "127.0.0.1:8081");
    if mode.authorizes()
        && address.port() != 0
        && ((mode.proxies() && address == listen.address) || address == ops.address)
    {
        c.problem("authz.address: must differ from listen.address and ops.address".into());
    }
    let path_prefix = raw.path_prefix.unwrap_or_default();
    if !path_prefix.is_empty() && (!path_prefix.starts_with('/') || path_prefix.ends_with('/')) {
        c.problem(format!(
            "authz.path_prefix: {path_prefix:?} must start with / and not end with one (e.g. \"/authz\")"
        ));
    }
    let check_path = raw.check_path.unwrap_or_else(|| "/auth".to_owned());
    if !check_path.starts_with('/') || check_path.contains(['?', '#']) {
        c.problem(format!(
            "authz.check_path: {check_path:?} must be a path such as \"/auth\""
        ));
    }
    if !path_prefix.is_empty()
        && (check_path == path_prefix || check_path.starts_with(&format!("{path_prefix}/")))
    {
        c.problem(format!(
            "authz.check_path: {check_path:?} is inside authz.path_prefix {path_prefix:?}"
        ));
    }
    AuthzConfig {
        mode,
        address,
        check_path,
        path_prefix,
    }
}
