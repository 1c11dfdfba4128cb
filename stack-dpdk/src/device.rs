//! smoltcp's [`phy::Device`] over one RX/TX queue pair of a DPDK port.
//!
//! - Receive: one `rx_burst` per poll round fills a batch; each [`RxToken`] owns one mbuf and
//!   hands smoltcp the frame bytes in place (no copy). Frames are checked here first (runt,
//!   truncated, non-IPv4/ARP, bad IPv4 or TCP checksum) and dropped with a counter, so smoltcp
//!   is told receive checksums are "handled" and the check is not done twice.
//! - Transmit: a [`TxToken`] fills an mbuf taken from a small pre-allocated stash (refilled
//!   with `alloc_bulk`); filled mbufs queue up and leave in bursts of `burst` frames, the rest
//!   in one `tx_burst` at the end of the round ([`PortDevice::flush`]). An empty pool makes
//!   [`Device::transmit`] return `None`: smoltcp keeps the data and retries (backpressure).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::frame::{check_frame, Drop};
use crate::port::Port;
use crate::stats::Stats;
use crate::sys::safe::{self, Mbuf};

/// `RTE_MBUF_F_RX_L4_CKSUM_BAD`.
const RX_L4_CKSUM_BAD: u64 = 1 << 3;
/// `RTE_MBUF_F_RX_IP_CKSUM_BAD`.
const RX_IP_CKSUM_BAD: u64 = 1 << 4;
/// `RTE_MBUF_F_RX_IP_CKSUM_GOOD`.
const RX_IP_CKSUM_GOOD: u64 = 1 << 7;
/// `RTE_MBUF_F_RX_L4_CKSUM_GOOD`.
const RX_L4_CKSUM_GOOD: u64 = 1 << 8;

/// Frames queued for transmission beyond this are dropped (the port is stalled, e.g. link
/// down); TCP retransmits them later.
const TX_QUEUE_LIMIT: usize = 4096;

/// One queue pair of a port as a smoltcp device.
pub(crate) struct PortDevice {
    port: Arc<Port>,
    queue: u16,
    burst: usize,
    rx: VecDeque<Mbuf>,
    rx_scratch: Vec<Mbuf>,
    /// ARP replies other queues received, to be handed to this interface first.
    shared_arp: Vec<Vec<u8>>,
    rx_polled: bool,
    tx: Vec<Mbuf>,
    stash: Vec<Mbuf>,
    scratch: Vec<u8>,
    stats: Arc<Stats>,
    /// The port is stopped (link taken down): no bursts at all.
    down: bool,
    /// Emulated cable pull: the port runs, but every frame in either direction is lost.
    blackhole: bool,
    /// Largest frame this queue delivered (to skip most updates of the shared maximum).
    rx_max_frame: u64,
    /// Frames received / sent in the current round.
    round_rx: usize,
    round_tx: usize,
}

impl PortDevice {
    /// The queue pair's index.
    pub(crate) fn queue(&self) -> u16 {
        self.queue
    }

    pub(crate) fn new(port: Arc<Port>, queue: u16, burst: usize, stats: Arc<Stats>) -> Self {
        let burst = burst.clamp(1, 64);
        PortDevice {
            port,
            queue,
            burst,
            rx: VecDeque::with_capacity(64),
            rx_scratch: Vec::with_capacity(64),
            shared_arp: Vec::new(),
            rx_polled: false,
            tx: Vec::with_capacity(256),
            stash: Vec::with_capacity(64),
            scratch: vec![0; 65536],
            stats,
            down: false,
            blackhole: false,
            rx_max_frame: 0,
            round_rx: 0,
            round_tx: 0,
        }
    }

    /// Marks the port stopped (`true`) or running. While stopped the queues are not touched:
    /// nothing is received, smoltcp's `transmit` gets `None` (its data waits in the socket
    /// buffers) and frames already queued are dropped (TCP resends them).
    pub(crate) fn set_down(&mut self, down: bool) {
        self.down = down;
        if down {
            let n = self.tx.len() as u64;
            self.tx.clear();
            self.stats.tx_dropped.fetch_add(n, Ordering::Relaxed);
            self.rx.clear();
        }
    }

    /// Starts a poll round: the next `receive` may call `rx_burst` once.
    pub(crate) fn begin_round(&mut self) {
        self.rx_polled = false;
        if self.port.queues > 1 {
            self.port.arp.take(self.queue, &mut self.shared_arp);
        }
        self.round_rx = 0;
        self.round_tx = 0;
    }

    /// Frames received and handed to smoltcp in this round, frames sent.
    pub(crate) fn round_work(&self) -> (usize, usize) {
        (self.round_rx, self.round_tx)
    }

    /// Frames waiting for the NIC.
    pub(crate) fn tx_pending(&self) -> usize {
        self.tx.len()
    }

    /// Sends what is queued, in one burst (what the NIC refuses stays for the next round).
    /// Whether the port is stopped (`set_down`).
    pub(crate) fn is_down(&self) -> bool {
        self.down
    }

    /// Emulates a cable pull (`true`) or its repair: see [`crate::DpdkStack::set_blackhole`].
    pub(crate) fn set_blackhole(&mut self, on: bool) {
        self.blackhole = on;
    }

    pub(crate) fn flush(&mut self) -> usize {
        if self.down {
            return 0;
        }
        if self.blackhole {
            let n = self.tx.len() as u64;
            self.tx.clear();
            self.stats.tx_dropped.fetch_add(n, Ordering::Relaxed);
            return 0;
        }
        let n = safe::tx_burst(self.port.id, self.queue, &mut self.tx);
        self.round_tx += n;
        self.stats.tx_frames.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    fn refill_stash(&mut self) -> bool {
        if !self.stash.is_empty() {
            return true;
        }
        if self.port.pool.alloc_bulk(&mut self.stash, 32) {
            return true;
        }
        // Fewer than 32 left: take one at a time.
        match self.port.pool.alloc() {
            Some(m) => {
                self.stash.push(m);
                true
            }
            None => false,
        }
    }

    fn next_rx(&mut self) -> Option<Mbuf> {
        loop {
            if let Some(m) = self.rx.pop_front() {
                if self.accept(&m) {
                    return Some(m);
                }
                continue;
            }
            if self.rx_polled || self.down {
                return None;
            }
            self.rx_polled = true;
            let n = safe::rx_burst(self.port.id, self.queue, &mut self.rx_scratch, self.burst);
            if n == 0 {
                return None;
            }
            self.stats.rx_frames.fetch_add(n as u64, Ordering::Relaxed);
            if self.blackhole {
                self.stats
                    .drop_link_down
                    .fetch_add(n as u64, Ordering::Relaxed);
                self.rx_scratch.clear();
                return None;
            }
            self.rx.extend(self.rx_scratch.drain(..));
        }
    }

    /// The checks smoltcp is told it need not do; false = drop (counted).
    fn accept(&self, m: &Mbuf) -> bool {
        let s = &self.stats;
        if m.segments() != 1 {
            s.drop_unsupported.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let flags = m.ol_flags();
        let caps = &self.port.info;
        if self.port.queues > 1 && crate::arp::is_neighbor_reply(m.data()) {
            let n = self.port.arp.share(self.queue, m.data());
            s.arp_shared.fetch_add(n as u64, Ordering::Relaxed);
        }
        match check_frame(
            m.data(),
            caps.rx_ip_cksum && flags & RX_IP_CKSUM_GOOD != 0,
            self.port.skip_tcp_checksum || (caps.rx_tcp_cksum && flags & RX_L4_CKSUM_GOOD != 0),
            (caps.rx_ip_cksum && flags & RX_IP_CKSUM_BAD != 0)
                || (caps.rx_tcp_cksum && flags & RX_L4_CKSUM_BAD != 0),
        ) {
            Ok(()) => true,
            Err(Drop::Runt) => {
                s.drop_runt.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(Drop::NotIp) => {
                s.drop_not_ip.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(Drop::Truncated) => {
                s.drop_truncated.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(Drop::Checksum) => {
                s.drop_checksum.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Receives one frame: an mbuf it owns until smoltcp has consumed the bytes, or a copy of an
/// ARP reply another queue received ([`crate::arp`]).
pub(crate) enum RxToken {
    /// A frame of this queue, read in place.
    Mbuf(Mbuf),
    /// An ARP reply shared by another queue.
    Shared(Vec<u8>),
}

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        match self {
            // The frame is read in place from the mbuf; the mbuf goes back to the pool when
            // the token is dropped at the end of this call.
            RxToken::Mbuf(m) => f(m.data()),
            RxToken::Shared(v) => f(&v),
        }
    }
}

/// Transmits one frame into an mbuf of the stash (or, if the pool ran dry between
/// `receive` and now, into a scratch buffer that is then dropped and counted).
pub(crate) struct TxToken<'a> {
    dev: &'a mut PortDevice,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let dev = self.dev;
        let mbuf = if dev.refill_stash() {
            dev.stash.pop()
        } else {
            None
        };
        let Some(mut m) = mbuf else {
            dev.stats.tx_no_mbuf.fetch_add(1, Ordering::Relaxed);
            return with_scratch(&mut dev.scratch, len, f);
        };
        let r = match m.append(len) {
            Some(buf) => {
                let r = f(buf);
                if crate::arp::is_arp_request(buf) {
                    dev.stats.tx_arp_requests.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
            None => {
                dev.stats.tx_too_big.fetch_add(1, Ordering::Relaxed);
                return with_scratch(&mut dev.scratch, len, f);
            }
        };
        if dev.tx.len() >= TX_QUEUE_LIMIT {
            dev.stats.tx_dropped.fetch_add(1, Ordering::Relaxed);
            return r;
        }
        dev.tx.push(m);
        if dev.tx.len() >= dev.burst {
            dev.flush();
        }
        r
    }
}

fn with_scratch<R, F: FnOnce(&mut [u8]) -> R>(scratch: &mut Vec<u8>, len: usize, f: F) -> R {
    if scratch.len() < len {
        scratch.resize(len, 0);
    }
    f(&mut scratch[..len])
}

impl phy::Device for PortDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken, TxToken<'_>)> {
        if let Some(frame) = self.shared_arp.pop() {
            return Some((RxToken::Shared(frame), TxToken { dev: self }));
        }
        let mbuf = self.next_rx()?;
        self.round_rx += 1;
        let len = mbuf.data().len() as u64;
        self.stats.rx_delivered.fetch_add(1, Ordering::Relaxed);
        self.stats.rx_bytes.fetch_add(len, Ordering::Relaxed);
        if len > self.rx_max_frame {
            self.rx_max_frame = len;
            self.stats.rx_max_frame.fetch_max(len, Ordering::Relaxed);
        }
        Some((RxToken::Mbuf(mbuf), TxToken { dev: self }))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        if self.down {
            return None;
        }
        if self.tx.len() >= TX_QUEUE_LIMIT {
            // The NIC is not taking frames: try once more, then push back on smoltcp.
            self.flush();
            if self.tx.len() >= TX_QUEUE_LIMIT {
                return None;
            }
        }
        if !self.refill_stash() {
            self.stats.tx_no_mbuf.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(TxToken { dev: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = usize::from(self.port.info.mtu) + 14;
        caps.max_burst_size = Some(self.burst);
        // Receive checks are done in `check_frame` (or by the NIC where it can); transmit
        // checksums are computed by smoltcp in software (no transmit offload is requested),
        // except TCP's on a link that cannot corrupt frames (`skip_tcp_checksum`).
        let mut ck = ChecksumCapabilities::default();
        ck.ipv4 = Checksum::Tx;
        ck.tcp = if self.port.skip_tcp_checksum {
            Checksum::None
        } else {
            Checksum::Tx
        };
        ck.icmpv4 = Checksum::Both;
        caps.checksum = ck;
        caps
    }
}

impl std::fmt::Debug for PortDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortDevice")
            .field("port", &self.port.id)
            .field("queue", &self.queue)
            .field("rx_batch", &self.rx.len())
            .field("tx_pending", &self.tx.len())
            .finish()
    }
}
