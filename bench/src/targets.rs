//! Ratios of dataplane rows to baseline rows, and the project's performance targets.
//!
//! Ratios are derived from the rows when reporting; they are never stored.

use crate::cli::Backend;
use crate::row::Row;
use crate::suite::{reference_system, Workload, KIB, MIB};
use crate::systems::{dataplane_posix, iperf3, perftest, rings, sockperf, tokio_framed};

/// Which number of a row a ratio compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Messages per second (higher is better).
    MsgsPerSec,
    /// Payload Gbit/s (higher is better).
    GbitPerSec,
    /// Median latency (lower is better).
    P50,
}

impl Metric {
    /// The metric the ratio column uses for `workload`.
    pub fn for_workload(workload: Workload) -> Self {
        if workload.is_latency() {
            Self::P50
        } else {
            Self::MsgsPerSec
        }
    }

    /// The metric's value in `row`.
    pub fn value(self, row: &Row) -> Option<f64> {
        match self {
            Self::MsgsPerSec => row.msgs_per_sec,
            Self::GbitPerSec => row.gbit_per_sec,
            Self::P50 => row.p50_us,
        }
    }

    /// Short name for the table.
    pub fn label(self) -> &'static str {
        match self {
            Self::MsgsPerSec => "msg/s",
            Self::GbitPerSec => "Gbit/s",
            Self::P50 => "p50",
        }
    }
}

/// First measured row of `system` for `workload` at `size` with `connections`.
pub fn find<'a>(
    rows: &'a [Row],
    system: &str,
    workload: &str,
    size: u64,
    connections: Option<u32>,
) -> Option<&'a Row> {
    rows.iter().find(|r| {
        r.system == system
            && r.workload == workload
            && r.size_bytes == size
            && connections.is_none_or(|c| r.connections == c)
            && r.is_measured()
    })
}

/// Reference value / baseline value of `metric`, if both exist.
pub fn ratio(reference: &Row, baseline: &Row, metric: Metric) -> Option<f64> {
    let r = metric.value(reference)?;
    let b = metric.value(baseline)?;
    (b > 0.0).then(|| r / b)
}

/// What the ratio column shows for `row`.
#[derive(Debug, Clone, PartialEq)]
pub enum RatioCell {
    /// `row` is the reference itself.
    Reference,
    /// Reference / this row.
    Value(f64),
    /// No reference row (yet) or no number.
    NotApplicable,
}

/// The ratio of the reference system's row to `row` on the same workload and size.
pub fn ratio_cell(row: &Row, rows: &[Row], backend: Backend) -> RatioCell {
    let Some(workload) = Workload::from_name(&row.workload) else {
        return RatioCell::NotApplicable;
    };
    let reference = reference_system(workload, backend);
    if row.system == reference {
        return RatioCell::Reference;
    }
    // External tools always use one connection; compare with the same shape.
    let Some(reference_row) = find(
        rows,
        &reference,
        &row.workload,
        row.size_bytes,
        Some(row.connections),
    ) else {
        return RatioCell::NotApplicable;
    };
    match ratio(reference_row, row, Metric::for_workload(workload)) {
        Some(v) => RatioCell::Value(v),
        None => RatioCell::NotApplicable,
    }
}

/// A performance goal: reference / baseline on `metric` must be ≥ (or ≤) `bound`.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The `--backend` whose runs it belongs to (its reference is that backend's dataplane).
    pub backend: Backend,
    /// Human description.
    pub label: &'static str,
    /// Workload compared.
    pub workload: Workload,
    /// Message size compared.
    pub size: usize,
    /// Baseline system.
    pub baseline: &'static str,
    /// Compared number.
    pub metric: Metric,
    /// Bound on the ratio.
    pub bound: f64,
    /// `true`: ratio must be at most `bound` (latency); `false`: at least.
    pub at_most: bool,
}

/// The project's targets, as stated in the benchmark issue (POSIX and the rings) and in the
/// DPDK and RDMA backends' issues. A run reports those of its `--backend`.
pub const TARGETS: [Target; 9] = [
    Target {
        backend: Backend::Posix,
        label: "64 B stream >= 1.5x tokio-framed msg/s",
        workload: Workload::Stream,
        size: 64,
        baseline: tokio_framed::NAME,
        metric: Metric::MsgsPerSec,
        bound: 1.5,
        at_most: false,
    },
    Target {
        backend: Backend::Posix,
        label: "64 B stream >= 4x sockperf tp msg/s",
        workload: Workload::Stream,
        size: 64,
        baseline: sockperf::NAME,
        metric: Metric::MsgsPerSec,
        bound: 4.0,
        at_most: false,
    },
    Target {
        backend: Backend::Posix,
        label: "1 MiB stream >= 0.9x iperf3 Gbit/s",
        workload: Workload::Stream,
        size: MIB,
        baseline: iperf3::NAME,
        metric: Metric::GbitPerSec,
        bound: 0.9,
        at_most: false,
    },
    Target {
        backend: Backend::Posix,
        label: "64 B ping-pong p50 <= 1.1x sockperf",
        workload: Workload::PingPong,
        size: 64,
        baseline: sockperf::NAME,
        metric: Metric::P50,
        bound: 1.1,
        at_most: true,
    },
    Target {
        backend: Backend::Posix,
        label: "SPSC ring >= 1.0x rtrb",
        workload: Workload::RingSpsc,
        size: 64,
        baseline: rings::RTRB,
        metric: Metric::MsgsPerSec,
        bound: 1.0,
        at_most: false,
    },
    Target {
        backend: Backend::Posix,
        label: "SPSC ring >= 4x crossbeam ArrayQueue",
        workload: Workload::RingSpsc,
        size: 64,
        baseline: rings::ARRAY_QUEUE,
        metric: Metric::MsgsPerSec,
        bound: 4.0,
        at_most: false,
    },
    Target {
        backend: Backend::Dpdk,
        label: "64 B stream over memif >= 1.5x dataplane-posix on loopback msg/s",
        workload: Workload::Stream,
        size: 64,
        baseline: dataplane_posix::NAME,
        metric: Metric::MsgsPerSec,
        bound: 1.5,
        at_most: false,
    },
    Target {
        backend: Backend::Rdma,
        label: "64 KiB stream >= 0.9x ib_send_bw Gbit/s",
        workload: Workload::Stream,
        size: 64 * KIB,
        baseline: perftest::BW,
        metric: Metric::GbitPerSec,
        bound: 0.9,
        at_most: false,
    },
    Target {
        backend: Backend::Rdma,
        label: "64 B ping-pong p50 <= 1.2x ib_send_lat",
        workload: Workload::PingPong,
        size: 64,
        baseline: perftest::LAT,
        metric: Metric::P50,
        bound: 1.2,
        at_most: true,
    },
];

/// The targets a run on `backend` reports.
pub fn targets_of(backend: Backend) -> impl Iterator<Item = &'static Target> {
    TARGETS.iter().filter(move |t| t.backend == backend)
}

/// Outcome of one target.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The ratio and whether it meets the bound.
    Measured {
        /// Reference / baseline.
        ratio: f64,
        /// Whether the bound holds.
        met: bool,
    },
    /// A row is missing; says which.
    Missing(String),
}

/// Evaluates `target` on `rows`.
pub fn evaluate(target: &Target, rows: &[Row], backend: Backend) -> Verdict {
    let reference = reference_system(target.workload, backend);
    let workload = target.workload.name();
    let size = target.size as u64;
    let Some(r) = find(rows, &reference, workload, size, Some(1)) else {
        return Verdict::Missing(format!("no {reference} row"));
    };
    let Some(b) = find(rows, target.baseline, workload, size, None) else {
        return Verdict::Missing(format!("no {} row", target.baseline));
    };
    match ratio(r, b, target.metric) {
        Some(ratio) => Verdict::Measured {
            ratio,
            met: if target.at_most {
                ratio <= target.bound
            } else {
                ratio >= target.bound
            },
        },
        None => Verdict::Missing(format!("no {} value", target.metric.label())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, workload: &str, size: usize, msgs: f64, p50: Option<f64>) -> Row {
        let mut r = Row::new(system, workload, size, 1);
        r.msgs_per_sec = Some(msgs);
        r.gbit_per_sec = Some(msgs * size as f64 * 8.0 / 1e9);
        r.p50_us = p50;
        r
    }

    #[test]
    fn ratios_and_targets() {
        let rows = vec![
            row("dataplane-posix", "stream", 64, 3e6, None),
            row("tokio-framed", "stream", 64, 1e6, None),
            row("dataplane-posix", "pingpong", 64, 1e4, Some(30.0)),
            row("sockperf", "pingpong", 64, 1e4, Some(25.0)),
        ];
        assert_eq!(
            ratio_cell(&rows[1], &rows, Backend::Posix),
            RatioCell::Value(3.0)
        );
        assert_eq!(
            ratio_cell(&rows[0], &rows, Backend::Posix),
            RatioCell::Reference
        );
        assert_eq!(
            evaluate(&TARGETS[0], &rows, Backend::Posix),
            Verdict::Measured {
                ratio: 3.0,
                met: true
            }
        );
        match evaluate(&TARGETS[3], &rows, Backend::Posix) {
            Verdict::Measured { ratio, met } => {
                assert!((ratio - 1.2).abs() < 1e-9);
                assert!(!met);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            evaluate(&TARGETS[2], &rows, Backend::Posix),
            Verdict::Missing(_)
        ));
    }

    #[test]
    fn backend_targets_compare_with_their_baselines() {
        let mut bw = row("dataplane-rdma", "stream", 64 * KIB, 400.0, None);
        let sbw = row("ib_send_bw", "stream", 64 * KIB, 450.0, None);
        let lat = row("dataplane-rdma", "pingpong", 64, 1e4, Some(90.0));
        let slat = row("ib_send_lat", "pingpong", 64, 1e4, Some(36.0));
        bw.gbit_per_sec = Some(0.95 * sbw.gbit_per_sec.unwrap());
        let rows = vec![bw, sbw, lat, slat];
        let rdma: Vec<_> = targets_of(Backend::Rdma).collect();
        assert_eq!(rdma.len(), 2);
        assert!(matches!(
            evaluate(rdma[0], &rows, Backend::Rdma),
            Verdict::Measured { met: true, .. }
        ));
        match evaluate(rdma[1], &rows, Backend::Rdma) {
            Verdict::Measured { ratio, met } => {
                assert!((ratio - 2.5).abs() < 1e-9);
                assert!(!met);
            }
            other => panic!("{other:?}"),
        }
        let dpdk = vec![
            row("dataplane-dpdk", "stream", 64, 30e6, None),
            row("dataplane-posix", "stream", 64, 20e6, None),
        ];
        let t: Vec<_> = targets_of(Backend::Dpdk).collect();
        assert_eq!(t.len(), 1);
        assert_eq!(
            evaluate(t[0], &dpdk, Backend::Dpdk),
            Verdict::Measured {
                ratio: 1.5,
                met: true
            }
        );
        assert!(targets_of(Backend::Posix).all(|t| t.backend == Backend::Posix));
    }

    #[test]
    fn no_reference_is_not_applicable() {
        let rows = vec![row("tokio-framed", "stream", 64, 1e6, None)];
        assert_eq!(
            ratio_cell(&rows[0], &rows, Backend::Posix),
            RatioCell::NotApplicable
        );
    }
}
