//! The application's handle on a connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::counters::Counters;
use crate::error::{BatchSendError, SendError, SendErrorKind};
use crate::messenger::dispatch::{DispatchQueue, Item};
use crate::messenger::protocol::{PeerIdentity, RecordBlock};
use crate::messenger::worker::Command;
use crate::messenger::{Message, Policy};
use crate::ring::{mpsc, Doorbell};

/// Where a connection's messages go.
pub(crate) enum Route {
    /// Through the owning worker's command ring.
    Worker {
        index: usize,
        ring: mpsc::Sender<Command>,
        doorbell: Arc<Doorbell>,
    },
    /// To ourselves: straight into the dispatch queue, no socket.
    Local(Arc<DispatchQueue>),
}

/// State shared between the handles and the owning worker.
pub(crate) struct ConnShared {
    pub(crate) id: u64,
    pub(crate) addr: Option<SocketAddr>,
    pub(crate) policy: Policy,
    pub(crate) route: Route,
    pub(crate) closed: AtomicBool,
    pub(crate) peer: Mutex<Option<PeerIdentity>>,
    queued_msgs: AtomicUsize,
    queued_bytes: AtomicUsize,
    max_msgs: usize,
    max_bytes: usize,
    max_message: usize,
    /// Plain (not sealed) framing: `send` computes each large payload's crc on the sending
    /// thread, so the worker does not (see `Message::memo_crc`).
    sender_crc: bool,
    counters: Arc<Counters>,
    /// Senders parked in `send_wait` (checked by `release` before taking the lock).
    waiters: AtomicUsize,
    wait_lock: Mutex<()>,
    wait_cond: Condvar,
}

/// A cheap, clonable, thread-safe handle on one connection. `send` puts the message on the
/// owning worker's command ring; the worker frames it and writes it. On lossless connections
/// a message accepted by `send` is delivered exactly once, in order, across reconnects.
#[derive(Clone)]
pub struct Connection {
    pub(crate) shared: Arc<ConnShared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.shared.id)
            .field("addr", &self.shared.addr)
            .field("policy", &self.shared.policy)
            .finish()
    }
}

impl PartialEq for Connection {
    fn eq(&self, o: &Self) -> bool {
        self.shared.id == o.shared.id
    }
}
impl Eq for Connection {}

impl Connection {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: u64,
        addr: Option<SocketAddr>,
        policy: Policy,
        route: Route,
        max_msgs: usize,
        max_bytes: usize,
        max_message: usize,
        sender_crc: bool,
        counters: Arc<Counters>,
    ) -> Connection {
        Connection {
            shared: Arc::new(ConnShared {
                id,
                addr,
                policy,
                route,
                closed: AtomicBool::new(false),
                peer: Mutex::new(None),
                queued_msgs: AtomicUsize::new(0),
                queued_bytes: AtomicUsize::new(0),
                max_msgs,
                max_bytes,
                max_message,
                sender_crc,
                counters,
                waiters: AtomicUsize::new(0),
                wait_lock: Mutex::new(()),
                wait_cond: Condvar::new(),
            }),
        }
    }

    /// Unique id of this connection within its messenger.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The peer's address: the address connected to, or the address the peer announced.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.shared
            .addr
            .or_else(|| self.peer().and_then(|p| p.addr))
    }

    /// The peer's entity name, once the handshake finished.
    pub fn peer_name(&self) -> Option<String> {
        self.shared.peer.lock().as_ref().map(|p| p.name.clone())
    }

    /// The peer's identity, once the handshake finished.
    pub fn peer(&self) -> Option<PeerIdentity> {
        self.shared.peer.lock().clone()
    }

    /// The connection's policy.
    pub fn policy(&self) -> Policy {
        self.shared.policy
    }

    /// True for a connection to our own address (delivered without a socket).
    pub fn is_local(&self) -> bool {
        matches!(self.shared.route, Route::Local(_))
    }

    /// True once the connection is closed for good.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// (messages, bytes) queued or waiting for acknowledgement.
    pub fn queued(&self) -> (usize, usize) {
        (
            self.shared.queued_msgs.load(Ordering::Relaxed),
            self.shared.queued_bytes.load(Ordering::Relaxed),
        )
    }

    /// Queues a message. Refused (and handed back) when the connection's queue limit is
    /// reached, the worker's ring is full, the message is too large, or the connection is
    /// closed; the caller decides whether to retry.
    // The error hands the message back by value: callers retry it under backpressure in
    // tight loops, and boxing it would allocate on every refusal.
    #[allow(clippy::result_large_err)]
    pub fn send(&self, msg: Message) -> Result<(), SendError> {
        let s = &*self.shared;
        if s.closed.load(Ordering::Acquire) {
            return Err(SendError {
                kind: SendErrorKind::Closed,
                message: msg,
            });
        }
        let len = msg.len();
        if len > s.max_message {
            return Err(SendError {
                kind: SendErrorKind::TooLarge {
                    len,
                    max: s.max_message,
                },
                message: msg,
            });
        }
        match &s.route {
            Route::Local(dq) => {
                Counters::add(&s.counters.local_delivered, 1);
                dq.push(Item::Message(self.clone(), msg));
                Ok(())
            }
            Route::Worker { ring, doorbell, .. } => {
                let msgs = s.queued_msgs.fetch_add(1, Ordering::Relaxed) + 1;
                let bytes = s.queued_bytes.fetch_add(len, Ordering::Relaxed) + len;
                if msgs > s.max_msgs || bytes > s.max_bytes {
                    self.release(1, len);
                    Counters::add(&s.counters.send_refused, 1);
                    return Err(SendError {
                        kind: SendErrorKind::QueueFull {
                            msgs: msgs - 1,
                            bytes: bytes - len,
                            max_msgs: s.max_msgs,
                            max_bytes: s.max_bytes,
                        },
                        message: msg,
                    });
                }
                let mut msg = msg;
                if s.sender_crc {
                    // The message is ours now: its crc is computed here, on the sending
                    // thread, and not again by the worker.
                    msg.memo_crc();
                }
                match ring.push(Command::Send { conn: s.id, msg }) {
                    Ok(()) => {
                        doorbell.ring();
                        Ok(())
                    }
                    Err(cmd) => {
                        self.release(1, len);
                        Counters::add(&s.counters.send_refused, 1);
                        let mut message = match cmd {
                            Command::Send { msg, .. } => msg,
                            _ => unreachable!("pushed a Send"),
                        };
                        message.forget_crc();
                        // Make sure a parked worker drains the ring.
                        doorbell.ring();
                        Err(SendError {
                            kind: SendErrorKind::RingFull,
                            message,
                        })
                    }
                }
            }
        }
    }

    /// Queues a batch of messages with one queue reservation, one ring slot and at most one
    /// wake-up of the worker (the counterpart of a sink's `feed` … `flush`). All or nothing:
    /// when the queue limit would be exceeded, the ring is full, a message is too large or the
    /// connection is closed, every message is handed back. A batch larger than the queue limit
    /// can never be accepted; split it.
    ///
    /// When every payload is at most [`BLOCK_COPY_MAX`](crate::messenger::protocol::BLOCK_COPY_MAX)
    /// (1 KiB), the payloads are copied into record blocks here, on the calling thread, and the
    /// messages are dropped here once the worker has the blocks: the worker then writes each
    /// block as one batch frame (see `docs/architecture.md`). Larger payloads are never copied.
    pub fn send_batch(&self, msgs: Vec<Message>) -> Result<(), BatchSendError> {
        let s = &*self.shared;
        let fail = |kind, messages| Err(BatchSendError { kind, messages });
        if msgs.is_empty() {
            return Ok(());
        }
        if s.closed.load(Ordering::Acquire) {
            return fail(SendErrorKind::Closed, msgs);
        }
        let mut total = 0usize;
        // Whether every payload is small enough for record blocks (see below).
        let mut encode = true;
        for m in &msgs {
            if m.len() > s.max_message {
                let kind = SendErrorKind::TooLarge {
                    len: m.len(),
                    max: s.max_message,
                };
                return fail(kind, msgs);
            }
            total += m.len();
            encode &= RecordBlock::fits(m);
        }
        let n = msgs.len();
        match &s.route {
            Route::Local(dq) => {
                Counters::add(&s.counters.local_delivered, n as u64);
                for m in msgs {
                    dq.push(Item::Message(self.clone(), m));
                }
                Ok(())
            }
            Route::Worker { ring, doorbell, .. } => {
                let q_msgs = s.queued_msgs.fetch_add(n, Ordering::Relaxed) + n;
                let q_bytes = s.queued_bytes.fetch_add(total, Ordering::Relaxed) + total;
                if q_msgs > s.max_msgs || q_bytes > s.max_bytes {
                    self.release(n, total);
                    Counters::add(&s.counters.send_refused, 1);
                    let kind = SendErrorKind::QueueFull {
                        msgs: q_msgs - n,
                        bytes: q_bytes - total,
                        max_msgs: s.max_msgs,
                        max_bytes: s.max_bytes,
                    };
                    return fail(kind, msgs);
                }
                // Small messages are encoded into record blocks here, on the sending thread,
                // and dropped here once the worker has the blocks (see `RecordBlock`).
                let (cmd, msgs) = if encode {
                    let blocks = RecordBlock::encode(&msgs);
                    (Command::SendRecords { conn: s.id, blocks }, Some(msgs))
                } else {
                    let mut msgs = msgs;
                    if s.sender_crc {
                        msgs.iter_mut().for_each(Message::memo_crc);
                    }
                    (Command::SendBatch { conn: s.id, msgs }, None)
                };
                match ring.push(cmd) {
                    Ok(()) => {
                        doorbell.ring();
                        drop(msgs);
                        Ok(())
                    }
                    Err(cmd) => {
                        self.release(n, total);
                        Counters::add(&s.counters.send_refused, 1);
                        doorbell.ring();
                        let mut messages = match (cmd, msgs) {
                            (_, Some(msgs)) | (Command::SendBatch { msgs, .. }, None) => msgs,
                            _ => unreachable!("pushed a SendBatch"),
                        };
                        messages.iter_mut().for_each(Message::forget_crc);
                        fail(SendErrorKind::RingFull, messages)
                    }
                }
            }
        }
    }

    /// [`Connection::send_batch`], waiting (parked) while the queue is full, until `timeout`.
    /// A batch larger than the queue limits can never be accepted and fails at once.
    pub fn send_batch_wait(
        &self,
        msgs: Vec<Message>,
        timeout: Duration,
    ) -> Result<(), BatchSendError> {
        let mut e = match self.send_batch(msgs) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let s = &*self.shared;
        let total: usize = e.messages.iter().map(Message::len).sum();
        if e.messages.len() > s.max_msgs || total > s.max_bytes {
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(e);
            }
            match e.kind {
                SendErrorKind::QueueFull { .. } => {
                    let bytes = e.messages.iter().map(Message::len).sum();
                    self.wait_for_room(deadline, e.messages.len(), bytes)
                }
                SendErrorKind::RingFull => std::thread::sleep(Duration::from_micros(20)),
                _ => return Err(e),
            }
            e = match self.send_batch(e.messages) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
        }
    }

    /// Parks until the queue has room for `need_msgs` messages of `need_bytes` bytes (and at
    /// least half its limits free, so a sender does not wake for every acknowledgement), the
    /// connection closes, or `deadline` passes.
    fn wait_for_room(&self, deadline: Instant, need_msgs: usize, need_bytes: usize) {
        let s = &*self.shared;
        let want_msgs = need_msgs.max(s.max_msgs / 2).min(s.max_msgs);
        let want_bytes = need_bytes.max(s.max_bytes / 2).min(s.max_bytes);
        let room = || {
            s.queued_msgs.load(Ordering::SeqCst) + want_msgs <= s.max_msgs
                && s.queued_bytes.load(Ordering::SeqCst) + want_bytes <= s.max_bytes
        };
        s.waiters.fetch_add(1, Ordering::SeqCst);
        let mut g = s.wait_lock.lock();
        // Checked under the lock; `release` notifies under the lock, so a release between
        // a check and the wait cannot be missed.
        while !room() && !self.is_closed() {
            if s.wait_cond.wait_until(&mut g, deadline).timed_out() {
                break;
            }
        }
        drop(g);
        s.waiters.fetch_sub(1, Ordering::SeqCst);
    }

    /// Closes the connection: queued messages are dropped, the peer is told, and no
    /// reconnect happens. No `handle_reset` is delivered for a connection closed this way.
    pub fn mark_down(&self) {
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Route::Worker { ring, doorbell, .. } = &self.shared.route {
            // Retry until the worker takes it: the ring drains continuously.
            let mut cmd = Command::MarkDown {
                conn: self.shared.id,
            };
            for _ in 0..1000 {
                match ring.push(cmd) {
                    Ok(()) => break,
                    Err(c) => {
                        cmd = c;
                        doorbell.ring();
                        std::thread::yield_now();
                    }
                }
            }
            doorbell.ring();
        }
    }

    /// Sends, waiting (parked, not spinning) while the connection's queue is full, until
    /// `timeout` passes. A full queue drains as the peer acknowledges; the waiter resumes
    /// when the queue is back under half its limits. Errors other than backpressure (closed,
    /// too large) return at once; on time-out the last `QueueFull` error is returned.
    #[allow(clippy::result_large_err)] // see `send`
    pub fn send_wait(&self, msg: Message, timeout: Duration) -> Result<(), SendError> {
        let mut e = match self.send(msg) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // Only a refused send pays for reading the clock.
        let deadline = Instant::now() + timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(e);
            }
            match e.kind {
                SendErrorKind::QueueFull { .. } => self.wait_for_room(deadline, 1, e.message.len()),
                SendErrorKind::RingFull => {
                    // The worker is draining its ring; give it the CPU.
                    std::thread::sleep(Duration::from_micros(20));
                }
                _ => return Err(e),
            }
            e = match self.send(e.message) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
        }
    }

    pub(crate) fn release(&self, msgs: usize, bytes: usize) {
        let s = &*self.shared;
        s.queued_msgs.fetch_sub(msgs, Ordering::SeqCst);
        s.queued_bytes.fetch_sub(bytes, Ordering::SeqCst);
        if s.waiters.load(Ordering::SeqCst) > 0 {
            let _g = s.wait_lock.lock();
            s.wait_cond.notify_all();
        }
    }

    /// Wakes senders parked in `send_wait` (the connection closed).
    pub(crate) fn wake_waiters(&self) {
        let s = &*self.shared;
        if s.waiters.load(Ordering::SeqCst) > 0 {
            let _g = s.wait_lock.lock();
            s.wait_cond.notify_all();
        }
    }

    pub(crate) fn worker_index(&self) -> Option<usize> {
        match &self.shared.route {
            Route::Worker { index, .. } => Some(*index),
            Route::Local(_) => None,
        }
    }
}
