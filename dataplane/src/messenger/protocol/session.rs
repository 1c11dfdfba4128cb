//! One connection's protocol state machine: handshake, sequencing, acknowledgements, resend,
//! keepalive and the lossy/lossless policies. Sans-IO: fed frames and time, it produces frames
//! to write and events, and is told how many bytes the socket took.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{self, Keyring, Side};
use crate::messenger::{Message, MessageRef};
use crate::secure::{self, OpenError, Opener, Sealer, SecureConfig, SessionKeys};
use crate::stack::Segment;
use crate::wire::{self, FrameHead, Hello, HelloStatus, Tag, WireError};

use super::frame::{Gather, Guard, IovBuilder, TxKind};
use super::held::{Held, RecordLog, Records};
use super::{Frame, OutQueue, Queued, TxFrame};
use super::{Outgoing, RecordBlock};

/// Staging bytes framed ahead of the socket at most (plus one frame).
const STAGE_MAX: usize = 256 * 1024;
/// Bytes offered to one `writev` at most once payloads are sent by reference (at least one
/// frame is always offered whole): more than a socket buffer takes at once is rebuilt on the
/// next writable event anyway.
const IOV_MAX_BYTES: usize = 1 << 20;
/// Payload buffers sent by reference framed ahead at most (stays under `IOV_MAX`).
const MAX_EXTERNAL: usize = 768;

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We connected; we reconnect on faults (lossless).
    Client,
    /// We accepted; a lossless server waits in standby for the client to come back.
    Server,
}

/// Where the session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Client without a transport (before the first connect, or between reconnects).
    Idle,
    /// Client sent its hello and waits for the reply.
    HelloSent,
    /// Handshake done; messages flow.
    Open,
    /// Lossless server whose transport failed, waiting for the client to reconnect.
    Standby,
    /// Finished: lossy fault, refused handshake, or closed.
    Closed,
}

/// Why a connection (transport) failed. Decides whether a lossless client reconnects.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Fault {
    /// The peer sent a frame that failed validation.
    #[error("malformed frame from peer: {0}")]
    Wire(#[from] WireError),
    /// The peer broke the protocol (message before handshake, sequence gap, bogus ack...).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer refused our handshake.
    #[error("handshake refused by peer ({status:?}): {reason}")]
    Refused {
        /// Status code from the peer's reply.
        status: HelloStatus,
        /// Explanation.
        reason: String,
    },
    /// We refused the peer's handshake.
    #[error("handshake rejected ({status:?}): {reason}")]
    Rejected {
        /// Status code we sent back.
        status: HelloStatus,
        /// Explanation.
        reason: String,
    },
    /// Nothing heard from the peer for longer than the peer time-out.
    #[error("peer silent for more than {0:?}, marked dead")]
    PeerTimeout(Duration),
    /// The peer failed to authenticate (wrong key, no key, bad proof), or we could not.
    #[error("authentication failed: {0}")]
    AuthFailed(String),
    /// The handshake did not finish in time.
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer closed the session on purpose.
    #[error("peer closed the session (code {code}): {reason}")]
    PeerClosed {
        /// Close code.
        code: u16,
        /// The peer's reason.
        reason: String,
    },
    /// Secure mode: a frame failed authentication (altered, replayed, reordered, truncated
    /// or sealed with another key).
    #[error("secure mode: {0}")]
    Open(#[from] OpenError),
    /// Secure mode: a frame arrived unsealed, or sealed when no keys were agreed.
    #[error("secure mode: {0}")]
    Insecure(String),
    /// Secure mode: this key sealed its frame budget; the connection is cut so that a new
    /// one (with fresh keys) takes over.
    #[error("secure mode: key used for {0} frames, re-keying by reconnecting")]
    RekeyDue(u64),
    /// The transport failed.
    #[error("transport error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the stream (EOF), possibly mid-frame.
    #[error("peer closed the stream{}", if *.mid_frame { " in the middle of a frame" } else { "" })]
    Eof {
        /// Whether a partial frame was pending.
        mid_frame: bool,
    },
    /// A fault injected by the test configuration.
    #[error("injected socket failure")]
    Injected,
}

impl Fault {
    /// Faults after which reconnecting cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Fault::Refused { .. }
                | Fault::Rejected { .. }
                | Fault::PeerClosed { .. }
                | Fault::AuthFailed(_)
        )
    }

    /// Faults caused by bad input from the peer (counted as malformed).
    pub fn is_malformed(&self) -> bool {
        matches!(
            self,
            Fault::Wire(_) | Fault::Protocol(_) | Fault::Open(_) | Fault::Insecure(_)
        )
    }

    /// Faults that show a frame was altered or forged on the wire (secure mode).
    pub fn is_integrity(&self) -> bool {
        matches!(self, Fault::Open(_) | Fault::Insecure(_))
    }
}

/// Tuning of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Lossy policy (see `Policy`).
    pub lossy: bool,
    /// Send a keepalive when nothing was sent for this long (zero = never).
    pub keepalive_interval: Duration,
    /// Declare the peer dead when nothing was received for this long (zero = never).
    pub peer_timeout: Duration,
    /// Give up a handshake after this long.
    pub handshake_timeout: Duration,
    /// Lossy only: drop queued messages older than this (zero = keep).
    pub lossy_max_age: Duration,
    /// Frames framed ahead of the socket at most.
    pub max_tx_frames: usize,
    /// Send an explicit ack after this many unacknowledged received messages...
    pub ack_every: u64,
    /// ...or after this delay, whichever comes first.
    pub ack_delay: Duration,
    /// Secure-mode tuning (used when both sides agree on secure mode).
    pub secure: SecureConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            lossy: false,
            keepalive_interval: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(15),
            handshake_timeout: Duration::from_secs(10),
            lossy_max_age: Duration::ZERO,
            max_tx_frames: 4096,
            ack_every: 128,
            ack_delay: Duration::from_millis(2),
            secure: SecureConfig::default(),
        }
    }
}

/// Who we are, as announced in the handshake.
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    /// Entity name (unique in the cluster), e.g. `osd.3`.
    pub name: String,
    /// Entity type (application-defined).
    pub entity_type: u8,
    /// The address we accept connections on, if any.
    pub addr: Option<SocketAddr>,
    /// Random per process incarnation: a peer seeing it change knows we restarted.
    pub session_id: u64,
    /// Feature bits we support.
    pub features: u64,
    /// Feature bits we require of peers.
    pub required: u64,
    /// Authentication keys (`FEATURE_AUTH` is in `features` exactly when this is set).
    pub keys: Option<Arc<Keyring>>,
}

/// Who the peer is, learned in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Entity name.
    pub name: String,
    /// Entity type.
    pub entity_type: u8,
    /// The address it accepts connections on, if any.
    pub addr: Option<SocketAddr>,
    /// Its incarnation.
    pub session_id: u64,
    /// Its feature bits.
    pub features: u64,
    /// Parallel-connection lane the peer announced.
    pub lane: u32,
    /// Tag of the peer's client connection (0 if it gave none; see `wire::HelloBody`).
    pub conn_tag: u16,
}

impl PeerIdentity {
    fn from_hello(h: &Hello) -> PeerIdentity {
        PeerIdentity {
            name: h.name.clone(),
            entity_type: h.entity_type,
            addr: h.addr,
            session_id: h.session_id,
            features: h.features,
            lane: h.lane,
            conn_tag: h.conn_tag,
        }
    }
}

/// What the session tells its driver.
#[derive(Debug)]
pub enum SessionEvent {
    /// Handshake finished (first time or after a reconnect).
    Established {
        /// The peer.
        peer: PeerIdentity,
        /// The peer restarted since the last handshake (its session was lost).
        remote_reset: bool,
        /// This is a reconnect of an existing session.
        reconnect: bool,
    },
    /// A message arrived, in order, exactly once.
    Message(Message),
    /// Messages that no longer count against the queue limits: acknowledged (lossless),
    /// written (lossy), or dropped (lossy fault or age limit; `dropped` is then true).
    Released {
        /// Number of messages.
        msgs: usize,
        /// Payload bytes.
        bytes: usize,
        /// They were dropped rather than delivered.
        dropped: bool,
    },
    /// A duplicate message was discarded.
    Duplicate,
}

/// Largest record bytes in one batch frame: well below a receive buffer, so a batch never
/// needs a buffer of its own and the receiver starts delivering after a few KiB.
const BATCH_MAX: usize = 8 << 10;

/// A message batch being filled (see [`wire::FEATURE_BATCH`]).
#[derive(Debug, Clone, Copy)]
struct OpenBatch {
    /// Where its (reserved) preamble starts in `stage`.
    off: usize,
    /// Sequence number of its first record.
    first: u64,
    /// Records so far.
    count: u16,
    /// Their payload bytes.
    bytes: usize,
    /// Priority of every record.
    priority: u8,
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    role: Role,
    cfg: SessionConfig,
    local: Arc<LocalIdentity>,
    lane: u32,
    /// Client: the tag of this connection in its hello (see `wire::HelloBody::conn_tag`).
    conn_tag: u16,
    /// Client: the nonce sent with the hello while authentication is under way.
    auth_nonce: Option<[u8; 32]>,
    /// Client: the peer proved its key in this handshake.
    authenticated: bool,
    /// SHA-256 of the hello body we sent (client), bound into the secure-mode keys.
    hello_digest: [u8; 32],
    /// Secure mode: seals every frame we send on the current transport.
    sealer: Option<Sealer>,
    /// Client, secure mode: the opener for the driver to install in its frame decoder
    /// right after the frame that produced it (see [`Session::take_opener`]).
    opener: Option<Opener>,
    /// Client: secure mode was agreed, so the hello reply must arrive sealed.
    expect_sealed: bool,
    state: SessionState,
    peer: Option<PeerIdentity>,
    connect_seq: u64,
    out: OutQueue,
    /// Lossless: messages from a failed transport, to send again first (seq kept).
    resend: VecDeque<Held>,
    tx: VecDeque<TxFrame>,
    /// Both ends speak [`wire::FEATURE_BATCH`]: small messages go out in batch frames.
    batching: bool,
    /// The current transport checks every payload byte itself (the driver says so, see
    /// [`Session::set_checked_transport`]): our hellos offer [`wire::FEATURE_TRANSPORT_CRC`].
    checked_transport: bool,
    /// Both ends offered [`wire::FEATURE_TRANSPORT_CRC`] on this transport: message and batch
    /// frames go without a payload crc.
    transport_crc: bool,
    /// The batch being filled at the end of `stage`, not yet in `tx`. Closed (preamble and
    /// crc written, frame queued) before anything else is staged and before writing.
    batch: Option<OpenBatch>,
    /// A small message waiting to open a batch (with its sequence number): held as it is
    /// until a second one joins it (the batch then opens with both) or the batch would
    /// close, when it goes as a plain message frame. A lone message (a request, a reply) is
    /// thus never staged as a record, logged and turned back into a message. Never set
    /// while `batch` is.
    lone: Option<(u64, Message)>,
    /// Frames in `tx` whose payload is sent by reference. While there are none, the bytes
    /// to write are one contiguous range of `stage`.
    tx_external: usize,
    /// Staged bytes of the frames in `tx` (see `TxFrame`); cleared whenever `tx` empties.
    stage: Vec<u8>,
    tx_off: usize,
    /// Framed messages in sequence order (consecutive numbers): the first `flight_written`
    /// were written and (lossless) wait for the peer's ack; the rest have frames in `tx`.
    /// Frames refer to their message here, so nothing moves when a frame is written.
    flight: VecDeque<Held>,
    /// Record bytes of the batches in `flight` and `resend` (lossless only).
    log: RecordLog,
    /// Leading entries of `flight` that were written (always 0 on lossy sessions, which
    /// release messages once written).
    flight_written: usize,
    out_seq: u64,
    in_seq: u64,
    acked_in_seq: u64,
    ack_deadline: Option<Instant>,
    hello_deadline: Option<Instant>,
    last_rx: Instant,
    last_tx: Instant,
    events: VecDeque<SessionEvent>,
    /// `Message` and `Established` events in `events`: while there are none, a message
    /// received in order can be handed straight to the driver (see [`Session::receive`])
    /// without passing anything whose order matters.
    ordered_events: usize,
}

/// How a message or batch frame is protected: sealed in secure mode, else a payload crc
/// unless both ends leave it to the transport.
fn data_guard(sealer: Option<&mut Sealer>, transport_crc: bool) -> Guard<'_> {
    match sealer {
        Some(s) => Guard::Sealed(s),
        None if transport_crc => Guard::Transport,
        None => Guard::Crc,
    }
}

impl Session {
    /// A new session. A client starts `Idle` until [`Session::start_client`]; a server starts
    /// `Standby` until [`Session::accept_hello`].
    pub fn new(role: Role, cfg: SessionConfig, local: Arc<LocalIdentity>, now: Instant) -> Session {
        Session {
            role,
            cfg,
            local,
            lane: 0,
            conn_tag: 0,
            checked_transport: false,
            transport_crc: false,
            auth_nonce: None,
            authenticated: false,
            hello_digest: [0; 32],
            sealer: None,
            opener: None,
            expect_sealed: false,
            state: match role {
                Role::Client => SessionState::Idle,
                Role::Server => SessionState::Standby,
            },
            peer: None,
            connect_seq: 0,
            out: OutQueue::default(),
            resend: VecDeque::new(),
            tx: VecDeque::new(),
            batching: false,
            batch: None,
            lone: None,
            tx_external: 0,
            stage: Vec::new(),
            tx_off: 0,
            flight: VecDeque::new(),
            log: RecordLog::default(),
            flight_written: 0,
            out_seq: 0,
            in_seq: 0,
            acked_in_seq: 0,
            ack_deadline: None,
            hello_deadline: None,
            last_rx: now,
            last_tx: now,
            events: VecDeque::new(),
            ordered_events: 0,
        }
    }

    /// Sets the parallel-connection lane a client announces (0 by default).
    pub fn set_lane(&mut self, lane: u32) {
        self.lane = lane;
    }

    /// Sets the tag a client announces for this connection (0 by default: none). A server
    /// refuses a second connection of one client session under another tag.
    pub fn set_conn_tag(&mut self, tag: u16) {
        self.conn_tag = tag;
    }

    /// Current state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// The peer, once a handshake succeeded.
    pub fn peer(&self) -> Option<&PeerIdentity> {
        self.peer.as_ref()
    }

    /// Whether this session is lossy.
    pub fn is_lossy(&self) -> bool {
        self.cfg.lossy
    }

    /// Role of this side.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Highest sequence number received in order.
    pub fn in_seq(&self) -> u64 {
        self.in_seq
    }

    /// Messages queued, in flight or unacknowledged (counts every held entry: for tests and
    /// diagnostics, not the hot path).
    pub fn backlog(&self) -> usize {
        self.out.len()
            + self
                .resend
                .iter()
                .chain(&self.flight)
                .map(Held::msgs)
                .sum::<usize>()
    }

    /// Secure mode, client: the opener agreed in the handshake frame just handled. The
    /// driver installs it in the frame decoder before decoding the next frame.
    pub fn take_opener(&mut self) -> Option<Opener> {
        self.opener.take()
    }

    /// Secure mode: the sealing key has used up its frame budget; the driver cuts the
    /// connection with [`Fault::RekeyDue`] so that a fresh handshake derives new keys.
    pub fn rekey_due(&self) -> Option<u64> {
        self.sealer
            .as_ref()
            .filter(|s| s.rekey_due())
            .map(Sealer::sealed)
    }

    /// Next event for the driver.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        let ev = self.events.pop_front()?;
        if matches!(
            ev,
            SessionEvent::Message(_) | SessionEvent::Established { .. }
        ) {
            self.ordered_events -= 1;
        }
        Some(ev)
    }

    /// Queues an event whose order relative to messages matters.
    fn push_ordered(&mut self, ev: SessionEvent) {
        self.ordered_events += 1;
        self.events.push_back(ev);
    }

    /// Queues an application message. On a closed session it is released as dropped at once.
    pub fn queue(&mut self, msg: Message, now: Instant) {
        if self.state == SessionState::Closed {
            return self.drop_queued(1, msg.len());
        }
        if self.can_frame_now(&msg) {
            self.frame_message(msg);
            self.acked_in_seq = self.in_seq;
            self.ack_deadline = None;
            return;
        }
        self.out.push(Queued {
            msg: Outgoing::Msg(msg),
            since: now,
        });
    }

    /// Messages queued on a closed session: released as dropped at once.
    fn drop_queued(&mut self, msgs: usize, bytes: usize) {
        self.events.push_back(SessionEvent::Released {
            msgs,
            bytes,
            dropped: true,
        });
    }

    /// Queues blocks of small messages the sender encoded (see [`RecordBlock`]), in order:
    /// framed at once as batches when nothing waits ahead of them and there is room, else
    /// queued by priority like messages.
    pub fn queue_records(&mut self, blocks: Vec<RecordBlock>, now: Instant) {
        let mut framed = false;
        for b in blocks {
            if self.state == SessionState::Closed {
                self.drop_queued(b.count(), b.len());
            } else if self.room_to_frame() {
                self.push_records(b);
                framed = true;
            } else {
                self.out.push(Queued {
                    msg: Outgoing::Records(b),
                    since: now,
                });
            }
        }
        if framed {
            self.acked_in_seq = self.in_seq;
            self.ack_deadline = None;
        }
    }

    /// Frames a record block: as a batch when the peer takes batches, else message by
    /// message (slices of the block, no copy).
    fn push_records(&mut self, b: RecordBlock) {
        if self.batching {
            return self.frame_records(b);
        }
        for m in b.to_messages() {
            self.frame_message(m);
        }
    }

    /// Queues application messages in order, as [`Session::queue`] would one by one: those
    /// that find room are framed at once, the rest wait in the priority queue (moved there in
    /// one pass).
    pub fn queue_batch(&mut self, msgs: Vec<Message>, now: Instant) {
        if self.state == SessionState::Closed {
            let bytes = msgs.iter().map(Message::len).sum();
            return self.drop_queued(msgs.len(), bytes);
        }
        let mut it = msgs.into_iter();
        let mut framed = false;
        while let Some(m) = it.as_slice().first() {
            if !self.can_frame_now(m) {
                break;
            }
            if let Some(m) = it.next() {
                self.frame_message(m);
                framed = true;
            }
        }
        if framed {
            self.acked_in_seq = self.in_seq;
            self.ack_deadline = None;
        }
        self.out.push_all(it, now);
    }

    /// Nothing ahead of it and room to frame: a small message is framed at once (same order
    /// as queueing it, without the queue's push and pop). Large ones, anything behind a
    /// backlog, and lossy messages with an age limit (checked when dequeued) go through the
    /// priority queue.
    #[inline]
    fn can_frame_now(&self, msg: &Message) -> bool {
        msg.len() <= super::frame::INLINE_MAX && self.room_to_frame()
    }

    /// Open, nothing waiting ahead (queued or to resend), no lossy age limit to check at
    /// dequeue, and room in the frame budget: what is queued now may be framed now.
    #[inline]
    fn room_to_frame(&self) -> bool {
        self.state == SessionState::Open
            && self.out.is_empty()
            && self.resend.is_empty()
            && (self.cfg.lossy_max_age.is_zero() || !self.cfg.lossy)
            && self.tx.len() < self.cfg.max_tx_frames
            && self.stage.len() < STAGE_MAX
            && self.rekey_due().is_none()
    }

    /// Frames `msg` with the next sequence number and the current ack.
    #[inline]
    fn frame_message(&mut self, msg: Message) {
        self.out_seq += 1;
        if self.batching && msg.len() <= super::frame::INLINE_MAX {
            return self.batch_message(msg);
        }
        self.close_batch();
        self.frame_alone(self.out_seq, msg);
    }

    /// Frames `msg`, numbered `seq`, as a message frame of its own with the current ack.
    fn frame_alone(&mut self, seq: u64, msg: Message) {
        let head = FrameHead {
            tag: Tag::Message as u8,
            flags: wire::FLAG_ACK_VALID,
            priority: msg.priority,
            msg_type: msg.msg_type,
            seq,
            ack: self.in_seq,
            ..FrameHead::default()
        };
        let f = TxFrame::encode_message(
            &mut self.stage,
            head,
            TxKind::Message { seq },
            msg.payload.bufs(),
            msg.payload_crc(),
            data_guard(self.sealer.as_mut(), self.transport_crc),
        );
        self.push_tx(f);
        self.flight.push_back(Held::Msg { seq, msg });
    }

    /// Appends a small message (numbered `out_seq`) to the open batch. Without an open
    /// batch it waits as the lone message; a second one of the same priority opens the batch
    /// with both.
    #[inline]
    fn batch_message(&mut self, msg: Message) {
        if let Some(b) = self.batch {
            if b.priority == msg.priority
                && b.count < u16::MAX
                && self.stage.len() - b.off < BATCH_MAX
            {
                self.batch = Some(OpenBatch {
                    count: b.count + 1,
                    bytes: b.bytes + msg.len(),
                    ..b
                });
                TxFrame::batch_append(&mut self.stage, msg.msg_type, &msg.payload);
                // The payload is in the batch now (and its records go to the log when it
                // closes): the message itself is dropped here, while it is still in cache.
                return;
            }
            self.close_batch();
        }
        match self.lone.take() {
            None => self.lone = Some((self.out_seq, msg)),
            Some((first, lone)) if lone.priority == msg.priority => {
                let off = TxFrame::open_staged(&mut self.stage);
                TxFrame::batch_append(&mut self.stage, lone.msg_type, &lone.payload);
                TxFrame::batch_append(&mut self.stage, msg.msg_type, &msg.payload);
                self.batch = Some(OpenBatch {
                    off,
                    first,
                    count: 2,
                    bytes: lone.len() + msg.len(),
                    priority: msg.priority,
                });
            }
            Some((seq, lone)) => {
                self.frame_alone(seq, lone);
                self.lone = Some((self.out_seq, msg));
            }
        }
    }

    /// Closes the open batch, if any: writes its preamble (with the current ack) and crc (or
    /// seals it) and queues the frame.
    fn close_batch(&mut self) {
        if let Some((seq, msg)) = self.lone.take() {
            return self.frame_alone(seq, msg);
        }
        let Some(b) = self.batch.take() else {
            return;
        };
        let records_at = b.off + wire::PREAMBLE_LEN;
        let len = self.stage.len() - records_at;
        // Lossless: keep the plain records for a resend (before sealing them in place).
        let records = if self.cfg.lossy {
            Records::Gone
        } else {
            let at = self.log.append(&self.stage[records_at..]);
            Records::Log { at, len }
        };
        let head = self.batch_head(b.first, b.count, b.priority);
        let kind = TxKind::Batch {
            first: b.first,
            count: b.count,
        };
        let guard = data_guard(self.sealer.as_mut(), self.transport_crc);
        let f = TxFrame::close_staged(&mut self.stage, b.off, head, kind, guard);
        self.push_tx(f);
        self.flight.push_back(Held::Batch {
            first: b.first,
            count: b.count,
            bytes: b.bytes,
            priority: b.priority,
            records,
        });
    }

    /// The header of a batch frame, with the current ack.
    fn batch_head(&self, first: u64, count: u16, priority: u8) -> FrameHead {
        FrameHead {
            tag: Tag::MessageBatch as u8,
            flags: wire::FLAG_ACK_VALID,
            priority,
            msg_type: count,
            seq: first,
            ack: self.in_seq,
            ..FrameHead::default()
        }
    }

    /// Frames a block of records the sender encoded, as one batch: plain, the block is written
    /// by reference (only the preamble and crc are staged); sealed, it is encrypted into the
    /// staging buffer. The block is held for a resend like any batch.
    fn frame_records(&mut self, block: RecordBlock) {
        let RecordBlock {
            records,
            count,
            bytes,
            priority,
        } = block;
        let first = self.out_seq + 1;
        self.frame_held_block(Held::Batch {
            first,
            count,
            bytes,
            priority,
            records: Records::Block(records),
        });
    }

    /// Frames a held batch whose records are a block (first framing or resend).
    fn frame_held_block(&mut self, h: Held) {
        let Held::Batch {
            first,
            count,
            priority,
            records: Records::Block(buf),
            ..
        } = &h
        else {
            return;
        };
        debug_assert_eq!(*first, self.out_seq + 1, "batches keep their sequence");
        self.close_batch();
        let head = self.batch_head(*first, *count, *priority);
        let f = TxFrame::encode(
            &mut self.stage,
            head,
            &[],
            TxKind::Batch {
                first: *first,
                count: *count,
            },
            std::slice::from_ref(buf),
            data_guard(self.sealer.as_mut(), self.transport_crc),
        );
        self.push_tx(f);
        self.out_seq += u64::from(*count);
        self.flight.push_back(h);
    }

    /// Frames a held batch again (a resend): same sequence numbers, current ack.
    fn reframe_batch(&mut self, h: Held) {
        let (first, count, priority, at, len) = match &h {
            Held::Batch {
                records: Records::Block(_),
                ..
            } => return self.frame_held_block(h),
            Held::Batch {
                first,
                count,
                priority,
                records: Records::Log { at, len },
                ..
            } => (*first, *count, *priority, *at, *len),
            _ => return,
        };
        debug_assert_eq!(first, self.out_seq + 1, "resend keeps its sequence");
        self.close_batch();
        let Some(records) = self.log.get(at, len) else {
            // Unreachable: the log keeps a batch's records until it is released.
            tracing::error!(first, count, "held batch missing from the record log");
            return;
        };
        let off = TxFrame::open_staged(&mut self.stage);
        self.stage.extend_from_slice(records);
        let head = self.batch_head(first, count, priority);
        let kind = TxKind::Batch { first, count };
        let guard = data_guard(self.sealer.as_mut(), self.transport_crc);
        let f = TxFrame::close_staged(&mut self.stage, off, head, kind, guard);
        self.push_tx(f);
        self.out_seq += u64::from(count);
        self.flight.push_back(h);
    }

    /// A held batch for a peer that no longer batches (it restarted with other features):
    /// puts its records back at the front of `resend` as single messages, same numbers.
    #[cold]
    fn unbatch(&mut self, h: Held) {
        let Held::Batch {
            first, priority, ..
        } = &h
        else {
            return;
        };
        let Some(records) = h.records(&self.log) else {
            tracing::error!(first, "held batch missing from the record log");
            return;
        };
        let singles: Vec<Held> = wire::batch_records(records)
            .zip(*first..)
            .map(|((msg_type, r), seq)| Held::Msg {
                seq,
                // Why a copy: the records may live in the log, which is released as a whole;
                // this path only runs once, after a peer restart.
                msg: Message::new(msg_type, crate::buf::Buf::copy_from_slice(&records[r]))
                    .with_priority(*priority),
            })
            .collect();
        for s in singles.into_iter().rev() {
            self.resend.push_front(s);
        }
        if let Some(end) = h.log_end() {
            self.log.release_to(end);
        }
    }

    /// Client: the transport is connected; sends our hello.
    pub fn start_client(&mut self, now: Instant) {
        debug_assert_eq!(self.role, Role::Client);
        self.connect_seq += 1;
        // A new transport: plaintext until this handshake agrees on keys, payload crcs until
        // it agrees to leave them to the transport.
        self.sealer = None;
        self.opener = None;
        self.expect_sealed = false;
        self.transport_crc = false;
        let body = self.hello_body(HelloStatus::Ok);
        self.hello_digest = secure::hello_digest(&body);
        self.push_frame(Tag::Hello, 0, &body);
        self.authenticated = false;
        self.auth_nonce = None;
        if self.local.keys.is_some() && self.local.features & wire::FEATURE_AUTH != 0 {
            let nonce = auth::nonce();
            self.push_frame(Tag::Auth, 0, &wire::encode_auth(&nonce, &[0; 32]));
            self.auth_nonce = Some(nonce);
        }
        self.state = SessionState::HelloSent;
        self.hello_deadline = Some(now + self.cfg.handshake_timeout);
        self.last_rx = now;
    }

    /// The driver tells the session whether the transport it is about to use checks every
    /// payload byte end to end itself ([`NetworkStack::checks_integrity`], and the messenger's
    /// `Config::trust_transport_crc`). Then the hellos offer [`wire::FEATURE_TRANSPORT_CRC`],
    /// and when the peer offers it too and the connection is not sealed (secure mode), message
    /// and batch frames leave out their payload crcs.
    ///
    /// [`NetworkStack::checks_integrity`]: crate::stack::NetworkStack::checks_integrity
    pub fn set_checked_transport(&mut self, checked: bool) {
        self.checked_transport = checked;
    }

    /// True when both ends agreed to leave payload crcs to the transport.
    pub fn transport_crc(&self) -> bool {
        self.transport_crc
    }

    /// [`wire::FEATURE_TRANSPORT_CRC`] when our hellos offer it, else 0. A handshake that
    /// agrees on secure mode does not use it (sealed frames carry a tag instead); both ends
    /// know the frames after the hellos are sealed.
    fn transport_offer(&self) -> u64 {
        if self.checked_transport {
            wire::FEATURE_TRANSPORT_CRC
        } else {
            0
        }
    }

    fn hello(&self, status: HelloStatus) -> Hello {
        Hello {
            proto_version: u16::from(wire::VERSION),
            entity_type: self.local.entity_type,
            status,
            features: self.local.features | self.transport_offer(),
            required: self.local.required,
            session_id: self.local.session_id,
            connect_seq: self.connect_seq,
            in_seq: self.in_seq,
            lossless: !self.cfg.lossy,
            addr: self.local.addr,
            name: self.local.name.clone(),
            lane: self.lane,
            conn_tag: self.conn_tag,
        }
    }

    fn hello_body(&self, status: HelloStatus) -> Vec<u8> {
        // Our own name was validated when the messenger was built, so encoding cannot fail
        // here; if it somehow does, the peer sees an empty body and refuses us clearly.
        match wire::encode_hello(&self.hello(status)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode handshake");
                Vec::new()
            }
        }
    }

    /// Stages a control frame (no payload) with `flags` and the current ack.
    fn push_frame(&mut self, tag: Tag, flags: u8, front: &[u8]) {
        self.close_batch();
        let head = FrameHead {
            tag: tag as u8,
            flags,
            ack: if flags & wire::FLAG_ACK_VALID != 0 {
                self.in_seq
            } else {
                0
            },
            ..FrameHead::default()
        };
        let f = TxFrame::encode(
            &mut self.stage,
            head,
            front,
            TxKind::Control,
            &[],
            self.sealer.as_mut().into(),
        );
        self.push_tx(f);
    }

    fn push_close(&mut self, code: u16, reason: &str) {
        let body = wire::encode_close(&wire::Close {
            code,
            reason: reason.to_owned(),
        });
        self.push_frame(Tag::Close, 0, &body);
    }

    /// Queues a frame for the socket.
    fn push_tx(&mut self, f: TxFrame) {
        self.tx_external += usize::from(f.is_external());
        self.tx.push_back(f);
    }

    /// Drops the frames in `tx` (their staged bytes stay until `stage` is cleared).
    fn clear_tx_frames(&mut self) {
        self.tx.clear();
        self.batch = None;
        self.lone = None;
        self.tx_external = 0;
    }

    /// Forgets every frame waiting for the socket (and the messages they carried).
    fn clear_tx(&mut self) {
        self.clear_tx_frames();
        if let Some(at) = self
            .flight
            .iter()
            .skip(self.flight_written)
            .find_map(Held::log_start)
        {
            self.log.truncate_from(at);
        }
        self.flight.truncate(self.flight_written);
        self.stage.clear();
        self.tx_off = 0;
    }

    /// Checks a peer's hello against what we support. `Err` carries the status to reply.
    pub fn check_hello(local: &LocalIdentity, hello: &Hello) -> Result<(), (HelloStatus, String)> {
        if hello.proto_version != u16::from(wire::VERSION) {
            return Err((
                HelloStatus::VersionMismatch,
                format!(
                    "peer speaks protocol version {}, we speak {}",
                    hello.proto_version,
                    wire::VERSION
                ),
            ));
        }
        if hello.required & !local.features & wire::FEATURE_AUTH != 0 {
            return Err((
                HelloStatus::FeatureMismatch,
                "peer requires authentication and we have no key".into(),
            ));
        }
        if local.required & !hello.features & wire::FEATURE_AUTH != 0 {
            return Err((
                HelloStatus::FeatureMismatch,
                "authentication required and the peer has no key".into(),
            ));
        }
        let missing_here = hello.required & !local.features;
        if missing_here != 0 {
            return Err((
                HelloStatus::FeatureMismatch,
                format!("peer requires features {missing_here:#x} we do not support"),
            ));
        }
        let missing_there = local.required & !hello.features;
        if missing_there != 0 {
            return Err((
                HelloStatus::FeatureMismatch,
                format!("we require features {missing_there:#x} the peer does not support"),
            ));
        }
        Ok(())
    }

    /// Encodes the bytes that refuse a peer: a hello-reply with `status`, then a close.
    pub fn refusal(local: &LocalIdentity, status: HelloStatus, reason: &str) -> Vec<u8> {
        let hello = Hello {
            proto_version: u16::from(wire::VERSION),
            entity_type: local.entity_type,
            status,
            features: local.features,
            required: local.required,
            session_id: local.session_id,
            connect_seq: 0,
            in_seq: 0,
            lossless: false,
            addr: local.addr,
            name: local.name.clone(),
            lane: 0,
            conn_tag: 0,
        };
        let mut stage = Vec::new();
        if let Ok(body) = wire::encode_hello(&hello) {
            let head = FrameHead {
                tag: Tag::HelloReply as u8,
                ..FrameHead::default()
            };
            TxFrame::encode(&mut stage, head, &body, TxKind::Control, &[], Guard::Crc);
        }
        let body = wire::encode_close(&wire::Close {
            code: 1,
            reason: reason.to_owned(),
        });
        let head = FrameHead {
            tag: Tag::Close as u8,
            ..FrameHead::default()
        };
        TxFrame::encode(&mut stage, head, &body, TxKind::Control, &[], Guard::Crc);
        stage
    }

    /// Server: a (re)connecting client's hello, already checked with
    /// [`Session::check_hello`]. Resumes this session or resets it if the peer restarted,
    /// then replies.
    ///
    /// `sealer` is set when the handshake agreed on secure mode: the reply and everything
    /// after it on this transport are sealed with it.
    pub fn accept_hello(&mut self, hello: &Hello, sealer: Option<Sealer>, now: Instant) {
        debug_assert_eq!(self.role, Role::Server);
        let reconnect = self.peer.is_some();
        let remote_reset = match &self.peer {
            Some(p) if p.session_id != hello.session_id => true,
            Some(_) => !self.trim_resend(hello.in_seq),
            None => false,
        };
        if remote_reset {
            self.reset_sequences();
        }
        self.peer = Some(PeerIdentity::from_hello(hello));
        self.batching = self.local.features & hello.features & wire::FEATURE_BATCH != 0;
        self.transport_crc = sealer.is_none() && self.transport_offer() & hello.features != 0;
        self.connect_seq = hello.connect_seq;
        self.lane = hello.lane;
        // Drop anything left from the old transport and answer first.
        self.clear_tx();
        self.sealer = sealer;
        let reply = self.hello_body(HelloStatus::Ok);
        self.push_frame(Tag::HelloReply, 0, &reply);
        self.state = SessionState::Open;
        self.last_rx = now;
        self.hello_deadline = None;
        if let Some(peer) = self.peer.clone() {
            self.push_ordered(SessionEvent::Established {
                peer,
                remote_reset,
                reconnect,
            });
        }
    }

    /// Drops resend entries the peer has (seq <= `peer_in_seq`). Returns false, dropping
    /// nothing, if the peer's view is inconsistent with ours (it claims less than it already
    /// acknowledged, or more than we ever sent): the caller then resets the session, and
    /// every held message is sent again rather than counted as delivered.
    fn trim_resend(&mut self, peer_in_seq: u64) -> bool {
        let first = self
            .resend
            .front()
            .map_or(self.out_seq.saturating_add(1), Held::first);
        if peer_in_seq.saturating_add(1) < first || peer_in_seq > self.out_seq {
            tracing::warn!(
                peer_in_seq,
                out_seq = self.out_seq,
                "peer's sequence state does not match ours; resetting the session"
            );
            return false;
        }
        let mut released = (0usize, 0usize);
        while self.resend.front().is_some_and(|h| h.last() <= peer_in_seq) {
            if let Some(h) = self.resend.pop_front() {
                released.0 += h.msgs();
                released.1 += h.bytes();
                if let Some(end) = h.log_end() {
                    self.log.release_to(end);
                }
            }
        }
        // A batch the peer has the front of: send only the rest.
        if let Some(h) = self.resend.front_mut() {
            if h.first() <= peer_in_seq {
                let skip = usize::try_from(peer_in_seq - h.first() + 1).unwrap_or(usize::MAX);
                let (msgs, bytes) = h.skip_records(skip, &self.log);
                released.0 += msgs;
                released.1 += bytes;
                if let Some(at) = h.log_start() {
                    self.log.release_to(at);
                }
            }
        }
        if released.0 > 0 {
            self.events.push_back(SessionEvent::Released {
                msgs: released.0,
                bytes: released.1,
                dropped: false,
            });
        }
        self.out_seq = peer_in_seq;
        true
    }

    /// The peer lost its session: number everything we still hold from 1 again.
    fn reset_sequences(&mut self) {
        self.out_seq = 0;
        self.in_seq = 0;
        self.acked_in_seq = 0;
        self.ack_deadline = None;
        let mut next = 1;
        for h in self.resend.iter_mut() {
            h.renumber(next);
            next += h.msgs() as u64;
        }
    }

    /// Feeds one received frame. A message it completes becomes a
    /// [`SessionEvent::Message`].
    pub fn handle_frame(&mut self, f: Frame, now: Instant) -> Result<(), Fault> {
        let mut direct = Vec::new();
        let r = self.receive(f, now, |m| direct.push(m));
        for m in direct {
            self.push_ordered(SessionEvent::Message(m));
        }
        r
    }

    /// As [`Session::handle_frame`], but a message received in order with no message or
    /// handshake event waiting before it is given to `deliver` at once instead of queued as
    /// an event, saving the event queue's round trip. Messages behind pending events are
    /// queued, so events still come out in order. A message given to `deliver` counts as
    /// delivered even if the frame then turns out to carry a fault (a bogus ack).
    pub fn receive(
        &mut self,
        f: Frame,
        now: Instant,
        deliver: impl FnMut(Message),
    ) -> Result<(), Fault> {
        self.receive_with(f, now, |_| false, deliver, |_| {})
    }

    /// As [`Session::receive`], but a message whose type `in_place` accepts goes to
    /// `deliver_in_place` borrowed from the frame when it could be delivered at once: no
    /// `Message` is built and no reference count taken. Messages that must wait behind an
    /// event are owned, whatever `in_place` says.
    pub fn receive_with(
        &mut self,
        f: Frame,
        now: Instant,
        in_place: impl Fn(u16) -> bool,
        mut deliver: impl FnMut(Message),
        mut deliver_in_place: impl FnMut(MessageRef<'_>),
    ) -> Result<(), Fault> {
        self.last_rx = now;
        if self.state == SessionState::Closed {
            // We are closing (our close frame may still be on its way out): what the peer
            // sent meanwhile no longer matters, and treating it as a protocol error would cut
            // the socket before the peer is told.
            return Ok(());
        }
        let ack = f.ack();
        match (f.tag, self.state) {
            (Tag::HelloReply, SessionState::HelloSent) => self.handle_hello_reply(&f, now)?,
            (Tag::Auth, SessionState::HelloSent) => self.handle_auth_challenge(&f)?,
            (Tag::Message, SessionState::Open) => {
                if f.seq <= self.in_seq {
                    self.events.push_back(SessionEvent::Duplicate);
                } else if f.seq != self.in_seq + 1 {
                    return Err(Fault::Protocol(format!(
                        "sequence gap: expected {}, got {}",
                        self.in_seq + 1,
                        f.seq
                    )));
                } else {
                    self.in_seq = f.seq;
                    if self.ack_deadline.is_none() {
                        self.ack_deadline = Some(now + self.cfg.ack_delay);
                    }
                    if self.ordered_events == 0 && f.data_parts.is_none() && in_place(f.msg_type) {
                        deliver_in_place(MessageRef {
                            msg_type: f.msg_type,
                            priority: f.priority,
                            payload: f.data.as_slice(),
                        });
                    } else {
                        // The payload moves into the message: no reference-count traffic. A
                        // payload gathered from several lent buffers stays in them (a list).
                        let m = match f.data_parts {
                            Some(parts) => Message::received(f.msg_type, f.priority, *parts),
                            None => Message::received(f.msg_type, f.priority, f.data),
                        };
                        if self.ordered_events == 0 {
                            deliver(m);
                        } else {
                            self.push_ordered(SessionEvent::Message(m));
                        }
                    }
                    if let Some(ack) = ack {
                        self.handle_ack(ack)?;
                    }
                    return Ok(());
                }
            }
            (Tag::MessageBatch, SessionState::Open) => {
                self.receive_batch(&f, now, &in_place, &mut deliver, &mut deliver_in_place)?;
            }
            (Tag::Ack | Tag::Keepalive | Tag::KeepaliveAck, SessionState::Open) => {
                if f.tag == Tag::Keepalive {
                    self.push_frame(Tag::KeepaliveAck, 0, &[]);
                }
            }
            (Tag::Close, _) => {
                let c = wire::parse_close(&f.front)?;
                return Err(Fault::PeerClosed {
                    code: c.code,
                    reason: c.reason,
                });
            }
            (tag, state) => {
                return Err(Fault::Protocol(format!(
                    "unexpected {tag:?} frame in state {state:?}"
                )))
            }
        }
        if let Some(ack) = ack {
            self.handle_ack(ack)?;
        }
        Ok(())
    }

    /// A batch of messages: checked whole before anything in it is delivered; records the
    /// peer sent before (a resend across a reconnect) are counted as duplicates.
    fn receive_batch(
        &mut self,
        f: &Frame,
        now: Instant,
        in_place: &impl Fn(u16) -> bool,
        deliver: &mut impl FnMut(Message),
        deliver_in_place: &mut impl FnMut(MessageRef<'_>),
    ) -> Result<(), Fault> {
        if !self.batching {
            return Err(Fault::Protocol(
                "message batch received but batching was not agreed".into(),
            ));
        }
        let count = f.msg_type;
        wire::check_batch(f.data.as_slice(), count)?;
        let first = f.seq;
        let next = self.in_seq.saturating_add(1);
        if first > next || first == 0 {
            return Err(Fault::Protocol(format!(
                "sequence gap: expected {next}, got a batch from {first}"
            )));
        }
        // Records already received (first <= in_seq): a resend across a reconnect.
        let skip = usize::try_from(next - first).unwrap_or(usize::MAX);
        for _ in 0..skip.min(usize::from(count)) {
            self.events.push_back(SessionEvent::Duplicate);
        }
        if skip >= usize::from(count) {
            return Ok(());
        }
        if self.ack_deadline.is_none() {
            self.ack_deadline = Some(now + self.cfg.ack_delay);
        }
        let mut records = wire::batch_records(f.data.as_slice());
        for _ in 0..skip {
            records.next();
        }
        for (msg_type, range) in records {
            if self.ordered_events == 0 && in_place(msg_type) {
                let Some(payload) = f.data.as_slice().get(range) else {
                    return Err(WireError::BadBatch("record outside the batch").into());
                };
                self.in_seq += 1;
                deliver_in_place(MessageRef {
                    msg_type,
                    priority: f.priority,
                    payload,
                });
                continue;
            }
            let Some(payload) = f.data.try_slice(range) else {
                return Err(WireError::BadBatch("record outside the batch").into());
            };
            self.in_seq += 1;
            let m = Message::received(msg_type, f.priority, payload);
            if self.ordered_events == 0 {
                deliver(m);
            } else {
                self.push_ordered(SessionEvent::Message(m));
            }
        }
        Ok(())
    }

    fn handle_hello_reply(&mut self, f: &Frame, now: Instant) -> Result<(), Fault> {
        let reply = wire::parse_hello(&f.front)?;
        // A refusal may come in the clear (the acceptor could not derive keys); an
        // acceptance on a secure handshake must be sealed, or a forger could open the
        // session in the clear.
        if reply.status == HelloStatus::Ok && self.expect_sealed && f.flags & wire::FLAG_SEALED == 0
        {
            return Err(Fault::Insecure("hello reply arrived unsealed".into()));
        }
        if reply.status != HelloStatus::Ok {
            return Err(Fault::Refused {
                status: reply.status,
                reason: format!("peer {} refused the handshake", reply.name),
            });
        }
        if let Err((status, reason)) = Session::check_hello(&self.local, &reply) {
            return Err(Fault::Rejected { status, reason });
        }
        if self.local.features & reply.features & wire::FEATURE_AUTH != 0 && !self.authenticated {
            return Err(Fault::AuthFailed(format!(
                "peer {} did not authenticate",
                reply.name
            )));
        }
        let reconnect = self.peer.is_some();
        let mut remote_reset = match &self.peer {
            Some(p) => p.session_id != reply.session_id,
            None => false,
        };
        if !remote_reset && reconnect {
            remote_reset = !self.trim_resend(reply.in_seq);
        }
        if remote_reset {
            self.reset_sequences();
        }
        let peer = PeerIdentity::from_hello(&reply);
        self.peer = Some(peer.clone());
        self.batching = self.local.features & reply.features & wire::FEATURE_BATCH != 0;
        self.transport_crc = self.sealer.is_none() && self.transport_offer() & reply.features != 0;
        self.state = SessionState::Open;
        self.hello_deadline = None;
        self.last_rx = now;
        self.push_ordered(SessionEvent::Established {
            peer,
            remote_reset,
            reconnect,
        });
        Ok(())
    }

    /// Client: the acceptor's nonce and proof. Checks the proof and answers with ours.
    fn handle_auth_challenge(&mut self, f: &Frame) -> Result<(), Fault> {
        let body = wire::parse_auth(&f.front)?;
        let (Some(nonce_c), Some(keys)) = (self.auth_nonce, self.local.keys.clone()) else {
            return Err(Fault::Protocol("unrequested auth challenge".into()));
        };
        let client = self.local.name.clone();
        let Some(key) = keys.key_for(&client) else {
            return Err(Fault::AuthFailed(format!("no key for {client}")));
        };
        if self.authenticated
            || !auth::verify(
                key,
                Side::Server,
                &nonce_c,
                &body.nonce,
                &client,
                &body.proof,
            )
        {
            return Err(Fault::AuthFailed(
                "the peer's proof does not match our key".into(),
            ));
        }
        let proof = auth::proof(key, Side::Client, &nonce_c, &body.nonce, &client);
        self.push_frame(Tag::Auth, 0, &wire::encode_auth(&[0; 32], &proof));
        self.authenticated = true;
        if self.local.features & wire::FEATURE_SECURE != 0 {
            // Our hello required secure mode and the acceptor went on to authenticate, so it
            // agreed: everything after our proof is sealed, both ways.
            let keys = SessionKeys::derive(key, &nonce_c, &body.nonce, &self.hello_digest, &client);
            let (sealer, opener) = keys.split(true, self.cfg.secure);
            self.sealer = Some(sealer);
            self.opener = Some(opener);
            self.expect_sealed = true;
        }
        Ok(())
    }

    /// Every message frame carries an ack, which usually releases nothing new: that case
    /// is checked inline, the rest is in [`Session::release_acked`].
    #[inline]
    fn handle_ack(&mut self, ack: u64) -> Result<(), Fault> {
        if ack > self.out_seq {
            return Err(self.bogus_ack(ack));
        }
        if self.flight_written > 0 && self.flight.front().is_some_and(|h| h.last() <= ack) {
            self.release_acked(ack);
        }
        Ok(())
    }

    #[cold]
    fn bogus_ack(&self, ack: u64) -> Fault {
        Fault::Protocol(format!(
            "peer acknowledged seq {ack} but only {} were sent",
            self.out_seq
        ))
    }

    /// Releases the written messages `ack` covers.
    fn release_acked(&mut self, ack: u64) {
        let (mut msgs, mut bytes) = (0usize, 0usize);
        // Only written messages can have been acknowledged (a peer claiming more is only
        // believed as far as what it can have received).
        while self.flight_written > 0 {
            match self.flight.front() {
                Some(h) if h.last() <= ack => {}
                _ => break,
            }
            if let Some(h) = self.flight.pop_front() {
                self.flight_written -= 1;
                msgs += h.msgs();
                bytes += h.bytes();
                if let Some(end) = h.log_end() {
                    self.log.release_to(end);
                }
            }
        }
        if msgs > 0 {
            self.events.push_back(SessionEvent::Released {
                msgs,
                bytes,
                dropped: false,
            });
        }
    }

    /// The transport failed. Lossless: everything not acknowledged is kept for resending and
    /// the session waits for a new transport. Lossy: everything is dropped and the session
    /// closes. Returns the new state.
    pub fn on_fault(&mut self, permanent: bool) -> SessionState {
        // An open batch holds messages too: it joins the held entries like a written one.
        self.close_batch();
        if self.cfg.lossy || permanent {
            let (mut msgs, mut bytes) = self.out.clear();
            for h in self.resend.drain(..).chain(self.flight.drain(..)) {
                msgs += h.msgs();
                bytes += h.bytes();
            }
            self.log.clear();
            self.flight_written = 0;
            self.clear_tx_frames();
            self.stage.clear();
            if msgs > 0 {
                self.events.push_back(SessionEvent::Released {
                    msgs,
                    bytes,
                    dropped: true,
                });
            }
            self.tx_off = 0;
            self.state = SessionState::Closed;
            return self.state;
        }
        // Written or not, every message not acknowledged goes again, in order, ahead of
        // anything left from an earlier transport.
        let mut resend = std::mem::take(&mut self.flight);
        self.flight_written = 0;
        self.clear_tx_frames();
        self.stage.clear();
        resend.append(&mut self.resend);
        self.resend = resend;
        self.tx_off = 0;
        self.ack_deadline = None;
        self.hello_deadline = None;
        self.state = match self.role {
            Role::Client => SessionState::Idle,
            Role::Server => SessionState::Standby,
        };
        self.state
    }

    /// Closes on purpose: queues a close frame (the driver closes after it is written) and
    /// drops everything else as for a lossy fault.
    pub fn close(&mut self, code: u16, reason: &str) {
        let open = self.state == SessionState::Open;
        self.on_fault(true);
        if open {
            self.push_close(code, reason);
        }
    }

    /// Runs timers: keepalive, peer time-out, handshake time-out, delayed ack.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Fault> {
        match self.state {
            SessionState::HelloSent if self.hello_deadline.is_some_and(|d| now >= d) => {
                return Err(Fault::HandshakeTimeout(self.cfg.handshake_timeout));
            }
            SessionState::Open => {
                let pt = self.cfg.peer_timeout;
                if !pt.is_zero() && now.saturating_duration_since(self.last_rx) >= pt {
                    return Err(Fault::PeerTimeout(pt));
                }
                let ka = self.cfg.keepalive_interval;
                if !ka.is_zero()
                    && now.saturating_duration_since(self.last_tx) >= ka
                    && self.tx.is_empty()
                {
                    self.push_frame(Tag::Keepalive, wire::FLAG_ACK_VALID, &[]);
                    self.acked_in_seq = self.in_seq;
                    self.ack_deadline = None;
                    // Counts as activity so one keepalive per interval is queued.
                    self.last_tx = now;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The earliest instant [`Session::handle_timeout`] has work to do.
    pub fn next_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut min = |c: Instant| t = Some(t.map_or(c, |x| x.min(c)));
        match self.state {
            SessionState::HelloSent => {
                if let Some(d) = self.hello_deadline {
                    min(d);
                }
            }
            SessionState::Open => {
                if !self.cfg.peer_timeout.is_zero() {
                    min(self.last_rx + self.cfg.peer_timeout);
                }
                if !self.cfg.keepalive_interval.is_zero() {
                    min(self.last_tx + self.cfg.keepalive_interval);
                }
                if let Some(d) = self.ack_deadline {
                    min(d);
                }
            }
            _ => {}
        }
        t
    }

    /// True if [`Session::prepare_tx`] would produce something to write.
    pub fn wants_write(&self, now: Instant) -> bool {
        self.has_tx()
            || (self.state == SessionState::Open
                && (!self.out.is_empty() || !self.resend.is_empty() || self.ack_due(now)))
    }

    fn ack_due(&self, now: Instant) -> bool {
        !self.cfg.lossy
            && self.in_seq > self.acked_in_seq
            && (self.in_seq - self.acked_in_seq >= self.cfg.ack_every
                || self.ack_deadline.is_some_and(|d| now >= d))
    }

    /// Frames queued messages (resends first, then by priority) up to the frame budget, and
    /// an explicit ack if one is due and no message carries it.
    pub fn prepare_tx(&mut self, now: Instant) {
        if self.state != SessionState::Open {
            return;
        }
        let mut framed = false;
        let mut external = 0usize;
        // Secure mode: once the key's budget is spent, frame nothing more; the driver cuts
        // the connection when what is staged has been written.
        while self.tx.len() < self.cfg.max_tx_frames
            && self.stage.len() < STAGE_MAX
            && external < MAX_EXTERNAL
            && self.rekey_due().is_none()
        {
            // A resent message keeps its sequence number.
            let (msg, resent) = if let Some(h) = self.resend.pop_front() {
                debug_assert_eq!(h.first(), self.out_seq + 1, "resend keeps its sequence");
                match h {
                    Held::Msg { seq, msg } => (msg, Some(seq)),
                    batch if self.batching => {
                        self.reframe_batch(batch);
                        framed = true;
                        continue;
                    }
                    batch => {
                        // The peer came back without batching: its records go singly.
                        self.unbatch(batch);
                        continue;
                    }
                }
            } else if let Some(q) = self.out.pop() {
                if self.cfg.lossy
                    && !self.cfg.lossy_max_age.is_zero()
                    && now.saturating_duration_since(q.since) > self.cfg.lossy_max_age
                {
                    self.events.push_back(SessionEvent::Released {
                        msgs: q.msg.msgs(),
                        bytes: q.msg.len(),
                        dropped: true,
                    });
                    continue;
                }
                match q.msg {
                    Outgoing::Msg(m) => (m, None),
                    Outgoing::Records(b) => {
                        external += 1;
                        self.push_records(b);
                        framed = true;
                        continue;
                    }
                }
            } else {
                break;
            };
            if msg.len() > super::frame::INLINE_MAX {
                external += msg.payload.buf_count();
            }
            match resent {
                // A resent message goes as it went, in a frame of its own. Joined to a new
                // batch it would put records in the log after those of the held batches
                // resent behind it, and acknowledging that batch would release theirs (the
                // log is released in order, from the front).
                Some(seq) => {
                    self.close_batch();
                    self.out_seq = seq;
                    self.frame_alone(seq, msg);
                }
                None => self.frame_message(msg),
            }
            framed = true;
        }
        if framed {
            self.acked_in_seq = self.in_seq;
            self.ack_deadline = None;
        } else if self.ack_due(now) {
            self.push_frame(Tag::Ack, wire::FLAG_ACK_VALID, &[]);
            self.acked_in_seq = self.in_seq;
            self.ack_deadline = None;
        }
    }

    /// Fills `out` with the gather list of the framed output, at most `max_iov` slices.
    /// Returns the number of bytes those slices cover.
    /// An open message batch is closed first.
    pub fn io_slices<'a>(&'a mut self, out: &mut Vec<IoSlice<'a>>, max_iov: usize) -> usize {
        self.close_batch();
        self.slices(out, max_iov)
    }

    /// Like [`Session::io_slices`], but payloads sent by reference come as
    /// [`Segment::Shared`] `Buf`s a stack may keep until its send completes (staged bytes as
    /// [`Segment::Staged`]).
    pub fn segments<'a>(&'a mut self, out: &mut Vec<Segment<'a>>, max_iov: usize) -> usize {
        self.close_batch();
        self.slices(out, max_iov)
    }

    fn slices<'a, G: Gather<'a>>(&'a self, out: &mut Vec<G>, max_iov: usize) -> usize {
        if self.tx_external == 0 {
            // Every frame is staged, back to back to the end of `stage`: one slice.
            let Some(front) = self.tx.front() else {
                return 0;
            };
            let bytes = self
                .stage
                .get(front.stage_off() + self.tx_off..)
                .unwrap_or(&[]);
            out.push(G::staged(bytes));
            return bytes.len();
        }
        let start = out.len();
        let mut b = IovBuilder::new(&self.stage, out, max_iov).max_bytes(IOV_MAX_BYTES);
        let mut skip = self.tx_off;
        let first_seq = self.flight.front().map_or(0, Held::first);
        // Where the last payload was found: frames and `flight` are both in sequence order,
        // so each later lookup walks forward from there.
        let mut cursor: Option<usize> = None;
        for f in &self.tx {
            // A payload sent by reference is read from its message (or record block) in
            // `flight`, found by its first sequence number (`flight` is in sequence order).
            let payload = match f.first_seq() {
                Some(seq) if f.is_external() => {
                    let found = match cursor {
                        Some(mut i) => {
                            while self.flight.get(i).is_some_and(|h| h.first() < seq) {
                                i += 1;
                            }
                            Some(i)
                        }
                        // Without batches the numbers are consecutive: index directly.
                        None => usize::try_from(seq - first_seq)
                            .ok()
                            .filter(|&i| self.flight.get(i).is_some_and(|h| h.first() == seq))
                            .or_else(|| self.flight.binary_search_by_key(&seq, Held::first).ok()),
                    };
                    cursor = found;
                    let m = found
                        .and_then(|i| self.flight.get(i))
                        .filter(|h| h.first() == seq);
                    match m {
                        Some(Held::Msg { msg, .. }) => msg.payload.bufs(),
                        Some(Held::Batch {
                            records: Records::Block(b),
                            ..
                        }) => std::slice::from_ref(b),
                        _ => {
                            debug_assert!(false, "frame without message");
                            &[][..]
                        }
                    }
                }
                _ => &[],
            };
            if !b.wants_more() || !b.frame(f, payload, skip) {
                break;
            }
            skip = 0;
        }
        b.finish();
        out[start..].iter().map(G::bytes).sum()
    }

    /// True when framed output is waiting for the socket.
    pub fn has_tx(&self) -> bool {
        !self.tx.is_empty() || self.batch.is_some() || self.lone.is_some()
    }

    /// The socket took `n` bytes of the gather list. Returns how many message frames were
    /// completely written.
    pub fn on_written(&mut self, mut n: usize, now: Instant) -> u64 {
        let mut written = 0u64;
        if n > 0 {
            self.last_tx = now;
        }
        let (mut msgs, mut bytes) = (0usize, 0usize);
        while n > 0 {
            let Some(front) = self.tx.front() else { break };
            let rest = front.len() - self.tx_off;
            if n < rest {
                self.tx_off += n;
                break;
            }
            n -= rest;
            self.tx_off = 0;
            if let Some(f) = self.tx.pop_front() {
                self.tx_external -= usize::from(f.is_external());
                let k = f.messages();
                if k > 0 {
                    // One held entry per message-carrying frame.
                    written += k as u64;
                    if self.cfg.lossy {
                        if let Some(h) = self.flight.pop_front() {
                            msgs += h.msgs();
                            bytes += h.bytes();
                        }
                    } else {
                        self.flight_written += 1;
                    }
                }
            }
        }
        if self.tx.is_empty() && self.batch.is_none() {
            self.stage.clear();
            self.tx_off = 0;
        }
        if msgs > 0 {
            self.events.push_back(SessionEvent::Released {
                msgs,
                bytes,
                dropped: false,
            });
        }
        written
    }
}
