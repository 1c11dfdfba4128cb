//! The error type of the wire layer.

use super::tag::Tag;

/// Everything that can be wrong with bytes received from a peer, or with a
/// value handed to an encoder.
///
/// Where a variant carries `expected` and `actual` checksums, `expected` is the
/// value the frame carries (what the sender computed) and `actual` is the value
/// computed over the bytes as received.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The preamble does not start with [`MAGIC`](super::MAGIC).
    #[error(
        "bad preamble magic: expected {:#010x}, got {found:#010x}",
        super::MAGIC
    )]
    BadMagic {
        /// The magic value found on the wire.
        found: u32,
    },
    /// The preamble carries a protocol version this build does not speak.
    #[error("unsupported wire version: expected {expected}, got {found}")]
    BadVersion {
        /// The version found on the wire.
        found: u8,
        /// The version this build speaks.
        expected: u8,
    },
    /// The preamble checksum does not match its contents.
    #[error("preamble crc mismatch: expected {expected:#010x}, got {actual:#010x}")]
    PreambleCrc {
        /// The crc carried in the preamble.
        expected: u32,
        /// The crc computed over the received preamble bytes.
        actual: u32,
    },
    /// The preamble tag is not a known [`Tag`].
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    /// The preamble has flag bits set outside [`KNOWN_FLAGS`](super::KNOWN_FLAGS).
    #[error("unknown frame flags {0:#04x}")]
    UnknownFlags(u8),
    /// A known flag on a frame that must not carry it: [`FLAG_TRANSPORT_CHECKED`] on anything
    /// but an unsealed `Message` or `MessageBatch` frame.
    ///
    /// [`FLAG_TRANSPORT_CHECKED`]: super::FLAG_TRANSPORT_CHECKED
    #[error("{tag:?} frame must not carry flags {flags:#04x} (transport-checked)")]
    MisplacedFlag {
        /// The kind of the offending frame.
        tag: Tag,
        /// Its flag bits.
        flags: u8,
    },
    /// The front segment is longer than the receiver allows.
    #[error("front segment too long: {len} bytes, limit {max}")]
    FrontTooLong {
        /// The announced front length.
        len: u32,
        /// The receiver's limit.
        max: u32,
    },
    /// The data segment is longer than the receiver allows.
    #[error("data segment too long: {len} bytes, limit {max}")]
    DataTooLong {
        /// The announced data length.
        len: u32,
        /// The receiver's limit.
        max: u32,
    },
    /// A frame kind that carries no payload (or no data segment) announced one.
    #[error("{tag:?} frame must not carry this payload")]
    UnexpectedPayload {
        /// The kind of the offending frame.
        tag: Tag,
    },
    /// A frame kind that needs a payload (a front segment, or a batch's records) announced
    /// none.
    #[error("{tag:?} frame is missing its payload")]
    MissingPayload {
        /// The kind of the offending frame.
        tag: Tag,
    },
    /// A message batch whose records do not match its header (count, lengths).
    #[error("malformed message batch: {0}")]
    BadBatch(&'static str),
    /// The payload checksum in the epilogue does not match the payload.
    #[error("payload crc mismatch: expected {expected:#010x}, got {actual:#010x}")]
    PayloadCrc {
        /// The crc carried in the epilogue.
        expected: u32,
        /// The crc computed over the received payload.
        actual: u32,
    },
    /// The epilogue slice handed to the verifier is not
    /// [`EPILOGUE_LEN`](super::EPILOGUE_LEN) bytes long.
    #[error("epilogue must be {} bytes, got {len}", super::EPILOGUE_LEN)]
    EpilogueLen {
        /// The length of the slice given.
        len: usize,
    },
    /// The handshake body does not start with [`BANNER`](super::BANNER).
    #[error("bad handshake banner")]
    BadBanner,
    /// The entity name is longer than [`MAX_NAME_LEN`](super::MAX_NAME_LEN).
    #[error("entity name too long: {len} bytes, limit {max}")]
    NameTooLong {
        /// The name length announced or given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The entity name is not valid UTF-8.
    #[error("entity name is not valid UTF-8")]
    BadName,
    /// Fewer bytes than a structure needs.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// How many bytes it needs.
        need: usize,
        /// How many bytes there were.
        have: usize,
    },
    /// A handshake body field is malformed.
    #[error("malformed hello: {0}")]
    BadHello(&'static str),
    /// A close body is malformed.
    #[error("malformed close: {0}")]
    BadClose(&'static str),
}
