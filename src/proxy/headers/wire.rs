//! The forwarded request written straight into its HTTP/1.1 head, for keygate's own upstream
//! codec: the client's header lines minus the ones never forwarded, then keygate's own, with no
//! edit of the header map. It sends what [`HeaderPlan::prepare_request`] followed by
//! `encode_head` would (the same fields, each name's values in the same order; only the order
//! between different names, which carries no meaning, may differ), and the tests below hold
//! the two to that.

use http::Request;
use http::header;
use http_body::Body;

use super::hop::connection_named;
use super::{Forward, HeaderPlan, X_FORWARDED_FOR, X_REAL_IP, X_REQUEST_ID, forwarded_target};
use super::{X_FORWARDED_HOST, X_FORWARDED_PROTO, host_of};
use crate::auth::IdentityValues;
use crate::fields;
use crate::proxy::h1::client::{Framing, end_head, is_framing, is_length, start_line};
use crate::proxy::h1::field;

impl HeaderPlan {
    /// Writes the upstream request's head for `req` into `out` (cleared first) and says how its
    /// body follows. Upgrades are not written here: they go through hyper.
    pub fn encode_request<B: Body>(
        &self,
        req: &Request<B>,
        fwd: &Forward<'_>,
        out: &mut Vec<u8>,
    ) -> Framing {
        let headers = req.headers();
        let listed = if fields::first(headers, &header::CONNECTION).is_some() {
            connection_named(headers)
        } else {
            Vec::new()
        };
        let target = forwarded_target(req.uri(), fwd.normalized_path);
        start_line(req.method(), target.as_str(), out);
        // What the map would be asked for (the first `Host`, `TE` and `Content-Length`) is
        // noted on the one pass over the fields instead.
        let (mut client_host, mut te, mut client_length) = (None, None, None);
        // `Host` and `X-Request-Id` replace the client's in place, once; everything else keygate
        // sets is in a namespace it strips first, so it follows the client's lines.
        let (mut host_sent, mut id_sent) = (false, false);
        for (name, value) in headers {
            if *name == header::HOST {
                client_host.get_or_insert(value);
            } else if *name == header::TE {
                te.get_or_insert(value);
            } else if *name == header::CONTENT_LENGTH {
                client_length.get_or_insert(value);
            }
            if is_framing(name)
                || listed.contains(name)
                || self.never_forwarded(name, headers, fwd.keep_method_override)
            {
                continue;
            }
            if name == header::HOST {
                if !std::mem::replace(&mut host_sent, true) {
                    field(
                        out,
                        header::HOST.as_ref(),
                        self.host_for(client_host).as_bytes(),
                    );
                }
            } else if name == X_REQUEST_ID {
                if !std::mem::replace(&mut id_sent, true) {
                    field(out, X_REQUEST_ID.as_ref(), fwd.request_id.as_bytes());
                }
            } else {
                field(out, name.as_str().as_bytes(), value.as_bytes());
            }
        }
        // Without a `Host` field, the target's authority (as `host_of` reads it).
        let client_host = match client_host {
            Some(host) => Some(host.clone()),
            None if req.uri().authority().is_some() => host_of(req),
            None => None,
        };
        // `TE: trailers` is the one TE value worth keeping: gRPC servers require it.
        if te.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
            field(out, b"te", b"trailers");
        }
        let proto: &[u8] = if fwd.https { b"https" } else { b"http" };
        field(out, X_FORWARDED_FOR.as_ref(), fwd.client_ip.as_bytes());
        field(out, X_REAL_IP.as_ref(), fwd.client_ip.as_bytes());
        field(out, X_FORWARDED_PROTO.as_ref(), proto);
        if let Some(host) = &client_host {
            field(out, X_FORWARDED_HOST.as_ref(), host.as_bytes());
        }
        if !id_sent {
            field(out, X_REQUEST_ID.as_ref(), fwd.request_id.as_bytes());
        }
        if let Some(identity) = fwd.identity {
            let lines = |v: &IdentityValues, out: &mut Vec<u8>| {
                for (name, value) in [
                    (&self.key_id, &v.key_id),
                    (&self.owner, &v.owner),
                    (&self.environment, &v.environment),
                    (&self.key_type, &v.key_type),
                    (&self.scopes, &v.scopes),
                ] {
                    field(out, name.as_ref(), value.as_bytes());
                }
            };
            identity.values().append_lines(self.id, out, lines);
        }
        if !host_sent {
            field(
                out,
                header::HOST.as_ref(),
                self.host_for(client_host.as_ref()).as_bytes(),
            );
        }
        if let Some((name, value)) = self.signature(fwd.identity, req.method(), target.as_str()) {
            field(out, name.as_ref(), value.as_bytes());
        }
        // The client's length counts only if the map-editing path would have kept it.
        let length = &header::CONTENT_LENGTH;
        let declared = is_length(client_length)
            && !listed.contains(length)
            && !self.never_forwarded(length, headers, fwd.keep_method_override);
        end_head(req.body(), declared, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AuthConfig;
    use crate::proxy::h1::client::encode_head;
    use http::HeaderValue;
    use http::Uri;
    use http_body_util::Full;
    use std::collections::BTreeMap;

    fn value(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }

    /// The start line and each name's values in order, from a written head.
    fn fields(head: &[u8]) -> (String, BTreeMap<String, Vec<String>>) {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or_default().to_owned();
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(": ").unwrap_or((line, ""));
            map.entry(name.to_owned())
                .or_default()
                .push(value.to_owned());
        }
        (start, map)
    }

    fn plan(prefix: &str, preserve_host: bool, signing: bool) -> HeaderPlan {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:9000\"\n[auth]\nidentity_header_prefix = \"{prefix}\"\n"
        );
        let config = crate::config::Config::from_toml(&text, Vec::new(), |_| None);
        let mut auth: AuthConfig = match config {
            Ok(c) => c.auth,
            Err(e) => panic!("config: {e}"),
        };
        if signing {
            auth.signing_key = Some(crate::config::Secret::new(vec![7; 32]));
        }
        let upstream: Uri = "http://127.0.0.1:9000".parse().unwrap_or_default();
        match HeaderPlan::new(&auth, &upstream, preserve_host) {
            Ok(p) => p,
            Err(e) => panic!("plan: {e}"),
        }
    }

    /// Method, target, header fields, body.
    type Case = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );

    /// Requests whose headers exercise every rule: duplicates, `Connection`-listed names, the
    /// credential, spoofed identity in both spellings, forwarding and override headers, `TE`,
    /// framing, a missing `Host`, repeated `Host` and `X-Request-Id`.
    fn corpus() -> Vec<Request<Full<bytes::Bytes>>> {
        let cases: &[Case] = &[
            (
                "GET",
                "/v1/items",
                &[("host", "api.example"), ("authorization", "Bearer kg_x")],
                "",
            ),
            (
                "GET",
                "/v1/items?q=1",
                &[("x-api-key", "kg_x"), ("accept", "a"), ("accept", "b")],
                "",
            ),
            (
                "POST",
                "/v1/items",
                &[
                    ("host", "a"),
                    ("host", "b"),
                    ("x-request-id", "one"),
                    ("x-request-id", "two"),
                    ("content-length", "3"),
                    ("connection", "keep-alive, x-drop, close"),
                    ("x-drop", "1"),
                    ("x-keep", "1"),
                    ("te", "trailers"),
                    ("x-auth-owner", "evil"),
                    ("x_auth_owner", "evil"),
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x_forwarded_for", "6.6.6.6"),
                    ("x-original-url", "/admin"),
                    ("x-http-method-override", "DELETE"),
                    ("authorization", "Digest abc"),
                    ("transfer-encoding", "chunked"),
                    ("keep-alive", "timeout=5"),
                    ("x-keep", "2"),
                ],
                "abc",
            ),
            (
                "DELETE",
                "/v1/items/1",
                &[("content-length", "0"), ("te", "gzip"), ("upgrade", "h2c")],
                "",
            ),
            (
                "GET",
                "/",
                &[
                    ("cookie", "a=1"),
                    ("cookie", "b=2"),
                    ("proxy-authorization", "x"),
                ],
                "",
            ),
            (
                "GET",
                "/",
                &[("content-length", "0"), ("connection", "content-length")],
                "",
            ),
            // `Host` listed in `Connection`; an authority in the target with and without `Host`.
            (
                "GET",
                "/",
                &[("connection", "host"), ("host", "h"), ("te", "trailers")],
                "",
            ),
            ("GET", "http://example.com/x", &[("te", "trailers")], ""),
            (
                "GET",
                "http://example.com/x",
                &[("host", "h"), ("content-length", "x")],
                "",
            ),
            (
                "GET",
                "/",
                &[
                    ("x-http-method-override", "DELETE"),
                    ("x-method-override", "PUT"),
                ],
                "",
            ),
        ];
        cases
            .iter()
            .map(|(method, target, headers, body)| {
                let mut req = Request::new(Full::new(bytes::Bytes::from(body.to_string())));
                *req.method_mut() = method.parse().unwrap_or_default();
                *req.uri_mut() = target.parse().unwrap_or_default();
                for (n, v) in headers.iter() {
                    if let (Ok(n), Ok(v)) = (
                        header::HeaderName::from_bytes(n.as_bytes()),
                        HeaderValue::from_str(v),
                    ) {
                        req.headers_mut().append(n, v);
                    }
                }
                req
            })
            .collect()
    }

    #[test]
    fn the_written_head_is_what_the_prepared_request_sends() {
        let identity = identity();
        let (ip, rid) = (value("203.0.113.9"), value("req-1"));
        let mut compared = 0;
        for (prefix, preserve_host, signing) in [
            ("x-auth-", false, false),
            ("x-auth-", true, true),
            ("x-", false, true),
        ] {
            let plan = plan(prefix, preserve_host, signing);
            for req in corpus() {
                for (identity, normalized, https, keep_mo) in [
                    (Some(&identity), None, false, false),
                    (None, Some("/v1/items/x"), true, true),
                ] {
                    let fwd = Forward {
                        client_ip: &ip,
                        identity,
                        request_id: &rid,
                        normalized_path: normalized,
                        keep_method_override: keep_mo,
                        https,
                    };
                    let mut direct = Vec::new();
                    let framing = plan.encode_request(&req, &fwd, &mut direct);
                    let mut prepared = req.clone();
                    plan.prepare_request(&mut prepared, &fwd);
                    let mut expected = Vec::new();
                    let expected_framing = encode_head(&prepared, &mut expected);
                    let (start, mut got) = fields(&direct);
                    let (want_start, mut want) = fields(&expected);
                    // The signature carries the second it was made; the rest must match.
                    let sig = format!("{prefix}signature");
                    assert_eq!(got.remove(&sig).is_some(), signing, "{start}");
                    assert_eq!(want.remove(&sig).is_some(), signing, "{start}");
                    assert_eq!((start, got, framing), (want_start, want, expected_framing));
                    compared += 1;
                }
            }
        }
        assert_eq!(compared, 60);
    }

    /// An honoured method override still goes when it is inside the identity namespace.
    #[test]
    fn an_honoured_override_in_the_identity_namespace_is_not_forwarded() {
        let (ip, rid) = (value("203.0.113.9"), value("req-1"));
        let fwd = Forward {
            client_ip: &ip,
            identity: None,
            request_id: &rid,
            normalized_path: None,
            keep_method_override: true,
            https: false,
        };
        let mut req = Request::new(Full::new(bytes::Bytes::new()));
        req.headers_mut()
            .insert("x-http-method-override", HeaderValue::from_static("DELETE"));
        for (prefix, forwarded) in [("x-auth-", true), ("x-", false), ("x-http-", false)] {
            let mut head = Vec::new();
            plan(prefix, false, false).encode_request(&req, &fwd, &mut head);
            let (_, fields) = fields(&head);
            assert_eq!(
                fields.contains_key("x-http-method-override"),
                forwarded,
                "{prefix}"
            );
        }
    }

    fn identity() -> crate::auth::Identity {
        use crate::key::{Environment, KeyFormat, KeyHasher, KeyType, Labels};
        let mut new = crate::store::NewRecord::new("acct_1", Environment::Live, KeyType::Secret);
        new.scopes = vec!["items:read".into(), "items:write".into()];
        let format = KeyFormat::new(&Labels::default()).unwrap_or_else(|e| panic!("{e}"));
        let now = crate::time::Timestamp::from_unix(1_000);
        let minted = new.mint(&format, &KeyHasher::new(None), now);
        let (_, record) = minted.unwrap_or_else(|e| panic!("{e}"));
        crate::auth::Identity::for_tests(record).unwrap_or_else(|| panic!("identity values"))
    }
}
