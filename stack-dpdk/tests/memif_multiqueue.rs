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

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dataplane::{Config, Message, Messenger, Policy};
use dataplane_stack_dpdk::{DpdkConfig, DpdkStack, Steering};

#[test]
#[ignore = "needs root and DPDK (scripts/test-dpdk.sh)"]
fn memif_two_queues_two_workers_each_several_connections_exactly_once() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    const CONNS: u32 = 6;
    let per_conn: u64 = env_or("MEMIF_MQ_MESSAGES", "20000").parse().expect("count");
    let n = per_conn * u64::from(CONNS);
    let dir = std::env::temp_dir().join(format!("dp-memif-mq-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let sock = dir.join("memif.sock");
    let server_ip = Ipv4Addr::new(10, 89, 0, 1);
    let client_ip = Ipv4Addr::new(10, 89, 0, 2);

    let stack = Arc::new(
        DpdkStack::new(DpdkConfig {
            no_huge: no_huge(),
            no_pci: true,
            vdevs: vec![format!(
                "net_memif0,role=server,id=0,socket={}",
                sock.display()
            )],
            port: "net_memif0".into(),
            queues: 2,
            ip: client_ip,
            ..DpdkConfig::default()
        })
        .expect("DPDK stack with two queue pairs"),
    );
    assert_eq!(stack.queues(), 2);
    assert_eq!(
        stack.steering(),
        &Steering::Symmetric { queues: 2 },
        "memif has no RSS: queues are paired"
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dpdk-node"));
    cmd.args([
        "--vdev",
        &format!("net_memif0,role=client,id=0,socket={}", sock.display()),
    ])
    .args(["--port", "net_memif0", "--ip", &server_ip.to_string()])
    .args(["--workers", "2", "--listen", "7400"])
    .args(["--expect", &n.to_string(), "--seconds", "200"])
    .stdout(Stdio::piped());
    if no_huge() {
        cmd.arg("--no-huge");
    }
    let mut child = cmd.spawn().expect("spawn dpdk-node");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.next().expect("child output").expect("read");
    assert!(ready.starts_with("READY "), "child said {ready:?}");

    let m = Messenger::builder("memif-mq-sender")
        .config(Config {
            workers: 2,
            ..dpdk_config()
        })
        .stack(stack.clone())
        .dispatcher(Checker::new())
        .build()
        .expect("messenger with two workers");
    m.start().expect("start");
    let target = SocketAddr::from((server_ip, 7400));
    // Separate lossless connections, placed on the least-loaded worker: three per worker.
    let conns: Vec<_> = (0..CONNS)
        .map(|_| m.open(target, Policy::lossless_client()).expect("open"))
        .collect();
    let loads = m.worker_loads();
    assert_eq!(loads, vec![3, 3], "connections spread over both workers");
    let start = Instant::now();
    let senders: Vec<_> = conns
        .iter()
        .enumerate()
        .map(|(s, c)| {
            let c = c.clone();
            std::thread::spawn(move || {
                for i in 0..per_conn {
                    send_retry(
                        &c,
                        Message::new(1, payload(s as u32, i, 16 + (i % 200) as usize)),
                    );
                }
            })
        })
        .collect();
    for t in senders {
        t.join().expect("sender");
    }
    for c in &conns {
        assert!(
            wait_until(Duration::from_secs(120), || c.queued() == (0, 0)),
            "not everything acknowledged: {:?}; stats {:?}",
            c.queued(),
            stack.stats()
        );
    }
    let done = lines
        .find_map(|l| l.ok().filter(|l| l.starts_with("DONE ")))
        .expect("child DONE line");
    let status = child.wait().expect("child exit");
    eprintln!(
        "memif 2 queues: {n} messages on {CONNS} connections in {:.2} s; receiver: {done}; \
         sender stats {:?}; counters {:?}",
        start.elapsed().as_secs_f64(),
        stack.stats(),
        m.counters()
    );
    assert!(status.success(), "receiver saw errors: {done}");
    assert!(done.starts_with(&format!("DONE {n} ")), "{done}");
    assert!(done.contains("errors=0"), "{done}");
    assert!(done.contains(&format!("streams={CONNS} ")), "{done}");
    // The receiver's workers each accepted the connections that came in on their queue:
    // three each (memif pairs our queue i with its queue i).
    assert!(done.contains("loads=3,3 "), "receiver placement: {done}");
    let c = m.counters();
    assert_eq!(c.sessions_migrated, 0);
    m.shutdown();
    let _ = std::fs::remove_dir_all(&dir);
}
