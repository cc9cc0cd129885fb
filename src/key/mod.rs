//! Keys as strings: the format (generate, parse, checksum, display prefix) and the hashes stored
//! in place of the key. Parsing runs before anything that costs a store round trip or an Argon2
//! run, so a malformed or mistyped key is rejected offline.

mod format;
mod hash;

pub use format::{
    Alphabet, Environment, KeyFormat, KeyFormatError, KeyType, Labels, NewKey, ParsedKey, Shape,
};
pub use hash::{Argon2Cost, KeyHasher, LookupHash, PhcError};

/// Defaults of the key format.
pub mod format_defaults {
    pub use super::format::RANDOM_LEN;
}

use rand::RngExt as _;
use rand::distr::Alphanumeric;
use rand::rngs::SysRng;

/// The operating system's CSPRNG. A failing OS generator is unrecoverable (nothing a client
/// controls reaches it): like `getrandom` callers everywhere, keygate panics rather than make a
/// weak key.
pub(crate) fn os_rng() -> rand::rand_core::UnwrapErr<SysRng> {
    rand::rand_core::UnwrapErr(SysRng)
}

/// `n` base62 characters from the OS CSPRNG (unbiased: `Alphanumeric` samples by rejection).
pub fn random_base62(n: usize) -> String {
    os_rng()
        .sample_iter(Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// A new key id (`key_…`): non-secret, stable, used in identity headers, the CLI and logs.
pub fn new_key_id() -> String {
    format!("key_{}", random_base62(20))
}
