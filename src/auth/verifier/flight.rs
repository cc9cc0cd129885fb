//! Cache fills: one *flight* per key shared by every request that arrives while it runs — one
//! store lookup and at most one Argon2id run — and what an invalidation during it means.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::Notify;

use super::{Lookup, Verified, Verifier, identity_values};
use crate::key::{Environment, KeyType, LookupHash};
use crate::net::IpSet;
use crate::store::KeyStore;

#[derive(Debug, Clone)]
pub(super) enum FillError {
    Unknown,
    /// The store could not be asked. A recently verified key may be served from the cache.
    Unavailable,
    /// The record kept changing while we read it. Never served from the cache: the change
    /// may be the revocation of that very key.
    Changing,
}

/// One store lookup (and at most one Argon2id run) shared by every request for a hash that
/// arrives while it runs. It runs in its own task, so it always finishes and leaves the flight
/// map, however many of the waiting requests are cancelled.
pub(super) struct Flight {
    result: OnceLock<Result<Arc<Verified>, FillError>>,
    done: Notify,
    /// Set by an invalidation that arrived while this flight was reading the store.
    pub(super) invalidated: AtomicBool,
    /// The record's lookup hash (what invalidations name).
    pub(super) store: LookupHash,
}

/// Publishes a flight's result even if its task ends early (a panic), so no waiter hangs and
/// the flight leaves the map.
struct Publish {
    verifier: Arc<Verifier>,
    flight: Arc<Flight>,
    hash: LookupHash,
}

impl Drop for Publish {
    fn drop(&mut self) {
        if self.flight.result.get().is_none() {
            let mut flights = self
                .verifier
                .flights
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if flights
                .get(&self.hash)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                flights.remove(&self.hash);
            }
            let _ = self.flight.result.set(Err(FillError::Unavailable));
        }
        self.flight.done.notify_waiters();
    }
}

impl Verifier {
    /// Joins (or starts) the flight for this exact key.
    pub(super) async fn fill(
        self: &Arc<Self>,
        lookup: Lookup,
        key: &str,
        presented: Option<(Environment, KeyType)>,
    ) -> Result<Arc<Verified>, FillError> {
        let (flight, leader) = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            match flights.get(&lookup.full) {
                Some(f) => (Arc::clone(f), false),
                None => {
                    let f = Arc::new(Flight {
                        result: OnceLock::new(),
                        done: Notify::new(),
                        invalidated: AtomicBool::new(false),
                        store: lookup.store,
                    });
                    flights.insert(lookup.full, Arc::clone(&f));
                    (f, true)
                }
            }
        };
        if leader {
            let publish = Publish {
                verifier: Arc::clone(self),
                flight: Arc::clone(&flight),
                hash: lookup.full,
            };
            let key = key.to_owned();
            tokio::spawn(async move {
                let result = publish
                    .verifier
                    .run_flight(lookup, key, presented, &publish.flight)
                    .await;
                let _ = publish.flight.result.set(result);
                drop(publish); // wakes the waiters
            });
        }
        loop {
            let notified = flight.done.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(result) = flight.result.get() {
                return result.clone();
            }
            notified.await;
        }
    }

    async fn run_flight(
        &self,
        lookup: Lookup,
        key: String,
        presented: Option<(Environment, KeyType)>,
        flight: &Flight,
    ) -> Result<Arc<Verified>, FillError> {
        // Argon2id is deterministic for a given key and PHC string, and the key's own hash
        // pins the key: a PHC string already verified for this key need not be verified again
        // (refreshes, and refills after an edit or revocation elsewhere).
        let mut verified_phc = self.verified_phc.get(&lookup.full);
        // An invalidation during the lookup means the record may be stale: read it again.
        for _ in 0..3 {
            let asked = Instant::now();
            let found = self.store.find_by_hash(lookup.store).await;
            self.metrics.store_seconds.observe(asked.elapsed());
            let record = match found {
                Ok(Some(r)) => r,
                Ok(None) => return self.finish(lookup, flight, Err(FillError::Unknown)),
                Err(e) => {
                    self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "key store lookup failed");
                    return self.finish(lookup, flight, Err(FillError::Unavailable));
                }
            };
            if verified_phc.as_deref() != Some(record.phc.as_str()) {
                let verified = match self.argon2_verify(&key, &record.phc).await {
                    Ok(v) => v,
                    Err(e) => return self.finish(lookup, flight, Err(e)),
                };
                if !verified {
                    if lookup.store == lookup.full {
                        tracing::warn!(key.id = %record.id, "lookup hash matched but Argon2id did not; pepper changed?");
                    } else {
                        // An embedded id with a wrong secret: someone guessing.
                        tracing::debug!(key.id = %record.id, "wrong secret for a known key id");
                    }
                    return self.finish(lookup, flight, Err(FillError::Unknown));
                }
                let phc: Arc<str> = Arc::from(record.phc.as_str());
                self.verified_phc.insert(lookup.full, Arc::clone(&phc));
                verified_phc = Some(phc);
            }
            let Some(values) = identity_values(&record) else {
                tracing::error!(key.id = %record.id, "stored record has values that cannot be sent as headers");
                return self.finish(lookup, flight, Err(FillError::Unknown));
            };
            let entry = Arc::new(Verified {
                key_id: Arc::from(record.id.as_str()),
                owner: Arc::from(record.owner.as_str()),
                allow: IpSet::new(&record.ip_allowlist),
                presented: lookup.full,
                presented_env: presented.map(|(env, _)| env),
                publishable: record.key_type == KeyType::Publishable
                    || presented.is_some_and(|(_, t)| t == KeyType::Publishable),
                record,
                values,
                last_used: AtomicU64::new(0),
                flushed: AtomicU64::new(0),
                fetched_at: Instant::now(),
            });
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            if flight.invalidated.swap(false, Ordering::AcqRel) {
                continue;
            }
            self.positive.insert(lookup.store, Arc::clone(&entry));
            flights.remove(&lookup.full);
            return Ok(entry);
        }
        // The record kept changing under us; do not cache, let the next request retry.
        self.finish(lookup, flight, Err(FillError::Changing))
    }

    fn finish(
        &self,
        lookup: Lookup,
        flight: &Flight,
        result: Result<Arc<Verified>, FillError>,
    ) -> Result<Arc<Verified>, FillError> {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        // A key created while we looked it up must not be remembered as unknown.
        if matches!(result, Err(FillError::Unknown)) && !flight.invalidated.load(Ordering::Acquire)
        {
            self.negative.insert(lookup.full, ());
        }
        flights.remove(&lookup.full);
        result
    }

    /// Argon2id on the blocking pool, at most `argon2_concurrency` at a time.
    async fn argon2_verify(&self, key: &str, phc: &str) -> Result<bool, FillError> {
        let _permit = Arc::clone(&self.argon2)
            .acquire_owned()
            .await
            .map_err(|_| FillError::Unavailable)?;
        self.metrics.argon2_runs.fetch_add(1, Ordering::Relaxed);
        let hasher = self.hasher.clone();
        let (key, phc) = (key.to_owned(), phc.to_owned());
        tokio::task::spawn_blocking(move || hasher.verify(&key, &phc))
            .await
            .map_err(|_| FillError::Unavailable)
    }
}
