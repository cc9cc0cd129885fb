//! Policy: everything enforced once the request's route and (for non-public routes) its key are
//! known. Two stages, each returning a value that proves it passed:
//!
//! - [`Policy::admit`]: client address, normalised path, route, the global IP lists, the
//!   failed-auth throttle and the per-IP floor — before verification, so floods never reach the
//!   store or Argon2 — giving an [`Admitted`] request;
//! - [`Policy::authorize`]: the route's [`Rule`]s against the verified key (environment, key
//!   type, the key's IP allowlist, scope, rate limits — see [`rules`]), giving the [`Permit`] the
//!   forwarder needs. Only this module can make a permit, public routes included
//!   ([`Policy::public`]).
//!
//! Each rule can run in report-only mode per route.

pub mod ip;
pub mod path;
pub mod ratelimit;
pub mod routes;
mod rules;
pub mod scopes;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderMap, Method};

use crate::auth::Identity;
use crate::config::{LimiterBackend, PolicyConfig, RouteConfig, RuleKind};
use crate::key::Environment;
use crate::net::IpSet;
use crate::store::Store;
use crate::telemetry::Metrics;
use ratelimit::{Counter, Limit, Limiter, LocalLimiter, RateReport, RedisLimiter, Subject};
use routes::Routes;

pub use crate::config::Rule;
pub use path::{PathError, normalize};

/// Why the policy refused a request: one variant per rule, plus what admission checks.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Denial {
    #[error("{0}")]
    BadPath(PathError),
    /// A trusted proxy sent a forwarding header that does not parse: fail closed.
    #[error("cannot determine the client address")]
    UnknownClient,
    #[error("requests from {0} are not allowed for this API key")]
    IpNotAllowed(IpAddr),
    /// An authorization check (auth-only mode) from a peer not in `ip.trusted_proxies`: only
    /// a trusted proxy may say which request it is asking about.
    #[error(
        "{0} is not a trusted proxy: authorization checks are answered for ip.trusted_proxies only"
    )]
    UntrustedPeer(IpAddr),
    #[error("API key is for the {key} environment; this endpoint serves {instance}")]
    WrongEnvironment {
        key: &'static str,
        instance: &'static str,
    },
    #[error("publishable keys are not allowed here; use a secret key")]
    KeyTypeNotAllowed,
    #[error("API key lacks the scope `{0}`")]
    InsufficientScope(String),
    #[error("rate limit exceeded; retry after {} s", retry_after.as_secs().max(1))]
    RateLimited { retry_after: Duration },
    #[error("API key is not allowed for {attribute} {value:?}")]
    AttributeNotAllowed { attribute: String, value: String },
    #[error("API key is restricted on {attribute}, and this request does not say which")]
    AttributeMissing { attribute: String },
    /// The JSON body a restriction is checked against cannot be parsed: fail closed.
    #[error(
        "the request body is not JSON, so the API key's {attribute} restriction cannot be checked"
    )]
    AttributeUnreadable { attribute: String },
}

impl From<PathError> for Denial {
    fn from(e: PathError) -> Self {
        Denial::BadPath(e)
    }
}

/// What the rules read of a request besides its key and route.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// The effective method (an honoured override).
    pub method: &'a Method,
    /// The path as the client sent it (the normalised one is the admission's).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The body, when [`Policy::body_needed`] asked for it.
    pub body: Option<&'a [u8]>,
}

/// A request that passed admission: who is calling, which route it takes, and the path that
/// routing saw (and that is forwarded).
#[derive(Debug)]
pub struct Admitted<'p> {
    route: &'p RouteConfig,
    client_ip: IpAddr,
    /// The normalised path, when it differs from the client's.
    normalized: Option<String>,
}

impl<'p> Admitted<'p> {
    pub fn route(&self) -> &'p RouteConfig {
        self.route
    }

    pub fn client_ip(&self) -> IpAddr {
        self.client_ip
    }
}

/// Proof that a request may be forwarded: the only way to reach the upstream. Carries what the
/// forwarder needs (the identity to inject, the client, the path) and nothing can build one but
/// the policy.
#[derive(Debug)]
pub struct Permit<'p> {
    route: &'p RouteConfig,
    client_ip: IpAddr,
    normalized: Option<String>,
    identity: Option<Identity>,
}

impl<'p> Permit<'p> {
    pub fn route(&self) -> &'p RouteConfig {
        self.route
    }

    pub fn client_ip(&self) -> IpAddr {
        self.client_ip
    }

    /// `None` on public routes.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// The normalised path to forward instead of the client's, when they differ.
    pub fn normalized_path(&self) -> Option<&str> {
        self.normalized.as_deref()
    }
}

/// What the policy learned about a request, whatever the outcome: for the response's rate-limit
/// headers, the access log and the audit trail.
#[derive(Debug, Default)]
pub struct Trace {
    /// The client address, once resolved.
    pub client_ip: Option<IpAddr>,
    /// The route's name, once matched.
    pub route: Option<Arc<str>>,
    /// The rate-limit state to report.
    pub rate: RateReport,
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
                config.rate_limits.lease_max,
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

    /// `[self_service]`, when the key API is mounted.
    pub fn self_service(&self) -> Option<&crate::config::SelfServiceConfig> {
        self.config.self_service.as_ref()
    }

    pub fn header_styles(&self) -> crate::config::HeaderStyles {
        self.config.rate_limits.headers
    }

    /// Admission: the client's address (unknown fails closed), the normalised path and its
    /// route, the global IP lists, the failed-auth throttle and the per-IP floor. `path` is the
    /// one to route by (`/` for CONNECT, whose target is `host:port`).
    /// Whether `peer` is a trusted proxy (`ip.trusted_proxies`).
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.contains(peer)
    }

    pub async fn admit(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        method: &Method,
        path: &str,
        trace: &mut Trace,
    ) -> Result<Admitted<'_>, Denial> {
        let client_ip = ip::client_ip(peer, headers, &self.trusted).ok_or(Denial::UnknownClient)?; // 400
        trace.client_ip = Some(client_ip);
        let paths = &self.config.paths;
        let mut normalized = match normalize(path, paths)? {
            Cow::Borrowed(_) => None,
            Cow::Owned(p) => Some(p),
        }; // 400
        let routed = normalized.as_deref().unwrap_or(path);
        let route = self.routes.find(method, routed, paths.case_insensitive);
        if paths.case_insensitive
            && let Some(canonical) = route.pattern.as_ref().and_then(|p| p.canonical(routed))
        {
            normalized = Some(canonical);
        }
        trace.route = Some(Arc::clone(&route.name));
        let admitted = Admitted {
            route,
            client_ip,
            normalized,
        };
        self.check_global_ip(&admitted)?; // 403
        self.check_ip_limits(&admitted, &mut trace.rate).await?; // 429
        Ok(admitted)
    }

    /// The permit of a public route: no key, nothing more to check.
    pub fn public<'p>(&self, admitted: Admitted<'p>) -> Permit<'p> {
        Permit {
            route: admitted.route,
            client_ip: admitted.client_ip,
            normalized: admitted.normalized,
            identity: None,
        }
    }

    /// The route's rules against the verified key, in order; the permit if all pass (or only
    /// report-only ones failed). `method` is the effective method (an honoured override).
    pub async fn authorize<'p>(
        &self,
        identity: Identity,
        admitted: Admitted<'p>,
        view: &RequestView<'_>,
        rate: &mut RateReport,
    ) -> Result<Permit<'p>, Denial> {
        let route = admitted.route;
        for rule in &route.rules {
            let verdict = match rule {
                Rule::RateLimit { category } => {
                    self.rate_limits(&identity, category.as_deref(), rate).await
                }
                other => self.check(other, &identity, &admitted, view),
            };
            if let Err(denial) = verdict
                && let Err(denial) =
                    self.enforce(route, rule.kind(), Some(identity.key_id()), denial)
            {
                // Denied before its limits were checked: the response still reports them.
                if !matches!(rule, Rule::RateLimit { .. })
                    && let Some(Rule::RateLimit { category }) = route
                        .rules
                        .iter()
                        .find(|r| matches!(r, Rule::RateLimit { .. }))
                {
                    self.peek_rate_limits(&identity, category.as_deref(), rate)
                        .await;
                }
                return Err(denial);
            }
        }
        Ok(Permit {
            route,
            client_ip: admitted.client_ip,
            normalized: admitted.normalized,
            identity: Some(identity),
        })
    }

    /// The largest body this key's request must be read up to before [`Policy::authorize`]:
    /// a JSON attribute the key is restricted on. `None` (the common case): stream it.
    pub fn body_needed(&self, admitted: &Admitted<'_>, identity: &Identity) -> Option<u64> {
        let restrictions = &identity.record().restrictions;
        if restrictions.is_empty() {
            return None;
        }
        admitted
            .route
            .rules
            .iter()
            .filter_map(|r| match r {
                Rule::Attribute(a) if restrictions.contains_key(&a.name) => match a.source {
                    crate::config::AttributeSource::Json { max_body, .. } => Some(max_body),
                    _ => None,
                },
                _ => None,
            })
            .max()
    }

    /// The global deny and allow lists.
    fn check_global_ip(&self, admitted: &Admitted<'_>) -> Result<(), Denial> {
        let ip = admitted.client_ip;
        if self.deny.contains(ip) || (!self.allow.is_empty() && !self.allow.contains(ip)) {
            return self.enforce(admitted.route, RuleKind::Ip, None, Denial::IpNotAllowed(ip));
        }
        Ok(())
    }

    /// The per-IP floor and the failed-authentication throttle, before any key work.
    async fn check_ip_limits(
        &self,
        admitted: &Admitted<'_>,
        rate: &mut RateReport,
    ) -> Result<(), Denial> {
        let subject = Subject::Ip(ip::limit_subject(admitted.client_ip));
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
                rate.note(d, self.header_styles());
                return Err(Denial::RateLimited {
                    retry_after: d.retry_after,
                });
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
            // Evaluated: reported on the response, whatever happens next.
            if let Some(d) = d.first() {
                rate.note(*d, self.header_styles());
            }
            if let Some(d) = d.first().filter(|d| !d.allowed) {
                self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                let denial = Denial::RateLimited {
                    retry_after: d.retry_after,
                };
                return self.enforce(admitted.route, RuleKind::RateLimit, None, denial);
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

    /// Denies, or in report-only mode logs and counts the would-be denial and lets it pass.
    fn enforce(
        &self,
        route: &RouteConfig,
        rule: RuleKind,
        key_id: Option<&Arc<str>>,
        denial: Denial,
    ) -> Result<(), Denial> {
        if !route.report_only.contains(rule) {
            return Err(denial);
        }
        self.metrics
            .report_only_denials
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            rule = rule.as_str(),
            route = %route.name,
            key.id = key_id.map_or("-", |k| &**k),
            "report-only: would deny: {denial}"
        );
        Ok(())
    }
}
