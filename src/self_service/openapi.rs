//! The OpenAPI 3 description of the self-service key API as configured: its mount, its field
//! names and envelope, what `PATCH` may change, the per-owner limits. Generated from
//! `[self_service]` (so a renamed field is documented under its wire name) and served by the
//! admin API at `GET /v1/self-service/openapi.json`, for the API team to publish.

use serde_json::{Map, Value, json};

use crate::config::{SelfServiceConfig, Shapes};

/// The schema of one logical field.
fn field_schema(field: &str) -> Value {
    let string = |d: &str| json!({ "type": "string", "description": d });
    let time = |d: &str| json!({ "type": "string", "format": "date-time", "nullable": true, "description": d });
    match field {
        "id" | "new_key_id" => string("The key's id (not secret)."),
        "old_key_id" => string("The rotated key's id."),
        "key" | "new_key" => string("The full key. Shown here once; keygate keeps only its hash."),
        "display_prefix" => string("The key's first characters, for recognising it."),
        "name" => json!({ "type": "string", "nullable": true }),
        "environment" => json!({ "type": "string", "enum": ["test", "live"] }),
        "type" => json!({ "type": "string", "enum": ["secret", "publishable"] }),
        "scopes" => json!({ "type": "array", "items": { "type": "string" } }),
        "state" => json!({ "type": "string", "enum": ["active", "rotated", "revoked", "expired"] }),
        "active" => json!({ "type": "boolean" }),
        "old_key_deactivated" => {
            json!({ "type": "boolean", "description": "The old key is refused from now on." })
        }
        "created_at" => time("RFC 3339."),
        "expires_at" => time("RFC 3339; null when the key does not expire."),
        "last_used_at" => time("RFC 3339; null when never used (updated about once a minute)."),
        "ip_allowlist" => {
            json!({ "type": "array", "items": { "type": "string", "example": "203.0.113.0/24" } })
        }
        "restrictions" => json!({
            "type": "object",
            "description": "Attribute → allowed values, checked on every request made with the key.",
            "additionalProperties": { "type": "array", "items": { "type": "string" } }
        }),
        "propagated" => json!({
            "type": "object",
            "description": "How many proxies serving the store have applied the change (this one already has).",
            "properties": {
                "replicas": { "type": "integer" },
                "acknowledged": { "type": "integer" },
                "late": { "type": "array", "items": { "type": "string" } },
                "waited_ms": { "type": "integer" },
                "tracked": { "type": "boolean" }
            }
        }),
        _ => json!({}),
    }
}

/// An object of `fields`, under their wire names.
fn object(shapes: &Shapes, fields: &[String], required: bool) -> Value {
    let props: Map<String, Value> = fields
        .iter()
        .map(|f| (shapes.name(f).to_owned(), field_schema(f)))
        .collect();
    let mut v = json!({ "type": "object", "properties": props });
    if required {
        v["required"] = fields.iter().map(|f| shapes.name(f)).collect();
    }
    v
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

/// The document for `config`.
pub fn document(config: &SelfServiceConfig) -> Value {
    let shapes = &config.shapes;
    let key = object(shapes, &shapes.list_fields, true);
    let list = if shapes.bare_list {
        json!({ "type": "array", "items": { "$ref": "#/components/schemas/Key" } })
    } else {
        json!({
            "type": "object", "required": ["data"],
            "properties": { "data": { "type": "array", "items": { "$ref": "#/components/schemas/Key" } } }
        })
    };
    let mut changed_fields = shapes.list_fields.clone();
    changed_fields.push("propagated".into());
    let create_fields: Vec<String> = [
        "environment",
        "type",
        "name",
        "scopes",
        "ip_allowlist",
        "restrictions",
    ]
    .map(String::from)
    .to_vec();
    let update_fields = config.updatable.clone();
    let per_minute =
        |n: u64| format!("Limited to {n} a minute per owner (429 with Retry-After beyond).");
    let common = |extra: &[(&str, &str)]| {
        let mut r = Map::new();
        r.insert(
            "401".into(),
            error_response("No key, or a key that is not valid."),
        );
        r.insert(
            "403".into(),
            error_response(&format!(
                "The key lacks the `{}` scope, or asks for more than it holds.",
                config.scope
            )),
        );
        r.insert(
            "429".into(),
            error_response("Too many requests for this owner."),
        );
        for (status, what) in extra {
            r.insert((*status).into(), error_response(what));
        }
        r
    };
    let with = |mut ok: Map<String, Value>, extra: &[(&str, &str)]| {
        ok.extend(common(extra));
        Value::Object(ok)
    };
    let ok = |status: &str, description: &str, schema: &str| {
        let mut m = Map::new();
        m.insert(
            status.into(),
            json!({
                "description": description,
                "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
            }),
        );
        m
    };
    let id_param =
        json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } }]);
    let not_found = ("404", "No key with this id belongs to the caller's owner.");
    let path = &config.path;
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "API keys",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Manage your own API keys with an API key that holds the `{}` scope. A key sees \
                 and changes only the keys of its owner{}, and never makes a key stronger than \
                 itself (scopes, IP allowlist, restrictions, expiry). A revoked or rotated key is \
                 refused before the response is sent.",
                config.scope,
                if config.live_manages_test { "" } else { " and its environment" },
            )
        },
        "components": {
            "securitySchemes": { "apiKey": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "Key": key,
                "KeyList": list,
                "CreateRequest": object(shapes, &create_fields, false),
                "UpdateRequest": object(shapes, &update_fields, false),
                "Created": object(shapes, &shapes.created_fields, true),
                "Rotated": object(shapes, &shapes.rotated_fields, true),
                "Changed": object(shapes, &changed_fields, true),
                "Error": { "type": "object", "description": "The error body of this API (its `[errors]` contract)." }
            }
        },
        "security": [{ "apiKey": [] }],
        "paths": {
            path.clone(): {
                "get": {
                    "summary": "List your keys (metadata only, never a secret)",
                    "operationId": "listKeys",
                    "description": per_minute(config.list_per_minute),
                    "responses": with(ok("200", "The keys.", "KeyList"), &[])
                },
                "post": {
                    "summary": "Create a key; the response shows it once",
                    "operationId": "createKey",
                    "description": format!("What is not asked for is inherited from the calling key. {}", per_minute(config.create_per_minute)),
                    "requestBody": { "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CreateRequest" } } } },
                    "responses": with(ok("201", "The new key.", "Created"), &[("400", "A malformed body.")])
                }
            },
            format!("{path}/{{id}}"): {
                "parameters": id_param,
                "get": {
                    "summary": "One key",
                    "operationId": "getKey",
                    "description": per_minute(config.list_per_minute),
                    "responses": with(ok("200", "The key.", "Key"), &[not_found])
                },
                "patch": {
                    "summary": format!("Change {}", config.updatable.iter().map(|f| shapes.name(f)).collect::<Vec<_>>().join(", ")),
                    "operationId": "updateKey",
                    "description": per_minute(config.write_per_minute),
                    "requestBody": { "content": { "application/json": { "schema": { "$ref": "#/components/schemas/UpdateRequest" } } } },
                    "responses": with(ok("200", "The changed key.", "Changed"), &[not_found, ("400", "A malformed body or a field that may not change.")])
                },
                "delete": {
                    "summary": "Revoke a key",
                    "operationId": "deleteKey",
                    "description": per_minute(config.write_per_minute),
                    "responses": with(ok("200", "The revoked key.", "Changed"), &[not_found])
                }
            },
            format!("{path}/{{id}}/rotate"): {
                "parameters": id_param,
                "post": {
                    "summary": "Replace a key with a new one; the old one is refused from now on",
                    "operationId": "rotateKey",
                    "description": per_minute(config.rotate_per_minute),
                    "responses": with(ok("200", "The successor, shown once.", "Rotated"), &[not_found, ("409", "The key is not active.")])
                }
            },
            format!("{path}/{{id}}/revoke"): {
                "parameters": id_param,
                "post": {
                    "summary": "Revoke a key",
                    "operationId": "revokeKey",
                    "description": per_minute(config.write_per_minute),
                    "responses": with(ok("200", "The revoked key.", "Changed"), &[not_found])
                }
            }
        }
    })
}
