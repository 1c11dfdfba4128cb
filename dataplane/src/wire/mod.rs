//! The wire protocol: frame layout, encoding, and receive-side validation.
//!
//! Every frame is a 40-byte [`Preamble`], then a payload of `front_len` bytes
//! of front segment and `data_len` bytes of data segment, then — only if the
//! payload is non-empty — a 4-byte epilogue holding the crc32c of the payload.
//! All multi-byte fields are little-endian. Headers are validated and viewed in
//! place (zerocopy); nothing is allocated from a length before the length has
//! been checked against [`Limits`].
//!
//! The handshake (`Hello`/`HelloReply`) and close bodies travel in the front
//! segment; see [`parse_hello`] and [`parse_close`].
//!
//! The full byte layout is documented in `docs/wire-protocol.md`.

mod auth;
mod batch;
mod close;
mod crc;
mod epilogue;
mod error;
mod hello;
mod preamble;
mod tag;

pub use auth::{encode_auth, parse_auth, AuthBody, AUTH_BODY_LEN, FEATURE_AUTH, FEATURE_SECURE};
pub use batch::{
    batch_records, check_batch, encode_record_head, BatchRecords, BATCH_RECORD_HEAD, FEATURE_BATCH,
};
pub use close::{encode_close, parse_close, Close, CloseHead, CLOSE_HEAD_LEN, MAX_CLOSE_REASON};
pub use crc::{crc32c, crc32c_append};
pub use epilogue::{
    encode_epilogue, payload_crc, verify_epilogue, EPILOGUE_LEN, FEATURE_TRANSPORT_CRC,
};
pub use error::WireError;
pub use hello::{
    encode_hello, parse_hello, Hello, HelloBody, HelloStatus, AF_INET, AF_INET6, AF_NONE, BANNER,
    HELLO_BODY_LEN, MAX_NAME_LEN, POLICY_LOSSLESS, POLICY_LOSSY,
};
pub use preamble::{
    encode_preamble, parse_preamble, FrameHead, Limits, Preamble, FLAG_ACK_VALID, FLAG_SEALED,
    FLAG_TRANSPORT_CHECKED, KNOWN_FLAGS, MAGIC, PREAMBLE_CRC_OFFSET, PREAMBLE_LEN, VERSION,
};
pub use tag::Tag;

#[cfg(test)]
mod tests;
