//! Fuzzes the secure-mode opener: a `FrameDecoder` in secure mode (an `Opener` installed),
//! fed either arbitrary bytes or a genuine stream of sealed frames that the input alters.
//!
//! Input layout:
//!
//! - byte 0, mode bits:
//!   - `0x01`: a genuine sealed stream altered by the input (otherwise the rest of the input
//!     is the raw byte stream);
//!   - `0x02`: small receive limits (4 KiB front, 64 KiB data);
//!   - `0x04`: after altering, re-seal the preamble crcs so changed headers reach the AEAD
//!     check instead of stopping at the crc;
//!   - bits 4..8: read size, `(b >> 4) * 97 + 1` bytes per read.
//! - genuine mode: byte 1 is the frame count (1..=8), bytes 2..4 the offset where the
//!   alteration starts; the rest is XORed onto the stream from there.
//!
//! Invariants: no panic; in genuine mode every frame the decoder delivers is exactly the
//! genuine frame at that position (an altered frame is never accepted: no forgery), and an
//! unaltered stream is delivered whole without error.
#![no_main]

use dataplane::messenger::protocol::{Frame, FrameDecoder};
use dataplane::secure::{hello_digest, Opener, Sealer, SecureConfig, SessionKeys, TAG_LEN};
use dataplane::wire::{self, FrameHead, Tag, PREAMBLE_CRC_OFFSET, PREAMBLE_LEN};
use dataplane_fuzz::{limits, pool};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| run(data));

fn keys() -> (Sealer, Opener) {
    let key = match dataplane::Key::from_hex("000102030405060708090a0b0c0d0e0f") {
        Ok(k) => k,
        Err(e) => panic!("fuzz harness: fixed test key refused: {e}"),
    };
    let derive = || SessionKeys::derive(&key, &[1; 32], &[2; 32], &hello_digest(b"h"), "c");
    let (sealer, _) = derive().split(true, SecureConfig::default());
    let (_, opener) = derive().split(false, SecureConfig::default());
    (sealer, opener)
}

/// One genuine sealed message frame: preamble, ciphertext, tag.
fn sealed_frame(sealer: &mut Sealer, i: usize, len: usize) -> (Vec<u8>, Vec<u8>) {
    let body: Vec<u8> = (0..len).map(|j| (j * 7 + i * 13) as u8).collect();
    let head = FrameHead {
        tag: Tag::Message as u8,
        flags: wire::FLAG_SEALED | wire::FLAG_ACK_VALID,
        seq: i as u64 + 1,
        ack: i as u64,
        msg_type: 9,
        data_len: len as u32,
        ..FrameHead::default()
    };
    let mut frame = wire::encode_preamble(&head).to_vec();
    frame.extend_from_slice(&body);
    let (aad, payload) = frame.split_at_mut(PREAMBLE_LEN);
    let tag = sealer.seal(aad, payload);
    frame.extend_from_slice(&tag);
    (frame, body)
}

/// Re-seals each preamble crc, walking frames by their (possibly altered) lengths.
fn reseal_preambles(stream: &mut [u8]) {
    let mut off = 0usize;
    while stream.len().saturating_sub(off) >= PREAMBLE_LEN {
        let pre = &mut stream[off..off + PREAMBLE_LEN];
        let crc = wire::crc32c(&pre[..PREAMBLE_CRC_OFFSET]);
        pre[PREAMBLE_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
        let front = u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as usize;
        let data = u32::from_le_bytes([pre[12], pre[13], pre[14], pre[15]]) as usize;
        off = off
            .saturating_add(PREAMBLE_LEN)
            .saturating_add(front)
            .saturating_add(data)
            .saturating_add(TAG_LEN);
    }
}

fn decode_all(dec: &mut FrameDecoder, bytes: &[u8], read: usize, out: &mut Vec<Frame>) -> bool {
    let p = pool(4096, 8);
    for piece in bytes.chunks(read.max(1)) {
        let mut rest = piece;
        while !rest.is_empty() {
            let buf = dec.read_buf(&p);
            let n = buf.extend_from_slice(rest);
            assert!(
                n > 0,
                "FrameDecoder::read_buf offered a buffer with no room"
            );
            rest = &rest[n..];
            if dec
                .decode(|f| {
                    out.push(f);
                    Ok(())
                })
                .is_err()
            {
                return false;
            }
        }
    }
    true
}

fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let read = usize::from(mode >> 4) * 97 + 1;
    let (mut sealer, opener) = keys();
    let mut dec = FrameDecoder::new(limits(mode & 0x02 != 0));
    dec.set_opener(opener);
    let mut frames = Vec::new();
    if mode & 0x01 == 0 {
        decode_all(&mut dec, rest, read, &mut frames);
        return;
    }
    if rest.len() < 3 {
        return;
    }
    let count = usize::from(rest[0] % 8) + 1;
    let start = usize::from(u16::from_le_bytes([rest[1], rest[2]]));
    let mask = &rest[3..];
    let mut stream = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..count {
        let (f, b) = sealed_frame(&mut sealer, i, [0, 1, 12, 100, 257, 1000, 4000][i % 7]);
        stream.extend_from_slice(&f);
        bodies.push(b);
    }
    let genuine = stream.clone();
    for (i, m) in mask.iter().enumerate() {
        if let Some(b) = stream.get_mut(start + i) {
            *b ^= m;
        }
    }
    if mode & 0x04 != 0 {
        reseal_preambles(&mut stream);
    }
    let ok = decode_all(&mut dec, &stream, read, &mut frames);
    for (j, f) in frames.iter().enumerate() {
        let Some(body) = bodies.get(j) else {
            panic!("frame {j} delivered but only {count} were sealed: a forgery was accepted");
        };
        assert!(
            f.tag == Tag::Message
                && f.seq == j as u64 + 1
                && f.ack == j as u64
                && f.msg_type == 9
                && f.data.to_vec() == *body,
            "frame {j} delivered altered: {f:?}"
        );
    }
    if stream == genuine {
        assert!(
            ok && frames.len() == count,
            "the genuine stream was not delivered whole"
        );
    }
}
