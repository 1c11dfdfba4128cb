//! Registered message memory: hugepage arenas, each registered **once** with the protection
//! domain as one memory region, carved into fixed-size slots. Sockets take their send and
//! receive slots from here; nothing is registered per message or per connection.

use std::sync::Arc;

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
    _mr: Arc<MemoryRegion>,
    _arena: Arena,
}

struct Inner {
    arenas: Vec<RegisteredArena>,
    free: Vec<Slot>,
    total: usize,
}

/// Registered slots of one protection domain, shared by every socket of a stack.
pub(crate) struct SlotPool {
    pd: Arc<ProtectionDomain>,
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
    pub(crate) fn new(pd: Arc<ProtectionDomain>, slot_size: usize, arena_bytes: usize) -> Self {
        SlotPool {
            pd,
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
                self.pd.reg_mr(
                    arena.as_ptr() as usize,
                    arena.len(),
                    AccessFlags::LocalWrite,
                )
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
                _mr: mr,
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

    /// (registered arenas, slots in use).
    pub(crate) fn usage(&self) -> (usize, usize) {
        let g = self.inner.lock();
        (g.arenas.len(), g.total - g.free.len())
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
