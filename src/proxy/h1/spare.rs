//! Spare read buffers, a small stash per thread: every request reads its head into one
//! buffer, and so does every upstream response, and allocating those afresh each time (and
//! having the allocator hand their pages back and forth) was a visible share of the request
//! path. A buffer comes back here once its request is done and nothing else shares it (the
//! head's fields are split off it), and the next read on this thread takes it. Idle
//! connections still hold none: the stash is bounded, and per thread, not per connection.

use std::cell::RefCell;

use bytes::BytesMut;

/// The room a read buffer starts with.
pub const SIZE: usize = 8192;
/// Buffers kept per thread at most (`KEEP` × `SIZE` = 1 MiB).
const KEEP: usize = 128;

thread_local! {
    // Per thread, so taking and giving back needs no lock; a buffer given back on another
    // thread than it was taken on simply joins that thread's stash.
    static STASH: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least [`SIZE`] bytes.
pub fn take() -> BytesMut {
    STASH
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// Keeps `buf` for another read, if it is empty and its whole allocation can be reused
/// (nothing split off it is still alive); otherwise it is simply dropped.
pub fn give(mut buf: BytesMut) {
    if !buf.is_empty() || !buf.try_reclaim(SIZE) || buf.capacity() > 4 * SIZE {
        return;
    }
    STASH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEEP {
            s.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_only_when_nothing_shares_it() {
        // Start from an empty stash, whatever other tests on this thread left.
        STASH.with(|s| s.borrow_mut().clear());
        let kept = || STASH.with(|s| s.borrow().len());
        let mut buf = take();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = buf.split_to(buf.len()).freeze();
        give(buf);
        assert_eq!(kept(), 0, "shared with a live head");
        drop(head);

        let mut buf = take();
        let at = buf.as_ptr();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        drop(buf.split_to(buf.len()).freeze());
        give(buf);
        assert_eq!(kept(), 1);
        let again = take();
        assert!(again.is_empty() && again.capacity() >= SIZE);
        assert_eq!(again.as_ptr(), at, "the same allocation, from its start");

        let mut partial = take();
        partial.extend_from_slice(b"x");
        give(partial);
        assert_eq!(kept(), 0, "a buffer holding bytes is not kept");
    }
}
