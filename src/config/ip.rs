//! `[ip]`: trusted proxies and the global allow and deny lists.

use ipnet::IpNet;
use serde::Deserialize;

use super::check::Check;

#[derive(Clone, Debug, Default)]
pub struct IpConfig {
    /// Peers whose `Forwarded` / `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawIp {
    trusted_proxies: Option<Vec<String>>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
}

pub(super) fn validate(c: &mut Check<'_>, raw: RawIp) -> IpConfig {
    let nets = |c: &mut Check<'_>, field: &str, v: Option<Vec<String>>| -> Vec<IpNet> {
        v.unwrap_or_default()
            .into_iter()
            .filter_map(|s| match parse_net(&s) {
                Some(n) => Some(n),
                None => {
                    c.problem(format!("{field}: {s:?} is not an IP address or CIDR"));
                    None
                }
            })
            .collect()
    };
    IpConfig {
        trusted_proxies: nets(c, "ip.trusted_proxies", raw.trusted_proxies),
        allow: nets(c, "ip.allow", raw.allow),
        deny: nets(c, "ip.deny", raw.deny),
    }
}

/// An address (`10.0.0.1`, `::1`) or a network (`10.0.0.0/8`); IPv4-mapped IPv6 is taken as IPv4.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    let net = match s.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => IpNet::from(s.parse::<std::net::IpAddr>().ok()?),
    };
    Some(
        match net {
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                Some(v4) if v6.prefix_len() >= 96 => {
                    IpNet::V4(ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).ok()?)
                }
                _ => net,
            },
            v4 => v4,
        }
        .trunc(),
    )
}
