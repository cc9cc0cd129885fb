//! Leased permits for the Redis limiter (`rate_limits.lease_max`): instead of a round trip per
//! request, a replica takes a batch of permits of a fixed-window counter in one atomic script
//! (debited from the shared counter, so the fleet never admits more than the limit in a
//! window) and spends them locally. The batch doubles while leases run out quickly, halves when
//! one expires half unused, and never exceeds `lease_max` nor half of what the window has left
//! divided by the replica count, so the last permits of a window are leased one by one.
//!
//! The contract: never over the limit; a rejected request consumes nothing (a check needing a
//! new lease for any of its counters takes none unless all can be granted); at most `lease_max`
//! permits per counter sit unused on a replica, and they lapse with their window (a fixed window
//! starts from zero anyway). GCRA limits and peeks keep the per-request script.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use super::{Counter, Decision, Limit};
use crate::store::Lua;

pub(super) static LEASE: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"-- KEYS: fixed-window counters; ARGV: replicas, then per key: limit, window ms, batch
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local replicas = tonumber(ARGV[1])
        local plan, out, ok = {}, {}, true
        for i = 1, #KEYS do
          local limit, window, batch = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
          local idx = math.floor(now / window)
          local c = 0
          if tonumber(redis.call('HGET', KEYS[i], 'w') or '-1') == idx then
            c = tonumber(redis.call('HGET', KEYS[i], 'c') or '0')
          end
          local avail = limit - c
          local reset = (idx + 1) * window - now
          if avail < 1 then ok = false end
          local n = math.min(batch, math.max(1, math.floor(avail / (2 * replicas))), math.max(avail, 0))
          plan[i] = {idx, c + n, reset, math.max(avail, 0)}
          out[i] = {n, math.max(avail - n, 0), reset}
        end
        if not ok then
          -- Nothing is taken: report what each counter has left.
          for i = 1, #KEYS do out[i] = {0, plan[i][4], plan[i][3]} end
          return out
        end
        for i = 1, #KEYS do
          redis.call('HSET', KEYS[i], 'w', plan[i][1], 'c', plan[i][2])
          redis.call('PEXPIRE', KEYS[i], math.max(1, plan[i][3]))
        end
        return out",
    )
});

/// Permits of one counter held by this replica for the current window.
#[derive(Debug)]
pub(super) struct Lease {
    left: u64,
    /// What the shared counter had left after this lease was taken (for the headers).
    remote_left: u64,
    expires: Instant,
    granted_at: Instant,
    window: Duration,
    /// The size of the last grant, the base of the next one.
    batch: u64,
}

impl Lease {
    fn usable(&self, now: Instant) -> bool {
        self.left > 0 && now < self.expires
    }

    /// The next batch: doubled when this one ran out within a tenth of the window, halved when
    /// it lapsed with more than half unused.
    fn next_batch(&self, now: Instant, max: u64) -> u64 {
        let b = if self.left == 0 && now.duration_since(self.granted_at) < self.window / 10 {
            self.batch.saturating_mul(2)
        } else if now >= self.expires && self.left * 2 > self.batch {
            self.batch / 2
        } else {
            self.batch
        };
        b.clamp(1, max)
    }

    fn take(&mut self, limit: &Limit, now: Instant) -> Decision {
        self.left -= 1;
        Decision {
            allowed: true,
            limit: limit.limit,
            remaining: (self.left + self.remote_left).min(limit.limit),
            reset: self.expires.saturating_duration_since(now),
            retry_after: Duration::ZERO,
            window: limit.window,
        }
    }
}

/// This replica's leases, by counter (looked up without building its Redis key).
#[derive(Debug, Default)]
pub(super) struct Leases {
    map: std::sync::Mutex<HashMap<Counter, Lease>>,
}

/// What a check needs from Redis: the counters without a usable lease, with their batch sizes.
pub(super) struct Wanted {
    pub indices: Vec<usize>,
    pub batches: Vec<u64>,
}

impl Leases {
    /// Takes one permit of every counter if each has a usable lease; otherwise takes none and
    /// says which need one (and how large).
    pub(super) fn try_take(
        &self,
        limits: &[(Counter, Limit)],
        max: u64,
    ) -> Result<Vec<Decision>, Wanted> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let mut wanted = Wanted {
            indices: Vec::new(),
            batches: Vec::new(),
        };
        for (i, (counter, _)) in limits.iter().enumerate() {
            match map.get(counter) {
                Some(l) if l.usable(now) => {}
                Some(l) => {
                    wanted.indices.push(i);
                    wanted.batches.push(l.next_batch(now, max));
                }
                None => {
                    wanted.indices.push(i);
                    wanted.batches.push(1);
                }
            }
        }
        if !wanted.indices.is_empty() {
            return Err(wanted);
        }
        Ok(limits
            .iter()
            .filter_map(|(counter, limit)| map.get_mut(counter).map(|l| l.take(limit, now)))
            .collect())
    }

    /// Stores the grants Redis made (`(granted, left in the window, reset ms)` per wanted key).
    pub(super) fn grant(&self, limits: &[(Counter, Limit)], wanted: &Wanted, rows: &[[u64; 3]]) {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for (&i, row) in wanted.indices.iter().zip(rows) {
            let (granted, remote_left, reset) = (row[0], row[1], row[2]);
            let lease = map.entry(limits[i].0.clone()).or_insert(Lease {
                left: 0,
                remote_left,
                expires: now,
                granted_at: now,
                window: limits[i].1.window,
                batch: granted,
            });
            let expires = now + Duration::from_millis(reset);
            // Leftovers of a lapsed window are gone; a live lease just grows.
            if now >= lease.expires {
                lease.left = 0;
            }
            lease.left += granted;
            lease.remote_left = remote_left;
            lease.expires = expires;
            lease.granted_at = now;
            lease.batch = granted.max(1);
        }
    }

    /// Drops leases whose window is over.
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, l| now < l.expires);
    }
}
