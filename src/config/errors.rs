//! `[errors]`: the error contract — how keygate's own rejections look to the API's clients. By
//! default the table in the README; an operator can reshape it per kind of error (status, code
//! spelling, message template) and choose the body layout, so keygate answers exactly as the
//! API it fronts always has (`401 INVALID_API_KEY`, a flat `{"code","message"}`, …).
//!
//! ```toml
//! [errors]
//! layout = "flat"                       # or "wrapped" (default): {"error": {...}}
//! fields = { code = "code", message = "message", request_id = "" }   # "" leaves a field out
//! [errors.ip_not_allowed]
//! code = "forbidden"
//! message = "Request origin IP is not in the API key allowlist."
//! [errors.invalid_key]                  # a group: malformed_key, unknown_key, wrong_carrier
//! code = "INVALID_API_KEY"
//! ```

use std::fmt;

use super::check::Check;

/// What went wrong, finer than the codes: each kind can be shaped on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    MissingKey,
    MalformedKey,
    UnknownKey,
    WrongCarrier,
    ExpiredKey,
    WrongEnvironment,
    InsufficientScope,
    IpNotAllowed,
    KeyTypeNotAllowed,
    AttributeNotAllowed,
    RateLimited,
    PayloadTooLarge,
    BadRequest,
    MethodNotAllowed,
    UpstreamUnavailable,
    UpstreamTimeout,
    AuthUnavailable,
    RequestTimeout,
    NotImplemented,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 19] = [
        ErrorKind::MissingKey,
        ErrorKind::MalformedKey,
        ErrorKind::UnknownKey,
        ErrorKind::WrongCarrier,
        ErrorKind::ExpiredKey,
        ErrorKind::WrongEnvironment,
        ErrorKind::InsufficientScope,
        ErrorKind::IpNotAllowed,
        ErrorKind::KeyTypeNotAllowed,
        ErrorKind::AttributeNotAllowed,
        ErrorKind::RateLimited,
        ErrorKind::PayloadTooLarge,
        ErrorKind::BadRequest,
        ErrorKind::MethodNotAllowed,
        ErrorKind::UpstreamUnavailable,
        ErrorKind::UpstreamTimeout,
        ErrorKind::AuthUnavailable,
        ErrorKind::RequestTimeout,
        ErrorKind::NotImplemented,
    ];

    /// The name `[errors.<name>]` takes.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::MissingKey => "missing_key",
            ErrorKind::MalformedKey => "malformed_key",
            ErrorKind::UnknownKey => "unknown_key",
            ErrorKind::WrongCarrier => "wrong_carrier",
            ErrorKind::ExpiredKey => "expired_key",
            ErrorKind::WrongEnvironment => "wrong_environment",
            ErrorKind::InsufficientScope => "insufficient_scope",
            ErrorKind::IpNotAllowed => "ip_not_allowed",
            ErrorKind::KeyTypeNotAllowed => "key_type_not_allowed",
            ErrorKind::AttributeNotAllowed => "attribute_not_allowed",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::UpstreamUnavailable => "upstream_unavailable",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::AuthUnavailable => "auth_unavailable",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::NotImplemented => "not_implemented",
        }
    }

    /// The default status and code: the README's error table.
    pub const fn default_status_code(self) -> (u16, &'static str) {
        match self {
            ErrorKind::MissingKey => (401, "unauthorized"),
            ErrorKind::MalformedKey | ErrorKind::UnknownKey | ErrorKind::WrongCarrier => {
                (401, "invalid_key")
            }
            ErrorKind::ExpiredKey => (401, "expired_key"),
            ErrorKind::WrongEnvironment => (401, "wrong_environment"),
            ErrorKind::InsufficientScope => (403, "insufficient_scope"),
            ErrorKind::IpNotAllowed => (403, "ip_not_allowed"),
            ErrorKind::KeyTypeNotAllowed => (403, "key_type_not_allowed"),
            ErrorKind::AttributeNotAllowed => (403, "attribute_not_allowed"),
            ErrorKind::RateLimited => (429, "rate_limited"),
            ErrorKind::PayloadTooLarge => (413, "payload_too_large"),
            ErrorKind::BadRequest => (400, "bad_request"),
            ErrorKind::MethodNotAllowed => (405, "method_not_allowed"),
            ErrorKind::UpstreamUnavailable => (502, "upstream_unavailable"),
            ErrorKind::UpstreamTimeout => (504, "upstream_timeout"),
            ErrorKind::AuthUnavailable => (503, "auth_unavailable"),
            ErrorKind::RequestTimeout => (408, "request_timeout"),
            ErrorKind::NotImplemented => (501, "not_implemented"),
        }
    }

    /// The kinds a name stands for: a kind, or a group named by its default code
    /// (`invalid_key`, `unauthorized`).
    fn named(name: &str) -> Vec<ErrorKind> {
        match name {
            "invalid_key" => vec![
                ErrorKind::MalformedKey,
                ErrorKind::UnknownKey,
                ErrorKind::WrongCarrier,
            ],
            "unauthorized" => vec![ErrorKind::MissingKey],
            other => ErrorKind::ALL
                .into_iter()
                .filter(|k| k.as_str() == other)
                .collect(),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names a message template may use (`{scope}`); each is empty where it does not apply.
pub const TEMPLATE_FIELDS: &[&str] = &[
    "scope",
    "ip",
    "retry_after",
    "request_id",
    "carriers",
    "key_environment",
    "environment",
    "limit",
    "attribute",
    "value",
    "method",
];

/// The shape of an error body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorLayout {
    /// The object holding the fields (`error`), or none: the fields at the top level.
    pub wrapper: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
    pub request_id: Option<String>,
    /// The HTTP status as a number in the body, if wanted.
    pub status: Option<String>,
}

impl Default for ErrorLayout {
    fn default() -> Self {
        ErrorLayout {
            wrapper: Some("error".into()),
            code: Some("code".into()),
            message: Some("message".into()),
            request_id: Some("request_id".into()),
            status: None,
        }
    }
}

/// One kind's reshaping; what is left out keeps its default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindOverride {
    pub status: Option<u16>,
    pub code: Option<String>,
    /// A template: `{scope}` and the other [`TEMPLATE_FIELDS`] are filled in.
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorContract {
    pub layout: ErrorLayout,
    overrides: Vec<(ErrorKind, KindOverride)>,
    /// How the environments are spelled in keys (`sandbox`), for messages; default the
    /// internal names `live` and `test`.
    env_labels: Option<(String, String)>,
}

impl ErrorContract {
    /// Messages name environments as keys spell them.
    pub fn set_environment_labels(&mut self, live: &str, test: &str) {
        self.env_labels = Some((live.to_owned(), test.to_owned()));
    }

    /// `live` / `test` as the keys spell them.
    pub fn environment_label<'a>(&'a self, internal: &'a str) -> &'a str {
        match (&self.env_labels, internal) {
            (Some((live, _)), "live") => live,
            (Some((_, test)), "test") => test,
            _ => internal,
        }
    }

    /// The status, code and (when reshaped) message template of `kind`.
    pub fn shape(&self, kind: ErrorKind) -> (u16, &str, Option<&str>) {
        let (status, code) = kind.default_status_code();
        match self.overrides.iter().find(|(k, _)| *k == kind) {
            None => (status, code, None),
            Some((_, o)) => (
                o.status.unwrap_or(status),
                o.code.as_deref().unwrap_or(code),
                o.message.as_deref(),
            ),
        }
    }
}

pub(super) fn validate(c: &mut Check<'_>, value: Option<toml::Value>) -> ErrorContract {
    let mut contract = ErrorContract::default();
    let Some(value) = value else {
        return contract;
    };
    let toml::Value::Table(table) = value else {
        c.problem("errors: must be a table ([errors])".into());
        return contract;
    };
    let mut groups: Vec<(Vec<ErrorKind>, KindOverride, bool)> = Vec::new();
    for (name, v) in table {
        let field = format!("errors.{name}");
        match (name.as_str(), v) {
            ("layout", toml::Value::String(s)) => match s.as_str() {
                "wrapped" => {}
                "flat" => contract.layout.wrapper = None,
                other => c.problem(format!("{field}: {other:?} is not \"wrapped\" or \"flat\"")),
            },
            ("wrapper", toml::Value::String(s)) => {
                if contract.layout.wrapper.is_some() {
                    contract.layout.wrapper = Some(s);
                }
            }
            ("fields", toml::Value::Table(fields)) => {
                for (f, v) in fields {
                    let slot = match f.as_str() {
                        "code" => &mut contract.layout.code,
                        "message" => &mut contract.layout.message,
                        "request_id" => &mut contract.layout.request_id,
                        "status" => &mut contract.layout.status,
                        other => {
                            c.problem(format!(
                                "errors.fields.{other}: unknown field (code, message, request_id, status)"
                            ));
                            continue;
                        }
                    };
                    match v {
                        toml::Value::String(s) if s.is_empty() => *slot = None,
                        toml::Value::String(s) => *slot = Some(s),
                        _ => c.problem(format!("errors.fields.{f}: must be a string")),
                    }
                }
            }
            (_, toml::Value::Table(t)) => {
                let kinds = ErrorKind::named(&name);
                if kinds.is_empty() {
                    let all: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
                    c.problem(format!(
                        "{field}: not a kind of error; one of {}, or the groups invalid_key and unauthorized",
                        all.join(", ")
                    ));
                    continue;
                }
                let o = validate_override(c, &field, t);
                groups.push((kinds, o, name == "invalid_key" || name == "unauthorized"));
            }
            (_, _) => c.problem(format!(
                "{field}: unknown setting (layout, wrapper, fields, or [errors.<kind>])"
            )),
        }
    }
    if contract.layout.code.is_none() && contract.layout.message.is_none() {
        c.problem("errors.fields: keep at least the code or the message".into());
    }
    // Groups first, so a kind's own table wins over its group's.
    groups.sort_by_key(|(_, _, group)| !group);
    for (kinds, o, _) in groups {
        for kind in kinds {
            let merged = match contract.overrides.iter().position(|(k, _)| *k == kind) {
                Some(i) => {
                    let (_, prev) = contract.overrides.remove(i);
                    KindOverride {
                        status: o.status.or(prev.status),
                        code: o.code.clone().or(prev.code),
                        message: o.message.clone().or(prev.message),
                    }
                }
                None => o.clone(),
            };
            contract.overrides.push((kind, merged));
        }
    }
    contract
}

fn validate_override(c: &mut Check<'_>, field: &str, t: toml::Table) -> KindOverride {
    let mut o = KindOverride::default();
    for (k, v) in t {
        match (k.as_str(), v) {
            ("status", toml::Value::Integer(n)) if (400..=599).contains(&n) => {
                o.status = u16::try_from(n).ok();
            }
            ("status", _) => c.problem(format!("{field}.status: an HTTP status from 400 to 599")),
            ("code", toml::Value::String(s)) if !s.is_empty() && s.len() <= 100 => o.code = Some(s),
            ("code", _) => c.problem(format!("{field}.code: a non-empty string")),
            ("message", toml::Value::String(s)) => {
                for name in placeholders(&s) {
                    if !TEMPLATE_FIELDS.contains(&name) {
                        c.problem(format!(
                            "{field}.message: {{{name}}} is not one of {}",
                            TEMPLATE_FIELDS.join(", ")
                        ));
                    }
                }
                o.message = Some(s);
            }
            ("message", _) => c.problem(format!("{field}.message: must be a string")),
            (other, _) => c.problem(format!(
                "{field}.{other}: unknown setting (status, code, message)"
            )),
        }
    }
    o
}

/// The `{name}` placeholders of a template.
pub fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    template
        .split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(n, _)| n))
}
