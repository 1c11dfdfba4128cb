//! Large messages over RDMA, zero-copy on both sides: a client sends messages from a buffer
//! pool (the stack registers the pool's memory once and hands the buffers to the NIC as they
//! are), and the server gets each payload where the NIC wrote it: a message larger than one
//! RDMA WRITE landing chunk (512 KiB) arrives as a list of those chunks, not copied together.
//! The server checks every byte and the program prints what was copied and what was not.
//!
//! ```text
//! cargo run --release -p dataplane-stack-rdma --example large_messages -- [--count N] [--size BYTES]
//! ```
//!
//! Both ends run in this process, over the first RDMA device (Soft-RoCE will do: see
//! `docs/rdma.md`), bound to `DATAPLANE_RDMA_ADDR` (the address of the network interface under
//! the device; default 127.0.0.1). Without an RDMA device it says so and exits with status 2.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::{BufPool, Config, Connection, Dispatcher, Message, Messenger, Policy, PoolConfig};
use dataplane_stack_rdma::RdmaStack;

/// The byte at offset `i` of message `n`: the server can tell every byte is where it belongs.
fn byte(n: u64, i: usize) -> u8 {
    (n as usize).wrapping_mul(7).wrapping_add(i % 251) as u8
}

/// Server side: checks each message's bytes (message `n` is the `n`-th to arrive: one
/// lossless connection delivers in order) and counts those whose payload came in pieces.
#[derive(Default)]
struct Check {
    received: AtomicU64,
    bad: AtomicU64,
    in_pieces: AtomicU64,
}

impl Dispatcher for Check {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }

    fn dispatch(&self, _conn: &Connection, m: Message) {
        let n = self.received.load(Ordering::Acquire);
        let mut at = 0;
        let mut intact = true;
        // The payload is a list of buffers: one when it fit a landing buffer, several (the
        // chunks it landed in) when it did not. Read it where it is.
        for piece in m.payload.iter() {
            intact &= piece.iter().enumerate().all(|(k, b)| *b == byte(n, at + k));
            at += piece.len();
        }
        if !intact {
            self.bad.fetch_add(1, Ordering::Relaxed);
        }
        if m.payload.buf_count() > 1 {
            self.in_pieces.fetch_add(1, Ordering::Relaxed);
        }
        self.received.fetch_add(1, Ordering::Release);
    }
}

/// Counts nothing: the client receives no messages.
struct Nothing;

impl Dispatcher for Nothing {
    fn dispatch(&self, _conn: &Connection, _m: Message) {}
}

fn arg(name: &str, default: usize) -> Result<usize, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number")),
    }
}

fn config() -> Config {
    Config {
        workers: 1,
        backend: "rdma".into(),
        ..Config::default()
    }
}

fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let count = arg("--count", 16)? as u64;
    let size = arg("--size", 4 << 20)?.max(1);
    let ip: IpAddr = match std::env::var("DATAPLANE_RDMA_ADDR") {
        Ok(a) => a.parse()?,
        Err(_) => IpAddr::from([127, 0, 0, 1]),
    };
    // One stack per end, as two hosts would have.
    let (srv_stack, cli_stack) = (RdmaStack::new()?, RdmaStack::new()?);
    let check = Arc::new(Check::default());
    let server = Messenger::builder("server")
        .config(config())
        .stack(Arc::new(srv_stack.clone()))
        .dispatcher(check.clone())
        .default_policy(Policy::lossless_client())
        .build()?;
    let addr = server.bind(SocketAddr::new(ip, 0))?;
    server.start()?;
    let client = Messenger::builder("client")
        .config(config())
        .stack(Arc::new(cli_stack.clone()))
        .dispatcher(Arc::new(Nothing))
        .build()?;
    client.start()?;
    let conn = client.connect(addr)?;

    // Payloads from a pool: registered with the NIC once, sent without a copy. The messenger
    // holds each message until the server acknowledges it, so the pool needs a few buffers.
    let pool = BufPool::new(&PoolConfig {
        buf_size: size,
        count: 4,
        hugepages: true,
        lock: false,
        prefault: true,
    })?;
    let start = Instant::now();
    for n in 0..count {
        let mut b = loop {
            match pool.alloc() {
                Ok(b) => break b,
                Err(_) => std::thread::sleep(Duration::from_micros(100)),
            }
        };
        let bytes: Vec<u8> = (0..size).map(|i| byte(n, i)).collect();
        b.extend_from_slice(&bytes);
        conn.send_wait(Message::new(1, b.freeze()), Duration::from_secs(60))
            .map_err(|e| format!("send {n}: {e}"))?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while check.received.load(Ordering::Acquire) < count {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {count} messages arrived",
                check.received.load(Ordering::Acquire)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let secs = start.elapsed().as_secs_f64();
    let (cs, ss, c) = (cli_stack.stats(), srv_stack.stats(), server.counters());
    let total = count * size as u64;
    println!(
        "{count} messages of {size} bytes in {secs:.3} s ({:.2} Gbit/s, filling included)",
        total as f64 * 8.0 / secs / 1e9
    );
    println!(
        "client: {} bytes sent zero-copy from the pool, {} copied into send slots (headers)",
        cs.zero_copy_bytes.load(Ordering::Relaxed),
        cs.copied_bytes.load(Ordering::Relaxed)
    );
    println!(
        "server: {} of {count} messages arrived in pieces ({} gathered by the messenger), {} \
         bytes decoded where the NIC wrote them, {} bytes copied, {} write chunks lent",
        check.in_pieces.load(Ordering::Relaxed),
        c.msgs_gathered,
        c.bytes_lent,
        ss.recv_copied_bytes.load(Ordering::Relaxed),
        ss.lent_write_chunks.load(Ordering::Relaxed)
    );
    let bad = check.bad.load(Ordering::Relaxed);
    println!("{bad} corrupted messages");
    drop(conn);
    client.shutdown();
    server.shutdown();
    Ok(bad == 0)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) if e.to_string().contains("no RDMA device") => {
            eprintln!("large_messages: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("large_messages: {e}");
            ExitCode::FAILURE
        }
    }
}
