//! IPv6 interop across the veth pair of `interop.rs`: the DPDK node runs dual stack (IPv4 and
//! IPv6 on one port) on `net_af_packet`, the POSIX node speaks IPv6 through the Linux kernel.
//! Neighbour discovery and ICMPv6 echo are answered by smoltcp; messages go both ways over
//! IPv6; the same DPDK listener takes an IPv4 connection too; malformed IPv6 frames are
//! dropped and counted. Set up by `scripts/test-dpdk.sh` (`interop_ipv6`); run as root with
//! `--ignored`.
//!
//! Environment: `DPDK_IFACE`, `DPDK_IP`, `DPDK_IP6`, `PEER_NETNS`, `PEER_IFACE`, `PEER_IP`,
//! `PEER_IP6`, `INTEROP_MESSAGES` (default 20 000 each way).

#![cfg(dpdk_available)]

mod common;

use std::net::{Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use dataplane::Policy;
use dataplane_stack_dpdk::{check_frame, DpdkConfig, DpdkStack, FrameDrop};

const T: Duration = Duration::from_secs(120);

fn env_ip6(name: &str, default: &str) -> Ipv6Addr {
    env_or(name, default)
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
#[ignore = "needs root, DPDK and the veth/netns set-up of scripts/test-dpdk.sh"]
fn interop_ipv6_dual_stack_dpdk_with_posix_kernel_tcp() {
    let iface = env_or("DPDK_IFACE", "dpveth0");
    let ip = env_ip("DPDK_IP", "10.77.0.2");
    let ip6 = env_ip6("DPDK_IP6", "fd77::2");
    let peer_ns = env_or("PEER_NETNS", "dp-peer");
    let peer_iface = env_or("PEER_IFACE", "dpveth1");
    let peer_ip = env_ip("PEER_IP", "10.77.0.1");
    let peer_ip6 = env_ip6("PEER_IP6", "fd77::1");
    let n: u64 = env_or("INTEROP_MESSAGES", "20000").parse().expect("count");

    let stack = Arc::new(
        DpdkStack::new(DpdkConfig {
            ipv6: Some(ip6),
            ipv6_prefix_len: 64,
            ..af_packet_config(&iface, ip)
        })
        .expect("DPDK stack"),
    );
    // One listener on the unspecified IPv6 address: both families reach it.
    let dpdk_rx = Checker::fast();
    let dpdk = start_messenger(
        "dpdk-node",
        dpdk_config(),
        stack.clone(),
        dpdk_rx.clone(),
        Policy::lossless_client(),
        Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 7101))),
    );
    let bound = dpdk.addr().expect("dpdk bound");
    assert_eq!(
        bound,
        SocketAddr::from((ip6, 7101)),
        "reported listen address"
    );

    let posix_rx = Checker::fast();
    let posix = posix_node_in(
        &peer_ns,
        "posix-node",
        posix_rx.clone(),
        Some(SocketAddr::from((peer_ip6, 7201))),
    );
    let posix_addr = posix.addr().expect("posix bound");

    // Neighbour discovery and ICMPv6 echo, answered by smoltcp.
    assert_answers_ping_and_neighbour(&peer_ns, ip6.into(), stack.mac());

    // Malformed IPv6 from the wire: dropped before smoltcp, counted by cause.
    let before = stack.stats();
    let frames = bad_ipv6_frames(stack.mac(), peer_ip6, ip6);
    let (ns, pif) = (peer_ns.clone(), peer_iface.clone());
    let refused = std::thread::spawn(move || {
        enter_netns(&ns);
        send_raw(&pif, &frames, 5);
        // A closed port answers with a RST over IPv6 too.
        std::net::TcpStream::connect_timeout(&SocketAddr::from((ip6, 9)), Duration::from_secs(3))
    })
    .join()
    .expect("raw sender");
    let err = refused.expect_err("connect to a closed DPDK port must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let a = stack.stats();
            a.drop_checksum >= before.drop_checksum + 5
                && a.drop_truncated >= before.drop_truncated + 10
        }),
        "bad IPv6 frames not all counted: before {before:?}, after {:?}",
        stack.stats()
    );

    // Both directions over IPv6 at once.
    let to_dpdk = posix
        .connect(SocketAddr::from((ip6, 7101)))
        .expect("posix -> dpdk");
    let to_posix = dpdk.connect(posix_addr).expect("dpdk -> posix");
    let a = spawn_sender(to_dpdk, 1, n);
    let b = spawn_sender(to_posix, 2, n);
    let to_dpdk = a.join().expect("sender a");
    let to_posix = b.join().expect("sender b");
    assert!(
        wait_until(T, || dpdk_rx.count() >= n && posix_rx.count() >= n),
        "delivered {} to dpdk, {} to posix of {n}; stats {:?}",
        dpdk_rx.count(),
        posix_rx.count(),
        stack.stats()
    );
    assert!(wait_until(T, || to_dpdk.queued() == (0, 0)), "acknowledged");
    assert!(
        wait_until(T, || to_posix.queued() == (0, 0)),
        "acknowledged"
    );
    let peer = to_dpdk.peer_addr().expect("peer address");
    assert!(peer.is_ipv6(), "the POSIX node connected over IPv6: {peer}");

    // The same listener over IPv4 (dual stack), from another POSIX node (a messenger keeps
    // one session per peer).
    let posix4 = posix_node_in(&peer_ns, "posix-node-v4", Checker::fast(), None);
    let to_dpdk4 = posix4
        .connect(SocketAddr::from((ip, 7101)))
        .expect("posix -> dpdk over IPv4");
    let c = spawn_sender(to_dpdk4, 3, 2_000);
    let to_dpdk4 = c.join().expect("sender c");
    assert!(
        wait_until(T, || dpdk_rx.count() >= n + 2_000),
        "IPv4 on the dual-stack listener: {} of 2000",
        dpdk_rx.count() - n
    );
    assert!(
        wait_until(T, || to_dpdk4.queued() == (0, 0)),
        "acknowledged"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(dpdk_rx.count(), n + 2_000, "exactly once to the DPDK node");
    assert_eq!(posix_rx.count(), n, "exactly once to the POSIX node");
    dpdk_rx.assert_clean();
    posix_rx.assert_clean();
    let st = stack.stats();
    assert_eq!(st.rx_frames, st.rx_delivered + st.rx_dropped(), "{st:?}");
    eprintln!(
        "interop over IPv6: {n} messages each way, 2000 more over IPv4; stats {st:?}; peer {peer_ip} / {peer_ip6}"
    );
    posix4.shutdown();
    posix.shutdown();
    dpdk.shutdown();
}

/// IPv6 frames to `mac` that the DPDK node must drop: TCP from `src` to `dst` with a wrong
/// checksum, and the same packet cut short (its header claims more than the frame has), and
/// an IPv6 header with no room for itself. Each is checked against `check_frame` so the test
/// knows what it sends.
fn bad_ipv6_frames(mac: [u8; 6], src: Ipv6Addr, dst: Ipv6Addr) -> Vec<Vec<u8>> {
    let mut eth = mac.to_vec();
    eth.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99, 0x86, 0xdd]);
    let mut tcp = eth.clone();
    // Version 6, payload 20 bytes, next header TCP, hop limit 64.
    tcp.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
    tcp.extend_from_slice(&src.octets());
    tcp.extend_from_slice(&dst.octets());
    // 12345 -> 7101, SYN, checksum 0xdead (wrong).
    tcp.extend_from_slice(&[0x30, 0x39, 0x1b, 0xbd, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02]);
    tcp.extend_from_slice(&[0xff, 0xff, 0xde, 0xad, 0, 0]);
    let cut = tcp[..tcp.len() - 8].to_vec();
    let mut short = eth;
    short.extend_from_slice(&[0x60, 0, 0, 0]);
    let frames = vec![tcp, cut, short];
    let want = [
        FrameDrop::Checksum,
        FrameDrop::Truncated,
        FrameDrop::Truncated,
    ];
    for (f, w) in frames.iter().zip(want) {
        assert_eq!(
            check_frame(f, false, false, false),
            Err(w),
            "test frame {f:02x?}"
        );
    }
    frames
}
