//! Address sets: the global lists, trusted proxies and per-key allowlists are all an [`IpSet`].
//! IPv4-mapped IPv6 addresses are treated as IPv4 throughout.

use std::net::IpAddr;

use ipnet::IpNet;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
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
    }
}
