//! The audit trail: who changed which key when, who failed to authenticate, and how keys are
//! used.
//!
//! Events go through a bounded queue to one writer task, which chains them (see [`event`]),
//! logs each as a JSON line (target `keygate::audit`) and appends them to the sink: the Redis
//! stream with the Redis store, a rotated JSON-lines file with the file store. Recording never
//! waits: when the queue is full the event is dropped and counted, so the trail can never slow
//! or fail a proxied request.
//!
//! Per-request facts are aggregated in memory and written once per [`AuditConfig::flush_interval`]:
//! usage per key, route, method and minute (also added to the usage counters behind
//! `GET /v1/keys/{id}/usage`), and failures per client, code and key per minute, so a flood of
//! bad keys costs a bounded number of events rather than one per request.

mod check;
pub mod event;
mod file;
mod redis;
mod sink;
mod usage;

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use tokio::sync::{mpsc, oneshot};

pub use check::verify_trail;
pub use event::{Action, Event, Verification, verify};
pub use file::FileSink;
pub use sink::Sink;
pub use usage::{Bucket, Usage};
use usage::{UsageBook, class_counts, minute_of, status_class};

use crate::config::AuditConfig;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;
use crate::time::Timestamp;

const SHARDS: usize = 16;
/// A seeded fast hash (foldhash) for the per-request aggregates.
type Hasher = foldhash::fast::RandomState;
/// Distinct failure aggregates kept per flush; beyond this they are counted together.
const MAX_FAILURE_ROWS: usize = 10_000;
/// Distinct usage aggregates kept per flush; beyond this, requests are counted per key only
/// (route and method `*`).
const MAX_USAGE_ROWS: usize = 50_000;
/// Client addresses remembered per usage aggregate.
const MAX_IPS: usize = 4;
/// Distinct response statuses counted exactly per usage aggregate.
const MAX_STATUSES: usize = 16;
const DAY: u64 = 24 * 3600;

static OTHER_METHOD: std::sync::LazyLock<Method> =
    std::sync::LazyLock::new(|| Method::from_bytes(b"OTHER").unwrap_or(Method::GET));
static ANY_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("*"));

/// Which events `GET /v1/audit` returns.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub key_id: Option<String>,
    pub owner: Option<String>,
    pub action: Option<Action>,
    pub since: Option<Timestamp>,
    pub until: Option<Timestamp>,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        self.key_id
            .as_ref()
            .is_none_or(|k| e.key_id.as_ref() == Some(k))
            && self
                .owner
                .as_ref()
                .is_none_or(|o| e.owner.as_ref() == Some(o))
            && self.action.is_none_or(|a| e.action == a)
            && self.since.is_none_or(|t| e.time >= t)
            && self.until.is_none_or(|t| e.time <= t)
    }
}

enum Msg {
    Event(Box<Event>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone)]
struct UsageKey {
    key_id: Arc<str>,
    minute: u64,
    route: Arc<str>,
    method: Method,
}

/// A usage row's identity as borrowed parts: the common request finds its row by them, with no
/// clone of the key id, route and method (the row's own key holds those).
type UsageParts<'a> = (&'a str, u64, &'a str, &'a Method);

/// What a usage row is looked up by: its own key, or borrowed parts.
trait UsageLookup {
    fn parts(&self) -> UsageParts<'_>;
}

impl UsageLookup for UsageKey {
    fn parts(&self) -> UsageParts<'_> {
        (&self.key_id, self.minute, &self.route, &self.method)
    }
}

impl UsageLookup for UsageParts<'_> {
    fn parts(&self) -> UsageParts<'_> {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn UsageLookup + 'a> for UsageKey {
    fn borrow(&self) -> &(dyn UsageLookup + 'a) {
        self
    }
}

// The key and its borrowed form hash and compare alike (`Borrow`'s contract): both by parts.
impl std::hash::Hash for dyn UsageLookup + '_ {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        hash_parts(self.parts(), h);
    }
}

/// The parts' bytes, each string after its length (so no two keys run into one another), the
/// method as its name.
fn hash_parts<H: std::hash::Hasher>((key_id, minute, route, method): UsageParts<'_>, h: &mut H) {
    h.write_usize(key_id.len());
    h.write(key_id.as_bytes());
    h.write_u64(minute);
    h.write_usize(route.len());
    h.write(route.as_bytes());
    h.write(method.as_str().as_bytes());
}

impl PartialEq for dyn UsageLookup + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn UsageLookup + '_ {}

impl std::hash::Hash for UsageKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        hash_parts(self.parts(), h);
    }
}

impl PartialEq for UsageKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for UsageKey {}

#[derive(Default)]
struct UsageCount {
    by_class: [u64; 5],
    /// Requests by exact status (ZendFi's audit: "response status"), a few per row.
    statuses: Vec<(u16, u64)>,
    ips: Vec<IpAddr>,
}

impl UsageCount {
    fn add(&mut self, status: u16, ip: IpAddr) {
        self.by_class[status_class(status)] += 1;
        match self.statuses.iter().position(|(s, _)| *s == status) {
            Some(i) => self.statuses[i].1 += 1,
            None if self.statuses.len() < MAX_STATUSES => self.statuses.push((status, 1)),
            // Beyond a handful of distinct statuses per row, the class counts still hold them.
            None => {}
        }
        if self.ips.len() < MAX_IPS && !self.ips.contains(&ip) {
            self.ips.push(ip);
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct FailureKey {
    minute: u64,
    ip: IpAddr,
    code: &'static str,
    key: Option<Box<str>>,
}

#[derive(Default)]
struct Failures {
    rows: HashMap<FailureKey, u64>,
    overflow: u64,
}

/// The audit trail of one process.
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    sink: Sink,
    usage: [Mutex<HashMap<UsageKey, UsageCount, Hasher>>; SHARDS],
    hasher: Hasher,
    failures: Mutex<Failures>,
    book: UsageBook,
    metrics: Arc<Metrics>,
    last_drop_warning: AtomicU64,
}

impl Audit {
    /// Starts the writer task. Must run inside a tokio runtime.
    pub fn start(cfg: &AuditConfig, store: &Store, metrics: Arc<Metrics>) -> Arc<Audit> {
        let sink = Sink::for_config(cfg, store);
        let (tx, rx) = mpsc::channel(cfg.queue);
        tokio::spawn(write_loop(rx, sink.clone(), Arc::clone(&metrics)));
        let book = match store {
            Store::Redis(r) => UsageBook::Redis(r.clone()),
            Store::File(_) => UsageBook::Memory(Mutex::default()),
        };
        Arc::new(Audit {
            tx,
            sink,
            usage: std::array::from_fn(|_| Mutex::default()),
            hasher: Hasher::default(),
            failures: Mutex::default(),
            book,
            metrics,
            last_drop_warning: AtomicU64::new(0),
        })
    }

    /// Queues a key-management event, waiting (up to 5 s) for room: changes are rare and must
    /// not be lost to a flood of aggregates.
    pub async fn record_change(&self, event: Event) {
        let sent = self
            .tx
            .send_timeout(Msg::Event(Box::new(event)), Duration::from_secs(5))
            .await;
        if sent.is_err() {
            self.metrics.audit_dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!("audit queue stuck: a key-management event was dropped");
        }
    }

    /// Queues an event; never waits. A full queue drops it (counted, logged once a minute).
    pub fn record(&self, event: Event) {
        if self.tx.try_send(Msg::Event(Box::new(event))).is_err() {
            self.metrics.audit_dropped.fetch_add(1, Ordering::Relaxed);
            let now = Timestamp::now().unix();
            let last = self.last_drop_warning.load(Ordering::Relaxed);
            if now >= last + 60
                && self
                    .last_drop_warning
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(
                    "audit queue full: events are being dropped (see keygate_audit_dropped_total)"
                );
            }
        }
    }

    /// Counts one request made with a key (aggregated; no I/O).
    pub fn key_used(
        &self,
        key_id: &Arc<str>,
        route: &Arc<str>,
        method: &Method,
        status: u16,
        ip: IpAddr,
        now: Timestamp,
    ) {
        // Extension methods are arbitrary client strings: one bucket for all of them.
        let method = match *method {
            Method::GET
            | Method::HEAD
            | Method::POST
            | Method::PUT
            | Method::PATCH
            | Method::DELETE
            | Method::OPTIONS => method,
            _ => &OTHER_METHOD,
        };
        let minute = minute_of(now);
        let shard = &self.usage[(self.hasher.hash_one(key_id) as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
        let parts: UsageParts<'_> = (key_id, minute, route, method);
        if let Some(count) = map.get_mut(&parts as &dyn UsageLookup) {
            return count.add(status, ip);
        }
        // A new row: over the cap, the key's requests this minute share one row.
        let (route, method) = match map.len() >= MAX_USAGE_ROWS / SHARDS {
            true => (&*ANY_ROUTE, &*OTHER_METHOD),
            false => (route, method),
        };
        let key = UsageKey {
            key_id: Arc::clone(key_id),
            minute,
            route: Arc::clone(route),
            method: method.clone(),
        };
        map.entry(key).or_default().add(status, ip);
    }

    /// Counts one rejected authentication at `now` (aggregated; no I/O). `key` is a key id or
    /// the non-secret display prefix of the presented key, when known.
    pub fn auth_failed(&self, code: &'static str, key: Option<&str>, ip: IpAddr, now: Timestamp) {
        let row = FailureKey {
            minute: minute_of(now),
            ip,
            code,
            key: key.map(Into::into),
        };
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let full = f.rows.len() >= MAX_FAILURE_ROWS;
        match f.rows.get_mut(&row) {
            Some(n) => *n += 1,
            None if full => f.overflow += 1,
            None => {
                f.rows.insert(row, 1);
            }
        }
    }

    /// Writes the aggregates collected so far: usage and failure events, usage counters.
    pub async fn flush_aggregates(&self) {
        let mut per_minute: HashMap<(Arc<str>, u64), [u64; 5]> = HashMap::new();
        for shard in &self.usage {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(|e| e.into_inner()));
            for (k, c) in taken {
                let sum = per_minute
                    .entry((Arc::clone(&k.key_id), k.minute))
                    .or_default();
                for (s, n) in sum.iter_mut().zip(c.by_class) {
                    *s += n;
                }
                let mut e = Event::new(Action::KeyUsed);
                e.key_id = Some(k.key_id.to_string());
                e.minute = Some(Timestamp::from_unix(k.minute));
                e.route = Some(k.route.to_string());
                e.method = Some(k.method.to_string());
                e.client_ips = c.ips.iter().map(ToString::to_string).collect();
                e.counts = class_counts(&c.by_class);
                e.statuses = c
                    .statuses
                    .iter()
                    .map(|(s, n)| (s.to_string(), *n))
                    .collect();
                self.record(e);
            }
        }
        let failures =
            std::mem::take(&mut *self.failures.lock().unwrap_or_else(|e| e.into_inner()));
        for (k, n) in failures.rows {
            let mut e = Event::new(Action::AuthFailed);
            e.minute = Some(Timestamp::from_unix(k.minute));
            e.client_ips = vec![k.ip.to_string()];
            e.code = Some(k.code.to_owned());
            match k.key {
                Some(key) if key.starts_with("key_") => e.key_id = Some(key.into()),
                other => e.key_prefix = other.map(Into::into),
            }
            e.counts = BTreeMap::from([("count".to_owned(), n)]);
            self.record(e);
        }
        if failures.overflow > 0 {
            let mut e = Event::new(Action::AuthFailed);
            e.code = Some("other".into());
            e.counts = BTreeMap::from([("count".to_owned(), failures.overflow)]);
            self.record(e);
        }
        if per_minute.is_empty() {
            return;
        }
        let batch: Vec<(String, u64, [u64; 5])> = per_minute
            .into_iter()
            .map(|((id, m), c)| (id.to_string(), m, c))
            .collect();
        match &self.book {
            UsageBook::Memory(m) => {
                let now = Timestamp::now().unix();
                let mut book = m.lock().unwrap_or_else(|e| e.into_inner());
                for (id, minute, counts) in batch {
                    let minutes = book.entry(id).or_default();
                    let slot = minutes.entry(minute).or_default();
                    for (s, n) in slot.iter_mut().zip(counts) {
                        *s += n;
                    }
                }
                for minutes in book.values_mut() {
                    minutes.retain(|m, _| *m + DAY + 3600 > now);
                }
                book.retain(|_, minutes| !minutes.is_empty());
            }
            UsageBook::Redis(r) => {
                if let Err(e) = redis::usage_add(r, &batch).await {
                    tracing::warn!(error = %e, "could not record usage counters");
                }
            }
        }
    }

    /// Flushes the aggregates and waits until everything queued so far reached the sink.
    pub async fn drain(&self) {
        self.flush_aggregates().await;
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        }
    }

    /// Stored events matching `filter`, oldest first; at most `limit`, the latest ones.
    /// Returns whether more matched.
    pub async fn events(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> Result<(Vec<Event>, bool), String> {
        let lines = self.sink.read_lines(filter.since, filter.until).await?;
        let mut out: Vec<Event> = lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Event>(l).ok())
            .filter(|e| filter.matches(e))
            .collect();
        let more = out.len() > limit;
        if more {
            out.drain(..out.len() - limit);
        }
        Ok((out, more))
    }

    /// Request counts of `key_id` by status class over the last 24 hours.
    pub async fn usage(&self, key_id: &str) -> Result<Usage, StoreError> {
        let now = Timestamp::now().unix();
        let first_minute = minute_of(Timestamp::from_unix(now.saturating_sub(DAY))) + 60;
        let minutes: Vec<(u64, [u64; 5])> = match &self.book {
            UsageBook::Memory(m) => m
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(key_id)
                .map(|b| b.range(first_minute..).map(|(k, v)| (*k, *v)).collect())
                .unwrap_or_default(),
            UsageBook::Redis(r) => {
                let hours: Vec<u64> = (0..=24).map(|h| (now - h * 3600) / 3600 * 3600).collect();
                redis::usage_read(r, key_id, &hours)
                    .await?
                    .into_iter()
                    .filter(|(m, _)| *m >= first_minute)
                    .collect()
            }
        };
        Ok(Usage::from_minutes(key_id, &minutes))
    }

    pub fn sink(&self) -> &Sink {
        &self.sink
    }
}

async fn write_loop(mut rx: mpsc::Receiver<Msg>, sink: Sink, metrics: Arc<Metrics>) {
    let mut chain = None;
    let mut waiters = Vec::new();
    let mut batch: Vec<Event> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(e) => batch.push(*e),
                Msg::Flush(w) => waiters.push(w),
            }
            if batch.len() < 512 {
                next = rx.try_recv().ok();
            }
        }
        if chain.is_none() && !batch.is_empty() {
            // Link this writer's chain to the trail as stored now.
            chain = Some(event::Chain::after(sink.last_hash().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "audit: cannot read the trail's last event; starting a new chain");
                None
            })));
        }
        let Some(chain) = chain.as_mut() else {
            for w in waiters.drain(..) {
                let _ = w.send(());
            }
            continue;
        };
        let before = chain.position();
        let lines: Vec<String> = batch
            .drain(..)
            .map(|mut e| {
                chain.seal(&mut e);
                let json = serde_json::to_string(&e).unwrap_or_default();
                log_event(&e);
                json
            })
            .collect();
        if !lines.is_empty() {
            let n = lines.len() as u64;
            let mut result = sink.append(lines.clone()).await;
            if result.is_err() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                result = sink.append(lines).await;
            }
            match result {
                Ok(()) => metrics.audit_events.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    // Unseal them, so the stored chain has no gap: they exist only as log lines.
                    chain.rewind(before);
                    tracing::warn!(error = %e, events = n, "audit sink failed; events kept only in the log");
                    metrics.audit_sink_errors.fetch_add(n, Ordering::Relaxed)
                }
            };
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

/// One log line per audit event, its fields at the top level of a JSON line (the nested ones —
/// changes, counts, statuses, client IPs — as compact JSON text).
fn log_event(e: &Event) {
    // Compact JSON text of a nested field, or nothing when it is empty.
    fn nested<T: serde::Serialize + ?Sized>(v: &T, empty: bool) -> Option<String> {
        (!empty).then(|| serde_json::to_string(v).unwrap_or_default())
    }
    tracing::info!(
        target: "keygate::audit",
        seq = e.seq,
        action = %e.action,
        actor = e.actor.as_deref(),
        key_id = e.key_id.as_deref(),
        key_prefix = e.key_prefix.as_deref(),
        owner = e.owner.as_deref(),
        environment = e.environment.as_deref(),
        code = e.code.as_deref(),
        method = e.method.as_deref(),
        route = e.route.as_deref(),
        minute = e.minute.map(|m| m.to_string()),
        changes = e.changes.as_ref().and_then(|c| nested(c, c.is_null())),
        counts = nested(&e.counts, e.counts.is_empty()),
        statuses = nested(&e.statuses, e.statuses.is_empty()),
        client_ips = nested(&e.client_ips, e.client_ips.is_empty()),
        hash = %e.hash,
        "audit"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row is found by borrowed parts exactly when they are its key's (`Borrow`'s contract:
    /// the same hash, the same equality), and by no other parts.
    #[test]
    fn a_usage_row_is_found_by_its_parts_and_only_by_them() {
        let hasher = Hasher::default();
        let key = UsageKey {
            key_id: Arc::from("key_1"),
            minute: 1_800_000_000 / 60 * 60,
            route: Arc::from("payments"),
            method: Method::POST,
        };
        let mut map: HashMap<UsageKey, UsageCount, Hasher> = HashMap::with_hasher(hasher.clone());
        map.entry(key.clone())
            .or_default()
            .add(200, IpAddr::from([10, 0, 0, 1]));
        let parts: UsageParts<'_> = ("key_1", key.minute, "payments", &Method::POST);
        assert_eq!(
            hasher.hash_one(&key),
            hasher.hash_one(&parts as &dyn UsageLookup)
        );
        let found = map.get_mut(&parts as &dyn UsageLookup);
        assert!(found.is_some_and(|c| c.by_class[status_class(200)] == 1));
        for other in [
            ("key_2", key.minute, "payments", &Method::POST),
            ("key_1", key.minute + 60, "payments", &Method::POST),
            ("key_1", key.minute, "payment", &Method::POST),
            ("key_1", key.minute, "payments", &Method::GET),
            // The same bytes split differently between the key id and the route.
            ("key_1p", key.minute, "ayments", &Method::POST),
        ] {
            assert!(!map.contains_key(&other as &dyn UsageLookup), "{other:?}");
        }
    }
}
