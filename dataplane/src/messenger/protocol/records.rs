//! Small messages encoded as batch records by the thread that sends them.
//!
//! [`Connection::send_batch`](crate::Connection::send_batch) copies the payloads of small
//! messages into record blocks on the caller's thread (as a codec encodes on the sending task)
//! and drops the messages there. The worker then frames a whole block with one preamble and
//! one crc and writes it by reference: nothing per message crosses to the worker thread, and
//! a payload buffer's reference count is never touched from two cores.

use crate::buf::Buf;
use crate::messenger::Message;
use crate::wire;

/// Record bytes in one block at most (one batch frame each; see the session's batch limit).
pub const BLOCK_MAX: usize = 8 << 10;

/// Payloads up to this size are encoded into record blocks by
/// [`Connection::send_batch`](crate::Connection::send_batch); larger ones are sent by
/// reference, never copied.
///
/// Why a copy up to 1 KiB: a message framed and written on its own costs the worker about a
/// thousand instructions (sequence, preamble and its crc, queue entries, a gather-list
/// segment, holding and releasing it); copying 1 KiB costs a few dozen, on the sending
/// thread, and the crc of the block is taken in one pass. Measured with the `stream_cost`
/// example under callgrind (`docs/benchmarks.md`).
pub const BLOCK_COPY_MAX: usize = 1024;

/// Consecutive small messages of one priority, encoded as batch records (see
/// [`wire::batch_records`]), ready to be framed as one `MessageBatch`.
#[derive(Debug, Clone)]
pub struct RecordBlock {
    pub(crate) records: Buf,
    pub(crate) count: u16,
    pub(crate) bytes: usize,
    pub(crate) priority: u8,
}

impl RecordBlock {
    /// True if `msg` may go into a block (its payload is at most [`BLOCK_COPY_MAX`] bytes).
    pub fn fits(msg: &Message) -> bool {
        msg.len() <= BLOCK_COPY_MAX
    }

    /// Encodes `msgs`, all of which [`fit`](RecordBlock::fits), into blocks of at most
    /// [`BLOCK_MAX`] record bytes, a new block at every change of priority.
    ///
    /// Why a copy: small payloads are copied once on every send path (a gather-list entry per
    /// 64-byte payload costs the kernel more than the copy); here the copy is made by the
    /// sending thread, into the buffer that is then written as it is.
    pub fn encode(msgs: &[Message]) -> Vec<RecordBlock> {
        let expected = msgs.iter().map(|m| wire::BATCH_RECORD_HEAD + m.len()).sum();
        let mut w = BlockWriter::expecting(expected);
        for m in msgs {
            w.push(
                m.priority,
                m.msg_type,
                m.len(),
                m.payload.iter().map(|b| &b[..]),
            );
        }
        w.finish()
    }

    /// Messages in the block.
    pub fn count(&self) -> usize {
        usize::from(self.count)
    }

    /// Payload bytes in the block (record heads not counted).
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// True if the block carries no payload bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The block's priority.
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// The messages again, for a peer that does not take batches (their payloads are slices
    /// of the block: no copy).
    pub fn to_messages(&self) -> Vec<Message> {
        let bytes = self.records.as_slice();
        wire::batch_records(bytes)
            .filter_map(|(msg_type, r)| {
                let payload = self.records.try_slice(r)?;
                Some(Message::new(msg_type, payload).with_priority(self.priority))
            })
            .collect()
    }
}

/// Writes records into [`RecordBlock`]s as they come: at most [`BLOCK_MAX`] record bytes per
/// block (a single larger record gets a block of its own), a new block at every change of
/// priority. Shared by [`RecordBlock::encode`] and [`RecordBatch`](crate::RecordBatch).
#[derive(Debug, Default)]
pub(crate) struct BlockWriter {
    /// Closed blocks, in order.
    blocks: Vec<RecordBlock>,
    /// The block being written.
    open: Vec<u8>,
    count: u16,
    bytes: usize,
    priority: u8,
    /// Record bytes the caller still expects to write: the next block's capacity, so a block
    /// is allocated once at its final size instead of growing (0: unknown).
    expected: usize,
}

/// Capacity of a block opened with nothing expected; it grows as records come.
const FIRST_CAPACITY: usize = 1024;

impl BlockWriter {
    /// A writer that expects `record_bytes` bytes of records (heads included).
    pub(crate) fn expecting(record_bytes: usize) -> BlockWriter {
        BlockWriter {
            expected: record_bytes,
            ..BlockWriter::default()
        }
    }

    /// Appends one record of `len` payload bytes, given as `parts`, with `priority`. The
    /// caller bounds `len` by [`BLOCK_COPY_MAX`].
    pub(crate) fn push<'a>(
        &mut self,
        priority: u8,
        msg_type: u16,
        len: usize,
        parts: impl IntoIterator<Item = &'a [u8]>,
    ) {
        self.open_for(priority, msg_type, len);
        for p in parts {
            self.open.extend_from_slice(p);
        }
    }

    /// [`push`](BlockWriter::push) of a payload in one slice (the application's records).
    #[inline]
    pub(crate) fn push_slice(&mut self, priority: u8, msg_type: u16, payload: &[u8]) {
        self.open_for(priority, msg_type, payload.len());
        self.open.extend_from_slice(payload);
    }

    /// Makes room for a record of `len` payload bytes (closing the open block or opening a
    /// new one as needed), writes its head and counts it; the caller writes the payload.
    #[inline]
    fn open_for(&mut self, priority: u8, msg_type: u16, len: usize) {
        debug_assert!(len <= BLOCK_COPY_MAX);
        let record = wire::BATCH_RECORD_HEAD + len;
        if self.count > 0
            && (priority != self.priority
                || self.count == u16::MAX
                || self.open.len() + record > BLOCK_MAX)
        {
            self.close();
        }
        if self.count == 0 {
            self.priority = priority;
            let want = match self.expected {
                0 => FIRST_CAPACITY,
                e => e.min(BLOCK_MAX),
            };
            self.open.reserve(want.max(record));
        }
        // `len` <= BLOCK_COPY_MAX (callers), so it fits a u32.
        self.open
            .extend_from_slice(&wire::encode_record_head(len as u32, msg_type));
        self.count += 1;
        self.bytes += len;
        self.expected = self.expected.saturating_sub(record);
    }

    /// Closes the open block, if it holds any record.
    fn close(&mut self) {
        if self.count == 0 {
            return;
        }
        self.blocks.push(RecordBlock {
            records: Buf::from_vec(std::mem::take(&mut self.open)),
            count: self.count,
            bytes: self.bytes,
            priority: self.priority,
        });
        self.count = 0;
        self.bytes = 0;
    }

    /// Closes the open block and takes every block out; the writer stays usable.
    pub(crate) fn take_blocks(&mut self) -> Vec<RecordBlock> {
        self.close();
        std::mem::take(&mut self.blocks)
    }

    /// Puts back blocks taken by [`take_blocks`](BlockWriter::take_blocks) (a send that
    /// failed), ahead of anything written since.
    pub(crate) fn restore_blocks(&mut self, mut blocks: Vec<RecordBlock>) {
        blocks.append(&mut self.blocks);
        self.blocks = blocks;
    }

    /// Every block, the open one closed.
    pub(crate) fn finish(mut self) -> Vec<RecordBlock> {
        self.take_blocks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messenger::priority;

    #[test]
    fn blocks_split_at_priority_changes_and_size_and_round_trip() {
        let mut msgs: Vec<Message> = (0..300u32)
            .map(|i| Message::new(i as u16, Buf::from_vec(vec![i as u8; (i % 200) as usize])))
            .collect();
        msgs[150] = msgs[150].clone().with_priority(priority::HIGH);
        let blocks = RecordBlock::encode(&msgs);
        assert!(blocks.iter().all(|b| b.records.len() <= BLOCK_MAX));
        assert!(blocks
            .iter()
            .any(|b| b.priority == priority::HIGH && b.count == 1));
        assert_eq!(blocks.iter().map(RecordBlock::count).sum::<usize>(), 300);
        let again: Vec<Message> = blocks.iter().flat_map(RecordBlock::to_messages).collect();
        assert_eq!(again.len(), msgs.len());
        for (a, b) in again.iter().zip(&msgs) {
            assert_eq!(a.msg_type, b.msg_type);
            assert_eq!(a.priority, b.priority);
            assert_eq!(a.payload.to_vec(), b.payload.to_vec());
        }
        for b in &blocks {
            assert_eq!(wire::check_batch(b.records.as_slice(), b.count), Ok(()));
            assert_eq!(
                b.len(),
                b.to_messages().iter().map(Message::len).sum::<usize>()
            );
        }
    }
}
