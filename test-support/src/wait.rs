//! Waiting in tests: polling a condition with a time limit, and sending through backpressure.

use std::time::{Duration, Instant};

use dataplane::{Connection, Message, SendErrorKind};

/// Polls `f` every 2 ms until it is true or `timeout` passes; returns whether it became true
/// (it is asked once more at the end).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

/// What [`send_retry`] does between two refused sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    /// Yields the thread and tries again.
    Yield,
    /// Sleeps this long and tries again.
    Sleep(Duration),
}

/// Sends `m` on `conn`, retrying (with `backoff` between tries) while backpressure refuses it
/// (a full queue or ring). Panics on any other send error, or when backpressure has not
/// released the message within `limit`.
pub fn send_retry(conn: &Connection, mut m: Message, limit: Duration, backoff: Backoff) {
    let end = Instant::now() + limit;
    loop {
        match conn.send(m) {
            Ok(()) => return,
            Err(e) => {
                assert!(
                    matches!(
                        e.kind,
                        SendErrorKind::QueueFull { .. } | SendErrorKind::RingFull
                    ),
                    "send failed: {e}"
                );
                assert!(Instant::now() < end, "backpressure never released");
                m = e.message;
                match backoff {
                    Backoff::Yield => std::thread::yield_now(),
                    Backoff::Sleep(d) => std::thread::sleep(d),
                }
            }
        }
    }
}
