//! The validation helpers every section uses: they turn raw values into typed ones and record a
//! problem (naming the setting) instead of failing, so one pass reports everything.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The longest duration any setting takes (10 years): "practically never" without deadlines
/// that overflow the clock.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Collects problems while a configuration is validated.
pub(super) struct Check<'a> {
    pub(super) problems: &'a mut Vec<String>,
    /// The configuration file's folder: relative file settings are taken from there.
    pub(super) base: Option<&'a Path>,
}

/// A byte size: an integer, or a string such as `"10MiB"`.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Size {
    Bytes(u64),
    Text(String),
}

/// A duration: whole seconds as an integer, or a string such as `"250ms"`, `"30s"`, `"5m"`.
#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
pub(crate) enum DurationValue {
    Seconds(u64),
    Text(String),
}

impl From<String> for DurationValue {
    fn from(s: String) -> Self {
        DurationValue::Text(s)
    }
}

impl Check<'_> {
    /// A file setting: relative to the configuration file's folder (when there is a file).
    pub(super) fn file(&self, raw: impl Into<PathBuf>) -> PathBuf {
        let p: PathBuf = raw.into();
        match self.base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
        }
    }

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
        let value_again = value.clone();
        let parsed = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()));
        let known = fields_of::<T>();
        for p in unknown {
            // Only a misspelt setting of this section itself gets a suggestion.
            let hint = if p.contains('.') {
                String::new()
            } else {
                did_you_mean(&p, known)
            };
            self.problem(format!("{name}.{p}: unknown setting{hint}"));
        }
        match parsed {
            Ok(v) => v,
            Err(e) => self.each_field::<T>(name, value_again, e),
        }
    }

    /// After a type error in a section: every setting is tried alone, so each bad one is
    /// reported (not only the first), and the section keeps the settings that are fine.
    fn each_field<T: DeserializeOwned + Default>(
        &mut self,
        name: &str,
        value: toml::Value,
        whole: toml::de::Error,
    ) -> T {
        let toml::Value::Table(table) = value else {
            self.problem(format!("{name}: {}", whole.to_string().trim()));
            return T::default();
        };
        let mut good = toml::Table::new();
        let mut reported = false;
        for (key, v) in table {
            let alone: toml::Table = std::iter::once((key.clone(), v.clone())).collect();
            match T::deserialize(toml::Value::Table(alone)) {
                Ok(_) => {
                    good.insert(key, v);
                }
                Err(e) => {
                    reported = true;
                    let msg = e.to_string();
                    let msg = msg.trim();
                    // serde names the setting itself ("invalid type: … for key `x`" or not).
                    self.problem(format!("{name}.{key}: {msg}"));
                }
            }
        }
        if !reported {
            self.problem(format!("{name}: {}", whole.to_string().trim()));
        }
        T::deserialize(toml::Value::Table(good)).unwrap_or_default()
    }

    /// A duration setting (whole seconds or text such as "30s"): greater than zero, and at
    /// most [`MAX_DURATION`], so every deadline computed from it stays representable.
    pub(super) fn duration(
        &mut self,
        field: &str,
        raw: Option<impl Into<DurationValue>>,
        default: Duration,
    ) -> Duration {
        let parsed = match raw.map(Into::into) {
            None => return default,
            Some(DurationValue::Seconds(n)) => Some(Duration::from_secs(n)),
            Some(DurationValue::Text(s)) => humantime::parse_duration(s.trim()).ok().or_else(|| {
                self.problems.push(format!(
                    "{field}: {s:?} is not a duration; use whole seconds (30) or e.g. \"250ms\", \"30s\", \"5m\", \"1h\""
                ));
                None
            }),
        };
        match parsed {
            Some(d) if d > MAX_DURATION => {
                self.problems.push(format!(
                    "{field}: at most 10 years ({} seconds)",
                    MAX_DURATION.as_secs()
                ));
                default
            }
            Some(d) if !d.is_zero() => d,
            Some(_) => {
                self.problems
                    .push(format!("{field}: must be greater than zero"));
                default
            }
            None => default,
        }
    }

    pub(super) fn addr(&mut self, field: &str, raw: Option<String>, default: &str) -> SocketAddr {
        let s = raw.unwrap_or_else(|| default.to_owned());
        parse_addr(&s).unwrap_or_else(|| {
            self.problems.push(format!(
                "{field}: {s:?} is not an address; use ip:port, \":port\" (every interface) or \"localhost:port\", e.g. \"0.0.0.0:8080\" or \"[::]:8080\""
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

/// The settings a section's struct accepts: serde names them to the deserializer it asks for a
/// struct, so a probe that only listens for that learns them.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor};
    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> serde::Deserializer<'de> for Probe<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Self::Error::custom("probe"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(Self::Error::custom("probe"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

/// `"; did you mean `x`?"` for the closest of `known` to a misspelt `name`, or nothing.
pub(super) fn did_you_mean(name: &str, known: &[&str]) -> String {
    let best = known
        .iter()
        .map(|k| (edit_distance(name, k), *k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= (name.len() / 3).max(2) => format!("; did you mean `{k}`?"),
        _ => String::new(),
    }
}

/// Levenshtein distance over bytes (setting names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// `ip:port`, `:port` (every IPv4 interface, as nginx and Go read it) or `localhost:port`
/// (loopback).
pub(super) fn parse_addr(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    match host {
        "" => Some(SocketAddr::from(([0, 0, 0, 0], port))),
        h if h.eq_ignore_ascii_case("localhost") => Some(SocketAddr::from(([127, 0, 0, 1], port))),
        _ => None,
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

    #[test]
    fn addresses_and_durations() {
        assert_eq!(parse_addr(":8080"), Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(
            parse_addr("localhost:9"),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(parse_addr("[::1]:9"), Some("[::1]:9".parse().unwrap()));
        assert_eq!(parse_addr("example.com:80"), None);
        assert_eq!(parse_addr(":99999"), None);
        let mut problems = Vec::new();
        let mut c = Check {
            problems: &mut problems,
            base: None,
        };
        let d = Duration::from_secs(7);
        assert_eq!(
            c.duration("a", Some(DurationValue::Seconds(30)), d),
            Duration::from_secs(30)
        );
        assert_eq!(
            c.duration("b", Some("250ms".to_owned()), d),
            Duration::from_millis(250)
        );
        assert_eq!(c.duration("c", Some("soon".to_owned()), d), d);
        assert_eq!(c.duration("d", Some(DurationValue::Seconds(0)), d), d);
        assert_eq!(problems.len(), 2);
        assert!(
            problems[0].starts_with("c: \"soon\" is not a duration; use whole seconds"),
            "{problems:?}"
        );
        assert!(
            !problems[0].contains("expected"),
            "humantime's wording leaked: {problems:?}"
        );
        assert_eq!(problems[1], "d: must be greater than zero");
    }

    #[test]
    fn misspelt_settings_get_a_suggestion() {
        assert_eq!(edit_distance("rate_limit", "rate_limits"), 1);
        assert_eq!(
            did_you_mean("rate_limit", &["routes", "rate_limits"]),
            "; did you mean `rate_limits`?"
        );
        assert_eq!(did_you_mean("zzz", &["routes", "rate_limits"]), "");
        #[derive(Deserialize, Default)]
        #[allow(dead_code)]
        struct Raw {
            idle_timeout: Option<u64>,
            drain_timeout: Option<u64>,
        }
        assert_eq!(fields_of::<Raw>(), &["idle_timeout", "drain_timeout"]);
        let mut problems = Vec::new();
        let mut c = Check {
            problems: &mut problems,
            base: None,
        };
        let value: toml::Value = toml::from_str("idle_timout = 3").unwrap();
        let _: Raw = c.section("listen", Some(value));
        assert_eq!(
            problems,
            ["listen.idle_timout: unknown setting; did you mean `idle_timeout`?"]
        );
    }

    #[test]
    fn every_type_error_of_a_section_is_reported() {
        #[derive(Deserialize, Default, Debug)]
        #[serde(default)]
        struct Raw {
            a: Option<String>,
            b: Option<u64>,
            c: Option<bool>,
        }
        let mut problems = Vec::new();
        let mut c = Check {
            problems: &mut problems,
            base: None,
        };
        let value: toml::Value = toml::from_str("a = 1\nb = \"x\"\nc = true").unwrap();
        let raw: Raw = c.section("s", Some(value));
        assert_eq!(raw.c, Some(true), "the good setting was lost");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("s.a: invalid type"), "{problems:?}");
        assert!(problems[1].starts_with("s.b: invalid type"), "{problems:?}");
    }
}
