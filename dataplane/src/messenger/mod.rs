//! The messenger: connections, dispatch and reliability over any stack.
//!
//! ```no_run
//! use std::sync::Arc;
//! use dataplane::{Connection, Dispatcher, Message, Messenger};
//!
//! struct Echo;
//! impl Dispatcher for Echo {
//!     fn dispatch(&self, conn: &Connection, msg: Message) {
//!         let _ = conn.send(msg);
//!     }
//! }
//!
//! # fn main() -> Result<(), dataplane::Error> {
//! let server = Messenger::builder("server")
//!     .stack(Arc::new(dataplane_stack_posix::PosixStack::new()))
//!     .dispatcher(Arc::new(Echo))
//!     .build()?;
//! let addr = server.bind("127.0.0.1:0".parse().unwrap())?;
//! server.start()?;
//! # Ok(()) }
//! ```

mod connection;
mod dispatch;
mod fault;
mod message;
mod policy;
pub mod protocol;
mod record_batch;
mod worker;

pub use connection::Connection;
pub use dispatch::Dispatcher;
pub use message::{priority, Message, MessageRef};
pub use policy::Policy;
pub use record_batch::RecordBatch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::auth::{Keyring, Mode};
use crate::buf::{BufPool, PoolConfig};
use crate::config::Config;
use crate::counters::{CounterSnapshot, Counters};
use crate::error::Error;
use crate::event::{EventCenter, EventConfig};
use crate::ring::{mpsc, Doorbell};
use crate::secure::SecureConfig;
use crate::stack::NetworkStack;
use crate::wire::{Hello, Limits, FEATURE_AUTH, FEATURE_SECURE, MAX_NAME_LEN};

use connection::Route;
use dispatch::DispatchQueue;
use protocol::{LocalIdentity, SessionConfig};
use worker::{Command, Worker};

/// A worker as the rest of the messenger sees it.
pub(crate) struct WorkerHandle {
    ring: mpsc::Sender<Command>,
    doorbell: Arc<Doorbell>,
    load: AtomicUsize,
    /// Its stack checks every payload byte and the configuration trusts that
    /// (`Config::trust_transport_crc`): its sessions offer to leave payload crcs out, so
    /// `Connection::send` does not compute them for it.
    checked: bool,
    /// Connections this worker forwards to, or holds commands for, a migrated session
    /// (published once per loop iteration).
    forwarding: AtomicUsize,
}

/// Key of a lossless server session: the peer's entity name, announced address and lane.
type SessionKey = (String, Option<SocketAddr>, u32);

/// State shared by the messenger handle and its workers.
pub(crate) struct Shared {
    cfg: Config,
    local: RwLock<Arc<LocalIdentity>>,
    workers: Vec<WorkerHandle>,
    /// Per worker: its stack wants it to listen on the bound address too
    /// ([`NetworkStack::listen_on_every_worker`]).
    listen_everywhere: Vec<bool>,
    dispatch: Arc<DispatchQueue>,
    dispatcher: Arc<dyn Dispatcher>,
    counters: Arc<Counters>,
    sessions: Mutex<HashMap<SessionKey, Connection>>,
    outgoing: Mutex<HashMap<SocketAddr, Connection>>,
    local_conn: Mutex<Option<Connection>>,
    next_id: AtomicU64,
    session_cfg: SessionConfig,
    limits: Limits,
    reconnect_min: Duration,
    reconnect_max: Duration,
    default_policy: Policy,
}

impl Shared {
    /// Connections owned by all workers.
    fn connection_count(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .sum()
    }

    fn least_loaded(&self) -> usize {
        self.workers
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.load.load(Ordering::Relaxed))
            .map_or(0, |(i, _)| i)
    }

    /// A connection owned by `worker`, counted in its load at once (not when the worker gets
    /// to it), so placements made in quick succession spread out.
    fn new_conn(&self, worker: usize, addr: Option<SocketAddr>, policy: Policy) -> Connection {
        let w = &self.workers[worker];
        w.load.fetch_add(1, Ordering::Relaxed);
        Connection::new(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            addr,
            policy,
            Route::Worker {
                index: worker,
                ring: w.ring.clone(),
                doorbell: w.doorbell.clone(),
            },
            self.cfg.queue_max_msgs,
            self.cfg.queue_max_bytes,
            self.cfg.max_message_bytes as usize,
            self.cfg.auth.mode != Mode::Secure && !w.checked,
            self.counters.clone(),
        )
    }

    /// The connection an accepted peer's session belongs to: the existing lossless session
    /// of that peer, or a new one on `home` (the worker the accepted socket is bound to) or
    /// else the least-loaded worker.
    ///
    /// Refused (with the reason) when the session is open under another connection of the
    /// same client incarnation: one messenger that reached us twice, e.g. through two of our
    /// addresses. Both would feed one session with two independent sequences, so the second
    /// one's messages would be taken for duplicates; the client must use one connection (or
    /// two lanes).
    fn session_for(&self, hello: &Hello, home: Option<usize>) -> Result<Connection, String> {
        let policy = worker::server_policy(hello.lossless);
        let place = || home.unwrap_or_else(|| self.least_loaded());
        if !hello.lossless {
            return Ok(self.new_conn(place(), None, policy));
        }
        let key = (hello.name.clone(), hello.addr, hello.lane);
        let mut sessions = self.sessions.lock();
        if let Some(c) = sessions.get(&key) {
            if !c.is_closed() {
                if let Some(p) = c.peer() {
                    let other = p.session_id == hello.session_id
                        && p.conn_tag != 0
                        && hello.conn_tag != 0
                        && p.conn_tag != hello.conn_tag;
                    if other {
                        return Err(format!(
                            "{} (lane {}) already has a lossless session here through another \
                             of its connections; a client keeps one connection per server and \
                             lane",
                            hello.name, hello.lane
                        ));
                    }
                }
                return Ok(c.clone());
            }
        }
        let c = self.new_conn(place(), None, policy);
        sessions.insert(key, c.clone());
        Ok(c)
    }

    /// Drops a closed connection from the lookup tables.
    fn forget_session(&self, conn: &Connection) {
        if let Some(p) = conn.peer() {
            let key = (p.name, p.addr, p.lane);
            let mut sessions = self.sessions.lock();
            if sessions.get(&key).is_some_and(|c| c == conn) {
                sessions.remove(&key);
            }
        }
        if let Some(a) = conn.shared.addr {
            let mut out = self.outgoing.lock();
            if out.get(&a).is_some_and(|c| c == conn) {
                out.remove(&a);
            }
        }
    }

    /// Puts a control command on a worker's ring, waiting while the ring is full.
    fn push_command(&self, worker: usize, mut cmd: Command) -> bool {
        let w = &self.workers[worker];
        for spin in 0..100_000u32 {
            match w.ring.push(cmd) {
                Ok(()) => {
                    w.doorbell.ring();
                    return true;
                }
                Err(c) => {
                    cmd = c;
                    w.doorbell.ring();
                    if spin > 100 {
                        std::thread::sleep(Duration::from_micros(50));
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
        tracing::error!(worker, "worker command ring stayed full; command dropped");
        false
    }
}

/// Thread name of worker `i` of messenger `name` (Linux keeps 15 bytes).
fn thread_name(name: &str, i: usize) -> String {
    let mut n: String = name
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(10)
        .collect();
    n.push_str(&format!("-w{i}"));
    n
}

/// Builds a [`Messenger`].
pub struct MessengerBuilder {
    name: String,
    entity_type: u8,
    cfg: Config,
    stacks: Vec<Arc<dyn NetworkStack>>,
    dispatcher: Option<Arc<dyn Dispatcher>>,
    policy: Policy,
}

impl MessengerBuilder {
    /// Replaces the configuration.
    pub fn config(mut self, cfg: Config) -> Self {
        self.cfg = cfg;
        self
    }

    /// Sets the entity type announced in handshakes.
    pub fn entity_type(mut self, t: u8) -> Self {
        self.entity_type = t;
        self
    }

    /// Registers a backend; workers whose configured backend has this stack's name use it.
    pub fn stack(mut self, s: Arc<dyn NetworkStack>) -> Self {
        self.stacks.push(s);
        self
    }

    /// The application's dispatcher (required).
    pub fn dispatcher(mut self, d: Arc<dyn Dispatcher>) -> Self {
        self.dispatcher = Some(d);
        self
    }

    /// Policy of outgoing connections made with [`Messenger::connect`].
    pub fn default_policy(mut self, p: Policy) -> Self {
        self.policy = p;
        self
    }

    /// Validates the configuration, creates the buffer pools and starts the worker threads.
    pub fn build(self) -> Result<Messenger, Error> {
        let cfg = self.cfg;
        cfg.validate()?;
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(Error::Config(format!(
                "entity name must be 1..={MAX_NAME_LEN} bytes, got {}",
                self.name.len()
            )));
        }
        let dispatcher = self
            .dispatcher
            .ok_or_else(|| Error::Config("a dispatcher is required".into()))?;
        let mut stacks = Vec::with_capacity(cfg.workers);
        for i in 0..cfg.workers {
            let name = cfg.backend_of(i);
            let s = self
                .stacks
                .iter()
                .find(|s| s.name() == name)
                .ok_or_else(|| Error::UnknownBackend(name.to_owned()))?;
            stacks.push(s.clone());
        }
        let session_cfg = SessionConfig {
            lossy: self.policy.lossy,
            keepalive_interval: Duration::from_millis(cfg.keepalive_interval_ms),
            peer_timeout: Duration::from_millis(cfg.peer_timeout_ms),
            handshake_timeout: Duration::from_millis(cfg.handshake_timeout_ms.max(1)),
            lossy_max_age: Duration::from_millis(cfg.lossy_max_age_ms),
            secure: SecureConfig {
                rekey_after_frames: cfg.auth.rekey_after_frames,
            },
            ..SessionConfig::default()
        };
        let limits = Limits {
            max_front: cfg.max_front_bytes,
            max_data: cfg.max_message_bytes,
        };
        let keys = Keyring::from_config(&cfg.auth)?.map(Arc::new);
        let (mut features, mut required) = (cfg.features, cfg.required_features);
        if keys.is_some() {
            features |= FEATURE_AUTH;
            if cfg.auth.required {
                required |= FEATURE_AUTH;
            }
        }
        if cfg.auth.mode == Mode::Secure {
            if keys.is_none() {
                return Err(Error::Config(
                    "auth.mode = \"secure\" needs a key (auth.cluster_key or auth.keyring_file)"
                        .into(),
                ));
            }
            if cfg.auth.rekey_after_frames == 0 {
                return Err(Error::Config(
                    "auth.rekey_after_frames must be at least 1".into(),
                ));
            }
            // Secure mode is all or nothing: offered means required, and it needs auth.
            features |= FEATURE_SECURE;
            required |= FEATURE_SECURE | FEATURE_AUTH;
        }
        let local = LocalIdentity {
            name: self.name,
            entity_type: self.entity_type,
            addr: None,
            session_id: rand::random::<u64>() | 1,
            features,
            required,
            keys,
        };
        let event_cfg = EventConfig {
            busy_poll: Duration::from_micros(cfg.busy_poll_us),
            ..EventConfig::default()
        };
        let mut centers = Vec::with_capacity(cfg.workers);
        let mut receivers = Vec::with_capacity(cfg.workers);
        let mut handles = Vec::with_capacity(cfg.workers);
        for stack in &stacks {
            let center = EventCenter::new(event_cfg).map_err(|source| Error::Io {
                what: "creating event loop".into(),
                source,
            })?;
            let (tx, rx) = mpsc::channel(cfg.command_ring);
            handles.push(WorkerHandle {
                ring: tx,
                doorbell: center.doorbell().clone(),
                load: AtomicUsize::new(0),
                checked: cfg.trust_transport_crc && stack.checks_integrity(),
                forwarding: AtomicUsize::new(0),
            });
            centers.push(center);
            receivers.push(rx);
        }
        let dispatch = Arc::new(DispatchQueue::new(cfg.dispatch_throttle_bytes));
        dispatch.set_workers(handles.iter().map(|h| h.doorbell.clone()).collect());
        let shared = Arc::new(Shared {
            reconnect_min: Duration::from_millis(cfg.reconnect_min_ms.max(1)),
            reconnect_max: Duration::from_millis(cfg.reconnect_max_ms.max(1)),
            local: RwLock::new(Arc::new(local)),
            workers: handles,
            listen_everywhere: stacks.iter().map(|s| s.listen_on_every_worker()).collect(),
            dispatch,
            dispatcher,
            counters: Arc::new(Counters::default()),
            sessions: Mutex::new(HashMap::new()),
            outgoing: Mutex::new(HashMap::new()),
            local_conn: Mutex::new(None),
            next_id: AtomicU64::new(1),
            session_cfg,
            limits,
            default_policy: self.policy,
            cfg,
        });
        let pool_cfg = PoolConfig {
            buf_size: shared.cfg.rx_buffer_bytes,
            count: shared.cfg.rx_buffers,
            hugepages: shared.cfg.hugepages,
            lock: false,
            prefault: shared.cfg.prefault_buffers,
        };
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), Error>>();
        for (i, (center, rx)) in centers.into_iter().zip(receivers).enumerate() {
            let shared2 = shared.clone();
            let stack = stacks[i].clone();
            let ready = ready_tx.clone();
            let pool_cfg = pool_cfg.clone();
            let tname = thread_name(&shared.local.read().name, i);
            let t = std::thread::Builder::new()
                .name(tname)
                .spawn(move || {
                    let cfg = &shared2.cfg;
                    if cfg.pin_workers {
                        let core = cfg.worker_cores.get(i).copied().unwrap_or(i);
                        if !crate::event::pin_to_core(core) {
                            tracing::warn!(worker = i, core, "could not pin worker to core");
                        }
                    }
                    let setup = (|| -> Result<_, Error> {
                        let sw = stack.create_worker(i)?;
                        let pool = BufPool::new(&pool_cfg)?;
                        Ok((sw, pool))
                    })();
                    match setup {
                        Ok((sw, pool)) => {
                            let _ = ready.send(Ok(()));
                            Worker::new(i, shared2, center, sw, rx, pool).run();
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                })
                .map_err(|source| Error::Io {
                    what: "spawning worker thread".into(),
                    source,
                })?;
            threads.push(t);
        }
        drop(ready_tx);
        let msgr = Messenger {
            shared,
            threads: Mutex::new(threads),
            started: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
        };
        for _ in 0..msgr.shared.workers.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    msgr.shutdown();
                    msgr.wait();
                    return Err(e);
                }
                Err(_) => {
                    msgr.shutdown();
                    msgr.wait();
                    return Err(Error::WorkerGone(0));
                }
            }
        }
        Ok(msgr)
    }
}

/// A messenger: owns worker threads (one event loop each), a dispatch thread, listening
/// sockets and connections. See the crate documentation for an example.
pub struct Messenger {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    started: AtomicBool,
    stopped: AtomicBool,
}

impl std::fmt::Debug for Messenger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Messenger")
            .field("name", &self.shared.local.read().name)
            .field("addr", &self.addr())
            .field("workers", &self.shared.workers.len())
            .finish()
    }
}

impl Messenger {
    /// Starts building a messenger whose entity name is `name` (unique in the cluster).
    pub fn builder(name: &str) -> MessengerBuilder {
        MessengerBuilder {
            name: name.to_owned(),
            entity_type: 0,
            cfg: Config::default(),
            stacks: Vec::new(),
            dispatcher: None,
            policy: Policy::lossless_client(),
        }
    }

    /// Listens on `addr` (worker 0 accepts; connections go to the least-loaded worker).
    /// Port 0 with a configured port range tries that range; otherwise the OS picks.
    /// Returns the bound address, which is also announced to peers.
    ///
    /// With a stack that listens on every worker
    /// ([`NetworkStack::listen_on_every_worker`]), worker 0 binds first (resolving port 0 or
    /// the range to a concrete port), then every other worker of such a stack listens on that
    /// same address, and each accepted socket stays on the worker that accepted it. If any
    /// of them fails, `bind` closes the listeners it opened and fails.
    pub fn bind(&self, addr: SocketAddr) -> Result<SocketAddr, Error> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        let cfg = &self.shared.cfg;
        let ports = (cfg.bind_port_max > 0).then_some((cfg.bind_port_min, cfg.bind_port_max));
        let bound = self.listen_on(0, addr, ports)?;
        let others: Vec<usize> = (1..self.shared.workers.len())
            .filter(|&i| self.shared.listen_everywhere[i])
            .collect();
        let mut opened = vec![0];
        for i in others {
            match self.listen_on(i, bound, None) {
                Ok(_) => opened.push(i),
                Err(e) => {
                    for w in opened {
                        self.unlisten_on(w, bound);
                    }
                    return Err(Error::ListenOnWorker {
                        worker: i,
                        addr: bound,
                        source: Box::new(e),
                    });
                }
            }
        }
        let mut local = self.shared.local.write();
        let mut l = (**local).clone();
        l.addr = Some(bound);
        *local = Arc::new(l);
        Ok(bound)
    }

    /// Makes worker `w` listen on `addr` and waits for the bound address.
    fn listen_on(
        &self,
        w: usize,
        addr: SocketAddr,
        ports: Option<(u16, u16)>,
    ) -> Result<SocketAddr, Error> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let cmd = Command::Listen {
            addr,
            ports,
            reply: tx,
        };
        if !self.shared.push_command(w, cmd) {
            return Err(Error::WorkerGone(w));
        }
        rx.recv().map_err(|_| Error::WorkerGone(w))?
    }

    /// Makes worker `w` close its listeners on `addr` and waits until it did.
    fn unlisten_on(&self, w: usize, addr: SocketAddr) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if self
            .shared
            .push_command(w, Command::Unlisten { addr, reply: tx })
        {
            let _ = rx.recv();
        }
    }

    /// Starts the dispatch thread. Messages received before are delivered once started.
    pub fn start(&self) -> Result<(), Error> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        if self.started.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let shared = self.shared.clone();
        let t = std::thread::Builder::new()
            .name("dp-dispatch".into())
            .spawn(move || shared.dispatch.run(&*shared.dispatcher))
            .map_err(|source| Error::Io {
                what: "spawning dispatch thread".into(),
                source,
            })?;
        self.threads.lock().push(t);
        Ok(())
    }

    /// The address we listen on, once bound.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.shared.local.read().addr
    }

    /// Our entity name.
    pub fn name(&self) -> String {
        self.shared.local.read().name.clone()
    }

    /// Counter snapshot.
    pub fn counters(&self) -> CounterSnapshot {
        self.shared.counters.snapshot()
    }

    /// Connections owned by each worker.
    pub fn worker_loads(&self) -> Vec<usize> {
        self.shared
            .workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .collect()
    }

    /// Per worker: connections whose session migrated away and whose commands this worker
    /// therefore forwards, plus sessions on their way to it (see
    /// [`ConnectedSocket::home_worker`](crate::stack::ConnectedSocket::home_worker)). An
    /// entry goes when its connection closes for good. Updated once per worker loop turn.
    pub fn forwarding_entries(&self) -> Vec<usize> {
        self.shared
            .workers
            .iter()
            .map(|w| w.forwarding.load(Ordering::Relaxed))
            .collect()
    }

    /// A connection to `addr` with the default policy, reusing an open one. Sending to our
    /// own address delivers locally, without a socket.
    pub fn connect(&self, addr: SocketAddr) -> Result<Connection, Error> {
        self.connect_with(addr, self.shared.default_policy)
    }

    /// A connection to `addr` with `policy`, reusing an open one with the same policy.
    pub fn connect_with(&self, addr: SocketAddr, policy: Policy) -> Result<Connection, Error> {
        self.check_running()?;
        if Some(addr) == self.addr() {
            let mut lc = self.shared.local_conn.lock();
            if let Some(c) = lc.as_ref() {
                return Ok(c.clone());
            }
            let c = Connection::new(
                self.shared.next_id.fetch_add(1, Ordering::Relaxed),
                Some(addr),
                policy,
                Route::Local(self.shared.dispatch.clone()),
                self.shared.cfg.queue_max_msgs,
                self.shared.cfg.queue_max_bytes,
                self.shared.cfg.max_message_bytes as usize,
                false,
                self.shared.counters.clone(),
            );
            *lc = Some(c.clone());
            return Ok(c);
        }
        let mut out = self.shared.outgoing.lock();
        if let Some(c) = out.get(&addr) {
            if !c.is_closed() && c.policy() == policy {
                return Ok(c.clone());
            }
        }
        let w = self.shared.least_loaded();
        let conn = self.shared.new_conn(w, Some(addr), policy);
        // Registered before the worker sees it, so concurrent connects share it.
        out.insert(addr, conn.clone());
        drop(out);
        self.dial(w, conn, addr, 0)
    }

    /// A new connection to `addr` with `policy`, never shared with [`Messenger::connect`]:
    /// for traffic that should not queue behind other traffic to the same peer (bulk data,
    /// parallel streams). Each gets its own lane, so the peer keeps a session for each.
    pub fn open(&self, addr: SocketAddr, policy: Policy) -> Result<Connection, Error> {
        self.check_running()?;
        let w = self.shared.least_loaded();
        let conn = self.shared.new_conn(w, Some(addr), policy);
        // Lanes only need to differ between connections to the same peer; ids are unique.
        let lane = conn.id() as u32;
        self.dial(w, conn, addr, lane)
    }

    /// Errors unless started and not shut down.
    fn check_running(&self) -> Result<(), Error> {
        if !self.started.load(Ordering::Acquire) {
            return Err(Error::NotStarted);
        }
        if self.stopped.load(Ordering::Acquire) {
            return Err(Error::Shutdown);
        }
        Ok(())
    }

    /// Hands a new outgoing connection to worker `w`.
    fn dial(
        &self,
        w: usize,
        conn: Connection,
        addr: SocketAddr,
        lane: u32,
    ) -> Result<Connection, Error> {
        let cmd = Command::Connect {
            conn: conn.clone(),
            addr,
            lane,
        };
        if !self.shared.push_command(w, cmd) {
            return Err(Error::WorkerGone(w));
        }
        Ok(conn)
    }

    /// Closes every connection (peers are told) and stops all threads. Returns at once; use
    /// [`Messenger::wait`] to join.
    pub fn shutdown(&self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        for i in 0..self.shared.workers.len() {
            self.shared.push_command(i, Command::Shutdown);
        }
        self.shared.dispatch.stop();
    }

    /// Waits for the threads to exit after [`Messenger::shutdown`].
    pub fn wait(&self) {
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            if t.join().is_err() {
                tracing::error!("a messenger thread panicked");
            }
        }
    }
}

impl Drop for Messenger {
    fn drop(&mut self) {
        self.shutdown();
        self.wait();
    }
}
