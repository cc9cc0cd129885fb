//! All header surgery on the way to and from the upstream, in one place: hop-by-hop removal
//! (including names listed in `Connection`), forwarding headers, the request id, stripping of the
//! identity namespace and the credential, and injection of the identity.
//!
//! Order matters and is fixed by [`HeaderPlan::prepare_request`]: everything a client can name
//! is removed *before* keygate adds its own headers, so no client header (not even a
//! `Connection` listing `X-Auth-Key-Id`) can remove or forge what keygate injects.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri, Version};

use crate::auth::Identity;
use crate::config::{AuthConfig, Carrier, HeaderStyles};
use crate::policy::ratelimit::Decision;

pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy `Proxy-Connection`): never forwarded.
static HOP_BY_HOP: [&HeaderName; 9] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHORIZATION,
    // Only meaningful with `Upgrade: h2c`, which keygate never forwards.
    &HTTP2_SETTINGS,
];
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Forwarding headers keygate sets itself; client-sent values are spoofable and dropped.
static FORWARDING: [&HeaderName; 5] = [
    &header::FORWARDED,
    &X_FORWARDED_FOR,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_REAL_IP,
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

/// Sets the rate-limit headers of one decision in the configured styles.
pub fn set_rate_limit_headers(headers: &mut HeaderMap, d: &Decision, styles: HeaderStyles) {
    let reset_secs = d.reset.as_secs() + u64::from(d.reset.subsec_nanos() > 0);
    headers.reserve(8);
    if styles.x_ratelimit {
        let reset_at = crate::time::Timestamp::now().unix() + reset_secs;
        headers.insert(X_RATELIMIT_LIMIT.clone(), HeaderValue::from(d.limit));
        headers.insert(
            X_RATELIMIT_REMAINING.clone(),
            HeaderValue::from(d.remaining),
        );
        headers.insert(X_RATELIMIT_RESET.clone(), HeaderValue::from(reset_at));
    }
    if styles.ratelimit {
        headers.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(d.limit));
        headers.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(d.remaining));
        headers.insert(RATELIMIT_RESET.clone(), HeaderValue::from(reset_secs));
    }
    if styles.structured {
        let policy = format!("\"default\";q={};w={}", d.limit, d.window.as_secs().max(1));
        let state = format!("\"default\";r={};t={reset_secs}", d.remaining);
        if let (Ok(p), Ok(s)) = (
            HeaderValue::from_str(&policy),
            HeaderValue::from_str(&state),
        ) {
            headers.insert(RATELIMIT_POLICY.clone(), p);
            headers.insert(RATELIMIT.clone(), s);
        }
    }
}

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Longest client-sent `X-Request-Id` kept as is.
const MAX_REQUEST_ID: usize = 128;

/// What the connection tells us about the client, computed once per connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    pub peer_ip: HeaderValue,
    /// The connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
}

impl ConnInfo {
    /// The header value for `ip`: the precomputed one when it is the peer itself.
    pub fn ip_value(&self, ip: std::net::IpAddr) -> HeaderValue {
        if ip == self.peer.ip().to_canonical() {
            return self.peer_ip.clone();
        }
        HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
    }

    pub fn new(peer: std::net::SocketAddr, tls: bool) -> Self {
        let ip = peer.ip().to_canonical();
        let peer_ip = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnInfo { peer, peer_ip, tls }
    }
}

/// The identity header names and forwarding choices, resolved from config once.
#[derive(Clone, Debug)]
pub struct HeaderPlan {
    identity_prefix: String,
    key_id: HeaderName,
    owner: HeaderName,
    environment: HeaderName,
    key_type: HeaderName,
    scopes: HeaderName,
    /// Credential headers to remove before forwarding (empty when forwarding is configured).
    strip_credentials: Vec<HeaderName>,
    upstream_scheme: Scheme,
    upstream_authority: Authority,
    upstream_host: HeaderValue,
    preserve_host: bool,
    signer: Option<Signer>,
}

/// Signs what keygate vouches for, so an upstream reachable by other paths can check that a
/// request came through keygate: `<prefix>Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`
/// over `v1\n<t>\n<key id>\n<owner>\n<scopes>\n<METHOD>\n<path and query>` (identity fields
/// empty on public routes). See the README for the verification recipe.
#[derive(Clone)]
struct Signer {
    header: HeaderName,
    mac: hmac::Hmac<sha2::Sha256>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

/// The signature value for one request.
pub fn sign_v1(
    mac: &hmac::Hmac<sha2::Sha256>,
    t: u64,
    key_id: &[u8],
    owner: &[u8],
    scopes: &[u8],
    method: &str,
    path_and_query: &str,
) -> String {
    use hmac::Mac;
    let mut mac = mac.clone();
    for part in [
        b"v1".as_slice(),
        t.to_string().as_bytes(),
        key_id,
        owner,
        scopes,
        method.as_bytes(),
    ] {
        mac.update(part);
        mac.update(b"\n");
    }
    mac.update(path_and_query.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = format!("t={t},v1=");
    for b in digest {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

impl HeaderPlan {
    pub fn new(auth: &AuthConfig, upstream: &Uri, preserve_host: bool) -> Result<Self, String> {
        let name = |suffix: &str| {
            HeaderName::from_bytes(format!("{}{suffix}", auth.identity_prefix).as_bytes())
                .map_err(|e| format!("identity header name {}{suffix}: {e}", auth.identity_prefix))
        };
        let authority = upstream
            .authority()
            .cloned()
            .ok_or("upstream URL has no authority")?;
        let strip_credentials = if auth.forward_credential {
            Vec::new()
        } else {
            auth.carriers
                .iter()
                .map(|c| match c {
                    Carrier::Bearer => header::AUTHORIZATION,
                    Carrier::ApiKeyHeader => X_API_KEY.clone(),
                })
                .collect()
        };
        Ok(HeaderPlan {
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

        match (&client_host, self.preserve_host) {
            (Some(host), true) => headers.insert(header::HOST, host.clone()),
            _ => headers.insert(header::HOST, self.upstream_host.clone()),
        };

        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(self.upstream_scheme.clone());
        parts.authority = Some(self.upstream_authority.clone());
        // The normalised path replaces the client's, so the upstream sees what routing saw.
        if let Some(path) = fwd.normalized_path {
            let query = parts.path_and_query.as_ref().and_then(|pq| pq.query());
            let pq = match query {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            parts.path_and_query = PathAndQuery::try_from(pq).ok();
        }
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        // Scheme, authority and path are all set, so this cannot fail.
        *req.uri_mut() = Uri::from_parts(parts).unwrap_or_default();
        self.sign(req, fwd.identity);
        // HTTP/1.1 unless the upstream client speaks HTTP/2 (it then sets the version itself).
        *req.version_mut() = Version::HTTP_11;
    }

    /// Sets the signature header for the request as it will be sent: method and request target
    /// (path and query; `host:port` for CONNECT). Call again after changing either.
    pub fn sign<B>(&self, req: &mut Request<B>, identity: Option<&Identity>) {
        let Some(s) = &self.signer else { return };
        let empty = HeaderValue::from_static("");
        let (key_id, owner, scopes) = match identity {
            Some(i) => (&i.values().key_id, &i.values().owner, &i.values().scopes),
            None => (&empty, &empty, &empty),
        };
        let target = match (req.uri().path_and_query(), req.uri().authority()) {
            (Some(pq), _) => pq.as_str(),
            (None, Some(a)) => a.as_str(),
            (None, None) => "/",
        };
        let value = sign_v1(
            &s.mac,
            crate::time::Timestamp::now().unix(),
            key_id.as_bytes(),
            owner.as_bytes(),
            scopes.as_bytes(),
            req.method().as_str(),
            target,
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            req.headers_mut().insert(s.header.clone(), v);
        }
    }

    /// Every client header the upstream must not receive, found in one pass over the names
    /// the request carries (most carry none but the credential): hop-by-hop headers and those
    /// `Connection` names, the credential carriers (unless forwarded), forwarding headers
    /// (keygate sets its own), method overrides (unless honoured) and anything in the identity
    /// namespace or spelled like a forwarding header with `_` for `-`.
    fn doomed(&self, headers: &HeaderMap, keep_method_override: bool) -> Vec<HeaderName> {
        let mut doomed = connection_named(headers);
        doomed.extend(
            headers
                .keys()
                .filter(|name| {
                    HOP_BY_HOP.contains(name)
                        || FORWARDING.contains(name)
                        || self.strip_credentials.contains(name)
                        || (!keep_method_override && METHOD_OVERRIDES.contains(name))
                        || self.spoofed(name)
                })
                .cloned(),
        );
        doomed
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

/// The request's host: the `Host` header, or the HTTP/2 `:authority`.
fn host_of<B>(req: &Request<B>) -> Option<HeaderValue> {
    req.headers().get(header::HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// Removes hop-by-hop headers, first those the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let mut doomed = connection_named(headers);
    doomed.extend(
        headers
            .keys()
            .filter(|name| HOP_BY_HOP.contains(name))
            .cloned(),
    );
    for name in doomed {
        headers.remove(name);
    }
}

/// The headers a message's `Connection` header names (hop-by-hop by declaration).
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| {
            let token = token.trim();
            // The usual values, without parsing a name for them.
            if token.eq_ignore_ascii_case("keep-alive") {
                Some(KEEP_ALIVE.clone())
            } else if token.eq_ignore_ascii_case("close") {
                Some(CLOSE.clone())
            } else {
                HeaderName::from_bytes(token.as_bytes()).ok()
            }
        })
        .collect()
}
static CLOSE: HeaderName = HeaderName::from_static("close");

/// The client's `X-Request-Id` when it is sane, or a fresh one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID)
        && !v.is_empty()
        && v.len() <= MAX_REQUEST_ID
        && v.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return v.clone();
    }
    new_request_id()
}

/// `<process random>-<counter>`: unique per process without an RNG call per request.
fn new_request_id() -> HeaderValue {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| crate::key::random_base62(10));
    id_value(prefix, COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// `<prefix>-<n in hex>`, built by hand: this runs on every request without an `X-Request-Id`.
fn id_value(prefix: &str, n: u64) -> HeaderValue {
    let mut id = Vec::with_capacity(prefix.len() + 17);
    id.extend_from_slice(prefix.as_bytes());
    id.push(b'-');
    let digits = (64 - n.leading_zeros()).div_ceil(4).max(1);
    id.extend(
        (0..digits)
            .rev()
            .map(|i| b"0123456789abcdef"[((n >> (i * 4)) & 0xf) as usize]),
    );
    HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_go_first() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, X-Foo, bad header"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut h);
        assert_eq!(
            h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
            vec!["x-kept"]
        );
    }

    #[test]
    fn request_id_counter_is_hex() {
        for n in [0, 1, 9, 10, 15, 16, 255, 4096, 0xdead_beef, u64::MAX] {
            assert_eq!(id_value("p", n), format!("p-{n:x}").as_str(), "{n}");
        }
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        let a = request_id(&h);
        let b = request_id(&h);
        assert_ne!(a, b);
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(
            &X_REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(500)).unwrap(),
        );
        assert_ne!(request_id(&h).len(), 500);
    }
}
