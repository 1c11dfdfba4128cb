//! DPDK network stack for the dataplane messenger: poll-mode packet I/O on a DPDK port and a
//! user-space TCP/IP stack ([`smoltcp`]) per worker, speaking the same wire protocol as the
//! POSIX stack, so a DPDK node and a kernel-TCP node talk to each other.
//!
//! ```text
//! Messenger worker ── EventCenter ── DpdkPoller (every loop iteration)
//!                                      │ rx_burst ─▶ frame checks ─▶ smoltcp Interface::poll
//!                                      │                               │ TCP sockets (rings)
//!                                      │ tx_burst ◀─ mbufs (bursts) ◀──┘
//!                                      └ readiness events (Fired::File) for the worker
//! ```
//!
//! - Binding: our own (`sys`): bindgen over an allowlist plus a C shim for DPDK's inline
//!   fast-path functions, built against `libdpdk` ≥ 22.11 found by `pkg-config`. Without
//!   libdpdk the crate still builds and [`DpdkStack::new`] returns
//!   [`StackError::Unavailable`](dataplane::stack::StackError::Unavailable) saying what is
//!   missing and how to install it.
//! - One worker per port queue pair ([`DpdkConfig::queues`]): a smoltcp socket lives in its
//!   worker's interface, so every worker listens on the bound port, keeps the sockets it
//!   accepts and reports them bound to it (`ConnectedSocket::home_worker`); more workers than
//!   queues is refused with a clear error. Flows reach the right queue by the device's RSS
//!   hash (outgoing connections pick a local port whose Toeplitz hash lands on their queue:
//!   [`Steering`]) or, on devices without RSS, by queue pairing (memif, ring).
//! - Idle workers back off: busy-poll for [`DpdkConfig::busy_poll`] after the last frame,
//!   then sleep on the event loop up to [`DpdkConfig::idle_sleep`] between polls.
//!
//! See `docs/dpdk.md` for set-up, measurements and where bytes are copied.

mod config;
mod error;
mod frame;
mod rss;
mod stats;

pub use config::{frame_buffer_len, hugepages_free, DpdkConfig, MAX_MTU, MIN_MTU};
pub use error::DpdkError;
pub use frame::{check_frame, Drop as FrameDrop};
pub use rss::{tcp4_input, toeplitz, RssTable, Steering};
pub use stats::{Stats, StatsSnapshot};

#[cfg(dpdk_available)]
mod arp;
#[cfg(dpdk_available)]
mod device;
#[cfg(dpdk_available)]
mod engine;
#[cfg(dpdk_available)]
mod port;
#[cfg(dpdk_available)]
mod stack;
#[cfg(dpdk_available)]
mod sys;

#[cfg(dpdk_available)]
pub use stack::{DpdkListener, DpdkSocket, DpdkStack, DpdkWorker};

/// True if this build has the real DPDK backend (libdpdk was found at build time).
pub const AVAILABLE: bool = cfg!(dpdk_available);

#[cfg(not(dpdk_available))]
mod unavailable {
    use dataplane::stack::{NetworkStack, StackError, StackWorker};

    use crate::{DpdkConfig, StatsSnapshot};

    /// Why this build has no DPDK backend (recorded by the build script).
    pub const REASON: &str = env!("DPDK_UNAVAILABLE_REASON");

    /// The DPDK backend of a build without libdpdk: the constructor reports what is missing,
    /// and no value can exist (the field is uninhabited), so the other methods, present to
    /// keep callers compiling everywhere, can never run.
    #[derive(Debug)]
    pub struct DpdkStack {
        never: std::convert::Infallible,
    }

    impl DpdkStack {
        /// Always fails: this build has no DPDK (see [`REASON`]).
        pub fn new(_cfg: DpdkConfig) -> Result<DpdkStack, StackError> {
            Err(StackError::Unavailable {
                backend: "dpdk".into(),
                reason: format!(
                    "this build has no DPDK backend: {REASON}. Install DPDK 22.11+ \
                     (`apt-get install libdpdk-dev pkg-config clang libclang-dev`) and rebuild"
                ),
            })
        }

        /// Counters (unreachable: no value exists).
        pub fn stats(&self) -> StatsSnapshot {
            match self.never {}
        }

        /// Link state (unreachable: no value exists).
        pub fn link_up(&self) -> bool {
            match self.never {}
        }

        /// Link control (unreachable: no value exists).
        pub fn set_link(&self, _up: bool) -> Result<(), StackError> {
            match self.never {}
        }

        /// Emulated link failure (unreachable: no value exists).
        pub fn set_blackhole(&self, _on: bool) {
            match self.never {}
        }

        /// MAC address (unreachable: no value exists).
        pub fn mac(&self) -> [u8; 6] {
            match self.never {}
        }

        /// Port id (unreachable: no value exists).
        pub fn port_id(&self) -> u16 {
            match self.never {}
        }

        /// Driver name (unreachable: no value exists).
        pub fn driver(&self) -> &str {
            match self.never {}
        }

        /// Free mbufs (unreachable: no value exists).
        pub fn mbufs_available(&self) -> u32 {
            match self.never {}
        }
    }

    impl NetworkStack for DpdkStack {
        fn name(&self) -> &'static str {
            "dpdk"
        }

        fn create_worker(&self, _index: usize) -> Result<Box<dyn StackWorker>, StackError> {
            match self.never {}
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn says_what_is_missing_and_how_to_install_it() {
            let err = DpdkStack::new(DpdkConfig::default()).expect_err("no DPDK in this build");
            let msg = err.to_string();
            assert!(matches!(err, StackError::Unavailable { .. }), "{msg}");
            assert!(msg.contains("apt-get install libdpdk-dev"), "{msg}");
            assert!(msg.starts_with("dpdk backend unavailable"), "{msg}");
        }
    }
}

#[cfg(not(dpdk_available))]
pub use unavailable::{DpdkStack, REASON as UNAVAILABLE_REASON};
