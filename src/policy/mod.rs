//! Policy: everything enforced once the request's route and (for non-public routes) its key are
//! known — global IP rules, the per-IP floor and failed-auth throttle (before verification, so
//! floods never reach the store or Argon2), then environment, key type, per-key IP allowlist,
//! scope and rate limits. Each rule can run in report-only mode per route.

pub mod ip;
pub mod path;
pub mod ratelimit;
pub mod routes;
pub mod scopes;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::{HeaderMap, Method};

use crate::auth::Identity;
use crate::config::{LimiterBackend, PolicyConfig, RouteConfig};
use crate::error::AuthError;
use crate::key::{Environment, KeyType};
use crate::store::{KeyRateLimit, Store};
use crate::telemetry::Metrics;
use ip::IpSet;
use ratelimit::{Counter, Decision, Limit, Limiter, LocalLimiter, RedisLimiter, Subject};
use routes::Routes;

pub use path::{PathError, normalize};

/// Proof that a verified key may make this request; carries the rate-limit state to report.
#[derive(Debug)]
pub struct Permit {
    pub rate: Option<Decision>,
}

/// Counter names, allocated once.
struct CounterNames {
    key: Arc<str>,
    floor: Arc<str>,
    failed_auth: Arc<str>,
}

pub struct Policy {
    names: CounterNames,
    /// Category → (counter name `cat:<category>`, limit).
    categories: std::collections::HashMap<String, (Arc<str>, Limit)>,
    routes: Routes,
    trusted: IpSet,
    allow: IpSet,
    deny: IpSet,
    /// Shared across reloads, so counters survive a new route table.
    limiter: Arc<Limiter>,
    config: PolicyConfig,
    environment: Environment,
    metrics: Arc<Metrics>,
}

impl Policy {
    pub fn new(
        config: &PolicyConfig,
        environment: Environment,
        store: &Store,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limiter = Arc::new(match (config.rate_limits.backend, store) {
            (LimiterBackend::Redis, Store::Redis(r)) => Limiter::Redis(RedisLimiter::new(
                r.clone(),
                r.key_prefix(),
                config.rate_limits.replicas,
            )),
            // Config validation refuses a Redis limiter without a Redis store.
            _ => Limiter::Local(LocalLimiter::default()),
        });
        Policy::with_limiter(config, environment, limiter, metrics)
    }

    /// The policy of a reloaded configuration. Rate-limit counters carry over unless the
    /// limiter backend changed.
    pub fn reconfigured(&self, config: &PolicyConfig, store: &Store) -> Policy {
        let same_limiter = config.rate_limits.backend == self.config.rate_limits.backend
            && config.rate_limits.replicas == self.config.rate_limits.replicas;
        if same_limiter {
            Policy::with_limiter(
                config,
                self.environment,
                Arc::clone(&self.limiter),
                Arc::clone(&self.metrics),
            )
        } else {
            Policy::new(config, self.environment, store, Arc::clone(&self.metrics))
        }
    }

    fn with_limiter(
        config: &PolicyConfig,
        environment: Environment,
        limiter: Arc<Limiter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Policy {
            names: CounterNames {
                key: "key".into(),
                floor: "floor".into(),
                failed_auth: "failed_auth".into(),
            },
            categories: config
                .rate_limits
                .categories
                .iter()
                .map(|(k, l)| (k.clone(), (Arc::from(format!("cat:{k}")), *l)))
                .collect(),
            routes: Routes::new(config.routes.clone(), config.default_route.clone()),
            trusted: IpSet::new(&config.ip.trusted_proxies),
            allow: IpSet::new(&config.ip.allow),
            deny: IpSet::new(&config.ip.deny),
            limiter,
            config: config.clone(),
            environment,
            metrics,
        }
    }

    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    pub fn header_styles(&self) -> crate::config::HeaderStyles {
        self.config.rate_limits.headers
    }

    /// The client's address; unknown (a trusted proxy sent garbage) fails closed.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Result<IpAddr, AuthError> {
        ip::client_ip(peer, headers, &self.trusted)
            .ok_or(AuthError::BadRequest("cannot determine the client address"))
    }

    pub fn route(&self, method: &Method, path: &str) -> &RouteConfig {
        self.routes.find(method, path)
    }

    /// The global deny and allow lists.
    pub fn check_ip(&self, ip: IpAddr, route: &RouteConfig) -> Result<(), AuthError> {
        if self.deny.contains(ip) || (!self.allow.is_empty() && !self.allow.contains(ip)) {
            return self.enforce(
                route.report_only.ip,
                "ip",
                route,
                None,
                AuthError::IpNotAllowed(ip),
            );
        }
        Ok(())
    }

    /// The per-IP floor and the failed-authentication throttle, before any key work.
    pub async fn check_ip_limits(
        &self,
        ip: IpAddr,
        route: &RouteConfig,
    ) -> Result<(), (AuthError, Option<Decision>)> {
        let subject = Subject::Ip(ip::limit_subject(ip));
        if let Some(limit) = self.config.rate_limits.failed_auth {
            let d = self
                .limiter
                .peek(
                    Counter {
                        subject: subject.clone(),
                        name: Arc::clone(&self.names.failed_auth),
                    },
                    limit,
                )
                .await;
            if !d.allowed {
                self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err((
                    AuthError::RateLimited {
                        retry_after: d.retry_after,
                    },
                    Some(d),
                ));
            }
        }
        if let Some(limit) = self.config.rate_limits.ip {
            let d = self
                .limiter
                .acquire(&[(
                    Counter {
                        subject,
                        name: Arc::clone(&self.names.floor),
                    },
                    limit,
                )])
                .await;
            if let Some(d) = d.first().filter(|d| !d.allowed) {
                self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                let err = AuthError::RateLimited {
                    retry_after: d.retry_after,
                };
                return self
                    .enforce(route.report_only.rate_limit, "rate_limit", route, None, err)
                    .map_err(|e| (e, Some(*d)));
            }
        }
        Ok(())
    }

    /// Counts an authentication failure against the client's address.
    pub async fn record_failed_auth(&self, ip: IpAddr) {
        if let Some(limit) = self.config.rate_limits.failed_auth {
            let counter = Counter {
                subject: Subject::Ip(ip::limit_subject(ip)),
                name: Arc::clone(&self.names.failed_auth),
            };
            self.limiter.acquire(&[(counter, limit)]).await;
        }
    }

    /// The checks that need the verified key, in order: environment, key type, the key's IP
    /// allowlist, scope, then its rate limits.
    pub async fn authorize(
        &self,
        identity: &Identity,
        route: &RouteConfig,
        method: &Method,
        ip: IpAddr,
    ) -> Result<Permit, (AuthError, Option<Decision>)> {
        let rec = identity.record();
        let plain = |r: Result<(), AuthError>| r.map_err(|e| (e, None));
        if rec.environment != self.environment {
            let err = AuthError::WrongEnvironment {
                key: rec.environment.as_str(),
                instance: self.environment.as_str(),
            };
            plain(self.enforce(
                route.report_only.environment,
                "environment",
                route,
                Some(&rec.id),
                err,
            ))?;
        }
        if rec.key_type == KeyType::Publishable && !route.allow_publishable {
            return Err((AuthError::KeyTypeNotAllowed, None));
        }
        if !identity.ip_allowed(ip) {
            plain(self.enforce(
                route.report_only.ip,
                "ip",
                route,
                Some(&rec.id),
                AuthError::IpNotAllowed(ip),
            ))?;
        }
        if let Err(needed) = scopes::check(&rec.scopes, route.scope.as_deref(), method) {
            let err = AuthError::InsufficientScope(needed.to_owned());
            plain(self.enforce(route.report_only.scope, "scope", route, Some(&rec.id), err))?;
        }
        let limits = self.key_limits(identity, route);
        if limits.is_empty() {
            return Ok(Permit { rate: None });
        }
        let decisions = self.limiter.acquire(&limits).await;
        let tightest = Decision::tightest(&decisions);
        if let Some(d) = tightest.filter(|d| !d.allowed) {
            self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
            let err = AuthError::RateLimited {
                retry_after: d.retry_after,
            };
            self.enforce(
                route.report_only.rate_limit,
                "rate_limit",
                route,
                Some(&rec.id),
                err,
            )
            .map_err(|e| (e, Some(d)))?;
        }
        Ok(Permit { rate: tightest })
    }

    /// The key's own limit (override, tier or default) and its route category's.
    fn key_limits(&self, identity: &Identity, route: &RouteConfig) -> Vec<(Counter, Limit)> {
        let rec = identity.record();
        let rl = &self.config.rate_limits;
        let own = match &rec.rate_limit {
            Some(KeyRateLimit::Explicit { limit, window_secs }) => Some(Limit {
                limit: *limit,
                window: std::time::Duration::from_secs(*window_secs),
                algorithm: rl
                    .key
                    .map_or(ratelimit::Algorithm::FixedWindow, |l| l.algorithm),
            }),
            Some(KeyRateLimit::Tier { tier }) => rl.tiers.get(tier).copied().or(rl.key),
            None => rl.key,
        };
        let subject = identity.limit_subject();
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
        if let Some(cat) = &route.category
            && let Some((name, limit)) = self.categories.get(cat.as_str())
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

    /// Denies, or in report-only mode logs and counts the would-be denial and lets it pass.
    fn enforce(
        &self,
        report_only: bool,
        rule: &'static str,
        route: &RouteConfig,
        key_id: Option<&str>,
        err: AuthError,
    ) -> Result<(), AuthError> {
        if !report_only {
            return Err(err);
        }
        self.metrics
            .report_only_denials
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(rule, route = %route.name, key.id = key_id.unwrap_or("-"), code = err.code(), "report-only: would deny: {err}");
        Ok(())
    }

    /// The effective method: the override header's when honoured and well-formed.
    pub fn effective_method(&self, method: &Method, headers: &HeaderMap, honor: bool) -> Method {
        if !honor {
            return method.clone();
        }
        crate::proxy::headers::METHOD_OVERRIDES
            .iter()
            .find_map(|name| headers.get(*name))
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
            .unwrap_or_else(|| method.clone())
    }
}
