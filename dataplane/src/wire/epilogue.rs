//! The 4-byte frame epilogue: crc32c of the payload (front then data).

use super::error::WireError;

/// Size of the epilogue; present only when `front_len + data_len > 0`.
pub const EPILOGUE_LEN: usize = 4;

/// Feature bit: "my transport checks every payload byte end to end with a CRC of its own, so
/// payload crcs may be left out on this connection". An RDMA stack offers it (every RoCE or
/// InfiniBand packet carries an invariant CRC-32 that the receiving device checks, and a
/// reliable-connected queue pair delivers in order or fails the connection); the POSIX and
/// DPDK stacks do not (TCP's 16-bit checksum is too weak to stand in for a crc32c). When both
/// hellos carry it and the connection is not sealed, `Message` and `MessageBatch` frames carry
/// [`FLAG_TRANSPORT_CHECKED`](super::FLAG_TRANSPORT_CHECKED) and a zero epilogue. Preambles
/// and control frames keep their crcs.
pub const FEATURE_TRANSPORT_CRC: u64 = 1 << 3;

/// crc32c over a scatter list of payload parts (front then data parts).
///
/// The result equals the crc32c of the concatenation of the parts, however
/// the payload is split.
pub fn payload_crc<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u32 {
    parts.into_iter().fold(0, super::crc::crc32c_append)
}

/// Encodes a payload crc as epilogue bytes (little-endian).
pub fn encode_epilogue(crc: u32) -> [u8; EPILOGUE_LEN] {
    crc.to_le_bytes()
}

/// Checks the epilogue bytes against the crc of the given parts.
///
/// `epilogue` must be exactly [`EPILOGUE_LEN`] bytes
/// ([`WireError::EpilogueLen`] otherwise). A mismatch yields
/// [`WireError::PayloadCrc`] with `expected` the crc carried in the epilogue and
/// `actual` the crc computed over `parts`.
pub fn verify_epilogue<'a>(
    parts: impl IntoIterator<Item = &'a [u8]>,
    epilogue: &[u8],
) -> Result<(), WireError> {
    let bytes: [u8; EPILOGUE_LEN] = epilogue.try_into().map_err(|_| WireError::EpilogueLen {
        len: epilogue.len(),
    })?;
    let expected = u32::from_le_bytes(bytes);
    let actual = payload_crc(parts);
    if expected == actual {
        Ok(())
    } else {
        Err(WireError::PayloadCrc { expected, actual })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vector() {
        // RFC 3720 test vector: 32 bytes of zero.
        assert_eq!(payload_crc([&[0u8; 32][..]]), 0x8A91_36AA);
        assert_eq!(payload_crc([&[0u8; 16][..], &[0u8; 16][..]]), 0x8A91_36AA);
        assert_eq!(payload_crc(core::iter::empty()), 0);
    }

    #[test]
    fn rejects_payload_crc_mismatch() {
        let front = b"front".as_slice();
        let data = b"data".as_slice();
        let good = payload_crc([front, data]);
        let ep = encode_epilogue(good);
        assert_eq!(verify_epilogue([front, data], &ep), Ok(()));
        let bad = b"dbta".as_slice();
        assert_eq!(
            verify_epilogue([front, bad], &ep),
            Err(WireError::PayloadCrc {
                expected: good,
                actual: payload_crc([front, bad])
            })
        );
        let mut ep2 = ep;
        ep2[3] ^= 0x80;
        assert!(matches!(
            verify_epilogue([front, data], &ep2),
            Err(WireError::PayloadCrc { .. })
        ));
    }

    #[test]
    fn rejects_wrong_epilogue_length() {
        let ep = encode_epilogue(payload_crc([b"x".as_slice()]));
        assert_eq!(
            verify_epilogue([b"x".as_slice()], &ep[..3]),
            Err(WireError::EpilogueLen { len: 3 })
        );
        let long = [ep.as_slice(), &[0]].concat();
        assert_eq!(
            verify_epilogue([b"x".as_slice()], &long),
            Err(WireError::EpilogueLen { len: 5 })
        );
    }

    proptest! {
        #[test]
        fn prop_split_crc_equals_whole(
            payload in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(payload.len() + 1)).collect();
            points.push(0);
            points.push(payload.len());
            points.sort_unstable();
            let parts: Vec<&[u8]> = points.windows(2).map(|w| &payload[w[0]..w[1]]).collect();
            let whole = crc32c::crc32c(&payload);
            prop_assert_eq!(payload_crc(parts.iter().copied()), whole);
            let ep = encode_epilogue(whole);
            prop_assert_eq!(verify_epilogue(parts.iter().copied(), &ep), Ok(()));
        }

        #[test]
        fn prop_corrupted_payload_rejected(
            payload in proptest::collection::vec(any::<u8>(), 1..512),
            pos in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let ep = encode_epilogue(payload_crc([payload.as_slice()]));
            let mut bad = payload.clone();
            let i = pos.index(bad.len());
            bad[i] ^= 1 << bit;
            let is_payload_crc = matches!(
                verify_epilogue([bad.as_slice()], &ep),
                Err(WireError::PayloadCrc { .. })
            );
            prop_assert!(is_payload_crc);
        }
    }
}
