//! The route table: method(s) + path pattern → what the route requires. First match wins; the
//! default route applies to the rest. Patterns are matched on the normalised path.

use http::Method;

pub use crate::config::PathPattern;
use crate::config::RouteConfig;

/// The compiled route table.
pub struct Routes {
    routes: Vec<RouteConfig>,
    default: RouteConfig,
}

impl Routes {
    pub fn new(routes: Vec<RouteConfig>, default: RouteConfig) -> Self {
        Routes { routes, default }
    }

    /// The first route whose methods and pattern match, else the default route. With
    /// `fold_case`, literal segments match in any ASCII case.
    pub fn find(&self, method: &Method, path: &str, fold_case: bool) -> &RouteConfig {
        self.routes
            .iter()
            .find(|r| {
                (r.methods.is_empty() || r.methods.contains(method))
                    && r.pattern
                        .as_ref()
                        .is_some_and(|p| p.matches_as(path, fold_case))
            })
            .unwrap_or(&self.default)
    }
}
