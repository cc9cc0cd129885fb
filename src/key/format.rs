//! The key format: `<prefix><random><checksum>`, where the prefix renders the configured template
//! (default `{type}_{env}_`, e.g. `sk_live_`), the random part is 32 base62 characters from the
//! OS CSPRNG (190.5 bits) and the checksum is CRC32 over everything before it, as 6 base62
//! characters. Secret scanners can recognise leaked keys by prefix and checksum.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::random_base62;

/// Base62 characters of randomness in a key body: 32 × log2(62) ≈ 190.5 bits.
pub const RANDOM_LEN: usize = 32;
/// Base62 characters of the CRC32 checksum (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// Random characters shown after the prefix in the display prefix (`sk_live_Ab12…`).
const DISPLAY_CHARS: usize = 4;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    Secret,
    Publishable,
}

impl KeyType {
    pub const fn as_str(self) -> &'static str {
        match self {
            KeyType::Secret => "secret",
            KeyType::Publishable => "publishable",
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    Live,
    Test,
}

impl Environment {
    pub const fn as_str(self) -> &'static str {
        match self {
            Environment::Live => "live",
            Environment::Test => "test",
        }
    }

    pub fn parse(s: &str) -> Option<Environment> {
        match s {
            "live" => Some(Environment::Live),
            "test" => Some(Environment::Test),
            _ => None,
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The operator's labels: how key types and environments are spelled in the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    /// Contains `{type}` and `{env}`, e.g. `{type}_{env}_` or `zp_{env}_{type}_`.
    pub template: String,
    pub secret: String,
    pub publishable: String,
    pub live: String,
    pub test: String,
}

impl Default for Labels {
    fn default() -> Self {
        Labels {
            template: "{type}_{env}_".into(),
            secret: "sk".into(),
            publishable: "pk".into(),
            live: "live".into(),
            test: "test".into(),
        }
    }
}

impl Labels {
    /// Every problem with these labels, as messages naming the field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (field, label) in [
            ("secret_label", &self.secret),
            ("publishable_label", &self.publishable),
            ("live_label", &self.live),
            ("test_label", &self.test),
        ] {
            if label.is_empty() || !label.bytes().all(|b| b.is_ascii_alphanumeric()) {
                out.push(format!(
                    "keys.{field}: must be 1+ ASCII letters or digits, got {label:?}"
                ));
            }
        }
        let t = &self.template;
        if t.matches("{type}").count() != 1 || t.matches("{env}").count() != 1 {
            out.push(format!(
                "keys.prefix_template: must contain {{type}} and {{env}} once each, got {t:?}"
            ));
        } else {
            let rest = t.replace("{type}", "").replace("{env}", "");
            if !rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') || !t.ends_with('_') {
                out.push(format!(
                    "keys.prefix_template: only letters, digits and '_' around the placeholders, ending in '_', got {t:?}"
                ));
            }
        }
        if self.secret == self.publishable {
            out.push("keys: secret_label and publishable_label must differ".into());
        }
        if self.live == self.test {
            out.push("keys: live_label and test_label must differ".into());
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("API key is malformed")]
    Malformed,
    #[error("API key checksum does not match (mistyped key?)")]
    BadChecksum,
}

/// A key that passed the offline checks. Borrows the key; never printed.
pub struct ParsedKey<'a> {
    pub key_type: KeyType,
    pub environment: Environment,
    key: &'a str,
    prefix_len: usize,
}

impl<'a> ParsedKey<'a> {
    pub fn as_str(&self) -> &'a str {
        self.key
    }

    /// `sk_live_Ab12`: safe to log and to show in listings.
    pub fn display_prefix(&self) -> &'a str {
        &self.key[..self.prefix_len + DISPLAY_CHARS]
    }
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedKey({}…)", self.display_prefix())
    }
}

/// A freshly generated key. The only place the full key exists; `Debug` is redacted.
pub struct NewKey {
    pub key: String,
    pub key_type: KeyType,
    pub environment: Environment,
    pub display_prefix: String,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewKey({}…)", self.display_prefix)
    }
}

/// Generates and parses keys for one set of [`Labels`].
#[derive(Clone, Debug)]
pub struct KeyFormat {
    /// The four rendered prefixes.
    prefixes: Vec<(String, KeyType, Environment)>,
}

impl KeyFormat {
    /// Builds the format; the labels must have passed [`Labels::problems`].
    pub fn new(labels: &Labels) -> Result<Self, String> {
        if let Some(p) = labels.problems().into_iter().next() {
            return Err(p);
        }
        let mut prefixes = Vec::with_capacity(4);
        for (kt, tl) in [
            (KeyType::Secret, &labels.secret),
            (KeyType::Publishable, &labels.publishable),
        ] {
            for (env, el) in [
                (Environment::Live, &labels.live),
                (Environment::Test, &labels.test),
            ] {
                let p = labels.template.replace("{type}", tl).replace("{env}", el);
                prefixes.push((p, kt, env));
            }
        }
        // A prefix that starts another would make parsing ambiguous (e.g. labels `s` and `s_x`).
        for (i, (a, ..)) in prefixes.iter().enumerate() {
            for (j, (b, ..)) in prefixes.iter().enumerate() {
                if i != j && b.starts_with(a.as_str()) {
                    return Err(format!(
                        "keys: prefix {a:?} is a prefix of {b:?}; choose distinct labels"
                    ));
                }
            }
        }
        Ok(KeyFormat { prefixes })
    }

    pub fn prefix(&self, key_type: KeyType, environment: Environment) -> &str {
        self.prefixes
            .iter()
            .find(|(_, t, e)| *t == key_type && *e == environment)
            .map_or("", |(p, ..)| p.as_str())
    }

    /// A new key with 190 bits from the OS CSPRNG.
    pub fn generate(&self, key_type: KeyType, environment: Environment) -> NewKey {
        let mut key = String::with_capacity(64);
        key.push_str(self.prefix(key_type, environment));
        key.push_str(&random_base62(RANDOM_LEN));
        let sum = checksum(&key);
        key.push_str(&sum);
        let display_prefix =
            key[..key.len() - RANDOM_LEN - CHECKSUM_LEN + DISPLAY_CHARS].to_owned();
        NewKey {
            key,
            key_type,
            environment,
            display_prefix,
        }
    }

    /// Checks shape and checksum without touching any store.
    pub fn parse<'a>(&self, key: &'a str) -> Result<ParsedKey<'a>, KeyFormatError> {
        let (prefix, key_type, environment) = self
            .prefixes
            .iter()
            .find(|(p, ..)| key.starts_with(p.as_str()))
            .ok_or(KeyFormatError::Malformed)?;
        let body = &key.as_bytes()[prefix.len()..];
        if body.len() != RANDOM_LEN + CHECKSUM_LEN || !body.iter().all(u8::is_ascii_alphanumeric) {
            return Err(KeyFormatError::Malformed);
        }
        let (head, sum) = key.split_at(key.len() - CHECKSUM_LEN);
        if checksum_bytes(head) != *sum.as_bytes() {
            return Err(KeyFormatError::BadChecksum);
        }
        Ok(ParsedKey {
            key_type: *key_type,
            environment: *environment,
            key,
            prefix_len: prefix.len(),
        })
    }
}

fn checksum_bytes(s: &str) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(s.as_bytes());
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

fn checksum(s: &str) -> String {
    checksum_bytes(s).iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt() -> KeyFormat {
        KeyFormat::new(&Labels::default()).unwrap()
    }

    #[test]
    fn generated_keys_parse_back() {
        let f = fmt();
        for (t, e, p) in [
            (KeyType::Secret, Environment::Live, "sk_live_"),
            (KeyType::Publishable, Environment::Test, "pk_test_"),
        ] {
            let k = f.generate(t, e);
            assert!(k.key.starts_with(p));
            assert_eq!(k.key.len(), p.len() + RANDOM_LEN + CHECKSUM_LEN);
            let parsed = f.parse(&k.key).unwrap();
            assert_eq!((parsed.key_type, parsed.environment), (t, e));
            assert_eq!(parsed.display_prefix(), k.display_prefix);
            assert_eq!(k.display_prefix.len(), p.len() + 4);
        }
    }

    #[test]
    fn keys_are_distinct() {
        let f = fmt();
        let a = f.generate(KeyType::Secret, Environment::Live);
        let b = f.generate(KeyType::Secret, Environment::Live);
        assert_ne!(a.key, b.key);
    }

    #[test]
    fn every_single_character_typo_is_caught_offline() {
        let f = fmt();
        let k = f.generate(KeyType::Secret, Environment::Live).key;
        let start = "sk_live_".len();
        for i in start..k.len() {
            let mut b = k.clone().into_bytes();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            let typo = String::from_utf8(b).unwrap();
            assert_eq!(
                f.parse(&typo).unwrap_err(),
                KeyFormatError::BadChecksum,
                "position {i}"
            );
        }
    }

    #[test]
    fn bad_shapes_are_malformed() {
        let f = fmt();
        let k = f.generate(KeyType::Secret, Environment::Live).key;
        for bad in [
            "",
            "sk_live_",
            "xk_live_abc",
            &k[..k.len() - 1],
            &format!("{k}a"),
            &k.replace("sk_live_", "sk_prod_"),
            &format!("{}-{}", &k[..10], &k[11..]),
        ] {
            assert_eq!(
                f.parse(bad).unwrap_err(),
                KeyFormatError::Malformed,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn branded_template() {
        let labels = Labels {
            template: "zp_{env}_{type}_".into(),
            ..Labels::default()
        };
        let f = KeyFormat::new(&labels).unwrap();
        let k = f.generate(KeyType::Secret, Environment::Test);
        assert!(k.key.starts_with("zp_test_sk_"));
        assert_eq!(f.parse(&k.key).unwrap().environment, Environment::Test);
        // A default-format key is not a key of this operator.
        let other = fmt().generate(KeyType::Secret, Environment::Test).key;
        assert!(f.parse(&other).is_err());
    }

    #[test]
    fn rejects_bad_labels() {
        let bad = Labels {
            template: "{type}-{env}-".into(),
            live: "".into(),
            ..Labels::default()
        };
        assert_eq!(bad.problems().len(), 2);
        let overlapping = Labels {
            template: "{type}{env}_".into(),
            secret: "s".into(),
            publishable: "sl".into(),
            live: "live".into(),
            test: "ive".into(),
        };
        assert!(KeyFormat::new(&overlapping).is_err());
    }
}
