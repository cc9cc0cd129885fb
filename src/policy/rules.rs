//! One check per [`Rule`]: what each rule reads from the verified key and the request, and the
//! [`Denial`] it answers with. [`Policy::authorize`] runs a route's rules in order and applies
//! report-only mode.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::path::percent_decode;
use super::ratelimit::{Counter, Decision, Limit, RateReport, Subject};
use super::{Admitted, Denial, Policy, RequestView, Rule, scopes};
use crate::auth::Identity;
use crate::config::Per;
use crate::config::{AttributeConfig, AttributeSource};
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
        view: &RequestView<'_>,
    ) -> Result<(), Denial> {
        match rule {
            Rule::Environment => self.environment(identity),
            Rule::KeyType { allow_publishable } => key_type(identity, *allow_publishable),
            Rule::KeyIp => key_ip(identity, admitted.client_ip),
            Rule::Scope(scope) => scope_held(identity, scope.as_deref(), view.method),
            Rule::Attribute(a) => attribute(a, identity, admitted, view),
            // Checked by `rate_limits`, the one rule that awaits.
            Rule::RateLimit { .. } => Ok(()),
        }
    }

    /// The key's environment is the instance's — both as its record says and as the key
    /// itself says (`sk_live_…`): an imported live-looking key whose record says test is not
    /// accepted as a test key, nor the reverse.
    fn environment(&self, identity: &Identity) -> Result<(), Denial> {
        let recorded = identity.record().environment;
        let named = identity.presented_environment().unwrap_or(recorded);
        let key = if named != self.environment {
            named
        } else {
            recorded
        };
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
        // Filled in place, here and below: neither list is copied on its way back.
        let mut limits = smallvec::SmallVec::new();
        self.key_limits(identity, category, &mut limits);
        if limits.is_empty() {
            return Ok(());
        }
        let mut decisions = super::ratelimit::Decisions::new();
        self.limiter.acquire_into(&limits, &mut decisions).await;
        let Some(tightest) = Decision::tightest(&decisions) else {
            return Ok(());
        };
        rate.note(tightest, self.header_styles());
        if tightest.allowed {
            return Ok(());
        }
        self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        Err(Denial::RateLimited {
            retry_after: tightest.retry_after,
        })
    }

    /// Appends to `out` the key's own limit and its route category's, each counted per key or
    /// per owner. The key's own: its explicit limit, else its environment's, else its tier's,
    /// else the default.
    fn key_limits(
        &self,
        identity: &Identity,
        category: Option<&str>,
        out: &mut smallvec::SmallVec<[(Counter, Limit); 2]>,
    ) {
        let rec = identity.record();
        let rl = &self.config.rate_limits;
        let env_limit = || {
            rl.environments
                .iter()
                .find(|(e, _)| *e == rec.environment)
                .map(|(_, l)| *l)
        };
        let own = match &rec.rate_limit {
            Some(KeyRateLimit::Explicit { limit, window_secs }) => Some(Limit {
                algorithm: rl
                    .key
                    .map_or(super::ratelimit::Algorithm::FixedWindow, |l| l.algorithm),
                ..Limit::new(*limit, std::time::Duration::from_secs(*window_secs))
            }),
            Some(KeyRateLimit::Tier { tier }) => env_limit()
                .or_else(|| rl.tiers.get(tier).copied())
                .or(rl.key),
            None => env_limit().or(rl.key),
        };
        let subject = |per: Per| match per {
            Per::Key => Subject::Key {
                id: Arc::clone(identity.key_id()),
                owner: Arc::clone(identity.owner()),
            },
            Per::Owner => Subject::Owner(Arc::clone(identity.owner())),
        };
        if let Some(limit) = own {
            out.push((
                Counter {
                    subject: subject(limit.per),
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
                    subject: subject(limit.per),
                    name: Arc::clone(name),
                },
                *limit,
            ));
        }
    }

    /// The state of the key's limits, consuming nothing: for the rate-limit headers of a
    /// request denied before its limits were checked.
    pub(super) async fn peek_rate_limits(
        &self,
        identity: &Identity,
        category: Option<&str>,
        rate: &mut RateReport,
    ) {
        let mut limits = smallvec::SmallVec::new();
        self.key_limits(identity, category, &mut limits);
        for (counter, limit) in limits {
            rate.note(
                self.limiter.peek(counter, limit).await,
                self.header_styles(),
            );
        }
    }
}

/// The request's values of attribute `a` are among those the key is restricted to (a key
/// without a restriction on it passes).
fn attribute(
    a: &AttributeConfig,
    identity: &Identity,
    admitted: &Admitted<'_>,
    view: &RequestView<'_>,
) -> Result<(), Denial> {
    let Some(allowed) = identity.record().restrictions.get(&a.name) else {
        return Ok(());
    };
    let values: Vec<std::borrow::Cow<'_, str>> = match &a.source {
        AttributeSource::Header(name) => view
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .collect(),
        AttributeSource::Query(name) => view
            .query
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(k).as_deref() == Some(name.as_str()))
                    .then(|| percent_decode(v).unwrap_or_default().into())
            })
            .collect(),
        AttributeSource::Path(name) => admitted
            .route
            .pattern
            .as_ref()
            .and_then(|p| p.param(admitted.normalized.as_deref().unwrap_or(view.path), name))
            .map(|v| percent_decode(v).unwrap_or_else(|| v.to_owned()).into())
            .into_iter()
            .collect(),
        AttributeSource::Json { pointer, .. } => {
            let unreadable = || Denial::AttributeUnreadable {
                attribute: a.name.clone(),
            };
            let body = view.body.ok_or_else(unreadable)?;
            let doc: serde_json::Value = serde_json::from_slice(body).map_err(|_| unreadable())?;
            match doc.pointer(pointer) {
                None | Some(serde_json::Value::Null) => Vec::new(),
                Some(serde_json::Value::Array(items)) => items.iter().map(json_text).collect(),
                Some(v) => vec![json_text(v)],
            }
        }
    };
    if values.is_empty() {
        return if a.required {
            Err(Denial::AttributeMissing {
                attribute: a.name.clone(),
            })
        } else {
            Ok(())
        };
    }
    match values.iter().find(|v| !a.admits(allowed, v)) {
        Some(v) => Err(Denial::AttributeNotAllowed {
            attribute: a.name.clone(),
            value: v.chars().take(64).collect(),
        }),
        None => Ok(()),
    }
}

fn json_text(v: &serde_json::Value) -> std::borrow::Cow<'static, str> {
    match v {
        serde_json::Value::String(s) => s.clone().into(),
        other => other.to_string().into(),
    }
}

/// Publishable keys only where the route allows them.
fn key_type(identity: &Identity, allow_publishable: bool) -> Result<(), Denial> {
    if identity.is_publishable() && !allow_publishable {
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

fn scope_held(
    identity: &Identity,
    required: Option<&str>,
    method: &http::Method,
) -> Result<(), Denial> {
    scopes::check(&identity.record().scopes, required, method)
        .map_err(|needed| Denial::InsufficientScope(needed.to_owned()))
}
