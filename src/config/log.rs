//! `[log]`: format, filter and the access log.

use serde::Deserialize;

use super::check::Check;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
    /// One access log line per request (target `keygate::access`).
    pub access: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawLog {
    format: Option<String>,
    filter: Option<String>,
    access: Option<bool>,
}

pub(super) fn validate(c: &mut Check<'_>, raw: RawLog) -> LogConfig {
    let log = LogConfig {
        format: match raw.format.as_deref().unwrap_or("auto") {
            "auto" => LogFormat::Auto,
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                c.problem(format!(
                    "log.format: {other:?} is not \"auto\", \"text\" or \"json\""
                ));
                LogFormat::Auto
            }
        },
        filter: raw.filter.unwrap_or_else(|| "info".into()),
        access: raw.access.unwrap_or(true),
    };
    if tracing_subscriber::EnvFilter::try_new(&log.filter).is_err() {
        c.problem(format!(
            "log.filter: {:?} is not a valid filter (e.g. \"info\", \"keygate=debug\")",
            log.filter
        ));
    }
    log
}
