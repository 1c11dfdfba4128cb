//! Test payloads whose bytes are a function of (stream, sequence): a receiver can tell which
//! message it got and whether every byte of it is intact.

use dataplane::Buf;

/// Header of every test payload: stream id (u32 LE) + sequence (u64 LE).
pub const HDR: usize = 12;

/// The byte at offset `i` (counted from the start of the payload, `i >= HDR`) of message
/// `seq`.
fn body_byte(seq: u64, i: usize) -> u8 {
    (seq as usize).wrapping_mul(31).wrapping_add(i) as u8
}

/// Builds a payload of `len` bytes (at least [`HDR`]) for message `seq` of `stream`: the
/// header, then bytes that are a function of (seq, offset), so corruption is caught.
pub fn payload(stream: u32, seq: u64, len: usize) -> Buf {
    let len = len.max(HDR);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&stream.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend((HDR..len).map(|i| body_byte(seq, i)));
    Buf::from_vec(v)
}

/// The (stream, sequence) header of a payload built by [`payload`], or `None` when `data` is
/// shorter than [`HDR`].
pub fn header(data: &[u8]) -> Option<(u32, u64)> {
    let stream = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
    let seq = u64::from_le_bytes(data.get(4..HDR)?.try_into().ok()?);
    Some((stream, seq))
}

/// Whether the bytes after the header of `data` are those [`payload`] wrote for message
/// `seq`.
pub fn body_intact(seq: u64, data: &[u8]) -> bool {
    data.iter()
        .enumerate()
        .skip(HDR)
        .all(|(i, b)| *b == body_byte(seq, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let p = payload(7, 42, 100).as_slice().to_vec();
        assert_eq!(p.len(), 100);
        assert_eq!(header(&p), Some((7, 42)));
        assert!(body_intact(42, &p));
        assert!(!body_intact(43, &p));
        let mut bad = p.clone();
        bad[99] ^= 1;
        assert!(!body_intact(42, &bad));
        assert_eq!(header(&p[..HDR - 1]), None);
        assert_eq!(payload(1, 2, 0).as_slice().len(), HDR);
    }
}
