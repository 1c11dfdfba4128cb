//! Deterministic fault injection for tests (Ceph's `ms_inject_socket_failures` and
//! `ms_inject_delay_*`).

use std::time::Duration;

use crate::config::FaultInjection;

/// Fails one socket operation in `one_in` and delays one read in `delay_one_in`, from a
/// seeded generator, so a test run can be replayed exactly.
#[derive(Debug, Clone)]
pub(crate) struct FaultInjector {
    one_in: u32,
    delay_one_in: u32,
    delay_max_ms: u64,
    state: u64,
}

impl FaultInjector {
    pub(crate) fn new(cfg: &FaultInjection, worker: usize) -> FaultInjector {
        FaultInjector {
            one_in: cfg.socket_failures,
            delay_one_in: cfg.delays,
            delay_max_ms: cfg.delay_max_ms.max(1),
            state: cfg.seed ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// xorshift64*: cheap, deterministic, good enough to spread faults.
    fn next(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
    }

    /// True when this operation must fail.
    #[inline]
    pub(crate) fn should_fail(&mut self) -> bool {
        if self.one_in == 0 {
            return false;
        }
        self.next().is_multiple_of(u64::from(self.one_in))
    }

    /// How long to hold back this read, if at all.
    #[inline]
    pub(crate) fn delay(&mut self) -> Option<Duration> {
        if self.delay_one_in == 0 || !self.next().is_multiple_of(u64::from(self.delay_one_in)) {
            return None;
        }
        Some(Duration::from_millis(1 + self.next() % self.delay_max_ms))
    }
}
