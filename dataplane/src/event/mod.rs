//! Per-worker event loop (Ceph's `EventCenter`): file events on epoll (through `mio`), timers,
//! external events (commands arriving on a ring, announced by a [`Doorbell`] that only fires an
//! eventfd when the loop is really parked) and pollers (busy-poll hooks for stacks that have no
//! file descriptor to wait on, such as DPDK queues or RDMA completion queues).
//!
//! The loop never calls back into user code: [`EventCenter::wait`] fills a list of [`Fired`]
//! events and the owner (a messenger worker) handles them. That keeps borrowing simple and the
//! order of work explicit.

mod timer;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Registry, Token, Waker};

use crate::ring::{Doorbell, Wake};

pub use timer::Timers;

/// Token reserved for the loop's own eventfd waker.
pub const WAKER_TOKEN: Token = Token(usize::MAX);

/// Something the loop noticed, handed back to the owner of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fired {
    /// A registered source (socket, listener, completion channel) became ready.
    File {
        /// The token the source was registered with.
        token: Token,
        /// Readable (or a peer hang-up, which a read reports as EOF).
        readable: bool,
        /// Writable.
        writable: bool,
        /// The source reported an error condition.
        error: bool,
        /// The peer closed its side (or the source failed): read until end of stream.
        closed: bool,
        /// Reported by a [`Poller`] (a queue or completion queue it polled), not by the
        /// kernel for one of the files registered under `token`.
        polled: bool,
    },
    /// A timer added with [`EventCenter::add_timer`] is due.
    Timer {
        /// The key given when the timer was added.
        key: u64,
    },
}

/// A busy-poll hook run on every loop iteration (DPDK RX queues, RDMA CQs).
pub trait Poller: Send {
    /// Polls once. Returns `true` if it found work, which keeps the loop spinning instead of
    /// sleeping. It may report readiness through `ready`. `now` is the loop's clock for this
    /// round, read once for every poller and the worker (a clock read is a system call and a
    /// timer-chip access on machines without a usable TSC, such as emulated VMs).
    fn poll(&mut self, now: Instant, ready: &mut Vec<Fired>) -> bool;

    /// The longest the loop may sleep before this poller must run again (`None`: no limit).
    /// A poller with no file descriptor to wake the loop (a DPDK queue) backs off with this
    /// instead of spinning when idle. Defaults to `None`.
    fn max_wait(&self) -> Option<Duration> {
        None
    }
}

/// The eventfd-backed waker that a [`Doorbell`] uses to interrupt `epoll_wait`.
struct MioWake(Waker);

impl Wake for MioWake {
    fn wake(&self) {
        if let Err(e) = self.0.wake() {
            tracing::error!(error = %e, "event loop wake-up failed");
        }
    }
}

/// Tuning of one event loop.
#[derive(Debug, Clone, Copy)]
pub struct EventConfig {
    /// Maximum events taken from epoll per wait.
    pub max_events: usize,
    /// Spin this long looking for external work before parking (0 = park at once).
    pub busy_poll: Duration,
}

impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            max_events: 1024,
            busy_poll: Duration::ZERO,
        }
    }
}

/// One worker's event loop.
pub struct EventCenter {
    poll: Poll,
    events: Events,
    doorbell: Arc<Doorbell>,
    timers: Timers,
    pollers: Vec<Box<dyn Poller>>,
    cfg: EventConfig,
    parks: u64,
    /// `epoll_wait` calls made (parked or not).
    file_polls: u64,
    /// Consecutive rounds in which a poller had work.
    busy_rounds: u32,
    /// The clock at the end of the last round.
    now: Instant,
}

/// While a poller is busy, the files are looked at (a zero-timeout `epoll_wait`) once every
/// this many rounds, not in every round. A busy-polling stack has no file to wait for on its
/// data path (DPDK has none but the waker, whose commands `has_external` sees without a system
/// call; RDMA polls its completion queue), so a system call per poll round would only burn the
/// core; file events (a side-channel socket, a timer-less wake-up) wait at most this many
/// rounds, a few tens of microseconds.
pub const FILES_EVERY_BUSY_ROUNDS: u32 = 32;

impl EventCenter {
    /// Creates the loop with its epoll instance and eventfd waker.
    pub fn new(cfg: EventConfig) -> io::Result<EventCenter> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN)?;
        let doorbell = Arc::new(Doorbell::new(Box::new(MioWake(waker))));
        Ok(EventCenter {
            poll,
            events: Events::with_capacity(cfg.max_events.max(16)),
            doorbell,
            timers: Timers::default(),
            pollers: Vec::new(),
            cfg,
            parks: 0,
            file_polls: 0,
            busy_rounds: 0,
            now: Instant::now(),
        })
    }

    /// The registry to (de)register file sources with.
    pub fn registry(&self) -> &Registry {
        self.poll.registry()
    }

    /// The doorbell producers ring after putting work on this loop's rings.
    pub fn doorbell(&self) -> &Arc<Doorbell> {
        &self.doorbell
    }

    /// Schedules a timer; when due, [`Fired::Timer`] carries `key`. Timers cannot be
    /// cancelled: owners check their own deadlines when one fires, so a stale timer is harmless.
    pub fn add_timer(&mut self, at: Instant, key: u64) {
        self.timers.add(at, key);
    }

    /// Adds a busy-poll hook.
    pub fn add_poller(&mut self, p: Box<dyn Poller>) {
        self.pollers.push(p);
    }

    /// The clock as of the end of the last [`wait`](EventCenter::wait): read once per round
    /// (again only after the loop slept or spun), so the owner of the loop need not read it.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// How many times the loop parked in `epoll_wait` (for metrics and tests).
    pub fn parks(&self) -> u64 {
        self.parks
    }

    /// How many times the loop called `epoll_wait`, parked or not (for metrics and tests).
    pub fn file_polls(&self) -> u64 {
        self.file_polls
    }

    /// Runs one iteration: pollers, then epoll (blocking only if nothing is pending and
    /// `has_external` says the command rings are empty), then due timers. Fired events are
    /// appended to `out`. `max_wait` caps the sleep.
    pub fn wait(
        &mut self,
        out: &mut Vec<Fired>,
        max_wait: Option<Duration>,
        has_external: &dyn Fn() -> bool,
    ) -> io::Result<()> {
        let now = Instant::now();
        self.now = now;
        let mut busy = false;
        for p in &mut self.pollers {
            busy |= p.poll(now, out);
        }
        let mut timeout = self
            .timers
            .next_due()
            .map(|t| t.saturating_duration_since(now));
        let pollers_wait = self.pollers.iter().filter_map(|p| p.max_wait()).min();
        for m in max_wait.into_iter().chain(pollers_wait) {
            timeout = Some(timeout.map_or(m, |t| t.min(m)));
        }
        if busy || !out.is_empty() || has_external() {
            timeout = Some(Duration::ZERO);
        } else if !self.cfg.busy_poll.is_zero() {
            let spin_until = now + self.cfg.busy_poll;
            while Instant::now() < spin_until && !has_external() {
                std::hint::spin_loop();
            }
            self.now = Instant::now();
            if has_external() {
                timeout = Some(Duration::ZERO);
            }
        }
        let parking = timeout != Some(Duration::ZERO);
        if parking {
            // Dekker-style park: announce, then re-check; a producer that pushed before seeing
            // the flag is caught by the re-check, one that pushed after rings the eventfd.
            self.doorbell.prepare_park();
            if has_external() {
                timeout = Some(Duration::ZERO);
            } else {
                self.parks += 1;
            }
        }
        if busy {
            self.busy_rounds = self.busy_rounds.wrapping_add(1);
            if !parking && !self.busy_rounds.is_multiple_of(FILES_EVERY_BUSY_ROUNDS) {
                self.timers.pop_due(now, out);
                return Ok(());
            }
        } else {
            self.busy_rounds = 0;
        }
        self.file_polls += 1;
        let res = self.poll.poll(&mut self.events, timeout);
        if parking {
            self.doorbell.unpark();
        }
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            if ev.token() == WAKER_TOKEN {
                continue;
            }
            out.push(Fired::File {
                token: ev.token(),
                readable: ev.is_readable() || ev.is_read_closed(),
                writable: ev.is_writable(),
                error: ev.is_error(),
                closed: ev.is_read_closed() || ev.is_error(),
                polled: false,
            });
        }
        if timeout != Some(Duration::ZERO) {
            // The loop may have slept: the clock moved.
            self.now = Instant::now();
        }
        self.timers.pop_due(self.now, out);
        Ok(())
    }
}

impl std::fmt::Debug for EventCenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventCenter")
            .field("timers", &self.timers.len())
            .field("pollers", &self.pollers.len())
            .field("parks", &self.parks)
            .finish()
    }
}

/// Pins the calling thread to `core` (an index into the machine's core list).
pub fn pin_to_core(core: usize) -> bool {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => {
            let id = ids[core % ids.len()];
            core_affinity::set_for_current(id)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
