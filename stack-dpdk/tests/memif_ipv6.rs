//! Two DPDK processes speaking IPv6 to each other over `net_memif`, two queue pairs and two
//! messenger workers each: smoltcp at both ends (neighbour discovery, TCP over IPv6), the
//! `dpdk-node` child dual stack and listening on `[::]`. The first connection's neighbour
//! advertisement is shared with the other queue's interface (as ARP replies are), then six
//! lossless connections carry messages that must arrive exactly once, in order, intact.
//! Run as root by `scripts/test-dpdk.sh` (`--ignored`).

#![cfg(dpdk_available)]

mod common;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use common::memif::{self, Node, SocketDir};
use common::*;
use dataplane_stack_dpdk::{DpdkConfig, DpdkStack};

#[test]
#[ignore = "needs root and DPDK (scripts/test-dpdk.sh)"]
fn memif_ipv6_two_dpdk_processes_two_queues_exactly_once() {
    init_tracing();
    const CONNS: u32 = 6;
    let per_conn: u64 = env_or("MEMIF_IPV6_MESSAGES", "10000")
        .parse()
        .expect("count");
    let n = per_conn * u64::from(CONNS);
    let dir = SocketDir::new("memif-v6");
    let server_ip6: Ipv6Addr = "fd89::1".parse().expect("address");
    let client_ip6: Ipv6Addr = "fd89::2".parse().expect("address");

    let stack = Arc::new(
        DpdkStack::new(DpdkConfig {
            queues: 2,
            ipv6: Some(client_ip6),
            ..memif::server_config(&dir.sock, Ipv4Addr::new(10, 90, 0, 2))
        })
        .expect("dual-stack DPDK stack with two queue pairs"),
    );
    let node = Node::spawn(
        &dir.sock,
        Ipv4Addr::new(10, 90, 0, 1),
        7401,
        n,
        &["--workers", "2", "--ipv6", &server_ip6.to_string()],
    );
    let target = SocketAddr::from((server_ip6, 7401));
    let (m, conns) = memif::two_worker_sender("memif-v6-sender", &stack, target, CONNS as usize);
    memif::send_on_all(&conns, per_conn, &stack);
    for c in &conns {
        let peer = c.peer_addr().expect("peer");
        assert!(peer.is_ipv6(), "{peer}");
    }
    let (done, status) = node.finish();
    eprintln!(
        "memif over IPv6: {n} messages on {CONNS} connections; receiver: {done}; sender stats {:?}",
        stack.stats()
    );
    memif::assert_node_received_all(&done, status, n);
    assert!(done.contains(&format!("streams={CONNS} ")), "{done}");
    assert!(done.contains("loads=3,3 "), "receiver placement: {done}");
    assert_eq!(stack.stats().tx_arp_requests, 0, "IPv6 only: no ARP");
    m.shutdown();
}
