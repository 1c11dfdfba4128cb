//! Per-connection out queue ordered by priority (Ceph's `out_q`), FIFO within a priority.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::messenger::Message;

/// A message waiting to be framed, with the time it was queued (lossy age limit).
#[derive(Debug)]
pub struct Queued {
    /// The message.
    pub msg: Message,
    /// When the application queued it.
    pub since: Instant,
}

/// Messages not yet framed, highest priority first.
#[derive(Debug, Default)]
pub struct OutQueue {
    classes: BTreeMap<u8, VecDeque<Queued>>,
    len: usize,
    bytes: usize,
}

impl OutQueue {
    /// Queues a message behind others of its priority.
    pub fn push(&mut self, q: Queued) {
        self.len += 1;
        self.bytes += q.msg.len();
        self.classes.entry(q.msg.priority).or_default().push_back(q);
    }

    /// Takes the oldest message of the highest non-empty priority.
    pub fn pop(&mut self) -> Option<Queued> {
        let mut entry = self.classes.last_entry()?;
        let q = entry.get_mut().pop_front();
        if entry.get().is_empty() {
            entry.remove();
        }
        if let Some(q) = &q {
            self.len -= 1;
            self.bytes -= q.msg.len();
        }
        q
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Payload bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Removes everything, returning (messages, bytes) dropped.
    pub fn clear(&mut self) -> (usize, usize) {
        let r = (self.len, self.bytes);
        self.classes.clear();
        self.len = 0;
        self.bytes = 0;
        r
    }
}
