//! Per-message cost of the small-message stream: sends N 64-byte messages over one lossless
//! loopback connection in batches of 256 (one client worker, one server worker, a sink that
//! counts in place on the worker thread; `STREAM_COST_OWNED=1` makes it take owned messages by
//! fast dispatch instead; `STREAM_COST_RECORDS=1` writes each batch as a `RecordBatch` sent
//! by `send_records_wait` instead of building messages for `send_batch_wait`) and prints the
//! rate.
//!
//! Meant to be run under callgrind, whose instruction counts are deterministic enough to
//! compare changes on a noisy machine (total Ir divided by N is the per-message cost, setup
//! included):
//!
//! ```text
//! cargo build --release --example stream_cost
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/x.out \
//!     ./target/release/examples/stream_cost 100096
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::{
    Buf, Config, Connection, Dispatcher, Message, MessageRef, Messenger, Policy, RecordBatch,
};
use dataplane_stack_posix::PosixStack;

/// Messages per `send_batch_wait`.
const BATCH: usize = 256;
/// Payload size in bytes, unless given as the second argument.
const SIZE: usize = 64;

/// Counts what arrives, on the worker thread.
struct Sink {
    msgs: AtomicU64,
    in_place: bool,
}

impl Sink {
    fn new() -> Arc<Sink> {
        Arc::new(Sink {
            msgs: AtomicU64::new(0),
            in_place: std::env::var_os("STREAM_COST_OWNED").is_none(),
        })
    }
}

impl Dispatcher for Sink {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn dispatch(&self, _c: &Connection, _m: Message) {
        self.msgs.fetch_add(1, Ordering::Release);
    }
    /// Counted in place (no `Message`, no reference count), unless `STREAM_COST_OWNED` is set
    /// to measure the owned path.
    fn dispatches_in_place(&self) -> bool {
        self.in_place
    }
    fn in_place(&self, _msg_type: u16) -> bool {
        true
    }
    fn dispatch_in_place(&self, _c: &Connection, _m: MessageRef<'_>) {
        self.msgs.fetch_add(1, Ordering::Release);
    }
}

fn messenger(name: &str, sink: Arc<Sink>) -> Result<Messenger, Box<dyn std::error::Error>> {
    let cfg = Config {
        workers: 1,
        hugepages: false,
        ..Config::default()
    };
    let m = Messenger::builder(name)
        .config(cfg)
        .stack(Arc::new(PosixStack::new()))
        .dispatcher(sink)
        .build()?;
    m.start()?;
    Ok(m)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a.parse()?,
        None => 100_096,
    };
    let sink = Sink::new();
    let server = messenger("server", sink.clone())?;
    let addr = server.bind("127.0.0.1:0".parse()?)?;
    let client = messenger("client", Sink::new())?;
    let conn = client.open(addr, Policy::lossless_client())?;
    let size: usize = match std::env::args().nth(2) {
        Some(a) => a.parse()?,
        None => SIZE,
    };
    let payload = Buf::from_vec(vec![0xAB; size]);

    let records = std::env::var_os("STREAM_COST_RECORDS").is_some();
    let timeout = Duration::from_secs(60);
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = BATCH.min(n - sent);
        if records {
            let mut batch = RecordBatch::with_capacity(k, k * size);
            for _ in 0..k {
                batch.push(1, &payload)?;
            }
            conn.send_records_wait(batch, timeout)
                .map_err(|e| format!("send failed: {e}"))?;
        } else {
            let batch: Vec<Message> = (0..k).map(|_| Message::new(1, payload.clone())).collect();
            conn.send_batch_wait(batch, timeout)
                .map_err(|e| format!("send failed: {e}"))?;
        }
        sent += k;
    }
    let end = Instant::now() + Duration::from_secs(120);
    while sink.msgs.load(Ordering::Acquire) < n as u64 {
        if Instant::now() > end {
            return Err(
                format!("only {} of {n} arrived", sink.msgs.load(Ordering::Acquire)).into(),
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "stream {size} B x {n}: {:.2} M msg/s",
        n as f64 / secs / 1e6
    );
    drop(conn);
    client.shutdown();
    server.shutdown();
    Ok(())
}
