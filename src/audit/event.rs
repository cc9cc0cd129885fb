//! One audit event, and the hash chain that makes the trail tamper-evident.
//!
//! Every writer (one per process start) keeps its own chain, named by a random `chain` id:
//! events carry `seq` (1, 2, 3, … within the chain), `prev` (the previous event's `hash`) and
//! `hash` = SHA-256 over the event's JSON without `hash`. A chain's first event links to the
//! last event stored when the writer started (or [`GENESIS`] on an empty trail), so chains form
//! one linked history. Editing an event breaks its hash; removing one leaves a gap in `seq` or
//! a link to a missing event; reordering breaks both. Several chains can share a sink
//! (replicas, the CLI) and interleave freely.
//!
//! What it cannot show: the newest events of a chain removed from the end of the trail, and
//! anything once the trail's oldest events were rotated away (a link into the rotated part
//! cannot be told from a removal). Someone able to rewrite the whole sink can recompute every
//! hash: ship the JSON log lines elsewhere for an independent copy.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::time::Timestamp;

/// `prev` of a chain's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "key.created")]
    KeyCreated,
    #[serde(rename = "key.updated")]
    KeyUpdated,
    #[serde(rename = "key.rotated")]
    KeyRotated,
    #[serde(rename = "key.revoked")]
    KeyRevoked,
    #[serde(rename = "key.imported")]
    KeyImported,
    /// Requests made with a key, aggregated per key, route, method and minute.
    #[serde(rename = "key.used")]
    KeyUsed,
    /// Rejected authentications, aggregated per client, code and key and minute.
    #[serde(rename = "auth.failed")]
    AuthFailed,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::KeyCreated,
        Action::KeyUpdated,
        Action::KeyRotated,
        Action::KeyRevoked,
        Action::KeyImported,
        Action::KeyUsed,
        Action::AuthFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::KeyCreated => "key.created",
            Action::KeyUpdated => "key.updated",
            Action::KeyRotated => "key.rotated",
            Action::KeyRevoked => "key.revoked",
            Action::KeyImported => "key.imported",
            Action::KeyUsed => "key.used",
            Action::AuthFailed => "auth.failed",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An audit event. Optional fields are left out of the JSON when empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    #[serde(default)]
    pub chain: String,
    #[serde(default)]
    pub seq: u64,
    pub time: Timestamp,
    pub action: Action,
    /// Admin token name, or `cli:<user>` for the CLI on the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// For failures with a key keygate could not identify: its non-secret display prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// What an update changed (`{"field": {"from": …, "to": …}}`) or rotation details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_ips: Vec<String>,
    /// The error code of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Aggregated events: requests by status class (`2xx`, …) or failures (`count`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
    /// Usage events: requests by exact response status (`"200"`, `"404"`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub statuses: BTreeMap<String, u64>,
    /// Aggregated events: the minute they cover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minute: Option<Timestamp>,
    #[serde(default)]
    pub prev: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl Event {
    pub fn new(action: Action) -> Event {
        Event {
            chain: String::new(),
            seq: 0,
            time: Timestamp::now(),
            action,
            actor: None,
            key_id: None,
            key_prefix: None,
            owner: None,
            environment: None,
            changes: None,
            client_ips: Vec::new(),
            code: None,
            method: None,
            route: None,
            counts: BTreeMap::new(),
            statuses: BTreeMap::new(),
            minute: None,
            prev: String::new(),
            hash: String::new(),
        }
    }

    /// The hash this event should carry: SHA-256 over its JSON without `hash`.
    pub fn compute_hash(&self) -> String {
        let mut body = self.clone();
        body.hash.clear();
        let json = serde_json::to_vec(&body).unwrap_or_default();
        hex(&Sha256::digest(&json))
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The writing end of one chain.
pub struct Chain {
    id: String,
    seq: u64,
    prev: String,
}

impl Chain {
    pub fn new() -> Chain {
        Chain::after(None)
    }

    /// A chain whose first event links to `last` (the newest stored event's hash).
    pub fn after(last: Option<String>) -> Chain {
        Chain {
            id: hex(&rand::random::<[u8; 8]>()),
            seq: 0,
            prev: last.unwrap_or_else(|| GENESIS.to_owned()),
        }
    }

    /// Where the chain stands, to undo seals whose events never reached the sink.
    pub fn position(&self) -> (u64, String) {
        (self.seq, self.prev.clone())
    }

    pub fn rewind(&mut self, (seq, prev): (u64, String)) {
        self.seq = seq;
        self.prev = prev;
    }

    /// Links `event` after the previous one and seals it.
    pub fn seal(&mut self, event: &mut Event) {
        self.seq += 1;
        event.chain.clone_from(&self.id);
        event.seq = self.seq;
        event.prev = std::mem::take(&mut self.prev);
        event.hash = event.compute_hash();
        self.prev.clone_from(&event.hash);
    }
}

impl Default for Chain {
    fn default() -> Self {
        Chain::new()
    }
}

/// What `keygate audit verify` found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verification {
    pub events: usize,
    pub chains: usize,
    /// One line per problem; empty means the trail is intact.
    pub problems: Vec<String>,
    /// Chains whose first events were rotated or trimmed away (not an error: the first event
    /// kept is trusted as the anchor).
    pub truncated_chains: usize,
}

/// Checks every chain in `events` (in stored order).
pub fn verify(events: &[Event]) -> Verification {
    let mut last: HashMap<&str, (u64, &str)> = HashMap::new();
    let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
    // A trail whose oldest event does not start at genesis lost its beginning to rotation.
    let trimmed = events
        .first()
        .is_some_and(|e| e.seq != 1 || e.prev != GENESIS);
    let mut v = Verification {
        events: events.len(),
        ..Verification::default()
    };
    for (i, e) in events.iter().enumerate() {
        let at = format!("event {} (chain {} seq {})", i + 1, e.chain, e.seq);
        if e.compute_hash() != e.hash {
            v.problems
                .push(format!("{at}: content does not match its hash (edited)"));
        }
        match last.get(e.chain.as_str()) {
            None => {
                v.chains += 1;
                let linked = e.seq == 1 && (e.prev == GENESIS || seen.contains(e.prev.as_str()));
                if !linked && trimmed {
                    v.truncated_chains += 1;
                } else if e.seq != 1 {
                    v.problems.push(format!(
                        "{at}: the chain's first {} events are missing (removed)",
                        e.seq - 1
                    ));
                } else if !linked {
                    v.problems.push(format!(
                        "{at}: links to an event that is not in the trail (removed)"
                    ));
                }
            }
            Some(&(seq, hash)) => {
                if e.seq != seq + 1 {
                    v.problems.push(format!(
                        "{at}: expected seq {} (events removed or reordered)",
                        seq + 1
                    ));
                } else if e.prev != hash {
                    v.problems.push(format!(
                        "{at}: does not link to the previous event (replaced or reordered)"
                    ));
                }
            }
        }
        last.insert(&e.chain, (e.seq, &e.hash));
        seen.insert(&e.hash);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trail(n: usize) -> Vec<Event> {
        let mut chain = Chain::new();
        (0..n)
            .map(|i| {
                let mut e = Event::new(Action::KeyCreated);
                e.key_id = Some(format!("key_{i}"));
                chain.seal(&mut e);
                e
            })
            .collect()
    }

    #[test]
    fn an_intact_trail_verifies() {
        let mut events = trail(5);
        // A second chain interleaved (another replica) is fine.
        let mut other = trail(3);
        events.insert(2, other.remove(0));
        events.push(other.remove(0));
        let v = verify(&events);
        assert_eq!(v.problems, Vec::<String>::new());
        assert_eq!((v.events, v.chains, v.truncated_chains), (7, 2, 0));
    }

    #[test]
    fn edits_removals_and_reorders_are_found() {
        let mut edited = trail(4);
        edited[1].owner = Some("mallory".into());
        assert_eq!(verify(&edited).problems.len(), 1);

        let mut removed = trail(4);
        removed.remove(2);
        assert_eq!(verify(&removed).problems.len(), 1);

        let mut reordered = trail(4);
        reordered.swap(1, 2);
        assert!(!verify(&reordered).problems.is_empty());

        // Rewriting an event and recomputing its own hash still breaks the next link.
        let mut forged = trail(4);
        forged[1].owner = Some("mallory".into());
        forged[1].hash = forged[1].compute_hash();
        assert_eq!(verify(&forged).problems.len(), 1);
    }

    #[test]
    fn removing_a_whole_chain_is_found() {
        let mut events = trail(2);
        // A second writer (say, one CLI run) started after these, then a third.
        let mut second = Chain::after(Some(events[1].hash.clone()));
        let mut e = Event::new(Action::KeyRevoked);
        second.seal(&mut e);
        events.push(e);
        let mut third = Chain::after(Some(events[2].hash.clone()));
        let mut e = Event::new(Action::KeyCreated);
        third.seal(&mut e);
        events.push(e);
        assert!(verify(&events).problems.is_empty());
        events.remove(2);
        let v = verify(&events);
        assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
        assert!(v.problems[0].contains("not in the trail"));
    }

    #[test]
    fn a_trimmed_head_is_reported_but_not_a_failure() {
        let mut events = trail(4);
        events.drain(..2);
        let v = verify(&events);
        assert!(v.problems.is_empty());
        assert_eq!(v.truncated_chains, 1);
    }

    #[test]
    fn round_trips_through_json() {
        let e = &trail(1)[0];
        let json = serde_json::to_string(e).unwrap();
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, e);
        assert_eq!(back.compute_hash(), e.hash);
    }
}
