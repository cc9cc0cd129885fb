//! Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded in either direction, and neither is any
//! header a message's `Connection` header names.

use http::header::{self, HeaderMap, HeaderName};

pub(super) static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 §7.6.1 plus the legacy `Proxy-Connection`): never forwarded.
pub(super) static HOP_BY_HOP: [&HeaderName; 9] = [
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

/// Whether a field name (a token, as sent: any case) is hop-by-hop by definition (the names a
/// `Connection` header lists are too).
/// By length first: every upstream response field passes here.
pub fn is_hop_by_hop_name(name: &[u8]) -> bool {
    let is = |n: &[u8]| crate::fields::name_is(name, n);
    match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        14 => is(b"http2-settings"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        19 => is(b"proxy-authorization"),
        _ => false,
    }
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
pub(super) fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    crate::fields::values(headers, &header::CONNECTION)
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn the_name_match_is_the_list() {
        for h in HOP_BY_HOP {
            let name = h.as_str();
            assert!(is_hop_by_hop_name(name.as_bytes()), "{name}");
            assert!(
                is_hop_by_hop_name(name.to_ascii_uppercase().as_bytes()),
                "{name}"
            );
            assert!(!is_hop_by_hop_name(&name.as_bytes()[1..]), "{name}");
            assert!(!is_hop_by_hop_name(format!("{name}x").as_bytes()), "{name}");
        }
        let named = HOP_BY_HOP.iter().map(|h| h.as_str().len());
        let lengths: std::collections::BTreeSet<usize> = named.collect();
        for len in 0..=24 {
            // Names of other lengths, made of a listed name's letters, are never taken.
            if !lengths.contains(&len) {
                assert!(!is_hop_by_hop_name(
                    "connection-keep-alive-te".as_bytes()[..len].as_ref()
                ));
            }
        }
        for other in ["content-length", "x-upgrade", "tes", "date", "server"] {
            assert!(!is_hop_by_hop_name(other.as_bytes()), "{other}");
        }
    }

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
}
