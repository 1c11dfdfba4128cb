//! POSIX network stack for the dataplane messenger: non-blocking TCP on epoll (through `mio`).
//!
//! - `TCP_NODELAY` on every connection: the messenger batches frames itself and sends each
//!   batch with one `writev`, so Nagle would only add latency.
//! - Edge-triggered readiness: the messenger drains reads until `EAGAIN` and writes until the
//!   socket buffer is full; this stack reports `WouldBlock` faithfully.
//! - Reads go straight into the spare capacity of a pool buffer.
//! - Listening sockets use `SO_REUSEADDR`, so a restarted node can bind its port again while
//!   old connections linger in `TIME_WAIT`.
//! - Opt-in `SO_REUSEPORT` mode ([`PosixStack::with_reuseport`]): every worker listens on the
//!   bound port and the kernel spreads incoming connections across them (the model of
//!   Seastar and nginx): no accepted socket is handed between threads, and each reports the
//!   worker that accepted it ([`ConnectedSocket::home_worker`]), so its session lives there.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};

use dataplane::buf::BufMut;
use dataplane::stack::{
    ConnectedSocket, NetworkStack, ServerSocket, SocketOptions, StackError, StackWorker,
};
use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};

/// The POSIX backend. Every worker gets its own [`PosixWorker`].
#[derive(Debug, Default, Clone, Copy)]
pub struct PosixStack {
    reuseport: bool,
}

impl PosixStack {
    /// The POSIX stack: worker 0 listens and accepted sockets go to whichever worker owns
    /// their session.
    pub fn new() -> PosixStack {
        PosixStack { reuseport: false }
    }

    /// The POSIX stack in `SO_REUSEPORT` mode: every worker listens on the bound port with
    /// `SO_REUSEPORT` and the kernel spreads incoming connections across the workers' listen
    /// queues (by a hash of the 4-tuple). An accepted socket stays on the worker that
    /// accepted it ([`ConnectedSocket::home_worker`]); a lossless session whose client
    /// reconnects to another worker migrates there. Outgoing connections are unaffected.
    pub fn with_reuseport() -> PosixStack {
        PosixStack { reuseport: true }
    }

    /// True in `SO_REUSEPORT` mode.
    pub fn reuseport(&self) -> bool {
        self.reuseport
    }
}

impl NetworkStack for PosixStack {
    fn name(&self) -> &'static str {
        "posix"
    }

    fn create_worker(&self, index: usize) -> Result<Box<dyn StackWorker>, StackError> {
        Ok(Box::new(PosixWorker {
            home: self.reuseport.then_some(index),
        }))
    }

    fn listen_on_every_worker(&self) -> bool {
        self.reuseport
    }
}

/// One worker's POSIX stack (sockets register with the worker's epoll).
#[derive(Debug)]
pub struct PosixWorker {
    /// `SO_REUSEPORT` mode: this worker's index, reported by the sockets it accepts.
    home: Option<usize>,
}

fn apply(sock: &Socket, opts: &SocketOptions) -> io::Result<()> {
    if let Some(n) = opts.recv_buffer {
        sock.set_recv_buffer_size(n)?;
    }
    if let Some(n) = opts.send_buffer {
        sock.set_send_buffer_size(n)?;
    }
    Ok(())
}

impl StackWorker for PosixWorker {
    fn listen(
        &mut self,
        addr: SocketAddr,
        opts: &SocketOptions,
    ) -> Result<Box<dyn ServerSocket>, StackError> {
        let bind = |source| StackError::Bind { addr, source };
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(bind)?;
        sock.set_reuse_address(true).map_err(bind)?;
        if self.home.is_some() {
            sock.set_reuse_port(true).map_err(bind)?;
        }
        sock.set_nonblocking(true).map_err(bind)?;
        apply(&sock, opts).map_err(bind)?;
        sock.bind(&addr.into()).map_err(bind)?;
        let backlog = i32::try_from(opts.backlog).unwrap_or(i32::MAX);
        sock.listen(backlog).map_err(bind)?;
        let std_listener: std::net::TcpListener = sock.into();
        Ok(Box::new(PosixListener {
            inner: TcpListener::from_std(std_listener),
            home: self.home,
        }))
    }

    fn connect(
        &mut self,
        addr: SocketAddr,
        opts: &SocketOptions,
    ) -> Result<Box<dyn ConnectedSocket>, StackError> {
        let err = |source| StackError::Connect { addr, source };
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(err)?;
        sock.set_nonblocking(true).map_err(err)?;
        sock.set_nodelay(opts.nodelay).map_err(err)?;
        apply(&sock, opts).map_err(err)?;
        match sock.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(err(e)),
        }
        let std_stream: std::net::TcpStream = sock.into();
        Ok(Box::new(PosixSocket {
            inner: TcpStream::from_std(std_stream),
            peer: addr,
            connected: false,
            home: None,
        }))
    }
}

/// A listening TCP socket.
#[derive(Debug)]
pub struct PosixListener {
    inner: TcpListener,
    /// `SO_REUSEPORT` mode: the worker listening, which keeps what it accepts.
    home: Option<usize>,
}

impl ServerSocket for PosixListener {
    fn accept(
        &mut self,
        opts: &SocketOptions,
    ) -> io::Result<Option<(Box<dyn ConnectedSocket>, SocketAddr)>> {
        match self.inner.accept() {
            Ok((stream, peer)) => {
                stream.set_nodelay(opts.nodelay)?;
                let s = PosixSocket {
                    inner: stream,
                    peer,
                    connected: true,
                    home: self.home,
                };
                Ok(Some((Box::new(s), peer)))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.inner, token, Interest::READABLE)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        registry.deregister(&mut self.inner)
    }
}

/// A connected (or connecting) TCP socket.
#[derive(Debug)]
pub struct PosixSocket {
    inner: TcpStream,
    peer: SocketAddr,
    connected: bool,
    /// Accepted in `SO_REUSEPORT` mode: the worker that accepted it.
    home: Option<usize>,
}

impl ConnectedSocket for PosixSocket {
    fn home_worker(&self) -> Option<usize> {
        self.home
    }

    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(
            &mut self.inner,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        registry.deregister(&mut self.inner)
    }

    fn finish_connect(&mut self) -> io::Result<bool> {
        if self.connected {
            return Ok(true);
        }
        if let Some(e) = self.inner.take_error()? {
            return Err(e);
        }
        match self.inner.peer_addr() {
            Ok(_) => {
                self.connected = true;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn read(&mut self, buf: &mut BufMut) -> io::Result<usize> {
        let n = self.inner.read(buf.spare_mut())?;
        buf.advance(n);
        Ok(n)
    }

    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        self.inner.write_vectored(iov)
    }

    fn short_read_drains(&self) -> bool {
        true
    }

    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }

    fn shutdown(&mut self) {
        let _ = self.inner.shutdown(Shutdown::Both);
    }
}
