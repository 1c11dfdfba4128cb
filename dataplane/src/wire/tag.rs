//! Frame kinds.

use super::error::WireError;

/// The kind of a frame, carried in the preamble's `tag` byte.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tag {
    /// Connector's handshake; front segment is a [`HelloBody`](super::HelloBody) plus name.
    Hello = 1,
    /// Acceptor's handshake answer; same body as [`Tag::Hello`], `status` meaningful.
    HelloReply = 2,
    /// An application message: front segment, data segment, or both.
    Message = 3,
    /// A standalone acknowledgement: `ack` holds the highest seq received in order.
    Ack = 4,
    /// Liveness probe; `seq` carries an opaque stamp echoed by the answer.
    Keepalive = 5,
    /// Answer to a [`Tag::Keepalive`], echoing its `seq`.
    KeepaliveAck = 6,
    /// Orderly shutdown; front segment is a close body (see [`Close`](super::Close)).
    Close = 7,
    /// Authentication step of the handshake; front segment is an
    /// [`AuthBody`](super::AuthBody) (nonce and/or HMAC proof).
    Auth = 8,
    /// Several small application messages in one frame (negotiated with
    /// [`FEATURE_BATCH`](super::FEATURE_BATCH)): `seq` is the first record's sequence number,
    /// `msg_type` the number of records (at least one), `priority` theirs; the data segment is
    /// the records back to back, each a [`BATCH_RECORD_HEAD`](super::BATCH_RECORD_HEAD)-byte
    /// head (payload length `u32`, message type `u16`, little-endian) and its payload.
    MessageBatch = 9,
}

impl Tag {
    /// All tags, in wire-value order.
    pub const ALL: [Tag; 9] = [
        Tag::Hello,
        Tag::HelloReply,
        Tag::Message,
        Tag::Ack,
        Tag::Keepalive,
        Tag::KeepaliveAck,
        Tag::Close,
        Tag::Auth,
        Tag::MessageBatch,
    ];

    /// True for frames that must carry no payload at all (`Ack`, `Keepalive`, `KeepaliveAck`).
    pub const fn is_control(self) -> bool {
        matches!(self, Tag::Ack | Tag::Keepalive | Tag::KeepaliveAck)
    }

    /// True for frames whose payload is a non-empty front segment only
    /// (`Hello`, `HelloReply`, `Close`, `Auth`).
    pub const fn is_front_only(self) -> bool {
        matches!(self, Tag::Hello | Tag::HelloReply | Tag::Close | Tag::Auth)
    }
}

impl From<Tag> for u8 {
    fn from(t: Tag) -> u8 {
        t as u8
    }
}

impl TryFrom<u8> for Tag {
    type Error = WireError;

    fn try_from(v: u8) -> Result<Tag, WireError> {
        Ok(match v {
            1 => Tag::Hello,
            2 => Tag::HelloReply,
            3 => Tag::Message,
            4 => Tag::Ack,
            5 => Tag::Keepalive,
            6 => Tag::KeepaliveAck,
            7 => Tag::Close,
            8 => Tag::Auth,
            9 => Tag::MessageBatch,
            other => return Err(WireError::UnknownTag(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_round_trip_and_unknown() {
        for t in Tag::ALL {
            assert_eq!(Tag::try_from(u8::from(t)), Ok(t));
        }
        for v in (0..=u8::MAX).filter(|v| !(1..=9).contains(v)) {
            assert_eq!(Tag::try_from(v), Err(WireError::UnknownTag(v)));
        }
    }

    #[test]
    fn classes_are_disjoint_and_cover_all_but_messages() {
        for t in Tag::ALL {
            assert!(!(t.is_control() && t.is_front_only()));
            assert_eq!(
                matches!(t, Tag::Message | Tag::MessageBatch),
                !t.is_control() && !t.is_front_only()
            );
        }
    }
}
