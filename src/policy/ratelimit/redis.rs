//! The Redis limiter: every replica shares the counters. One Lua script checks all the limits of
//! one subject and consumes them only if all allow — one round trip per check. Counters of one
//! subject share a hash tag, so the script stays on one Cluster slot; different subjects spread
//! over the cluster. The clock is Redis's own (`TIME`), so replicas' clocks do not matter.
//!
//! If Redis cannot be reached, checks fall back to the in-process limiter with every limit
//! divided by the configured replica count: limits stay roughly right and traffic keeps flowing.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::lease::{LEASE, Leases};
use super::{Algorithm, Counter, Decision, Limit, LocalLimiter};
use crate::store::{Lua, RedisStore, ScriptCall};

static CHECK: LazyLock<Lua> = LazyLock::new(|| {
    Lua::new(
        r"-- KEYS: one counter per limit, one hash tag
        -- ARGV: consume (1/0), then per limit: algorithm (f|g), limit, window ms
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local out, plan, ok = {}, {}, true
        for i = 1, #KEYS do
          local algo, limit, window = ARGV[3 * i - 1], tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1])
          if algo == 'f' then
            local idx = math.floor(now / window)
            local c = 0
            if tonumber(redis.call('HGET', KEYS[i], 'w') or '-1') == idx then
              c = tonumber(redis.call('HGET', KEYS[i], 'c') or '0')
            end
            local reset = (idx + 1) * window - now
            if c >= limit then ok = false; out[i] = {0, 0, reset, reset}
            else out[i] = {1, limit - c - 1, reset, 0} end
            plan[i] = {'f', idx, c + 1, reset}
          else
            local step = math.max(1, math.floor(window / limit))
            local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
            if tat < now then tat = now end
            local new = tat + step
            if new - now > window then ok = false; out[i] = {0, 0, tat - now, math.max(1, new - window - now)}
            else out[i] = {1, math.floor((window - (new - now)) / step), new - now, 0} end
            plan[i] = {'g', new, new - now}
          end
        end
        if ok and ARGV[1] == '1' then
          for i = 1, #KEYS do
            local p = plan[i]
            if p[1] == 'f' then
              redis.call('HSET', KEYS[i], 'w', p[2], 'c', p[3])
              redis.call('PEXPIRE', KEYS[i], math.max(1, p[4]))
            else
              redis.call('SET', KEYS[i], p[2], 'PX', math.max(1, p[3]))
            end
          end
        else
          -- Nothing was consumed: report what remains before this request.
          for i = 1, #KEYS do
            if out[i][1] == 1 then out[i][2] = math.min(out[i][2] + 1, tonumber(ARGV[3 * i])) end
          end
        end
        return out",
    )
});

pub struct RedisLimiter {
    store: RedisStore,
    prefix: String,
    fallback: LocalLimiter,
    replicas: u32,
    degraded: AtomicBool,
    /// Largest lease of permits (`rate_limits.lease_max`); 0: a round trip per check.
    lease_max: u64,
    leases: Leases,
}

impl RedisLimiter {
    pub fn new(store: RedisStore, prefix: &str, replicas: u32, lease_max: u64) -> Self {
        RedisLimiter {
            store,
            prefix: prefix.to_owned(),
            fallback: LocalLimiter::default(),
            replicas,
            degraded: AtomicBool::new(false),
            lease_max,
            leases: Leases::default(),
        }
    }

    /// Drops in-process state that holds nothing any more.
    pub fn sweep(&self) {
        self.fallback.sweep();
        self.leases.sweep();
    }

    /// A consuming check of fixed-window limits from leased permits: no round trip while every
    /// counter has some left, one script when any needs a new lease.
    async fn check_leased(&self, limits: &[(Counter, Limit)]) -> Vec<Decision> {
        // A lease taken meanwhile by a concurrent check may be spent before this one gets to it:
        // ask again a few times, then take the per-request path.
        for _ in 0..3 {
            let wanted = match self.leases.try_take(limits, self.lease_max) {
                Ok(decisions) => return decisions,
                Err(wanted) => wanted,
            };
            let mut call = ScriptCall::new(&LEASE);
            for &i in &wanted.indices {
                call.key_with(|out| write_key(out, &self.prefix, &limits[i].0));
            }
            call.arg(self.replicas.max(1));
            for (&i, batch) in wanted.indices.iter().zip(&wanted.batches) {
                call.arg(limits[i].1.limit)
                    .arg(limits[i].1.window_ms())
                    .arg(*batch);
            }
            let rows = match self.store.call(&call).await.map(|r| r.rows::<3>()) {
                Ok(Some(rows)) if rows.len() == wanted.indices.len() => rows,
                // Unreachable or odd: the per-request path handles (and logs) the fallback.
                _ => return self.check_each(limits, true).await,
            };
            if rows.iter().any(|r| r[0] == 0) {
                // Refused: nothing was taken, here or in Redis.
                return limits
                    .iter()
                    .enumerate()
                    .map(|(i, (_, limit))| {
                        let row = wanted
                            .indices
                            .iter()
                            .position(|&w| w == i)
                            .map(|p| &rows[p]);
                        let (remaining, reset) = row.map_or((1, 0), |r| (r[1], r[2]));
                        let exhausted = row.is_some_and(|r| r[1] == 0);
                        Decision {
                            allowed: !exhausted,
                            limit: limit.limit,
                            remaining,
                            reset: Duration::from_millis(reset),
                            retry_after: Duration::from_millis(if exhausted { reset } else { 0 }),
                            window: limit.window,
                        }
                    })
                    .collect();
            }
            self.leases.grant(limits, &wanted, &rows);
        }
        self.check_each(limits, true).await
    }

    pub fn fallback(&self) -> &LocalLimiter {
        &self.fallback
    }

    /// Checks (and when `consume`, takes) every limit; all counters must share one group.
    pub async fn check(&self, limits: &[(Counter, Limit)], consume: bool) -> Vec<Decision> {
        if consume
            && self.lease_max > 0
            && limits
                .iter()
                .all(|(_, l)| l.algorithm == Algorithm::FixedWindow)
        {
            return Box::pin(self.check_leased(limits)).await;
        }
        self.check_each(limits, consume).await
    }

    /// One script per check: the exact path.
    async fn check_each(&self, limits: &[(Counter, Limit)], consume: bool) -> Vec<Decision> {
        let mut call = ScriptCall::new(&CHECK);
        for (counter, _) in limits {
            call.key_with(|out| write_key(out, &self.prefix, counter));
        }
        call.arg(u8::from(consume));
        for (_, limit) in limits {
            call.arg(match limit.algorithm {
                Algorithm::FixedWindow => "f",
                Algorithm::Gcra => "g",
            })
            .arg(limit.limit)
            .arg(limit.window_ms());
        }
        match self.store.call(&call).await.map(|r| r.rows::<4>()) {
            Ok(Some(rows)) if rows.len() == limits.len() => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis rate limiter reachable again; shared limits restored");
                }
                rows.iter()
                    .zip(limits)
                    .map(|(r, (_, limit))| Decision {
                        allowed: r[0] == 1,
                        limit: limit.limit,
                        remaining: r[1],
                        reset: Duration::from_millis(r[2]),
                        retry_after: Duration::from_millis(r[3]),
                        window: limit.window,
                    })
                    .collect()
            }
            other => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    let why = match other {
                        Err(e) => e.to_string(),
                        Ok(_) => "unexpected script reply".into(),
                    };
                    tracing::warn!(error = %why, replicas = self.replicas, "redis rate limiter unreachable; enforcing per-replica limits");
                }
                let scaled: Vec<(Counter, Limit)> = limits
                    .iter()
                    .map(|(c, l)| (c.clone(), l.scaled(self.replicas)))
                    .collect();
                if consume {
                    self.fallback.acquire(&scaled).into_vec()
                } else {
                    scaled
                        .iter()
                        .map(|(c, l)| self.fallback.peek(c, l))
                        .collect()
                }
            }
        }
    }
}

/// The counter's key, `{<prefix>:rl:<group>}:<subject>:<name>`, appended to `out` without a
/// formatter: this runs for every counter of every check.
fn write_key(out: &mut Vec<u8>, prefix: &str, counter: &Counter) {
    out.push(b'{');
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(b":rl:");
    counter.subject.write_group(out);
    out.extend_from_slice(b"}:");
    counter.subject.write_id(out);
    out.push(b':');
    out.extend_from_slice(counter.name.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Every kind of subject, spelled as the keys in Redis have always been.
    #[test]
    fn a_counter_key_spells_its_group_and_subject() {
        use super::super::Subject;
        let (id, owner) = (Arc::from("key_1"), Arc::from("acct_9"));
        for (subject, want) in [
            (
                Subject::Key {
                    id,
                    owner: Arc::clone(&owner),
                },
                "{kglimit:rl:o:acct_9}:k:key_1:cat:payments_create",
            ),
            (
                Subject::Owner(owner),
                "{kglimit:rl:o:acct_9}:o:cat:payments_create",
            ),
            (
                Subject::Ip(std::net::IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0])),
                "{kglimit:rl:ip:2001:db8::}:ip:cat:payments_create",
            ),
            (
                Subject::Ip(std::net::IpAddr::from([192, 0, 2, 7])),
                "{kglimit:rl:ip:192.0.2.7}:ip:cat:payments_create",
            ),
        ] {
            let counter = Counter {
                subject,
                name: Arc::from("cat:payments_create"),
            };
            let mut out = Vec::new();
            write_key(&mut out, "kglimit", &counter);
            assert_eq!(String::from_utf8_lossy(&out), want);
        }
    }
}
