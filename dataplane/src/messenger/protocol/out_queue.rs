//! Per-connection out queue ordered by priority (Ceph's `out_q`), FIFO within a priority.

use std::collections::VecDeque;
use std::time::Instant;

use crate::messenger::Message;

use super::RecordBlock;

/// What waits to be framed: a message, or a block of small messages the sender encoded.
#[derive(Debug)]
pub enum Outgoing {
    /// One message.
    Msg(Message),
    /// Small messages already encoded as batch records.
    Records(RecordBlock),
}

impl Outgoing {
    /// Payload bytes.
    pub fn len(&self) -> usize {
        match self {
            Outgoing::Msg(m) => m.len(),
            Outgoing::Records(b) => b.len(),
        }
    }

    /// True without payload bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages carried.
    pub fn msgs(&self) -> usize {
        match self {
            Outgoing::Msg(_) => 1,
            Outgoing::Records(b) => b.count(),
        }
    }

    /// Priority.
    pub fn priority(&self) -> u8 {
        match self {
            Outgoing::Msg(m) => m.priority,
            Outgoing::Records(b) => b.priority(),
        }
    }
}

/// A message (or record block) waiting to be framed, with the time it was queued (lossy age
/// limit).
#[derive(Debug)]
pub struct Queued {
    /// What waits.
    pub msg: Outgoing,
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
        self.len += q.msg.msgs();
        self.bytes += q.msg.len();
        self.class(q.msg.priority()).push_back(q);
    }

    /// Queues messages in order, each behind others of its priority. A run of one priority
    /// (the usual batch) goes in with one reservation and one pass.
    pub fn push_all(&mut self, msgs: std::vec::IntoIter<Message>, since: Instant) {
        let all = msgs.as_slice();
        let Some(p) = all.first().map(|m| m.priority) else {
            return;
        };
        if all.iter().any(|m| m.priority != p) {
            for msg in msgs {
                self.push(Queued {
                    msg: Outgoing::Msg(msg),
                    since,
                });
            }
            return;
        }
        self.len += all.len();
        self.bytes += all.iter().map(Message::len).sum::<usize>();
        self.class(p).extend(msgs.map(|msg| Queued {
            msg: Outgoing::Msg(msg),
            since,
        }));
    }

    /// The queue of priority `p`, created if needed.
    #[inline]
    fn class(&mut self, p: u8) -> &mut VecDeque<Queued> {
        let at = match self.classes.iter().position(|(prio, _)| *prio == p) {
            Some(i) => i,
            None => {
                let at = self.classes.partition_point(|(prio, _)| *prio > p);
                self.classes.insert(at, (p, VecDeque::new()));
                at
            }
        };
        &mut self.classes[at].1
    }

    /// Takes the oldest message of the highest non-empty priority.
    #[inline]
    pub fn pop(&mut self) -> Option<Queued> {
        let q = self.classes.iter_mut().find_map(|(_, c)| c.pop_front())?;
        self.len -= q.msg.msgs();
        self.bytes -= q.msg.len();
        Some(q)
    }

    /// Messages queued (a record block counts its messages).
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
