//! Smoke tests on DPDK's virtual devices (need root for the EAL; run by
//! `scripts/test-dpdk.sh`, or `cargo test --release -p dataplane-stack-dpdk --test smoke --
//! --ignored`). Both tests share one EAL (one per process) with `net_null0` and `net_ring0`.

#![cfg(dpdk_available)]

use std::io::{self, IoSlice};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use dataplane::buf::{BufPool, PoolConfig};
use dataplane::event::Fired;
use dataplane::stack::{NetworkStack, SocketOptions, StackError};
use dataplane_stack_dpdk::{DpdkConfig, DpdkStack};

fn cfg(port: &str, ip: Ipv4Addr) -> DpdkConfig {
    DpdkConfig {
        no_huge: std::env::var_os("DPDK_HUGE").is_none(),
        no_pci: true,
        memory_mb: 256,
        vdevs: vec![
            "net_null0".into(),
            "net_ring0".into(),
            "net_ring1".into(),
            "net_null1".into(),
        ],
        port: port.into(),
        ip,
        mbufs: 4095,
        ..DpdkConfig::default()
    }
}

/// Creates a stack and checks that the calling thread kept its CPU affinity (`rte_eal_init`
/// pins its caller to the main lcore; the stack gives the thread its mask back, or every
/// thread the application spawns afterwards would share one core).
fn new_stack(c: DpdkConfig) -> DpdkStack {
    let allowed = || {
        std::fs::read_to_string("/proc/thread-self/status")
            .expect("status")
            .lines()
            .find(|l| l.starts_with("Cpus_allowed_list"))
            .map(str::to_string)
            .expect("Cpus_allowed_list")
    };
    let before = allowed();
    let stack = DpdkStack::new(c).expect("stack");
    assert_eq!(
        allowed(),
        before,
        "the EAL changed the caller's CPU affinity"
    );
    stack
}

/// EAL up, queue up, bursts move both ways on net_null (its RX yields 64-byte frames of
/// whatever the recycled mbufs held: mostly zeros, dropped and counted as non-IP), a second
/// worker is refused, clean shutdown with every mbuf back in the pool.
#[test]
#[ignore = "needs root and DPDK (scripts/test-dpdk.sh)"]
fn smoke_net_null() {
    let stack = new_stack(cfg("net_null0", Ipv4Addr::new(10, 1, 0, 1)));
    assert_eq!(stack.name(), "dpdk");
    let total = stack.mbufs_available();
    let mut w = stack.create_worker(0).expect("worker 0");
    let err = stack
        .create_worker(1)
        .err()
        .expect("second worker must be refused");
    assert!(matches!(err, StackError::Unavailable { .. }), "{err}");
    let mut pollers = w.take_pollers();
    assert_eq!(pollers.len(), 1);
    // A connect makes smoltcp send ARP requests (net_null swallows them).
    let opts = SocketOptions::default();
    let sock = w
        .connect("10.1.0.9:4000".parse().unwrap(), &opts)
        .expect("connect");
    let mut fired = Vec::new();
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end {
        pollers[0].poll(std::time::Instant::now(), &mut fired);
    }
    let s = stack.stats();
    eprintln!("net_null stats: {s:?}");
    assert!(s.rx_frames > 1000, "bursts received: {s:?}");
    assert_eq!(
        s.rx_frames,
        s.rx_delivered + s.rx_dropped(),
        "every frame accounted for"
    );
    assert!(
        s.drop_not_ip > s.rx_frames / 2,
        "null frames dropped as non-IP: {s:?}"
    );
    assert!(s.tx_frames >= 1, "ARP request sent: {s:?}");
    drop(sock);
    drop(pollers);
    drop(w);
    // Every mbuf is back (give or take the per-lcore cache).
    let back = stack.mbufs_available();
    assert!(back + 512 >= total, "mbufs leaked: {back} of {total}");
    drop(stack);
}

/// A messenger asking for more workers than the port has queues fails to build with the
/// reason, instead of starting with a worker that has no queue.
#[test]
#[ignore = "needs root and DPDK (scripts/test-dpdk.sh)"]
fn smoke_messenger_with_too_many_workers_is_refused() {
    struct Nop;
    impl dataplane::Dispatcher for Nop {
        fn dispatch(&self, _c: &dataplane::Connection, _m: dataplane::Message) {}
    }
    let stack = new_stack(cfg("net_null1", Ipv4Addr::new(10, 4, 0, 1)));
    let r = dataplane::Messenger::builder("too-many")
        .config(dataplane::Config {
            workers: 2,
            backend: "dpdk".into(),
            hugepages: false,
            ..dataplane::Config::default()
        })
        .stack(std::sync::Arc::new(stack))
        .dispatcher(std::sync::Arc::new(Nop))
        .build();
    let msg = match r {
        Ok(_) => panic!("two workers on a one-queue port must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains("`workers` to 1"), "{msg}");
}

/// net_ring0 loops every frame back to its sender: a TCP connection from the interface to
/// itself goes through ARP, the handshake, data both ways and the close, all as real frames
/// through rx/tx bursts.
#[test]
#[ignore = "needs root and DPDK (scripts/test-dpdk.sh)"]
fn smoke_net_ring_tcp_to_self() {
    let ip = Ipv4Addr::new(10, 2, 0, 1);
    let stack = new_stack(cfg("net_ring0", ip));
    let st = tcp_to_self(&stack, ip);
    assert!(st.rx_frames > 700 && st.tx_frames > 700, "{st:?}");
    assert_eq!(st.rx_dropped(), 0, "{st:?}");
}

/// The same transfer through a pool of 127 mbufs (no per-lcore cache), far fewer than the
/// TCP window wants in flight: transmit runs dry again and again. That must be backpressure
/// (smoltcp keeps the bytes and sends them later), never a crash or a lost byte.
#[test]
#[ignore = "needs root and DPDK (scripts/test-dpdk.sh)"]
fn smoke_mbuf_pool_dry_is_backpressure() {
    let ip = Ipv4Addr::new(10, 3, 0, 1);
    let stack = new_stack(DpdkConfig {
        mbufs: 127,
        mbuf_cache: 0,
        rx_desc: 64,
        tx_desc: 64,
        ..cfg("net_ring1", ip)
    });
    let st = tcp_to_self(&stack, ip);
    assert!(st.tx_no_mbuf > 0, "the pool never ran dry: {st:?}");
    assert!(stack.mbufs_available() > 0);
}

/// A TCP connection from the interface to itself over a looping port (ARP, handshake, 1 MiB
/// checked byte for byte, close); returns the stack's counters.
fn tcp_to_self(stack: &DpdkStack, ip: Ipv4Addr) -> dataplane_stack_dpdk::StatsSnapshot {
    let mut w = stack.create_worker(0).expect("worker");
    let mut pollers = w.take_pollers();
    let opts = SocketOptions::default();
    let mut l = w
        .listen(SocketAddr::from((ip, 7000)), &opts)
        .expect("listen");
    let mut c = w
        .connect(SocketAddr::from((ip, 7000)), &opts)
        .expect("connect");
    let mut fired: Vec<Fired> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut server = None;
    let mut connected = false;
    while server.is_none() || !connected {
        assert!(
            Instant::now() < deadline,
            "handshake timed out: {:?}",
            stack.stats()
        );
        pollers[0].poll(std::time::Instant::now(), &mut fired);
        if server.is_none() {
            server = l.accept(&opts).expect("accept");
        }
        connected = c.finish_connect().expect("connect failed");
    }
    let (mut s, peer) = server.unwrap();
    assert_eq!(peer.ip(), std::net::IpAddr::V4(ip));
    let pool = BufPool::new(&PoolConfig {
        count: 16,
        buf_size: 64 * 1024,
        hugepages: false,
        ..PoolConfig::default()
    })
    .expect("pool");
    // 1 MiB one way, checked byte for byte.
    let data: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut sent = 0;
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < data.len() {
        assert!(
            Instant::now() < deadline,
            "transfer timed out at {}: {:?}",
            got.len(),
            stack.stats()
        );
        if sent < data.len() {
            match c.writev(&[IoSlice::new(&data[sent..])]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
        }
        pollers[0].poll(std::time::Instant::now(), &mut fired);
        let mut b = pool.alloc().expect("buffer");
        match s.read(&mut b) {
            Ok(0) => panic!("early EOF"),
            Ok(_) => got.extend_from_slice(b.filled()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    assert!(got == data, "bytes differ");
    let dt = t0.elapsed();
    let st = stack.stats();
    eprintln!(
        "net_ring: 1 MiB through TCP to self in {dt:?} ({:.0} MB/s, {} frames each way, {:.2} us per frame)",
        data.len() as f64 / dt.as_secs_f64() / 1e6,
        st.tx_frames,
        dt.as_secs_f64() * 1e6 / st.tx_frames as f64
    );
    // Close: the server sees end of stream.
    c.shutdown();
    let mut eof = false;
    while !eof {
        assert!(Instant::now() < deadline, "close timed out");
        pollers[0].poll(std::time::Instant::now(), &mut fired);
        let mut b = pool.alloc().expect("buffer");
        match s.read(&mut b) {
            Ok(0) => eof = true,
            Ok(_) => panic!("data after the end"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    let st = stack.stats();
    eprintln!("net_ring stats: {st:?}");
    st
}
