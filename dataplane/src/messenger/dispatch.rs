//! Delivery to the application: the [`Dispatcher`] trait and the [`DispatchQueue`] thread.
//!
//! Messages a dispatcher accepts for fast dispatch are handed over inline on the worker thread
//! (no queueing, no thread hop). Everything else goes through one dispatch thread, highest
//! priority first, FIFO within a priority. The queue is bounded in bytes: above the throttle,
//! workers stop reading from sockets, so a slow application pushes back on its peers through
//! TCP flow control instead of growing memory.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::messenger::{priority, Connection, Message, MessageRef};
use crate::ring::Doorbell;

/// The application's side of a messenger (Ceph's `Dispatcher`).
pub trait Dispatcher: Send + Sync + 'static {
    /// Whether `msg` may be handled inline on the worker thread. Fast dispatch must not
    /// block: it delays every connection of that worker.
    fn can_fast_dispatch(&self, _msg: &Message) -> bool {
        false
    }

    /// Handles a message inline on the worker thread.
    fn fast_dispatch(&self, conn: &Connection, msg: Message) {
        self.dispatch(conn, msg);
    }

    /// Handles a message on the dispatch thread.
    fn dispatch(&self, conn: &Connection, msg: Message);

    /// Whether this dispatcher takes any message type in place; only then is
    /// [`Dispatcher::in_place`] asked. Default false.
    fn dispatches_in_place(&self) -> bool {
        false
    }

    /// Whether messages of `msg_type` are handled in place by
    /// [`Dispatcher::dispatch_in_place`]: on the worker thread, the payload borrowed from the
    /// receive buffer, with no `Message` built and no reference count taken on the buffer
    /// (two atomic operations and a fifth of the receiving worker's work per small message).
    /// For consumers that parse or apply a message at once, as eRPC's request handlers do.
    /// The same rules as fast dispatch apply: never block. The answer must depend on
    /// `msg_type` only (it is remembered for runs of one type). Asked only when
    /// [`Dispatcher::dispatches_in_place`] is true. Default false. Even for such a type, a
    /// message that must wait behind an earlier event, or a large one whose payload arrived
    /// spread over several buffers a stack lent (not contiguous), comes as an owned
    /// [`Message`] through [`Dispatcher::fast_dispatch`] or [`Dispatcher::dispatch`].
    fn in_place(&self, _msg_type: u16) -> bool {
        false
    }

    /// Handles a message in place (see [`Dispatcher::in_place`]). The payload is valid only
    /// during the call. The default copies it into an owned message for
    /// [`Dispatcher::fast_dispatch`].
    fn dispatch_in_place(&self, conn: &Connection, msg: MessageRef<'_>) {
        self.fast_dispatch(conn, msg.to_message());
    }

    /// An outgoing connection finished its first handshake.
    fn handle_connect(&self, _conn: &Connection) {}

    /// An incoming connection finished its handshake.
    fn handle_accept(&self, _conn: &Connection) {}

    /// A connection was lost for good (lossy fault, refused handshake, closed by the peer);
    /// its queued messages were dropped.
    fn handle_reset(&self, _conn: &Connection) {}

    /// The peer restarted and lost its session; our unacknowledged messages are resent to the
    /// new incarnation.
    fn handle_remote_reset(&self, _conn: &Connection) {}
}

/// What the dispatch thread delivers.
pub(crate) enum Item {
    Message(Connection, Message),
    Connect(Connection),
    Accept(Connection),
    Reset(Connection),
    RemoteReset(Connection),
}

struct Inner {
    classes: BTreeMap<u8, VecDeque<Item>>,
    stop: bool,
}

/// The queue between workers and the dispatch thread.
pub(crate) struct DispatchQueue {
    inner: Mutex<Inner>,
    cond: Condvar,
    bytes: AtomicUsize,
    throttle: usize,
    workers: Mutex<Vec<Arc<Doorbell>>>,
}

impl DispatchQueue {
    pub(crate) fn new(throttle: usize) -> DispatchQueue {
        DispatchQueue {
            inner: Mutex::new(Inner {
                classes: BTreeMap::new(),
                stop: false,
            }),
            cond: Condvar::new(),
            bytes: AtomicUsize::new(0),
            throttle,
            workers: Mutex::new(Vec::new()),
        }
    }

    /// Workers to wake when the queue drops below the throttle.
    pub(crate) fn set_workers(&self, bells: Vec<Arc<Doorbell>>) {
        *self.workers.lock() = bells;
    }

    /// True while workers must not read more from sockets.
    pub(crate) fn over_throttle(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= self.throttle
    }

    pub(crate) fn push(&self, item: Item) {
        let prio = match &item {
            Item::Message(_, m) => {
                self.bytes.fetch_add(m.len(), Ordering::Relaxed);
                m.priority
            }
            _ => priority::HIGHEST,
        };
        let mut g = self.inner.lock();
        g.classes.entry(prio).or_default().push_back(item);
        drop(g);
        self.cond.notify_one();
    }

    fn pop(&self) -> Option<Item> {
        let mut g = self.inner.lock();
        loop {
            if let Some(mut e) = g.classes.last_entry() {
                let item = e.get_mut().pop_front();
                if e.get().is_empty() {
                    e.remove();
                }
                return item;
            }
            if g.stop {
                return None;
            }
            self.cond.wait(&mut g);
        }
    }

    /// Stops the dispatch thread once the queue is drained.
    pub(crate) fn stop(&self) {
        self.inner.lock().stop = true;
        self.cond.notify_all();
    }

    /// The dispatch thread's loop.
    pub(crate) fn run(&self, d: &dyn Dispatcher) {
        while let Some(item) = self.pop() {
            match item {
                Item::Message(c, m) => {
                    let len = m.len();
                    d.dispatch(&c, m);
                    let before = self.bytes.fetch_sub(len, Ordering::Relaxed);
                    if before >= self.throttle && before - len < self.throttle {
                        for b in self.workers.lock().iter() {
                            b.ring();
                        }
                    }
                }
                Item::Connect(c) => d.handle_connect(&c),
                Item::Accept(c) => d.handle_accept(&c),
                Item::Reset(c) => d.handle_reset(&c),
                Item::RemoteReset(c) => d.handle_remote_reset(&c),
            }
        }
    }
}
