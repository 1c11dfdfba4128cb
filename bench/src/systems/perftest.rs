//! perftest baselines on an RDMA device: `ib_send_bw` (one-way SEND bandwidth, `stream`) and
//! `ib_send_lat` (SEND ping-pong, `pingpong`), client and server on the same device; and
//! `ib_send_lat_framed`, the same ping-pong moving the frame of our message (see [`LAT_FRAMED`]).
//!
//! Environment: `DATAPLANE_RDMA_ADDR` (server address, default 127.0.0.1),
//! `DATAPLANE_RDMA_DEVICE` (`-d`, default perftest's first device) and
//! `DATAPLANE_RDMA_GID_INDEX` (`-x`, needed on RoCE; the VM script uses 1).
//!
//! Latency: `ib_send_lat` reports half the round trip (`t_typical` is the median of
//! RTT / 2). Every `pingpong` row of this tool is a **full round trip**, so the row holds
//! twice perftest's figures (said in the row's note).

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::row::Row;
use crate::suite::{FnSystem, Workload};
use crate::systems::external::{
    free_port, not_installed_note, run_with_timeout, strip_ansi, which, whole_seconds,
    BackgroundServer,
};

/// Name of the bandwidth baseline.
pub const BW: &str = "ib_send_bw";
/// Name of the latency baseline.
pub const LAT: &str = "ib_send_lat";
/// Name of the like-for-like latency reference: `ib_send_lat` moving the frame the messenger
/// puts on the wire for the row's payload, on a shared receive queue, as `dataplane-rdma`
/// does. Not a target's baseline: it separates what the transport charges for our frame from
/// what the messenger itself costs per round trip.
pub const LAT_FRAMED: &str = "ib_send_lat_framed";

/// Suite entry: `ib_send_bw` for `stream`.
pub const BW_SYSTEM: FnSystem = FnSystem {
    name: BW,
    supports: |w, _| w == Workload::Stream,
    run: |_, p| send_bw(p.size, p.duration),
};

/// Suite entry: `ib_send_lat` for `pingpong`.
pub const LAT_SYSTEM: FnSystem = FnSystem {
    name: LAT,
    supports: |w, _| w == Workload::PingPong,
    run: |_, p| send_lat(p.size, p.duration),
};

/// Suite entry: [`LAT_FRAMED`] for `pingpong` up to 4 KiB, where the frame's 44 bytes are a
/// share of what the transport moves worth separating.
pub const LAT_FRAMED_SYSTEM: FnSystem = FnSystem {
    name: LAT_FRAMED,
    supports: |w, size| w == Workload::PingPong && size <= 4 << 10,
    run: |_, p| send_lat_framed(p.size, p.duration),
};

/// Bytes the messenger puts on the wire for a message of `payload` bytes sent alone, by the
/// wire format's own rule ([`Preamble::frame_len`](dataplane::wire::Preamble::frame_len)): the
/// preamble, the payload and, for a non-empty payload, its epilogue (sent, as zeros, also
/// where the transport checks payloads).
pub fn frame_len(payload: usize) -> usize {
    use dataplane::wire::{FrameHead, Preamble, Tag};
    let head = FrameHead {
        tag: Tag::Message as u8,
        // Payloads of this row are a few KiB at most (`LAT_FRAMED_SYSTEM`).
        data_len: u32::try_from(payload).unwrap_or(u32::MAX),
        ..FrameHead::default()
    };
    Preamble::new(&head).frame_len()
}

fn addr() -> String {
    std::env::var("DATAPLANE_RDMA_ADDR").unwrap_or_else(|_| "127.0.0.1".to_string())
}

/// `-d DEV -x GID -p PORT` as the environment asks.
fn common_args(port: &str) -> Vec<String> {
    let mut a = vec!["-p".to_string(), port.to_string(), "-F".to_string()];
    if let Ok(d) = std::env::var("DATAPLANE_RDMA_DEVICE") {
        a.extend(["-d".to_string(), d]);
    }
    if let Ok(x) = std::env::var("DATAPLANE_RDMA_GID_INDEX") {
        a.extend(["-x".to_string(), x]);
    }
    a
}

/// Runs `tool` as server and client with `args`, returns the client's output.
fn run(tool: &str, args: &[String], limit: Duration) -> Result<String> {
    let port = free_port()?.to_string();
    let mut base = common_args(&port);
    base.extend(args.iter().cloned());
    let mut server = BackgroundServer::spawn(Command::new(tool).args(&base))?;
    // perftest prints nothing until a client connects and may take a while to listen (seconds
    // under emulation): retry the client while it cannot connect.
    let mut attempt = 0;
    let finished = loop {
        std::thread::sleep(Duration::from_millis(700));
        let mut cmd = Command::new(tool);
        cmd.args(&base).arg(addr());
        let f = run_with_timeout(&mut cmd, limit)?;
        attempt += 1;
        let refused = !f.status.success()
            && (f.stdout.contains("Couldn't connect") || f.stderr.contains("Couldn't connect"));
        if !refused || attempt == 10 {
            break f;
        }
    };
    let _ = server.wait_for_output("#bytes", Duration::from_secs(5));
    drop(server);
    let text = strip_ansi(&format!("{}\n{}", finished.stdout, finished.stderr));
    if !finished.status.success() {
        bail!("{tool} failed ({}): {text}", finished.status);
    }
    Ok(text)
}

/// The first result line (starts with the message size) split into numbers.
fn result_fields(text: &str, size: usize) -> Result<Vec<f64>> {
    let want = size.to_string();
    text.lines()
        .map(str::split_whitespace)
        .find_map(|mut f| {
            (f.next()? == want).then(|| f.filter_map(|x| x.parse::<f64>().ok()).collect())
        })
        .with_context(|| format!("no result line for {size} bytes in perftest output: {text}"))
}

/// One-way SEND bandwidth (`ib_send_bw -D secs --report_gbits`).
pub fn send_bw(size: usize, duration: Duration) -> Result<Row> {
    if which(BW).is_none() {
        return Ok(Row::unavailable(
            BW,
            "stream",
            size,
            not_installed_note(BW, "perftest"),
        ));
    }
    let secs = whole_seconds(duration);
    let args = [
        "-s".to_string(),
        size.to_string(),
        "-D".to_string(),
        secs.to_string(),
        "--report_gbits".to_string(),
    ];
    let text = run(BW, &args, Duration::from_secs(secs + 30))?;
    let mut row = Row::new(BW, "stream", size, 1);
    parse_bw(&text, size, &mut row)?;
    row.duration_secs = Some(secs as f64);
    Ok(row)
}

/// Parses `#bytes #iterations BW_peak BW_average MsgRate` (Gbit/s, Mpps).
pub fn parse_bw(text: &str, size: usize, row: &mut Row) -> Result<()> {
    let f = result_fields(text, size)?;
    // f: iterations, peak, average, msg rate (Mpps)
    let (Some(avg), Some(mpps)) = (f.get(2), f.get(3)) else {
        bail!("short ib_send_bw result line: {f:?}");
    };
    if *avg <= 0.0 && *mpps <= 0.0 {
        // A run that moved nothing (seen once in the VM, between two good runs) is a failed
        // measurement, not a speed of zero.
        bail!("ib_send_bw reported no traffic: {f:?}");
    }
    row.gbit_per_sec = Some(*avg);
    // The message rate is printed with six decimals of Mpps; derive it from the bandwidth
    // if that rounded it to nothing.
    row.msgs_per_sec = Some(if *mpps > 0.0 {
        mpps * 1e6
    } else {
        avg * 1e9 / 8.0 / size.max(1) as f64
    });
    row.note = Some("perftest SEND bandwidth, BW average".to_string());
    Ok(())
}

/// SEND ping-pong latency (`ib_send_lat -n iters`), doubled to a full round trip.
pub fn send_lat(size: usize, duration: Duration) -> Result<Row> {
    lat_row(LAT, size, size, &[], duration)
}

/// [`LAT_FRAMED`]: `ib_send_lat -s <frame> --use-srq`, reported at the payload size `size`
/// so that it lines up with the messenger's row.
pub fn send_lat_framed(size: usize, duration: Duration) -> Result<Row> {
    let wire = frame_len(size);
    let mut row = lat_row(LAT_FRAMED, size, wire, &["--use-srq"], duration)?;
    if row.is_measured() {
        row.note = Some(format!(
            "{LAT} -s {wire} --use-srq: the frame of a {size} B message on a shared receive \
             queue, as dataplane-rdma sends it; t_typical/99%/99.9% x2 (full round trip)"
        ));
    }
    Ok(row)
}

/// One `ib_send_lat` run moving `wire` bytes per message with `extra` flags, as a row named
/// `name` for `size`-byte messages.
fn lat_row(
    name: &str,
    size: usize,
    wire: usize,
    extra: &[&str],
    duration: Duration,
) -> Result<Row> {
    if which(LAT).is_none() {
        return Ok(Row::unavailable(
            name,
            "pingpong",
            size,
            not_installed_note(LAT, "perftest"),
        ));
    }
    let secs = whole_seconds(duration);
    // perftest's latency tests count iterations: ~30 µs each for small messages under
    // emulation (~2 µs on hardware), ~10 ms for 64 KiB under emulation. Enough for stable
    // percentiles within the time limit either way.
    let iters = if wire >= 16 << 10 { 500 } else { 5000 };
    let mut args = vec![
        "-s".to_string(),
        wire.to_string(),
        "-n".to_string(),
        iters.to_string(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    // Under emulation on a loaded host perftest now and then reports `inf` (its cycle-based
    // clock): run it again rather than record a row without a number.
    let mut last = String::new();
    for _ in 0..3 {
        let text = run(LAT, &args, Duration::from_secs(secs + 60))?;
        let mut row = Row::new(name, "pingpong", size, 1);
        parse_lat(&text, wire, &mut row)?;
        if row.p50_us.is_some_and(f64::is_finite) {
            return Ok(row);
        }
        last = text;
    }
    bail!("{LAT} gave no finite latency in 3 runs; last output: {last}")
}

/// Parses `#bytes #iterations t_min t_max t_typical t_avg t_stdev 99% 99.9%` (µs, one way).
pub fn parse_lat(text: &str, size: usize, row: &mut Row) -> Result<()> {
    let f = result_fields(text, size)?;
    let (Some(iters), Some(typical), Some(p99), Some(p999)) =
        (f.first(), f.get(3), f.get(6), f.get(7))
    else {
        bail!("short ib_send_lat result line: {f:?}");
    };
    row.p50_us = Some(2.0 * typical);
    row.p99_us = Some(2.0 * p99);
    row.p999_us = Some(2.0 * p999);
    if let Some(avg) = f.get(4) {
        if *avg > 0.0 {
            row.msgs_per_sec = Some(1e6 / (2.0 * avg));
            row.duration_secs = Some(iters * 2.0 * avg / 1e6);
        }
    }
    row.note = Some("perftest t_typical/99%/99.9% x2 (full round trip)".to_string());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bw_and_lat_output() {
        let bw = " #bytes     #iterations    BW peak[Gb/sec]    BW average[Gb/sec]   MsgRate[Mpps]\n 65536      3500             0.00               0.19  \t\t   0.000365\n";
        let mut row = Row::new(BW, "stream", 65536, 1);
        parse_bw(bw, 65536, &mut row).unwrap();
        assert_eq!(row.gbit_per_sec, Some(0.19));
        assert!((row.msgs_per_sec.unwrap() - 365.0).abs() < 1e-6);
        let lat = " #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] \n 64       5000          20.10          400.00       27.00              28.00       3.00   \t\t45.00   \t\t90.00  \n";
        let mut row = Row::new(LAT, "pingpong", 64, 1);
        parse_lat(lat, 64, &mut row).unwrap();
        assert_eq!(row.p50_us, Some(54.0));
        assert_eq!(row.p99_us, Some(90.0));
        assert_eq!(row.p999_us, Some(180.0));
        assert!(parse_lat("garbage", 64, &mut row).is_err());
    }

    #[test]
    fn the_framed_reference_moves_the_messengers_frame() {
        // 40 B preamble + payload + 4 B epilogue: what a lone message is on the wire; an
        // empty payload has no epilogue.
        assert_eq!(frame_len(64), 108);
        assert_eq!(frame_len(0), 40);
    }

    #[test]
    fn a_bandwidth_run_that_moved_nothing_is_an_error() {
        let zero = " #bytes     #iterations    BW peak[Gb/sec]    BW average[Gb/sec]   MsgRate[Mpps]\n 64      0             0.00               0.00  \t\t   0.000000\n";
        let mut row = Row::new(BW, "stream", 64, 1);
        assert!(parse_bw(zero, 64, &mut row).is_err());
        assert!(!row.is_measured());
    }
}
