//! Two DPDK processes over `net_memif` (shared-memory packet rings): this test process is the
//! memif server and the sender; a `dpdk-node` child process is the memif client and the
//! receiver, checking every message. The sender's link fails twice for 500 ms in the middle of
//! the stream: every frame in both directions is lost at the port (`set_blackhole`); the
//! lossless session must deliver every message exactly once, in order, intact.
//!
//! (The failure is emulated at the port boundary because DPDK 22.11's memif cannot take a
//! real link down: it has no `dev_set_link_down`, and after a port stop/start on either side
//! the memif connection did not come back (the client's reconnect is refused). `interop.rs` does a real port stop/start on `net_af_packet`.)
//! Run as root by `scripts/test-dpdk.sh` (`--ignored`).

#![cfg(dpdk_available)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::memif::{self, Node, SocketDir};
use common::*;
use dataplane::{Message, Policy};
use dataplane_stack_dpdk::DpdkStack;

#[test]
#[ignore = "needs root and DPDK (scripts/test-dpdk.sh)"]
fn memif_two_processes_lossless_across_link_down_up() {
    init_tracing();
    let n: u64 = env_or("MEMIF_MESSAGES", "200000").parse().expect("count");
    let dir = SocketDir::new("memif");
    let server_ip = Ipv4Addr::new(10, 88, 0, 1);
    let client_ip = Ipv4Addr::new(10, 88, 0, 2);

    let stack =
        Arc::new(DpdkStack::new(memif::server_config(&dir.sock, client_ip)).expect("DPDK stack"));
    let node = Node::spawn(&dir.sock, server_ip, 7300, n, &[]);

    let m = start_messenger(
        "memif-sender",
        dpdk_config(),
        stack.clone(),
        Checker::fast(),
        Policy::lossless_client(),
        None,
    );
    let conn = m
        .connect(SocketAddr::from((server_ip, 7300)))
        .expect("connect");

    let start = Instant::now();
    let progress = Arc::new(AtomicU64::new(0));
    let sender = std::thread::spawn({
        let conn = conn.clone();
        let progress = progress.clone();
        move || {
            // Paced at ~100k messages/s so the stream spans both link failures.
            let t0 = Instant::now();
            for i in 0..n {
                send_retry(
                    &conn,
                    Message::new(1, payload(7, i, 16 + (i % 100) as usize)),
                );
                progress.store(i + 1, Ordering::Relaxed);
                if i % 1000 == 999 {
                    let due = Duration::from_micros(i * 10);
                    if let Some(wait) = due.checked_sub(t0.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
            }
        }
    });
    let mut sent_at_down = Vec::new();
    // Two link failures while the stream runs.
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        stack.set_blackhole(true);
        // Messages sent or queued but not yet acknowledged by the receiver.
        let (q, p) = (conn.queued().0 as u64, progress.load(Ordering::Relaxed));
        eprintln!(
            "round {round}: {p} sent, {q} unacknowledged; {:?}",
            stack.stats()
        );
        // Not yet delivered: unacknowledged plus not yet sent.
        sent_at_down.push(q + n - p);
        eprintln!("round {round}: link down at {:?}", start.elapsed());
        std::thread::sleep(Duration::from_millis(
            env_or("MEMIF_DOWN_MS", "500").parse().expect("ms"),
        ));
        stack.set_blackhole(false);
        eprintln!("round {round}: link up at {:?}", start.elapsed());
    }
    sender.join().expect("sender");
    assert!(
        sent_at_down.iter().all(|&s| s > 0),
        "the stream must still be running when the links go down: {sent_at_down:?} undelivered"
    );
    eprintln!("messages not yet delivered at each link failure: {sent_at_down:?}");
    memif::assert_all_acknowledged(&conn, &stack);
    let secs = start.elapsed().as_secs_f64();
    let (done, status) = node.finish();
    eprintln!(
        "memif: {n} messages in {secs:.2} s across 2 link failures; server: {done}; client stats {:?}; counters {:?}",
        stack.stats(),
        m.counters()
    );
    memif::assert_node_received_all(&done, status, n);
    let st = stack.stats();
    assert!(
        st.drop_link_down > 0 && st.tx_dropped > 0,
        "frames were really lost in both directions: {st:?}"
    );
    m.shutdown();
}
