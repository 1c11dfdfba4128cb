//! Asymmetric memory barriers for the doorbell's park protocol.
//!
//! The protocol (see [`super::doorbell`]) is Dekker's: each side stores its flag, then needs a
//! full (StoreLoad) barrier before it loads the other side's flag. The producer side runs on
//! every push; the consumer side only when an event loop is about to sleep. On Linux,
//! `membarrier(2)` with `MEMBARRIER_CMD_PRIVATE_EXPEDITED` lets the rare side pay for both: it
//! makes every running thread of the process execute a full memory barrier before it returns.
//! The hot side then needs only a compiler fence (the CPU may reorder its store and load, but
//! the consumer's `membarrier` orders them for it) — the same split as the kernel's
//! `smp_mb()`/`barrier()` pairing in userspace RCU and Folly's `asymmetricHeavyBarrier`.
//!
//! Where `membarrier` is not available (old kernels, seccomp filters that deny it), both sides
//! use a `SeqCst` fence: the symmetric protocol that the `loom` models check. Under `--cfg
//! loom` the symmetric protocol is always used.

#[cfg(not(loom))]
mod imp {
    use std::sync::atomic::{compiler_fence, fence, AtomicU8, Ordering};
    use std::sync::OnceLock;

    // From <linux/membarrier.h>.
    const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
    const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    /// 0: not probed, 1: membarrier in use, 2: symmetric fences.
    static MODE: AtomicU8 = AtomicU8::new(0);
    static PROBE: OnceLock<bool> = OnceLock::new();

    fn membarrier(cmd: libc::c_int) -> libc::c_long {
        // SAFETY: membarrier takes (cmd, flags, cpu_id) by value and touches no user memory.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_uint,
                0 as libc::c_int,
            )
        }
    }

    /// Probes and registers once per process. Must run before either barrier is used: a
    /// [`Doorbell`](super::super::Doorbell) calls it when it is created, and every use of the
    /// barriers goes through a doorbell.
    pub(crate) fn init() {
        let on = *PROBE.get_or_init(|| {
            let supported = membarrier(MEMBARRIER_CMD_QUERY);
            let ok = supported >= 0
                && supported & libc::c_long::from(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0
                && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0;
            if !ok {
                tracing::debug!(
                    "membarrier(PRIVATE_EXPEDITED) unavailable: doorbells use SeqCst fences on both sides"
                );
            }
            ok
        });
        MODE.store(if on { 1 } else { 2 }, Ordering::Release);
    }

    /// True when the asymmetric (membarrier) protocol can be used in this process.
    #[inline(always)]
    pub(crate) fn asymmetric() -> bool {
        MODE.load(Ordering::Relaxed) == 1
    }

    /// The hot side's StoreLoad barrier; `asym` only where [`asymmetric`] said true.
    #[inline(always)]
    pub(crate) fn light(asym: bool) {
        if asym {
            compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
    }

    /// The rare side's StoreLoad barrier, which with `asym` also orders the hot side's
    /// accesses.
    #[inline]
    pub(crate) fn heavy(asym: bool) {
        if asym && membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 {
            // Cannot happen once registration succeeded (the kernel only fails
            // unregistered or unsupported commands); if it ever does, producers may have
            // skipped their fence, so keep a loud trace of it.
            tracing::error!(
                error = %std::io::Error::last_os_error(),
                "membarrier failed after registration"
            );
        }
        fence(Ordering::SeqCst);
    }
}

#[cfg(loom)]
mod imp {
    use super::super::sync::{fence, Ordering};

    pub(crate) fn init() {}

    pub(crate) fn asymmetric() -> bool {
        false
    }

    pub(crate) fn light(_asym: bool) {
        fence(Ordering::SeqCst);
    }

    pub(crate) fn heavy(_asym: bool) {
        fence(Ordering::SeqCst);
    }
}

pub(crate) use imp::{asymmetric, heavy, init, light};
