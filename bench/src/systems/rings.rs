//! Cross-thread ring baselines: `dataplane::ring` vs `rtrb` and crossbeam's `ArrayQueue`.
//!
//! All rings run in the same harness: producer threads push 64-byte commands as fast
//! as they can (spinning, then yielding, while the ring is full); one consumer thread
//! drains in batches of up to [`BATCH`]. Only the dataplane ring has a doorbell, and
//! it is measured *with* its wake-up protocol (`Doorbell::with_membarrier`: the asymmetric
//! variant, for consumers that spin before parking): producers call `doorbell.ring()` after
//! every push, and the consumer polls an empty ring for [`SPIN_BEFORE_PARK`] (spinning, and
//! yielding every [`POLLS_PER_CLOCK_CHECK`] polls) before parking
//! through `prepare_park` / re-check / park / `unpark`. The baselines' consumer spins
//! and yields the same way but never parks. The rate is commands consumed per second of wall clock.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Barrier, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use crossbeam::queue::ArrayQueue;
use dataplane::ring::doorbell::{Doorbell, Wake};

use crate::measure::Throughput;
use crate::row::Row;
use crate::suite::{FnSystem, Workload};

/// System name of the dataplane rings.
pub const DATAPLANE: &str = "dataplane-ring";
/// System name of `rtrb`.
pub const RTRB: &str = "rtrb";
/// System name of crossbeam's `ArrayQueue`.
pub const ARRAY_QUEUE: &str = "crossbeam-arrayqueue";

/// Suite entry: `dataplane::ring` (`ring-spsc` and `ring-mpsc`).
pub const DATAPLANE_SYSTEM: FnSystem = FnSystem {
    name: DATAPLANE,
    supports: |w, _| w.is_ring(),
    run: |w, p| {
        run(
            RingKind::Dataplane,
            w == Workload::RingMpsc,
            p.connections,
            p.duration,
        )
    },
};

/// Suite entry: `rtrb` (`ring-spsc` only).
pub const RTRB_SYSTEM: FnSystem = FnSystem {
    name: RTRB,
    supports: |w, _| w == Workload::RingSpsc,
    run: |_, p| run(RingKind::Rtrb, false, p.connections, p.duration),
};

/// Suite entry: crossbeam `ArrayQueue` (`ring-spsc` and `ring-mpsc`).
pub const ARRAY_QUEUE_SYSTEM: FnSystem = FnSystem {
    name: ARRAY_QUEUE,
    supports: |w, _| w.is_ring(),
    run: |w, p| {
        run(
            RingKind::ArrayQueue,
            w == Workload::RingMpsc,
            p.connections,
            p.duration,
        )
    },
};

/// Slots of every ring.
pub const CAPACITY: usize = 1024;
/// Most commands the consumer takes per poll.
pub const BATCH: usize = 64;
/// How long the consumer polls an empty ring (spinning [`POLLS_PER_CLOCK_CHECK`]
/// times between yields) before parking (dataplane) or just going on yielding
/// (baselines, which have no way to sleep).
pub const SPIN_BEFORE_PARK: Duration = Duration::from_micros(50);
/// Empty polls between two looks at the clock while spinning.
pub const POLLS_PER_CLOCK_CHECK: u32 = 64;
/// Failed pushes the producer spins through before yielding.
const SPIN_WHEN_FULL: u32 = 64;

/// One 64-byte command.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
pub struct Command {
    /// Payload; the first 8 bytes carry a sequence number.
    pub bytes: [u8; 64],
}

impl Command {
    fn new(seq: u64) -> Self {
        let mut bytes = [0u8; 64];
        bytes[..8].copy_from_slice(&seq.to_le_bytes());
        Self { bytes }
    }

    fn seq(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes[..8]);
        u64::from_le_bytes(b)
    }
}

/// Which ring implementation to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingKind {
    /// `dataplane::ring::spsc` / `dataplane::ring::mpsc` with the doorbell.
    Dataplane,
    /// `rtrb::RingBuffer` (SPSC only).
    Rtrb,
    /// `crossbeam::queue::ArrayQueue` (SPSC or MPSC use).
    ArrayQueue,
}

/// Sending half as the harness sees it.
trait Tx: Send {
    fn try_push(&mut self, cmd: Command) -> Result<(), Command>;
}

/// Receiving half: pops up to `max` commands, folding their sequence numbers into `sum`.
trait Rx: Send {
    fn drain(&mut self, max: usize, sum: &mut u64) -> usize;
}

struct DpSpscTx(dataplane::ring::spsc::Producer<Command>);
impl Tx for DpSpscTx {
    fn try_push(&mut self, cmd: Command) -> Result<(), Command> {
        self.0.push(cmd)
    }
}

struct DpSpscRx(dataplane::ring::spsc::Consumer<Command>);
impl Rx for DpSpscRx {
    fn drain(&mut self, max: usize, sum: &mut u64) -> usize {
        self.0.pop_each(max, |c| *sum = sum.wrapping_add(c.seq()))
    }
}

struct DpMpscTx(dataplane::ring::mpsc::Sender<Command>);
impl Tx for DpMpscTx {
    fn try_push(&mut self, cmd: Command) -> Result<(), Command> {
        self.0.push(cmd)
    }
}

struct DpMpscRx(dataplane::ring::mpsc::Receiver<Command>, Vec<Command>);
impl Rx for DpMpscRx {
    fn drain(&mut self, max: usize, sum: &mut u64) -> usize {
        self.1.clear();
        let n = self.0.pop_batch(&mut self.1, max);
        for c in &self.1 {
            *sum = sum.wrapping_add(c.seq());
        }
        n
    }
}

struct RtrbTx(rtrb::Producer<Command>);
impl Tx for RtrbTx {
    fn try_push(&mut self, cmd: Command) -> Result<(), Command> {
        self.0.push(cmd).map_err(|rtrb::PushError::Full(c)| c)
    }
}

struct RtrbRx(rtrb::Consumer<Command>);
impl Rx for RtrbRx {
    fn drain(&mut self, max: usize, sum: &mut u64) -> usize {
        let n = self.0.slots().min(max);
        if n == 0 {
            return 0;
        }
        match self.0.read_chunk(n) {
            Ok(chunk) => {
                for c in chunk {
                    *sum = sum.wrapping_add(c.seq());
                }
                n
            }
            Err(_) => 0,
        }
    }
}

struct AqTx(Arc<ArrayQueue<Command>>);
impl Tx for AqTx {
    fn try_push(&mut self, cmd: Command) -> Result<(), Command> {
        self.0.push(cmd)
    }
}

struct AqRx(Arc<ArrayQueue<Command>>);
impl Rx for AqRx {
    fn drain(&mut self, max: usize, sum: &mut u64) -> usize {
        let mut n = 0;
        while n < max {
            match self.0.pop() {
                Some(c) => {
                    *sum = sum.wrapping_add(c.seq());
                    n += 1;
                }
                None => break,
            }
        }
        n
    }
}

/// Wakes the consumer thread (registered once it starts).
struct ThreadWaker(Arc<OnceLock<Thread>>);
impl Wake for ThreadWaker {
    fn wake(&self) {
        if let Some(t) = self.0.get() {
            t.unpark();
        }
    }
}

/// Result of one harness run.
struct Outcome {
    consumed: u64,
    produced: u64,
    checksum: u64,
    expected_checksum: u64,
    elapsed: Duration,
}

/// Runs `producers` against `rx` for `duration`. With a doorbell, producers ring it
/// after every push and the consumer parks through it when idle.
fn harness(
    producers: Vec<Box<dyn Tx>>,
    mut rx: Box<dyn Rx>,
    doorbell: Option<(Arc<Doorbell>, Arc<OnceLock<Thread>>)>,
    duration: Duration,
) -> Result<Outcome> {
    let n_producers = producers.len() as u32;
    let stop = AtomicBool::new(false);
    let running = AtomicU32::new(n_producers);
    let barrier = Barrier::new(producers.len() + 2);
    std::thread::scope(|s| {
        let consumer = s.spawn(|| {
            if let Some((_, slot)) = &doorbell {
                let _ = slot.set(std::thread::current());
            }
            barrier.wait();
            let (mut consumed, mut sum, mut idle) = (0u64, 0u64, 0u32);
            let mut idle_since: Option<Instant> = None;
            loop {
                let n = rx.drain(BATCH, &mut sum);
                if n > 0 {
                    consumed += n as u64;
                    idle = 0;
                    idle_since = None;
                    continue;
                }
                if running.load(Ordering::Acquire) == 0 {
                    // Producers are gone; take what is left.
                    loop {
                        let n = rx.drain(BATCH, &mut sum);
                        if n == 0 {
                            break;
                        }
                        consumed += n as u64;
                    }
                    break;
                }
                idle += 1;
                spin_loop();
                if idle % POLLS_PER_CLOCK_CHECK != 0 {
                    continue;
                }
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() < SPIN_BEFORE_PARK {
                    // Let a producer sharing this core run (a no-op when it has its own).
                    std::thread::yield_now();
                    continue;
                }
                idle = 0;
                idle_since = None;
                match &doorbell {
                    Some((bell, _)) => {
                        bell.prepare_park();
                        let n = rx.drain(BATCH, &mut sum);
                        if n > 0 || running.load(Ordering::Acquire) == 0 {
                            bell.unpark();
                            consumed += n as u64;
                            continue;
                        }
                        // The timeout only bounds a run if a wake-up were ever lost.
                        std::thread::park_timeout(Duration::from_millis(10));
                        bell.unpark();
                    }
                    None => std::thread::yield_now(),
                }
            }
            (consumed, sum, Instant::now())
        });
        let producer_handles: Vec<_> = producers
            .into_iter()
            .enumerate()
            .map(|(id, mut tx)| {
                let (stop, running, barrier, bell) = (&stop, &running, &barrier, &doorbell);
                s.spawn(move || {
                    barrier.wait();
                    let (mut seq, mut sum) = (0u64, 0u64);
                    // Sequence numbers are unique per producer: id in the top bits.
                    let base = (id as u64) << 48;
                    'outer: while !stop.load(Ordering::Relaxed) {
                        let mut cmd = Command::new(base | seq);
                        let mut spins = 0u32;
                        loop {
                            match tx.try_push(cmd) {
                                Ok(()) => break,
                                Err(back) => {
                                    cmd = back;
                                    if let Some((b, _)) = bell {
                                        b.ring();
                                    }
                                    spins += 1;
                                    if spins < SPIN_WHEN_FULL {
                                        spin_loop();
                                    } else {
                                        if stop.load(Ordering::Relaxed) {
                                            break 'outer;
                                        }
                                        std::thread::yield_now();
                                    }
                                }
                            }
                        }
                        if let Some((b, _)) = bell {
                            b.ring();
                        }
                        sum = sum.wrapping_add(base | seq);
                        seq += 1;
                    }
                    drop(tx);
                    running.fetch_sub(1, Ordering::AcqRel);
                    if let Some((b, _)) = bell {
                        b.ring();
                    }
                    (seq, sum)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        std::thread::sleep(duration);
        stop.store(true, Ordering::Relaxed);
        let (mut produced, mut expected_checksum) = (0u64, 0u64);
        for h in producer_handles {
            let (n, sum) = h.join().map_err(|_| anyhow!("producer thread panicked"))?;
            produced += n;
            expected_checksum = expected_checksum.wrapping_add(sum);
        }
        if let Some((bell, _)) = &doorbell {
            bell.ring();
        }
        let (consumed, checksum, end) = consumer
            .join()
            .map_err(|_| anyhow!("consumer thread panicked"))?;
        Ok(Outcome {
            consumed,
            produced,
            checksum,
            expected_checksum,
            elapsed: end - start,
        })
    })
}

/// Measures one ring row: `kind`, SPSC or MPSC with `producers` producer threads.
pub fn run(kind: RingKind, mpsc: bool, producers: u32, duration: Duration) -> Result<Row> {
    let producers = if mpsc { producers.max(1) } else { 1 };
    let (system, workload) = match kind {
        RingKind::Dataplane => (DATAPLANE, if mpsc { "ring-mpsc" } else { "ring-spsc" }),
        RingKind::Rtrb => (RTRB, "ring-spsc"),
        RingKind::ArrayQueue => (ARRAY_QUEUE, if mpsc { "ring-mpsc" } else { "ring-spsc" }),
    };
    let mut doorbell_used = None;
    let outcome = match (kind, mpsc) {
        (RingKind::Dataplane, _) => {
            let slot = Arc::new(OnceLock::new());
            let bell = Arc::new(Doorbell::with_membarrier(Box::new(ThreadWaker(
                Arc::clone(&slot),
            ))));
            doorbell_used = Some(Arc::clone(&bell));
            let (txs, rx): (Vec<Box<dyn Tx>>, Box<dyn Rx>) = if mpsc {
                let (tx, rx) = dataplane::ring::mpsc::channel::<Command>(CAPACITY);
                let txs = (0..producers)
                    .map(|_| Box::new(DpMpscTx(tx.clone())) as Box<dyn Tx>)
                    .collect();
                (txs, Box::new(DpMpscRx(rx, Vec::with_capacity(BATCH))))
            } else {
                let (tx, rx) = dataplane::ring::spsc::channel::<Command>(CAPACITY);
                (vec![Box::new(DpSpscTx(tx))], Box::new(DpSpscRx(rx)))
            };
            harness(txs, rx, Some((bell, slot)), duration)?
        }
        (RingKind::Rtrb, true) => bail!("rtrb is single-producer only"),
        (RingKind::Rtrb, false) => {
            let (tx, rx) = rtrb::RingBuffer::<Command>::new(CAPACITY);
            harness(
                vec![Box::new(RtrbTx(tx))],
                Box::new(RtrbRx(rx)),
                None,
                duration,
            )?
        }
        (RingKind::ArrayQueue, _) => {
            let q = Arc::new(ArrayQueue::<Command>::new(CAPACITY));
            let txs = (0..producers)
                .map(|_| Box::new(AqTx(Arc::clone(&q))) as Box<dyn Tx>)
                .collect();
            harness(txs, Box::new(AqRx(q)), None, duration)?
        }
    };
    if outcome.consumed != outcome.produced || outcome.checksum != outcome.expected_checksum {
        bail!(
            "{system}: consumed {} commands (checksum {:#x}) but {} were produced (checksum {:#x})",
            outcome.consumed,
            outcome.checksum,
            outcome.produced,
            outcome.expected_checksum
        );
    }
    let mut row = Row::new(system, workload, std::mem::size_of::<Command>(), producers);
    Throughput {
        messages: outcome.consumed,
        bytes: outcome.consumed * std::mem::size_of::<Command>() as u64,
        elapsed: outcome.elapsed,
    }
    .fill(&mut row);
    if let Some(bell) = doorbell_used {
        row.note = Some(format!("{} doorbell wake-ups", bell.wakeups()));
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_64_bytes() {
        assert_eq!(std::mem::size_of::<Command>(), 64);
        assert_eq!(Command::new(42).seq(), 42);
    }

    #[test]
    fn every_ring_runs() {
        let d = Duration::from_millis(50);
        for (kind, mpsc) in [
            (RingKind::Dataplane, false),
            (RingKind::Dataplane, true),
            (RingKind::Rtrb, false),
            (RingKind::ArrayQueue, false),
            (RingKind::ArrayQueue, true),
        ] {
            let row = run(kind, mpsc, 2, d).unwrap();
            assert!(row.msgs_per_sec.unwrap() > 0.0, "{kind:?}");
            assert_eq!(row.connections, if mpsc { 2 } else { 1 });
        }
        assert!(run(RingKind::Rtrb, true, 2, d).is_err());
    }
}
