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

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dataplane::{Message, Messenger};
use dataplane_stack_dpdk::{DpdkConfig, DpdkStack};

#[test]
#[ignore = "needs root and DPDK (scripts/test-dpdk.sh)"]
fn memif_two_processes_lossless_across_link_down_up() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let n: u64 = env_or("MEMIF_MESSAGES", "200000").parse().expect("count");
    let dir = std::env::temp_dir().join(format!("dp-memif-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("memif.sock");
    let server_ip = Ipv4Addr::new(10, 88, 0, 1);
    let client_ip = Ipv4Addr::new(10, 88, 0, 2);

    let stack = Arc::new(
        DpdkStack::new(DpdkConfig {
            no_huge: no_huge(),
            no_pci: true,
            vdevs: vec![format!(
                "net_memif0,role=server,id=0,socket={}",
                sock.display()
            )],
            port: "net_memif0".into(),
            ip: client_ip,
            ..DpdkConfig::default()
        })
        .expect("DPDK stack"),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dpdk-node"));
    cmd.args([
        "--vdev",
        &format!("net_memif0,role=client,id=0,socket={}", sock.display()),
    ])
    .args(["--port", "net_memif0", "--ip", &server_ip.to_string()])
    .args([
        "--listen",
        "7300",
        "--expect",
        &n.to_string(),
        "--seconds",
        "200",
    ])
    .stdout(Stdio::piped());
    if no_huge() {
        cmd.arg("--no-huge");
    }
    let mut child = cmd.spawn().expect("spawn dpdk-node");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.next().expect("child output").expect("read");
    assert!(ready.starts_with("READY "), "child said {ready:?}");

    let m = Messenger::builder("memif-sender")
        .config(dpdk_config())
        .stack(stack.clone())
        .dispatcher(Checker::new())
        .build()
        .expect("messenger");
    m.start().expect("start");
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
    assert!(
        wait_until(Duration::from_secs(120), || conn.queued() == (0, 0)),
        "not everything acknowledged: {:?}; stats {:?}",
        conn.queued(),
        stack.stats()
    );
    let secs = start.elapsed().as_secs_f64();
    let done = lines
        .find_map(|l| l.ok().filter(|l| l.starts_with("DONE ")))
        .expect("child DONE line");
    let status = child.wait().expect("child exit");
    eprintln!(
        "memif: {n} messages in {secs:.2} s across 2 link failures; server: {done}; client stats {:?}; counters {:?}",
        stack.stats(),
        m.counters()
    );
    assert!(status.success(), "server saw errors: {done}");
    let st = stack.stats();
    assert!(
        st.drop_link_down > 0 && st.tx_dropped > 0,
        "frames were really lost in both directions: {st:?}"
    );
    assert!(done.starts_with(&format!("DONE {n} ")), "{done}");
    assert!(done.contains("errors=0"), "{done}");
    m.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
