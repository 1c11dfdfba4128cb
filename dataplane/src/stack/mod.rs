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

use crate::buf::{Buf, BufMut};
use crate::event::Poller;

/// One piece of a gather list handed to [`ConnectedSocket::send_segments`].
///
/// The head of a frame whose payload is `Shared` always starts a `Staged` segment of its own
/// (when the frame is sent from its start): a `Staged` segment followed by a `Shared` one is
/// exactly that frame's head, so a stack can tell where such a frame begins (an RDMA stack
/// starts a SEND there, so the frame lands whole in one receive buffer it can lend).
#[derive(Debug, Clone, Copy)]
pub enum Segment<'a> {
    /// Bytes the caller keeps (staged frame headers, checksums): the stack must copy them (or
    /// finish with them) before `send_segments` returns.
    Staged(&'a [u8]),
    /// The bytes of `buf` from offset `off` on. The stack may keep a clone of `buf` (a
    /// reference-count increment, never a copy) and read the bytes until its send completes:
    /// a `Buf` is immutable, so they stay as they are while any clone lives.
    Shared {
        /// The buffer (a payload the messenger holds).
        buf: &'a Buf,
        /// Where in `buf` the segment starts (the bytes before it were already sent).
        off: usize,
    },
}

impl<'a> Segment<'a> {
    /// The segment's bytes.
    pub fn bytes(&self) -> &'a [u8] {
        match *self {
            Segment::Staged(s) => s,
            Segment::Shared { buf, off } => buf.as_slice().get(off..).unwrap_or(&[]),
        }
    }

    /// Number of bytes in the segment.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// True if the segment has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer the stack may keep, for a [`Segment::Shared`].
    pub fn shared(&self) -> Option<&'a Buf> {
        match *self {
            Segment::Staged(_) => None,
            Segment::Shared { buf, .. } => Some(buf),
        }
    }
}

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

    /// True if every byte this stack's connections carry is checked end to end by the
    /// transport with a 32-bit CRC of its own, and a connection delivers in
    /// order or fails (RDMA: the invariant CRC of every RoCE or InfiniBand packet, checked by
    /// the receiving device, on a reliable-connected queue pair). The messenger then offers
    /// to leave payload crcs out (`wire::FEATURE_TRANSPORT_CRC`, unless
    /// `Config::trust_transport_crc` is off). Defaults to false: TCP's 16-bit checksum does
    /// not qualify.
    fn checks_integrity(&self) -> bool {
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

    /// Called before the worker acts on an event of this socket's token that the kernel
    /// reported for one of its registered files, not on a readiness report of a poller. A
    /// socket with several sources under one token (RDMA: completion queue, side channel)
    /// learns from it that a file, and not only a queue, may have something: it can skip
    /// system calls on that file otherwise. Default: nothing.
    fn on_file_event(&mut self) {}

    /// Removes it from the event loop.
    fn deregister(&mut self, registry: &Registry) -> io::Result<()>;

    /// For an outgoing connection: `Ok(true)` once connected, `Ok(false)` while in progress,
    /// `Err` if the connect failed.
    fn finish_connect(&mut self) -> io::Result<bool>;

    /// Reads into the spare capacity of `buf` and marks the bytes filled. `Ok(0)` is end of
    /// stream; `WouldBlock` means drained.
    fn read(&mut self, buf: &mut BufMut) -> io::Result<usize>;

    /// Zero-copy receive: the next received bytes as a buffer the stack lends whole (its
    /// filled bytes are the data, in stream order, before anything a later `read` returns),
    /// when it has one ready and lending pays; `None` otherwise, and then the caller reads
    /// with [`ConnectedSocket::read`] (which also reports errors and end of stream). The
    /// messenger asks before every read: every frame that lies whole in the lent buffer
    /// reaches the application without a copy; only a frame that straddles into it from the
    /// previous buffer is copied (its own bytes). An RDMA stack lends the receive buffer a
    /// SEND landed in and posts a fresh one in its place. Defaults to `None`.
    fn read_lent(&mut self) -> Option<BufMut> {
        None
    }

    /// Sends a gather list in one call (`writev`). The slices point into the callers' buffers:
    /// no copy is made in user space. Returns the bytes accepted (may be short).
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize>;

    /// True if the socket wants its output through [`ConnectedSocket::send_segments`] (it can
    /// send payload buffers without copying them by keeping them until the send completes,
    /// as the RDMA stack does). Defaults to false: the caller uses `writev`. Such a socket
    /// still gets `writev` for the connection's handshake frames, which are staged bytes.
    fn wants_segments(&self) -> bool {
        false
    }

    /// Sends a gather list of [`Segment`]s in one call: [`Segment::Staged`] bytes the stack
    /// must copy before returning, [`Segment::Shared`] buffers it may keep (cloned) until their
    /// send completes instead of copying them. Same contract as `writev` otherwise: returns
    /// the bytes accepted, which may be short; `WouldBlock` when nothing was.
    ///
    /// The default sends the same bytes with [`ConnectedSocket::writev`].
    fn send_segments(&mut self, segs: &[Segment<'_>]) -> io::Result<usize> {
        let iov: Vec<IoSlice<'_>> = segs.iter().map(|s| IoSlice::new(s.bytes())).collect();
        self.writev(&iov)
    }

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

/// Test sockets.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;

    /// Records what is written (at most `cap` bytes per call, only through `writev`), reads
    /// nothing; reports `home` as its worker.
    pub(crate) struct Sink {
        pub(crate) home: Option<usize>,
        pub(crate) out: Arc<Mutex<Vec<u8>>>,
        pub(crate) cap: usize,
        pub(crate) shut: Arc<AtomicBool>,
    }

    impl ConnectedSocket for Sink {
        fn home_worker(&self) -> Option<usize> {
            self.home
        }
        fn register(&mut self, _: &Registry, _: Token) -> io::Result<()> {
            Ok(())
        }
        fn deregister(&mut self, _: &Registry) -> io::Result<()> {
            Ok(())
        }
        fn finish_connect(&mut self) -> io::Result<bool> {
            Ok(true)
        }
        fn read(&mut self, _: &mut BufMut) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut out = self.out.lock();
            let mut n = 0;
            for s in iov {
                let take = s.len().min(self.cap - n);
                out.extend_from_slice(&s[..take]);
                n += take;
            }
            Ok(n)
        }
        fn peer_addr(&self) -> io::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 1], 1)))
        }
        fn shutdown(&mut self) {
            self.shut.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Sink;
    use super::*;

    /// A stack that does not ask for segments gets them as the same `writev`, short writes
    /// and all.
    #[test]
    fn send_segments_defaults_to_writev_with_the_same_bytes() {
        let payload = Buf::from_vec((0..200u8).collect());
        let segs = [
            Segment::Staged(b"head"),
            Segment::Shared {
                buf: &payload,
                off: 50,
            },
            Segment::Staged(b"tail"),
        ];
        assert_eq!(segs[1].len(), 150);
        assert_eq!(segs[1].shared().map(Buf::as_ptr), Some(payload.as_ptr()));
        assert!(segs[0].shared().is_none());
        let sink = |cap| Sink {
            home: None,
            out: Default::default(),
            cap,
            shut: Default::default(),
        };
        let mut all = sink(usize::MAX);
        assert!(!all.wants_segments());
        assert_eq!(all.send_segments(&segs).unwrap(), 158);
        let mut want = b"head".to_vec();
        want.extend(50..200u8);
        want.extend_from_slice(b"tail");
        assert_eq!(*all.out.lock(), want);
        let mut short = sink(10);
        assert_eq!(short.send_segments(&segs).unwrap(), 10);
        assert_eq!(*short.out.lock(), want[..10]);
    }
}
