//! `[self_service]`: key management on the proxy port, with the customer's own key — list,
//! create, get, update, rotate and revoke the keys of the caller's owner, answered by keygate
//! itself (never forwarded). Off unless `path` is set.
//!
//! ```toml
//! [self_service]
//! path = "/api/v1/keys"
//! scope = "keys_manage"
//! [self_service.shapes]                 # ZendFi's documented shapes
//! list = "bare"
//! fields = { environment = "mode", active = "is_active" }
//! list_fields = ["id", "environment", "active", "created_at", "last_used_at"]
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::check::Check;

/// What a response may show of a key (or of a rotation); renamed by `fields`.
pub const FIELDS: &[&str] = &[
    "id",
    "key",
    "display_prefix",
    "name",
    "environment",
    "type",
    "scopes",
    "state",
    "active",
    "created_at",
    "expires_at",
    "last_used_at",
    "ip_allowlist",
    "restrictions",
    "old_key_id",
    "old_key_deactivated",
    "new_key",
    "new_key_id",
    "propagated",
];

/// Key attributes a key may change on the keys of its owner (`PATCH`).
pub const UPDATABLE: &[&str] = &["name", "ip_allowlist", "restrictions", "scopes"];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelfServiceConfig {
    /// The mount: `{path}` (list, create) and `{path}/{id}[/rotate|/revoke]`.
    pub path: String,
    /// The scope a key needs to manage keys (`all`, `full_access`, `admin` also pass).
    pub scope: String,
    /// What `PATCH {path}/{id}` may change.
    pub updatable: Vec<String>,
    /// A live key may also see, create and manage its owner's test keys.
    pub live_manages_test: bool,
    /// Lists and reads show the owner's keys of every environment (metadata only; changes
    /// stay within what the key may manage). ZendFi's list shows test and live keys.
    pub lists_all_environments: bool,
    /// Per owner and minute: lists and reads, creations, rotations, other changes.
    pub list_per_minute: u64,
    pub create_per_minute: u64,
    pub rotate_per_minute: u64,
    pub write_per_minute: u64,
    pub shapes: Shapes,
}

/// How responses look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shapes {
    /// A list is a bare array (`true`) or `{"data": [...]}`.
    pub bare_list: bool,
    /// Logical field → name in requests and responses (`environment` → `mode`).
    pub rename: BTreeMap<String, String>,
    pub list_fields: Vec<String>,
    pub created_fields: Vec<String>,
    pub rotated_fields: Vec<String>,
}

impl Shapes {
    /// The name a logical field has on the wire.
    pub fn name<'a>(&'a self, field: &'a str) -> &'a str {
        self.rename.get(field).map_or(field, String::as_str)
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

impl Default for Shapes {
    fn default() -> Self {
        Shapes {
            bare_list: false,
            rename: BTreeMap::new(),
            list_fields: strings(&[
                "id",
                "display_prefix",
                "name",
                "environment",
                "type",
                "scopes",
                "state",
                "created_at",
                "expires_at",
                "last_used_at",
            ]),
            created_fields: strings(&[
                "key",
                "id",
                "display_prefix",
                "environment",
                "type",
                "scopes",
                "created_at",
                "propagated",
            ]),
            rotated_fields: strings(&[
                "old_key_id",
                "old_key_deactivated",
                "new_key",
                "new_key_id",
                "environment",
                "created_at",
                "propagated",
            ]),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct RawSelfService {
    path: Option<String>,
    scope: Option<String>,
    updatable: Option<Vec<String>>,
    live_manages_test: Option<bool>,
    lists_all_environments: Option<bool>,
    list_per_minute: Option<u64>,
    create_per_minute: Option<u64>,
    rotate_per_minute: Option<u64>,
    write_per_minute: Option<u64>,
    shapes: RawShapes,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawShapes {
    list: Option<String>,
    fields: BTreeMap<String, String>,
    list_fields: Option<Vec<String>>,
    created_fields: Option<Vec<String>>,
    rotated_fields: Option<Vec<String>>,
}

pub(super) fn validate(c: &mut Check<'_>, raw: RawSelfService) -> Option<SelfServiceConfig> {
    let path = raw.path?;
    if !path.starts_with('/')
        || path.ends_with('/')
        || path.contains(['*', '{', '}', '%', '\\', '?', '#'])
        || path
            .split('/')
            .skip(1)
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        c.problem(format!(
            "self_service.path: {path:?} must be a plain absolute path like \"/api/v1/keys\""
        ));
    }
    let mut shapes = Shapes::default();
    match raw.shapes.list.as_deref() {
        None | Some("data") => {}
        Some("bare") => shapes.bare_list = true,
        Some(other) => c.problem(format!(
            "self_service.shapes.list: {other:?} is not \"bare\" or \"data\""
        )),
    }
    for (logical, wire) in raw.shapes.fields {
        if !FIELDS.contains(&logical.as_str()) {
            c.problem(format!(
                "self_service.shapes.fields.{logical}: not a field; one of {}",
                FIELDS.join(", ")
            ));
        } else if wire.is_empty() {
            c.problem(format!("self_service.shapes.fields.{logical}: a name"));
        } else {
            shapes.rename.insert(logical, wire);
        }
    }
    let mut fields = |name: &str, v: Option<Vec<String>>, slot: &mut Vec<String>| {
        if let Some(v) = v {
            for f in &v {
                if !FIELDS.contains(&f.as_str()) {
                    c.problem(format!(
                        "self_service.shapes.{name}: {f:?} is not one of {}",
                        FIELDS.join(", ")
                    ));
                }
            }
            *slot = v;
        }
    };
    fields(
        "list_fields",
        raw.shapes.list_fields,
        &mut shapes.list_fields,
    );
    fields(
        "created_fields",
        raw.shapes.created_fields,
        &mut shapes.created_fields,
    );
    fields(
        "rotated_fields",
        raw.shapes.rotated_fields,
        &mut shapes.rotated_fields,
    );
    if !shapes.created_fields.iter().any(|f| f == "key")
        || !shapes.rotated_fields.iter().any(|f| f == "new_key")
    {
        c.problem(
            "self_service.shapes: created_fields must show \"key\" and rotated_fields \"new_key\" (the key is shown once, there)".into(),
        );
    }
    let updatable = raw
        .updatable
        .unwrap_or_else(|| strings(&["name", "ip_allowlist", "restrictions"]));
    for u in &updatable {
        if !UPDATABLE.contains(&u.as_str()) {
            c.problem(format!(
                "self_service.updatable: {u:?} is not one of {}",
                UPDATABLE.join(", ")
            ));
        }
    }
    Some(SelfServiceConfig {
        path,
        scope: raw.scope.unwrap_or_else(|| "keys_manage".into()),
        updatable,
        live_manages_test: raw.live_manages_test.unwrap_or(false),
        lists_all_environments: raw.lists_all_environments.unwrap_or(false),
        list_per_minute: c.positive("self_service.list_per_minute", raw.list_per_minute, 30),
        create_per_minute: c.positive("self_service.create_per_minute", raw.create_per_minute, 10),
        rotate_per_minute: c.positive("self_service.rotate_per_minute", raw.rotate_per_minute, 5),
        write_per_minute: c.positive("self_service.write_per_minute", raw.write_per_minute, 30),
        shapes,
    })
}
