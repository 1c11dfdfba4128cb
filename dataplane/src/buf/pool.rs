//! [`BufPool`]: fixed-size buffers carved out of one hugepage arena.

use std::fmt;
use std::ptr::NonNull;
use std::sync::atomic::{self, AtomicUsize, Ordering};
use std::sync::Arc;

use hugepages::{Arena, ArenaOptions, Backing, PageSize};

use super::buf::Owner;
use super::free_stack::FreeStack;
use super::{BufError, BufMut};

/// Reference counts above this are treated like `Arc` overflow: the process aborts, because
/// wrapping around would free a chunk that is still in use.
const MAX_REFS: usize = isize::MAX as usize;

/// Configuration of a [`BufPool`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// Size of each buffer in bytes (default 64 KiB).
    pub buf_size: usize,
    /// Number of buffers (default 1024).
    pub count: usize,
    /// Back the pool with a hugepage [`Arena`] (falling back to transparent hugepages /
    /// 4 KiB pages when none are reserved). When false, plain 4 KiB pages are used.
    /// Default true.
    pub hugepages: bool,
    /// `mlock` the pool memory (default false).
    pub lock: bool,
    /// Fault every page of the pool in when it is created (`MAP_POPULATE`), so the data path
    /// never takes a first-touch page fault: the first pass through a 32 MiB pool otherwise
    /// faults in 8,192 pages (16 hugepages) while messages are arriving. Costs about 14 ms per
    /// 32 MiB of 4 KiB pages at creation on the project's VM. Default true.
    pub prefault: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            buf_size: 64 * 1024,
            count: 1024,
            hugepages: true,
            lock: false,
            prefault: true,
        }
    }
}

/// Per-chunk metadata; one cache line each so that threads releasing neighbouring chunks do
/// not contend.
#[repr(align(64))]
#[derive(Default)]
struct ChunkMeta {
    /// Number of live `Buf`/`BufMut` handles on the chunk; 0 while it is in the free stack.
    refs: AtomicUsize,
}

/// Shared state of a pool. Lives as long as any [`BufPool`] handle or any allocated chunk.
pub(super) struct PoolInner {
    arena: Arena,
    buf_size: usize,
    count: usize,
    meta: Box<[ChunkMeta]>,
    /// Indices of free chunks.
    free: FreeStack,
}

impl PoolInner {
    fn meta(&self, idx: u32) -> &ChunkMeta {
        // `idx` always comes from `free`, which only ever holds indices < count == meta.len().
        &self.meta[idx as usize]
    }
}

/// Fixed-size buffer pool carved from one [`Arena`].
///
/// Cloning gives another handle to the same pool. Allocation pops a chunk index from a
/// lock-free stack and never blocks or touches the heap allocator (the chunk freed last comes
/// first, still in cache); the chunk is pushed back when the last [`Buf`](super::Buf) / [`BufMut`] referring to it is dropped, on
/// whatever thread that happens. The arena stays mapped until the last pool handle *and* the
/// last outstanding buffer are gone.
#[derive(Clone)]
pub struct BufPool {
    inner: Arc<PoolInner>,
}

impl BufPool {
    /// Maps the arena and builds a pool of `cfg.count` buffers of `cfg.buf_size` bytes.
    ///
    /// # Errors
    /// [`BufError::InvalidConfig`] for a zero size/count, more than `u32::MAX` buffers or an
    /// overflowing total size; [`BufError::Arena`] if the memory cannot be mapped (or locked,
    /// with `cfg.lock`).
    pub fn new(cfg: &PoolConfig) -> Result<BufPool, BufError> {
        if cfg.buf_size == 0 {
            return Err(BufError::InvalidConfig(String::from(
                "buf_size is 0; it must be at least one byte (default 64 KiB)",
            )));
        }
        if cfg.count == 0 {
            return Err(BufError::InvalidConfig(String::from(
                "count is 0; a pool needs at least one buffer (default 1024)",
            )));
        }
        let Ok(count32) = u32::try_from(cfg.count) else {
            return Err(BufError::InvalidConfig(format!(
                "count {} exceeds the maximum of {} buffers",
                cfg.count,
                u32::MAX
            )));
        };
        let Some(size) = cfg.buf_size.checked_mul(cfg.count) else {
            return Err(BufError::InvalidConfig(format!(
                "{} buffers of {} bytes overflow the address space",
                cfg.count, cfg.buf_size
            )));
        };
        let arena = Arena::map(&ArenaOptions {
            size,
            page_size: if cfg.hugepages {
                PageSize::Huge2M
            } else {
                PageSize::Base
            },
            lock: cfg.lock,
            allow_fallback: true,
            populate: cfg.prefault,
        })?;
        let meta: Box<[ChunkMeta]> = (0..cfg.count).map(|_| ChunkMeta::default()).collect();
        // Chunk 0 on top: the first allocations go through the arena in address order.
        let free = FreeStack::full(count32);
        tracing::debug!(
            buf_size = cfg.buf_size,
            count = cfg.count,
            arena_len = arena.len(),
            backing = ?arena.backing(),
            locked = arena.is_locked(),
            "buffer pool created"
        );
        Ok(BufPool {
            inner: Arc::new(PoolInner {
                arena,
                buf_size: cfg.buf_size,
                count: cfg.count,
                meta,
                free,
            }),
        })
    }

    /// Takes a free buffer: an empty [`BufMut`] with capacity [`BufPool::buf_size`].
    ///
    /// The buffer's bytes are whatever its previous user left (zero on first use).
    ///
    /// # Errors
    /// [`BufError::Exhausted`] when every buffer is in use. Never blocks.
    pub fn alloc(&self) -> Result<BufMut, BufError> {
        let inner = &*self.inner;
        let Some(idx) = inner.free.pop() else {
            return Err(BufError::Exhausted {
                buf_size: inner.buf_size,
                count: inner.count,
            });
        };
        // The pop synchronised with the push of the previous owner, so Relaxed suffices.
        let prev = inner.meta(idx).refs.swap(1, Ordering::Relaxed);
        debug_assert_eq!(prev, 0, "chunk {idx} was in the free list while referenced");
        let offset = idx as usize * inner.buf_size;
        // SAFETY: idx < count, so offset + buf_size <= count * buf_size <= arena.len(): the
        // pointer stays inside the arena mapping, whose base is non-null.
        let ptr = unsafe { NonNull::new_unchecked(inner.arena.as_ptr().add(offset)) };
        let chunk = ChunkRef {
            pool: Arc::into_raw(Arc::clone(&self.inner)),
            idx,
        };
        // SAFETY: the chunk was free, so nothing else references [ptr, ptr + buf_size); the
        // new `ChunkRef` keeps the arena alive, and the memory is initialised (zeroed at
        // mapping time, then only ever written with initialised bytes).
        Ok(unsafe { BufMut::from_raw(ptr, inner.buf_size, Owner::Pool(chunk)) })
    }

    /// Size of each buffer in bytes.
    pub fn buf_size(&self) -> usize {
        self.inner.buf_size
    }

    /// Total number of buffers.
    pub fn capacity(&self) -> usize {
        self.inner.count
    }

    /// Number of buffers currently free (a snapshot; other threads may change it).
    pub fn available(&self) -> usize {
        self.inner.free.len()
    }

    /// Start of the pool's arena (to register the whole pool as one RDMA memory region).
    pub fn arena_ptr(&self) -> *const u8 {
        self.inner.arena.as_ptr().cast_const()
    }

    /// Length of the pool's arena in bytes (≥ `buf_size * capacity`, rounded to pages).
    pub fn arena_len(&self) -> usize {
        self.inner.arena.len()
    }

    /// What backs the arena (hugetlb, transparent hugepages or small pages).
    pub fn backing(&self) -> Backing {
        self.inner.arena.backing()
    }

    /// Whether `ptr` points into this pool's arena.
    pub fn contains(&self, ptr: *const u8) -> bool {
        let start = self.arena_ptr() as usize;
        let p = ptr as usize;
        p >= start && p - start < self.arena_len()
    }

    /// Pool handles plus allocated buffers (each holds the pool's memory alive). 1 means this
    /// handle is the only one left and no buffer of the pool is in use: whoever registered the
    /// arena (an RDMA stack) may let it go.
    pub fn handle_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }
}

impl fmt::Debug for BufPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufPool")
            .field("buf_size", &self.inner.buf_size)
            .field("count", &self.inner.count)
            .field("available", &self.available())
            .field("backing", &self.backing())
            .field("locked", &self.inner.arena.is_locked())
            .finish()
    }
}

/// One counted reference to an allocated pool chunk.
///
/// Every chunk that is out of the free stack owns one strong count of the pool's `Arc`
/// (taken in `alloc`, released when the chunk goes back), so `ChunkRef`s can use a raw
/// pointer and cloning one costs a single atomic increment on the chunk's own counter.
pub(super) struct ChunkRef {
    pool: *const PoolInner,
    idx: u32,
}

impl ChunkRef {
    /// A handle to the pool the chunk belongs to.
    pub(super) fn pool(&self) -> BufPool {
        // SAFETY: `pool` came from `Arc::into_raw` and the chunk owns one strong count (see
        // the type docs), so the allocation is alive; the increment gives the new handle a
        // count of its own before `from_raw` takes it.
        let inner = unsafe {
            Arc::increment_strong_count(self.pool);
            Arc::from_raw(self.pool)
        };
        BufPool { inner }
    }

    fn inner(&self) -> &PoolInner {
        // SAFETY: while this reference exists the chunk is allocated, and an allocated chunk
        // owns a strong count of the pool `Arc` (see the type docs), so the pointee is alive.
        unsafe { &*self.pool }
    }
}

// SAFETY: a ChunkRef is a counted handle whose operations are atomic increments/decrements
// and a push onto a lock-free stack; `PoolInner` is Send + Sync, so the handle may move to
// and be shared with any thread.
unsafe impl Send for ChunkRef {}
// SAFETY: see `Send`; `&ChunkRef` only allows the same thread-safe operations.
unsafe impl Sync for ChunkRef {}

impl Clone for ChunkRef {
    fn clone(&self) -> Self {
        // Relaxed like `Arc::clone`: we already hold a reference, so the chunk can't be freed.
        let old = self
            .inner()
            .meta(self.idx)
            .refs
            .fetch_add(1, Ordering::Relaxed);
        if old > MAX_REFS {
            std::process::abort();
        }
        ChunkRef {
            pool: self.pool,
            idx: self.idx,
        }
    }
}

impl Drop for ChunkRef {
    fn drop(&mut self) {
        let inner = self.inner();
        if inner.meta(self.idx).refs.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Make every other holder's accesses to the chunk happen-before its reuse.
        atomic::fence(Ordering::Acquire);
        inner.free.push(self.idx);
        // SAFETY: `pool` came from `Arc::into_raw` in `alloc`, and this was the chunk's last
        // reference, so we own the strong count it carried. Nothing touches `inner` after this.
        drop(unsafe { Arc::from_raw(self.pool) });
    }
}
