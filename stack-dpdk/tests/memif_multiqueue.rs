//! Two DPDK processes over `net_memif` with two queue pairs and two messenger workers each:
//! this test process (memif server) opens several lossless connections, which the messenger
//! spreads over its two workers; each worker's smoltcp interface sends on its own queue, memif
//! pairs queue i with the peer's queue i, and the `dpdk-node` child (memif client, two workers
//! listening on the same port) accepts each connection on the worker whose queue carried the
//! SYN. Every message must arrive exactly once, in order, intact, with connections on both
//! workers of both processes.
//! Run as root by `scripts/test-dpdk.sh` (`--ignored`).

#![cfg(dpdk_available)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use common::memif::{self, Node, SocketDir};
use common::*;
use dataplane_stack_dpdk::{DpdkConfig, DpdkStack, Steering};

#[test]
#[ignore = "needs root and DPDK (scripts/test-dpdk.sh)"]
fn memif_two_queues_two_workers_each_several_connections_exactly_once() {
    init_tracing();
    const CONNS: u32 = 6;
    let per_conn: u64 = env_or("MEMIF_MQ_MESSAGES", "20000").parse().expect("count");
    let n = per_conn * u64::from(CONNS);
    let dir = SocketDir::new("memif-mq");
    let server_ip = Ipv4Addr::new(10, 89, 0, 1);
    let client_ip = Ipv4Addr::new(10, 89, 0, 2);

    let stack = Arc::new(
        DpdkStack::new(DpdkConfig {
            queues: 2,
            ..memif::server_config(&dir.sock, client_ip)
        })
        .expect("DPDK stack with two queue pairs"),
    );
    assert_eq!(stack.queues(), 2);
    assert_eq!(
        stack.steering(),
        &Steering::Symmetric { queues: 2 },
        "memif has no RSS: queues are paired"
    );
    let node = Node::spawn(&dir.sock, server_ip, 7400, n, &["--workers", "2"]);

    let target = SocketAddr::from((server_ip, 7400));
    // Separate lossless connections, placed on the least-loaded worker: three per worker.
    let (m, conns) = memif::two_worker_sender("memif-mq-sender", &stack, target, CONNS as usize);
    let start = Instant::now();
    memif::send_on_all(&conns, per_conn, &stack);
    let (done, status) = node.finish();
    eprintln!(
        "memif 2 queues: {n} messages on {CONNS} connections in {:.2} s; receiver: {done}; \
         sender stats {:?}; counters {:?}",
        start.elapsed().as_secs_f64(),
        stack.stats(),
        m.counters()
    );
    memif::assert_node_received_all(&done, status, n);
    assert!(done.contains(&format!("streams={CONNS} ")), "{done}");
    // The receiver's workers each accepted the connections that came in on their queue:
    // three each (memif pairs our queue i with its queue i).
    assert!(done.contains("loads=3,3 "), "receiver placement: {done}");
    let c = m.counters();
    assert_eq!(c.sessions_migrated, 0);
    assert_eq!(
        stack.stats().tx_arp_requests,
        1,
        "only worker 0 asked for the peer's address; worker 1 learnt it from the shared reply"
    );
    m.shutdown();
}
