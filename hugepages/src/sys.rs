//! Thin, minimal wrappers around the libc memory-management calls used by this crate.
//!
//! Every `unsafe` FFI call of the crate lives here; the rest of the crate only sees
//! `io::Result`s and raw pointers.

use std::io;
use std::ptr::{self, NonNull};

/// The kernel's base page size (4 KiB on x86-64), falling back to 4096 if `sysconf` fails.
pub(crate) fn base_page_size() -> usize {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(v).ok().filter(|&v| v > 0).unwrap_or(4096)
}

/// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|extra_flags, -1, 0)`.
pub(crate) fn mmap_anon(len: usize, extra_flags: libc::c_int) -> io::Result<NonNull<u8>> {
    // SAFETY: a fresh private anonymous mapping with a NULL address hint cannot alias or
    // replace any existing memory (no MAP_FIXED); the kernel picks the address.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | extra_flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))
}

/// `munmap(ptr, len)`.
///
/// # Safety
/// `[ptr, ptr+len)` must be (part of) a mapping owned by the caller that nothing references
/// any more.
pub(crate) unsafe fn munmap(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: guaranteed by the caller (range owned and unreferenced).
    let rc = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `madvise(ptr, len, advice)`.
///
/// # Safety
/// `[ptr, ptr+len)` must be a mapping owned by the caller, and `advice` must not discard
/// contents the caller still relies on (only `MADV_HUGEPAGE` / `MADV_POPULATE_WRITE` are used).
pub(crate) unsafe fn madvise(ptr: NonNull<u8>, len: usize, advice: libc::c_int) -> io::Result<()> {
    // SAFETY: guaranteed by the caller.
    let rc = unsafe { libc::madvise(ptr.as_ptr().cast(), len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `mlock(ptr, len)`.
///
/// # Safety
/// `[ptr, ptr+len)` must be a mapping owned by the caller.
pub(crate) unsafe fn mlock(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: guaranteed by the caller; mlock does not change the contents of the range.
    let rc = unsafe { libc::mlock(ptr.as_ptr().cast_const().cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `munlock(ptr, len)`.
///
/// # Safety
/// `[ptr, ptr+len)` must be a mapping owned by the caller.
pub(crate) unsafe fn munlock(ptr: NonNull<u8>, len: usize) -> io::Result<()> {
    // SAFETY: guaranteed by the caller; munlock does not change the contents of the range.
    let rc = unsafe { libc::munlock(ptr.as_ptr().cast_const().cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes one zero byte per `step` bytes to fault the range in.
///
/// # Safety
/// `[ptr, ptr+len)` must be writable memory owned by the caller, already zero (fresh
/// anonymous mapping), and not referenced elsewhere.
pub(crate) unsafe fn touch_pages(ptr: NonNull<u8>, len: usize, step: usize) {
    let step = step.max(1);
    let mut off = 0;
    while off < len {
        // SAFETY: off < len, so the byte is inside the caller-owned writable range; writing
        // zero over zero keeps the contents unchanged.
        unsafe { ptr::write_volatile(ptr.as_ptr().add(off), 0) };
        off += step;
    }
}

/// Soft and hard `RLIMIT_MEMLOCK`, in bytes (`None` = unlimited), or `None` if unreadable.
pub(crate) fn memlock_limit() -> Option<(Option<libc::rlim_t>, Option<libc::rlim_t>)> {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid, properly typed `rl` we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
    if rc != 0 {
        return None;
    }
    let conv = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    Some((conv(rl.rlim_cur), conv(rl.rlim_max)))
}

/// Effective user id (used by tests to decide what to expect from `mlock`).
#[cfg(test)]
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
