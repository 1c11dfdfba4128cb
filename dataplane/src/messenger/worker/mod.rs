//! A messenger worker: one thread, one event loop, one stack worker, and the connections it
//! owns. Other threads reach those connections only through the worker's command ring.

mod accept;
mod migrate;

use accept::Pending;

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Token;
use slab::Slab;

use crate::buf::BufPool;
use crate::counters::Counters;
use crate::error::Error;
use crate::event::{EventCenter, Fired};
use crate::messenger::dispatch::Item;
use crate::messenger::fault::FaultInjector;
use crate::messenger::protocol::{
    Fault, FrameDecoder, RecordBlock, Role, Session, SessionEvent, SessionState,
};
use crate::messenger::{Connection, Message, Policy, Shared};
use crate::ring::mpsc;
use crate::secure::Sealer;
use crate::stack::{ConnectedSocket, Segment, ServerSocket, SocketOptions, StackWorker};
use crate::wire::Hello;

/// Most slices handed to one `writev` (Linux `IOV_MAX`).
const IOV_MAX: usize = 1024;
/// Reads per readiness event before other connections get a turn.
const READS_PER_TURN: usize = 16;
/// Commands taken from the ring per batch.
const COMMAND_BATCH: usize = 4096;

/// Work for a worker, sent through its command ring.
pub(crate) enum Command {
    /// Queue a message on a connection.
    Send { conn: u64, msg: Message },
    /// Queue several messages on a connection, in order.
    SendBatch { conn: u64, msgs: Vec<Message> },
    /// Queue small messages the sender encoded as record blocks, in order.
    SendRecords { conn: u64, blocks: Vec<RecordBlock> },
    /// Open an outgoing connection on a lane (0 for the shared one from `connect`).
    Connect {
        conn: Connection,
        addr: SocketAddr,
        lane: u32,
    },
    /// Take over an accepted, handshaking socket (or pass it on: see [`Worker::on_adopt`]).
    Adopt(Box<Adopt>),
    /// Install a session migrated from another worker, with the new socket of its client.
    Migrate(Box<Migrate>),
    /// A session is migrating here: hold the commands for it until it arrives.
    Expect { conn: u64 },
    /// The connection closed for good at the worker that owned it: drop its forwarding entry.
    Forget { conn: u64 },
    /// Listen on an address (port ranges tried in order).
    Listen {
        addr: SocketAddr,
        ports: Option<(u16, u16)>,
        reply: std::sync::mpsc::SyncSender<Result<SocketAddr, Error>>,
    },
    /// Stop listening on an address (a failed `bind` closing what it opened).
    Unlisten {
        addr: SocketAddr,
        reply: std::sync::mpsc::SyncSender<()>,
    },
    /// Close a connection on purpose.
    MarkDown { conn: u64 },
    /// Close everything and exit.
    Shutdown,
}

/// An accepted socket whose hello was read, handed to the worker owning its session.
pub(crate) struct Adopt {
    socket: Box<dyn ConnectedSocket>,
    decoder: FrameDecoder,
    hello: Hello,
    conn: Connection,
    /// Secure mode: seals what the server sends on this transport.
    sealer: Option<Sealer>,
}

/// A session handed from the worker that owned it to the home worker of its client's new
/// socket (Ceph's ProtocolV2 `reuse_connection`). `state` is `None` when the session closed
/// before it could move: the new socket is then taken as a new session, as `Adopt` would.
pub(crate) struct Migrate {
    state: Option<Box<ConnState>>,
    adopt: Adopt,
}

/// What a worker knows about a connection it no longer, or not yet, owns.
///
/// A connection's handles always push to the worker in their `Route` (the *route worker*).
/// When its session migrates away, the route worker keeps `Forward` to where it went and
/// passes every later command on, in arrival order: one extra ring hop per command for a
/// migrated session. When a session migrates between two other workers, the route worker
/// tells the destination to `Expect` it, switches its `Forward` at once and sends the
/// `Adopt` down the old path; the destination holds (`Awaiting`) what the route worker
/// forwards until the session arrives from the old owner, which has by then applied every
/// command forwarded before. Each connection's commands therefore reach its session in the
/// order the route worker received them. Sockets can arrive faster than sessions travel: an
/// `Expect` reaching a worker that still awaits the session for an earlier move is held too,
/// and takes effect when replayed (after the session has left again).
enum Moved {
    /// The session is (or is on its way) there: forward commands.
    Forward(usize),
    /// The session is on its way here: hold its commands, replay them once it is installed.
    Awaiting(Vec<Command>),
}

/// A connection owned by this worker.
struct ConnState {
    handle: Connection,
    session: Session,
    socket: Option<Box<dyn ConnectedSocket>>,
    decoder: FrameDecoder,
    /// Connect target (clients).
    target: Option<SocketAddr>,
    connecting: bool,
    connect_deadline: Option<Instant>,
    backoff: Duration,
    reconnect_at: Option<Instant>,
    timer_at: Option<Instant>,
    /// Injected delay: reads are held back until then.
    read_delay: Option<Instant>,
    closing: Option<Instant>,
    dirty: bool,
    /// On `timers_due`: the session changed this round and its timer is recomputed at the
    /// end of the round.
    timer_due: bool,
    /// The socket refused bytes (`WouldBlock` or a short write): nothing is written until its
    /// writable event, so a full socket never makes the flush loop spin.
    write_blocked: bool,
}

enum Entry {
    Listener(Box<dyn ServerSocket>),
    Pending(Box<Pending>),
    Conn(Box<ConnState>),
}

/// One worker thread's state.
pub(crate) struct Worker {
    /// Memory for the gather lists of writes, reused from one write to the next.
    gather: Gather,
    /// This worker's stack checks every payload byte end to end and the configuration trusts
    /// it (`Config::trust_transport_crc`): its sessions offer to leave payload crcs out.
    checked: bool,
    index: usize,
    shared: Arc<Shared>,
    center: EventCenter,
    stack: Box<dyn StackWorker>,
    rx: mpsc::Receiver<Command>,
    pool: BufPool,
    entries: Slab<Entry>,
    by_id: HashMap<u64, usize>,
    /// Connections whose session migrated away (route worker) or is migrating here.
    moved: HashMap<u64, Moved>,
    /// Commands for other workers, in order, waiting for room in their rings (a worker never
    /// blocks on another's full ring: two workers forwarding to each other would deadlock).
    outbox: VecDeque<(usize, Command)>,
    /// Accepted sockets still handshaking (they count against `max_connections`).
    pending: usize,
    /// (connection id, token) of the last lookup; id 0 is never used.
    last_lookup: (u64, usize),
    dirty: Vec<usize>,
    /// Connections whose timer is recomputed at the end of this round, after the round's
    /// writes: an ack that leaves with a reply in the same round then never reaches the
    /// timer heap.
    timers_due: Vec<usize>,
    read_again: Vec<usize>,
    read_blocked: Vec<usize>,
    /// An empty list with capacity, swapped with `dirty` / `read_again` / `read_blocked`
    /// while they are worked through, so that none of them loses its capacity (taking one
    /// left an empty list whose next push allocated: a malloc and a free per message).
    spare: Vec<usize>,
    inject: FaultInjector,
    fired: Vec<Fired>,
    cmds: Vec<Command>,
    opts: SocketOptions,
    now: Instant,
    stopping: bool,
}

impl Worker {
    pub(crate) fn new(
        index: usize,
        shared: Arc<Shared>,
        center: EventCenter,
        stack: Box<dyn StackWorker>,
        rx: mpsc::Receiver<Command>,
        pool: BufPool,
    ) -> Worker {
        let cfg = &shared.cfg;
        let opts = SocketOptions {
            nodelay: cfg.nodelay,
            send_buffer: (cfg.send_buffer_bytes > 0).then_some(cfg.send_buffer_bytes),
            recv_buffer: (cfg.recv_buffer_bytes > 0).then_some(cfg.recv_buffer_bytes),
            ..SocketOptions::default()
        };
        let inject = FaultInjector::new(&cfg.inject, index);
        let checked = shared.workers[index].checked;
        Worker {
            gather: Gather::default(),
            checked,
            index,
            shared,
            center,
            stack,
            rx,
            pool,
            entries: Slab::new(),
            by_id: HashMap::new(),
            moved: HashMap::new(),
            outbox: VecDeque::new(),
            pending: 0,
            last_lookup: (0, 0),
            dirty: Vec::new(),
            timers_due: Vec::new(),
            read_again: Vec::new(),
            read_blocked: Vec::new(),
            spare: Vec::new(),
            inject,
            fired: Vec::with_capacity(1024),
            cmds: Vec::with_capacity(COMMAND_BATCH),
            opts,
            now: Instant::now(),
            stopping: false,
        }
    }

    /// The worker's loop; returns after a `Shutdown` command.
    pub(crate) fn run(mut self) {
        for p in self.stack.take_pollers() {
            self.center.add_poller(p);
        }
        while !self.stopping {
            self.fired.clear();
            let max_wait = if !self.read_again.is_empty() {
                Some(Duration::ZERO)
            } else if !self.outbox.is_empty() {
                Some(Duration::from_micros(50))
            } else if !self.read_blocked.is_empty() {
                Some(Duration::from_millis(1))
            } else {
                None
            };
            let rx = &self.rx;
            if let Err(e) = self
                .center
                .wait(&mut self.fired, max_wait, &|| !rx.is_empty())
            {
                tracing::error!(worker = self.index, error = %e, "event loop failed");
                break;
            }
            self.now = self.center.now();
            self.drain_commands();
            let fired = std::mem::take(&mut self.fired);
            for f in &fired {
                match *f {
                    Fired::File {
                        token,
                        readable,
                        writable,
                        error,
                        closed,
                        polled,
                    } => self.on_file(token.0, readable || error, writable, closed, polled),
                    Fired::Timer { key } => self.on_timer(key as usize),
                }
            }
            self.fired = fired;
            // Messages sent by dispatchers that ran on this thread just now (an echo, a
            // reply) go out in this round, not after another turn of the loop.
            self.drain_commands();
            self.retry_reads();
            self.flush_dirty();
            self.flush_outbox();
            self.flush_timers();
            self.shared.workers[self.index]
                .forwarding
                .store(self.moved.len(), std::sync::atomic::Ordering::Relaxed);
        }
        self.close_all();
    }

    fn drain_commands(&mut self) {
        let mut cmds = std::mem::take(&mut self.cmds);
        loop {
            cmds.clear();
            if self.rx.pop_batch(&mut cmds, COMMAND_BATCH) == 0 {
                break;
            }
            for c in cmds.drain(..) {
                self.on_command(c);
            }
        }
        self.cmds = cmds;
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Send { conn, .. }
            | Command::SendBatch { conn, .. }
            | Command::SendRecords { conn, .. }
            | Command::MarkDown { conn }
                if self.lookup(conn).is_none() && self.moved.contains_key(&conn) =>
            {
                self.divert(conn, c)
            }
            Command::Send { conn, msg } => self.queue_on(conn, 1, |s, now| s.queue(msg, now)),
            Command::SendBatch { conn, msgs } => {
                let n = msgs.len();
                self.queue_on(conn, n, |s, now| s.queue_batch(msgs, now));
            }
            Command::SendRecords { conn, blocks } => {
                let n = blocks.iter().map(RecordBlock::count).sum();
                self.queue_on(conn, n, |s, now| s.queue_records(blocks, now));
            }
            Command::Connect { conn, addr, lane } => self.connect(conn, addr, lane),
            Command::Adopt(a) => self.on_adopt(*a),
            Command::Migrate(m) => self.on_migrate(*m),
            Command::Expect { conn } => match self.moved.get_mut(&conn) {
                // Still waiting for an earlier migration here: this one comes after it (the
                // session will have left again by then), so it waits its turn.
                Some(Moved::Awaiting(held)) => held.push(Command::Expect { conn }),
                _ => {
                    self.moved.insert(conn, Moved::Awaiting(Vec::new()));
                }
            },
            Command::Forget { conn } => {
                if matches!(self.moved.get(&conn), Some(Moved::Forward(_))) {
                    self.moved.remove(&conn);
                }
            }
            Command::Unlisten { addr, reply } => {
                self.unlisten(addr);
                let _ = reply.send(());
            }
            Command::Listen { addr, ports, reply } => {
                let r = self.listen(addr, ports);
                let _ = reply.send(r);
            }
            Command::MarkDown { conn } => {
                if let Some(t) = self.by_id.get(&conn).copied() {
                    self.mark_down(t);
                }
            }
            Command::Shutdown => self.stopping = true,
        }
    }

    /// Hands `msgs` messages for connection `conn` to its session (`queue` does it), or counts
    /// them dropped when the connection is gone.
    fn queue_on(&mut self, conn: u64, msgs: usize, queue: impl FnOnce(&mut Session, Instant)) {
        match self.lookup(conn) {
            Some(t) => {
                if let Some(Entry::Conn(st)) = self.entries.get_mut(t) {
                    queue(&mut st.session, self.now);
                }
                self.mark_dirty(t);
            }
            None => Counters::add(&self.shared.counters.dropped, msgs as u64),
        }
    }

    /// Token of connection `id`; consecutive sends usually target the same connection, so the
    /// last answer is cached.
    #[inline]
    fn lookup(&mut self, id: u64) -> Option<usize> {
        if self.last_lookup.0 == id {
            return Some(self.last_lookup.1);
        }
        let t = self.by_id.get(&id).copied()?;
        self.last_lookup = (id, t);
        Some(t)
    }

    /// Closes the listeners bound to `addr`.
    fn unlisten(&mut self, addr: SocketAddr) {
        let tokens: Vec<usize> = self
            .entries
            .iter()
            .filter(
                |(_, e)| matches!(e, Entry::Listener(l) if l.local_addr().is_ok_and(|a| a == addr)),
            )
            .map(|(t, _)| t)
            .collect();
        for t in tokens {
            if let Entry::Listener(mut l) = self.entries.remove(t) {
                let _ = l.deregister(self.center.registry());
                tracing::info!(worker = self.index, %addr, "stopped listening");
            }
        }
    }

    fn listen(&mut self, addr: SocketAddr, ports: Option<(u16, u16)>) -> Result<SocketAddr, Error> {
        let candidates: Vec<SocketAddr> = match ports {
            Some((lo, hi)) if addr.port() == 0 => {
                (lo..=hi).map(|p| SocketAddr::new(addr.ip(), p)).collect()
            }
            _ => vec![addr],
        };
        let mut last = None;
        for a in candidates {
            match self.stack.listen(a, &self.opts) {
                Ok(mut l) => {
                    let bound = l.local_addr().map_err(|source| Error::Io {
                        what: "reading bound address".into(),
                        source,
                    })?;
                    let e = self.entries.vacant_entry();
                    let t = e.key();
                    l.register(self.center.registry(), Token(t))
                        .map_err(|source| Error::Io {
                            what: format!("registering listener {bound}"),
                            source,
                        })?;
                    e.insert(Entry::Listener(l));
                    tracing::info!(worker = self.index, %bound, "listening");
                    return Ok(bound);
                }
                Err(e) => last = Some(e),
            }
        }
        match (last, ports) {
            (Some(_), Some((min, max))) if addr.port() == 0 => Err(Error::NoFreePort {
                ip: addr.ip(),
                min,
                max,
            }),
            (Some(e), _) => Err(Error::Stack(e)),
            (None, _) => Err(Error::Config("empty bind port range".into())),
        }
    }

    fn new_conn_state(
        &mut self,
        handle: Connection,
        role: Role,
        lossy: bool,
        target: Option<SocketAddr>,
    ) -> usize {
        let mut cfg = self.shared.session_cfg.clone();
        cfg.lossy = lossy;
        let local = self.shared.local.read().clone();
        let st = ConnState {
            session: Session::new(role, cfg, local, self.now),
            handle: handle.clone(),
            socket: None,
            decoder: new_decoder(self.shared.limits, self.checked),
            target,
            connecting: false,
            connect_deadline: None,
            backoff: self.shared.reconnect_min,
            reconnect_at: None,
            timer_at: None,
            read_delay: None,
            closing: None,
            dirty: false,
            timer_due: false,
            write_blocked: false,
        };
        let t = self.entries.insert(Entry::Conn(Box::new(st)));
        self.by_id.insert(handle.id(), t);
        t
    }

    fn connect(&mut self, conn: Connection, addr: SocketAddr, lane: u32) {
        let lossy = conn.policy().lossy;
        // Tells this connection apart from the messenger's other connections to the same
        // server (reached through another of its addresses) in the server's session table.
        let tag = (conn.id() % u64::from(u16::MAX)) as u16 + 1;
        let t = self.new_conn_state(conn, Role::Client, lossy, Some(addr));
        if let Some(Entry::Conn(st)) = self.entries.get_mut(t) {
            st.session.set_lane(lane);
            st.session.set_conn_tag(tag);
        }
        self.start_connect(t);
    }

    fn start_connect(&mut self, t: usize) {
        let Some(Entry::Conn(st)) = self.entries.get_mut(t) else {
            return;
        };
        let Some(addr) = st.target else { return };
        st.reconnect_at = None;
        if self.inject.should_fail() {
            Counters::add(&self.shared.counters.injected_faults, 1);
            return self.fault(t, Fault::Injected);
        }
        match self.stack.connect(addr, &self.opts) {
            Ok(mut s) => match s.register(self.center.registry(), Token(t)) {
                Ok(()) => {
                    st.socket = Some(s);
                    st.write_blocked = false;
                    st.connecting = true;
                    // Connect time-out rides on the handshake time-out.
                    let d = self.now + self.shared.session_cfg.handshake_timeout;
                    st.connect_deadline = Some(d);
                    self.center.add_timer(d, t as u64);
                }
                Err(e) => self.fault(t, Fault::Io(e)),
            },
            Err(e) => {
                let err = io::Error::other(e.to_string());
                self.fault(t, Fault::Io(err));
            }
        }
    }

    /// Readiness of entry `t`; `polled`: reported by a poller, not by the kernel for one of
    /// the socket's files (a kernel event is passed on: `ConnectedSocket::on_file_event`).
    fn on_file(&mut self, t: usize, readable: bool, writable: bool, closed: bool, polled: bool) {
        match self.entries.get_mut(t) {
            Some(Entry::Listener(_)) => self.accept(t),
            Some(Entry::Pending(_)) => self.pending_readable(t),
            Some(Entry::Conn(st)) => {
                if !polled {
                    if let Some(s) = st.socket.as_mut() {
                        s.on_file_event();
                    }
                }
                if writable {
                    st.write_blocked = false;
                }
                if st.connecting && (writable || readable) {
                    let r = match st.socket.as_mut() {
                        Some(_) if self.inject.should_fail() => {
                            Counters::add(&self.shared.counters.injected_faults, 1);
                            return self.fault(t, Fault::Injected);
                        }
                        Some(s) => s.finish_connect(),
                        None => return,
                    };
                    match r {
                        Ok(true) => {
                            st.connecting = false;
                            st.session.set_checked_transport(self.checked);
                            st.session.start_client(self.now);
                            self.mark_dirty(t);
                        }
                        Ok(false) => return,
                        Err(e) => return self.fault(t, Fault::Io(e)),
                    }
                }
                if readable {
                    self.conn_readable_until(t, closed);
                }
                if writable {
                    self.mark_dirty(t);
                }
            }
            None => {}
        }
    }

    /// Takes over an accepted socket here: the session it belongs to is (or becomes) ours.
    fn adopt_here(&mut self, a: Adopt) {
        let Adopt {
            mut socket,
            decoder,
            hello,
            conn,
            sealer,
        } = a;
        let t = match self.by_id.get(&conn.id()).copied() {
            Some(t) => {
                // The client came back: the old transport (if we still had one) is stale.
                if let Some(Entry::Conn(st)) = self.entries.get_mut(t) {
                    if let Some(old) = st.socket.take() {
                        close_socket(self.center.registry(), old);
                        st.session.on_fault(false);
                    }
                }
                t
            }
            None if conn.is_closed() => {
                // The session closed for good while this socket was on its way (its load was
                // given back then): the client reconnects and gets a fresh session.
                tracing::debug!(
                    worker = self.index,
                    conn = conn.id(),
                    "session closed meanwhile, dropping its new socket"
                );
                close_socket(self.center.registry(), socket);
                return;
            }
            None => {
                let lossy = !hello.lossless;
                self.new_conn_state(conn, Role::Server, lossy, None)
            }
        };
        if let Err(e) = socket.register(self.center.registry(), Token(t)) {
            tracing::warn!(error = %e, "cannot register adopted socket");
            return;
        }
        let Some(Entry::Conn(st)) = self.entries.get_mut(t) else {
            return;
        };
        st.socket = Some(socket);
        st.write_blocked = false;
        st.decoder = decoder;
        st.decoder.trust_transport(self.checked);
        st.connecting = false;
        st.session.set_checked_transport(self.checked);
        st.session.accept_hello(&hello, sealer, self.now);
        self.poll_session(t);
        self.mark_dirty(t);
        // Bytes that arrived behind the hello, and readiness we may have missed.
        self.conn_readable(t);
    }

    fn conn_readable(&mut self, t: usize) {
        self.conn_readable_until(t, true);
    }

    /// Injected delays: true if reading `t` must wait now (its timer reads it later), either
    /// because a delay is running or because one is injected here.
    fn read_held(&mut self, t: usize) -> bool {
        let now = self.now;
        let slot = match self.entries.get_mut(t) {
            Some(Entry::Conn(st)) => &mut st.read_delay,
            Some(Entry::Pending(p)) => &mut p.read_delay,
            _ => return false,
        };
        if slot.is_some_and(|d| now < d) {
            return true;
        }
        *slot = None;
        let Some(d) = self.inject.delay() else {
            return false;
        };
        Counters::add(&self.shared.counters.injected_delays, 1);
        *slot = Some(now + d);
        self.center.add_timer(now + d, t as u64);
        true
    }

    /// Reads and decodes. With `to_eof` false and a stack whose short reads prove the socket
    /// drained, stops at the first short read instead of reading again for `WouldBlock`.
    fn conn_readable_until(&mut self, t: usize, to_eof: bool) {
        let now = self.now;
        if self.read_held(t) {
            return;
        }
        for _ in 0..READS_PER_TURN {
            if self.shared.dispatch.over_throttle() {
                Counters::add(&self.shared.counters.throttled_reads, 1);
                if !self.read_blocked.contains(&t) {
                    self.read_blocked.push(t);
                }
                return;
            }
            if self.inject.should_fail() {
                Counters::add(&self.shared.counters.injected_faults, 1);
                return self.fault(t, Fault::Injected);
            }
            let Some(Entry::Conn(st)) = self.entries.get_mut(t) else {
                return;
            };
            let Some(sock) = st.socket.as_mut() else {
                return;
            };
            if st.connecting {
                return;
            }
            let stop_short = !to_eof && sock.short_read_drains();
            // Zero-copy receive: a buffer the stack lends becomes the decoder's receive buffer
            // as it is (after the bytes that complete a frame straddling into it, which are
            // copied). An empty one would read as end of stream: `read` says what is going on.
            // `offered` 0: a lent buffer says nothing about whether the socket is drained.
            let lent = sock.read_lent().filter(|b| !b.is_empty());
            let (res, offered) = match lent {
                Some(b) => {
                    let n = b.len();
                    let in_place = st.decoder.adopt(b, &self.pool);
                    Counters::add(&self.shared.counters.bytes_lent, in_place as u64);
                    (Ok(n), 0)
                }
                None => {
                    let buf = st.decoder.read_buf(&self.pool);
                    let offered = buf.remaining();
                    (sock.read(buf), offered)
                }
            };
            match res {
                Ok(0) => {
                    let mid_frame = st.decoder.pending() > 0;
                    return self.fault(t, Fault::Eof { mid_frame });
                }
                Ok(n) => {
                    let session = &mut st.session;
                    let (handle, shared) = (&st.handle, &*self.shared);
                    // Messages are dispatched as they are decoded (the session hands them
                    // over directly unless an earlier event must go first); their counters
                    // are summed and published once per read.
                    let d = &*shared.dispatcher;
                    let dec = &mut st.decoder;
                    let (r, msgs_in, bytes_in) = if d.dispatches_in_place() {
                        // The dispatcher's answer for the last message type seen: one call
                        // per run of same-typed messages, not one per message.
                        let memo = Cell::new((u32::MAX, false));
                        let in_place = |t: u16| {
                            let (last, yes) = memo.get();
                            if last == u32::from(t) {
                                return yes;
                            }
                            let yes = d.in_place(t);
                            memo.set((u32::from(t), yes));
                            yes
                        };
                        decode_and_deliver(dec, session, shared, handle, now, in_place)
                    } else {
                        // A separate copy of the loop without the question, so a dispatcher
                        // that takes nothing in place pays nothing for it.
                        decode_and_deliver(dec, session, shared, handle, now, |_| false)
                    };
                    if msgs_in > 0 {
                        Counters::add(&shared.counters.msgs_in, msgs_in);
                        Counters::add(&shared.counters.bytes_in, bytes_in);
                    }
                    // Stop early only between frames: inside a large frame more bytes are
                    // on their way, and reading on saves a trip through epoll.
                    if stop_short && n < offered && st.decoder.pending() == 0 {
                        st.decoder.release_idle();
                        self.poll_session(t);
                        if let Err(fault) = r {
                            return self.fault(t, fault);
                        }
                        return;
                    }
                    self.poll_session(t);
                    if let Err(fault) = r {
                        return self.fault(t, fault);
                    }
                    if msgs_in > 0 {
                        self.reply_now();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Drained: an idle connection keeps no receive buffer.
                    st.decoder.release_idle();
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fault(t, Fault::Io(e)),
            }
        }
        if !self.read_again.contains(&t) {
            self.read_again.push(t);
        }
    }

    /// After a read that delivered messages: sends what dispatchers on this thread queued
    /// meanwhile (an echo, a reply) before reading on, as reading again first would put the
    /// next read's work (a poll that finds nothing, an `EAGAIN`, re-posting receive buffers)
    /// between a request and its reply. Nothing queued: nothing to do, and the round's writes
    /// go out together at its end as before. At most one flush per read (up to a receive
    /// buffer of messages), also when other threads' commands are what is queued.
    fn reply_now(&mut self) {
        if !self.rx.is_empty() {
            self.drain_commands();
            self.flush_dirty();
        }
    }

    fn retry_reads(&mut self) {
        if !self.read_again.is_empty() {
            let mut again =
                std::mem::replace(&mut self.read_again, std::mem::take(&mut self.spare));
            for t in again.drain(..) {
                self.conn_readable(t);
            }
            self.spare = again;
        }
        if !self.read_blocked.is_empty() && !self.shared.dispatch.over_throttle() {
            let mut blocked =
                std::mem::replace(&mut self.read_blocked, std::mem::take(&mut self.spare));
            for t in blocked.drain(..) {
                self.conn_readable(t);
            }
            self.spare = blocked;
        }
    }

    /// Acts on everything the session reported.
    fn poll_session(&mut self, t: usize) {
        let Some(Entry::Conn(st)) = self.entries.get_mut(t) else {
            return;
        };
        let shared = &self.shared;
        let c = &shared.counters;
        // Message counters are summed here and published once: an atomic add per message
        // would cost more than the rest of its dispatch.
        let (mut msgs_in, mut bytes_in) = (0u64, 0u64);
        while let Some(ev) = st.session.poll_event() {
            match ev {
                SessionEvent::Message(m) => {
                    msgs_in += 1;
                    bytes_in += m.len() as u64;
                    deliver(shared, &st.handle, m);
                }
                SessionEvent::Released {
                    msgs,
                    bytes,
                    dropped,
                } => {
                    st.handle.release(msgs, bytes);
                    if dropped {
                        Counters::add(&c.dropped, msgs as u64);
                    }
                }
                SessionEvent::Established {
                    peer,
                    remote_reset,
                    reconnect,
                } => {
                    *st.handle.shared.peer.lock() = Some(peer);
                    st.backoff = shared.reconnect_min;
                    if st.session.transport_crc() {
                        Counters::add(&c.transport_crc_sessions, 1);
                    }
                    if remote_reset {
                        Counters::add(&c.remote_resets, 1);
                        shared.dispatch.push(Item::RemoteReset(st.handle.clone()));
                    }
                    if reconnect {
                        Counters::add(&c.reconnects, 1);
                    } else if st.session.role() == Role::Client {
                        Counters::add(&c.connected, 1);
                        shared.dispatch.push(Item::Connect(st.handle.clone()));
                    } else {
                        Counters::add(&c.accepted, 1);
                        shared.dispatch.push(Item::Accept(st.handle.clone()));
                    }
                }
                SessionEvent::Duplicate => Counters::add(&c.duplicates, 1),
            }
        }
        if msgs_in > 0 {
            Counters::add(&c.msgs_in, msgs_in);
            Counters::add(&c.bytes_in, bytes_in);
        }
        if st.session.wants_write(self.now) && !st.dirty && !st.write_blocked {
            st.dirty = true;
            self.dirty.push(t);
        }
        if !st.timer_due {
            st.timer_due = true;
            self.timers_due.push(t);
        }
    }

    /// Schedules the timers of the connections whose sessions changed this round.
    fn flush_timers(&mut self) {
        let mut due = std::mem::take(&mut self.timers_due);
        for &t in &due {
            if let Some(Entry::Conn(st)) = self.entries.get_mut(t) {
                st.timer_due = false;
            }
            self.schedule_timer(t);
        }
        due.clear();
        self.timers_due = due;
    }

    fn schedule_timer(&mut self, t: usize) {
        let Some(Entry::Conn(st)) = self.entries.get_mut(t) else {
            return;
        };
        let mut due = st.session.next_timeout();
        for d in [st.reconnect_at, st.closing].into_iter().flatten() {
            due = Some(due.map_or(d, |x: Instant| x.min(d)));
        }
        if let Some(d) = due {
            if st.timer_at.is_none_or(|at| d < at || at <= self.now) {
                st.timer_at = Some(d);
                self.center.add_timer(d, t as u64);
            }
        }
    }

    fn on_timer(&mut self, t: usize) {
        let now = self.now;
        match self.entries.get_mut(t) {
            Some(Entry::Pending(p)) if now >= p.deadline => {
                tracing::warn!(peer = %p.peer, "handshake timed out, dropping");
                Counters::add(&self.shared.counters.handshake_failures, 1);
                self.drop_pending(t);
            }
            Some(Entry::Pending(p)) if p.read_delay.is_some_and(|d| now >= d) => {
                self.pending_readable(t);
            }
            Some(Entry::Conn(st)) => {
                if st.read_delay.is_some_and(|d| now >= d) {
                    self.conn_readable(t);
                }
                let Some(Entry::Conn(st)) = self.entries.get_mut(t) else {
                    return;
                };
                // The heap may hold stale entries for this connection (deadlines that moved
                // later); only the scheduled one, at `timer_at`, means the session has work.
                let session_due = st.timer_at.is_none_or(|at| at <= now);
                if session_due {
                    st.timer_at = None;
                }
                if st.closing.is_some_and(|d| now >= d) {
                    return self.remove_conn(t, false);
                }
                if st.connecting && st.connect_deadline.is_some_and(|d| now >= d) {
                    let to = self.shared.session_cfg.handshake_timeout;
                    return self.fault(t, Fault::HandshakeTimeout(to));
                }
                if st.socket.is_none() && st.reconnect_at.is_some_and(|d| now >= d) {
                    self.start_connect(t);
                    return self.schedule_timer(t);
                }
                if !session_due {
                    return;
                }
                if let Err(f) = st.session.handle_timeout(now) {
                    return self.fault(t, f);
                }
                self.poll_session(t);
            }
            _ => {}
        }
    }

    fn mark_dirty(&mut self, t: usize) {
        if let Some(Entry::Conn(st)) = self.entries.get_mut(t) {
            if !st.dirty && !st.write_blocked {
                st.dirty = true;
                self.dirty.push(t);
            }
        }
    }

    fn flush_dirty(&mut self) {
        while !self.dirty.is_empty() {
            let mut dirty = std::mem::replace(&mut self.dirty, std::mem::take(&mut self.spare));
            for t in dirty.drain(..) {
                if let Some(Entry::Conn(st)) = self.entries.get_mut(t) {
                    st.dirty = false;
                }
                self.flush(t);
            }
            self.spare = dirty;
        }
    }

    fn flush(&mut self, t: usize) {
        let now = self.now;
        loop {
            let Some(Entry::Conn(st)) = self.entries.get_mut(t) else {
                return;
            };
            let Some(sock) = st.socket.as_mut() else {
                return;
            };
            if st.connecting {
                return;
            }
            if !st.session.has_tx() {
                st.session.prepare_tx(now);
            }
            let (total, r) = match write_tx(
                &mut st.session,
                sock.as_mut(),
                &mut self.inject,
                &mut self.gather,
            ) {
                Tx::Empty => break,
                Tx::Injected => {
                    Counters::add(&self.shared.counters.injected_faults, 1);
                    return self.fault(t, Fault::Injected);
                }
                Tx::Wrote { total, result } => (total, result),
            };
            match r {
                Ok(n) => {
                    Counters::add(&self.shared.counters.bytes_out, n as u64);
                    let written = st.session.on_written(n, now);
                    Counters::add(&self.shared.counters.msgs_out, written);
                    if let Some(frames) = st.session.rekey_due() {
                        if !st.session.has_tx() {
                            Counters::add(&self.shared.counters.rekeys, 1);
                            return self.fault(t, Fault::RekeyDue(frames));
                        }
                    }
                    if n < total {
                        // Short write: the socket buffer is full; writability will call us back.
                        st.write_blocked = true;
                        break;
                    }
                    if !st.session.wants_write(now) {
                        // All written and nothing left to frame: no second pass that would
                        // frame nothing and hand the socket an empty gather list.
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    st.write_blocked = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fault(t, Fault::Io(e)),
            }
        }
        if let Some(Entry::Conn(st)) = self.entries.get_mut(t) {
            if st.closing.is_some() && !st.session.has_tx() {
                return self.remove_conn(t, false);
            }
        }
        self.poll_session(t);
    }

    fn fault(&mut self, t: usize, fault: Fault) {
        let index = self.index;
        let Some(Entry::Conn(st)) = self.entries.get_mut(t) else {
            return;
        };
        let c = &self.shared.counters;
        Counters::add(&c.faults, 1);
        let peer = st.handle.peer_name().unwrap_or_default();
        if fault.is_malformed() {
            Counters::add(&c.malformed, 1);
            if fault.is_integrity() {
                Counters::add(&c.integrity_failures, 1);
            }
            tracing::error!(worker = index, conn = st.handle.id(), %peer, error = %fault, "closing connection");
        } else {
            match &fault {
                Fault::PeerTimeout(_) => Counters::add(&c.peer_timeouts, 1),
                Fault::Refused { .. } | Fault::Rejected { .. } => {
                    Counters::add(&c.handshake_failures, 1)
                }
                Fault::AuthFailed(_) => {
                    Counters::add(&c.handshake_failures, 1);
                    Counters::add(&c.auth_failures, 1);
                }
                _ => {}
            }
            if matches!(fault, Fault::PeerClosed { .. }) {
                tracing::info!(worker = index, conn = st.handle.id(), %peer, error = %fault, "peer closed the connection");
            } else if fault.is_permanent() {
                tracing::warn!(worker = index, conn = st.handle.id(), %peer, error = %fault, "connection failed");
            } else {
                tracing::debug!(worker = index, conn = st.handle.id(), %peer, error = %fault, "connection fault");
            }
        }
        if let Some(s) = st.socket.take() {
            close_socket(self.center.registry(), s);
        }
        st.connecting = false;
        st.decoder = new_decoder(self.shared.limits, self.checked);
        let state = st.session.on_fault(fault.is_permanent());
        let closing = st.closing.is_some();
        self.poll_session(t);
        let Some(Entry::Conn(st)) = self.entries.get_mut(t) else {
            return;
        };
        match state {
            _ if closing => self.remove_conn(t, false),
            SessionState::Closed => self.remove_conn(t, true),
            SessionState::Idle => {
                st.reconnect_at = Some(self.now + st.backoff);
                st.backoff = (st.backoff * 2).min(self.shared.reconnect_max);
                self.schedule_timer(t);
            }
            _ => {}
        }
    }

    fn mark_down(&mut self, t: usize) {
        let Some(Entry::Conn(st)) = self.entries.get_mut(t) else {
            return;
        };
        st.session.close(0, "marked down");
        self.poll_session(t);
        let Some(Entry::Conn(st)) = self.entries.get_mut(t) else {
            return;
        };
        if st.socket.is_none() || !st.session.has_tx() {
            return self.remove_conn(t, false);
        }
        st.closing = Some(self.now + Duration::from_secs(1));
        self.mark_dirty(t);
        self.schedule_timer(t);
    }

    fn remove_conn(&mut self, t: usize, notify_reset: bool) {
        if !matches!(self.entries.get(t), Some(Entry::Conn(_))) {
            return;
        }
        let Some(Entry::Conn(mut st)) = self.entries.try_remove(t) else {
            return;
        };
        if let Some(s) = st.socket.take() {
            close_socket(self.center.registry(), s);
        }
        self.by_id.remove(&st.handle.id());
        if self.last_lookup.0 == st.handle.id() {
            self.last_lookup = (0, 0);
        }
        if let Some(route) = st.handle.worker_index().filter(|&r| r != self.index) {
            // The session migrated here: its route worker's forwarding entry can go.
            self.send_to(
                route,
                Command::Forget {
                    conn: st.handle.id(),
                },
            );
        }
        self.shared.workers[self.index]
            .load
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        st.handle
            .shared
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        st.handle.wake_waiters();
        self.shared.forget_session(&st.handle);
        if notify_reset {
            Counters::add(&self.shared.counters.resets, 1);
            self.shared.dispatch.push(Item::Reset(st.handle.clone()));
        }
    }

    fn close_all(&mut self) {
        let tokens: Vec<usize> = self.entries.iter().map(|(t, _)| t).collect();
        for t in tokens {
            match self.entries.get_mut(t) {
                Some(Entry::Conn(st)) => {
                    st.session.close(0, "messenger shutting down");
                    // One best-effort write so the peer hears why.
                    if let Some(sock) = st.socket.as_mut() {
                        if !st.connecting {
                            let mut iov = Vec::new();
                            st.session.io_slices(&mut iov, IOV_MAX);
                            let _ = sock.writev(&iov);
                        }
                    }
                    self.poll_session(t);
                    self.remove_conn(t, false);
                }
                Some(Entry::Pending(_)) => self.drop_pending(t),
                Some(Entry::Listener(_)) => {
                    if let Entry::Listener(mut l) = self.entries.remove(t) {
                        let _ = l.deregister(self.center.registry());
                    }
                }
                None => {}
            }
        }
    }
}

/// Decodes the frames read into `decoder` and hands their messages to the application as they
/// come: owned ([`deliver`]) or, for the types `in_place` accepts, borrowed from the frame
/// ([`Dispatcher::dispatch_in_place`](crate::Dispatcher::dispatch_in_place)). Returns the
/// decoding result and the messages and bytes delivered.
#[inline]
fn decode_and_deliver(
    decoder: &mut FrameDecoder,
    session: &mut Session,
    shared: &Shared,
    handle: &Connection,
    now: Instant,
    in_place: impl Fn(u16) -> bool,
) -> (Result<(), Fault>, u64, u64) {
    let (msgs, bytes) = (Cell::new(0u64), Cell::new(0u64));
    let d = &*shared.dispatcher;
    let r = decoder.decode_keyed(|f| {
        if f.data_parts.is_some() {
            Counters::add(&shared.counters.msgs_gathered, 1);
        }
        session.receive_with(
            f,
            now,
            &in_place,
            |m| {
                msgs.set(msgs.get() + 1);
                bytes.set(bytes.get() + m.len() as u64);
                deliver(shared, handle, m);
            },
            |m| {
                msgs.set(msgs.get() + 1);
                bytes.set(bytes.get() + m.payload.len() as u64);
                d.dispatch_in_place(handle, m);
            },
        )?;
        Ok(session.take_opener())
    });
    (r, msgs.get(), bytes.get())
}

/// What [`write_tx`] did.
enum Tx {
    /// Nothing was framed.
    Empty,
    /// Fault injection chose this write to fail; nothing was written.
    Injected,
    /// The socket was offered `total` bytes.
    Wrote {
        /// Bytes offered.
        total: usize,
        /// What the socket took.
        result: io::Result<usize>,
    },
}

/// Hands the session's framed output to `sock` in one call: as segments whose payload `Buf`s
/// the socket may keep until its send completes when it asks for them
/// ([`ConnectedSocket::wants_segments`]), else as a `writev` gather list.
fn write_tx(
    session: &mut Session,
    sock: &mut dyn ConnectedSocket,
    inject: &mut FaultInjector,
    gather: &mut Gather,
) -> Tx {
    if sock.wants_segments() {
        let mut segs = relife(std::mem::take(&mut gather.segs), || Segment::Staged(&[]));
        let total = session.segments(&mut segs, IOV_MAX);
        let tx = tx_outcome(total, inject, || sock.send_segments(&segs));
        gather.segs = relife(segs, || Segment::Staged(&[]));
        return tx;
    }
    let mut iov = relife(std::mem::take(&mut gather.iov), || IoSlice::new(&[]));
    let total = session.io_slices(&mut iov, IOV_MAX);
    let tx = tx_outcome(total, inject, || sock.writev(&iov));
    gather.iov = relife(iov, || IoSlice::new(&[]));
    tx
}

/// What a write of `total` framed bytes came to: nothing to write, an injected fault, or
/// what `write` returned.
fn tx_outcome(
    total: usize,
    inject: &mut FaultInjector,
    write: impl FnOnce() -> io::Result<usize>,
) -> Tx {
    if total == 0 {
        Tx::Empty
    } else if inject.should_fail() {
        Tx::Injected
    } else {
        Tx::Wrote {
            total,
            result: write(),
        }
    }
}

/// The memory of the gather lists `write_tx` builds, kept from one write to the next: a
/// list borrows the session it was built from, so it is emptied and its allocation carried
/// over to the next list ([`relife`]) instead of allocating one per write.
#[derive(Default)]
struct Gather {
    iov: Vec<IoSlice<'static>>,
    segs: Vec<Segment<'static>>,
}

/// `v` emptied, as a vector of another element type of the same layout (a gather list of
/// another lifetime) in the same allocation: collecting a mapped vector in place keeps its
/// allocation, and the map never runs on an empty vector. At least 64 slots.
fn relife<A, B>(mut v: Vec<A>, blank: impl Fn() -> B) -> Vec<B> {
    v.clear();
    v.reserve(64);
    v.into_iter().map(|_| blank()).collect()
}

/// Hands a received message to the application: inline on the worker thread when the
/// dispatcher takes it (fast dispatch), else through the dispatch queue.
#[inline]
fn deliver(shared: &Shared, handle: &Connection, m: Message) {
    if shared.dispatcher.can_fast_dispatch(&m) {
        shared.dispatcher.fast_dispatch(handle, m);
    } else {
        shared.dispatch.push(Item::Message(handle.clone(), m));
    }
}

/// A frame decoder for a new transport; `checked` as in `Worker::checked`.
fn new_decoder(limits: crate::wire::Limits, checked: bool) -> FrameDecoder {
    let mut d = FrameDecoder::new(limits);
    d.trust_transport(checked);
    d
}

/// Takes a socket out of the event loop and shuts it down (best effort: it is being dropped).
fn close_socket(registry: &mio::Registry, mut s: Box<dyn ConnectedSocket>) {
    let _ = s.deregister(registry);
    s.shutdown();
}

/// Policy of an accepted session, from what the client announced.
pub(crate) fn server_policy(lossless: bool) -> Policy {
    if lossless {
        Policy::stateful_server()
    } else {
        Policy::stateless_server()
    }
}
