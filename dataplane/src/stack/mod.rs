//! The network stack abstraction (Ceph's `NetworkStack` / `Worker` / `ServerSocket` /
//! `ConnectedSocket`).
//!
//! A stack only moves bytes: listen, connect, accept, read into pool buffers, send a
//! scatter-gather list. Framing, handshake, sequencing and every other protocol concern live in
//! the messenger's sans-IO core, shared by all stacks.
//!
//! A [`NetworkStack`] is shared by all workers; on each worker thread it creates a
//! [`StackWorker`], which owns that worker's share of the backend (nothing for POSIX, an RX/TX
//! queue for DPDK, a protection domain and completion queue for RDMA).

use std::io::{self, IoSlice};
use std::net::SocketAddr;

use mio::{Registry, Token};

use crate::buf::BufMut;
use crate::event::Poller;

/// Socket options every stack understands (and may ignore where they make no sense).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// Disable Nagle (TCP_NODELAY). On by default: the messenger batches writes itself.
    pub nodelay: bool,
    /// Kernel receive buffer size in bytes, if set.
    pub recv_buffer: Option<usize>,
    /// Kernel send buffer size in bytes, if set.
    pub send_buffer: Option<usize>,
    /// Listen backlog.
    pub backlog: u32,
}

impl Default for SocketOptions {
    fn default() -> Self {
        SocketOptions {
            nodelay: true,
            recv_buffer: None,
            send_buffer: None,
            backlog: 1024,
        }
    }
}

/// Why a stack could not do what it was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StackError {
    /// The backend is not usable on this machine (missing library, device or permission).
    #[error("{backend} backend unavailable: {reason}")]
    Unavailable {
        /// Backend name.
        backend: String,
        /// What is missing and how to get it.
        reason: String,
    },
    /// Binding a listening socket failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Starting an outgoing connection failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The peer address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Any other I/O failure, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// A network backend shared by all workers of a messenger.
pub trait NetworkStack: Send + Sync + 'static {
    /// Short backend name (`posix`, `rdma`, `dpdk`), as used in the configuration.
    fn name(&self) -> &'static str;

    /// Creates the per-worker part of the stack. Called on the worker thread itself, once.
    fn create_worker(&self, index: usize) -> Result<Box<dyn StackWorker>, StackError>;

    /// True if every worker must listen on the bound address itself (Ceph's
    /// `support_local_listen_table`): accepted sockets then stay on the worker that accepted them.
    ///
    /// [`Messenger::bind`](crate::Messenger::bind) then makes worker 0 bind first (resolving
    /// port 0 or a port range to a concrete port) and every other worker listen on that same
    /// address. Sockets such a stack accepts should report their worker through
    /// [`ConnectedSocket::home_worker`].
    fn listen_on_every_worker(&self) -> bool {
        false
    }
}

/// One worker's share of a stack. Lives on, and is only used from, its worker thread.
pub trait StackWorker {
    /// Starts listening on `addr`.
    fn listen(
        &mut self,
        addr: SocketAddr,
        opts: &SocketOptions,
    ) -> Result<Box<dyn ServerSocket>, StackError>;

    /// Starts a non-blocking connect to `addr`. Completion is reported by writability; the
    /// messenger then calls [`ConnectedSocket::finish_connect`].
    fn connect(
        &mut self,
        addr: SocketAddr,
        opts: &SocketOptions,
    ) -> Result<Box<dyn ConnectedSocket>, StackError>;

    /// Busy-poll hooks this worker needs (none for POSIX).
    fn take_pollers(&mut self) -> Vec<Box<dyn Poller>> {
        Vec::new()
    }
}

/// A listening socket.
pub trait ServerSocket: Send {
    /// Accepts one pending connection, `Ok(None)` when none is pending.
    fn accept(
        &mut self,
        opts: &SocketOptions,
    ) -> io::Result<Option<(Box<dyn ConnectedSocket>, SocketAddr)>>;

    /// The address actually bound.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Registers with an event loop (edge-triggered readability).
    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()>;

    /// Removes it from the event loop.
    fn deregister(&mut self, registry: &Registry) -> io::Result<()>;
}

/// An established (or connecting) byte stream. `Send` so an accepted socket can be handed to
/// the least-loaded worker (unless it is bound to one: [`ConnectedSocket::home_worker`]).
pub trait ConnectedSocket: Send {
    /// The only worker that may drive this socket, if it is bound to one (`None`: any worker).
    ///
    /// A new session for a bound socket is created on that worker; an existing session (a
    /// lossless client reconnecting) owned by another worker migrates to it.
    fn home_worker(&self) -> Option<usize> {
        None
    }

    /// Registers with an event loop for edge-triggered readability and writability.
    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()>;

    /// Removes it from the event loop.
    fn deregister(&mut self, registry: &Registry) -> io::Result<()>;

    /// For an outgoing connection: `Ok(true)` once connected, `Ok(false)` while in progress,
    /// `Err` if the connect failed.
    fn finish_connect(&mut self) -> io::Result<bool>;

    /// Reads into the spare capacity of `buf` and marks the bytes filled. `Ok(0)` is end of
    /// stream; `WouldBlock` means drained.
    fn read(&mut self, buf: &mut BufMut) -> io::Result<usize>;

    /// Sends a gather list in one call (`writev`). The slices point into the callers' buffers:
    /// no copy is made in user space. Returns the bytes accepted (may be short).
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize>;

    /// True if a read that returns fewer bytes than offered proves the socket is drained, so
    /// the caller may stop reading until the next readiness event (saving the read that would
    /// only return `WouldBlock`). True for kernel stream sockets with edge-triggered epoll:
    /// bytes arriving later raise a new event. Defaults to false (read until `WouldBlock`).
    fn short_read_drains(&self) -> bool {
        false
    }

    /// The peer's address.
    fn peer_addr(&self) -> io::Result<SocketAddr>;

    /// Shuts both directions down; later calls fail.
    fn shutdown(&mut self);
}
