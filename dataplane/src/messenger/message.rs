//! The unit the messenger moves: a typed, prioritised payload.

use crate::buf::{Buf, BufList};

/// Message priorities (Ceph's `CEPH_MSG_PRIO_*`). Higher goes first, both on the wire (the
/// out queue) and in the dispatch queue.
pub mod priority {
    /// Cluster-critical traffic (heartbeats, map updates).
    pub const HIGHEST: u8 = 255;
    /// Above normal.
    pub const HIGH: u8 = 196;
    /// Default for user messages.
    pub const DEFAULT: u8 = 127;
    /// Background traffic (recovery, scrub).
    pub const LOW: u8 = 64;
}

/// One application message. Cloning is cheap: the payload is a list of refcounted buffers.
#[derive(Clone, Debug)]
pub struct Message {
    /// Application-defined message type.
    pub msg_type: u16,
    /// Priority, see [`priority`].
    pub priority: u8,
    /// The payload, never copied on its way to the socket.
    pub payload: BufList,
    /// The crc32c of `payload`, computed by [`Connection::send`](crate::Connection::send) on
    /// the sending thread once the message left the application's hands (so the payload can
    /// no longer change): the worker then frames it without another pass over the bytes.
    /// Cleared on every path that hands the message back.
    crc: Option<u32>,
}

impl Message {
    /// A message of `msg_type` with the default priority.
    pub fn new(msg_type: u16, payload: impl Into<BufList>) -> Message {
        Message {
            msg_type,
            priority: priority::DEFAULT,
            payload: payload.into(),
            crc: None,
        }
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: u8) -> Message {
        self.priority = priority;
        self
    }

    /// Computes the payload's crc32c now, on the calling thread, when the worker would
    /// otherwise compute it (payloads framed on their own, larger than
    /// `INLINE_MAX`). Only for a message the
    /// application can no longer change: see the `crc` field.
    pub(crate) fn memo_crc(&mut self) {
        self.crc = (self.len() > super::protocol::INLINE_MAX)
            .then(|| crate::wire::payload_crc(self.payload.iter().map(|b| &b[..])));
    }

    /// Forgets the memo: the message goes back to the application.
    pub(crate) fn forget_crc(&mut self) {
        self.crc = None;
    }

    /// The payload crc computed on the sending thread, if any.
    pub(crate) fn payload_crc(&self) -> Option<u32> {
        self.crc
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// True when the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    /// The payload as one buffer when it is contiguous, without copying. Received messages
    /// are, except a large one (at least 64 KiB) that arrived spread over several buffers
    /// an RDMA stack lent: its payload is a list of those buffers' slices (iterate
    /// [`Message::payload`] instead of copying it together).
    pub fn contiguous(&self) -> Option<&[u8]> {
        self.payload.contiguous()
    }

    /// Builds a received message from the frame's data segment, one buffer or the pieces it
    /// was gathered from (zero copy).
    #[inline]
    pub(crate) fn received(msg_type: u16, priority: u8, data: impl Into<BufList>) -> Message {
        Message {
            msg_type,
            priority,
            payload: data.into(),
            crc: None,
        }
    }
}

/// A received message borrowed from the receive buffer, for a dispatcher that handles it in
/// place ([`Dispatcher::in_place`](crate::Dispatcher::in_place)): no `Message` is built and no
/// reference count is taken. The payload is valid only for the duration of the call.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    /// Application-defined message type.
    pub msg_type: u16,
    /// Priority, see [`priority`].
    pub priority: u8,
    /// The payload, in the receive buffer.
    pub payload: &'a [u8],
}

impl MessageRef<'_> {
    /// An owned message with a copy of the payload (for keeping it past the call).
    pub fn to_message(&self) -> Message {
        Message {
            msg_type: self.msg_type,
            priority: self.priority,
            payload: BufList::from(Buf::copy_from_slice(self.payload)),
            crc: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(lens: &[usize]) -> Message {
        let mut list = BufList::new();
        for (i, &n) in lens.iter().enumerate() {
            list.push(Buf::copy_from_slice(&vec![i as u8 ^ 0x5a; n]));
        }
        Message::new(7, list)
    }

    #[test]
    fn the_sender_side_crc_is_the_frames_payload_crc_and_is_forgotten_on_the_way_back() {
        let mut m = parts(&[300, 1, 4096]);
        assert_eq!(m.payload_crc(), None, "a new message has none");
        m.memo_crc();
        let whole = crate::wire::payload_crc(m.payload.iter().map(|b| b.as_slice()));
        assert_eq!(m.payload_crc(), Some(whole));
        m.forget_crc();
        assert_eq!(m.payload_crc(), None);
        // Small payloads are copied into their frame and crc'd in that pass: no memo.
        let mut small = parts(&[100, 156]);
        small.memo_crc();
        assert_eq!(small.payload_crc(), None);
        assert_eq!(Message::received(1, 2, Buf::new()).payload_crc(), None);
    }
}
