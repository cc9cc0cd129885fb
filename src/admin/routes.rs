//! The admin API's route table: method, path template, operation. `openapi.json` documents
//! exactly these (a test holds them equal).

use http::Method;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    CreateKey,
    ListKeys,
    GetKey,
    UpdateKey,
    RotateKey,
    RevokeKey,
    KeyUsage,
    ListAudit,
    OpenApi,
    SelfServiceOpenApi,
}

/// Every route: method, path template, operation.
pub const ROUTES: &[(&str, &str, Op)] = &[
    ("POST", "/v1/keys", Op::CreateKey),
    ("GET", "/v1/keys", Op::ListKeys),
    ("GET", "/v1/keys/{id}", Op::GetKey),
    ("PATCH", "/v1/keys/{id}", Op::UpdateKey),
    ("POST", "/v1/keys/{id}/rotate", Op::RotateKey),
    ("POST", "/v1/keys/{id}/revoke", Op::RevokeKey),
    ("GET", "/v1/keys/{id}/usage", Op::KeyUsage),
    ("GET", "/v1/audit", Op::ListAudit),
    ("GET", "/v1/openapi.json", Op::OpenApi),
    (
        "GET",
        "/v1/self-service/openapi.json",
        Op::SelfServiceOpenApi,
    ),
];

/// The operation for `method path` and the `{id}` it names, if any. `None` when no route has
/// this path; `Some(Err(()))` when the path exists for other methods.
pub(super) fn route<'p>(
    method: &Method,
    path: &'p str,
) -> Option<Result<(Op, Option<&'p str>), ()>> {
    let mut path_matched = false;
    for (m, template, op) in ROUTES {
        let mut id = None;
        let mut t = template.split('/');
        let mut p = path.split('/');
        let matched = loop {
            match (t.next(), p.next()) {
                (None, None) => break true,
                (Some("{id}"), Some(seg)) if !seg.is_empty() => id = Some(seg),
                (Some(a), Some(b)) if a == b => {}
                _ => break false,
            }
        };
        if matched {
            if method.as_str() == *m {
                return Some(Ok((*op, id)));
            }
            path_matched = true;
        }
    }
    path_matched.then_some(Err(()))
}

/// Which per-token limit an operation counts against.
#[derive(Clone, Copy)]
pub(super) enum OpClass {
    Read,
    Create,
    Rotate,
    Write,
}

impl Op {
    pub(super) fn class(self) -> OpClass {
        match self {
            Op::CreateKey => OpClass::Create,
            Op::RotateKey => OpClass::Rotate,
            Op::UpdateKey | Op::RevokeKey => OpClass::Write,
            Op::ListKeys
            | Op::GetKey
            | Op::KeyUsage
            | Op::ListAudit
            | Op::OpenApi
            | Op::SelfServiceOpenApi => OpClass::Read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_resolve() {
        let get = Method::GET;
        assert_eq!(route(&get, "/v1/keys"), Some(Ok((Op::ListKeys, None))));
        assert_eq!(
            route(&Method::POST, "/v1/keys/key_1/rotate"),
            Some(Ok((Op::RotateKey, Some("key_1"))))
        );
        assert_eq!(route(&Method::DELETE, "/v1/keys/key_1"), Some(Err(())));
        assert_eq!(route(&get, "/v1/keys//usage"), None);
        assert_eq!(route(&get, "/v1/keys/a/b"), None);
        assert_eq!(route(&get, "/v2/keys"), None);
    }
}
