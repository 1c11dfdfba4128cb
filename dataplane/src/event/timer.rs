//! Timer heap of one event loop.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

use super::Fired;

/// Min-heap of (deadline, key). Stale entries are allowed: owners re-check their deadlines.
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
}

impl Timers {
    /// Adds a timer for `key` at `at`.
    pub fn add(&mut self, at: Instant, key: u64) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest deadline, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Moves every timer due at `now` into `out`.
    pub fn pop_due(&mut self, now: Instant, out: &mut Vec<Fired>) {
        while let Some(Reverse((t, key))) = self.heap.peek().copied() {
            if t > now {
                break;
            }
            self.heap.pop();
            out.push(Fired::Timer { key });
        }
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}
