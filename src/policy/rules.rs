//! One check per [`Rule`]: what each rule reads from the verified key and the request, and the
//! [`Denial`] it answers with. [`Policy::authorize`] runs a route's rules in order and applies
//! report-only mode.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::Method;

use super::ratelimit::{Counter, Decision, Limit, RateReport};
use super::{Admitted, Denial, Policy, Rule, scopes};
use crate::auth::Identity;
use crate::key::KeyType;
use crate::store::KeyRateLimit;

impl Policy {
    /// The rules that only read the key and the request (all but rate limits, which
    /// [`Policy::rate_limits`] checks against the limiter).
    #[inline]
    pub(super) fn check(
        &self,
        rule: &Rule,
        identity: &Identity,
        admitted: &Admitted<'_>,
        method: &Method,
    ) -> Result<(), Denial> {
        match rule {
            Rule::Environment => self.environment(identity),
            Rule::KeyType { allow_publishable } => key_type(identity, *allow_publishable),
            Rule::KeyIp => key_ip(identity, admitted.client_ip),
            Rule::Scope(scope) => scope_held(identity, scope.as_deref(), method),
            // Checked by `rate_limits`, the one rule that awaits.
            Rule::RateLimit { .. } => Ok(()),
        }
    }

    /// The key's environment (from its record) is the instance's.
    fn environment(&self, identity: &Identity) -> Result<(), Denial> {
        let key = identity.record().environment;
        if key == self.environment {
            return Ok(());
        }
        Err(Denial::WrongEnvironment {
            key: key.as_str(),
            instance: self.environment.as_str(),
        })
    }

    /// The key's own limit (override, tier or default) and its route category's, consumed only
    /// if all allow.
    pub(super) async fn rate_limits(
        &self,
        identity: &Identity,
        category: Option<&str>,
        rate: &mut RateReport,
    ) -> Result<(), Denial> {
        let limits = self.key_limits(identity, category);
        if limits.is_empty() {
            return Ok(());
        }
        let decisions = self.limiter.acquire(&limits).await;
        let Some(tightest) = Decision::tightest(&decisions) else {
            return Ok(());
        };
        rate.note(tightest);
        if tightest.allowed {
            return Ok(());
        }
        self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        Err(Denial::RateLimited {
            retry_after: tightest.retry_after,
        })
    }

    fn key_limits(&self, identity: &Identity, category: Option<&str>) -> Vec<(Counter, Limit)> {
        let rec = identity.record();
        let rl = &self.config.rate_limits;
        let own = match &rec.rate_limit {
            Some(KeyRateLimit::Explicit { limit, window_secs }) => Some(Limit {
                limit: *limit,
                window: std::time::Duration::from_secs(*window_secs),
                algorithm: rl
                    .key
                    .map_or(super::ratelimit::Algorithm::FixedWindow, |l| l.algorithm),
            }),
            Some(KeyRateLimit::Tier { tier }) => rl.tiers.get(tier).copied().or(rl.key),
            None => rl.key,
        };
        let subject = super::ratelimit::Subject::Key(Arc::clone(identity.key_id()));
        let mut out = Vec::with_capacity(2);
        if let Some(limit) = own {
            out.push((
                Counter {
                    subject: subject.clone(),
                    name: Arc::clone(&self.names.key),
                },
                limit,
            ));
        }
        if let Some(cat) = category
            && let Some((name, limit)) = self.categories.get(cat)
        {
            out.push((
                Counter {
                    subject,
                    name: Arc::clone(name),
                },
                *limit,
            ));
        }
        out
    }
}

/// Publishable keys only where the route allows them.
fn key_type(identity: &Identity, allow_publishable: bool) -> Result<(), Denial> {
    if identity.record().key_type == KeyType::Publishable && !allow_publishable {
        return Err(Denial::KeyTypeNotAllowed);
    }
    Ok(())
}

/// The key's own allowlist (empty: everyone).
fn key_ip(identity: &Identity, ip: IpAddr) -> Result<(), Denial> {
    if identity.ip_allowed(ip) {
        Ok(())
    } else {
        Err(Denial::IpNotAllowed(ip))
    }
}

fn scope_held(identity: &Identity, required: Option<&str>, method: &Method) -> Result<(), Denial> {
    scopes::check(&identity.record().scopes, required, method)
        .map_err(|needed| Denial::InsufficientScope(needed.to_owned()))
}
