//! Signed identity: `<prefix>Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>` over what keygate
//! vouches for, so an upstream reachable by other paths can check a request came through here.

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request};

use super::HeaderPlan;
use crate::auth::Identity;

/// Signs what keygate vouches for, so an upstream reachable by other paths can check that a
/// request came through keygate: `<prefix>Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>`
/// over `v1\n<t>\n<key id>\n<owner>\n<scopes>\n<METHOD>\n<path and query>` (identity fields
/// empty on public routes). See the README for the verification recipe.
#[derive(Clone)]
pub(super) struct Signer {
    pub(super) header: HeaderName,
    pub(super) mac: hmac::Hmac<sha2::Sha256>,
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
    /// Sets the signature header for the request as it will be sent: method and request target
    /// (path and query; `host:port` for CONNECT). Call again after changing either.
    pub fn sign<B>(&self, req: &mut Request<B>, identity: Option<&Identity>) {
        let target = match (req.uri().path_and_query(), req.uri().authority()) {
            (Some(pq), _) => pq.as_str(),
            (None, Some(a)) => a.as_str(),
            (None, None) => "/",
        };
        if let Some((name, value)) = self.signature(identity, req.method(), target) {
            req.headers_mut().insert(name.clone(), value);
        }
    }

    /// The signature header for a request with this method and target, when signing is on.
    pub(super) fn signature(
        &self,
        identity: Option<&Identity>,
        method: &Method,
        target: &str,
    ) -> Option<(&HeaderName, HeaderValue)> {
        let s = self.signer.as_ref()?;
        let empty = HeaderValue::from_static("");
        let (key_id, owner, scopes) = match identity {
            Some(i) => (&i.values().key_id, &i.values().owner, &i.values().scopes),
            None => (&empty, &empty, &empty),
        };
        let value = sign_v1(
            &s.mac,
            crate::time::Timestamp::now().unix(),
            key_id.as_bytes(),
            owner.as_bytes(),
            scopes.as_bytes(),
            method.as_str(),
            target,
        );
        let value = HeaderValue::from_str(&value).ok()?;
        Some((&s.header, value))
    }
}
