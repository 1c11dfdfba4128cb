//! Bounded lock-free rings and the doorbell that wakes a parked consumer.
//!
//! This is the hand-off layer between threads of the messenger: the idea of PaxosStore's
//! `clsCircleQueue`, done with proper memory orderings.
//!
//! * [`spsc`]: single-producer single-consumer ring. Each side keeps a private copy of its own
//!   index and a cached copy of the other side's index, so the common case of a push or a pop
//!   touches no cache line written by the other thread.
//! * [`mpsc`]: multi-producer single-consumer ring (Vyukov-style per-slot sequence numbers, one
//!   CAS on the shared tail per push or per batch).
//! * [`doorbell`]: a wake-up that fires only when the consumer is actually parked, see
//!   [`Doorbell`] for the park protocol.
//!
//! Common properties of the rings:
//!
//! * bounded, capacity rounded up to a power of two (a requested capacity of `0` becomes `1`);
//! * head and tail on separate cache lines ([`crossbeam_utils::CachePadded`]);
//! * no allocation per operation, `Acquire`/`Release` only on the hot path (no `SeqCst`);
//! * batch operations ([`spsc::Producer::push_batch`], [`spsc::Consumer::pop_batch`], ...)
//!   that publish the new index once per batch where the algorithm allows it;
//! * items still in a ring when its last handle is dropped are dropped exactly once.
//!
//! # Example
//!
//! ```
//! use dataplane::ring::spsc;
//!
//! let (mut tx, mut rx) = spsc::channel::<u32>(3); // rounded up to 4
//! assert_eq!(tx.capacity(), 4);
//! for i in 0..4 {
//!     tx.push(i).unwrap();
//! }
//! assert_eq!(tx.push(99), Err(99)); // full: the value comes back
//! assert_eq!(rx.pop(), Some(0));
//! let mut out = Vec::new();
//! assert_eq!(rx.pop_batch(&mut out, 16), 3);
//! assert_eq!(out, [1, 2, 3]);
//! ```
//!
//! The whole module is model-checked with [loom](https://docs.rs/loom): build with
//! `RUSTFLAGS="--cfg loom"` and run the tests whose name contains `loom`.

mod barrier;
pub mod doorbell;
pub mod mpsc;
pub mod spsc;
mod sync;

pub use doorbell::{Doorbell, Wake};

#[cfg(all(test, not(loom)))]
mod tests;

#[cfg(all(test, loom))]
mod loom_tests;

/// Rounds a requested capacity up to the power of two actually used (`0` becomes `1`).
///
/// # Panics
///
/// If the rounded capacity would exceed `isize::MAX / 2 + 1` (indices must be able to wrap
/// around twice the capacity without ambiguity).
fn round_capacity(requested: usize) -> usize {
    match requested.max(1).checked_next_power_of_two() {
        Some(cap) if cap <= (isize::MAX as usize) / 2 + 1 => cap,
        _ => panic!("ring capacity {requested} is too large"),
    }
}
