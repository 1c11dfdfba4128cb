//! Errors of the DPDK stack.

use dataplane::stack::StackError;

/// Why DPDK could not do what the stack asked. Converted to
/// [`StackError::Unavailable`] when a stack or worker cannot be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpdkError {
    /// `rte_eal_init` failed (permissions, hugepages, a bad `--vdev`…).
    #[error("rte_eal_init failed: {reason}")]
    Eal {
        /// DPDK's error text.
        reason: String,
    },
    /// The EAL already runs in this process with other arguments (it starts once).
    #[error(
        "the DPDK EAL is initialised once per process and already runs with {running:?}; \
         this stack asks for {asked:?} (give every stack of a process the same EAL settings)"
    )]
    EalArgs {
        /// The arguments the EAL runs with.
        running: Vec<String>,
        /// The arguments this stack asked for.
        asked: Vec<String>,
    },
    /// A configuration value DPDK cannot take (e.g. a NUL byte in a string).
    #[error("invalid DPDK argument: {0}")]
    InvalidArgument(String),
    /// No such port among the probed ones.
    #[error("no DPDK port {port:?} ({probed} port(s) probed: check the --vdev / PCI allow-list)")]
    NoPort {
        /// The port asked for (name or id).
        port: String,
        /// Ports the EAL probed.
        probed: u16,
    },
    /// Another stack of this process drives the port.
    #[error("DPDK port {0} is already used by another stack")]
    PortInUse(u16),
    /// The mbuf pool could not be created.
    #[error("mbuf pool {name} ({count} x {data_room} B): {reason}")]
    Pool {
        /// Pool name.
        name: String,
        /// Buffers asked for.
        count: u32,
        /// Data room per buffer.
        data_room: u16,
        /// DPDK's error text.
        reason: String,
    },
    /// A port operation failed.
    #[error("DPDK port {port}: {op} failed: {reason}")]
    Port {
        /// Port id.
        port: u16,
        /// What was being done.
        op: &'static str,
        /// DPDK's error text.
        reason: String,
    },
    /// A worker asked for a queue pair another live worker holds.
    #[error("DPDK queue pair {0} is already used by a live worker")]
    QueueInUse(usize),
    /// More workers than queue pairs.
    #[error(
        "the DPDK stack runs one worker per port queue pair and this port has {queues}; \
         worker {worker} has none: set the messenger's `workers` to {queues}, or \
         `DpdkConfig::queues` to the number of workers (up to what the device allows)"
    )]
    NoQueue {
        /// The worker's index.
        worker: usize,
        /// Queue pairs of the port.
        queues: usize,
    },
    /// The worker thread could not become an lcore.
    #[error("registering the thread as a DPDK lcore: {0}")]
    Lcore(String),
    /// The stack's internal bookkeeping is unusable (a lock poisoned by a panic).
    #[error("DPDK stack state poisoned: {0}")]
    Poisoned(&'static str),
}

impl From<DpdkError> for StackError {
    fn from(e: DpdkError) -> StackError {
        StackError::Unavailable {
            backend: "dpdk".into(),
            reason: e.to_string(),
        }
    }
}
