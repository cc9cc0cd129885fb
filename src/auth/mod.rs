//! Who is calling: the credential is taken from the request's carriers ([`extract`]), checked
//! offline, then verified against the caches and the store ([`Verifier`]). The result, an
//! [`Identity`], is the only thing later stages accept as proof of authentication.

mod extract;
mod failure;
mod verifier;

pub use extract::{Credential, X_API_KEY, extract};
pub use failure::{AuthFailure, InvalidKey};
pub use verifier::{Identity, IdentityValues, Probe, Verifier, VerifierSettings};
