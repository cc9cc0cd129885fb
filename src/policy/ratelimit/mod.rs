//! Rate limiting: what a limit is, what a check decides, and the two backends — in-process
//! (default) and Redis (shared by every replica, one atomic script per check).
//!
//! A request may be subject to several limits at once (per key, per key and route category).
//! They are checked together and consumed only if all allow, so a rejected request never
//! consumes quota: a client kept at 429 recovers as soon as its window allows.

mod headers;
mod lease;
mod local;
mod redis;

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::HeaderStyles;
pub use crate::config::{Algorithm, Limit};
pub use headers::{is_rate_limit_field, rate_limit_fields, set_rate_limit_headers};
pub use local::LocalLimiter;
pub use redis::RedisLimiter;

/// The decisions of one check, in the order of its limits (one or two: no allocation).
pub type Decisions = smallvec::SmallVec<[Decision; 2]>;

/// The outcome of checking one limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    /// Until the window resets (fixed) or the bucket is full again (GCRA).
    pub reset: Duration,
    /// When rejected: until one more request would be allowed.
    pub retry_after: Duration,
    /// The window of the limit, for the structured `RateLimit-Policy` header.
    pub window: Duration,
}

impl Decision {
    /// The decision to report when several apply: a rejection, else the least remaining.
    pub fn tightest(decisions: &[Decision]) -> Option<Decision> {
        decisions.iter().copied().min_by_key(Decision::order)
    }

    /// Tighter first: a rejection, then the least remaining, then the longest until reset.
    fn order(&self) -> (bool, u64, std::cmp::Reverse<Duration>) {
        (self.allowed, self.remaining, std::cmp::Reverse(self.reset))
    }
}

/// The rate-limit state a response reports: the decision of the limit closest to exhaustion
/// among those a request was checked against (a rejection first), and the header styles of the
/// policy that decided (the request's one policy, even if a reload swaps it meanwhile).
#[derive(Clone, Copy, Debug, Default)]
pub struct RateReport(Option<(Decision, HeaderStyles)>);

impl RateReport {
    pub fn note(&mut self, d: Decision, styles: HeaderStyles) {
        self.0 = Some(match self.0 {
            Some(prev) if prev.0.order() <= d.order() => prev,
            _ => (d, styles),
        });
    }

    /// The decision to report, with how.
    pub fn report(&self) -> Option<(Decision, HeaderStyles)> {
        self.0
    }
}

/// Whose counter it is. The counters one check takes together share a *group* — an owner
/// (its keys' counters and its own), or a client address — which is one Redis hash tag, so the
/// check stays one atomic script on one Cluster slot. Cheap to clone: no allocation per
/// request.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A key, by id, of an owner.
    Key { id: Arc<str>, owner: Arc<str> },
    /// An owner (every key it has): ZendFi's per-merchant limits.
    Owner(Arc<str>),
    /// A client address; IPv6 already reduced to its /64.
    Ip(IpAddr),
}

impl Subject {
    /// Appends the group (hash tag) the counter lives in: `o:<owner>` or `ip:<address>`.
    pub fn write_group(&self, out: &mut Vec<u8>) {
        match self {
            Subject::Key { owner, .. } | Subject::Owner(owner) => {
                out.extend_from_slice(b"o:");
                out.extend_from_slice(owner.as_bytes());
            }
            // Rare enough for the formatter (per-IP limits); a `Vec` takes every write.
            Subject::Ip(ip) => drop(write!(out, "ip:{ip}")),
        }
    }

    /// Appends the subject within its group: `k:<key id>`, `o` (the owner) or `ip`.
    pub fn write_id(&self, out: &mut Vec<u8>) {
        match self {
            Subject::Key { id, .. } => {
                out.extend_from_slice(b"k:");
                out.extend_from_slice(id.as_bytes());
            }
            Subject::Owner(_) => out.push(b'o'),
            Subject::Ip(_) => out.extend_from_slice(b"ip"),
        }
    }
}

/// One counter: a subject and what it counts (`key`, `floor`, `cat:payments_create`, …).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Counter {
    pub subject: Subject,
    pub name: Arc<str>,
}

/// The configured limiter backend.
pub enum Limiter {
    Local(LocalLimiter),
    Redis(RedisLimiter),
}

impl Limiter {
    /// In process: every check is answered without waiting.
    pub fn in_memory(&self) -> bool {
        matches!(self, Limiter::Local(_))
    }

    /// Checks every limit (all of one subject) and consumes them only if all allow.
    pub async fn acquire(&self, limits: &[(Counter, Limit)]) -> Decisions {
        let mut decisions = Decisions::new();
        self.acquire_into(limits, &mut decisions).await;
        decisions
    }

    /// [`Limiter::acquire`], its decisions written into `out` (replaced): the request path's,
    /// so they are not copied on their way back through each layer.
    pub async fn acquire_into(&self, limits: &[(Counter, Limit)], out: &mut Decisions) {
        match self {
            Limiter::Local(l) => l.acquire_into(limits, out),
            // Boxed: a network round trip anyway, and it keeps the local path's futures small.
            Limiter::Redis(r) => *out = Box::pin(r.check(limits, true)).await.into(),
        }
    }

    /// The state of one counter, consuming nothing.
    pub async fn peek(&self, counter: Counter, limit: Limit) -> Decision {
        match self {
            Limiter::Local(l) => l.peek(&counter, &limit),
            Limiter::Redis(r) => {
                let mut d = Box::pin(r.check(&[(counter, limit)], false)).await;
                d.pop().unwrap_or(Decision {
                    allowed: true,
                    limit: limit.limit,
                    remaining: limit.limit,
                    reset: Duration::ZERO,
                    retry_after: Duration::ZERO,
                    window: limit.window,
                })
            }
        }
    }

    /// Drops idle in-process counters (the Redis backend's expire by themselves).
    pub fn sweep(&self) {
        match self {
            Limiter::Local(l) => l.sweep(),
            Limiter::Redis(r) => r.sweep(),
        }
    }
}
