//! Shared helpers of the `dataplane` fuzz targets (see `fuzz_targets/`).
//!
//! Everything here drives the *public* API of the `dataplane` crate the way a messenger
//! worker does: bytes go through a [`FrameDecoder`] into a [`Session`], a server session in
//! standby takes a connecting peer's hello (`parse_hello` → `check_hello` → `accept_hello`),
//! output is taken with `prepare_tx` / `io_slices` / `on_written`. Nothing here unwraps a
//! value derived from fuzz input: the library under test is what must cope with it.

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

use dataplane::messenger::protocol::{
    Fault, Frame, FrameDecoder, LocalIdentity, Role, Session, SessionConfig, SessionState,
};
use dataplane::wire::{self, Limits, Tag, EPILOGUE_LEN, PREAMBLE_CRC_OFFSET, PREAMBLE_LEN};
use dataplane::{Buf, BufList, BufMut, BufPool, Message, PoolConfig};

/// Session id (incarnation) of the client identity used by every target.
pub const CLIENT_SESSION_ID: u64 = 11;
/// Session id (incarnation) of the server identity used by every target.
pub const SERVER_SESSION_ID: u64 = 22;
/// Feature bits both identities support (neither requires any): bit 2 is
/// `wire::FEATURE_BATCH`, so small messages travel in batch frames. Bit 0 is
/// `wire::FEATURE_AUTH`, which an identity advertises exactly when it has keys.
pub const FEATURES: u64 = 0b110;
/// Most slices a messenger worker hands to one `writev` (Linux `IOV_MAX`).
pub const IOV_MAX: usize = 1024;

/// Whether the invariant check named `key` is switched off by the environment variable
/// `DATAPLANE_FUZZ_IGNORE` (a comma-separated list of keys), so fuzzing can go on past a
/// known, already reported bug until it is fixed. Every check is on by default.
pub fn ignored(key: &str) -> bool {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        std::env::var("DATAPLANE_FUZZ_IGNORE")
            .unwrap_or_default()
            .split(',')
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect()
    })
    .iter()
    .any(|k| k == key)
}

/// The client's identity (`"client"`, session id [`CLIENT_SESSION_ID`]).
pub fn client_ident() -> Arc<LocalIdentity> {
    ident("client", CLIENT_SESSION_ID)
}

/// The server's identity (`"server"`, session id [`SERVER_SESSION_ID`]).
pub fn server_ident() -> Arc<LocalIdentity> {
    ident("server", SERVER_SESSION_ID)
}

/// The client's identity with a cluster key (advertises and requires `FEATURE_AUTH`), so a
/// client session sends an `Auth` frame with its hello and expects the server's challenge.
pub fn auth_client_ident() -> Arc<LocalIdentity> {
    let key = match dataplane::Key::from_hex("000102030405060708090a0b0c0d0e0f") {
        Ok(k) => k,
        Err(e) => panic!("fuzz harness: fixed test key refused: {e}"),
    };
    Arc::new(LocalIdentity {
        features: FEATURES | wire::FEATURE_AUTH,
        required: wire::FEATURE_AUTH,
        keys: Some(Arc::new(dataplane::Keyring::with_cluster_key(key))),
        ..(*client_ident()).clone()
    })
}

fn ident(name: &str, session_id: u64) -> Arc<LocalIdentity> {
    Arc::new(LocalIdentity {
        name: name.into(),
        entity_type: 1,
        addr: None,
        session_id,
        features: FEATURES,
        required: 0,
        keys: None,
    })
}

/// Session configuration: the defaults, lossy or lossless.
pub fn config(lossy: bool) -> SessionConfig {
    SessionConfig {
        lossy,
        ..SessionConfig::default()
    }
}

/// A small receive pool. Creating the pool cannot fail for these sizes unless the machine
/// cannot map 1 MiB, which is an environment problem, not a finding.
pub fn pool(buf_size: usize, count: usize) -> BufPool {
    match BufPool::new(&PoolConfig {
        buf_size,
        count,
        hugepages: false,
        lock: false,
        prefault: false,
    }) {
        Ok(p) => p,
        Err(e) => panic!("fuzz harness: cannot create a {count} x {buf_size} B pool: {e}"),
    }
}

/// Limits used by the targets: the library defaults, or small ones (4 KiB front, 64 KiB
/// data) that make the "too long" paths and the large-frame buffer path cheap to reach.
pub fn limits(small: bool) -> Limits {
    if small {
        Limits {
            max_front: 4 << 10,
            max_data: 64 << 10,
        }
    } else {
        Limits::default()
    }
}

/// Rewrites the checksums of a byte stream that is meant to be a sequence of frames, so a
/// mutated header or payload reaches the checks behind the crcs.
///
/// Walks the stream frame by frame using each preamble's own `front_len`/`data_len` (as
/// given, even if absurd): re-seals the preamble crc, and if the whole payload and epilogue
/// are present, rewrites the epilogue with the payload crc. Stops at the first frame whose
/// payload runs past the end. Magic, version, tag and lengths are left as the fuzzer made
/// them.
pub fn reseal(stream: &mut [u8]) {
    let mut off = 0usize;
    while stream.len().saturating_sub(off) >= PREAMBLE_LEN {
        let pre = &mut stream[off..off + PREAMBLE_LEN];
        let crc = wire::crc32c(&pre[..PREAMBLE_CRC_OFFSET]);
        pre[PREAMBLE_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        let front = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as usize;
        let data = u32::from_le_bytes([pre[12], pre[13], pre[14], pre[15]]) as usize;
        off += PREAMBLE_LEN;
        let payload = front.saturating_add(data);
        if payload == 0 {
            continue;
        }
        let end = off.saturating_add(payload).saturating_add(EPILOGUE_LEN);
        if end > stream.len() {
            return;
        }
        let crc = wire::crc32c(&stream[off..off + payload]);
        stream[off + payload..end].copy_from_slice(&crc.to_le_bytes());
        off = end;
    }
}

/// Feeds `bytes` to `dec` the way a socket read loop would (each `read_buf` takes as much
/// as fits), decoding after every read and handing each frame to `on_frame`.
///
/// Panics (a finding) if `read_buf` ever offers no room: a real read into an empty buffer
/// returns 0, which a driver takes for end of stream.
pub fn feed(
    dec: &mut FrameDecoder,
    pool: &BufPool,
    bytes: &[u8],
    mut on_frame: impl FnMut(Frame) -> Result<(), Fault>,
) -> Result<(), Fault> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let buf = dec.read_buf(pool);
        let n = buf.extend_from_slice(rest);
        assert!(
            n > 0,
            "FrameDecoder::read_buf offered a buffer with no room"
        );
        rest = &rest[n..];
        dec.decode(&mut on_frame)?;
    }
    Ok(())
}

/// Feeds `bytes` to `dec` as one buffer a stack lends (`ConnectedSocket::read_lent`): the
/// decoder adopts it (copying only what completes a frame straddling into it) and decodes,
/// handing each frame to `on_frame`. Panics (a finding) if `adopt` reports more bytes kept
/// in place than it was given.
pub fn feed_lent(
    dec: &mut FrameDecoder,
    pool: &BufPool,
    bytes: &[u8],
    on_frame: impl FnMut(Frame) -> Result<(), Fault>,
) -> Result<(), Fault> {
    // The decoder treats every buffer alike; a heap copy stands in for the stack's memory.
    let mut b = BufMut::with_capacity(bytes.len());
    b.extend_from_slice(bytes);
    let kept = dec.adopt(b, pool);
    assert!(
        kept <= bytes.len(),
        "adopt kept {kept} of {} bytes",
        bytes.len()
    );
    dec.decode(on_frame)
}

/// Hands one received frame to `session` as a messenger worker does: a server in standby
/// only takes a hello (parsed, checked, accepted; anything else refuses the connection),
/// every other frame goes to [`Session::handle_frame`].
pub fn dispatch(
    session: &mut Session,
    local: &LocalIdentity,
    frame: Frame,
    now: Instant,
) -> Result<(), Fault> {
    if session.role() == Role::Server && session.state() == SessionState::Standby {
        if frame.tag != Tag::Hello {
            return Err(Fault::Protocol(format!(
                "the first frame must be a hello, got {:?}",
                frame.tag
            )));
        }
        let hello = wire::parse_hello(&frame.front)?;
        if let Err((status, reason)) = Session::check_hello(local, &hello) {
            return Err(Fault::Rejected { status, reason });
        }
        session.accept_hello(&hello, None, now);
        return Ok(());
    }
    session.handle_frame(frame, now)
}

/// As [`dispatch`], but frames after the handshake go to [`Session::receive_with`]: messages
/// of even types are handed over in place (borrowed from the frame), the others owned, as a
/// dispatcher that takes some types in place sees them. Every message delivered at once is
/// given to `delivered` as (type, priority, payload), in order; messages queued behind an
/// event come out of the session's events as with [`dispatch`].
pub fn dispatch_in_place(
    session: &mut Session,
    local: &LocalIdentity,
    frame: Frame,
    now: Instant,
    delivered: &mut Vec<(u16, u8, Vec<u8>)>,
) -> Result<(), Fault> {
    if session.role() == Role::Server && session.state() == SessionState::Standby {
        return dispatch(session, local, frame, now);
    }
    let got = std::cell::RefCell::new(Vec::new());
    let r = session.receive_with(
        frame,
        now,
        |t| t % 2 == 0,
        |m| {
            got.borrow_mut()
                .push((m.msg_type, m.priority, m.payload.to_vec()))
        },
        |m| {
            got.borrow_mut()
                .push((m.msg_type, m.priority, m.payload.to_vec()))
        },
    );
    delivered.append(&mut got.into_inner());
    r
}

/// Takes everything `s` wants to send (framing queued messages first), marks it written
/// and returns the bytes.
pub fn drain(s: &mut Session, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        if !s.has_tx() {
            s.prepare_tx(now);
        }
        let mut iov: Vec<IoSlice<'_>> = Vec::new();
        let n = s.io_slices(&mut iov, IOV_MAX);
        if n == 0 {
            break;
        }
        for sl in &iov {
            out.extend_from_slice(sl);
        }
        drop(iov);
        s.on_written(n, now);
    }
    out
}

/// A message whose type is `id` and whose `len`-byte payload is a pattern derived from
/// `id`, split into `parts` buffers (at least one, as evenly as the length allows).
pub fn pattern_message(id: u16, priority: u8, len: usize, parts: usize) -> Message {
    let bytes: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(id as u8))
        .collect();
    let parts = parts.clamp(1, len.max(1));
    let step = len.div_ceil(parts).max(1);
    let mut list = BufList::new();
    for piece in bytes.chunks(step) {
        list.push(Buf::copy_from_slice(piece));
    }
    Message::new(id, list).with_priority(priority)
}

/// A connected client/server pair and the pipes between them, for building sessions in a
/// known state before the fuzz input is applied.
pub struct Pair {
    /// Client session.
    pub c: Session,
    /// Server session.
    pub s: Session,
    /// Decoder of the client's receive side.
    pub cd: FrameDecoder,
    /// Decoder of the server's receive side.
    pub sd: FrameDecoder,
    /// Receive pool shared by both decoders.
    pub pool: BufPool,
    /// Current time.
    pub now: Instant,
    limits: Limits,
}

impl Pair {
    /// Two fresh sessions (client `Idle`, server `Standby`).
    pub fn new(lossy: bool, limits: Limits, pool: BufPool, now: Instant) -> Pair {
        Pair {
            c: Session::new(Role::Client, config(lossy), client_ident(), now),
            s: Session::new(Role::Server, config(lossy), server_ident(), now),
            cd: FrameDecoder::new(limits),
            sd: FrameDecoder::new(limits),
            pool,
            now,
            limits,
        }
    }

    /// Client → server: everything the client has to send is delivered.
    pub fn c_to_s(&mut self) -> Result<(), Fault> {
        let bytes = drain(&mut self.c, self.now);
        let local = server_ident();
        let (s, now) = (&mut self.s, self.now);
        feed(&mut self.sd, &self.pool, &bytes, |f| {
            dispatch(s, &local, f, now)
        })
    }

    /// Server → client.
    pub fn s_to_c(&mut self) -> Result<(), Fault> {
        let bytes = drain(&mut self.s, self.now);
        let local = client_ident();
        let (c, now) = (&mut self.c, self.now);
        feed(&mut self.cd, &self.pool, &bytes, |f| {
            dispatch(c, &local, f, now)
        })
    }

    /// Connects: the client's hello reaches the server, the reply reaches the client.
    pub fn handshake(&mut self) -> Result<(), Fault> {
        self.c.start_client(self.now);
        self.c_to_s()?;
        self.s_to_c()
    }

    /// The transport fails on both sides (non-permanent) and fresh decoders are made.
    pub fn transport_fault(&mut self) {
        self.c.on_fault(false);
        self.s.on_fault(false);
        self.cd = FrameDecoder::new(self.limits);
        self.sd = FrameDecoder::new(self.limits);
    }

    /// Brings the pair to `Open`, optionally with unacknowledged traffic both ways, optionally
    /// followed by a transport failure and the start of the client's reconnect. Returns the
    /// bytes the reconnecting client wrote (its new hello and resent messages), if any; they
    /// have not been delivered.
    ///
    /// With `traffic`: client messages 1..=3 are delivered; server messages 1..=2 are
    /// delivered and acknowledge the client's; the client's 4 and 5 are written but lost,
    /// and nobody has acknowledged the server's.
    pub fn prepare(&mut self, traffic: bool, reconnect: bool) -> Result<Vec<u8>, Fault> {
        self.handshake()?;
        if traffic {
            for i in 0..3 {
                self.c.queue(
                    pattern_message(i, 127, 10 + usize::from(i) * 200, 2),
                    self.now,
                );
            }
            self.c_to_s()?;
            for i in 0..2 {
                self.s.queue(pattern_message(10 + i, 127, 300, 1), self.now);
            }
            self.s_to_c()?;
            for i in 0..2 {
                self.c.queue(pattern_message(20 + i, 200, 5, 1), self.now);
            }
            drain(&mut self.c, self.now);
        }
        let mut hello = Vec::new();
        if reconnect {
            self.transport_fault();
            if self.c.state() == SessionState::Idle {
                self.c.start_client(self.now);
                hello = drain(&mut self.c, self.now);
            }
        }
        Ok(hello)
    }

    /// Drops every pending event of both sessions.
    pub fn clear_events(&mut self) {
        while self.c.poll_event().is_some() {}
        while self.s.poll_event().is_some() {}
    }
}

/// The operations of the `session` fuzz target (here so the seed generator can use them).
pub mod session_ops {
    use arbitrary::Arbitrary;

    /// One step applied to the pair.
    #[derive(Arbitrary, Debug)]
    pub enum Op {
        /// Queue a message of `len % 5000` bytes split in `1 + parts % 40` buffers.
        Queue {
            client: bool,
            len: u16,
            parts: u8,
            priority: u8,
        },
        /// Queue `1 + count % 40` messages of `len % 1025` bytes encoded by the sender as
        /// record blocks (the `send_batch` path), one priority.
        QueueBlock {
            client: bool,
            count: u8,
            len: u16,
            priority: u8,
        },
        /// `prepare_tx` (if nothing is framed), `io_slices(max_iov)`, write at most `max` bytes.
        Write { client: bool, max: u16, max_iov: u8 },
        /// Move at most `max` bytes from a pipe into the receiver, `chunk` bytes per read.
        Deliver {
            to_server: bool,
            max: u16,
            chunk: u8,
        },
        /// Write and deliver everything both ways.
        Flush,
        /// Advance the clock and run both sessions' timers.
        Tick { ms: u16 },
        /// The transport breaks (both sides see it); the client reconnects.
        Fault { permanent: bool },
        /// One side closes the session on purpose.
        Close { client: bool, code: u16 },
        /// Raw bytes appended to a pipe.
        Garbage { to_server: bool, bytes: Vec<u8> },
        /// A well-formed (valid crcs) but arbitrary frame appended to a pipe.
        Inject {
            to_server: bool,
            tag: u8,
            flags: u8,
            seq: u64,
            ack: u64,
            front: Vec<u8>,
            data: Vec<u8>,
        },
    }

    /// The whole input of the `session` target.
    #[derive(Arbitrary, Debug)]
    pub struct Input {
        /// Lossy session policy on both sides.
        pub lossy: bool,
        /// Small receive limits.
        pub small_limits: bool,
        /// Tiny receive pool (2 chunks of 256 bytes).
        pub small_pool: bool,
        /// The steps, applied in order (at most 256 are used).
        pub ops: Vec<Op>,
    }
}
