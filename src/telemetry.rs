//! Logging setup and the process counters behind `/metrics` on the ops listener. Counters are
//! plain atomics bumped on the request path; rendering happens only when scraped. No label ever
//! carries a key, a key id or a client address.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{LogConfig, LogFormat};

/// Process-wide counters. One instance per running proxy, shared by `Arc`.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
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
}

impl Metrics {
    /// Prometheus text exposition. `cached_keys` is sampled by the caller.
    pub fn render(&self, cached_keys: u64) -> String {
        let mut out = String::with_capacity(2048);
        let counters: [(&str, &str, &AtomicU64); 16] = [
            (
                "keygate_requests_total",
                "Requests received on the proxy listener.",
                &self.requests,
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
        out
    }
}

/// Installs the global tracing subscriber. `RUST_LOG` overrides the configured filter.
pub fn init_logging(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.filter));
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Ignore "already set": tests and `dev` may initialise twice.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
