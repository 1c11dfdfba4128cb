//! Recycling of large heap buffers.
//!
//! A frame bigger than a pool chunk is received into a heap buffer of its size, so that its
//! payload can go to the dispatcher without a copy. Allocating and freeing such a buffer per
//! frame costs more than the bytes it carries: a 1 MiB `calloc` is either a fresh `mmap`
//! (256 page faults, zeroing, and a TLB shoot-down on every core when it is unmapped) or a
//! 1 MiB `memset`. Buffers of at least [`MIN_RECYCLED`] bytes are therefore kept when their
//! last view is dropped (at most [`MAX_CACHED`] of them and [`MAX_CACHED_BYTES`] in all, for
//! the whole process) and handed out again for frames of about the same size.

use parking_lot::Mutex;

/// Smaller buffers are not worth keeping (the allocator handles them well).
pub const MIN_RECYCLED: usize = 64 << 10;
/// Buffers kept at most.
pub const MAX_CACHED: usize = 16;
/// Bytes kept at most.
pub const MAX_CACHED_BYTES: usize = 64 << 20;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer whose `len()` bytes are all initialised (contents unspecified), with
/// `cap <= len() <= cap + cap / 8`: a recycled one when there is one, else a new zeroed one.
pub(super) fn take(cap: usize) -> Vec<u8> {
    if cap >= MIN_RECYCLED {
        let mut free = FREE.lock();
        if let Some(i) = free
            .iter()
            .position(|v| v.len() >= cap && v.len() - cap <= cap / 8)
        {
            return free.swap_remove(i);
        }
    }
    vec![0u8; cap]
}

/// Takes back a buffer whose last view was dropped: kept if large and there is room,
/// freed otherwise.
pub(super) fn give(v: Vec<u8>) {
    if v.len() < MIN_RECYCLED {
        return;
    }
    let mut free = FREE.lock();
    let cached: usize = free.iter().map(Vec::len).sum();
    if free.len() < MAX_CACHED && cached + v.len() <= MAX_CACHED_BYTES {
        free.push(v);
    }
}

/// Buffers and bytes kept right now (for tests and metrics).
pub fn cached() -> (usize, usize) {
    let free = FREE.lock();
    (free.len(), free.iter().map(Vec::len).sum())
}
