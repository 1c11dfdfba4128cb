//! One measured result: the unit of the table, the JSON file and the plots.

use serde::Serialize;

/// One row of the results: one system running one workload at one message size.
///
/// Every number is a raw measurement of this run (or `None` when it does not apply
/// or could not be measured); ratios to other rows are derived when reporting and
/// are never stored. The JSON encoding of this struct is the stable contract of
/// `--json`: `system`, `workload`, `size_bytes`, `msgs_per_sec`, `gbit_per_sec`,
/// `p50_us`, `p99_us`, `p999_us`, plus the descriptive `connections`, `workers`,
/// `duration_secs` and `note` fields, and `rounds` when the row is a median of rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// System name, e.g. `tokio-framed` or `dataplane-posix`.
    pub system: String,
    /// Workload name, e.g. `stream`, `pingpong`, `ring-spsc`.
    pub workload: String,
    /// Payload size of one message (or ring command) in bytes, without framing.
    pub size_bytes: u64,
    /// Messages (or commands) delivered per second.
    pub msgs_per_sec: Option<f64>,
    /// Payload throughput in Gbit/s (10^9 bits per second, payload bytes only).
    pub gbit_per_sec: Option<f64>,
    /// Median latency in microseconds (ping-pong: full round trip).
    pub p50_us: Option<f64>,
    /// 99th percentile latency in microseconds.
    pub p99_us: Option<f64>,
    /// 99.9th percentile latency in microseconds.
    pub p999_us: Option<f64>,
    /// Number of connections (or producer threads for rings) used.
    pub connections: u32,
    /// Worker threads of the system's event loop, when it has one.
    pub workers: Option<u32>,
    /// Wall-clock length of the measured phase, in seconds.
    pub duration_secs: Option<f64>,
    /// Why the numbers are missing, or how they were obtained, when that needs saying.
    pub note: Option<String>,
    /// When the row is the median of several rounds (`--rounds`): the row's key metric
    /// (msg/s, or p50 for ping-pong) in each measured round, in the order they ran. The
    /// row's numbers are those of the median round. Empty (and left out of the JSON) for a
    /// single round.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<f64>,
    /// Latency distribution as `(latency_us, quantile)` points, for the CDF plot only.
    #[serde(skip)]
    pub cdf: Vec<(f64, f64)>,
}

impl Row {
    /// A row with identity fields set and no numbers yet.
    pub fn new(system: &str, workload: &str, size_bytes: usize, connections: u32) -> Self {
        Self {
            system: system.to_string(),
            workload: workload.to_string(),
            size_bytes: size_bytes as u64,
            msgs_per_sec: None,
            gbit_per_sec: None,
            p50_us: None,
            p99_us: None,
            p999_us: None,
            connections,
            workers: None,
            duration_secs: None,
            note: None,
            rounds: Vec::new(),
            cdf: Vec::new(),
        }
    }

    /// A row whose numbers could not be measured, with the reason shown in the table.
    pub fn unavailable(system: &str, workload: &str, size_bytes: usize, note: String) -> Self {
        let mut row = Self::new(system, workload, size_bytes, 1);
        row.note = Some(note);
        row
    }

    /// Whether this row carries at least one measured number.
    pub fn is_measured(&self) -> bool {
        self.msgs_per_sec.is_some() || self.gbit_per_sec.is_some() || self.p50_us.is_some()
    }
}
