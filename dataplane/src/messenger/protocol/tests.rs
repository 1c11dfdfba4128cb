//! Sans-IO tests: two sessions connected by an in-memory byte pipe, no sockets, no threads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::buf::{Buf, BufMut, BufPool, PoolConfig};
use crate::messenger::{priority, Message};
use crate::wire::{self, FrameHead, HelloStatus, Limits, Tag};

fn pool() -> BufPool {
    BufPool::new(&PoolConfig {
        buf_size: 4096,
        count: 64,
        hugepages: false,
        lock: false,
        prefault: false,
    })
    .unwrap()
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

/// An identity that does not offer message batches.
fn unbatched(name: &str, session_id: u64) -> Arc<LocalIdentity> {
    Arc::new(LocalIdentity {
        features: 0,
        ..(*ident(name, session_id)).clone()
    })
}

fn cfg(lossy: bool) -> SessionConfig {
    SessionConfig {
        lossy,
        ..SessionConfig::default()
    }
}

/// Takes everything `s` wants to send as bytes (a test copy), marking it written.
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

/// The message payloads carried by `frames`, batches expanded, in order.
fn payloads_of(frames: &[Frame]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for f in frames {
        match f.tag {
            Tag::Message => out.push(match &f.data_parts {
                Some(parts) => parts.to_vec(),
                None => f.data.to_vec(),
            }),
            Tag::MessageBatch => {
                let d = f.data.as_slice();
                for (_, r) in wire::batch_records(d) {
                    out.push(d[r].to_vec());
                }
            }
            _ => {}
        }
    }
    out
}

/// Decodes what `dec` holds, appending the frames to `frames`.
fn decode_into(dec: &mut FrameDecoder, frames: &mut Vec<Frame>) {
    dec.decode(|f| {
        frames.push(f);
        Ok(())
    })
    .unwrap();
}

/// Feeds bytes to a decoder in chunks of `chunk`, collecting frames.
fn feed(
    dec: &mut FrameDecoder,
    pool: &BufPool,
    bytes: &[u8],
    chunk: usize,
) -> Result<Vec<Frame>, Fault> {
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        let mut rest = piece;
        while !rest.is_empty() {
            let b = dec.read_buf(pool);
            let n = b.extend_from_slice(rest);
            assert!(n > 0, "read_buf must offer room");
            rest = &rest[n..];
            dec.decode(|f| {
                frames.push(f);
                Ok(())
            })?;
        }
    }
    Ok(frames)
}

fn events(s: &mut Session) -> Vec<SessionEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Messages `s` reported released (as dropped, or as delivered), from its pending events.
fn released_msgs(s: &mut Session, dropped: bool) -> usize {
    events(s)
        .iter()
        .map(|e| match e {
            SessionEvent::Released {
                msgs, dropped: d, ..
            } if *d == dropped => *msgs,
            _ => 0,
        })
        .sum()
}

fn msgs(evs: &[SessionEvent]) -> Vec<Vec<u8>> {
    evs.iter()
        .filter_map(|e| match e {
            SessionEvent::Message(m) => Some(m.payload.to_vec()),
            _ => None,
        })
        .collect()
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
    fn new(lossy: bool) -> Pair {
        let now = Instant::now();
        Pair {
            c: Session::new(Role::Client, cfg(lossy), ident("client", 11), now),
            s: Session::new(Role::Server, cfg(lossy), ident("server", 22), now),
            cd: FrameDecoder::new(Limits::default()),
            sd: FrameDecoder::new(Limits::default()),
            pool: pool(),
            now,
        }
    }

    /// A lossless pair with these identities, connected (hello accepted, reply delivered).
    fn open_with(c: Arc<LocalIdentity>, s: Arc<LocalIdentity>, now: Instant) -> Pair {
        let mut p = Pair {
            c: Session::new(Role::Client, cfg(false), c, now),
            s: Session::new(Role::Server, cfg(false), s, now),
            cd: FrameDecoder::new(Limits::default()),
            sd: FrameDecoder::new(Limits::default()),
            pool: pool(),
            now,
        };
        p.c.start_client(now);
        let bytes = drain(&mut p.c, now);
        let frames = feed(&mut p.sd, &p.pool, &bytes, 99).unwrap();
        let hello = wire::parse_hello(&frames[0].front).unwrap();
        p.s.accept_hello(&hello, None, now);
        p.s_to_c().unwrap();
        p
    }

    /// Client connects: hello goes to the server, which accepts; reply comes back.
    fn handshake(&mut self) {
        self.c.start_client(self.now);
        let bytes = drain(&mut self.c, self.now);
        let frames = feed(&mut self.sd, &self.pool, &bytes, 7).unwrap();
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].tag, Tag::Hello);
        let hello = wire::parse_hello(&frames[0].front).unwrap();
        Session::check_hello(&ident("server", 22), &hello).unwrap();
        self.s.accept_hello(&hello, None, self.now);
        self.s_to_c().unwrap();
        assert_eq!(self.c.state(), SessionState::Open);
        assert_eq!(self.s.state(), SessionState::Open);
    }

    fn c_to_s(&mut self) -> Result<(), Fault> {
        let bytes = drain(&mut self.c, self.now);
        for f in feed(&mut self.sd, &self.pool, &bytes, 1500)? {
            self.s.handle_frame(f, self.now)?;
        }
        Ok(())
    }

    fn s_to_c(&mut self) -> Result<(), Fault> {
        let bytes = drain(&mut self.s, self.now);
        for f in feed(&mut self.cd, &self.pool, &bytes, 1500)? {
            self.c.handle_frame(f, self.now)?;
        }
        Ok(())
    }

    /// Transport dies; both sides fault; a fresh transport is handshaken again.
    fn reconnect(&mut self) {
        self.c.on_fault(false);
        self.s.on_fault(false);
        self.cd = FrameDecoder::new(Limits::default());
        self.sd = FrameDecoder::new(Limits::default());
        self.handshake();
    }
}

fn m(i: u8) -> Message {
    Message::new(7, Buf::from_vec(vec![i; 10 + i as usize]))
}

#[test]
fn handshake_reports_established_with_peer_identity() {
    let mut p = Pair::new(false);
    p.handshake();
    let evs = events(&mut p.c);
    assert!(
        matches!(&evs[0], SessionEvent::Established { peer, remote_reset: false, reconnect: false } if peer.name == "server")
    );
    let evs = events(&mut p.s);
    assert!(
        matches!(&evs[0], SessionEvent::Established { peer, .. } if peer.name == "client" && peer.session_id == 11)
    );
}

#[test]
fn messages_flow_and_acks_release_the_queue() {
    let mut p = Pair::new(false);
    p.handshake();
    for i in 0..5 {
        p.c.queue(m(i), p.now);
    }
    p.c_to_s().unwrap();
    let got = msgs(&events(&mut p.s));
    assert_eq!(
        got,
        (0..5).map(|i| vec![i; 10 + i as usize]).collect::<Vec<_>>()
    );
    assert_eq!(p.c.backlog(), 5, "unacknowledged messages are kept");
    // Delayed ack: due after ack_delay.
    p.now += Duration::from_millis(5);
    p.s_to_c().unwrap();
    let released = released_msgs(&mut p.c, false);
    assert_eq!(released, 5);
    assert_eq!(p.c.backlog(), 0);
}

#[test]
fn lossless_resends_unacked_exactly_once_after_reconnect() {
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.c);
    events(&mut p.s);
    for i in 0..3 {
        p.c.queue(m(i), p.now);
    }
    p.c_to_s().unwrap(); // server got 0..3 but has not acked yet
    assert_eq!(msgs(&events(&mut p.s)).len(), 3);
    for i in 3..6 {
        p.c.queue(m(i), p.now);
    }
    // 3..6 are framed and "written" but lost in the dying transport.
    let _lost = drain(&mut p.c, p.now);
    p.reconnect();
    p.c_to_s().unwrap();
    let evs = events(&mut p.s);
    assert!(evs.iter().any(|e| matches!(
        e,
        SessionEvent::Established {
            reconnect: true,
            remote_reset: false,
            ..
        }
    )));
    let got = msgs(&evs);
    assert_eq!(
        got,
        (3..6).map(|i| vec![i; 10 + i as usize]).collect::<Vec<_>>(),
        "only the lost ones, once"
    );
    assert_eq!(p.s.in_seq(), 6);
}

#[test]
fn peer_claiming_more_than_was_sent_loses_nothing() {
    // A reconnecting peer with the same incarnation claims it received messages we never
    // sent: its state cannot be trusted, the session is reset and everything held is sent
    // again (renumbered), nothing is released as delivered.
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.c);
    for i in 0..3 {
        p.c.queue(m(i), p.now);
    }
    let _lost = drain(&mut p.c, p.now);
    p.c.on_fault(false);
    p.c.start_client(p.now);
    let _hello = drain(&mut p.c, p.now);
    let mut reply = wire::parse_hello(
        &wire::encode_hello(&wire::Hello {
            proto_version: u16::from(wire::VERSION),
            entity_type: 1,
            status: HelloStatus::Ok,
            features: 0,
            required: 0,
            session_id: 22,
            connect_seq: 2,
            in_seq: 0,
            lossless: true,
            addr: None,
            name: "server".into(),
            lane: 0,
            conn_tag: 0,
        })
        .unwrap(),
    )
    .unwrap();
    reply.in_seq = 1_000;
    let body = wire::encode_hello(&reply).unwrap();
    let h = FrameHead {
        tag: Tag::HelloReply as u8,
        front_len: body.len() as u32,
        ..FrameHead::default()
    };
    let mut bytes = wire::encode_preamble(&h).to_vec();
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&wire::encode_epilogue(wire::payload_crc([&body[..]])));
    for f in feed(&mut p.cd, &p.pool, &bytes, 1500).unwrap() {
        p.c.handle_frame(f, p.now).unwrap();
    }
    let evs = events(&mut p.c);
    assert!(
        evs.iter().any(|e| matches!(
            e,
            SessionEvent::Established {
                remote_reset: true,
                ..
            }
        )),
        "{evs:?}"
    );
    assert!(
        !evs.iter()
            .any(|e| matches!(e, SessionEvent::Released { .. })),
        "nothing released: {evs:?}"
    );
    assert_eq!(p.c.backlog(), 3, "all three are held for resending");
}

#[test]
fn peer_restart_is_a_remote_reset_and_messages_are_renumbered() {
    let mut p = Pair::new(false);
    p.handshake();
    for i in 0..2 {
        p.c.queue(m(i), p.now);
    }
    let _lost = drain(&mut p.c, p.now);
    p.c.on_fault(false);
    // The server restarted: a brand-new server session with another incarnation id.
    p.s = Session::new(Role::Server, cfg(false), ident("server", 99), p.now);
    p.cd = FrameDecoder::new(Limits::default());
    p.sd = FrameDecoder::new(Limits::default());
    p.handshake();
    assert!(events(&mut p.c).iter().any(|e| matches!(
        e,
        SessionEvent::Established {
            remote_reset: true,
            ..
        }
    )));
    p.c_to_s().unwrap();
    assert_eq!(
        msgs(&events(&mut p.s)).len(),
        2,
        "held messages go to the new incarnation"
    );
    assert_eq!(p.s.in_seq(), 2);
}

#[test]
fn lossy_fault_drops_and_releases_everything() {
    let mut p = Pair::new(true);
    p.handshake();
    events(&mut p.c);
    for i in 0..4 {
        p.c.queue(m(i), p.now);
    }
    assert_eq!(p.c.on_fault(false), SessionState::Closed);
    let dropped = released_msgs(&mut p.c, true);
    assert_eq!(dropped, 4);
    p.c.queue(m(9), p.now);
    assert!(matches!(
        events(&mut p.c)[..],
        [SessionEvent::Released { dropped: true, .. }]
    ));
}

#[test]
fn lossy_drops_messages_older_than_max_age() {
    let now = Instant::now();
    let mut c = Session::new(
        Role::Client,
        SessionConfig {
            lossy: true,
            lossy_max_age: Duration::from_millis(10),
            ..SessionConfig::default()
        },
        ident("c", 1),
        now,
    );
    let mut p = Pair::new(true);
    std::mem::swap(&mut p.c, &mut c);
    p.handshake();
    events(&mut p.c);
    p.c.queue(m(1), p.now);
    p.now += Duration::from_millis(50);
    p.c_to_s().unwrap();
    assert!(msgs(&events(&mut p.s)).is_empty());
    assert!(events(&mut p.c).iter().any(|e| matches!(
        e,
        SessionEvent::Released {
            dropped: true,
            msgs: 1,
            ..
        }
    )));
}

#[test]
fn priority_orders_the_wire() {
    // Messages waiting in the out queue (here: queued before the handshake finished) leave
    // highest priority first, FIFO within a priority.
    let mut p = Pair::new(false);
    p.c.queue(m(1).with_priority(priority::LOW), p.now);
    p.c.queue(m(2), p.now);
    p.c.queue(m(3).with_priority(priority::HIGHEST), p.now);
    p.c.queue(m(4), p.now);
    p.handshake();
    p.c_to_s().unwrap();
    let got: Vec<u8> = msgs(&events(&mut p.s)).iter().map(|v| v[0]).collect();
    assert_eq!(got, vec![3, 2, 4, 1]);
}

#[test]
fn a_message_finding_room_is_framed_at_once_and_a_backlog_is_prioritised() {
    let mut p = Pair::new(false);
    p.handshake();
    // Fill the staging budget with low-priority bulk: later messages must queue.
    let bulk = Buf::from_vec(vec![0u8; 200]);
    let mut n = 0u8;
    while p.c.backlog() < 2000 {
        p.c.queue(
            Message::new(1, bulk.clone()).with_priority(priority::LOW),
            p.now,
        );
        n = n.wrapping_add(1);
    }
    p.c.queue(m(9).with_priority(priority::HIGHEST), p.now);
    p.c.queue(
        Message::new(1, bulk.clone()).with_priority(priority::LOW),
        p.now,
    );
    p.c_to_s().unwrap();
    let got = msgs(&events(&mut p.s));
    let urgent = got.iter().position(|v| v.len() == 19 && v[0] == 9).unwrap();
    assert!(
        urgent < got.len() - 1,
        "the urgent message overtakes queued bulk"
    );
}

#[test]
fn duplicate_is_dropped_and_gap_is_a_protocol_error() {
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.s);
    let frame = |seq: u64| {
        let data = Buf::from_static(b"x");
        let h = FrameHead {
            tag: Tag::Message as u8,
            seq,
            data_len: 1,
            ..FrameHead::default()
        };
        let mut v = wire::encode_preamble(&h).to_vec();
        v.extend_from_slice(&data);
        v.extend_from_slice(&wire::encode_epilogue(wire::payload_crc([
            &b""[..],
            &data[..],
        ])));
        v
    };
    let pool = pool();
    let mut dec = FrameDecoder::new(Limits::default());
    for f in feed(&mut dec, &pool, &frame(1), 100).unwrap() {
        p.s.handle_frame(f, p.now).unwrap();
    }
    for f in feed(&mut dec, &pool, &frame(1), 100).unwrap() {
        p.s.handle_frame(f, p.now).unwrap();
    }
    let evs = events(&mut p.s);
    assert_eq!(msgs(&evs).len(), 1);
    assert!(evs.iter().any(|e| matches!(e, SessionEvent::Duplicate)));
    let f = feed(&mut dec, &pool, &frame(5), 100).unwrap().remove(0);
    assert!(matches!(
        p.s.handle_frame(f, p.now),
        Err(Fault::Protocol(_))
    ));
}

#[test]
fn ack_beyond_what_was_sent_is_rejected() {
    let mut p = Pair::new(false);
    p.handshake();
    let h = FrameHead {
        tag: Tag::Ack as u8,
        flags: wire::FLAG_ACK_VALID,
        ack: 42,
        ..FrameHead::default()
    };
    let bytes = wire::encode_preamble(&h);
    let f = feed(&mut p.cd, &p.pool, &bytes, 40).unwrap().remove(0);
    assert!(matches!(
        p.c.handle_frame(f, p.now),
        Err(Fault::Protocol(_))
    ));
}

#[test]
fn message_before_handshake_is_rejected() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, cfg(false), ident("c", 1), now);
    let h = FrameHead {
        tag: Tag::Message as u8,
        seq: 1,
        ..FrameHead::default()
    };
    let mut dec = FrameDecoder::new(Limits::default());
    let f = feed(&mut dec, &pool(), &wire::encode_preamble(&h), 40)
        .unwrap()
        .remove(0);
    assert!(matches!(c.handle_frame(f, now), Err(Fault::Protocol(_))));
}

#[test]
fn keepalive_sent_when_idle_and_silent_peer_times_out() {
    let mut p = Pair::new(false);
    p.handshake();
    p.now += Duration::from_millis(1500);
    p.c.handle_timeout(p.now).unwrap();
    let bytes = drain(&mut p.c, p.now);
    let frames = feed(&mut p.sd, &p.pool, &bytes, 100).unwrap();
    assert!(frames.iter().any(|f| f.tag == Tag::Keepalive));
    p.now += Duration::from_secs(20);
    assert!(matches!(
        p.c.handle_timeout(p.now),
        Err(Fault::PeerTimeout(_))
    ));
}

#[test]
fn handshake_times_out() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, cfg(false), ident("c", 1), now);
    c.start_client(now);
    assert!(c.handle_timeout(now + Duration::from_secs(1)).is_ok());
    assert!(matches!(
        c.handle_timeout(now + Duration::from_secs(11)),
        Err(Fault::HandshakeTimeout(_))
    ));
}

#[test]
fn version_and_feature_mismatch_are_refused() {
    let mut p = Pair::new(false);
    p.c.start_client(p.now);
    let bytes = drain(&mut p.c, p.now);
    let f = feed(&mut p.sd, &p.pool, &bytes, 100).unwrap().remove(0);
    let mut hello = wire::parse_hello(&f.front).unwrap();
    let local = ident("server", 2);
    hello.proto_version = 9;
    assert_eq!(
        Session::check_hello(&local, &hello).unwrap_err().0,
        HelloStatus::VersionMismatch
    );
    hello.proto_version = u16::from(wire::VERSION);
    hello.required = 1 << 40;
    assert_eq!(
        Session::check_hello(&local, &hello).unwrap_err().0,
        HelloStatus::FeatureMismatch
    );
    // The refusal reaches the client as a clear, permanent fault.
    let bytes = Session::refusal(&local, HelloStatus::FeatureMismatch, "no");
    let f = feed(&mut p.cd, &p.pool, &bytes, 100).unwrap().remove(0);
    let err = p.c.handle_frame(f, p.now).unwrap_err();
    assert!(matches!(
        err,
        Fault::Refused {
            status: HelloStatus::FeatureMismatch,
            ..
        }
    ));
    assert!(err.is_permanent());
}

#[test]
fn decoder_rejects_oversized_frame_before_allocating() {
    let h = FrameHead {
        tag: Tag::Message as u8,
        seq: 1,
        data_len: u32::MAX,
        ..FrameHead::default()
    };
    let mut dec = FrameDecoder::new(Limits {
        max_front: 1024,
        max_data: 1 << 20,
    });
    let r = feed(&mut dec, &pool(), &wire::encode_preamble(&h), 40);
    assert!(matches!(
        r,
        Err(Fault::Wire(wire::WireError::DataTooLong { .. }))
    ));
}

/// Flips a payload bit of a crc-carrying message frame; the server's decoder trusts its
/// transport when `trust` (the frame is not flagged, so its crc is checked anyway).
fn corrupted_payload(trust: bool) -> Result<Vec<Frame>, Fault> {
    let mut p = Pair::new(false);
    p.sd.trust_transport(trust);
    p.handshake();
    p.c.queue(m(5), p.now);
    let mut bytes = drain(&mut p.c, p.now);
    let last = bytes.len() - 6;
    bytes[last] ^= 0x40;
    feed(&mut p.sd, &p.pool, &bytes, 1500)
}

#[test]
fn decoder_detects_payload_corruption() {
    assert!(matches!(
        corrupted_payload(false),
        Err(Fault::Wire(wire::WireError::PayloadCrc { .. }))
    ));
}

/// A handshaken pair and the client's encoded stream of one message per payload (of byte
/// `i` for the `i`-th, `sizes[i]` long).
fn encoded_stream(sizes: &[usize]) -> (Pair, Vec<u8>) {
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.s);
    for (i, n) in sizes.iter().enumerate() {
        p.c.queue(Message::new(1, Buf::from_vec(vec![i as u8; *n])), p.now);
    }
    let bytes = drain(&mut p.c, p.now);
    (p, bytes)
}

/// Memory lent to the decoder in tests; counts its release.
struct LentMem(std::ptr::NonNull<[u8]>, Arc<std::sync::atomic::AtomicU64>);

// SAFETY: only freed in Drop; the bytes are accessed through the BufMut / Bufs.
unsafe impl Send for LentMem {}
// SAFETY: `&LentMem` exposes nothing.
unsafe impl Sync for LentMem {}

impl Drop for LentMem {
    fn drop(&mut self) {
        // SAFETY: the pointer came from `Box::leak` in `lent_counted` and is freed only here.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
        self.1.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A copy of `bytes` in memory lent as a stack lends a receive buffer (all of it filled).
fn lent_counted(bytes: &[u8], released: &Arc<std::sync::atomic::AtomicU64>) -> BufMut {
    let mem = std::ptr::NonNull::from(Box::leak(bytes.to_vec().into_boxed_slice()));
    let keeper = Arc::new(LentMem(mem, released.clone()));
    // SAFETY: a fresh allocation known only to the keeper (which frees it) and the BufMut.
    unsafe { BufMut::lent(mem.cast::<u8>(), bytes.len(), bytes.len(), keeper) }
}

fn lent(bytes: &[u8]) -> BufMut {
    lent_counted(bytes, &Arc::default())
}

#[test]
fn whole_frames_in_a_lent_buffer_are_cut_from_it_and_it_returns_after_them() {
    let (mut p, bytes) = encoded_stream(&[5000; 3]);
    let released = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let b = lent_counted(&bytes, &released);
    let (start, end) = (
        b.filled().as_ptr() as usize,
        b.filled().as_ptr() as usize + b.len(),
    );
    assert_eq!(p.sd.adopt(b, &p.pool), bytes.len());
    let mut frames = Vec::new();
    decode_into(&mut p.sd, &mut frames);
    assert_eq!(payloads_of(&frames).len(), 3);
    // No copy: every payload lies in the lent memory.
    for f in &frames {
        let at = f.data.as_ptr() as usize;
        assert!(at >= start && at + f.data.len() <= end, "payload copied");
    }
    assert_eq!(p.sd.copied_bytes(), 0);
    p.sd.release_idle();
    let data: Vec<Buf> = frames.iter().map(|f| f.data.clone()).collect();
    drop(frames);
    let ordering = std::sync::atomic::Ordering::Acquire;
    assert_eq!(released.load(ordering), 0, "given back while payloads live");
    drop(data);
    assert_eq!(
        released.load(ordering),
        1,
        "not given back after the last payload"
    );
}

/// A frame split across two lent buffers: only its bytes are copied (into a buffer of our
/// own); the frames after it are cut from the second lent buffer in place.
#[test]
fn a_frame_straddling_two_lent_buffers_copies_only_itself() {
    let (mut p, bytes) = encoded_stream(&[3000; 4]);
    let frame = bytes.len() / 4;
    // The cut falls inside the second frame.
    let cut = frame + frame / 2;
    let (a, b) = (lent(&bytes[..cut]), lent(&bytes[cut..]));
    let (b_start, b_end) = (
        b.filled().as_ptr() as usize,
        b.filled().as_ptr() as usize + b.len(),
    );
    let mut frames = Vec::new();
    p.sd.adopt(a, &p.pool);
    decode_into(&mut p.sd, &mut frames);
    assert_eq!(frames.len(), 1);
    // The straddling frame's rest (2 * frame - cut bytes) is copied; the rest of `b` stays.
    assert_eq!(p.sd.adopt(b, &p.pool), bytes.len() - 2 * frame);
    decode_into(&mut p.sd, &mut frames);
    let payloads = payloads_of(&frames);
    assert_eq!(payloads.len(), 4);
    for (i, d) in payloads.iter().enumerate() {
        assert!(d.len() == 3000 && d.iter().all(|x| *x == i as u8));
    }
    assert_eq!(p.sd.pending(), 0);
    // The straddling frame was copied whole (its head moved to our buffer, its rest copied
    // after it); nothing else was.
    assert!(
        p.sd.copied_bytes() as usize <= frame,
        "copied {} bytes, one frame is {frame}",
        p.sd.copied_bytes()
    );
    for f in &frames[2..] {
        let at = f.data.as_ptr() as usize;
        assert!(
            at >= b_start && at + f.data.len() <= b_end,
            "frame after the straddle copied"
        );
    }
}

/// A stream of one large message frame (a counting pattern, so order shows) between two
/// small ones, and the large frame's offset and length in it.
fn stream_with_large_frame(len: usize) -> (Pair, Vec<u8>, Vec<u8>, usize, usize) {
    let (mut p, small) = encoded_stream(&[100]);
    let big: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    p.c.queue(Message::new(2, Buf::from_vec(big.clone())), p.now);
    let frame = drain(&mut p.c, p.now);
    p.c.queue(Message::new(3, Buf::from_vec(vec![7; 100])), p.now);
    let after = drain(&mut p.c, p.now);
    let (at, flen) = (small.len(), frame.len());
    let bytes = [small, frame, after].concat();
    (p, bytes, big, at, flen)
}

/// Lends `bytes` to the decoder cut at `cuts`, decoding after each piece; returns the frames,
/// the lent memory's address ranges, and how many lent buffers went back.
fn adopt_cut(
    p: &mut Pair,
    bytes: &[u8],
    cuts: &[usize],
) -> (
    Vec<Frame>,
    Vec<(usize, usize)>,
    Arc<std::sync::atomic::AtomicU64>,
) {
    let released = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (mut frames, mut ranges, mut at) = (Vec::new(), Vec::new(), 0);
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let b = lent_counted(&bytes[at..end], &released);
        let start = b.filled().as_ptr() as usize;
        ranges.push((start, start + b.len()));
        p.sd.adopt(b, &p.pool);
        decode_into(&mut p.sd, &mut frames);
        at = end;
    }
    (frames, ranges, released)
}

/// A large message frame spread over several lent buffers (as RDMA write chunks bring it) is
/// handed on as a list of slices of them: nothing but its head is copied, the payload and
/// its crc check out, and the buffers go back once the message is dropped.
#[test]
fn a_large_frame_over_lent_buffers_is_gathered_without_a_copy() {
    let (mut p, bytes, big, at, flen) = stream_with_large_frame(1 << 20);
    // Cuts: inside the large frame's preamble, three times in its payload, and inside its
    // epilogue (the last piece carries the epilogue's end and the small frame after it).
    let cuts = [
        at + 10,
        at + 300_000,
        at + 600_001,
        at + 900_000,
        at + flen - 2,
    ];
    let (frames, ranges, released) = adopt_cut(&mut p, &bytes, &cuts);
    assert_eq!(frames.len(), 3);
    let payloads = payloads_of(&frames);
    assert_eq!(payloads[0], vec![0u8; 100]);
    assert_eq!(payloads[1], big);
    assert_eq!(payloads[2], vec![7u8; 100]);
    let parts = frames[1].data_parts.as_ref().expect("gathered");
    assert!(frames[1].data.is_empty());
    // One piece per lent buffer with payload bytes: the head went to a buffer of its own
    // (its preamble straddled), and the last buffer holds only the epilogue's end.
    assert_eq!(parts.iter().count(), 4);
    for part in parts.iter() {
        let (s, e) = (part.as_ptr() as usize, part.as_ptr() as usize + part.len());
        assert!(
            ranges.iter().any(|&(lo, hi)| s >= lo && e <= hi),
            "payload piece copied"
        );
    }
    // Only the preamble's first piece (10 bytes) was moved, to complete the head.
    assert!(
        p.sd.copied_bytes() <= 64,
        "copied {} bytes",
        p.sd.copied_bytes()
    );
    assert_eq!(p.sd.gathered_bytes(), flen as u64);
    assert_eq!(p.sd.pending(), 0);
    p.sd.release_idle();
    let ordering = std::sync::atomic::Ordering::Acquire;
    drop(frames);
    assert_eq!(
        released.load(ordering),
        ranges.len() as u64,
        "lent buffers not given back"
    );
}

/// Gathering with copying reads in between (pieces too small to be lent arrive by `read`):
/// the bytes read become pieces too, in order, and the frame is the same.
#[test]
fn a_gathered_frame_takes_copied_reads_in_order() {
    let (mut p, bytes, big, at, flen) = stream_with_large_frame(300_000);
    let mut frames = Vec::new();
    // Lent: the small frame and the big one's first 100 000 bytes.
    p.sd.adopt(lent(&bytes[..at + 100_000]), &p.pool);
    decode_into(&mut p.sd, &mut frames);
    // Read (copied): the next 50 000 bytes, in small reads.
    let mut off = at + 100_000;
    while off < at + 150_000 {
        let b = p.sd.read_buf(&p.pool);
        let n = b.extend_from_slice(&bytes[off..(off + 7_000).min(at + 150_000)]);
        off += n;
        decode_into(&mut p.sd, &mut frames);
    }
    // Lent: up to 5 bytes before the frame's end; then read: the rest and the next frame.
    p.sd.adopt(lent(&bytes[off..at + flen - 5]), &p.pool);
    decode_into(&mut p.sd, &mut frames);
    let mut off = at + flen - 5;
    while off < bytes.len() {
        let b = p.sd.read_buf(&p.pool);
        let n = b.extend_from_slice(&bytes[off..]);
        off += n;
        decode_into(&mut p.sd, &mut frames);
    }
    let payloads = payloads_of(&frames);
    assert_eq!(payloads.len(), 3);
    assert_eq!(payloads[1], big);
    assert_eq!(payloads[2], vec![7u8; 100]);
    assert!(frames[1].data_parts.is_some());
    assert_eq!(p.sd.pending(), 0);
}

/// On a stack that lends, a large frame that outgrows the buffer a copying read put its head
/// in is gathered from there on: no buffer of the frame's whole size is taken (the lent
/// buffers that bring most of it would leave it unused).
#[test]
fn on_a_lending_stack_a_large_frame_never_takes_a_buffer_of_its_size() {
    let (mut p, bytes, big, at, flen) = stream_with_large_frame(1 << 20);
    let mut frames = Vec::new();
    // Lent: the small frame. Read (copied): the large frame's first 1000 bytes.
    p.sd.adopt(lent(&bytes[..at]), &p.pool);
    let b = p.sd.read_buf(&p.pool);
    let n = b.extend_from_slice(&bytes[at..at + 1000]);
    assert_eq!(n, 1000);
    decode_into(&mut p.sd, &mut frames);
    // The next read is offered a pool buffer, not one of the frame's size.
    let offered = p.sd.read_buf(&p.pool).remaining();
    assert!(
        offered <= p.pool.buf_size(),
        "offered {offered} bytes for a frame of {flen}"
    );
    // Lent: the rest.
    p.sd.adopt(lent(&bytes[at + 1000..]), &p.pool);
    decode_into(&mut p.sd, &mut frames);
    let payloads = payloads_of(&frames);
    assert_eq!(payloads.len(), 3);
    assert_eq!(payloads[1], big);
    assert!(frames[1].data_parts.is_some());
    assert_eq!(p.sd.pending(), 0);
}

/// A gathered frame is checked like any other: a flipped payload byte fails its crc.
#[test]
fn a_gathered_frame_with_a_bad_crc_is_refused() {
    let (mut p, mut bytes, _, at, flen) = stream_with_large_frame(200_000);
    bytes[at + flen / 2] ^= 1;
    p.sd.adopt(lent(&bytes[..at + 70_000]), &p.pool);
    p.sd.decode(|_| Ok(())).unwrap();
    p.sd.adopt(lent(&bytes[at + 70_000..]), &p.pool);
    let r = p.sd.decode(|_| Ok(()));
    assert!(
        matches!(r, Err(Fault::Wire(wire::WireError::PayloadCrc { .. }))),
        "{r:?}"
    );
}

/// Small frames straddling lent buffers are still copied (cheaper than a list of pieces).
#[test]
fn frames_below_the_gather_minimum_are_copied_not_gathered() {
    let (mut p, bytes, big, at, _) = stream_with_large_frame(super::decoder::GATHER_MIN / 2);
    let (frames, _, _) = adopt_cut(&mut p, &bytes, &[at + 1000]);
    assert_eq!(payloads_of(&frames)[1], big);
    assert!(frames[1].data_parts.is_none());
    assert_eq!(p.sd.gathered_bytes(), 0);
}

#[test]
fn large_frame_lands_in_one_exact_buffer() {
    let mut p = Pair::new(false);
    p.handshake();
    let big = vec![0xAB; 1 << 20];
    p.c.queue(Message::new(1, Buf::from_vec(big.clone())), p.now);
    let bytes = drain(&mut p.c, p.now);
    let frames = feed(&mut p.sd, &p.pool, &bytes, 65536).unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].data.as_slice(), &big[..]);
    // Only the part of the frame read before its size was known was copied (one chunk).
    assert!(
        p.sd.copied_bytes() <= 65536,
        "copied {}",
        p.sd.copied_bytes()
    );
}

/// Feeds `bytes` to `dec` in pieces of `chunk`, the `k`-th as a buffer a stack lends
/// (`adopt`) when bit `k % 64` of `pattern` is set, else read into the decoder's own buffers,
/// decoding after each piece. Stops at the first decoding error.
fn feed_mixed(
    dec: &mut FrameDecoder,
    pool: &BufPool,
    bytes: &[u8],
    chunk: usize,
    pattern: u64,
    mut on_frame: impl FnMut(Frame),
) -> Result<(), Fault> {
    for (k, piece) in bytes.chunks(chunk).enumerate() {
        if pattern >> (k % 64) & 1 == 1 {
            let kept = dec.adopt(lent(piece), pool);
            assert!(kept <= piece.len(), "adopt kept {kept} of {}", piece.len());
        } else {
            let mut rest = piece;
            while !rest.is_empty() {
                let n = dec.read_buf(pool).extend_from_slice(rest);
                rest = &rest[n..];
            }
        }
        dec.decode(|f| {
            on_frame(f);
            Ok(())
        })?;
    }
    Ok(())
}

/// The frames carry one message per entry of `sizes`, of byte `i` for the `i`-th.
fn check_payloads(frames: &[Frame], sizes: &[usize]) -> Result<(), TestCaseError> {
    let payloads = payloads_of(frames);
    prop_assert_eq!(payloads.len(), sizes.len());
    for (i, d) in payloads.iter().enumerate() {
        prop_assert_eq!(d.len(), sizes[i]);
        prop_assert!(d.iter().all(|b| *b == i as u8));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever the read boundaries, the same messages come out, in order.
    #[test]
    fn any_read_split_decodes_the_same(sizes in proptest::collection::vec(0usize..6000, 1..20), chunk in 1usize..9000) {
        let (mut p, bytes) = encoded_stream(&sizes);
        let frames = feed(&mut p.sd, &p.pool, &bytes, chunk).unwrap();
        check_payloads(&frames, &sizes)?;
    }

    /// Buffers a stack lends (adopted whole) and reads into the decoder's own buffers, mixed
    /// in any pattern and at any boundaries, give the same messages in order.
    #[test]
    fn lent_and_read_buffers_mixed_decode_the_same(
        sizes in proptest::collection::vec(0usize..6000, 1..20),
        chunk in 1usize..9000,
        pattern in any::<u64>(),
    ) {
        let (mut p, bytes) = encoded_stream(&sizes);
        let mut frames = Vec::new();
        feed_mixed(&mut p.sd, &p.pool, &bytes, chunk, pattern, |f| frames.push(f)).unwrap();
        check_payloads(&frames, &sizes)?;
    }

    /// Arbitrary bytes in lent buffers and our own, mixed at any boundaries, never panic the
    /// decoder (a straddling "frame" with a garbage preamble included).
    #[test]
    fn garbage_in_lent_buffers_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        chunk in 1usize..512,
        pattern in any::<u64>(),
    ) {
        let mut dec = FrameDecoder::new(Limits::default());
        let _ = feed_mixed(&mut dec, &pool(), &bytes, chunk, pattern, drop);
    }

    /// Arbitrary bytes never panic the decoder, whether or not it trusts its transport
    /// (frames flagged transport-checked then skip the payload crc).
    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..512, trust in any::<bool>()) {
        let mut dec = FrameDecoder::new(Limits::default());
        dec.trust_transport(trust);
        let _ = feed(&mut dec, &pool(), &bytes, chunk);
    }

    /// Message frames sent without payload crcs decode to the same payloads in any chunking,
    /// and a decoder that did not agree to it refuses them.
    #[test]
    fn transport_checked_frames_decode_in_any_chunking(sizes in proptest::collection::vec(0usize..3000, 1..12), chunk in 1usize..4000) {
        let mut p = checked_pair((true, true));
        for (i, &n) in sizes.iter().enumerate() {
            p.c.queue(Message::new(3, Buf::from_vec(vec![i as u8; n])), p.now);
        }
        let bytes = drain(&mut p.c, p.now);
        let frames = feed(&mut p.sd, &p.pool, &bytes, chunk).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &n)| vec![i as u8; n]).collect();
        prop_assert_eq!(payloads_of(&frames), want);
        let strict = feed(&mut FrameDecoder::new(Limits::default()), &p.pool, &bytes, chunk);
        prop_assert!(strict.is_err() || sizes.iter().all(|&n| n == 0));
    }
}

// ---- secure mode: sealed frames through the decoder ----

fn sealed_pair(limit: u64) -> (crate::secure::Sealer, crate::secure::Opener) {
    use crate::secure::{hello_digest, SecureConfig, SessionKeys};
    let key = crate::auth::Key::from_hex("00112233445566778899aabbccddeeff").unwrap();
    let cfg = SecureConfig {
        rekey_after_frames: limit,
    };
    let derive = || SessionKeys::derive(&key, &[7; 32], &[9; 32], &hello_digest(b"h"), "c");
    let (sealer, _) = derive().split(true, cfg);
    let (_, opener) = derive().split(false, cfg);
    (sealer, opener)
}

/// Seals `n` messages of growing size (0 to a few KiB, across `INLINE_MAX`) plus an ack.
fn sealed_stream(sealer: &mut crate::secure::Sealer, n: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut stage = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..n {
        let body: Vec<u8> = (0..i * 97).map(|j| (j * 31 + i) as u8).collect();
        let head = FrameHead {
            tag: Tag::Message as u8,
            seq: i as u64 + 1,
            ..FrameHead::default()
        };
        let msg = Message::new(3, Buf::from_vec(body.clone()));
        let kind = frame::TxKind::Message { seq: i as u64 + 1 };
        let f = TxFrame::encode(
            &mut stage,
            head,
            &[],
            kind,
            msg.payload.bufs(),
            frame::Guard::Sealed(sealer),
        );
        assert_eq!(
            f.len(),
            wire::PREAMBLE_LEN + body.len() + crate::secure::TAG_LEN
        );
        bodies.push(body);
    }
    let head = FrameHead {
        tag: Tag::Ack as u8,
        flags: wire::FLAG_ACK_VALID,
        ack: 5,
        ..FrameHead::default()
    };
    TxFrame::encode(
        &mut stage,
        head,
        &[],
        frame::TxKind::Control,
        &[],
        frame::Guard::Sealed(sealer),
    );
    (stage, bodies)
}

#[test]
fn sealed_frames_round_trip_through_the_decoder_in_any_chunking() {
    for chunk in [1, 7, 40, 41, 1500, 1 << 20] {
        let (mut sealer, opener) = sealed_pair(1 << 32);
        let (bytes, bodies) = sealed_stream(&mut sealer, 50);
        let secret = &bodies[20];
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
            "payload must not appear in the clear"
        );
        let mut dec = FrameDecoder::new(Limits::default());
        dec.set_opener(opener);
        let frames = feed(&mut dec, &pool(), &bytes, chunk).unwrap();
        assert_eq!(frames.len(), 51);
        for (f, b) in frames.iter().zip(&bodies) {
            assert_eq!(f.tag, Tag::Message);
            assert_eq!(f.data.to_vec(), *b, "chunk {chunk}");
        }
        assert_eq!(frames[50].tag, Tag::Ack);
        assert_eq!(frames[50].ack(), Some(5));
    }
}

/// Encodes a message frame of `body` as sequence `seq` into `stage`, protected by `guard`.
fn encode_message(stage: &mut Vec<u8>, seq: u64, body: &[u8], guard: frame::Guard<'_>) {
    let head = FrameHead {
        tag: Tag::Message as u8,
        seq,
        ..FrameHead::default()
    };
    let msg = Message::new(3, Buf::from_vec(body.to_vec()));
    TxFrame::encode(
        stage,
        head,
        &[],
        frame::TxKind::Message { seq },
        msg.payload.bufs(),
        guard,
    );
}

/// A large sealed frame across lent buffers is copied together, not gathered: it is opened
/// in place, which needs it contiguous.
#[test]
fn large_sealed_frames_are_not_gathered() {
    let (mut sealer, opener) = sealed_pair(1 << 32);
    let body: Vec<u8> = (0..100_000).map(|j| (j * 7) as u8).collect();
    let mut stage = Vec::new();
    encode_message(&mut stage, 1, &body, frame::Guard::Sealed(&mut sealer));
    let mut dec = FrameDecoder::new(Limits::default());
    dec.set_opener(opener);
    let p = pool();
    let mut frames = Vec::new();
    for piece in [&stage[..30_000], &stage[30_000..70_000], &stage[70_000..]] {
        dec.adopt(lent(piece), &p);
        decode_into(&mut dec, &mut frames);
    }
    assert_eq!(frames.len(), 1);
    assert!(frames[0].data_parts.is_none());
    assert_eq!(frames[0].data.to_vec(), body);
    assert_eq!(dec.gathered_bytes(), 0);
}

#[test]
fn every_flipped_bit_of_a_sealed_frame_is_caught() {
    let (mut sealer, _) = sealed_pair(1 << 32);
    let (bytes, _) = sealed_stream(&mut sealer, 3);
    // Frames 0 (empty), 1 (97 B), 2 (194 B): flip each bit of frame 1.
    let start = wire::PREAMBLE_LEN + crate::secure::TAG_LEN;
    let end = start + wire::PREAMBLE_LEN + 97 + crate::secure::TAG_LEN;
    for i in start..end {
        for bit in 0..8 {
            let mut evil = bytes.clone();
            evil[i] ^= 1 << bit;
            let (_, opener) = sealed_pair(1 << 32);
            let mut dec = FrameDecoder::new(Limits::default());
            dec.set_opener(opener);
            match feed(&mut dec, &pool(), &evil, 4096) {
                // A flipped length may leave the decoder waiting for bytes that never come:
                // nothing was delivered from the altered frame, and the stream is stuck,
                // which the peer time-out then ends.
                Ok(frames) => assert!(frames.len() <= 1, "byte {i} bit {bit}: {frames:?}"),
                Err(e) => assert!(e.is_malformed(), "byte {i} bit {bit}: unexpected fault {e}"),
            }
        }
    }
}

#[test]
fn replayed_reordered_or_dropped_sealed_frames_are_caught() {
    let (mut sealer, _) = sealed_pair(1 << 32);
    let (bytes, bodies) = sealed_stream(&mut sealer, 3);
    let len = |b: usize| wire::PREAMBLE_LEN + b + crate::secure::TAG_LEN;
    let f0 = &bytes[..len(0)];
    let f1 = &bytes[len(0)..len(0) + len(97)];
    let f2 = &bytes[len(0) + len(97)..len(0) + len(97) + len(194)];
    for (name, stream) in [
        ("replay", [f0, f1, f1].concat()),
        ("reorder", [f0, f2, f1].concat()),
        ("drop", [f0, f2].concat()),
    ] {
        let (_, opener) = sealed_pair(1 << 32);
        let mut dec = FrameDecoder::new(Limits::default());
        dec.set_opener(opener);
        let mut got = Vec::new();
        let mut rest = stream.as_slice();
        let p = pool();
        let err = loop {
            let b = dec.read_buf(&p);
            let n = b.extend_from_slice(rest);
            rest = &rest[n..];
            if let Err(e) = dec.decode(|f| {
                got.push(f.data.to_vec());
                Ok(())
            }) {
                break e;
            }
            assert!(!rest.is_empty(), "{name}: no error raised");
        };
        assert!(matches!(err, Fault::Open(_)), "{name}: {err}");
        assert!(got.len() < 3, "{name}");
        for (g, b) in got.iter().zip(&bodies) {
            assert_eq!(
                g, b,
                "{name}: only genuine frames, in order, before the error"
            );
        }
    }
}

#[test]
fn sealed_and_plain_frames_do_not_mix() {
    // A sealed frame on a connection without keys.
    let (mut sealer, opener) = sealed_pair(1 << 32);
    let (bytes, _) = sealed_stream(&mut sealer, 1);
    let mut dec = FrameDecoder::new(Limits::default());
    let err = feed(&mut dec, &pool(), &bytes, 4096).unwrap_err();
    assert!(matches!(err, Fault::Insecure(_)), "{err}");
    // A plaintext message on a secure connection (a forger who cannot seal).
    let mut stage = Vec::new();
    encode_message(&mut stage, 1, b"forged", frame::Guard::Crc);
    let mut dec = FrameDecoder::new(Limits::default());
    dec.set_opener(opener);
    let err = feed(&mut dec, &pool(), &stage, 4096).unwrap_err();
    assert!(matches!(err, Fault::Insecure(_)), "{err}");
    assert!(err.is_integrity() && err.is_malformed());
}

#[test]
fn frames_arriving_while_closing_are_ignored_and_the_close_still_goes_out() {
    let mut p = Pair::new(false);
    p.handshake();
    for i in 0..3 {
        p.s.queue(m(i), p.now);
    }
    let from_server = drain(&mut p.s, p.now);
    p.c.close(0, "marked down");
    assert_eq!(p.c.state(), SessionState::Closed);
    // The server's messages and acks cross our close on the wire.
    for f in feed(&mut p.cd, &p.pool, &from_server, 1500).unwrap() {
        p.c.handle_frame(f, p.now)
            .expect("frames after our close are ignored, not a protocol error");
    }
    assert!(
        msgs(&events(&mut p.c)).is_empty(),
        "nothing dispatched after close"
    );
    let bytes = drain(&mut p.c, p.now);
    let frames = feed(&mut p.sd, &p.pool, &bytes, 1500).unwrap();
    assert_eq!(frames.last().map(|f| f.tag), Some(Tag::Close));
}

// ---- message batches (FEATURE_BATCH) ----

/// Bytes of one plain batch frame holding `payloads` from `first`, ack `ack`.
fn batch_frame(first: u64, ack: u64, payloads: &[&[u8]]) -> Vec<u8> {
    let mut stage = Vec::new();
    let off = TxFrame::open_staged(&mut stage);
    for p in payloads {
        TxFrame::batch_append(&mut stage, 9, &Buf::copy_from_slice(p).into());
    }
    let head = FrameHead {
        tag: Tag::MessageBatch as u8,
        flags: wire::FLAG_ACK_VALID,
        priority: priority::DEFAULT,
        msg_type: payloads.len() as u16,
        seq: first,
        ack,
        ..FrameHead::default()
    };
    let kind = TxKind::Batch {
        first,
        count: payloads.len() as u16,
    };
    TxFrame::close_staged(&mut stage, off, head, kind, frame::Guard::Crc);
    stage
}

#[test]
fn small_messages_travel_in_one_batch_frame_and_arrive_in_order() {
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.s);
    let sent: Vec<Vec<u8>> = (0..100u8).map(|i| vec![i; 1 + i as usize]).collect();
    for (i, s) in sent.iter().enumerate() {
        p.c.queue(Message::new(i as u16, Buf::from_vec(s.clone())), p.now);
    }
    let bytes = drain(&mut p.c, p.now);
    let frames = feed(&mut p.sd, &p.pool, &bytes, 1500).unwrap();
    assert_eq!(frames.len(), 1, "100 small messages, one frame");
    assert_eq!(frames[0].tag, Tag::MessageBatch);
    assert_eq!(frames[0].msg_type, 100);
    for f in frames {
        p.s.handle_frame(f, p.now).unwrap();
    }
    let evs = events(&mut p.s);
    assert_eq!(msgs(&evs), sent);
    let types: Vec<u16> = evs
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Message(m) => Some(m.msg_type),
            _ => None,
        })
        .collect();
    assert_eq!(types, (0..100).collect::<Vec<u16>>());
    assert_eq!(p.s.in_seq(), 100);
    // A 5 KiB message between small ones closes the batch: batch, message, batch.
    p.c.queue(m(1), p.now);
    p.c.queue(m(2), p.now);
    p.c.queue(Message::new(1, Buf::from_vec(vec![7; 5000])), p.now);
    p.c.queue(m(3), p.now);
    p.c.queue(m(4), p.now);
    let bytes = drain(&mut p.c, p.now);
    let tags: Vec<Tag> = feed(&mut p.sd, &p.pool, &bytes, 1500)
        .unwrap()
        .iter()
        .map(|f| f.tag)
        .collect();
    assert_eq!(tags, [Tag::MessageBatch, Tag::Message, Tag::MessageBatch]);
    // A lone small message goes as a plain message frame, as without batching.
    p.c.queue(m(5), p.now);
    let bytes = drain(&mut p.c, p.now);
    let frames = feed(&mut p.sd, &p.pool, &bytes, 1500).unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].tag, Tag::Message);
    assert_eq!(frames[0].msg_type, 7);
    assert_eq!(frames[0].data.to_vec(), m(5).payload.to_vec());
    assert_eq!(bytes.len(), wire::PREAMBLE_LEN + 15 + wire::EPILOGUE_LEN);
}

/// The tags of the frames `p.c` writes now, as the server decodes them.
fn written_tags(p: &mut Pair) -> Vec<(Tag, u16)> {
    let bytes = drain(&mut p.c, p.now);
    feed(&mut p.sd, &p.pool, &bytes, 1500)
        .unwrap()
        .iter()
        .map(|f| (f.tag, f.msg_type))
        .collect()
}

#[test]
fn a_lone_message_goes_as_itself_and_opens_a_batch_with_the_next_one() {
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.s);
    // Two of one priority: a batch of two (its type field counts the records).
    p.c.queue(m(1), p.now);
    p.c.queue(m(2), p.now);
    assert_eq!(written_tags(&mut p), [(Tag::MessageBatch, 2)]);
    // A lone message of another priority goes ahead of the next one as a message frame.
    p.c.queue(m(3).with_priority(priority::HIGH), p.now);
    p.c.queue(m(4), p.now);
    assert_eq!(written_tags(&mut p), [(Tag::Message, 7), (Tag::Message, 7)]);
    p.c.queue(m(5).with_priority(priority::HIGH), p.now);
    p.c.queue(m(6), p.now);
    p.c.queue(m(7), p.now);
    assert_eq!(
        written_tags(&mut p),
        [(Tag::Message, 7), (Tag::MessageBatch, 2)]
    );
    // A lone message waiting when the transport fails is resent once, after what was
    // written before it and not acknowledged.
    p.c.queue(m(8), p.now);
    p.c.queue(m(9), p.now);
    drain(&mut p.c, p.now);
    p.c.queue(m(10), p.now);
    p.reconnect();
    p.c.queue(m(11), p.now);
    let bytes = drain(&mut p.c, p.now);
    for f in feed(&mut p.sd, &p.pool, &bytes, 1500).unwrap() {
        p.s.handle_frame(f, p.now).unwrap();
    }
    let got = msgs(&events(&mut p.s));
    assert_eq!(
        got,
        (1..12).map(|i| m(i).payload.to_vec()).collect::<Vec<_>>()
    );
}

#[test]
fn a_resent_lone_message_never_releases_the_batch_resent_behind_it() {
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.s);
    // Two messages written alone (held as messages), then eight in one batch (held as
    // records in the log); none of it arrives.
    p.c.queue(m(1), p.now);
    drain(&mut p.c, p.now);
    p.c.queue(m(2), p.now);
    drain(&mut p.c, p.now);
    for i in 3..=10 {
        p.c.queue(m(i), p.now);
    }
    drain(&mut p.c, p.now);
    p.reconnect();
    // The resend's first frame arrives and is acknowledged; the transport fails again
    // with the rest on the wire.
    let bytes = drain(&mut p.c, p.now);
    let first = feed(&mut p.sd, &p.pool, &bytes, 1500)
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    p.s.handle_frame(first, p.now).unwrap();
    p.now += Duration::from_millis(50);
    p.s_to_c().unwrap();
    p.reconnect();
    p.c_to_s().unwrap();
    let got = msgs(&events(&mut p.s));
    assert_eq!(
        got,
        (1..=10).map(|i| m(i).payload.to_vec()).collect::<Vec<_>>()
    );
}

#[test]
fn batched_messages_are_resent_exactly_once_after_a_reconnect() {
    let mut p = Pair::new(false);
    p.handshake();
    for i in 0..50 {
        p.c.queue(m(i), p.now);
    }
    // Written, never delivered: the transport dies with the batch on the wire.
    drain(&mut p.c, p.now);
    p.reconnect();
    for i in 50..60 {
        p.c.queue(m(i), p.now);
    }
    p.c_to_s().unwrap();
    let got = msgs(&events(&mut p.s));
    assert_eq!(
        got,
        (0..60).map(|i| m(i).payload.to_vec()).collect::<Vec<_>>()
    );
}

#[test]
fn overlapping_batches_deliver_only_what_is_new() {
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.s);
    let bytes = [
        batch_frame(1, 0, &[b"a", b"b", b"c"]),
        batch_frame(2, 0, &[b"b", b"c", b"d", b"e"]),
        batch_frame(1, 0, &[b"a", b"b"]),
    ]
    .concat();
    for f in feed(&mut p.sd, &p.pool, &bytes, 1500).unwrap() {
        p.s.handle_frame(f, p.now).unwrap();
    }
    let evs = events(&mut p.s);
    assert_eq!(
        msgs(&evs),
        [b"a", b"b", b"c", b"d", b"e"].map(|x| x.to_vec())
    );
    let dups = evs
        .iter()
        .filter(|e| matches!(e, SessionEvent::Duplicate))
        .count();
    assert_eq!(dups, 4, "b, c of the second batch and both of the third");
    // A batch beyond the next expected number is a gap.
    let gap = batch_frame(9, 0, &[b"x"]);
    let f = feed(&mut p.sd, &p.pool, &gap, 1500).unwrap().remove(0);
    assert!(matches!(
        p.s.handle_frame(f, p.now),
        Err(Fault::Protocol(_))
    ));
}

#[test]
fn malformed_batch_is_rejected_before_anything_is_delivered() {
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.s);
    // A record claiming more bytes than the batch holds, with a valid crc: only the record
    // check can catch it, and it must run before the good first record is delivered.
    let mut body = Vec::new();
    body.extend_from_slice(&wire::encode_record_head(1, 9));
    body.push(b'a');
    body.extend_from_slice(&wire::encode_record_head(500, 9));
    body.extend_from_slice(b"short");
    let head = FrameHead {
        tag: Tag::MessageBatch as u8,
        flags: wire::FLAG_ACK_VALID,
        msg_type: 2,
        seq: 1,
        data_len: body.len() as u32,
        ..FrameHead::default()
    };
    let mut bytes = wire::encode_preamble(&head).to_vec();
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&wire::encode_epilogue(wire::crc32c(&body)));
    let f = feed(&mut p.sd, &p.pool, &bytes, 1500).unwrap().remove(0);
    let r = p.s.handle_frame(f, p.now);
    assert!(
        matches!(r, Err(Fault::Wire(wire::WireError::BadBatch(_)))),
        "{r:?}"
    );
    assert!(msgs(&events(&mut p.s)).is_empty());
    assert_eq!(p.s.in_seq(), 0);
}

#[test]
fn without_the_feature_messages_go_singly_and_a_batch_is_refused() {
    let now = Instant::now();
    let mut p = Pair::open_with(unbatched("client", 11), ident("server", 22), now);
    for i in 0..5 {
        p.c.queue(m(i), now);
        p.s.queue(m(i), now);
    }
    // Client does not batch; the server, seeing no FEATURE_BATCH from it, neither.
    for (from, dec) in [(&mut p.c, &mut p.sd), (&mut p.s, &mut p.cd)] {
        let bytes = drain(from, now);
        let frames = feed(dec, &p.pool, &bytes, 1500).unwrap();
        assert_eq!(frames.len(), 5);
        assert!(frames.iter().all(|f| f.tag == Tag::Message));
    }
    // A batch sent anyway is a protocol error.
    let b = batch_frame(6, 0, &[b"x"]);
    let f = feed(&mut p.cd, &p.pool, &b, 1500).unwrap().remove(0);
    assert!(matches!(p.c.handle_frame(f, now), Err(Fault::Protocol(_))));
}

// ---- record blocks encoded by the sender ----

fn small(i: u32) -> Message {
    Message::new(i as u16, Buf::from_vec(vec![i as u8; (i % 97) as usize]))
}

#[test]
fn record_blocks_go_out_by_reference_in_order_with_messages_around_them() {
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.s);
    let batch: Vec<Message> = (0..500).map(small).collect();
    p.c.queue(m(1), p.now);
    p.c.queue_records(RecordBlock::encode(&batch), p.now);
    p.c.queue(Message::new(1, Buf::from_vec(vec![3; 4000])), p.now);
    // The block's bytes are the caller's block: the gather list points at it.
    let mut iov = Vec::new();
    let n = p.c.io_slices(&mut iov, 1024);
    assert!(
        iov.len() >= 3,
        "records sent by reference: {} slices",
        iov.len()
    );
    drop(iov);
    p.c.on_written(0, p.now);
    assert!(n > 500 * 6);
    p.c_to_s().unwrap();
    let got = msgs(&events(&mut p.s));
    let mut want = vec![m(1).payload.to_vec()];
    want.extend(batch.iter().map(|x| x.payload.to_vec()));
    want.push(vec![3; 4000]);
    assert_eq!(got, want);
    // Acknowledged: nothing held any more.
    p.s_to_c().unwrap();
    p.now += Duration::from_secs(1);
    p.s.handle_timeout(p.now).unwrap();
    p.s_to_c().unwrap();
    assert_eq!(p.c.backlog(), 0);
}

#[test]
fn record_blocks_are_resent_exactly_once_after_a_reconnect() {
    let mut p = Pair::new(false);
    p.handshake();
    let first: Vec<Message> = (0..300).map(small).collect();
    p.c.queue_records(RecordBlock::encode(&first), p.now);
    drain(&mut p.c, p.now);
    p.reconnect();
    let second: Vec<Message> = (300..400).map(small).collect();
    p.c.queue_records(RecordBlock::encode(&second), p.now);
    p.c_to_s().unwrap();
    let got = msgs(&events(&mut p.s));
    let want: Vec<Vec<u8>> = first
        .iter()
        .chain(&second)
        .map(|x| x.payload.to_vec())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn record_blocks_for_a_peer_without_batches_go_singly() {
    let now = Instant::now();
    let mut p = Pair::open_with(ident("client", 11), unbatched("server", 22), now);
    events(&mut p.s);
    let batch: Vec<Message> = (0..20).map(small).collect();
    p.c.queue_records(RecordBlock::encode(&batch), now);
    let bytes = drain(&mut p.c, now);
    let frames = feed(&mut p.sd, &p.pool, &bytes, 1500).unwrap();
    assert_eq!(frames.len(), 20);
    assert!(frames.iter().all(|f| f.tag == Tag::Message));
    for f in frames {
        p.s.handle_frame(f, now).unwrap();
    }
    let got = msgs(&events(&mut p.s));
    assert_eq!(
        got,
        batch.iter().map(|x| x.payload.to_vec()).collect::<Vec<_>>()
    );
}

#[test]
fn lossy_record_blocks_are_released_when_written_or_dropped_on_a_fault() {
    let mut p = Pair::new(true);
    p.handshake();
    events(&mut p.c);
    let batch: Vec<Message> = (0..50).map(small).collect();
    p.c.queue_records(RecordBlock::encode(&batch), p.now);
    drain(&mut p.c, p.now);
    let released = released_msgs(&mut p.c, false);
    assert_eq!(released, 50);
    p.c.queue_records(RecordBlock::encode(&batch), p.now);
    p.c.on_fault(false);
    let dropped = released_msgs(&mut p.c, true);
    assert_eq!(dropped, 50);
}

/// Found by the `frame_decoder` fuzz target: decoding stops after a close frame, so bytes
/// behind it are not parsed and `need` says nothing about them; when they filled the buffer,
/// `read_buf` offered no room (a driver would read 0 bytes and take it for end of stream).
#[test]
fn read_buf_offers_room_after_a_close_frame_fills_the_buffer() {
    let tiny = BufPool::new(&PoolConfig {
        buf_size: 256,
        count: 2,
        hugepages: false,
        lock: false,
        prefault: false,
    })
    .unwrap();
    let close = {
        let body = wire::encode_close(&wire::Close {
            code: 1,
            reason: "bye".into(),
        });
        let head = FrameHead {
            tag: Tag::Close as u8,
            front_len: body.len() as u32,
            ..FrameHead::default()
        };
        let mut b = wire::encode_preamble(&head).to_vec();
        b.extend_from_slice(&body);
        b.extend_from_slice(&wire::encode_epilogue(wire::crc32c(&body)));
        b
    };
    let mut dec = FrameDecoder::new(Limits::default());
    let buf = dec.read_buf(&tiny);
    let room = buf.remaining();
    let mut bytes = close.clone();
    bytes.resize(room, 0x5A);
    assert_eq!(buf.extend_from_slice(&bytes), room);
    let mut tags = Vec::new();
    dec.decode(|f| {
        tags.push(f.tag);
        Ok(())
    })
    .unwrap();
    assert_eq!(tags, [Tag::Close]);
    let buf = dec.read_buf(&tiny);
    assert!(buf.remaining() > 0, "no room offered after the close frame");
}

#[test]
fn one_gather_list_offers_about_a_mebibyte_and_the_rest_follows() {
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.s);
    let big = |i: u8| Message::new(1, Buf::from_vec(vec![i; 600 << 10]));
    for i in 0..5 {
        p.c.queue(big(i), p.now);
    }
    p.c.prepare_tx(p.now);
    let mut iov = Vec::new();
    let n = p.c.io_slices(&mut iov, 1024);
    // Frames are offered until a mebibyte is reached: two of the five here.
    assert!(
        n > 1 << 20 && n < 2 * (600 << 10) + 1024,
        "offered {n} bytes"
    );
    drop(iov);
    p.c_to_s().unwrap();
    let got = msgs(&events(&mut p.s));
    assert_eq!(got.len(), 5);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, m)| m == &vec![i as u8; 600 << 10]));
}

/// The segment list a zero-copy stack gets covers exactly the bytes of the `writev` list,
/// with payloads as the caller's own `Buf`s (same memory), also after a short write that
/// stopped inside a payload; the stream it describes delivers every message.
#[test]
fn segments_describe_the_same_bytes_as_io_slices_and_share_payloads() {
    use crate::stack::Segment;
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.s);
    let big = Buf::from_vec((0..5000u32).map(|i| i as u8).collect());
    p.c.queue(m(1), p.now);
    p.c.queue(Message::new(1, big.clone()), p.now);
    p.c.queue(m(2), p.now);
    p.c.prepare_tx(p.now);
    let flat = |p: &mut Pair| {
        let mut iov = Vec::new();
        let n = p.c.io_slices(&mut iov, 1024);
        let bytes: Vec<u8> = iov.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(n, bytes.len());
        bytes
    };
    // (bytes, where the payload starts in them and at which offset of `big`)
    let segs = |p: &mut Pair| {
        let mut segs = Vec::new();
        let n = p.c.segments(&mut segs, 1024);
        let mut bytes = Vec::new();
        let mut shared = None;
        for s in &segs {
            if let Segment::Shared { buf, off } = s {
                assert_eq!(
                    buf.as_ptr(),
                    big.as_ptr(),
                    "the caller's buffer, not a copy"
                );
                shared = Some((bytes.len(), *off));
            }
            bytes.extend_from_slice(s.bytes());
        }
        assert_eq!(n, bytes.len());
        (bytes, shared)
    };
    let before = flat(&mut p);
    let (same, shared) = segs(&mut p);
    assert_eq!(before, same);
    let (at, off) = shared.expect("the large payload goes by reference");
    assert_eq!(off, 0);
    // A short write that ends 100 bytes into the payload.
    let mut wire_bytes = before[..at + 100].to_vec();
    p.c.on_written(at + 100, p.now);
    let rest = flat(&mut p);
    let (rest2, shared) = segs(&mut p);
    assert_eq!(rest, rest2);
    assert_eq!(rest, before[at + 100..]);
    assert_eq!(shared, Some((0, 100)), "the payload resumes at its offset");
    p.c.on_written(rest.len(), p.now);
    assert!(!p.c.has_tx());
    wire_bytes.extend_from_slice(&rest);
    for f in feed(&mut p.sd, &p.pool, &wire_bytes, 1500).unwrap() {
        p.s.handle_frame(f, p.now).unwrap();
    }
    let got = msgs(&events(&mut p.s));
    assert_eq!(
        got,
        vec![m(1).payload.to_vec(), big.to_vec(), m(2).payload.to_vec()]
    );
}

/// A pair whose two transports check integrity (`checked.0` for the client, `.1` for the
/// server), handshaken, each decoder trusting its own transport.
fn checked_pair(checked: (bool, bool)) -> Pair {
    let mut p = Pair::new(false);
    p.c.set_checked_transport(checked.0);
    p.s.set_checked_transport(checked.1);
    p.cd.trust_transport(checked.0);
    p.sd.trust_transport(checked.1);
    p.handshake();
    p
}

/// The (tag, flags, epilogue) of every frame in `bytes` that carries a payload.
fn frame_marks(bytes: &[u8]) -> Vec<(Tag, u8, [u8; 4])> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let p = wire::parse_preamble(&bytes[at..], &Limits::default())
            .unwrap()
            .unwrap();
        let len = p.frame_len();
        let body = p.front_len.get() as usize + p.data_len.get() as usize;
        if body > 0 {
            let e = &bytes[at + len - 4..at + len];
            out.push((
                Tag::try_from(p.tag).unwrap(),
                p.flags,
                [e[0], e[1], e[2], e[3]],
            ));
        }
        at += len;
    }
    out
}

#[test]
fn checked_transports_agree_to_leave_payload_crcs_out() {
    let mut p = checked_pair((true, true));
    assert!(p.c.transport_crc() && p.s.transport_crc());
    // A batch of small messages and a large one sent by reference, both ways.
    for i in 0..5 {
        p.c.queue(m(i), p.now);
    }
    p.c.queue(
        Message::new(9, Buf::from_vec(vec![0xAB; 3 * INLINE_MAX])),
        p.now,
    );
    let bytes = drain(&mut p.c, p.now);
    let marks = frame_marks(&bytes);
    assert!(!marks.is_empty());
    for (tag, flags, epi) in &marks {
        assert!(matches!(tag, Tag::Message | Tag::MessageBatch), "{tag:?}");
        assert_ne!(
            flags & wire::FLAG_TRANSPORT_CHECKED,
            0,
            "{tag:?} not flagged"
        );
        assert_eq!(epi, &[0; 4], "{tag:?} carries a crc");
    }
    for f in feed(&mut p.sd, &p.pool, &bytes, 1500).unwrap() {
        p.s.handle_frame(f, p.now).unwrap();
    }
    let got = msgs(&events(&mut p.s));
    assert_eq!(got.len(), 6);
    assert_eq!(got[5], vec![0xAB; 3 * INLINE_MAX]);
    // Control frames keep their crcs: the close body is checked.
    p.s.queue(m(1), p.now);
    p.s_to_c().unwrap();
    assert_eq!(msgs(&events(&mut p.c)), vec![vec![1; 11]]);
}

#[test]
fn payload_crcs_stay_unless_both_transports_check() {
    for checked in [(true, false), (false, true), (false, false)] {
        let mut p = checked_pair(checked);
        assert!(!p.c.transport_crc() && !p.s.transport_crc(), "{checked:?}");
        p.c.queue(m(3), p.now);
        p.c.queue(
            Message::new(9, Buf::from_vec(vec![7; 2 * INLINE_MAX])),
            p.now,
        );
        let bytes = drain(&mut p.c, p.now);
        for (tag, flags, epi) in frame_marks(&bytes) {
            assert_eq!(
                flags & wire::FLAG_TRANSPORT_CHECKED,
                0,
                "{checked:?} {tag:?}"
            );
            assert_ne!(epi, [0; 4], "{checked:?} {tag:?}: no crc");
        }
        for f in feed(&mut p.sd, &p.pool, &bytes, 1500).unwrap() {
            p.s.handle_frame(f, p.now).unwrap();
        }
        assert_eq!(msgs(&events(&mut p.s)).len(), 2);
    }
}

#[test]
fn a_new_transport_negotiates_again() {
    let mut p = checked_pair((true, true));
    assert!(p.c.transport_crc());
    // The client's next transport does not check (say, another stack): crcs are back.
    p.c.on_fault(false);
    p.s.on_fault(false);
    p.c.set_checked_transport(false);
    p.cd = FrameDecoder::new(Limits::default());
    p.sd = FrameDecoder::new(Limits::default());
    p.sd.trust_transport(true);
    p.handshake();
    assert!(!p.c.transport_crc() && !p.s.transport_crc());
}

#[test]
fn unchecked_frames_are_refused_where_not_agreed() {
    // The client leaves crcs out; a server whose decoder does not trust the transport
    // refuses the frame instead of taking an unchecked payload.
    let mut p = checked_pair((true, true));
    p.c.queue(m(4), p.now);
    let bytes = drain(&mut p.c, p.now);
    let mut strict = FrameDecoder::new(Limits::default());
    let r = feed(&mut strict, &p.pool, &bytes, 1500);
    assert!(
        matches!(&r, Err(Fault::Protocol(why)) if why.contains("payload crc")),
        "{r:?}"
    );
}

#[test]
fn the_transport_flag_on_a_control_frame_is_refused() {
    let body = wire::encode_close(&wire::Close {
        code: 1,
        reason: "bye".into(),
    });
    let head = wire::FrameHead {
        tag: Tag::Close as u8,
        flags: wire::FLAG_TRANSPORT_CHECKED,
        front_len: body.len() as u32,
        ..wire::FrameHead::default()
    };
    let mut bytes = wire::encode_preamble(&head).to_vec();
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(&[0; 4]);
    let mut dec = FrameDecoder::new(Limits::default());
    dec.trust_transport(true);
    let r = feed(&mut dec, &pool(), &bytes, 1500);
    assert!(
        matches!(
            &r,
            Err(Fault::Wire(wire::WireError::MisplacedFlag {
                tag: Tag::Close,
                ..
            }))
        ),
        "{r:?}"
    );
}

#[test]
fn an_unflagged_frame_is_still_checked_on_a_trusted_transport() {
    assert!(matches!(
        corrupted_payload(true),
        Err(Fault::Wire(wire::WireError::PayloadCrc { .. }))
    ));
}

#[test]
fn a_sealed_connection_keeps_its_tags_even_when_both_offer() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, cfg(false), ident("client", 11), now);
    c.set_checked_transport(true);
    c.start_client(now);
    let bytes = drain(&mut c, now);
    let frames = feed(
        &mut FrameDecoder::new(Limits::default()),
        &pool(),
        &bytes,
        99,
    )
    .unwrap();
    let hello = wire::parse_hello(&frames[0].front).unwrap();
    assert_ne!(hello.features & wire::FEATURE_TRANSPORT_CRC, 0, "offered");
    let mut s = Session::new(Role::Server, cfg(false), ident("server", 22), now);
    s.set_checked_transport(true);
    let (sealer, _opener) = sealed_pair(1000);
    s.accept_hello(&hello, Some(sealer), now);
    assert!(!s.transport_crc(), "secure mode seals; no transport crcs");
}

// ---- lossless delivery across cut transports (property) ----

/// One step of [`lossless_sessions_deliver_everything_once_in_order`].
#[derive(Debug, Clone)]
enum Step {
    /// The client queues a message of this many bytes (small ones batch, larger ones go by
    /// reference).
    Queue(usize),
    /// The client writes what it has framed; it is on the wire, not yet delivered.
    Write,
    /// The client writes; everything on the wire reaches the server, whose acks come back.
    Deliver,
    /// The transport dies: of the frames on the wire only the first `frames` arrive, the
    /// server's ack for them comes back first if `ack`, the rest is lost; both reconnect.
    Cut { frames: usize, ack: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..200).prop_map(Step::Queue),
        1 => (300usize..3000).prop_map(Step::Queue),
        3 => Just(Step::Write),
        1 => Just(Step::Deliver),
        2 => (0usize..4, any::<bool>()).prop_map(|(frames, ack)| Step::Cut { frames, ack }),
    ]
}

/// Runs `steps` on a fresh lossless pair, then delivers everything; returns the payloads
/// queued and those the server delivered, in order.
fn run_steps(steps: &[Step]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut p = Pair::new(false);
    p.handshake();
    events(&mut p.s);
    let (mut sent, mut got) = (Vec::new(), Vec::new());
    let mut wire: Vec<Frame> = Vec::new();
    for (i, st) in steps.iter().enumerate() {
        match *st {
            Step::Queue(n) => {
                let payload = vec![i as u8; n];
                sent.push(payload.clone());
                p.c.queue(Message::new(1, Buf::from_vec(payload)), p.now);
            }
            Step::Write => {
                let bytes = drain(&mut p.c, p.now);
                wire.extend(feed(&mut p.sd, &p.pool, &bytes, 1500).unwrap());
            }
            Step::Deliver => {
                let bytes = drain(&mut p.c, p.now);
                wire.extend(feed(&mut p.sd, &p.pool, &bytes, 1500).unwrap());
                for f in wire.drain(..) {
                    p.s.handle_frame(f, p.now).unwrap();
                }
                p.now += Duration::from_millis(50);
                p.s_to_c().unwrap();
            }
            Step::Cut { frames, ack } => {
                for f in wire.drain(..).take(frames) {
                    p.s.handle_frame(f, p.now).unwrap();
                }
                if ack {
                    p.now += Duration::from_millis(50);
                    p.s_to_c().unwrap();
                }
                p.reconnect();
            }
        }
        got.extend(msgs(&events(&mut p.s)));
    }
    for f in wire.drain(..) {
        p.s.handle_frame(f, p.now).unwrap();
    }
    for _ in 0..3 {
        p.c_to_s().unwrap();
        p.now += Duration::from_millis(50);
        p.s_to_c().unwrap();
        got.extend(msgs(&events(&mut p.s)));
    }
    (sent, got)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// A lossless session delivers every queued message exactly once and in order, whatever
    /// mix of lone messages, batches and large messages is on the wire when transports are
    /// cut, and whatever part of it arrived and was acknowledged before each cut.
    #[test]
    fn lossless_sessions_deliver_everything_once_in_order(
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let (sent, got) = run_steps(&steps);
        prop_assert_eq!(got.len(), sent.len());
        prop_assert!(got == sent, "delivered out of order or altered");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any stream cut anywhere into lent and copied pieces, with every straddling message
    /// frame gathered (minimum 1 byte): the same payloads, in order, and nothing pending.
    #[test]
    fn gathering_any_cut_delivers_the_same_payloads(
        sizes in proptest::collection::vec(0usize..5000, 1..12),
        cuts in proptest::collection::vec((1usize..3000, any::<bool>()), 1..40),
    ) {
        let (mut p, bytes) = encoded_stream(&sizes);
        p.sd.set_gather_min(1);
        let mut frames = Vec::new();
        let mut at = 0;
        let mut cuts = cuts.into_iter().cycle();
        while at < bytes.len() {
            let (n, lend) = cuts.next().unwrap_or((1, false));
            let end = (at + n).min(bytes.len());
            if lend {
                p.sd.adopt(lent(&bytes[at..end]), &p.pool);
                at = end;
            } else {
                let b = p.sd.read_buf(&p.pool);
                at += b.extend_from_slice(&bytes[at..end]);
            }
            decode_into(&mut p.sd, &mut frames);
        }
        let got = payloads_of(&frames);
        let want: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, n)| vec![i as u8; *n]).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(p.sd.pending(), 0);
    }
}
