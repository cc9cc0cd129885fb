//! Admin authentication and limits: `Authorization: Bearer <admin token>`, compared in constant
//! time against every configured token (by SHA-256 digest, so neither content nor length shows
//! in the timing); the token's name is the actor. Operations are limited per token through the
//! proxy's limiter.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Admin;
use super::routes::OpClass;
use crate::policy::ratelimit::{Counter, Decision, Limit, Subject};

impl Admin {
    /// The name of the token the request carries. Every token is compared, by SHA-256 digest
    /// so that neither content nor length shows in the timing.
    pub(super) fn actor<B>(&self, req: &Request<B>) -> Option<&str> {
        let value = req.headers().get(AUTHORIZATION)?.as_bytes();
        let (scheme, presented) = value.split_at_checked(7)?;
        if !scheme.eq_ignore_ascii_case(b"Bearer ") {
            return None;
        }
        let presented = Sha256::digest(presented);
        let mut found = None;
        for t in &self.tokens {
            if bool::from(Sha256::digest(t.token.expose()).ct_eq(&presented)) {
                found = Some(t.name.as_str());
            }
        }
        found
    }

    pub(super) async fn check_limit(&self, actor: &str, class: OpClass) -> Decision {
        let (name, per_minute) = match class {
            OpClass::Read => ("admin_read", self.config.list_per_minute),
            OpClass::Create => ("admin_create", self.config.create_per_minute),
            OpClass::Rotate => ("admin_rotate", self.config.rotate_per_minute),
            OpClass::Write => ("admin_write", self.config.write_per_minute),
        };
        let counter = Counter {
            subject: Subject::Owner(Arc::from(format!("admin:{actor}"))),
            name: Arc::from(name),
        };
        let limit = Limit::new(per_minute, Duration::from_secs(60));
        let mut d = self
            .policy
            .load()
            .limiter()
            .acquire(&[(counter, limit)])
            .await;
        d.pop().unwrap_or(Decision {
            allowed: true,
            limit: per_minute,
            remaining: per_minute,
            reset: Duration::ZERO,
            retry_after: Duration::ZERO,
            window: limit.window,
        })
    }
}
