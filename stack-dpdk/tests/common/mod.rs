//! Helpers of the DPDK integration tests: the messenger configuration, the configuration read
//! from the environment `scripts/test-dpdk.sh` sets up, the memif set-up of the two-process
//! tests ([`memif`]), and (re-exported from `dataplane-test-support`) payloads whose bytes are
//! a function of (stream, sequence), a dispatcher that checks exactly-once, in-order,
//! byte-exact delivery, and waiting helpers.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use dataplane::{Config, Connection, Dispatcher, Message, Messenger, Policy};
use dataplane_stack_dpdk::DpdkConfig;
use dataplane_stack_posix::PosixStack;
use dataplane_test_support::Backoff;
// Not every test uses every one of these.
#[allow(unused_imports)]
pub use dataplane_test_support::{payload, start_messenger, wait_until, Checker};

pub mod memif;

/// A small messenger configuration with one worker (the DPDK stack's rule).
pub fn test_config() -> Config {
    Config {
        workers: 1,
        rx_buffers: 256,
        hugepages: false,
        keepalive_interval_ms: 200,
        peer_timeout_ms: 10_000,
        handshake_timeout_ms: 5_000,
        reconnect_min_ms: 10,
        reconnect_max_ms: 200,
        ..Config::default()
    }
}

/// [`test_config`] with the `dpdk` backend.
pub fn dpdk_config() -> Config {
    Config {
        backend: "dpdk".into(),
        ..test_config()
    }
}

/// Sends, retrying while backpressure refuses the message (for up to 120 s).
pub fn send_retry(conn: &Connection, m: Message) {
    dataplane_test_support::send_retry(conn, m, Duration::from_secs(120), Backoff::Yield);
}

/// Logs to stderr, filtered by `RUST_LOG`.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
}

/// An environment variable, or `default`.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// An IPv4 address from the environment.
pub fn env_ip(name: &str, default: &str) -> Ipv4Addr {
    env_or(name, default)
        .parse()
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Runs the EAL without hugepages unless the script reserved some (`DPDK_HUGE=1`).
pub fn no_huge() -> bool {
    std::env::var("DPDK_HUGE").map_or(true, |v| v != "1")
}

/// Moves the calling thread into the network namespace `name` (`ip netns add name`). Threads
/// it spawns afterwards (a messenger's workers) live there too.
pub fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("netns {name}: {e}"));
    // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
    let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

/// A thread sending `n` messages of `stream` (16 to 215 bytes) on `conn`; it hands `conn` back.
pub fn spawn_sender(conn: Connection, stream: u32, n: u64) -> std::thread::JoinHandle<Connection> {
    std::thread::spawn(move || {
        for i in 0..n {
            send_retry(
                &conn,
                Message::new(1, payload(stream, i, 16 + (i % 200) as usize)),
            );
        }
        conn
    })
}

/// Sends each frame `times` times on `iface` through an `AF_PACKET` socket.
pub fn send_raw(iface: &str, frames: &[Vec<u8>], times: usize) {
    let name = std::ffi::CString::new(iface).expect("name");
    // SAFETY: plain libc calls on a socket this function owns; the address struct is
    // zero-initialised and filled with valid values; buffers outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let index = libc::if_nametoindex(name.as_ptr());
        assert!(index > 0, "no interface {iface}");
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = index as i32;
        sll.sll_halen = 6;
        for _ in 0..times {
            for f in frames {
                let r = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert!(r >= 0, "sendto: {}", std::io::Error::last_os_error());
            }
        }
        libc::close(fd);
    }
}

/// The DPDK configuration of the veth tests: `net_af_packet` on `iface`, address `ip`/24.
pub fn af_packet_config(iface: &str, ip: Ipv4Addr) -> DpdkConfig {
    DpdkConfig {
        no_huge: no_huge(),
        no_pci: true,
        vdevs: vec![format!("net_af_packet0,iface={iface}")],
        port: "net_af_packet0".into(),
        ip,
        prefix_len: 24,
        ..DpdkConfig::default()
    }
}

/// A POSIX messenger (Linux kernel TCP) named `name`, built on a thread that entered the
/// network namespace `ns` (its workers live there too), bound to `bind` if given.
pub fn posix_node_in(
    ns: &str,
    name: &str,
    d: Arc<dyn Dispatcher>,
    bind: Option<SocketAddr>,
) -> Messenger {
    let (ns, name) = (ns.to_string(), name.to_string());
    std::thread::spawn(move || {
        enter_netns(&ns);
        start_messenger(
            &name,
            test_config(),
            Arc::new(PosixStack::new()),
            d,
            Policy::lossless_client(),
            bind,
        )
    })
    .join()
    .expect("POSIX node thread")
}

/// Runs `cmd` in the network namespace `ns`; returns (success, stdout).
pub fn in_netns(ns: &str, cmd: &[&str]) -> (bool, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(cmd)
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} in {ns}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// From namespace `ns`: three pings of `ip` are answered, and the kernel's neighbour entry
/// for `ip` (learnt by ARP or neighbour discovery, both answered by smoltcp) holds `mac`.
pub fn assert_answers_ping_and_neighbour(ns: &str, ip: IpAddr, mac: [u8; 6]) {
    let family = if ip.is_ipv6() { "-6" } else { "-4" };
    let ip = ip.to_string();
    let (ok, out) = in_netns(
        ns,
        &["ping", family, "-c", "3", "-i", "0.2", "-W", "2", &ip],
    );
    eprintln!("{out}");
    assert!(
        ok && out.contains("3 received"),
        "ping of the DPDK node {ip}: {out}"
    );
    let (_, neigh) = in_netns(ns, &["ip", family, "neigh", "show", &ip]);
    let mac: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        neigh.to_lowercase().contains(&mac.join(":")),
        "neighbour entry of the DPDK node: {neigh:?}, want {}",
        mac.join(":")
    );
}
