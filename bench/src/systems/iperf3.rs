//! `iperf3` baseline: one-way TCP stream of 1 MiB writes over loopback.
//!
//! Runs `iperf3 -s -1` on a free loopback port and `iperf3 -c 127.0.0.1 -J -l 1M -t N`
//! against it, then parses the client's JSON report (`end.sum_received`).

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::row::Row;
use crate::suite::{FnSystem, Workload, MIB};
use crate::systems::external::{
    free_port, not_installed_note, run_with_timeout, which, whole_seconds, BackgroundServer,
};

/// System name of this baseline.
pub const NAME: &str = "iperf3";

/// Suite entry: `stream` at 1 MiB.
pub const SYSTEM: FnSystem = FnSystem {
    name: NAME,
    supports: |w, size| w == Workload::Stream && size == MIB,
    run: |_, p| stream(p.size, p.duration),
};

/// Runs the `stream` workload with `size`-byte writes for about `duration`
/// (rounded up to whole seconds, as iperf3 requires).
pub fn stream(size: usize, duration: Duration) -> Result<Row> {
    if which("iperf3").is_none() {
        return Ok(Row::unavailable(
            NAME,
            "stream",
            size,
            not_installed_note("iperf3", "iperf3"),
        ));
    }
    let port = free_port()?;
    let port_arg = port.to_string();
    let secs = whole_seconds(duration);
    let mut server = BackgroundServer::spawn(Command::new("iperf3").args([
        "-s",
        "-1",
        "--forceflush",
        "-B",
        "127.0.0.1",
        "-p",
        &port_arg,
    ]))?;
    server
        .wait_for_output("listening", Duration::from_secs(5))
        .context("waiting for the iperf3 server")?;
    let finished = run_with_timeout(
        Command::new("iperf3").args([
            "-c",
            "127.0.0.1",
            "-p",
            &port_arg,
            "-J",
            "-l",
            &size.to_string(),
            "-t",
            &secs.to_string(),
        ]),
        Duration::from_secs(secs + 15),
    )?;
    drop(server);
    if !finished.status.success() {
        bail!(
            "iperf3 client failed ({}): {}{}",
            finished.status,
            finished.stdout,
            finished.stderr
        );
    }
    let mut row = Row::new(NAME, "stream", size, 1);
    parse_report(&finished.stdout, size, &mut row)?;
    Ok(row)
}

/// Fills `row` from iperf3's `-J` output: receiver-side bits/s, bytes and seconds.
pub fn parse_report(json: &str, size: usize, row: &mut Row) -> Result<()> {
    let report: Value = serde_json::from_str(json).context("parsing iperf3 -J output")?;
    if let Some(err) = report.get("error").and_then(Value::as_str) {
        bail!("iperf3 reported an error: {err}");
    }
    let received = report
        .pointer("/end/sum_received")
        .context("iperf3 JSON has no end.sum_received")?;
    let bits_per_second = received
        .get("bits_per_second")
        .and_then(Value::as_f64)
        .context("iperf3 JSON has no end.sum_received.bits_per_second")?;
    let seconds = received
        .get("seconds")
        .and_then(Value::as_f64)
        .context("iperf3 JSON has no end.sum_received.seconds")?;
    row.gbit_per_sec = Some(bits_per_second / 1e9);
    row.msgs_per_sec = Some(bits_per_second / 8.0 / size as f64);
    row.duration_secs = Some(seconds);
    row.note = Some(format!(
        "{} writes (-l), receiver side",
        crate::measure::format_size(size as u64)
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_receiver_summary() {
        let json = r#"{"start":{},"end":{"sum_sent":{"bits_per_second":2e10},
            "sum_received":{"seconds":2.0,"bytes":5000000000,"bits_per_second":2e10}}}"#;
        let mut row = Row::new(NAME, "stream", 1 << 20, 1);
        parse_report(json, 1 << 20, &mut row).unwrap();
        assert_eq!(row.gbit_per_sec, Some(20.0));
        let expected = 2e10 / 8.0 / (1 << 20) as f64;
        assert!((row.msgs_per_sec.unwrap() - expected).abs() < 1e-6);
    }

    #[test]
    fn reports_error_field() {
        let mut row = Row::new(NAME, "stream", 1, 1);
        let err = parse_report(r#"{"error":"unable to connect"}"#, 1, &mut row).unwrap_err();
        assert!(err.to_string().contains("unable to connect"));
    }
}
