//! Fuzzes the receive path: arbitrary bytes, cut into arbitrary read sizes, go through
//! `FrameDecoder` into a client or server `Session`, exactly as a messenger worker feeds a
//! socket's bytes.
//!
//! Input layout:
//!
//! - byte 0, mode bits:
//!   - `0b11`: which session receives the bytes: `0` a fresh server (standby: the bytes are a
//!     connecting client, the first frame must be its hello), `1` a client that sent its
//!     hello (the bytes are the server's reply and what follows), `2` a server and `3` a
//!     client whose handshake is done (state `Open`: messages, acks, keepalives, close);
//!   - `0x04`: re-seal the checksums of the stream (see `dataplane_fuzz::reseal`) so
//!     mutations reach the checks behind the crcs;
//!   - `0x08`: lossy session policy (lossless otherwise);
//!   - `0x10`: small receive limits (4 KiB front, 64 KiB data) instead of the defaults, and
//!     every message frame that straddles into a lent piece is gathered (gather minimum 1
//!     byte instead of 64 KiB);
//!   - `0x20`: (variant 1) the client has a key and authenticates: its hello went out with
//!     an `Auth` frame and it expects the server's `Auth` challenge;
//!     (variants 2, 3) before the input, both sides exchanged messages and left some
//!     unacknowledged, so acks and resends have something to act on;
//!   - `0x40`: (variants 2, 3) then the transport failed: the input is a *new* connection
//!     (client: the server's hello-reply to a reconnect; server: the client's hello),
//!     exercising session resume;
//!   - `0x80`: tiny receive pool (2 chunks of 256 bytes), so frames spill to heap buffers.
//! - bytes 1..5: read sizes, used in turn (`0` means 4096); an odd size hands its piece to
//!   the decoder as a buffer a stack lends (`FrameDecoder::adopt`, zero-copy receive), an
//!   even one is read into the decoder's own buffers.
//! - the rest: the byte stream from the peer.
//!
//! When a fault ends a connection the harness does what the worker does (`on_fault`, and a
//! reconnecting client sends a fresh hello) and keeps feeding the rest of the input to a new
//! decoder, so one input can walk through several connections of one session.
//!
//! Invariant: no panic (no overflow, no slice out of bounds, no failed debug assertion),
//! `read_buf` always offers room, and every error is reported as a `Fault`.
#![no_main]

use std::time::{Duration, Instant};

use dataplane::messenger::protocol::{FrameDecoder, Role, Session, SessionState};
use dataplane_fuzz::{
    auth_client_ident, client_ident, config, dispatch, drain, feed, feed_lent, limits, pool,
    reseal, server_ident, Pair,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| run(data));

fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((sizes, stream)) = rest.split_at_checked(4) else {
        return;
    };
    let variant = mode & 0b11;
    let lossy = mode & 0x08 != 0;
    let lim = limits(mode & 0x10 != 0);
    let traffic = mode & 0x20 != 0;
    let reconnect = mode & 0x40 != 0;
    let pool = if mode & 0x80 != 0 {
        pool(256, 2)
    } else {
        pool(4096, 16)
    };
    let mut stream = stream.to_vec();
    if mode & 0x04 != 0 {
        reseal(&mut stream);
    }

    let mut now = Instant::now();
    let (mut session, local) = match variant {
        0 => (
            Session::new(Role::Server, config(lossy), server_ident(), now),
            server_ident(),
        ),
        1 => {
            let local = if traffic {
                auth_client_ident()
            } else {
                client_ident()
            };
            let mut c = Session::new(Role::Client, config(lossy), local.clone(), now);
            c.start_client(now);
            drain(&mut c, now);
            (c, local)
        }
        _ => {
            let mut p = Pair::new(lossy, lim, pool.clone(), now);
            if let Err(f) = p.prepare(traffic, reconnect) {
                // The fixed set-up is valid traffic; failing it is a finding.
                panic!("harness set-up failed on valid traffic: {f}");
            }
            p.clear_events();
            now = p.now;
            if variant == 2 {
                (p.s, server_ident())
            } else {
                (p.c, client_ident())
            }
        }
    };
    while session.poll_event().is_some() {}

    let small = mode & 0x10 != 0;
    let new_decoder = || {
        let mut d = FrameDecoder::new(lim);
        if small {
            d.set_gather_min(1);
        }
        d
    };
    let mut dec = new_decoder();
    let mut sizes = sizes
        .iter()
        .map(|&b| if b == 0 { 4096 } else { usize::from(b) })
        .cycle();
    let mut rest: &[u8] = &stream;
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).min(rest.len());
        let (piece, tail) = rest.split_at(n);
        rest = tail;
        let on_frame = |f| dispatch(&mut session, &local, f, now);
        let r = if n % 2 == 1 {
            feed_lent(&mut dec, &pool, piece, on_frame)
        } else {
            feed(&mut dec, &pool, piece, on_frame)
        };
        now += Duration::from_millis(1);
        let r = r.and_then(|()| session.handle_timeout(now));
        if let Err(fault) = r {
            // Every error must be a Fault that can be shown and classified.
            let _ = fault.to_string();
            let _ = fault.is_malformed();
            if session.on_fault(fault.is_permanent()) == SessionState::Closed {
                break;
            }
            dec = new_decoder();
            if session.role() == Role::Client {
                session.start_client(now);
            }
        }
        drain(&mut session, now);
        while session.poll_event().is_some() {}
    }
    dec.release_idle();
}
