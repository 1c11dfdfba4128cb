//! Zero-copy receive through buffers a stack lends (`ConnectedSocket::read_lent`), on real
//! sockets: a stack that wraps the POSIX stack reads into memory it owns (as an RDMA stack's
//! registered receive buffers are) and lends it to the messenger whole. Every message must
//! arrive exactly once, in order, byte for byte; every lent buffer must come back to its
//! owner once the messages cut from it are dropped.

mod common;

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dataplane::buf::BufMut;
use dataplane::stack::ConnectedSocket;
use dataplane::{Message, Policy};
use dataplane_stack_posix::PosixStack;
use mio::{Registry, Token};

/// Bytes per lent buffer (as an RDMA receive slot).
const LEND: usize = 128 << 10;

#[derive(Default)]
struct LendStats {
    lent: AtomicU64,
    released: AtomicU64,
}

/// Owns one lent buffer's memory; dropping it (when the messenger lets go of the last `Buf`
/// cut from the buffer) frees the memory and counts the release.
struct Lender {
    mem: NonNull<[u8]>,
    stats: Arc<LendStats>,
}

// SAFETY: the Lender only frees the memory in Drop; access goes through the BufMut / Bufs.
unsafe impl Send for Lender {}
// SAFETY: `&Lender` exposes nothing.
unsafe impl Sync for Lender {}

impl Drop for Lender {
    fn drop(&mut self) {
        // SAFETY: `mem` came from `Box::into_raw` in `lend` and is freed only here, once.
        drop(unsafe { Box::from_raw(self.mem.as_ptr()) });
        self.stats.released.fetch_add(1, Ordering::AcqRel);
    }
}

struct LendingSocket {
    inner: Box<dyn ConnectedSocket>,
    stats: Arc<LendStats>,
    /// What the inner socket said when a lending read found no data: handed to the next
    /// `read`, which the messenger makes at once.
    held: Option<io::Result<usize>>,
    turn: u64,
}

impl LendingSocket {
    fn wrap(inner: Box<dyn ConnectedSocket>, stats: &Arc<LendStats>) -> Box<dyn ConnectedSocket> {
        Box::new(LendingSocket {
            inner,
            stats: stats.clone(),
            held: None,
            turn: 0,
        })
    }
}

impl ConnectedSocket for LendingSocket {
    fn register(&mut self, r: &Registry, t: Token) -> io::Result<()> {
        self.inner.register(r, t)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.inner.deregister(r)
    }
    fn finish_connect(&mut self) -> io::Result<bool> {
        self.inner.finish_connect()
    }
    fn read_lent(&mut self) -> Option<BufMut> {
        self.turn += 1;
        // Every third time lend nothing: the messenger reads into its own buffer, so lent
        // and copied reads alternate on one stream and frames straddle both kinds.
        if self.held.is_some() || self.turn.is_multiple_of(3) {
            return None;
        }
        let mem = NonNull::from(Box::leak(vec![0u8; LEND].into_boxed_slice()));
        let keeper = Arc::new(Lender {
            mem,
            stats: self.stats.clone(),
        });
        // SAFETY: `mem` is a fresh, zeroed allocation of LEND bytes that only the Lender
        // (which frees it when dropped) and this BufMut know about.
        let mut b = unsafe { BufMut::lent(mem.cast::<u8>(), LEND, 0, keeper) };
        self.stats.lent.fetch_add(1, Ordering::AcqRel);
        match self.inner.read(&mut b) {
            Ok(n) if n > 0 => Some(b),
            other => {
                self.held = Some(other);
                None
            }
        }
    }
    fn read(&mut self, b: &mut BufMut) -> io::Result<usize> {
        match self.held.take() {
            Some(r) => r,
            None => self.inner.read(b),
        }
    }
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        self.inner.writev(iov)
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
    fn shutdown(&mut self) {
        self.inner.shutdown()
    }
}

/// The POSIX stack whose sockets (both ways) lend what they read.
fn lending(stats: &Arc<LendStats>) -> Wrapping {
    let stats = stats.clone();
    Wrapping {
        inner: PosixStack::new(),
        name: "posix",
        wrap: Arc::new(move |s, _| LendingSocket::wrap(s, &stats)),
    }
}

#[test]
fn lent_receive_buffers_deliver_byte_for_byte_and_all_come_back() {
    let stats = Arc::new(LendStats::default());
    let d = Checker::fast();
    let server = start_messenger(
        "server",
        test_config(),
        Arc::new(lending(&stats)),
        d.clone(),
        Policy::lossless_client(),
        Some("127.0.0.1:0".parse().unwrap()),
    );
    let client = messenger("client", test_config(), Checker::fast(), false);
    let conn = client.connect(addr(&server)).unwrap();
    // Small and large messages, some larger than a lent buffer.
    let sizes = [100usize, 4096, 65536, 300, 20_000, 200 << 10, 64];
    const N: u64 = 3000;
    for i in 0..N {
        send_retry(
            &conn,
            Message::new(1, payload(0, i, sizes[i as usize % sizes.len()])),
        );
    }
    assert!(
        wait_until(Duration::from_secs(60), || d.count() == N),
        "only {} of {N} messages arrived",
        d.count()
    );
    d.assert_clean();
    let c = server.counters();
    assert!(
        c.bytes_lent > 0 && c.bytes_lent < c.bytes_in + N * 64,
        "bytes received in lent buffers: {} of {} payload bytes",
        c.bytes_lent,
        c.bytes_in
    );
    // Messages larger than a lent buffer span several: delivered as lists of slices of them
    // (the messages above were checked byte for byte all the same).
    assert!(c.msgs_gathered > 0, "no large message was gathered");
    println!(
        "lent receive: {} buffers lent, {} bytes decoded in place, {} payload bytes, {} \
         messages gathered",
        stats.lent.load(Ordering::Acquire),
        c.bytes_lent,
        c.bytes_in,
        c.msgs_gathered
    );
    drop(conn);
    client.shutdown();
    server.shutdown();
    drop(server);
    drop(d);
    // Every lent buffer came back to its owner: none leaked, none freed twice (a double
    // free would have crashed the test).
    assert!(
        wait_until(Duration::from_secs(10), || stats
            .released
            .load(Ordering::Acquire)
            == stats.lent.load(Ordering::Acquire)),
        "{} buffers lent, {} given back",
        stats.lent.load(Ordering::Acquire),
        stats.released.load(Ordering::Acquire)
    );
}
