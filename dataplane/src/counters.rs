//! Messenger-wide counters, updated with relaxed atomics and read as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters of one messenger.
        #[derive(Debug, Default)]
        pub struct Counters { $($(#[$doc])* pub $name: AtomicU64,)* }

        /// A point-in-time copy of [`Counters`].
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct CounterSnapshot { $($(#[$doc])* pub $name: u64,)* }

        impl Counters {
            /// Copies every counter.
            pub fn snapshot(&self) -> CounterSnapshot {
                CounterSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters! {
    /// Messages handed to the dispatcher.
    msgs_in,
    /// Messages written to a socket (first transmission or resend).
    msgs_out,
    /// Payload bytes received.
    bytes_in,
    /// Bytes written to sockets (frames included).
    bytes_out,
    /// Received bytes (frames included) decoded where the stack received them, in buffers it
    /// lent ([`ConnectedSocket::read_lent`](crate::stack::ConnectedSocket::read_lent)), with
    /// no copy (the bytes of a small frame straddling into a lent buffer are copied, not
    /// counted; a large message frame spanning lent buffers is gathered, see `msgs_gathered`).
    bytes_lent,
    /// Large messages (at least 64 KiB) that arrived spread over several lent buffers and
    /// were delivered as a list of slices of them, with no copy.
    msgs_gathered,
    /// Connections closed because the peer sent malformed frames or broke the protocol.
    malformed,
    /// Secure mode: connections closed because a frame failed authentication or came
    /// unsealed (altered, replayed, reordered or forged on the wire). Also counted in
    /// `malformed`.
    integrity_failures,
    /// Secure mode: connections cut because a key sealed its frame budget (a lossless
    /// session reconnects with fresh keys).
    rekeys,
    /// Handshakes refused (by us or by the peer).
    handshake_failures,
    /// Handshakes (first or reconnect) that agreed to leave payload crcs to the transport
    /// ([`FEATURE_TRANSPORT_CRC`](crate::wire::FEATURE_TRANSPORT_CRC): both stacks check
    /// every byte themselves, e.g. RDMA).
    transport_crc_sessions,
    /// Peers that failed authentication (wrong or missing key, bad proof).
    auth_failures,
    /// Lossy connections reset (application told through `handle_reset`).
    resets,
    /// Peer restarts detected (`handle_remote_reset`).
    remote_resets,
    /// Lossless reconnects completed.
    reconnects,
    /// Sessions moved to another worker because the reconnecting client's new socket is
    /// bound to that worker ([`ConnectedSocket::home_worker`](crate::stack::ConnectedSocket::home_worker)).
    sessions_migrated,
    /// Transport faults of any kind.
    faults,
    /// Faults injected by the test configuration.
    injected_faults,
    /// Reads held back by injected delays.
    injected_delays,
    /// Peers declared dead by the keepalive time-out.
    peer_timeouts,
    /// Duplicate messages discarded.
    duplicates,
    /// Messages dropped (lossy faults, age limit, closed connections).
    dropped,
    /// Sends refused by backpressure.
    send_refused,
    /// Connections accepted.
    accepted,
    /// Incoming connections closed at once because `max_connections` was reached.
    refused_connections,
    /// Outgoing connections established (first handshake).
    connected,
    /// Messages delivered locally without a socket.
    local_delivered,
    /// Reads skipped because the dispatch queue was over its throttle.
    throttled_reads,
}

impl Counters {
    /// Adds `n` to a counter.
    #[inline]
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}
