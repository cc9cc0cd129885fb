//! The process counters behind `/metrics` on the ops listener. Counters are plain atomics
//! bumped on the request path; rendering happens only when scraped. No label ever carries a key,
//! a key id or a client address.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Process-wide counters. One instance per running proxy, shared by `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    /// Authorization checks received on the auth-only listener.
    pub authz_checks: AtomicU64,
    pub forwarded: AtomicU64,
    pub rejected: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub negative_cache_hits: AtomicU64,
    pub argon2_runs: AtomicU64,
    pub store_errors: AtomicU64,
    pub stale_served: AtomicU64,
    pub rate_limited: AtomicU64,
    pub report_only_denials: AtomicU64,
    pub invalidations: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub in_flight: AtomicU64,
    pub audit_events: AtomicU64,
    pub audit_dropped: AtomicU64,
    pub audit_sink_errors: AtomicU64,
    pub tls_handshake_errors: AtomicU64,
    /// Configuration reloads (SIGHUP, file change) applied and refused.
    pub config_reloads: AtomicU64,
    pub config_reload_failures: AtomicU64,
    /// Requests being forwarded (a gauge of upstream connection use).
    pub upstream_in_flight: AtomicU64,
    /// Open tunnels (upgrades, CONNECT).
    pub tunnels_open: AtomicU64,
    /// Key store lookups (cache misses).
    pub store_seconds: Histogram,
    /// Time from a change in the store to this process applying it (Redis store: measured with
    /// the Redis server's clock stamped into the invalidation message).
    pub revocation_lag: Histogram,
    /// Per route: latency histograms and requests by outcome (`ok` or the error code).
    pub by_route: RouteCounters,
    /// The proxy listener's connections.
    pub connections: Arc<ConnectionCounters>,
    /// keygate's keep-alive pool to a plain HTTP/1.1 upstream.
    pub upstream_pool: Arc<PoolStats>,
}

/// The upstream keep-alive pool: connections dialled, requests sent on a reused connection,
/// connections open and idle now.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub opened: AtomicU64,
    pub reused: AtomicU64,
    pub open: AtomicU64,
    pub idle: AtomicU64,
}

/// A listener's connections: open, refused at a cap, closed by a timeout.
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    pub open: AtomicU64,
    pub refused_global: AtomicU64,
    pub refused_per_ip: AtomicU64,
    /// Closed for not completing a first request head in time.
    pub timed_out_head: AtomicU64,
    /// Closed after `idle_timeout` with nothing in flight.
    pub closed_idle: AtomicU64,
}

/// Holds a gauge one higher for as long as it lives (also when a future is dropped midway).
pub struct Held<'a>(&'a AtomicU64);

impl<'a> Held<'a> {
    pub fn enter(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Held(gauge)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bucket bounds, seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket latency histogram: atomics only.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// The series of one histogram; `labels` is empty or `name="value",` pairs.
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (b, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let bare = labels.trim_end_matches(',');
        let braces = if bare.is_empty() {
            String::new()
        } else {
            format!("{{{bare}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {sum}\n{name}_count{braces} {count}"
        );
    }
}

/// One route's figures: its latency histograms and its requests by outcome.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Whole requests, from the head received to the response head sent.
    request_seconds: Histogram,
    /// Upstream round trips, to the response head (forwarded requests only).
    upstream_seconds: Histogram,
    /// (outcome code, requests): `ok` or an error code, a closed set of a few dozen.
    outcomes: RwLock<Vec<(&'static str, AtomicU64)>>,
}

impl RouteStats {
    fn count(&self, code: &'static str) {
        let find = |rows: &[(&'static str, AtomicU64)]| {
            rows.iter()
                .find(|(c, _)| std::ptr::eq(*c, code) || *c == code)
                .map(|(_, n)| n.fetch_add(1, Ordering::Relaxed))
                .is_some()
        };
        if find(&self.outcomes.read().unwrap_or_else(|e| e.into_inner())) {
            return;
        }
        let mut rows = self.outcomes.write().unwrap_or_else(|e| e.into_inner());
        if !find(&rows) {
            rows.push((code, AtomicU64::new(1)));
        }
    }
}

/// Which of a route's histograms.
type PickHistogram = fn(&RouteStats) -> &Histogram;

/// Figures per route. Route names come from the configuration (a closed set; `-` for requests
/// refused before a route matched), outcome codes from the error table.
#[derive(Debug, Default)]
pub struct RouteCounters {
    map: RwLock<HashMap<Arc<str>, RouteStats, foldhash::fast::RandomState>>,
}

impl RouteCounters {
    /// One finished request: one map lookup, under the read lock, for all of its route's
    /// figures (the write lock only the first time a route is seen).
    pub fn record(
        &self,
        route: &Arc<str>,
        code: &'static str,
        took: Duration,
        upstream: Option<Duration>,
    ) {
        let observe = |stats: &RouteStats| {
            stats.request_seconds.observe(took);
            if let Some(d) = upstream {
                stats.upstream_seconds.observe(d);
            }
            stats.count(code);
        };
        if let Some(s) = self
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(route)
        {
            return observe(s);
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        observe(map.entry(Arc::clone(route)).or_default());
    }

    fn render(&self, out: &mut String) {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = map
            .iter()
            .map(|(route, stats)| (route.replace(['\\', '"', '\n'], "_"), stats))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        let name = "keygate_route_requests_total";
        let _ = writeln!(
            out,
            "# HELP {name} Requests by route and outcome (ok, or the error code).\n# TYPE {name} counter"
        );
        for (route, stats) in &rows {
            let mut outcomes: Vec<_> = stats
                .outcomes
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(c, n)| (*c, n.load(Ordering::Relaxed)))
                .collect();
            outcomes.sort_unstable();
            for (code, n) in outcomes {
                let _ = writeln!(out, "{name}{{route=\"{route}\",outcome=\"{code}\"}} {n}");
            }
        }
        let histograms: [(&str, &str, PickHistogram); 2] = [
            (
                "keygate_request_duration_seconds",
                "Time from request head to response head, including the upstream, by route.",
                |s| &s.request_seconds,
            ),
            (
                "keygate_upstream_duration_seconds",
                "Upstream round trip to the response head, by route.",
                |s| &s.upstream_seconds,
            ),
        ];
        for (name, help, pick) in histograms {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (route, stats) in &rows {
                pick(stats).render_series(out, name, &format!("route=\"{route}\","));
            }
        }
    }
}

impl Metrics {
    /// Prometheus text exposition. `cached_keys` is sampled by the caller.
    pub fn render(&self, cached_keys: u64) -> String {
        let mut out = String::with_capacity(2048);
        let counters: [(&str, &str, &AtomicU64); 18] = [
            (
                "keygate_requests_total",
                "Requests received on the proxy listener.",
                &self.requests,
            ),
            (
                "keygate_authz_checks_total",
                "Authorization checks received on the auth-only listener (authz).",
                &self.authz_checks,
            ),
            (
                "keygate_forwarded_total",
                "Requests forwarded to the upstream.",
                &self.forwarded,
            ),
            (
                "keygate_rejected_total",
                "Requests answered by keygate with an error.",
                &self.rejected,
            ),
            (
                "keygate_key_cache_hits_total",
                "Verified-key cache hits.",
                &self.cache_hits,
            ),
            (
                "keygate_key_cache_misses_total",
                "Verified-key cache misses.",
                &self.cache_misses,
            ),
            (
                "keygate_negative_cache_hits_total",
                "Unknown keys answered from the negative cache.",
                &self.negative_cache_hits,
            ),
            (
                "keygate_argon2_verifications_total",
                "Argon2id verifications run.",
                &self.argon2_runs,
            ),
            (
                "keygate_store_errors_total",
                "Failed key store lookups.",
                &self.store_errors,
            ),
            (
                "keygate_rate_limited_total",
                "Requests rejected by a rate limit (including report-only).",
                &self.rate_limited,
            ),
            (
                "keygate_report_only_denials_total",
                "Requests a report-only rule would have denied.",
                &self.report_only_denials,
            ),
            (
                "keygate_stale_auth_total",
                "Requests authorised from a cached key while the store was unreachable.",
                &self.stale_served,
            ),
            (
                "keygate_cache_invalidations_total",
                "Cache invalidations applied.",
                &self.invalidations,
            ),
            (
                "keygate_upstream_errors_total",
                "Upstream connection failures and timeouts.",
                &self.upstream_errors,
            ),
            (
                "keygate_audit_events_total",
                "Audit events written to the sink.",
                &self.audit_events,
            ),
            (
                "keygate_audit_dropped_total",
                "Audit events dropped because the audit queue was full.",
                &self.audit_dropped,
            ),
            (
                "keygate_tls_handshake_errors_total",
                "TLS handshakes that failed or timed out.",
                &self.tls_handshake_errors,
            ),
            (
                "keygate_audit_sink_errors_total",
                "Audit events the sink failed to store.",
                &self.audit_sink_errors,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP keygate_in_flight_requests Requests being handled.\n# TYPE keygate_in_flight_requests gauge\nkeygate_in_flight_requests {}",
            self.in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP keygate_key_cache_entries Verified keys cached.\n# TYPE keygate_key_cache_entries gauge\nkeygate_key_cache_entries {cached_keys}"
        );
        let _ = writeln!(
            out,
            "# HELP keygate_upstream_in_flight Requests being forwarded (upstream connections in use).\n# TYPE keygate_upstream_in_flight gauge\nkeygate_upstream_in_flight {}",
            self.upstream_in_flight.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP keygate_tunnels_open Open tunnels (upgraded connections, CONNECT).\n# TYPE keygate_tunnels_open gauge\nkeygate_tunnels_open {}",
            self.tunnels_open.load(Ordering::Relaxed)
        );
        let c = &self.connections;
        let _ = writeln!(
            out,
            "# HELP keygate_connections_open Open client connections.\n# TYPE keygate_connections_open gauge\nkeygate_connections_open {}",
            c.open.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP keygate_connections_refused_total Connections refused at accept, by the cap reached.\n# TYPE keygate_connections_refused_total counter\nkeygate_connections_refused_total{{reason=\"max_connections\"}} {}\nkeygate_connections_refused_total{{reason=\"max_connections_per_ip\"}} {}",
            c.refused_global.load(Ordering::Relaxed),
            c.refused_per_ip.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP keygate_connections_closed_total Connections keygate closed for waiting too long.\n# TYPE keygate_connections_closed_total counter\nkeygate_connections_closed_total{{reason=\"first_request_timeout\"}} {}\nkeygate_connections_closed_total{{reason=\"idle_timeout\"}} {}",
            c.timed_out_head.load(Ordering::Relaxed),
            c.closed_idle.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP keygate_config_reloads_total Configuration reloads, by result (a refused file keeps the running configuration).
# TYPE keygate_config_reloads_total counter
keygate_config_reloads_total{{result=\"success\"}} {}
keygate_config_reloads_total{{result=\"failure\"}} {}",
            self.config_reloads.load(Ordering::Relaxed),
            self.config_reload_failures.load(Ordering::Relaxed)
        );
        let p = &self.upstream_pool;
        let _ = writeln!(
            out,
            "# HELP keygate_upstream_connections_opened_total Upstream connections dialled by the keep-alive pool.
# TYPE keygate_upstream_connections_opened_total counter
keygate_upstream_connections_opened_total {}
# HELP keygate_upstream_connections_reused_total Requests sent on a pooled (kept-alive) upstream connection.
# TYPE keygate_upstream_connections_reused_total counter
keygate_upstream_connections_reused_total {}
# HELP keygate_upstream_connections_open Upstream connections open (in use or idle).
# TYPE keygate_upstream_connections_open gauge
keygate_upstream_connections_open {}
# HELP keygate_upstream_connections_idle Upstream connections idle in the pool.
# TYPE keygate_upstream_connections_idle gauge
keygate_upstream_connections_idle {}",
            p.opened.load(Ordering::Relaxed),
            p.reused.load(Ordering::Relaxed),
            p.open.load(Ordering::Relaxed),
            p.idle.load(Ordering::Relaxed)
        );
        super::process::render(&mut out);
        self.by_route.render(&mut out);
        self.store_seconds.render(
            &mut out,
            "keygate_store_lookup_duration_seconds",
            "Key store lookups (cache misses).",
        );
        self.revocation_lag.render(
            &mut out,
            "keygate_revocation_lag_seconds",
            "Time from a key change in the store to this replica applying it.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_figures_render_as_labelled_series() {
        let routes = RouteCounters::default();
        let payments: Arc<str> = Arc::from("pay\"ments");
        let ms = Duration::from_millis(3);
        routes.record(&payments, "ok", ms, Some(ms));
        routes.record(&payments, "ok", ms, None);
        routes.record(&payments, "unauthorized", ms, None);
        routes.record(&Arc::from("-"), "invalid_path", ms, None);
        let mut out = String::new();
        routes.render(&mut out);
        for line in [
            "keygate_route_requests_total{route=\"pay_ments\",outcome=\"ok\"} 2",
            "keygate_route_requests_total{route=\"pay_ments\",outcome=\"unauthorized\"} 1",
            "keygate_route_requests_total{route=\"-\",outcome=\"invalid_path\"} 1",
            "keygate_request_duration_seconds_bucket{route=\"pay_ments\",le=\"0.0025\"} 0",
            "keygate_request_duration_seconds_bucket{route=\"pay_ments\",le=\"0.005\"} 3",
            "keygate_request_duration_seconds_count{route=\"pay_ments\"} 3",
            "keygate_upstream_duration_seconds_count{route=\"pay_ments\"} 1",
            "keygate_upstream_duration_seconds_count{route=\"-\"} 0",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        // One TYPE line per metric name, however many routes.
        assert_eq!(
            out.matches("# TYPE keygate_request_duration_seconds histogram")
                .count(),
            1
        );
    }
}
