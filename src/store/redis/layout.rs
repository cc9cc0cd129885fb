//! Where records live: the layout of the key store in Redis, and which shard a record, an id
//! or an audit stream belongs to.
//!
//! - **single-slot** (before sharding): every key under `{<prefix>}`, one Cluster slot.
//! - **sharded** (`S` shards): a record, its owner-index and listing entries and its shard's
//!   invalidation sequence live under `{<prefix>#<s>}` with `s` taken from the record's lookup
//!   hash, so the lookup path finds the slot from the presented key (one round trip). A
//!   rotation's successor is minted into its predecessor's shard (see [`Steer`]), so a rotation
//!   stays one atomic script. The id index, the `used` hash and usage counters are keyed by the
//!   key id's shard; the audit trail is split over [`AUDIT_STREAMS`] streams.
//! - **migrating**: written while `keygate store migrate` moves a single-slot store: writes go
//!   to the sharded layout (moving the record first), reads look in both.
//!
//! The layout is recorded in `{<prefix>}:layout` (absent: single-slot), which the single-slot
//! scripts check atomically, so once it is set no process writes the old layout again.

use crate::key::LookupHash;

/// Audit streams of a sharded store (each writer appends to one; readers merge them).
pub const AUDIT_STREAMS: u16 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    SingleSlot,
    Migrating(u16),
    Sharded(u16),
}

impl Layout {
    pub(crate) fn parse(s: &str) -> Option<Layout> {
        let (kind, n) = s.split_once(':')?;
        let n: u16 = n.parse().ok().filter(|n| (1..=4096).contains(n))?;
        match kind {
            "migrating" => Some(Layout::Migrating(n)),
            "sharded" => Some(Layout::Sharded(n)),
            _ => None,
        }
    }

    pub(crate) fn marker(self) -> String {
        match self {
            Layout::SingleSlot => "single-slot".into(),
            Layout::Migrating(n) => format!("migrating:{n}"),
            Layout::Sharded(n) => format!("sharded:{n}"),
        }
    }

    /// The shard count, unless single-slot.
    pub(crate) fn shards(self) -> Option<u16> {
        match self {
            Layout::SingleSlot => None,
            Layout::Migrating(n) | Layout::Sharded(n) => Some(n),
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.marker())
    }
}

/// The shard of a record: from its lookup hash, so a presented key names its slot.
pub fn shard_of_hash(hash: &LookupHash, shards: u16) -> u16 {
    let b = hash.as_bytes();
    u16::from_be_bytes([b[0], b[1]]) % shards.max(1)
}

/// The shard of a key id's index entry, `used` field and usage counters.
pub fn shard_of_id(id: &str, shards: u16) -> u16 {
    u16::try_from(crc32fast::hash(id.as_bytes()) % u32::from(shards.max(1))).unwrap_or(0)
}

/// What a rotation's successor must satisfy to share its predecessor's shard (and so be
/// written in the same atomic script): minting draws keys until one does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Steer {
    pub shards: u16,
    pub shard: u16,
}

impl Steer {
    pub fn accepts(&self, hash: &LookupHash) -> bool {
        shard_of_hash(hash, self.shards) == self.shard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_junk_is_refused() {
        for l in [Layout::Migrating(256), Layout::Sharded(1)] {
            assert_eq!(Layout::parse(&l.marker()), Some(l));
        }
        for junk in [
            "",
            "sharded",
            "sharded:0",
            "sharded:5000",
            "sharded:x",
            "other:4",
        ] {
            assert_eq!(Layout::parse(junk), None, "{junk}");
        }
    }

    #[test]
    fn shards_spread_and_steering_hits_the_shard() {
        let hasher = crate::key::KeyHasher::new(None);
        let mut counts = [0u32; 16];
        for i in 0..4000 {
            let h = hasher.lookup_hash(&format!("k{i}"));
            counts[usize::from(shard_of_hash(&h, 16))] += 1;
        }
        assert!(counts.iter().all(|c| (150..350).contains(c)), "{counts:?}");
        let steer = Steer {
            shards: 256,
            shard: 7,
        };
        let hit = (0..100_000)
            .map(|i| hasher.lookup_hash(&format!("x{i}")))
            .find(|h| steer.accepts(h))
            .expect("a hash in shard 7");
        assert_eq!(shard_of_hash(&hit, 256), 7);
        assert!(shard_of_id("key_abc", 256) < 256);
    }
}
