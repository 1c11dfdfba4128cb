//! `dataplane-dpdk`: the messenger on the DPDK stack. Client and server messengers run in this
//! process on two DPDK ports joined by `net_memif` (a shared-memory packet ring pair: the
//! fastest path on a machine without a NIC), each with its own smoltcp TCP/IP stack, over
//! lossless connections (sequenced, acknowledged, crc-checked) as in `dataplane-posix`. The
//! client port runs memif's zero-copy mode: its mbufs are the link's buffers, so each packet
//! is copied once on the link (by the server side) instead of twice.
//!
//! The EAL can start once per process, and DPDK 22.11's memif cannot restart a port, so the
//! two ports and their stacks are created on the first row and kept for the whole run; each
//! row builds fresh messengers on them. Needs root (the EAL) and a build with libdpdk; without
//! either, rows carry the reason instead of numbers. Hugepages are used when reserved
//! (else `--no-huge`). The DPDK stack runs one worker per port queue, so rows use 1 worker.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use dataplane::stack::NetworkStack;
use dataplane::Config;
use dataplane_stack_dpdk::{DpdkConfig, DpdkStack};

use crate::row::Row;
use crate::systems::messenger_rows::{self, Backend};

/// System name of these rows.
pub const NAME: &str = "dataplane-dpdk";

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// TCP socket buffers of the smoltcp sockets (each direction, each connection): 2 MiB.
/// smoltcp's rings are fixed where Linux autotunes a loopback socket's up to `tcp_wmem`'s
/// 4 MiB; with 512 KiB the 64 B stream was window-bound whenever the scheduler took a polling
/// worker's core away (26 against 33 M msg/s here), and 4 MiB cost the 64 KiB stream about 5%
/// in cache misses without adding to the 64 B one (`docs/dpdk.md`).
const SOCKET_BUFFER: usize = 2 << 20;

/// IP MTU of the memif link (see [`set_mtu`]).
static MTU: AtomicU16 = AtomicU16::new(9000);

/// Sets the IP MTU of the memif link; effective only before the first DPDK row (the two ports
/// are made once per process).
pub fn set_mtu(mtu: u16) {
    MTU.store(mtu, Ordering::Relaxed);
}

/// `DATAPLANE_BENCH_MEMIF_COPY=1`: the memif client copies too (for comparison with the
/// default zero-copy client).
fn copy_mode() -> bool {
    std::env::var("DATAPLANE_BENCH_MEMIF_COPY").is_ok_and(|v| v == "1")
}

/// How the memif link moves packets, for the row notes.
fn link_mode() -> &'static str {
    if copy_mode() {
        "copy"
    } else {
        "zero-copy client"
    }
}

/// The server and client stacks, joined by memif.
type Pair = (Arc<DpdkStack>, Arc<DpdkStack>);

/// The two memif-joined stacks of this process, or why they could not be made.
static PAIR: OnceLock<std::result::Result<Pair, String>> = OnceLock::new();
/// Rows run one at a time; this also keeps two rows from sharing a port.
static LOCK: Mutex<()> = Mutex::new(());

/// Waits until every one of `stacks` has its link up, at most `limit`; whether they have.
fn links_up(stacks: &[&DpdkStack], limit: Duration) -> bool {
    let end = Instant::now() + limit;
    while !stacks.iter().all(|s| s.link_up()) {
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn pair() -> Result<Pair> {
    let r = PAIR.get_or_init(|| {
        let sock =
            std::env::temp_dir().join(format!("dataplane-bench-{}.memif", std::process::id()));
        let mtu = MTU.load(Ordering::Relaxed);
        // The client side in zero-copy mode (its mbufs are the link's buffers: one copy per
        // packet instead of two); `DATAPLANE_BENCH_MEMIF_COPY=1` copies on both sides.
        let zc = !copy_mode();
        // One frame per memif descriptor (and so per mbuf on receive).
        let bsize = dataplane_stack_dpdk::frame_buffer_len(Some(mtu));
        let base = DpdkConfig {
            no_huge: dataplane_stack_dpdk::hugepages_free() < 256,
            no_pci: true,
            memory_mb: 512,
            vdevs: vec![
                format!(
                    "net_memif0,role=server,id=0,bsize={bsize},socket={}",
                    sock.display()
                ),
                format!(
                    "net_memif1,role=client,id=0,bsize={bsize},socket={}{}",
                    sock.display(),
                    if zc { ",zero-copy=yes" } else { "" }
                ),
            ],
            mtu: Some(mtu),
            // Both ends are ours on a shared-memory link, as on loopback (where Linux skips
            // TCP checksums too).
            skip_tcp_checksum: true,
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
        if !links_up(&[&server, &client], Duration::from_secs(10)) {
            return Err("the memif pair did not come up within 10 s".to_string());
        }
        Ok((Arc::new(server), Arc::new(client)))
    });
    r.clone().map_err(|e| anyhow!("{e}"))
}

/// The two DPDK ports of this process joined by memif: the server on one, the client on
/// the other.
struct Dpdk;

impl Backend for Dpdk {
    fn name(&self) -> &'static str {
        NAME
    }
    /// One worker per end, pinned as DPDK lcores are: the server's to the last core, the
    /// client's to the first (the sender thread is left to the scheduler).
    fn config(&self, server: bool, _workers: u32) -> Config {
        Config {
            workers: 1,
            pin_workers: true,
            worker_cores: vec![messenger_rows::core_apart(server)],
            backend: "dpdk".into(),
            send_buffer_bytes: SOCKET_BUFFER,
            recv_buffer_bytes: SOCKET_BUFFER,
            ..Config::default()
        }
    }
    fn stack(&self, server: bool) -> Result<Arc<dyn NetworkStack>> {
        let (s, c) = pair()?;
        let stack: Arc<dyn NetworkStack> = if server { s } else { c };
        Ok(stack)
    }
    fn bind_addr(&self) -> Result<SocketAddr> {
        Ok(SocketAddr::from((SERVER_IP, 0)))
    }
    /// One sender thread: the machine's other cores belong to the two polling workers.
    fn max_senders(&self) -> usize {
        1
    }
    /// The DPDK stack runs one worker per port queue.
    fn workers(&self, _asked: u32) -> u32 {
        1
    }
    fn stream_probe(&self) -> Box<dyn FnOnce(Duration) -> Option<String>> {
        let Ok((_, port)) = pair() else {
            return Box::new(|_| None);
        };
        let frames = |s: dataplane_stack_dpdk::StatsSnapshot| s.rx_frames + s.tx_frames;
        let base = frames(port.stats());
        Box::new(move |elapsed| {
            let fps = (frames(port.stats()) - base) as f64 / elapsed.as_secs_f64();
            Some(format!(
                "memif (MTU {}, {}), smoltcp TCP, 1 worker per side; {:.2} M frames/s through \
                 the sender's port",
                MTU.load(Ordering::Relaxed),
                link_mode(),
                fps / 1e6
            ))
        })
    }
    fn pingpong_note(&self) -> Option<String> {
        Some(format!(
            "memif (MTU {}, {}) between two DPDK ports, smoltcp TCP, busy-polling workers",
            MTU.load(Ordering::Relaxed),
            link_mode()
        ))
    }
}

/// The stack of this process in the two-host mode, or why it could not be made.
static REMOTE: OnceLock<std::result::Result<Arc<DpdkStack>, String>> = OnceLock::new();

/// A variable of the two-host mode, parsed.
fn env<T: std::str::FromStr>(name: &str) -> Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| anyhow!("{name}={v} cannot be parsed")),
        Err(_) => Ok(None),
    }
}

/// The one DPDK port of this process in the two-host mode, from `DATAPLANE_DPDK_*`.
fn remote_stack() -> Result<Arc<DpdkStack>> {
    let r = REMOTE.get_or_init(|| {
        let build = || -> Result<DpdkStack> {
            let ip: Ipv4Addr = env("DATAPLANE_DPDK_IP")?.ok_or_else(|| {
                anyhow!("DATAPLANE_DPDK_IP is not set (the IPv4 address of this end's port)")
            })?;
            let list = |name: &str, sep: char| -> Vec<String> {
                std::env::var(name)
                    .map(|v| {
                        v.split(sep)
                            .map(str::trim)
                            .filter(|x| !x.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let pci_allow = list("DATAPLANE_DPDK_PCI", ',');
            let d = DpdkConfig::default();
            let cfg = DpdkConfig {
                no_huge: dataplane_stack_dpdk::hugepages_free() < 256,
                no_pci: pci_allow.is_empty(),
                pci_allow,
                memory_mb: 512,
                vdevs: list("DATAPLANE_DPDK_VDEV", ';'),
                port: std::env::var("DATAPLANE_DPDK_PORT").unwrap_or(d.port),
                mtu: env("DATAPLANE_DPDK_MTU")?,
                skip_tcp_checksum: std::env::var("DATAPLANE_DPDK_SKIP_TCP_CHECKSUM")
                    .is_ok_and(|v| v == "1"),
                ip,
                prefix_len: env("DATAPLANE_DPDK_PREFIX_LEN")?.unwrap_or(d.prefix_len),
                gateway: env("DATAPLANE_DPDK_GATEWAY")?,
                ..d
            };
            Ok(DpdkStack::new(cfg)?)
        };
        build().map(Arc::new).map_err(|e| format!("{e:#}"))
    });
    r.clone().map_err(|e| anyhow!("{e}"))
}

/// The two-host mode: one DPDK port per process (`DATAPLANE_DPDK_*`), the other end on
/// another host or in another process (memif between two processes on one host).
struct Remote;

impl Backend for Remote {
    fn name(&self) -> &'static str {
        NAME
    }
    /// One worker, pinned as the in-process rows' are: the server's to the last core, the
    /// client's to the first, so two processes on one host poll different cores.
    fn config(&self, server: bool, workers: u32) -> Config {
        Dpdk.config(server, workers)
    }
    fn stack(&self, server: bool) -> Result<Arc<dyn NetworkStack>> {
        let stack = remote_stack()?;
        if !server {
            // A memif client's link comes up when it has reached the server; a NIC's when
            // autonegotiation is done.
            if !links_up(&[&stack], Duration::from_secs(30)) {
                return Err(anyhow!("the DPDK port's link did not come up within 30 s"));
            }
        }
        let stack: Arc<dyn NetworkStack> = stack;
        Ok(stack)
    }
    fn bind_addr(&self) -> Result<SocketAddr> {
        let ip: Ipv4Addr = env("DATAPLANE_DPDK_IP")?.unwrap_or(Ipv4Addr::UNSPECIFIED);
        Ok(SocketAddr::from((ip, 0)))
    }
    fn max_senders(&self) -> usize {
        Dpdk.max_senders()
    }
    fn workers(&self, asked: u32) -> u32 {
        Dpdk.workers(asked)
    }
}

/// The DPDK rows' backend for the two-host mode (`systems::messenger_remote`).
pub fn remote_backend() -> &'static dyn Backend {
    &Remote
}

/// One-way stream of `size`-byte messages on `connections` lossless connections.
pub fn stream(size: usize, connections: u32, workers: u32, duration: Duration) -> Result<Row> {
    let _guard = LOCK.lock().map_err(|_| anyhow!("bench lock poisoned"))?;
    messenger_rows::stream(&Dpdk, size, connections, workers, duration)
}

/// Ping-pong of `size`-byte messages on one lossless connection.
pub fn pingpong(size: usize, duration: Duration) -> Result<Row> {
    let _guard = LOCK.lock().map_err(|_| anyhow!("bench lock poisoned"))?;
    messenger_rows::pingpong(&Dpdk, size, duration)
}
