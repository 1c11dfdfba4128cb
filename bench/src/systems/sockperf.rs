//! `sockperf` baseline: TCP throughput (`tp`) and ping-pong latency (`pp`) over loopback.
//!
//! Latency: `sockperf pp` reports half the round trip ("latency") by default. This
//! benchmark runs it with `--full-rtt`, so its percentiles are **full round-trip
//! times**, the same quantity every `pingpong` row of this tool measures (send one
//! message, wait for the echo).
//!
//! Throughput: `sockperf tp` reports the *sender's* message rate (its server does not
//! report what it received), with Nagle's algorithm left at sockperf's throughput
//! default (enabled).

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::row::Row;
use crate::suite::{FnSystem, Workload};
use crate::systems::external::{
    free_port, not_installed_note, run_with_timeout, strip_ansi, which, whole_seconds,
    BackgroundServer,
};

/// System name of this baseline.
pub const NAME: &str = "sockperf";

/// Suite entry: `stream` (tp) and `pingpong` (pp) at 64 B.
pub const SYSTEM: FnSystem = FnSystem {
    name: NAME,
    supports: |w, size| matches!(w, Workload::Stream | Workload::PingPong) && size == 64,
    run: |w, p| match w {
        Workload::PingPong => pingpong(p.size, p.duration),
        _ => throughput(p.size, p.duration),
    },
};

fn missing(workload: &str, size: usize) -> Option<Row> {
    which("sockperf").is_none().then(|| {
        Row::unavailable(
            NAME,
            workload,
            size,
            not_installed_note("sockperf", "sockperf"),
        )
    })
}

/// Runs `sockperf <mode> --tcp -m size -t secs` against a fresh `sockperf server`.
fn run_client(mode: &str, size: usize, duration: Duration, extra: &[&str]) -> Result<String> {
    let port = free_port()?.to_string();
    let secs = whole_seconds(duration);
    let mut server = BackgroundServer::spawn(Command::new("sockperf").args([
        "server",
        "--tcp",
        "-i",
        "127.0.0.1",
        "-p",
        &port,
    ]))?;
    server
        .wait_for_output("PORT", Duration::from_secs(5))
        .context("waiting for the sockperf server")?;
    // sockperf prints its address before it listens; give it a moment.
    std::thread::sleep(Duration::from_millis(100));
    let mut cmd = Command::new("sockperf");
    cmd.args([
        mode,
        "--tcp",
        "-i",
        "127.0.0.1",
        "-p",
        &port,
        "-m",
        &size.to_string(),
        "-t",
        &secs.to_string(),
    ])
    .args(extra);
    let finished = run_with_timeout(&mut cmd, Duration::from_secs(secs + 15))?;
    drop(server);
    let text = strip_ansi(&format!("{}\n{}", finished.stdout, finished.stderr));
    if !finished.status.success() {
        bail!("sockperf {mode} failed ({}): {text}", finished.status);
    }
    Ok(text)
}

/// One-way throughput of `size`-byte messages (`sockperf tp`).
pub fn throughput(size: usize, duration: Duration) -> Result<Row> {
    if let Some(row) = missing("stream", size) {
        return Ok(row);
    }
    let text = run_client("tp", size, duration, &[])?;
    let mut row = Row::new(NAME, "stream", size, 1);
    parse_throughput(&text, size, &mut row)?;
    Ok(row)
}

/// Full round-trip latency of `size`-byte messages (`sockperf pp --full-rtt`).
pub fn pingpong(size: usize, duration: Duration) -> Result<Row> {
    if let Some(row) = missing("pingpong", size) {
        return Ok(row);
    }
    let text = run_client("pp", size, duration, &["--full-rtt"])?;
    let mut row = Row::new(NAME, "pingpong", size, 1);
    parse_pingpong(&text, &mut row)?;
    Ok(row)
}

/// Parses `Summary: Message Rate is N [msg/sec]` and the test length of `sockperf tp`.
pub fn parse_throughput(text: &str, size: usize, row: &mut Row) -> Result<()> {
    let rate = text
        .lines()
        .find_map(|l| {
            l.split_once("Message Rate is")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
        })
        .with_context(|| format!("no `Message Rate is` line in sockperf tp output: {text}"))?;
    row.msgs_per_sec = Some(rate);
    row.gbit_per_sec = Some(rate * size as f64 * 8.0 / 1e9);
    row.duration_secs = text.lines().find_map(|l| {
        let rest = l.split_once("messages sent in")?.1;
        rest.split_whitespace().next()?.parse().ok()
    });
    row.note = Some("sender-side rate (sockperf tp)".to_string());
    Ok(())
}

/// Parses the percentile lines of `sockperf pp` (`---> percentile 50.000 = 73.679`,
/// microseconds) into p50/p99/p99.9 and CDF points.
pub fn parse_pingpong(text: &str, row: &mut Row) -> Result<()> {
    let mut points: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some((_, rest)) = line.split_once("--->") else {
            continue;
        };
        let Some((label, value)) = rest.split_once('=') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = label.trim();
        let quantile = if label.contains("<MIN>") {
            0.0
        } else if label.contains("<MAX>") {
            1.0
        } else if let Some(p) = label.strip_prefix("percentile") {
            match p.trim().parse::<f64>() {
                Ok(p) => p / 100.0,
                Err(_) => continue,
            }
        } else {
            continue;
        };
        points.push((value, quantile));
    }
    let at = |q: f64| {
        points
            .iter()
            .find(|(_, pq)| (pq - q).abs() < 1e-9)
            .map(|(v, _)| *v)
    };
    row.p50_us =
        Some(at(0.5).with_context(|| {
            format!("no `percentile 50.000` line in sockperf pp output: {text}")
        })?);
    row.p99_us = at(0.99);
    row.p999_us = at(0.999);
    points.sort_by(|a, b| a.1.total_cmp(&b.1));
    row.cdf = points;
    row.duration_secs = text.lines().find_map(|l| {
        let rest = l.split_once("[Valid Duration] RunTime=")?.1;
        rest.split_whitespace().next()?.parse().ok()
    });
    row.msgs_per_sec = text.lines().find_map(|l| {
        let rest = l.split_once("[Valid Duration] RunTime=")?.1;
        let secs: f64 = rest.split_whitespace().next()?.parse().ok()?;
        let received = rest.split_once("ReceivedMessages=")?.1;
        let n: f64 = received.trim().trim_end_matches(';').parse().ok()?;
        Some(n / secs)
    });
    row.note = Some("full RTT (--full-rtt)".to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PP: &str =
        "sockperf: [Valid Duration] RunTime=1.550 sec; SentMessages=20603; ReceivedMessages=20603
sockperf: ---> <MAX> observation = 2681.031
sockperf: ---> percentile 99.999 = 2681.031
sockperf: ---> percentile 99.990 = 1491.068
sockperf: ---> percentile 99.900 =  203.932
sockperf: ---> percentile 99.000 =  115.791
sockperf: ---> percentile 90.000 =   85.356
sockperf: ---> percentile 50.000 =   73.679
sockperf: ---> <MIN> observation =   13.069";

    #[test]
    fn parses_pingpong() {
        let mut row = Row::new(NAME, "pingpong", 64, 1);
        parse_pingpong(PP, &mut row).unwrap();
        assert_eq!(row.p50_us, Some(73.679));
        assert_eq!(row.p99_us, Some(115.791));
        assert_eq!(row.p999_us, Some(203.932));
        assert_eq!(row.duration_secs, Some(1.55));
        assert!((row.msgs_per_sec.unwrap() - 20603.0 / 1.55).abs() < 1e-6);
        assert_eq!(row.cdf.first().unwrap().1, 0.0);
        assert_eq!(row.cdf.last().unwrap().1, 1.0);
    }

    #[test]
    fn parses_throughput() {
        let text = "sockperf: Total of 2583874 messages sent in 2.000 sec\n\
                    sockperf: Summary: Message Rate is 1291625 [msg/sec]\n";
        let mut row = Row::new(NAME, "stream", 64, 1);
        parse_throughput(text, 64, &mut row).unwrap();
        assert_eq!(row.msgs_per_sec, Some(1291625.0));
        assert_eq!(row.duration_secs, Some(2.0));
    }

    #[test]
    fn missing_lines_are_errors() {
        let mut row = Row::new(NAME, "stream", 64, 1);
        assert!(parse_throughput("garbage", 64, &mut row).is_err());
        assert!(parse_pingpong("garbage", &mut row).is_err());
    }
}
