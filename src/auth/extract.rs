//! Credential extraction: the first stage that reads attacker-controlled bytes, so it is strict
//! and cheap. The length cap applies before anything is hashed; a credential sent twice, or in two
//! carriers with different values, is refused rather than guessed at.

use std::borrow::Cow;

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName};

use super::{AuthFailure, InvalidKey};
use crate::config::Carrier;

/// The `X-Api-Key` carrier.
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// A credential as found in the request. Borrows the header (Basic: decoded); never logged.
pub struct Credential<'a> {
    pub key: Cow<'a, str>,
    pub carrier: Carrier,
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({:?}, <redacted>)", self.carrier)
    }
}

/// What an `Authorization` header holds, by its scheme.
enum Scheme<'a> {
    Bearer(&'a [u8]),
    Basic(&'a [u8]),
    /// Another scheme (or none): not keygate's unless nothing else carries a key.
    Other,
}

fn scheme(v: &[u8]) -> Scheme<'_> {
    if let Some(rest) = after_scheme(v, b"bearer") {
        Scheme::Bearer(rest)
    } else if let Some(rest) = after_scheme(v, b"basic") {
        Scheme::Basic(rest)
    } else {
        Scheme::Other
    }
}

/// Finds the credential among `carriers` (in order of precedence).
///
/// `allowed` is the subset the matched route accepts: a credential found in a configured but
/// disallowed carrier is `invalid_key` (e.g. Bearer on an `X-Api-Key`-only route). An
/// `Authorization` header in a scheme keygate does not take there (`Basic` when the Basic
/// carrier is off, `Digest`, …) belongs to someone else: ignored when another carrier holds the
/// key, `invalid_key` (not Bearer) when none does.
pub fn extract<'a>(
    headers: &'a HeaderMap,
    carriers: &[Carrier],
    allowed: &[Carrier],
    max_len: usize,
) -> Result<Credential<'a>, AuthFailure> {
    let mut found: Option<Credential<'a>> = None;
    let mut foreign_authorization = false;
    let mut authorization_seen = false;
    for &carrier in carriers {
        let name = match carrier {
            Carrier::Bearer | Carrier::Basic => &AUTHORIZATION,
            Carrier::ApiKeyHeader => &X_API_KEY,
        };
        let mut values = crate::fields::values(headers, name);
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err(InvalidKey::Ambiguous.into());
        }
        let raw = value.as_bytes();
        if raw.len() > max_len * 2 + 16 {
            return Err(InvalidKey::TooLong.into());
        }
        let (carrier, token) = if carrier == Carrier::ApiKeyHeader {
            (carrier, Scheme::Bearer(raw))
        } else {
            // Bearer and Basic share the header: it is read once, by its scheme.
            if std::mem::replace(&mut authorization_seen, true) {
                continue;
            }
            match scheme(raw) {
                Scheme::Bearer(rest) if carriers.contains(&Carrier::Bearer) => {
                    (Carrier::Bearer, Scheme::Bearer(rest))
                }
                Scheme::Basic(rest) if carriers.contains(&Carrier::Basic) => {
                    (Carrier::Basic, Scheme::Basic(rest))
                }
                _ => {
                    foreign_authorization = true;
                    continue;
                }
            }
        };
        if !allowed.contains(&carrier) {
            return Err(InvalidKey::WrongCarrier.into());
        }
        let token: Cow<'a, [u8]> = match token {
            Scheme::Basic(b64) => Cow::Owned(basic_username(b64)?),
            Scheme::Bearer(t) => Cow::Borrowed(t),
            Scheme::Other => continue,
        };
        let key = checked(token, max_len)?;
        match &found {
            None => found = Some(Credential { key, carrier }),
            // The same key in both carriers is harmless; different keys are an ambiguity.
            Some(first) if first.key == key => {}
            Some(_) => return Err(InvalidKey::Ambiguous.into()),
        }
    }
    match found {
        Some(c) => Ok(c),
        None if foreign_authorization => Err(InvalidKey::NotBearer.into()),
        None => Err(AuthFailure::Missing),
    }
}

/// The key in `token`: trimmed, not empty, not too long, visible ASCII.
fn checked(token: Cow<'_, [u8]>, max_len: usize) -> Result<Cow<'_, str>, AuthFailure> {
    let trimmed = trim_ows(&token);
    if trimmed.len() > max_len {
        return Err(InvalidKey::TooLong.into());
    }
    if trimmed.is_empty() {
        return Err(AuthFailure::Invalid(InvalidKey::Format(
            crate::key::KeyFormatError::Malformed,
        )));
    }
    // Visible ASCII only: no spaces, controls, or bytes ≥ 0x80 (which also rules out bad UTF-8).
    // Every byte is looked at (no early exit), so the check runs 16 or 32 bytes at a time.
    if trimmed
        .iter()
        .fold(false, |bad, &b| bad | !(0x21..=0x7e).contains(&b))
    {
        return Err(InvalidKey::BadCharacters.into());
    }
    let (start, len) = (
        trimmed.as_ptr() as usize - token.as_ptr() as usize,
        trimmed.len(),
    );
    match token {
        Cow::Borrowed(b) => std::str::from_utf8(&b[start..start + len])
            .map(Cow::Borrowed)
            .map_err(|_| InvalidKey::BadCharacters.into()),
        Cow::Owned(mut v) => {
            v.truncate(start + len);
            v.drain(..start);
            String::from_utf8(v)
                .map(Cow::Owned)
                .map_err(|_| InvalidKey::BadCharacters.into())
        }
    }
}

/// The username of `Basic <base64(user:password)>` — Stripe's `curl -u sk_live_…:` — with an
/// empty password; anything else is not a key sent this way.
fn basic_username(b64: &[u8]) -> Result<Vec<u8>, AuthFailure> {
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(trim_ows(b64))
        .map_err(|_| InvalidKey::BadBasic)?;
    match decoded.iter().position(|&b| b == b':') {
        Some(i) if i + 1 == decoded.len() => {
            let mut user = decoded;
            user.truncate(i);
            Ok(user)
        }
        _ => Err(InvalidKey::BadBasic.into()),
    }
}

/// What follows `<scheme>` and at least one space, the scheme in any case.
fn after_scheme<'v>(v: &'v [u8], scheme: &[u8]) -> Option<&'v [u8]> {
    if v.len() <= scheme.len() || !v[..scheme.len()].eq_ignore_ascii_case(scheme) {
        return None;
    }
    let rest = &v[scheme.len()..];
    matches!(rest.first(), Some(b' ' | b'\t')).then_some(rest)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const BOTH: &[Carrier] = &[Carrier::Bearer, Carrier::ApiKeyHeader];

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn code(h: &HeaderMap) -> Result<(String, Carrier), String> {
        extract(h, BOTH, BOTH, 64)
            .map(|c| (c.key.into_owned(), c.carrier))
            .map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn finds_either_carrier() {
        assert_eq!(
            code(&headers(&[("authorization", b"Bearer sk_1")])),
            Ok(("sk_1".into(), Carrier::Bearer))
        );
        assert_eq!(
            code(&headers(&[("authorization", b"bEaReR   sk_1 ")])),
            Ok(("sk_1".into(), Carrier::Bearer))
        );
        assert_eq!(
            code(&headers(&[("x-api-key", b"sk_2")])),
            Ok(("sk_2".into(), Carrier::ApiKeyHeader))
        );
        assert_eq!(
            code(&headers(&[
                ("authorization", b"Bearer sk_1"),
                ("x-api-key", b"sk_1")
            ])),
            Ok(("sk_1".into(), Carrier::Bearer))
        );
    }

    #[test]
    fn refuses_ambiguity_and_junk() {
        type Headers<'a> = &'a [(&'a str, &'a [u8])];
        let cases: &[(Headers, &str)] = &[
            (&[], "Missing"),
            (
                &[("authorization", b"Bearer a"), ("x-api-key", b"b")],
                "Ambiguous",
            ),
            (&[("x-api-key", b"a"), ("x-api-key", b"a")], "Ambiguous"),
            (
                &[
                    ("authorization", b"Bearer a"),
                    ("authorization", b"Bearer a"),
                ],
                "Ambiguous",
            ),
            (&[("authorization", b"Basic dXNlcjpwYXNz")], "NotBearer"),
            (&[("authorization", b"Bearer")], "NotBearer"),
            (&[("authorization", b"Bearerx")], "NotBearer"),
            (&[("authorization", b"Bearer  ")], "Malformed"),
            (&[("x-api-key", b"sk_\xff\xfe")], "BadCharacters"),
            (&[("x-api-key", b"sk_a b")], "BadCharacters"),
            (&[("x-api-key", b"sk_a\tb")], "BadCharacters"),
        ];
        for (h, want) in cases {
            let got = code(&headers(h)).unwrap_err();
            assert!(got.contains(want), "{h:?}: {got}");
        }
        let long = vec![b'a'; 65];
        assert!(
            code(&headers(&[("x-api-key", &long)]))
                .unwrap_err()
                .contains("TooLong")
        );
        let mut huge = b"Bearer ".to_vec();
        huge.extend(vec![b'a'; 10_000]);
        assert!(
            code(&headers(&[("authorization", &huge)]))
                .unwrap_err()
                .contains("TooLong")
        );
    }

    #[test]
    fn basic_carries_the_key_as_username_when_enabled() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let all = &[Carrier::Bearer, Carrier::ApiKeyHeader, Carrier::Basic];
        let get = |h: &HeaderMap, carriers: &[Carrier]| {
            extract(h, carriers, carriers, 64)
                .map(|c| (c.key.into_owned(), c.carrier))
                .map_err(|e| format!("{e:?}"))
        };
        let basic = format!("Basic {}", b64("sk_1:"));
        let h = headers(&[("authorization", basic.as_bytes())]);
        assert_eq!(get(&h, all), Ok(("sk_1".into(), Carrier::Basic)));
        // Off: a Basic header is someone else's; alone it is still not a key.
        assert!(get(&h, BOTH).unwrap_err().contains("NotBearer"));
        // Beside a key in X-Api-Key, an unrelated Basic (or Digest) is ignored.
        let user_pass = format!("Basic {}", b64("user:pass"));
        for other in [user_pass.as_str(), "Digest username=\"u\""] {
            let h = headers(&[("authorization", other.as_bytes()), ("x-api-key", b"sk_2")]);
            assert_eq!(
                get(&h, BOTH),
                Ok(("sk_2".into(), Carrier::ApiKeyHeader)),
                "{other}"
            );
        }
        // On: a password, bad base64 or a different key beside X-Api-Key are refused.
        for bad in [
            user_pass.clone(),
            "Basic !!!".into(),
            format!("Basic {}", b64("sk_1")),
        ] {
            let h = headers(&[("authorization", bad.as_bytes())]);
            assert!(get(&h, all).unwrap_err().contains("BadBasic"), "{bad}");
        }
        let h = headers(&[("authorization", basic.as_bytes()), ("x-api-key", b"sk_2")]);
        assert!(get(&h, all).unwrap_err().contains("Ambiguous"));
        let h = headers(&[("authorization", basic.as_bytes()), ("x-api-key", b"sk_1")]);
        assert_eq!(get(&h, all), Ok(("sk_1".into(), Carrier::Basic)));
        // A route without Basic: the Basic credential is the wrong carrier there.
        let h = headers(&[("authorization", basic.as_bytes())]);
        let err = extract(&h, all, &[Carrier::ApiKeyHeader], 64).unwrap_err();
        assert!(matches!(
            err,
            AuthFailure::Invalid(InvalidKey::WrongCarrier)
        ));
    }

    #[test]
    fn wrong_carrier_for_route() {
        let h = headers(&[("authorization", b"Bearer sk_1")]);
        let err = extract(&h, BOTH, &[Carrier::ApiKeyHeader], 64).unwrap_err();
        assert!(matches!(
            err,
            AuthFailure::Invalid(InvalidKey::WrongCarrier)
        ));
        // A carrier keygate is not configured to read is the upstream's business.
        let only_api_key = [Carrier::ApiKeyHeader];
        assert!(matches!(
            extract(&h, &only_api_key, &only_api_key, 64),
            Err(AuthFailure::Missing)
        ));
    }
}
