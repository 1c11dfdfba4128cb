//! Regression tests for inputs found by (or written for) the fuzz targets in `fuzz/`.
//!
//! Each test feeds one exact input through the same path as its fuzz target — bytes through
//! a `FrameDecoder` into a `Session`, or an operation sequence on a connected pair — and
//! asserts that nothing panics and the input is refused with a clean error (or, for
//! `io_slices`, that the documented contract holds). The first test replays the one fuzz
//! finding so far; the others are hand-made nasty inputs (4 GiB lengths, truncated hello,
//! flipped crcs, huge name length, `u64::MAX` sequence numbers on reconnect) guarding
//! paths the fuzzers reach constantly.

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

use dataplane::messenger::protocol::{
    Fault, Frame, FrameDecoder, LocalIdentity, Role, Session, SessionConfig, SessionState,
};
use dataplane::wire::{
    self, FrameHead, Hello, HelloStatus, Limits, Tag, WireError, HELLO_BODY_LEN,
    PREAMBLE_CRC_OFFSET, PREAMBLE_LEN,
};
use dataplane::{Buf, BufList, BufPool, Message, PoolConfig};

const CLIENT_SID: u64 = 11;
const SERVER_SID: u64 = 22;

fn pool() -> BufPool {
    BufPool::new(&PoolConfig {
        buf_size: 4096,
        count: 64,
        hugepages: false,
        lock: false,
        prefault: false,
    })
    .expect("pool")
}

fn ident(name: &str, session_id: u64) -> Arc<LocalIdentity> {
    Arc::new(LocalIdentity {
        name: name.into(),
        entity_type: 1,
        addr: None,
        session_id,
        features: 0b110,
        required: 0,
        keys: None,
    })
}

/// Everything `s` wants to send, marked written.
fn drain(s: &mut Session, now: Instant) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        if !s.has_tx() {
            s.prepare_tx(now);
        }
        let mut iov = Vec::new();
        let n = s.io_slices(&mut iov, 1024);
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

/// The receive path of a messenger worker: bytes through the decoder; a server in standby
/// takes a hello (parsed, checked, accepted), everything else goes to `handle_frame`.
fn receive(
    s: &mut Session,
    dec: &mut FrameDecoder,
    pool: &BufPool,
    bytes: &[u8],
    now: Instant,
) -> Result<(), Fault> {
    let local = ident(
        if s.role() == Role::Server {
            "server"
        } else {
            "client"
        },
        if s.role() == Role::Server {
            SERVER_SID
        } else {
            CLIENT_SID
        },
    );
    let mut rest = bytes;
    while !rest.is_empty() {
        let b = dec.read_buf(pool);
        let n = b.extend_from_slice(rest);
        assert!(n > 0, "read_buf offered no room");
        rest = &rest[n..];
        dec.decode(|f: Frame| {
            if s.role() == Role::Server && s.state() == SessionState::Standby {
                if f.tag != Tag::Hello {
                    return Err(Fault::Protocol("first frame must be a hello".into()));
                }
                let hello = wire::parse_hello(&f.front)?;
                Session::check_hello(&local, &hello)
                    .map_err(|(status, reason)| Fault::Rejected { status, reason })?;
                s.accept_hello(&hello, None, now);
                Ok(())
            } else {
                s.handle_frame(f, now)
            }
        })?;
    }
    Ok(())
}

fn frame(tag: Tag, seq: u64, ack: u64, front: &[u8], data: &[u8]) -> Vec<u8> {
    let head = FrameHead {
        tag: tag as u8,
        flags: wire::FLAG_ACK_VALID,
        priority: 127,
        msg_type: 7,
        seq,
        ack,
        front_len: front.len() as u32,
        data_len: data.len() as u32,
    };
    let mut b = wire::encode_preamble(&head).to_vec();
    b.extend_from_slice(front);
    b.extend_from_slice(data);
    if !front.is_empty() || !data.is_empty() {
        b.extend_from_slice(&wire::encode_epilogue(wire::payload_crc([front, data])));
    }
    b
}

/// Re-seals the crc of the preamble at the start of `b` after tampering.
fn reseal(b: &mut [u8]) {
    let crc = wire::crc32c(&b[..PREAMBLE_CRC_OFFSET]);
    b[PREAMBLE_CRC_OFFSET..PREAMBLE_LEN].copy_from_slice(&crc.to_le_bytes());
}

fn client_hello() -> Hello {
    Hello {
        proto_version: u16::from(wire::VERSION),
        entity_type: 1,
        status: HelloStatus::Ok,
        features: 0b110,
        required: 0,
        session_id: CLIENT_SID,
        connect_seq: 1,
        in_seq: 0,
        lossless: true,
        addr: None,
        name: "client".into(),
        lane: 0,
        conn_tag: 0,
    }
}

struct Pair {
    c: Session,
    s: Session,
    cd: FrameDecoder,
    sd: FrameDecoder,
    pool: BufPool,
    now: Instant,
}

impl Pair {
    fn new() -> Pair {
        let now = Instant::now();
        let cfg = SessionConfig::default();
        Pair {
            c: Session::new(Role::Client, cfg.clone(), ident("client", CLIENT_SID), now),
            s: Session::new(Role::Server, cfg, ident("server", SERVER_SID), now),
            cd: FrameDecoder::new(Limits::default()),
            sd: FrameDecoder::new(Limits::default()),
            pool: pool(),
            now,
        }
    }

    fn c_to_s(&mut self) -> Result<(), Fault> {
        let b = drain(&mut self.c, self.now);
        receive(&mut self.s, &mut self.sd, &self.pool, &b, self.now)
    }

    fn s_to_c(&mut self) -> Result<(), Fault> {
        let b = drain(&mut self.s, self.now);
        receive(&mut self.c, &mut self.cd, &self.pool, &b, self.now)
    }

    fn handshake(&mut self) {
        self.c.start_client(self.now);
        self.c_to_s().expect("hello accepted");
        self.s_to_c().expect("reply accepted");
        assert_eq!(self.c.state(), SessionState::Open);
        assert_eq!(self.s.state(), SessionState::Open);
    }

    fn transport_fault(&mut self) {
        self.c.on_fault(false);
        self.s.on_fault(false);
        self.cd = FrameDecoder::new(Limits::default());
        self.sd = FrameDecoder::new(Limits::default());
    }
}

fn wire_err(r: Result<(), Fault>) -> WireError {
    match r {
        Err(Fault::Wire(e)) => e,
        other => panic!("expected a wire fault, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Fuzz findings.
// ---------------------------------------------------------------------------------------

/// Found by the `session` target. Minimised op sequence (input hex
/// `15bfaee5b05bdc601b1b1b1b1b1be2b4bee2ffc99a3b21916c1b1be2`): handshake, queue one message of
/// 1306 bytes in 31 buffers, write with `max_iov` 27. `Session::io_slices` promises "at most
/// `max_iov` slices" but checks the budget only before each frame, so one frame with many
/// buffers overshoots (30 slices here). With the worker's `IOV_MAX` (1024) a message of
/// more than ~1022 buffers, or a many-buffer message framed near the end of a batch, makes
/// `writev` fail with `EINVAL` on every retry. (Failed against the library as first
/// fuzzed; passes since `IovBuilder` counts slots per slice.)
#[test]
fn fuzz_regress_io_slices_exceeds_max_iov() {
    let mut p = Pair::new();
    p.handshake();
    let payload: BufList = (0..31).map(|i| Buf::from_vec(vec![i as u8; 42])).collect();
    p.c.queue(Message::new(1, payload), p.now);
    p.c.prepare_tx(p.now);
    let mut iov: Vec<IoSlice<'_>> = Vec::new();
    p.c.io_slices(&mut iov, 27);
    assert!(
        iov.len() <= 27,
        "io_slices gave {} slices for max_iov 27",
        iov.len()
    );

    // The same at the worker's scale.
    let mut p = Pair::new();
    p.handshake();
    let payload: BufList = (0..1100).map(|_| Buf::from_vec(vec![0xAB; 300])).collect();
    p.c.queue(Message::new(2, payload), p.now);
    p.c.prepare_tx(p.now);
    let mut iov: Vec<IoSlice<'_>> = Vec::new();
    p.c.io_slices(&mut iov, 1024);
    assert!(
        iov.len() <= 1024,
        "io_slices gave {} slices for max_iov 1024",
        iov.len()
    );
}

// ---------------------------------------------------------------------------------------
// Hand-made nasty inputs.
// ---------------------------------------------------------------------------------------

/// A reconnecting client with messages to resend gets a hello-reply (same server session
/// id) whose `in_seq` is `u64::MAX`, more than was ever sent. `trim_resend` computes
/// `peer_in_seq + 1` on this path; the peer's number must not be able to overflow it (a
/// panic with overflow checks). Must end as a clean resume/reset or a protocol fault.
#[test]
fn fuzz_regress_reconnect_reply_in_seq_max() {
    let mut p = Pair::new();
    p.handshake();
    p.c.queue(Message::new(1, Buf::from_vec(vec![1; 10])), p.now);
    drain(&mut p.c, p.now); // written, never delivered: kept for resending
    p.transport_fault();
    p.c.start_client(p.now);
    drain(&mut p.c, p.now);
    let reply = Hello {
        session_id: SERVER_SID,
        name: "server".into(),
        in_seq: u64::MAX,
        ..client_hello()
    };
    let body = wire::encode_hello(&reply).expect("encodable");
    let bytes = frame(Tag::HelloReply, 0, 0, &body, &[]);
    let mut bytes = bytes;
    // Hello replies carry no ack.
    bytes[6] = 0;
    reseal(&mut bytes);
    let r = receive(&mut p.c, &mut p.cd, &p.pool, &bytes, p.now);
    assert!(
        r.is_ok() || matches!(r, Err(Fault::Protocol(_))),
        "unexpected result {r:?}"
    );
}

/// The server side of the same: a reconnecting client's hello with `in_seq` `u64::MAX`
/// reaches `accept_hello` → `trim_resend` on a server with messages to resend.
#[test]
fn fuzz_regress_reconnect_hello_in_seq_max() {
    let mut p = Pair::new();
    p.handshake();
    p.s.queue(Message::new(1, Buf::from_vec(vec![1; 10])), p.now);
    drain(&mut p.s, p.now);
    p.transport_fault();
    let hello = Hello {
        in_seq: u64::MAX,
        connect_seq: 2,
        ..client_hello()
    };
    let body = wire::encode_hello(&hello).expect("encodable");
    let mut bytes = frame(Tag::Hello, 0, 0, &body, &[]);
    bytes[6] = 0;
    reseal(&mut bytes);
    let r = receive(&mut p.s, &mut p.sd, &p.pool, &bytes, p.now);
    assert!(r.is_ok(), "unexpected result {r:?}");
}

/// A message preamble announcing 4 GiB - 1 of data (and one announcing it as front): refused
/// from the preamble alone, before any buffer of that size is allocated.
#[test]
fn fuzz_regress_4gib_length() {
    for (front_len, data_len) in [(0, u32::MAX), (u32::MAX, 0), (u32::MAX, u32::MAX)] {
        let mut p = Pair::new();
        p.handshake();
        let mut b = frame(Tag::Message, 1, 0, &[], &[]);
        b[8..12].copy_from_slice(&front_len.to_le_bytes());
        b[12..16].copy_from_slice(&data_len.to_le_bytes());
        reseal(&mut b);
        b.extend_from_slice(&[0u8; 100]);
        let e = wire_err(receive(&mut p.s, &mut p.sd, &p.pool, &b, p.now));
        assert!(
            matches!(
                e,
                WireError::FrontTooLong { .. } | WireError::DataTooLong { .. }
            ),
            "{e:?}"
        );
    }
}

/// Hellos cut short: a fixed part of 79 bytes, and a name shorter than `name_len` says.
#[test]
fn fuzz_regress_truncated_hello() {
    let body = wire::encode_hello(&client_hello()).expect("encodable");
    for cut in [HELLO_BODY_LEN - 1, body.len() - 1, 1] {
        let mut s = Session::new(
            Role::Server,
            SessionConfig::default(),
            ident("server", SERVER_SID),
            Instant::now(),
        );
        let mut dec = FrameDecoder::new(Limits::default());
        let mut b = frame(Tag::Hello, 0, 0, &body[..cut], &[]);
        b[6] = 0;
        reseal(&mut b);
        let e = wire_err(receive(&mut s, &mut dec, &pool(), &b, Instant::now()));
        assert!(matches!(e, WireError::Truncated { .. }), "cut {cut}: {e:?}");
        assert_eq!(s.state(), SessionState::Standby);
    }
    // A frame cut mid-way is simply incomplete: no frame, no error.
    let full = frame(Tag::Hello, 0, 0, &body, &[]);
    let mut s = Session::new(
        Role::Server,
        SessionConfig::default(),
        ident("server", SERVER_SID),
        Instant::now(),
    );
    let mut dec = FrameDecoder::new(Limits::default());
    let r = receive(
        &mut s,
        &mut dec,
        &pool(),
        &full[..full.len() - 1],
        Instant::now(),
    );
    assert!(r.is_ok());
    assert_eq!(dec.pending(), full.len() - 1);
}

/// One flipped bit in the preamble crc, in the payload, and in the epilogue.
#[test]
fn fuzz_regress_flipped_crc() {
    let good = frame(Tag::Message, 1, 0, &[], b"some payload bytes");
    for (at, want_preamble) in [
        (PREAMBLE_CRC_OFFSET, true),
        (PREAMBLE_LEN + 3, false),
        (good.len() - 1, false),
    ] {
        let mut p = Pair::new();
        p.handshake();
        let mut b = good.clone();
        b[at] ^= 0x10;
        let e = wire_err(receive(&mut p.s, &mut p.sd, &p.pool, &b, p.now));
        if want_preamble {
            assert!(matches!(e, WireError::PreambleCrc { .. }), "{e:?}");
        } else {
            assert!(matches!(e, WireError::PayloadCrc { .. }), "{e:?}");
        }
    }
}

/// A hello whose `name_len` is 0xFFFF (and one just over the limit) with a short name.
#[test]
fn fuzz_regress_huge_name_len() {
    let mut body = wire::encode_hello(&client_hello()).expect("encodable");
    // name_len sits at bytes 72..74 of the fixed part.
    for name_len in [u16::MAX, 65] {
        body[72..74].copy_from_slice(&name_len.to_le_bytes());
        assert!(matches!(
            wire::parse_hello(&body),
            Err(WireError::NameTooLong { .. })
        ));
        let mut s = Session::new(
            Role::Server,
            SessionConfig::default(),
            ident("server", SERVER_SID),
            Instant::now(),
        );
        let mut dec = FrameDecoder::new(Limits::default());
        let mut b = frame(Tag::Hello, 0, 0, &body, &[]);
        b[6] = 0;
        reseal(&mut b);
        let e = wire_err(receive(&mut s, &mut dec, &pool(), &b, Instant::now()));
        assert!(matches!(e, WireError::NameTooLong { .. }), "{e:?}");
    }
}
