//! The [`Arena`] type: one anonymous mapping, hugetlb-backed when possible.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Once;

use crate::{status, sys, HugePageError};

/// Size of a transparent hugepage on x86-64 / aarch64 with 4 KiB base pages.
const THP_SIZE: usize = 2 << 20;

/// The hugepage size to request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PageSize {
    /// 2 MiB hugetlb pages (`MAP_HUGE_2MB`).
    Huge2M,
    /// 1 GiB hugetlb pages (`MAP_HUGE_1GB`).
    Huge1G,
    /// Plain base pages (4 KiB): no hugetlb attempt and no transparent-hugepage advice.
    /// The arena's backing is always [`Backing::Small`].
    Base,
}

impl PageSize {
    /// Size in bytes of one page of this kind.
    pub fn bytes(self) -> usize {
        match self {
            PageSize::Huge2M => 2 << 20,
            PageSize::Huge1G => 1 << 30,
            PageSize::Base => sys::base_page_size(),
        }
    }

    /// Shell command that reserves `pages` hugepages of this size.
    fn reserve_hint(self, pages: u64) -> String {
        match self {
            PageSize::Huge2M => format!("echo {pages} > /proc/sys/vm/nr_hugepages"),
            PageSize::Huge1G => {
                format!("echo {pages} > /sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
            }
            PageSize::Base => String::from("nothing to reserve for base pages"),
        }
    }
}

impl fmt::Display for PageSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageSize::Huge2M => f.write_str("2 MiB"),
            PageSize::Huge1G => f.write_str("1 GiB"),
            PageSize::Base => f.write_str("base (4 KiB)"),
        }
    }
}

/// What actually backs an [`Arena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backing {
    /// Reserved 2 MiB hugetlb pages.
    Hugetlb2M,
    /// Reserved 1 GiB hugetlb pages.
    Hugetlb1G,
    /// Base pages advised with `MADV_HUGEPAGE`; the kernel may (not must) use 2 MiB THPs.
    TransparentHuge,
    /// Plain base pages.
    Small,
}

impl Backing {
    /// True for reserved hugetlb pages (guaranteed huge, never swapped).
    pub fn is_hugetlb(self) -> bool {
        matches!(self, Backing::Hugetlb2M | Backing::Hugetlb1G)
    }
}

/// Parameters of [`Arena::map`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaOptions {
    /// Requested size in bytes; rounded up to the page size. 0 is invalid.
    pub size: usize,
    /// Hugepage size to ask for.
    pub page_size: PageSize,
    /// `mlock` the whole arena after mapping it.
    pub lock: bool,
    /// Fall back to base pages (+ transparent-hugepage advice) when no hugetlb pages can be
    /// mapped, instead of failing.
    pub allow_fallback: bool,
    /// Fault every page in up front (`MAP_POPULATE` / `MADV_POPULATE_WRITE`).
    pub populate: bool,
}

impl Default for ArenaOptions {
    /// `size` 0 (must be set), 2 MiB pages, no lock, fallback allowed, no populate.
    fn default() -> Self {
        ArenaOptions {
            size: 0,
            page_size: PageSize::Huge2M,
            lock: false,
            allow_fallback: true,
            populate: false,
        }
    }
}

/// One anonymous, zero-initialised, read/write memory mapping.
///
/// The arena owns the mapping; dropping it unlocks (if locked) and unmaps it. The memory
/// is reachable only through the raw pointer from [`Arena::as_ptr`]; the arena itself never
/// creates references to it, so callers may hand out disjoint sub-ranges to other threads.
pub struct Arena {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
    locked: bool,
}

// SAFETY: the arena exclusively owns its mapping and only hands out a raw pointer; it holds no
// thread-affine state, so moving it to another thread is sound.
unsafe impl Send for Arena {}
// SAFETY: all `&self` methods only read plain fields; access to the memory itself goes through
// the raw pointer, whose synchronisation is the caller's responsibility.
unsafe impl Sync for Arena {}

static FALLBACK_WARNING: Once = Once::new();

fn round_up(size: usize, to: usize) -> Result<usize, HugePageError> {
    size.checked_next_multiple_of(to)
        .ok_or(HugePageError::SizeOverflow {
            size,
            page_size: to,
        })
}

impl Arena {
    /// Maps a new arena as described by `opts`.
    ///
    /// Hugetlb is tried first (`MAP_HUGETLB | MAP_HUGE_2MB/1GB`, length rounded up to the
    /// page size). If that fails and `allow_fallback` is set, the arena is mapped with base
    /// pages (length rounded up to 2 MiB, start aligned to 2 MiB) and advised with
    /// `MADV_HUGEPAGE`; a warning explaining how to reserve hugepages is logged once per
    /// process. With [`PageSize::Base`] base pages are mapped directly.
    ///
    /// # Errors
    /// [`HugePageError::ZeroSize`], [`HugePageError::SizeOverflow`],
    /// [`HugePageError::Unavailable`] (no hugepages and no fallback),
    /// [`HugePageError::Map`] (fallback mapping failed) or [`HugePageError::Lock`].
    pub fn map(opts: &ArenaOptions) -> Result<Arena, HugePageError> {
        if opts.size == 0 {
            return Err(HugePageError::ZeroSize);
        }
        let mut arena = match opts.page_size {
            PageSize::Base => Self::map_base(opts.size, opts.populate, false)?,
            PageSize::Huge2M | PageSize::Huge1G => match Self::map_hugetlb(opts)? {
                Ok(arena) => arena,
                Err(err) if opts.allow_fallback => {
                    FALLBACK_WARNING.call_once(|| {
                        tracing::warn!(
                            page_size = %opts.page_size,
                            size = opts.size,
                            error = %err,
                            "hugepages are not reserved (or exhausted); falling back to 4 KiB \
                             pages with transparent-hugepage advice. Reserve hugepages with \
                             `{}` (as root) for guaranteed, unswappable hugepage memory",
                            opts.page_size.reserve_hint(512),
                        );
                    });
                    tracing::debug!(size = opts.size, error = %err, "hugetlb mapping failed, using fallback");
                    Self::map_base(opts.size, opts.populate, true)?
                }
                Err(err) => return Err(err),
            },
        };
        if opts.lock {
            arena.lock()?;
        }
        tracing::debug!(
            len = arena.len,
            backing = ?arena.backing,
            locked = arena.locked,
            "mapped arena"
        );
        Ok(arena)
    }

    /// Tries a hugetlb mapping. Outer error: invalid size. Inner error: the kernel refused.
    fn map_hugetlb(opts: &ArenaOptions) -> Result<Result<Arena, HugePageError>, HugePageError> {
        let page = opts.page_size.bytes();
        let len = round_up(opts.size, page)?;
        let (size_flag, backing) = match opts.page_size {
            PageSize::Huge1G => (libc::MAP_HUGE_1GB, Backing::Hugetlb1G),
            PageSize::Huge2M | PageSize::Base => (libc::MAP_HUGE_2MB, Backing::Hugetlb2M),
        };
        let mut flags = libc::MAP_HUGETLB | size_flag;
        if opts.populate {
            flags |= libc::MAP_POPULATE;
        }
        match sys::mmap_anon(len, flags) {
            Ok(ptr) => Ok(Ok(Arena {
                ptr,
                len,
                backing,
                locked: false,
            })),
            Err(source) => {
                let st = status().unwrap_or_default();
                let (free, total) = match opts.page_size {
                    PageSize::Huge1G => (st.free_1g, st.total_1g),
                    PageSize::Huge2M | PageSize::Base => (st.free_2m, st.total_2m),
                };
                let needed = (len / page) as u64;
                let hint = opts
                    .page_size
                    .reserve_hint(total + needed.saturating_sub(free));
                Ok(Err(HugePageError::Unavailable {
                    page_size: opts.page_size,
                    len,
                    needed,
                    free,
                    total,
                    hint,
                    source,
                }))
            }
        }
    }

    /// Maps base pages; with `thp`, rounds/aligns to 2 MiB and advises `MADV_HUGEPAGE`.
    fn map_base(size: usize, populate: bool, thp: bool) -> Result<Arena, HugePageError> {
        let base = sys::base_page_size();
        let (ptr, len) = if thp {
            let len = round_up(size, THP_SIZE)?;
            (Self::map_aligned(len, THP_SIZE)?, len)
        } else {
            let len = round_up(size, base)?;
            let ptr = sys::mmap_anon(len, 0).map_err(|source| HugePageError::Map {
                len,
                what: "anonymous base pages",
                source,
            })?;
            (ptr, len)
        };
        let mut arena = Arena {
            ptr,
            len,
            backing: Backing::Small,
            locked: false,
        };
        if thp {
            // SAFETY: the range is the mapping we just created and own; MADV_HUGEPAGE only
            // changes how it is backed, never its contents.
            match unsafe { sys::madvise(ptr, len, libc::MADV_HUGEPAGE) } {
                Ok(()) if thp_enabled() => arena.backing = Backing::TransparentHuge,
                Ok(()) => tracing::debug!("transparent hugepages are disabled system-wide"),
                Err(e) => tracing::debug!(error = %e, "madvise(MADV_HUGEPAGE) failed"),
            }
        }
        if populate {
            // SAFETY: our own fresh mapping; MADV_POPULATE_WRITE only faults pages in.
            if let Err(e) = unsafe { sys::madvise(ptr, len, libc::MADV_POPULATE_WRITE) } {
                tracing::debug!(error = %e, "MADV_POPULATE_WRITE unsupported, touching pages");
                // SAFETY: fresh, zeroed, writable mapping of `len` bytes owned by `arena`
                // and not yet shared with anyone.
                unsafe { sys::touch_pages(ptr, len, base) };
            }
        }
        Ok(arena)
    }

    /// Maps `len` bytes (a multiple of `align`) starting at an `align`-aligned address by
    /// over-mapping and trimming the excess.
    fn map_aligned(len: usize, align: usize) -> Result<NonNull<u8>, HugePageError> {
        let map_err = |len, source| HugePageError::Map {
            len,
            what: "anonymous base pages for transparent hugepages",
            source,
        };
        let Some(over) = len.checked_add(align) else {
            return sys::mmap_anon(len, 0).map_err(|e| map_err(len, e));
        };
        let raw = sys::mmap_anon(over, 0).map_err(|e| map_err(over, e))?;
        let addr = raw.as_ptr() as usize;
        let head = addr.next_multiple_of(align) - addr;
        let tail = over - head - len;
        // `head < align <= over`, so the offset stays inside the mapping.
        let start = raw.as_ptr().wrapping_add(head);
        let Some(start) = NonNull::new(start) else {
            return Err(map_err(
                over,
                std::io::Error::other("aligned address is NULL"),
            ));
        };
        if head > 0 {
            // SAFETY: [raw, raw+head) is the unused head of the mapping we just created.
            if let Err(e) = unsafe { sys::munmap(raw, head) } {
                tracing::debug!(error = %e, "trimming arena head failed; leaving it mapped");
            }
        }
        if tail > 0 {
            let tail_ptr = start.as_ptr().wrapping_add(len);
            if let Some(tail_ptr) = NonNull::new(tail_ptr) {
                // SAFETY: [start+len, start+len+tail) is the unused tail of our mapping.
                if let Err(e) = unsafe { sys::munmap(tail_ptr, tail) } {
                    tracing::debug!(error = %e, "trimming arena tail failed; leaving it mapped");
                }
            }
        }
        Ok(start)
    }

    /// Start of the mapping (page aligned). Valid for [`Arena::len`] bytes while the arena
    /// lives.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length of the mapping in bytes (the requested size rounded up).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: arenas are never empty (size 0 is rejected).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// What the kernel actually gave us.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Whether the arena is `mlock`ed.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Pins the arena in RAM with `mlock` (no-op if already locked).
    ///
    /// # Errors
    /// [`HugePageError::Lock`] when the kernel refuses, typically because the arena exceeds
    /// `RLIMIT_MEMLOCK` (`ulimit -l`) and the process lacks `CAP_IPC_LOCK`.
    pub fn lock(&mut self) -> Result<(), HugePageError> {
        if self.locked {
            return Ok(());
        }
        // SAFETY: the range is exactly the mapping this arena owns.
        match unsafe { sys::mlock(self.ptr, self.len) } {
            Ok(()) => {
                self.locked = true;
                Ok(())
            }
            Err(source) => Err(HugePageError::Lock {
                len: self.len,
                limit: describe_memlock_limit(),
                source,
            }),
        }
    }
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .field("backing", &self.backing)
            .field("locked", &self.locked)
            .finish()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        if self.locked {
            // SAFETY: the range is exactly the mapping this arena owns.
            if let Err(e) = unsafe { sys::munlock(self.ptr, self.len) } {
                tracing::warn!(len = self.len, error = %e, "munlock of arena failed");
            }
        }
        // SAFETY: the arena owns the mapping and, being dropped, no longer hands out pointers
        // into it; users of `as_ptr` must not outlive the arena (documented contract).
        if let Err(e) = unsafe { sys::munmap(self.ptr, self.len) } {
            tracing::error!(len = self.len, error = %e, "munmap of arena failed; memory leaked");
        }
    }
}

fn describe_memlock_limit() -> String {
    let show = |v: Option<libc::rlim_t>| match v {
        None => String::from("unlimited"),
        Some(b) => format!("{b} bytes"),
    };
    match sys::memlock_limit() {
        Some((soft, hard)) => format!("{} (soft), {} (hard)", show(soft), show(hard)),
        None => String::from("unknown"),
    }
}

/// False only if `/sys/kernel/mm/transparent_hugepage/enabled` says `[never]`.
fn thp_enabled() -> bool {
    match std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") {
        Ok(s) => !s.contains("[never]"),
        Err(_) => false,
    }
}
