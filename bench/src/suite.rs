//! Which systems exist, which rows the default and `--quick` suites run, and how long.
//!
//! Adding a system = one file under `systems/` + one entry in [`systems`].
//!
//! **Where dataplane plugs in:** the `Backend::Posix` arm of [`systems`] holds the
//! dataplane entry. `systems/dataplane_posix.rs` provides
//! `stream(size, connections, workers, duration) -> Result<Row>` and
//! `pingpong(size, duration) -> Result<Row>`, registered with [`TransportSystem`]
//! (`.with_scaling()` adds the 1-vs-2-worker `stream-scaling` rows).

use std::time::Duration;

use anyhow::{bail, Result};

use crate::cli::Backend;
use crate::row::Row;
use crate::systems::{
    dataplane_dpdk, dataplane_posix, dataplane_rdma, iperf3, perftest, rings, sockperf,
    std_blocking, tokio_framed,
};

/// One KiB.
pub const KIB: usize = 1024;
/// One MiB.
pub const MIB: usize = 1024 * 1024;
/// Sizes of the `stream` workload.
pub const STREAM_SIZES: [usize; 5] = [64, 512, 4 * KIB, 64 * KIB, MIB];
/// Sizes of the `pingpong` workload.
pub const PINGPONG_SIZES: [usize; 2] = [64, 4 * KIB];
/// Message size and connection count of `stream-64conn`.
pub const MANY_CONN: (usize, u32) = (4 * KIB, 64);
/// Message size and connection count of `stream-scaling` (run with 1 and 2 workers).
pub const SCALING: (usize, u32) = (64, 4);
/// Worker counts compared by `stream-scaling`.
pub const SCALING_WORKERS: [u32; 2] = [1, 2];
/// Size of one ring command (a `[u8; 64]`).
pub const RING_COMMAND: usize = 64;
/// Producer threads of `ring-mpsc`.
pub const MPSC_PRODUCERS: u32 = 2;
/// Measured seconds per row of the default suite (≈ 1 minute in total).
pub const DEFAULT_DURATION: Duration = Duration::from_millis(1500);
/// Measured seconds per row with `--quick`.
pub const QUICK_DURATION: Duration = Duration::from_millis(500);

/// A kind of measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    /// One-way messages on `--connections` connections.
    Stream,
    /// One message out, wait for the echo; full round-trip latency.
    PingPong,
    /// One-way stream on many connections at once.
    StreamManyConn,
    /// One-way stream with 1 and then 2 workers.
    StreamScaling,
    /// Cross-thread commands through a single-producer ring.
    RingSpsc,
    /// Cross-thread commands through a multi-producer ring.
    RingMpsc,
}

impl Workload {
    /// All workloads in the order the suite runs them.
    pub const ALL: [Workload; 6] = [
        Self::Stream,
        Self::PingPong,
        Self::StreamManyConn,
        Self::StreamScaling,
        Self::RingSpsc,
        Self::RingMpsc,
    ];

    /// Name used in rows and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stream => "stream",
            Self::PingPong => "pingpong",
            Self::StreamManyConn => "stream-64conn",
            Self::StreamScaling => "stream-scaling",
            Self::RingSpsc => "ring-spsc",
            Self::RingMpsc => "ring-mpsc",
        }
    }

    /// Parses a workload name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Whether the workload measures latency (lower is better) rather than throughput.
    pub fn is_latency(self) -> bool {
        self == Self::PingPong
    }

    /// Whether this is a cross-thread ring workload.
    pub fn is_ring(self) -> bool {
        matches!(self, Self::RingSpsc | Self::RingMpsc)
    }
}

/// Parameters of one row.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Message (or command) size in bytes.
    pub size: usize,
    /// Connections (or producer threads for rings).
    pub connections: u32,
    /// Event-loop worker threads.
    pub workers: u32,
    /// Measured duration.
    pub duration: Duration,
}

/// Something the suite can measure.
pub trait System {
    /// System name used in rows.
    fn name(&self) -> &str;
    /// Whether this system has a row for `workload` at `size`.
    fn supports(&self, workload: Workload, size: usize) -> bool;
    /// Measures one row.
    fn run(&self, workload: Workload, params: &Params) -> Result<Row>;
}

/// Loopback stream function: `(size, connections, workers, duration)`.
pub type StreamFn = fn(usize, u32, u32, Duration) -> Result<Row>;
/// Loopback ping-pong function: `(size, duration)`.
pub type PingPongFn = fn(usize, Duration) -> Result<Row>;

/// A message transport given as a `stream` and a `pingpong` function.
pub struct TransportSystem {
    name: &'static str,
    stream: StreamFn,
    pingpong: PingPongFn,
    scaling: bool,
}

impl TransportSystem {
    /// Registers a transport under `name`.
    pub fn new(name: &'static str, stream: StreamFn, pingpong: PingPongFn) -> Self {
        Self {
            name,
            stream,
            pingpong,
            scaling: false,
        }
    }

    /// Also runs the `stream-scaling` rows (1 vs 2 workers) for this transport.
    pub fn with_scaling(mut self) -> Self {
        self.scaling = true;
        self
    }
}

impl System for TransportSystem {
    fn name(&self) -> &str {
        self.name
    }

    fn supports(&self, workload: Workload, _size: usize) -> bool {
        match workload {
            Workload::Stream | Workload::PingPong | Workload::StreamManyConn => true,
            Workload::StreamScaling => self.scaling,
            Workload::RingSpsc | Workload::RingMpsc => false,
        }
    }

    fn run(&self, workload: Workload, p: &Params) -> Result<Row> {
        let mut row = match workload {
            Workload::PingPong => (self.pingpong)(p.size, p.duration)?,
            Workload::Stream | Workload::StreamManyConn | Workload::StreamScaling => {
                (self.stream)(p.size, p.connections, p.workers, p.duration)?
            }
            Workload::RingSpsc | Workload::RingMpsc => {
                bail!("{} has no {} workload", self.name, workload.name())
            }
        };
        row.workload = workload.name().to_string();
        if workload == Workload::StreamScaling {
            row.workers = Some(p.workers);
        }
        Ok(row)
    }
}

/// A system given as two plain functions (external tools, rings).
pub struct FnSystem {
    /// System name.
    pub name: &'static str,
    /// See [`System::supports`].
    pub supports: fn(Workload, usize) -> bool,
    /// See [`System::run`].
    pub run: fn(Workload, &Params) -> Result<Row>,
}

impl System for FnSystem {
    fn name(&self) -> &str {
        self.name
    }

    fn supports(&self, workload: Workload, size: usize) -> bool {
        (self.supports)(workload, size)
    }

    fn run(&self, workload: Workload, params: &Params) -> Result<Row> {
        (self.run)(workload, params)
    }
}

/// Name of the dataplane system for `backend`, e.g. `dataplane-posix`.
pub fn dataplane_name(backend: Backend) -> String {
    format!("dataplane-{}", backend.name())
}

/// The system the ratio column compares baselines of `workload` against.
pub fn reference_system(workload: Workload, backend: Backend) -> String {
    if workload.is_ring() {
        rings::DATAPLANE.to_string()
    } else {
        dataplane_name(backend)
    }
}

/// Every system of a run on `backend`, dataplane first. One entry per system.
pub fn systems(backend: Backend) -> Result<Vec<Box<dyn System>>> {
    let mut all: Vec<Box<dyn System>> = match backend {
        Backend::Posix => vec![Box::new(
            TransportSystem::new(
                "dataplane-posix",
                dataplane_posix::stream,
                dataplane_posix::pingpong,
            )
            .with_scaling(),
        )],
        // DPDK rows beside the POSIX rows of the same run (the comparison that matters).
        Backend::Dpdk => vec![
            Box::new(TransportSystem::new(
                dataplane_dpdk::NAME,
                dataplane_dpdk::stream,
                dataplane_dpdk::pingpong,
            )),
            Box::new(
                TransportSystem::new(
                    "dataplane-posix",
                    dataplane_posix::stream,
                    dataplane_posix::pingpong,
                )
                .with_scaling(),
            ),
        ],
        // perftest runs beside the RDMA stack on the same device: the baselines that matter.
        Backend::Rdma => vec![
            Box::new(TransportSystem::new(
                dataplane_rdma::NAME,
                dataplane_rdma::stream,
                dataplane_rdma::pingpong,
            )),
            Box::new(perftest::BW_SYSTEM),
            Box::new(perftest::LAT_SYSTEM),
            Box::new(perftest::LAT_FRAMED_SYSTEM),
        ],
    };
    all.extend([
        Box::new(TransportSystem::new(
            std_blocking::NAME,
            std_blocking::stream,
            std_blocking::pingpong,
        )) as Box<dyn System>,
        Box::new(TransportSystem::new(
            tokio_framed::NAME,
            tokio_framed::stream,
            tokio_framed::pingpong,
        )),
        Box::new(sockperf::SYSTEM),
        Box::new(iperf3::SYSTEM),
        Box::new(rings::DATAPLANE_SYSTEM),
        Box::new(rings::RTRB_SYSTEM),
        Box::new(rings::ARRAY_QUEUE_SYSTEM),
    ]);
    Ok(all)
}

/// What the user asked the suite to run.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    /// Sizes of `stream` and `pingpong` (`None`: the defaults above).
    pub sizes: Option<Vec<usize>>,
    /// Measured duration of every row.
    pub duration: Duration,
    /// Workers of event-loop systems.
    pub workers: u32,
    /// Connections of `stream`.
    pub connections: u32,
    /// Only systems with these names (`None`: all).
    pub systems: Option<Vec<String>>,
    /// Only these workloads (`None`: all).
    pub workloads: Option<Vec<Workload>>,
    /// Times each row is measured (`--rounds`), interleaved with the other systems of its
    /// group; the report keeps the median round ([`crate::rounds`]).
    pub rounds: u32,
}

impl SuiteConfig {
    /// Per-row duration: `--duration` if given, else the default or quick one.
    pub fn duration_for(quick: bool, duration_secs: Option<f64>) -> Result<Duration> {
        match duration_secs {
            Some(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => Ok(Duration::from_secs_f64(s)),
            Some(s) => bail!("--duration {s} must be between 0 and 3600 seconds"),
            None if quick => Ok(QUICK_DURATION),
            None => Ok(DEFAULT_DURATION),
        }
    }
}

/// One row to measure.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    /// Index into the system list.
    pub system: usize,
    /// Workload.
    pub workload: Workload,
    /// Parameters.
    pub params: Params,
    /// Which round of the row this is (0 with a single round).
    pub round: u32,
}

/// The rows of a workload: `(size, connections, workers)` triples.
fn workload_rows(workload: Workload, cfg: &SuiteConfig) -> Vec<(usize, u32, u32)> {
    let sizes = |default: &[usize]| cfg.sizes.clone().unwrap_or_else(|| default.to_vec());
    match workload {
        Workload::Stream => sizes(&STREAM_SIZES)
            .into_iter()
            .map(|s| (s, cfg.connections, cfg.workers))
            .collect(),
        Workload::PingPong => sizes(&PINGPONG_SIZES)
            .into_iter()
            .map(|s| (s, 1, cfg.workers))
            .collect(),
        Workload::StreamManyConn => vec![(MANY_CONN.0, MANY_CONN.1, cfg.workers)],
        Workload::StreamScaling => SCALING_WORKERS
            .iter()
            .map(|&w| (SCALING.0, SCALING.1, w))
            .collect(),
        Workload::RingSpsc => vec![(RING_COMMAND, 1, 1)],
        Workload::RingMpsc => vec![(RING_COMMAND, MPSC_PRODUCERS, 1)],
    }
}

/// Lists the jobs of a run, grouped by workload and size, dataplane first in a group; with
/// several rounds a group runs them round after round before the next group.
pub fn plan(systems: &[Box<dyn System>], cfg: &SuiteConfig) -> Result<Vec<Job>> {
    if let Some(names) = &cfg.systems {
        for name in names {
            if !systems.iter().any(|s| s.name() == name) {
                let known: Vec<_> = systems.iter().map(|s| s.name()).collect();
                bail!("unknown system `{name}`; known: {}", known.join(", "));
            }
        }
    }
    let mut jobs = Vec::new();
    for workload in Workload::ALL {
        if cfg
            .workloads
            .as_ref()
            .is_some_and(|w| !w.contains(&workload))
        {
            continue;
        }
        for (size, connections, workers) in workload_rows(workload, cfg) {
            let group: Vec<usize> = systems
                .iter()
                .enumerate()
                .filter(|(_, system)| {
                    cfg.systems
                        .as_ref()
                        .is_none_or(|names| names.iter().any(|n| n == system.name()))
                        && system.supports(workload, size)
                })
                .map(|(index, _)| index)
                .collect();
            // Rounds alternate the order (A B C, C B A, A B C, ...), so that no system
            // always runs first after a quiet spell or last after the others warmed the
            // machine; a drift over the run then touches every system alike.
            for round in 0..cfg.rounds.max(1) {
                let mut order = group.clone();
                if round % 2 == 1 {
                    order.reverse();
                }
                for system in order {
                    jobs.push(Job {
                        system,
                        workload,
                        params: Params {
                            size,
                            connections,
                            workers,
                            duration: cfg.duration,
                        },
                        round,
                    });
                }
            }
        }
    }
    Ok(jobs)
}

/// Runs one job; a failure becomes a row without numbers whose note says why.
pub fn run_job(systems: &[Box<dyn System>], job: &Job) -> Row {
    let system = &systems[job.system];
    match system.run(job.workload, &job.params) {
        Ok(mut row) => {
            row.workload = job.workload.name().to_string();
            row
        }
        Err(e) => {
            let mut row = Row::unavailable(
                system.name(),
                job.workload.name(),
                job.params.size,
                format!("error: {e:#}"),
            );
            row.connections = job.params.connections;
            row
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SuiteConfig {
        SuiteConfig {
            sizes: None,
            duration: QUICK_DURATION,
            workers: 2,
            connections: 1,
            systems: None,
            workloads: None,
            rounds: 1,
        }
    }

    #[test]
    fn default_plan_has_the_baselines() {
        let systems = systems(Backend::Posix).unwrap();
        let jobs = plan(&systems, &cfg()).unwrap();
        let has = |sys: &str, w: Workload, size: usize| {
            jobs.iter().any(|j| {
                systems[j.system].name() == sys && j.workload == w && j.params.size == size
            })
        };
        assert!(has("tokio-framed", Workload::Stream, 64));
        assert!(has("std-blocking", Workload::Stream, MIB));
        assert!(has("iperf3", Workload::Stream, MIB));
        assert!(!has("iperf3", Workload::Stream, 64));
        assert!(has("sockperf", Workload::PingPong, 64));
        assert!(has("rtrb", Workload::RingSpsc, 64));
        assert!(!has("rtrb", Workload::RingMpsc, 64));
        assert!(has("crossbeam-arrayqueue", Workload::RingMpsc, 64));
    }

    #[test]
    fn filters_apply() {
        let systems = systems(Backend::Posix).unwrap();
        let mut c = cfg();
        c.systems = Some(vec!["iperf3".into()]);
        let jobs = plan(&systems, &c).unwrap();
        assert_eq!(jobs.len(), 1);
        c.systems = Some(vec!["nope".into()]);
        assert!(plan(&systems, &c).is_err());
        let mut c = cfg();
        c.workloads = Some(vec![Workload::PingPong]);
        c.sizes = Some(vec![64]);
        let jobs = plan(&systems, &c).unwrap();
        assert!(jobs.iter().all(|j| j.workload == Workload::PingPong));
    }

    #[test]
    fn rounds_interleave_and_alternate_the_order() {
        let systems = systems(Backend::Rdma).unwrap();
        let mut c = cfg();
        c.systems = Some(vec!["dataplane-rdma".into(), "ib_send_bw".into()]);
        c.workloads = Some(vec![Workload::Stream]);
        c.sizes = Some(vec![64, 65536]);
        c.rounds = 3;
        let jobs = plan(&systems, &c).unwrap();
        let seen: Vec<_> = jobs
            .iter()
            .map(|j| (systems[j.system].name(), j.params.size, j.round))
            .collect();
        let (a, b) = ("dataplane-rdma", "ib_send_bw");
        let mut want = Vec::new();
        for size in [64, 65536] {
            want.extend([(a, size, 0), (b, size, 0), (b, size, 1)]);
            want.extend([(a, size, 1), (a, size, 2), (b, size, 2)]);
        }
        assert_eq!(seen, want);
    }

    #[test]
    fn dpdk_runs_beside_posix() {
        let systems = systems(Backend::Dpdk).unwrap();
        let names: Vec<_> = systems.iter().map(|s| s.name()).collect();
        assert_eq!(&names[..2], &["dataplane-dpdk", "dataplane-posix"]);
        let jobs = plan(&systems, &cfg()).unwrap();
        assert!(jobs
            .iter()
            .any(|j| systems[j.system].name() == "dataplane-dpdk" && j.params.size == 64));
    }

    #[test]
    fn rdma_runs_beside_perftest() {
        let systems = systems(Backend::Rdma).unwrap();
        let names: Vec<_> = systems.iter().map(|s| s.name()).collect();
        assert_eq!(
            &names[..3],
            &["dataplane-rdma", "ib_send_bw", "ib_send_lat"]
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            SuiteConfig::duration_for(true, None).unwrap(),
            QUICK_DURATION
        );
        assert_eq!(
            SuiteConfig::duration_for(false, Some(2.0)).unwrap(),
            Duration::from_secs(2)
        );
        assert!(SuiteConfig::duration_for(false, Some(-1.0)).is_err());
    }
}
