//! Several rounds of the same row reduced to one: the median round.
//!
//! A single measurement of a row on a shared or emulated machine swings with whatever else
//! the machine does at that moment (perftest's own 64 KiB stream measured 293 and 448 msg/s
//! at the start and the end of one VM boot). `--rounds N` measures every row of a group N
//! times, interleaved with the other systems of the group (see [`crate::suite::plan`]), and
//! reports the round whose key metric is the median, with every round's value beside it.

use crate::row::Row;
use crate::suite::{Job, Workload};
use crate::targets::Metric;

/// Rows that are rounds of the same measurement: same system, workload, size, connections
/// and workers.
fn same_row(a: &Job, b: &Job) -> bool {
    a.system == b.system
        && a.workload == b.workload
        && a.params.size == b.params.size
        && a.params.connections == b.params.connections
        && a.params.workers == b.params.workers
}

/// Reduces the rows of a run (one per job, in job order) to one row per distinct job: the
/// median round. Rows keep the order of their first round. A single round passes through
/// unchanged.
pub fn median_of_rounds(measured: Vec<(Job, Row)>) -> Vec<Row> {
    let mut groups: Vec<(Job, Vec<Row>)> = Vec::new();
    for (job, row) in measured {
        match groups.iter_mut().find(|(j, _)| same_row(j, &job)) {
            Some((_, rows)) => rows.push(row),
            None => groups.push((job, vec![row])),
        }
    }
    groups
        .into_iter()
        .filter_map(|(job, rows)| median_row(job.workload, rows))
        .collect()
}

/// The median of one row's rounds (the less good of the two middle rounds when their
/// number is even), with `rounds` and the note saying what the rounds measured. `None`
/// only for no rows at all.
fn median_row(workload: Workload, mut rows: Vec<Row>) -> Option<Row> {
    if rows.len() <= 1 {
        return rows.pop();
    }
    let total = rows.len();
    let metric = Metric::for_workload(workload);
    let values: Vec<f64> = rows.iter().filter_map(|r| metric.value(r)).collect();
    if values.is_empty() {
        // No round measured anything: the first round's row says why.
        let mut first = rows.swap_remove(0);
        first.note = Some(format!(
            "{} (all {total} rounds failed)",
            first.note.unwrap_or_default()
        ));
        return Some(first);
    }
    let mut ranked: Vec<(f64, Row)> = rows
        .into_iter()
        .filter_map(|r| metric.value(&r).map(|v| (v, r)))
        .collect();
    // Best first: highest throughput, lowest latency.
    ranked.sort_by(|a, b| {
        let order = a.0.total_cmp(&b.0);
        if metric == Metric::P50 {
            order
        } else {
            order.reverse()
        }
    });
    let (_, mut row) = ranked.swap_remove(ranked.len() / 2);
    let listed: Vec<String> = values.iter().map(|v| format_value(metric, *v)).collect();
    let failed = total - values.len();
    let unit = if metric == Metric::P50 { "us" } else { "msg/s" };
    let mut note = format!(
        "median of {} rounds: {} {unit}",
        values.len(),
        listed.join(" / ")
    );
    if failed > 0 {
        note.push_str(&format!(", {failed} failed"));
    }
    row.note = Some(match row.note.take() {
        Some(n) if !n.is_empty() => format!("{n}; {note}"),
        _ => note,
    });
    row.rounds = values;
    Some(row)
}

/// A metric value as the note lists it.
fn format_value(metric: Metric, v: f64) -> String {
    match metric {
        Metric::P50 => format!("{v:.1}"),
        _ if v >= 1e6 => format!("{:.2}M", v / 1e6),
        _ if v >= 1e3 => format!("{:.1}k", v / 1e3),
        _ => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::Params;
    use std::time::Duration;

    fn job(system: usize, workload: Workload, round: u32) -> Job {
        Job {
            system,
            workload,
            params: Params {
                size: 64,
                connections: 1,
                workers: 1,
                duration: Duration::from_millis(10),
            },
            round,
        }
    }

    fn stream(system: &str, msgs: Option<f64>) -> Row {
        let mut r = Row::new(system, "stream", 64, 1);
        r.msgs_per_sec = msgs;
        if msgs.is_none() {
            r.note = Some("error: boom".into());
        }
        r
    }

    fn pingpong(system: &str, p50: f64) -> Row {
        let mut r = Row::new(system, "pingpong", 64, 1);
        r.p50_us = Some(p50);
        r
    }

    #[test]
    fn one_round_passes_through() {
        let rows = median_of_rounds(vec![
            (job(0, Workload::Stream, 0), stream("a", Some(5.0))),
            (job(1, Workload::Stream, 0), stream("b", Some(7.0))),
        ]);
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.rounds.is_empty() && r.note.is_none()));
    }

    #[test]
    fn throughput_keeps_the_median_round_in_first_round_order() {
        let rows = median_of_rounds(vec![
            (job(0, Workload::Stream, 0), stream("a", Some(300.0))),
            (job(1, Workload::Stream, 0), stream("b", Some(450.0))),
            (job(1, Workload::Stream, 1), stream("b", Some(290.0))),
            (job(0, Workload::Stream, 1), stream("a", Some(410.0))),
            (job(0, Workload::Stream, 2), stream("a", Some(350.0))),
            (job(1, Workload::Stream, 2), stream("b", Some(440.0))),
        ]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].system, "a");
        assert_eq!(rows[0].msgs_per_sec, Some(350.0));
        assert_eq!(rows[0].rounds, vec![300.0, 410.0, 350.0]);
        assert_eq!(rows[1].msgs_per_sec, Some(440.0));
        assert!(rows[1]
            .note
            .as_deref()
            .unwrap()
            .contains("median of 3 rounds"));
    }

    #[test]
    fn latency_median_and_even_counts_take_the_worse_middle() {
        let rows = median_of_rounds(vec![
            (job(0, Workload::PingPong, 0), pingpong("a", 90.0)),
            (job(0, Workload::PingPong, 1), pingpong("a", 120.0)),
            (job(0, Workload::PingPong, 2), pingpong("a", 80.0)),
            (job(0, Workload::PingPong, 3), pingpong("a", 100.0)),
        ]);
        // Ranked best first: 80, 90, 100, 120; the less good middle is 100.
        assert_eq!(rows[0].p50_us, Some(100.0));
    }

    #[test]
    fn failed_rounds_are_counted_and_all_failed_keeps_the_reason() {
        let rows = median_of_rounds(vec![
            (job(0, Workload::Stream, 0), stream("a", None)),
            (job(0, Workload::Stream, 1), stream("a", Some(10.0))),
            (job(1, Workload::Stream, 0), stream("b", None)),
            (job(1, Workload::Stream, 1), stream("b", None)),
        ]);
        assert_eq!(rows[0].msgs_per_sec, Some(10.0));
        assert!(rows[0].note.as_deref().unwrap().contains("1 failed"));
        assert!(!rows[1].is_measured());
        assert!(rows[1]
            .note
            .as_deref()
            .unwrap()
            .contains("all 2 rounds failed"));
    }
}
