//! Error type of the crate.

use std::io;
use std::path::PathBuf;

use crate::PageSize;

/// Everything that can go wrong while mapping, locking or inspecting hugepage memory.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HugePageError {
    /// `ArenaOptions::size` was 0.
    #[error("invalid arena size 0: an arena must be at least one byte long")]
    ZeroSize,

    /// Rounding the requested size up to the page size overflowed `usize`.
    #[error("arena size of {size} bytes cannot be rounded up to a multiple of {page_size} bytes")]
    SizeOverflow {
        /// Requested size in bytes.
        size: usize,
        /// Page size it had to be rounded to.
        page_size: usize,
    },

    /// Hugetlb pages were requested with `allow_fallback = false` and the kernel refused them.
    #[error(
        "cannot map {len} bytes with {page_size} hugepages and fallback is disabled: \
         {needed} pages needed, {free} free of {total} reserved ({source}); \
         reserve them with `{hint}` or set allow_fallback"
    )]
    Unavailable {
        /// Requested hugepage size.
        page_size: PageSize,
        /// Mapping length in bytes (already rounded up).
        len: usize,
        /// Number of hugepages the mapping needs.
        needed: u64,
        /// Free hugepages of that size at the time of the failure.
        free: u64,
        /// Reserved hugepages of that size at the time of the failure.
        total: u64,
        /// Shell command that would reserve enough pages.
        hint: String,
        /// The `mmap` error.
        source: io::Error,
    },

    /// A plain (non-hugetlb) `mmap` failed.
    #[error("mmap of {len} bytes ({what}) failed: {source}")]
    Map {
        /// Mapping length in bytes.
        len: usize,
        /// Which mapping was attempted.
        what: &'static str,
        /// The `mmap` error.
        source: io::Error,
    },

    /// `mlock` failed, usually because of `RLIMIT_MEMLOCK`.
    #[error(
        "mlock of {len} bytes failed ({source}); RLIMIT_MEMLOCK is {limit}: raise it with \
         `ulimit -l unlimited` (memlock in /etc/security/limits.conf, LimitMEMLOCK= for \
         systemd units) or grant CAP_IPC_LOCK"
    )]
    Lock {
        /// Length that could not be locked.
        len: usize,
        /// Human-readable soft/hard `RLIMIT_MEMLOCK`.
        limit: String,
        /// The `mlock` error.
        source: io::Error,
    },

    /// A hugepage counter in sysfs could not be read.
    #[error("cannot read hugepage counter {path}: {source}")]
    StatusRead {
        /// The sysfs file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },

    /// A hugepage counter in sysfs did not hold an integer.
    #[error("hugepage counter {path} holds {value:?}, not an integer")]
    StatusParse {
        /// The sysfs file.
        path: PathBuf,
        /// Its (trimmed) contents.
        value: String,
    },
}
