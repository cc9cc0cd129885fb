//! The key format. The prefix renders the configured template (default `{type}_{env}_`, e.g.
//! `sk_live_`); then one of two shapes:
//!
//! - **checksummed** (default): `<prefix><random><checksum>` — the random part from the OS
//!   CSPRNG in the configured alphabet and length (default 32 base62 characters, 190.5 bits),
//!   the checksum CRC32 over everything before it in the same alphabet, so mistyped keys are
//!   rejected offline and secret scanners can recognise leaked ones;
//! - **embedded id** (ZaroPay's): `<prefix><id>_<secret>` for secret keys and `<prefix><id>` for
//!   publishable ones, `<id>` a non-secret lookup id (16 hex) and `<secret>` 48 hex (192 bits).
//!   The store is looked up by the id; only the Argon2id hash covers the secret.

use std::fmt;

use serde::{Deserialize, Serialize};

use rand::RngExt as _;

/// Base62 characters of randomness in a default key body: 32 × log2(62) ≈ 190.5 bits.
pub const RANDOM_LEN: usize = 32;
/// Base62 characters of the CRC32 checksum (62^6 > 2^32).
#[cfg(test)]
const CHECKSUM_LEN: usize = 6;
/// Random characters shown after the prefix in the display prefix (`sk_live_Ab12…`).
const DISPLAY_CHARS: usize = 4;
/// The least entropy a key's random part may have.
pub const MIN_BITS: f64 = 128.0;

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

/// The characters of a key's random part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alphabet {
    Base62,
    /// Lower-case hexadecimal.
    Hex,
    /// Bitcoin's base58 (no `0`, `O`, `I`, `l`).
    Base58,
    /// `0-9a-z`.
    LowerAlphanumeric,
}

impl Alphabet {
    pub fn parse(s: &str) -> Option<Alphabet> {
        match s {
            "base62" => Some(Alphabet::Base62),
            "hex" => Some(Alphabet::Hex),
            "base58" => Some(Alphabet::Base58),
            "lower_alphanumeric" | "base36" => Some(Alphabet::LowerAlphanumeric),
            _ => None,
        }
    }

    pub const fn chars(self) -> &'static [u8] {
        match self {
            Alphabet::Base62 => b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            Alphabet::Hex => b"0123456789abcdef",
            Alphabet::Base58 => b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz",
            Alphabet::LowerAlphanumeric => b"0123456789abcdefghijklmnopqrstuvwxyz",
        }
    }

    /// Whether `b` is one of [`Alphabet::chars`] (by ranges: this runs per key character on
    /// every request).
    fn contains(self, b: u8) -> bool {
        match self {
            Alphabet::Base62 => b.is_ascii_alphanumeric(),
            Alphabet::Hex => matches!(b, b'0'..=b'9' | b'a'..=b'f'),
            Alphabet::Base58 => {
                b.is_ascii_alphanumeric() && !matches!(b, b'0' | b'O' | b'I' | b'l')
            }
            Alphabet::LowerAlphanumeric => matches!(b, b'0'..=b'9' | b'a'..=b'z'),
        }
    }

    /// Bits of entropy in `n` characters.
    pub fn bits(self, n: usize) -> f64 {
        n as f64 * (self.chars().len() as f64).log2()
    }

    /// Characters a CRC32 takes in this alphabet: ⌈32 / log2(base)⌉.
    const fn checksum_len(self) -> usize {
        match self {
            Alphabet::Base62 | Alphabet::Base58 => 6,
            Alphabet::Hex => 8,
            Alphabet::LowerAlphanumeric => 7,
        }
    }

    /// `n` characters from the OS CSPRNG, uniformly (by rejection sampling).
    fn random(self, n: usize) -> String {
        let chars = self.chars();
        let mut rng = super::os_rng();
        (0..n)
            .map(|_| char::from(chars[rng.random_range(0..chars.len())]))
            .collect()
    }
}

/// How the part after the prefix is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// `<prefix><random><checksum>`.
    Checksummed {
        alphabet: Alphabet,
        length: usize,
        checksum: bool,
    },
    /// `<prefix><id>_<secret>` (secret keys) and `<prefix><id>` (publishable keys); the id is
    /// hex, the secret in `alphabet`.
    EmbeddedId {
        id_length: usize,
        alphabet: Alphabet,
        secret_length: usize,
    },
}

impl Default for Shape {
    fn default() -> Self {
        Shape::Checksummed {
            alphabet: Alphabet::Base62,
            length: RANDOM_LEN,
            checksum: true,
        }
    }
}

impl Shape {
    /// Why this shape cannot be used, if it cannot (too little entropy, odd lengths).
    pub fn problem(&self) -> Option<String> {
        match *self {
            Shape::Checksummed {
                alphabet, length, ..
            } if alphabet.bits(length) < MIN_BITS => Some(format!(
                "keys.body_length: {length} characters of that alphabet are {:.0} bits; at least {MIN_BITS} are required",
                alphabet.bits(length)
            )),
            Shape::EmbeddedId {
                alphabet,
                secret_length,
                ..
            } if alphabet.bits(secret_length) < MIN_BITS => Some(format!(
                "keys.secret_length: {secret_length} characters are {:.0} bits; at least {MIN_BITS} are required",
                alphabet.bits(secret_length)
            )),
            Shape::EmbeddedId { id_length, .. } if !(8..=64).contains(&id_length) => Some(format!(
                "keys.id_length: {id_length} is not 8-64 hex characters"
            )),
            Shape::Checksummed { length, .. } if length > 256 => {
                Some("keys.body_length: at most 256 characters".into())
            }
            _ => None,
        }
    }
}

/// The operator's labels: how key types and environments are spelled in the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    /// Contains `{env}` and usually `{type}`, e.g. `{type}_{env}_` or `zp_{env}_{type}_`.
    /// Without `{type}` there are secret keys only (`zfi_{env}_`).
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
        if t.matches("{type}").count() > 1 || t.matches("{env}").count() != 1 {
            out.push(format!(
                "keys.prefix_template: must contain {{env}} once and {{type}} at most once, got {t:?}"
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

    /// Whether the template names the key type (else every key is a secret key).
    pub fn has_type(&self) -> bool {
        self.template.contains("{type}")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("API key is malformed")]
    Malformed,
    #[error("API key checksum does not match (mistyped key?)")]
    BadChecksum,
    #[error("this key format has no publishable keys (keys.prefix_template has no {{type}})")]
    NoPublishable,
}

/// A key that passed the offline checks. Borrows the key; never printed.
pub struct ParsedKey<'a> {
    pub key_type: KeyType,
    pub environment: Environment,
    key: &'a str,
    /// Length of the part shown in listings and logs.
    display_len: usize,
    /// Length of the part the store is looked up by (the whole key, or prefix and id).
    lookup_len: usize,
}

impl<'a> ParsedKey<'a> {
    pub fn as_str(&self) -> &'a str {
        self.key
    }

    /// `sk_live_Ab12` (or, with an embedded id, the prefix and the id): safe to log and show.
    pub fn display_prefix(&self) -> &'a str {
        &self.key[..self.display_len]
    }

    /// What the store record is found by: the key itself, or (embedded id) the prefix and the
    /// non-secret id.
    pub fn lookup_material(&self) -> &'a str {
        &self.key[..self.lookup_len]
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
    /// What the store record is found by (see [`ParsedKey::lookup_material`]).
    pub lookup_material: String,
    /// With an embedded id: the record's id (`key_<id>`).
    pub record_id: Option<String>,
}

impl fmt::Debug for NewKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewKey({}…)", self.display_prefix)
    }
}

/// Generates and parses keys for one set of [`Labels`] and one [`Shape`].
#[derive(Clone, Debug)]
pub struct KeyFormat {
    /// The rendered prefixes (four, or two without `{type}`).
    prefixes: Vec<(String, KeyType, Environment)>,
    shape: Shape,
}

impl KeyFormat {
    /// Records are found by the whole key (not by an id embedded in it): a key's lookup hash
    /// is the hash of exactly what was presented.
    pub fn looks_up_whole_key(&self) -> bool {
        matches!(self.shape, Shape::Checksummed { .. })
    }

    /// The default shape; the labels must have passed [`Labels::problems`].
    pub fn new(labels: &Labels) -> Result<Self, String> {
        KeyFormat::with_shape(labels, Shape::default())
    }

    pub fn with_shape(labels: &Labels, shape: Shape) -> Result<Self, String> {
        if let Some(p) = labels.problems().into_iter().next() {
            return Err(p);
        }
        if let Some(p) = shape.problem() {
            return Err(p);
        }
        let mut prefixes = Vec::with_capacity(4);
        let types: &[(KeyType, &String)] = if labels.has_type() {
            &[
                (KeyType::Secret, &labels.secret),
                (KeyType::Publishable, &labels.publishable),
            ]
        } else {
            &[(KeyType::Secret, &labels.secret)]
        };
        for (kt, tl) in types {
            for (env, el) in [
                (Environment::Live, &labels.live),
                (Environment::Test, &labels.test),
            ] {
                let p = labels
                    .template
                    .replace("{type}", tl.as_str())
                    .replace("{env}", el);
                prefixes.push((p, *kt, env));
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
        Ok(KeyFormat { prefixes, shape })
    }

    pub fn shape(&self) -> Shape {
        self.shape
    }

    pub fn supports(&self, key_type: KeyType) -> bool {
        self.prefixes.iter().any(|(_, t, _)| *t == key_type)
    }

    pub fn prefix(&self, key_type: KeyType, environment: Environment) -> &str {
        self.prefixes
            .iter()
            .find(|(_, t, e)| *t == key_type && *e == environment)
            .map_or("", |(p, ..)| p.as_str())
    }

    /// A new key from the OS CSPRNG.
    pub fn generate(
        &self,
        key_type: KeyType,
        environment: Environment,
    ) -> Result<NewKey, KeyFormatError> {
        if !self.supports(key_type) {
            return Err(KeyFormatError::NoPublishable);
        }
        let prefix = self.prefix(key_type, environment);
        let mut key = String::with_capacity(prefix.len() + 80);
        key.push_str(prefix);
        let (display_len, lookup_len, record_id) = match self.shape {
            Shape::Checksummed {
                alphabet,
                length,
                checksum,
            } => {
                key.push_str(&alphabet.random(length));
                if checksum {
                    let sum = checksum_chars(&key, alphabet);
                    key.push_str(&sum);
                }
                (prefix.len() + DISPLAY_CHARS.min(length), key.len(), None)
            }
            Shape::EmbeddedId {
                id_length,
                alphabet,
                secret_length,
            } => {
                let id = Alphabet::Hex.random(id_length);
                key.push_str(&id);
                let lookup = key.len();
                if key_type == KeyType::Secret {
                    key.push('_');
                    key.push_str(&alphabet.random(secret_length));
                }
                (lookup, lookup, Some(format!("key_{id}")))
            }
        };
        Ok(NewKey {
            display_prefix: key[..display_len].to_owned(),
            lookup_material: key[..lookup_len].to_owned(),
            key,
            key_type,
            environment,
            record_id,
        })
    }

    /// With an embedded id, the record id a parsed key belongs to (`key_<id>`).
    pub fn record_id_of(&self, parsed: &ParsedKey<'_>) -> Option<String> {
        match self.shape {
            Shape::EmbeddedId { .. } => {
                let prefix = self.prefix(parsed.key_type, parsed.environment);
                parsed
                    .lookup_material()
                    .get(prefix.len()..)
                    .map(|id| format!("key_{id}"))
            }
            Shape::Checksummed { .. } => None,
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
        let (display_len, lookup_len) = match self.shape {
            Shape::Checksummed {
                alphabet,
                length,
                checksum,
            } => {
                let sum_len = if checksum { alphabet.checksum_len() } else { 0 };
                if body.len() != length + sum_len || !body.iter().all(|b| alphabet.contains(*b)) {
                    return Err(KeyFormatError::Malformed);
                }
                if checksum {
                    let (head, sum) = key.split_at(key.len() - sum_len);
                    let mut digits = [0u8; 8];
                    if checksum_digits(head, alphabet, &mut digits) != sum.as_bytes() {
                        return Err(KeyFormatError::BadChecksum);
                    }
                }
                (prefix.len() + DISPLAY_CHARS.min(length), key.len())
            }
            Shape::EmbeddedId {
                id_length,
                alphabet,
                secret_length,
            } => {
                let (id, rest) = body.split_at(id_length.min(body.len()));
                if id.len() != id_length || !id.iter().all(|b| Alphabet::Hex.contains(*b)) {
                    return Err(KeyFormatError::Malformed);
                }
                let secret_ok = match (key_type, rest) {
                    (KeyType::Publishable, []) => true,
                    (KeyType::Secret, [b'_', secret @ ..]) => {
                        secret.len() == secret_length
                            && secret.iter().all(|b| alphabet.contains(*b))
                    }
                    _ => false,
                };
                if !secret_ok {
                    return Err(KeyFormatError::Malformed);
                }
                let lookup = prefix.len() + id_length;
                (lookup, lookup)
            }
        };
        Ok(ParsedKey {
            key_type: *key_type,
            environment: *environment,
            key,
            display_len,
            lookup_len,
        })
    }
}

/// CRC32 of `s` as digits of `alphabet` (most significant first, zero-padded).
fn checksum_chars(s: &str, alphabet: Alphabet) -> String {
    let mut digits = [0u8; 8];
    checksum_digits(s, alphabet, &mut digits)
        .iter()
        .map(|b| char::from(*b))
        .collect()
}

/// [`checksum_chars`] into `out`, without allocating (parsing runs on every request).
fn checksum_digits<'o>(s: &str, alphabet: Alphabet, out: &'o mut [u8; 8]) -> &'o [u8] {
    let chars = alphabet.chars();
    let base = chars.len() as u32;
    let mut n = crc32fast::hash(s.as_bytes());
    let digits = &mut out[..alphabet.checksum_len()];
    for slot in digits.iter_mut().rev() {
        *slot = chars[(n % base) as usize];
        n /= base;
    }
    digits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt() -> KeyFormat {
        KeyFormat::new(&Labels::default()).unwrap()
    }

    #[test]
    fn alphabet_tables_agree_with_their_characters() {
        for a in [
            Alphabet::Base62,
            Alphabet::Hex,
            Alphabet::Base58,
            Alphabet::LowerAlphanumeric,
        ] {
            for b in 0..=255u8 {
                assert_eq!(a.contains(b), a.chars().contains(&b), "{a:?} {b}");
            }
            let base = a.chars().len() as f64;
            assert_eq!(
                a.checksum_len(),
                (32.0 / base.log2()).ceil() as usize,
                "{a:?}"
            );
        }
    }

    #[test]
    fn generated_keys_parse_back() {
        let f = fmt();
        for (t, e, p) in [
            (KeyType::Secret, Environment::Live, "sk_live_"),
            (KeyType::Publishable, Environment::Test, "pk_test_"),
        ] {
            let k = f.generate(t, e).unwrap();
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
        let a = f.generate(KeyType::Secret, Environment::Live).unwrap();
        let b = f.generate(KeyType::Secret, Environment::Live).unwrap();
        assert_ne!(a.key, b.key);
    }

    #[test]
    fn every_single_character_typo_is_caught_offline() {
        let f = fmt();
        let k = f.generate(KeyType::Secret, Environment::Live).unwrap().key;
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
        let k = f.generate(KeyType::Secret, Environment::Live).unwrap().key;
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
        let k = f.generate(KeyType::Secret, Environment::Test).unwrap();
        assert!(k.key.starts_with("zp_test_sk_"));
        assert_eq!(f.parse(&k.key).unwrap().environment, Environment::Test);
        // A default-format key is not a key of this operator.
        let other = fmt()
            .generate(KeyType::Secret, Environment::Test)
            .unwrap()
            .key;
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

    #[test]
    fn embedded_id_shape() {
        let labels = Labels {
            template: "zp_{env}_{type}_".into(),
            ..Labels::default()
        };
        let shape = Shape::EmbeddedId {
            id_length: 16,
            alphabet: Alphabet::Hex,
            secret_length: 48,
        };
        let f = KeyFormat::with_shape(&labels, shape).unwrap();
        let sk = f.generate(KeyType::Secret, Environment::Live).unwrap();
        assert_eq!(sk.key.len(), "zp_live_sk_".len() + 16 + 1 + 48);
        assert!(sk.key.starts_with("zp_live_sk_"));
        let p = f.parse(&sk.key).unwrap();
        assert_eq!(p.lookup_material(), &sk.key[..27]);
        assert_eq!(p.display_prefix(), sk.display_prefix);
        assert_eq!(
            sk.record_id.as_deref(),
            Some(&*format!("key_{}", &sk.key[11..27]))
        );
        let pk = f.generate(KeyType::Publishable, Environment::Test).unwrap();
        assert_eq!(pk.key.len(), "zp_test_pk_".len() + 16);
        assert_eq!(f.parse(&pk.key).unwrap().lookup_material(), pk.key);
        // The seed's example key parses; a secret key without its secret does not.
        let doc = "zp_live_sk_a1b2c3d4e5f60718_0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(f.parse(doc).unwrap().key_type, KeyType::Secret);
        for bad in [
            "zp_live_sk_a1b2c3d4e5f60718",
            "zp_live_sk_a1b2c3d4e5f6071_0123456789abcdef0123456789abcdef0123456789abcdef",
            "zp_live_pk_a1b2c3d4e5f60718_00",
            "zp_live_sk_A1B2C3D4E5F60718_0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(
                f.parse(bad).unwrap_err(),
                KeyFormatError::Malformed,
                "{bad}"
            );
        }
    }

    #[test]
    fn alphabets_lengths_and_no_type_label() {
        let labels = Labels {
            template: "zfi_{env}_".into(),
            ..Labels::default()
        };
        let shape = Shape::Checksummed {
            alphabet: Alphabet::Hex,
            length: 40,
            checksum: true,
        };
        let f = KeyFormat::with_shape(&labels, shape).unwrap();
        let k = f.generate(KeyType::Secret, Environment::Test).unwrap().key;
        assert!(k.starts_with("zfi_test_") && k.len() == "zfi_test_".len() + 40 + 8);
        assert!(
            k["zfi_test_".len()..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit())
        );
        assert_eq!(f.parse(&k).unwrap().environment, Environment::Test);
        assert_eq!(
            f.generate(KeyType::Publishable, Environment::Test)
                .unwrap_err(),
            KeyFormatError::NoPublishable
        );
        // Too little entropy is refused.
        let weak = Shape::Checksummed {
            alphabet: Alphabet::Hex,
            length: 20,
            checksum: false,
        };
        assert!(KeyFormat::with_shape(&labels, weak).is_err());
        for a in [
            Alphabet::Base58,
            Alphabet::LowerAlphanumeric,
            Alphabet::Base62,
        ] {
            let shape = Shape::Checksummed {
                alphabet: a,
                length: 40,
                checksum: true,
            };
            let f = KeyFormat::with_shape(&Labels::default(), shape).unwrap();
            let k = f.generate(KeyType::Secret, Environment::Live).unwrap().key;
            assert!(f.parse(&k).is_ok(), "{a:?}");
        }
    }
}
