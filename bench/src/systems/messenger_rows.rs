//! The stream and ping-pong harness shared by every `dataplane-*` system: the same
//! messengers, dispatchers and clocks, with only the stack swapped (POSIX over loopback, DPDK
//! over memif, RDMA verbs), so their rows compare like with like.
//!
//! Stream rows are measured at the receiver: the clock stops when the server has received
//! every message sent during the measured interval. Payloads are one shared `Buf` (from a
//! `BufPool`, so an RDMA stack sends it zero-copy from its registered arena), so each
//! send is a refcount bump: the library's zero-copy path, as a user would use it. Ping-pong
//! runs on the client's worker thread (fast dispatch): each pong's round trip is recorded and
//! the next ping sent at once, the way a latency-sensitive application uses the messenger.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dataplane::stack::NetworkStack;
use dataplane::{
    Buf, BufPool, Config, Connection, Dispatcher, Message, MessageRef, Messenger, Policy,
    PoolConfig, RecordBatch,
};

use crate::measure::{LatencyRecorder, Throughput};
use crate::row::Row;
use crate::systems::warmup;

/// Message type of the stream rows' messages.
pub const STREAM_TYPE: u16 = 1;

/// Messages per `send_batch` in stream rows (fewer for large messages, see [`batch_len`]).
const BATCH: usize = 256;
/// Payload bytes per batch at most: a batch is reserved whole against the queue limit.
const BATCH_BYTES: usize = 4 << 20;

/// Messages per batch for `size`-byte messages.
fn batch_len(size: usize) -> usize {
    (BATCH_BYTES / size.max(1)).clamp(1, BATCH)
}

/// What a `dataplane-*` system brings to the harness: its messengers and where they meet.
pub trait Backend {
    /// System name of the rows.
    fn name(&self) -> &'static str;
    /// Messenger configuration for `workers` workers of one end; `server` says which.
    fn config(&self, server: bool, workers: u32) -> Config;
    /// The stack of one end; `server` says which.
    fn stack(&self, server: bool) -> Result<Arc<dyn NetworkStack>>;
    /// Where the server binds (port 0: any).
    fn bind_addr(&self) -> Result<SocketAddr>;
    /// Sender threads at most in stream rows.
    fn max_senders(&self) -> usize {
        2
    }
    /// Worker count the rows really use, when the backend fixes it.
    fn workers(&self, asked: u32) -> u32 {
        asked
    }
    /// Called when a stream row's clock starts; the closure, given the row's elapsed time
    /// when it stops, returns a note for the row (e.g. frames per second through a port).
    fn stream_probe(&self) -> Box<dyn FnOnce(Duration) -> Option<String>> {
        Box::new(|_| None)
    }
    /// A note for ping-pong rows.
    fn pingpong_note(&self) -> Option<String> {
        None
    }
}

/// Counts what arrives; echoes when asked to.
pub struct Sink {
    /// Messages received.
    pub msgs: Tally,
    /// Payload bytes received.
    pub bytes: Tally,
    echo: bool,
}

/// Shards of a [`Tally`]: one per counting thread (worker), the rest share a locked one.
const TALLY_SHARDS: usize = 16;

static NEXT_THREAD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// A small number of this thread, unique in the process.
    static THREAD: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// A counter kept the way a receive loop keeps a local count: each counting thread adds on
/// its own cache line with a plain load and store (it is that line's only writer: no locked
/// instruction, no line shared with another writer), and a reader sums the lines. The
/// baselines count in locals of their receive loop; a dispatcher runs on the messenger's
/// worker threads and needs shared counters, and two locked increments per message would be
/// the benchmark's cost, not the library's.
pub struct Tally {
    shards: Vec<crossbeam::utils::CachePadded<AtomicU64>>,
    shared: AtomicU64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            shards: (0..TALLY_SHARDS)
                .map(|_| crossbeam::utils::CachePadded::new(AtomicU64::new(0)))
                .collect(),
            shared: AtomicU64::new(0),
        }
    }

    /// Adds `n` (from any thread).
    #[inline]
    pub fn add(&self, n: u64) {
        let id = THREAD.with(|t| *t);
        match self.shards.get(id) {
            // This thread is the shard's only writer.
            Some(s) => s.store(s.load(Ordering::Relaxed) + n, Ordering::Release),
            None => {
                self.shared.fetch_add(n, Ordering::Release);
            }
        }
    }

    /// The sum.
    pub fn get(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.load(Ordering::Acquire))
            .sum::<u64>()
            + self.shared.load(Ordering::Acquire)
    }
}

impl Dispatcher for Sink {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    /// A counting sink takes messages in place (no `Message`, no reference count), as an
    /// application that parses a message at once would; an echoing one needs them owned.
    fn dispatches_in_place(&self) -> bool {
        !self.echo
    }
    fn in_place(&self, _msg_type: u16) -> bool {
        true
    }
    fn dispatch_in_place(&self, _conn: &Connection, m: MessageRef<'_>) {
        self.bytes.add(m.payload.len() as u64);
        self.msgs.add(1);
    }
    fn dispatch(&self, conn: &Connection, m: Message) {
        self.bytes.add(m.len() as u64);
        if self.echo {
            // One message in flight: the queue cannot be full.
            let _ = conn.send(m);
        }
        self.msgs.add(1);
    }
}

/// The core of one end's single worker when the two ends are pinned apart: the server's on
/// the last core, the client's on the first (the sender thread is left to the scheduler).
pub fn core_apart(server: bool) -> usize {
    if server {
        std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
    } else {
        0
    }
}

/// A counting (or echoing) dispatcher.
pub fn sink(echo: bool) -> Arc<Sink> {
    Arc::new(Sink {
        msgs: Tally::new(),
        bytes: Tally::new(),
        echo,
    })
}

/// Sends, waiting under backpressure (the library parks the thread until the queue drains).
pub fn send(conn: &Connection, msg: Message) -> Result<()> {
    conn.send_wait(msg, Duration::from_secs(60))
        .map_err(|e| anyhow!("send failed: {e}"))
}

/// Waits until `counter` reaches `target`, at most `limit`.
pub fn wait_for(counter: impl Fn() -> u64, target: u64, limit: Duration) -> Result<()> {
    let end = Instant::now() + limit;
    while counter() < target {
        if Instant::now() > end {
            bail!(
                "only {} of {target} messages arrived within {limit:?}",
                counter()
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// A name for a new client messenger, unique to this process and row. A lossless server
/// keeps the session of a client that vanished without closing (killed, or a link that went
/// away) and hands what it still held to the next incarnation of that name; rows of the
/// two-host mode meet the same server again and again, so each row's client is a new peer.
pub fn client_name() -> String {
    static ROW: AtomicU64 = AtomicU64::new(0);
    format!(
        "bench-client-{}-{}",
        std::process::id(),
        ROW.fetch_add(1, Ordering::Relaxed)
    )
}

/// A started messenger on `b`'s stack; `server` says which end it is.
pub fn messenger(
    b: &dyn Backend,
    name: &str,
    server: bool,
    workers: u32,
    d: Arc<dyn Dispatcher>,
) -> Result<Messenger> {
    let m = Messenger::builder(name)
        .config(b.config(server, workers))
        .stack(b.stack(server)?)
        .dispatcher(d)
        .build()
        .with_context(|| format!("building messenger {name}"))?;
    m.start()?;
    Ok(m)
}

/// A started server on `b` and the address it listens on.
pub fn server(
    b: &dyn Backend,
    workers: u32,
    d: Arc<dyn Dispatcher>,
) -> Result<(Messenger, SocketAddr)> {
    let m = messenger(b, "bench-server", true, workers, d)?;
    let addr = m.bind(b.bind_addr()?)?;
    Ok((m, addr))
}

/// A payload of `size` bytes of `byte` in a buffer pool of its own, as an application that
/// allocates its messages from a `BufPool` has them: an RDMA stack registers the pool's arena
/// once and sends the payload zero-copy (any memory does for the other stacks).
pub fn pool_payload(size: usize, byte: u8) -> Result<Buf> {
    let pool = BufPool::new(&PoolConfig {
        buf_size: size.max(1),
        count: 1,
        hugepages: true,
        lock: false,
        prefault: true,
    })?;
    let mut b = pool.alloc()?;
    let n = b.extend_from_slice(&vec![byte; size]);
    if n != size {
        bail!("pool buffer of {size} bytes took {n}");
    }
    Ok(b.freeze())
}

/// Environment variable: set to 1 to make stream rows send small messages as `Message`
/// batches (`send_batch`) instead of [`RecordBatch`]es, for comparing the two.
pub const MESSAGES_ENV: &str = "DATAPLANE_BENCH_MESSAGES";

fn messages_forced() -> bool {
    std::env::var(MESSAGES_ENV).is_ok_and(|v| v == "1")
}

/// Sends `count` copies of `payload` on `c` as one batch: written straight into records when
/// `records` (small payloads, the way an application sends small messages from plain bytes),
/// else as messages that share the payload buffer (zero-copy for large payloads).
fn send_stream_batch(c: &Connection, payload: &Buf, count: usize, records: bool) -> Result<()> {
    let timeout = Duration::from_secs(60);
    if records {
        let mut batch = RecordBatch::with_capacity(count, count * payload.len());
        for _ in 0..count {
            batch.push(STREAM_TYPE, payload)?;
        }
        c.send_records_wait(batch, timeout)
            .map_err(|e| anyhow!("send failed: {e}"))
    } else {
        let batch: Vec<Message> = (0..count)
            .map(|_| Message::new(STREAM_TYPE, payload.clone()))
            .collect();
        c.send_batch_wait(batch, timeout)
            .map_err(|e| anyhow!("send failed: {e}"))
    }
}

/// Sends batches of `payload` on `conns` until `deadline` from at most `max_senders` threads
/// (connections dealt out among them), and returns how many messages were sent.
pub fn send_for(
    conns: &[Connection],
    payload: &Buf,
    max_senders: usize,
    deadline: Instant,
) -> Result<u64> {
    let senders = conns.len().min(max_senders).max(1);
    let per_batch = batch_len(payload.len());
    let records = payload.len() <= RecordBatch::MAX_PAYLOAD && !messages_forced();
    std::thread::scope(|s| -> Result<u64> {
        let handles: Vec<_> = (0..senders)
            .map(|t| {
                let mine: Vec<&Connection> = conns.iter().skip(t).step_by(senders).collect();
                let payload = payload.clone();
                s.spawn(move || -> Result<u64> {
                    // Batches of BATCH messages per connection: one queue reservation, one
                    // ring slot and one wake-up each (tokio-framed flushes every 256 frames).
                    let mut n = 0u64;
                    loop {
                        for c in &mine {
                            send_stream_batch(c, &payload, per_batch, records)?;
                            n += per_batch as u64;
                        }
                        if Instant::now() >= deadline {
                            return Ok(n);
                        }
                    }
                })
            })
            .collect();
        let mut total = 0;
        for h in handles {
            total += h.join().map_err(|_| anyhow!("sender panicked"))??;
        }
        Ok(total)
    })
}

/// One-way stream of `size`-byte messages on `connections` lossless connections.
pub fn stream(
    b: &dyn Backend,
    size: usize,
    connections: u32,
    workers: u32,
    duration: Duration,
) -> Result<Row> {
    let workers = b.workers(workers);
    let d = sink(false);
    let (srv, addr) = server(b, workers, d.clone())?;
    let client = messenger(b, &client_name(), false, workers, sink(false))?;
    let conns: Vec<Connection> = (0..connections.max(1))
        .map(|_| client.open(addr, Policy::lossless_client()))
        .collect::<Result<_, _>>()?;
    let payload = pool_payload(size, 0xAB)?;
    // Warm-up: every connection handshaken and carrying traffic.
    for c in &conns {
        send(c, Message::new(1, payload.clone()))?;
    }
    wait_for(|| d.msgs.get(), conns.len() as u64, Duration::from_secs(30))?;
    let base = d.msgs.get();
    let base_bytes = d.bytes.get();
    let probe = b.stream_probe();
    let start = Instant::now();
    let sent = send_for(&conns, &payload, b.max_senders(), start + duration)?;
    wait_for(|| d.msgs.get(), base + sent, Duration::from_secs(120))?;
    let elapsed = start.elapsed();
    let mut row = Row::new(b.name(), "stream", size, connections);
    row.workers = Some(workers);
    Throughput {
        messages: sent,
        bytes: d.bytes.get() - base_bytes,
        elapsed,
    }
    .fill(&mut row);
    row.note = probe(elapsed);
    drop(conns);
    client.shutdown();
    srv.shutdown();
    Ok(row)
}

/// Client side of the ping-pong: records the round trip of each pong on the client's
/// worker thread and sends the next ping at once.
struct Pinger {
    payload: Buf,
    /// Message type of the pings (the server echoes it).
    msg_type: u16,
    state: Mutex<PingState>,
    /// Signalled when `PingState::done` is set. The main thread blocks on it rather than
    /// polling: on a 2-core machine every wake-up of a polling thread preempts one of the
    /// two busy workers and lands in the measured round trips.
    finished: Condvar,
}

struct PingState {
    sent_at: Instant,
    warm_until: Instant,
    start: Instant,
    deadline: Instant,
    duration: Duration,
    recorder: LatencyRecorder,
    error: Option<String>,
    done: bool,
}

impl Dispatcher for Pinger {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn dispatch(&self, conn: &Connection, _m: Message) {
        let now = Instant::now();
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if now < st.warm_until {
            // still warming up
        } else if st.start < st.warm_until {
            st.start = now;
            st.deadline = now + st.duration;
        } else {
            let rtt = now - st.sent_at;
            st.recorder.record(rtt);
        }
        if now >= st.deadline && st.start >= st.warm_until {
            st.done = true;
            self.finished.notify_all();
            return;
        }
        // The next round trip starts now: one clock read per pong (a clock read costs a
        // system call on machines without a usable TSC, such as the emulated RDMA VM).
        st.sent_at = now;
        if let Err(e) = conn.send(Message::new(self.msg_type, self.payload.clone())) {
            st.error = Some(e.to_string());
            st.done = true;
            self.finished.notify_all();
        }
    }
}

/// Ping-pong of `size`-byte messages on one lossless connection; full round trip measured on
/// the client's worker thread.
pub fn pingpong(b: &dyn Backend, size: usize, duration: Duration) -> Result<Row> {
    let (srv, addr) = server(b, 1, sink(true))?;
    let row = pingpong_to(b, addr, 1, size, duration);
    srv.shutdown();
    row
}

/// The client half of [`pingpong`]: pings of `msg_type` to the server at `addr`, which
/// echoes them (in this process, or a `dataplane-bench server` on another host).
pub fn pingpong_to(
    b: &dyn Backend,
    addr: SocketAddr,
    msg_type: u16,
    size: usize,
    duration: Duration,
) -> Result<Row> {
    let now = Instant::now();
    let pinger = Arc::new(Pinger {
        payload: pool_payload(size, 0x5A)?,
        msg_type,
        state: Mutex::new(PingState {
            sent_at: now,
            warm_until: now + warmup(duration),
            start: now,
            deadline: now + warmup(duration) + duration,
            duration,
            recorder: LatencyRecorder::new()?,
            error: None,
            done: false,
        }),
        finished: Condvar::new(),
    });
    let client = messenger(b, &client_name(), false, 1, pinger.clone())?;
    let conn = client.connect(addr)?;
    send(&conn, Message::new(msg_type, pinger.payload.clone()))?;
    let limit = duration + Duration::from_secs(30);
    let st = pinger
        .state
        .lock()
        .map_err(|_| anyhow!("ping-pong state poisoned"))?;
    let (st, waited) = pinger
        .finished
        .wait_timeout_while(st, limit, |s| !s.done)
        .map_err(|_| anyhow!("ping-pong state poisoned"))?;
    if waited.timed_out() {
        bail!(
            "ping-pong did not finish within {limit:?} ({} round trips)",
            st.recorder.len()
        );
    }
    if let Some(e) = &st.error {
        bail!("ping-pong send failed: {e}");
    }
    let elapsed = st.deadline.saturating_duration_since(st.start);
    let mut row = Row::new(b.name(), "pingpong", size, 1);
    row.workers = Some(1);
    row.msgs_per_sec = Some(st.recorder.len() as f64 / elapsed.as_secs_f64());
    row.duration_secs = Some(elapsed.as_secs_f64());
    st.recorder.fill(&mut row);
    row.note = b.pingpong_note();
    drop(st);
    client.shutdown();
    Ok(row)
}
