//! Frames as the protocol core sees them: received frames point into receive buffers,
//! frames to send hold their header bytes and refer to the payload buffers.

use std::io::IoSlice;

use crate::buf::{Buf, BufList};
use crate::wire::{self, FrameHead, Tag, EPILOGUE_LEN, PREAMBLE_LEN};

/// A received, fully validated frame. `front` and `data` are slices of the receive buffer.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Frame kind.
    pub tag: Tag,
    /// Flag bits (see `wire::FLAG_*`).
    pub flags: u8,
    /// Message priority.
    pub priority: u8,
    /// Application message type (messages only).
    pub msg_type: u16,
    /// Sequence number (messages only).
    pub seq: u64,
    /// Piggy-backed acknowledgement, valid when `flags` has `FLAG_ACK_VALID`.
    pub ack: u64,
    /// Front segment (handshake and close bodies).
    pub front: Buf,
    /// Data segment (message payload).
    pub data: Buf,
}

impl Frame {
    /// The acknowledgement this frame carries, if any.
    pub fn ack(&self) -> Option<u64> {
        if self.tag == Tag::Ack || self.flags & wire::FLAG_ACK_VALID != 0 {
            Some(self.ack)
        } else {
            None
        }
    }
}

/// What a frame being sent stands for, so the session knows what to do once it is written.
#[derive(Debug)]
pub(crate) enum TxKind {
    /// A sequenced application message; `bytes` counted against the queue limit.
    Message {
        /// Its sequence number.
        seq: u64,
        /// The message, kept for resending on lossless connections.
        msg: crate::messenger::Message,
    },
    /// A control frame (hello, ack, keepalive, close).
    Control,
}

/// A frame queued for sending: preamble and epilogue bytes owned here, payload borrowed from
/// the caller's buffers (refcounted), so building the gather list copies nothing.
#[derive(Debug)]
pub struct TxFrame {
    head: [u8; PREAMBLE_LEN],
    front: Option<Buf>,
    epilogue: [u8; EPILOGUE_LEN],
    has_epilogue: bool,
    pub(crate) kind: TxKind,
    len: usize,
}

impl TxFrame {
    /// Encodes a frame around `front` (control body) and `data` (message payload).
    pub(crate) fn new(mut head: FrameHead, front: Option<Buf>, kind: TxKind) -> TxFrame {
        let front_len = front.as_ref().map_or(0, |b| b.len());
        let data: Option<&BufList> = match &kind {
            TxKind::Message { msg, .. } => Some(&msg.payload),
            TxKind::Control => None,
        };
        let data_len = data.map_or(0, |d| d.len());
        // Lengths were bounded by the sender (queue limits and max frame size), so they fit.
        head.front_len = front_len as u32;
        head.data_len = data_len as u32;
        let has_epilogue = front_len + data_len > 0;
        let mut epilogue = [0u8; EPILOGUE_LEN];
        if has_epilogue {
            let parts = front.iter().map(|b| b.as_slice()).chain(
                data.into_iter()
                    .flat_map(|d| d.iter().map(|b| b.as_slice())),
            );
            epilogue = wire::encode_epilogue(wire::payload_crc(parts));
        }
        TxFrame {
            head: wire::encode_preamble(&head),
            front,
            epilogue,
            has_epilogue,
            kind,
            len: PREAMBLE_LEN + front_len + data_len + if has_epilogue { EPILOGUE_LEN } else { 0 },
        }
    }

    /// Total encoded length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a frame has at least a preamble.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the gather list of this frame, skipping its first `skip` bytes (already sent).
    /// Returns the number of slices added; stops early when `out` reaches `max` slices.
    pub(crate) fn io_slices<'a>(
        &'a self,
        mut skip: usize,
        out: &mut Vec<IoSlice<'a>>,
        max: usize,
    ) -> usize {
        let start = out.len();
        let mut push = |s: &'a [u8], out: &mut Vec<IoSlice<'a>>| -> bool {
            if out.len() >= max {
                return false;
            }
            if skip >= s.len() {
                skip -= s.len();
                return true;
            }
            out.push(IoSlice::new(&s[skip..]));
            skip = 0;
            true
        };
        if !push(&self.head, out) {
            return out.len() - start;
        }
        if let Some(f) = &self.front {
            if !push(f.as_slice(), out) {
                return out.len() - start;
            }
        }
        if let TxKind::Message { msg, .. } = &self.kind {
            for b in msg.payload.iter() {
                if !push(b.as_slice(), out) {
                    return out.len() - start;
                }
            }
        }
        if self.has_epilogue {
            push(&self.epilogue, out);
        }
        out.len() - start
    }
}
