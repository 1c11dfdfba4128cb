//! What a session holds after framing: single messages, and message batches whose record
//! bytes are kept in a log, until the peer acknowledges them (lossless) or they are written
//! (lossy).
//!
//! A batched message is copied into the staging buffer when it is framed, so the session
//! does not need the [`Message`] any more: it keeps the batch's records instead, and drops
//! the message at once, while it is still in cache. Per message that saves a queue entry, a
//! walk of the acknowledged entries and a cold drop; per batch it costs one copy of the
//! records into the log (a few KiB, one `memcpy`), the counterpart of a kernel's
//! retransmission queue. A resend frames the records again from the log.

use crate::buf::Buf;
use crate::messenger::Message;
use crate::wire;

/// Where a held batch's records are.
#[derive(Debug)]
pub(crate) enum Records {
    /// Nowhere: a lossy session never resends (and the frame was staged).
    Gone,
    /// In the [`RecordLog`] at this absolute offset (batches the session built).
    Log {
        /// Absolute offset.
        at: u64,
        /// Length in bytes.
        len: usize,
    },
    /// In the block the sender encoded, which the frame also writes by reference.
    Block(Buf),
}

/// One held entry, in sequence order.
#[derive(Debug)]
pub(crate) enum Held {
    /// A message framed on its own (large, or batching not agreed).
    Msg {
        /// Its sequence number.
        seq: u64,
        /// The message.
        msg: Message,
    },
    /// A batch of `count` messages numbered from `first`.
    Batch {
        /// Sequence number of the first record.
        first: u64,
        /// Records.
        count: u16,
        /// Payload bytes of all records (flow-control accounting).
        bytes: usize,
        /// Priority of every record.
        priority: u8,
        /// Its records.
        records: Records,
    },
}

impl Held {
    /// Sequence number of the first message.
    pub(crate) fn first(&self) -> u64 {
        match self {
            Held::Msg { seq, .. } => *seq,
            Held::Batch { first, .. } => *first,
        }
    }

    /// Sequence number of the last message.
    pub(crate) fn last(&self) -> u64 {
        match self {
            Held::Msg { seq, .. } => *seq,
            Held::Batch { first, count, .. } => first + u64::from(*count).saturating_sub(1),
        }
    }

    /// Messages held.
    pub(crate) fn msgs(&self) -> usize {
        match self {
            Held::Msg { .. } => 1,
            Held::Batch { count, .. } => usize::from(*count),
        }
    }

    /// Payload bytes held.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Held::Msg { msg, .. } => msg.len(),
            Held::Batch { bytes, .. } => *bytes,
        }
    }

    /// Renumbers from `first` (the peer lost its session).
    pub(crate) fn renumber(&mut self, to: u64) {
        match self {
            Held::Msg { seq, .. } => *seq = to,
            Held::Batch { first, .. } => *first = to,
        }
    }

    /// The record bytes of a batch, wherever they are.
    pub(crate) fn records<'a>(&'a self, log: &'a RecordLog) -> Option<&'a [u8]> {
        match self {
            Held::Batch {
                records: Records::Log { at, len },
                ..
            } => log.get(*at, *len),
            Held::Batch {
                records: Records::Block(b),
                ..
            } => Some(b.as_slice()),
            _ => None,
        }
    }

    /// A batch whose first `k` records the peer already has: drops them (at least one record
    /// stays). Returns the messages and payload bytes dropped.
    pub(crate) fn skip_records(&mut self, k: usize, log: &RecordLog) -> (usize, usize) {
        let (mut n, mut payload, mut end) = (0usize, 0usize, 0usize);
        if let (Held::Batch { count, .. }, Some(recs)) = (&*self, self.records(log)) {
            let k = k.min(usize::from(*count).saturating_sub(1));
            for (_, r) in wire::batch_records(recs).take(k) {
                n += 1;
                payload += r.len();
                end = r.end;
            }
        }
        let Held::Batch {
            first,
            count,
            bytes,
            records,
            ..
        } = self
        else {
            return (0, 0);
        };
        // n <= k < count <= u16::MAX.
        *first += n as u64;
        *count -= n as u16;
        *bytes -= payload;
        match records {
            Records::Log { at, len } => {
                *at += end as u64;
                *len -= end;
            }
            Records::Block(b) => {
                b.narrow(end..);
            }
            Records::Gone => {}
        }
        (n, payload)
    }

    /// End of its records in the log, if it has any there.
    pub(crate) fn log_end(&self) -> Option<u64> {
        match self {
            Held::Batch {
                records: Records::Log { at, len },
                ..
            } => Some(at + *len as u64),
            _ => None,
        }
    }

    /// Start of its records in the log, if it has any there.
    pub(crate) fn log_start(&self) -> Option<u64> {
        match self {
            Held::Batch {
                records: Records::Log { at, .. },
                ..
            } => Some(*at),
            _ => None,
        }
    }
}

/// The record bytes of held batches, appended in sequence order and released from the front
/// as the peer acknowledges them. Offsets are absolute (they keep growing), so an entry's
/// offset stays valid while the front is released.
#[derive(Debug, Default)]
pub(crate) struct RecordLog {
    buf: Vec<u8>,
    /// Absolute offset of `buf[0]`.
    base: u64,
    /// Bytes at the front of `buf` already released.
    head: usize,
}

impl RecordLog {
    /// Appends records; returns their absolute offset.
    pub(crate) fn append(&mut self, records: &[u8]) -> u64 {
        let at = self.end();
        self.buf.extend_from_slice(records);
        at
    }

    /// Absolute offset just past the last byte.
    pub(crate) fn end(&self) -> u64 {
        self.base + self.buf.len() as u64
    }

    /// The `len` bytes at absolute offset `at`, if they are still held.
    pub(crate) fn get(&self, at: u64, len: usize) -> Option<&[u8]> {
        let start = usize::try_from(at.checked_sub(self.base)?).ok()?;
        if start < self.head {
            return None;
        }
        self.buf.get(start..start.checked_add(len)?)
    }

    /// Everything before absolute offset `end` is no longer needed.
    pub(crate) fn release_to(&mut self, end: u64) {
        let Some(upto) = end
            .checked_sub(self.base)
            .and_then(|n| usize::try_from(n).ok())
        else {
            return;
        };
        self.head = self.head.max(upto.min(self.buf.len()));
        if self.head == self.buf.len() {
            // All released: start over in the same allocation.
            self.base += self.buf.len() as u64;
            self.buf.clear();
            self.head = 0;
        } else if self.head >= 64 << 10 && self.head * 2 >= self.buf.len() {
            self.buf.drain(..self.head);
            self.base += self.head as u64;
            self.head = 0;
        }
    }

    /// Drops everything from absolute offset `at` on (entries that were never written and
    /// are forgotten).
    pub(crate) fn truncate_from(&mut self, at: u64) {
        if let Some(keep) = at
            .checked_sub(self.base)
            .and_then(|n| usize::try_from(n).ok())
        {
            self.buf.truncate(keep.max(self.head));
        }
    }

    /// Drops everything.
    pub(crate) fn clear(&mut self) {
        self.base += self.buf.len() as u64;
        self.buf.clear();
        self.head = 0;
    }

    /// Bytes held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipping_records_keeps_the_rest_and_accounts_for_the_skipped() {
        let mut log = RecordLog::default();
        let mut records = Vec::new();
        for (t, p) in [(1u16, &b"aa"[..]), (2, b"bbb"), (3, b"c")] {
            records.extend_from_slice(&wire::encode_record_head(p.len() as u32, t));
            records.extend_from_slice(p);
        }
        let at = log.append(&records);
        let mut h = Held::Batch {
            first: 10,
            count: 3,
            bytes: 6,
            priority: 5,
            records: Records::Log {
                at,
                len: records.len(),
            },
        };
        let mut b = Held::Batch {
            first: 10,
            count: 3,
            bytes: 6,
            priority: 5,
            records: Records::Block(Buf::copy_from_slice(&records)),
        };
        assert_eq!(b.skip_records(2, &log), (2, 5));
        assert_eq!(b.records(&log), Some(&records[records.len() - 7..]));
        assert_eq!(h.skip_records(2, &log), (2, 5));
        assert_eq!((h.first(), h.last(), h.msgs(), h.bytes()), (12, 12, 1, 1));
        let rest = h.records(&log).unwrap();
        let got: Vec<(u16, &[u8])> = wire::batch_records(rest)
            .map(|(t, r)| (t, &rest[r]))
            .collect();
        assert_eq!(got, [(3, &b"c"[..])]);
        // At least one record always stays.
        assert_eq!(h.skip_records(5, &log), (0, 0));
    }

    #[test]
    fn offsets_survive_release_and_compaction() {
        let mut log = RecordLog::default();
        let chunk = vec![1u8; 40 << 10];
        let a = log.append(&chunk);
        let b = log.append(&[2u8; 40 << 10]);
        let c = log.append(b"tail");
        log.release_to(b);
        assert_eq!(log.get(a, 1), None, "released bytes are gone");
        assert_eq!(log.get(b, 3), Some(&[2u8, 2, 2][..]));
        log.release_to(c);
        assert_eq!(log.get(c, 4), Some(&b"tail"[..]));
        assert_eq!(log.len(), 4);
        log.truncate_from(c + 2);
        assert_eq!(log.get(c, 4), None);
        assert_eq!(log.get(c, 2), Some(&b"ta"[..]));
        log.release_to(c + 2);
        assert_eq!(log.len(), 0);
        let d = log.append(b"x");
        assert_eq!(d, c + 2);
        assert_eq!(log.get(d, 1), Some(&b"x"[..]));
    }
}
