//! The rules a request must pass once its key is known, as data: each check is one [`Rule`]
//! variant, enforced by `crate::policy`, and any kind of rule can run report-only on a route
//! (the denial is logged and counted, the request forwarded).
//!
//! Adding a rule is one variant here (and its [`RuleKind`]), one check in `policy::rules`, one
//! denial in `policy::Denial`, and the record field it reads.

use std::fmt;

/// One check of the per-key / per-route kind, in the order a route applies them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The key's environment is the instance's.
    Environment,
    /// Publishable keys only where the route allows them.
    KeyType { allow_publishable: bool },
    /// The key's own IP allowlist admits the client.
    KeyIp,
    /// The key holds the route's scope (`None`: only a read-only key's method restriction).
    Scope(Option<String>),
    /// The request's value of an attribute is one the key is restricted to (when it is).
    Attribute(std::sync::Arc<super::AttributeConfig>),
    /// The key's own limit, and its route category's.
    RateLimit { category: Option<String> },
}

impl Rule {
    pub fn kind(&self) -> RuleKind {
        match self {
            Rule::Environment => RuleKind::Environment,
            Rule::KeyType { .. } => RuleKind::KeyType,
            Rule::KeyIp => RuleKind::Ip,
            Rule::Scope(_) => RuleKind::Scope,
            Rule::Attribute(_) => RuleKind::Attribute,
            Rule::RateLimit { .. } => RuleKind::RateLimit,
        }
    }
}

/// What a rule is about; the names are the ones `report_only` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// The global allow/deny lists and the key's allowlist.
    Ip,
    Environment,
    KeyType,
    Scope,
    /// The key's restrictions on request attributes.
    Attribute,
    /// The per-IP floor and the key's limits.
    RateLimit,
}

impl RuleKind {
    pub const ALL: [RuleKind; 6] = [
        RuleKind::Ip,
        RuleKind::Environment,
        RuleKind::KeyType,
        RuleKind::Scope,
        RuleKind::Attribute,
        RuleKind::RateLimit,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RuleKind::Ip => "ip",
            RuleKind::Environment => "environment",
            RuleKind::KeyType => "key_type",
            RuleKind::Scope => "scope",
            RuleKind::Attribute => "attribute",
            RuleKind::RateLimit => "rate_limit",
        }
    }

    pub fn parse(s: &str) -> Option<RuleKind> {
        RuleKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of rule kinds (a route's report-only rules).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleSet(u8);

impl RuleSet {
    pub fn contains(self, kind: RuleKind) -> bool {
        self.0 & kind.bit() != 0
    }

    pub fn insert(&mut self, kind: RuleKind) {
        self.0 |= kind.bit();
    }
}
