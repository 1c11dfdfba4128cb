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
use dataplane::{Message, Messenger};
use dataplane_stack_dpdk::{DpdkConfig, DpdkStack};
use dataplane_stack_posix::PosixStack;

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
    let stack = Arc::new(
        DpdkStack::new(DpdkConfig {
            no_huge: no_huge(),
            no_pci: true,
            vdevs: vec![format!("net_af_packet0,iface={iface}")],
            port: "net_af_packet0".into(),
            ip,
            prefix_len: 24,
            ..DpdkConfig::default()
        })
        .expect("DPDK stack"),
    );
    eprintln!(
        "dpdk port {} driver {} mac {:02x?}",
        stack.port_id(),
        stack.driver(),
        stack.mac()
    );
    let dpdk_rx = Checker::new();
    let dpdk = Messenger::builder("dpdk-node")
        .config(dpdk_config())
        .stack(stack.clone())
        .dispatcher(dpdk_rx.clone())
        .build()
        .expect("dpdk messenger");
    let dpdk_addr = dpdk.bind(SocketAddr::from((ip, 7100))).expect("bind dpdk");
    dpdk.start().expect("start dpdk");

    // The POSIX node, built on a thread inside the peer namespace.
    let posix_rx = Checker::new();
    let prx = posix_rx.clone();
    let posix = std::thread::spawn(move || {
        enter_netns(&peer_ns);
        let m = Messenger::builder("posix-node")
            .config(test_config())
            .stack(Arc::new(PosixStack::new()))
            .dispatcher(prx)
            .build()
            .expect("posix messenger");
        m.bind(SocketAddr::from((peer_ip, 7200)))
            .expect("bind posix");
        m.start().expect("start posix");
        m
    })
    .join()
    .expect("posix thread");
    let posix_addr = posix.addr().expect("posix bound");

    // ARP + ICMP echo, answered by smoltcp on the DPDK port.
    let ping = std::process::Command::new("ip")
        .args(["netns", "exec", &env_or("PEER_NETNS", "dp-peer"), "ping"])
        .args(["-c", "3", "-i", "0.2", "-W", "2", &ip.to_string()])
        .output()
        .expect("run ping");
    let out = String::from_utf8_lossy(&ping.stdout);
    eprintln!("{out}");
    assert!(ping.status.success(), "ping of the DPDK node failed: {out}");
    assert!(out.contains("3 received"), "{out}");

    // Both directions at once: the POSIX node connects to the DPDK node and the DPDK node
    // connects to the POSIX node (so both the DPDK stack's accept and connect are used).
    let start = Instant::now();
    let to_dpdk = posix.connect(dpdk_addr).expect("posix -> dpdk");
    let to_posix = dpdk.connect(posix_addr).expect("dpdk -> posix");
    let a = std::thread::spawn(move || {
        for i in 0..n {
            send_retry(
                &to_dpdk,
                Message::new(1, payload(1, i, 16 + (i % 200) as usize)),
            );
        }
        to_dpdk
    });
    let b = std::thread::spawn(move || {
        for i in 0..n {
            send_retry(
                &to_posix,
                Message::new(1, payload(2, i, 16 + (i % 200) as usize)),
            );
        }
        to_posix
    });
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
