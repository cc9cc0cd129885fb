//! The in-process limiter: counters in sharded maps, swept periodically. Exact under
//! concurrency (each check runs under its shard's lock, which is never held across an await).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Algorithm, Counter, Decision, Limit};

const SHARDS: usize = 64;

type Hasher = foldhash::fast::RandomState;

#[derive(Clone, Copy, Debug)]
enum State {
    /// `count` requests in the window that ends at `end` (ms since the limiter's epoch).
    Fixed { end: u64, count: u64 },
    /// Theoretical arrival time of the next request (ms since the limiter's epoch).
    Gcra { tat: u64 },
}

pub struct LocalLimiter {
    shards: Box<[Mutex<HashMap<u64, State, Hasher>>]>,
    /// A seeded fast hash (foldhash): counter names and subjects are short, and SipHash was
    /// a visible share of the request path.
    hasher: Hasher,
    epoch: Instant,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        LocalLimiter {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(Hasher::default())))
                .collect(),
            hasher: Hasher::default(),
            epoch: Instant::now(),
        }
    }
}

impl LocalLimiter {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn slot(&self, c: &Counter) -> u64 {
        self.hasher.hash_one(c)
    }

    fn shard(&self, slot: u64) -> &Mutex<HashMap<u64, State, Hasher>> {
        &self.shards[(slot as usize) % SHARDS]
    }

    /// Checks all `limits` and consumes one unit of each only if every one allows.
    pub fn acquire(&self, limits: &[(Counter, Limit)]) -> super::Decisions {
        let mut decisions = super::Decisions::new();
        self.acquire_into(limits, &mut decisions);
        decisions
    }

    /// [`LocalLimiter::acquire`], its decisions written into `decisions` (cleared first): the
    /// request path's, so they are not copied on their way back.
    pub fn acquire_into(&self, limits: &[(Counter, Limit)], decisions: &mut super::Decisions) {
        let now = self.now_ms();
        decisions.clear();
        for (counter, limit) in limits {
            let slot = self.slot(counter);
            let mut shard = self.shard(slot).lock().unwrap_or_else(|e| e.into_inner());
            let d = step(
                shard.entry(slot).or_insert(State::Gcra { tat: 0 }),
                limit,
                now,
                true,
            );
            drop(shard);
            decisions.push(d);
        }
        if decisions.iter().any(|d| !d.allowed) {
            // The rare path: give back what the allowed ones took.
            for ((counter, limit), _) in limits
                .iter()
                .zip(decisions.iter())
                .filter(|(_, d)| d.allowed)
            {
                let slot = self.slot(counter);
                let mut shard = self.shard(slot).lock().unwrap_or_else(|e| e.into_inner());
                if let Some(state) = shard.get_mut(&slot) {
                    refund(state, limit, now);
                }
            }
            // What was allowed is reported as it stands after the refund.
            for d in decisions.iter_mut().filter(|d| d.allowed) {
                d.remaining = (d.remaining + 1).min(d.limit);
            }
        }
    }

    /// Reports the state of one counter without consuming.
    pub fn peek(&self, counter: &Counter, limit: &Limit) -> Decision {
        let now = self.now_ms();
        let slot = self.slot(counter);
        let mut shard = self.shard(slot).lock().unwrap_or_else(|e| e.into_inner());
        match shard.get_mut(&slot) {
            Some(state) => step(state, limit, now, false),
            None => step(&mut State::Gcra { tat: 0 }, limit, now, false),
        }
    }

    /// Drops counters that no longer hold anything (window over, bucket full again).
    pub fn sweep(&self) {
        let now = self.now_ms();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, s| match *s {
                State::Fixed { end, .. } => end > now,
                State::Gcra { tat } => tat > now,
            });
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Applies one request (when `consume`) to a counter and decides.
fn step(state: &mut State, limit: &Limit, now: u64, consume: bool) -> Decision {
    let window_ms = limit.window_ms();
    match limit.algorithm {
        Algorithm::FixedWindow => {
            let (end, count) = match *state {
                State::Fixed { end, count } if now < end => (end, count),
                // Windows are aligned to the limiter's clock, like the Redis backend's.
                _ => ((now / window_ms + 1) * window_ms, 0),
            };
            let reset = Duration::from_millis(end - now);
            if count >= limit.limit {
                *state = State::Fixed { end, count };
                return Decision {
                    allowed: false,
                    limit: limit.limit,
                    remaining: 0,
                    reset,
                    retry_after: reset,
                    window: limit.window,
                };
            }
            let count = if consume { count + 1 } else { count };
            *state = State::Fixed { end, count };
            Decision {
                allowed: true,
                limit: limit.limit,
                remaining: limit.limit - count,
                reset,
                retry_after: Duration::ZERO,
                window: limit.window,
            }
        }
        Algorithm::Gcra => {
            let t = limit.interval_ms();
            let tat = match *state {
                State::Gcra { tat } => tat.max(now),
                State::Fixed { .. } => now,
            };
            let new_tat = tat + t;
            // Allowed while the bucket's debt after this request fits in the window.
            if new_tat - now > window_ms {
                let retry = new_tat - window_ms - now;
                return Decision {
                    allowed: false,
                    limit: limit.limit,
                    remaining: 0,
                    reset: Duration::from_millis(tat - now),
                    retry_after: Duration::from_millis(retry.max(1)),
                    window: limit.window,
                };
            }
            let after = if consume { new_tat } else { tat };
            if consume {
                *state = State::Gcra { tat: new_tat };
            }
            let remaining = (window_ms - (after - now)) / t;
            Decision {
                allowed: true,
                limit: limit.limit,
                remaining: remaining.min(limit.limit),
                reset: Duration::from_millis(after - now),
                retry_after: Duration::ZERO,
                window: limit.window,
            }
        }
    }
}

fn refund(state: &mut State, limit: &Limit, now: u64) {
    match state {
        State::Fixed { end, count } => {
            if now < *end {
                *count = count.saturating_sub(1);
            }
        }
        State::Gcra { tat } => *tat = tat.saturating_sub(limit.interval_ms()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(s: &str) -> Counter {
        Counter {
            subject: super::super::Subject::Owner(s.into()),
            name: "n".into(),
        }
    }

    // The behaviours both limiters share are one suite in tests/limiter.rs.

    #[test]
    fn sweep_drops_idle_counters() {
        let l = LocalLimiter::default();
        let limit = Limit {
            limit: 1,
            window: Duration::from_millis(1),
            algorithm: Algorithm::Gcra,
            per: crate::config::Per::Key,
        };
        l.acquire(&[(counter("a"), limit)]);
        std::thread::sleep(Duration::from_millis(5));
        l.sweep();
        assert!(l.is_empty());
    }
}
