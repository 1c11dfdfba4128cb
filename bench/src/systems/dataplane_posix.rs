//! `dataplane-posix`: the messenger on the POSIX stack, client and server messengers in this
//! process over loopback, lossless connections (sequenced, acknowledged, crc-checked).
//!
//! Stream rows are measured at the receiver: the clock stops when the server has received
//! every message sent during the measured interval. Payloads are one shared `Buf`, so each
//! send is a refcount bump: the library's zero-copy path, as a user would use it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dataplane::{Buf, Config, Connection, Dispatcher, Message, Messenger, Policy};
use dataplane_stack_posix::PosixStack;

use crate::measure::{LatencyRecorder, Throughput};
use crate::row::Row;
use crate::systems::warmup;

/// Messages per `send_batch` in stream rows (fewer for large messages, see `batch_len`).
const BATCH: usize = 256;
/// Payload bytes per batch at most: a batch is reserved whole against the queue limit.
const BATCH_BYTES: usize = 4 << 20;

/// Messages per batch for `size`-byte messages.
fn batch_len(size: usize) -> usize {
    (BATCH_BYTES / size.max(1)).clamp(1, BATCH)
}

/// System name of this row.
pub const NAME: &str = "dataplane-posix";

/// Counts what arrives; echoes when asked to.
struct Sink {
    msgs: AtomicU64,
    bytes: AtomicU64,
    echo: bool,
}

impl Dispatcher for Sink {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn dispatch(&self, conn: &Connection, m: Message) {
        self.bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
        if self.echo {
            // One message in flight: the queue cannot be full.
            let _ = conn.send(m);
        }
        self.msgs.fetch_add(1, Ordering::Release);
    }
}

fn sink(echo: bool) -> Arc<Sink> {
    Arc::new(Sink {
        msgs: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        echo,
    })
}

fn config(workers: u32) -> Config {
    Config {
        workers: workers.max(1) as usize,
        ..Config::default()
    }
}

fn messenger(name: &str, workers: u32, d: Arc<Sink>) -> Result<Messenger> {
    let m = Messenger::builder(name)
        .config(config(workers))
        .stack(Arc::new(PosixStack::new()))
        .dispatcher(d)
        .build()
        .with_context(|| format!("building messenger {name}"))?;
    m.start()?;
    Ok(m)
}

fn server(workers: u32, d: Arc<Sink>) -> Result<(Messenger, SocketAddr)> {
    let m = messenger("bench-server", workers, d)?;
    let addr = m.bind("127.0.0.1:0".parse()?)?;
    Ok((m, addr))
}

/// Sends, waiting under backpressure (the library parks the thread until the queue drains).
fn send(conn: &Connection, msg: Message) -> Result<()> {
    conn.send_wait(msg, Duration::from_secs(60))
        .map_err(|e| anyhow::anyhow!("send failed: {e}"))
}

fn wait_for(counter: &AtomicU64, target: u64, limit: Duration) -> Result<()> {
    let end = Instant::now() + limit;
    while counter.load(Ordering::Acquire) < target {
        if Instant::now() > end {
            bail!(
                "only {} of {target} messages arrived within {limit:?}",
                counter.load(Ordering::Acquire)
            );
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}

/// One-way stream of `size`-byte messages on `connections` lossless connections.
pub fn stream(size: usize, connections: u32, workers: u32, duration: Duration) -> Result<Row> {
    let d = sink(false);
    let (srv, addr) = server(workers, d.clone())?;
    let client = messenger("bench-client", workers, sink(false))?;
    let conns: Vec<Connection> = (0..connections.max(1))
        .map(|_| client.open(addr, Policy::lossless_client()))
        .collect::<Result<_, _>>()?;
    let payload = Buf::from_vec(vec![0xAB; size]);
    // Warm-up: every connection handshaken and carrying traffic.
    for c in &conns {
        send(c, Message::new(1, payload.clone()))?;
    }
    wait_for(&d.msgs, conns.len() as u64, Duration::from_secs(30))?;
    let base = d.msgs.load(Ordering::Acquire);
    let base_bytes = d.bytes.load(Ordering::Acquire);
    let senders = conns.len().min(2);
    let per_batch = batch_len(size);
    let start = Instant::now();
    let deadline = start + duration;
    let sent: u64 = std::thread::scope(|s| -> Result<u64> {
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
                            let batch: Vec<Message> = (0..per_batch)
                                .map(|_| Message::new(1, payload.clone()))
                                .collect();
                            c.send_batch_wait(batch, Duration::from_secs(60))
                                .map_err(|e| anyhow::anyhow!("send failed: {e}"))?;
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
            total += h.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
        }
        Ok(total)
    })?;
    wait_for(&d.msgs, base + sent, Duration::from_secs(120))?;
    let elapsed = start.elapsed();
    let mut row = Row::new(NAME, "stream", size, connections);
    row.workers = Some(workers);
    Throughput {
        messages: sent,
        bytes: d.bytes.load(Ordering::Acquire) - base_bytes,
        elapsed,
    }
    .fill(&mut row);
    drop(conns);
    client.shutdown();
    srv.shutdown();
    Ok(row)
}

/// Client side of the ping-pong: runs on the client's worker thread (fast dispatch), records
/// the round trip of each pong and sends the next ping at once — run to completion, the way a
/// latency-sensitive application uses the messenger (no hop to an application thread).
struct Pinger {
    payload: Buf,
    state: std::sync::Mutex<PingState>,
    done: AtomicU64,
}

struct PingState {
    sent_at: Instant,
    warm_until: Instant,
    start: Instant,
    deadline: Instant,
    duration: Duration,
    recorder: LatencyRecorder,
    error: Option<String>,
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
            self.done.store(1, Ordering::Release);
            return;
        }
        st.sent_at = Instant::now();
        if let Err(e) = conn.send(Message::new(1, self.payload.clone())) {
            st.error = Some(e.to_string());
            self.done.store(1, Ordering::Release);
        }
    }
}

/// Ping-pong of `size`-byte messages on one lossless connection; full round trip measured on
/// the client's worker thread.
pub fn pingpong(size: usize, duration: Duration) -> Result<Row> {
    let (srv, addr) = server(1, sink(true))?;
    let now = Instant::now();
    let pinger = Arc::new(Pinger {
        payload: Buf::from_vec(vec![0x5A; size]),
        state: std::sync::Mutex::new(PingState {
            sent_at: now,
            warm_until: now + warmup(duration),
            start: now,
            deadline: now + warmup(duration) + duration,
            duration,
            recorder: LatencyRecorder::new()?,
            error: None,
        }),
        done: AtomicU64::new(0),
    });
    let client = Messenger::builder("bench-client")
        .config(config(1))
        .stack(Arc::new(PosixStack::new()))
        .dispatcher(pinger.clone())
        .build()
        .context("building the ping-pong client")?;
    client.start()?;
    let conn = client.connect(addr)?;
    send(&conn, Message::new(1, pinger.payload.clone()))?;
    wait_for(&pinger.done, 1, duration + Duration::from_secs(30))?;
    let st = pinger
        .state
        .lock()
        .map_err(|_| anyhow::anyhow!("ping-pong state poisoned"))?;
    if let Some(e) = &st.error {
        bail!("ping-pong send failed: {e}");
    }
    let elapsed = st.deadline.saturating_duration_since(st.start);
    let mut row = Row::new(NAME, "pingpong", size, 1);
    row.workers = Some(1);
    row.msgs_per_sec = Some(st.recorder.len() as f64 / elapsed.as_secs_f64());
    row.duration_secs = Some(elapsed.as_secs_f64());
    st.recorder.fill(&mut row);
    drop(st);
    client.shutdown();
    srv.shutdown();
    Ok(row)
}

/// Resident set size of this process in bytes (`/proc/self/statm`).
fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("malformed /proc/self/statm")?
        .parse()
        .context("malformed /proc/self/statm")?;
    Ok(pages * 4096)
}

/// User-space memory per idle lossless connection, both ends included (client and server
/// messengers in this process): RSS growth from `n` to `2n` idle connections, divided by
/// `n` (the first `n` bring the buffer pools to steady state). Kernel socket buffers are not
/// in RSS and not counted.
pub fn idle_connection_bytes(n: usize) -> Result<u64> {
    let (srv, addr) = server(1, sink(false))?;
    let client = messenger("bench-client", 1, sink(false))?;
    // Warm up: pools, first connection, thread stacks.
    let first = client.open(addr, Policy::lossless_client())?;
    send(&first, Message::new(1, Buf::from_static(b"warm-up")))?;
    let ready = |want: u64| {
        let end = Instant::now() + Duration::from_secs(30);
        while srv.counters().accepted < want && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        srv.counters().accepted >= want
    };
    if !ready(1) {
        bail!("warm-up connection never completed");
    }
    // First batch: brings the receive pools to their steady state (their pages are pool
    // memory, bounded per worker, not per connection).
    let mut conns: Vec<Connection> = (0..n)
        .map(|_| client.open(addr, Policy::lossless_client()))
        .collect::<Result<_, _>>()?;
    if !ready(n as u64 + 1) {
        bail!(
            "only {} of {n} idle connections completed",
            srv.counters().accepted - 1
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = rss_bytes()?;
    // Second batch: what n more idle connections cost.
    for _ in 0..n {
        conns.push(client.open(addr, Policy::lossless_client())?);
    }
    if !ready(2 * n as u64 + 1) {
        bail!(
            "only {} of {} idle connections completed",
            srv.counters().accepted - 1,
            2 * n
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    let after = rss_bytes()?;
    drop(conns);
    client.shutdown();
    srv.shutdown();
    Ok(after.saturating_sub(before) / n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_stream_and_pingpong() {
        let row = stream(64, 2, 1, Duration::from_millis(100)).unwrap();
        assert!(row.msgs_per_sec.unwrap() > 0.0);
        assert_eq!(row.connections, 2);
        let row = pingpong(64, Duration::from_millis(100)).unwrap();
        assert!(row.p50_us.unwrap() > 0.0);
        assert!(row.p999_us.unwrap() >= row.p50_us.unwrap());
    }
}
