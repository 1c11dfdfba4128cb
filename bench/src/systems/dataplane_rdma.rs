//! `dataplane-rdma`: the messenger on the RDMA verbs stack (`stack-rdma`), client and server
//! messengers in this process, both on the same device (Soft-RoCE `rxe0` in the VM of
//! `scripts/test-rdma-vm.sh`), lossless connections. Same measurement as `dataplane-posix`
//! (this file is that one with the stack swapped): stream rows are measured at the receiver,
//! ping-pong on the client's worker thread.
//!
//! Environment: `DATAPLANE_RDMA_ADDR` (address to bind, the netdev under the RDMA device;
//! default 127.0.0.1), `DATAPLANE_RDMA_DEVICE`, `DATAPLANE_RDMA_GID_INDEX`,
//! `DATAPLANE_RDMA_BUSY_POLL_US` (CQ busy-poll window, default the stack's).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dataplane::stack::NetworkStack;
use dataplane::{Buf, Config, Connection, Dispatcher, Message, Messenger, Policy};
use dataplane_stack_rdma::{RdmaConfig, RdmaStack};

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
pub const NAME: &str = "dataplane-rdma";

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
        backend: "rdma".into(),
        ..Config::default()
    }
}

/// Opens the RDMA device (a clear error without one).
fn stack() -> Result<Arc<dyn NetworkStack>> {
    let cfg = RdmaConfig {
        device: std::env::var("DATAPLANE_RDMA_DEVICE").ok(),
        gid_index: std::env::var("DATAPLANE_RDMA_GID_INDEX")
            .ok()
            .and_then(|s| s.parse().ok()),
        ..RdmaConfig::default()
    };
    let cfg = match std::env::var("DATAPLANE_RDMA_BUSY_POLL_US")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(us) => RdmaConfig {
            busy_poll: Duration::from_micros(us),
            ..cfg
        },
        None => cfg,
    };
    Ok(Arc::new(RdmaStack::with_config(cfg)?))
}

/// Where the server binds: the address of the netdev under the RDMA device.
fn bind_addr() -> Result<SocketAddr> {
    let ip = std::env::var("DATAPLANE_RDMA_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    Ok(format!("{ip}:0").parse()?)
}

fn messenger(name: &str, workers: u32, d: Arc<Sink>) -> Result<Messenger> {
    let m = Messenger::builder(name)
        .config(config(workers))
        .stack(stack()?)
        .dispatcher(d)
        .build()
        .with_context(|| format!("building messenger {name}"))?;
    m.start()?;
    Ok(m)
}

fn server(workers: u32, d: Arc<Sink>) -> Result<(Messenger, SocketAddr)> {
    let m = messenger("bench-server", workers, d)?;
    let addr = m.bind(bind_addr()?)?;
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
        .stack(stack()?)
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
