//! Shared helpers of the messenger integration tests: a dispatcher that checks exactly-once,
//! in-order, byte-exact delivery, and messenger constructors on loopback.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::{Buf, Config, Connection, Dispatcher, Message, Messenger, Policy};
use dataplane_stack_posix::PosixStack;
use parking_lot::Mutex;

pub mod proxy;
pub mod raw;

/// Header of every test payload: stream id (u32 LE) + sequence (u64 LE).
pub const HDR: usize = 12;

/// Builds a payload whose bytes are a function of (stream, seq), so corruption is caught.
pub fn payload(stream: u32, seq: u64, len: usize) -> Buf {
    let len = len.max(HDR);
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&stream.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend((HDR..len).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8));
    Buf::from_vec(v)
}

/// What a dispatcher saw besides messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Connect(u64),
    Accept(u64),
    Reset(u64),
    RemoteReset(u64),
}

/// Checks every message: per stream, sequence numbers must arrive exactly once and in order
/// (starting from 0), and payload bytes must match the generator.
#[derive(Default)]
pub struct Checker {
    pub next: Mutex<HashMap<u32, u64>>,
    pub received: AtomicU64,
    pub bytes: AtomicU64,
    pub errors: Mutex<Vec<String>>,
    pub events: Mutex<Vec<Ev>>,
    pub kept: Mutex<Vec<Message>>,
    pub keep: bool,
    pub fast: bool,
    pub echo: bool,
}

impl Checker {
    pub fn fast() -> Arc<Checker> {
        Arc::new(Checker {
            fast: true,
            ..Checker::default()
        })
    }
    pub fn queued() -> Arc<Checker> {
        Arc::new(Checker::default())
    }
    pub fn keeping() -> Arc<Checker> {
        Arc::new(Checker {
            keep: true,
            ..Checker::default()
        })
    }
    pub fn echo() -> Arc<Checker> {
        Arc::new(Checker {
            fast: true,
            echo: true,
            ..Checker::default()
        })
    }

    fn check(&self, conn: &Connection, m: Message) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
        let data = m.payload.to_vec();
        if data.len() < HDR {
            self.errors
                .lock()
                .push(format!("short message {}", data.len()));
            return;
        }
        let stream = u32::from_le_bytes(data[0..4].try_into().unwrap());
        let seq = u64::from_le_bytes(data[4..12].try_into().unwrap());
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
        if self.echo {
            let _ = conn.send(m.clone());
        }
        if self.keep {
            self.kept.lock().push(m);
        }
    }

    pub fn count(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn assert_clean(&self) {
        let errs = self.errors.lock();
        assert!(errs.is_empty(), "delivery errors: {errs:?}");
    }

    pub fn events(&self) -> Vec<Ev> {
        self.events.lock().clone()
    }
}

impl Dispatcher for Checker {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        self.fast
    }
    fn fast_dispatch(&self, conn: &Connection, m: Message) {
        self.check(conn, m);
    }
    fn dispatch(&self, conn: &Connection, m: Message) {
        self.check(conn, m);
    }
    fn handle_connect(&self, c: &Connection) {
        self.events.lock().push(Ev::Connect(c.id()));
    }
    fn handle_accept(&self, c: &Connection) {
        self.events.lock().push(Ev::Accept(c.id()));
    }
    fn handle_reset(&self, c: &Connection) {
        self.events.lock().push(Ev::Reset(c.id()));
    }
    fn handle_remote_reset(&self, c: &Connection) {
        self.events.lock().push(Ev::RemoteReset(c.id()));
    }
}

/// A dispatcher that blocks the dispatch thread until opened, then hands messages to `inner`.
pub struct Gate {
    pub open: std::sync::atomic::AtomicBool,
    pub inner: Arc<Checker>,
}

impl Gate {
    pub fn closed(inner: Arc<Checker>) -> Arc<Gate> {
        Arc::new(Gate {
            open: std::sync::atomic::AtomicBool::new(false),
            inner,
        })
    }
}

impl Dispatcher for Gate {
    fn dispatch(&self, c: &Connection, m: Message) {
        while !self.open.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.inner.dispatch(c, m);
    }
}

/// A test configuration: small pools, no hugepages needed, short timers.
pub fn test_config() -> Config {
    Config {
        workers: 1,
        rx_buffers: 64,
        hugepages: false,
        keepalive_interval_ms: 200,
        peer_timeout_ms: 5_000,
        handshake_timeout_ms: 3_000,
        reconnect_min_ms: 2,
        reconnect_max_ms: 50,
        ..Config::default()
    }
}

/// A started messenger on the POSIX stack.
pub fn messenger(name: &str, cfg: Config, d: Arc<dyn Dispatcher>, bind: bool) -> Messenger {
    messenger_with(name, cfg, d, bind, Policy::lossless_client())
}

/// A started messenger with an explicit default policy.
pub fn messenger_with(
    name: &str,
    cfg: Config,
    d: Arc<dyn Dispatcher>,
    bind: bool,
    policy: Policy,
) -> Messenger {
    let m = Messenger::builder(name)
        .config(cfg)
        .stack(Arc::new(PosixStack::new()))
        .dispatcher(d)
        .default_policy(policy)
        .build()
        .expect("build messenger");
    if bind {
        m.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    }
    m.start().expect("start");
    m
}

/// Polls `f` until it is true or `timeout` passes; returns whether it became true.
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
    let end = Instant::now() + Duration::from_secs(60);
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

pub fn addr(m: &Messenger) -> SocketAddr {
    m.addr().expect("bound")
}
