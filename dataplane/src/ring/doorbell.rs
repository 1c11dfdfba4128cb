//! Wake-ups that fire only when the consumer is actually parked.
//!
//! A consumer thread (an event loop) drains its rings and, when they are all empty, goes to
//! sleep in its poller. Producers must wake it after pushing, but a wake-up (an `eventfd`
//! write, a `mio::Waker`, a futex) is a system call on both sides; doing it after every push
//! cost Ceph's AsyncMessenger ~15% IOPS. [`Doorbell`] keeps a `parked` flag so that a producer
//! only calls the [`Wake`] implementation when the consumer has announced that it is about to
//! sleep.
//!
//! # The park protocol
//!
//! It is Dekker's mutual-exclusion pattern: each side stores its own flag, executes a `SeqCst`
//! fence, then loads the other side's flag.
//!
//! | producer (any thread)                | consumer (the ring's owner)                        |
//! |--------------------------------------|----------------------------------------------------|
//! | 1. publish the item (`push`)         | 1. [`prepare_park`](Doorbell::prepare_park): store `parked = true`, `SeqCst` fence |
//! | 2. [`ring`](Doorbell::ring): `SeqCst` fence, load `parked` | 2. re-check **every** ring it serves |
//! | 3. if parked: clear it, `wake()`     | 3. something there → [`unpark`](Doorbell::unpark) and process it; nothing → sleep until woken, then [`unpark`](Doorbell::unpark) |
//!
//! A doorbell made with [`Doorbell::with_membarrier`] makes the two fences asymmetric on Linux
//! (see `barrier`): the consumer, which should park rarely, calls `membarrier(2)`, which
//! forces a full barrier on every running thread of the process, so the producer, which rings
//! on every push, needs only a compiler fence. Otherwise (and without `membarrier`) both sides
//! use a `SeqCst` fence, as described here.
//!
//! The two `SeqCst` fences are totally ordered. If the producer's fence comes first, the
//! consumer's re-check (after its fence) sees the item; if the consumer's fence comes first, the
//! producer's load of `parked` (after its fence) sees `true` and it wakes the consumer. Either
//! way an item can never be left in a ring while the consumer sleeps without a wake-up pending.
//! A wake-up may be redundant (both sides saw each other: the consumer found the item *and* got
//! woken), never lost. The `loom` models `loom_doorbell_no_lost_wakeup*` check exactly this, and
//! `loom_doorbell_without_fences_loses_wakeups` shows that it catches the bug when the fences are
//! missing.
//!
//! Rules for callers:
//!
//! * a producer calls [`ring`](Doorbell::ring) after **every** push (or batch push) that a
//!   parked consumer must see; the call is cheap (a load of a cache line that only changes
//!   when the consumer parks, and a compiler fence, or a `SeqCst` fence without `membarrier`)
//!   unless it actually wakes;
//! * the consumer must re-check all its rings between [`prepare_park`](Doorbell::prepare_park)
//!   and sleeping, and the [`Wake`] implementation must make a wake-up that happens *before* the
//!   consumer starts sleeping count (an `eventfd` counter, a latched flag, a `thread::unpark`
//!   token all do).
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use dataplane::ring::{spsc, Doorbell, Wake};
//!
//! struct Unparker(std::thread::Thread);
//! impl Wake for Unparker {
//!     fn wake(&self) {
//!         self.0.unpark();
//!     }
//! }
//!
//! let (mut tx, mut rx) = spsc::channel::<u32>(16);
//! let bell = Arc::new(Doorbell::new(Box::new(Unparker(std::thread::current()))));
//! let producer = {
//!     let bell = Arc::clone(&bell);
//!     std::thread::spawn(move || {
//!         for i in 0..100 {
//!             while tx.push(i).is_err() {
//!                 std::thread::yield_now();
//!             }
//!             bell.ring();
//!         }
//!     })
//! };
//! let mut next = 0;
//! while next < 100 {
//!     if let Some(v) = rx.pop() {
//!         assert_eq!(v, next);
//!         next += 1;
//!         continue;
//!     }
//!     bell.prepare_park();
//!     if rx.is_empty() {
//!         std::thread::park(); // may return spuriously: the loop re-checks
//!     }
//!     bell.unpark();
//! }
//! producer.join().unwrap();
//! assert!(bell.wakeups() <= 100);
//! ```

use std::fmt;

use crossbeam_utils::CachePadded;

use super::barrier;
use super::sync::{AtomicBool, AtomicU64, Ordering};

/// What actually wakes a parked consumer (the event loop implements it with an `eventfd` /
/// `mio::Waker`).
///
/// A wake-up delivered before the consumer actually starts sleeping must not be lost: the sleep
/// must then return immediately.
pub trait Wake: Send + Sync {
    /// Wakes the consumer (or makes its next sleep return at once).
    fn wake(&self);
}

/// A wake-up that fires only when the consumer is actually parked (redundant wake-ups cost Ceph
/// ~15% IOPS). See the [module documentation](self) for the protocol.
///
/// Share it between the producers and the consumer (e.g. in an `Arc`); it is `Send + Sync`.
pub struct Doorbell {
    /// `true` between the consumer's `prepare_park` and the first `ring` / `unpark` after it.
    parked: CachePadded<AtomicBool>,
    waker: Box<dyn Wake>,
    /// How many times `ring` called the waker.
    wakeups: AtomicU64,
    /// The asymmetric (membarrier) protocol is in use for this doorbell.
    asymmetric: bool,
}

impl Doorbell {
    /// Creates a doorbell that calls `waker` when it has to wake the consumer. The consumer
    /// starts out not parked.
    pub fn new(waker: Box<dyn Wake>) -> Doorbell {
        Doorbell {
            parked: CachePadded::new(AtomicBool::new(false)),
            waker,
            wakeups: AtomicU64::new(0),
            asymmetric: false,
        }
    }

    /// Like [`new`](Doorbell::new), but with the asymmetric protocol where the kernel has
    /// `membarrier(2)`: a ring then costs the producer no fence, and every park costs the
    /// consumer a `membarrier` system call (an inter-processor interrupt to each core running
    /// a thread of the process). Worth it when producers ring far more often than the consumer
    /// parks (it spins a while before parking); not for an event loop that parks whenever it
    /// runs dry (a messenger worker receiving a stream spent ~9% of its time in `membarrier`).
    pub fn with_membarrier(waker: Box<dyn Wake>) -> Doorbell {
        barrier::init();
        Doorbell {
            asymmetric: barrier::asymmetric(),
            ..Doorbell::new(waker)
        }
    }

    /// True when this doorbell uses the asymmetric (`membarrier`) park protocol, false when
    /// both sides use `SeqCst` fences.
    pub fn uses_membarrier(&self) -> bool {
        self.asymmetric
    }

    /// Producer side, call after pushing: a barrier, then if the consumer is parked, clear
    /// the flag and call [`Wake::wake`]. Returns `true` if it woke the consumer.
    ///
    /// When several producers ring at once, only one of them wakes the consumer.
    #[inline]
    pub fn ring(&self) -> bool {
        // Orders the caller's publication of its item before the load of `parked`; pairs with
        // the barrier in `prepare_park` (a compiler fence where that one is a membarrier, see
        // `barrier`).
        barrier::light(self.asymmetric);
        // Plain load first so the common case (consumer running) does not take the cache line
        // exclusively; the swap makes sure only one producer wakes the consumer.
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            self.waker.wake();
            true
        } else {
            false
        }
    }

    /// Consumer side, before sleeping: sets `parked` (`SeqCst` store and fence). The consumer
    /// **must** then re-check its rings and call [`unpark`](Doorbell::unpark) instead of
    /// sleeping if anything is there.
    #[inline]
    pub fn prepare_park(&self) {
        // A swap rather than a store: see `unpark`. (A `SeqCst` store is an `xchg` on x86
        // anyway.)
        self.parked.swap(true, Ordering::SeqCst);
        // Orders the store of `parked` before the caller's re-check of its rings; pairs with the
        // barrier in `ring`. With membarrier this also orders every producer's push before its
        // load of `parked` (see `barrier`), which is what lets `ring` skip its fence.
        barrier::heavy(self.asymmetric);
    }

    /// Consumer side, after waking or when cancelling a park.
    #[inline]
    pub fn unpark(&self) {
        // Every write to `parked` is a read-modify-write, so all of them are totally ordered in
        // a way loom models faithfully (loom does not place a plain store before a concurrent
        // RMW in modification order and would report false lost wake-ups). This is the park
        // path, not the ring's hot path, so the locked instruction costs nothing that matters.
        self.parked.swap(false, Ordering::Release);
    }

    /// `true` if the consumer has called [`prepare_park`](Doorbell::prepare_park) and has been
    /// neither woken nor unparked since.
    #[inline]
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Acquire)
    }

    /// How many times [`ring`](Doorbell::ring) actually fired the waker (for tests and metrics).
    #[inline]
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Doorbell")
            .field("parked", &self.is_parked())
            .field("wakeups", &self.wakeups())
            .finish_non_exhaustive()
    }
}
