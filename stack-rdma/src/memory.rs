//! Registered message memory: hugepage arenas, each registered **once** with the protection
//! domain as one memory region, carved into fixed-size slots. Sockets take their send and
//! receive slots from here; nothing is registered per message or per connection.
//!
//! [`PoolRegions`] registers the arenas of the messenger's (or the application's)
//! [`BufPool`]s, once per protection domain, so that a `Buf` in one of them is sent straight
//! from where it is (zero-copy).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dataplane::buf::{Buf, BufPool};
use hugepages::{Arena, ArenaOptions, PageSize};
use parking_lot::Mutex;
use sideway::ibverbs::memory_region::MemoryRegion;
use sideway::ibverbs::protection_domain::ProtectionDomain;
use sideway::ibverbs::AccessFlags;

use crate::RdmaError;

/// One registered slot: where it is and the key the NIC needs to touch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slot {
    /// Virtual address of the first byte.
    pub(crate) addr: u64,
    /// Local key of the arena's memory region.
    pub(crate) lkey: u32,
}

/// An arena and its registration. Field order matters: the MR is deregistered before the
/// arena is unmapped.
struct RegisteredArena {
    mr: Arc<MemoryRegion>,
    _arena: Arena,
    start: u64,
    end: u64,
}

struct Inner {
    arenas: Vec<RegisteredArena>,
    free: Vec<Slot>,
    total: usize,
}

/// Registered slots of one protection domain, shared by every socket of a stack.
pub(crate) struct SlotPool {
    pd: Arc<ProtectionDomain>,
    /// How arenas are registered: local write, plus memory-window binding for write chunks.
    access: AccessFlags,
    slot_size: usize,
    arena_bytes: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for SlotPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.inner.lock();
        f.debug_struct("SlotPool")
            .field("slot_size", &self.slot_size)
            .field("arenas", &g.arenas.len())
            .field("free", &g.free.len())
            .field("total", &g.total)
            .finish()
    }
}

impl SlotPool {
    /// Slots for sends and receives: registered for local access only.
    pub(crate) fn new(pd: Arc<ProtectionDomain>, slot_size: usize, arena_bytes: usize) -> Self {
        Self::with_access(pd, slot_size, arena_bytes, AccessFlags::LocalWrite)
    }

    /// Write chunks: registered for local access and memory-window binding, never for remote
    /// access (the peer writes a chunk only through a window bound to its own QP).
    pub(crate) fn for_windows(
        pd: Arc<ProtectionDomain>,
        slot_size: usize,
        arena_bytes: usize,
    ) -> Self {
        Self::with_access(
            pd,
            slot_size,
            arena_bytes,
            AccessFlags::LocalWrite | AccessFlags::MemoryWindowBind,
        )
    }

    fn with_access(
        pd: Arc<ProtectionDomain>,
        slot_size: usize,
        arena_bytes: usize,
        access: AccessFlags,
    ) -> Self {
        SlotPool {
            pd,
            access,
            slot_size,
            arena_bytes: arena_bytes.max(slot_size),
            inner: Mutex::new(Inner {
                arenas: Vec::new(),
                free: Vec::new(),
                total: 0,
            }),
        }
    }

    /// Bytes per slot.
    pub(crate) fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Takes `n` slots, mapping and registering a new arena when the free list is short.
    pub(crate) fn take(&self, n: usize) -> Result<Vec<Slot>, RdmaError> {
        let mut g = self.inner.lock();
        while g.free.len() < n {
            let want = (n - g.free.len()) * self.slot_size;
            let size = self.arena_bytes.max(want);
            let arena = Arena::map(&ArenaOptions {
                size,
                page_size: PageSize::Huge2M,
                lock: false,
                allow_fallback: true,
                populate: true,
            })
            .map_err(|e| RdmaError::Memory(format!("cannot map a {size}-byte arena: {e}")))?;
            // SAFETY: the arena's mapping is valid for `arena.len()` bytes and stays mapped
            // until the `RegisteredArena` is dropped, which drops the MR first.
            let mr = unsafe {
                self.pd
                    .reg_mr(arena.as_ptr() as usize, arena.len(), self.access)
            }
            .map_err(|e| {
                RdmaError::Memory(format!(
                    "cannot register a {}-byte arena (check `ulimit -l`): {e}",
                    arena.len()
                ))
            })?;
            let base = arena.as_ptr() as u64;
            let count = arena.len() / self.slot_size;
            let lkey = mr.lkey();
            tracing::debug!(
                bytes = arena.len(),
                slots = count,
                "registered an RDMA arena"
            );
            g.free.extend((0..count).rev().map(|i| Slot {
                addr: base + (i * self.slot_size) as u64,
                lkey,
            }));
            g.total += count;
            g.arenas.push(RegisteredArena {
                mr,
                start: base,
                end: base + arena.len() as u64,
                _arena: arena,
            });
        }
        let at = g.free.len() - n;
        Ok(g.free.split_off(at))
    }

    /// Returns slots. Only after the queue pair that used them is destroyed.
    pub(crate) fn give_back(&self, slots: &mut Vec<Slot>) {
        self.inner.lock().free.append(slots);
    }

    /// Returns one slot (a lent receive buffer the messenger let go of).
    pub(crate) fn give_back_one(&self, slot: Slot) {
        self.inner.lock().free.push(slot);
    }

    /// The local key of the arena holding `start..end`, if one of ours does (a lent slot sent
    /// on: its bytes are registered memory already).
    pub(crate) fn lkey_of(&self, start: u64, end: u64) -> Option<u32> {
        self.with_region(start, end, |mr| mr.lkey())
    }

    /// The memory region of the arena `slot` belongs to.
    pub(crate) fn region_of(&self, slot: Slot) -> Option<Arc<MemoryRegion>> {
        self.with_region(slot.addr, slot.addr + self.slot_size as u64, Arc::clone)
    }

    /// `f` of the memory region of the arena holding `start..end`, if one of ours does.
    fn with_region<T>(
        &self,
        start: u64,
        end: u64,
        f: impl FnOnce(&Arc<MemoryRegion>) -> T,
    ) -> Option<T> {
        let g = self.inner.lock();
        g.arenas
            .iter()
            .find(|a| start >= a.start && end <= a.end)
            .map(|a| f(&a.mr))
    }

    /// (registered arenas, slots in use).
    pub(crate) fn usage(&self) -> (usize, usize) {
        let g = self.inner.lock();
        (g.arenas.len(), g.total - g.free.len())
    }
}

/// Keeps a receive slot lent to the messenger (`BufMut::lent`) and returns it to the pool
/// when the last view of it is dropped, on whatever thread.
pub(crate) struct LentSlot {
    pub(crate) slot: Slot,
    pub(crate) pool: Arc<SlotPool>,
    pub(crate) stats: Arc<crate::RdmaStats>,
}

impl Drop for LentSlot {
    fn drop(&mut self) {
        self.pool.give_back_one(self.slot);
        self.stats.lent_outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's RDMA WRITE landing buffer: its own memory region, the only one registered
/// with remote-write access, so the rkey the peer learns covers this buffer and nothing else.
/// Registered once per connection (at set-up), never per message.
pub(crate) struct WriteRegion {
    /// Deregistered before the arena is unmapped (field order).
    mr: Arc<MemoryRegion>,
    _arena: Arena,
    base: u64,
    len: usize,
}

impl std::fmt::Debug for WriteRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteRegion")
            .field("base", &self.base)
            .field("len", &self.len)
            .field("rkey", &self.mr.rkey())
            .finish()
    }
}

impl WriteRegion {
    /// Maps `len` bytes (hugepages when available) and registers them for local and remote
    /// write.
    pub(crate) fn new(pd: &Arc<ProtectionDomain>, len: usize) -> Result<WriteRegion, RdmaError> {
        let arena = Arena::map(&ArenaOptions {
            size: len,
            page_size: PageSize::Huge2M,
            lock: false,
            allow_fallback: true,
            populate: true,
        })
        .map_err(|e| RdmaError::Memory(format!("cannot map a {len}-byte write buffer: {e}")))?;
        // SAFETY: the arena's mapping is valid for `arena.len()` bytes and stays mapped until
        // this `WriteRegion` is dropped, which drops the MR first.
        let mr = unsafe {
            pd.reg_mr(
                arena.as_ptr() as usize,
                len,
                AccessFlags::LocalWrite | AccessFlags::RemoteWrite,
            )
        }
        .map_err(|e| {
            RdmaError::Memory(format!(
                "cannot register a {len}-byte write buffer (check `ulimit -l`): {e}"
            ))
        })?;
        Ok(WriteRegion {
            base: arena.as_ptr() as u64,
            mr,
            _arena: arena,
            len,
        })
    }

    /// Address of the first byte.
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// The remote key the peer writes with.
    pub(crate) fn rkey(&self) -> u32 {
        self.mr.rkey()
    }
}

/// A [`BufPool`] arena registered with the protection domain. Field order: the MR is
/// deregistered before the pool handle (perhaps the last one, unmapping the arena) goes.
struct PoolRegion {
    /// `None`: registration failed once; the pool's buffers are copied (never retried).
    mr: Option<Arc<MemoryRegion>>,
    /// Keeps the arena mapped while it is registered.
    pool: BufPool,
    key: RegionKey,
}

/// Where a registered pool arena is and its local key, as sockets cache it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegionKey {
    start: u64,
    end: u64,
    /// `None` when the arena could not be registered.
    lkey: Option<u32>,
}

/// The `BufPool` arenas registered with one protection domain, shared by every socket of a
/// stack. Each arena is registered the first time a `Buf` of its pool is sent, and stays
/// registered (its pool kept alive) until a later registration finds the pool unused (no
/// handle and no buffer left but ours), when it is deregistered and let go.
pub(crate) struct PoolRegions {
    pd: Arc<ProtectionDomain>,
    regions: Mutex<Vec<PoolRegion>>,
    /// Bumped whenever `regions` changes, so sockets know when to refresh their copy.
    gen: AtomicU64,
}

impl std::fmt::Debug for PoolRegions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolRegions")
            .field("regions", &self.regions.lock().len())
            .finish()
    }
}

impl PoolRegions {
    pub(crate) fn new(pd: Arc<ProtectionDomain>) -> PoolRegions {
        PoolRegions {
            pd,
            regions: Mutex::new(Vec::new()),
            gen: AtomicU64::new(0),
        }
    }

    /// Pool arenas registered now (those whose registration failed not counted).
    pub(crate) fn registered(&self) -> usize {
        self.regions
            .lock()
            .iter()
            .filter(|r| r.mr.is_some())
            .count()
    }

    /// Registers the arena of `pool` unless it is known already. Never fails: an arena that
    /// cannot be registered is remembered as such and its buffers are copied.
    fn register(&self, pool: BufPool) {
        let mut g = self.regions.lock();
        let start = pool.arena_ptr() as u64;
        if g.iter().any(|r| r.key.start == start) {
            return;
        }
        // Pools nobody uses any more (our handle is the last reference: no buffer is in
        // flight either) are deregistered and let go.
        g.retain(|r| r.pool.handle_count() > 1);
        let len = pool.arena_len();
        // SAFETY: the arena is mapped for `arena_len()` bytes and stays mapped while the
        // `PoolRegion` holds its pool handle; the region drops the MR before that handle.
        let mr = unsafe { self.pd.reg_mr(start as usize, len, AccessFlags::LocalWrite) };
        let mr = match mr {
            Ok(mr) => {
                tracing::debug!(
                    bytes = len,
                    "registered a buffer pool arena for zero-copy sends"
                );
                Some(mr)
            }
            Err(e) => {
                tracing::warn!(bytes = len, error = %e, "cannot register a buffer pool arena (check `ulimit -l`); its buffers are copied");
                None
            }
        };
        let key = RegionKey {
            start,
            end: start + len as u64,
            lkey: mr.as_ref().map(|m| m.lkey()),
        };
        g.push(PoolRegion { mr, pool, key });
        self.gen.fetch_add(1, Ordering::Release);
    }
}

/// A socket's copy of its stack's [`PoolRegions`], refreshed when they change.
#[derive(Debug)]
pub(crate) struct RegionCache {
    keys: Vec<RegionKey>,
    gen: u64,
}

impl Default for RegionCache {
    fn default() -> Self {
        RegionCache {
            keys: Vec::new(),
            gen: u64::MAX,
        }
    }
}

impl RegionCache {
    /// Catches up with `regions` if they changed since the last call.
    pub(crate) fn refresh(&mut self, regions: &PoolRegions) {
        if regions.gen.load(Ordering::Acquire) == self.gen {
            return;
        }
        let g = regions.regions.lock();
        self.gen = regions.gen.load(Ordering::Acquire);
        self.keys.clear();
        self.keys.extend(g.iter().map(|r| r.key));
    }

    fn find(&self, start: u64, end: u64) -> Option<Option<u32>> {
        self.keys
            .iter()
            .find(|k| start >= k.start && end <= k.end)
            .map(|k| k.lkey)
    }

    /// The local key under which `bytes` (inside `buf`) can be sent straight from where they
    /// are, registering `buf`'s pool arena the first time one of its buffers is seen. `None`
    /// for heap or static buffers, or an arena that could not be registered: copy those.
    ///
    /// Call [`RegionCache::refresh`] first in each send call, so that a region let go since
    /// is never used (a region is only let go when no buffer of its pool exists, so the one
    /// in hand keeps its own region alive).
    pub(crate) fn lkey(&mut self, regions: &PoolRegions, buf: &Buf, bytes: &[u8]) -> Option<u32> {
        let start = bytes.as_ptr() as u64;
        let end = start + bytes.len() as u64;
        if let Some(k) = self.find(start, end) {
            return k;
        }
        regions.register(buf.pool()?);
        self.refresh(regions);
        self.find(start, end).flatten()
    }
}
