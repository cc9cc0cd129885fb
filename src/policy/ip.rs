//! Client addresses: who is calling (the socket peer, or the right-most untrusted hop of
//! `Forwarded` / `X-Forwarded-For` when the peer is a trusted proxy), and the address per-IP
//! limits count. IPv4-mapped IPv6 addresses are treated as IPv4 throughout.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};

pub use crate::net::IpSet;

/// The de-facto forwarding header (`Forwarded` is the standard one).
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The client's address. Forwarding headers count only when `peer` is a trusted proxy; then
/// the right-most hop that is not itself trusted is the client. A header from a trusted proxy
/// that cannot be parsed means the address is unknown: `None`, and the caller fails closed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &IpSet) -> Option<IpAddr> {
    let peer = peer.to_canonical();
    if trusted.is_empty() || !trusted.contains(peer) {
        return Some(peer);
    }
    let hops: Vec<Option<IpAddr>> = if headers.contains_key(FORWARDED) {
        headers
            .get_all(FORWARDED)
            .iter()
            .flat_map(|v| {
                v.to_str()
                    .ok()
                    .map(|s| s.split(',').map(forwarded_for).collect::<Vec<_>>())
                    .unwrap_or(vec![None])
            })
            .collect()
    } else {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .flat_map(|v| {
                v.to_str()
                    .ok()
                    .map(|s| s.split(',').map(parse_hop).collect::<Vec<_>>())
                    .unwrap_or(vec![None])
            })
            .collect()
    };
    if hops.is_empty() {
        return Some(peer);
    }
    let mut leftmost = None;
    for hop in hops.iter().rev() {
        let ip = (*hop)?.to_canonical();
        if !trusted.contains(ip) {
            return Some(ip);
        }
        leftmost = Some(ip);
    }
    leftmost
}

/// The `for=` address of one `Forwarded` element (RFC 7239), if it is an address.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| parse_hop(v.trim().trim_matches('"')))?
    })
}

/// `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`, `[2001:db8::1]:443`.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The address per-IP limits count: the address, or its /64 for IPv6 (one host usually owns
/// a whole /64, so counting single IPv6 addresses would be no limit at all).
pub fn limit_subject(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            u128::from(v6) & !((1u128 << 64) - 1),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted() -> IpSet {
        IpSet::new(&["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()])
    }

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peers_cannot_claim_an_address() {
        let hdr = h(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &hdr, &trusted()),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            client_ip(ip("203.0.113.9"), &hdr, &IpSet::default()),
            Some(ip("203.0.113.9"))
        );
    }

    #[test]
    fn right_most_untrusted_hop_wins() {
        let hdr = h(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &hdr, &trusted()),
            Some(ip("198.51.100.7"))
        );
        let hdr = h(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.7:4242"),
        ]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &hdr, &trusted()),
            Some(ip("198.51.100.7"))
        );
        let hdr = h(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::7]:443\";proto=https",
        )]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.2"), &hdr, &trusted()),
            Some(ip("2001:db8::7"))
        );
        // All hops trusted: the left-most.
        let hdr = h(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &hdr, &trusted()),
            Some(ip("10.9.9.9"))
        );
        // No header from a trusted proxy: the proxy itself.
        assert_eq!(
            client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted()),
            Some(ip("10.0.0.2"))
        );
    }

    #[test]
    fn unparseable_hops_fail_closed() {
        for v in ["garbage", "1.2.3.4, nonsense", "unknown"] {
            let hdr = h(&[("x-forwarded-for", v)]);
            assert_eq!(client_ip(ip("10.0.0.2"), &hdr, &trusted()), None, "{v}");
        }
        let hdr = h(&[("forwarded", "for=unknown")]);
        assert_eq!(client_ip(ip("10.0.0.2"), &hdr, &trusted()), None);
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        assert_eq!(
            limit_subject(ip("2001:db8:aa:bb:1:2:3:4")),
            ip("2001:db8:aa:bb::")
        );
        assert_eq!(limit_subject(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
