//! Bounded lock-free multi-producer single-consumer ring.
//!
//! [`channel`] returns a [`Sender`] (`Clone + Send + Sync`: share it or clone it across
//! threads) and a [`Receiver`] (`Send`, not `Clone`: exactly one consumer).
//!
//! # Algorithm
//!
//! Dmitry Vyukov's bounded queue, specialised to a single consumer. Every slot carries a
//! sequence number `seq`; for the free-running position `pos` mapped to the slot
//! `pos & (capacity - 1)`:
//!
//! * `seq == pos`: the slot is free for the producer of `pos`;
//! * `seq == pos + 1`: the item of `pos` is written and may be popped;
//! * after the pop, the consumer stores `seq = pos + capacity`, freeing the slot for the
//!   producer of the next lap.
//!
//! Producers claim positions by a CAS on the shared `tail` (one CAS for a whole batch of
//! consecutive positions in [`Sender::push_batch`]), write the item, then publish it with a
//! `Release` store of `seq`. The consumer owns `head` privately and needs no read-modify-write
//! at all. Items of one sender are popped in the order that sender pushed them; items of
//! different senders interleave in the order their positions were claimed.
//!
//! # Example
//!
//! ```
//! use dataplane::ring::mpsc;
//!
//! let (tx, mut rx) = mpsc::channel::<u64>(64);
//! let workers: Vec<_> = (0..2u64)
//!     .map(|id| {
//!         let tx = tx.clone();
//!         std::thread::spawn(move || {
//!             for i in 0..10 {
//!                 let mut v = id * 100 + i;
//!                 while let Err(back) = tx.push(v) {
//!                     v = back;
//!                     std::thread::yield_now();
//!                 }
//!             }
//!         })
//!     })
//!     .collect();
//! workers.into_iter().for_each(|w| w.join().unwrap());
//! let mut got = Vec::new();
//! rx.pop_batch(&mut got, usize::MAX);
//! got.sort_unstable();
//! assert_eq!(got.len(), 20);
//! assert_eq!(got[0], 0);
//! assert_eq!(got[19], 109);
//! ```
//!
//! The receiver cannot be cloned:
//!
//! ```compile_fail
//! let (_tx, rx) = dataplane::ring::mpsc::channel::<u32>(4);
//! let _second = rx.clone();
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use super::sync::{spin_loop, Arc, AtomicUsize, Ordering, UnsafeCell};

/// One slot of the ring.
struct Slot<T> {
    /// See the module documentation for the meaning of the values.
    seq: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// State shared by all the handles.
struct Shared<T> {
    /// Next position a producer will claim.
    tail: CachePadded<AtomicUsize>,
    /// The receiver's `head`, stored only when the receiver is dropped (for [`Drop`]).
    final_head: AtomicUsize,
    buf: Box<[Slot<T>]>,
    mask: usize,
}

// SAFETY: items are moved in by producers and out by the single consumer (so `T: Send` is
// enough); every slot access is ordered by the slot's `seq` (Acquire/Release) and exclusive
// ownership of a position is established by the CAS on `tail`.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The slot of free-running position `pos`.
    #[inline(always)]
    fn slot(&self, pos: usize) -> &Slot<T> {
        // SAFETY: `buf.len() == mask + 1`, so `pos & mask < buf.len()`.
        unsafe { self.buf.get_unchecked(pos & self.mask) }
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // This is the last handle: the receiver has stored its `head` and every position a
        // sender claimed (`final_head..tail`) has been written, since a push cannot stop between
        // its CAS and its write.
        let mut pos = self.final_head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        while pos != tail {
            // SAFETY: positions `final_head..tail` hold initialised, never-popped items and no
            // other handle exists; each is dropped exactly once.
            self.slot(pos)
                .value
                .with_mut(|p| unsafe { (*p).assume_init_drop() });
            pos = pos.wrapping_add(1);
        }
    }
}

/// Creates a ring that holds at least `capacity` items (rounded up to a power of two, `0`
/// becomes `1`) and returns its two ends.
///
/// # Panics
///
/// If the rounded capacity overflows (`capacity > isize::MAX / 2 + 1`).
pub fn channel<T: Send>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let capacity = super::round_capacity(capacity);
    let buf = (0..capacity)
        .map(|i| Slot {
            seq: AtomicUsize::new(i),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        })
        .collect();
    let shared = Arc::new(Shared {
        tail: CachePadded::new(AtomicUsize::new(0)),
        final_head: AtomicUsize::new(0),
        buf,
        mask: capacity - 1,
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared, head: 0 },
    )
}

/// A pushing end of an [`mpsc`](self) ring. Clone it for more producers.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Sender<T> {
    /// Pushes `v`, or gives it back in `Err` if the ring is full.
    ///
    /// # Errors
    ///
    /// `Err(v)` when there is no free slot; nothing was pushed and `v` is returned untouched.
    #[inline]
    pub fn push(&self, v: T) -> Result<(), T> {
        let shared = &*self.shared;
        let mut pos = shared.tail.load(Ordering::Relaxed);
        loop {
            let slot = shared.slot(pos);
            let seq = slot.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos) as isize;
            if diff == 0 {
                match shared.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: the CAS made this sender the only owner of `pos`, and the
                        // `Acquire` load of `seq == pos` ordered the consumer's move-out of the
                        // previous lap's item before this write.
                        slot.value
                            .with_mut(|p| unsafe { p.write(MaybeUninit::new(v)) });
                        slot.seq.store(pos.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(current) => pos = current,
                }
            } else if diff < 0 {
                // The slot still holds the item of the previous lap: the ring is full.
                return Err(v);
            } else {
                // Another sender claimed `pos` already: back off briefly and catch up.
                spin_loop();
                pos = shared.tail.load(Ordering::Relaxed);
            }
        }
    }

    /// Moves as many items as fit from the front of `items` into the ring. The free run of slots
    /// is claimed with a single CAS. Returns how many were moved (`0` if the ring is full or
    /// `items` empty); the moved items are popped contiguously and in order.
    #[inline]
    pub fn push_batch(&self, items: &mut VecDeque<T>) -> usize {
        let shared = &*self.shared;
        let want = items.len().min(shared.mask + 1);
        if want == 0 {
            return 0;
        }
        let mut pos = shared.tail.load(Ordering::Relaxed);
        let n = 'claim: loop {
            // Count the free slots from `pos` on (each checked with `Acquire`, see `push`).
            let mut n = 0;
            while n < want {
                let p = pos.wrapping_add(n);
                let diff = shared.slot(p).seq.load(Ordering::Acquire).wrapping_sub(p) as isize;
                if diff < 0 {
                    break; // the previous lap's item is still there: full from here on
                }
                if diff > 0 {
                    // Another sender already claimed `p`: our `pos` is stale.
                    spin_loop();
                    pos = shared.tail.load(Ordering::Relaxed);
                    continue 'claim;
                }
                n += 1;
            }
            if n == 0 {
                return 0;
            }
            match shared.tail.compare_exchange_weak(
                pos,
                pos.wrapping_add(n),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break n,
                Err(current) => pos = current,
            }
        };
        for v in items.drain(..n) {
            let slot = shared.slot(pos);
            // SAFETY: the CAS made this sender the only owner of positions `pos..pos + n`, each
            // of which was observed free (`seq == pos`, `Acquire`) before the CAS.
            slot.value
                .with_mut(|p| unsafe { p.write(MaybeUninit::new(v)) });
            slot.seq.store(pos.wrapping_add(1), Ordering::Release);
            pos = pos.wrapping_add(1);
        }
        n
    }

    /// The capacity of the ring (the requested one rounded up to a power of two).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.shared.mask + 1
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

/// The popping end of an [`mpsc`](self) ring.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Next position to pop (the consumer is the only one that needs it).
    head: usize,
}

impl<T> Receiver<T> {
    /// Pops the oldest published item, or `None` if there is none.
    ///
    /// `None` is also returned while the next position has been claimed by a sender that has
    /// not finished writing it yet, even if later positions are already written.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        let slot = self.shared.slot(self.head);
        if slot.seq.load(Ordering::Acquire) != self.head.wrapping_add(1) {
            return None;
        }
        // SAFETY: `seq == head + 1` (`Acquire`) means the sender of `head` wrote the item before
        // its `Release` store of `seq`; no sender touches the slot again until we store the
        // next-lap sequence number below, and we move the item out exactly once.
        let v = slot.value.with(|p| unsafe { p.read().assume_init() });
        slot.seq.store(
            self.head.wrapping_add(self.shared.mask + 1),
            Ordering::Release,
        );
        self.head = self.head.wrapping_add(1);
        Some(v)
    }

    /// Pops up to `max` items, appending them to `out` in FIFO order. Returns how many were
    /// popped. Stops early at the first position that is not published yet (see [`pop`]).
    ///
    /// [`pop`]: Receiver::pop
    #[inline]
    pub fn pop_batch(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let mut n = 0;
        if max > 0 {
            out.reserve(self.len().min(max));
        }
        while n < max {
            match self.pop() {
                Some(v) => out.push(v),
                None => break,
            }
            n += 1;
        }
        n
    }

    /// `true` if the next [`pop`](Receiver::pop) would return `None` right now.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.shared.slot(self.head).seq.load(Ordering::Acquire) != self.head.wrapping_add(1)
    }

    /// Approximate number of items in the ring: counts positions claimed by senders, including
    /// those still being written.
    #[inline]
    pub fn len(&self) -> usize {
        self.shared
            .tail
            .load(Ordering::Acquire)
            .wrapping_sub(self.head)
    }

    /// The capacity of the ring (the requested one rounded up to a power of two).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.shared.mask + 1
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.final_head.store(self.head, Ordering::Release);
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}
