//! [`Buf`]: immutable, cheaply clonable views of pool, heap or static bytes.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::mem::ManuallyDrop;
use std::ops::{Bound, Deref, RangeBounds};
use std::ptr::NonNull;
use std::sync::Arc;

use super::pool::ChunkRef;

/// A heap allocation shared by `Buf`s (and at most one `BufMut`), accessed only through raw
/// pointers to disjoint ranges. Dropping it frees the original `Vec`.
pub(super) struct HeapBytes {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

impl HeapBytes {
    /// Takes ownership of `v`'s allocation without copying it.
    pub(super) fn from_vec(v: Vec<u8>) -> HeapBytes {
        let mut v = ManuallyDrop::new(v);
        HeapBytes {
            // A Vec's pointer is never null (dangling but non-null when unallocated).
            ptr: NonNull::new(v.as_mut_ptr()).unwrap_or(NonNull::dangling()),
            len: v.len(),
            cap: v.capacity(),
        }
    }

    /// Start of the initialised bytes.
    pub(super) fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// Number of initialised bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for HeapBytes {
    fn drop(&mut self) {
        // SAFETY: ptr/len/cap are exactly the parts of the Vec taken apart in `from_vec`,
        // which has not been freed since; this is its only owner and nothing else can still
        // reference the bytes (all views hold the `Arc<HeapBytes>` being dropped).
        let v = unsafe { Vec::from_raw_parts(self.ptr.as_ptr(), self.len, self.cap) };
        // Large buffers go back for the next large frame (see `recycle`).
        super::recycle::give(v);
    }
}

// SAFETY: HeapBytes owns a plain byte allocation; it is freed exactly once (in Drop), and
// concurrent access to the bytes is governed by the Buf/BufMut disjointness invariants.
unsafe impl Send for HeapBytes {}
// SAFETY: `&HeapBytes` exposes only the pointer value, never the bytes themselves.
unsafe impl Sync for HeapBytes {}

/// What keeps the bytes of a [`Buf`] / [`super::BufMut`] alive.
#[derive(Clone)]
pub(super) enum Owner {
    /// `'static` bytes (or nothing, for empty buffers).
    Static,
    /// A heap allocation shared through an `Arc` (held only for its reference count).
    Heap(#[allow(dead_code)] Arc<HeapBytes>),
    /// A pool chunk; cloning bumps the chunk's counter in the pool metadata (held for its
    /// reference count, and to name the pool: [`Buf::pool`]).
    Pool(ChunkRef),
    /// Memory a stack lent ([`super::BufMut::lent`]): the keeper keeps it valid and gives it
    /// back when the last view drops it (held only for its reference count).
    Lent(#[allow(dead_code)] Arc<dyn Send + Sync>),
}

impl Owner {
    /// Short name of the backing, for `Debug` output.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Owner::Static => "static",
            Owner::Heap(_) => "heap",
            Owner::Pool(_) => "pool",
            Owner::Lent(_) => "lent",
        }
    }
}

/// Immutable, cheaply clonable view of bytes in a pool chunk, a heap allocation or static
/// memory.
///
/// Cloning and slicing never copy bytes: pool-backed views bump the chunk's reference count
/// stored in the pool metadata (no heap allocation), heap-backed views bump an `Arc`. The
/// chunk returns to its pool when the last view (and the `BufMut` it came from) is dropped,
/// on any thread. Equality and hashing compare contents; `Debug` shows length and backing
/// only.
#[derive(Clone)]
pub struct Buf {
    ptr: NonNull<u8>,
    len: usize,
    owner: Owner,
}

// SAFETY: a Buf only gives shared access to bytes nobody writes while it exists (BufMut only
// writes past every region it split off; pool chunks are recycled only after the last
// reference drops), and its owner handle is Send + Sync.
unsafe impl Send for Buf {}
// SAFETY: see `Send`; `&Buf` only allows reads of immutable bytes.
unsafe impl Sync for Buf {}

/// Resolves `range` against `len`; `None` if out of bounds or reversed.
fn bounds(range: impl RangeBounds<usize>, len: usize) -> Option<(usize, usize)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1)?,
        Bound::Excluded(&e) => e,
        Bound::Unbounded => len,
    };
    (start <= end && end <= len).then_some((start, end))
}

impl Buf {
    /// An empty buffer (no allocation).
    pub const fn new() -> Buf {
        Buf {
            ptr: NonNull::dangling(),
            len: 0,
            owner: Owner::Static,
        }
    }

    /// Builds a view from parts.
    ///
    /// # Safety
    /// `[ptr, ptr + len)` must be initialised, immutable for as long as `owner` (or a clone
    /// of it) lives, and kept alive by `owner`.
    pub(super) unsafe fn from_raw(ptr: NonNull<u8>, len: usize, owner: Owner) -> Buf {
        Buf { ptr, len, owner }
    }

    /// Takes ownership of `v` without copying: `as_ptr()` is `v`'s data pointer.
    pub fn from_vec(v: Vec<u8>) -> Buf {
        if v.is_empty() {
            return Buf::new();
        }
        let heap = HeapBytes::from_vec(v);
        let (ptr, len) = (heap.ptr(), heap.len);
        Buf {
            ptr,
            len,
            owner: Owner::Heap(Arc::new(heap)),
        }
    }

    /// Wraps static bytes (no allocation, no copy).
    pub const fn from_static(s: &'static [u8]) -> Buf {
        Buf {
            // SAFETY: a reference is never null.
            ptr: unsafe { NonNull::new_unchecked(s.as_ptr().cast_mut()) },
            len: s.len(),
            owner: Owner::Static,
        }
    }

    /// Copies `s` into a new heap allocation (the explicit, copying constructor).
    pub fn copy_from_slice(s: &[u8]) -> Buf {
        Buf::from_vec(s.to_vec())
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: by construction `[ptr, ptr + len)` is initialised, immutable and kept alive
        // by `self.owner` for as long as `self` is borrowed.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Pointer to the first byte (dangling but non-null if empty).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr().cast_const()
    }

    /// The [`BufPool`](super::BufPool) whose arena holds these bytes (`None` for heap or
    /// static bytes). An RDMA stack uses it to register the pool's arena once and then send
    /// every buffer of the pool without copying it.
    pub fn pool(&self) -> Option<super::BufPool> {
        match &self.owner {
            Owner::Pool(chunk) => Some(chunk.pool()),
            Owner::Static | Owner::Heap(_) | Owner::Lent(_) => None,
        }
    }

    /// Whether these bytes are memory a stack lent to the messenger
    /// ([`BufMut::lent`](super::BufMut::lent), zero-copy receive). A stack that recognises its
    /// own lent memory (an RDMA stack's registered receive buffers) can send it on without
    /// copying, as when an application forwards or echoes what it received.
    pub fn is_lent(&self) -> bool {
        matches!(self.owner, Owner::Lent(_))
    }

    /// A view of `range` sharing the same memory (no copy), or `None` if the range is out of
    /// bounds or reversed. Empty results hold no reference to the underlying memory.
    #[inline]
    pub fn try_slice(&self, range: impl RangeBounds<usize>) -> Option<Buf> {
        let (start, end) = bounds(range, self.len)?;
        if start == end {
            return Some(Buf::new());
        }
        Some(Buf {
            // SAFETY: start < end <= len, so the offset stays inside the viewed bytes.
            ptr: unsafe { self.ptr.add(start) },
            len: end - start,
            owner: self.owner.clone(),
        })
    }

    /// A view of `range` sharing the same memory (no copy).
    ///
    /// # Panics
    /// If the range is out of bounds or reversed — a caller bug; use [`Buf::try_slice`] for
    /// untrusted ranges.
    pub fn slice(&self, range: impl RangeBounds<usize>) -> Buf {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        match self.try_slice(range) {
            Some(b) => b,
            None => panic!(
                "Buf::slice: range ({start:?}, {end:?}) out of bounds for length {}",
                self.len
            ),
        }
    }

    /// Splits off the first `n` bytes and returns them; `self` keeps the rest.
    ///
    /// # Panics
    /// If `n > self.len()` (a caller bug).
    pub fn split_to(&mut self, n: usize) -> Buf {
        assert!(
            n <= self.len,
            "Buf::split_to: {n} out of bounds for length {}",
            self.len
        );
        let head = self.slice(..n);
        self.advance(n);
        head
    }

    /// Narrows this view to `range` in place, without touching the reference count (cheaper
    /// than [`Buf::slice`] when the wider view is no longer needed). Returns false, leaving
    /// the view unchanged, if the range is out of bounds or reversed.
    pub fn narrow(&mut self, range: impl RangeBounds<usize>) -> bool {
        let Some((start, end)) = bounds(range, self.len) else {
            return false;
        };
        if start == end {
            *self = Buf::new();
            return true;
        }
        // SAFETY: start < end <= len, so the new start stays inside the viewed bytes.
        self.ptr = unsafe { self.ptr.add(start) };
        self.len = end - start;
        true
    }

    /// Drops the first `n` bytes (clamped to the length); releases the memory if nothing is
    /// left.
    pub(super) fn advance(&mut self, n: usize) {
        let n = n.min(self.len);
        if n == self.len {
            *self = Buf::new();
            return;
        }
        // SAFETY: n < len, so the new start stays inside the viewed bytes.
        self.ptr = unsafe { self.ptr.add(n) };
        self.len -= n;
    }
}

impl Default for Buf {
    fn default() -> Self {
        Buf::new()
    }
}

impl Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for Buf {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for Buf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buf")
            .field("len", &self.len)
            .field("backing", &self.owner.kind())
            .finish()
    }
}

impl PartialEq for Buf {
    fn eq(&self, other: &Buf) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Buf {}

impl PartialEq<[u8]> for Buf {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<&[u8]> for Buf {
    fn eq(&self, other: &&[u8]) -> bool {
        self.as_slice() == *other
    }
}

impl Hash for Buf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl From<Vec<u8>> for Buf {
    fn from(v: Vec<u8>) -> Buf {
        Buf::from_vec(v)
    }
}

impl From<&'static [u8]> for Buf {
    fn from(s: &'static [u8]) -> Buf {
        Buf::from_static(s)
    }
}

impl From<&'static str> for Buf {
    fn from(s: &'static str) -> Buf {
        Buf::from_static(s.as_bytes())
    }
}
