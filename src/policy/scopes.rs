//! Scopes: what a key may do. Three kinds, as in the source documents:
//!
//! - everything: `all` (alias `full_access`) and `admin`;
//! - coarse levels (000): `read` (alias `read_only`) allows GET/HEAD/OPTIONS anywhere but admin
//!   routes; `write` allows every method anywhere but admin routes;
//! - fine scopes (003/004): `payments_read`, `transfers:write`, … A route that names one needs
//!   the key to hold it, or `<resource>:*`; `<resource>:write` (or `_write`) implies `:read`.
//!
//! A route may also name a coarse level (`scope = "write"`, `scope = "admin"`).

use http::Method;

/// Checks `key_scopes` against the route's `required` scope for `method`. On failure returns
/// the scope the key would need, for the error message.
pub fn check<'a>(
    key_scopes: &[String],
    required: Option<&'a str>,
    method: &Method,
) -> Result<(), &'a str> {
    let has = |s: &str| key_scopes.iter().any(|k| k == s);
    if has("all") || has("full_access") || has("admin") {
        return Ok(());
    }
    let safe = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let write = has("write");
    let read = has("read") || has("read_only");
    match required {
        Some("admin") => Err("admin"),
        Some("write") => {
            if write {
                Ok(())
            } else {
                Err("write")
            }
        }
        Some("read") | Some("read_only") => {
            if write || (read && safe) {
                Ok(())
            } else {
                Err(required.unwrap_or("read"))
            }
        }
        Some(scope) => {
            if write || (read && safe) || holds_fine(key_scopes, scope) {
                Ok(())
            } else {
                Err(scope)
            }
        }
        // No requirement: any key, but a read-only key stays read-only.
        None => {
            if read && !write && !safe {
                Err("write")
            } else {
                Ok(())
            }
        }
    }
}

/// Whether a key holding `holder` may give another key `scope` (self-service keys can never
/// grant more than they hold): everything from `all`/`full_access`/`admin`; `write`, `read` and
/// any fine scope from `write`; `read` from `read`; a fine scope from one that implies it.
pub fn grants(holder: &[String], scope: &str) -> bool {
    let has = |s: &str| holder.iter().any(|k| k == s);
    if has("all") || has("full_access") || has("admin") {
        return true;
    }
    match scope {
        "all" | "full_access" | "admin" => false,
        "write" => has("write"),
        "read" | "read_only" => has("write") || has("read") || has("read_only"),
        fine => has("write") || holds_fine(holder, fine),
    }
}

fn holds_fine(key_scopes: &[String], scope: &str) -> bool {
    let (resource, action, sep) = match scope.rsplit_once(':') {
        Some((r, a)) => (r, a, ':'),
        None => match scope.rsplit_once('_') {
            Some((r, a)) => (r, a, '_'),
            None => ("", scope, ':'),
        },
    };
    key_scopes.iter().any(|k| {
        if k == scope {
            return true;
        }
        let Some(rest) = k.strip_prefix(resource).and_then(|r| r.strip_prefix(sep)) else {
            return false;
        };
        !resource.is_empty() && (rest == "*" || (action == "read" && rest == "write"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn coarse_levels() {
        let read = s(&["read"]);
        assert_eq!(check(&read, None, &Method::GET), Ok(()));
        assert_eq!(check(&read, None, &Method::DELETE), Err("write"));
        assert_eq!(
            check(&read, Some("payments:write"), &Method::POST),
            Err("payments:write")
        );
        assert_eq!(check(&read, Some("payments:read"), &Method::GET), Ok(()));
        assert_eq!(check(&read, Some("admin"), &Method::GET), Err("admin"));
        let write = s(&["write"]);
        assert_eq!(
            check(&write, Some("payments:write"), &Method::DELETE),
            Ok(())
        );
        assert_eq!(check(&write, Some("admin"), &Method::GET), Err("admin"));
        for everything in ["all", "full_access", "admin"] {
            assert_eq!(
                check(&s(&[everything]), Some("admin"), &Method::DELETE),
                Ok(())
            );
        }
    }

    #[test]
    fn granting_never_exceeds_holding() {
        let grant = |holder: &[&str], scope: &str| grants(&s(holder), scope);
        assert!(grant(&["full_access"], "admin") && grant(&["all"], "keys_manage"));
        assert!(!grant(&["keys_manage"], "full_access"));
        assert!(grant(&["keys_manage"], "keys_manage"));
        assert!(!grant(&["keys_manage"], "payments_write"));
        assert!(grant(&["payments_write"], "payments_read"));
        assert!(!grant(&["payments_read"], "payments_write"));
        assert!(grant(&["payments:*"], "payments:refund"));
        assert!(grant(&["write"], "payments:write") && !grant(&["write"], "admin"));
        assert!(!grant(&["read"], "write") && !grant(&["read"], "payments:read"));
    }

    #[test]
    fn fine_scopes() {
        let k = s(&["payments:write", "refunds_read", "customers:*"]);
        assert_eq!(check(&k, Some("payments:write"), &Method::POST), Ok(()));
        assert_eq!(
            check(&k, Some("payments:read"), &Method::GET),
            Ok(()),
            "write implies read"
        );
        assert_eq!(check(&k, Some("refunds_read"), &Method::GET), Ok(()));
        assert_eq!(
            check(&k, Some("refunds_write"), &Method::POST),
            Err("refunds_write")
        );
        assert_eq!(check(&k, Some("customers:delete"), &Method::DELETE), Ok(()));
        assert_eq!(
            check(&k, Some("transfers:read"), &Method::GET),
            Err("transfers:read")
        );
        assert_eq!(check(&k, Some("write"), &Method::POST), Err("write"));
        // No requirement on the route: fine-scoped keys are not method-limited.
        assert_eq!(check(&k, None, &Method::DELETE), Ok(()));
        // A prefix that merely looks similar grants nothing.
        assert_eq!(
            check(&s(&["pay:*"]), Some("payments:read"), &Method::GET),
            Err("payments:read")
        );
        assert_eq!(
            check(&s(&[]), Some("payments:read"), &Method::GET),
            Err("payments:read")
        );
    }
}
