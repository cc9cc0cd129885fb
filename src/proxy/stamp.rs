//! What keygate adds to every response it sends: the request id and the rate-limit fields of
//! the request's decision. Set in the header map for hyper's connections ([`Stamp::apply`]), or
//! written as head lines by keygate's own HTTP/1.1 writer ([`Stamp::write`]), which then leaves
//! out the response's own fields of those names ([`Stamp::replaces`]): the same outcome as
//! setting them in the map, without a map insert per field.

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::h1::field;
use super::headers::X_REQUEST_ID;
use crate::config::HeaderStyles;
use crate::policy::ratelimit::{
    Decision, is_rate_limit_field, rate_limit_fields, set_rate_limit_headers,
};

pub struct Stamp {
    pub request_id: HeaderValue,
    /// The decision reported and the configured header styles.
    pub rate: Option<(Decision, HeaderStyles)>,
    /// When the response was ready (the request's last clock reading): the connection's
    /// next wait is timed from it.
    pub at: std::time::Instant,
    /// The wall clock then (Unix seconds): the response's `Date` and the rate-limit reset.
    pub unix: u64,
}

impl Stamp {
    /// Sets the stamp's fields in `headers`, replacing any of the same names.
    pub fn apply(self, headers: &mut HeaderMap) {
        if let Some((d, styles)) = &self.rate {
            set_rate_limit_headers(headers, d, *styles);
        }
        headers.insert(X_REQUEST_ID.clone(), self.request_id);
    }

    /// Whether the response's own field `name` gives way to one of the stamp's.
    pub fn replaces(&self, name: &HeaderName) -> bool {
        self.replaces_name(name.as_str().as_bytes())
    }

    /// Whether a name of `len` bytes can be one [`Stamp::replaces_name`] matches (a cheap
    /// first look: most names are of no length theirs have).
    pub fn may_replace(len: usize) -> bool {
        matches!(len, 9 | 12 | 15..=17 | 19 | 21)
    }

    /// [`Stamp::replaces`] for a lower-case name.
    pub fn replaces_name(&self, name: &[u8]) -> bool {
        name == X_REQUEST_ID.as_str().as_bytes()
            || self
                .rate
                .is_some_and(|(_, styles)| is_rate_limit_field(name, styles))
    }

    /// Appends the stamp's fields to a response head being written, one line each; `unix`:
    /// the current time (Unix seconds), for `X-RateLimit-Reset`.
    pub fn write(&self, out: &mut Vec<u8>, unix: u64) {
        let mut line = |name: &HeaderName, value: &[u8]| field(out, name.as_ref(), value);
        if let Some((d, styles)) = &self.rate {
            rate_limit_fields(d, *styles, || unix, &mut line);
        }
        line(&X_REQUEST_ID, self.request_id.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stamp(styles: HeaderStyles) -> Stamp {
        let d = Decision {
            allowed: true,
            limit: 100,
            remaining: 42,
            reset: Duration::from_millis(1500),
            retry_after: Duration::ZERO,
            window: Duration::from_secs(60),
        };
        Stamp {
            request_id: HeaderValue::from_static("req-7"),
            rate: Some((d, styles)),
            at: std::time::Instant::now(),
            unix: 1_800_000_000,
        }
    }

    /// The response's own fields, then the stamp's: written as lines, or set in the map.
    fn both(styles: HeaderStyles, own: &[(&'static str, &'static str)]) -> (String, HeaderMap) {
        let mut map = HeaderMap::new();
        for (n, v) in own {
            map.append(*n, HeaderValue::from_static(v));
        }
        let mut out = Vec::new();
        let s = stamp(styles);
        for (n, v) in &map {
            if !s.replaces(n) {
                out.extend_from_slice(format!("{n}: {}\r\n", v.to_str().unwrap_or("")).as_bytes());
            }
        }
        s.write(&mut out, crate::time::Timestamp::now().unix());
        stamp(styles).apply(&mut map);
        (String::from_utf8_lossy(&out).into_owned(), map)
    }

    /// Every name the stamp writes, in every style, passes the first look.
    #[test]
    fn every_name_the_stamp_writes_has_a_length_it_looks_at() {
        let all = HeaderStyles {
            x_ratelimit: true,
            ratelimit: true,
            structured: true,
        };
        let mut names = vec![X_REQUEST_ID.as_str().len()];
        if let Some((d, styles)) = &stamp(all).rate {
            rate_limit_fields(d, *styles, || 0, |n, _| names.push(n.as_str().len()));
        }
        assert!(names.len() >= 9, "{names:?}");
        for len in names {
            assert!(Stamp::may_replace(len) && len <= 32, "{len}");
        }
    }

    #[test]
    fn written_lines_are_the_fields_the_map_gets() {
        let own = [
            ("content-type", "application/json"),
            ("x-request-id", "upstream-id"),
            ("x-ratelimit-limit", "5"),
            ("ratelimit-limit", "7"),
            ("ratelimit", "upstream"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ];
        for styles in [
            HeaderStyles::default(),
            HeaderStyles {
                x_ratelimit: true,
                ratelimit: false,
                structured: true,
            },
            HeaderStyles {
                x_ratelimit: true,
                ratelimit: true,
                structured: false,
            },
        ] {
            let (text, map) = both(styles, &own);
            let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
            let mut from_map: Vec<String> = map
                .iter()
                .map(|(n, v)| format!("{n}: {}", v.to_str().unwrap_or("")))
                .collect();
            // Each name's values in order; different names in any order. The reset time is
            // read off the clock by each way: a second may tick between the two.
            let reset = |lines: &mut Vec<String>| {
                let i = lines
                    .iter()
                    .position(|l| l.starts_with("x-ratelimit-reset: "))?;
                lines.remove(i)["x-ratelimit-reset: ".len()..]
                    .parse::<u64>()
                    .ok()
            };
            let (a, b) = (reset(&mut lines), reset(&mut from_map));
            assert_eq!(a.is_some(), styles.x_ratelimit);
            match (a, b) {
                (Some(a), Some(b)) => assert!(a.abs_diff(b) <= 1, "{a} {b}"),
                (a, b) => assert_eq!(a, b),
            }
            lines.sort();
            from_map.sort();
            assert_eq!(lines, from_map, "{styles:?}");
            assert!(lines.contains(&"x-request-id: req-7".to_owned()));
            assert_eq!(
                lines.contains(&"ratelimit-limit: 7".to_owned()),
                !styles.ratelimit
            );
        }
    }
}
