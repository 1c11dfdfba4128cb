//! The stack's shared receive queue (SRQ) and the credit shares of its connections.
//!
//! One SRQ per stack, not per worker: sockets are thread-agnostic (the messenger may hand an
//! accepted socket to another worker), and `ibv_post_srq_recv` is thread-safe, so any worker
//! may re-post buffers to it. Receive completions still arrive on each QP's own CQ.
//!
//! **Credits.** Each connection is granted `share` credits at set-up (its hello announces
//! them as the peer's send window) and the SRQ always holds at least as many posted buffers
//! as the sum of granted shares: the SRQ grows, by buffers taken from the registered slot
//! pool (which maps and registers another arena when it runs short), when a new grant needs
//! it, and a connection that would push it past `max_wr` is refused with
//! [`RdmaError::SrqExhausted`]. A connection re-posts the buffers it consumed (one batch per
//! `read`) and returns that many credits to its peer, so its peer can never have more SENDs
//! in flight than buffers reserved for it. A receiver counts every SEND of a peer against
//! the credits it granted that peer; a peer that exceeds them is torn down. Shares come back
//! at teardown; when the last connection goes, the SRQ itself is destroyed (after the last
//! QP attached to it) and its buffers return to the pool.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use sideway::ibverbs::protection_domain::ProtectionDomain;

use crate::memory::{Slot, SlotPool};
use crate::sys::{RawSrq, RecvWr};
use crate::{RdmaError, RdmaStats};

/// Receive work-request ids have this bit set; the rest is the slot index.
pub(crate) const RECV_BIT: u64 = 1 << 63;

/// One SRQ and the buffers posted to it. Lives while a connection or a QP uses it.
pub(crate) struct SrqGen {
    /// Taken and destroyed in `drop`, before the slots go back to the pool.
    srq: Option<RawSrq>,
    slots: Mutex<Vec<Slot>>,
    slot_size: u32,
    /// Buffers posted now (posted minus consumed and not yet re-posted).
    posted: AtomicI64,
    pool: Arc<SlotPool>,
    stats: Arc<RdmaStats>,
}

impl std::fmt::Debug for SrqGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrqGen")
            .field("buffers", &self.slots.lock().len())
            .field("posted", &self.posted.load(Ordering::Relaxed))
            .finish()
    }
}

impl SrqGen {
    /// The verbs SRQ, for attaching QPs (always present until drop).
    pub(crate) fn raw(&self) -> Option<&RawSrq> {
        self.srq.as_ref()
    }

    /// The buffer behind a receive completion's work-request id, if it is one of ours.
    pub(crate) fn slot(&self, idx: u32) -> Option<Slot> {
        self.slots.lock().get(idx as usize).copied()
    }

    /// Puts `new` in place of the buffer at `idx` (consumed, not posted: its receive
    /// completed) and returns that buffer, which the caller now owns (it lends it).
    pub(crate) fn swap(&self, idx: u32, new: Slot) -> Option<Slot> {
        let mut slots = self.slots.lock();
        let s = slots.get_mut(idx as usize)?;
        Some(std::mem::replace(s, new))
    }

    /// One receive completed (its buffer is consumed until re-posted).
    pub(crate) fn consumed(&self) {
        let now = self.posted.fetch_sub(1, Ordering::AcqRel) - 1;
        self.stats.srq_posted_min.fetch_min(now, Ordering::Relaxed);
    }

    /// Re-posts consumed buffers (no allocation: the WR chains are built on the stack).
    pub(crate) fn repost(&self, idxs: &[u32]) -> std::io::Result<()> {
        let Some(srq) = &self.srq else {
            return Err(std::io::Error::other("shared receive queue destroyed"));
        };
        let slots = self.slots.lock();
        let batch = idxs.iter().filter_map(|&i| {
            slots.get(i as usize).map(|s| RecvWr {
                wr_id: RECV_BIT | u64::from(i),
                addr: s.addr,
                len: self.slot_size,
                lkey: s.lkey,
            })
        });
        let posted = srq.post(batch)?;
        self.posted.fetch_add(posted as i64, Ordering::AcqRel);
        Ok(())
    }

    /// Takes `n` more buffers from the pool and posts them.
    fn grow(&self, n: usize) -> Result<(), RdmaError> {
        let mut new = self.pool.take(n)?;
        let mut slots = self.slots.lock();
        let base = slots.len();
        let batch: Vec<RecvWr> = new
            .iter()
            .enumerate()
            .map(|(i, s)| RecvWr {
                wr_id: RECV_BIT | (base + i) as u64,
                addr: s.addr,
                len: self.slot_size,
                lkey: s.lkey,
            })
            .collect();
        let posted = match &self.srq {
            Some(srq) => srq.post(batch.iter().copied()).map(drop),
            None => Err(std::io::Error::other("shared receive queue destroyed")),
        };
        if let Err(e) = posted {
            self.pool.give_back(&mut new);
            return Err(RdmaError::Verbs {
                what: "post receives to the shared receive queue",
                source: e,
            });
        }
        slots.append(&mut new);
        self.posted.fetch_add(n as i64, Ordering::AcqRel);
        self.stats
            .srq_buffers_max
            .fetch_max(slots.len() as u64, Ordering::Relaxed);
        tracing::debug!(buffers = slots.len(), "shared receive queue grown");
        Ok(())
    }
}

impl Drop for SrqGen {
    fn drop(&mut self) {
        // No QP refers to the SRQ any more (each keeps its `Arc<SrqGen>`): destroy it, and
        // only then return its buffers, so the NIC never writes a buffer that is reused.
        drop(self.srq.take());
        self.pool.give_back(&mut self.slots.lock());
        tracing::debug!("shared receive queue destroyed");
    }
}

/// The stack's SRQ and the credit shares granted from it.
pub(crate) struct SharedRq {
    pd: Arc<ProtectionDomain>,
    pool: Arc<SlotPool>,
    stats: Arc<RdmaStats>,
    /// Most buffers the SRQ may hold (config, capped by the device's `max_srq_wr`).
    max_wr: u32,
    /// Credits granted to each connection.
    share: u32,
    state: Mutex<State>,
}

struct State {
    current: Option<Arc<SrqGen>>,
    granted: u32,
}

impl std::fmt::Debug for SharedRq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let g = self.state.lock();
        f.debug_struct("SharedRq")
            .field("max_wr", &self.max_wr)
            .field("share", &self.share)
            .field("granted", &g.granted)
            .field("current", &g.current)
            .finish()
    }
}

impl SharedRq {
    pub(crate) fn new(
        pd: Arc<ProtectionDomain>,
        pool: Arc<SlotPool>,
        stats: Arc<RdmaStats>,
        max_wr: u32,
        share: u32,
    ) -> SharedRq {
        SharedRq {
            pd,
            pool,
            stats,
            max_wr,
            share,
            state: Mutex::new(State {
                current: None,
                granted: 0,
            }),
        }
    }

    /// Grants a new connection its share: creates the SRQ on first use and grows it so that
    /// its posted buffers cover every granted credit. Returns the SRQ and the share.
    ///
    /// # Errors
    /// [`RdmaError::SrqExhausted`] when the share would take the SRQ past `max_wr`;
    /// [`RdmaError::Memory`] / [`RdmaError::Verbs`] when buffers cannot be registered or posted.
    pub(crate) fn grant(&self) -> Result<(Arc<SrqGen>, u32), RdmaError> {
        let mut g = self.state.lock();
        let want = g.granted + self.share;
        if want > self.max_wr {
            return Err(RdmaError::SrqExhausted {
                granted: g.granted,
                max: self.max_wr,
                share: self.share,
            });
        }
        let gen = match &g.current {
            Some(gen) => gen.clone(),
            None => {
                let srq =
                    RawSrq::create(&self.pd, self.max_wr).map_err(|source| RdmaError::Verbs {
                        what: "create shared receive queue",
                        source,
                    })?;
                tracing::debug!(max_wr = self.max_wr, "shared receive queue created");
                let gen = Arc::new(SrqGen {
                    srq: Some(srq),
                    slots: Mutex::new(Vec::new()),
                    slot_size: u32::try_from(self.pool.slot_size()).unwrap_or(u32::MAX),
                    posted: AtomicI64::new(0),
                    pool: self.pool.clone(),
                    stats: self.stats.clone(),
                });
                g.current = Some(gen.clone());
                gen
            }
        };
        let have = gen.slots.lock().len();
        if (want as usize) > have {
            gen.grow(want as usize - have)?;
        }
        g.granted = want;
        self.stats
            .srq_granted_max
            .fetch_max(u64::from(want), Ordering::Relaxed);
        Ok((gen, self.share))
    }

    /// A connection's share comes back (after its QP is destroyed). With no connection left
    /// the SRQ is released: destroyed once the last QP attached to it is gone.
    pub(crate) fn release(&self, share: u32) {
        let mut g = self.state.lock();
        g.granted = g.granted.saturating_sub(share);
        if g.granted == 0 {
            g.current = None;
        }
    }

    /// (buffers in the SRQ, credits granted), for metrics and tests.
    pub(crate) fn usage(&self) -> (usize, u32) {
        let g = self.state.lock();
        let bufs = g.current.as_ref().map_or(0, |c| c.slots.lock().len());
        (bufs, g.granted)
    }
}
