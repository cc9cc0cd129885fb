//! `[attributes.<name>]`: request attributes a key can be restricted on (Zynta's country
//! restrictions). The operator says where the value is in the request — a header, a query
//! parameter, a path parameter of the route, or a field of a JSON body — and a key lists the
//! values it may use (`keys create --restrict country=NG,KE`).
//!
//! ```toml
//! [attributes.country]
//! source = "json"               # "header", "query", "path" or "json"
//! name = "/destination/country" # a JSON pointer, or a top-level field name
//! routes = ["create-transfer"]  # default: every route where the value can be found
//! required = true               # a restricted key's request without the value is refused
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::check::{Check, Size};

/// Where an attribute's value is in the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttributeSource {
    /// A header (lower-case name).
    Header(String),
    /// A query parameter.
    Query(String),
    /// A `{param}` of the route's path pattern.
    Path(String),
    /// A field of a JSON request body: a JSON pointer (`/a/b`). The body is read (up to
    /// `max_body` bytes) only for keys restricted on this attribute.
    Json { pointer: String, max_body: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttributeConfig {
    pub name: String,
    pub source: AttributeSource,
    /// Route names it applies to; empty: every route.
    pub routes: Vec<String>,
    /// A restricted key's request that does not carry the value is refused.
    pub required: bool,
    /// Values compare ASCII-case-insensitively (country codes).
    pub ignore_case: bool,
}

impl AttributeConfig {
    /// Whether `value` is among `allowed`.
    pub fn admits(&self, allowed: &[String], value: &str) -> bool {
        allowed.iter().any(|a| {
            if self.ignore_case {
                a.eq_ignore_ascii_case(value)
            } else {
                a == value
            }
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawAttribute {
    source: Option<String>,
    name: Option<String>,
    routes: Option<Vec<String>>,
    required: Option<bool>,
    ignore_case: Option<bool>,
    max_body: Option<Size>,
}

pub(super) fn validate(
    c: &mut Check<'_>,
    raw: BTreeMap<String, RawAttribute>,
) -> Vec<AttributeConfig> {
    let mut out = Vec::new();
    for (attr, r) in raw {
        let field = format!("attributes.{attr}");
        if attr.is_empty()
            || attr.len() > 64
            || !attr
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            c.problem(format!(
                "{field}: an attribute name is 1-64 of A-Z a-z 0-9 _ -"
            ));
        }
        let Some(name) = r.name.filter(|n| !n.is_empty()) else {
            c.problem(format!(
                "{field}.name: required (the header, parameter or JSON field holding the value)"
            ));
            continue;
        };
        let has_max_body = r.max_body.is_some();
        let source = match r.source.as_deref() {
            Some("header") => AttributeSource::Header(name.to_ascii_lowercase()),
            Some("query") => AttributeSource::Query(name),
            Some("path") => AttributeSource::Path(name),
            Some("json") => AttributeSource::Json {
                pointer: if name.starts_with('/') {
                    name
                } else {
                    format!("/{}", name.replace('~', "~0").replace('/', "~1"))
                },
                max_body: c.size(&format!("{field}.max_body"), r.max_body, 64 << 10),
            },
            other => {
                c.problem(format!(
                    "{field}.source: {:?} is not \"header\", \"query\", \"path\" or \"json\"",
                    other.unwrap_or("")
                ));
                continue;
            }
        };
        if has_max_body && !matches!(source, AttributeSource::Json { .. }) {
            c.problem(format!(
                "{field}.max_body: only applies to source = \"json\""
            ));
        }
        out.push(AttributeConfig {
            name: attr,
            source,
            routes: r.routes.unwrap_or_default(),
            required: r.required.unwrap_or(false),
            ignore_case: r.ignore_case.unwrap_or(true),
        });
    }
    out
}
