//! The set-up of the two-process tests over `net_memif`: this process is the memif server (a
//! socket in a fresh directory), a `dpdk-node` child process is the memif client and the
//! receiver, which checks every message and reports on its stdout.

use std::io::{BufRead, BufReader, Lines};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use dataplane::{Config, Connection, Messenger, Policy};
use dataplane_stack_dpdk::{DpdkConfig, DpdkStack};

use super::{dpdk_config, no_huge, spawn_sender, start_messenger, wait_until, Checker};

/// A directory of its own for the memif control socket, removed on drop.
pub struct SocketDir {
    dir: PathBuf,
    /// The memif control socket in it.
    pub sock: PathBuf,
}

impl SocketDir {
    /// Creates `<tmp>/dp-<tag>-<pid>`.
    pub fn new(tag: &str) -> SocketDir {
        let dir = std::env::temp_dir().join(format!("dp-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let sock = dir.join("memif.sock");
        SocketDir { dir, sock }
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The memif vdev on `sock` in `role` (`server` or `client`).
fn vdev(role: &str, sock: &Path) -> String {
    format!("net_memif0,role={role},id=0,socket={}", sock.display())
}

/// The DPDK configuration of this process: memif server on `sock`, interface address `ip`.
pub fn server_config(sock: &Path, ip: Ipv4Addr) -> DpdkConfig {
    DpdkConfig {
        no_huge: no_huge(),
        no_pci: true,
        vdevs: vec![vdev("server", sock)],
        port: "net_memif0".into(),
        ip,
        ..DpdkConfig::default()
    }
}

/// The `dpdk-node` child: memif client, listening and checking what arrives.
pub struct Node {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Node {
    /// Starts `dpdk-node` as memif client on `sock` with address `ip`, listening on `port`,
    /// expecting `expect` messages within 200 s, with the further arguments `extra`; returns
    /// once it said it is ready.
    pub fn spawn(sock: &Path, ip: Ipv4Addr, port: u16, expect: u64, extra: &[&str]) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dpdk-node"));
        cmd.args(["--vdev", &vdev("client", sock)])
            .args(["--port", "net_memif0", "--ip", &ip.to_string()])
            .args(extra)
            .args(["--listen", &port.to_string()])
            .args(["--expect", &expect.to_string(), "--seconds", "200"])
            .stdout(Stdio::piped());
        if no_huge() {
            cmd.arg("--no-huge");
        }
        let mut child = cmd.spawn().expect("spawn dpdk-node");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = lines.next().expect("child output").expect("read");
        assert!(ready.starts_with("READY "), "child said {ready:?}");
        Node { child, lines }
    }

    /// Waits for the node's `DONE` line and its exit.
    pub fn finish(mut self) -> (String, ExitStatus) {
        let done = self
            .lines
            .find_map(|l| l.ok().filter(|l| l.starts_with("DONE ")))
            .expect("child DONE line");
        let status = self.child.wait().expect("child exit");
        (done, status)
    }
}

/// Asserts the node exited cleanly having received all `n` messages, with no error.
pub fn assert_node_received_all(done: &str, status: ExitStatus, n: u64) {
    assert!(status.success(), "the receiver saw errors: {done}");
    assert!(done.starts_with(&format!("DONE {n} ")), "{done}");
    assert!(done.contains("errors=0"), "{done}");
}

/// Asserts the receiver acknowledged everything sent on `conn` within 120 s.
pub fn assert_all_acknowledged(conn: &Connection, stack: &DpdkStack) {
    assert!(
        wait_until(Duration::from_secs(120), || conn.queued() == (0, 0)),
        "not everything acknowledged: {:?}; stats {:?}",
        conn.queued(),
        stack.stats()
    );
}

/// A sending messenger `name` with two workers on `stack` (two queue pairs), and `conns`
/// lossless connections from it to `target`, asserted spread evenly over both workers. The
/// first is opened alone, until worker 0's neighbour reply (ARP, or an NDP advertisement) was
/// handed to queue 1's interface too, so worker 1 never has to ask (on an RSS NIC its own
/// reply could land on queue 0 and never reach it).
pub fn two_worker_sender(
    name: &str,
    stack: &Arc<DpdkStack>,
    target: SocketAddr,
    conns: usize,
) -> (Messenger, Vec<Connection>) {
    let m = start_messenger(
        name,
        Config {
            workers: 2,
            ..dpdk_config()
        },
        stack.clone(),
        Checker::fast(),
        Policy::lossless_client(),
        None,
    );
    let mut opened = vec![m.open(target, Policy::lossless_client()).expect("open")];
    assert!(
        wait_until(Duration::from_secs(10), || stack.stats().arp_shared >= 1),
        "worker 0's neighbour reply was not shared: {:?}",
        stack.stats()
    );
    opened.extend((1..conns).map(|_| m.open(target, Policy::lossless_client()).expect("open")));
    assert_eq!(
        m.worker_loads(),
        vec![conns / 2; 2],
        "connections spread over both workers"
    );
    (m, opened)
}

/// Sends `per_conn` checked messages on each of `conns` at once (stream = the connection's
/// index), then asserts the receiver acknowledged all of them.
pub fn send_on_all(conns: &[Connection], per_conn: u64, stack: &DpdkStack) {
    let senders: Vec<_> = conns
        .iter()
        .enumerate()
        .map(|(s, c)| spawn_sender(c.clone(), s as u32, per_conn))
        .collect();
    for t in senders {
        t.join().expect("sender");
    }
    for c in conns {
        assert_all_acknowledged(c, stack);
    }
}
