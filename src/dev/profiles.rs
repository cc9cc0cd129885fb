//! The shipped seed profiles (`deploy/profiles/*.toml`, built into the binary), and what
//! `keygate dev --profile NAME` shows of each: keys minted for the demonstration and the curl
//! lines that show the profile's contract.

use std::fmt::Write as _;

use crate::key::{Environment, KeyType};
use crate::manage::{KeyTool, ManageError};
use crate::store::{KeyRateLimit, NewRecord};

/// One seed system's contract, as configuration.
pub struct Profile {
    pub name: &'static str,
    /// Which seed document it reproduces.
    pub seed: &'static str,
    pub config: &'static str,
}

pub const PROFILES: &[Profile] = &[
    Profile {
        name: "zentra",
        seed: "shared/seeds/000",
        config: include_str!("../../deploy/profiles/zentra.toml"),
    },
    Profile {
        name: "zendfi",
        seed: "shared/seeds/001 and 003",
        config: include_str!("../../deploy/profiles/zendfi.toml"),
    },
    Profile {
        name: "zaropay",
        seed: "shared/seeds/002",
        config: include_str!("../../deploy/profiles/zaropay.toml"),
    },
    Profile {
        name: "zynta",
        seed: "shared/seeds/004",
        config: include_str!("../../deploy/profiles/zynta.toml"),
    },
];

impl Profile {
    pub fn named(name: &str) -> Option<&'static Profile> {
        PROFILES.iter().find(|p| p.name == name)
    }

    /// Mints the demonstration keys and returns the curl lines to try.
    pub(super) async fn demo(
        &self,
        tool: &KeyTool,
        url: &str,
        env: Environment,
    ) -> Result<String, ManageError> {
        let mint = |scopes: &[&str], edit: &dyn Fn(&mut NewRecord)| {
            let mut req = NewRecord {
                name: Some(format!("{} demo", self.name)),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                ..NewRecord::new("acct_demo", env, KeyType::Secret)
            };
            edit(&mut req);
            async move { tool.create(req, "dev").await.map(|(k, _)| k.key) }
        };
        let five = |r: &mut NewRecord| {
            r.rate_limit = Some(KeyRateLimit::Explicit {
                limit: 5,
                window_secs: 60,
            });
        };
        let nothing = |_: &mut NewRecord| {};
        let mut out = String::new();
        let mut line = |what: &str, cmd: String| {
            let _ = writeln!(out, "  # {what}\n  {cmd}\n");
        };
        let loop6 = |cmd: String| {
            format!("for i in 1 2 3 4 5 6; do {cmd} -o /dev/null -w '%{{http_code}} '; done; echo")
        };
        match self.name {
            "zentra" => {
                let write = mint(&["write"], &nothing).await?;
                let read = mint(&["read"], &nothing).await?;
                let limited = mint(&["write"], &five).await?;
                line(
                    "200: a write key (Bearer only)",
                    format!("curl -s {url}/v1/transfers -H 'Authorization: Bearer {write}'"),
                );
                line(
                    "401 unauthorized: no key",
                    format!("curl -s {url}/v1/transfers"),
                );
                line(
                    "401 invalid_key: a malformed key",
                    format!("curl -s {url}/v1/transfers -H 'Authorization: Bearer sk_live_oops'"),
                );
                line(
                    "403 insufficient_scope: a read-only key may only GET",
                    format!("curl -s -X POST {url}/v1/transfers -H 'Authorization: Bearer {read}'"),
                );
                line(
                    "429 after 5 (this key's own limit; the default is 1,000/min)",
                    loop6(format!(
                        "curl -s {url}/v1/transfers -H 'Authorization: Bearer {limited}'"
                    )),
                );
            }
            "zendfi" => {
                let full = mint(&[], &nothing).await?;
                let read = mint(&["payments_read"], &nothing).await?;
                line(
                    "200: a key with the default scope (full_access); X-RateLimit-* per merchant",
                    format!(
                        "curl -si {url}/api/v1/payments -H 'Authorization: Bearer {full}' | grep -i '^x-ratelimit\\|^HTTP'"
                    ),
                );
                line("401: no key", format!("curl -s {url}/api/v1/payments"));
                line(
                    "403: a payments_read key creating a payment",
                    format!(
                        "curl -s -X POST {url}/api/v1/payments -H 'Authorization: Bearer {read}'"
                    ),
                );
                line(
                    "429: payment creation is 50 per hour per merchant",
                    format!(
                        "for i in $(seq 51); do curl -s -X POST {url}/api/v1/payments -H 'Authorization: Bearer {full}' -o /dev/null -w '%{{http_code}} '; done; echo"
                    ),
                );
            }
            "zaropay" => {
                let key = mint(&[], &nothing).await?;
                let pinned = mint(&[], &|r: &mut NewRecord| {
                    r.ip_allowlist =
                        vec![ipnet::IpNet::from(std::net::IpAddr::from([203, 0, 113, 7]))];
                })
                .await?;
                let limited = mint(&[], &five).await?;
                line(
                    "200: X-Api-Key (zp_<env>_sk_<keyId>_<secret>); RateLimit-* headers",
                    format!(
                        "curl -si {url}/v1/deposits -H 'X-Api-Key: {key}' | grep -i '^ratelimit\\|^HTTP'"
                    ),
                );
                line(
                    "401 INVALID_API_KEY: Bearer is not accepted on these routes",
                    format!("curl -s {url}/v1/deposits -H 'Authorization: Bearer {key}'"),
                );
                line(
                    "401 INVALID_API_KEY: no key",
                    format!("curl -s {url}/v1/deposits"),
                );
                line(
                    "403 IP_NOT_ALLOWED: a key allowlisted to 203.0.113.7 (echoes your IP)",
                    format!("curl -s {url}/v1/deposits -H 'X-Api-Key: {pinned}'"),
                );
                line(
                    "429 after 5 (this key's own limit; the default is 120 per 60 s window)",
                    loop6(format!(
                        "curl -s {url}/v1/deposits -H 'X-Api-Key: {limited}'"
                    )),
                );
            }
            "zynta" => {
                let all = mint(&["all"], &nothing).await?;
                let read = mint(&["quotes:read"], &nothing).await?;
                let ng_ke = mint(&["all"], &|r: &mut NewRecord| {
                    r.restrictions =
                        [("country".to_owned(), vec!["NG".to_owned(), "KE".to_owned()])].into();
                })
                .await?;
                let pinned = mint(&["all"], &|r: &mut NewRecord| {
                    r.ip_allowlist =
                        vec![ipnet::IpNet::from(std::net::IpAddr::from([203, 0, 113, 7]))];
                })
                .await?;
                line(
                    "200: x-api-key with the all scope",
                    format!("curl -s {url}/api/v1/quotes -H 'x-api-key: {all}'"),
                );
                line("401: no key", format!("curl -s {url}/api/v1/quotes"));
                line(
                    "403: a quotes:read key creating a quote (the message names quotes:write)",
                    format!(
                        "curl -s -X POST {url}/api/v1/quotes -H 'x-api-key: {read}' -d '{{\"destinationCountry\":\"NG\"}}'"
                    ),
                );
                line(
                    "200, then 403: a key restricted to NG and KE",
                    format!(
                        "curl -s -X POST {url}/api/v1/quotes -H 'x-api-key: {ng_ke}' -d '{{\"destinationCountry\":\"KE\"}}' -o /dev/null -w '%{{http_code}}\\n'; curl -s -X POST {url}/api/v1/quotes -H 'x-api-key: {ng_ke}' -d '{{\"destinationCountry\":\"GH\"}}'"
                    ),
                );
                line(
                    "403 with Zynta's exact body: a key allowlisted to 203.0.113.7",
                    format!("curl -s {url}/api/v1/quotes -H 'x-api-key: {pinned}'"),
                );
            }
            _ => {}
        }
        Ok(out)
    }
}
