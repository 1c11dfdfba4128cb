//! RDMA verbs network stack for the dataplane messenger: reliable-connected (RC) queue pairs
//! through [`sideway`], which loads libibverbs at run time, so this crate builds on every
//! machine and a machine without RDMA gets [`StackError::Unavailable`] ("no RDMA device found;
//! install rdma-core or use --backend posix"), never a crash.
//!
//! # How a connection works
//!
//! - **Set-up over a TCP side channel** (Ceph's way, not rdmacm): the connecting end opens a
//!   TCP connection to the listener's address; both ends send a `wire` hello with QP number,
//!   GID, PSN, MTU, receive credits and receive-buffer size, move their QP to RTR and RTS and
//!   send `READY`. The messenger's own hello, authentication and session frames then flow over
//!   the RDMA socket exactly as over TCP. The TCP connection stays open: it carries credit
//!   updates that must not consume credits themselves and `CLOSE`, and its hang-up tells us
//!   the peer process went away.
//! - **Memory**: send and receive slots come from hugepage arenas registered once per
//!   protection domain (one MR per arena, see `memory`); nothing is registered per message.
//!   The arenas of the `BufPool`s whose buffers are sent are registered once per protection
//!   domain too, the first time one of their buffers is sent.
//! - **Send, zero-copy**: the socket asks the messenger for segments
//!   (`ConnectedSocket::send_segments`): a payload `Buf` in a registered pool arena goes out
//!   as an SGE of that arena, and the socket keeps a clone of it until the work request's
//!   completion (or the QP's destruction); frame headers, checksums, small and heap payloads
//!   are copied into registered send slots ([`RdmaConfig::zero_copy`],
//!   [`RdmaStats::zero_copy_bytes`], [`RdmaStats::copied_bytes`]). The batch goes out with one
//!   doorbell (SENDs up to a receive buffer, inline up to [`RdmaConfig::max_inline`] or what
//!   the device grants); only every `send_depth / 4`-th WR, the one that fills the ring and
//!   the last of a batch that holds `Buf`s are signalled (RC completes in order, so one
//!   completion frees every slot and `Buf` before it).
//! - **Receive buffers**: by default one shared receive queue (SRQ) per stack (`srq`): each
//!   connection is granted a credit share ([`RdmaConfig::srq_share`]) backed by buffers
//!   posted to the SRQ, which grows on demand up to [`RdmaConfig::srq_max_wr`] (beyond, new
//!   connections are refused with [`RdmaError::SrqExhausted`]) and is destroyed with the last
//!   connection. With [`RdmaConfig::shared_rq`] off, each QP has its own receive queue of
//!   [`RdmaConfig::recv_depth`] buffers.
//! - **Large messages**: each connection registers a write buffer of its own (the only MR
//!   with remote-write access) and advertises it in the hello; a `writev` with at least
//!   [`RdmaConfig::write_min`] left sends pieces of up to one chunk as RDMA
//!   WRITE-with-immediate (gathering several send slots) into the next chunk of the peer's
//!   buffer, under chunk credits. The receiver checks every WRITE's chunk, length and credit
//!   against what it advertised and fails the connection on a mismatch.
//! - **Credit-based flow control**: a sender starts with the credits the peer granted
//!   (`recv_credits`) and spends one per SEND; it never posts more than that, so the receiver
//!   never runs out of posted buffers. The receiver counts every SEND against the credits it
//!   granted and tears down a peer that exceeds them (with a per-QP receive queue the
//!   overrun also hits RNR, and RNR retry 0 fails the sender at once). Credits come back in
//!   the immediate data of the peer's SENDs, or, when the peer has nothing to send, in a
//!   `CREDIT` message on the side channel once half the window has been consumed.
//! - **Completions**: one CQ and completion channel per connection. `read`/`writev` poll the CQ
//!   while there is work; when drained, the CQ is armed and the channel's fd wakes the
//!   worker's `EventCenter`. With [`RdmaConfig::busy_poll`] the worker's poller (`poller`)
//!   keeps polling the CQ of each of its sockets for that long after that socket's last
//!   completion (or wake-up by its channel), then arms it and leaves it to its channel, so
//!   idle connections cost a busy round nothing. An eventfd per socket raises the writable
//!   event when credits or send slots come back.
//! - **Thread-agnostic sockets**: QP, CQ, channel and send slots belong to the socket, not to
//!   a worker (the SRQ belongs to the stack), so the messenger may hand an accepted socket to another worker (`Adopt`) and it
//!   re-registers its fds there. No change to the messenger was needed.
//! - **Teardown**: QP to the error state, wait (bounded) for the flush, destroy QP, CQ and
//!   channel, then return the slots, so a slot is never reused while the NIC may write it.
//!
//! See `docs/rdma.md` for what is not done yet (zero-copy receive, memory windows per QP, CQ
//! per worker) and for setting up a rack.

mod memory;
mod poller;
mod socket;
mod srq;
mod sys;
mod wire;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dataplane::stack::{
    ConnectedSocket, NetworkStack, ServerSocket, SocketOptions, StackError, StackWorker,
};
use mio::net::TcpListener;
use mio::{Interest, Registry, Token};
use parking_lot::Mutex;
use sideway::ibverbs::address::{Gid, GidType};
use sideway::ibverbs::device::{DeviceInfo, DeviceList};
use sideway::ibverbs::device_context::{DeviceContext, LinkLayer};
use sideway::ibverbs::protection_domain::ProtectionDomain;

use crate::memory::{PoolRegions, SlotPool};
pub use crate::socket::RdmaSocket;
use crate::srq::SharedRq;
use crate::sys::QpHandle;

/// Most SGEs one send work request gathers (zero-copy payloads between copied headers).
const MAX_SEND_SGE: u32 = 16;

/// The message users see when a machine has no usable RDMA device.
pub const NO_DEVICE: &str = "no RDMA device found; install rdma-core or use --backend posix";

/// Why the RDMA stack failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RdmaError {
    /// No device, no libibverbs, or the named device is missing.
    #[error("{0}")]
    NoDevice(String),
    /// A verbs call failed.
    #[error("{what}: {source}")]
    Verbs {
        /// What was being done.
        what: &'static str,
        /// The error the provider returned.
        source: io::Error,
    },
    /// Registered memory could not be mapped or registered.
    #[error("registered memory: {0}")]
    Memory(String),
    /// The shared receive queue cannot back another connection's credits.
    #[error(
        "shared receive queue exhausted: {granted} of {max} credits granted, a connection \
         needs {share} more (raise RdmaConfig::srq_max_wr or lower srq_share)"
    )]
    SrqExhausted {
        /// Credits granted to live connections.
        granted: u32,
        /// Most buffers the SRQ may hold.
        max: u32,
        /// Credits one connection needs.
        share: u32,
    },
}

impl From<RdmaError> for StackError {
    fn from(e: RdmaError) -> StackError {
        match e {
            RdmaError::NoDevice(reason) => StackError::Unavailable {
                backend: "rdma".into(),
                reason,
            },
            RdmaError::Verbs { what, source } => StackError::Io { what, source },
            RdmaError::Memory(m) => StackError::Io {
                what: "rdma memory",
                source: io::Error::other(m),
            },
            e @ RdmaError::SrqExhausted { .. } => StackError::Io {
                what: "rdma shared receive queue",
                source: io::Error::other(e.to_string()),
            },
        }
    }
}

/// Tuning of the RDMA stack.
#[derive(Debug, Clone)]
pub struct RdmaConfig {
    /// Device name (`mlx5_0`, `rxe0`); `None` takes the first device.
    pub device: Option<String>,
    /// Port number on the device (1-based).
    pub port: u8,
    /// GID index; `None` picks a RoCEv2 IPv4-mapped GID when there is one, else index 0.
    /// On RoCE racks this is the knob that selects RoCEv2 (`show_gids`).
    pub gid_index: Option<u32>,
    /// Bytes per send / receive slot: the largest single SEND.
    pub slot_size: usize,
    /// Receive buffers posted per connection in per-QP mode (`shared_rq: false`): the peer's
    /// send window (credits).
    pub recv_depth: u32,
    /// Receive into one shared receive queue per stack (the default) instead of a receive
    /// queue per QP. Each connection is granted `srq_share` credits backed by buffers posted
    /// to the SRQ, so a connection costs `srq_share` receive buffers instead of `recv_depth`.
    /// Falls back to per-QP receive queues (with a warning) on devices without SRQ support.
    pub shared_rq: bool,
    /// Credits (SRQ buffers) granted to each connection in SRQ mode: the peer's send window.
    pub srq_share: u32,
    /// Most buffers the SRQ may hold (capped by the device's `max_srq_wr`); a connection whose
    /// share would exceed it is refused with [`RdmaError::SrqExhausted`].
    pub srq_max_wr: u32,
    /// Send slots per connection (send-queue depth).
    pub send_depth: u32,
    /// Sends up to this many bytes go inline in the work request: the CPU writes them into the
    /// send queue entry, so the NIC needs no DMA read of a buffer and no memory-key lookup.
    /// 256 by default: the whole frame of a message of up to 212 payload bytes (a 40-byte
    /// header and a 4-byte crc around it); the device may grant less (then 64, then none is
    /// used). Inlining the 108-byte frames of 64 B messages cut the 64 B ping-pong p50 by 8%
    /// on Soft-RoCE (docs/rdma.md).
    pub max_inline: u32,
    /// Chunks of the per-connection buffer the peer may RDMA-WRITE large messages into
    /// (registered with remote-write access, that buffer only). 0 turns RDMA WRITE off: every
    /// byte then goes in slot-sized SENDs.
    pub write_chunks: u32,
    /// Bytes per write chunk: the largest single RDMA WRITE into this end (the sender also
    /// caps a WRITE at 8 of its send slots (fewer if the device has fewer SGEs) and half its
    /// send ring).
    pub write_chunk: usize,
    /// A `writev` with at least this many bytes left uses RDMA WRITE-with-immediate (when the
    /// peer advertised a write buffer and a chunk is free); smaller ones use SENDs.
    pub write_min: usize,
    /// Bytes per registered arena (grown on demand, one MR each).
    pub arena_bytes: usize,
    /// After a socket's last completion (or its channel's wake-up), the worker's event loop
    /// keeps polling its CQ this long instead of waiting on its completion channel (Ceph's
    /// `ms_async_rdma_polling_us`, 1 ms there and here by default). A connection with
    /// traffic then pays no wake-up per message; an idle one costs the loop nothing after the
    /// window, and a worker whose connections are all idle sleeps. On the 2-vCPU test VM it
    /// cuts the 64 B ping-pong p50 about six-fold against sleeping at once (`Duration::ZERO`,
    /// for machines where a spinning worker would starve others; see docs/rdma.md).
    pub busy_poll: Duration,
    /// Send the messenger's payload `Buf`s without copying them (the default): a payload in
    /// a `BufPool` arena goes out as an SGE of that arena's memory region (each arena
    /// registered once per protection domain, the first time one of its buffers is sent), and
    /// the socket keeps a clone of the `Buf` until the work request completes. Heap or static
    /// buffers, frame headers and checksums are still copied into send slots. Off: every byte
    /// is copied (the socket takes `writev`).
    pub zero_copy: bool,
    /// A payload `Buf` shorter than this is copied even when it could go zero-copy (an SGE
    /// costs the NIC a descriptor and a DMA read; a small copy is cheaper). A longer one goes
    /// zero-copy whole, every piece of it (also a short tail left by a partial send).
    pub zero_copy_min: usize,
    /// Zero-copy receive (the default): a receive buffer a SEND of at least `lend_min` bytes
    /// landed in is lent to the messenger as it is (`ConnectedSocket::read_lent`), and a
    /// fresh registered buffer is posted in its place, so credits come back as usual. The
    /// lent buffer returns to the stack's registered pool when the last message cut from it
    /// is dropped. Safe without memory windows: a consumed receive buffer is no longer
    /// posted, so the peer cannot write it. Bytes that arrive by RDMA WRITE (into the
    /// remote-writable landing buffer) are still copied. Off: every byte is copied.
    pub lend_receive: bool,
    /// SENDs smaller than this are copied, not lent (a lent buffer is a whole receive slot
    /// held until its last message is dropped).
    pub lend_min: usize,
    /// Most receive buffers lent out at once per stack; past it, received bytes are copied
    /// (an application holding many messages cannot make the stack register memory
    /// without bound).
    pub lend_max: usize,
    /// Make write chunks memory windows (type 2) when the device has them: each chunk is
    /// granted to the peer as a window bound to that connection's QP, over memory registered
    /// for no remote access at all. A chunk an RDMA WRITE filled can then be lent to the
    /// messenger like a receive buffer (zero-copy receive, within `lend_min`/`lend_max`): its
    /// window is invalidated (the peer can no longer write it) and bound to a fresh chunk
    /// under a new key. Off, or on a device without type 2 windows: one remote-writable
    /// region per connection, and bytes that arrive by RDMA WRITE are copied.
    pub write_windows: bool,
    /// Test hook: behave like a broken or hostile peer. [`Misbehave::No`] outside tests.
    #[doc(hidden)]
    pub misbehave: Misbehave,
}

/// Ways a test peer misbehaves (fault injection for the bad-input tests).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Misbehave {
    /// Behave.
    #[default]
    No,
    /// Ignore credits: post SENDs whether or not the receiver has buffers posted.
    OverrunCredits,
    /// Set the reserved bits of every SEND's immediate value.
    BadImmediate,
    /// RDMA-WRITE into the chunk after the one the receiver expects (inside its registered
    /// buffer, outside the window it granted).
    WriteOutsideWindow,
    /// Memory-window mode: RDMA-WRITE through a chunk's previous grant (the key the receiver
    /// invalidated when it lent that chunk's memory), as a peer writing memory its receiver
    /// handed to the application would.
    WriteRevokedWindow,
    /// Memory-window mode: grant write chunks out of ring order (chunk k + 1 where k is due).
    GrantOutOfOrder,
}

impl Default for RdmaConfig {
    fn default() -> Self {
        RdmaConfig {
            device: None,
            port: 1,
            gid_index: None,
            slot_size: 128 << 10,
            recv_depth: 32,
            shared_rq: true,
            srq_share: 8,
            srq_max_wr: 4096,
            send_depth: 32,
            max_inline: 256,
            write_chunks: 2,
            write_chunk: 512 << 10,
            write_min: 256 << 10,
            arena_bytes: 16 << 20,
            busy_poll: Duration::from_millis(1),
            zero_copy: true,
            zero_copy_min: 4096,
            lend_receive: true,
            lend_min: 16 << 10,
            lend_max: 256,
            write_windows: true,
            misbehave: Misbehave::No,
        }
    }
}

/// Live counters of the stack, for tests and metrics.
#[derive(Debug, Default)]
pub struct RdmaStats {
    /// Data SENDs posted.
    pub sends: AtomicU64,
    /// Data SENDs received.
    pub recvs: AtomicU64,
    /// SENDs posted inline: the frame bytes copied into the work request itself (at most
    /// [`RdmaConfig::max_inline`], or what the device granted).
    pub inline_sends: AtomicU64,
    /// Doorbells (post_send calls with at least one WR).
    pub doorbells: AtomicU64,
    /// Highest number of our receive buffers the peer had consumed and we had not yet
    /// re-posted at once, over all connections. Never above `recv_depth` if credits hold.
    pub max_recv_outstanding: AtomicU64,
    /// Times a sender found itself out of credits (and waited).
    pub credit_stalls: AtomicU64,
    /// Credit updates sent on the side channel.
    pub credit_messages: AtomicU64,
    /// Connections torn down because of a QP error, a bad peer or a protocol violation.
    pub failures: AtomicU64,
    /// Queue pairs alive now.
    pub live_qps: AtomicU64,
    /// Why the last connection failed, for logs and tests.
    pub last_failure: Mutex<Option<String>>,
    /// SRQ mode: most buffers the shared receive queue held at once.
    pub srq_buffers_max: AtomicU64,
    /// SRQ mode: most credits granted to connections at once (never above the buffers).
    pub srq_granted_max: AtomicU64,
    /// SRQ mode: lowest number of buffers posted in the SRQ seen after a receive completion
    /// (`i64::MAX` until the first). Negative would mean a receive without a posted buffer.
    pub srq_posted_min: AtomicI64,
    /// Connections refused because the SRQ could not back their credits.
    pub srq_refused: AtomicU64,
    /// RDMA WRITE-with-immediate work requests posted.
    pub writes: AtomicU64,
    /// Bytes sent by RDMA WRITE.
    pub write_bytes: AtomicU64,
    /// RDMA WRITEs received (completions of the peer's WRITE-with-immediate).
    pub writes_received: AtomicU64,
    /// Bytes sent straight from the caller's registered `Buf`s (zero-copy SGEs).
    pub zero_copy_bytes: AtomicU64,
    /// Bytes copied into send slots (frame headers, checksums, small or unregistered
    /// payloads; every byte when zero-copy is off).
    pub copied_bytes: AtomicU64,
    /// Receive buffers lent to the messenger (zero-copy receive).
    pub lent_buffers: AtomicU64,
    /// Bytes received in lent buffers (no copy on the receive path).
    pub lent_bytes: AtomicU64,
    /// Lent buffers not yet given back.
    pub lent_outstanding: AtomicU64,
    /// Memory-window mode: window bindings posted (at set-up and for every chunk lent).
    pub window_binds: AtomicU64,
    /// Memory-window mode: write chunks lent to the messenger (zero-copy RDMA WRITE receive;
    /// also counted in `lent_buffers` and `lent_bytes`).
    pub lent_write_chunks: AtomicU64,
    /// Bytes received that were copied into the messenger's buffers (small SENDs, RDMA
    /// WRITE chunks, or lending off or at its cap).
    pub recv_copied_bytes: AtomicU64,
    /// Busy-poll rounds of the workers' CQ pollers.
    pub poller_rounds: AtomicU64,
    /// CQ polls those rounds made: one per hot socket (a completion or a channel wake-up
    /// within `busy_poll`), plus one after arming a socket gone quiet; idle connections cost
    /// nothing.
    pub poller_cq_polls: AtomicU64,
    /// Completion-channel events taken: a connection whose CQ was armed (quiet, or busy
    /// polling off) woken by its next completion.
    pub cq_events: AtomicU64,
}

impl RdmaStats {
    fn new() -> RdmaStats {
        let s = RdmaStats::default();
        s.srq_posted_min.store(i64::MAX, Ordering::Relaxed);
        s
    }
}

impl RdmaStats {
    pub(crate) fn bump(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// The opened device, shared by every worker and socket of one stack.
pub(crate) struct Device {
    pub(crate) ctx: Arc<DeviceContext>,
    pub(crate) pd: Arc<ProtectionDomain>,
    pub(crate) name: String,
    pub(crate) port: u8,
    pub(crate) gid_index: u32,
    pub(crate) gid: Gid,
    pub(crate) lid: u16,
    pub(crate) mtu: u8,
    /// SGEs per send work request (1..=`MAX_SEND_SGE`, capped by the device's `max_sge`).
    pub(crate) max_send_sge: u32,
    pub(crate) cfg: RdmaConfig,
    /// The shared receive queue (SRQ mode), created on the first connection.
    pub(crate) srq: Option<SharedRq>,
    pub(crate) pool: Arc<SlotPool>,
    /// Memory-window mode (`write_windows` on a device with type 2 windows): the write
    /// chunks, registered for window binding.
    pub(crate) chunk_pool: Option<Arc<SlotPool>>,
    /// Registered `BufPool` arenas (zero-copy sends).
    pub(crate) regions: PoolRegions,
    pub(crate) stats: Arc<RdmaStats>,
    /// Live QPs, by socket id, for [`RdmaStack::force_qp_errors`]. A socket removes its entry
    /// under this lock before destroying its QP.
    pub(crate) qps: Mutex<Vec<(u64, QpHandle)>>,
    pub(crate) next_id: AtomicU64,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.name)
            .field("port", &self.port)
            .field("gid_index", &self.gid_index)
            .field("gid", &self.gid.to_string())
            .field("mtu", &self.mtu)
            .finish()
    }
}

impl Device {
    /// The local key of `start..end` if it lies in one of the stack's own registered arenas
    /// (receive slots or write chunks, as lent to the messenger).
    pub(crate) fn lkey_of(&self, start: u64, end: u64) -> Option<u32> {
        self.pool
            .lkey_of(start, end)
            .or_else(|| self.chunk_pool.as_ref()?.lkey_of(start, end))
    }
}

fn verbs<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> RdmaError {
    move |e| RdmaError::Verbs {
        what,
        source: io::Error::other(e.to_string()),
    }
}

fn open_device(cfg: &RdmaConfig) -> Result<Device, RdmaError> {
    let list = DeviceList::new().map_err(|e| RdmaError::NoDevice(format!("{NO_DEVICE} ({e})")))?;
    let dev = match &cfg.device {
        Some(name) => list.iter().find(|d| d.name() == *name).ok_or_else(|| {
            RdmaError::NoDevice(format!("RDMA device {name} not found; {NO_DEVICE}"))
        })?,
        None => list
            .iter()
            .next()
            .ok_or_else(|| RdmaError::NoDevice(NO_DEVICE.into()))?,
    };
    let name = dev.name();
    let ctx = dev.open().map_err(verbs("open device"))?;
    let port_attr = ctx.query_port(cfg.port).map_err(verbs("query port"))?;
    let gid_index = match cfg.gid_index {
        Some(i) => i,
        None => pick_gid(&ctx, cfg.port, port_attr.link_layer()),
    };
    let gid = ctx
        .query_gid(cfg.port, gid_index)
        .map_err(verbs("query GID"))?;
    let pd = ctx
        .alloc_pd()
        .map_err(verbs("allocate protection domain"))?;
    let mtu = port_attr.active_mtu() as u32 as u8;
    let pool = Arc::new(SlotPool::new(pd.clone(), cfg.slot_size, cfg.arena_bytes));
    let regions = PoolRegions::new(pd.clone());
    let stats = Arc::new(RdmaStats::new());
    let attr = ctx.query_device().ok();
    // SGEs per send WR: zero-copy payloads interleaved with copied frame headers, or an RDMA
    // WRITE gathering up to 8 send slots; fewer if the device says so.
    let max_send_sge = attr
        .as_ref()
        .map_or(1, |a| u32::try_from(a.max_sge()).unwrap_or(1))
        .clamp(1, MAX_SEND_SGE);
    // Type 2 windows, and room in the send ring for a window's invalidation and re-binding
    // beside the data (the set-up binds every chunk at once).
    let windows = attr.as_ref().is_some_and(|a| {
        let flags = a.attr.orig_attr.device_cap_flags;
        flags & rdma_mummy_sys::ibv_device_cap_flags::IBV_DEVICE_MEM_WINDOW_TYPE_2B.0 != 0
            && a.max_mw() > 0
    });
    let chunk_pool = (cfg.write_windows && cfg.write_chunks > 0).then(|| {
        if !windows {
            tracing::info!(device = %name, "device has no type 2 memory windows; RDMA WRITE data is copied on receive");
            return None;
        }
        if cfg.write_chunks + 2 > cfg.send_depth {
            tracing::info!(device = %name, "write_chunks + 2 exceeds send_depth: no memory windows, RDMA WRITE data is copied on receive");
            return None;
        }
        Some(Arc::new(SlotPool::for_windows(
            pd.clone(),
            cfg.write_chunk,
            cfg.arena_bytes.max(cfg.write_chunk * cfg.write_chunks as usize),
        )))
    }).flatten();
    let srq = if cfg.shared_rq {
        let dev_max = attr
            .as_ref()
            .map_or(0, |a| u32::try_from(a.max_srq_wr()).unwrap_or(0));
        if dev_max == 0 {
            tracing::warn!(device = %name, "device has no shared receive queues; using a receive queue per QP");
            None
        } else {
            Some(SharedRq::new(
                pd.clone(),
                pool.clone(),
                stats.clone(),
                cfg.srq_max_wr.min(dev_max),
                cfg.srq_share,
            ))
        }
    } else {
        None
    };
    tracing::info!(device = %name, port = cfg.port, gid_index, gid = %gid, mtu, srq = srq.is_some(), windows = chunk_pool.is_some(), "RDMA device opened");
    Ok(Device {
        ctx,
        pd,
        name,
        port: cfg.port,
        gid_index,
        gid,
        lid: port_attr.lid(),
        mtu,
        max_send_sge,
        cfg: cfg.clone(),
        srq,
        pool,
        chunk_pool,
        regions,
        stats,
        qps: Mutex::new(Vec::new()),
        next_id: AtomicU64::new(1),
    })
}

/// On Ethernet (RoCE) prefers a RoCEv2 GID carrying an IPv4 address (routable, what
/// `show_gids` lists as v2 with an address); falls back to index 0.
fn pick_gid(ctx: &DeviceContext, port: u8, link: LinkLayer) -> u32 {
    if link != LinkLayer::Ethernet {
        return 0;
    }
    let Ok(table) = ctx.query_gid_table() else {
        return 0;
    };
    let v4 = table.iter().find(|e| {
        e.port_num() == u32::from(port)
            && e.gid_type() == GidType::RoceV2
            && std::net::Ipv6Addr::from(e.gid()).to_ipv4_mapped().is_some()
    });
    v4.map_or(0, |e| e.gid_index())
}

/// The RDMA backend. Opens the device once; every worker and socket shares its protection
/// domain and registered memory.
#[derive(Debug, Clone)]
pub struct RdmaStack {
    dev: Arc<Device>,
}

impl RdmaStack {
    /// Opens the first RDMA device with default tuning.
    ///
    /// # Errors
    /// [`StackError::Unavailable`] when there is no device or no libibverbs.
    pub fn new() -> Result<RdmaStack, StackError> {
        Self::with_config(RdmaConfig::default())
    }

    /// Opens the device `cfg` names.
    ///
    /// # Errors
    /// [`StackError::Unavailable`] when there is no device or no libibverbs; [`StackError::Io`]
    /// when a verbs call fails.
    pub fn with_config(cfg: RdmaConfig) -> Result<RdmaStack, StackError> {
        if cfg.slot_size < 4096
            || cfg.recv_depth < 4
            || cfg.send_depth < 4
            || cfg.srq_share < 2
            || cfg.srq_max_wr < cfg.srq_share
            || cfg.write_chunks > wire::MAX_WRITE_CHUNKS
            || (cfg.write_chunks > 0 && !(4096..=1 << 30).contains(&cfg.write_chunk))
        {
            return Err(StackError::Io {
                what: "rdma config",
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "slot_size must be >= 4096, recv_depth and send_depth >= 4, srq_share >= 2, \
                     srq_max_wr >= srq_share, write_chunks <= 255 and write_chunk in 4 KiB..=1 GiB",
                ),
            });
        }
        Ok(RdmaStack {
            dev: Arc::new(open_device(&cfg)?),
        })
    }

    /// Device name, port, GID index and GID in use, for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} port {} gid[{}] {}",
            self.dev.name, self.dev.port, self.dev.gid_index, self.dev.gid
        )
    }

    /// Live counters.
    pub fn stats(&self) -> &RdmaStats {
        &self.dev.stats
    }

    /// (registered arenas, slots in use) of the stack's memory; slots in use include the
    /// buffers posted to the shared receive queue while it exists, and the write chunks of
    /// live connections and lent ones in memory-window mode.
    pub fn memory_usage(&self) -> (usize, usize) {
        let (arenas, used) = self.dev.pool.usage();
        let (chunk_arenas, chunks) = self.dev.chunk_pool.as_ref().map_or((0, 0), |p| p.usage());
        (arenas + chunk_arenas, used + chunks)
    }

    /// Whether write chunks are memory windows (see [`RdmaConfig::write_windows`]): RDMA
    /// WRITE data can then be lent to the application instead of copied.
    pub fn uses_memory_windows(&self) -> bool {
        self.dev.chunk_pool.is_some()
    }

    /// `BufPool` arenas registered for zero-copy sends now (each once per protection domain).
    pub fn registered_pools(&self) -> usize {
        self.dev.regions.registered()
    }

    /// Whether connections receive through the shared receive queue.
    pub fn uses_srq(&self) -> bool {
        self.dev.srq.is_some()
    }

    /// SRQ mode: (receive buffers in the shared receive queue, credits granted to live
    /// connections); `None` in per-QP mode. Credits granted never exceed the buffers.
    pub fn srq_usage(&self) -> Option<(usize, u32)> {
        self.dev.srq.as_ref().map(SharedRq::usage)
    }

    /// Fault injection for tests: moves every live queue pair of this stack to the error state,
    /// as a NIC or link failure would. Returns how many were failed.
    pub fn force_qp_errors(&self) -> usize {
        let qps = self.dev.qps.lock();
        let mut n = 0;
        for (id, qp) in qps.iter() {
            // SAFETY: the entry is in the registry, and sockets remove theirs under this lock
            // before destroying the QP, so the QP is live for the duration of the call.
            match unsafe { qp.to_error() } {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!(socket = id, error = %e, "cannot force QP error"),
            }
        }
        n
    }
}

impl NetworkStack for RdmaStack {
    fn name(&self) -> &'static str {
        "rdma"
    }

    fn create_worker(&self, _index: usize) -> Result<Box<dyn StackWorker>, StackError> {
        Ok(Box::new(RdmaWorker {
            dev: self.dev.clone(),
            poller: Some(poller::CqPoller::new(
                self.dev.cfg.busy_poll,
                self.dev.stats.clone(),
            )),
        }))
    }

    /// Every byte travels in RoCE or InfiniBand packets whose invariant CRC (a CRC-32 over
    /// the packet) the receiving device checks, on a reliable-connected queue pair that
    /// delivers in order or moves to the error state (the connection then fails and
    /// reconnects). The side channel carries no messages, only set-up and grants.
    fn checks_integrity(&self) -> bool {
        true
    }
}

/// One worker's share of the RDMA stack. Sockets own their verbs resources (see the crate
/// docs), so the worker only hands out sockets.
#[derive(Debug)]
pub struct RdmaWorker {
    dev: Arc<Device>,
    poller: Option<poller::CqPoller>,
}

impl StackWorker for RdmaWorker {
    fn listen(
        &mut self,
        addr: SocketAddr,
        _opts: &SocketOptions,
    ) -> Result<Box<dyn ServerSocket>, StackError> {
        let inner = TcpListener::bind(addr).map_err(|source| StackError::Bind { addr, source })?;
        Ok(Box::new(RdmaListener {
            inner,
            dev: self.dev.clone(),
        }))
    }

    fn connect(
        &mut self,
        addr: SocketAddr,
        _opts: &SocketOptions,
    ) -> Result<Box<dyn ConnectedSocket>, StackError> {
        let s = RdmaSocket::connect(self.dev.clone(), addr)
            .map_err(|source| StackError::Connect { addr, source })?;
        Ok(Box::new(s))
    }

    fn take_pollers(&mut self) -> Vec<Box<dyn dataplane::event::Poller>> {
        self.poller
            .take()
            .map(|p| Box::new(p) as Box<dyn dataplane::event::Poller>)
            .into_iter()
            .collect()
    }
}

/// A listening side channel: accepted TCP connections become [`RdmaSocket`]s that finish the
/// queue-pair exchange on their own.
#[derive(Debug)]
pub struct RdmaListener {
    inner: TcpListener,
    dev: Arc<Device>,
}

impl ServerSocket for RdmaListener {
    fn accept(
        &mut self,
        _opts: &SocketOptions,
    ) -> io::Result<Option<(Box<dyn ConnectedSocket>, SocketAddr)>> {
        loop {
            match self.inner.accept() {
                Ok((stream, peer)) => match RdmaSocket::accepted(self.dev.clone(), stream, peer) {
                    Ok(s) => return Ok(Some((Box::new(s), peer))),
                    // Out of verbs resources or registered memory for this one connection:
                    // refuse it (the TCP side channel closes) and keep accepting, so one
                    // failure never stalls the listener's edge-triggered accept loop.
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "cannot set up an RDMA connection, refusing it");
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.inner, token, Interest::READABLE)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        registry.deregister(&mut self.inner)
    }
}
