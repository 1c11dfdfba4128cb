//! A dispatcher that checks delivery: per stream, every message built by
//! [`payload`](crate::payload::payload) must arrive exactly once, in order (from sequence 0) and
//! byte for byte. It also records connection events, and can echo or keep what it gets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dataplane::{Connection, Dispatcher, Message};
use parking_lot::Mutex;

use crate::payload::{body_intact, header};
use crate::wait::wait_until;

/// At most this many out-of-order reports are kept (the first ones tell the story).
const MAX_ORDER_ERRORS: usize = 20;

/// What a [`Checker`] saw besides messages, with the connection's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    /// An outgoing connection finished its first handshake.
    Connect(u64),
    /// An incoming connection finished its handshake.
    Accept(u64),
    /// A connection was reset.
    Reset(u64),
    /// The peer reset its session.
    RemoteReset(u64),
}

/// Checks every message: per stream, sequence numbers must arrive exactly once and in order
/// (starting from 0), and payload bytes must match the generator. A message is counted (see
/// [`Checker::count`]) only once it has been checked, echoed and kept, so a test that waited
/// for a count sees every error of those messages in [`Checker::assert_clean`].
#[derive(Default)]
pub struct Checker {
    next: Mutex<HashMap<u32, u64>>,
    received: AtomicU64,
    bytes: AtomicU64,
    errors: Mutex<Vec<String>>,
    events: Mutex<Vec<Ev>>,
    kept: Mutex<Vec<Message>>,
    keep: bool,
    fast: bool,
    echo: bool,
}

impl Checker {
    /// Checks messages inline on the worker thread (fast dispatch).
    pub fn fast() -> Arc<Checker> {
        Arc::new(Checker {
            fast: true,
            ..Checker::default()
        })
    }

    /// Checks messages on the dispatch thread (through the dispatch queue).
    pub fn queued() -> Arc<Checker> {
        Arc::new(Checker::default())
    }

    /// Like [`Checker::queued`], and keeps every message, in arrival order (see
    /// [`Checker::kept`]).
    pub fn keeping() -> Arc<Checker> {
        Arc::new(Checker {
            keep: true,
            ..Checker::default()
        })
    }

    /// Like [`Checker::fast`], and sends every message back on its connection.
    pub fn echo() -> Arc<Checker> {
        Arc::new(Checker {
            fast: true,
            echo: true,
            ..Checker::default()
        })
    }

    fn check(&self, conn: &Connection, m: Message) {
        self.bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
        let data = m.payload.to_vec();
        match header(&data) {
            None => self
                .errors
                .lock()
                .push(format!("short message {}", data.len())),
            Some((stream, seq)) => {
                {
                    let mut next = self.next.lock();
                    let e = next.entry(stream).or_insert(0);
                    if seq != *e {
                        let mut errs = self.errors.lock();
                        if errs.len() < MAX_ORDER_ERRORS {
                            errs.push(format!("stream {stream}: expected seq {}, got {seq}", *e));
                        }
                    }
                    *e = seq + 1;
                }
                if !body_intact(seq, &data) {
                    self.errors
                        .lock()
                        .push(format!("stream {stream} seq {seq}: payload corrupted"));
                }
            }
        }
        if self.keep {
            self.kept.lock().push(m.clone());
        }
        if self.echo {
            let _ = conn.send(m);
        }
        self.received.fetch_add(1, Ordering::Release);
    }

    /// Messages checked so far.
    pub fn count(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// Payload bytes received so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The sequence number expected next on `stream` (the count of its messages when all
    /// arrived in order), `None` before its first message.
    pub fn next_seq(&self, stream: u32) -> Option<u64> {
        self.next.lock().get(&stream).copied()
    }

    /// How many distinct streams sent at least one message.
    pub fn streams(&self) -> usize {
        self.next.lock().len()
    }

    /// Panics with every recorded delivery error, if there is any.
    pub fn assert_clean(&self) {
        let errs = self.errors.lock();
        assert!(errs.is_empty(), "delivery errors: {errs:?}");
    }

    /// Waits up to `timeout` until exactly `n` messages have been checked, then asserts they
    /// all arrived intact, exactly once and in order ([`Checker::assert_clean`]).
    pub fn assert_delivered(&self, n: u64, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.count() == n),
            "delivered {} of {n} messages",
            self.count()
        );
        self.assert_clean();
    }

    /// Waits up to `timeout` until at least `n` messages have been checked, waits `settle`
    /// more for any duplicate, then asserts exactly `n` arrived, all intact, once and in order.
    /// For tests where messages may be resent (faults, reconnections, migrations).
    pub fn assert_delivered_exactly_once(&self, n: u64, timeout: Duration, settle: Duration) {
        assert!(
            wait_until(timeout, || self.count() >= n),
            "delivered {} of {n}",
            self.count()
        );
        std::thread::sleep(settle);
        assert_eq!(self.count(), n, "exactly once");
        self.assert_clean();
    }

    /// The connection events so far, in order.
    pub fn events(&self) -> Vec<Ev> {
        self.events.lock().clone()
    }

    /// The messages kept so far, in arrival order (only a [`Checker::keeping`] keeps any).
    pub fn kept(&self) -> Vec<Message> {
        self.kept.lock().clone()
    }

    /// Drops the messages kept so far (on the calling thread).
    pub fn clear_kept(&self) {
        self.kept.lock().clear();
    }
}

impl Dispatcher for Checker {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        self.fast
    }
    fn fast_dispatch(&self, conn: &Connection, m: Message) {
        self.check(conn, m);
    }
    fn dispatch(&self, conn: &Connection, m: Message) {
        self.check(conn, m);
    }
    fn handle_connect(&self, c: &Connection) {
        self.events.lock().push(Ev::Connect(c.id()));
    }
    fn handle_accept(&self, c: &Connection) {
        self.events.lock().push(Ev::Accept(c.id()));
    }
    fn handle_reset(&self, c: &Connection) {
        self.events.lock().push(Ev::Reset(c.id()));
    }
    fn handle_remote_reset(&self, c: &Connection) {
        self.events.lock().push(Ev::RemoteReset(c.id()));
    }
}
