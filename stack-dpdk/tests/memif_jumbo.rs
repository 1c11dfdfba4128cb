//! Jumbo frames and TCP checksums off on `net_memif`, as the benchmark runs it: two memif
//! port pairs in this process (the EAL starts once per process, so all four ports are declared
//! up front).
//!
//! 1. Pair A (MTU 9000, `bsize=9216`, TCP checksums off at both ends, the client in memif's
//!    zero-copy mode): a lossless stream of small and large messages arrives exactly once, in
//!    order, byte for byte; frames longer than a standard 1514-byte frame really crossed the
//!    link; no frame was dropped (a zero TCP checksum is accepted by a peer that skips the
//!    check). The zero-copy link really shares the client's mbuf memory: its memif region
//!    holds the rings only, where pair B's (copy mode) holds a packet buffer per descriptor.
//!    The client messenger's shutdown reaches the server as a clean close (the worker
//!    drains its connections through the port before it goes), not as a reset.
//! 2. Pair B (MTU 1500): one end skips TCP checksums, the other checks them. The checking end
//!    drops every segment of the other (their TCP checksum is zero) and counts them, so the
//!    connection never carries a message: the option really removes the checksums.
//!
//! Run as root by `scripts/test-dpdk.sh` (`--ignored`).

#![cfg(dpdk_available)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dataplane::{Config, Message, Messenger, Policy};
use dataplane_stack_dpdk::{frame_buffer_len, DpdkConfig, DpdkStack};

/// A stack on `port`, its link up.
fn stack(base: &DpdkConfig, port: &str, ip: Ipv4Addr, mtu: u16, skip: bool) -> Arc<DpdkStack> {
    let s = DpdkStack::new(DpdkConfig {
        port: port.into(),
        ip,
        mtu: Some(mtu),
        skip_tcp_checksum: skip,
        ..base.clone()
    })
    .unwrap_or_else(|e| panic!("DPDK stack on {port}: {e}"));
    Arc::new(s)
}

/// A started messenger on `stack` with the benchmark's socket buffers, bound to `bind` if given.
fn messenger(
    name: &str,
    stack: &Arc<DpdkStack>,
    checker: &Arc<Checker>,
    bind: Option<SocketAddr>,
) -> Messenger {
    let cfg = Config {
        send_buffer_bytes: 512 << 10,
        recv_buffer_bytes: 512 << 10,
        ..dpdk_config()
    };
    let policy = Policy::lossless_client();
    start_messenger(name, cfg, stack.clone(), checker.clone(), policy, bind)
}

#[test]
#[ignore = "needs root and DPDK (scripts/test-dpdk.sh)"]
fn memif_jumbo_frames_and_tcp_checksums_off() {
    init_tracing();
    let n: u64 = env_or("MEMIF_JUMBO_MESSAGES", "100000")
        .parse()
        .expect("count");
    let dir = std::env::temp_dir().join(format!("dp-memif-jumbo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (sock_a, sock_b) = (dir.join("a.sock"), dir.join("b.sock"));
    // One 9000-byte frame per memif descriptor: 9216.
    let bsize = frame_buffer_len(Some(9000));
    let base = DpdkConfig {
        no_huge: no_huge(),
        no_pci: true,
        memory_mb: 512,
        mbufs: 4095,
        vdevs: vec![
            format!(
                "net_memif0,role=server,id=0,bsize={bsize},socket={}",
                sock_a.display()
            ),
            format!(
                "net_memif1,role=client,id=0,bsize={bsize},socket={},zero-copy=yes",
                sock_a.display()
            ),
            format!("net_memif2,role=server,id=0,socket={}", sock_b.display()),
            format!("net_memif3,role=client,id=0,socket={}", sock_b.display()),
        ],
        ..DpdkConfig::default()
    };
    let a_ip = (Ipv4Addr::new(10, 87, 0, 1), Ipv4Addr::new(10, 87, 0, 2));
    let b_ip = (Ipv4Addr::new(10, 86, 0, 1), Ipv4Addr::new(10, 86, 0, 2));
    let a_server = stack(&base, "net_memif0", a_ip.0, 9000, true);
    let a_client = stack(&base, "net_memif1", a_ip.1, 9000, true);
    let b_server = stack(&base, "net_memif2", b_ip.0, 1500, true);
    let b_client = stack(&base, "net_memif3", b_ip.1, 1500, false);
    assert!(
        wait_until(Duration::from_secs(10), || {
            [&a_server, &a_client, &b_server, &b_client]
                .iter()
                .all(|s| s.link_up())
        }),
        "memif links did not come up"
    );

    // The client of each pair makes the link's shared-memory file, `memif_region_0`, mapped
    // here twice (client and server). Copy mode (pair B) puts a packet buffer per descriptor
    // in it, megabytes; zero-copy (pair A) only the rings, the packets live in the client's
    // hugepage memory, which the server maps.
    let regions = memif_region_sizes();
    assert!(
        regions.len() >= 2 && regions.iter().min() < Some(&(1 << 20)),
        "no memif region without packet buffers (zero-copy client): {regions:?}"
    );
    assert!(
        regions.iter().max() > Some(&(1 << 20)),
        "no memif region with packet buffers (copy mode): {regions:?}"
    );

    // 1. Jumbo frames, no TCP checksums, every message exactly once.
    let received = Checker::fast();
    let addr = SocketAddr::from((a_ip.0, 7500));
    let server = messenger("jumbo-server", &a_server, &received, Some(addr));
    let client = messenger("jumbo-client", &a_client, &Checker::fast(), None);
    let conn = client.open(addr, Policy::lossless_client()).expect("open");
    let start = Instant::now();
    let mut bytes = 0u64;
    for i in 0..n {
        // Mostly small messages (batched many to a segment), every 64th a large one that
        // needs several jumbo segments.
        let len = if i % 64 == 63 {
            20_000
        } else {
            16 + (i % 100) as usize
        };
        bytes += len as u64;
        send_retry(&conn, Message::new(1, payload(0, i, len)));
    }
    assert!(
        wait_until(Duration::from_secs(120), || received.count() == n),
        "{} of {n} messages arrived; client port {:?}; server port {:?}",
        received.count(),
        a_client.stats(),
        a_server.stats()
    );
    received.assert_clean();
    let (tx, rx) = (a_client.stats(), a_server.stats());
    eprintln!(
        "jumbo: {n} messages ({bytes} B) in {:.2} s; sender port {tx:?}; receiver port {rx:?}",
        start.elapsed().as_secs_f64()
    );
    assert!(
        rx.rx_max_frame > 1514 && rx.rx_max_frame <= 9014,
        "largest frame {} B: jumbo frames did not cross the link",
        rx.rx_max_frame
    );
    // With 1500-byte frames the payload alone would need bytes / 1460 frames.
    assert!(
        tx.tx_frames < bytes / 1460,
        "{} frames for {bytes} B: not jumbo-sized",
        tx.tx_frames
    );
    assert_eq!(rx.rx_dropped(), 0, "receiver dropped frames: {rx:?}");
    assert_eq!(tx.rx_dropped(), 0, "sender dropped frames: {tx:?}");
    // A messenger shutting down closes its connections cleanly over DPDK too: its worker
    // polls the port until the close frame and the FIN are out, so the server sees the
    // close and ends the session, rather than a reset, after which a lossless session waits
    // for the client to come back, as if it had crashed.
    client.shutdown();
    assert!(
        wait_until(Duration::from_secs(5), || server
            .worker_loads()
            .iter()
            .sum::<usize>()
            == 0),
        "the server still holds the session of a client that shut down: loads {:?}, {:?}",
        server.worker_loads(),
        server.counters()
    );
    server.shutdown();

    // 2. One end skips TCP checksums, the other checks them: no connection.
    let received = Checker::fast();
    let addr = SocketAddr::from((b_ip.0, 7501));
    let server = messenger("csum-server", &b_server, &received, Some(addr));
    let client = messenger("csum-client", &b_client, &Checker::fast(), None);
    let conn = client.open(addr, Policy::lossless_client()).expect("open");
    send_retry(&conn, Message::new(1, payload(0, 0, 64)));
    assert!(
        wait_until(Duration::from_secs(10), || b_client.stats().drop_checksum
            >= 3),
        "the checking end did not drop the zero-checksum segments: {:?}",
        b_client.stats()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        received.count(),
        0,
        "a message crossed a link whose ends disagree on TCP checksums"
    );
    assert_eq!(
        b_server.stats().drop_checksum,
        0,
        "the skipping end must not check"
    );
    client.shutdown();
    server.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sizes of this process's mappings of memif's shared-memory region files (`/proc/self/maps`).
fn memif_region_sizes() -> Vec<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("/proc/self/maps");
    maps.lines()
        .filter(|l| l.contains("memif_region_0"))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            let (a, b) = (
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            );
            Some(b - a)
        })
        .collect()
}
