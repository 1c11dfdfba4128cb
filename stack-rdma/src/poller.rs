//! Busy-polling of completion queues by the worker's event loop (Ceph's
//! `ms_async_rdma_polling_us`): while there was work in the last `busy_poll`, the loop does
//! not sleep; it polls the CQs of the sockets registered on this worker thread and reports
//! those with completions as ready. Once the window passes, sockets arm their completion
//! channels (in `read`) and the loop sleeps in epoll.
//!
//! Sockets are not bound to a worker (the messenger may move an accepted one), so each one
//! joins the poll set of the thread that registers it and leaves it when deregistered.
//! Registration always happens on the worker thread that owns the event loop.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dataplane::event::{Fired, Poller};
use mio::Token;
use parking_lot::Mutex;
use sideway::ibverbs::completion::BasicCompletionQueue;

/// One completion, copied out of the CQ.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wc {
    pub(crate) wr_id: u64,
    pub(crate) status: u32,
    pub(crate) vendor_err: u32,
    pub(crate) byte_len: u32,
    pub(crate) imm: u32,
    /// `ibv_wc_opcode` (valid for successful completions only).
    pub(crate) opcode: u32,
}

/// A socket's CQ plus completions the poller took from it and the socket has not seen yet.
pub(crate) struct CqShared {
    pub(crate) cq: Arc<BasicCompletionQueue>,
    pending: Mutex<Vec<Wc>>,
    token: Mutex<Option<Token>>,
    /// The CQ was armed (`ibv_req_notify_cq`) and its event not yet taken from the channel.
    pub(crate) armed: AtomicBool,
}

impl CqShared {
    pub(crate) fn new(cq: Arc<BasicCompletionQueue>) -> Arc<CqShared> {
        Arc::new(CqShared {
            cq,
            pending: Mutex::new(Vec::new()),
            token: Mutex::new(None),
            armed: AtomicBool::new(false),
        })
    }

    /// Moves the completions the poller took into `out`, or, when it took none, those in the
    /// CQ. The poller polled the CQ just before it reported them, so what came after is left
    /// for its next round (or the next read) instead of a second poll that finds nothing.
    pub(crate) fn take(&self, out: &mut Vec<Wc>) -> Result<(), String> {
        let mut p = self.pending.lock();
        if !p.is_empty() {
            out.append(&mut p);
            return Ok(());
        }
        drop(p);
        poll_into(&self.cq, out)
    }

    /// Leaves every poll set.
    pub(crate) fn set_token(&self, t: Option<Token>) {
        *self.token.lock() = t;
    }
}

fn poll_into(cq: &BasicCompletionQueue, out: &mut Vec<Wc>) -> Result<(), String> {
    let mut wcs = crate::sys::wc_batch();
    loop {
        // Every completion polled must be taken, or it is lost.
        let got = crate::sys::poll_cq(cq, &mut wcs).map_err(|e| e.to_string())?;
        let n = got.len();
        out.extend(got.iter().map(|wc| Wc {
            wr_id: wc.wr_id,
            status: wc.status,
            vendor_err: wc.vendor_err,
            byte_len: wc.byte_len,
            imm: crate::sys::wc_imm(wc),
            opcode: wc.opcode,
        }));
        if n < crate::sys::WC_BATCH {
            return Ok(());
        }
    }
}

thread_local! {
    /// Sockets registered with this thread's event loop.
    static POLL_SET: RefCell<Vec<Weak<CqShared>>> = const { RefCell::new(Vec::new()) };
}

/// Adds a socket to the calling (worker) thread's poll set.
pub(crate) fn join(s: &Arc<CqShared>, token: Token) {
    s.set_token(Some(token));
    POLL_SET.with(|set| set.borrow_mut().push(Arc::downgrade(s)));
}

/// Removes a socket from the calling thread's poll set.
pub(crate) fn leave(s: &Arc<CqShared>) {
    s.set_token(None);
    POLL_SET.with(|set| {
        set.borrow_mut()
            .retain(|w| w.upgrade().is_some_and(|x| !Arc::ptr_eq(&x, s)))
    });
}

/// The worker's CQ poller.
#[derive(Debug)]
pub(crate) struct CqPoller {
    busy: Duration,
    last_work: Option<Instant>,
}

impl CqPoller {
    pub(crate) fn new(busy: Duration) -> CqPoller {
        CqPoller {
            busy,
            last_work: None,
        }
    }
}

impl Poller for CqPoller {
    fn poll(&mut self, now: Instant, ready: &mut Vec<Fired>) -> bool {
        if self.busy.is_zero() {
            return false;
        }
        let mut found = self.poll_all(ready, false);
        if found {
            self.last_work = Some(now);
        }
        // Keep the loop spinning for `busy` after the last completion.
        let spinning = self
            .last_work
            .is_some_and(|t| now.saturating_duration_since(t) < self.busy);
        if spinning {
            return true;
        }
        // About to let the loop sleep: arm every CQ (sockets do not arm themselves when a
        // poller is busy-polling them), then look once more for what raced the arming.
        found = self.poll_all(ready, true);
        if found {
            self.last_work = Some(now);
        }
        found
    }
}

impl CqPoller {
    /// Polls every socket's CQ of this thread into its pending list and reports those with
    /// completions. With `arm`, first arms the CQs that are not armed.
    fn poll_all(&mut self, ready: &mut Vec<Fired>, arm: bool) -> bool {
        let mut found = false;
        POLL_SET.with(|set| {
            let mut set = set.borrow_mut();
            set.retain(|w| w.strong_count() > 0);
            for w in set.iter() {
                let Some(s) = w.upgrade() else { continue };
                let Some(token) = *s.token.lock() else {
                    continue;
                };
                let mut err = false;
                if arm && !s.armed.load(Ordering::Acquire) {
                    // A failure is reported through the socket: it polls and fails.
                    err = crate::sys::req_notify(&s.cq).is_err();
                    s.armed.store(true, Ordering::Release);
                }
                let mut p = s.pending.lock();
                let before = p.len();
                // A poll error is reported by the socket itself when it polls next.
                err |= poll_into(&s.cq, &mut p).is_err();
                if p.len() > before || err {
                    found = true;
                    ready.push(Fired::File {
                        token,
                        readable: true,
                        writable: true,
                        error: false,
                        closed: false,
                        polled: true,
                    });
                }
            }
        });
        found
    }
}
