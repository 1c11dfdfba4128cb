//! The application's handle on a connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::counters::Counters;
use crate::error::{BatchSendError, RecordSendError, SendError, SendErrorKind};
use crate::messenger::dispatch::{DispatchQueue, Item};
use crate::messenger::protocol::{PeerIdentity, RecordBlock, BLOCK_COPY_MAX};
use crate::messenger::worker::Command;
use crate::messenger::{Message, Policy, RecordBatch};
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
        let len = msg.len();
        let fail = |kind, message| Err(SendError { kind, message });
        if let Err(kind) = self.check(len) {
            return fail(kind, msg);
        }
        let (ring, doorbell) = match &s.route {
            Route::Local(dq) => {
                Counters::add(&s.counters.local_delivered, 1);
                dq.push(Item::Message(self.clone(), msg));
                return Ok(());
            }
            Route::Worker { ring, doorbell, .. } => (ring, doorbell),
        };
        if let Err(kind) = self.reserve(1, len) {
            return fail(kind, msg);
        }
        let mut msg = msg;
        if s.sender_crc {
            // The message is ours now: its crc is computed here, on the sending thread, and
            // not again by the worker.
            msg.memo_crc();
        }
        match self.push(ring, doorbell, Command::Send { conn: s.id, msg }, 1, len) {
            Ok(()) => Ok(()),
            Err(Command::Send { mut msg, .. }) => {
                msg.forget_crc();
                fail(SendErrorKind::RingFull, msg)
            }
            Err(_) => unreachable!("pushed a Send"),
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
    /// An application that makes small messages from plain bytes can write them into the
    /// records itself: [`Connection::send_records`].
    pub fn send_batch(&self, msgs: Vec<Message>) -> Result<(), BatchSendError> {
        let s = &*self.shared;
        let fail = |kind, messages| Err(BatchSendError { kind, messages });
        if msgs.is_empty() {
            return Ok(());
        }
        let (mut total, mut largest) = (0, 0);
        for m in &msgs {
            total += m.len();
            largest = largest.max(m.len());
        }
        if let Err(kind) = self.check(largest) {
            return fail(kind, msgs);
        }
        let n = msgs.len();
        let (ring, doorbell) = match &s.route {
            Route::Local(dq) => {
                Counters::add(&s.counters.local_delivered, n as u64);
                for m in msgs {
                    dq.push(Item::Message(self.clone(), m));
                }
                return Ok(());
            }
            Route::Worker { ring, doorbell, .. } => (ring, doorbell),
        };
        if let Err(kind) = self.reserve(n, total) {
            return fail(kind, msgs);
        }
        // Small messages are encoded into record blocks here, on the sending thread, and
        // dropped here once the worker has the blocks (see `RecordBlock`).
        if largest <= BLOCK_COPY_MAX {
            let blocks = RecordBlock::encode(&msgs);
            return match self.push(
                ring,
                doorbell,
                Command::SendRecords { conn: s.id, blocks },
                n,
                total,
            ) {
                Ok(()) => Ok(()),
                Err(_) => fail(SendErrorKind::RingFull, msgs),
            };
        }
        let mut msgs = msgs;
        if s.sender_crc {
            msgs.iter_mut().for_each(Message::memo_crc);
        }
        match self.push(
            ring,
            doorbell,
            Command::SendBatch { conn: s.id, msgs },
            n,
            total,
        ) {
            Ok(()) => Ok(()),
            Err(Command::SendBatch { mut msgs, .. }) => {
                msgs.iter_mut().for_each(Message::forget_crc);
                fail(SendErrorKind::RingFull, msgs)
            }
            Err(_) => unreachable!("pushed a SendBatch"),
        }
    }

    /// Queues a [`RecordBatch`]: small messages the application wrote straight into wire
    /// records, with no [`Message`] or buffer per message. Like [`Connection::send_batch`]:
    /// one queue reservation, one ring slot, at most one wake-up, all or nothing (a refused
    /// batch is handed back whole), and in order with everything else sent on the
    /// connection.
    #[allow(clippy::result_large_err)] // see `send`: the batch is handed back by value
    pub fn send_records(&self, mut batch: RecordBatch) -> Result<(), RecordSendError> {
        let s = &*self.shared;
        let fail = |kind, batch| Err(RecordSendError { kind, batch });
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(kind) = self.check(batch.largest()) {
            return fail(kind, batch);
        }
        let (n, total) = (batch.len(), batch.payload_bytes());
        let (ring, doorbell) = match &s.route {
            Route::Local(dq) => {
                Counters::add(&s.counters.local_delivered, n as u64);
                for block in batch.take_blocks() {
                    for m in block.to_messages() {
                        dq.push(Item::Message(self.clone(), m));
                    }
                }
                return Ok(());
            }
            Route::Worker { ring, doorbell, .. } => (ring, doorbell),
        };
        if let Err(kind) = self.reserve(n, total) {
            return fail(kind, batch);
        }
        let blocks = batch.take_blocks();
        match self.push(
            ring,
            doorbell,
            Command::SendRecords { conn: s.id, blocks },
            n,
            total,
        ) {
            Ok(()) => Ok(()),
            Err(Command::SendRecords { blocks, .. }) => {
                batch.restore(blocks);
                fail(SendErrorKind::RingFull, batch)
            }
            Err(_) => unreachable!("pushed a SendRecords"),
        }
    }

    /// The checks before any send: the connection is open and the largest payload, `largest`
    /// bytes, is within the message limit.
    fn check(&self, largest: usize) -> Result<(), SendErrorKind> {
        let s = &*self.shared;
        if s.closed.load(Ordering::Acquire) {
            return Err(SendErrorKind::Closed);
        }
        if largest > s.max_message {
            return Err(SendErrorKind::TooLarge {
                len: largest,
                max: s.max_message,
            });
        }
        Ok(())
    }

    /// Reserves queue room for `n` messages of `bytes` payload bytes, given back as the peer
    /// acknowledges them (or by [`Connection::release`] when the send fails).
    fn reserve(&self, n: usize, bytes: usize) -> Result<(), SendErrorKind> {
        let s = &*self.shared;
        let q_msgs = s.queued_msgs.fetch_add(n, Ordering::Relaxed) + n;
        let q_bytes = s.queued_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if q_msgs > s.max_msgs || q_bytes > s.max_bytes {
            self.release(n, bytes);
            Counters::add(&s.counters.send_refused, 1);
            return Err(SendErrorKind::QueueFull {
                msgs: q_msgs - n,
                bytes: q_bytes - bytes,
                max_msgs: s.max_msgs,
                max_bytes: s.max_bytes,
            });
        }
        Ok(())
    }

    /// Hands `cmd`, carrying `n` reserved messages of `bytes` bytes, to the worker and rings
    /// its doorbell. A full ring gives the reservation back and returns the command.
    fn push(
        &self,
        ring: &mpsc::Sender<Command>,
        doorbell: &Doorbell,
        cmd: Command,
        n: usize,
        bytes: usize,
    ) -> Result<(), Command> {
        let r = ring.push(cmd);
        if r.is_err() {
            self.release(n, bytes);
            Counters::add(&self.shared.counters.send_refused, 1);
        }
        // Rung on failure too: a parked worker must drain the ring.
        doorbell.ring();
        r
    }

    /// [`Connection::send_batch`], waiting (parked) while the queue is full, until `timeout`.
    /// A batch larger than the queue limits can never be accepted and fails at once.
    pub fn send_batch_wait(
        &self,
        msgs: Vec<Message>,
        timeout: Duration,
    ) -> Result<(), BatchSendError> {
        let size = |m: &Vec<Message>| (m.len(), m.iter().map(Message::len).sum());
        self.retry(msgs, timeout, size, |m| {
            self.send_batch(m).map_err(|e| (e.kind, e.messages))
        })
        .map_err(|(kind, messages)| BatchSendError { kind, messages })
    }

    /// [`Connection::send_records`], waiting (parked) while the queue is full, until
    /// `timeout`. A batch larger than the queue limits can never be accepted and fails at
    /// once.
    #[allow(clippy::result_large_err)] // see `send`
    pub fn send_records_wait(
        &self,
        batch: RecordBatch,
        timeout: Duration,
    ) -> Result<(), RecordSendError> {
        let size = |b: &RecordBatch| (b.len(), b.payload_bytes());
        self.retry(batch, timeout, size, |b| {
            self.send_records(b).map_err(|e| (e.kind, e.batch))
        })
        .map_err(|(kind, batch)| RecordSendError { kind, batch })
    }

    /// Runs `send` on `item` until it is accepted, waiting (parked, not spinning) while the
    /// queue is full and briefly while the worker's ring is, until `timeout`. Other errors
    /// return at once, and so does an item (`size`: messages, bytes) that exceeds the queue
    /// limits, which can never be accepted; on time-out the last error is returned.
    fn retry<T>(
        &self,
        item: T,
        timeout: Duration,
        size: impl Fn(&T) -> (usize, usize),
        send: impl Fn(T) -> Result<(), (SendErrorKind, T)>,
    ) -> Result<(), (SendErrorKind, T)> {
        let (mut kind, mut item) = match send(item) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let s = &*self.shared;
        let (n, bytes) = size(&item);
        if n > s.max_msgs || bytes > s.max_bytes {
            return Err((kind, item));
        }
        // Only a refused send pays for reading the clock.
        let deadline = Instant::now() + timeout;
        loop {
            if Instant::now() >= deadline {
                return Err((kind, item));
            }
            match kind {
                SendErrorKind::QueueFull { .. } => self.wait_for_room(deadline, n, bytes),
                // The worker is draining its ring; give it the CPU.
                SendErrorKind::RingFull => std::thread::sleep(Duration::from_micros(20)),
                _ => return Err((kind, item)),
            }
            (kind, item) = match send(item) {
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
    /// too large) return at once, and so does a message larger than the queue's byte limit,
    /// which could never fit; on time-out the last `QueueFull` error is returned.
    #[allow(clippy::result_large_err)] // see `send`
    pub fn send_wait(&self, msg: Message, timeout: Duration) -> Result<(), SendError> {
        self.retry(
            msg,
            timeout,
            |m| (1, m.len()),
            |m| self.send(m).map_err(|e| (e.kind, e.message)),
        )
        .map_err(|(kind, message)| SendError { kind, message })
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
