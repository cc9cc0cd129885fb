//! The self-service key API on the proxy port (`[self_service] path`): a customer lists,
//! creates, reads, updates, rotates and revokes its own owner's keys with its own API key,
//! answered by keygate and never forwarded.
//!
//! The request has passed the whole pipeline first (carriers, checksum, cache, IP rules,
//! environment, never a publishable key, the management scope — the route in
//! `config::routes::self_service_route`); here [`grant`] keeps a key to its owner's keys and
//! below its own privileges, [`shape`] reads and writes the configured JSON, and each
//! operation is limited per owner (list 30, create 10, rotate 5, other changes 30 a minute by
//! default). Changes go through the same key management as the admin API — audited with the
//! calling key as actor, and in force before the answer (the revocation guarantee).

mod grant;
mod openapi;
mod shape;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

use crate::config::{ErrorContract, SelfServiceConfig};
use crate::error::api::ApiError;
use crate::error::{Rejection, error_body, json_response, no_store};
use crate::manage::KeyTool;
use crate::policy::ratelimit::{Counter, Limit, RateReport, Subject};
use crate::policy::{Denial, Permit, Policy};
use crate::store::{KeyPatch, KeyRecord, KeyState, KeyStore, NewRecord};
use crate::time::Timestamp;
use grant::{Caller, Wants};
pub use openapi::document as openapi;
use shape::{Extra, parse_create, parse_update, render};

/// Request bodies are small JSON objects (the admin API's limit too).
const MAX_BODY: usize = 64 * 1024;

/// The operations, and which per-owner limit each counts against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    List,
    Create,
    Get,
    Update,
    Rotate,
    Revoke,
}

pub struct SelfService {
    tool: KeyTool,
    /// Counter names, allocated once.
    names: [Arc<str>; 4],
}

/// One request's view: the key tool and the settings of the policy in force (so a reload
/// changes the API with the route table).
struct Api<'a> {
    tool: &'a KeyTool,
    config: &'a SelfServiceConfig,
}

impl SelfService {
    /// `tool` records its changes in the audit trail.
    pub fn new(tool: KeyTool) -> SelfService {
        SelfService {
            tool,
            names: ["ss_list", "ss_create", "ss_rotate", "ss_write"].map(Arc::from),
        }
    }

    /// Answers a permitted request on the self-service route. `Err` is a rejection of the
    /// proxy's own (429, 413), shaped by the error contract like any other.
    pub async fn handle<B>(
        &self,
        permit: &Permit<'_>,
        req: Request<B>,
        policy: &Policy,
        rate: &mut RateReport,
        contract: &ErrorContract,
        request_id: &str,
    ) -> Result<Response<Full<Bytes>>, Rejection>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(identity) = permit.identity() else {
            // The self-service route is never public; a permit without a key cannot reach it.
            return Err(Rejection::Auth(crate::auth::AuthFailure::Missing));
        };
        let Some(config) = policy.self_service() else {
            // The route came from this policy's `[self_service]`: unreachable, but closed.
            return Err(Rejection::Auth(crate::auth::AuthFailure::Missing));
        };
        let api = Api {
            tool: &self.tool,
            config,
        };
        let path = permit
            .normalized_path()
            .unwrap_or(req.uri().path())
            .to_owned();
        let op = match route(req.method(), &path, &config.path) {
            Ok(op) => op,
            Err(e) => return Ok(error(e, contract, request_id)),
        };
        self.limit(op.0, config, identity.owner(), policy, rate)
            .await?; // 429
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return Err(Rejection::PayloadTooLarge {
                    limit: MAX_BODY as u64,
                });
            }
        };
        let caller = Caller {
            record: identity.record(),
            live_manages_test: config.live_manages_test,
            lists_all_environments: config.lists_all_environments,
        };
        let actor = format!("key:{}", identity.key_id());
        let answer = match op.0 {
            Op::List => api.list(&caller).await,
            Op::Create => api.create(&caller, &body, &actor).await,
            Op::Get => api.get(&caller, &op.1).await,
            Op::Update => api.update(&caller, &op.1, &body, &actor).await,
            Op::Rotate => api.rotate(&caller, &op.1, &actor).await,
            Op::Revoke => api.revoke(&caller, &op.1, &actor).await,
        };
        Ok(match answer {
            Ok((status, v)) => no_store(json_response(status, Bytes::from(v.to_string()))),
            Err(e) => error(e, contract, request_id),
        })
    }

    /// The operation's per-owner limit, consumed; its state goes on the response.
    async fn limit(
        &self,
        op: Op,
        c: &SelfServiceConfig,
        owner: &Arc<str>,
        policy: &Policy,
        rate: &mut RateReport,
    ) -> Result<(), Rejection> {
        let (i, per_minute) = match op {
            Op::List | Op::Get => (0, c.list_per_minute),
            Op::Create => (1, c.create_per_minute),
            Op::Rotate => (2, c.rotate_per_minute),
            Op::Update | Op::Revoke => (3, c.write_per_minute),
        };
        let counter = Counter {
            subject: Subject::Owner(Arc::clone(owner)),
            name: Arc::clone(&self.names[i]),
        };
        let limit = Limit::new(per_minute, Duration::from_secs(60));
        let Some(d) = policy.limiter().acquire(&[(counter, limit)]).await.pop() else {
            return Ok(());
        };
        rate.note(d, policy.header_styles());
        if d.allowed {
            Ok(())
        } else {
            Err(Denial::RateLimited {
                retry_after: d.retry_after,
            }
            .into())
        }
    }
}

impl Api<'_> {
    /// A key of the caller's owner it may see, else "not found" — never "forbidden", so ids
    /// of other owners cannot be probed.
    async fn visible(&self, caller: &Caller<'_>, id: &str) -> Result<Arc<KeyRecord>, ApiError> {
        match self.tool.store().get(id).await? {
            Some(rec) if caller.sees(&rec) => Ok(rec),
            _ => Err(ApiError::not_found(id)),
        }
    }

    async fn list(&self, caller: &Caller<'_>) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let shapes = &self.config.shapes;
        let keys: Vec<serde_json::Value> = self
            .tool
            .list(Some(&caller.record.owner))
            .await?
            .iter()
            .filter(|r| caller.lists(r))
            .map(|r| render(shapes, &shapes.list_fields, r, &Extra::default()))
            .collect();
        let body = if shapes.bare_list {
            serde_json::Value::from(keys)
        } else {
            serde_json::json!({ "data": keys })
        };
        Ok((StatusCode::OK, body))
    }

    async fn get(
        &self,
        caller: &Caller<'_>,
        id: &str,
    ) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let rec = match self.tool.store().get(id).await? {
            Some(rec) if caller.lists(&rec) => rec,
            _ => return Err(ApiError::not_found(id)),
        };
        let shapes = &self.config.shapes;
        Ok((
            StatusCode::OK,
            render(shapes, &shapes.list_fields, &rec, &Extra::default()),
        ))
    }

    async fn create(
        &self,
        caller: &Caller<'_>,
        body: &[u8],
        actor: &str,
    ) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let shapes = &self.config.shapes;
        let want = parse_create(shapes, body)?;
        let me = caller.record;
        let environment = want.environment.unwrap_or(me.environment);
        if !caller.reaches(environment) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "{}: this key cannot create {environment} keys",
                    shapes.name("environment")
                ),
            ));
        }
        // What is not asked for is inherited: a key makes keys no stronger than itself.
        let now = Timestamp::now();
        let req = NewRecord {
            name: want.name,
            scopes: want.scopes.unwrap_or_else(|| me.scopes.clone()),
            ip_allowlist: want.ip_allowlist.unwrap_or_else(|| me.ip_allowlist.clone()),
            restrictions: want.restrictions.unwrap_or_else(|| me.restrictions.clone()),
            rate_limit: me.rate_limit.clone(),
            expires_in: me
                .expires_at
                .map(|t| Duration::from_secs(t.unix().saturating_sub(now.unix()))),
            metadata: [("created_by".to_owned(), me.id.clone())].into(),
            ..NewRecord::new(
                me.owner.clone(),
                environment,
                want.key_type.unwrap_or(crate::key::KeyType::Secret),
            )
        };
        let wants = Wants {
            scopes: &req.scopes,
            ip_allowlist: &req.ip_allowlist,
            restrictions: &req.restrictions,
            expires_at: req.expires_in.map(|d| now.saturating_add(d)),
            rate_limit: req.rate_limit.as_ref(),
        };
        if let Some(why) = caller.exceeded_by(wants) {
            return Err(forbidden(why));
        }
        let (key, rec) = self.tool.create(req, actor).await?;
        let propagated = self.tool.propagate().await;
        let extra = Extra {
            key: Some(&key.key),
            old: None,
            propagated: Some(&propagated),
        };
        Ok((
            StatusCode::CREATED,
            render(shapes, &shapes.created_fields, &rec, &extra),
        ))
    }

    async fn update(
        &self,
        caller: &Caller<'_>,
        id: &str,
        body: &[u8],
        actor: &str,
    ) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let rec = self.visible(caller, id).await?;
        let want = parse_update(&self.config.shapes, &self.config.updatable, body)?;
        let patch = KeyPatch {
            name: want.name,
            scopes: want.scopes,
            ip_allowlist: want.ip_allowlist,
            restrictions: want.restrictions,
            ..KeyPatch::default()
        };
        if patch.is_empty() {
            return Err(ApiError::bad_request("nothing to change"));
        }
        let mut after = (*rec).clone();
        patch.apply(&mut after);
        if let Some(why) = caller.exceeded_by(Wants::from(&after)) {
            return Err(forbidden(why));
        }
        let rec = self.tool.update(id, patch, actor).await?;
        self.changed(&rec).await
    }

    async fn rotate(
        &self,
        caller: &Caller<'_>,
        id: &str,
        actor: &str,
    ) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let old = self.visible(caller, id).await?;
        // The successor has the old key's powers, and the caller gets its secret.
        if let Some(why) = caller.exceeded_by(Wants::from(&*old)) {
            return Err(forbidden(format!("cannot rotate a stronger key: {why}")));
        }
        if old.state(Timestamp::now()) != KeyState::Active {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("key {id} is not active"),
            ));
        }
        let (key, new, old) = self.tool.rotate(id, None, actor).await?;
        let propagated = self.tool.propagate().await;
        let shapes = &self.config.shapes;
        let extra = Extra {
            key: Some(&key.key),
            old: Some(&old),
            propagated: Some(&propagated),
        };
        Ok((
            StatusCode::OK,
            render(shapes, &shapes.rotated_fields, &new, &extra),
        ))
    }

    async fn revoke(
        &self,
        caller: &Caller<'_>,
        id: &str,
        actor: &str,
    ) -> Result<(StatusCode, serde_json::Value), ApiError> {
        self.visible(caller, id).await?;
        let rec = self.tool.revoke(id, actor).await?;
        self.changed(&rec).await
    }

    /// A changed key in the list shape, with how far the change has reached.
    async fn changed(&self, rec: &KeyRecord) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let propagated = self.tool.propagate().await;
        let shapes = &self.config.shapes;
        let mut fields = shapes.list_fields.clone();
        fields.push("propagated".into());
        let extra = Extra {
            propagated: Some(&propagated),
            ..Extra::default()
        };
        Ok((StatusCode::OK, render(shapes, &fields, rec, &extra)))
    }
}

fn error(e: ApiError, contract: &ErrorContract, request_id: &str) -> Response<Full<Bytes>> {
    let body = error_body(
        &contract.layout,
        e.status,
        e.code,
        &e.message,
        Some(request_id),
    );
    no_store(json_response(e.status, body))
}

fn forbidden(why: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", why)
}

/// The operation for `method path` under `mount`, and the key id it names.
fn route(method: &Method, path: &str, mount: &str) -> Result<(Op, String), ApiError> {
    let rest = path.strip_prefix(mount).unwrap_or("");
    let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let op = match (method, parts.as_slice()) {
        (&Method::GET, []) => (Op::List, String::new()),
        (&Method::POST, []) => (Op::Create, String::new()),
        (&Method::GET, [id]) => (Op::Get, (*id).to_owned()),
        (&Method::PATCH, [id]) => (Op::Update, (*id).to_owned()),
        (&Method::DELETE, [id]) => (Op::Revoke, (*id).to_owned()),
        (&Method::POST, [id, "rotate"]) => (Op::Rotate, (*id).to_owned()),
        (&Method::POST, [id, "revoke"]) => (Op::Revoke, (*id).to_owned()),
        (_, [] | [_] | [_, "rotate" | "revoke"]) => {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {path}"),
            ));
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such key-management endpoint",
            ));
        }
    };
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated document names exactly the operations the router answers.
    #[test]
    fn openapi_matches_the_router() {
        let config = SelfServiceConfig {
            path: "/api/v1/keys".into(),
            scope: "keys_manage".into(),
            updatable: vec!["name".into()],
            live_manages_test: false,
            lists_all_environments: false,
            list_per_minute: 30,
            create_per_minute: 10,
            rotate_per_minute: 5,
            write_per_minute: 30,
            shapes: crate::config::Shapes::default(),
        };
        let doc = openapi(&config);
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item
                .as_object()
                .unwrap()
                .keys()
                .filter(|m| *m != "parameters")
            {
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let (op, id) = route(&m, &path.replace("{id}", "key_1"), &config.path).unwrap();
                assert_eq!(id.is_empty(), !path.contains("{id}"), "{method} {path}");
                ops.push(op);
            }
        }
        for op in [
            Op::List,
            Op::Create,
            Op::Get,
            Op::Update,
            Op::Rotate,
            Op::Revoke,
        ] {
            assert!(ops.contains(&op), "{op:?} undocumented");
        }
        assert_eq!(ops.len(), 7);
        assert_eq!(
            doc["components"]["schemas"]["Key"]["properties"]["environment"]["enum"][1],
            "live"
        );
    }

    #[test]
    fn operations() {
        let m = "/api/v1/keys";
        let op = |method: Method, p: &str| route(&method, p, m);
        assert_eq!(op(Method::GET, m).unwrap().0, Op::List);
        assert_eq!(op(Method::GET, "/api/v1/keys/").unwrap().0, Op::List);
        assert_eq!(op(Method::POST, m).unwrap().0, Op::Create);
        assert_eq!(
            op(Method::POST, "/api/v1/keys/key_1/rotate").unwrap(),
            (Op::Rotate, "key_1".into())
        );
        assert_eq!(
            op(Method::DELETE, "/api/v1/keys/key_1").unwrap().0,
            Op::Revoke
        );
        assert_eq!(
            op(Method::PUT, "/api/v1/keys/key_1").unwrap_err().status,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            op(Method::GET, "/api/v1/keys/a/b/c").unwrap_err().status,
            StatusCode::NOT_FOUND
        );
    }
}
