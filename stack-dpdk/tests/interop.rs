//! Interop across a veth pair between two network namespaces: a DPDK messenger on
//! `net_af_packet` at one end (this process runs in that namespace), a POSIX messenger on the
//! Linux kernel's TCP at the other (a thread of this process enters the peer namespace and
//! builds it there). Set up by `scripts/test-dpdk.sh`; run as root with `--ignored`.
//!
//! Environment: `DPDK_IFACE` (veth end in this namespace, no address), `DPDK_IP`,
//! `PEER_NETNS`, `PEER_IP`, `INTEROP_MESSAGES` (default 100 000 each way).

#![cfg(dpdk_available)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dataplane::{Message, Policy};
use dataplane_stack_dpdk::{check_frame, DpdkStack, FrameDrop};

const T: Duration = Duration::from_secs(120);

#[test]
#[ignore = "needs root, DPDK and the veth/netns set-up of scripts/test-dpdk.sh"]
fn interop_dpdk_af_packet_with_posix_kernel_tcp() {
    let iface = env_or("DPDK_IFACE", "dpveth0");
    let ip = env_ip("DPDK_IP", "10.77.0.2");
    let peer_ns = env_or("PEER_NETNS", "dp-peer");
    let peer_ip = env_ip("PEER_IP", "10.77.0.1");
    let n: u64 = env_or("INTEROP_MESSAGES", "100000").parse().expect("count");

    // The DPDK node, in this namespace.
    let stack = Arc::new(DpdkStack::new(af_packet_config(&iface, ip)).expect("DPDK stack"));
    eprintln!(
        "dpdk port {} driver {} mac {:02x?}",
        stack.port_id(),
        stack.driver(),
        stack.mac()
    );
    let dpdk_rx = Checker::fast();
    let dpdk = start_messenger(
        "dpdk-node",
        dpdk_config(),
        stack.clone(),
        dpdk_rx.clone(),
        Policy::lossless_client(),
        Some(SocketAddr::from((ip, 7100))),
    );
    let dpdk_addr = dpdk.addr().expect("dpdk bound");

    // The POSIX node, built on a thread inside the peer namespace.
    let posix_rx = Checker::fast();
    let posix = posix_node_in(
        &peer_ns,
        "posix-node",
        posix_rx.clone(),
        Some(SocketAddr::from((peer_ip, 7200))),
    );
    let posix_addr = posix.addr().expect("posix bound");

    // ARP + ICMP echo, answered by smoltcp on the DPDK port; the peer's kernel learnt the
    // DPDK port's MAC by ARP.
    assert_answers_ping_and_neighbour(&peer_ns, ip.into(), stack.mac());

    // Bad input from the wire, sent raw from the peer namespace: every frame is dropped
    // before the TCP/IP stack and counted by cause; the node keeps working (the messages
    // below). And a kernel TCP connect to a port nobody listens on gets smoltcp's RST.
    let before = stack.stats();
    let (dmac, dip) = (stack.mac(), ip.octets());
    let (peer_ns2, peer_iface) = (
        env_or("PEER_NETNS", "dp-peer"),
        env_or("PEER_IFACE", "dpveth1"),
    );
    let refused = std::thread::spawn(move || {
        enter_netns(&peer_ns2);
        let frames = bad_frames(dmac, dip);
        send_raw(&peer_iface, &frames, 5);
        std::net::TcpStream::connect_timeout(&SocketAddr::from((dip, 9)), Duration::from_secs(3))
    })
    .join()
    .expect("raw sender");
    let err = refused.expect_err("connect to a closed DPDK port must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let a = stack.stats();
            a.drop_checksum >= before.drop_checksum + 5
                && a.drop_truncated >= before.drop_truncated + 15
                && a.drop_not_ip >= before.drop_not_ip + 5
        }),
        "bad frames not all counted: before {before:?}, after {:?}",
        stack.stats()
    );
    eprintln!("bad frames counted: {:?}", stack.stats());

    // Both directions at once: the POSIX node connects to the DPDK node and the DPDK node
    // connects to the POSIX node (so both the DPDK stack's accept and connect are used).
    let start = Instant::now();
    let to_dpdk = posix.connect(dpdk_addr).expect("posix -> dpdk");
    let to_posix = dpdk.connect(posix_addr).expect("dpdk -> posix");
    let a = spawn_sender(to_dpdk, 1, n);
    let b = spawn_sender(to_posix, 2, n);
    let to_dpdk = a.join().expect("sender a");
    let to_posix = b.join().expect("sender b");
    let ok = wait_until(T, || dpdk_rx.count() >= n && posix_rx.count() >= n);
    let secs = start.elapsed().as_secs_f64();
    let st = stack.stats();
    assert!(
        ok,
        "delivered {} to dpdk, {} to posix of {n}; stats {st:?}",
        dpdk_rx.count(),
        posix_rx.count()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(dpdk_rx.count(), n, "exactly once to the DPDK node");
    assert_eq!(posix_rx.count(), n, "exactly once to the POSIX node");
    dpdk_rx.assert_clean();
    posix_rx.assert_clean();
    assert!(
        wait_until(T, || to_dpdk.queued() == (0, 0)),
        "all acknowledged"
    );
    assert!(
        wait_until(T, || to_posix.queued() == (0, 0)),
        "all acknowledged"
    );
    eprintln!(
        "interop: {n} messages each way in {secs:.2} s ({:.0} msg/s total), {} + {} bytes; dpdk stats {st:?}",
        2.0 * n as f64 / secs,
        dpdk_rx.bytes(),
        posix_rx.bytes()
    );
    assert_eq!(st.rx_frames, st.rx_delivered + st.rx_dropped(), "{st:?}");

    // A real link failure: the DPDK port is stopped for 500 ms in the middle of a paced
    // stream from the POSIX node (af_packet closes its sockets; the kernel peer's frames go
    // nowhere), then started again. The lossless session delivers everything once, in order.
    let m2: u64 = 50_000;
    let paced = std::thread::spawn({
        let c = to_dpdk.clone();
        move || {
            let t0 = Instant::now();
            for i in 0..m2 {
                send_retry(&c, Message::new(1, payload(3, i, 64)));
                if i % 500 == 499 {
                    // ~50k messages/s: one second of stream.
                    if let Some(w) = Duration::from_micros(i * 20).checked_sub(t0.elapsed()) {
                        std::thread::sleep(w);
                    }
                }
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    stack.set_link(false).expect("link down");
    assert!(!stack.link_up(), "port reports link down");
    let undelivered = m2 - (dpdk_rx.count() - n);
    std::thread::sleep(Duration::from_millis(500));
    stack.set_link(true).expect("link up");
    paced.join().expect("paced sender");
    assert!(undelivered > 0, "the stream was running at the failure");
    assert!(
        wait_until(T, || dpdk_rx.count() >= n + m2),
        "after the link failure: {} of {m2}; {:?}",
        dpdk_rx.count() - n,
        stack.stats()
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        dpdk_rx.count(),
        n + m2,
        "exactly once across the link failure"
    );
    dpdk_rx.assert_clean();
    eprintln!("link down/up on af_packet: {undelivered} messages were in flight, all delivered");

    // Idle: the DPDK worker backs off and sleeps on its event loop instead of spinning.
    std::thread::sleep(Duration::from_millis(300));
    let cpu0 = process_cpu_seconds();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let idle_cpu = (process_cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64();
    eprintln!(
        "idle CPU of the whole process: {:.1}% of one core",
        idle_cpu * 100.0
    );
    assert!(
        idle_cpu < 0.25,
        "an idle DPDK node must not spin: {:.0}%",
        idle_cpu * 100.0
    );
    posix.shutdown();
    dpdk.shutdown();
}

/// User + system CPU time of this process, in seconds.
fn process_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().expect("utime") + f[12].parse::<f64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// Frames to `mac`/`ip` that the DPDK node must drop: a bare IPv4 ethertype with no header,
/// a non-IP frame (LLDP), an IPv6 header claiming more bytes than the frame has, IPv4 claiming
/// more bytes than the frame has, TCP with a wrong checksum. Each
/// is checked against `check_frame` so the test knows what it sends.
fn bad_frames(mac: [u8; 6], ip: [u8; 4]) -> Vec<Vec<u8>> {
    let eth = |ethertype: [u8; 2]| {
        let mut f = mac.to_vec();
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
        f.extend_from_slice(&ethertype);
        f
    };
    // (A frame shorter than an Ethernet header cannot be sent through AF_PACKET: the kernel
    // refuses it. Runts are covered by `frame.rs`'s unit tests and net_null's frames.)
    let bare = eth([0x08, 0x00]); // an IPv4 ethertype and no IPv4 header at all
    let mut lldp = eth([0x88, 0xcc]); // not IP
    lldp.extend_from_slice(&[0; 46]);
    // An IPv6 header claiming 0x6060 payload bytes in a 54-byte frame.
    let mut ipv6 = eth([0x86, 0xdd]);
    ipv6.extend_from_slice(&[0x60; 40]);
    // IPv4 + TCP to ip:7100 with a valid IPv4 header checksum and a wrong TCP checksum.
    let mut tcp = eth([0x08, 0x00]);
    let mut iph = [
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 77, 0, 1, ip[0], ip[1], ip[2], ip[3],
    ];
    let sum = iph
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let ck = !((sum & 0xffff) + (sum >> 16)) as u16;
    iph[10..12].copy_from_slice(&ck.to_be_bytes());
    tcp.extend_from_slice(&iph);
    tcp.extend_from_slice(&[0x30, 0x39, 0x1b, 0xbc, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02]);
    tcp.extend_from_slice(&[0xff, 0xff, 0xde, 0xad, 0, 0]);
    // The same IPv4 header claiming 1000 bytes in a 54-byte frame.
    let mut trunc = tcp.clone();
    trunc[16..18].copy_from_slice(&1000u16.to_be_bytes());
    let frames = vec![bare, lldp, ipv6, trunc, tcp];
    let want = [
        FrameDrop::Truncated,
        FrameDrop::NotIp,
        FrameDrop::Truncated,
        FrameDrop::Truncated,
        FrameDrop::Checksum,
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
