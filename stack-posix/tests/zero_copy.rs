//! Proof that the send path copies no payload bytes in user space: a stack that wraps the real
//! POSIX stack records the addresses handed to `writev`, and the caller's buffer is among them.
//! The same wrapper asking for segments (`ConnectedSocket::wants_segments`, as a zero-copy
//! RDMA stack does) gets the caller's `Buf`s themselves and may keep them.

mod common;

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dataplane::buf::BufMut;
use dataplane::stack::{ConnectedSocket, Segment};
use dataplane::{Buf, Config, Connection, Message, Messenger};
use dataplane_stack_posix::PosixStack;
use mio::{Registry, Token};
use parking_lot::Mutex;

/// Every (address, length) a `writev` was given.
type Log = Arc<Mutex<Vec<(usize, usize)>>>;

struct RecordingSocket {
    inner: Box<dyn ConnectedSocket>,
    log: Log,
    segments: bool,
    /// Shared buffers kept as a zero-copy stack keeps them until its send completes.
    kept: Vec<Buf>,
}

/// The POSIX stack whose outgoing sockets record what they are given.
fn recording(log: Log, segments: bool) -> Wrapping {
    Wrapping {
        inner: PosixStack::new(),
        name: "posix",
        wrap: Arc::new(move |s, accepted| {
            if accepted {
                return s;
            }
            Box::new(RecordingSocket {
                inner: s,
                log: log.clone(),
                segments,
                kept: Vec::new(),
            })
        }),
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
    fn wants_segments(&self) -> bool {
        self.segments
    }
    fn send_segments(&mut self, segs: &[Segment<'_>]) -> io::Result<usize> {
        // Log and keep the shared buffers the kernel took bytes of.
        let sent = self.inner.send_segments(segs)?;
        let mut left = sent;
        let mut log = self.log.lock();
        for s in segs {
            let took = s.len().min(left);
            left -= took;
            if let (Some(b), true) = (s.shared(), took > 0) {
                log.push((s.bytes().as_ptr() as usize, took));
                self.kept.push(b.clone());
            }
        }
        Ok(sent)
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
    fn shutdown(&mut self) {
        self.inner.shutdown()
    }
}

/// A server with a checking dispatcher, and a client on the recording stack connected to it.
fn recording_pair(
    cfg: Config,
    segments: bool,
) -> (Arc<Checker>, Messenger, Messenger, Connection, Log) {
    let d = Checker::fast();
    let server = messenger("server", test_config(), d.clone(), true);
    let log: Log = Arc::default();
    let client = Messenger::builder("client")
        .config(cfg)
        .stack(Arc::new(recording(log.clone(), segments)))
        .dispatcher(Checker::fast())
        .build()
        .unwrap();
    client.start().unwrap();
    let conn = client.connect(addr(&server)).unwrap();
    (d, server, client, conn, log)
}

/// Bytes of `b` the log shows handed over as `b`'s own memory, and how many logged pieces
/// start inside `b` (a payload resumed after a short write).
fn handed_over(log: &[(usize, usize)], b: &Buf) -> (usize, usize) {
    let (start, end) = (b.as_ptr() as usize, b.as_ptr() as usize + b.len());
    let covered = log
        .iter()
        .filter(|(p, l)| *p >= start && *p + *l <= end)
        .map(|(_, l)| *l)
        .sum();
    let resumed = log.iter().filter(|(p, _)| *p > start && *p < end).count();
    (covered, resumed)
}

#[test]
fn zero_copy_send_hands_the_callers_buffer_to_writev() {
    let (d, _server, _client, conn, log) = recording_pair(test_config(), false);
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
        // The payload went out as slices of the caller's own memory, covering all of it.
        let (covered, _) = handed_over(&log, b);
        assert!(
            covered >= b.len(),
            "payload of {} bytes: only {covered} bytes sent from the caller's buffer",
            b.len()
        );
    }
}

/// A socket that asks for segments gets every payload as the caller's own `Buf` (same memory,
/// resuming at an offset after a short write: the kernel's send buffer is small), may keep
/// it after returning, and the messenger's accounting of short writes is the same as with
/// `writev`: every message arrives exactly once, in order, byte for byte.
#[test]
fn segment_path_hands_the_callers_bufs_and_delivers_like_writev() {
    let cfg = Config {
        // A small kernel send buffer: short writes end inside payloads.
        send_buffer_bytes: 16 << 10,
        ..test_config()
    };
    let (d, _server, _client, conn, log) = recording_pair(cfg, true);
    let sizes = [100usize, 4096, 65536, 300, 1 << 20, 20_000];
    let mut bufs: Vec<Buf> = Vec::new();
    for i in 0..60u64 {
        let b = payload(0, i, sizes[i as usize % sizes.len()]);
        bufs.push(b.clone());
        send_retry(&conn, Message::new(1, b));
    }
    assert!(wait_until(Duration::from_secs(30), || d.count() == 60));
    d.assert_clean();
    let log = log.lock();
    let mut resumed = 0;
    for b in bufs.iter().filter(|b| b.len() > 1024) {
        let (covered, r) = handed_over(&log, b);
        resumed += r;
        // Every byte of the payload was handed over as the caller's buffer.
        assert!(
            covered >= b.len(),
            "payload of {} bytes: {covered} bytes handed over as the caller's buffer",
            b.len()
        );
    }
    assert!(resumed > 0, "no short write ended inside a payload");
}
