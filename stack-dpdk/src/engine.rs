//! One worker's TCP/IP engine: a smoltcp [`Interface`] over the worker's queue pair, its
//! sockets, and the bookkeeping that turns socket state into the edge-triggered readiness
//! events the messenger expects ([`Fired::File`]).
//!
//! Readiness follows the epoll edge-triggered contract: a socket is reported readable once
//! when data (or end of stream) is there and the messenger had drained it (its last read said
//! `WouldBlock` or came back short), and writable once when space opened after a write was refused. Sockets and
//! listeners only record their token on `register`; [`Engine::poll`] emits the events.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dataplane::event::Fired;
use mio::Token;
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::config::DpdkConfig;
use crate::device::PortDevice;
use crate::port::Port;
use crate::stack::QueueLease;
use crate::stats::Stats;

/// Listening sockets kept ready per listener (smoltcp accepts one peer per listening socket).
const BACKLOG: usize = 16;
/// How long a dropped socket may linger finishing its close before it is aborted.
const LINGER: Duration = Duration::from_secs(10);
/// How long a worker going away polls its port so that its connections deliver what they
/// hold and close ([`Engine::drain`]).
const DRAIN_ON_DROP: Duration = Duration::from_millis(100);
/// First ephemeral port.
const EPHEMERAL_MIN: u16 = 49152;

/// Readiness bookkeeping of one connected socket.
#[derive(Debug)]
struct Conn {
    token: Option<Token>,
    /// The messenger drained the socket (`WouldBlock` or a short read): report the next data
    /// (or EOF).
    want_read: bool,
    /// A write was refused: report when space opens.
    want_write: bool,
    /// An outgoing connect in progress: report when it completes or fails.
    connecting: bool,
    /// The end (EOF / reset) was reported.
    end_reported: bool,
    /// Dropped by its owner: closing, removed once closed (or aborted at this deadline).
    orphan: Option<std::time::Instant>,
}

/// A listening port.
#[derive(Debug)]
struct Listener {
    token: Option<Token>,
    /// Sockets in `Listen` or handshaking.
    backlog: Vec<SocketHandle>,
    /// Established, not yet accepted.
    ready: VecDeque<SocketHandle>,
    want_accept: bool,
    rx_buffer: usize,
    tx_buffer: usize,
    nodelay: bool,
}

/// One worker's user-space TCP/IP stack.
pub(crate) struct Engine {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: PortDevice,
    port: Arc<Port>,
    epoch: std::time::Instant,
    ip: Ipv4Addr,
    ip6: Option<Ipv6Addr>,
    conns: HashMap<SocketHandle, Conn>,
    listeners: HashMap<u16, Listener>,
    next_ephemeral: u16,
    stats: Arc<Stats>,
    /// Sockets were written to since the last poll (their data waits for egress).
    tx_dirty: bool,
    last_work: std::time::Instant,
    busy_poll: Duration,
    idle_sleep: Duration,
    idle: bool,
    yield_when_empty: bool,
    link_was_up: bool,
    /// Released (last field, so after the device) when the engine is dropped.
    _lease: QueueLease,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("ip", &self.ip)
            .field("dev", &self.dev)
            .field("conns", &self.conns.len())
            .field("listeners", &self.listeners.len())
            .finish()
    }
}

/// Error of a socket operation, mapped to what a kernel socket would say.
fn io_err(kind: std::io::ErrorKind, what: &str) -> std::io::Error {
    std::io::Error::new(kind, what.to_string())
}

impl Engine {
    pub(crate) fn new(
        port: Arc<Port>,
        lease: QueueLease,
        cfg: &DpdkConfig,
        stats: Arc<Stats>,
    ) -> Engine {
        let queue = lease.queue();
        let mut dev = PortDevice::new(port.clone(), queue, cfg.burst, stats.clone());
        let epoch = std::time::Instant::now();
        let mac = EthernetAddress(port.info.mac);
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        // Seed TCP initial sequence numbers and ephemeral ports from the wall clock, the
        // process and the queue, so a restarted node does not reuse its previous ones.
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        config.random_seed = wall ^ (u64::from(std::process::id()) << 32) ^ u64::from(queue);
        let now = SmolInstant::from_micros(0);
        let mut iface = Interface::new(config, &mut dev, now);
        let (ip, ip6) = (cfg.ip, cfg.ipv6);
        iface.update_ip_addrs(|addrs| {
            let mut cidrs = vec![IpCidr::new(IpAddress::Ipv4(ip), cfg.prefix_len)];
            cidrs.extend(ip6.map(|a| IpCidr::new(IpAddress::Ipv6(a), cfg.ipv6_prefix_len)));
            for cidr in cidrs {
                if addrs.push(cidr).is_err() {
                    tracing::error!(%cidr, "no room for the interface address");
                }
            }
        });
        if let Some(gw) = cfg.gateway {
            if let Err(e) = iface.routes_mut().add_default_ipv4_route(gw) {
                tracing::error!(error = ?e, "cannot add the default route");
            }
        }
        if let Some(gw) = cfg.ipv6_gateway {
            if let Err(e) = iface.routes_mut().add_default_ipv6_route(gw) {
                tracing::error!(error = ?e, "cannot add the IPv6 default route");
            }
        }
        let seed = ephemeral_seed(wall);
        let link_was_up = port.link_up();
        Engine {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
            port,
            epoch,
            ip,
            ip6,
            conns: HashMap::new(),
            listeners: HashMap::new(),
            next_ephemeral: EPHEMERAL_MIN + seed % (u16::MAX - EPHEMERAL_MIN),
            stats,
            tx_dirty: false,
            last_work: epoch,
            busy_poll: cfg.busy_poll,
            idle_sleep: cfg.idle_sleep.max(Duration::from_micros(1)),
            idle: false,
            yield_when_empty: cfg.yield_when_idle,
            link_was_up,
            _lease: lease,
        }
    }

    fn now(&self) -> SmolInstant {
        self.smol_time(std::time::Instant::now())
    }

    /// `wall` on smoltcp's clock (microseconds since the engine started).
    fn smol_time(&self, wall: std::time::Instant) -> SmolInstant {
        SmolInstant::from_micros(wall.saturating_duration_since(self.epoch).as_micros() as i64)
    }

    /// The interface's IPv4 address.
    pub(crate) fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The interface's IPv6 address, if it has one.
    pub(crate) fn ip6(&self) -> Option<Ipv6Addr> {
        self.ip6
    }

    /// The interface's address of the family of `addr`, if it has one.
    pub(crate) fn ip_for(&self, addr: &SocketAddr) -> Option<IpAddr> {
        match addr {
            SocketAddr::V4(_) => Some(self.ip.into()),
            SocketAddr::V6(_) => self.ip6.map(IpAddr::from),
        }
    }

    fn new_socket(rx: usize, tx: usize, nodelay: bool) -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; rx.max(1024)]),
            tcp::SocketBuffer::new(vec![0u8; tx.max(1024)]),
        );
        // Every segment is acknowledged at once: the messenger batches its own writes, a
        // delayed ACK would only stall the sender's window.
        s.set_ack_delay(None);
        s.set_nagle_enabled(!nodelay);
        s
    }

    // ---- listening ----------------------------------------------------------------------

    pub(crate) fn listen(
        &mut self,
        port: u16,
        rx: usize,
        tx: usize,
        nodelay: bool,
        backlog: usize,
    ) -> std::io::Result<u16> {
        let port = if port == 0 { self.ephemeral()? } else { port };
        if self.listeners.contains_key(&port) {
            return Err(io_err(
                std::io::ErrorKind::AddrInUse,
                "port already listening",
            ));
        }
        let mut l = Listener {
            token: None,
            backlog: Vec::new(),
            ready: VecDeque::new(),
            want_accept: true,
            rx_buffer: rx,
            tx_buffer: tx,
            nodelay,
        };
        for _ in 0..backlog.clamp(1, BACKLOG) {
            let h = self.listening_socket(port, &l)?;
            l.backlog.push(h);
        }
        self.listeners.insert(port, l);
        Ok(port)
    }

    fn listening_socket(&mut self, port: u16, l: &Listener) -> std::io::Result<SocketHandle> {
        let mut s = Self::new_socket(l.rx_buffer, l.tx_buffer, l.nodelay);
        s.listen(port)
            .map_err(|e| io_err(std::io::ErrorKind::InvalidInput, &format!("listen: {e}")))?;
        Ok(self.sockets.add(s))
    }

    pub(crate) fn listener_register(&mut self, port: u16, token: Option<Token>) {
        if let Some(l) = self.listeners.get_mut(&port) {
            l.token = token;
            l.want_accept = true;
        }
    }

    /// One established connection of `port`'s listener, if any.
    pub(crate) fn accept(&mut self, port: u16) -> Option<(SocketHandle, SocketAddr)> {
        let l = self.listeners.get_mut(&port)?;
        let Some(h) = l.ready.pop_front() else {
            l.want_accept = true;
            return None;
        };
        let peer = self
            .sockets
            .get::<tcp::Socket>(h)
            .remote_endpoint()
            .map(endpoint_addr)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        self.conns.insert(
            h,
            Conn {
                token: None,
                want_read: true,
                want_write: true,
                connecting: false,
                end_reported: false,
                orphan: None,
            },
        );
        Some((h, peer))
    }

    pub(crate) fn close_listener(&mut self, port: u16) {
        if let Some(l) = self.listeners.remove(&port) {
            for h in l.backlog.into_iter().chain(l.ready) {
                self.sockets.get_mut::<tcp::Socket>(h).abort();
                self.orphan(h);
            }
        }
    }

    // ---- connecting ---------------------------------------------------------------------

    fn ephemeral(&mut self) -> std::io::Result<u16> {
        self.ephemeral_where(|_| true)
    }

    /// A free local port that `fits`.
    fn ephemeral_where(&mut self, fits: impl Fn(u16) -> bool) -> std::io::Result<u16> {
        for _ in 0..(u16::MAX - EPHEMERAL_MIN) {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p >= u16::MAX - 1 {
                EPHEMERAL_MIN
            } else {
                p + 1
            };
            let used = self.listeners.contains_key(&p)
                || self.sockets.iter().any(|(_, s)| match s {
                    smoltcp::socket::Socket::Tcp(t) => {
                        t.local_endpoint().is_some_and(|e| e.port == p)
                            || t.listen_endpoint().port == p
                    }
                    #[allow(unreachable_patterns)]
                    _ => false,
                });
            if !used && fits(p) {
                return Ok(p);
            }
        }
        Err(io_err(std::io::ErrorKind::AddrInUse, "no free local port"))
    }

    pub(crate) fn connect(
        &mut self,
        addr: SocketAddr,
        rx: usize,
        tx: usize,
        nodelay: bool,
    ) -> std::io::Result<SocketHandle> {
        let ip = self.ip_for(&addr).ok_or_else(|| {
            io_err(
                std::io::ErrorKind::AddrNotAvailable,
                "the DPDK interface has no IPv6 address (DpdkConfig::ipv6)",
            )
        })?;
        // A local port whose reply flow the device sends back to this worker's queue (the
        // socket lives in this worker's interface).
        let (queue, port) = (self.dev.queue(), self.port.clone());
        let local =
            self.ephemeral_where(|p| port.steering.accepts(queue, ip, p, addr.ip(), addr.port()))?;
        let mut s = Self::new_socket(rx, tx, nodelay);
        let remote = IpEndpoint::new(addr.ip().into(), addr.port());
        s.connect(self.iface.context(), remote, local)
            .map_err(|e| io_err(std::io::ErrorKind::InvalidInput, &format!("connect: {e}")))?;
        let h = self.sockets.add(s);
        self.conns.insert(
            h,
            Conn {
                token: None,
                want_read: true,
                want_write: true,
                connecting: true,
                end_reported: false,
                orphan: None,
            },
        );
        self.tx_dirty = true;
        Ok(h)
    }

    /// `Ok(true)` connected, `Ok(false)` in progress, `Err` failed.
    pub(crate) fn finish_connect(&mut self, h: SocketHandle) -> std::io::Result<bool> {
        let s = self.sockets.get::<tcp::Socket>(h);
        match s.state() {
            tcp::State::SynSent | tcp::State::SynReceived => Ok(false),
            tcp::State::Closed => Err(io_err(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused or timed out",
            )),
            _ => {
                if let Some(c) = self.conns.get_mut(&h) {
                    c.connecting = false;
                }
                Ok(true)
            }
        }
    }

    // ---- data ---------------------------------------------------------------------------

    pub(crate) fn register(&mut self, h: SocketHandle, token: Option<Token>) {
        if let Some(c) = self.conns.get_mut(&h) {
            c.token = token;
            c.want_read = true;
            c.want_write = true;
        }
    }

    pub(crate) fn read(&mut self, h: SocketHandle, out: &mut [u8]) -> std::io::Result<usize> {
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        match s.recv_slice(out) {
            Ok(n) if n > 0 || out.is_empty() => {
                if n < out.len() {
                    // `recv_slice` takes all it can (it wraps around the ring), so a short
                    // read emptied the buffer: report the next data, as after `WouldBlock`
                    // (the contract behind `short_read_drains`).
                    if let Some(c) = self.conns.get_mut(&h) {
                        c.want_read = true;
                    }
                }
                Ok(n)
            }
            Ok(_) => {
                if s.state() == tcp::State::Closed {
                    // Closed without a FIN from the peer: reset or timed out.
                    return Err(io_err(
                        std::io::ErrorKind::ConnectionReset,
                        "connection reset",
                    ));
                }
                if let Some(c) = self.conns.get_mut(&h) {
                    c.want_read = true;
                }
                Err(std::io::ErrorKind::WouldBlock.into())
            }
            Err(tcp::RecvError::Finished) => Ok(0),
            Err(tcp::RecvError::InvalidState) => Err(io_err(
                std::io::ErrorKind::ConnectionReset,
                "connection reset",
            )),
        }
    }

    pub(crate) fn writev(
        &mut self,
        h: SocketHandle,
        iov: &[std::io::IoSlice<'_>],
    ) -> std::io::Result<usize> {
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        let mut total = 0;
        let mut want: usize = 0;
        for b in iov {
            want += b.len();
            if b.is_empty() {
                continue;
            }
            match s.send_slice(b) {
                Ok(n) => {
                    total += n;
                    if n < b.len() {
                        break;
                    }
                }
                Err(tcp::SendError::InvalidState) => {
                    if total > 0 {
                        break;
                    }
                    return Err(match s.state() {
                        tcp::State::SynSent | tcp::State::SynReceived => {
                            std::io::ErrorKind::WouldBlock.into()
                        }
                        _ => io_err(std::io::ErrorKind::BrokenPipe, "connection closed"),
                    });
                }
            }
        }
        if total > 0 {
            self.tx_dirty = true;
        }
        if total < want {
            if let Some(c) = self.conns.get_mut(&h) {
                c.want_write = true;
            }
            if total == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
        }
        Ok(total)
    }

    pub(crate) fn shutdown(&mut self, h: SocketHandle) {
        self.sockets.get_mut::<tcp::Socket>(h).close();
        self.tx_dirty = true;
    }

    /// The owner dropped the socket: let it finish closing, then free it.
    pub(crate) fn orphan(&mut self, h: SocketHandle) {
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        s.close();
        let deadline = std::time::Instant::now() + LINGER;
        match self.conns.get_mut(&h) {
            Some(c) => {
                c.token = None;
                c.orphan = Some(deadline);
            }
            None => {
                self.conns.insert(
                    h,
                    Conn {
                        token: None,
                        want_read: false,
                        want_write: false,
                        connecting: false,
                        end_reported: true,
                        orphan: Some(deadline),
                    },
                );
            }
        }
        self.tx_dirty = true;
    }

    // ---- the poll round -----------------------------------------------------------------

    /// One round: receive a burst, run smoltcp, transmit in bursts, report readiness.
    /// Returns whether there was work (frames in or out, events). `wall` is the event loop's
    /// clock for this round (one clock read per round for the whole worker).
    pub(crate) fn poll(&mut self, wall: std::time::Instant, out: &mut Vec<Fired>) -> bool {
        self.stats.polls.fetch_add(1, Ordering::Relaxed);
        let now = self.smol_time(wall);
        self.dev.begin_round();
        let changed = self.iface.poll(now, &mut self.dev, &mut self.sockets);
        if self.dev.tx_pending() > 0 {
            self.dev.flush();
        }
        let (rx, tx) = self.dev.round_work();
        let before = out.len();
        if rx > 0 || tx > 0 || self.tx_dirty || changed == PollResult::SocketStateChanged {
            self.scan(out);
        } else {
            // Nothing moved: only orphans' deadlines can matter.
            self.reap(wall);
        }
        self.tx_dirty = false;
        self.watch_link();
        let work = rx > 0 || tx > 0 || out.len() > before || self.dev.tx_pending() > 0;
        if work {
            self.last_work = wall;
            self.idle = false;
        } else if !self.idle && wall.duration_since(self.last_work) >= self.busy_poll {
            self.idle = true;
            self.stats.idle_backoffs.fetch_add(1, Ordering::Relaxed);
        } else if self.yield_when_empty {
            // An empty round while busy-polling: let other runnable threads of this core (the
            // application's senders, the peer's worker on a shared machine) have it.
            std::thread::yield_now();
        }
        // Busy-poll (report "work" so the loop does not sleep) for `busy_poll` after the last
        // frame; then let the event loop sleep up to `max_wait`.
        !self.idle
    }

    /// How long the worker may sleep: not past smoltcp's next timer, at most `idle_sleep`.
    pub(crate) fn max_wait(&mut self) -> Duration {
        if !self.idle {
            return Duration::ZERO;
        }
        let now = self.now();
        let smol = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        smol.map_or(self.idle_sleep, |d| d.min(self.idle_sleep))
    }

    /// The port was stopped (`true`) or started again.
    pub(crate) fn set_down(&mut self, down: bool) {
        self.dev.set_down(down);
    }

    /// See [`crate::DpdkStack::set_blackhole`].
    pub(crate) fn set_blackhole(&mut self, on: bool) {
        self.dev.set_blackhole(on);
    }

    fn watch_link(&mut self) {
        // Cheap for virtual devices; checked only when idle-ish to keep the fast path lean.
        if !self
            .stats
            .polls
            .load(Ordering::Relaxed)
            .is_multiple_of(1024)
        {
            return;
        }
        let up = self.port.link_up();
        if up != self.link_was_up {
            tracing::info!(port = self.port.id, up, "link state changed");
            self.link_was_up = up;
        }
    }

    fn reap(&mut self, now: std::time::Instant) {
        let mut gone = Vec::new();
        for (h, c) in &self.conns {
            let Some(deadline) = c.orphan else { continue };
            let s = self.sockets.get_mut::<tcp::Socket>(*h);
            let done = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done || now >= deadline {
                s.abort();
                gone.push(*h);
            }
        }
        for h in gone {
            self.conns.remove(&h);
            self.sockets.remove(h);
        }
    }

    fn scan(&mut self, out: &mut Vec<Fired>) {
        // Listeners: promote established sockets, refill the backlog.
        let ports: Vec<u16> = self.listeners.keys().copied().collect();
        for port in ports {
            let Some(mut l) = self.listeners.remove(&port) else {
                continue;
            };
            let mut i = 0;
            while i < l.backlog.len() {
                let h = l.backlog[i];
                let st = self.sockets.get::<tcp::Socket>(h).state();
                match st {
                    tcp::State::Listen | tcp::State::SynReceived => i += 1,
                    tcp::State::Closed => {
                        // A handshake that failed: the socket can listen again.
                        let s = self.sockets.get_mut::<tcp::Socket>(h);
                        if s.listen(port).is_err() {
                            l.backlog.swap_remove(i);
                            self.sockets.remove(h);
                        } else {
                            i += 1;
                        }
                    }
                    _ => {
                        l.backlog.swap_remove(i);
                        l.ready.push_back(h);
                    }
                }
            }
            while l.backlog.len() < BACKLOG {
                match self.listening_socket(port, &l) {
                    Ok(h) => l.backlog.push(h),
                    Err(e) => {
                        tracing::warn!(port, error = %e, "cannot refill the listen backlog");
                        break;
                    }
                }
            }
            if l.want_accept && !l.ready.is_empty() {
                if let Some(t) = l.token {
                    l.want_accept = false;
                    out.push(Fired::File {
                        token: t,
                        readable: true,
                        writable: false,
                        error: false,
                        closed: false,
                        polled: true,
                    });
                }
            }
            self.listeners.insert(port, l);
        }

        for (h, c) in self.conns.iter_mut() {
            let Some(token) = c.token else { continue };
            let s = self.sockets.get::<tcp::Socket>(*h);
            let state = s.state();
            let mut readable = false;
            let mut writable = false;
            let mut error = false;
            let mut closed = false;
            if c.connecting {
                match state {
                    tcp::State::SynSent | tcp::State::SynReceived => {}
                    tcp::State::Closed => {
                        c.connecting = false;
                        writable = true;
                        error = true;
                        closed = true;
                    }
                    _ => {
                        // Connected: `finish_connect` clears `connecting`.
                        writable = true;
                    }
                }
            } else {
                let reset = state == tcp::State::Closed;
                let eof = !s.may_recv();
                if c.want_read && (s.can_recv() || eof) {
                    c.want_read = false;
                    readable = true;
                }
                if c.want_write && (s.send_queue() < s.send_capacity() || !s.may_send()) {
                    c.want_write = false;
                    writable = true;
                }
                if (eof || reset) && !c.end_reported {
                    c.end_reported = true;
                    readable = true;
                    closed = true;
                    error = reset;
                }
            }
            if readable || writable || error || closed {
                out.push(Fired::File {
                    token,
                    readable,
                    writable,
                    error,
                    closed,
                    polled: true,
                });
            }
        }
        self.reap(std::time::Instant::now());
    }
}

impl Engine {
    /// Whether a TCP socket still has something for its peer: unsent or unacknowledged
    /// bytes, or a FIN not yet acknowledged.
    fn owes_peer(t: &tcp::Socket<'_>) -> bool {
        t.send_queue() > 0
            || matches!(
                t.state(),
                tcp::State::FinWait1 | tcp::State::Closing | tcp::State::LastAck
            )
    }

    /// Before the worker goes: closes every open connection and polls the port until each
    /// has delivered what it holds and its FIN (the messenger's last frames, its close
    /// frame), for at most [`DRAIN_ON_DROP`]. Without this the close frames a shutting-down
    /// messenger writes would die in the sockets' rings (nobody polls the port once its
    /// worker is gone), and peers would see resets instead of closes, as if this end had
    /// crashed. Returns how many connections still owed their peer something.
    fn drain(&mut self) -> usize {
        if self.dev.is_down() {
            return 0;
        }
        for (_, s) in self.sockets.iter_mut() {
            #[allow(irrefutable_let_patterns)]
            if let smoltcp::socket::Socket::Tcp(t) = s {
                if t.is_open() && !t.is_listening() {
                    t.close();
                }
            }
        }
        let end = std::time::Instant::now() + DRAIN_ON_DROP;
        while self.owing() > 0 && std::time::Instant::now() < end {
            self.last_round();
            std::thread::yield_now();
        }
        self.owing()
    }

    /// How many connections still owe their peer something ([`Engine::owes_peer`]).
    fn owing(&self) -> usize {
        self.sockets
            .iter()
            .filter(|(_, s)| matches!(s, smoltcp::socket::Socket::Tcp(t) if Self::owes_peer(t)))
            .count()
    }

    /// One round of the port without the readiness bookkeeping of [`Engine::poll`] (nobody
    /// is left to tell): receive, run smoltcp, transmit.
    fn last_round(&mut self) {
        let now = self.now();
        self.dev.begin_round();
        let _ = self.iface.poll(now, &mut self.dev, &mut self.sockets);
        self.dev.flush();
    }
}

impl Drop for Engine {
    /// The worker is going away: lets every connection deliver what it holds and close
    /// (bounded, [`Engine::drain`]), then resets whatever is still open (one last round sends
    /// the RSTs), so peers learn at once instead of waiting for their timeouts.
    fn drop(&mut self) {
        let owed = self.drain();
        if owed > 0 {
            tracing::debug!(
                owed,
                "engine dropped: connections still owed their peers data"
            );
        }
        let mut open = 0;
        for (_, s) in self.sockets.iter_mut() {
            #[allow(irrefutable_let_patterns)]
            if let smoltcp::socket::Socket::Tcp(t) = s {
                if t.is_open() && !t.is_listening() {
                    open += 1;
                }
                t.abort();
            }
        }
        if open > 0 && !self.dev.is_down() {
            self.last_round();
            tracing::debug!(open, "engine dropped: open connections reset");
        }
    }
}

/// A starting point for ephemeral ports derived from the clock seed.
fn ephemeral_seed(seed: u64) -> u16 {
    ((seed ^ (seed >> 16) ^ (seed >> 32)) as u16).wrapping_mul(7919)
}

fn endpoint_addr(e: IpEndpoint) -> SocketAddr {
    match e.addr {
        IpAddress::Ipv4(a) => SocketAddr::V4(SocketAddrV4::new(a, e.port)),
        IpAddress::Ipv6(a) => SocketAddr::V6(SocketAddrV6::new(a, e.port, 0, 0)),
    }
}
