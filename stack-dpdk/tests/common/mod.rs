//! Helpers of the DPDK integration tests: payloads whose bytes are a function of (stream,
//! sequence), a dispatcher that checks exactly-once, in-order, byte-exact delivery, and the
//! configuration read from the environment `scripts/test-dpdk.sh` sets up.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::{Buf, Config, Connection, Dispatcher, Message};
use parking_lot::Mutex;

/// Header of every test payload: stream id (u32 LE) + sequence (u64 LE).
pub const HDR: usize = 12;

/// A payload whose bytes are a function of (stream, seq).
pub fn payload(stream: u32, seq: u64, len: usize) -> Buf {
    let len = len.max(HDR);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&stream.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend((HDR..len).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8));
    Buf::from_vec(v)
}

/// Checks every message: per stream, sequence numbers arrive exactly once and in order, and
/// the bytes match [`payload`].
#[derive(Default)]
pub struct Checker {
    next: Mutex<HashMap<u32, u64>>,
    received: AtomicU64,
    bytes: AtomicU64,
    errors: Mutex<Vec<String>>,
    pub resets: AtomicU64,
}

impl Checker {
    pub fn new() -> Arc<Checker> {
        Arc::new(Checker::default())
    }

    fn check(&self, m: Message) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
        let data = m.payload.to_vec();
        if data.len() < HDR {
            self.errors
                .lock()
                .push(format!("short message {}", data.len()));
            return;
        }
        let mut h = [0u8; 4];
        h.copy_from_slice(&data[0..4]);
        let stream = u32::from_le_bytes(h);
        let mut s = [0u8; 8];
        s.copy_from_slice(&data[4..12]);
        let seq = u64::from_le_bytes(s);
        {
            let mut next = self.next.lock();
            let e = next.entry(stream).or_insert(0);
            if seq != *e {
                let mut errs = self.errors.lock();
                if errs.len() < 20 {
                    errs.push(format!("stream {stream}: expected seq {}, got {seq}", *e));
                }
            }
            *e = seq + 1;
        }
        let bad = data[HDR..]
            .iter()
            .enumerate()
            .any(|(i, b)| *b != (seq as usize).wrapping_mul(31).wrapping_add(i + HDR) as u8);
        if bad {
            self.errors
                .lock()
                .push(format!("stream {stream} seq {seq}: payload corrupted"));
        }
    }

    pub fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn assert_clean(&self) {
        let errs = self.errors.lock();
        assert!(errs.is_empty(), "delivery errors: {errs:?}");
    }
}

impl Dispatcher for Checker {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn fast_dispatch(&self, _conn: &Connection, m: Message) {
        self.check(m);
    }
    fn dispatch(&self, _conn: &Connection, m: Message) {
        self.check(m);
    }
    fn handle_reset(&self, _c: &Connection) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }
}

/// A small messenger configuration with one worker (the DPDK stack's rule).
pub fn test_config() -> Config {
    Config {
        workers: 1,
        rx_buffers: 256,
        hugepages: false,
        keepalive_interval_ms: 200,
        peer_timeout_ms: 10_000,
        handshake_timeout_ms: 5_000,
        reconnect_min_ms: 10,
        reconnect_max_ms: 200,
        ..Config::default()
    }
}

/// [`test_config`] with the `dpdk` backend.
pub fn dpdk_config() -> Config {
    Config {
        backend: "dpdk".into(),
        ..test_config()
    }
}

/// Polls `f` until true or `timeout`.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

/// Sends, retrying while backpressure refuses the message.
pub fn send_retry(conn: &Connection, mut m: Message) {
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        match conn.send(m) {
            Ok(()) => return,
            Err(e) => {
                assert!(
                    matches!(
                        e.kind,
                        dataplane::SendErrorKind::QueueFull { .. }
                            | dataplane::SendErrorKind::RingFull
                    ),
                    "send failed: {e}"
                );
                assert!(Instant::now() < end, "backpressure never released");
                m = e.message;
                std::thread::yield_now();
            }
        }
    }
}

/// An environment variable, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// An IPv4 address from the environment.
pub fn env_ip(name: &str, default: &str) -> Ipv4Addr {
    env_or(name, default)
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs the EAL without hugepages unless the script reserved some (`DPDK_HUGE=1`).
pub fn no_huge() -> bool {
    std::env::var("DPDK_HUGE").map_or(true, |v| v != "1")
}

/// Moves the calling thread into the network namespace `name` (`ip netns add name`). Threads
/// it spawns afterwards (a messenger's workers) live there too.
pub fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("netns {name}: {e}"));
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {name}: {}", std::io::Error::last_os_error());
}
