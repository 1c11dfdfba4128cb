//! Typed messenger configuration, loadable from TOML, with defaults that work on a laptop.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::auth::AuthConfig;
use crate::error::Error;

/// Messenger configuration. Every field has a default; a TOML file only lists what it changes.
///
/// ```
/// let cfg = dataplane::Config::from_toml_str("workers = 1\nkeepalive_interval_ms = 500").unwrap();
/// assert_eq!(cfg.workers, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Worker threads (each owns an event loop and its connections).
    pub workers: usize,
    /// Backend for every worker: `posix`, `rdma` or `dpdk`.
    pub backend: String,
    /// Per-worker backend override; empty means every worker uses `backend`.
    pub worker_backends: Vec<String>,
    /// Pin worker `i` to core `worker_cores[i]` (or core `i` when the list is empty).
    pub pin_workers: bool,
    /// Cores to pin workers to.
    pub worker_cores: Vec<usize>,
    /// Spin this many microseconds for work before a worker parks (0 for POSIX).
    pub busy_poll_us: u64,
    /// When binding to port 0 and this range is set, try these ports in order (Ceph's
    /// `ms_bind_port_min`/`max`).
    pub bind_port_min: u16,
    /// Upper end of the bind port range (inclusive).
    pub bind_port_max: u16,
    /// Largest front (control) segment accepted from a peer.
    pub max_front_bytes: u32,
    /// Largest message payload accepted from a peer or queued by the application.
    pub max_message_bytes: u32,
    /// Per-connection queue limit in messages (queued + unacknowledged).
    pub queue_max_msgs: usize,
    /// Per-connection queue limit in payload bytes (queued + unacknowledged).
    pub queue_max_bytes: usize,
    /// Lossy connections drop messages queued longer than this (0 = keep).
    pub lossy_max_age_ms: u64,
    /// Keepalive interval (0 = off).
    pub keepalive_interval_ms: u64,
    /// Peer declared dead after this long without traffic (0 = never).
    pub peer_timeout_ms: u64,
    /// A handshake must finish within this time.
    pub handshake_timeout_ms: u64,
    /// First reconnect delay of a lossless client; doubles up to `reconnect_max_ms`.
    pub reconnect_min_ms: u64,
    /// Largest reconnect delay.
    pub reconnect_max_ms: u64,
    /// Size of one receive buffer from the pool.
    pub rx_buffer_bytes: usize,
    /// Receive buffers per worker pool.
    pub rx_buffers: usize,
    /// Back the buffer pools with hugepages when reserved (falls back with one warning).
    pub hugepages: bool,
    /// Fault the buffer pools' pages in when the messenger is built, so that no page fault
    /// happens on the receive path ([`PoolConfig::prefault`](crate::buf::PoolConfig)).
    /// Default true.
    pub prefault_buffers: bool,
    /// Slots of each worker's command ring.
    pub command_ring: usize,
    /// Set TCP_NODELAY.
    pub nodelay: bool,
    /// Kernel send buffer per socket in bytes (0 = the OS default and auto-tuning).
    pub send_buffer_bytes: usize,
    /// Kernel receive buffer per socket in bytes (0 = the OS default and auto-tuning).
    pub recv_buffer_bytes: usize,
    /// Feature bits we support. The default offers
    /// [`FEATURE_BATCH`](crate::wire::FEATURE_BATCH): when the peer offers it too, runs of
    /// small messages travel in batch frames (one preamble and one crc per batch).
    pub features: u64,
    /// Feature bits we require of peers.
    pub required_features: u64,
    /// Leave payload crcs to transports that check every byte themselves (default true).
    /// On a stack that reports
    /// [`NetworkStack::checks_integrity`](crate::stack::NetworkStack::checks_integrity) (RDMA:
    /// every RoCE or InfiniBand packet carries a CRC-32 the receiving device checks), the
    /// hellos offer [`FEATURE_TRANSPORT_CRC`](crate::wire::FEATURE_TRANSPORT_CRC), and when
    /// the peer offers it too, messages travel without the crc32c of their payload: a pass
    /// over every byte at each end saved. What it gives up: corruption between host memory
    /// and the device (DMA, PCIe, which has its own link-level CRC) is no longer caught by
    /// the messenger. Set false to keep end-to-end payload crcs everywhere. Preambles keep
    /// their crcs either way; secure mode seals instead.
    pub trust_transport_crc: bool,
    /// Most connections (established plus handshaking) accepted at once; further incoming
    /// connections are closed at once and counted (`refused_connections`).
    pub max_connections: usize,
    /// Stop reading from sockets while this many payload bytes wait in the dispatch queue.
    pub dispatch_throttle_bytes: usize,
    /// Authentication (mutual HMAC-SHA256 challenge-response; off without keys).
    pub auth: AuthConfig,
    /// Fault injection for tests.
    pub inject: FaultInjection,
}

/// Deterministic fault injection (Ceph's `ms_inject_socket_failures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultInjection {
    /// Fail one socket operation in this many (0 = off): reads and writes of established
    /// connections, connects and their completion, and reads of handshaking sockets.
    pub socket_failures: u32,
    /// Seed of the injection RNG (per worker, mixed with the worker index).
    pub seed: u64,
    /// Hold back one read in this many (0 = off), of established and of handshaking
    /// connections, for a random time up to `delay_max_ms`: a slow or congested network
    /// (Ceph's `ms_inject_delay_probability`).
    pub delays: u32,
    /// Longest injected delay in milliseconds.
    pub delay_max_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            workers: 2,
            backend: "posix".into(),
            worker_backends: Vec::new(),
            pin_workers: false,
            worker_cores: Vec::new(),
            busy_poll_us: 0,
            bind_port_min: 0,
            bind_port_max: 0,
            max_front_bytes: 64 * 1024,
            max_message_bytes: 64 * 1024 * 1024,
            queue_max_msgs: 64 * 1024,
            queue_max_bytes: 256 * 1024 * 1024,
            lossy_max_age_ms: 0,
            keepalive_interval_ms: 1000,
            peer_timeout_ms: 15_000,
            handshake_timeout_ms: 10_000,
            reconnect_min_ms: 5,
            reconnect_max_ms: 2_000,
            rx_buffer_bytes: 64 * 1024,
            rx_buffers: 512,
            hugepages: true,
            prefault_buffers: true,
            command_ring: 64 * 1024,
            nodelay: true,
            send_buffer_bytes: 0,
            recv_buffer_bytes: 0,
            features: crate::wire::FEATURE_BATCH,
            required_features: 0,
            trust_transport_crc: true,
            max_connections: 16 * 1024,
            dispatch_throttle_bytes: 256 * 1024 * 1024,
            auth: AuthConfig::default(),
            inject: FaultInjection::default(),
        }
    }
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml_str(s: &str) -> Result<Config, Error> {
        let cfg: Config = toml::from_str(s).map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            what: format!("reading config {}", path.display()),
            source,
        })?;
        Config::from_toml_str(&text)
    }

    /// Checks values that would make the messenger misbehave.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Config(m));
        if self.workers == 0 {
            return bad("workers must be at least 1".into());
        }
        if !self.worker_backends.is_empty() && self.worker_backends.len() != self.workers {
            return bad(format!(
                "worker_backends lists {} backends for {} workers",
                self.worker_backends.len(),
                self.workers
            ));
        }
        if self.bind_port_min > self.bind_port_max {
            return bad("bind_port_min is above bind_port_max".into());
        }
        if self.rx_buffer_bytes < 4096 || self.rx_buffers == 0 {
            return bad("rx_buffer_bytes must be >= 4096 and rx_buffers >= 1".into());
        }
        if self.queue_max_msgs == 0 || self.queue_max_bytes == 0 {
            return bad("queue limits must be positive".into());
        }
        if !(2..=1 << 24).contains(&self.command_ring) {
            return bad(format!(
                "command_ring must be between 2 and {} slots, got {}",
                1 << 24,
                self.command_ring
            ));
        }
        if self.max_message_bytes > i32::MAX as u32 {
            return bad("max_message_bytes must be below 2 GiB".into());
        }
        Ok(())
    }

    /// The backend of worker `i`.
    pub fn backend_of(&self, i: usize) -> &str {
        self.worker_backends
            .get(i)
            .map_or(self.backend.as_str(), String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_only_what_it_lists() {
        let cfg = Config::from_toml_str(
            "workers = 4\nbackend = \"posix\"\n[inject]\nsocket_failures = 10\nseed = 7\n",
        )
        .unwrap();
        assert_eq!(cfg.workers, 4);
        assert_eq!(
            cfg.inject,
            FaultInjection {
                socket_failures: 10,
                seed: 7,
                ..FaultInjection::default()
            }
        );
        assert_eq!(cfg.queue_max_msgs, Config::default().queue_max_msgs);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected_with_context() {
        let e = Config::from_toml_str("wokers = 4").unwrap_err().to_string();
        assert!(e.contains("wokers"), "{e}");
        let e = Config::from_toml_str("workers = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("workers"), "{e}");
        assert!(Config::from_toml_str("bind_port_min = 9\nbind_port_max = 3").is_err());
        assert!(Config::from_toml_str("workers = 2\nworker_backends = [\"posix\"]").is_err());
    }

    #[test]
    fn per_worker_backends() {
        let cfg =
            Config::from_toml_str("workers = 2\nworker_backends = [\"posix\", \"rdma\"]").unwrap();
        assert_eq!(cfg.backend_of(0), "posix");
        assert_eq!(cfg.backend_of(1), "rdma");
    }

    #[test]
    fn round_trips_through_toml() {
        let cfg = Config::default();
        let text = toml::to_string(&cfg).unwrap();
        assert_eq!(Config::from_toml_str(&text).unwrap(), cfg);
    }
}
