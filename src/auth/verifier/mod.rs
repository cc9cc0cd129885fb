//! The verifier: parse (offline) → positive cache → negative cache → store lookup by hash →
//! Argon2id, then the check that needs only the record: revoked or expired.
//!
//! Concurrent first requests for one key share a single *flight*: one store lookup and one
//! Argon2id run, however many requests wait. Invalidations (revocation, rotation, edits) and
//! flights meet under one mutex, so a fill that raced a revocation is redone rather than
//! caching the record it read before the change. Invalidations are applied synchronously by the
//! store (see `Store::on_change`): when a revoke or rotate returns, this process already refuses
//! the old key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderValue;
use tokio::sync::Semaphore;

use super::{AuthFailure, Credential, InvalidKey};
use crate::key::{Environment, KeyFormat, KeyHasher, KeyType, LookupHash};
use crate::net::IpSet;
use crate::store::{Invalidation, KeyRecord, KeyState, KeyStore, Store};
use crate::telemetry::Metrics;
use crate::time::Timestamp;
use flight::{FillError, Flight};

mod flight;
mod front;

/// The caches' hash: seeded foldhash. Lookup hashes are SHA-256 outputs, so a fast hash loses
/// nothing, and SipHash was a visible share of the request path.
type Hasher = foldhash::fast::RandomState;
type Cache<K, V> = moka::sync::Cache<K, V, Hasher>;

/// Identity header values, built once per cache fill so requests only clone `Bytes` handles.
#[derive(Debug, Clone)]
pub struct IdentityValues {
    pub key_id: HeaderValue,
    pub owner: HeaderValue,
    pub environment: HeaderValue,
    pub key_type: HeaderValue,
    pub scopes: HeaderValue,
    /// The lines these values make in an upstream request head, written once (see
    /// [`IdentityValues::append_lines`]).
    lines: std::sync::OnceLock<(u64, Box<[u8]>)>,
}

impl IdentityValues {
    /// Appends these values' header lines as one header plan writes them (`plan`: that plan's
    /// id): `write` runs once per cache fill and its lines are copied whole after, so a request
    /// makes one copy instead of five. A plan other than the first to ask gets them written
    /// afresh.
    pub fn append_lines(&self, plan: u64, out: &mut Vec<u8>, write: impl Fn(&Self, &mut Vec<u8>)) {
        let (first, lines) = self.lines.get_or_init(|| {
            let mut lines = Vec::new();
            write(self, &mut lines);
            (plan, lines.into_boxed_slice())
        });
        if *first == plan {
            out.extend_from_slice(lines);
        } else {
            write(self, out);
        }
    }
}

/// A cache entry: a record whose key passed Argon2id verification.
#[derive(Debug)]
struct Verified {
    record: Arc<KeyRecord>,
    values: IdentityValues,
    /// Unix seconds of the last request that used this entry, for `last_used_at`.
    last_used: AtomicU64,
    /// Unix seconds of the last `last_used` value written to the store.
    flushed: AtomicU64,
    /// When the record was read from the store; after `cache_ttl` it is refreshed.
    fetched_at: Instant,
    /// Built once per fill so requests neither allocate nor scan.
    key_id: Arc<str>,
    owner: Arc<str>,
    allow: IpSet,
    /// The hash of the exact key this entry verified. With an embedded-id shape the cache is
    /// keyed by the id, so a different secret for the same id is not this entry.
    presented: LookupHash,
    /// The environment the key itself names (`sk_live_…`), cross-checked against the record by
    /// the policy; `None` for a legacy key.
    presented_env: Option<Environment>,
    /// The key is publishable by its record or by its own prefix.
    publishable: bool,
}

/// The two hashes of a presented key: of the key itself (the cache's check, the negative
/// cache), and of what its record is found by (the same, or the prefix and embedded id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lookup {
    full: LookupHash,
    store: LookupHash,
}

/// What [`Verifier::probe`] found.
pub enum Probe<'k> {
    /// Answered from memory: the identity, or why not.
    Answered(Result<Identity, AuthFailure>),
    /// The store must be asked: [`Verifier::fill_probe`].
    Fill(Pending<'k>),
}

/// A credential on its way to the store: its hashes, and the stale entry that may stand in
/// while the store is down.
pub struct Pending<'k> {
    key: &'k str,
    lookup: Lookup,
    presented: Option<(Environment, KeyType)>,
    stale: Option<Arc<Verified>>,
}

/// Proof that a request carries a genuine key that is neither revoked nor expired.
#[derive(Debug, Clone)]
pub struct Identity {
    entry: Arc<Verified>,
}

impl Identity {
    pub fn record(&self) -> &KeyRecord {
        &self.entry.record
    }

    pub fn values(&self) -> &IdentityValues {
        &self.entry.values
    }

    pub fn key_id(&self) -> &Arc<str> {
        &self.entry.key_id
    }

    pub fn owner(&self) -> &Arc<str> {
        &self.entry.owner
    }

    /// The environment the presented key names, when it has keygate's format.
    pub fn presented_environment(&self) -> Option<Environment> {
        self.entry.presented_env
    }

    /// Publishable by its record, or by the prefix it was presented with.
    pub fn is_publishable(&self) -> bool {
        self.entry.publishable
    }

    /// Whether the key's IP allowlist admits `ip` (an empty list admits everyone).
    pub fn ip_allowed(&self, ip: std::net::IpAddr) -> bool {
        self.entry.record.ip_allowlist.is_empty() || self.entry.allow.contains(ip)
    }
}

#[derive(Clone, Debug)]
pub struct VerifierSettings {
    /// How long a verified record is used before it is read from the store again.
    pub cache_ttl: Duration,
    /// While the store is unreachable, records read this recently keep working.
    pub stale_limit: Duration,
    pub cache_max_entries: u64,
    pub negative_cache_ttl: Duration,
    pub negative_cache_max_entries: u64,
    pub argon2_concurrency: usize,
    /// `Retry-After` for `auth_unavailable`.
    pub retry_after: Duration,
    /// Keys that do not parse are looked up anyway (imported legacy keys).
    pub accept_legacy: bool,
}

pub struct Verifier {
    format: KeyFormat,
    hasher: KeyHasher,
    store: Store,
    settings: VerifierSettings,
    positive: Cache<LookupHash, Arc<Verified>>,
    negative: Cache<LookupHash, ()>,
    /// PHC strings that passed Argon2id for a lookup hash; outlives positive entries.
    verified_phc: Cache<LookupHash, Arc<str>>,
    /// Fills in progress. Invalidations take this lock too; see the module docs.
    flights: Mutex<HashMap<LookupHash, Arc<Flight>>>,
    /// Each thread's last verified keys, in front of `positive`. Shared with `positive`'s
    /// eviction listener: nothing the shared cache let go of is served from a front.
    front: Arc<front::Front>,
    /// Usage not yet written of entries the shared cache let go of (evicted under size
    /// pressure, expired, replaced or invalidated), by key id: written by the next flush.
    let_go: Arc<Mutex<HashMap<Arc<str>, u64>>>,
    argon2: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl Verifier {
    pub fn new(
        format: KeyFormat,
        hasher: KeyHasher,
        store: Store,
        settings: VerifierSettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let front = Arc::new(front::Front::new());
        let let_go = Arc::<Mutex<HashMap<Arc<str>, u64>>>::default();
        let positive = moka::sync::Cache::builder()
            .max_capacity(settings.cache_max_entries)
            // Entries stay past `cache_ttl` so they can be served while the store is down.
            .time_to_live(settings.stale_limit.max(settings.cache_ttl))
            .eviction_listener({
                let (front, let_go) = (Arc::clone(&front), Arc::clone(&let_go));
                let ttl = settings.cache_ttl;
                move |_, entry: Arc<Verified>, _| let_go_of(&front, &let_go, &entry, ttl)
            })
            .build_with_hasher(Hasher::default());
        let negative = moka::sync::Cache::builder()
            .max_capacity(settings.negative_cache_max_entries)
            .time_to_live(settings.negative_cache_ttl)
            .build_with_hasher(Hasher::default());
        let verified_phc = moka::sync::Cache::builder()
            .max_capacity(settings.cache_max_entries)
            .time_to_live(settings.stale_limit.max(settings.cache_ttl))
            .build_with_hasher(Hasher::default());
        let verifier = Arc::new(Verifier {
            format,
            verified_phc,
            hasher,
            store,
            argon2: Arc::new(Semaphore::new(settings.argon2_concurrency)),
            settings,
            positive,
            negative,
            flights: Mutex::new(HashMap::new()),
            front,
            let_go,
            metrics,
        });
        // Every change — made through this process or heard from other writers — is applied
        // before the store call that carries it returns: no window where a revoked key passes.
        let weak = Arc::downgrade(&verifier);
        verifier.store.on_change(Arc::new(move |inv| {
            if let Some(v) = weak.upgrade() {
                v.invalidate(inv);
            }
        }));
        verifier
    }

    /// The id of the cached record `key` stands for (e.g. an expired or revoked key), for the
    /// audit trail of a rejected request.
    pub fn cached_key_id(&self, key: &str) -> Option<Arc<str>> {
        let lookup = self.lookup_of(key)?;
        self.positive
            .get(&lookup.store)
            .filter(|e| e.presented == lookup.full)
            .map(|e| Arc::clone(&e.key_id))
    }

    /// The non-secret display prefix of `key` (`sk_live_Ab12`) if it has our format.
    pub fn display_prefix<'k>(&self, key: &'k str) -> Option<&'k str> {
        self.format.parse(key).ok().map(|p| p.display_prefix())
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The hashes of a key in keygate's format (or a legacy one, when accepted).
    fn lookup_of(&self, key: &str) -> Option<Lookup> {
        let material = match self.format.parse(key) {
            Ok(p) => p.lookup_material(),
            Err(_) if self.settings.accept_legacy && is_legacy_shaped(key) => key,
            Err(_) => return None,
        };
        let full = self.hasher.lookup_hash(key);
        let store = if material.len() == key.len() {
            full
        } else {
            self.hasher.lookup_hash(material)
        };
        Some(Lookup { full, store })
    }

    /// Verifies a credential and applies the record-only checks.
    pub async fn verify(self: &Arc<Self>, cred: &Credential<'_>) -> Result<Identity, AuthFailure> {
        match self.probe(cred, Instant::now(), Timestamp::now()) {
            Probe::Answered(result) => result,
            Probe::Fill(fill) => self.fill_probe(fill).await,
        }
    }

    /// What memory alone says of a credential: a fresh cached entry, a malformed key or a
    /// negative-cache hit is answered now, without a future; anything else needs the store
    /// ([`Verifier::fill_probe`]). The common request is answered here. `now` and `wall`: the
    /// request's clock readings, for the cache's freshness and the key's expiry.
    pub fn probe<'k>(&self, cred: &'k Credential<'_>, now: Instant, wall: Timestamp) -> Probe<'k> {
        // Found by the whole key (the default shape), a cached key is known by its hash
        // alone: it parsed when it was verified, and parsing is deterministic. The cache is
        // asked before the parse (the common request), and the hash is not computed twice.
        let whole = self
            .format
            .looks_up_whole_key()
            .then(|| self.hasher.lookup_hash(&cred.key));
        // The shared cache's answer for the whole key, once asked (not asked twice on a miss).
        let mut asked = None;
        if let Some(full) = whole {
            // This thread's front first, then the shared cache (see `front`).
            if let Some(entry) = self.front.get(&full)
                && self.fresh(&entry, now)
            {
                self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Probe::Answered(self.admit_entry(entry, wall));
            }
            let generation = self.front.generation();
            let cached = self.positive.get(&full).filter(|e| e.presented == full);
            if let Some(entry) = &cached
                && self.fresh(entry, now)
            {
                self.front.put(full, entry, generation);
                self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Probe::Answered(self.admit_entry(Arc::clone(entry), wall));
            }
            asked = Some(cached);
        }
        let (key, material, presented) = match self.format.parse(&cred.key) {
            Ok(parsed) => (
                parsed.as_str(),
                parsed.lookup_material(),
                Some((parsed.environment, parsed.key_type)),
            ),
            Err(_) if self.settings.accept_legacy && is_legacy_shaped(&cred.key) => {
                (&*cred.key, &*cred.key, None)
            }
            Err(e) => return Probe::Answered(Err(e.into())),
        };
        // `key` is what was presented, parsed: its hash is the one computed above, if any.
        let full = whole.unwrap_or_else(|| self.hasher.lookup_hash(key));
        // The default shape looks records up by the key itself: one hash.
        let store = if material.len() == key.len() {
            full
        } else {
            self.hasher.lookup_hash(material)
        };
        let lookup = Lookup { full, store };
        // Looked up by the whole key, `store` is `full`: the answer above stands.
        let cached = match asked {
            Some(cached) if store == full => cached,
            _ => self.positive.get(&store).filter(|e| e.presented == full),
        };
        let stale = match cached {
            Some(entry) if self.fresh(&entry, now) => {
                self.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Probe::Answered(self.admit_entry(entry, wall));
            }
            Some(stale) => Some(stale),
            None => {
                if self.negative.contains_key(&full) {
                    self.metrics
                        .negative_cache_hits
                        .fetch_add(1, Ordering::Relaxed);
                    return Probe::Answered(Err(InvalidKey::Unknown.into()));
                }
                self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        Probe::Fill(Pending {
            key,
            lookup,
            presented,
            stale,
        })
    }

    /// The store's answer for a credential memory could not answer ([`Verifier::probe`]).
    pub async fn fill_probe(
        self: &Arc<Self>,
        pending: Pending<'_>,
    ) -> Result<Identity, AuthFailure> {
        let Pending {
            key,
            lookup,
            presented,
            stale,
        } = pending;
        let entry = match self.fill(lookup, key, presented).await {
            Ok(fresh) => fresh,
            // The store is down: a recently verified key keeps working up to the stale limit.
            // Only the entry we read, and only if no invalidation removed it meanwhile.
            Err(FillError::Unavailable)
                if stale.as_ref().is_some_and(|stale| {
                    stale.fetched_at.elapsed() < self.settings.stale_limit
                        && self
                            .positive
                            .get(&lookup.store)
                            .is_some_and(|e| Arc::ptr_eq(&e, stale))
                }) =>
            {
                self.metrics.stale_served.fetch_add(1, Ordering::Relaxed);
                match stale {
                    Some(stale) => stale,
                    None => return Err(self.fill_error(FillError::Unavailable)),
                }
            }
            Err(e) => return Err(self.fill_error(e)),
        };
        self.admit_entry(entry, Timestamp::now())
    }

    /// Fresh, and no change can have been missed (the invalidation feed is live).
    /// `now`: the request's clock reading, taken before the probe began.
    fn fresh(&self, entry: &Verified, now: Instant) -> bool {
        now.saturating_duration_since(entry.fetched_at) < self.settings.cache_ttl
            && self.store.invalidations_live()
    }

    /// The record-only checks on a verified entry at `now` (the request's wall-clock reading):
    /// revoked or expired keys fail.
    fn admit_entry(&self, entry: Arc<Verified>, now: Timestamp) -> Result<Identity, AuthFailure> {
        match entry.record.state(now) {
            KeyState::Active => {}
            KeyState::Expired | KeyState::Revoked => return Err(AuthFailure::Expired),
        }
        // A shared cache line: write it only when the second changed.
        if entry.last_used.load(Ordering::Relaxed) != now.unix() {
            entry.last_used.store(now.unix(), Ordering::Relaxed);
        }
        Ok(Identity { entry })
    }

    fn fill_error(&self, e: FillError) -> AuthFailure {
        match e {
            FillError::Unknown => AuthFailure::Invalid(InvalidKey::Unknown),
            FillError::Unavailable | FillError::Changing => AuthFailure::Unavailable {
                retry_after: self.settings.retry_after,
            },
        }
    }

    /// Drops whatever is cached for the record `hash` names, and marks flights for it as stale.
    pub fn invalidate(&self, inv: Invalidation) {
        let flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        match inv {
            Invalidation::Key(hash) => {
                for f in flights.values().filter(|f| f.store == hash) {
                    f.invalidated.store(true, Ordering::Release);
                }
                self.positive.invalidate(&hash);
                // Default shape: the key's own hash, which the negative cache holds.
                self.negative.invalidate(&hash);
            }
            Invalidation::All => {
                for f in flights.values() {
                    f.invalidated.store(true, Ordering::Release);
                }
                self.positive.invalidate_all();
                self.negative.invalidate_all();
            }
        }
        // After the shared cache dropped the record: see `front` for why not before.
        self.front.invalidate();
        self.metrics.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Usage seen since the last call, as `(key id, last used)`; marks it as taken. Entries
    /// the shared cache let go of since count too.
    pub fn take_usage(&self) -> Vec<(String, Timestamp)> {
        // Evictions due now happen first, so their usage is among what is taken below.
        self.positive.run_pending_tasks();
        let mut usage = std::mem::take(&mut *self.let_go.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, entry) in self.positive.iter() {
            claim_usage(&entry, &mut usage);
        }
        usage
            .into_iter()
            .map(|(id, used)| (id.to_string(), Timestamp::from_unix(used)))
            .collect()
    }

    /// Writes `last_used_at` for keys used since the last flush.
    pub async fn flush_usage(&self) {
        let usage = self.take_usage();
        if usage.is_empty() {
            return;
        }
        let n = usage.len();
        if let Err(e) = self.store.record_usage(usage).await {
            tracing::warn!(error = %e, keys = n, "could not record key usage");
        }
    }

    /// Store lookups in progress (each shared by all requests for one key).
    pub fn flights_in_progress(&self) -> usize {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Unknown keys remembered (bounded by `negative_cache_max_entries`).
    pub fn negative_entries(&self) -> u64 {
        self.negative.run_pending_tasks();
        self.negative.entry_count()
    }

    pub fn cached_entries(&self) -> u64 {
        self.positive.entry_count()
    }
}

/// The shared cache let go of `entry`. A thread's front may still hold it: its usage there
/// would be recorded on an entry no flush sees (the flush walks the shared cache), so every
/// front forgets what it holds (after the removal: see `front`) — unless the entry is past
/// `cache_ttl`, which no front serves (refreshes and expiries, the common removals, leave the
/// fronts alone). The usage not yet written is kept for the next flush.
fn let_go_of(
    front: &front::Front,
    let_go: &Mutex<HashMap<Arc<str>, u64>>,
    entry: &Verified,
    cache_ttl: Duration,
) {
    if entry.fetched_at.elapsed() < cache_ttl {
        front.invalidate();
    }
    claim_usage(entry, &mut let_go.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Moves `entry`'s usage not yet taken into `usage` (by key id, the latest kept), marking it
/// as taken.
fn claim_usage(entry: &Verified, usage: &mut HashMap<Arc<str>, u64>) {
    let used = entry.last_used.load(Ordering::Relaxed);
    if used > entry.flushed.swap(used, Ordering::Relaxed) {
        let seen = usage.entry(Arc::clone(&entry.key_id)).or_default();
        *seen = (*seen).max(used);
    }
}

/// What an imported legacy key may look like: 16 or more printable ASCII characters (the
/// extractor already bounded the length and refused control bytes).
fn is_legacy_shaped(key: &str) -> bool {
    key.len() >= 16 && key.bytes().all(|b| b.is_ascii_graphic())
}

fn identity_values(rec: &KeyRecord) -> Option<IdentityValues> {
    Some(IdentityValues {
        key_id: HeaderValue::from_str(&rec.id).ok()?,
        owner: HeaderValue::from_str(&rec.owner).ok()?,
        environment: HeaderValue::from_static(rec.environment.as_str()),
        key_type: HeaderValue::from_static(rec.key_type.as_str()),
        scopes: HeaderValue::from_str(&rec.scopes.join(",")).ok()?,
        lines: std::sync::OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Identity {
        /// An identity for `record` as if its key had just been verified (unit tests of what is
        /// done with an identity).
        pub(crate) fn for_tests(record: KeyRecord) -> Option<Identity> {
            let values = identity_values(&record)?;
            Some(Identity {
                entry: Arc::new(Verified {
                    key_id: Arc::from(record.id.as_str()),
                    owner: Arc::from(record.owner.as_str()),
                    allow: IpSet::new(&record.ip_allowlist),
                    presented: record.lookup_hash,
                    presented_env: None,
                    publishable: false,
                    record: Arc::new(record),
                    values,
                    last_used: AtomicU64::new(0),
                    flushed: AtomicU64::new(0),
                    fetched_at: Instant::now(),
                }),
            })
        }
    }
}
