//! Errors of the messenger's public API.

use std::io;

use crate::buf::BufError;
use crate::messenger::Message;
use crate::stack::StackError;

/// Errors from building, binding, starting or connecting a messenger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Invalid configuration.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The configuration names a backend no registered stack provides.
    #[error(
        "backend '{0}' is not available in this build: register its stack with \
         MessengerBuilder::stack (posix: dataplane-stack-posix), or use backend = \"posix\""
    )]
    UnknownBackend(String),
    /// A stack failed.
    #[error(transparent)]
    Stack(#[from] StackError),
    /// A buffer pool could not be created.
    #[error("buffer pool: {0}")]
    Buf(#[from] BufError),
    /// An OS call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// No port in the configured range could be bound.
    #[error("no free port in {min}..={max} on {ip}")]
    NoFreePort {
        /// IP address.
        ip: std::net::IpAddr,
        /// Range start.
        min: u16,
        /// Range end.
        max: u16,
    },
    /// The call needs a started messenger.
    #[error("messenger not started")]
    NotStarted,
    /// The messenger is shutting down.
    #[error("messenger is shut down")]
    Shutdown,
    /// A worker did not answer (it panicked or exited).
    #[error("worker {0} is gone")]
    WorkerGone(usize),
    /// With a stack that listens on every worker, one worker could not listen on the
    /// address worker 0 bound (`Messenger::bind` closed the listeners it had opened).
    #[error(
        "worker {worker} cannot listen on {addr} (its stack listens on every worker): {source}"
    )]
    ListenOnWorker {
        /// The worker that failed.
        worker: usize,
        /// The address worker 0 bound.
        addr: std::net::SocketAddr,
        /// Why it failed.
        source: Box<Error>,
    },
}

/// Why a message was not accepted for sending. The message is handed back.
#[derive(Debug, thiserror::Error)]
#[error("message not sent: {kind}")]
pub struct SendError {
    /// Why.
    pub kind: SendErrorKind,
    /// The message, so the caller can retry later.
    pub message: Message,
}

/// The reasons a send can be refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// The connection's queue limit is reached (backpressure): retry after some drain.
    #[error("connection queue full ({msgs} messages, {bytes} bytes queued; limits {max_msgs} / {max_bytes})")]
    QueueFull {
        /// Messages queued.
        msgs: usize,
        /// Bytes queued.
        bytes: usize,
        /// Message limit.
        max_msgs: usize,
        /// Byte limit.
        max_bytes: usize,
    },
    /// The worker's command ring is full (backpressure).
    #[error("worker command ring full")]
    RingFull,
    /// The message is larger than the configured maximum.
    #[error("message of {len} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The connection is closed (lossy reset, refused handshake, or marked down).
    #[error("connection closed")]
    Closed,
}

/// A payload too large for a [`RecordBatch`](crate::RecordBatch) record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a record payload of {len} bytes exceeds the {max}-byte record limit; send it as a Message"
)]
pub struct RecordTooLarge {
    /// Payload length.
    pub len: usize,
    /// [`RecordBatch::MAX_PAYLOAD`](crate::RecordBatch::MAX_PAYLOAD).
    pub max: usize,
}

/// Why a [`RecordBatch`](crate::RecordBatch) was not accepted. All or nothing: the batch is
/// handed back whole.
#[derive(Debug, thiserror::Error)]
#[error("batch of {} records not sent: {kind}", batch.len())]
pub struct RecordSendError {
    /// Why.
    pub kind: SendErrorKind,
    /// The batch, so the caller can retry later.
    pub batch: crate::RecordBatch,
}

/// Why a batch was not accepted. Batches are all or nothing: every message is handed back.
#[derive(Debug, thiserror::Error)]
#[error("batch of {} messages not sent: {kind}", messages.len())]
pub struct BatchSendError {
    /// Why.
    pub kind: SendErrorKind,
    /// The messages, in order, so the caller can retry later.
    pub messages: Vec<Message>,
}
