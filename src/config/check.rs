//! The validation helpers every section uses: they turn raw values into typed ones and record a
//! problem (naming the setting) instead of failing, so one pass reports everything.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Collects problems while a configuration is validated.
pub(super) struct Check<'a> {
    pub(super) problems: &'a mut Vec<String>,
}

/// A byte size: an integer, or a string such as `"10MiB"`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Size {
    Bytes(u64),
    Text(String),
}

impl Check<'_> {
    /// Deserializes the section `name` (absent: the raw defaults). Unknown settings and a type
    /// error are problems; the section's other sections are checked regardless.
    pub(super) fn section<T: DeserializeOwned + Default>(
        &mut self,
        name: &str,
        value: Option<toml::Value>,
    ) -> T {
        let Some(value) = value else {
            return T::default();
        };
        let mut unknown = Vec::new();
        let parsed = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()));
        for p in unknown {
            self.problem(format!("{name}.{p}: unknown setting"));
        }
        match parsed {
            Ok(v) => v,
            Err(e) => {
                self.problem(format!("{name}: {}", e.to_string().trim()));
                T::default()
            }
        }
    }

    pub(super) fn duration(
        &mut self,
        field: &str,
        raw: Option<String>,
        default: Duration,
    ) -> Duration {
        let Some(s) = raw else { return default };
        match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.problems
                    .push(format!("{field}: must be greater than zero"));
                default
            }
            Err(e) => {
                self.problems.push(format!(
                    "{field}: {s:?} is not a duration ({e}); use e.g. \"250ms\", \"30s\", \"5m\""
                ));
                default
            }
        }
    }

    pub(super) fn addr(&mut self, field: &str, raw: Option<String>, default: &str) -> SocketAddr {
        let s = raw.unwrap_or_else(|| default.to_owned());
        s.parse().unwrap_or_else(|_| {
            self.problems.push(format!(
                "{field}: {s:?} is not an address; use ip:port, e.g. \"0.0.0.0:8080\" or \"[::]:8080\""
            ));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    pub(super) fn size(&mut self, field: &str, raw: Option<Size>, default: u64) -> u64 {
        match raw {
            None => default,
            Some(Size::Bytes(n)) => n,
            Some(Size::Text(s)) => parse_size(&s).unwrap_or_else(|| {
                self.problems.push(format!(
                    "{field}: {s:?} is not a size; use bytes or e.g. \"512KiB\", \"10MiB\", \"1GiB\""
                ));
                default
            }),
        }
    }

    pub(super) fn positive<T: PartialOrd + Default + Copy>(
        &mut self,
        field: &str,
        raw: Option<T>,
        default: T,
    ) -> T {
        match raw {
            Some(v) if v > T::default() => v,
            Some(_) => {
                self.problems
                    .push(format!("{field}: must be greater than zero"));
                default
            }
            None => default,
        }
    }

    pub(super) fn problem(&mut self, p: String) {
        self.problems.push(p);
    }
}

pub(super) fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("1 GiB"), Some(1 << 30));
        assert_eq!(parse_size("1TiB"), None);
        assert_eq!(parse_size("99999999999999999999GiB"), None);
    }
}
