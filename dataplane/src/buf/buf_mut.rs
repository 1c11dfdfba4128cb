//! [`BufMut`]: a uniquely owned, writable buffer.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use super::buf::{HeapBytes, Owner};
use super::Buf;

/// Uniquely owned, writable buffer: a pool chunk (from [`BufPool::alloc`]) or a heap
/// allocation ([`BufMut::with_capacity`]).
///
/// Bytes `[0, len)` are *filled*, `[len, capacity)` are *spare*. The receive path reads into
/// [`spare_mut`](BufMut::spare_mut), marks the bytes with [`advance`](BufMut::advance) and
/// cuts complete frames off the front with [`split_to`](BufMut::split_to); the resulting
/// [`Buf`]s share the chunk (reference counted) and never overlap the region this `BufMut`
/// can still write.
///
/// [`BufPool::alloc`]: super::BufPool::alloc
pub struct BufMut {
    /// Start of the region still owned by this `BufMut` (after everything split off).
    ptr: NonNull<u8>,
    /// Length of that region.
    cap: usize,
    /// Filled prefix of that region.
    len: usize,
    /// Bytes split off the front of the underlying chunk so far.
    consumed: usize,
    owner: Owner,
}

// SAFETY: the BufMut exclusively owns writes to `[ptr, ptr + cap)`; bytes split off earlier
// are only read through `Buf`s. Its owner handle is Send + Sync.
unsafe impl Send for BufMut {}
// SAFETY: `&BufMut` only allows reading the filled bytes and the counters.
unsafe impl Sync for BufMut {}

impl BufMut {
    /// Builds a `BufMut` over `[ptr, ptr + cap)`, empty.
    ///
    /// # Safety
    /// The range must be initialised, kept alive by `owner`, and not accessed through any
    /// other handle while this `BufMut` (or what it splits off) exists.
    pub(super) unsafe fn from_raw(ptr: NonNull<u8>, cap: usize, owner: Owner) -> BufMut {
        BufMut {
            ptr,
            cap,
            len: 0,
            consumed: 0,
            owner,
        }
    }

    /// A heap-backed, zero-filled buffer of exactly `cap` bytes, for frames larger than a pool
    /// chunk. The caller is responsible for bounding `cap`.
    pub fn with_capacity(cap: usize) -> BufMut {
        let heap = HeapBytes::from_vec(vec![0u8; cap]);
        let ptr = heap.ptr();
        // SAFETY: the zeroed Vec is initialised, owned solely by the new Arc, and nothing else
        // has a pointer into it.
        unsafe { BufMut::from_raw(ptr, cap, Owner::Heap(Arc::new(heap))) }
    }

    /// A heap-backed buffer of at least `cap` bytes (at most an eighth more) for a frame larger
    /// than a pool chunk, recycled from an earlier large frame when possible (see
    /// `buf::recycle`); its bytes are initialised but their contents unspecified, like
    /// [`spare_mut`](BufMut::spare_mut)'s. The caller is responsible for bounding `cap`.
    pub fn for_frame(cap: usize) -> BufMut {
        let heap = HeapBytes::from_vec(super::recycle::take(cap));
        let (ptr, len) = (heap.ptr(), heap.len());
        // SAFETY: all `len` bytes of the Vec are initialised (`take`'s contract), owned solely
        // by the new Arc, and nothing else has a pointer into them.
        unsafe { BufMut::from_raw(ptr, len, Owner::Heap(Arc::new(heap))) }
    }

    /// Wraps memory a stack lends, without copying it: `[ptr, ptr + cap)` of which the first
    /// `len` bytes are filled (an RDMA receive buffer the NIC wrote, say). `keeper` keeps the
    /// memory valid; it is dropped, on whichever thread lets go last, once this `BufMut` and
    /// every [`Buf`] cut from it are gone, and its `Drop` gives the memory back (to the
    /// stack's registered pool). `len` is clamped to `cap`.
    ///
    /// # Safety
    /// The whole range must be initialised and valid for reads and writes for as long as
    /// `keeper` lives, and nothing else (no other handle, no device) may read or write it in
    /// that time.
    pub unsafe fn lent(
        ptr: NonNull<u8>,
        cap: usize,
        len: usize,
        keeper: Arc<dyn Send + Sync>,
    ) -> BufMut {
        // SAFETY: the caller guarantees the range is initialised, exclusively ours and kept
        // alive by `keeper`.
        let mut b = unsafe { BufMut::from_raw(ptr, cap, Owner::Lent(keeper)) };
        b.len = len.min(cap);
        b
    }

    /// Bytes this buffer can still hold in total (filled + spare). Shrinks as bytes are split
    /// off the front.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Number of filled bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no bytes are filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Spare bytes: `capacity() - len()`.
    pub fn remaining(&self) -> usize {
        self.cap - self.len
    }

    /// The unfilled tail, to `read()` into. Its contents are unspecified (zero on first use
    /// of the memory, old data from a previous user afterwards) but always initialised.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        // SAFETY: [ptr + len, ptr + cap) is initialised, kept alive by `owner`, and only this
        // BufMut may access it; `&mut self` makes the returned borrow unique.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(self.len), self.cap - self.len)
        }
    }

    /// Marks `n` more spare bytes as filled.
    ///
    /// `n > remaining()` is a caller bug: it trips a `debug_assert!` and is clamped to
    /// `remaining()` in release builds.
    pub fn advance(&mut self, n: usize) {
        debug_assert!(
            n <= self.remaining(),
            "BufMut::advance({n}) with only {} spare bytes",
            self.remaining()
        );
        self.len += n.min(self.remaining());
    }

    /// The filled bytes.
    pub fn filled(&self) -> &[u8] {
        // SAFETY: [ptr, ptr + len) is initialised and owned by this BufMut; `&self` prevents
        // writes through `spare_mut` while the slice lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The filled bytes, writable (to transform a received frame in place, e.g. to decrypt
    /// it, before splitting it off).
    pub fn filled_mut(&mut self) -> &mut [u8] {
        // SAFETY: [ptr, ptr + len) is initialised and owned exclusively by this BufMut (bytes
        // split off earlier lie before `ptr`); `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Copies as much of `s` as fits into the spare bytes; returns how many were copied.
    pub fn extend_from_slice(&mut self, s: &[u8]) -> usize {
        let n = s.len().min(self.remaining());
        self.spare_mut()[..n].copy_from_slice(&s[..n]);
        self.len += n;
        n
    }

    /// Turns the first `n` filled bytes into a shared [`Buf`] (no copy); `self` keeps the
    /// remaining filled and spare bytes. The two regions never overlap.
    ///
    /// # Panics
    /// If `n > self.len()` (a caller bug).
    pub fn split_to(&mut self, n: usize) -> Buf {
        assert!(
            n <= self.len,
            "BufMut::split_to: {n} out of bounds for {} filled bytes",
            self.len
        );
        if n == 0 {
            return Buf::new();
        }
        // SAFETY: [ptr, ptr + n) is initialised and, once `self.ptr` moves past it below, no
        // longer writable through this BufMut; the cloned owner keeps it alive.
        let head = unsafe { Buf::from_raw(self.ptr, n, self.owner.clone()) };
        // SAFETY: n <= len <= cap, so the new start is inside (or one past) the region.
        self.ptr = unsafe { self.ptr.add(n) };
        self.cap -= n;
        self.len -= n;
        self.consumed += n;
        head
    }

    /// Turns all filled bytes into a shared [`Buf`] (no copy). The spare bytes are given up;
    /// an empty `BufMut` releases its memory at once.
    pub fn freeze(self) -> Buf {
        if self.len == 0 {
            return Buf::new();
        }
        // SAFETY: the filled bytes are initialised, kept alive by the moved owner, and no
        // longer writable since `self` is consumed.
        unsafe { Buf::from_raw(self.ptr, self.len, self.owner) }
    }

    /// How many bytes of the underlying chunk have been split off so far. Together with
    /// [`capacity`](BufMut::capacity) it tells how much of the chunk is used up.
    pub fn consumed(&self) -> usize {
        self.consumed
    }
}

impl fmt::Debug for BufMut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufMut")
            .field("len", &self.len)
            .field("capacity", &self.cap)
            .field("consumed", &self.consumed)
            .field("backing", &self.owner.kind())
            .finish()
    }
}
