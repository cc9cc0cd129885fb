//! What the store keeps instead of the key: a lookup hash (SHA-256, or HMAC-SHA256 with a
//! server-side pepper) to find the record, and an Argon2id PHC string to verify it.

use std::fmt;
use std::str::FromStr;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use hmac::{Hmac, Mac};
use rand::Rng as _;
use sha2::{Digest, Sha256};

/// SHA-256 (or HMAC-SHA256) of a key: the store's index. Not secret on its own, but never logged.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LookupHash([u8; 32]);

impl LookupHash {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn to_hex(self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for LookupHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Eight hex digits identify an entry in debugging without making logs a hash dump.
        write!(
            f,
            "LookupHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl FromStr for LookupHash {
    type Err = &'static str;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err("lookup hash must be 64 hex digits");
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or("lookup hash must be hex")?;
            let lo = hex_val(pair[1]).ok_or("lookup hash must be hex")?;
            out[i] = (hi << 4) | lo;
        }
        Ok(LookupHash(out))
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl serde::Serialize for LookupHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for LookupHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("argon2: {0}")]
pub struct PhcError(String);

/// Computes lookup hashes and Argon2id PHC strings. Cheap to clone.
#[derive(Clone)]
pub struct KeyHasher {
    /// Pre-keyed HMAC state when a pepper is configured: cloning it skips the key schedule.
    peppered: Option<Hmac<Sha256>>,
    argon2: Argon2<'static>,
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHasher")
            .field("peppered", &self.peppered.is_some())
            .finish_non_exhaustive()
    }
}

/// OWASP's Argon2id recommendation: 19 MiB, 2 iterations, 1 lane.
pub const ARGON2_M_KIB: u32 = 19 * 1024;
pub const ARGON2_T: u32 = 2;
pub const ARGON2_P: u32 = 1;

/// The Argon2id cost of new PHC strings (verification always uses the cost recorded in the
/// string, so changing it never invalidates existing keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Cost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Cost {
    fn default() -> Self {
        Argon2Cost {
            memory_kib: ARGON2_M_KIB,
            iterations: ARGON2_T,
            parallelism: ARGON2_P,
        }
    }
}

impl Argon2Cost {
    /// Whether this is at least OWASP's recommendation.
    pub fn meets_owasp(&self) -> bool {
        self.memory_kib >= ARGON2_M_KIB && self.iterations >= ARGON2_T
    }

    fn params(&self) -> Result<Params, String> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| format!("Argon2id parameters: {e}"))
    }

    /// Why this cost cannot be used, if it cannot.
    pub fn problem(&self) -> Option<String> {
        self.params().err()
    }
}

impl KeyHasher {
    /// With OWASP's Argon2id cost.
    pub fn new(pepper: Option<&[u8]>) -> Self {
        KeyHasher::with_cost(pepper, Argon2Cost::default())
    }

    /// With the given Argon2id cost for new keys; an unusable cost (config validation refuses
    /// it) falls back to OWASP's.
    pub fn with_cost(pepper: Option<&[u8]>, cost: Argon2Cost) -> Self {
        let peppered = pepper.map(|p| {
            // HMAC accepts keys of any length; the error type exists only for fixed-size MACs.
            <Hmac<Sha256> as Mac>::new_from_slice(p)
                .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
        });
        let params = cost
            .params()
            .or_else(|_| Argon2Cost::default().params())
            .unwrap_or_else(|_| unreachable!("constant Argon2 parameters are valid"));
        KeyHasher {
            peppered,
            argon2: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
        }
    }

    pub fn lookup_hash(&self, key: &str) -> LookupHash {
        let digest: [u8; 32] = match &self.peppered {
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(key.as_bytes());
                mac.finalize().into_bytes().into()
            }
            None => Sha256::digest(key.as_bytes()).into(),
        };
        LookupHash(digest)
    }

    /// A new Argon2id PHC string for `key`, with a random salt. Slow by design (tens of ms).
    pub fn phc(&self, key: &str) -> Result<String, PhcError> {
        let mut bytes = [0u8; 16];
        super::os_rng().fill_bytes(&mut bytes);
        let salt = SaltString::encode_b64(&bytes).map_err(|e| PhcError(e.to_string()))?;
        self.argon2
            .hash_password(key.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| PhcError(e.to_string()))
    }

    /// Checks `key` against a PHC string with the parameters recorded in it. The final
    /// comparison inside `argon2` is constant-time. Slow by design: run off the async runtime.
    pub fn verify(&self, key: &str, phc: &str) -> bool {
        match PasswordHash::new(phc) {
            Ok(parsed) => self.argon2.verify_password(key.as_bytes(), &parsed).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_lookup_hash_matches_known_vector() {
        let h = KeyHasher::new(None).lookup_hash("abc");
        assert_eq!(
            h.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(h.to_hex().parse::<LookupHash>().unwrap(), h);
    }

    #[test]
    fn pepper_changes_the_lookup_hash() {
        let plain = KeyHasher::new(None).lookup_hash("sk_live_x");
        let a = KeyHasher::new(Some(b"pepper-a")).lookup_hash("sk_live_x");
        let b = KeyHasher::new(Some(b"pepper-b")).lookup_hash("sk_live_x");
        assert_ne!(plain, a);
        assert_ne!(a, b);
        assert_eq!(
            a,
            KeyHasher::new(Some(b"pepper-a")).lookup_hash("sk_live_x")
        );
    }

    #[test]
    fn argon2id_round_trip() {
        let h = KeyHasher::new(None);
        let phc = h.phc("sk_live_secret").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(h.verify("sk_live_secret", &phc));
        assert!(!h.verify("sk_live_secreT", &phc));
        assert!(!h.verify("sk_live_secret", "not a phc string"));
    }

    #[test]
    fn bad_hex_is_rejected() {
        assert!("zz".parse::<LookupHash>().is_err());
        assert!("g".repeat(64).parse::<LookupHash>().is_err());
    }
}
