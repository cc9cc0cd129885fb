//! Client addresses: who is calling (the socket peer, or the right-most untrusted hop of
//! `Forwarded` / `X-Forwarded-For` when the peer is a trusted proxy), and address lists.
//! IPv4-mapped IPv6 addresses are treated as IPv4 throughout.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::FORWARDED;
use ipnet::IpNet;

use crate::proxy::headers::X_FORWARDED_FOR;

/// A list of addresses and networks, as sorted disjoint ranges: a lookup is a binary search,
/// so a 1,000-entry list costs about what a 10-entry one does.
#[derive(Clone, Debug, Default)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

impl IpSet {
    pub fn new(nets: &[IpNet]) -> Self {
        let mut set = IpSet::default();
        // `aggregate` merges overlapping and adjacent networks and sorts them.
        let nets: Vec<IpNet> = nets.iter().map(|n| canonical_net(*n)).collect();
        for net in IpNet::aggregate(&nets) {
            match net {
                IpNet::V4(n) => set
                    .v4
                    .push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => set
                    .v6
                    .push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        fn find<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
            let i = ranges.partition_point(|(start, _)| *start <= x);
            i > 0 && ranges[i - 1].1 >= x
        }
        match ip.to_canonical() {
            IpAddr::V4(v4) => find(&self.v4, u32::from(v4)),
            IpAddr::V6(v6) => find(&self.v6, u128::from(v6)),
        }
    }
}

/// IPv4-mapped IPv6 networks (`::ffff:10.0.0.0/104`) as the IPv4 networks they stand for.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
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
    fn lists_and_mapped_addresses() {
        let allow = [
            "2001:db8::/32".parse().unwrap(),
            "192.0.2.0/24".parse().unwrap(),
        ];
        let set = IpSet::new(&allow);
        assert!(set.contains(ip("2001:db8:1::5")));
        assert!(set.contains(ip("::ffff:192.0.2.44")));
        assert!(!set.contains(ip("198.51.100.1")));
        assert!(IpSet::new(&[]).is_empty());
        assert!(set.contains(ip("::ffff:192.0.2.1")) && !set.contains(ip("2001:db9::1")));
        let mapped = IpSet::new(&["::ffff:10.0.0.0/104".parse().unwrap()]);
        assert!(mapped.contains(ip("10.1.2.3")) && !mapped.contains(ip("11.0.0.1")));
        // Boundaries of ranges, and many disjoint ones.
        let many: Vec<IpNet> = (0..200u32)
            .map(|i| format!("10.{i}.0.0/24").parse().unwrap())
            .collect();
        let set = IpSet::new(&many);
        assert!(
            set.contains(ip("10.0.0.0"))
                && set.contains(ip("10.199.0.255"))
                && set.contains(ip("10.57.0.128"))
        );
        assert!(
            !set.contains(ip("10.57.1.0"))
                && !set.contains(ip("9.255.255.255"))
                && !set.contains(ip("10.200.0.0"))
        );
        assert_eq!(
            limit_subject(ip("2001:db8:aa:bb:1:2:3:4")),
            ip("2001:db8:aa:bb::")
        );
        assert_eq!(limit_subject(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
