//! Connection policies (Ceph's `Messenger::Policy`).

use serde::{Deserialize, Serialize};

/// How a connection behaves on faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Lossy: on a fault, queued and unacknowledged messages are dropped and the application
    /// is told through `handle_reset`. Lossless: messages are sequenced, acknowledged, kept
    /// until acknowledged and resent after a reconnect, and delivered exactly once, in order.
    pub lossy: bool,
    /// Server role: never reconnects; a lossless server keeps the session in standby until
    /// the client comes back.
    pub server: bool,
}

impl Policy {
    /// Lossless client: reconnects with backoff and resends what was not acknowledged.
    pub const fn lossless_client() -> Policy {
        Policy {
            lossy: false,
            server: false,
        }
    }

    /// Lossy client: reports a reset on the first fault.
    pub const fn lossy_client() -> Policy {
        Policy {
            lossy: true,
            server: false,
        }
    }

    /// Stateful server: lossless, waits in standby for the client to reconnect.
    pub const fn stateful_server() -> Policy {
        Policy {
            lossy: false,
            server: true,
        }
    }

    /// Stateless server: lossy, forgets a peer on its first fault.
    pub const fn stateless_server() -> Policy {
        Policy {
            lossy: true,
            server: true,
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::lossless_client()
    }
}
