//! The self-service API's JSON: keys rendered in the configured fields and names (ZendFi's
//! `{"id","mode","is_active",…}` or keygate's own), and the create request read the same way.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::config::Shapes;
use crate::error::api::ApiError;
use crate::key::{Environment, KeyType};
use crate::store::{KeyRecord, KeyState, Propagation};
use crate::time::Timestamp;

/// Values a rendered object can draw on besides the record.
#[derive(Default)]
pub struct Extra<'a> {
    pub key: Option<&'a str>,
    pub old: Option<&'a KeyRecord>,
    pub propagated: Option<&'a Propagation>,
}

/// `fields` of `rec` (and of `extra`), under their wire names.
pub fn render(shapes: &Shapes, fields: &[String], rec: &KeyRecord, extra: &Extra<'_>) -> Value {
    let now = Timestamp::now();
    let mut out = Map::new();
    for f in fields {
        let v = match f.as_str() {
            "id" => Value::from(rec.id.as_str()),
            "key" => extra.key.map_or(Value::Null, Value::from),
            "display_prefix" => Value::from(format!("{}…", rec.display_prefix)),
            "name" => rec.name.as_deref().map_or(Value::Null, Value::from),
            "environment" => Value::from(rec.environment.as_str()),
            "type" => Value::from(rec.key_type.as_str()),
            "scopes" => Value::from(rec.scopes.clone()),
            "state" => Value::from(rec.state(now).as_str()),
            "active" => Value::from(rec.state(now) == KeyState::Active),
            "created_at" => serde_json::to_value(rec.created_at).unwrap_or_default(),
            "expires_at" => serde_json::to_value(rec.expires_at).unwrap_or_default(),
            "last_used_at" => serde_json::to_value(rec.last_used_at).unwrap_or_default(),
            "ip_allowlist" => serde_json::to_value(&rec.ip_allowlist).unwrap_or_default(),
            "restrictions" => serde_json::to_value(&rec.restrictions).unwrap_or_default(),
            "new_key" => extra.key.map_or(Value::Null, Value::from),
            "new_key_id" => Value::from(rec.id.as_str()),
            "old_key_id" => extra
                .old
                .map_or(Value::Null, |o| Value::from(o.id.as_str())),
            "old_key_deactivated" => extra.old.map_or(Value::Null, |o| {
                Value::from(o.state(now) != KeyState::Active)
            }),
            "propagated" => extra
                .propagated
                .and_then(|p| serde_json::to_value(p).ok())
                .unwrap_or(Value::Null),
            _ => continue,
        };
        out.insert(shapes.name(f).to_owned(), v);
    }
    Value::Object(out)
}

/// What a customer may ask for when creating a key (wire names per `shapes`).
#[derive(Debug, Default)]
pub struct CreateRequest {
    pub environment: Option<Environment>,
    pub key_type: Option<KeyType>,
    pub name: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub ip_allowlist: Option<Vec<IpNet>>,
    pub restrictions: Option<BTreeMap<String, Vec<String>>>,
}

/// A change a customer may ask for (`PATCH`): the fields `updatable` allows.
#[derive(Debug, Default)]
pub struct UpdateRequest {
    pub name: Option<Option<String>>,
    pub scopes: Option<Vec<String>>,
    pub ip_allowlist: Option<Vec<IpNet>>,
    pub restrictions: Option<BTreeMap<String, Vec<String>>>,
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request("the body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("invalid JSON body: {e}"))),
    }
}

fn field<T: serde::de::DeserializeOwned>(
    m: &mut Map<String, Value>,
    wire: &str,
) -> Result<Option<T>, ApiError> {
    match m.remove(wire) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("{wire}: {e}"))),
    }
}

fn no_more(m: Map<String, Value>) -> Result<(), ApiError> {
    match m.keys().next() {
        None => Ok(()),
        Some(k) => Err(ApiError::bad_request(format!("{k}: unknown field"))),
    }
}

pub fn parse_create(shapes: &Shapes, body: &[u8]) -> Result<CreateRequest, ApiError> {
    let mut m = object(body)?;
    let environment = match field::<String>(&mut m, shapes.name("environment"))? {
        None => None,
        Some(e) => Some(Environment::parse(&e).ok_or_else(|| {
            ApiError::bad_request(format!("{}: test or live", shapes.name("environment")))
        })?),
    };
    let key_type = match field::<String>(&mut m, shapes.name("type"))?.as_deref() {
        None | Some("secret") => None,
        Some("publishable") => Some(KeyType::Publishable),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "{}: secret or publishable",
                shapes.name("type")
            )));
        }
    };
    let req = CreateRequest {
        environment,
        key_type,
        name: field(&mut m, shapes.name("name"))?,
        scopes: field(&mut m, shapes.name("scopes"))?,
        ip_allowlist: field(&mut m, shapes.name("ip_allowlist"))?,
        restrictions: field(&mut m, shapes.name("restrictions"))?,
    };
    no_more(m)?;
    Ok(req)
}

pub fn parse_update(
    shapes: &Shapes,
    updatable: &[String],
    body: &[u8],
) -> Result<UpdateRequest, ApiError> {
    let mut m = object(body)?;
    for key in m.keys() {
        let logical = ["name", "scopes", "ip_allowlist", "restrictions"]
            .into_iter()
            .find(|f| shapes.name(f) == key);
        match logical {
            Some(f) if updatable.iter().any(|u| u == f) => {}
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "{key}: cannot be changed through this API"
                )));
            }
            None => return Err(ApiError::bad_request(format!("{key}: unknown field"))),
        }
    }
    let name = match m.remove(shapes.name("name")) {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s)),
        Some(_) => return Err(ApiError::bad_request("name: a string or null")),
    };
    let req = UpdateRequest {
        name,
        scopes: field(&mut m, shapes.name("scopes"))?,
        ip_allowlist: field(&mut m, shapes.name("ip_allowlist"))?,
        restrictions: field(&mut m, shapes.name("restrictions"))?,
    };
    no_more(m)?;
    Ok(req)
}
