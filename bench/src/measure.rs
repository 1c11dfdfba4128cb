//! Timing helpers: throughput arithmetic and an `hdrhistogram` latency recorder.

use std::time::Duration;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use crate::row::Row;

/// How often (in messages) a hot send loop looks at the clock.
pub const CLOCK_CHECK_EVERY: u64 = 16;

/// Messages and payload bytes delivered over a measured interval.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    /// Messages delivered.
    pub messages: u64,
    /// Payload bytes delivered (framing excluded).
    pub bytes: u64,
    /// Length of the measured interval.
    pub elapsed: Duration,
}

impl Throughput {
    /// Messages per second.
    pub fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    /// Payload Gbit/s (10^9 bits per second).
    pub fn gbit_per_sec(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e9
    }

    /// Copies the throughput numbers into `row`.
    pub fn fill(&self, row: &mut Row) {
        row.msgs_per_sec = Some(self.msgs_per_sec());
        row.gbit_per_sec = Some(self.gbit_per_sec());
        row.duration_secs = Some(self.elapsed.as_secs_f64());
    }
}

/// Records latencies (nanoseconds internally) and reports microsecond percentiles.
pub struct LatencyRecorder {
    hist: Histogram<u64>,
}

impl LatencyRecorder {
    /// A recorder for latencies between 1 ns and 60 s with 3 significant digits.
    pub fn new() -> Result<Self> {
        let hist = Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .context("creating the latency histogram")?;
        Ok(Self { hist })
    }

    /// Records one latency sample.
    pub fn record(&mut self, latency: Duration) {
        let ns = (latency.as_nanos() as u64).clamp(1, 60_000_000_000);
        // Cannot fail: the value is clamped into the histogram's range.
        let _ = self.hist.record(ns);
    }

    /// Number of samples recorded.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// Whether no sample was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// Latency at `quantile` (0.0..=1.0) in microseconds.
    pub fn quantile_us(&self, quantile: f64) -> f64 {
        self.hist.value_at_quantile(quantile) as f64 / 1000.0
    }

    /// Fills p50/p99/p99.9 and the CDF points of `row`.
    pub fn fill(&self, row: &mut Row) {
        if self.is_empty() {
            return;
        }
        row.p50_us = Some(self.quantile_us(0.50));
        row.p99_us = Some(self.quantile_us(0.99));
        row.p999_us = Some(self.quantile_us(0.999));
        row.cdf = self
            .hist
            .iter_quantiles(4)
            .map(|v| {
                (
                    v.value_iterated_to() as f64 / 1000.0,
                    v.quantile_iterated_to(),
                )
            })
            .collect();
    }
}

/// Parses a size such as `64`, `512B`, `4K`, `4KiB`, `64k`, `1M` or `1MiB` into bytes.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, suffix) = lower.split_at(digits_end);
    let n: usize = num
        .parse()
        .map_err(|_| format!("invalid size `{t}`: expected e.g. 64, 4K, 1M"))?;
    let mult = match suffix.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        other => return Err(format!("invalid size suffix `{other}` in `{t}`")),
    };
    if n == 0 {
        return Err(format!("size `{t}` must be at least 1 byte"));
    }
    Ok(n * mult)
}

/// Formats a byte count the way the table shows it: `64 B`, `4 KiB`, `1 MiB`.
pub fn format_size(bytes: u64) -> String {
    if bytes >= 1024 * 1024 && bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_format() {
        assert_eq!(parse_size("64").unwrap(), 64);
        assert_eq!(parse_size("4K").unwrap(), 4096);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert!(parse_size("0").is_err());
        assert!(parse_size("3x").is_err());
        assert_eq!(format_size(64), "64 B");
        assert_eq!(format_size(4096), "4 KiB");
        assert_eq!(format_size(1 << 20), "1 MiB");
    }

    #[test]
    fn recorder_percentiles() {
        let mut r = LatencyRecorder::new().unwrap();
        for us in 1..=1000u64 {
            r.record(Duration::from_micros(us));
        }
        let mut row = Row::new("x", "pingpong", 64, 1);
        r.fill(&mut row);
        let p50 = row.p50_us.unwrap();
        assert!((499.0..=502.0).contains(&p50), "{p50}");
        assert!(!row.cdf.is_empty());
    }
}
