//! Whole-frame tests across the submodules: encode a frame as the send path
//! would, then receive it as the receive path would.

use super::*;
use proptest::prelude::*;

/// A received frame: preamble, front segment, data segment.
type Frame<'a> = (&'a Preamble, &'a [u8], &'a [u8]);

/// Receives one frame from `buf`: preamble, payload slices, epilogue check.
/// Returns None if the frame is incomplete.
fn receive<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<Frame<'a>>, WireError> {
    let Some(p) = parse_preamble(buf, limits)? else {
        return Ok(None);
    };
    let Some(frame) = buf.get(..p.frame_len()) else {
        return Ok(None);
    };
    let front_end = PREAMBLE_LEN + p.front_len.get() as usize;
    let payload_end = PREAMBLE_LEN + p.payload_len();
    let front = &frame[PREAMBLE_LEN..front_end];
    let data = &frame[front_end..payload_end];
    if p.payload_len() > 0 {
        verify_epilogue([front, data], &frame[payload_end..])?;
    }
    Ok(Some((p, front, data)))
}

fn send(h: &FrameHead, front: &[u8], data_parts: &[&[u8]]) -> Vec<u8> {
    let mut out = encode_preamble(h).to_vec();
    out.extend_from_slice(front);
    for d in data_parts {
        out.extend_from_slice(d);
    }
    if !front.is_empty() || data_parts.iter().any(|d| !d.is_empty()) {
        let crc = payload_crc(std::iter::once(front).chain(data_parts.iter().copied()));
        out.extend_from_slice(&encode_epilogue(crc));
    }
    out
}

#[test]
fn hello_frame_end_to_end() {
    let hello = Hello {
        proto_version: 1,
        entity_type: 1,
        status: HelloStatus::Ok,
        features: 3,
        required: 1,
        session_id: 77,
        connect_seq: 0,
        in_seq: 0,
        lossless: true,
        addr: None,
        name: "client.1".to_owned(),
        lane: 0,
        conn_tag: 0,
    };
    let body = encode_hello(&hello).unwrap();
    let h = FrameHead {
        tag: Tag::Hello as u8,
        front_len: body.len() as u32,
        ..FrameHead::default()
    };
    let wire = send(&h, &body, &[]);
    assert_eq!(wire.len(), PREAMBLE_LEN + body.len() + EPILOGUE_LEN);
    let (p, front, data) = receive(&wire, &Limits::default()).unwrap().unwrap();
    assert_eq!(p.tag(), Ok(Tag::Hello));
    assert!(data.is_empty());
    assert_eq!(parse_hello(front), Ok(hello));
}

#[test]
fn corrupted_payload_is_caught_end_to_end() {
    let h = FrameHead {
        tag: Tag::Message as u8,
        front_len: 3,
        data_len: 4,
        ..FrameHead::default()
    };
    let mut wire = send(&h, b"abc", &[b"de", b"fg"]);
    assert!(receive(&wire, &Limits::default()).unwrap().is_some());
    wire[PREAMBLE_LEN + 5] ^= 0x01;
    assert!(matches!(
        receive(&wire, &Limits::default()),
        Err(WireError::PayloadCrc { .. })
    ));
}

proptest! {
    #[test]
    fn prop_message_frames_round_trip(
        seq in any::<u64>(),
        front in proptest::collection::vec(any::<u8>(), 0..64),
        data in proptest::collection::vec(any::<u8>(), 0..256),
        cut in any::<prop::sample::Index>(),
    ) {
        let h = FrameHead {
            tag: Tag::Message as u8,
            seq,
            front_len: front.len() as u32,
            data_len: data.len() as u32,
            ..FrameHead::default()
        };
        let c = cut.index(data.len() + 1);
        let wire = send(&h, &front, &[&data[..c], &data[c..]]);
        // Every strict prefix is "need more bytes", never an error.
        for n in 0..wire.len() {
            prop_assert!(matches!(receive(&wire[..n], &Limits::default()), Ok(None)));
        }
        let (p, f, d) = receive(&wire, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(p.head(), h);
        prop_assert_eq!(f, &front[..]);
        prop_assert_eq!(d, &data[..]);
    }
}
