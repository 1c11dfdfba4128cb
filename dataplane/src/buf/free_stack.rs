//! The free list of a [`BufPool`](super::BufPool): a lock-free stack of chunk indices
//! (Treiber's, with a tag against ABA), so the chunk freed last is allocated first.
//!
//! A queue would hand out every chunk of the pool in turn, so each receive would write into
//! memory last touched a whole pool ago (32 MiB with the defaults), missing every cache; the
//! stack hands back the chunk just released, still cached. Model-checked with loom
//! (`RUSTFLAGS="--cfg loom"`, tests named `loom`).

#[cfg(loom)]
use loom::sync::atomic::{AtomicIsize, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicIsize, AtomicU32, AtomicU64, Ordering};

/// Indices `0..n` of free chunks.
pub(super) struct FreeStack {
    /// Low 32 bits: the top index + 1 (0: empty). High 32 bits: a tag bumped by every push
    /// and pop, so a stale `compare_exchange` fails even when the same index is back on top.
    head: AtomicU64,
    /// For each index on the stack, the one under it (+ 1, 0: none).
    next: Box<[AtomicU32]>,
    /// Indices on the stack (a snapshot; may lag a push or pop in flight).
    len: AtomicIsize,
}

impl FreeStack {
    /// A stack holding every index `0..n`, 0 on top.
    pub(super) fn full(n: u32) -> FreeStack {
        let s = FreeStack {
            head: AtomicU64::new(0),
            next: (0..n).map(|_| AtomicU32::new(0)).collect(),
            len: AtomicIsize::new(0),
        };
        for idx in (0..n).rev() {
            s.push(idx);
        }
        s
    }

    fn next_head(head: u64, top: u32) -> u64 {
        ((head >> 32).wrapping_add(1) << 32) | u64::from(top)
    }

    /// Puts `idx` (< n, not on the stack) on top.
    pub(super) fn push(&self, idx: u32) {
        let Some(link) = self.next.get(idx as usize) else {
            // Unreachable: indices come from this stack.
            tracing::error!(idx, "free list: index out of range, chunk leaked");
            return;
        };
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            link.store(head as u32, Ordering::Relaxed);
            // Release: the chunk's last user's accesses, and `link`, happen-before the pop
            // that takes it.
            match self.head.compare_exchange_weak(
                head,
                Self::next_head(head, idx + 1),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the top index.
    pub(super) fn pop(&self) -> Option<u32> {
        let mut head = self.head.load(Ordering::Acquire);
        loop {
            let idx = (head as u32).checked_sub(1)?;
            // Read before the exchange: if another thread took this index meanwhile (and
            // perhaps pushed it back), the tag moved and the exchange fails.
            let next = self.next.get(idx as usize)?.load(Ordering::Relaxed);
            match self.head.compare_exchange_weak(
                head,
                Self::next_head(head, next),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                    return Some(idx);
                }
                Err(now) => head = now,
            }
        }
    }

    /// Indices on the stack (a snapshot).
    pub(super) fn len(&self) -> usize {
        usize::try_from(self.len.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn last_in_first_out_and_empty() {
        let s = FreeStack::full(3);
        assert_eq!(s.len(), 3);
        assert_eq!(s.pop(), Some(0));
        assert_eq!(s.pop(), Some(1));
        s.push(0);
        assert_eq!(s.pop(), Some(0));
        assert_eq!(s.pop(), Some(2));
        assert_eq!(s.pop(), None);
        assert_eq!(s.len(), 0);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;
    use loom::thread;

    use super::*;

    /// Two threads take and give back indices of a two-entry stack while a third takes one
    /// for good: no index is ever held twice at once, and every index ends up held or on
    /// the stack exactly once.
    #[test]
    fn free_stack_loom_never_hands_out_an_index_twice() {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(3);
        }
        builder.check(|| {
            let s = Arc::new(FreeStack::full(2));
            let held: Arc<[AtomicBool; 2]> =
                Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
            let cycler = |s: Arc<FreeStack>, held: Arc<[AtomicBool; 2]>| {
                move || {
                    if let Some(i) = s.pop() {
                        assert!(!held[i as usize].swap(true, Ordering::AcqRel), "{i} twice");
                        held[i as usize].store(false, Ordering::Release);
                        s.push(i);
                    }
                }
            };
            let a = thread::spawn(cycler(s.clone(), held.clone()));
            let b = thread::spawn(cycler(s.clone(), held.clone()));
            let kept = s.pop();
            if let Some(i) = kept {
                assert!(!held[i as usize].swap(true, Ordering::AcqRel), "{i} twice");
            }
            a.join().unwrap();
            b.join().unwrap();
            let mut seen = [kept == Some(0), kept == Some(1)];
            while let Some(i) = s.pop() {
                assert!(!seen[i as usize], "{i} on the stack twice");
                seen[i as usize] = true;
            }
            assert_eq!(seen, [true, true], "an index was lost");
        });
    }
}
