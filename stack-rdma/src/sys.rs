//! The raw calls `sideway` does not wrap: completion-channel notification, forcing a queue
//! pair into the error state from any thread, the shared receive queue (`ibv_create_srq`,
//! `ibv_post_srq_recv`), queue pairs attached to it (`sideway`'s builder always passes a null
//! SRQ, so every QP is created, moved through its states and posted to here), and the
//! per-socket eventfd used to raise a writable event. Everything unsafe in this crate lives
//! here.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use rdma_mummy_sys as ffi;
use sideway::ibverbs::completion::{BasicCompletionQueue, CompletionChannel, CompletionQueue};
use sideway::ibverbs::protection_domain::ProtectionDomain;

/// Work completions per `ibv_poll_cq` call.
pub(crate) const WC_BATCH: usize = 32;

/// Room for the work completions of one `ibv_poll_cq` call.
pub(crate) type WcBatch = [MaybeUninit<ffi::ibv_wc>; WC_BATCH];

/// An empty [`WcBatch`], on the caller's stack (not even zeroed).
pub(crate) fn wc_batch() -> WcBatch {
    [MaybeUninit::uninit(); WC_BATCH]
}

/// Polls up to [`WC_BATCH`] completions of `cq` into `wcs` and returns the ones it got.
///
/// `sideway`'s `BasicCompletionQueue::start_poll` allocates a buffer of work completions on
/// every call, empty polls included; a busy-polling worker polls its CQs on every loop round,
/// so this polls into the caller's array instead.
pub(crate) fn poll_cq<'a>(
    cq: &BasicCompletionQueue,
    wcs: &'a mut WcBatch,
) -> io::Result<&'a [ffi::ibv_wc]> {
    // SAFETY: `cq` is a live CQ (we hold a reference to its owner); `ibv_poll_cq` writes at
    // most `WC_BATCH` entries into `wcs`, which has room for them (`MaybeUninit<T>` has the
    // layout of `T`).
    let rc =
        unsafe { ffi::ibv_poll_cq(cq.cq().as_ptr(), WC_BATCH as i32, wcs.as_mut_ptr().cast()) };
    let got = match usize::try_from(rc) {
        Ok(got) => got.min(WC_BATCH),
        Err(_) => return Err(io::Error::from_raw_os_error(rc.saturating_neg())),
    };
    // SAFETY: `ibv_poll_cq` initialised the first `got` entries.
    Ok(unsafe { std::slice::from_raw_parts(wcs.as_ptr().cast::<ffi::ibv_wc>(), got) })
}

/// The immediate data of a completion, in host byte order.
pub(crate) fn wc_imm(wc: &ffi::ibv_wc) -> u32 {
    // SAFETY: both members of the union are `u32`; any bit pattern is valid for either.
    u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data })
}

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

/// One receive work request: a registered buffer and the id its completion carries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecvWr {
    pub(crate) wr_id: u64,
    pub(crate) addr: u64,
    pub(crate) len: u32,
    pub(crate) lkey: u32,
}

/// One registered buffer a send work request gathers from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sge {
    pub(crate) addr: u64,
    pub(crate) len: u32,
    pub(crate) lkey: u32,
}

/// One SEND-with-immediate, or RDMA-WRITE-with-immediate when `remote` is set, gathering
/// `sge_n` buffers from `sge_at` of the SGE list given with the batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendWr {
    pub(crate) wr_id: u64,
    pub(crate) sge_at: u32,
    pub(crate) sge_n: u32,
    /// Immediate data, host order (converted to network order here).
    pub(crate) imm: u32,
    pub(crate) signaled: bool,
    pub(crate) inline: bool,
    /// RDMA WRITE target: (remote address, remote key).
    pub(crate) remote: Option<(u64, u32)>,
}

/// Most receive WRs chained into one post call. The chain is built on the stack, so posting
/// receives allocates nothing (they are re-posted on every read).
const RECV_CHAIN: usize = 16;

/// Posts the WRs of `batch` as chains of up to [`RECV_CHAIN`], each through `post` (which is
/// handed the chain's head and returns the verbs call's result code).
fn post_recv_chains(
    batch: impl IntoIterator<Item = RecvWr>,
    mut post: impl FnMut(*mut ffi::ibv_recv_wr) -> i32,
) -> io::Result<usize> {
    let empty_wr = ffi::ibv_recv_wr {
        wr_id: 0,
        next: std::ptr::null_mut(),
        sg_list: std::ptr::null_mut(),
        num_sge: 1,
    };
    let empty_sge = ffi::ibv_sge {
        addr: 0,
        length: 0,
        lkey: 0,
    };
    let mut it = batch.into_iter().peekable();
    let mut posted = 0;
    while it.peek().is_some() {
        let mut wrs = [empty_wr; RECV_CHAIN];
        let mut sges = [empty_sge; RECV_CHAIN];
        let mut n = 0;
        for w in it.by_ref().take(RECV_CHAIN) {
            sges[n] = ffi::ibv_sge {
                addr: w.addr,
                length: w.len,
                lkey: w.lkey,
            };
            wrs[n].wr_id = w.wr_id;
            n += 1;
        }
        // Pointers are set once both arrays are in place (they do not move before the post).
        let sge_base = sges.as_mut_ptr();
        let wr_base = wrs.as_mut_ptr();
        for i in 0..n {
            // SAFETY: `i` and `i + 1` (when used) are in bounds of the two arrays.
            unsafe {
                (*wr_base.add(i)).sg_list = sge_base.add(i);
                if i + 1 < n {
                    (*wr_base.add(i)).next = wr_base.add(i + 1);
                }
            }
        }
        let rc = post(wr_base);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc.abs()));
        }
        posted += n;
    }
    Ok(posted)
}

/// A shared receive queue (`ibv_create_srq`): receive buffers any QP attached to it consumes.
pub(crate) struct RawSrq {
    srq: std::ptr::NonNull<ffi::ibv_srq>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: verbs objects may be used from any thread; the provider serialises posting with
// its own lock.
unsafe impl Send for RawSrq {}
// SAFETY: as above; `post` takes `&self` because `ibv_post_srq_recv` is thread-safe.
unsafe impl Sync for RawSrq {}

impl std::fmt::Debug for RawSrq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSrq").field("srq", &self.srq).finish()
    }
}

impl RawSrq {
    /// Creates an SRQ for up to `max_wr` posted receives of one SGE each.
    pub(crate) fn create(pd: &Arc<ProtectionDomain>, max_wr: u32) -> io::Result<RawSrq> {
        let mut attr = ffi::ibv_srq_init_attr {
            srq_context: std::ptr::null_mut(),
            attr: ffi::ibv_srq_attr {
                max_wr,
                max_sge: 1,
                srq_limit: 0,
            },
        };
        // SAFETY: the PD is live (we keep an `Arc` to it for the SRQ's lifetime); `attr` is a
        // valid local the provider reads and updates.
        let srq = unsafe { ffi::ibv_create_srq(pd.pd().as_ptr(), &mut attr) };
        let srq = std::ptr::NonNull::new(srq).ok_or_else(io::Error::last_os_error)?;
        Ok(RawSrq {
            srq,
            _pd: pd.clone(),
        })
    }

    /// Posts `batch` (chains of up to 16 WRs per call); returns how many were posted.
    pub(crate) fn post(&self, batch: impl IntoIterator<Item = RecvWr>) -> io::Result<usize> {
        post_recv_chains(batch, |head| {
            let mut bad: *mut ffi::ibv_recv_wr = std::ptr::null_mut();
            // SAFETY: the SRQ is live; `head` is a well-formed chain (built on the caller's
            // stack, alive for this call) whose SGEs point at registered buffers the caller
            // hands to the NIC.
            unsafe { ffi::ibv_post_srq_recv(self.srq.as_ptr(), head, &mut bad) }
        })
    }
}

impl Drop for RawSrq {
    fn drop(&mut self) {
        // SAFETY: every QP attached to this SRQ keeps its owner alive, so none is left.
        let rc = unsafe { ffi::ibv_destroy_srq(self.srq.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_destroy_srq failed");
        }
    }
}

/// Where a QP's RTR transition points it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PathTo {
    pub(crate) port: u8,
    /// `ibv_mtu` code, already the smaller of both ends.
    pub(crate) mtu: u8,
    pub(crate) dest_qpn: u32,
    pub(crate) rq_psn: u32,
    pub(crate) dlid: u16,
    pub(crate) sgid_index: u8,
    pub(crate) dgid: [u8; 16],
}

/// An RC queue pair created with `ibv_create_qp` directly: `sideway`'s builder cannot attach
/// a shared receive queue. Holds what it uses (PD, CQ, SRQ) alive until it is destroyed.
pub(crate) struct RawQp {
    qp: std::ptr::NonNull<ffi::ibv_qp>,
    /// Inline bytes the device granted (see [`RawQp::max_inline`]).
    max_inline: u32,
    /// The owner of the SRQ this QP receives from: keeps it alive until the QP is destroyed.
    _srq: Option<Arc<dyn std::any::Any + Send + Sync>>,
    _cq: Arc<BasicCompletionQueue>,
    _pd: Arc<ProtectionDomain>,
    send_wrs: Vec<ffi::ibv_send_wr>,
    send_sges: Vec<ffi::ibv_sge>,
}

/// Inline bytes asked for when a device refuses the configured amount (the old default,
/// which every verbs device with inline support takes).
const FALLBACK_INLINE: u32 = 64;

/// Sizes of a new queue pair.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QpCaps {
    pub(crate) send_depth: u32,
    /// Ignored when the QP receives from an SRQ.
    pub(crate) recv_depth: u32,
    pub(crate) max_send_sge: u32,
    /// Falls back to 0 when the device refuses it.
    pub(crate) max_inline: u32,
}

// SAFETY: verbs objects may be used from any thread (see `RawSrq`); the socket owning this
// QP is moved between worker threads but used by one at a time.
unsafe impl Send for RawQp {}

impl RawQp {
    /// Creates an RC QP on `pd` with `cq` for both queues, receiving from `srq` when given
    /// (then `recv_depth` is ignored; the `Arc` is the SRQ's owner, kept alive as long as the
    /// QP). `max_inline` falls back to 64, then 0, when the device refuses it.
    pub(crate) fn create(
        pd: &Arc<ProtectionDomain>,
        cq: &Arc<BasicCompletionQueue>,
        srq: Option<(&RawSrq, Arc<dyn std::any::Any + Send + Sync>)>,
        caps: QpCaps,
    ) -> io::Result<RawQp> {
        let QpCaps {
            send_depth,
            recv_depth,
            max_send_sge,
            max_inline,
        } = caps;
        // SAFETY: only reads the handle; the CQ outlives the QP (the QP keeps an `Arc`).
        let cq_ptr = unsafe { cq.cq() }.as_ptr();
        let make = |inline: u32| {
            let mut attr = ffi::ibv_qp_init_attr {
                qp_context: std::ptr::null_mut(),
                send_cq: cq_ptr,
                recv_cq: cq_ptr,
                srq: srq
                    .as_ref()
                    .map_or(std::ptr::null_mut(), |s| s.0.srq.as_ptr()),
                cap: ffi::ibv_qp_cap {
                    max_send_wr: send_depth,
                    max_recv_wr: if srq.is_some() { 0 } else { recv_depth },
                    max_send_sge,
                    max_recv_sge: 1,
                    max_inline_data: inline,
                },
                qp_type: ffi::ibv_qp_type::IBV_QPT_RC,
                sq_sig_all: 0,
            };
            // SAFETY: PD, CQ and SRQ are live (the caller holds them, and the QP keeps `Arc`s
            // to them until it is destroyed); `attr` is a valid local.
            let qp = unsafe { ffi::ibv_create_qp(pd.pd().as_ptr(), &mut attr) };
            // The provider writes the capabilities it granted back into `attr.cap`.
            std::ptr::NonNull::new(qp)
                .map(|qp| (qp, attr.cap.max_inline_data.min(inline)))
                .ok_or_else(io::Error::last_os_error)
        };
        // A device may take less inline data than asked, or none at all: fall back to
        // `FALLBACK_INLINE` bytes, then to none.
        let mut inline = max_inline;
        let (qp, max_inline) = loop {
            match make(inline) {
                Ok(made) => break made,
                Err(_) if inline > FALLBACK_INLINE => inline = FALLBACK_INLINE,
                Err(_) if inline > 0 => inline = 0,
                Err(e) => return Err(e),
            }
        };
        Ok(RawQp {
            qp,
            max_inline,
            _srq: srq.map(|s| s.1),
            _cq: cq.clone(),
            _pd: pd.clone(),
            send_wrs: Vec::new(),
            send_sges: Vec::new(),
        })
    }

    /// Bytes a send may carry inline on this QP: what was asked, or less (0 when the device
    /// refused inline data).
    pub(crate) fn max_inline(&self) -> u32 {
        self.max_inline
    }

    /// The QP number.
    pub(crate) fn qp_num(&self) -> u32 {
        // SAFETY: the QP is live; `qp_num` is set at creation and never changes.
        unsafe { (*self.qp.as_ptr()).qp_num }
    }

    /// A handle for forcing the error state from another thread (see [`QpHandle`]).
    pub(crate) fn handle(&self) -> QpHandle {
        QpHandle(self.qp.as_ptr() as usize)
    }

    fn modify(&self, attr: &mut ffi::ibv_qp_attr, mask: u32) -> io::Result<()> {
        // SAFETY: the QP is live; `attr` is a valid, fully initialised local.
        let rc = unsafe { ffi::ibv_modify_qp(self.qp.as_ptr(), attr, mask as i32) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc.abs()))
        }
    }

    fn zeroed_attr() -> ffi::ibv_qp_attr {
        // SAFETY: `ibv_qp_attr` is a plain C struct of integers and unions of integers, for
        // which all-zero is a valid value.
        unsafe { std::mem::zeroed() }
    }

    /// RESET → INIT on `port`, with `access` as the remote access the QP allows.
    pub(crate) fn to_init(&self, port: u8, access: u32) -> io::Result<()> {
        use ffi::ibv_qp_attr_mask as m;
        let mut a = Self::zeroed_attr();
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_INIT;
        a.pkey_index = 0;
        a.port_num = port;
        a.qp_access_flags = access;
        self.modify(
            &mut a,
            m::IBV_QP_STATE.0
                | m::IBV_QP_PKEY_INDEX.0
                | m::IBV_QP_PORT.0
                | m::IBV_QP_ACCESS_FLAGS.0,
        )
    }

    /// INIT → RTR towards the peer `p`.
    pub(crate) fn to_rtr(&self, p: &PathTo) -> io::Result<()> {
        use ffi::ibv_qp_attr_mask as m;
        let mut a = Self::zeroed_attr();
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_RTR;
        a.path_mtu = u32::from(p.mtu);
        a.dest_qp_num = p.dest_qpn;
        a.rq_psn = p.rq_psn;
        a.max_dest_rd_atomic = 0;
        a.min_rnr_timer = 12;
        a.ah_attr.dlid = p.dlid;
        a.ah_attr.sl = 0;
        a.ah_attr.src_path_bits = 0;
        a.ah_attr.port_num = p.port;
        a.ah_attr.is_global = 1;
        a.ah_attr.grh.dgid = ffi::ibv_gid { raw: p.dgid };
        a.ah_attr.grh.sgid_index = p.sgid_index;
        a.ah_attr.grh.hop_limit = 64;
        self.modify(
            &mut a,
            m::IBV_QP_STATE.0
                | m::IBV_QP_AV.0
                | m::IBV_QP_PATH_MTU.0
                | m::IBV_QP_DEST_QPN.0
                | m::IBV_QP_RQ_PSN.0
                | m::IBV_QP_MAX_DEST_RD_ATOMIC.0
                | m::IBV_QP_MIN_RNR_TIMER.0,
        )
    }

    /// RTR → RTS.
    pub(crate) fn to_rts(&self, sq_psn: u32, rnr_retry: u8) -> io::Result<()> {
        use ffi::ibv_qp_attr_mask as m;
        let mut a = Self::zeroed_attr();
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_RTS;
        a.sq_psn = sq_psn;
        a.timeout = 14;
        a.retry_cnt = 7;
        a.rnr_retry = rnr_retry;
        a.max_rd_atomic = 0;
        self.modify(
            &mut a,
            m::IBV_QP_STATE.0
                | m::IBV_QP_SQ_PSN.0
                | m::IBV_QP_TIMEOUT.0
                | m::IBV_QP_RETRY_CNT.0
                | m::IBV_QP_RNR_RETRY.0
                | m::IBV_QP_MAX_QP_RD_ATOMIC.0,
        )
    }

    /// To the error state: outstanding work requests are flushed.
    pub(crate) fn to_error(&self) -> io::Result<()> {
        let mut a = Self::zeroed_attr();
        a.qp_state = ffi::ibv_qp_state::IBV_QPS_ERR;
        self.modify(&mut a, ffi::ibv_qp_attr_mask::IBV_QP_STATE.0)
    }

    /// Posts receives on the QP's own receive queue (per-QP mode), chains of up to 16 WRs per
    /// call; returns how many were posted.
    pub(crate) fn post_recv(
        &mut self,
        batch: impl IntoIterator<Item = RecvWr>,
    ) -> io::Result<usize> {
        let qp = self.qp.as_ptr();
        post_recv_chains(batch, |head| {
            let mut bad: *mut ffi::ibv_recv_wr = std::ptr::null_mut();
            // SAFETY: the QP is live; `head` is a well-formed chain (built on the caller's
            // stack, alive for this call) whose SGEs point at registered buffers the caller
            // hands to the NIC.
            unsafe { ffi::ibv_post_recv(qp, head, &mut bad) }
        })
    }

    /// Posts `batch` (SEND or RDMA WRITE, with immediate) with one call (one doorbell).
    ///
    /// # Safety
    /// Every SGE must be registered memory (`lkey`) that stays valid and unmodified until its
    /// WR completes (or, for inline WRs, until this call returns); every WR's SGE range must
    /// lie within `sges`.
    pub(crate) unsafe fn post_send(&mut self, batch: &[SendWr], sges: &[Sge]) -> io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if batch
            .iter()
            .any(|w| w.sge_n == 0 || (w.sge_at as usize + w.sge_n as usize) > sges.len())
        {
            return Err(io::Error::other("send work request with a bad SGE range"));
        }
        self.send_sges.clear();
        self.send_sges.extend(sges.iter().map(|g| ffi::ibv_sge {
            addr: g.addr,
            length: g.len,
            lkey: g.lkey,
        }));
        self.send_wrs.clear();
        for w in batch {
            // SAFETY: `ibv_send_wr` is a C struct of integers, pointers and unions of those,
            // for which all-zero is valid (null pointers, no flags).
            let mut wr: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
            wr.wr_id = w.wr_id;
            wr.num_sge = w.sge_n as i32;
            match w.remote {
                Some((remote_addr, rkey)) => {
                    wr.opcode = ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE_WITH_IMM;
                    wr.wr.rdma = ffi::rdma_t { remote_addr, rkey };
                }
                None => wr.opcode = ffi::ibv_wr_opcode::IBV_WR_SEND_WITH_IMM,
            }
            let mut flags = 0;
            if w.signaled {
                flags |= ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
            }
            if w.inline {
                flags |= ffi::ibv_send_flags::IBV_SEND_INLINE.0;
            }
            wr.send_flags = flags;
            wr.imm_data_invalidated_rkey_union.imm_data = w.imm.to_be();
            self.send_wrs.push(wr);
        }
        let sge_base = self.send_sges.as_mut_ptr();
        let wr_base = self.send_wrs.as_mut_ptr();
        let n = self.send_wrs.len();
        for (i, w) in batch.iter().enumerate() {
            // SAFETY: `i` and `i + 1` (when used) are in bounds, `sge_at` was checked against
            // the SGE list above; neither vector is resized before the post below.
            unsafe {
                (*wr_base.add(i)).sg_list = sge_base.add(w.sge_at as usize);
                if i + 1 < n {
                    (*wr_base.add(i)).next = wr_base.add(i + 1);
                }
            }
        }
        let mut bad: *mut ffi::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: the QP is live; the chain is well formed and outlives the call; the caller
        // guarantees the buffers (see the function's contract).
        let rc = unsafe { ffi::ibv_post_send(self.qp.as_ptr(), wr_base, &mut bad) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc.abs()))
        }
    }
}

impl Drop for RawQp {
    fn drop(&mut self) {
        // SAFETY: the QP is live and destroyed once; the stack's fault-injection registry
        // dropped its handle before (see `QpHandle::to_error`).
        let rc = unsafe { ffi::ibv_destroy_qp(self.qp.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_destroy_qp failed");
        }
    }
}

/// A type 2 memory window: remote-write access to one range of a memory region, bound
/// through a queue pair's send queue ([`RawQp::post_rebind`]) and usable only by that QP's
/// peer, under the remote key of its latest binding. It lets a receiver hand a landing chunk
/// the peer wrote to its application: the window is invalidated first, so the peer can no
/// longer write the chunk, and re-bound to fresh memory under a new key.
pub(crate) struct RawMw {
    mw: std::ptr::NonNull<ffi::ibv_mw>,
    /// Remote key of the latest binding (or the one `ibv_alloc_mw` gave, before any).
    rkey: u32,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: verbs objects may be used from any thread; the window is owned by one socket,
// used by one thread at a time.
unsafe impl Send for RawMw {}

impl std::fmt::Debug for RawMw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawMw").field("rkey", &self.rkey).finish()
    }
}

impl RawMw {
    /// Allocates a type 2 window on `pd` (unbound: it grants nothing yet).
    pub(crate) fn alloc(pd: &Arc<ProtectionDomain>) -> io::Result<RawMw> {
        // SAFETY: the PD is live (we keep an `Arc` to it until the window is deallocated).
        let mw = unsafe { ffi::ibv_alloc_mw(pd.pd().as_ptr(), ffi::ibv_mw_type::IBV_MW_TYPE_2) };
        let mw = std::ptr::NonNull::new(mw).ok_or_else(io::Error::last_os_error)?;
        // SAFETY: `mw` was just returned by the provider and is live.
        let rkey = unsafe { (*mw.as_ptr()).rkey };
        Ok(RawMw {
            mw,
            rkey,
            _pd: pd.clone(),
        })
    }

    /// The remote key of the latest binding.
    pub(crate) fn rkey(&self) -> u32 {
        self.rkey
    }
}

impl Drop for RawMw {
    fn drop(&mut self) {
        // SAFETY: the window is live and deallocated once; its QP was moved to the error
        // state and drained first (see the socket's teardown), so no WR uses it any more.
        let rc = unsafe { ffi::ibv_dealloc_mw(self.mw.as_ptr()) };
        if rc != 0 {
            tracing::warn!(rc, "ibv_dealloc_mw failed");
        }
    }
}

/// The next remote key for a window: same index, the low 8 bits (the consumer's key byte)
/// stepped, so a peer still holding the old key is refused (`ibv_inc_rkey`).
fn next_rkey(rkey: u32) -> u32 {
    (rkey & !0xff) | (rkey.wrapping_add(1) & 0xff)
}

impl RawQp {
    /// Binds `mw` to `len` bytes at `addr` of `mr` for remote write, under a new key, with
    /// one doorbell. With `invalidate`, a local invalidation of the window's current key goes
    /// first (a bound type 2 window must be invalidated before it is bound again). Both WRs
    /// take `wr_id`s from the caller's send ring: the invalidation `wr_id - 1`, unsignalled;
    /// the bind `wr_id`, signalled, so its completion says both are done. Returns the new key.
    ///
    /// # Safety
    /// `addr .. addr + len` must lie inside `mr`, which must stay registered (with
    /// `IBV_ACCESS_MW_BIND` and local write) while the window is bound to it.
    pub(crate) unsafe fn post_rebind(
        &mut self,
        mw: &mut RawMw,
        invalidate: bool,
        mr: &sideway::ibverbs::memory_region::MemoryRegion,
        addr: u64,
        len: u64,
        wr_id: u64,
    ) -> io::Result<u32> {
        let rkey = next_rkey(mw.rkey);
        // SAFETY: all-zero is a valid `ibv_send_wr` (integers, null pointers, unions of those).
        let mut inv: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        inv.wr_id = wr_id.wrapping_sub(1);
        inv.opcode = ffi::ibv_wr_opcode::IBV_WR_LOCAL_INV;
        inv.imm_data_invalidated_rkey_union.invalidated_rkey = mw.rkey;
        // SAFETY: as above.
        let mut bind: ffi::ibv_send_wr = unsafe { std::mem::zeroed() };
        bind.wr_id = wr_id;
        bind.opcode = ffi::ibv_wr_opcode::IBV_WR_BIND_MW;
        bind.send_flags = ffi::ibv_send_flags::IBV_SEND_SIGNALED.0;
        bind.bind_mw_tso_union.bind_mw = ffi::bind_mw_t {
            mw: mw.mw.as_ptr(),
            rkey,
            bind_info: ffi::ibv_mw_bind_info {
                // SAFETY: only the handle is read; the caller keeps the MR registered.
                mr: unsafe { mr.mr() }.as_ptr(),
                addr,
                length: len,
                mw_access_flags: ffi::ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0,
            },
        };
        let first: *mut ffi::ibv_send_wr = if invalidate {
            inv.next = &mut bind;
            &mut inv
        } else {
            &mut bind
        };
        let mut bad: *mut ffi::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: the QP and the window are live; the chain (one or two locals) outlives the
        // call; the caller guarantees the bound range (see the function's contract).
        let rc = unsafe { ffi::ibv_post_send(self.qp.as_ptr(), first, &mut bad) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc.abs()));
        }
        mw.rkey = rkey;
        // The provider names the window in the next bind by `ibv_mw::rkey` (rxe checks it
        // against the window's current key), which for type 2 windows is the consumer's to
        // keep current (`ibv_bind_mw` does it for type 1).
        // SAFETY: the window is live and only this socket's thread touches it.
        unsafe { (*mw.mw.as_ptr()).rkey = rkey };
        Ok(rkey)
    }
}
