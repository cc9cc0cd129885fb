//! All header surgery on the way to and from the upstream, in one place: hop-by-hop removal
//! (including names listed in `Connection`, [`hop`]), forwarding headers, the request id
//! ([`request_id`]), stripping of the identity namespace and the credential, injection of the
//! identity and its signature ([`signature`]). (Rate-limit headers render a limiter decision and
//! live beside the limiter: `policy::ratelimit::headers`.)
//!
//! Order matters and is fixed by [`HeaderPlan::prepare_request`]: everything a client can name
//! is removed *before* keygate adds its own headers, so no client header (not even a
//! `Connection` listing `X-Auth-Key-Id`) can remove or forge what keygate injects. For keygate's
//! own HTTP/1.1 upstream codec the same outcome is written straight into the request head
//! ([`wire`]), without editing the map; a test holds the two ways to the same fields.

mod hop;
mod request_id;
mod signature;
mod wire;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri, Version};

use crate::auth::{Identity, X_API_KEY};
use crate::config::{AuthConfig, Carrier};
pub use crate::policy::ip::X_FORWARDED_FOR;
use hop::{HOP_BY_HOP, connection_named};
pub use hop::{is_hop_by_hop_name, remove_hop_by_hop};
pub use request_id::{X_REQUEST_ID, request_id};
use signature::Signer;
pub use signature::sign_v1;
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Envoy's HTTP `ext_authz` reads the headers to remove from the upstream request here;
/// keygate's authorization answers list them in it (auth-only mode).
pub static HEADERS_TO_REMOVE: HeaderName =
    HeaderName::from_static("x-envoy-auth-headers-to-remove");
/// Forwarding headers keygate sets itself; client-sent values are spoofable and dropped.
static FORWARDING: [&HeaderName; 5] = [
    &header::FORWARDED,
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_REAL_IP,
];

/// Headers some upstream stacks read as the request's real path (IIS and Symfony's
/// `X-Original-URL`/`X-Rewrite-URL`, Spring's `X-Forwarded-Prefix`, …), scheme, port or client
/// address: a client could otherwise route itself past the route keygate matched, or pose as
/// another address. Always stripped; keygate sends its own `X-Forwarded-*` and `X-Real-IP`.
/// (Checked through [`fixed`], which a test holds to this list.)
#[cfg(test)]
static OVERRIDES: [HeaderName; 18] = [
    HeaderName::from_static("x-original-url"),
    HeaderName::from_static("x-rewrite-url"),
    HeaderName::from_static("x-override-url"),
    HeaderName::from_static("x-original-uri"),
    HeaderName::from_static("x-original-path"),
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-forwarded-path"),
    HeaderName::from_static("x-forwarded-prefix"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-scheme"),
    HeaderName::from_static("x-forwarded-ssl"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-url-scheme"),
    HeaderName::from_static("front-end-https"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
    HeaderName::from_static("x-originating-ip"),
];

/// The path overrides among [`OVERRIDES`] that no front proxy sets on its own (the check
/// dialects' `X-Original-URI`, `X-Original-URL`, `X-Forwarded-Uri` are read and removed before):
/// a client that sends one through a front proxy could have its upstream route elsewhere.
/// (Scheme, port and address overrides are what front proxies set themselves.)
static PATH_OVERRIDES: [&str; 4] = [
    "x-rewrite-url",
    "x-override-url",
    "x-original-path",
    "x-forwarded-path",
];

/// Method-override headers: stripped unless configured to be honoured (and then the scope is
/// checked against the overridden method).
pub static METHOD_OVERRIDES: [&HeaderName; 3] =
    [&X_HTTP_METHOD_OVERRIDE, &X_HTTP_METHOD, &X_METHOD_OVERRIDE];
static X_HTTP_METHOD_OVERRIDE: HeaderName = HeaderName::from_static("x-http-method-override");
static X_HTTP_METHOD: HeaderName = HeaderName::from_static("x-http-method");
static X_METHOD_OVERRIDE: HeaderName = HeaderName::from_static("x-method-override");

/// What the forwarded request carries besides the client's own headers.
pub struct Forward<'a> {
    /// The client address (after trusted-proxy resolution), for `X-Forwarded-For`.
    pub client_ip: &'a HeaderValue,
    /// `None` on public routes: no identity is injected (and spoofed identity still stripped).
    pub identity: Option<&'a Identity>,
    pub request_id: &'a HeaderValue,
    /// The normalised path when it differs from the client's.
    pub normalized_path: Option<&'a str>,
    pub keep_method_override: bool,
    /// The client connected over TLS.
    pub https: bool,
}

/// What an allowed authorization check answers (see [`HeaderPlan::authz_answer`]).
#[derive(Debug)]
pub struct AuthzAnswer {
    /// Set on the forwarded request, replacing any value the client sent.
    pub set: HeaderMap,
    /// Removed from the forwarded request.
    pub remove: Vec<HeaderName>,
    /// A client header the proxy would strip because an upstream could act on it — a path
    /// override ([`PATH_OVERRIDES`]), a method override, an underscore spelling of an identity or
    /// forwarding header — which a front proxy would pass on: the check must be refused.
    pub unsafe_header: Option<HeaderName>,
}

/// The identity header names and forwarding choices, resolved from config once.
#[derive(Clone, Debug)]
pub struct HeaderPlan {
    /// Unique to this plan: the identity lines it writes are kept per cache entry under it.
    id: u64,
    identity_prefix: String,
    key_id: HeaderName,
    owner: HeaderName,
    environment: HeaderName,
    key_type: HeaderName,
    scopes: HeaderName,
    /// Credential carriers to remove before forwarding (none when forwarding is configured).
    strip_credentials: Credentials,
    upstream_scheme: Scheme,
    upstream_authority: Authority,
    upstream_host: HeaderValue,
    preserve_host: bool,
    signer: Option<Signer>,
}

impl HeaderPlan {
    /// The `Host` the upstream receives: the client's (`preserve_host`) or the upstream's own.
    fn host_for<'a>(&'a self, client: Option<&'a HeaderValue>) -> &'a HeaderValue {
        match client {
            Some(host) if self.preserve_host => host,
            _ => &self.upstream_host,
        }
    }

    pub fn new(auth: &AuthConfig, upstream: &Uri, preserve_host: bool) -> Result<Self, String> {
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{}{suffix}", auth.identity_prefix).as_bytes())
                .map_err(|e| format!("identity header name {}{suffix}: {e}", auth.identity_prefix))
        };
        let authority = upstream
            .authority()
            .cloned()
            .ok_or("upstream URL has no authority")?;
        let stripped = |c: Carrier| !auth.forward_credential && auth.carriers.contains(&c);
        let strip_credentials = Credentials {
            api_key: stripped(Carrier::ApiKeyHeader),
            bearer: stripped(Carrier::Bearer),
            basic: stripped(Carrier::Basic),
        };
        static PLANS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Ok(HeaderPlan {
            id: PLANS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            identity_prefix: auth.identity_prefix.clone(),
            key_id: name("key-id")?,
            owner: name("owner")?,
            environment: name("env")?,
            key_type: name("key-type")?,
            scopes: name("scopes")?,
            strip_credentials,
            upstream_scheme: upstream.scheme().cloned().unwrap_or(Scheme::HTTP),
            upstream_host: HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
            upstream_authority: authority,
            preserve_host,
            signer: match &auth.signing_key {
                None => None,
                Some(k) => Some(Signer {
                    header: name("signature")?,
                    mac: <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(k.expose())
                        .map_err(|e| e.to_string())?,
                }),
            },
        })
    }

    /// Turns an authenticated client request into the request the upstream receives.
    pub fn prepare_request<B>(&self, req: &mut Request<B>, fwd: &Forward<'_>) {
        let client_host = host_of(req);
        let headers = req.headers_mut();
        // Room for what is added below, so the map grows at most once.
        headers.reserve(16);
        // `TE: trailers` is the one TE value worth keeping: gRPC servers require it.
        let te_trailers = headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        for name in self.doomed(headers, fwd.keep_method_override) {
            headers.remove(name);
        }
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }

        headers.insert(X_FORWARDED_FOR.clone(), fwd.client_ip.clone());
        headers.insert(X_REAL_IP.clone(), fwd.client_ip.clone());
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(if fwd.https { "https" } else { "http" }),
        );
        if let Some(host) = &client_host {
            headers.insert(X_FORWARDED_HOST.clone(), host.clone());
        }
        headers.insert(X_REQUEST_ID.clone(), fwd.request_id.clone());

        if let Some(identity) = fwd.identity {
            let v = identity.values();
            headers.insert(self.key_id.clone(), v.key_id.clone());
            headers.insert(self.owner.clone(), v.owner.clone());
            headers.insert(self.environment.clone(), v.environment.clone());
            headers.insert(self.key_type.clone(), v.key_type.clone());
            headers.insert(self.scopes.clone(), v.scopes.clone());
        }

        headers.insert(header::HOST, self.host_for(client_host.as_ref()).clone());

        let target = forwarded_target(req.uri(), fwd.normalized_path);
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(self.upstream_scheme.clone());
        parts.authority = Some(self.upstream_authority.clone());
        parts.path_and_query = Some(target);
        // Scheme, authority and path are all set, so this cannot fail.
        *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
        self.sign(req, fwd.identity);
        // HTTP/1.1 unless the upstream client speaks HTTP/2 (it then sets the version itself).
        *req.version_mut() = Version::HTTP_11;
    }

    /// The identity namespace (`x-auth-`), lower-case.
    pub fn identity_prefix(&self) -> &str {
        &self.identity_prefix
    }

    /// The answer to an authorization check (auth-only mode): the headers the front proxy sets
    /// on the request it forwards (identity and signature), and the client headers it removes
    /// first (the credential, the identity namespace in any spelling, path overrides, names with
    /// `_`). Computed by preparing the request exactly as the proxy would and comparing, so the
    /// two modes cannot drift apart. Hop-by-hop and forwarding headers are the front proxy's
    /// own business and are not listed.
    pub fn authz_answer<B>(&self, req: &Request<B>, fwd: &Forward<'_>) -> AuthzAnswer {
        let mut probe = Request::new(());
        *probe.method_mut() = req.method().clone();
        *probe.uri_mut() = req.uri().clone();
        *probe.headers_mut() = req.headers().clone();
        self.prepare_request(&mut probe, fwd);
        let prepared = probe.headers();
        let mut set = HeaderMap::new();
        let injected = [
            &self.key_id,
            &self.owner,
            &self.environment,
            &self.key_type,
            &self.scopes,
        ];
        for name in injected
            .into_iter()
            .chain(self.signer.as_ref().map(|s| &s.header))
        {
            if let Some(v) = prepared.get(name) {
                set.insert(name.clone(), v.clone());
            }
        }
        let listed = connection_named(req.headers());
        // `keys()` yields each name once.
        let remove: Vec<HeaderName> = req
            .headers()
            .keys()
            .filter(|name| {
                !prepared.contains_key(*name)
                    && !HOP_BY_HOP.contains(name)
                    && !FORWARDING.contains(name)
                    && !listed.contains(name)
            })
            .cloned()
            .collect();
        let unsafe_header = remove
            .iter()
            .find(|name| {
                PATH_OVERRIDES.contains(&name.as_str())
                    || (!fwd.keep_method_override && METHOD_OVERRIDES.contains(name))
                    || (name.as_str().contains('_') && self.spoofed(name))
            })
            .cloned();
        AuthzAnswer {
            set,
            remove,
            unsafe_header,
        }
    }

    /// Every client header the upstream must not receive, found in one pass over the names
    /// the request carries (most carry none but the credential): hop-by-hop headers and those
    /// `Connection` names, the credential carriers (unless forwarded), forwarding headers
    /// (keygate sets its own), path, scheme and address overrides, method overrides (unless
    /// honoured), anything in the identity namespace, and every name with `_` (CGI-style servers
    /// read `X_Api_Key` as `X-Api-Key`, `Transfer_Encoding` as `Transfer-Encoding`).
    fn doomed(&self, headers: &HeaderMap, keep_method_override: bool) -> Vec<HeaderName> {
        let mut doomed = connection_named(headers);
        doomed.extend(
            headers
                .keys()
                .filter(|name| self.never_forwarded(name, headers, keep_method_override))
                .cloned(),
        );
        doomed
    }

    /// Whether the client header `name` is one the upstream must not receive (see
    /// [`HeaderPlan::doomed`]; the names `Connection` lists are not checked here).
    fn never_forwarded(&self, name: &HeaderName, headers: &HeaderMap, keep_mo: bool) -> bool {
        match fixed(name.as_str()) {
            // Honoured or not, one in the identity namespace (a prefix such as `x-`) goes.
            Some(Fixed::MethodOverride) => !keep_mo || self.spoofed(name),
            Some(Fixed::Stripped) => true,
            None => {
                name.as_str().contains('_')
                    || self.strip_credentials.carries(name, headers)
                    || self.spoofed(name)
            }
        }
    }

    /// In the identity namespace, in any spelling a framework might map to it (`X-Auth-Owner`,
    /// `x_auth_owner`: CGI-style servers treat `_` and `-` alike); or an underscore spelling of a
    /// forwarding header (`x_forwarded_for`), which such servers would read as the real thing.
    fn spoofed(&self, name: &HeaderName) -> bool {
        let prefix = self.identity_prefix.as_bytes();
        // `_` reads as `-`; the header names here are all lower-case already.
        let same = |a: &u8, b: &u8| *a == *b || (*a == b'_' && *b == b'-');
        let n = name.as_str().as_bytes();
        let in_namespace = n.len() >= prefix.len() && n.iter().zip(prefix).all(|(a, b)| same(a, b));
        let forwarding_lookalike = n.contains(&b'_')
            && FORWARDING.iter().any(|f| {
                let f = f.as_str().as_bytes();
                f.len() == n.len() && n.iter().zip(f).all(|(a, b)| same(a, b))
            });
        in_namespace || forwarding_lookalike
    }
}

/// A name on one of the fixed lists: [`HOP_BY_HOP`], [`FORWARDING`] and [`OVERRIDES`]
/// (stripped), [`METHOD_OVERRIDES`] (stripped unless honoured).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fixed {
    Stripped,
    MethodOverride,
}

/// The fixed lists as one `match` (a test holds it to the lists): this runs for every header
/// of every forwarded request.
fn fixed(name: &str) -> Option<Fixed> {
    match name {
        "connection"
        | "keep-alive"
        | "proxy-connection"
        | "te"
        | "trailer"
        | "transfer-encoding"
        | "upgrade"
        | "proxy-authorization"
        | "http2-settings"
        | "forwarded"
        | "x-forwarded-for"
        | "x-forwarded-proto"
        | "x-forwarded-host"
        | "x-real-ip"
        | "x-original-url"
        | "x-rewrite-url"
        | "x-override-url"
        | "x-original-uri"
        | "x-original-path"
        | "x-forwarded-uri"
        | "x-forwarded-path"
        | "x-forwarded-prefix"
        | "x-forwarded-port"
        | "x-forwarded-scheme"
        | "x-forwarded-ssl"
        | "x-forwarded-server"
        | "x-url-scheme"
        | "front-end-https"
        | "x-client-ip"
        | "true-client-ip"
        | "x-cluster-client-ip"
        | "x-originating-ip" => Some(Fixed::Stripped),
        "x-http-method-override" | "x-http-method" | "x-method-override" => {
            Some(Fixed::MethodOverride)
        }
        _ => None,
    }
}

/// Which credential carriers are removed before forwarding. `Authorization` goes when its
/// scheme is one keygate reads; another scheme (`Digest`, a Basic when the Basic carrier is
/// off) is the client's business with the upstream and passes.
#[derive(Clone, Copy, Debug)]
struct Credentials {
    api_key: bool,
    bearer: bool,
    basic: bool,
}

impl Credentials {
    fn carries(&self, name: &HeaderName, headers: &HeaderMap) -> bool {
        if *name == X_API_KEY {
            return self.api_key;
        }
        if *name != header::AUTHORIZATION || !(self.bearer || self.basic) {
            return false;
        }
        let scheme_is = |v: &[u8], s: &[u8]| {
            v.len() > s.len()
                && v[..s.len()].eq_ignore_ascii_case(s)
                && matches!(v[s.len()], b' ' | b'\t')
        };
        crate::fields::values(headers, &header::AUTHORIZATION).any(|v| {
            let v = v.as_bytes();
            (self.bearer && scheme_is(v, b"bearer")) || (self.basic && scheme_is(v, b"basic"))
        })
    }
}

/// The path and query the upstream receives: the normalised path (when it differs from the
/// client's) with the client's query, so the upstream sees what routing saw; `/` when none.
fn forwarded_target(uri: &Uri, normalized_path: Option<&str>) -> PathAndQuery {
    let client = uri.path_and_query();
    let target = match normalized_path {
        None => client.cloned(),
        Some(path) => {
            let pq = match client.and_then(PathAndQuery::query) {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            PathAndQuery::try_from(pq).ok()
        }
    };
    target.unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// The request's host: the `Host` header, or the HTTP/2 `:authority`.
fn host_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// The effective method: the override header's when honoured and well-formed.
pub fn effective_method(method: &Method, headers: &HeaderMap, honor: bool) -> Method {
    if !honor {
        return method.clone();
    }
    METHOD_OVERRIDES
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        .unwrap_or_else(|| method.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixed_match_is_the_lists() {
        let stripped: Vec<&str> = HOP_BY_HOP
            .iter()
            .chain(FORWARDING.iter())
            .map(|n| n.as_str())
            .chain(OVERRIDES.iter().map(HeaderName::as_str))
            .collect();
        for name in &stripped {
            assert_eq!(fixed(name), Some(Fixed::Stripped), "{name}");
        }
        for name in METHOD_OVERRIDES {
            assert_eq!(fixed(name.as_str()), Some(Fixed::MethodOverride), "{name}");
        }
        // Every arm of the match is on a list: 32 + 3 names.
        assert_eq!(stripped.len() + METHOD_OVERRIDES.len(), 35);
        for other in [
            "host",
            "accept",
            "authorization",
            "x-api-key",
            "x-forwarded",
            "tee",
        ] {
            assert_eq!(fixed(other), None, "{other}");
        }
    }
}
