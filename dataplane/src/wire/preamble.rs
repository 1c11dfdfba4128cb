//! The fixed 40-byte frame preamble: layout, encoding and receive-side validation.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::WireError;
use super::tag::Tag;
use super::EPILOGUE_LEN;

/// Preamble magic; the bytes `"DPLN"` on the wire (little-endian `u32`).
pub const MAGIC: u32 = 0x4E4C_5044;
/// The wire-format version this build speaks.
pub const VERSION: u8 = 1;
/// Size of [`Preamble`] on the wire.
pub const PREAMBLE_LEN: usize = 40;
/// Offset of the preamble's `crc` field; the crc covers bytes `0..PREAMBLE_CRC_OFFSET`.
pub const PREAMBLE_CRC_OFFSET: usize = 36;
/// Flag: the preamble's `ack` field carries a piggy-backed acknowledgement.
pub const FLAG_ACK_VALID: u8 = 0x01;
/// Flag bit: the payload is sealed (secure mode). It is encrypted, and a 16-byte
/// authentication tag follows it in place of the crc epilogue, even when the payload is empty.
pub const FLAG_SEALED: u8 = 0x02;
/// Flag bit: the payload's integrity is checked by the transport (the CRC every RoCE and
/// InfiniBand packet carries end to end), so the sender did not compute the payload crc: the
/// epilogue is sent as zero and not checked. Only on `Message` and `MessageBatch` frames of a
/// connection whose two ends offered [`FEATURE_TRANSPORT_CRC`](crate::wire::FEATURE_TRANSPORT_CRC),
/// never with [`FLAG_SEALED`]; a receiver that did not offer it rejects the frame.
pub const FLAG_TRANSPORT_CHECKED: u8 = 0x04;
/// Every flag bit this build understands; a preamble with any other bit set is rejected.
pub const KNOWN_FLAGS: u8 = FLAG_ACK_VALID | FLAG_SEALED | FLAG_TRANSPORT_CHECKED;

/// The frame preamble as it lies on the wire: 40 bytes, little-endian, no padding.
///
/// Received preambles are validated and viewed in place by [`parse_preamble`];
/// fields are raw wire values (e.g. `tag` may be any byte before validation).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy, PartialEq, Eq,
)]
pub struct Preamble {
    /// Must equal [`MAGIC`].
    pub magic: U32,
    /// Must equal [`VERSION`].
    pub version: u8,
    /// Frame kind, a [`Tag`] value.
    pub tag: u8,
    /// Flag bits, a subset of [`KNOWN_FLAGS`].
    pub flags: u8,
    /// Scheduling priority of the frame (opaque to the wire layer).
    pub priority: u8,
    /// Length of the front segment in bytes.
    pub front_len: U32,
    /// Length of the data segment in bytes.
    pub data_len: U32,
    /// Message sequence number (or keepalive stamp).
    pub seq: U64,
    /// Highest seq received in order; meaningful with [`FLAG_ACK_VALID`] or on [`Tag::Ack`].
    pub ack: U64,
    /// Application message type (only meaningful for [`Tag::Message`]).
    pub msg_type: U16,
    /// Sent as zero; ignored by the receiver (still covered by the crc).
    pub reserved: U16,
    /// crc32c of bytes `0..36` of this preamble.
    pub crc: U32,
}

const _: () = assert!(core::mem::size_of::<Preamble>() == PREAMBLE_LEN);

/// Plain owned description of a frame header, used when encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameHead {
    /// Frame kind as its wire byte (`Tag::X as u8`).
    pub tag: u8,
    /// Flag bits.
    pub flags: u8,
    /// Scheduling priority.
    pub priority: u8,
    /// Application message type.
    pub msg_type: u16,
    /// Sequence number.
    pub seq: u64,
    /// Acknowledged sequence number.
    pub ack: u64,
    /// Front segment length.
    pub front_len: u32,
    /// Data segment length.
    pub data_len: u32,
}

impl Preamble {
    /// Builds a preamble with magic/version set and the crc computed.
    pub fn new(h: &FrameHead) -> Preamble {
        let mut p = Preamble {
            magic: U32::new(MAGIC),
            version: VERSION,
            tag: h.tag,
            flags: h.flags,
            priority: h.priority,
            front_len: U32::new(h.front_len),
            data_len: U32::new(h.data_len),
            seq: U64::new(h.seq),
            ack: U64::new(h.ack),
            msg_type: U16::new(h.msg_type),
            reserved: U16::new(0),
            crc: U32::new(0),
        };
        p.crc = U32::new(p.computed_crc());
        p
    }

    /// crc32c over the first [`PREAMBLE_CRC_OFFSET`] bytes, i.e. what `crc` should hold.
    pub fn computed_crc(&self) -> u32 {
        let bytes = self.as_bytes();
        match bytes.first_chunk::<PREAMBLE_CRC_OFFSET>() {
            Some(covered) => super::crc::crc32c_array(covered),
            // Unreachable: a preamble is longer than the part its crc covers.
            None => super::crc::crc32c(bytes),
        }
    }

    /// The frame kind; errors if the tag byte is unknown.
    pub fn tag(&self) -> Result<Tag, WireError> {
        Tag::try_from(self.tag)
    }

    /// True if [`FLAG_ACK_VALID`] is set.
    pub fn ack_valid(&self) -> bool {
        self.flags & FLAG_ACK_VALID != 0
    }

    /// `front_len + data_len` in bytes (saturating; cannot overflow on 64-bit targets).
    pub fn payload_len(&self) -> usize {
        usize_from(self.front_len.get()).saturating_add(usize_from(self.data_len.get()))
    }

    /// Whole frame size: preamble, payload, and the epilogue if the payload is non-empty.
    pub fn frame_len(&self) -> usize {
        let payload = self.payload_len();
        let epilogue = if payload > 0 { EPILOGUE_LEN } else { 0 };
        PREAMBLE_LEN
            .saturating_add(payload)
            .saturating_add(epilogue)
    }

    /// The header fields as an owned [`FrameHead`] (magic, version, reserved and crc dropped).
    pub fn head(&self) -> FrameHead {
        FrameHead {
            tag: self.tag,
            flags: self.flags,
            priority: self.priority,
            msg_type: self.msg_type.get(),
            seq: self.seq.get(),
            ack: self.ack.get(),
            front_len: self.front_len.get(),
            data_len: self.data_len.get(),
        }
    }
}

fn usize_from(v: u32) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Receiver limits, checked before anything is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest front segment accepted, in bytes.
    pub max_front: u32,
    /// Largest data segment accepted, in bytes.
    pub max_data: u32,
}

impl Default for Limits {
    /// 64 KiB front, 64 MiB data.
    fn default() -> Limits {
        Limits {
            max_front: 64 << 10,
            max_data: 64 << 20,
        }
    }
}

/// Parses and validates a preamble in place from the start of `buf`.
///
/// Returns `Ok(None)` if `buf` holds fewer than [`PREAMBLE_LEN`] bytes (read more).
/// Bytes past the preamble are ignored. Checks, in this order, stopping at the
/// first failure: magic, version, crc, tag known, flags known, the transport-checked flag
/// only on an unsealed `Message` or `MessageBatch`, `front_len <= max_front`, `data_len <= max_data`, then the payload shape of
/// the frame kind: control frames (`Ack`, `Keepalive`, `KeepaliveAck`) carry no
/// payload; `Hello`, `HelloReply` and `Close` carry a non-empty front segment and
/// no data segment; `Message` may carry anything within the limits.
pub fn parse_preamble<'a>(
    buf: &'a [u8],
    limits: &Limits,
) -> Result<Option<&'a Preamble>, WireError> {
    if buf.len() < PREAMBLE_LEN {
        return Ok(None);
    }
    let (p, _rest) = Preamble::ref_from_prefix(buf).map_err(|_| WireError::Truncated {
        what: "preamble",
        need: PREAMBLE_LEN,
        have: buf.len(),
    })?;
    let magic = p.magic.get();
    if magic != MAGIC {
        return Err(WireError::BadMagic { found: magic });
    }
    if p.version != VERSION {
        return Err(WireError::BadVersion {
            found: p.version,
            expected: VERSION,
        });
    }
    let actual = p.computed_crc();
    let expected = p.crc.get();
    if actual != expected {
        return Err(WireError::PreambleCrc { expected, actual });
    }
    let tag = p.tag()?;
    if p.flags & !KNOWN_FLAGS != 0 {
        return Err(WireError::UnknownFlags(p.flags));
    }
    if p.flags & FLAG_TRANSPORT_CHECKED != 0
        && (p.flags & FLAG_SEALED != 0 || !matches!(tag, Tag::Message | Tag::MessageBatch))
    {
        return Err(WireError::MisplacedFlag {
            tag,
            flags: p.flags,
        });
    }
    let front_len = p.front_len.get();
    if front_len > limits.max_front {
        return Err(WireError::FrontTooLong {
            len: front_len,
            max: limits.max_front,
        });
    }
    let data_len = p.data_len.get();
    if data_len > limits.max_data {
        return Err(WireError::DataTooLong {
            len: data_len,
            max: limits.max_data,
        });
    }
    if tag.is_control() && (front_len != 0 || data_len != 0) {
        return Err(WireError::UnexpectedPayload { tag });
    }
    if tag == Tag::MessageBatch {
        if front_len != 0 {
            return Err(WireError::UnexpectedPayload { tag });
        }
        if data_len == 0 {
            return Err(WireError::MissingPayload { tag });
        }
        if p.msg_type.get() == 0 {
            return Err(WireError::BadBatch("a batch of zero records"));
        }
    }
    if tag.is_front_only() {
        if data_len != 0 {
            return Err(WireError::UnexpectedPayload { tag });
        }
        if front_len == 0 {
            return Err(WireError::MissingPayload { tag });
        }
    }
    Ok(Some(p))
}

/// Encodes a preamble to bytes (for the send path's iovec).
///
/// Encodes whatever `h` says; the sender is trusted to describe a frame the
/// receiver will accept.
pub fn encode_preamble(h: &FrameHead) -> [u8; PREAMBLE_LEN] {
    zerocopy::transmute!(Preamble::new(h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(tag: Tag, front_len: u32, data_len: u32) -> FrameHead {
        FrameHead {
            tag: tag as u8,
            flags: FLAG_ACK_VALID,
            priority: 3,
            msg_type: 42,
            seq: 7,
            ack: 6,
            front_len,
            data_len,
        }
    }

    fn parse(bytes: &[u8]) -> Result<Option<&Preamble>, WireError> {
        parse_preamble(bytes, &Limits::default())
    }

    /// Re-seals a (tampered) preamble's crc so later checks are reached.
    fn reseal(b: &mut [u8; PREAMBLE_LEN]) {
        let crc = crc32c::crc32c(&b[..PREAMBLE_CRC_OFFSET]);
        b[PREAMBLE_CRC_OFFSET..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn layout_is_as_documented() {
        let h = FrameHead {
            tag: 3,
            flags: 1,
            priority: 9,
            msg_type: 0x1234,
            seq: 0x0102_0304_0506_0708,
            ack: 0x1112_1314_1516_1718,
            front_len: 0x2122_2324,
            data_len: 0x3132_3334,
        };
        let b = encode_preamble(&h);
        assert_eq!(&b[0..4], b"DPLN");
        assert_eq!(b[4], VERSION);
        assert_eq!(&b[5..8], &[3, 1, 9]);
        assert_eq!(&b[8..12], &0x2122_2324u32.to_le_bytes());
        assert_eq!(&b[12..16], &0x3132_3334u32.to_le_bytes());
        assert_eq!(&b[16..24], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[24..32], &0x1112_1314_1516_1718u64.to_le_bytes());
        assert_eq!(&b[32..34], &0x1234u16.to_le_bytes());
        assert_eq!(&b[34..36], &[0, 0]);
        assert_eq!(&b[36..40], &crc32c::crc32c(&b[..36]).to_le_bytes());
    }

    #[test]
    fn lengths() {
        let p = Preamble::new(&head(Tag::Message, 10, 20));
        assert_eq!(p.payload_len(), 30);
        assert_eq!(p.frame_len(), PREAMBLE_LEN + 30 + EPILOGUE_LEN);
        let p = Preamble::new(&head(Tag::Ack, 0, 0));
        assert_eq!(p.payload_len(), 0);
        assert_eq!(p.frame_len(), PREAMBLE_LEN);
        let p = Preamble::new(&head(Tag::Message, u32::MAX, u32::MAX));
        assert_eq!(p.payload_len(), 2 * u32::MAX as usize);
    }

    #[test]
    fn parses_in_place_and_ignores_trailing_bytes() {
        let mut buf = encode_preamble(&head(Tag::Message, 1, 2)).to_vec();
        buf.extend_from_slice(&[0xAA; 7]);
        let p = parse(&buf).unwrap().unwrap();
        assert!(core::ptr::eq(p.as_bytes().as_ptr(), buf.as_ptr()));
        assert_eq!(p.tag(), Ok(Tag::Message));
        assert!(p.ack_valid());
    }

    #[test]
    fn truncated_input_is_none() {
        let b = encode_preamble(&head(Tag::Message, 1, 2));
        for n in 0..PREAMBLE_LEN {
            assert_eq!(parse(&b[..n]), Ok(None), "len {n}");
        }
        assert!(parse(&b).unwrap().is_some());
    }

    #[test]
    fn rejects_bad_magic() {
        let mut b = encode_preamble(&head(Tag::Message, 1, 2));
        b[0] = b'X';
        reseal(&mut b);
        let found = u32::from_le_bytes([b'X', b'P', b'L', b'N']);
        assert_eq!(parse(&b), Err(WireError::BadMagic { found }));
    }

    #[test]
    fn rejects_bad_version() {
        let mut b = encode_preamble(&head(Tag::Message, 1, 2));
        b[4] = 2;
        reseal(&mut b);
        assert_eq!(
            parse(&b),
            Err(WireError::BadVersion {
                found: 2,
                expected: VERSION
            })
        );
    }

    #[test]
    fn rejects_bad_crc() {
        let mut b = encode_preamble(&head(Tag::Message, 1, 2));
        let good = crc32c::crc32c(&b[..36]);
        b[36] ^= 0xFF;
        let expected = u32::from_le_bytes([b[36], b[37], b[38], b[39]]);
        assert_eq!(
            parse(&b),
            Err(WireError::PreambleCrc {
                expected,
                actual: good
            })
        );
    }

    #[test]
    fn rejects_every_single_bit_flip() {
        for tag in Tag::ALL {
            let (f, d) = match tag {
                Tag::Message => (5, 6),
                Tag::MessageBatch => (0, 6),
                t if t.is_control() => (0, 0),
                _ => (5, 0),
            };
            let good = encode_preamble(&head(tag, f, d));
            assert!(parse(&good).unwrap().is_some());
            for bit in 0..PREAMBLE_LEN * 8 {
                let mut b = good;
                b[bit / 8] ^= 1 << (bit % 8);
                let r = parse(&b);
                assert!(r.is_err(), "{tag:?}: flip of bit {bit} accepted");
                if bit >= 40 {
                    assert!(matches!(r, Err(WireError::PreambleCrc { .. })));
                }
            }
        }
    }

    #[test]
    fn batch_shape_is_checked() {
        let ok = encode_preamble(&head(Tag::MessageBatch, 0, 12));
        assert!(parse(&ok).unwrap().is_some());
        let front = encode_preamble(&head(Tag::MessageBatch, 3, 12));
        assert_eq!(
            parse(&front),
            Err(WireError::UnexpectedPayload {
                tag: Tag::MessageBatch
            })
        );
        let empty = encode_preamble(&head(Tag::MessageBatch, 0, 0));
        assert_eq!(
            parse(&empty),
            Err(WireError::MissingPayload {
                tag: Tag::MessageBatch
            })
        );
        let mut h = head(Tag::MessageBatch, 0, 12);
        h.msg_type = 0;
        assert_eq!(
            parse(&encode_preamble(&h)),
            Err(WireError::BadBatch("a batch of zero records"))
        );
    }

    #[test]
    fn rejects_unknown_tag() {
        for t in [0u8, 10, 0xFF] {
            let mut h = head(Tag::Message, 1, 2);
            h.tag = t;
            assert_eq!(parse(&encode_preamble(&h)), Err(WireError::UnknownTag(t)));
        }
    }

    #[test]
    fn rejects_unknown_flags() {
        for f in [0x08u8, 0x80, 0xFF] {
            let mut h = head(Tag::Message, 1, 2);
            h.flags = f;
            assert_eq!(parse(&encode_preamble(&h)), Err(WireError::UnknownFlags(f)));
        }
    }

    #[test]
    fn refuses_the_transport_flag_off_unsealed_messages() {
        for tag in [Tag::Message, Tag::MessageBatch] {
            let mut h = head(tag, 0, 8);
            h.flags = FLAG_TRANSPORT_CHECKED | FLAG_ACK_VALID;
            assert!(parse(&encode_preamble(&h)).is_ok(), "{tag:?}");
            h.flags |= FLAG_SEALED;
            assert_eq!(
                parse(&encode_preamble(&h)),
                Err(WireError::MisplacedFlag {
                    tag,
                    flags: h.flags
                })
            );
        }
        for tag in [Tag::Ack, Tag::Keepalive, Tag::Hello, Tag::Close] {
            let front = if tag.is_front_only() { 4 } else { 0 };
            let mut h = head(tag, front, 0);
            h.flags = FLAG_TRANSPORT_CHECKED;
            assert_eq!(
                parse(&encode_preamble(&h)),
                Err(WireError::MisplacedFlag {
                    tag,
                    flags: FLAG_TRANSPORT_CHECKED
                }),
                "{tag:?}"
            );
        }
    }

    #[test]
    fn rejects_oversized_front() {
        let lim = Limits::default();
        let ok = encode_preamble(&head(Tag::Message, lim.max_front, 0));
        assert!(parse(&ok).unwrap().is_some());
        let b = encode_preamble(&head(Tag::Message, lim.max_front + 1, 0));
        assert_eq!(
            parse(&b),
            Err(WireError::FrontTooLong {
                len: lim.max_front + 1,
                max: lim.max_front
            })
        );
    }

    #[test]
    fn rejects_oversized_data_without_allocating() {
        // Nothing is allocated by parse_preamble at all; the check happens on the
        // header alone, before any buffer for the payload could be sized from it.
        let lim = Limits::default();
        let b = encode_preamble(&head(Tag::Message, 0, u32::MAX));
        assert_eq!(
            parse(&b),
            Err(WireError::DataTooLong {
                len: u32::MAX,
                max: lim.max_data
            })
        );
        let ok = encode_preamble(&head(Tag::Message, 0, lim.max_data));
        assert!(parse(&ok).unwrap().is_some());
    }

    #[test]
    fn front_checked_before_data() {
        let b = encode_preamble(&head(Tag::Message, u32::MAX, u32::MAX));
        assert!(matches!(parse(&b), Err(WireError::FrontTooLong { .. })));
    }

    #[test]
    fn rejects_control_frame_with_payload() {
        for tag in [Tag::Ack, Tag::Keepalive, Tag::KeepaliveAck] {
            for (f, d) in [(1, 0), (0, 1), (1, 1)] {
                let b = encode_preamble(&head(tag, f, d));
                assert_eq!(parse(&b), Err(WireError::UnexpectedPayload { tag }));
            }
            assert!(parse(&encode_preamble(&head(tag, 0, 0))).unwrap().is_some());
        }
    }

    #[test]
    fn rejects_hello_without_payload() {
        for tag in [Tag::Hello, Tag::HelloReply, Tag::Close] {
            let b = encode_preamble(&head(tag, 0, 0));
            assert_eq!(parse(&b), Err(WireError::MissingPayload { tag }));
        }
    }

    #[test]
    fn rejects_hello_with_data_segment() {
        for tag in [Tag::Hello, Tag::HelloReply, Tag::Close] {
            let b = encode_preamble(&head(tag, 8, 1));
            assert_eq!(parse(&b), Err(WireError::UnexpectedPayload { tag }));
            assert!(parse(&encode_preamble(&head(tag, 8, 0))).unwrap().is_some());
        }
    }

    #[test]
    fn message_may_be_empty() {
        assert!(parse(&encode_preamble(&head(Tag::Message, 0, 0)))
            .unwrap()
            .is_some());
    }

    #[test]
    fn check_order_magic_version_crc() {
        // All of magic, version and crc wrong: magic reported.
        let mut b = encode_preamble(&head(Tag::Message, 1, 2));
        b[0] ^= 1;
        b[4] ^= 1;
        b[39] ^= 1;
        assert!(matches!(parse(&b), Err(WireError::BadMagic { .. })));
        // Version and crc wrong: version reported.
        let mut b = encode_preamble(&head(Tag::Message, 1, 2));
        b[4] ^= 1;
        b[39] ^= 1;
        assert!(matches!(parse(&b), Err(WireError::BadVersion { .. })));
        // Tag and flags wrong, crc correct: tag reported.
        let mut h = head(Tag::Message, 1, 2);
        h.tag = 99;
        h.flags = 0xFF;
        assert_eq!(parse(&encode_preamble(&h)), Err(WireError::UnknownTag(99)));
        // Flags wrong and front too long: flags reported.
        let mut h = head(Tag::Message, u32::MAX, 2);
        h.flags = 0x10;
        assert_eq!(
            parse(&encode_preamble(&h)),
            Err(WireError::UnknownFlags(0x10))
        );
        // Ack with oversized front: the limit is reported, not the shape.
        let b = encode_preamble(&head(Tag::Ack, u32::MAX, 0));
        assert!(matches!(parse(&b), Err(WireError::FrontTooLong { .. })));
    }

    #[test]
    fn error_messages_read_well() {
        let e = WireError::PreambleCrc {
            expected: 0xDEAD_BEEF,
            actual: 0x1,
        };
        assert_eq!(
            e.to_string(),
            "preamble crc mismatch: expected 0xdeadbeef, got 0x00000001"
        );
        let e = WireError::UnexpectedPayload { tag: Tag::Ack };
        assert_eq!(e.to_string(), "Ack frame must not carry this payload");
    }

    /// Reference model of parse_preamble's decision for a correctly sealed header.
    fn expected_verdict(h: &FrameHead, lim: &Limits) -> Result<(), WireError> {
        let tag = Tag::try_from(h.tag)?;
        if h.flags & !KNOWN_FLAGS != 0 {
            return Err(WireError::UnknownFlags(h.flags));
        }
        let unsealed_message =
            h.flags & FLAG_SEALED == 0 && matches!(tag, Tag::Message | Tag::MessageBatch);
        if h.flags & FLAG_TRANSPORT_CHECKED != 0 && !unsealed_message {
            return Err(WireError::MisplacedFlag {
                tag,
                flags: h.flags,
            });
        }
        if h.front_len > lim.max_front {
            return Err(WireError::FrontTooLong {
                len: h.front_len,
                max: lim.max_front,
            });
        }
        if h.data_len > lim.max_data {
            return Err(WireError::DataTooLong {
                len: h.data_len,
                max: lim.max_data,
            });
        }
        match tag {
            Tag::Ack | Tag::Keepalive | Tag::KeepaliveAck
                if h.front_len != 0 || h.data_len != 0 =>
            {
                Err(WireError::UnexpectedPayload { tag })
            }
            Tag::Hello | Tag::HelloReply | Tag::Close | Tag::Auth if h.data_len != 0 => {
                Err(WireError::UnexpectedPayload { tag })
            }
            Tag::Hello | Tag::HelloReply | Tag::Close | Tag::Auth if h.front_len == 0 => {
                Err(WireError::MissingPayload { tag })
            }
            Tag::MessageBatch if h.front_len != 0 => Err(WireError::UnexpectedPayload { tag }),
            Tag::MessageBatch if h.data_len == 0 => Err(WireError::MissingPayload { tag }),
            Tag::MessageBatch if h.msg_type == 0 => {
                Err(WireError::BadBatch("a batch of zero records"))
            }
            _ => Ok(()),
        }
    }

    fn small_or_any() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..4, any::<u32>(), Just(u32::MAX)]
    }

    prop_compose! {
        fn any_head()(
            tag in prop_oneof![1u8..=9, any::<u8>()],
            flags in prop_oneof![0u8..=7, any::<u8>()],
            priority in any::<u8>(),
            msg_type in any::<u16>(),
            seq in any::<u64>(),
            ack in any::<u64>(),
            front_len in small_or_any(),
            data_len in small_or_any(),
        ) -> FrameHead {
            FrameHead { tag, flags, priority, msg_type, seq, ack, front_len, data_len }
        }
    }

    proptest! {
        #[test]
        fn prop_round_trip(h in any_head()) {
            let b = encode_preamble(&h);
            let all = Limits { max_front: u32::MAX, max_data: u32::MAX };
            match expected_verdict(&h, &all) {
                Ok(()) => {
                    let p = parse_preamble(&b, &all).unwrap().unwrap();
                    prop_assert_eq!(p.head(), h);
                    prop_assert_eq!(p.magic.get(), MAGIC);
                    prop_assert_eq!(p.version, VERSION);
                    prop_assert_eq!(p.reserved.get(), 0);
                }
                Err(e) => prop_assert_eq!(parse_preamble(&b, &all), Err(e)),
            }
            // The unvalidated view always round-trips, whatever the fields say.
            let (p, _) = Preamble::ref_from_prefix(&b[..]).unwrap();
            prop_assert_eq!(p.head(), h);
        }

        #[test]
        fn prop_verdict_matches_model(
            h in any_head(),
            max_front in small_or_any(),
            max_data in small_or_any(),
        ) {
            let lim = Limits { max_front, max_data };
            let got = parse_preamble(&encode_preamble(&h), &lim).map(|p| p.map(|p| p.head()));
            match expected_verdict(&h, &lim) {
                Ok(()) => prop_assert_eq!(got, Ok(Some(h))),
                Err(e) => prop_assert_eq!(got, Err(e)),
            }
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..100)) {
            let r = parse_preamble(&buf, &Limits::default());
            if buf.len() < PREAMBLE_LEN {
                prop_assert_eq!(r, Ok(None));
            }
        }

        #[test]
        fn prop_sealed_garbage_never_panics(mut b in any::<[u8; PREAMBLE_LEN]>()) {
            // Valid magic, version and crc over arbitrary fields reach every later check.
            b[..4].copy_from_slice(&MAGIC.to_le_bytes());
            b[4] = VERSION;
            reseal(&mut b);
            let (p, _) = Preamble::ref_from_prefix(&b[..]).unwrap();
            let h = p.head();
            let got = parse_preamble(&b, &Limits::default()).map(|p| p.map(|p| p.head()));
            match expected_verdict(&h, &Limits::default()) {
                Ok(()) => prop_assert_eq!(got, Ok(Some(h))),
                Err(e) => prop_assert_eq!(got, Err(e)),
            }
        }
    }
}
