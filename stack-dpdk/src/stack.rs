//! The [`NetworkStack`] implementation: the stack, its worker, listener and socket types.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::buf::BufMut;
use dataplane::event::{Fired, Poller};
use dataplane::stack::{
    ConnectedSocket, NetworkStack, ServerSocket, SocketOptions, StackError, StackWorker,
};
use mio::{Registry, Token};
use parking_lot::Mutex;
use smoltcp::iface::SocketHandle;

use crate::config::DpdkConfig;
use crate::engine::Engine;
use crate::error::DpdkError;
use crate::port::{self, Port};
use crate::stats::{Stats, StatsSnapshot};
use crate::sys::safe;

/// The DPDK backend: the EAL, one port, and one queue pair per worker, each driven by its
/// own smoltcp interface.
#[derive(Debug)]
pub struct DpdkStack {
    cfg: DpdkConfig,
    port: Arc<Port>,
    stats: Arc<Stats>,
    taken: Arc<Mutex<Vec<bool>>>,
    /// The workers' engines, for `set_link` (which must stop them from polling).
    engines: Mutex<Vec<std::sync::Weak<Mutex<Engine>>>>,
}

impl DpdkStack {
    /// Initialises the EAL (once per process), then configures and starts the port with
    /// [`DpdkConfig::queues`] queue pairs (one per messenger worker). Fails with
    /// [`StackError::Unavailable`] if DPDK, the device or the permissions are missing, and
    /// with a port error naming the device's limits if it has fewer queues.
    pub fn new(cfg: DpdkConfig) -> Result<DpdkStack, StackError> {
        cfg.validate()?;
        port::eal(&cfg)?;
        // One queue pair per worker: a smoltcp socket lives in its worker's interface and
        // cannot move between workers (`home_worker`, `listen_on_every_worker`).
        let queues = cfg.queues;
        let port = Port::open(&cfg, queues)?;
        if port.info.mac[0] & 1 != 0 {
            return Err(DpdkError::InvalidArgument(format!(
                "port {} has a multicast MAC address {:02x?}",
                port.id, port.info.mac
            ))
            .into());
        }
        if !port.link_up() {
            tracing::warn!(port = port.id, "link is down at start-up");
        }
        Ok(DpdkStack {
            taken: Arc::new(Mutex::new(vec![false; usize::from(queues)])),
            engines: Mutex::new(Vec::new()),
            cfg,
            port: Arc::new(port),
            stats: Arc::new(Stats::default()),
        })
    }

    /// The port's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.port.info.mac
    }

    /// The DPDK port id.
    pub fn port_id(&self) -> u16 {
        self.port.id
    }

    /// Queue pairs of the port (one per worker).
    pub fn queues(&self) -> u16 {
        self.port.queues
    }

    /// How outgoing connections pick local ports so replies reach the connecting worker's
    /// queue.
    pub fn steering(&self) -> &crate::rss::Steering {
        &self.port.steering
    }

    /// The driver behind the port (`net_af_packet`, `net_memif`, …).
    pub fn driver(&self) -> &str {
        &self.port.info.driver
    }

    /// Counters of all workers of this stack.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Whether the port's link is up.
    pub fn link_up(&self) -> bool {
        self.port.link_up()
    }

    /// Takes the link down (`false`) or brings it back (`true`): a real link failure as the
    /// peer sees it. Down stops the port (a memif peer sees the disconnect, af_packet stops
    /// taking frames) after `rte_eth_dev_set_link_down` where the driver has it; up starts it
    /// again. The workers' engines are locked meanwhile, so no queue is polled while the port
    /// is stopped; their TCP connections survive and resend what was lost.
    pub fn set_link(&self, up: bool) -> Result<(), StackError> {
        let engines: Vec<Arc<Mutex<Engine>>> = self
            .engines
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        let err = |e: DpdkError| StackError::Io {
            what: "setting the link state",
            source: io::Error::other(e),
        };
        if up {
            // The devices are marked down, so no worker touches the queues while the port
            // starts. A virtual device may refuse for a moment (a memif server still tearing
            // down the old connection): retry for a while.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                match safe::port_start(self.port.id) {
                    Ok(()) => break,
                    Err(e) if std::time::Instant::now() < deadline => {
                        tracing::debug!(error = %e, "port start refused, retrying");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => return Err(err(e)),
                }
            }
            if let Err(e) = safe::set_link(self.port.id, true) {
                tracing::debug!(error = %e, "no administrative link-up (port restarted instead)");
            }
            for e in &engines {
                e.lock().set_down(false);
            }
        } else {
            // Hold every engine so no queue is being polled while the port stops.
            let mut guards: Vec<_> = engines.iter().map(|e| e.lock()).collect();
            if let Err(e) = safe::set_link(self.port.id, false) {
                tracing::debug!(error = %e, "no administrative link-down (port stopped instead)");
            }
            for g in &mut guards {
                g.set_down(true);
            }
            safe::port_stop(self.port.id);
        }
        tracing::info!(port = self.port.id, up, "link set");
        Ok(())
    }

    /// Emulates a cable pull (`true`) or its repair (`false`) without touching the port: every
    /// frame received is dropped (counted in `drop_link_down`) and every frame sent is lost
    /// (`tx_dropped`). For drivers that cannot restart a port (DPDK 22.11's memif does not
    /// reconnect after a stop/start); [`DpdkStack::set_link`] is the real thing elsewhere.
    pub fn set_blackhole(&self, on: bool) {
        for e in self
            .engines
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
        {
            e.lock().set_blackhole(on);
        }
        tracing::info!(port = self.port.id, on, "link failure emulation");
    }

    /// Free buffers in the port's mbuf pool.
    pub fn mbufs_available(&self) -> u32 {
        self.port.pool.available()
    }
}

impl NetworkStack for DpdkStack {
    fn name(&self) -> &'static str {
        "dpdk"
    }

    /// Always: a socket lives in the smoltcp interface of the worker whose queue received
    /// its SYN, so every worker listens and keeps what it accepts.
    fn listen_on_every_worker(&self) -> bool {
        true
    }

    fn create_worker(&self, index: usize) -> Result<Box<dyn StackWorker>, StackError> {
        let queue = {
            let mut taken = self.taken.lock();
            match taken.get_mut(index) {
                Some(t) if !*t => {
                    *t = true;
                    index as u16
                }
                Some(_) => return Err(DpdkError::QueueInUse(index).into()),
                None => {
                    return Err(DpdkError::NoQueue {
                        worker: index,
                        queues: taken.len(),
                    }
                    .into())
                }
            }
        };
        // Make this worker thread an lcore: it gets an lcore id and a per-lcore mbuf cache.
        match safe::thread_register() {
            Ok(lcore) => tracing::debug!(worker = index, lcore, "worker registered as DPDK lcore"),
            Err(e) => tracing::warn!(worker = index, error = %e, "worker not registered as lcore"),
        }
        let lease = QueueLease {
            taken: self.taken.clone(),
            queue: usize::from(queue),
        };
        let engine = Engine::new(self.port.clone(), lease, &self.cfg, self.stats.clone());
        let engine = Arc::new(Mutex::new(engine));
        self.engines.lock().push(Arc::downgrade(&engine));
        Ok(Box::new(DpdkWorker {
            engine,
            index,
            poller_taken: false,
            default_buffers: (self.cfg.socket_rx_buffer, self.cfg.socket_tx_buffer),
        }))
    }
}

/// A worker's claim on one queue pair, held by its engine: the queue is free for a new
/// worker (a new messenger on the same stack) only once the engine, and with it every socket
/// and poller that could still touch the queue, is gone.
#[derive(Debug)]
pub(crate) struct QueueLease {
    taken: Arc<Mutex<Vec<bool>>>,
    queue: usize,
}

impl QueueLease {
    /// The queue pair's index.
    pub(crate) fn queue(&self) -> u16 {
        self.queue as u16
    }
}

impl Drop for QueueLease {
    fn drop(&mut self) {
        if let Some(t) = self.taken.lock().get_mut(self.queue) {
            *t = false;
        }
    }
}

/// One worker's share: its engine (interface, sockets, queue pair).
#[derive(Debug)]
pub struct DpdkWorker {
    engine: Arc<Mutex<Engine>>,
    /// The messenger worker (and queue pair) this is.
    index: usize,
    poller_taken: bool,
    default_buffers: (usize, usize),
}

impl StackWorker for DpdkWorker {
    fn listen(
        &mut self,
        addr: SocketAddr,
        opts: &SocketOptions,
    ) -> Result<Box<dyn ServerSocket>, StackError> {
        let mut e = self.engine.lock();
        // Listeners take both families (smoltcp listens on a port, any address); the address
        // reported is the one asked for, or the interface's of that family.
        let asked = addr.ip();
        let local_ip = e
            .ip_for(&addr)
            .filter(|&i| asked.is_unspecified() || asked == i);
        let Some(local_ip) = local_ip else {
            let ip = e.ip();
            let has = match e.ip6() {
                Some(i) => format!("{ip} and {i}"),
                None => format!("{ip} only (no IPv6 address configured)"),
            };
            return Err(StackError::Bind {
                addr,
                source: io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!("the DPDK interface has address {has}"),
                ),
            });
        };
        let (rx, tx) = self.buffers(opts);
        let port = e
            .listen(addr.port(), rx, tx, opts.nodelay, opts.backlog as usize)
            .map_err(|source| StackError::Bind { addr, source })?;
        Ok(Box::new(DpdkListener {
            engine: self.engine.clone(),
            worker: self.index,
            port,
            local: SocketAddr::from((local_ip, port)),
        }))
    }

    fn connect(
        &mut self,
        addr: SocketAddr,
        opts: &SocketOptions,
    ) -> Result<Box<dyn ConnectedSocket>, StackError> {
        let (rx, tx) = self.buffers(opts);
        let h = self
            .engine
            .lock()
            .connect(addr, rx, tx, opts.nodelay)
            .map_err(|source| StackError::Connect { addr, source })?;
        Ok(Box::new(DpdkSocket {
            engine: self.engine.clone(),
            worker: self.index,
            handle: h,
            peer: addr,
        }))
    }

    fn take_pollers(&mut self) -> Vec<Box<dyn Poller>> {
        if self.poller_taken {
            return Vec::new();
        }
        self.poller_taken = true;
        vec![Box::new(DpdkPoller {
            engine: self.engine.clone(),
            wait: Duration::ZERO,
        })]
    }
}

impl DpdkWorker {
    /// Socket buffer sizes: the messenger's options where set, else the stack's
    /// (`DpdkConfig::socket_rx_buffer` / `socket_tx_buffer`).
    fn buffers(&self, opts: &SocketOptions) -> (usize, usize) {
        (
            opts.recv_buffer.unwrap_or(self.default_buffers.0),
            opts.send_buffer.unwrap_or(self.default_buffers.1),
        )
    }
}

/// Runs the engine on every loop iteration of the worker.
struct DpdkPoller {
    engine: Arc<Mutex<Engine>>,
    wait: Duration,
}

impl Poller for DpdkPoller {
    fn poll(&mut self, now: Instant, ready: &mut Vec<Fired>) -> bool {
        let mut e = self.engine.lock();
        let busy = e.poll(now, ready);
        self.wait = e.max_wait();
        busy
    }

    fn max_wait(&self) -> Option<Duration> {
        Some(self.wait)
    }
}

/// A listening TCP port on the DPDK interface.
#[derive(Debug)]
pub struct DpdkListener {
    engine: Arc<Mutex<Engine>>,
    worker: usize,
    port: u16,
    local: SocketAddr,
}

impl ServerSocket for DpdkListener {
    fn accept(
        &mut self,
        _opts: &SocketOptions,
    ) -> io::Result<Option<(Box<dyn ConnectedSocket>, SocketAddr)>> {
        let Some((handle, peer)) = self.engine.lock().accept(self.port) else {
            return Ok(None);
        };
        Ok(Some((
            Box::new(DpdkSocket {
                engine: self.engine.clone(),
                worker: self.worker,
                handle,
                peer,
            }),
            peer,
        )))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn register(&mut self, _registry: &Registry, token: Token) -> io::Result<()> {
        self.engine.lock().listener_register(self.port, Some(token));
        Ok(())
    }

    fn deregister(&mut self, _registry: &Registry) -> io::Result<()> {
        self.engine.lock().listener_register(self.port, None);
        Ok(())
    }
}

impl Drop for DpdkListener {
    fn drop(&mut self) {
        self.engine.lock().close_listener(self.port);
    }
}

/// A TCP connection of the DPDK interface. It belongs to the worker whose interface holds it
/// (the messenger keeps it there: [`ConnectedSocket::home_worker`]).
#[derive(Debug)]
pub struct DpdkSocket {
    engine: Arc<Mutex<Engine>>,
    worker: usize,
    handle: SocketHandle,
    peer: SocketAddr,
}

impl ConnectedSocket for DpdkSocket {
    fn home_worker(&self) -> Option<usize> {
        Some(self.worker)
    }

    fn register(&mut self, _registry: &Registry, token: Token) -> io::Result<()> {
        self.engine.lock().register(self.handle, Some(token));
        Ok(())
    }

    fn deregister(&mut self, _registry: &Registry) -> io::Result<()> {
        self.engine.lock().register(self.handle, None);
        Ok(())
    }

    fn finish_connect(&mut self) -> io::Result<bool> {
        self.engine.lock().finish_connect(self.handle)
    }

    fn read(&mut self, buf: &mut BufMut) -> io::Result<usize> {
        let n = self.engine.lock().read(self.handle, buf.spare_mut())?;
        buf.advance(n);
        Ok(n)
    }

    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        self.engine.lock().writev(self.handle, iov)
    }

    /// A short read emptied the socket's receive ring, and the engine reports the next
    /// bytes with a new readable event (see `Engine::read`).
    fn short_read_drains(&self) -> bool {
        true
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }

    fn shutdown(&mut self) {
        self.engine.lock().shutdown(self.handle);
    }
}

impl Drop for DpdkSocket {
    fn drop(&mut self) {
        self.engine.lock().orphan(self.handle);
    }
}
