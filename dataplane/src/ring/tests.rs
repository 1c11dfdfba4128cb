//! Unit and stress tests of the rings and the doorbell (std threads; see `loom_tests.rs` for the
//! model-checked ones).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::{mpsc, round_capacity, spsc, Doorbell, Wake};

/// Stress sizes are cut down in unoptimised builds so that a plain `cargo test` stays fast.
const fn scaled(release: u64) -> u64 {
    if cfg!(debug_assertions) {
        release / 10
    } else {
        release
    }
}

/// Counts how many times values carrying the same counter were dropped.
#[derive(Debug)]
struct DropCounter(Arc<AtomicUsize>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A value that remembers its id and counts its drops, to check that each is dropped exactly once.
#[derive(Debug)]
struct Tracked {
    id: usize,
    drops: Arc<Vec<AtomicUsize>>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops[self.id].fetch_add(1, Ordering::SeqCst);
    }
}

fn tracked(n: usize) -> (Arc<Vec<AtomicUsize>>, impl FnMut(usize) -> Tracked) {
    let drops: Arc<Vec<AtomicUsize>> = Arc::new((0..n).map(|_| AtomicUsize::new(0)).collect());
    let d = drops.clone();
    (drops, move |id| Tracked {
        id,
        drops: d.clone(),
    })
}

fn assert_each_dropped_once(drops: &[AtomicUsize]) {
    for (id, d) in drops.iter().enumerate() {
        assert_eq!(
            d.load(Ordering::SeqCst),
            1,
            "item {id} dropped wrong number of times"
        );
    }
}

#[test]
fn capacity_rounding() {
    assert_eq!(round_capacity(0), 1);
    assert_eq!(round_capacity(1), 1);
    assert_eq!(round_capacity(3), 4);
    assert_eq!(round_capacity(4), 4);
    assert_eq!(round_capacity(5), 8);
    assert_eq!(round_capacity(1000), 1024);
    assert_eq!(spsc::channel::<u8>(5).0.capacity(), 8);
    assert_eq!(spsc::channel::<u8>(5).1.capacity(), 8);
    assert_eq!(mpsc::channel::<u8>(17).0.capacity(), 32);
    assert_eq!(mpsc::channel::<u8>(0).1.capacity(), 1);
}

#[test]
#[should_panic(expected = "too large")]
fn capacity_overflow_panics() {
    round_capacity(usize::MAX);
}

#[test]
fn assert_send_sync() {
    fn send<S: Send>() {}
    fn sync<S: Sync>() {}
    fn clone<S: Clone>() {}
    send::<spsc::Producer<String>>();
    send::<spsc::Consumer<String>>();
    send::<mpsc::Sender<String>>();
    sync::<mpsc::Sender<String>>();
    clone::<mpsc::Sender<String>>();
    send::<mpsc::Receiver<String>>();
    send::<Doorbell>();
    sync::<Doorbell>();
}

// ---------------------------------------------------------------------------------------------
// spsc unit tests

#[test]
fn spsc_full_returns_value() {
    let (mut tx, mut rx) = spsc::channel(4);
    for i in 0..4 {
        assert_eq!(tx.free_slots(), 4 - i);
        tx.push(i.to_string()).unwrap();
    }
    assert_eq!(tx.free_slots(), 0);
    assert_eq!(tx.push("x".to_string()), Err("x".to_string()));
    assert_eq!(rx.len(), 4);
    assert_eq!(rx.pop().as_deref(), Some("0"));
    tx.push("4".to_string()).unwrap();
    assert_eq!(tx.push("y".to_string()), Err("y".to_string()));
}

#[test]
fn spsc_fifo_and_empty() {
    let (mut tx, mut rx) = spsc::channel(8);
    assert!(rx.is_empty());
    assert_eq!(rx.pop(), None);
    for i in 0..8u32 {
        tx.push(i).unwrap();
    }
    assert!(!rx.is_empty());
    for i in 0..8u32 {
        assert_eq!(rx.pop(), Some(i));
    }
    assert!(rx.is_empty());
    assert_eq!(rx.pop(), None);
}

#[test]
fn spsc_wraps_around() {
    let (mut tx, mut rx) = spsc::channel(4);
    let mut next_in = 0u64;
    let mut next_out = 0u64;
    for round in 0..10_000 {
        let k = 1 + round % 4;
        for _ in 0..k {
            tx.push(next_in).unwrap();
            next_in += 1;
        }
        for _ in 0..k {
            assert_eq!(rx.pop(), Some(next_out));
            next_out += 1;
        }
    }
    assert_eq!(rx.pop(), None);
}

#[test]
fn spsc_batches_partial_fit() {
    let (mut tx, mut rx) = spsc::channel(4);
    tx.push(100).unwrap();
    let mut items: VecDeque<i32> = (0..6).collect();
    assert_eq!(tx.push_batch(&mut items), 3);
    assert_eq!(items, [3, 4, 5]);
    assert_eq!(tx.push_batch(&mut items), 0);
    assert_eq!(items.len(), 3);

    let mut out = Vec::new();
    assert_eq!(rx.pop_batch(&mut out, 2), 2);
    assert_eq!(out, [100, 0]);
    assert_eq!(tx.push_batch(&mut items), 2);
    assert_eq!(items, [5]);
    assert_eq!(rx.pop_batch(&mut out, 0), 0);
    assert_eq!(rx.pop_batch(&mut out, 100), 4);
    assert_eq!(out, [100, 0, 1, 2, 3, 4]);
    assert_eq!(rx.pop_batch(&mut out, 100), 0);
    assert_eq!(tx.push_batch(&mut VecDeque::new()), 0);

    // Batches that wrap around the end of the buffer at every possible offset.
    tx.push(-1).unwrap();
    for round in 0..1000 {
        let mut items: VecDeque<i32> = (0..3).map(|i| round * 3 + i).collect();
        assert_eq!(tx.push_batch(&mut items), 3);
        let mut out = Vec::new();
        assert_eq!(rx.pop_batch(&mut out, 8), 4);
        assert_eq!(out, [-1, round * 3, round * 3 + 1, round * 3 + 2]);
        tx.push(-1).unwrap();
    }
}

#[test]
fn spsc_drop_drops_remaining_items_once() {
    let (drops, mut make) = tracked(10);
    let (mut tx, mut rx) = spsc::channel(8);
    for id in 0..8 {
        tx.push(make(id)).unwrap();
    }
    let rejected = tx.push(make(8)).unwrap_err();
    drop(rejected);
    drop(rx.pop()); // id 0
    drop(rx.pop()); // id 1
    tx.push(make(9)).unwrap(); // wraps around
    drop(tx);
    drop(rx);
    assert_each_dropped_once(&drops);

    // Dropped in the other order, ring emptied entirely, and never used.
    let count = Arc::new(AtomicUsize::new(0));
    let (mut tx, rx) = spsc::channel(2);
    tx.push(DropCounter(count.clone())).unwrap();
    drop(rx);
    assert_eq!(count.load(Ordering::SeqCst), 0);
    drop(tx);
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let (tx, rx) = spsc::channel::<DropCounter>(2);
    drop((tx, rx));
}

#[test]
fn spsc_zero_sized_items() {
    let (mut tx, mut rx) = spsc::channel(2);
    tx.push(()).unwrap();
    tx.push(()).unwrap();
    assert_eq!(tx.push(()), Err(()));
    assert_eq!(rx.pop(), Some(()));
    assert_eq!(rx.len(), 1);
}

#[test]
fn spsc_is_abandoned() {
    let (tx, rx) = spsc::channel::<u8>(2);
    assert!(!tx.is_abandoned());
    assert!(!rx.is_abandoned());
    drop(rx);
    assert!(tx.is_abandoned());

    let (mut tx, mut rx) = spsc::channel::<u8>(2);
    tx.push(7).unwrap();
    drop(tx);
    assert!(rx.is_abandoned());
    assert_eq!(rx.pop(), Some(7)); // items pushed before the drop are still there
    assert_eq!(rx.pop(), None);
}

// ---------------------------------------------------------------------------------------------
// mpsc unit tests

#[test]
fn mpsc_full_returns_value() {
    let (tx, mut rx) = mpsc::channel(4);
    let tx2 = tx.clone();
    for i in 0..4 {
        let t = if i % 2 == 0 { &tx } else { &tx2 };
        t.push(i.to_string()).unwrap();
    }
    assert_eq!(tx.push("x".to_string()), Err("x".to_string()));
    assert_eq!(tx2.push("y".to_string()), Err("y".to_string()));
    assert_eq!(rx.len(), 4);
    assert_eq!(rx.pop().as_deref(), Some("0"));
    tx.push("4".to_string()).unwrap();
    assert_eq!(tx.push("z".to_string()), Err("z".to_string()));
}

#[test]
fn mpsc_fifo_and_empty() {
    let (tx, mut rx) = mpsc::channel(8);
    assert!(rx.is_empty());
    assert_eq!(rx.pop(), None);
    for i in 0..8u32 {
        tx.push(i).unwrap();
    }
    assert!(!rx.is_empty());
    assert_eq!(rx.len(), 8);
    for i in 0..8u32 {
        assert_eq!(rx.pop(), Some(i));
    }
    assert!(rx.is_empty());
    assert_eq!(rx.len(), 0);
    assert_eq!(rx.pop(), None);
}

#[test]
fn mpsc_wraps_around() {
    let (tx, mut rx) = mpsc::channel(4);
    let mut next_in = 0u64;
    let mut next_out = 0u64;
    for round in 0..10_000 {
        let k = 1 + round % 4;
        for _ in 0..k {
            tx.push(next_in).unwrap();
            next_in += 1;
        }
        for _ in 0..k {
            assert_eq!(rx.pop(), Some(next_out));
            next_out += 1;
        }
    }
    assert_eq!(rx.pop(), None);
}

#[test]
fn mpsc_batches_partial_fit() {
    let (tx, mut rx) = mpsc::channel(4);
    tx.push(100).unwrap();
    let mut items: VecDeque<i32> = (0..6).collect();
    assert_eq!(tx.push_batch(&mut items), 3);
    assert_eq!(items, [3, 4, 5]);
    assert_eq!(tx.push_batch(&mut items), 0);
    assert_eq!(items.len(), 3);

    let mut out = Vec::new();
    assert_eq!(rx.pop_batch(&mut out, 2), 2);
    assert_eq!(out, [100, 0]);
    assert_eq!(tx.push_batch(&mut items), 2);
    assert_eq!(items, [5]);
    assert_eq!(rx.pop_batch(&mut out, 0), 0);
    assert_eq!(rx.pop_batch(&mut out, 100), 4);
    assert_eq!(out, [100, 0, 1, 2, 3, 4]);
    assert_eq!(rx.pop_batch(&mut out, 100), 0);
    assert_eq!(tx.push_batch(&mut VecDeque::new()), 0);

    // A batch larger than the whole ring fills it exactly.
    let mut big: VecDeque<i32> = (0..10).collect();
    assert_eq!(tx.push_batch(&mut big), 4);
    assert_eq!(big.len(), 6);
    out.clear();
    assert_eq!(rx.pop_batch(&mut out, usize::MAX), 4);
    assert_eq!(out, [0, 1, 2, 3]);
}

#[test]
fn mpsc_drop_drops_remaining_items_once() {
    // Receiver dropped first, senders keep pushing into the orphaned ring.
    let (drops, mut make) = tracked(12);
    let (tx, mut rx) = mpsc::channel(8);
    let tx2 = tx.clone();
    for id in 0..6 {
        tx.push(make(id)).unwrap();
    }
    drop(rx.pop()); // id 0
    drop(rx.pop()); // id 1
    drop(rx);
    let mut batch: VecDeque<Tracked> = (6..12).map(&mut make).collect();
    assert_eq!(tx2.push_batch(&mut batch), 4); // ids 6..10 wrap around
    drop(batch); // ids 10, 11
    drop(tx);
    drop(tx2);
    assert_each_dropped_once(&drops);

    // Senders dropped first.
    let count = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel(2);
    tx.push(DropCounter(count.clone())).unwrap();
    tx.push(DropCounter(count.clone())).unwrap();
    drop(tx);
    assert_eq!(count.load(Ordering::SeqCst), 0);
    drop(rx);
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------------
// doorbell unit tests

#[derive(Default)]
struct CountingWaker(AtomicUsize);

impl Wake for Arc<CountingWaker> {
    fn wake(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn doorbell_rings_only_when_parked() {
    let calls = Arc::new(CountingWaker::default());
    let bell = Doorbell::new(Box::new(calls.clone()));
    assert!(!bell.is_parked());
    assert!(!bell.ring());
    assert!(!bell.ring());
    assert_eq!(bell.wakeups(), 0);
    assert_eq!(calls.0.load(Ordering::SeqCst), 0);

    bell.prepare_park();
    assert!(bell.is_parked());
    assert!(bell.ring());
    assert!(!bell.is_parked());
    assert!(!bell.ring()); // already woken: no second wake-up
    assert_eq!(bell.wakeups(), 1);
    assert_eq!(calls.0.load(Ordering::SeqCst), 1);
    bell.unpark();

    // A cancelled park does not wake.
    bell.prepare_park();
    bell.unpark();
    assert!(!bell.ring());
    assert_eq!(bell.wakeups(), 1);
    assert!(format!("{bell:?}").contains("wakeups: 1"));
}

// ---------------------------------------------------------------------------------------------
// stress tests (bounded: a few seconds at most in release builds)

/// Backs off politely: the machine may have fewer cores than running threads.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 16 {
        std::hint::spin_loop();
    } else {
        thread::yield_now();
    }
}

#[test]
fn stress_spsc_in_order() {
    let n = scaled(10_000_000);
    let (mut tx, mut rx) = spsc::channel::<u64>(1024);
    let producer = thread::spawn(move || {
        let mut i = 0;
        let mut spins = 0;
        while i < n {
            match tx.push(i) {
                Ok(()) => {
                    i += 1;
                    spins = 0;
                }
                Err(_) => backoff(&mut spins),
            }
        }
    });
    let mut expected = 0;
    let mut spins = 0;
    let mut out = Vec::with_capacity(256);
    while expected < n {
        // Mix single pops and batch pops.
        if expected % 3 == 0 {
            if let Some(v) = rx.pop() {
                assert_eq!(v, expected);
                expected += 1;
                spins = 0;
                continue;
            }
        } else if rx.pop_batch(&mut out, 256) > 0 {
            for v in out.drain(..) {
                assert_eq!(v, expected);
                expected += 1;
            }
            spins = 0;
            continue;
        }
        backoff(&mut spins);
    }
    producer.join().unwrap();
    assert_eq!(rx.pop(), None);
    assert!(rx.is_abandoned());
}

#[test]
fn stress_spsc_batches_in_order() {
    let n = scaled(4_000_000);
    let (mut tx, mut rx) = spsc::channel::<u64>(256);
    let producer = thread::spawn(move || {
        let mut next = 0;
        let mut pending = VecDeque::new();
        let mut spins = 0;
        while next < n || !pending.is_empty() {
            while pending.len() < 100 && next < n {
                pending.push_back(next);
                next += 1;
            }
            if tx.push_batch(&mut pending) == 0 {
                backoff(&mut spins);
            } else {
                spins = 0;
            }
        }
    });
    let mut expected = 0;
    let mut out = Vec::new();
    let mut spins = 0;
    while expected < n {
        if rx.pop_batch(&mut out, 77) == 0 {
            backoff(&mut spins);
            continue;
        }
        spins = 0;
        for v in out.drain(..) {
            assert_eq!(v, expected);
            expected += 1;
        }
    }
    producer.join().unwrap();
}

/// Runs `producers` threads each sending `per_producer` values `(id << 32) | seq` through an
/// mpsc ring (singly or in batches) and checks that every value arrives exactly once and in
/// per-producer order.
fn run_mpsc_stress(producers: u64, per_producer: u64, capacity: usize, batch: bool) {
    let (tx, mut rx) = mpsc::channel::<u64>(capacity);
    let handles: Vec<_> = (0..producers)
        .map(|id| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut spins = 0;
                if batch {
                    let mut next = 0;
                    let mut pending = VecDeque::new();
                    while next < per_producer || !pending.is_empty() {
                        // Vary the batch size to exercise partial fits.
                        let want = 1 + (next % 37) as usize;
                        while pending.len() < want && next < per_producer {
                            pending.push_back((id << 32) | next);
                            next += 1;
                        }
                        if tx.push_batch(&mut pending) == 0 {
                            backoff(&mut spins);
                        } else {
                            spins = 0;
                        }
                    }
                } else {
                    for seq in 0..per_producer {
                        let mut v = (id << 32) | seq;
                        while let Err(back) = tx.push(v) {
                            v = back;
                            backoff(&mut spins);
                        }
                        spins = 0;
                    }
                }
            })
        })
        .collect();
    drop(tx);

    let total = producers * per_producer;
    let mut next_seq = vec![0u64; producers as usize];
    let mut received = 0;
    let mut out = Vec::with_capacity(128);
    let mut spins = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received < total {
        if rx.pop_batch(&mut out, 128) == 0 {
            assert!(Instant::now() < deadline, "stalled at {received}/{total}");
            backoff(&mut spins);
            continue;
        }
        spins = 0;
        for v in out.drain(..) {
            let (id, seq) = ((v >> 32) as usize, v & 0xffff_ffff);
            assert_eq!(
                seq, next_seq[id],
                "producer {id}: duplicate, loss or reorder"
            );
            next_seq[id] += 1;
            received += 1;
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    assert!(next_seq.iter().all(|&s| s == per_producer));
    assert!(rx.is_empty());
    assert_eq!(rx.len(), 0);
}

#[test]
fn stress_mpsc_exactly_once_in_order() {
    run_mpsc_stress(4, scaled(1_000_000), 1024, false);
}

#[test]
fn stress_mpsc_small_ring() {
    // A tiny ring keeps the producers racing for the same slots and hitting "full" constantly.
    run_mpsc_stress(3, scaled(200_000), 4, false);
}

#[test]
fn stress_mpsc_batch_push() {
    run_mpsc_stress(4, scaled(1_000_000), 256, true);
}

/// A waker on which the consumer really sleeps (`Condvar`), latched so that a wake-up that comes
/// before the consumer waits is not lost.
#[derive(Default)]
struct CondvarWaker {
    woken: Mutex<bool>,
    cv: Condvar,
}

impl Wake for Arc<CondvarWaker> {
    fn wake(&self) {
        *self.woken.lock().unwrap() = true;
        self.cv.notify_one();
    }
}

impl CondvarWaker {
    /// Sleeps until woken; returns `false` on timeout.
    fn sleep(&self, timeout: Duration) -> bool {
        let guard = self.woken.lock().unwrap();
        let (mut guard, res) = self
            .cv
            .wait_timeout_while(guard, timeout, |woken| !*woken)
            .unwrap();
        *guard = false;
        !res.timed_out()
    }
}

#[test]
fn stress_doorbell_no_stranded_items() {
    const PRODUCERS: u64 = 2;
    let per_producer = scaled(500_000);
    let total = PRODUCERS * per_producer;
    let waker = Arc::new(CondvarWaker::default());
    let bell = Arc::new(Doorbell::new(Box::new(waker.clone())));
    let (tx, mut rx) = mpsc::channel::<u64>(512);

    let handles: Vec<_> = (0..PRODUCERS)
        .map(|id| {
            let (tx, bell) = (tx.clone(), bell.clone());
            thread::spawn(move || {
                for seq in 0..per_producer {
                    let mut v = (id << 32) | seq;
                    while let Err(back) = tx.push(v) {
                        v = back;
                        thread::yield_now();
                    }
                    bell.ring();
                    // Traffic comes in bursts: between them the consumer runs dry and parks.
                    if seq % 256 == 255 {
                        thread::sleep(Duration::from_micros(50));
                    }
                }
            })
        })
        .collect();
    drop(tx);

    let mut next_seq = [0u64; PRODUCERS as usize];
    let mut received = 0;
    let mut prepared = 0u64;
    let mut parks = 0u64;
    let mut out = Vec::with_capacity(256);
    while received < total {
        if rx.pop_batch(&mut out, 256) > 0 {
            for v in out.drain(..) {
                let (id, seq) = ((v >> 32) as usize, v & 0xffff_ffff);
                assert_eq!(seq, next_seq[id]);
                next_seq[id] += 1;
                received += 1;
            }
            continue;
        }
        // Like a real event loop, poll briefly before paying for a sleep.
        if (0..2).any(|_| {
            thread::yield_now();
            !rx.is_empty()
        }) {
            continue;
        }
        bell.prepare_park();
        prepared += 1;
        if !rx.is_empty() {
            bell.unpark();
            continue;
        }
        parks += 1;
        // A lost wake-up would leave us asleep with items in the ring: the producers only ring,
        // they never wake us any other way, so the timeout catches it.
        let woken = waker.sleep(Duration::from_secs(5));
        bell.unpark();
        assert!(
            woken || rx.is_empty(),
            "lost wake-up: consumer slept 5s with items in the ring ({received}/{total})"
        );
        assert!(woken, "consumer never woken ({received}/{total} received)");
    }
    for h in handles {
        h.join().unwrap();
    }
    let wakeups = bell.wakeups();
    println!("{total} items, {prepared} prepare_park, {parks} sleeps, {wakeups} wake-ups");
    assert!(parks > 0, "the test never exercised parking");
    // A wake-up can only answer a `prepare_park` (possibly a cancelled one).
    assert!(
        wakeups <= prepared,
        "{wakeups} wake-ups for {prepared} parks"
    );
    assert!(
        wakeups >= parks,
        "slept {parks} times but only {wakeups} wake-ups"
    );
    assert!(
        wakeups * 8 < total,
        "{wakeups} wake-ups for {total} items: doorbell is not suppressing redundant wake-ups"
    );
}

/// The SPSC push is a plain store, so unlike the MPSC CAS it is no barrier of its own: with
/// the asymmetric protocol only the consumer's `membarrier` keeps a wake-up from being lost.
#[test]
fn stress_doorbell_spsc_no_stranded_items() {
    let total = scaled(1_000_000);
    let waker = Arc::new(CondvarWaker::default());
    let bell = Arc::new(Doorbell::with_membarrier(Box::new(waker.clone())));
    println!("membarrier: {}", bell.uses_membarrier());
    let (mut tx, mut rx) = spsc::channel::<u64>(256);
    let producer = {
        let bell = bell.clone();
        thread::spawn(move || {
            for seq in 0..total {
                let mut v = seq;
                while let Err(back) = tx.push(v) {
                    v = back;
                    thread::yield_now();
                }
                bell.ring();
                if seq % 512 == 511 {
                    thread::sleep(Duration::from_micros(20));
                }
            }
        })
    };
    let (mut next, mut parks) = (0u64, 0u64);
    let mut out = Vec::with_capacity(256);
    while next < total {
        if rx.pop_batch(&mut out, 256) > 0 {
            for v in out.drain(..) {
                assert_eq!(v, next);
                next += 1;
            }
            continue;
        }
        bell.prepare_park();
        if !rx.is_empty() {
            bell.unpark();
            continue;
        }
        parks += 1;
        let woken = waker.sleep(Duration::from_secs(5));
        bell.unpark();
        assert!(
            woken,
            "lost wake-up: slept 5 s with {next}/{total} received (ring empty: {})",
            rx.is_empty()
        );
    }
    producer.join().unwrap();
    println!("{total} items, {parks} sleeps, {} wake-ups", bell.wakeups());
    assert!(parks > 0, "the test never exercised parking");
}

#[test]
fn spsc_pop_each_is_fifo_and_partial() {
    let (mut tx, mut rx) = spsc::channel::<u32>(8);
    for i in 0..6 {
        tx.push(i).unwrap();
    }
    let mut got = Vec::new();
    assert_eq!(rx.pop_each(4, |v| got.push(v)), 4);
    assert_eq!(got, [0, 1, 2, 3]);
    // The freed slots are visible to the producer at once (one store for the batch).
    for i in 6..12 {
        tx.push(i).unwrap();
    }
    assert!(tx.push(99).is_err());
    assert_eq!(rx.pop_each(100, |v| got.push(v)), 8);
    assert_eq!(got, (0..12).collect::<Vec<_>>());
    assert_eq!(rx.pop_each(100, |_| unreachable!()), 0);
}

#[test]
fn spsc_pop_each_panicking_callback_drops_each_item_once() {
    let (drops, mut make) = tracked(6);
    let (mut tx, mut rx) = spsc::channel(8);
    for id in 0..6 {
        tx.push(make(id)).unwrap();
    }
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rx.pop_each(6, |t| {
            if t.id == 2 {
                panic!("callback fails on item 2");
            }
        })
    }));
    assert!(r.is_err());
    // Items 0..=2 were handed over (and dropped by the callback or the unwind); 3..6 remain.
    assert_eq!(rx.len(), 3);
    assert_eq!(rx.pop().map(|t| t.id), Some(3));
    drop(tx);
    drop(rx);
    assert_each_dropped_once(&drops);
}
