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
}

impl Message {
    /// A message of `msg_type` with the default priority.
    pub fn new(msg_type: u16, payload: impl Into<BufList>) -> Message {
        Message {
            msg_type,
            priority: priority::DEFAULT,
            payload: payload.into(),
        }
    }

    /// Sets the priority.
    pub fn with_priority(mut self, priority: u8) -> Message {
        self.priority = priority;
        self
    }

    /// Payload length in bytes.
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    /// True when the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    /// The payload as one buffer when it is contiguous (always the case for received
    /// messages), without copying.
    pub fn contiguous(&self) -> Option<&[u8]> {
        self.payload.contiguous()
    }

    /// Builds a received message from the frame's data segment (zero copy).
    #[inline]
    pub(crate) fn received(msg_type: u16, priority: u8, data: Buf) -> Message {
        Message {
            msg_type,
            priority,
            payload: BufList::from(data),
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
        }
    }
}
