//! Message batches: several small messages in one [`Tag::MessageBatch`](super::Tag) frame.
//!
//! A stream of small messages pays the per-frame costs (a 40-byte preamble with its crc, a
//! payload crc, a sequence check) once per batch instead of once per message: the sender
//! appends each small message to an open batch as a 6-byte record head and its payload, and
//! closes the batch (preamble, one crc over all records) when it writes. Only negotiated:
//! both hellos must carry [`FEATURE_BATCH`].
//!
//! Record layout, back to back in the data segment:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | payload length `u32` |
//! | 4..6 | message type `u16` |
//! | 6.. | payload |

use std::ops::Range;

use super::error::WireError;

/// Feature bit: this end understands [`Tag::MessageBatch`](super::Tag) frames.
pub const FEATURE_BATCH: u64 = 1 << 2;

/// Size of a record head: payload length (`u32`) and message type (`u16`).
pub const BATCH_RECORD_HEAD: usize = 6;

/// Encodes a record head.
#[inline]
pub fn encode_record_head(len: u32, msg_type: u16) -> [u8; BATCH_RECORD_HEAD] {
    let l = len.to_le_bytes();
    let t = msg_type.to_le_bytes();
    [l[0], l[1], l[2], l[3], t[0], t[1]]
}

/// Checks that `data` holds exactly `count` well-formed records: every head complete, every
/// payload inside the segment, nothing left over. Nothing of the batch may be delivered before
/// this passed.
pub fn check_batch(data: &[u8], count: u16) -> Result<(), WireError> {
    if count == 0 {
        return Err(WireError::BadBatch("a batch of zero records"));
    }
    let mut rest = data;
    for _ in 0..count {
        let Some((head, tail)) = rest.split_first_chunk::<BATCH_RECORD_HEAD>() else {
            return Err(WireError::BadBatch("record head cut short"));
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > tail.len() {
            return Err(WireError::BadBatch("record longer than the batch"));
        }
        rest = &tail[len..];
    }
    if !rest.is_empty() {
        return Err(WireError::BadBatch("bytes after the last record"));
    }
    Ok(())
}

/// The records of a batch that passed [`check_batch`]: message type and payload range in
/// `data`. On a batch that did not pass, stops at the first bad record.
pub fn batch_records(data: &[u8]) -> BatchRecords<'_> {
    BatchRecords { data, off: 0 }
}

/// Iterator over the records of a checked batch, see [`batch_records`].
#[derive(Debug, Clone)]
pub struct BatchRecords<'a> {
    data: &'a [u8],
    off: usize,
}

impl Iterator for BatchRecords<'_> {
    type Item = (u16, Range<usize>);

    #[inline]
    fn next(&mut self) -> Option<(u16, Range<usize>)> {
        let rest = self.data.get(self.off..)?;
        let (head, _) = rest.split_first_chunk::<BATCH_RECORD_HEAD>()?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let msg_type = u16::from_le_bytes([head[4], head[5]]);
        let start = self.off + BATCH_RECORD_HEAD;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        if end > self.data.len() {
            return None;
        }
        self.off = end;
        Some((msg_type, start..end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn build(recs: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (t, p) in recs {
            out.extend_from_slice(&encode_record_head(p.len() as u32, *t));
            out.extend_from_slice(p);
        }
        out
    }

    #[test]
    fn rejects_each_malformation() {
        let good = build(&[(1, b"ab".to_vec()), (2, vec![])]);
        assert_eq!(check_batch(&good, 2), Ok(()));
        assert_eq!(
            check_batch(&good, 0),
            Err(WireError::BadBatch("a batch of zero records"))
        );
        assert_eq!(
            check_batch(&good, 3),
            Err(WireError::BadBatch("record head cut short"))
        );
        assert_eq!(
            check_batch(&good, 1),
            Err(WireError::BadBatch("bytes after the last record"))
        );
        let mut long = good.clone();
        long[0] = 200;
        assert_eq!(
            check_batch(&long, 2),
            Err(WireError::BadBatch("record longer than the batch"))
        );
        let mut huge = good;
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            check_batch(&huge, 2),
            Err(WireError::BadBatch("record longer than the batch"))
        );
    }

    proptest! {
        #[test]
        fn records_round_trip(recs in proptest::collection::vec((any::<u16>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..40)) {
            let data = build(&recs);
            prop_assert_eq!(check_batch(&data, recs.len() as u16), Ok(()));
            let got: Vec<(u16, Vec<u8>)> =
                batch_records(&data).map(|(t, r)| (t, data[r].to_vec())).collect();
            prop_assert_eq!(got, recs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200), count in any::<u16>()) {
            let ok = check_batch(&data, count).is_ok();
            let n = batch_records(&data).count();
            if ok {
                prop_assert_eq!(n, count as usize);
            }
        }
    }
}
