//! `dataplane-posix`: the messenger on the POSIX stack, client and server messengers in this
//! process over loopback, lossless connections (sequenced, acknowledged, crc-checked). The
//! rows come from the shared harness in `messenger_rows`; this file adds the memory-per-idle-
//! connection figure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use dataplane::stack::NetworkStack;
use dataplane::{Buf, Config, Connection, Message, Policy};
use dataplane_stack_posix::PosixStack;

use crate::row::Row;
use crate::systems::messenger_rows::{self, send, server, sink, Backend};

/// System name of this row.
pub const NAME: &str = "dataplane-posix";

/// The POSIX stack on loopback.
struct Posix;

impl Backend for Posix {
    fn name(&self) -> &'static str {
        NAME
    }
    fn config(&self, _server: bool, workers: u32) -> Config {
        Config {
            workers: workers.max(1) as usize,
            ..Config::default()
        }
    }
    fn stack(&self, _server: bool) -> Result<Arc<dyn NetworkStack>> {
        Ok(Arc::new(PosixStack::new()))
    }
    fn bind_addr(&self) -> Result<SocketAddr> {
        Ok("127.0.0.1:0".parse()?)
    }
}

/// The POSIX rows' backend, for the two-host mode (`systems::messenger_remote`).
pub fn backend() -> &'static dyn Backend {
    &Posix
}

/// One-way stream of `size`-byte messages on `connections` lossless connections.
pub fn stream(size: usize, connections: u32, workers: u32, duration: Duration) -> Result<Row> {
    messenger_rows::stream(&Posix, size, connections, workers, duration)
}

/// Ping-pong of `size`-byte messages on one lossless connection.
pub fn pingpong(size: usize, duration: Duration) -> Result<Row> {
    messenger_rows::pingpong(&Posix, size, duration)
}

/// Resident set size of this process in bytes (`/proc/self/statm`).
fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("reading /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("malformed /proc/self/statm")?
        .parse()
        .context("malformed /proc/self/statm")?;
    Ok(pages * 4096)
}

/// User-space memory per idle lossless connection, both ends included (client and server
/// messengers in this process): RSS growth from `n` to `2n` idle connections, divided by
/// `n` (the first `n` bring the buffer pools to steady state). Kernel socket buffers are not
/// in RSS and not counted.
pub fn idle_connection_bytes(n: usize) -> Result<u64> {
    let (srv, addr) = server(&Posix, 1, sink(false))?;
    let client = messenger_rows::messenger(&Posix, "bench-client", false, 1, sink(false))?;
    // Warm up: pools, first connection, thread stacks.
    let first = client.open(addr, Policy::lossless_client())?;
    send(&first, Message::new(1, Buf::from_static(b"warm-up")))?;
    let ready = |want: u64| {
        let end = Instant::now() + Duration::from_secs(30);
        while srv.counters().accepted < want && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        srv.counters().accepted >= want
    };
    if !ready(1) {
        bail!("warm-up connection never completed");
    }
    // First batch: brings the receive pools to their steady state (their pages are pool
    // memory, bounded per worker, not per connection).
    let mut conns: Vec<Connection> = (0..n)
        .map(|_| client.open(addr, Policy::lossless_client()))
        .collect::<Result<_, _>>()?;
    if !ready(n as u64 + 1) {
        bail!(
            "only {} of {n} idle connections completed",
            srv.counters().accepted - 1
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    let before = rss_bytes()?;
    // Second batch: what n more idle connections cost.
    for _ in 0..n {
        conns.push(client.open(addr, Policy::lossless_client())?);
    }
    if !ready(2 * n as u64 + 1) {
        bail!(
            "only {} of {} idle connections completed",
            srv.counters().accepted - 1,
            2 * n
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    let after = rss_bytes()?;
    drop(conns);
    client.shutdown();
    srv.shutdown();
    Ok(after.saturating_sub(before) / n as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_stream_and_pingpong() {
        let row = stream(64, 2, 1, Duration::from_millis(100)).unwrap();
        assert!(row.msgs_per_sec.unwrap() > 0.0);
        assert_eq!(row.connections, 2);
        let row = pingpong(64, Duration::from_millis(100)).unwrap();
        assert!(row.p50_us.unwrap() > 0.0);
        assert!(row.p999_us.unwrap() >= row.p50_us.unwrap());
    }
}
