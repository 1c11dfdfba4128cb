//! One RDMA connection as a byte stream: an RC queue pair with its own CQ and completion
//! channel, registered send slots, receive buffers (its own receive queue, or a credit share
//! of the stack's shared receive queue), credits, and the TCP side channel.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::buf::{Buf, BufMut};
use dataplane::stack::{ConnectedSocket, Segment};
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use sideway::ibverbs::completion::{BasicCompletionQueue, CompletionChannel, WorkCompletionStatus};

use crate::memory::{LentSlot, RegionCache, Slot, SlotPool, WriteRegion};
use crate::poller::{self, CqShared, Wc};
use crate::srq::{SrqGen, RECV_BIT};
use crate::sys::{self, Kick, PathTo, QpCaps, RawMw, RawQp, RecvWr, SendWr, Sge};
use crate::wire::{self, Ctl, Hello, Imm, HELLO_LEN};
use crate::{Device, Misbehave, RdmaError, RdmaStats};

/// `IBV_ACCESS_LOCAL_WRITE`.
const ACCESS_LOCAL_WRITE: u32 = 1;
/// `IBV_ACCESS_REMOTE_WRITE` (only the write buffer's MR carries it too).
const ACCESS_REMOTE_WRITE: u32 = 2;
/// `IBV_WC_RECV`: a SEND arrived.
const WC_RECV: u32 = 128;
/// `IBV_WC_RECV_RDMA_WITH_IMM`: an RDMA WRITE-with-immediate arrived.
const WC_RECV_RDMA_WITH_IMM: u32 = 129;

/// A completed receive not yet copied out.
#[derive(Debug, Clone, Copy)]
struct Ready {
    /// Receive buffer to re-post once consumed (SRQ or own receive queue).
    idx: u32,
    /// Where the data is: the receive buffer (SEND) or a write chunk (RDMA WRITE).
    addr: u64,
    len: u32,
    /// An RDMA WRITE: consuming it frees a write chunk.
    write: bool,
    /// Memory-window mode, a WRITE whose chunk is being lent: the send sequence of the
    /// window's re-binding (its invalidation went first) and the chunk memory that left the
    /// window. Consumed (lent, or copied and freed) only once that WR completed.
    rebound: Option<(u64, Slot)>,
}
/// Most send slots one RDMA WRITE gathers.
const WRITE_SLOTS: u32 = 8;

/// A piece of a gather list: its bytes, and the `Buf` they live in when the socket may keep
/// it until the send completes (zero-copy).
trait Piece {
    fn bytes(&self) -> &[u8];
    fn shared(&self) -> Option<&Buf>;
}

impl Piece for IoSlice<'_> {
    fn bytes(&self) -> &[u8] {
        self
    }

    fn shared(&self) -> Option<&Buf> {
        None
    }
}

impl Piece for Segment<'_> {
    fn bytes(&self) -> &[u8] {
        Segment::bytes(self)
    }

    fn shared(&self) -> Option<&Buf> {
        Segment::shared(self)
    }
}

/// With the gather list at piece `vi`, offset `off`: the length of the frame that starts
/// there, if one does and its payload is a `Buf` (a `Staged` head followed by its `Shared`
/// payload, see `Segment`), counting its epilogue.
fn frame_ahead<P: Piece>(iov: &[P], vi: usize, off: usize) -> Option<usize> {
    let head = iov.get(vi)?;
    if off != 0 || head.shared().is_some() {
        return None;
    }
    let payload = iov.get(vi + 1)?;
    payload.shared()?;
    Some(head.bytes().len() + payload.bytes().len() + dataplane::wire::EPILOGUE_LEN)
}

/// Takes the receive and write credits owed to the peer (`owed`, `owed_writes`) that one
/// work request's immediate can carry, counted as granted (`granted`, `writes_granted`)
/// before the peer can see (and use) them. Fields, not `&mut self`: the send paths hold the
/// socket's QP borrowed.
fn grant_owed(
    owed: &mut u32,
    owed_writes: &mut u32,
    granted: &mut u64,
    writes_granted: &mut u64,
) -> (u32, u32) {
    let credits = (*owed).min(wire::IMM_MAX_CREDITS);
    let write_credits = (*owed_writes).min(wire::IMM_MAX_WRITE_CREDITS);
    *owed -= credits;
    *owed_writes -= write_credits;
    *granted += u64::from(credits);
    *writes_granted += u64::from(write_credits);
    (credits, write_credits)
}

/// Slices one inline SEND gathers at most (a frame's preamble, payload and epilogue, or a
/// short gather of small frames).
const INLINE_SGES: usize = 8;

/// How long teardown waits for in-flight sends and flushed work requests.
const DRAIN_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Outgoing TCP connect in progress.
    TcpConnecting,
    /// Hello sent, waiting for the peer's.
    Hello,
    /// QP at RTS, `READY` sent, waiting for the peer's `READY`.
    WaitReady,
    /// Data flows.
    Established,
    /// Shut down by us.
    Closed,
}

/// Verbs resources of one connection. Field order is drop order: QP before CQ before channel.
struct Res {
    qp: RawQp,
    shared: Arc<CqShared>,
    cq: Arc<BasicCompletionQueue>,
    chan: Arc<CompletionChannel>,
    send_slots: Vec<Slot>,
    /// Per-QP mode: the buffers of this QP's own receive queue.
    recv_slots: Vec<Slot>,
    /// SRQ mode: the shared receive queue and the credits granted to this connection.
    srq: Option<(Arc<SrqGen>, u32)>,
    /// The buffer the peer may RDMA-WRITE into (after the QP in drop order).
    landing: Option<WriteRegion>,
    /// Memory-window mode: the write chunks instead of `landing`.
    windows: Option<Windows>,
}

/// Memory-window mode: one type 2 window per write chunk, bound to this QP, and the chunk
/// memory (from the stack's window-bindable pool) each is bound to now.
struct Windows {
    pool: Arc<SlotPool>,
    mws: Vec<RawMw>,
    bufs: Vec<Slot>,
}

impl Drop for Windows {
    fn drop(&mut self) {
        // Deallocating a window revokes it: then no peer can write the chunks, which go back
        // to the pool.
        self.mws.clear();
        self.pool.give_back(&mut self.bufs);
    }
}

/// An RDMA connection (see the crate docs for the protocol).
pub struct RdmaSocket {
    id: u64,
    dev: Arc<Device>,
    tcp: TcpStream,
    peer_addr: SocketAddr,
    phase: Phase,
    hello: Hello,
    peer: Option<Hello>,
    ctl_in: Vec<u8>,
    ctl_out: Vec<u8>,
    /// The side channel may hold bytes not read yet: set by every kernel event on the
    /// socket's token (`on_file_event`; the side channel is registered edge-triggered, so new
    /// bytes always raise one) and on registration, cleared when a read drains it. A read that
    /// found nothing on the queues reads the side channel only then, instead of making a
    /// system call per received message that finds nothing.
    ctl_maybe: bool,
    tcp_eof: bool,
    peer_close: Option<u32>,
    kick: Kick,
    kicked: bool,
    /// `read_lent` polled the CQ and lent nothing: the `read` that follows at once copies
    /// what it found without polling again.
    just_polled: bool,
    res: Option<Res>,
    failed: Option<String>,
    // Send side.
    credits: u32,
    chunk: usize,
    send_seq: u64,
    send_done: u64,
    unsignaled: u32,
    last_signaled: Option<u64>,
    want_write: bool,
    sent_total: u32,
    send_batch: Vec<SendWr>,
    send_sges: Vec<Sge>,
    /// `Buf`s the WR being built reads (zero-copy), moved to `held` when it is posted.
    send_keep: Vec<Buf>,
    /// `Buf`s posted WRs read, with the send sequence of their WR: kept until a completion
    /// passes it (a signalled completion covers the unsignalled WRs before it), or until
    /// the QP is destroyed.
    held: VecDeque<(u64, Buf)>,
    /// The stack's registered pool arenas, as last seen.
    zc_regions: RegionCache,
    /// Write chunks of the peer's buffer we may write now.
    write_credits: u32,
    /// RDMA WRITEs posted so far (the next one goes to chunk `write_seq % chunks`).
    write_seq: u64,
    /// Memory-window peer: each chunk's latest grant (address, key), and the one before it
    /// (used only by the [`Misbehave::WriteRevokedWindow`] test hook).
    peer_grants: Vec<[(u64, u32); 2]>,
    /// Memory-window peer: grants received so far (the next names chunk `% chunks`).
    grants_recvd: u64,
    // Receive side.
    /// RDMA WRITEs received so far (the next must name chunk `writes_recvd % chunks`).
    writes_recvd: u64,
    /// Write chunks granted to the peer so far (initial chunks plus every one returned).
    writes_granted: u64,
    /// Write chunks consumed and not yet returned to the peer.
    owed_writes: u32,
    /// Memory-window mode: grants queued on the side channel since it was last flushed.
    grants_queued: u32,
    /// Memory-window mode: the send sequence of the set-up bindings; every chunk is granted
    /// once that WR completed.
    first_binds: Option<u64>,
    /// Credits granted to the peer at set-up (receive buffers reserved for it).
    window: u32,
    /// Credits granted to the peer so far (initial window plus every credit returned).
    granted_total: u64,
    /// SENDs received from the peer so far; never above `granted_total` for a correct peer.
    recvd_count: u64,
    /// Completed receives not yet copied out.
    ready: VecDeque<Ready>,
    ready_off: usize,
    repost: Vec<u32>,
    owed: u32,
    outstanding: u32,
    recvd_total: u32,
    wc_buf: Vec<Wc>,
}

impl std::fmt::Debug for RdmaSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaSocket")
            .field("id", &self.id)
            .field("peer", &self.peer_addr)
            .field("phase", &self.phase)
            .field("credits", &self.credits)
            .field("failed", &self.failed)
            .finish()
    }
}

fn other(msg: String) -> io::Error {
    io::Error::other(msg)
}

fn verr<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> io::Error + '_ {
    move |e| other(format!("{what}: {e}"))
}

impl RdmaSocket {
    /// Starts an outgoing connection: TCP connect to `addr`, QP created and receives posted.
    pub(crate) fn connect(dev: Arc<Device>, addr: SocketAddr) -> io::Result<RdmaSocket> {
        let tcp = TcpStream::connect(addr)?;
        let mut s = Self::new(dev, tcp, addr, Phase::TcpConnecting)?;
        s.ctl_out.extend_from_slice(&s.hello.encode());
        Ok(s)
    }

    /// An accepted side-channel connection; sends our hello at once.
    pub(crate) fn accepted(
        dev: Arc<Device>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> io::Result<RdmaSocket> {
        tcp.set_nodelay(true)?;
        let mut s = Self::new(dev, tcp, peer, Phase::Hello)?;
        s.ctl_out.extend_from_slice(&s.hello.encode());
        // Only write here: whatever the peer sent is judged in `read`, so a bad peer fails
        // its own connection and never the listener's accept loop.
        s.flush_ctl();
        Ok(s)
    }

    fn new(
        dev: Arc<Device>,
        tcp: TcpStream,
        peer_addr: SocketAddr,
        phase: Phase,
    ) -> io::Result<RdmaSocket> {
        let res = create_res(&dev)?;
        let window = res
            .srq
            .as_ref()
            .map_or(dev.cfg.recv_depth, |(_, share)| *share);
        let id = dev.next_id.fetch_add(1, Ordering::Relaxed);
        dev.qps.lock().push((id, res.qp.handle()));
        RdmaStats::bump(&dev.stats.live_qps, 1);
        let hello = Hello {
            qpn: res.qp.qp_num(),
            psn: rand::random::<u32>() & 0x00ff_ffff,
            gid: dev.gid.raw,
            lid: dev.lid,
            mtu: dev.mtu,
            recv_credits: window,
            slot_size: u32::try_from(dev.pool.slot_size()).unwrap_or(u32::MAX),
            srq: res.srq.is_some(),
            lends: dev.cfg.lend_receive,
            // Windows are granted chunk by chunk: no address or key here.
            write: (res.landing.is_some() || res.windows.is_some()).then(|| {
                let (addr, rkey) = res
                    .landing
                    .as_ref()
                    .map_or((0, 0), |l| (l.base(), l.rkey()));
                wire::WriteRegion {
                    addr,
                    rkey,
                    chunk: dev.cfg.write_chunk as u32,
                    chunks: dev.cfg.write_chunks,
                }
            }),
            windows: res.windows.is_some(),
        };
        // Memory windows are granted one by one once bound; a region's chunks all at once.
        let write_chunks = match hello.write {
            Some(w) if !hello.windows => u64::from(w.chunks),
            _ => 0,
        };
        let mut s = RdmaSocket {
            id,
            dev,
            tcp,
            peer_addr,
            phase,
            hello,
            peer: None,
            ctl_in: Vec::new(),
            ctl_out: Vec::new(),
            ctl_maybe: true,
            tcp_eof: false,
            peer_close: None,
            kick: Kick::new()?,
            kicked: false,
            just_polled: false,
            res: Some(res),
            failed: None,
            credits: 0,
            chunk: 0,
            send_seq: 0,
            send_done: 0,
            unsignaled: 0,
            last_signaled: None,
            want_write: false,
            sent_total: 0,
            send_batch: Vec::new(),
            send_sges: Vec::new(),
            send_keep: Vec::new(),
            held: VecDeque::new(),
            zc_regions: RegionCache::default(),
            write_credits: 0,
            write_seq: 0,
            peer_grants: Vec::new(),
            grants_recvd: 0,
            writes_recvd: 0,
            writes_granted: write_chunks,
            owed_writes: 0,
            grants_queued: 0,
            first_binds: None,
            window,
            granted_total: u64::from(window),
            recvd_count: 0,
            ready: VecDeque::new(),
            ready_off: 0,
            repost: Vec::new(),
            owed: 0,
            outstanding: 0,
            recvd_total: 0,
            wc_buf: Vec::with_capacity(64),
        };
        s.arm()?;
        Ok(s)
    }

    /// Marks the connection failed (first reason wins) and returns the error to report.
    fn fail(&mut self, why: String) -> io::Error {
        if self.failed.is_none() {
            tracing::warn!(socket = self.id, peer = %self.peer_addr, reason = %why, "RDMA connection failed");
            RdmaStats::bump(&self.dev.stats.failures, 1);
            *self.dev.stats.last_failure.lock() = Some(why.clone());
            self.failed = Some(why);
        }
        self.failed_err()
    }

    fn failed_err(&self) -> io::Error {
        other(format!(
            "rdma: {}",
            self.failed.as_deref().unwrap_or("connection failed")
        ))
    }

    fn arm(&mut self) -> io::Result<()> {
        if let Some(res) = &self.res {
            sys::req_notify(&res.cq).map_err(verr("arm completion queue"))?;
            res.shared.armed.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn armed(&self) -> bool {
        self.res
            .as_ref()
            .is_some_and(|r| r.shared.armed.load(Ordering::Acquire))
    }

    /// Writes pending control bytes and reads what the peer sent on the side channel.
    fn pump_ctl(&mut self) -> io::Result<()> {
        if self.phase == Phase::TcpConnecting {
            return Ok(());
        }
        self.flush_ctl();
        let mut tmp = [0u8; 512];
        while !self.tcp_eof {
            match self.tcp.read(&mut tmp) {
                Ok(0) => self.tcp_eof = true,
                Ok(n) => self.ctl_in.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.tcp_eof = true,
            }
        }
        let mut at = 0;
        if self.peer.is_none() {
            if self.ctl_in.len() < HELLO_LEN {
                if self.tcp_eof {
                    return Err(self.fail("peer closed the side channel during set-up".into()));
                }
                return Ok(());
            }
            let mut b = [0u8; HELLO_LEN];
            b.copy_from_slice(&self.ctl_in[..HELLO_LEN]);
            at = HELLO_LEN;
            let h = Hello::decode(&b).map_err(|e| self.fail(e))?;
            self.on_peer_hello(h)?;
        }
        loop {
            let decoded = Ctl::decode(&self.ctl_in[at..]).map_err(|e| self.fail(e))?;
            let Some((c, n)) = decoded else { break };
            at += n;
            match c {
                Ctl::Ready if self.phase == Phase::WaitReady => {
                    self.phase = Phase::Established;
                    tracing::debug!(socket = self.id, peer = %self.peer_addr, "RDMA connection established");
                }
                Ctl::Ready => {}
                Ctl::Credit(n) => self.add_credits(n)?,
                Ctl::WriteCredit(n) => self.add_write_credits(n)?,
                Ctl::Grant { chunk, addr, rkey } => self.on_grant(chunk, addr, rkey)?,
                Ctl::Close(n) => self.peer_close = Some(n),
            }
        }
        self.ctl_in.drain(..at);
        self.flush_ctl();
        if self.tcp_eof && self.phase < Phase::Established {
            return Err(self.fail("peer closed the side channel during set-up".into()));
        }
        Ok(())
    }

    fn flush_ctl(&mut self) {
        while !self.ctl_out.is_empty() {
            match self.tcp.write(&self.ctl_out) {
                Ok(0) => break,
                Ok(n) => {
                    self.ctl_out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    fn add_credits(&mut self, n: u32) -> io::Result<()> {
        let window = self.peer.map_or(0, |p| p.recv_credits);
        match self.credits.checked_add(n) {
            Some(c) if c <= window => {
                self.credits = c;
                Ok(())
            }
            _ => Err(self.fail(format!(
                "peer returned {n} credits on top of {} (window {window}): more than it posted",
                self.credits
            ))),
        }
    }

    fn add_write_credits(&mut self, n: u32) -> io::Result<()> {
        if self.peer.is_some_and(|p| p.windows) {
            return Err(self.fail(format!(
                "peer returned {n} write chunks without granting them (memory-window mode)"
            )));
        }
        let chunks = self.peer.and_then(|p| p.write).map_or(0, |w| w.chunks);
        match self.write_credits.checked_add(n) {
            Some(c) if c <= chunks => {
                self.write_credits = c;
                Ok(())
            }
            _ => Err(self.fail(format!(
                "peer returned {n} write chunks on top of {} ({chunks} advertised)",
                self.write_credits
            ))),
        }
    }

    /// Memory-window mode: this connection's windows and the chunks bound to them.
    fn windows(&self) -> Option<&Windows> {
        self.res.as_ref()?.windows.as_ref()
    }

    /// Memory-window peer: one more chunk, the next in ring order, at `addr` under `rkey`.
    fn on_grant(&mut self, chunk: u32, addr: u64, rkey: u32) -> io::Result<()> {
        let w = match self.peer {
            Some(p) if p.windows => p.write,
            _ => None,
        };
        let Some(w) = w else {
            return Err(self.fail(format!(
                "peer granted write chunk {chunk} but advertised no memory windows"
            )));
        };
        let expect = (self.grants_recvd % u64::from(w.chunks)) as u32;
        let slot = self.peer_grants.get_mut(chunk as usize);
        let (Some(slot), true) = (slot, chunk == expect) else {
            return Err(self.fail(format!(
                "peer granted write chunk {chunk}, expected chunk {expect} of {}",
                w.chunks
            )));
        };
        if addr.checked_add(u64::from(w.chunk)).is_none() || self.write_credits >= w.chunks {
            return Err(self.fail(format!(
                "peer granted write chunk {chunk} at {addr:#x} with {} of {} chunks already \
                 granted",
                self.write_credits, w.chunks
            )));
        }
        slot[1] = slot[0];
        slot[0] = (addr, rkey);
        self.grants_recvd += 1;
        self.write_credits += 1;
        Ok(())
    }

    /// Memory-window mode: grants chunk `chunk` (its window's current binding) to the peer,
    /// in ring order. Sent with the next side-channel flush.
    fn grant(&mut self, chunk: u32) {
        let Some(w) = self.windows() else {
            return;
        };
        let chunk = if self.dev.cfg.misbehave == Misbehave::GrantOutOfOrder {
            (chunk + 1) % (w.bufs.len().max(1) as u32)
        } else {
            chunk
        };
        let (Some(buf), Some(mw)) = (w.bufs.get(chunk as usize), w.mws.get(chunk as usize)) else {
            return;
        };
        Ctl::Grant {
            chunk,
            addr: buf.addr,
            rkey: mw.rkey(),
        }
        .encode_into(&mut self.ctl_out);
        self.writes_granted += 1;
        self.grants_queued += 1;
    }

    /// Memory-window mode: binds window `chunk` to `buf` (invalidating its current binding
    /// first when `invalidate`), taking one or two entries of the send ring. Returns the send
    /// sequence whose completion says the binding is in place.
    fn rebind(&mut self, chunk: u32, buf: Slot, invalidate: bool) -> io::Result<u64> {
        let size = self.dev.cfg.write_chunk as u64;
        let seq = self.send_seq + 1 + u64::from(invalidate);
        let Some(res) = self.res.as_mut() else {
            return Err(self.failed_err());
        };
        let Some(w) = res.windows.as_mut() else {
            return Err(self.failed_err());
        };
        let (Some(mw), Some(mr)) = (w.mws.get_mut(chunk as usize), w.pool.region_of(buf)) else {
            return Err(self.fail(format!("no window or region for write chunk {chunk}")));
        };
        // SAFETY: `buf` is a chunk of the pool's arena (`region_of` found its MR, registered
        // for window binding), `size` bytes long; the pool keeps the MR registered while the
        // socket holds `w.pool`, which it does until its windows are deallocated.
        let r = unsafe { res.qp.post_rebind(mw, invalidate, &mr, buf.addr, size, seq) };
        if r.is_ok() {
            if let Some(b) = w.bufs.get_mut(chunk as usize) {
                *b = buf;
            }
        }
        r.map_err(|e| self.fail(format!("bind memory window: {e}")))?;
        self.send_seq = seq;
        self.last_signaled = Some(seq);
        RdmaStats::bump(&self.dev.stats.window_binds, 1);
        Ok(seq)
    }

    /// The peer's hello arrived: connect the QP (INIT → RTR → RTS) and tell the peer.
    fn on_peer_hello(&mut self, h: Hello) -> io::Result<()> {
        let dev = self.dev.clone();
        let Some(res) = self.res.as_mut() else {
            return Err(self.failed_err());
        };
        let path = PathTo {
            port: dev.port,
            mtu: h.mtu.min(dev.mtu),
            dest_qpn: h.qpn,
            rq_psn: h.psn,
            dlid: h.lid,
            sgid_index: u8::try_from(dev.gid_index).unwrap_or(0),
            dgid: h.gid,
        };
        // RNR retry, by the peer's receive mode: with a receive queue per QP, credits
        // guarantee a posted receive, so an RNR means we overran our credits: 0 fails fast.
        // With the peer's SRQ, another of its peers that overruns takes buffers backing our
        // credits until the peer detects it (it counts every SEND against the credits it
        // granted) and tears it down; our SENDs must wait (7 = retry forever) meanwhile.
        let rnr_retry = if h.srq { 7 } else { 0 };
        let r = res.qp.to_rtr(&path);
        r.map_err(|e| self.fail(format!("QP to RTR: {e}")))?;
        let Some(res) = self.res.as_mut() else {
            return Err(self.failed_err());
        };
        let r = res.qp.to_rts(self.hello.psn, rnr_retry);
        r.map_err(|e| self.fail(format!("QP to RTS: {e}")))?;
        self.credits = h.recv_credits;
        self.write_credits = match h.write {
            Some(w) if !h.windows => w.chunks,
            _ => 0,
        };
        if h.windows {
            let chunks = h.write.map_or(0, |w| w.chunks) as usize;
            self.peer_grants = vec![[(0, 0); 2]; chunks];
        }
        self.chunk = (h.slot_size as usize).min(dev.pool.slot_size());
        self.peer = Some(h);
        self.phase = Phase::WaitReady;
        Ctl::Ready.encode_into(&mut self.ctl_out);
        // Memory-window mode: bind every chunk's window now that the QP can post; the chunks
        // are granted once the last binding completed.
        let bufs = self.windows().map(|w| w.bufs.clone()).unwrap_or_default();
        for (i, buf) in bufs.into_iter().enumerate() {
            self.first_binds = Some(self.rebind(i as u32, buf, false)?);
        }
        tracing::debug!(
            socket = self.id,
            local_qpn = self.hello.qpn,
            peer_qpn = h.qpn,
            "QP connected"
        );
        Ok(())
    }

    /// Takes every completion (those the worker's poller already fetched, then the CQ's)
    /// and acts on it. Returns how many there were.
    fn poll_cq(&mut self) -> io::Result<usize> {
        let mut wcs = std::mem::take(&mut self.wc_buf);
        wcs.clear();
        let polled = match self.res.as_ref() {
            Some(r) => r.shared.take(&mut wcs),
            None => Ok(()),
        };
        let n = wcs.len();
        let mut r = polled.map_err(|e| self.fail(format!("poll CQ: {e}")));
        for wc in &wcs {
            if r.is_err() {
                break;
            }
            r = self.on_completion(*wc);
        }
        self.wc_buf = wcs;
        r.map(|()| n)
    }

    fn on_completion(&mut self, wc: Wc) -> io::Result<()> {
        let recv = wc.wr_id & RECV_BIT != 0;
        let mut slot = None;
        if recv {
            let idx = u32::try_from(wc.wr_id & !RECV_BIT).ok();
            let found = match (idx, self.res.as_ref()) {
                (Some(i), Some(r)) => match &r.srq {
                    Some((gen, _)) => gen.slot(i).map(|s| (i, s, Some(gen))),
                    None => r.recv_slots.get(i as usize).map(|s| (i, *s, None)),
                },
                _ => None,
            };
            let Some((i, s, gen)) = found else {
                return Err(self.fail(format!(
                    "receive completion for unknown buffer {:#x}",
                    wc.wr_id
                )));
            };
            if let Some(gen) = gen {
                gen.consumed();
                if wc.status != WorkCompletionStatus::Success as u32 {
                    // The SRQ buffer is ours to give back (at teardown).
                    self.repost.push(i);
                }
            }
            slot = Some((i, s));
        }
        if wc.status != WorkCompletionStatus::Success as u32 {
            if self.failed.is_some() {
                return Err(self.failed_err());
            }
            let what = if recv { "receive" } else { "send" };
            let why = if wc.status == WorkCompletionStatus::WorkRequestFlushedError as u32 {
                format!("{what} flushed: the queue pair is in the error state")
            } else if wc.status
                == WorkCompletionStatus::ResponderNotReadyRetryCounterExceededError as u32
            {
                format!("{what} failed: receiver not ready (credits exceeded)")
            } else {
                // `WorkCompletionStatus::from` panics on codes it does not know.
                let name = if wc.status <= 23 {
                    format!("{:?}", WorkCompletionStatus::from(wc.status))
                } else {
                    "unknown status".to_string()
                };
                format!(
                    "{what} work request failed: {name} (status {}, vendor error {:#x})",
                    wc.status, wc.vendor_err
                )
            };
            return Err(self.fail(why));
        }
        if let Some((idx, s)) = slot {
            // Queued before anything else is judged, so the buffer is never lost: a failed
            // connection hands back what it holds at teardown.
            self.ready.push_back(Ready {
                idx,
                addr: s.addr,
                len: 0,
                write: false,
                rebound: None,
            });
            self.outstanding += 1;
            self.recvd_count += 1;
            let imm = Imm::decode(wc.imm).map_err(|e| self.fail(e))?;
            if self.recvd_count > self.granted_total {
                return Err(self.fail(format!(
                    "peer exceeded its credits (credits exceeded: {} SENDs received, {} credits \
                     granted)",
                    self.recvd_count, self.granted_total
                )));
            }
            let (addr, max) = match (wc.opcode, imm.write) {
                (WC_RECV, None) => (s.addr, self.dev.pool.slot_size()),
                (WC_RECV_RDMA_WITH_IMM, Some(chunk)) => self.check_write(chunk, wc.byte_len)?,
                (op, w) => {
                    return Err(self.fail(format!(
                        "receive completion opcode {op} does not match its immediate value \
                         {:#010x} (write: {})",
                        wc.imm,
                        w.is_some()
                    )))
                }
            };
            if wc.byte_len == 0 || wc.byte_len as usize > max {
                return Err(self.fail(format!("received a SEND of {} bytes", wc.byte_len)));
            }
            if let Some(last) = self.ready.back_mut() {
                last.addr = addr;
                last.len = wc.byte_len;
                last.write = imm.write.is_some();
            }
            if let Some(chunk) = imm.write {
                self.maybe_lend_chunk(chunk, wc.byte_len)?;
            }
            if imm.credits > 0 {
                self.add_credits(imm.credits)?;
            }
            if imm.write_credits > 0 {
                self.add_write_credits(imm.write_credits)?;
            }
            self.dev
                .stats
                .max_recv_outstanding
                .fetch_max(u64::from(self.outstanding), Ordering::Relaxed);
            RdmaStats::bump(&self.dev.stats.recvs, 1);
            self.recvd_total = self.recvd_total.wrapping_add(1);
        } else {
            // A send WR's id is the end of the send-slot range it used.
            let seq = wc.wr_id;
            if seq <= self.send_done || seq > self.send_seq {
                return Err(self.fail(format!("send completion for unknown request {seq}")));
            }
            self.send_done = seq;
            while self.held.front().is_some_and(|(s, _)| *s <= seq) {
                self.held.pop_front();
            }
            if self.first_binds.is_some_and(|s| s <= seq) {
                // Every chunk's window is bound: the peer may write them all.
                self.first_binds = None;
                let chunks = self.hello.write.map_or(0, |w| w.chunks);
                for chunk in 0..chunks {
                    self.grant(chunk);
                }
                self.grants_queued = 0;
                self.flush_ctl();
            }
        }
        Ok(())
    }

    /// Memory-window mode: an RDMA WRITE of `len` bytes just filled `chunk` (the newest ready
    /// entry). If that is worth lending and a fresh chunk is at hand, starts moving the
    /// chunk's window onto the fresh memory (invalidate, then bind under a new key), so the
    /// filled memory can go to the messenger as it is once that completes.
    fn maybe_lend_chunk(&mut self, chunk: u32, len: u32) -> io::Result<()> {
        let cfg = &self.dev.cfg;
        let found = self
            .windows()
            .and_then(|w| Some((w.pool.clone(), *w.bufs.get(chunk as usize)?)));
        let Some((pool, old)) = found else {
            return Ok(());
        };
        if !self.can_lend()
            || (len as usize) < cfg.lend_min.max(1)
            || self.send_seq + 2 - self.send_done > u64::from(cfg.send_depth)
        {
            return Ok(());
        }
        let Some(fresh) = pool.take(1).ok().and_then(|mut v| v.pop()) else {
            return Ok(());
        };
        let seq = match self.rebind(chunk, fresh, true) {
            Ok(seq) => seq,
            Err(e) => {
                pool.give_back_one(fresh);
                return Err(e);
            }
        };
        if let Some(last) = self.ready.back_mut() {
            last.rebound = Some((seq, old));
        }
        Ok(())
    }

    /// Checks an RDMA WRITE the peer made against what we advertised: the chunk must be the
    /// next of the ring (so it holds nothing unread), the peer must hold a chunk credit, and
    /// the length must fit the chunk. Returns where the data is and the chunk size.
    fn check_write(&mut self, chunk: u32, len: u32) -> io::Result<(u64, usize)> {
        let Some(w) = self.hello.write else {
            return Err(self.fail(format!(
                "RDMA write outside the advertised buffer: chunk {chunk}, {len} bytes, but no \
                 write buffer was advertised"
            )));
        };
        let expect = (self.writes_recvd % u64::from(w.chunks)) as u32;
        self.writes_recvd += 1;
        if chunk >= w.chunks || chunk != expect || len > w.chunk {
            return Err(self.fail(format!(
                "RDMA write outside the advertised buffer: chunk {chunk}, {len} bytes (advertised \
                 {} chunks of {} bytes, next chunk {expect})",
                w.chunks, w.chunk
            )));
        }
        if self.writes_recvd > self.writes_granted {
            return Err(self.fail(format!(
                "peer exceeded its write chunks ({} writes, {} chunks granted)",
                self.writes_recvd, self.writes_granted
            )));
        }
        RdmaStats::bump(&self.dev.stats.writes_received, 1);
        if self.hello.windows {
            let buf = self
                .windows()
                .and_then(|win| win.bufs.get(chunk as usize).copied());
            return match buf {
                Some(b) => Ok((b.addr, w.chunk as usize)),
                None => Err(self.failed_err()),
            };
        }
        Ok((
            w.addr + u64::from(chunk) * u64::from(w.chunk),
            w.chunk as usize,
        ))
    }

    fn send_room(&self) -> bool {
        self.credits > 0 && self.send_seq - self.send_done < u64::from(self.dev.cfg.send_depth)
    }

    fn maybe_kick(&mut self) {
        if self.want_write && self.phase == Phase::Established && self.send_room() {
            self.want_write = false;
            self.kicked = true;
            self.kick.kick();
        }
    }

    /// Re-posts consumed receive buffers (one doorbell, to the SRQ or the QP's own receive
    /// queue) and returns credits on the side channel once half the window is owed and no
    /// SEND has carried them.
    fn repost_and_return(&mut self) -> io::Result<()> {
        if !self.repost.is_empty() {
            let Some(res) = self.res.as_mut() else {
                return Err(self.failed_err());
            };
            let r = match &res.srq {
                Some((gen, _)) => gen.repost(&self.repost),
                None => {
                    let len = self.dev.pool.slot_size() as u32;
                    let batch = self.repost.iter().filter_map(|&i| {
                        res.recv_slots.get(i as usize).map(|s| RecvWr {
                            wr_id: RECV_BIT | u64::from(i),
                            addr: s.addr,
                            len,
                            lkey: s.lkey,
                        })
                    });
                    res.qp.post_recv(batch).map(drop)
                }
            };
            r.map_err(|e| self.fail(format!("post receive: {e}")))?;
            let n = self.repost.len() as u32;
            self.repost.clear();
            self.outstanding = self.outstanding.saturating_sub(n);
            self.owed += n;
        }
        let chunks = self.hello.write.map_or(0, |w| w.chunks);
        if self.grants_queued > 0 && self.grants_queued >= (chunks / 2).max(1) {
            self.grants_queued = 0;
            RdmaStats::bump(&self.dev.stats.credit_messages, 1);
            self.flush_ctl();
        }
        if self.owed_writes > 0 && self.owed_writes >= (chunks / 2).max(1) && self.failed.is_none()
        {
            Ctl::WriteCredit(self.owed_writes).encode_into(&mut self.ctl_out);
            self.writes_granted += u64::from(self.owed_writes);
            self.owed_writes = 0;
            RdmaStats::bump(&self.dev.stats.credit_messages, 1);
            self.flush_ctl();
        }
        if self.owed >= (self.window / 2).max(1) && self.failed.is_none() {
            Ctl::Credit(self.owed).encode_into(&mut self.ctl_out);
            self.granted_total += u64::from(self.owed);
            self.owed = 0;
            RdmaStats::bump(&self.dev.stats.credit_messages, 1);
            self.flush_ctl();
        }
        Ok(())
    }

    /// Copies ready receive slots into `buf`.
    fn copy_out(&mut self, buf: &mut BufMut) -> usize {
        if self.res.is_none() {
            return 0;
        }
        let mut copied = 0;
        while let Some(&Ready {
            addr, len, rebound, ..
        }) = self.ready.front()
        {
            if let Some((seq, _)) = rebound {
                // Its window is still moving: the chunk is read once that completed. Then it
                // is lent (`read_lent`) unless the lending cap was reached meanwhile.
                if seq > self.send_done || self.chunk_ready_to_lend() {
                    break;
                }
            }
            let spare = buf.spare_mut();
            if spare.is_empty() {
                break;
            }
            let avail = len as usize - self.ready_off;
            let n = avail.min(spare.len());
            // SAFETY: `addr` is a receive buffer of our registered arena whose receive
            // completed (the NIC no longer writes it) or a write chunk that the peer wrote and
            // may not write again before we return it; `ready_off + n <= len`, which was
            // checked against the buffer's size. A region-mode write buffer is remotely
            // writable: a peer breaking the protocol could write the chunk while we copy, so
            // this is a raw byte copy that never forms a reference to that memory; the worst
            // case is garbage in that peer's own stream (the messenger's crc catches it).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (addr as usize + self.ready_off) as *const u8,
                    spare.as_mut_ptr(),
                    n,
                )
            };
            buf.advance(n);
            copied += n;
            self.ready_off += n;
            if self.ready_off == len as usize {
                self.ready_off = 0;
                if let Some(r) = self.ready.pop_front() {
                    self.consumed(r, false);
                }
            }
        }
        if copied > 0 {
            RdmaStats::bump(&self.dev.stats.recv_copied_bytes, copied as u64);
        }
        copied
    }

    /// Whether a buffer may be lent now (lending on and under its cap).
    fn can_lend(&self) -> bool {
        self.dev.cfg.lend_receive
            && self.dev.stats.lent_outstanding.load(Ordering::Acquire)
                < self.dev.cfg.lend_max as u64
    }

    /// The front of the ready queue is a write chunk whose window has moved and that can be
    /// lent as it is (see [`RdmaSocket::lend_chunk`]).
    fn chunk_ready_to_lend(&self) -> bool {
        self.ready.front().is_some_and(|r| {
            r.rebound.is_some_and(|(seq, _)| seq <= self.send_done)
                && self.ready_off == 0
                && self.phase == Phase::Established
                && self.can_lend()
        })
    }

    /// A ready entry was read (copied out or lent): its receive WR is re-posted, and a write
    /// chunk goes back to the peer (a grant of its window's binding, in memory-window mode).
    /// A chunk that left its window and was copied goes back to the pool: its window was
    /// invalidated, so the peer can no longer write it.
    /// With `lent`, the chunk's old memory went to the messenger instead.
    fn consumed(&mut self, r: Ready, lent: bool) {
        self.repost.push(r.idx);
        if !r.write {
            return;
        }
        if !self.hello.windows {
            self.owed_writes += 1;
            return;
        }
        if let (Some((_, old)), false) = (r.rebound, lent) {
            if let Some(w) = self.windows() {
                w.pool.give_back_one(old);
            }
        }
        let chunks = self.hello.write.map_or(1, |w| w.chunks.max(1));
        let chunk = (self.writes_granted % u64::from(chunks)) as u32;
        self.grant(chunk);
    }

    /// Lends the receive buffer at the front of the ready queue, if it is a whole SEND worth
    /// lending: a fresh registered slot takes its place (posted with the next re-post, so
    /// credits return as usual) and the filled one goes to the messenger as it is. In
    /// memory-window mode, also a write chunk whose window moved to fresh memory.
    fn lend_front(&mut self) -> Option<BufMut> {
        let cfg = &self.dev.cfg;
        let &Ready {
            idx,
            addr,
            len,
            write,
            ..
        } = self.ready.front()?;
        if write {
            return self.lend_chunk();
        }
        if self.ready_off != 0 || (len as usize) < cfg.lend_min.max(1) {
            return None;
        }
        let stats = &self.dev.stats;
        if stats.lent_outstanding.load(Ordering::Acquire) >= cfg.lend_max as u64 {
            return None;
        }
        let ptr = std::ptr::NonNull::new(addr as *mut u8)?;
        let fresh = self.dev.pool.take(1).ok()?.pop()?;
        let res = self.res.as_mut()?;
        let old = match &res.srq {
            Some((gen, _)) => gen.swap(idx, fresh),
            None => res
                .recv_slots
                .get_mut(idx as usize)
                .map(|s| std::mem::replace(s, fresh)),
        };
        let Some(old) = old.filter(|s| s.addr == addr) else {
            // Not the buffer the completion named (cannot happen: only this socket re-posts
            // it); give the fresh slot back and copy instead.
            self.dev.pool.give_back_one(fresh);
            return None;
        };
        self.ready.pop_front();
        self.repost.push(idx);
        stats.lent_outstanding.fetch_add(1, Ordering::AcqRel);
        RdmaStats::bump(&stats.lent_buffers, 1);
        RdmaStats::bump(&stats.lent_bytes, u64::from(len));
        let keeper = Arc::new(LentSlot {
            slot: old,
            pool: self.dev.pool.clone(),
            stats: stats.clone(),
        });
        let size = self.dev.pool.slot_size();
        // SAFETY: `old` is a receive slot of our registered arena (`size` bytes, initialised:
        // arenas are mapped zeroed) whose receive completed, so the NIC no longer writes it;
        // it left the receive table above and is re-posted nowhere until the keeper gives it
        // back to the pool, and slots are registered for local access only (no peer can
        // RDMA-WRITE them), so nothing else reads or writes it meanwhile; the keeper's pool
        // keeps the arena mapped. `len <= size` was checked when the completion arrived.
        Some(unsafe { BufMut::lent(ptr, size, len as usize, keeper) })
    }

    /// Memory-window mode: lends the write chunk at the front of the ready queue if its
    /// window moved to fresh memory (see [`RdmaSocket::maybe_lend_chunk`]) and that
    /// completed. A chunk over the lending cap by now is copied instead.
    fn lend_chunk(&mut self) -> Option<BufMut> {
        if !self.chunk_ready_to_lend() {
            return None;
        }
        let &Ready {
            addr, len, rebound, ..
        } = self.ready.front()?;
        let (_, old) = rebound?;
        let stats = self.dev.stats.clone();
        let pool = self.windows()?.pool.clone();
        let ptr = std::ptr::NonNull::new(addr as *mut u8)?;
        let r = self.ready.pop_front()?;
        self.consumed(r, true);
        stats.lent_outstanding.fetch_add(1, Ordering::AcqRel);
        RdmaStats::bump(&stats.lent_buffers, 1);
        RdmaStats::bump(&stats.lent_write_chunks, 1);
        RdmaStats::bump(&stats.lent_bytes, u64::from(len));
        let size = pool.slot_size();
        let keeper = Arc::new(LentSlot {
            slot: old,
            pool,
            stats,
        });
        // SAFETY: `old` is a write chunk of the window pool's registered arena (`size` bytes,
        // initialised: arenas are mapped zeroed) that the peer's RDMA WRITE filled. Its window
        // was invalidated and bound elsewhere (the WR that did so completed: checked by
        // `chunk_ready_to_lend`), and the arena is registered for no remote access, so neither
        // the NIC nor the peer can write it any more; it is bound to no window and handed out
        // nowhere until the keeper gives it back to the pool, whose `Arc` keeps the arena
        // mapped. `len <= size` was checked when the completion arrived.
        Some(unsafe { BufMut::lent(ptr, size, len as usize, keeper) })
    }

    fn drained_eof(&self) -> bool {
        self.ready.is_empty()
            && (self.tcp_eof || self.peer_close == Some(self.recvd_total))
            && self.phase >= Phase::Established
    }

    /// Posts the gather list as SEND / RDMA WRITE-with-immediate work requests with one
    /// doorbell. Bytes of a [`Piece::shared`] `Buf` in a registered pool arena (at least
    /// `zero_copy_min` of them) go as SGEs of that arena, the `Buf` kept until the WR
    /// completes; every other byte is copied into the WR's send slots.
    /// The lone small frame (a ping, an echo, a reply): the whole gather list goes as one
    /// inline SEND read straight from the caller's slices, when a credit and a send-ring entry
    /// are free. The general path below would choose the same single inline SEND for it (it is
    /// under `write_min` and one chunk), but only after copying it into a send slot, reaping
    /// the CQ and walking its WRITE, zero-copy and lending rules: about 600 instructions per
    /// frame under `callgrind`, for a frame the device copies into its work request anyway.
    /// `None`: not such a frame, or no credit or ring entry free (the general path reaps
    /// completions and decides).
    fn send_inline<P: Piece>(&mut self, iov: &[P]) -> io::Result<Option<usize>> {
        let depth = u64::from(self.dev.cfg.send_depth);
        if self.credits == 0
            || self.send_seq - self.send_done >= depth
            || self.dev.cfg.misbehave != Misbehave::No
        {
            return Ok(None);
        }
        let zc_min = self.zero_copy_min();
        let Some(res) = self.res.as_mut() else {
            return Ok(None);
        };
        let inline_max = (res.qp.max_inline() as usize)
            .min(self.chunk)
            .min(self.dev.cfg.write_min.saturating_sub(1));
        let mut sges = [Sge {
            addr: 0,
            len: 0,
            lkey: 0,
        }; INLINE_SGES];
        let (mut n, mut total) = (0usize, 0usize);
        for piece in iov {
            let b = piece.bytes();
            if b.is_empty() {
                continue;
            }
            total += b.len();
            if n == INLINE_SGES || n == self.dev.max_send_sge as usize || total > inline_max {
                return Ok(None);
            }
            // The tail of a large payload left by a short send goes zero-copy like the rest
            // of it (the general path), not as inline bytes the provider copies.
            if piece.shared().is_some_and(|buf| buf.len() >= zc_min) {
                return Ok(None);
            }
            // Inline data is read by `ibv_post_send` itself, so no lkey is needed (the verbs
            // contract of IBV_SEND_INLINE) and no `Buf` is held past the call.
            sges[n] = Sge {
                addr: b.as_ptr() as u64,
                len: b.len() as u32,
                lkey: 0,
            };
            n += 1;
        }
        if n == 0 {
            return Ok(None);
        }
        let signal_every = (self.dev.cfg.send_depth / 4).max(1);
        // Each WR takes an entry of the send ring (its slot unused), as in the general path.
        self.send_seq += 1;
        let (credits, write_credits) = grant_owed(
            &mut self.owed,
            &mut self.owed_writes,
            &mut self.granted_total,
            &mut self.writes_granted,
        );
        self.credits -= 1;
        let imm = Imm {
            credits,
            write_credits,
            write: None,
        }
        .encode();
        let fills = self.send_seq - self.send_done >= depth;
        self.unsignaled += 1;
        let signaled = fills || self.unsignaled >= signal_every;
        if signaled {
            self.unsignaled = 0;
            self.last_signaled = Some(self.send_seq);
        }
        let wr = [SendWr {
            wr_id: self.send_seq,
            sge_at: 0,
            sge_n: n as u32,
            imm,
            signaled,
            inline: true,
            remote: None,
        }];
        // Counted before the post: see `send_gather`.
        RdmaStats::bump(&self.dev.stats.sends, 1);
        RdmaStats::bump(&self.dev.stats.doorbells, 1);
        RdmaStats::bump(&self.dev.stats.inline_sends, 1);
        // SAFETY: one inline SEND whose SGEs (0..n, in bounds) point at the caller's slices,
        // which outlive this call; the provider copies inline data into the work request
        // during `ibv_post_send` and reads nothing after it returns.
        let r = unsafe { res.qp.post_send(&wr, &sges[..n]) };
        if let Err(e) = r {
            return Err(self.fail(format!("post send: {e}")));
        }
        self.sent_total = self.sent_total.wrapping_add(1);
        Ok(Some(total))
    }

    /// The smallest pool `Buf` whose bytes go zero-copy (`usize::MAX`: zero-copy is off).
    /// Judged on the whole `Buf`, so every piece of a large payload goes the same way.
    fn zero_copy_min(&self) -> usize {
        if self.dev.cfg.zero_copy {
            self.dev.cfg.zero_copy_min.max(1)
        } else {
            usize::MAX
        }
    }

    fn send_gather<P: Piece>(&mut self, iov: &[P]) -> io::Result<usize> {
        if self.failed.is_some() {
            return Err(self.failed_err());
        }
        match self.phase {
            Phase::Established => {}
            Phase::Closed => return Err(io::ErrorKind::NotConnected.into()),
            _ => return Err(io::ErrorKind::WouldBlock.into()),
        }
        if let Some(n) = self.send_inline(iov)? {
            return Ok(n);
        }
        // Reap send completions and credits without a system call.
        self.poll_cq()?;
        let depth = u64::from(self.dev.cfg.send_depth);
        let signal_every = (self.dev.cfg.send_depth / 4).max(1);
        let chunk = self.chunk;
        let misbehave = self.dev.cfg.misbehave;
        let zc_min = self.zero_copy_min();
        let Some(res) = self.res.as_mut() else {
            return Err(self.failed_err());
        };
        // What this QP really takes inline (the device may grant less than configured).
        let inline_max = res.qp.max_inline() as usize;
        let wanted: usize = iov.iter().map(|s| s.bytes().len()).sum();
        if zc_min != usize::MAX {
            self.zc_regions.refresh(&self.dev.regions);
        }
        let max_sge = self.dev.max_send_sge as usize;
        let mut keep = std::mem::take(&mut self.send_keep);
        keep.clear();
        let mut batch_keeps = false;
        let (mut zc_bytes, mut copied_bytes, mut inlined) = (0u64, 0u64, 0u64);
        let slot_size = self.dev.pool.slot_size();
        // The largest RDMA WRITE: the peer's chunk, capped by our SGEs and half our ring.
        let peer_write = self.peer.and_then(|p| p.write);
        let peer_lends = self.peer.is_some_and(|p| p.lends);
        let peer_windows = self.peer.is_some_and(|p| p.windows);
        let write_max = peer_write.map_or(0, |w| {
            (w.chunk as usize)
                .min(self.dev.max_send_sge.min(WRITE_SLOTS) as usize * slot_size)
                .min((self.dev.cfg.send_depth as usize / 2).max(1) * slot_size)
        });
        let write_min = self.dev.cfg.write_min.max(1);
        let mut total = 0usize;
        let mut batch = std::mem::take(&mut self.send_batch);
        let mut sges = std::mem::take(&mut self.send_sges);
        batch.clear();
        sges.clear();
        let mut writes = 0u64;
        let mut write_bytes = 0u64;
        let (mut vi, mut off) = (0usize, 0usize);
        let overrun = misbehave == Misbehave::OverrunCredits;
        while (self.credits > 0 || overrun) && self.send_seq - self.send_done < depth {
            // Skip exhausted / empty slices.
            while vi < iov.len() && off == iov[vi].bytes().len() {
                vi += 1;
                off = 0;
            }
            if vi == iov.len() {
                break;
            }
            let left = wanted - total;
            let free_slots = (depth - (self.send_seq - self.send_done)) as usize;
            // A peer that lends its receive buffers takes a frame that fits one SEND without
            // a copy, so RDMA WRITE (copied on its side) is kept for frames larger than that.
            // Such a WRITE ends with its frame, so the frames after it go by SEND again.
            let big_frame = match frame_ahead(iov, vi, off) {
                Some(n) => Some(n),
                None if iov[vi].shared().is_some() => {
                    Some(iov[vi].bytes().len() - off + dataplane::wire::EPILOGUE_LEN)
                }
                None => None,
            };
            let (write_pays, write_cap) = match big_frame {
                _ if !peer_lends => (true, usize::MAX),
                Some(n) if n > chunk => (true, n),
                _ => (false, 0),
            };
            // Large and a chunk is free: one RDMA WRITE-with-immediate straight into the
            // peer's advertised buffer, gathered from several send slots (and zero-copy SGEs).
            let write = match peer_write {
                // A frame too large for one SEND goes by WRITE to a lending peer even below
                // `write_min`: split into SENDs it would be copied on arrival.
                Some(w)
                    if self.write_credits > 0
                        && write_max > 0
                        && (left >= write_min || (peer_lends && write_cap != usize::MAX))
                        && write_pays =>
                {
                    let len = left.min(write_max).min(write_cap);
                    let k = len.div_ceil(slot_size);
                    (k <= free_slots).then_some((w, len, k))
                }
                _ => None,
            };
            let (want, nslots) = match write {
                Some((_, len, k)) => (len, k),
                None => (chunk, 1),
            };
            let sge_at = sges.len() as u32;
            let mut len = 0usize;
            // The send slot copied bytes go into, and how full it is (`slot_size`: none yet).
            let mut slot = res.send_slots[(self.send_seq % depth) as usize];
            let mut fill = slot_size;
            let mut slots_used = 0usize;
            // Whether the last SGE is a copy run ending at `fill` in `slot` (extend it).
            let mut run = false;
            while len < want && vi < iov.len() {
                let piece = &iov[vi];
                let src = piece.bytes().get(off..).unwrap_or(&[]);
                if src.is_empty() {
                    vi += 1;
                    off = 0;
                    continue;
                }
                // A lending peer: a frame that fits one SEND but not the rest of this one
                // starts the next, so it lands whole in one receive buffer (lent, not copied).
                if peer_lends && write.is_none() && len > 0 {
                    if let Some(n) = frame_ahead(iov, vi, off) {
                        if n <= want && len + n > want {
                            break;
                        }
                    }
                }
                let n = src.len().min(want - len);
                // Judged on the whole `Buf`, so every piece of a large payload goes
                // zero-copy (also the one that ends a WR, or the tail left by a short
                // send): never a copied fragment.
                let lkey = match piece.shared() {
                    // Memory this stack lent (a received message sent on, e.g. echoed or
                    // forwarded) is one of its own registered arenas already.
                    Some(b) if b.len() >= zc_min && b.is_lent() => {
                        let (start, end) = (src.as_ptr() as u64, (src.as_ptr() as u64) + n as u64);
                        self.dev.lkey_of(start, end)
                    }
                    Some(b) if b.len() >= zc_min => self.zc_regions.lkey(&self.dev.regions, b, src),
                    _ => None,
                };
                let used = if let Some(lkey) = lkey {
                    if sges.len() - sge_at as usize >= max_sge {
                        break;
                    }
                    sges.push(Sge {
                        addr: src.as_ptr() as u64,
                        len: n as u32,
                        lkey,
                    });
                    if let Some(b) = piece.shared() {
                        keep.push(b.clone());
                    }
                    run = false;
                    zc_bytes += n as u64;
                    n
                } else {
                    if fill == slot_size {
                        if slots_used == nslots {
                            break;
                        }
                        slot = res.send_slots[(self.send_seq % depth) as usize];
                        self.send_seq += 1;
                        slots_used += 1;
                        fill = 0;
                        run = false;
                    }
                    if !run && sges.len() - sge_at as usize >= max_sge {
                        break;
                    }
                    let n = n.min(slot_size - fill);
                    // SAFETY: the slot is registered memory owned by this socket; its previous
                    // WR completed (`send_seq - send_done < depth`), so the NIC no longer
                    // reads it, and `fill + n <= slot_size`.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.as_ptr(),
                            (slot.addr as usize + fill) as *mut u8,
                            n,
                        )
                    };
                    match sges.last_mut() {
                        Some(g) if run => g.len += n as u32,
                        _ => sges.push(Sge {
                            addr: slot.addr + fill as u64,
                            len: n as u32,
                            lkey: slot.lkey,
                        }),
                    }
                    run = true;
                    fill += n;
                    copied_bytes += n as u64;
                    n
                };
                len += used;
                off += used;
                if off == piece.bytes().len() {
                    vi += 1;
                    off = 0;
                }
            }
            if len == 0 {
                break;
            }
            if slots_used == 0 {
                // Every WR holds one entry of the send ring (its slot unused), so the
                // ring bounds the WRs in flight as before.
                self.send_seq += 1;
            }
            let sge_n = sges.len() as u32 - sge_at;
            let (credits, write_credits) = grant_owed(
                &mut self.owed,
                &mut self.owed_writes,
                &mut self.granted_total,
                &mut self.writes_granted,
            );
            self.credits = self.credits.saturating_sub(1);
            let mut imm = Imm {
                credits,
                write_credits,
                write: None,
            };
            let mut remote = None;
            if let Some((w, _, _)) = write {
                let mut idx = (self.write_seq % u64::from(w.chunks)) as u32;
                if misbehave == Misbehave::WriteOutsideWindow {
                    idx = (idx + 1) % w.chunks.max(2);
                }
                // The peer's buffer was validated at hello (no overflow); check this write
                // stays inside it (or inside the chunk's window) before handing the address
                // to the NIC.
                let at = u64::from(idx) * u64::from(w.chunk);
                let windows = peer_windows.then(|| self.peer_grants.get(idx as usize));
                let target = match windows {
                    None if at + len as u64 <= u64::from(w.chunk) * u64::from(w.chunks) => {
                        Some((w.addr + at, w.rkey))
                    }
                    None => None,
                    Some(grant) => grant.map(|&[now, before]| {
                        let revoked = before != now && before.1 != 0;
                        if misbehave == Misbehave::WriteRevokedWindow && revoked {
                            before
                        } else {
                            now
                        }
                    }),
                };
                let Some(target) = target.filter(|_| len <= w.chunk as usize) else {
                    let why = format!(
                        "RDMA write of {len} bytes into chunk {idx} would leave the peer's \
                         buffer ({} chunks of {} bytes)",
                        w.chunks, w.chunk
                    );
                    self.send_batch = batch;
                    self.send_sges = sges;
                    self.send_keep = keep;
                    return Err(self.fail(why));
                };
                self.write_seq += 1;
                self.write_credits -= 1;
                imm.write = Some(idx);
                remote = Some(target);
                writes += 1;
                write_bytes += len as u64;
            }
            let mut imm = imm.encode();
            if misbehave == Misbehave::BadImmediate && remote.is_none() {
                imm |= 1 << 16;
            }
            // Selective signalling: every `signal_every`-th WR, and the one that fills the
            // ring (its completion frees every slot before it: RC completes in order).
            let fills = self.send_seq - self.send_done >= depth;
            self.unsignaled += 1;
            let mut signaled = false;
            if fills || self.unsignaled >= signal_every {
                signaled = true;
                self.unsignaled = 0;
                self.last_signaled = Some(self.send_seq);
            }
            // The `Buf`s this WR reads stay alive until a completion passes it.
            batch_keeps |= !keep.is_empty();
            let seq = self.send_seq;
            self.held.extend(keep.drain(..).map(|b| (seq, b)));
            let inline = remote.is_none() && len <= inline_max;
            inlined += u64::from(inline);
            batch.push(SendWr {
                wr_id: self.send_seq,
                sge_at,
                sge_n,
                imm,
                signaled,
                inline,
                remote,
            });
            self.sent_total = self.sent_total.wrapping_add(1);
            total += len;
        }
        if batch_keeps {
            // Signal the batch's last WR so the `Buf`s it holds go back when it completes,
            // not only after the next `signal_every` WRs.
            if let Some(last) = batch.last_mut().filter(|w| !w.signaled) {
                last.signaled = true;
                self.unsignaled = 0;
                self.last_signaled = Some(last.wr_id);
            }
        }
        self.send_keep = keep;
        let posted = batch.len() as u64;
        // Counted before the post: a peer may see (and deliver) what is posted before
        // `ibv_post_send` returns (rxe delivers inside the call), and whoever reads the
        // counters after that delivery must find these sends in them. A failed post fails
        // the connection, so counting first overstates nothing that goes on.
        if posted > 0 {
            RdmaStats::bump(&self.dev.stats.sends, posted);
            RdmaStats::bump(&self.dev.stats.doorbells, 1);
            RdmaStats::bump(&self.dev.stats.writes, writes);
            RdmaStats::bump(&self.dev.stats.write_bytes, write_bytes);
        }
        RdmaStats::bump(&self.dev.stats.zero_copy_bytes, zc_bytes);
        RdmaStats::bump(&self.dev.stats.inline_sends, inlined);
        RdmaStats::bump(&self.dev.stats.copied_bytes, copied_bytes);
        // SAFETY: every SGE points either at a send slot of this socket's registered arena,
        // written above and not touched again until a completion (`send_done`) passes it, or
        // into a registered pool arena, or a slot or chunk this stack lent, inside a `Buf` held
        // in `held` until then (a `Buf`'s bytes never change while it lives, and a lent slot is
        // posted and bound nowhere while a `Buf` of it lives); SGE ranges were built from
        // `sges`.
        let r = unsafe { res.qp.post_send(&batch, &sges) };
        self.send_batch = batch;
        self.send_sges = sges;
        if posted > 0 {
            if let Err(e) = r {
                return Err(self.fail(format!("post send: {e}")));
            }
        }
        if total < wanted {
            self.want_write = true;
            if self.credits == 0 {
                RdmaStats::bump(&self.dev.stats.credit_stalls, 1);
            }
            // Completions may already have made room.
            self.maybe_kick();
        }
        if total == 0 && wanted > 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(total)
    }

    /// QP to error, bounded drain, destroy; slots go back only after the QP is gone.
    fn teardown(&mut self) {
        let Some(mut res) = self.res.take() else {
            return;
        };
        // Let in-flight sends complete: wait for the last signalled one; the unsignalled
        // tail behind it completes or is flushed (the messenger resends what the peer did
        // not acknowledge).
        let end = Instant::now() + DRAIN_WAIT;
        if self.failed.is_none() && self.phase == Phase::Established {
            self.res = Some(res);
            let target = self.last_signaled.unwrap_or(0);
            while self.send_done < target && Instant::now() < end {
                if self.poll_cq().is_err() {
                    break;
                }
            }
            let Some(r) = self.res.take() else { return };
            res = r;
        }
        self.dev.qps.lock().retain(|(id, _)| *id != self.id);
        if let Err(e) = res.qp.to_error() {
            tracing::debug!(socket = self.id, error = %e, "QP to error at teardown");
        }
        // Flushed completions: every unfinished send comes back, and so does every receive
        // still posted to this QP's own receive queue; wait (bounded) until they have. SRQ
        // receives are not flushed (they stay in the SRQ for other QPs), but any the QP had
        // already taken complete here: their buffers go back to the SRQ below.
        let expect = (res.recv_slots.len() as u64).saturating_sub(u64::from(self.outstanding));
        let mut seen = 0u64;
        let mut wcs = Vec::new();
        loop {
            wcs.clear();
            if res.shared.take(&mut wcs).is_err() {
                break;
            }
            for wc in &wcs {
                if wc.wr_id & RECV_BIT == 0 {
                    continue;
                }
                seen += 1;
                if let Some((gen, _)) = &res.srq {
                    if let Ok(i) = u32::try_from(wc.wr_id & !RECV_BIT) {
                        if gen.slot(i).is_some() {
                            gen.consumed();
                            self.repost.push(i);
                        }
                    }
                }
            }
            if wcs.is_empty() && (seen >= expect || Instant::now() >= end) {
                break;
            }
            if wcs.is_empty() {
                std::thread::yield_now();
            }
        }
        let _ = sys::drain_events(&res.chan, &res.cq);
        let Res {
            qp,
            shared,
            cq,
            chan,
            mut send_slots,
            mut recv_slots,
            srq,
            landing,
            windows,
        } = res;
        // Windows before the QP they are bound to: deallocating one revokes it (the QP is in
        // the error state and drained, so no work request uses them).
        let pool = windows.as_ref().map(|w| w.pool.clone());
        drop(windows);
        drop(qp);
        // The NIC can no longer read the zero-copy `Buf`s: let them go.
        self.held.clear();
        drop(landing);
        if let Some(pool) = pool {
            // Chunks that had left their windows to be lent but were not read.
            let mut old: Vec<Slot> = self
                .ready
                .iter()
                .filter_map(|r| r.rebound.map(|(_, s)| s))
                .collect();
            pool.give_back(&mut old);
        }
        shared.set_token(None);
        drop(shared);
        drop(cq);
        drop(chan);
        self.dev.pool.give_back(&mut send_slots);
        self.dev.pool.give_back(&mut recv_slots);
        if let Some((gen, share)) = srq {
            // Buffers this connection consumed and had not re-posted (unread data, or taken
            // by a completion seen only now) go back to the SRQ for the other connections.
            self.repost.extend(self.ready.drain(..).map(|r| r.idx));
            if let Err(e) = gen.repost(&self.repost) {
                tracing::warn!(socket = self.id, error = %e, "cannot re-post SRQ buffers at teardown");
            }
            self.repost.clear();
            drop(gen);
            if let Some(shared_rq) = &self.dev.srq {
                shared_rq.release(share);
            }
        }
        self.dev.stats.live_qps.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(socket = self.id, "RDMA connection torn down");
    }
}

/// Creates CQ + channel + QP (at INIT) and its receive buffers: a credit share of the
/// stack's SRQ, or a receive queue of its own with every slot posted.
fn create_res(dev: &Device) -> io::Result<Res> {
    let cfg = &dev.cfg;
    let chan = dev
        .ctx
        .create_comp_channel()
        .map_err(verr("create completion channel"))?;
    chan.set_nonblocking(true)?;
    let recv_cqe = if dev.srq.is_some() {
        cfg.srq_share
    } else {
        cfg.recv_depth
    };
    let cq = dev
        .ctx
        .create_cq_builder()
        .setup_cqe(cfg.send_depth + recv_cqe + 8)
        .setup_comp_channel(&chan, 0)
        .build()
        .map_err(verr("create completion queue"))?;
    let srq = match &dev.srq {
        Some(shared) => match shared.grant() {
            Ok(g) => Some(g),
            Err(e) => {
                if matches!(e, RdmaError::SrqExhausted { .. }) {
                    RdmaStats::bump(&dev.stats.srq_refused, 1);
                }
                return Err(other(e.to_string()));
            }
        },
        None => None,
    };
    // Gives the share back if anything below fails (the QP, if created, is dropped first).
    let release = |srq: &Option<(Arc<SrqGen>, u32)>| {
        if let (Some((_, share)), Some(shared)) = (srq, &dev.srq) {
            shared.release(*share);
        }
    };
    let keep = srq
        .as_ref()
        .map(|(gen, _)| gen.clone() as Arc<dyn std::any::Any + Send + Sync>);
    let raw = srq.as_ref().and_then(|(gen, _)| gen.raw());
    // Memory-window mode when the stack has a window pool; a connection whose windows
    // cannot be set up falls back to a remote-writable region of its own.
    let windows = dev.chunk_pool.as_ref().and_then(|pool| {
        let mws: io::Result<Vec<RawMw>> = (0..cfg.write_chunks)
            .map(|_| RawMw::alloc(&dev.pd))
            .collect();
        let made = mws.map_err(|e| e.to_string()).and_then(|mws| {
            let bufs = pool.take(mws.len()).map_err(|e| e.to_string())?;
            Ok(Windows {
                pool: pool.clone(),
                mws,
                bufs,
            })
        });
        made.map_err(|e| tracing::warn!(error = %e, "cannot set up memory windows; this connection's RDMA WRITE data is copied"))
            .ok()
    });
    let landing = if cfg.write_chunks > 0 && windows.is_none() {
        match WriteRegion::new(&dev.pd, cfg.write_chunk * cfg.write_chunks as usize) {
            Ok(l) => Some(l),
            Err(e) => {
                release(&srq);
                return Err(other(e.to_string()));
            }
        }
    } else {
        None
    };
    let caps = QpCaps {
        send_depth: cfg.send_depth,
        recv_depth: cfg.recv_depth,
        max_send_sge: dev.max_send_sge,
        max_inline: dev.cfg.max_inline,
    };
    let qp = match RawQp::create(&dev.pd, &cq, raw.zip(keep), caps) {
        Ok(qp) => qp,
        Err(e) => {
            release(&srq);
            return Err(other(format!("create queue pair: {e}")));
        }
    };
    let access = if landing.is_some() || windows.is_some() {
        ACCESS_LOCAL_WRITE | ACCESS_REMOTE_WRITE
    } else {
        ACCESS_LOCAL_WRITE
    };
    if let Err(e) = qp.to_init(dev.port, access) {
        drop(qp);
        release(&srq);
        return Err(other(format!("QP to INIT: {e}")));
    }
    let send_slots = match dev.pool.take(cfg.send_depth as usize) {
        Ok(s) => s,
        Err(e) => {
            drop(qp);
            release(&srq);
            return Err(other(e.to_string()));
        }
    };
    let recv_slots = if srq.is_some() {
        Ok(Vec::new())
    } else {
        dev.pool.take(cfg.recv_depth as usize)
    };
    let recv_slots = match recv_slots {
        Ok(s) => s,
        Err(e) => {
            drop(qp);
            let mut s = send_slots;
            dev.pool.give_back(&mut s);
            release(&srq);
            return Err(other(e.to_string()));
        }
    };
    let mut res = Res {
        qp,
        shared: CqShared::new(cq.clone()),
        cq,
        chan,
        send_slots,
        recv_slots,
        srq,
        landing,
        windows,
    };
    let len = dev.pool.slot_size() as u32;
    let batch: Vec<RecvWr> = res
        .recv_slots
        .iter()
        .enumerate()
        .map(|(i, s)| RecvWr {
            wr_id: RECV_BIT | i as u64,
            addr: s.addr,
            len,
            lkey: s.lkey,
        })
        .collect();
    // The slots are registered memory owned by this connection until its QP is destroyed
    // (teardown returns them only afterwards).
    if let Err(e) = res.qp.post_recv(batch.iter().copied()) {
        let Res {
            qp,
            mut send_slots,
            mut recv_slots,
            srq,
            ..
        } = res;
        drop(qp);
        dev.pool.give_back(&mut send_slots);
        dev.pool.give_back(&mut recv_slots);
        release(&srq);
        return Err(other(format!("post receives: {e}")));
    }
    Ok(res)
}

impl ConnectedSocket for RdmaSocket {
    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut self.tcp,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        if let Some(res) = &self.res {
            registry.register(
                &mut SourceFd(&res.chan.as_raw_fd()),
                token,
                Interest::READABLE,
            )?;
        }
        registry.register(
            &mut SourceFd(&self.kick.fd()),
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        if let Some(res) = &self.res {
            poller::join(&res.shared, token);
        }
        // Completions and side-channel bytes may have arrived while no loop watched us: make
        // the new owner look at both.
        self.ctl_maybe = true;
        self.kick.kick();
        Ok(())
    }

    fn on_file_event(&mut self) {
        self.ctl_maybe = true;
        // A side channel that was full takes the control bytes left over now.
        if !self.ctl_out.is_empty() {
            self.flush_ctl();
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        let r = registry.deregister(&mut self.tcp);
        if let Some(res) = &self.res {
            let _ = registry.deregister(&mut SourceFd(&res.chan.as_raw_fd()));
            poller::leave(&res.shared);
        }
        let _ = registry.deregister(&mut SourceFd(&self.kick.fd()));
        r
    }

    fn finish_connect(&mut self) -> io::Result<bool> {
        if self.failed.is_some() {
            return Err(self.failed_err());
        }
        if self.phase == Phase::TcpConnecting {
            if let Some(e) = self.tcp.take_error()? {
                return Err(e);
            }
            match self.tcp.peer_addr() {
                Ok(_) => {
                    self.tcp.set_nodelay(true)?;
                    self.phase = Phase::Hello;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(false),
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.pump_ctl()?;
        Ok(self.phase >= Phase::Established)
    }

    fn read(&mut self, buf: &mut BufMut) -> io::Result<usize> {
        if self.kicked {
            self.kicked = false;
            self.kick.clear();
        }
        if self.phase == Phase::Closed {
            return Ok(0);
        }
        if self.phase < Phase::Established {
            if self.phase == Phase::TcpConnecting {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.pump_ctl()?;
            if self.phase < Phase::Established {
                return Err(io::ErrorKind::WouldBlock.into());
            }
        }
        if let Some(res) = &self.res {
            if res.shared.armed.swap(false, Ordering::AcqRel) {
                let n =
                    sys::drain_events(&res.chan, &res.cq).map_err(verr("completion channel"))?;
                RdmaStats::bump(&self.dev.stats.cq_events, u64::from(n));
            }
        }
        loop {
            let polled = if std::mem::take(&mut self.just_polled) && !self.ready.is_empty() {
                Ok(0)
            } else {
                self.poll_cq()
            };
            let copied = self.copy_out(buf);
            // Buffers consumed by a read that delivers bytes, fewer than a quarter of the
            // window, wait for the read that finds nothing (the messenger reads until
            // `WouldBlock`, and sends what the bytes asked for before reading again):
            // re-posted now, they would sit between a request and its reply. More go back at
            // once, so a stream's sender keeps its credits; at most a quarter of the window
            // is ever held back, so a peer is never left without credit by it.
            if copied == 0 || self.repost.len() >= (self.window / 4).max(1) as usize {
                self.repost_and_return()?;
            }
            if copied > 0 {
                self.maybe_kick();
                return Ok(copied);
            }
            // Data that arrived before a failure is delivered first.
            polled?;
            if let Some(_why) = &self.failed {
                return Err(self.failed_err());
            }
            if self.chunk_ready_to_lend() {
                // The next bytes are a chunk to lend, not copy: the worker asks `read_lent`
                // again on `Interrupted`.
                return Err(io::ErrorKind::Interrupted.into());
            }
            if buf.remaining() == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            if std::mem::take(&mut self.ctl_maybe) {
                self.pump_ctl()?;
            }
            self.maybe_kick();
            if self.drained_eof() {
                return Ok(0);
            }
            // With busy polling the worker's poller arms the CQ before the loop sleeps.
            if self.dev.cfg.busy_poll.is_zero() && !self.armed() {
                self.arm()?;
                // A completion that landed between the last poll and arming raised no event.
                continue;
            }
            return Err(io::ErrorKind::WouldBlock.into());
        }
    }

    fn read_lent(&mut self) -> Option<BufMut> {
        if !self.dev.cfg.lend_receive
            || self.phase != Phase::Established
            || self.failed.is_some()
            || self.res.is_none()
        {
            return None;
        }
        if self.ready.is_empty() {
            // A poll error is reported by the `read` that follows.
            self.poll_cq().ok()?;
            self.just_polled = true;
        }
        let b = self.lend_front()?;
        self.just_polled = false;
        // A re-post failure fails the socket; the next `read` reports it.
        let _ = self.repost_and_return();
        self.maybe_kick();
        Some(b)
    }

    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send_gather(iov)
    }

    fn wants_segments(&self) -> bool {
        // Segments also mark where frames with a payload start, which a lending peer needs.
        self.dev.cfg.zero_copy || self.peer.is_some_and(|p| p.lends)
    }

    fn send_segments(&mut self, segs: &[Segment<'_>]) -> io::Result<usize> {
        self.send_gather(segs)
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer_addr)
    }

    fn shutdown(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        if self.phase == Phase::Established && self.failed.is_none() {
            Ctl::Close(self.sent_total).encode_into(&mut self.ctl_out);
            self.flush_ctl();
        }
        self.teardown();
        self.phase = Phase::Closed;
        let _ = self.tcp.shutdown(Shutdown::Both);
    }
}

impl Drop for RdmaSocket {
    fn drop(&mut self) {
        self.shutdown();
    }
}
