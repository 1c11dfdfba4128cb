//! Deterministic socket-failure injection for tests (Ceph's `ms_inject_socket_failures`).

/// Fails one socket operation in `one_in`, from a seeded generator, so a test run can be
/// replayed exactly.
#[derive(Debug, Clone)]
pub(crate) struct FaultInjector {
    one_in: u32,
    state: u64,
}

impl FaultInjector {
    pub(crate) fn new(one_in: u32, seed: u64, worker: usize) -> FaultInjector {
        FaultInjector {
            one_in,
            state: seed ^ (worker as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// True when this operation must fail.
    #[inline]
    pub(crate) fn should_fail(&mut self) -> bool {
        if self.one_in == 0 {
            return false;
        }
        // xorshift64*: cheap, deterministic, good enough to spread faults.
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) % u64::from(self.one_in) == 0
    }
}
