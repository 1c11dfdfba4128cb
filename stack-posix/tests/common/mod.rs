//! Helpers of the POSIX messenger integration tests: messenger constructors on loopback, a
//! gated dispatcher, and (re-exported from `dataplane-test-support`) checked payloads, a
//! dispatcher that checks exactly-once, in-order, byte-exact delivery, and waiting helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dataplane::{Config, Connection, Dispatcher, Message, Messenger, Policy};
use dataplane_stack_posix::PosixStack;
// Not every test uses every one of these.
use dataplane_test_support::Backoff;
#[allow(unused_imports)]
pub use dataplane_test_support::{payload, start_messenger, wait_until, Checker, Ev, HDR};

pub mod proxy;
pub mod raw;
pub mod wrap;

#[allow(unused_imports)]
pub use wrap::Wrapping;

/// A dispatcher that blocks the dispatch thread until opened, then hands messages to `inner`.
pub struct Gate {
    pub open: std::sync::atomic::AtomicBool,
    pub inner: Arc<Checker>,
}

impl Gate {
    pub fn closed(inner: Arc<Checker>) -> Arc<Gate> {
        Arc::new(Gate {
            open: std::sync::atomic::AtomicBool::new(false),
            inner,
        })
    }
}

impl Dispatcher for Gate {
    fn dispatch(&self, c: &Connection, m: Message) {
        while !self.open.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.inner.dispatch(c, m);
    }
}

/// A bound server whose dispatch thread is held by a closed [`Gate`] in front of `inner`, and
/// whose dispatch queue throttles at 1 MiB: what arrives backs up until the gate opens.
pub fn throttled_gated_server(inner: Arc<Checker>) -> (Arc<Gate>, Messenger) {
    let gate = Gate::closed(inner);
    let server = messenger(
        "server",
        Config {
            dispatch_throttle_bytes: 1 << 20,
            ..test_config()
        },
        gate.clone(),
        true,
    );
    (gate, server)
}

/// A test configuration: small pools, no hugepages needed, short timers.
pub fn test_config() -> Config {
    Config {
        workers: 1,
        rx_buffers: 64,
        hugepages: false,
        keepalive_interval_ms: 200,
        peer_timeout_ms: 5_000,
        handshake_timeout_ms: 3_000,
        reconnect_min_ms: 2,
        reconnect_max_ms: 50,
        ..Config::default()
    }
}

/// A started messenger on the POSIX stack.
pub fn messenger(name: &str, cfg: Config, d: Arc<dyn Dispatcher>, bind: bool) -> Messenger {
    messenger_with(name, cfg, d, bind, Policy::lossless_client())
}

/// A started messenger with an explicit default policy.
pub fn messenger_with(
    name: &str,
    cfg: Config,
    d: Arc<dyn Dispatcher>,
    bind: bool,
    policy: Policy,
) -> Messenger {
    let bind = bind.then(|| "127.0.0.1:0".parse().unwrap());
    start_messenger(name, cfg, Arc::new(PosixStack::new()), d, policy, bind)
}

/// Sends, retrying while backpressure refuses the message (for up to 60 s).
pub fn send_retry(conn: &Connection, m: Message) {
    dataplane_test_support::send_retry(conn, m, Duration::from_secs(60), Backoff::Yield);
}

/// `n` started client messengers (`client0`, `client1`, ...), each connected to `to`.
pub fn connected_clients(n: usize, to: SocketAddr) -> (Vec<Messenger>, Vec<Connection>) {
    let clients: Vec<_> = (0..n)
        .map(|i| messenger(&format!("client{i}"), test_config(), Checker::fast(), false))
        .collect();
    let conns = clients.iter().map(|c| c.connect(to).unwrap()).collect();
    (clients, conns)
}

/// The address a bound messenger listens on.
pub fn addr(m: &Messenger) -> SocketAddr {
    m.addr().expect("bound")
}
