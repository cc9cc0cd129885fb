//! `[paths]`: which request-path forms are refused before routing. Each form below is read
//! differently by some common upstream server (Tomcat and Spring strip `;` parameters, IIS
//! trims trailing dots and spaces, servers that decode twice see `%252e` as `.`, …), so a route
//! keygate matched could be another route upstream. All are refused (400) by default; an API
//! that needs one lists it in `allow`.
//!
//! ```toml
//! [paths]
//! allow = ["semicolons"]        # matrix parameters, for an upstream that keeps them
//! case_insensitive = true       # for an upstream that folds case
//! ```

use serde::Deserialize;

use super::check::Check;

/// Path forms that can be allowed, by their `allow` names.
pub const PATH_FORMS: &[&str] = &[
    "semicolons",
    "encoded_delimiters",
    "double_encoding",
    "encoded_controls",
    "trailing_dots",
    "raw_non_ascii",
    "invalid_utf8",
];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathRules {
    /// `;` or `%3B` anywhere in the path (`/public/..;/admin`, `/admin;x=1/x`).
    pub semicolons: bool,
    /// `%3F` and `%23`: an encoded `?` or `#`.
    pub encoded_delimiters: bool,
    /// `%25` followed by two hex digits (also when keygate's own decoding would produce it,
    /// `%25%32%65`): a second decoding upstream would see another character.
    pub double_encoding: bool,
    /// Encoded control bytes (`%00`–`%1F`, `%7F`); `%00` is refused regardless.
    pub encoded_controls: bool,
    /// A segment ending in `.`, a space or a tab (`/admin./x`, `/admin%20/x`).
    pub trailing_dots: bool,
    /// Raw bytes ≥ 0x80 in the path (percent-encoded UTF-8 is always fine).
    pub raw_non_ascii: bool,
    /// Percent-escapes that do not decode to UTF-8, including overlong forms (`%c0%ae`).
    pub invalid_utf8: bool,
    /// Literal route segments match in any case; the forwarded path takes the route's case.
    pub case_insensitive: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawPaths {
    allow: Vec<String>,
    case_insensitive: Option<bool>,
}

pub(super) fn validate(c: &mut Check<'_>, raw: RawPaths) -> PathRules {
    let mut rules = PathRules {
        case_insensitive: raw.case_insensitive.unwrap_or(false),
        ..PathRules::default()
    };
    for form in raw.allow {
        let slot = match form.as_str() {
            "semicolons" => &mut rules.semicolons,
            "encoded_delimiters" => &mut rules.encoded_delimiters,
            "double_encoding" => &mut rules.double_encoding,
            "encoded_controls" => &mut rules.encoded_controls,
            "trailing_dots" => &mut rules.trailing_dots,
            "raw_non_ascii" => &mut rules.raw_non_ascii,
            "invalid_utf8" => &mut rules.invalid_utf8,
            other => {
                c.problem(format!(
                    "paths.allow: {other:?} is not a path form; one of {}",
                    PATH_FORMS.join(", ")
                ));
                continue;
            }
        };
        *slot = true;
    }
    rules
}
