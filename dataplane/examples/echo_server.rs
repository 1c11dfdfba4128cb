//! An echo server: every message received is sent back on the same connection, zero copy.
//! With `--self-test N` it also starts a client in the same process, sends N messages, checks
//! every echo byte for byte, and exits.
//!
//! ```text
//! cargo run --release --example echo_server -- [--addr 127.0.0.1:7878] [--seconds S] [--self-test N]
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::{Buf, Config, Connection, Dispatcher, Message, Messenger};
use dataplane_stack_posix::PosixStack;

/// Sends every message back. It runs on the dispatch thread (not fast dispatch) so that it may
/// wait when the connection's queue is full: the dispatch queue then fills, the worker stops
/// reading, and TCP pushes back on the client. Nothing is dropped.
struct Echo;

impl Dispatcher for Echo {
    fn dispatch(&self, conn: &Connection, mut m: Message) {
        loop {
            match conn.send(m) {
                Ok(()) => return,
                Err(e) if conn.is_closed() => {
                    tracing::debug!(error = %e, "peer gone, echo dropped");
                    return;
                }
                Err(e) => {
                    m = e.message;
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }
}

/// Checks echoes: message i carries i in its first 8 bytes.
struct Check {
    next: AtomicU64,
    bad: AtomicU64,
}

impl Dispatcher for Check {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn dispatch(&self, _c: &Connection, m: Message) {
        let want = self.next.fetch_add(1, Ordering::AcqRel);
        // The payload may be split (a large message gathered from lent buffers): read the
        // header across its pieces.
        let mut head = [0u8; 8];
        let ok = m.payload.copy_prefix(&mut head) == 8 && head == want.to_le_bytes();
        if !ok {
            self.bad.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let addr: SocketAddr = arg("--addr")
        .unwrap_or_else(|| "127.0.0.1:7878".into())
        .parse()?;
    let cfg = Config {
        hugepages: false,
        ..Config::default()
    };
    let server = Messenger::builder("echo")
        .config(cfg.clone())
        .stack(Arc::new(PosixStack::new()))
        .dispatcher(Arc::new(Echo))
        .build()?;
    let bound = server.bind(addr)?;
    server.start()?;
    println!("echo server listening on {bound}");

    if let Some(n) = arg("--self-test").and_then(|v| v.parse::<u64>().ok()) {
        let check = Arc::new(Check {
            next: AtomicU64::new(0),
            bad: AtomicU64::new(0),
        });
        let client = Messenger::builder("echo-client")
            .config(cfg)
            .stack(Arc::new(PosixStack::new()))
            .dispatcher(check.clone())
            .build()?;
        client.start()?;
        let conn = client.connect(bound)?;
        for i in 0..n {
            let mut body = i.to_le_bytes().to_vec();
            body.resize(128, 0xee);
            let mut m = Message::new(1, Buf::from_vec(body));
            while let Err(e) = conn.send(m) {
                m = e.message;
                std::thread::yield_now();
            }
        }
        let end = Instant::now() + Duration::from_secs(60);
        while check.next.load(Ordering::Acquire) < n && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        let got = check.next.load(Ordering::Acquire);
        let bad = check.bad.load(Ordering::Relaxed);
        println!("self-test: {got}/{n} echoes, {bad} mismatched");
        if got != n || bad != 0 {
            return Err(format!("self-test failed: {got}/{n} echoes, {bad} bad").into());
        }
        return Ok(());
    }

    match arg("--seconds").and_then(|v| v.parse::<u64>().ok()) {
        Some(s) => std::thread::sleep(Duration::from_secs(s)),
        None => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
    }
    println!("counters: {:?}", server.counters());
    Ok(())
}
