//! Bounded lock-free single-producer single-consumer ring.
//!
//! [`channel`] returns a [`Producer`] and a [`Consumer`]. Both are [`Send`] but neither is
//! [`Sync`] nor [`Clone`]: exactly one thread pushes and exactly one thread pops, which is what
//! lets every operation go without a read-modify-write instruction.
//!
//! # Algorithm
//!
//! `head` (next slot to pop) and `tail` (next slot to push) are free-running `usize` counters on
//! their own cache lines; the slot of counter `i` is `i & (capacity - 1)`. The producer owns
//! `tail` and publishes it with a `Release` store after writing the slot; the consumer owns
//! `head` and publishes it with a `Release` store after moving the item out. Each side keeps a
//! *cached* copy of the other side's counter and only reloads it (`Acquire`) when the cache says
//! the ring is full (producer) or empty (consumer), so in the common case a push or a pop reads
//! no cache line that the other side writes (the same trick as `rtrb`).
//!
//! # Example
//!
//! ```
//! use std::collections::VecDeque;
//! use dataplane::ring::spsc;
//!
//! let (mut tx, mut rx) = spsc::channel::<String>(2);
//! let mut pending: VecDeque<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
//! assert_eq!(tx.push_batch(&mut pending), 2); // only two fit
//! assert_eq!(pending, ["c"]);
//! let consumer = std::thread::spawn(move || {
//!     let mut got = Vec::new();
//!     while got.len() < 3 {
//!         rx.pop_batch(&mut got, 8);
//!     }
//!     got
//! });
//! while tx.push_batch(&mut pending) == 0 && !pending.is_empty() {
//!     std::thread::yield_now();
//! }
//! assert_eq!(consumer.join().unwrap(), ["a", "b", "c"]);
//! ```
//!
//! Neither handle can be shared between threads:
//!
//! ```compile_fail
//! fn assert_sync<S: Sync>() {}
//! assert_sync::<dataplane::ring::spsc::Producer<u32>>();
//! ```
//!
//! ```compile_fail
//! fn assert_sync<S: Sync>() {}
//! assert_sync::<dataplane::ring::spsc::Consumer<u32>>();
//! ```
//!
//! ```compile_fail
//! let (tx, _rx) = dataplane::ring::spsc::channel::<u32>(4);
//! let _second = tx.clone();
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use super::sync::{Arc, AtomicBool, AtomicUsize, Ordering, UnsafeCell};

/// State shared by the two handles.
struct Shared<T> {
    /// Next counter the consumer will pop. Written only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Next counter the producer will push. Written only by the producer.
    tail: CachePadded<AtomicUsize>,
    /// Set by whichever handle is dropped first.
    abandoned: AtomicBool,
    /// `capacity` slots; slot `i & mask` is initialised iff `head <= i < tail` (wrapping).
    buf: Box<[UnsafeCell<MaybeUninit<T>>]>,
}

impl<T> Shared<T> {
    /// The slot of free-running counter `index`.
    #[inline(always)]
    fn slot(&self, index: usize, mask: usize) -> &UnsafeCell<MaybeUninit<T>> {
        debug_assert_eq!(mask + 1, self.buf.len());
        // SAFETY: `buf.len() == mask + 1`, so `index & mask < buf.len()`.
        unsafe { self.buf.get_unchecked(index & mask) }
    }
}

impl<T> Drop for Shared<T> {
    fn drop(&mut self) {
        // Both handles are gone (this is the last `Arc`), and each handle publishes its counter
        // after every operation, so the shared counters are exact.
        let mask = self.buf.len() - 1;
        let mut i = self.head.load(Ordering::Acquire);
        let tail = self.tail.load(Ordering::Acquire);
        while i != tail {
            // SAFETY: slots in `head..tail` hold initialised items that were never popped, and
            // nothing else can access them any more; each is dropped exactly once.
            self.slot(i, mask)
                .with_mut(|p| unsafe { (*p).assume_init_drop() });
            i = i.wrapping_add(1);
        }
    }
}

/// Creates a ring that holds at least `capacity` items (rounded up to a power of two, `0`
/// becomes `1`) and returns its two ends.
///
/// # Panics
///
/// If the rounded capacity overflows (`capacity > isize::MAX / 2 + 1`).
pub fn channel<T: Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let capacity = super::round_capacity(capacity);
    let buf = (0..capacity)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let shared = Arc::new(Shared {
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
        abandoned: AtomicBool::new(false),
        buf,
    });
    let mask = capacity - 1;
    (
        Producer {
            shared: shared.clone(),
            tail: 0,
            cached_head: 0,
            mask,
        },
        Consumer {
            shared,
            head: 0,
            cached_tail: 0,
            mask,
        },
    )
}

/// The pushing end of an [`spsc`](self) ring.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Private copy of `shared.tail` (the producer is its only writer).
    tail: usize,
    /// Last observed value of `shared.head`; never ahead of the real one.
    cached_head: usize,
    mask: usize,
}

// SAFETY: the producer only moves `T`s into the ring (so `T: Send` suffices) and there is exactly
// one producer; the shared counters are atomics. `Producer` stays `!Sync` because `Shared<T>` is
// `!Sync` (it contains `UnsafeCell`s).
unsafe impl<T: Send> Send for Producer<T> {}

impl<T> Producer<T> {
    /// Pushes `v`, or gives it back in `Err` if the ring is full.
    ///
    /// # Errors
    ///
    /// `Err(v)` when there is no free slot; nothing was pushed and `v` is returned untouched.
    #[inline]
    pub fn push(&mut self, v: T) -> Result<(), T> {
        if self.tail.wrapping_sub(self.cached_head) > self.mask {
            self.cached_head = self.shared.head.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.cached_head) > self.mask {
                return Err(v);
            }
        }
        // SAFETY: `tail - head < capacity`, so the slot of `tail` is free: the consumer has
        // moved its previous item out (the `Acquire` load of `head` that showed this ordered
        // the consumer's read before this write) and will not touch it before we publish `tail`.
        self.shared
            .slot(self.tail, self.mask)
            .with_mut(|p| unsafe { p.write(MaybeUninit::new(v)) });
        self.tail = self.tail.wrapping_add(1);
        self.shared.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Moves as many items as fit from the front of `items` into the ring and publishes them with
    /// a single store. Returns how many were moved (`0` if the ring is full or `items` empty).
    #[inline]
    pub fn push_batch(&mut self, items: &mut VecDeque<T>) -> usize {
        let capacity = self.mask + 1;
        let mut free = capacity - self.tail.wrapping_sub(self.cached_head);
        if free < items.len() {
            self.cached_head = self.shared.head.load(Ordering::Acquire);
            free = capacity - self.tail.wrapping_sub(self.cached_head);
        }
        let n = free.min(items.len());
        if n == 0 {
            return 0;
        }
        let mut tail = self.tail;
        for v in items.drain(..n) {
            // SAFETY: `tail` stays within the `n <= free` slots that are free (see `push`), and
            // none of them is visible to the consumer until the store below.
            self.shared
                .slot(tail, self.mask)
                .with_mut(|p| unsafe { p.write(MaybeUninit::new(v)) });
            tail = tail.wrapping_add(1);
        }
        self.tail = tail;
        self.shared.tail.store(tail, Ordering::Release);
        n
    }

    /// How many items could be pushed right now (a lower bound once this returns: the consumer
    /// may free more slots concurrently).
    #[inline]
    pub fn free_slots(&self) -> usize {
        let head = self.shared.head.load(Ordering::Acquire);
        self.mask + 1 - self.tail.wrapping_sub(head)
    }

    /// The capacity of the ring (the requested one rounded up to a power of two).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// `true` once the [`Consumer`] has been dropped: pushed items will never be popped (they
    /// are dropped when this producer is dropped).
    #[inline]
    pub fn is_abandoned(&self) -> bool {
        self.shared.abandoned.load(Ordering::Acquire)
    }
}

impl<T> Drop for Producer<T> {
    fn drop(&mut self) {
        self.shared.abandoned.store(true, Ordering::Release);
    }
}

impl<T> fmt::Debug for Producer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Producer")
            .field("capacity", &self.capacity())
            .field("free_slots", &self.free_slots())
            .finish_non_exhaustive()
    }
}

/// The popping end of an [`spsc`](self) ring.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Private copy of `shared.head` (the consumer is its only writer).
    head: usize,
    /// Last observed value of `shared.tail`; never ahead of the real one.
    cached_tail: usize,
    mask: usize,
}

// SAFETY: the consumer only moves `T`s out of the ring (so `T: Send` suffices) and there is
// exactly one consumer; the shared counters are atomics. `Consumer` stays `!Sync` because
// `Shared<T>` is `!Sync`.
unsafe impl<T: Send> Send for Consumer<T> {}

impl<T> Consumer<T> {
    /// Pops the oldest item, or `None` if the ring is empty.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.cached_tail {
            self.cached_tail = self.shared.tail.load(Ordering::Acquire);
            if self.head == self.cached_tail {
                return None;
            }
        }
        // SAFETY: `head != tail`, so the slot of `head` holds an item written by the producer
        // before its `Release` store of `tail`, which our `Acquire` load observed. The producer
        // will not reuse the slot before we publish the new `head`, and we move the item out
        // exactly once.
        let v = self
            .shared
            .slot(self.head, self.mask)
            .with(|p| unsafe { p.read().assume_init() });
        self.head = self.head.wrapping_add(1);
        self.shared.head.store(self.head, Ordering::Release);
        Some(v)
    }

    /// Pops up to `max` items, appending them to `out` in FIFO order, and frees their slots with
    /// a single store. Returns how many were popped.
    #[inline]
    pub fn pop_batch(&mut self, out: &mut Vec<T>, max: usize) -> usize {
        let mut avail = self.cached_tail.wrapping_sub(self.head);
        if avail < max {
            self.cached_tail = self.shared.tail.load(Ordering::Acquire);
            avail = self.cached_tail.wrapping_sub(self.head);
        }
        let n = avail.min(max);
        if n == 0 {
            return 0;
        }
        out.reserve(n);
        let mut head = self.head;
        for _ in 0..n {
            // SAFETY: as in `pop`, for each of the `n <= tail - head` published slots.
            let v = self
                .shared
                .slot(head, self.mask)
                .with(|p| unsafe { p.read().assume_init() });
            out.push(v);
            head = head.wrapping_add(1);
        }
        self.head = head;
        self.shared.head.store(head, Ordering::Release);
        n
    }

    /// Pops up to `max` items, handing each to `f` in FIFO order, and frees their slots with a
    /// single store: [`pop_batch`](Consumer::pop_batch) without the intermediate `Vec` (each
    /// item is moved once, out of its slot into `f`). Returns how many were popped. If `f`
    /// panics, the items already handed over stay popped and the rest stay in the ring.
    #[inline]
    pub fn pop_each(&mut self, max: usize, mut f: impl FnMut(T)) -> usize {
        let mut avail = self.cached_tail.wrapping_sub(self.head);
        if avail < max {
            self.cached_tail = self.shared.tail.load(Ordering::Acquire);
            avail = self.cached_tail.wrapping_sub(self.head);
        }
        let n = avail.min(max);
        if n == 0 {
            return 0;
        }
        /// Publishes the consumer's progress when dropped, also while unwinding from `f`, so
        /// a moved-out slot is never read or dropped again.
        struct Publish<'a, T> {
            shared: &'a Shared<T>,
            head: &'a mut usize,
        }
        impl<T> Drop for Publish<'_, T> {
            fn drop(&mut self) {
                self.shared.head.store(*self.head, Ordering::Release);
            }
        }
        let mask = self.mask;
        let progress = Publish {
            shared: &self.shared,
            head: &mut self.head,
        };
        for _ in 0..n {
            let at = *progress.head;
            // SAFETY: as in `pop`, for each of the `n <= tail - head` published slots; the
            // head moves past the slot before `f` runs, so it is read exactly once.
            let v = progress
                .shared
                .slot(at, mask)
                .with(|p| unsafe { p.read().assume_init() });
            *progress.head = at.wrapping_add(1);
            f(v);
        }
        drop(progress);
        n
    }

    /// How many items are in the ring right now (a lower bound once this returns: the producer
    /// may push more concurrently).
    #[inline]
    pub fn len(&self) -> usize {
        self.shared
            .tail
            .load(Ordering::Acquire)
            .wrapping_sub(self.head)
    }

    /// `true` if the ring is empty right now.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head == self.cached_tail && self.len() == 0
    }

    /// The capacity of the ring (the requested one rounded up to a power of two).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.mask + 1
    }

    /// `true` once the [`Producer`] has been dropped: no more items will arrive, but those
    /// already pushed can still be popped.
    #[inline]
    pub fn is_abandoned(&self) -> bool {
        self.shared.abandoned.load(Ordering::Acquire)
    }
}

impl<T> Drop for Consumer<T> {
    fn drop(&mut self) {
        self.shared.abandoned.store(true, Ordering::Release);
    }
}

impl<T> fmt::Debug for Consumer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}
