//! Two messengers on loopback: a ping-pong phase (one message in flight, round-trip latency)
//! and a stream phase (messages sent back to back, rate and bandwidth).
//!
//! ```text
//! cargo run --release --example ping_pong -- [--count N] [--size BYTES]
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::{Buf, Config, Connection, Dispatcher, Message, Messenger};
use dataplane_stack_posix::PosixStack;

/// Server side: echoes pings, counts stream messages.
struct Server {
    streamed: AtomicU64,
}

impl Dispatcher for Server {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn dispatch(&self, conn: &Connection, m: Message) {
        if m.msg_type == PING {
            // Zero copy: the received buffer goes straight back out.
            let _ = conn.send(Message::new(PONG, m.payload));
        } else {
            self.streamed.fetch_add(1, Ordering::Release);
        }
    }
}

/// Client side: counts pongs.
struct Client {
    pongs: AtomicU64,
}

impl Dispatcher for Client {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn dispatch(&self, _c: &Connection, _m: Message) {
        self.pongs.fetch_add(1, Ordering::Release);
    }
}

const PING: u16 = 1;
const PONG: u16 = 2;
const DATA: u16 = 3;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn wait(counter: &AtomicU64, target: u64) {
    let end = Instant::now() + Duration::from_secs(60);
    while counter.load(Ordering::Acquire) < target {
        assert!(Instant::now() < end, "timed out waiting for messages");
        std::hint::spin_loop();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let count = arg("--count", 100_000) as u64;
    let size = arg("--size", 64);
    let cfg = Config {
        workers: 1,
        hugepages: false,
        ..Config::default()
    };

    let server_d = Arc::new(Server {
        streamed: AtomicU64::new(0),
    });
    let server = Messenger::builder("server")
        .config(cfg.clone())
        .stack(Arc::new(PosixStack::new()))
        .dispatcher(server_d.clone())
        .build()?;
    let addr = server.bind("127.0.0.1:0".parse()?)?;
    server.start()?;

    let client_d = Arc::new(Client {
        pongs: AtomicU64::new(0),
    });
    let client = Messenger::builder("client")
        .config(cfg)
        .stack(Arc::new(PosixStack::new()))
        .dispatcher(client_d.clone())
        .build()?;
    client.start()?;
    let conn = client.connect(addr)?;
    let payload = Buf::from_vec(vec![0x5a; size]);

    // Ping-pong: one message in flight.
    let rounds = (count / 10).clamp(1, 20_000);
    let mut rtts = Vec::with_capacity(rounds as usize);
    for i in 0..rounds {
        let t = Instant::now();
        conn.send(Message::new(PING, payload.clone()))?;
        wait(&client_d.pongs, i + 1);
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let pct = |p: f64| rtts[((rtts.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6;
    println!(
        "ping-pong {size} B x {rounds}: rtt p50 {:.1} us, p99 {:.1} us, p999 {:.1} us",
        pct(0.50),
        pct(0.99),
        pct(0.999)
    );

    // Stream: back to back, retrying under backpressure.
    let t = Instant::now();
    for _ in 0..count {
        let mut m = Message::new(DATA, payload.clone());
        loop {
            match conn.send(m) {
                Ok(()) => break,
                Err(e) => {
                    m = e.message;
                    std::thread::yield_now();
                }
            }
        }
    }
    wait(&server_d.streamed, count);
    let secs = t.elapsed().as_secs_f64();
    println!(
        "stream {size} B x {count}: {:.2} M msg/s, {:.2} Gbit/s",
        count as f64 / secs / 1e6,
        count as f64 * size as f64 * 8.0 / secs / 1e9
    );
    let c = client.counters();
    println!(
        "client counters: {} msgs out, {} bytes out, {} faults",
        c.msgs_out, c.bytes_out, c.faults
    );
    client.shutdown();
    server.shutdown();
    Ok(())
}
