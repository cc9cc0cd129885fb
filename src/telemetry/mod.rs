//! Telemetry: logging setup (here) and the metrics behind `/metrics` ([`metrics`]).

mod metrics;
mod process;

use std::io::IsTerminal;

use crate::config::{LogConfig, LogFormat};
pub use metrics::{ConnectionCounters, Held, Histogram, Metrics, PoolStats, RouteCounters};

/// Installs the global tracing subscriber. `RUST_LOG` overrides the configured filter.
pub fn init_logging(cfg: &LogConfig) {
    // RUST_LOG, when set, wins over log.filter; a bad one is reported, not silently ignored.
    let mut bad_env = None;
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => {
            tracing_subscriber::EnvFilter::try_new(&v).unwrap_or_else(|e| {
                bad_env = Some((v, e.to_string()));
                tracing_subscriber::EnvFilter::new(&cfg.filter)
            })
        }
        _ => tracing_subscriber::EnvFilter::new(&cfg.filter),
    };
    let terminal = std::io::stderr().is_terminal();
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal: never escape codes in files or kubectl logs.
        .with_ansi(terminal && !json);
    // Ignore "already set": tests and `dev` may initialise twice.
    let _ = if json {
        // One flat object per line: the event's fields beside timestamp, level and target.
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    if let Some((value, error)) = bad_env {
        tracing::warn!(rust_log = %value, %error, filter = %cfg.filter, "RUST_LOG is not a valid filter; using log.filter");
    }
}
