//! Writes the seed corpus of the fuzz targets (`fuzz/corpus/<target>/seed-*`): valid frames
//! and bodies made with the wire encoder and real sessions, so the fuzzer starts past the
//! magic, crc and handshake checks.
//!
//! Run from `fuzz/`: `cargo run --example gen_corpus` (plain stable cargo, no sanitizer).
//! Deterministic: the same library produces the same files.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use dataplane::wire::{self, Close, FrameHead, Hello, HelloStatus, Tag};
use dataplane_fuzz::session_ops::{Input, Op};
use dataplane_fuzz::{drain, feed, limits, pattern_message, pool, Pair};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    frame_decoder(&root.join("frame_decoder"))?;
    handshake(&root.join("handshake"))?;
    session(&root.join("session"))?;
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("seed-{name}")), bytes)
}

fn frame(tag: Tag, flags: u8, seq: u64, ack: u64, front: &[u8], data: &[u8]) -> Vec<u8> {
    let head = FrameHead {
        tag: tag as u8,
        flags,
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

fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let body = wire::encode_close(&Close {
        code,
        reason: reason.into(),
    });
    frame(Tag::Close, 0, 0, 0, &body, &[])
}

/// Mode byte, four read sizes, stream.
fn fd_input(mode: u8, sizes: [u8; 4], stream: &[u8]) -> Vec<u8> {
    let mut v = vec![mode];
    v.extend_from_slice(&sizes);
    v.extend_from_slice(stream);
    v
}

fn frame_decoder(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let now = Instant::now();
    let pool = pool(4096, 16);

    // 0: fresh server; the stream is a client's hello, then two messages and a keepalive.
    let mut p = Pair::new(false, limits(false), pool.clone(), now);
    p.c.start_client(now);
    let mut client = drain(&mut p.c, now);
    p.c_to_s_bytes(&client)?;
    p.s_to_c()?;
    p.c.queue(pattern_message(1, 127, 20, 1), now);
    p.c.queue(pattern_message(2, 127, 400, 3), now);
    client.extend(drain(&mut p.c, now));
    client.extend(frame(Tag::Keepalive, 1, 99, 0, &[], &[]));
    write(dir, "server-hello", &fd_input(0x00, [7, 40, 0, 3], &client))?;

    // 1: client waiting for the reply; the stream is the server's reply, a message, a close.
    let mut p = Pair::new(false, limits(false), pool.clone(), now);
    p.c.start_client(now);
    p.c_to_s()?;
    let mut server = drain(&mut p.s, now);
    server.extend(frame(Tag::Message, 1, 1, 0, &[], b"hello world"));
    server.extend(close_frame(0, "bye"));
    write(
        dir,
        "client-reply",
        &fd_input(0x01, [0, 1, 64, 200], &server),
    )?;
    // 1 with auth: the server's challenge (a wrong proof: the fuzzer cannot forge one), then
    // its reply.
    let mut s = frame(
        Tag::Auth,
        0,
        0,
        0,
        &wire::encode_auth(&[7; 32], &[9; 32]),
        &[],
    );
    s.extend_from_slice(&server);
    write(dir, "client-auth", &fd_input(0x21, [0, 0, 0, 0], &s))?;

    // 2/3: open sessions; the stream is the peer's messages, acks and keepalives.
    for (variant, traffic) in [(2u8, false), (2, true), (3, false), (3, true)] {
        let mut p = Pair::new(false, limits(false), pool.clone(), now);
        p.prepare(traffic, false)?;
        let peer = if variant == 2 { &mut p.c } else { &mut p.s };
        let base = if traffic { 3 } else { 0 };
        for i in 0..3u16 {
            peer.queue(pattern_message(100 + i, 127, 16 << i, 1), now);
        }
        let mut s = drain(peer, now);
        // Explicit ack of what the fuzzed side sent, keepalive, its answer, a duplicate.
        let acked = if traffic && variant == 2 {
            2
        } else if traffic {
            5
        } else {
            0
        };
        s.extend(frame(Tag::Ack, 1, 0, acked, &[], &[]));
        s.extend(frame(Tag::Keepalive, 1, 42, acked, &[], &[]));
        s.extend(frame(Tag::KeepaliveAck, 0, 42, 0, &[], &[]));
        s.extend(frame(Tag::Message, 1, base + 1, acked, &[], b"dup"));
        s.extend(close_frame(7, "done"));
        let mode = variant | if traffic { 0x20 } else { 0 };
        let name = format!(
            "open-{}{}",
            if variant == 2 { "server" } else { "client" },
            if traffic { "-traffic" } else { "" }
        );
        write(dir, &name, &fd_input(mode, [13, 0, 2, 90], &s))?;
    }

    // Reconnects (2|3 with traffic and reconnect): the new connection's handshake.
    let mut p = Pair::new(false, limits(false), pool.clone(), now);
    let hello = p.prepare(true, true)?;
    write(
        dir,
        "reconnect-server",
        &fd_input(0x62, [0, 0, 0, 0], &hello),
    )?;
    p.c_to_s_bytes(&hello)?;
    let reply = drain(&mut p.s, now + Duration::from_millis(1));
    write(
        dir,
        "reconnect-client",
        &fd_input(0x63, [5, 0, 0, 0], &reply),
    )?;

    // Small limits, re-sealed checksums, tiny pool: one frame larger than a chunk.
    let big = frame(Tag::Message, 1, 1, 0, &[], &[0x5A; 3000]);
    write(
        dir,
        "open-server-big",
        &fd_input(0x02 | 0x04 | 0x10 | 0x80, [255, 0, 1, 9], &big),
    )?;
    Ok(())
}

fn handshake(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let base = Hello {
        proto_version: u16::from(wire::VERSION),
        entity_type: 1,
        status: HelloStatus::Ok,
        features: 6,
        required: 0,
        session_id: 11,
        connect_seq: 1,
        in_seq: 0,
        lossless: true,
        addr: None,
        name: "client".into(),
        lane: 0,
        conn_tag: 0,
    };
    write(dir, "hello", &wire::encode_hello(&base)?)?;
    let v4: SocketAddr = "10.1.2.3:6800".parse()?;
    let h = Hello {
        status: HelloStatus::SessionReset,
        addr: Some(v4),
        lossless: false,
        name: "osd.12".into(),
        lane: 3,
        conn_tag: 0,
        ..base.clone()
    };
    write(dir, "hello-v4", &wire::encode_hello(&h)?)?;
    let v6: SocketAddr = "[fe80::1]:3300".parse()?;
    let h = Hello {
        addr: Some(v6),
        name: "ünïcode-✓".into(),
        in_seq: u64::MAX,
        ..base.clone()
    };
    write(dir, "hello-v6", &wire::encode_hello(&h)?)?;
    let c = wire::encode_close(&Close {
        code: 3,
        reason: "shutting down".into(),
    });
    write(dir, "close", &c)?;
    write(
        dir,
        "preamble",
        &frame(Tag::Message, 1, 9, 8, &[], b"payload"),
    )?;
    Ok(())
}

/// Session seeds: byte strings whose decoding (with `arbitrary`, as the target does) is a
/// useful op sequence. Found by a deterministic search, so they stay valid for the
/// `arbitrary` version in `Cargo.lock`.
fn session(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    type Want = fn(&Input) -> bool;
    let wants: [(&str, Want); 3] = [
        ("traffic", |i| {
            !i.lossy
                && count(i, |o| matches!(o, Op::Queue { .. })) >= 3
                && count(i, |o| matches!(o, Op::Flush | Op::Deliver { .. })) >= 2
                && count(i, |o| matches!(o, Op::Write { .. })) >= 1
                && count(i, |o| {
                    matches!(
                        o,
                        Op::Garbage { .. }
                            | Op::Inject { .. }
                            | Op::Close { .. }
                            | Op::Fault { .. }
                    )
                }) == 0
        }),
        ("reconnect", |i| {
            !i.lossy
                && count(i, |o| matches!(o, Op::Queue { .. })) >= 2
                && count(i, |o| matches!(o, Op::Fault { permanent: false })) >= 1
                && count(i, |o| matches!(o, Op::Flush)) >= 2
                && count(i, |o| {
                    matches!(
                        o,
                        Op::Garbage { .. }
                            | Op::Inject { .. }
                            | Op::Close { .. }
                            | Op::Fault { permanent: true }
                    )
                }) == 0
        }),
        ("lossy-close", |i| {
            i.lossy
                && count(i, |o| matches!(o, Op::Queue { .. })) >= 2
                && count(i, |o| matches!(o, Op::Close { .. } | Op::Tick { .. })) >= 2
        }),
    ];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for (name, want) in wants {
        for _ in 0..2_000_000 {
            let mut bytes = vec![0u8; 96];
            for b in bytes.iter_mut() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                *b = rng as u8;
            }
            if let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(&bytes)) {
                if input.ops.len() <= 24 && want(&input) {
                    write(dir, name, &bytes)?;
                    break;
                }
            }
        }
    }
    Ok(())
}

fn count(i: &Input, f: impl Fn(&Op) -> bool) -> usize {
    i.ops.iter().filter(|o| f(o)).count()
}

/// Delivery of given bytes to the server of a pair (for building seeds).
trait DeliverBytes {
    fn c_to_s_bytes(&mut self, bytes: &[u8]) -> Result<(), dataplane::messenger::protocol::Fault>;
}

impl DeliverBytes for Pair {
    fn c_to_s_bytes(&mut self, bytes: &[u8]) -> Result<(), dataplane::messenger::protocol::Fault> {
        let local = dataplane_fuzz::server_ident();
        let (s, now) = (&mut self.s, self.now);
        feed(&mut self.sd, &self.pool, bytes, |f| {
            dataplane_fuzz::dispatch(s, &local, f, now)
        })
    }
}
