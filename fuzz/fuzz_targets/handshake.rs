//! Fuzzes the handshake and close bodies (`wire::parse_hello`, `wire::parse_close`), and on
//! the way the other stateless wire parsers (`parse_preamble`, `verify_epilogue`).
//!
//! The same input is used three ways:
//!
//! 1. as raw bytes to every parser: none may panic; whatever parses must be canonical:
//!    - a `Hello` that parses re-encodes (`encode_hello` must accept it), parses back
//!      equal, and re-encodes to exactly the input bytes;
//!    - a `Close` that parses re-encodes to exactly the input;
//!    - a preamble that parses has a known tag, a frame length of at least 40 bytes, and
//!      re-encodes from its `head()` to the same 40 bytes when its reserved field is zero;
//!    - `verify_epilogue` accepts exactly the crc of the parts it was given;
//! 2. as a structured `Hello` built with `arbitrary`: `encode_hello` succeeds exactly when
//!    the name fits `MAX_NAME_LEN`, and then `parse_hello` gives back the same value (IPv6
//!    flow info and scope id are not carried and are zeroed first).
#![no_main]

use std::net::SocketAddr;

use arbitrary::{Arbitrary, Unstructured};
use dataplane::wire::{
    self, encode_close, encode_hello, encode_preamble, parse_close, parse_hello, parse_preamble,
    Hello, HelloStatus, Limits, Tag, HELLO_BODY_LEN, MAX_NAME_LEN, PREAMBLE_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    raw(data);
    structured(data);
});

/// Offset of the preamble's reserved field.
const PREAMBLE_RESERVED: std::ops::Range<usize> = 34..36;

fn raw(data: &[u8]) {
    if let Ok(h) = parse_hello(data) {
        assert!(
            h.name.len() <= MAX_NAME_LEN,
            "parsed name longer than the limit"
        );
        let enc = match encode_hello(&h) {
            Ok(b) => b,
            Err(e) => panic!("a parsed hello does not re-encode: {e}; {h:?}"),
        };
        assert_eq!(
            parse_hello(&enc).as_ref(),
            Ok(&h),
            "re-encoded hello parses differently"
        );
        assert_eq!(enc, data, "a parsed hello re-encodes to other bytes");
    }

    if let Ok(c) = parse_close(data) {
        assert_eq!(
            encode_close(&c),
            data,
            "a parsed close does not re-encode to its input"
        );
    }

    for lim in [
        Limits::default(),
        Limits {
            max_front: 0,
            max_data: 0,
        },
    ] {
        match parse_preamble(data, &lim) {
            Ok(None) => assert!(
                data.len() < PREAMBLE_LEN,
                "complete preamble reported short"
            ),
            Ok(Some(p)) => {
                let tag = p.tag();
                assert!(tag.is_ok(), "parse_preamble accepted an unknown tag");
                assert!(p.frame_len() >= PREAMBLE_LEN);
                let head = p.head();
                assert!(head.front_len <= lim.max_front && head.data_len <= lim.max_data);
                if let Ok(Tag::Ack | Tag::Keepalive | Tag::KeepaliveAck) = tag {
                    assert_eq!(p.frame_len(), PREAMBLE_LEN, "control frame with a payload");
                }
                if data[PREAMBLE_RESERVED] == [0, 0] {
                    assert_eq!(encode_preamble(&head)[..], data[..PREAMBLE_LEN]);
                }
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }

    // Epilogue: the first up-to-4 bytes are the epilogue, the rest is split in two parts.
    let (ep, parts) = data.split_at(data.len().min(4));
    let mid = parts.len() / 2;
    let (a, b) = parts.split_at(mid);
    let r = wire::verify_epilogue([a, b], ep);
    let crc = wire::payload_crc([parts]);
    let expect_ok = ep.len() == 4 && ep == crc.to_le_bytes();
    assert_eq!(
        r.is_ok(),
        expect_ok,
        "verify_epilogue disagrees with payload_crc"
    );
}

/// A `Hello` with every field chosen by the fuzzer.
#[derive(Arbitrary, Debug)]
struct ArbHello {
    proto_version: u16,
    entity_type: u8,
    status: u8,
    features: u64,
    required: u64,
    session_id: u64,
    connect_seq: u64,
    in_seq: u64,
    lossless: bool,
    addr: Option<SocketAddr>,
    name: String,
    lane: u32,
    conn_tag: u16,
}

fn structured(data: &[u8]) {
    let Ok(a) = ArbHello::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let status = match a.status % 5 {
        0 => HelloStatus::Ok,
        1 => HelloStatus::VersionMismatch,
        2 => HelloStatus::FeatureMismatch,
        3 => HelloStatus::Refused,
        _ => HelloStatus::SessionReset,
    };
    // The wire carries no IPv6 flow info / scope id: compare against the value without them.
    let addr = a.addr.map(|addr| match addr {
        SocketAddr::V6(v6) => SocketAddr::new(std::net::IpAddr::V6(*v6.ip()), v6.port()),
        v4 => v4,
    });
    let h = Hello {
        proto_version: a.proto_version,
        entity_type: a.entity_type,
        status,
        features: a.features,
        required: a.required,
        session_id: a.session_id,
        connect_seq: a.connect_seq,
        in_seq: a.in_seq,
        lossless: a.lossless,
        addr,
        name: a.name,
        lane: a.lane,
        conn_tag: a.conn_tag,
    };
    match encode_hello(&h) {
        Ok(b) => {
            assert!(
                h.name.len() <= MAX_NAME_LEN,
                "encode_hello accepted a long name"
            );
            assert_eq!(b.len(), HELLO_BODY_LEN + h.name.len());
            assert_eq!(parse_hello(&b).as_ref(), Ok(&h), "hello round trip differs");
        }
        Err(_) => assert!(
            h.name.len() > MAX_NAME_LEN,
            "encode_hello refused a valid hello"
        ),
    }
}
