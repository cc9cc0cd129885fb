//! A per-thread front for the positive cache: the keys a thread verified last, found without
//! the shared cache's bookkeeping (its hashing, clock read, read log and epoch guard), which
//! was the largest part of a cached key's check after the key's own hash.
//!
//! Revocation stays immediate: every invalidation bumps the verifier's generation *after* it
//! has removed the record from the shared cache, and a remembered entry counts only under the
//! generation read *before* it was taken from that cache. An entry read before an invalidation
//! is never served after it.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::Verified;
use crate::key::LookupHash;

/// Remembered entries per thread (direct-mapped by the lookup hash, itself uniform).
const SLOTS: usize = 64;

struct Slot {
    verifier: u64,
    generation: u64,
    key: LookupHash,
    entry: Arc<Verified>,
}

thread_local! {
    static REMEMBERED: RefCell<[Option<Slot>; SLOTS]> = const { RefCell::new([const { None }; SLOTS]) };
}

/// One verifier's view of the front (a thread's slots are shared by every verifier it serves:
/// tests run several).
pub(super) struct Front {
    id: u64,
    generation: AtomicU64,
}

impl Front {
    pub fn new() -> Front {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Front {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
        }
    }

    /// The generation an entry about to be read from the shared cache is remembered under.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Forgets every remembered entry, on every thread. Called once the shared cache has
    /// dropped what changed.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The entry remembered for `key`, if nothing was invalidated since it was read.
    pub fn get(&self, key: &LookupHash) -> Option<Arc<Verified>> {
        let generation = self.generation();
        REMEMBERED.with_borrow(|slots| {
            let slot = slots[index(key)].as_ref()?;
            (slot.verifier == self.id && slot.generation == generation && slot.key == *key)
                .then(|| Arc::clone(&slot.entry))
        })
    }

    /// Remembers `entry`, read from the shared cache under `generation`.
    pub fn put(&self, key: LookupHash, entry: &Arc<Verified>, generation: u64) {
        REMEMBERED.with_borrow_mut(|slots| {
            slots[index(&key)] = Some(Slot {
                verifier: self.id,
                generation,
                key,
                entry: Arc::clone(entry),
            });
        });
    }
}

/// Always below `SLOTS`.
fn index(key: &LookupHash) -> usize {
    usize::from(key.as_bytes()[0]) % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::{Environment, KeyFormat, KeyHasher, KeyType, Labels};

    fn entry() -> Arc<Verified> {
        let new = crate::store::NewRecord::new("acct_1", Environment::Live, KeyType::Secret);
        let format = KeyFormat::new(&Labels::default()).unwrap_or_else(|e| panic!("{e}"));
        let minted = new.mint(
            &format,
            &KeyHasher::new(None),
            crate::time::Timestamp::from_unix(1),
        );
        let (_, record) = minted.unwrap_or_else(|e| panic!("{e}"));
        let identity = crate::auth::Identity::for_tests(record).unwrap_or_else(|| panic!("values"));
        Arc::clone(&identity.entry)
    }

    #[test]
    fn an_entry_read_before_an_invalidation_is_never_served_after_it() {
        let (front, other) = (Front::new(), Front::new());
        let e = entry();
        let key = e.presented;
        let before = front.generation();
        front.put(key, &e, before);
        assert!(front.get(&key).is_some_and(|got| Arc::ptr_eq(&got, &e)));
        // Another verifier on the same thread never sees this one's entries.
        assert!(other.get(&key).is_none());
        front.invalidate();
        assert!(front.get(&key).is_none(), "served after an invalidation");
        // Read from the shared cache before the invalidation, remembered after it: not served.
        front.put(key, &e, before);
        assert!(
            front.get(&key).is_none(),
            "an entry read before it counts after it"
        );
        front.put(key, &e, front.generation());
        assert!(front.get(&key).is_some());
    }
}
