//! The text table printed at the end of a run, followed by the targets.

use std::fmt::Write as _;

use crate::cli::Backend;
use crate::measure::format_size;
use crate::row::Row;
use crate::targets::{evaluate, ratio_cell, targets_of, RatioCell, Verdict};

/// Formats a rate with a k/M/G suffix.
pub fn format_rate(value: f64) -> String {
    if value >= 1e9 {
        format!("{:.2}G", value / 1e9)
    } else if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

fn opt(value: Option<f64>, f: impl Fn(f64) -> String) -> String {
    value.map(f).unwrap_or_else(|| "-".to_string())
}

/// Renders the results table and the targets section.
pub fn render(rows: &[Row], backend: Backend) -> String {
    let header = [
        "system", "workload", "size", "conns", "msg/s", "Gbit/s", "p50 us", "p99 us", "p999 us",
        "ratio", "note",
    ];
    let mut cells: Vec<Vec<String>> = Vec::with_capacity(rows.len());
    for row in rows {
        let ratio = match ratio_cell(row, rows, backend) {
            RatioCell::Reference => "ref".to_string(),
            RatioCell::Value(v) => format!("{v:.2}x"),
            RatioCell::NotApplicable => "n/a".to_string(),
        };
        let conns = match row.workers {
            Some(w) if row.workload == "stream-scaling" => format!("{}/{}w", row.connections, w),
            _ => row.connections.to_string(),
        };
        cells.push(vec![
            row.system.clone(),
            row.workload.clone(),
            format_size(row.size_bytes),
            conns,
            opt(row.msgs_per_sec, format_rate),
            opt(row.gbit_per_sec, |v| format!("{v:.3}")),
            opt(row.p50_us, |v| format!("{v:.1}")),
            opt(row.p99_us, |v| format!("{v:.1}")),
            opt(row.p999_us, |v| format!("{v:.1}")),
            ratio,
            row.note.clone().unwrap_or_default(),
        ]);
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for line in &cells {
        for (w, cell) in widths.iter_mut().zip(line) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let numeric = |i: usize| (3..=9).contains(&i);
    let mut out = String::new();
    let mut push_line = |cols: &[String]| {
        let mut line = String::new();
        for (i, (cell, w)) in cols.iter().zip(&widths).enumerate() {
            if i + 1 == cols.len() {
                line.push_str(cell);
            } else if numeric(i) {
                let _ = write!(line, "{cell:>w$}  ");
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    };
    push_line(&header.map(String::from));
    push_line(&widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>());
    for line in &cells {
        push_line(line);
    }
    let _ = writeln!(
        out,
        "\nratio = reference / baseline on the same workload and size: msg/s for throughput \
         rows (higher is better), p50 for pingpong (lower is better). Reference: {} \
         (dataplane-ring for ring rows). Latencies are full round trips.",
        crate::suite::dataplane_name(backend)
    );
    out.push_str("\nTargets:\n");
    let label_width = targets_of(backend)
        .map(|t| t.label.len())
        .max()
        .unwrap_or(0);
    for target in targets_of(backend) {
        let verdict = match evaluate(target, rows, backend) {
            Verdict::Measured { ratio, met } => {
                format!("{ratio:>6.2}x  {}", if met { "met" } else { "not met" })
            }
            Verdict::Missing(why) => format!("{:>7}  n/a ({why})", "-"),
        };
        let _ = writeln!(out, "  {:<label_width$}  {verdict}", target.label);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rows_and_notes() {
        let mut a = Row::new("tokio-framed", "stream", 64, 1);
        a.msgs_per_sec = Some(1_234_567.0);
        a.gbit_per_sec = Some(0.632);
        let b = Row::unavailable(
            "sockperf",
            "stream",
            64,
            "sockperf not installed (apt-get install sockperf)".into(),
        );
        let text = render(&[a, b], Backend::Posix);
        assert!(text.contains("1.23M"));
        assert!(text.contains("not installed (apt-get install sockperf)"));
        assert!(text.contains("n/a"));
        assert!(text.contains("Targets:"));
    }

    #[test]
    fn rates() {
        assert_eq!(format_rate(999.0), "999");
        assert_eq!(format_rate(12_345.0), "12.3k");
        assert_eq!(format_rate(2_500_000.0), "2.50M");
    }
}
