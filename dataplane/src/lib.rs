//! # dataplane
//!
//! A message transport for moving data between machines as fast as the hardware allows: one
//! [`Messenger`] (connections, dispatch, lossless or lossy delivery, one wire protocol) over
//! pluggable network stacks (POSIX TCP on epoll in `dataplane-stack-posix`; RDMA and DPDK
//! stacks implement the same [`stack`] traits).
//!
//! Layers, in the direction data flows:
//!
//! - [`Connection::send`] puts a [`Message`] on the owning worker's command [`ring`];
//! - the worker's sans-IO [`messenger::protocol`] core frames it ([`wire`]) and the worker
//!   writes the frames with one `writev` per batch, straight from the caller's [`buf`]fers;
//! - on the peer, bytes are read into pool buffers, decoded in place, and handed to the
//!   [`Dispatcher`] inline (fast dispatch) or through the dispatch queue.
//!
//! ```no_run
//! use std::sync::Arc;
//! use dataplane::{Buf, Connection, Dispatcher, Message, Messenger};
//! use dataplane_stack_posix::PosixStack;
//!
//! struct Print;
//! impl Dispatcher for Print {
//!     fn dispatch(&self, _c: &Connection, m: Message) {
//!         println!("got {} bytes", m.len());
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Messenger::builder("server")
//!     .stack(Arc::new(PosixStack::new()))
//!     .dispatcher(Arc::new(Print))
//!     .build()?;
//! let addr = server.bind("127.0.0.1:0".parse()?)?;
//! server.start()?;
//!
//! let client = Messenger::builder("client")
//!     .stack(Arc::new(PosixStack::new()))
//!     .dispatcher(Arc::new(Print))
//!     .build()?;
//! client.start()?;
//! let conn = client.connect(addr)?;
//! conn.send(Message::new(1, Buf::from_static(b"hello")))?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod buf;
pub mod config;
pub mod counters;
pub mod error;
pub mod event;
pub mod messenger;
pub mod ring;
pub mod secure;
pub mod stack;
pub mod wire;

pub use auth::{AuthConfig, Key, Keyring, Mode as AuthMode};
pub use buf::{Buf, BufList, BufMut, BufPool, PoolConfig};
pub use config::{Config, FaultInjection};
pub use counters::CounterSnapshot;
pub use error::{BatchSendError, Error, RecordSendError, RecordTooLarge, SendError, SendErrorKind};
pub use messenger::{
    priority, Connection, Dispatcher, Message, MessageRef, Messenger, MessengerBuilder, Policy,
    RecordBatch,
};
pub use stack::{
    ConnectedSocket, NetworkStack, ServerSocket, SocketOptions, StackError, StackWorker,
};
