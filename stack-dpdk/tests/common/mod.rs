//! Helpers of the DPDK integration tests: the messenger configuration, the configuration read
//! from the environment `scripts/test-dpdk.sh` sets up, the memif set-up of the two-process
//! tests ([`memif`]), and (re-exported from `dataplane-test-support`) payloads whose bytes are
//! a function of (stream, sequence), a dispatcher that checks exactly-once, in-order,
//! byte-exact delivery, and waiting helpers.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::Duration;

use dataplane::{Config, Connection, Message};
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
