//! `dataplane-dpdk`: the messenger on the DPDK stack. Client and server messengers run in this
//! process on two DPDK ports joined by `net_memif` (a shared-memory packet ring pair: the
//! fastest path on a machine without a NIC), each with its own smoltcp TCP/IP stack, over
//! lossless connections (sequenced, acknowledged, crc-checked) as in `dataplane-posix`.
//!
//! The EAL can start once per process, and DPDK 22.11's memif cannot restart a port, so the
//! two ports and their stacks are created on the first row and kept for the whole run; each
//! row builds fresh messengers on them. Needs root (the EAL) and a build with libdpdk; without
//! either, rows carry the reason instead of numbers. Hugepages are used when reserved
//! (else `--no-huge`). The DPDK stack runs one worker per port queue, so rows use 1 worker.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dataplane::{Buf, Config, Connection, Dispatcher, Message, Messenger, Policy};
use dataplane_stack_dpdk::{DpdkConfig, DpdkStack};

use crate::measure::{LatencyRecorder, Throughput};
use crate::row::Row;
use crate::systems::warmup;

/// System name of these rows.
pub const NAME: &str = "dataplane-dpdk";

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// Messages per batch in stream rows (as `dataplane-posix`).
const BATCH: usize = 256;
const BATCH_BYTES: usize = 4 << 20;
/// TCP socket buffers of the smoltcp sockets (each direction, each connection).
const SOCKET_BUFFER: usize = 512 << 10;

/// The server and client stacks, joined by memif.
type Pair = (Arc<DpdkStack>, Arc<DpdkStack>);

/// The two memif-joined stacks of this process, or why they could not be made.
static PAIR: OnceLock<std::result::Result<Pair, String>> = OnceLock::new();
/// Rows run one at a time; this also keeps two rows from sharing a port.
static LOCK: Mutex<()> = Mutex::new(());

fn hugepages_free() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("HugePages_Free:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn pair() -> Result<Pair> {
    let r = PAIR.get_or_init(|| {
        let sock =
            std::env::temp_dir().join(format!("dataplane-bench-{}.memif", std::process::id()));
        let base = DpdkConfig {
            no_huge: hugepages_free() < 256,
            no_pci: true,
            memory_mb: 256,
            vdevs: vec![
                format!("net_memif0,role=server,id=0,socket={}", sock.display()),
                format!("net_memif1,role=client,id=0,socket={}", sock.display()),
            ],
            ..DpdkConfig::default()
        };
        let server = DpdkStack::new(DpdkConfig {
            port: "net_memif0".into(),
            ip: SERVER_IP,
            ..base.clone()
        })
        .map_err(|e| e.to_string())?;
        let client = DpdkStack::new(DpdkConfig {
            port: "net_memif1".into(),
            ip: CLIENT_IP,
            ..base
        })
        .map_err(|e| e.to_string())?;
        // memif connects asynchronously (control channel on the EAL's interrupt thread).
        let end = Instant::now() + Duration::from_secs(10);
        while !(server.link_up() && client.link_up()) {
            if Instant::now() > end {
                return Err("the memif pair did not come up within 10 s".to_string());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok((Arc::new(server), Arc::new(client)))
    });
    r.clone().map_err(|e| anyhow!("{e}"))
}

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

fn messenger(name: &str, stack: Arc<DpdkStack>, d: Arc<dyn Dispatcher>) -> Result<Messenger> {
    let m = Messenger::builder(name)
        .config(Config {
            workers: 1,
            backend: "dpdk".into(),
            send_buffer_bytes: SOCKET_BUFFER,
            recv_buffer_bytes: SOCKET_BUFFER,
            ..Config::default()
        })
        .stack(stack)
        .dispatcher(d)
        .build()
        .with_context(|| format!("building messenger {name}"))?;
    m.start()?;
    Ok(m)
}

/// Server and client messengers on the memif pair; the server listens on a fresh port.
fn endpoints(
    server_d: Arc<dyn Dispatcher>,
    client_d: Arc<dyn Dispatcher>,
) -> Result<(Messenger, Messenger, SocketAddr)> {
    let (s, c) = pair()?;
    let srv = messenger("bench-server", s, server_d)?;
    let addr = srv.bind(SocketAddr::from((SERVER_IP, 0)))?;
    let cli = messenger("bench-client", c, client_d)?;
    Ok((srv, cli, addr))
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
pub fn stream(size: usize, connections: u32, _workers: u32, duration: Duration) -> Result<Row> {
    let _guard = LOCK.lock().map_err(|_| anyhow!("bench lock poisoned"))?;
    let d = sink(false);
    let (srv, client, addr) = endpoints(d.clone(), sink(false))?;
    let conns: Vec<Connection> = (0..connections.max(1))
        .map(|_| client.open(addr, Policy::lossless_client()))
        .collect::<Result<_, _>>()?;
    let payload = Buf::from_vec(vec![0xAB; size]);
    for c in &conns {
        c.send_wait(Message::new(1, payload.clone()), Duration::from_secs(30))
            .map_err(|e| anyhow!("send failed: {e}"))?;
    }
    wait_for(&d.msgs, conns.len() as u64, Duration::from_secs(30))?;
    let base = d.msgs.load(Ordering::Acquire);
    let base_bytes = d.bytes.load(Ordering::Acquire);
    let port = pair()?.1;
    let frames = |s: dataplane_stack_dpdk::StatsSnapshot| s.rx_frames + s.tx_frames;
    let base_frames = frames(port.stats());
    let per_batch = (BATCH_BYTES / size.max(1)).clamp(1, BATCH);
    let start = Instant::now();
    let deadline = start + duration;
    // One sender thread: the machine's other cores belong to the two polling workers.
    let mut sent = 0u64;
    loop {
        for c in &conns {
            let batch: Vec<Message> = (0..per_batch)
                .map(|_| Message::new(1, payload.clone()))
                .collect();
            c.send_batch_wait(batch, Duration::from_secs(60))
                .map_err(|e| anyhow!("send failed: {e}"))?;
            sent += per_batch as u64;
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    wait_for(&d.msgs, base + sent, Duration::from_secs(120))?;
    let elapsed = start.elapsed();
    let mut row = Row::new(NAME, "stream", size, connections);
    row.workers = Some(1);
    Throughput {
        messages: sent,
        bytes: d.bytes.load(Ordering::Acquire) - base_bytes,
        elapsed,
    }
    .fill(&mut row);
    let fps = (frames(port.stats()) - base_frames) as f64 / elapsed.as_secs_f64();
    row.note = Some(format!(
        "memif, smoltcp TCP, 1 worker per side; {:.2} M frames/s through the sender's port",
        fps / 1e6
    ));
    drop(conns);
    client.shutdown();
    srv.shutdown();
    Ok(row)
}

/// Ping-pong client: records each round trip on the client's worker and sends the next ping.
struct Pinger {
    payload: Buf,
    state: Mutex<PingState>,
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

/// Ping-pong of `size`-byte messages on one lossless connection.
pub fn pingpong(size: usize, duration: Duration) -> Result<Row> {
    let _guard = LOCK.lock().map_err(|_| anyhow!("bench lock poisoned"))?;
    let now = Instant::now();
    let pinger = Arc::new(Pinger {
        payload: Buf::from_vec(vec![0x5A; size]),
        state: Mutex::new(PingState {
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
    let (srv, client, addr) = endpoints(sink(true), pinger.clone())?;
    let conn = client.connect(addr)?;
    conn.send_wait(
        Message::new(1, pinger.payload.clone()),
        Duration::from_secs(30),
    )
    .map_err(|e| anyhow!("send failed: {e}"))?;
    wait_for(&pinger.done, 1, duration + Duration::from_secs(30))?;
    let st = pinger
        .state
        .lock()
        .map_err(|_| anyhow!("ping-pong state poisoned"))?;
    if let Some(e) = &st.error {
        bail!("ping-pong send failed: {e}");
    }
    let elapsed = st.deadline.saturating_duration_since(st.start);
    let mut row = Row::new(NAME, "pingpong", size, 1);
    row.workers = Some(1);
    row.msgs_per_sec = Some(st.recorder.len() as f64 / elapsed.as_secs_f64());
    row.duration_secs = Some(elapsed.as_secs_f64());
    st.recorder.fill(&mut row);
    row.note = Some("memif between two DPDK ports, smoltcp TCP, busy-polling workers".into());
    drop(st);
    client.shutdown();
    srv.shutdown();
    Ok(row)
}
