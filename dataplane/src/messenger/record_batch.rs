//! Small messages written by the application straight into wire records.

use crate::error::RecordTooLarge;
use crate::messenger::priority;
use crate::messenger::protocol::{BlockWriter, RecordBlock, BLOCK_COPY_MAX};

/// A batch of small messages written straight into the records the worker puts on the wire,
/// for [`Connection::send_records`](crate::Connection::send_records).
///
/// [`push`](RecordBatch::push) copies a payload of at most [`RecordBatch::MAX_PAYLOAD`] bytes
/// into the batch's record blocks, on the calling thread. That one copy is the only one:
/// there is no [`Message`](crate::Message) and no [`Buf`](crate::Buf) per message, so
/// nothing is allocated or reference-counted per message, and the worker frames each block
/// of up to 8 KiB with one preamble and one crc. It is what
/// [`Connection::send_batch`](crate::Connection::send_batch) does with small messages after
/// they were built; an application that produces many small messages (requests, events,
/// heartbeats) from plain bytes saves building them.
///
/// The receiver sees ordinary messages. A batch is sent all or nothing, in order, after
/// everything sent on the connection before it.
///
/// ```
/// use dataplane::RecordBatch;
///
/// let mut batch = RecordBatch::with_capacity(2, 9);
/// batch.push(7, b"hello")?;
/// batch.push(8, b"bye!")?;
/// assert_eq!(batch.len(), 2);
/// assert_eq!(batch.payload_bytes(), 9);
/// // conn.send_records(batch)?;
/// # Ok::<(), dataplane::RecordTooLarge>(())
/// ```
#[derive(Debug)]
pub struct RecordBatch {
    writer: BlockWriter,
    priority: u8,
    messages: usize,
    bytes: usize,
    largest: usize,
}

impl Default for RecordBatch {
    fn default() -> Self {
        RecordBatch::new()
    }
}

impl RecordBatch {
    /// The largest payload a record may carry (1 KiB); send larger ones as a
    /// [`Message`](crate::Message), which is never copied.
    pub const MAX_PAYLOAD: usize = BLOCK_COPY_MAX;

    /// An empty batch; messages get the default priority.
    pub fn new() -> RecordBatch {
        RecordBatch::with_capacity(0, 0)
    }

    /// An empty batch that expects about `messages` messages of `payload_bytes` bytes in all,
    /// so its blocks are allocated once at their final size.
    pub fn with_capacity(messages: usize, payload_bytes: usize) -> RecordBatch {
        let heads = messages.saturating_mul(crate::wire::BATCH_RECORD_HEAD);
        RecordBatch {
            writer: BlockWriter::expecting(heads.saturating_add(payload_bytes)),
            priority: priority::DEFAULT,
            messages: 0,
            bytes: 0,
            largest: 0,
        }
    }

    /// Sets the priority of the messages pushed from now on (see
    /// [`priority`](crate::priority)).
    pub fn set_priority(&mut self, priority: u8) {
        self.priority = priority;
    }

    /// Appends a message of `msg_type` with a copy of `payload`. Refused when `payload` is
    /// larger than [`RecordBatch::MAX_PAYLOAD`].
    #[inline]
    pub fn push(&mut self, msg_type: u16, payload: &[u8]) -> Result<(), RecordTooLarge> {
        let len = payload.len();
        if len > Self::MAX_PAYLOAD {
            return Err(RecordTooLarge {
                len,
                max: Self::MAX_PAYLOAD,
            });
        }
        self.writer.push_slice(self.priority, msg_type, payload);
        self.messages += 1;
        self.bytes += len;
        self.largest = self.largest.max(len);
        Ok(())
    }

    /// Messages in the batch.
    pub fn len(&self) -> usize {
        self.messages
    }

    /// True if the batch holds no message.
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Payload bytes in the batch (record heads not counted).
    pub fn payload_bytes(&self) -> usize {
        self.bytes
    }

    /// The largest payload in the batch.
    pub(crate) fn largest(&self) -> usize {
        self.largest
    }

    /// The blocks, for the worker; [`restore`](RecordBatch::restore) puts them back when the
    /// send fails.
    pub(crate) fn take_blocks(&mut self) -> Vec<RecordBlock> {
        self.writer.take_blocks()
    }

    /// Puts back the blocks of a failed send.
    pub(crate) fn restore(&mut self, blocks: Vec<RecordBlock>) {
        self.writer.restore_blocks(blocks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messenger::protocol::BLOCK_MAX;
    use crate::Message;

    fn messages(b: &mut RecordBatch) -> Vec<Message> {
        let blocks = b.take_blocks();
        let out = blocks.iter().flat_map(RecordBlock::to_messages).collect();
        b.restore(blocks);
        out
    }

    #[test]
    fn pushed_records_come_back_as_messages_in_order() {
        let mut b = RecordBatch::with_capacity(400, 400 * 37);
        for i in 0..400u16 {
            if i == 300 {
                b.set_priority(priority::HIGH);
            }
            b.push(i, &vec![i as u8; usize::from(i % 75)]).unwrap();
        }
        assert_eq!(b.len(), 400);
        let want: usize = (0..400).map(|i| i % 75).sum();
        assert_eq!(b.payload_bytes(), want);
        assert_eq!(b.largest(), 74);
        let blocks = b.take_blocks();
        assert!(blocks.len() > 1, "{} blocks", blocks.len());
        assert!(blocks.iter().all(|k| k.records.len() <= BLOCK_MAX));
        b.restore(blocks);
        let got = messages(&mut b);
        assert_eq!(got.len(), 400);
        for (i, m) in got.iter().enumerate() {
            assert_eq!(usize::from(m.msg_type), i);
            assert_eq!(m.payload.to_vec(), vec![i as u8; i % 75]);
            let want = if i >= 300 {
                priority::HIGH
            } else {
                priority::DEFAULT
            };
            assert_eq!(m.priority, want);
        }
        // Restored blocks stay ahead of records pushed after a failed send.
        b.push(999, b"late").unwrap();
        let again = messages(&mut b);
        assert_eq!(again.len(), 401);
        assert_eq!(again[400].msg_type, 999);
    }

    #[test]
    fn a_payload_over_the_record_limit_is_refused_and_the_batch_unchanged() {
        let mut b = RecordBatch::new();
        b.push(1, &[0; RecordBatch::MAX_PAYLOAD]).unwrap();
        let e = b.push(2, &[0; RecordBatch::MAX_PAYLOAD + 1]).unwrap_err();
        assert_eq!(e.len, RecordBatch::MAX_PAYLOAD + 1);
        assert!(e.to_string().contains("send it as a Message"), "{e}");
        assert_eq!(b.len(), 1);
        assert_eq!(messages(&mut b).len(), 1);
    }

    #[test]
    fn blocks_hold_as_many_whole_records_as_fit() {
        let mut b = RecordBatch::with_capacity(256, 256 * 64);
        for _ in 0..256 {
            b.push(1, &[7; 64]).unwrap();
        }
        // 70-byte records: 117 fit in BLOCK_MAX (8 KiB), the rest start new blocks.
        let counts: Vec<usize> = b.take_blocks().iter().map(RecordBlock::count).collect();
        assert_eq!(counts, [117, 117, 22]);
    }
}
