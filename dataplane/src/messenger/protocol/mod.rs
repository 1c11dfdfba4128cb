//! The messenger's protocol core, written sans-IO.
//!
//! Nothing here touches a socket, a thread or a clock: the [`FrameDecoder`] is fed the bytes a
//! stack read into pool buffers and yields [`Frame`]s that point into those buffers; a
//! [`Session`] consumes frames and the current time and produces frames to send (as gather
//! lists over the callers' buffers) and [`SessionEvent`]s. Every backend drives the same core,
//! and the tests drive it with no network at all.

mod decoder;
mod frame;
mod held;
mod out_queue;
mod records;
mod session;

pub use decoder::{FrameDecoder, GATHER_MIN};
pub use frame::{Frame, TxFrame};
pub(crate) use frame::{Guard, TxKind, INLINE_MAX};
pub use out_queue::{OutQueue, Outgoing, Queued};
pub(crate) use records::BlockWriter;
pub use records::{RecordBlock, BLOCK_COPY_MAX, BLOCK_MAX};
pub use session::{
    Fault, LocalIdentity, PeerIdentity, Role, Session, SessionConfig, SessionEvent, SessionState,
};

#[cfg(test)]
mod tests;
