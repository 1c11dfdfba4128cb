//! Counters of the DPDK stack (all workers of one stack add to the same set).

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters, bumped with relaxed atomics on the data path.
#[derive(Debug, Default)]
pub struct Stats {
    /// Frames taken from the RX queues.
    pub rx_frames: AtomicU64,
    /// Received frames that passed the checks and went to the TCP/IP stack.
    pub rx_delivered: AtomicU64,
    /// Bytes of the frames that went to the TCP/IP stack (Ethernet header included).
    pub rx_bytes: AtomicU64,
    /// Largest frame that went to the TCP/IP stack (Ethernet header included).
    pub rx_max_frame: AtomicU64,
    /// ARP replies and IPv6 neighbour advertisements handed to the other queues' interfaces
    /// (one per queue reached).
    pub arp_shared: AtomicU64,
    /// ARP requests sent.
    pub tx_arp_requests: AtomicU64,
    /// Frames handed to the TX queues.
    pub tx_frames: AtomicU64,
    /// Received frames shorter than an Ethernet header.
    pub drop_runt: AtomicU64,
    /// Received frames that are neither IPv4, IPv6 nor ARP.
    pub drop_not_ip: AtomicU64,
    /// Received IP/TCP packets whose headers or lengths do not fit the frame.
    pub drop_truncated: AtomicU64,
    /// Received frames with a wrong IPv4 or TCP checksum.
    pub drop_checksum: AtomicU64,
    /// Received multi-segment frames (not produced with this stack's MTU).
    pub drop_unsupported: AtomicU64,
    /// Received frames lost to an emulated link failure (`set_blackhole`).
    pub drop_link_down: AtomicU64,
    /// Transmit attempts refused because the mbuf pool was empty (backpressure).
    pub tx_no_mbuf: AtomicU64,
    /// Frames larger than an mbuf (not sent).
    pub tx_too_big: AtomicU64,
    /// Frames dropped because the TX queue did not drain (link down); TCP resends them.
    pub tx_dropped: AtomicU64,
    /// Poll rounds of all workers.
    pub polls: AtomicU64,
    /// Times a worker went from busy-polling to sleeping.
    pub idle_backoffs: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::rx_frames`].
    pub rx_frames: u64,
    /// See [`Stats::rx_delivered`].
    pub rx_delivered: u64,
    /// See [`Stats::rx_bytes`].
    pub rx_bytes: u64,
    /// See [`Stats::rx_max_frame`].
    pub rx_max_frame: u64,
    /// See [`Stats::arp_shared`].
    pub arp_shared: u64,
    /// See [`Stats::tx_arp_requests`].
    pub tx_arp_requests: u64,
    /// See [`Stats::tx_frames`].
    pub tx_frames: u64,
    /// See [`Stats::drop_runt`].
    pub drop_runt: u64,
    /// See [`Stats::drop_not_ip`].
    pub drop_not_ip: u64,
    /// See [`Stats::drop_truncated`].
    pub drop_truncated: u64,
    /// See [`Stats::drop_checksum`].
    pub drop_checksum: u64,
    /// See [`Stats::drop_unsupported`].
    pub drop_unsupported: u64,
    /// See [`Stats::drop_link_down`].
    pub drop_link_down: u64,
    /// See [`Stats::tx_no_mbuf`].
    pub tx_no_mbuf: u64,
    /// See [`Stats::tx_too_big`].
    pub tx_too_big: u64,
    /// See [`Stats::tx_dropped`].
    pub tx_dropped: u64,
    /// See [`Stats::polls`].
    pub polls: u64,
    /// See [`Stats::idle_backoffs`].
    pub idle_backoffs: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            rx_frames: r(&self.rx_frames),
            rx_delivered: r(&self.rx_delivered),
            rx_bytes: r(&self.rx_bytes),
            rx_max_frame: r(&self.rx_max_frame),
            arp_shared: r(&self.arp_shared),
            tx_arp_requests: r(&self.tx_arp_requests),
            tx_frames: r(&self.tx_frames),
            drop_runt: r(&self.drop_runt),
            drop_not_ip: r(&self.drop_not_ip),
            drop_truncated: r(&self.drop_truncated),
            drop_checksum: r(&self.drop_checksum),
            drop_unsupported: r(&self.drop_unsupported),
            drop_link_down: r(&self.drop_link_down),
            tx_no_mbuf: r(&self.tx_no_mbuf),
            tx_too_big: r(&self.tx_too_big),
            tx_dropped: r(&self.tx_dropped),
            polls: r(&self.polls),
            idle_backoffs: r(&self.idle_backoffs),
        }
    }
}

impl StatsSnapshot {
    /// Received frames dropped before the TCP/IP stack, all causes.
    pub fn rx_dropped(&self) -> u64 {
        self.drop_runt
            + self.drop_not_ip
            + self.drop_truncated
            + self.drop_checksum
            + self.drop_unsupported
    }
}
