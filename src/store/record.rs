//! The stored form of a key: everything keygate knows about it except the key itself.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::key::{
    Environment, KeyFormat, KeyFormatError, KeyHasher, KeyType, LookupHash, NewKey, PhcError,
    new_key_id,
};

/// Why a key could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error("{0}")]
    Format(#[from] KeyFormatError),
    #[error("{0}")]
    Hash(#[from] PhcError),
    #[error("no key in {0} draws fell in the required shard")]
    Steer(usize),
}
use crate::time::Timestamp;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    /// `key_…`: non-secret, stable.
    pub id: String,
    pub lookup_hash: LookupHash,
    /// Argon2id PHC string.
    pub phc: String,
    /// `sk_live_Ab12`: what logs and listings show.
    pub display_prefix: String,
    pub key_type: KeyType,
    pub environment: Environment,
    /// The account the key acts for.
    pub owner: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_allowlist: Vec<IpNet>,
    /// Overrides the default per-key rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<KeyRateLimit>,
    /// Allowed values of request attributes (`[attributes.<name>]`), e.g. `country: [NG, KE]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restrictions: BTreeMap<String, Vec<String>>,
    pub created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_to: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// A key's own rate limit: a named tier from `[rate_limits.tiers]`, or an explicit limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeyRateLimit {
    Tier { tier: String },
    Explicit { limit: u64, window_secs: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Expired,
    Revoked,
}

impl KeyState {
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Expired => "expired",
            KeyState::Revoked => "revoked",
        }
    }
}

impl KeyRecord {
    pub fn state(&self, now: Timestamp) -> KeyState {
        if self.revoked_at.is_some_and(|t| t <= now) {
            KeyState::Revoked
        } else if self.expires_at.is_some_and(|t| t <= now) {
            KeyState::Expired
        } else {
            KeyState::Active
        }
    }

    /// Marks this key as rotated to `successor`: revoked at `now`, or expiring at `expires_at`
    /// (never later than it already would). Only an active, not yet rotated key can be retired.
    /// Both backends apply this inside their atomic write.
    pub fn retire_for(
        &mut self,
        successor: &str,
        expires_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(), super::StoreError> {
        if self.state(now) != KeyState::Active {
            return Err(super::StoreError::Conflict(format!(
                "key {} is not active",
                self.id
            )));
        }
        if self.rotated_to.is_some() {
            return Err(super::StoreError::Conflict(format!(
                "key {} was already rotated",
                self.id
            )));
        }
        self.rotated_to = Some(successor.to_owned());
        match expires_at {
            Some(t) => self.expires_at = Some(self.expires_at.map_or(t, |e| e.min(t))),
            None => self.revoked_at = Some(now),
        }
        Ok(())
    }

    /// Equal in everything that decides an authentication (all but `last_used_at`), so that
    /// usage bookkeeping never evicts a verified key from the caches.
    pub fn same_for_auth(&self, other: &KeyRecord) -> bool {
        let mut a = self.clone();
        a.last_used_at = other.last_used_at;
        a == *other
    }
}

/// A record as shown to operators (CLI, admin API): metadata only, no hashes.
#[derive(Clone, Debug, Serialize)]
pub struct KeyView<'a> {
    pub id: &'a str,
    pub display_prefix: String,
    pub owner: &'a str,
    pub environment: Environment,
    #[serde(rename = "type")]
    pub key_type: KeyType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub scopes: &'a [String],
    #[serde(skip_serializing_if = "<[IpNet]>::is_empty")]
    pub ip_allowlist: &'a [IpNet],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<&'a KeyRateLimit>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub restrictions: &'a BTreeMap<String, Vec<String>>,
    pub state: KeyState,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotated_to: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: &'a BTreeMap<String, String>,
}

impl KeyRecord {
    pub fn view(&self, now: Timestamp) -> KeyView<'_> {
        KeyView {
            id: &self.id,
            display_prefix: format!("{}…", self.display_prefix),
            owner: &self.owner,
            environment: self.environment,
            key_type: self.key_type,
            name: self.name.as_deref(),
            scopes: &self.scopes,
            ip_allowlist: &self.ip_allowlist,
            rate_limit: self.rate_limit.as_ref(),
            restrictions: &self.restrictions,
            state: self.state(now),
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at,
            rotated_from: self.rotated_from.as_deref(),
            rotated_to: self.rotated_to.as_deref(),
            metadata: &self.metadata,
        }
    }
}

/// What an operator asks for when creating a key.
#[derive(Clone, Debug)]
pub struct NewRecord {
    pub key_type: KeyType,
    pub environment: Environment,
    pub owner: String,
    pub name: Option<String>,
    pub scopes: Vec<String>,
    pub expires_in: Option<Duration>,
    pub metadata: BTreeMap<String, String>,
    pub ip_allowlist: Vec<IpNet>,
    pub rate_limit: Option<KeyRateLimit>,
    pub restrictions: BTreeMap<String, Vec<String>>,
}

impl NewRecord {
    /// Just the essentials: no name, scopes, expiry, metadata, IP allowlist or own rate limit.
    pub fn new(owner: impl Into<String>, environment: Environment, key_type: KeyType) -> Self {
        NewRecord {
            key_type,
            environment,
            owner: owner.into(),
            name: None,
            scopes: Vec::new(),
            expires_in: None,
            metadata: BTreeMap::new(),
            ip_allowlist: Vec::new(),
            rate_limit: None,
            restrictions: BTreeMap::new(),
        }
    }

    /// Every problem with the request, naming the field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !is_token(&self.owner, 128) {
            out.push(format!(
                "owner: 1–128 characters from A-Z a-z 0-9 _ - . : @, got {:?}",
                self.owner
            ));
        }
        attribute_problems(
            &mut out,
            self.name.as_deref(),
            &self.scopes,
            &self.metadata,
            self.rate_limit.as_ref(),
        );
        restriction_problems(&mut out, &self.restrictions);
        out
    }

    /// Generates the key and the record that stands for it. The returned [`NewKey`] is the
    /// only copy of the key: show it once and drop it.
    pub fn mint(
        self,
        format: &KeyFormat,
        hasher: &KeyHasher,
        now: Timestamp,
    ) -> Result<(NewKey, KeyRecord), MintError> {
        self.mint_where(format, hasher, now, |_| true)
    }

    /// [`NewRecord::mint`], drawing keys until the lookup hash satisfies `accept` (cheap:
    /// only the lookup hash is computed per draw; the Argon2id hash once, at the end).
    pub fn mint_where(
        self,
        format: &KeyFormat,
        hasher: &KeyHasher,
        now: Timestamp,
        accept: impl Fn(&LookupHash) -> bool,
    ) -> Result<(NewKey, KeyRecord), MintError> {
        /// A 1-in-4096 target is met within this many draws but with probability e^-24.
        const DRAWS: usize = 100_000;
        let mut drawn = None;
        for _ in 0..DRAWS {
            let key = format.generate(self.key_type, self.environment)?;
            let hash = hasher.lookup_hash(&key.lookup_material);
            if accept(&hash) {
                drawn = Some((key, hash));
                break;
            }
        }
        let Some((key, lookup_hash)) = drawn else {
            return Err(MintError::Steer(DRAWS));
        };
        let record = KeyRecord {
            id: key.record_id.clone().unwrap_or_else(new_key_id),
            lookup_hash,
            phc: hasher.phc(&key.key)?,
            display_prefix: key.display_prefix.clone(),
            key_type: self.key_type,
            environment: self.environment,
            owner: self.owner,
            name: self.name,
            scopes: self.scopes,
            ip_allowlist: self.ip_allowlist,
            rate_limit: self.rate_limit,
            restrictions: self.restrictions,
            created_at: now,
            expires_at: self.expires_in.map(|d| now.saturating_add(d)),
            revoked_at: None,
            last_used_at: None,
            rotated_from: None,
            rotated_to: None,
            metadata: self.metadata,
        };
        Ok((key, record))
    }

    /// The request that creates a successor of `old` with the same attributes.
    pub fn successor_of(old: &KeyRecord, now: Timestamp) -> NewRecord {
        NewRecord {
            key_type: old.key_type,
            environment: old.environment,
            owner: old.owner.clone(),
            name: old.name.clone(),
            scopes: old.scopes.clone(),
            expires_in: old
                .expires_at
                .map(|t| Duration::from_secs(t.unix().saturating_sub(now.unix()))),
            metadata: old.metadata.clone(),
            ip_allowlist: old.ip_allowlist.clone(),
            rate_limit: old.rate_limit.clone(),
            restrictions: old.restrictions.clone(),
        }
    }
}

/// Problems with the attributes a key is created or updated with, naming the field.
fn attribute_problems(
    out: &mut Vec<String>,
    name: Option<&str>,
    scopes: &[String],
    metadata: &BTreeMap<String, String>,
    rate_limit: Option<&KeyRateLimit>,
) {
    for s in scopes {
        if !is_token(s, 64) {
            out.push(format!(
                "scopes: 1–64 characters from A-Z a-z 0-9 _ - . : @, got {s:?}"
            ));
        }
    }
    if let Some(name) = name
        && (name.chars().count() > 200 || name.chars().any(char::is_control))
    {
        out.push("name: at most 200 characters, no control characters".into());
    }
    if metadata.len() > 50
        || metadata
            .iter()
            .any(|(k, v)| k.is_empty() || k.len() > 64 || v.len() > 512)
    {
        out.push("metadata: at most 50 entries, keys 1–64 bytes, values up to 512 bytes".into());
    }
    match rate_limit {
        Some(KeyRateLimit::Explicit { limit, window_secs }) if *limit == 0 || *window_secs == 0 => {
            out.push("rate_limit: limit and window_secs must be greater than zero".into());
        }
        Some(KeyRateLimit::Tier { tier }) if !is_token(tier, 64) => {
            out.push(format!("rate_limit: {tier:?} is not a tier name"));
        }
        _ => {}
    }
}

/// Problems with attribute restrictions: names and values are short tokens, a list is not empty.
fn restriction_problems(out: &mut Vec<String>, restrictions: &BTreeMap<String, Vec<String>>) {
    for (name, values) in restrictions {
        if !is_token(name, 64) {
            out.push(format!("restrictions: {name:?} is not an attribute name"));
        }
        if values.is_empty() || values.len() > 1000 {
            out.push(format!(
                "restrictions.{name}: 1-1000 allowed values (remove the attribute to lift it)"
            ));
        }
        if values.iter().any(|v| v.is_empty() || v.len() > 256) {
            out.push(format!("restrictions.{name}: values are 1-256 bytes"));
        }
    }
}

/// A partial update of a key's attributes (`PATCH /v1/keys/{id}`). Absent fields stay as they
/// are; `null` clears the optional ones.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Option<String>>,
    pub scopes: Option<Vec<String>>,
    pub ip_allowlist: Option<Vec<IpNet>>,
    #[serde(default, deserialize_with = "present")]
    pub rate_limit: Option<Option<KeyRateLimit>>,
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<Timestamp>>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// Replaces the restrictions (`{}` lifts them all).
    pub restrictions: Option<BTreeMap<String, Vec<String>>>,
}

/// Tells a field sent as `null` (`Some(None)`) from one not sent (`None`).
fn present<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl KeyPatch {
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.scopes.is_none()
            && self.ip_allowlist.is_none()
            && self.rate_limit.is_none()
            && self.expires_at.is_none()
            && self.metadata.is_none()
            && self.restrictions.is_none()
    }

    /// Every problem with the patch, naming the field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        attribute_problems(
            &mut out,
            self.name.as_ref().and_then(Option::as_deref),
            self.scopes.as_deref().unwrap_or_default(),
            self.metadata.as_ref().unwrap_or(&BTreeMap::new()),
            self.rate_limit.as_ref().and_then(Option::as_ref),
        );
        if let Some(r) = &self.restrictions {
            restriction_problems(&mut out, r);
        }
        out
    }

    /// Applies the patch and returns what changed, as `{"field": {"from": …, "to": …}}`.
    pub fn apply(&self, rec: &mut KeyRecord) -> serde_json::Map<String, serde_json::Value> {
        fn set<T: Serialize + PartialEq + Clone>(
            changes: &mut serde_json::Map<String, serde_json::Value>,
            field: &str,
            slot: &mut T,
            to: Option<&T>,
        ) {
            if let Some(to) = to
                && slot != to
            {
                changes.insert(
                    field.to_owned(),
                    serde_json::json!({ "from": &*slot, "to": to }),
                );
                *slot = to.clone();
            }
        }
        let mut c = serde_json::Map::new();
        set(&mut c, "name", &mut rec.name, self.name.as_ref());
        set(&mut c, "scopes", &mut rec.scopes, self.scopes.as_ref());
        set(
            &mut c,
            "ip_allowlist",
            &mut rec.ip_allowlist,
            self.ip_allowlist.as_ref(),
        );
        set(
            &mut c,
            "rate_limit",
            &mut rec.rate_limit,
            self.rate_limit.as_ref(),
        );
        set(
            &mut c,
            "expires_at",
            &mut rec.expires_at,
            self.expires_at.as_ref(),
        );
        set(
            &mut c,
            "metadata",
            &mut rec.metadata,
            self.metadata.as_ref(),
        );
        set(
            &mut c,
            "restrictions",
            &mut rec.restrictions,
            self.restrictions.as_ref(),
        );
        c
    }
}

/// Values that end up in identity headers: a closed alphabet keeps them valid and unambiguous.
fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Labels;

    fn request() -> NewRecord {
        NewRecord {
            key_type: KeyType::Secret,
            environment: Environment::Live,
            owner: "acct_1".into(),
            name: Some("billing".into()),
            scopes: vec!["payments:read".into()],
            expires_in: Some(Duration::from_secs(3600)),
            metadata: BTreeMap::new(),
            ip_allowlist: Vec::new(),
            rate_limit: None,
            restrictions: BTreeMap::new(),
        }
    }

    #[test]
    fn mint_stores_no_plaintext() {
        let format = KeyFormat::new(&Labels::default()).unwrap();
        let hasher = KeyHasher::new(None);
        let now = Timestamp::from_unix(1_000);
        let (key, rec) = request().mint(&format, &hasher, now).unwrap();
        let json = serde_json::to_string(&rec).unwrap();
        assert!(!json.contains(&key.key));
        assert!(!json.contains(&key.key["sk_live_".len()..]));
        assert_eq!(rec.lookup_hash, hasher.lookup_hash(&key.key));
        assert!(hasher.verify(&key.key, &rec.phc));
        assert_eq!(rec.expires_at, Some(Timestamp::from_unix(4_600)));
        assert_eq!(rec.state(now), KeyState::Active);
        assert_eq!(rec.state(Timestamp::from_unix(4_600)), KeyState::Expired);
        let back: KeyRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn revoked_wins_over_expired() {
        let format = KeyFormat::new(&Labels::default()).unwrap();
        let (_, mut rec) = request()
            .mint(&format, &KeyHasher::new(None), Timestamp::from_unix(0))
            .unwrap();
        rec.revoked_at = Some(Timestamp::from_unix(10));
        assert_eq!(rec.state(Timestamp::from_unix(5_000)), KeyState::Revoked);
        assert_eq!(rec.state(Timestamp::from_unix(9)), KeyState::Active);
    }

    #[test]
    fn usage_is_not_an_auth_change() {
        let format = KeyFormat::new(&Labels::default()).unwrap();
        let (_, rec) = request()
            .mint(&format, &KeyHasher::new(None), Timestamp::from_unix(0))
            .unwrap();
        let mut used = rec.clone();
        used.last_used_at = Some(Timestamp::from_unix(7));
        assert!(rec.same_for_auth(&used));
        used.scopes.push("x".into());
        assert!(!rec.same_for_auth(&used));
    }

    #[test]
    fn patch_applies_only_what_was_sent() {
        let format = KeyFormat::new(&Labels::default()).unwrap();
        let (_, mut rec) = request()
            .mint(&format, &KeyHasher::new(None), Timestamp::from_unix(0))
            .unwrap();
        let patch: KeyPatch =
            serde_json::from_str(r#"{"name": null, "scopes": ["refunds:write"]}"#).unwrap();
        assert!(patch.problems().is_empty());
        let changes = patch.apply(&mut rec);
        assert_eq!(rec.name, None);
        assert_eq!(rec.scopes, ["refunds:write"]);
        assert_eq!(
            rec.expires_at,
            Some(Timestamp::from_unix(3600)),
            "untouched"
        );
        assert_eq!(changes["name"]["from"], "billing");
        assert_eq!(changes.len(), 2);
        assert!(serde_json::from_str::<KeyPatch>(r#"{"owner": "x"}"#).is_err());
        let bad: KeyPatch = serde_json::from_str(r#"{"scopes": ["a b"]}"#).unwrap();
        assert_eq!(bad.problems().len(), 1);
    }

    #[test]
    fn rejects_header_unsafe_values() {
        let mut r = request();
        r.owner = "acct 1\r\nX-Auth-Owner: admin".into();
        r.scopes.push("a,b".into());
        assert_eq!(r.problems().len(), 2);
    }
}
