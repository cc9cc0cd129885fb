//! Client addresses: who is calling (the socket peer, or the right-most untrusted hop of
//! `Forwarded` / `X-Forwarded-For` when the peer is a trusted proxy), and address lists.
//! IPv4-mapped IPv6 addresses are treated as IPv4 throughout.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;

use crate::proxy::headers::X_FORWARDED_FOR;

/// A list of addresses and networks.
#[derive(Clone, Debug, Default)]
pub struct IpSet {
    nets: Vec<IpNet>,
}

impl IpSet {
    pub fn new(nets: &[IpNet]) -> Self {
        IpSet {
            nets: IpNet::aggregate(&nets.to_vec()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }
}

/// Whether a per-key allowlist admits `ip` (an empty list admits everyone).
pub fn allowlist_admits(list: &[IpNet], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    list.is_empty()
        || list.iter().any(|n| match (n, ip) {
            // A stored IPv4-mapped network matches the IPv4 client too.
            (IpNet::V6(v6), IpAddr::V4(v4)) => v6.contains(&v4.to_ipv6_mapped()),
            _ => n.contains(&ip),
        })
}

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

/// The subject for per-IP limits: the address, or its /64 for IPv6 (one host usually owns one).
pub fn limit_subject(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
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
    fn lists_and_mapped_addresses() {
        let allow = [
            "2001:db8::/32".parse().unwrap(),
            "192.0.2.0/24".parse().unwrap(),
        ];
        assert!(allowlist_admits(&allow, ip("2001:db8:1::5")));
        assert!(allowlist_admits(&allow, ip("::ffff:192.0.2.44")));
        assert!(!allowlist_admits(&allow, ip("198.51.100.1")));
        assert!(allowlist_admits(&[], ip("198.51.100.1")));
        let set = IpSet::new(&allow);
        assert!(set.contains(ip("::ffff:192.0.2.1")) && !set.contains(ip("2001:db9::1")));
        assert_eq!(
            limit_subject(ip("2001:db8:aa:bb:1:2:3:4")),
            "2001:db8:aa:bb::/64"
        );
        assert_eq!(limit_subject(ip("::ffff:192.0.2.1")), "192.0.2.1");
    }
}
