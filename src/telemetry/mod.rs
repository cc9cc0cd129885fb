//! Telemetry: logging setup (here) and the metrics behind `/metrics` ([`metrics`]).

mod metrics;

use std::io::IsTerminal;

use crate::config::{LogConfig, LogFormat};
pub use metrics::{ConnectionCounters, Held, Histogram, Metrics, RouteCounters};

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
