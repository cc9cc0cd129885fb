//! `[[routes]]` and `[default_route]`: method(s) + path pattern → what the route requires, as
//! [`Rule`]s.

use std::sync::Arc;

use http::Method;
use serde::Deserialize;

use super::attributes::{AttributeConfig, AttributeSource};
use super::auth::{Carrier, CarrierSet};
use super::check::Check;
use super::limits::RateLimitConfig;
use super::rules::{Rule, RuleKind, RuleSet};

#[derive(Clone, Debug)]
pub struct RouteConfig {
    pub name: Arc<str>,
    /// Empty: every method.
    pub methods: Vec<Method>,
    /// `None` only for the default route.
    pub pattern: Option<PathPattern>,
    /// Empty: the global carriers.
    pub carriers: Vec<Carrier>,
    /// The carriers the route accepts (its own, or the global ones), for the hints in 401s.
    pub accepts: CarrierSet,
    /// No key needed.
    pub public: bool,
    /// What a request with a verified key must pass, in order.
    pub rules: Vec<Rule>,
    /// Rules whose denials are logged and counted, not enforced.
    pub report_only: RuleSet,
    /// Answered by keygate's self-service key API, never forwarded.
    pub self_service: bool,
}

impl RouteConfig {
    /// The route's scope requirement, if any.
    pub fn scope(&self) -> Option<&str> {
        self.rules.iter().find_map(|r| match r {
            Rule::Scope(s) => s.as_deref(),
            _ => None,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawRoute {
    name: Option<String>,
    methods: Option<Vec<String>>,
    path: Option<String>,
    scope: Option<String>,
    category: Option<String>,
    carriers: Option<Vec<String>>,
    allow_publishable: Option<bool>,
    public: Option<bool>,
    report_only: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: exactly one non-empty segment.
    Param(String),
}

/// `/v1/payments` (exact; a trailing slash is the same route), `/v1/payments/{id}/capture`
/// (parameters), `/docs/*` (the prefix itself and everything below it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    segments: Vec<Segment>,
    prefix: bool,
}

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix('/') else {
            return Err(format!("{pattern:?} must start with '/'"));
        };
        let mut parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let prefix = parts.last() == Some(&"*");
        if prefix {
            parts.pop();
        }
        let mut segments = Vec::with_capacity(parts.len());
        for p in parts {
            if p.is_empty() || p == "." || p == ".." || p.contains(['*', '%', '\\']) {
                return Err(format!(
                    "{pattern:?}: segment {p:?} is not allowed (use literal segments, {{param}}, or a final /*)"
                ));
            }
            if p.starts_with('{') && p.ends_with('}') && p.len() > 2 {
                segments.push(Segment::Param(p[1..p.len() - 1].to_owned()));
            } else if p.contains(['{', '}']) {
                return Err(format!(
                    "{pattern:?}: a parameter must be a whole segment, like {{id}}"
                ));
            } else {
                segments.push(Segment::Literal(p.to_owned()));
            }
        }
        Ok(PathPattern { segments, prefix })
    }

    /// Whether the normalised `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        self.matches_as(path, false)
    }

    /// Whether the normalised `path` matches, literal segments in any ASCII case if
    /// `fold_case`.
    pub fn matches_as(&self, path: &str, fold_case: bool) -> bool {
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        for seg in &self.segments {
            match (seg, parts.next()) {
                (Segment::Literal(l), Some(p)) if l == p => {}
                (Segment::Literal(l), Some(p)) if fold_case && l.eq_ignore_ascii_case(p) => {}
                (Segment::Param(_), Some(_)) => {}
                _ => return false,
            }
        }
        self.prefix || parts.next().is_none()
    }

    /// `path` (which this pattern matches case-insensitively) with its literal segments in the
    /// pattern's case — what is forwarded, so the upstream sees the route keygate matched.
    /// `None` when it already is.
    pub fn canonical(&self, path: &str) -> Option<String> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let differs = self
            .segments
            .iter()
            .zip(&parts)
            .any(|(seg, p)| matches!(seg, Segment::Literal(l) if l != p));
        if !differs {
            return None;
        }
        let mut out = String::with_capacity(path.len());
        for (i, p) in parts.iter().enumerate() {
            out.push('/');
            match self.segments.get(i) {
                Some(Segment::Literal(l)) => out.push_str(l),
                _ => out.push_str(p),
            }
        }
        if out.is_empty() || path.ends_with('/') {
            out.push('/');
        }
        Some(out)
    }

    pub fn has_param(&self, name: &str) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Param(n) if n == name))
    }

    /// The value of `{name}` in a normalised `path` this pattern matches.
    pub fn param<'p>(&self, path: &'p str, name: &str) -> Option<&'p str> {
        let parts = path.split('/').filter(|s| !s.is_empty());
        self.segments
            .iter()
            .zip(parts)
            .find_map(|(seg, part)| matches!(seg, Segment::Param(n) if n == name).then_some(part))
    }
}

pub(super) fn validate(
    c: &mut Check<'_>,
    field: &str,
    r: RawRoute,
    is_default: bool,
    global_carriers: &[Carrier],
    limits: &RateLimitConfig,
    attributes: &[Arc<AttributeConfig>],
) -> RouteConfig {
    let pattern = match (r.path, is_default) {
        (Some(p), false) => match PathPattern::parse(&p) {
            Ok(p) => Some(p),
            Err(e) => {
                c.problem(format!("{field}.path: {e}"));
                None
            }
        },
        (None, false) => {
            c.problem(format!(
                "{field}.path: required (e.g. \"/v1/payments/{{id}}\" or \"/docs/*\")"
            ));
            None
        }
        (Some(_), true) => {
            c.problem(format!(
                "{field}.path: the default route applies to every other path"
            ));
            None
        }
        (None, true) => None,
    };
    if is_default && r.methods.is_some() {
        c.problem(format!(
            "{field}.methods: the default route applies to every method"
        ));
    }
    let methods = r
        .methods
        .unwrap_or_default()
        .into_iter()
        .filter_map(
            |m| match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                Ok(m) => Some(m),
                Err(_) => {
                    c.problem(format!("{field}.methods: {m:?} is not an HTTP method"));
                    None
                }
            },
        )
        .collect();
    let mut carriers = Vec::new();
    for name in r.carriers.unwrap_or_default() {
        match Carrier::parse(&name) {
            Some(carrier) if global_carriers.contains(&carrier) => carriers.push(carrier),
            Some(_) => c.problem(format!(
                "{field}.carriers: {name:?} is not in auth.carriers, so keygate never reads it"
            )),
            None => c.problem(format!(
                "{field}.carriers: {name:?} is not \"authorization\" or \"x-api-key\""
            )),
        }
    }
    let mut report_only = RuleSet::default();
    for rule in r.report_only.unwrap_or_default() {
        match RuleKind::parse(&rule) {
            Some(kind) => report_only.insert(kind),
            None => c.problem(format!(
                "{field}.report_only: {rule:?} is not one of {}",
                RuleKind::ALL
                    .map(|k| format!("{:?}", k.as_str()))
                    .join(", ")
            )),
        }
    }
    if let Some(cat) = &r.category
        && !limits.categories.contains_key(cat)
    {
        c.problem(format!(
            "{field}.category: {cat:?} has no [rate_limits.categories.{cat}] limit"
        ));
    }
    let name = r.name.unwrap_or_else(|| {
        if is_default {
            "default".into()
        } else {
            field.to_owned()
        }
    });
    let mut rules = vec![
        Rule::Environment,
        Rule::KeyType {
            allow_publishable: r.allow_publishable.unwrap_or(false),
        },
        Rule::KeyIp,
        Rule::Scope(r.scope.filter(|s| !s.is_empty())),
    ];
    for a in attributes {
        let listed = a.routes.is_empty() || a.routes.contains(&name);
        let findable = match &a.source {
            AttributeSource::Path(p) => pattern.as_ref().is_some_and(|pat| pat.has_param(p)),
            _ => true,
        };
        if listed && findable {
            rules.push(Rule::Attribute(Arc::clone(a)));
        }
    }
    rules.push(Rule::RateLimit {
        category: r.category,
    });
    RouteConfig {
        name: name.into(),
        methods,
        pattern,
        accepts: CarrierSet::of(if carriers.is_empty() {
            global_carriers
        } else {
            &carriers
        }),
        carriers,
        public: r.public.unwrap_or(false),
        rules,
        report_only,
        self_service: false,
    }
}

/// The route of the self-service key API at `path`: a key is verified as on any route (carriers,
/// environment, key type — never publishable —, its IP allowlist) and must hold `scope`; the
/// API applies its own per-operation limits.
pub(super) fn self_service_route(
    path: &str,
    scope: &str,
    global_carriers: &[Carrier],
) -> Option<RouteConfig> {
    let pattern = PathPattern::parse(&format!("{path}/*")).ok()?;
    Some(RouteConfig {
        name: "self-service".into(),
        methods: Vec::new(),
        pattern: Some(pattern),
        carriers: Vec::new(),
        accepts: CarrierSet::of(global_carriers),
        public: false,
        rules: vec![
            Rule::Environment,
            Rule::KeyType {
                allow_publishable: false,
            },
            Rule::KeyIp,
            Rule::Scope(Some(scope.to_owned())),
        ],
        report_only: RuleSet::default(),
        self_service: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let exact = PathPattern::parse("/v1/payments").unwrap();
        assert!(exact.matches("/v1/payments"));
        assert!(exact.matches("/v1/payments/"));
        assert!(!exact.matches("/v1/payments/pay_1"));
        assert!(!exact.matches("/v1/payment"));
        assert!(!exact.matches("/v1"));

        let param = PathPattern::parse("/v1/payments/{id}/capture").unwrap();
        assert!(param.matches("/v1/payments/pay_1/capture"));
        assert!(!param.matches("/v1/payments//capture"));
        assert!(!param.matches("/v1/payments/pay_1/capture/x"));

        let prefix = PathPattern::parse("/docs/*").unwrap();
        assert!(prefix.matches("/docs"));
        assert!(prefix.matches("/docs/a/b"));
        assert!(!prefix.matches("/docsx"));

        let root = PathPattern::parse("/*").unwrap();
        assert!(root.matches("/") && root.matches("/anything"));
        assert!(PathPattern::parse("/").unwrap().matches("/"));
    }

    #[test]
    fn bad_patterns() {
        for p in [
            "v1",
            "/v1//x",
            "/v1/*/x",
            "/v1/a{id}",
            "/v1/../x",
            "/v1/%2F",
        ] {
            assert!(PathPattern::parse(p).is_err(), "{p}");
        }
    }
}
