//! A stack that hands out the POSIX stack's sockets through a wrapping function: the tests of
//! stack hooks (worker-bound sockets, gather lists, lent receive buffers) wrap real sockets
//! to exercise the messenger's side of a hook.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use dataplane::stack::{
    ConnectedSocket, NetworkStack, ServerSocket, SocketOptions, StackError, StackWorker,
};
use dataplane_stack_posix::PosixStack;
use mio::{Registry, Token};

/// Wraps a socket: `accepted` is true for one a listener accepted, false for an outgoing one.
pub type WrapFn =
    Arc<dyn Fn(Box<dyn ConnectedSocket>, bool) -> Box<dyn ConnectedSocket> + Send + Sync>;

/// The POSIX stack (`inner`), its sockets passed through `wrap`.
pub struct Wrapping {
    pub inner: PosixStack,
    pub name: &'static str,
    pub wrap: WrapFn,
}

struct WrappingWorker {
    inner: Box<dyn StackWorker>,
    wrap: WrapFn,
}

struct WrappingListener {
    inner: Box<dyn ServerSocket>,
    wrap: WrapFn,
}

impl NetworkStack for Wrapping {
    fn name(&self) -> &'static str {
        self.name
    }
    fn create_worker(&self, i: usize) -> Result<Box<dyn StackWorker>, StackError> {
        Ok(Box::new(WrappingWorker {
            inner: self.inner.create_worker(i)?,
            wrap: self.wrap.clone(),
        }))
    }
    fn listen_on_every_worker(&self) -> bool {
        self.inner.listen_on_every_worker()
    }
}

impl StackWorker for WrappingWorker {
    fn listen(
        &mut self,
        a: SocketAddr,
        o: &SocketOptions,
    ) -> Result<Box<dyn ServerSocket>, StackError> {
        Ok(Box::new(WrappingListener {
            inner: self.inner.listen(a, o)?,
            wrap: self.wrap.clone(),
        }))
    }
    fn connect(
        &mut self,
        a: SocketAddr,
        o: &SocketOptions,
    ) -> Result<Box<dyn ConnectedSocket>, StackError> {
        Ok((self.wrap)(self.inner.connect(a, o)?, false))
    }
}

impl ServerSocket for WrappingListener {
    fn accept(
        &mut self,
        o: &SocketOptions,
    ) -> io::Result<Option<(Box<dyn ConnectedSocket>, SocketAddr)>> {
        Ok(self
            .inner
            .accept(o)?
            .map(|(s, peer)| ((self.wrap)(s, true), peer)))
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn register(&mut self, r: &Registry, t: Token) -> io::Result<()> {
        self.inner.register(r, t)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.inner.deregister(r)
    }
}
