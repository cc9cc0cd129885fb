//! What a key may do to its owner's keys: see only its owner's keys (of its own environment,
//! unless a live key may also manage test ones), and never make or obtain a key with more than
//! it has itself — scopes it cannot grant, a looser IP allowlist, looser attribute
//! restrictions, a later expiry or another rate limit.

use std::collections::BTreeMap;

use ipnet::IpNet;

use crate::key::Environment;
use crate::policy::scopes;
use crate::store::{KeyRateLimit, KeyRecord};
use crate::time::Timestamp;

/// The key making the request, and what it may reach.
pub struct Caller<'a> {
    pub record: &'a KeyRecord,
    pub live_manages_test: bool,
    pub lists_all_environments: bool,
}

impl Caller<'_> {
    /// What lists and reads show: the owner's keys of the environments it reaches (or all).
    pub fn lists(&self, rec: &KeyRecord) -> bool {
        rec.owner == self.record.owner
            && (self.lists_all_environments || self.reaches(rec.environment))
    }

    /// Keys of other owners (and other environments) do not exist for the caller: 404.
    pub fn sees(&self, rec: &KeyRecord) -> bool {
        rec.owner == self.record.owner && self.reaches(rec.environment)
    }

    pub fn reaches(&self, env: Environment) -> bool {
        env == self.record.environment
            || (self.live_manages_test
                && self.record.environment == Environment::Live
                && env == Environment::Test)
    }

    /// Why the caller may not hold a key like `rec` (for creating, rotating or changing it);
    /// `None` when it may.
    pub fn exceeded_by(&self, rec: Wants<'_>) -> Option<String> {
        let me = self.record;
        if let Some(s) = rec.scopes.iter().find(|s| !scopes::grants(&me.scopes, s)) {
            return Some(format!(
                "scopes: this key cannot grant {s:?}, which it does not hold"
            ));
        }
        if !within(rec.ip_allowlist, &me.ip_allowlist) {
            return Some("ip_allowlist: must stay within this key's own allowlist".to_owned());
        }
        if let Some(attr) = looser(rec.restrictions, &me.restrictions) {
            return Some(format!(
                "restrictions.{attr}: must stay within this key's own restriction"
            ));
        }
        if let Some(mine) = me.expires_at
            && rec.expires_at.is_none_or(|t| t > mine)
        {
            return Some("expires: cannot outlive the key that creates it".to_owned());
        }
        if rec.rate_limit != me.rate_limit.as_ref() {
            return Some("rate_limit: only an operator changes rate limits".to_owned());
        }
        None
    }
}

/// What a key would hold.
#[derive(Clone, Copy)]
pub struct Wants<'a> {
    pub scopes: &'a [String],
    pub ip_allowlist: &'a [IpNet],
    pub restrictions: &'a BTreeMap<String, Vec<String>>,
    pub expires_at: Option<Timestamp>,
    pub rate_limit: Option<&'a KeyRateLimit>,
}

impl<'a> From<&'a KeyRecord> for Wants<'a> {
    fn from(r: &'a KeyRecord) -> Self {
        Wants {
            scopes: &r.scopes,
            ip_allowlist: &r.ip_allowlist,
            restrictions: &r.restrictions,
            expires_at: r.expires_at,
            rate_limit: r.rate_limit.as_ref(),
        }
    }
}

/// Every network of `inner` inside one of `outer` (an empty `outer` admits everything; an empty
/// `inner` is "anywhere", which a restricted `outer` does not admit).
fn within(inner: &[IpNet], outer: &[IpNet]) -> bool {
    outer.is_empty()
        || (!inner.is_empty() && inner.iter().all(|n| outer.iter().any(|o| o.contains(n))))
}

/// The first attribute `outer` restricts that `inner` leaves looser.
fn looser<'a>(
    inner: &BTreeMap<String, Vec<String>>,
    outer: &'a BTreeMap<String, Vec<String>>,
) -> Option<&'a str> {
    outer.iter().find_map(|(attr, allowed)| {
        let ok = inner
            .get(attr)
            .is_some_and(|mine| mine.iter().all(|v| allowed.contains(v)));
        (!ok).then_some(attr.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlists_and_restrictions_only_narrow() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert!(within(&[], &[]));
        assert!(within(&[n("10.1.0.0/16")], &[n("10.0.0.0/8")]));
        assert!(!within(&[n("10.0.0.0/8")], &[n("10.1.0.0/16")]));
        assert!(!within(&[], &[n("10.0.0.0/8")]), "anywhere is looser");
        let r = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, Vec<String>> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
                .collect()
        };
        let mine = r(&[("country", &["NG", "KE"])]);
        assert_eq!(looser(&r(&[("country", &["NG"])]), &mine), None);
        assert_eq!(
            looser(&r(&[("country", &["NG", "GH"])]), &mine),
            Some("country")
        );
        assert_eq!(looser(&r(&[]), &mine), Some("country"));
        assert_eq!(looser(&r(&[("currency", &["USD"])]), &r(&[])), None);
    }
}
