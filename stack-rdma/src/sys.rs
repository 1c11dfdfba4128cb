//! The few raw calls `sideway` does not wrap: completion-channel notification, forcing a queue
//! pair into the error state from any thread, and the per-socket eventfd used to raise a
//! writable event. Everything unsafe in this crate lives here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use rdma_mummy_sys as ffi;
use sideway::ibverbs::completion::{BasicCompletionQueue, CompletionChannel, CompletionQueue};

/// Asks for one completion event on `cq`'s channel at the next completion.
pub(crate) fn req_notify(cq: &BasicCompletionQueue) -> io::Result<()> {
    // SAFETY: `cq` is a live CQ (we hold a reference to its owner); `ibv_req_notify_cq` only
    // reads the CQ's context ops and writes provider state of this CQ.
    let rc = unsafe { ffi::ibv_req_notify_cq(cq.cq().as_ptr(), 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc.abs()))
    }
}

/// Takes the pending event, if any, from the (non-blocking) completion channel and
/// acknowledges it. One arming raises at most one event, so one read is enough.
pub(crate) fn drain_events(chan: &CompletionChannel, cq: &BasicCompletionQueue) -> io::Result<u32> {
    let mut ev_cq: *mut ffi::ibv_cq = std::ptr::null_mut();
    let mut ev_ctx: *mut libc::c_void = std::ptr::null_mut();
    // SAFETY: the channel is live and non-blocking; the out pointers are valid locals.
    let rc =
        unsafe { ffi::ibv_get_cq_event(chan.comp_channel().as_ptr(), &mut ev_cq, &mut ev_ctx) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(0),
            _ => Err(e),
        };
    }
    // Only one CQ is attached to each channel (ours), so `ev_cq` is `cq`.
    // SAFETY: acknowledging the event we just took from this CQ's channel; the CQ is live.
    unsafe { ffi::ibv_ack_cq_events(cq.cq().as_ptr(), 1) };
    Ok(1)
}

/// A raw queue-pair handle that may be moved to the error state from any thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QpHandle(pub(crate) usize);

impl QpHandle {
    /// Moves the QP to the error state: outstanding work requests are flushed with
    /// `IBV_WC_WR_FLUSH_ERR` and no more are executed.
    ///
    /// # Safety
    /// The QP must be live for the duration of the call (the stack's QP registry guarantees
    /// it: a socket removes its handle, under the registry lock, before destroying the QP).
    pub(crate) unsafe fn to_error(self) -> io::Result<()> {
        // SAFETY: an all-zero `ibv_qp_attr` is a valid value (plain C struct of integers).
        let mut attr: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = ffi::ibv_qp_state::IBV_QPS_ERR;
        let mask = ffi::ibv_qp_attr_mask::IBV_QP_STATE.0 as i32;
        // SAFETY: caller guarantees the QP is live; `attr` is a valid local.
        let rc = unsafe { ffi::ibv_modify_qp(self.0 as *mut ffi::ibv_qp, &mut attr, mask) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc.abs()))
        }
    }
}

/// A non-blocking eventfd: written to raise an event on the socket's token (readable and
/// writable: an eventfd is always writable, and epoll reports the full mask on every wake-up).
#[derive(Debug)]
pub(crate) struct Kick(OwnedFd);

impl Kick {
    pub(crate) fn new() -> io::Result<Kick> {
        // SAFETY: plain syscall, no pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        Ok(Kick(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Raises an event.
    pub(crate) fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid local to our own eventfd.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Clears the counter.
    pub(crate) fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid local from our own non-blocking eventfd.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
