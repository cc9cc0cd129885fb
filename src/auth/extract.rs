//! Credential extraction: the first stage that reads attacker-controlled bytes, so it is strict
//! and cheap. The length cap applies before anything is hashed; a credential sent twice, or in two
//! carriers with different values, is refused rather than guessed at.

use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderName};

use super::{AuthFailure, InvalidKey};
use crate::config::Carrier;

/// The `X-Api-Key` carrier.
pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// A credential as found in the request. Borrows the header; never logged.
pub struct Credential<'a> {
    pub key: &'a str,
    pub carrier: Carrier,
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credential({:?}, <redacted>)", self.carrier)
    }
}

/// Finds the credential among `carriers` (in order of precedence).
///
/// `allowed` is the subset the matched route accepts: a credential found in a configured but
/// disallowed carrier is `invalid_key` (e.g. Bearer on an `X-Api-Key`-only route).
pub fn extract<'a>(
    headers: &'a HeaderMap,
    carriers: &[Carrier],
    allowed: &[Carrier],
    max_len: usize,
) -> Result<Credential<'a>, AuthFailure> {
    let mut found: Option<Credential<'a>> = None;
    for &carrier in carriers {
        let name = match carrier {
            Carrier::Bearer => &AUTHORIZATION,
            Carrier::ApiKeyHeader => &X_API_KEY,
        };
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else { continue };
        if values.next().is_some() {
            return Err(InvalidKey::Ambiguous.into());
        }
        if !allowed.contains(&carrier) {
            return Err(InvalidKey::WrongCarrier.into());
        }
        let raw = value.as_bytes();
        let token = match carrier {
            Carrier::Bearer => {
                if raw.len() > max_len + BEARER.len() + 8 {
                    return Err(InvalidKey::TooLong.into());
                }
                strip_bearer(raw).ok_or(InvalidKey::NotBearer)?
            }
            Carrier::ApiKeyHeader => raw,
        };
        let token = trim_ows(token);
        if token.len() > max_len {
            return Err(InvalidKey::TooLong.into());
        }
        if token.is_empty() {
            return Err(AuthFailure::Invalid(InvalidKey::Format(
                crate::key::KeyFormatError::Malformed,
            )));
        }
        // Visible ASCII only: no spaces, controls, or bytes ≥ 0x80 (which also rules out bad UTF-8).
        if !token.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return Err(InvalidKey::BadCharacters.into());
        }
        let key = std::str::from_utf8(token).map_err(|_| InvalidKey::BadCharacters)?;
        match &found {
            None => found = Some(Credential { key, carrier }),
            // The same key in both carriers is harmless; different keys are an ambiguity.
            Some(first) if first.key == key => {}
            Some(_) => return Err(InvalidKey::Ambiguous.into()),
        }
    }
    found.ok_or(AuthFailure::Missing)
}

const BEARER: &[u8] = b"bearer";

/// `Bearer <token>` with a case-insensitive scheme and at least one space.
fn strip_bearer(v: &[u8]) -> Option<&[u8]> {
    if v.len() <= BEARER.len() || !v[..BEARER.len()].eq_ignore_ascii_case(BEARER) {
        return None;
    }
    let rest = &v[BEARER.len()..];
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
            .map(|c| (c.key.to_owned(), c.carrier))
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
