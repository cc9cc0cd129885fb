//! The admin API's handlers: what each operation reads, calls and answers.

use std::sync::Arc;

use http::StatusCode;
use ipnet::IpNet;
use serde::Deserialize;

use super::request::{Query, Secs};
use super::{Admin, Reply};
use crate::audit::{self, Action};
use crate::error::api::ApiError;
use crate::key::{Environment, KeyType};
use crate::store::{KeyRateLimit, KeyRecord, KeyState, NewRecord};
use crate::time::Timestamp;

impl Admin {
    pub(super) async fn list(&self, q: &Query) -> Reply {
        let now = Timestamp::now();
        let environment = q
            .get("env")
            .map(|e| {
                Environment::parse(e).ok_or_else(|| ApiError::bad_request("env: live or test"))
            })
            .transpose()?;
        let state = q
            .get("state")
            .map(|s| match s {
                "active" => Ok(KeyState::Active),
                "expired" => Ok(KeyState::Expired),
                "revoked" => Ok(KeyState::Revoked),
                _ => Err(ApiError::bad_request("state: active, expired or revoked")),
            })
            .transpose()?;
        let limit = q.limit(50, 200)?;
        let all = self.tool.list(q.get("owner")).await?;
        let start = match q.get("cursor") {
            None => 0,
            Some(c) => {
                all.iter().position(|r| r.id == c).ok_or_else(|| {
                    ApiError::bad_request("cursor: not a key id from this listing")
                })? + 1
            }
        };
        let matching = all[start..].iter().filter(|r| {
            environment.is_none_or(|e| r.environment == e)
                && state.is_none_or(|s| r.state(now) == s)
        });
        let page: Vec<&Arc<KeyRecord>> = matching.take(limit + 1).collect();
        let next_cursor = (page.len() > limit).then(|| page[limit - 1].id.clone());
        let data: Vec<_> = page.iter().take(limit).map(|r| r.view(now)).collect();
        Ok((
            StatusCode::OK,
            serde_json::json!({ "data": data, "next_cursor": next_cursor }),
        ))
    }

    pub(super) async fn usage(&self, id: &str) -> Reply {
        let rec = self.tool.get(id).await?;
        let now = Timestamp::now();
        let usage = self.audit.usage(id).await.map_err(ApiError::from)?;
        let mut body = serde_json::json!({ "key": usage });
        // During a rotation's grace period, the old and the new key side by side.
        let (old_id, new_id) = match (&rec.rotated_from, &rec.rotated_to) {
            (_, Some(to)) => (Some(rec.id.clone()), Some(to.clone())),
            (Some(from), None) => (Some(from.clone()), Some(rec.id.clone())),
            (None, None) => (None, None),
        };
        if let (Some(old_id), Some(new_id)) = (old_id, new_id) {
            let old = self.tool.get(&old_id).await?;
            if old.state(now) == KeyState::Active {
                let old_usage = self.audit.usage(&old_id).await.map_err(ApiError::from)?;
                let new_usage = self.audit.usage(&new_id).await.map_err(ApiError::from)?;
                body["rotation"] = serde_json::json!({
                    "old": { "key_id": old_id, "works_until": old.expires_at, "usage": old_usage },
                    "new": { "key_id": new_id, "usage": new_usage },
                });
            }
        }
        Ok((StatusCode::OK, body))
    }

    pub(super) async fn audit_events(&self, q: &Query) -> Reply {
        let filter = audit::Filter {
            key_id: q.get("key_id").map(str::to_owned),
            owner: q.get("owner").map(str::to_owned),
            action: q
                .get("action")
                .map(|a| {
                    Action::parse(a).ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "action: one of {}",
                            Action::ALL.map(Action::as_str).join(", ")
                        ))
                    })
                })
                .transpose()?,
            since: q.time("since")?,
            until: q.time("until")?,
        };
        let limit = q.limit(100, 1000)?;
        let (events, more) = self.audit.events(&filter, limit).await.map_err(|e| {
            tracing::warn!(error = %e, "admin: cannot read the audit trail");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit trail cannot be read right now",
            )
        })?;
        Ok((
            StatusCode::OK,
            serde_json::json!({ "events": events, "more": more }),
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRequest {
    owner: String,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default, rename = "type")]
    key_type: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    expires_in: Option<Secs>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    ip_allowlist: Vec<IpNet>,
    #[serde(default)]
    rate_limit: Option<KeyRateLimit>,
    #[serde(default)]
    restrictions: std::collections::BTreeMap<String, Vec<String>>,
}

impl CreateRequest {
    pub(super) fn into_new_record(self, default_env: Environment) -> Result<NewRecord, ApiError> {
        let environment = match self.environment.as_deref() {
            None => default_env,
            Some(e) => Environment::parse(e)
                .ok_or_else(|| ApiError::bad_request("environment: live or test"))?,
        };
        let key_type = match self.key_type.as_deref() {
            None | Some("secret") => KeyType::Secret,
            Some("publishable") => KeyType::Publishable,
            Some(_) => return Err(ApiError::bad_request("type: secret or publishable")),
        };
        Ok(NewRecord {
            name: self.name,
            scopes: self.scopes,
            expires_in: self.expires_in.map(Secs::duration).transpose()?,
            metadata: self.metadata,
            ip_allowlist: self.ip_allowlist,
            rate_limit: self.rate_limit,
            restrictions: self.restrictions,
            ..NewRecord::new(self.owner, environment, key_type)
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RotateRequest {
    #[serde(default)]
    pub(super) grace_period: Option<Secs>,
}
