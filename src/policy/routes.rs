//! The route table: method(s) + path pattern → what the route requires. First match wins; the
//! default route applies to the rest. Patterns are matched on the normalised path.

use http::Method;

use crate::config::RouteConfig;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `{name}`: exactly one non-empty segment.
    Param,
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
                segments.push(Segment::Param);
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
        let mut parts = path.split('/').filter(|s| !s.is_empty());
        for seg in &self.segments {
            match (seg, parts.next()) {
                (Segment::Literal(l), Some(p)) if l == p => {}
                (Segment::Param, Some(_)) => {}
                _ => return false,
            }
        }
        self.prefix || parts.next().is_none()
    }
}

/// The compiled route table.
pub struct Routes {
    routes: Vec<RouteConfig>,
    default: RouteConfig,
}

impl Routes {
    pub fn new(routes: Vec<RouteConfig>, default: RouteConfig) -> Self {
        Routes { routes, default }
    }

    /// The first route whose methods and pattern match, else the default route.
    pub fn find(&self, method: &Method, path: &str) -> &RouteConfig {
        self.routes
            .iter()
            .find(|r| {
                (r.methods.is_empty() || r.methods.contains(method))
                    && r.pattern.as_ref().is_some_and(|p| p.matches(path))
            })
            .unwrap_or(&self.default)
    }
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
