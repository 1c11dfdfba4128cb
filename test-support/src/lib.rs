//! Test scaffolding shared by the integration tests of the network stacks (POSIX, DPDK, RDMA).
//! A dev-dependency only: nothing here is part of the messenger library.
//!
//! - [`mod@payload`]: payloads whose bytes are a function of (stream, sequence), so that any
//!   corruption, loss, duplication or reordering can be seen by the receiver;
//! - [`checker`]: a [`Dispatcher`](dataplane::Dispatcher) that checks every message it gets
//!   arrives exactly once, in order and byte for byte, and records connection events;
//! - [`wait`]: polling a condition with a time limit, and sending through backpressure;
//! - [`messenger`]: building, binding and starting a messenger on any stack.

pub mod checker;
pub mod messenger;
pub mod payload;
pub mod wait;

pub use checker::{Checker, Ev};
pub use messenger::start_messenger;
pub use payload::{payload, HDR};
pub use wait::{send_retry, wait_until, Backoff};
