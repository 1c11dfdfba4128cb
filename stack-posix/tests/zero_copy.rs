//! Proof that the send path copies no payload bytes in user space: a stack that wraps the real
//! POSIX stack records the addresses handed to `writev`, and the caller's buffer is among them.

mod common;

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dataplane::buf::BufMut;
use dataplane::stack::{
    ConnectedSocket, NetworkStack, ServerSocket, SocketOptions, StackError, StackWorker,
};
use dataplane::{Buf, Config, Message, Messenger};
use dataplane_stack_posix::PosixStack;
use mio::{Registry, Token};
use parking_lot::Mutex;

/// Every (address, length) a `writev` was given.
type Log = Arc<Mutex<Vec<(usize, usize)>>>;

struct Recording {
    inner: PosixStack,
    log: Log,
}

struct RecordingWorker {
    inner: Box<dyn StackWorker>,
    log: Log,
}

struct RecordingSocket {
    inner: Box<dyn ConnectedSocket>,
    log: Log,
}

impl NetworkStack for Recording {
    fn name(&self) -> &'static str {
        "posix"
    }
    fn create_worker(&self, i: usize) -> Result<Box<dyn StackWorker>, StackError> {
        Ok(Box::new(RecordingWorker {
            inner: self.inner.create_worker(i)?,
            log: self.log.clone(),
        }))
    }
}

impl StackWorker for RecordingWorker {
    fn listen(
        &mut self,
        a: SocketAddr,
        o: &SocketOptions,
    ) -> Result<Box<dyn ServerSocket>, StackError> {
        self.inner.listen(a, o)
    }
    fn connect(
        &mut self,
        a: SocketAddr,
        o: &SocketOptions,
    ) -> Result<Box<dyn ConnectedSocket>, StackError> {
        Ok(Box::new(RecordingSocket {
            inner: self.inner.connect(a, o)?,
            log: self.log.clone(),
        }))
    }
}

impl ConnectedSocket for RecordingSocket {
    fn register(&mut self, r: &Registry, t: Token) -> io::Result<()> {
        self.inner.register(r, t)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.inner.deregister(r)
    }
    fn finish_connect(&mut self) -> io::Result<bool> {
        self.inner.finish_connect()
    }
    fn read(&mut self, b: &mut BufMut) -> io::Result<usize> {
        self.inner.read(b)
    }
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        self.log
            .lock()
            .extend(iov.iter().map(|s| (s.as_ptr() as usize, s.len())));
        self.inner.writev(iov)
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
    fn shutdown(&mut self) {
        self.inner.shutdown()
    }
}

#[test]
fn zero_copy_send_hands_the_callers_buffer_to_writev() {
    let d = Checker::fast();
    let server = messenger("server", test_config(), d.clone(), true);
    let log: Log = Arc::default();
    let client = Messenger::builder("client")
        .config(Config { ..test_config() })
        .stack(Arc::new(Recording {
            inner: PosixStack::new(),
            log: log.clone(),
        }))
        .dispatcher(Checker::fast())
        .build()
        .unwrap();
    client.start().unwrap();
    let conn = client.connect(addr(&server)).unwrap();
    let mut bufs: Vec<Buf> = Vec::new();
    for (i, size) in [4096usize, 65536, 1 << 20].into_iter().enumerate() {
        let b = payload(0, i as u64, size);
        bufs.push(b.clone());
        conn.send(Message::new(1, b)).unwrap();
    }
    assert!(wait_until(Duration::from_secs(30), || d.count() == 3));
    d.assert_clean();
    let log = log.lock();
    for b in &bufs {
        let (start, end) = (b.as_ptr() as usize, b.as_ptr() as usize + b.len());
        // The payload went out as slices of the caller's own memory, covering all of it.
        let covered: usize = log
            .iter()
            .filter(|(p, l)| *p >= start && *p + *l <= end)
            .map(|(_, l)| *l)
            .sum();
        assert!(
            covered >= b.len(),
            "payload of {} bytes: only {covered} bytes sent from the caller's buffer",
            b.len()
        );
    }
}
