//! Per-connection out queue ordered by priority (Ceph's `out_q`), FIFO within a priority.

use std::collections::VecDeque;
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

/// Messages not yet framed, highest priority first. Classes are kept in a short vector
/// sorted by priority (applications use a handful of priorities), so the common case of one
/// priority is a single comparison.
#[derive(Debug, Default)]
pub struct OutQueue {
    classes: Vec<(u8, VecDeque<Queued>)>,
    len: usize,
    bytes: usize,
}

impl OutQueue {
    /// Queues a message behind others of its priority.
    #[inline]
    pub fn push(&mut self, q: Queued) {
        self.len += 1;
        self.bytes += q.msg.len();
        let p = q.msg.priority;
        for (prio, class) in self.classes.iter_mut() {
            if *prio == p {
                class.push_back(q);
                return;
            }
        }
        let at = self.classes.partition_point(|(prio, _)| *prio > p);
        self.classes.insert(at, (p, VecDeque::from([q])));
    }

    /// Takes the oldest message of the highest non-empty priority.
    #[inline]
    pub fn pop(&mut self) -> Option<Queued> {
        let q = self.classes.iter_mut().find_map(|(_, c)| c.pop_front())?;
        self.len -= 1;
        self.bytes -= q.msg.len();
        Some(q)
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
