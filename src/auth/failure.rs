//! Why a request's credential did not authenticate it. None of these messages echoes the key.

use std::time::Duration;

use crate::key::KeyFormatError;

/// The authentication stage's rejection (401, or 503 when the store cannot be asked).
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthFailure {
    /// No credential in any accepted carrier.
    #[error("no API key: send it as `Authorization: Bearer <key>` or `X-Api-Key: <key>`")]
    Missing,
    #[error("{0}")]
    Invalid(InvalidKey),
    /// Revoked, expired, or rotated past its grace period.
    #[error("API key has expired or been revoked")]
    Expired,
    /// The store cannot be reached and the key is not in the cache.
    #[error("cannot verify API keys right now; retry shortly")]
    Unavailable { retry_after: Duration },
}

/// The precise reason a credential is `invalid_key`. Safe to show: none echoes the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKey {
    #[error("{0}")]
    Format(KeyFormatError),
    #[error("API key is not recognised")]
    Unknown,
    #[error("API key sent more than once or in conflicting places")]
    Ambiguous,
    #[error("API key is too long")]
    TooLong,
    #[error("API key contains characters that are not allowed")]
    BadCharacters,
    #[error("Authorization header must use the Bearer scheme")]
    NotBearer,
    #[error("Authorization: Basic must carry the API key as the username, with an empty password")]
    BadBasic,
    #[error("this endpoint does not accept the API key in that header")]
    WrongCarrier,
}

impl From<InvalidKey> for AuthFailure {
    fn from(e: InvalidKey) -> Self {
        AuthFailure::Invalid(e)
    }
}

impl From<KeyFormatError> for AuthFailure {
    fn from(e: KeyFormatError) -> Self {
        AuthFailure::Invalid(InvalidKey::Format(e))
    }
}
