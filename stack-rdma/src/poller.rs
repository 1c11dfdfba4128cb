//! Busy-polling of completion queues by the worker's event loop (Ceph's
//! `ms_async_rdma_polling_us`), per socket: the loop polls the CQ of each socket registered
//! on this worker thread that had a completion in the last `busy_poll` (a *hot* socket) and
//! reports those with completions as ready. A socket quiet for the whole window is armed
//! (`ibv_req_notify_cq`) and left to its completion channel, whose fd is in the loop's epoll
//! set: the loop no longer polls it, and its next completion wakes the loop and makes it hot
//! again (its `read` takes the event). A busy round thus costs one CQ poll per hot socket, not
//! one per connection; once no socket is hot, the loop sleeps in epoll.
//!
//! Sockets are not bound to a worker (the messenger may move an accepted one), so each one
//! joins the poll set of the thread that registers it and leaves it when deregistered.
//! Registration always happens on the worker thread that owns the event loop.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dataplane::event::{Fired, Poller};

use crate::RdmaStats;
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

/// A socket in a thread's poll set.
struct Member {
    cq: Weak<CqShared>,
    /// Its last completion seen by the poller, its last wake-up by its completion channel,
    /// or when it joined.
    last_work: Instant,
    /// The poller armed it and left it to its channel (cold).
    cold: bool,
}

thread_local! {
    /// Sockets registered with this thread's event loop.
    static POLL_SET: RefCell<Vec<Member>> = const { RefCell::new(Vec::new()) };
}

/// Adds a socket to the calling (worker) thread's poll set.
pub(crate) fn join(s: &Arc<CqShared>, token: Token) {
    s.set_token(Some(token));
    let m = Member {
        cq: Arc::downgrade(s),
        last_work: Instant::now(),
        cold: false,
    };
    POLL_SET.with(|set| set.borrow_mut().push(m));
}

/// Removes a socket from the calling thread's poll set.
pub(crate) fn leave(s: &Arc<CqShared>) {
    s.set_token(None);
    POLL_SET.with(|set| {
        set.borrow_mut()
            .retain(|m| m.cq.upgrade().is_some_and(|x| !Arc::ptr_eq(&x, s)))
    });
}

/// The worker's CQ poller.
#[derive(Debug)]
pub(crate) struct CqPoller {
    busy: Duration,
    stats: Arc<RdmaStats>,
}

impl CqPoller {
    pub(crate) fn new(busy: Duration, stats: Arc<RdmaStats>) -> CqPoller {
        CqPoller { busy, stats }
    }
}

impl Poller for CqPoller {
    /// One busy round: polls the hot sockets' CQs, arms those quiet for the whole window.
    /// True while some socket is hot (the loop keeps spinning) or completions were found.
    fn poll(&mut self, now: Instant, ready: &mut Vec<Fired>) -> bool {
        if self.busy.is_zero() {
            return false;
        }
        let (mut hot, mut polls) = (false, 0u64);
        POLL_SET.with(|set| {
            let mut set = set.borrow_mut();
            set.retain(|m| m.cq.strong_count() > 0);
            for m in set.iter_mut() {
                let Some(s) = m.cq.upgrade() else { continue };
                let Some(token) = *s.token.lock() else {
                    continue;
                };
                if s.armed.load(Ordering::Acquire) {
                    // Cold: its completion channel wakes the loop; its `read` takes the event
                    // and clears the flag, and it is polled here again.
                    continue;
                }
                if std::mem::take(&mut m.cold) {
                    // Woken by its channel since the last round: traffic again, so it stays
                    // in the busy rounds for a window (else a request-reply connection would
                    // be armed after every wake-up and pay an event per message).
                    m.last_work = now;
                }
                polls += 1;
                if poll_ready(&s, token, ready) {
                    m.last_work = now;
                    hot = true;
                    continue;
                }
                if now.saturating_duration_since(m.last_work) < self.busy {
                    hot = true;
                    continue;
                }
                // Quiet for the whole window: arm it (a failure is reported through the
                // socket: it polls and fails), then look once more for what raced the arming
                // (a completion that landed before it raises no event).
                let err = crate::sys::req_notify(&s.cq).is_err();
                s.armed.store(true, Ordering::Release);
                m.cold = true;
                polls += 1;
                if poll_ready(&s, token, ready) || err {
                    if err {
                        push_ready(token, ready);
                    }
                    m.last_work = now;
                    hot = true;
                }
            }
        });
        RdmaStats::bump(&self.stats.poller_cq_polls, polls);
        RdmaStats::bump(&self.stats.poller_rounds, 1);
        hot
    }
}

/// Polls `s`'s CQ into its pending list; reports the socket ready (as `token`) when that
/// found completions or failed (the socket reports the error when it polls next).
fn poll_ready(s: &CqShared, token: Token, ready: &mut Vec<Fired>) -> bool {
    let mut p = s.pending.lock();
    let before = p.len();
    let err = poll_into(&s.cq, &mut p).is_err();
    let found = p.len() > before || err;
    drop(p);
    if found {
        push_ready(token, ready);
    }
    found
}

fn push_ready(token: Token, ready: &mut Vec<Fired>) {
    ready.push(Fired::File {
        token,
        readable: true,
        writable: true,
        error: false,
        closed: false,
        polled: true,
    });
}
