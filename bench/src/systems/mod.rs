//! The systems under test. Socket systems implement [`Transport`] (a server half and a
//! client half, so they can also run on two hosts); external tools and rings expose
//! plain functions. The suite (`crate::suite`) decides which ones run.

pub mod dataplane_dpdk;
pub mod dataplane_posix;
pub mod dataplane_rdma;
pub mod external;
pub mod iperf3;
pub mod messenger_remote;
pub mod messenger_rows;
pub mod perftest;
pub mod rings;
pub mod sockperf;
pub mod std_blocking;
pub mod tokio_framed;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::row::Row;

/// What a connection asks the server to do; sent as the first frame (one byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Count every frame; when the client half-closes, reply with one frame holding
    /// the message count and payload byte count (two little-endian `u64`s).
    Sink = 0,
    /// Send every frame straight back.
    Echo = 1,
}

impl Mode {
    /// Decodes the hello byte.
    pub fn from_byte(byte: u8) -> Result<Self> {
        match byte {
            0 => Ok(Self::Sink),
            1 => Ok(Self::Echo),
            other => Err(anyhow!("unknown mode byte {other} in hello frame")),
        }
    }
}

/// Encodes the sink's final report frame payload.
pub fn encode_report(messages: u64, bytes: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&messages.to_le_bytes());
    out[8..].copy_from_slice(&bytes.to_le_bytes());
    out
}

/// Decodes the sink's final report frame payload into `(messages, bytes)`.
pub fn decode_report(payload: &[u8]) -> Result<(u64, u64)> {
    let arr: [u8; 16] = payload
        .try_into()
        .map_err(|_| anyhow!("sink report has {} bytes, expected 16", payload.len()))?;
    let (m, b) = arr.split_at(8);
    Ok((
        u64::from_le_bytes(m.try_into()?),
        u64::from_le_bytes(b.try_into()?),
    ))
}

/// A message-over-TCP system with separate server and client halves.
///
/// Stream rows are measured at the receiver: the client sends for the duration,
/// half-closes, and the server replies with what it received; the clock stops when
/// that reply arrives, so queued-but-undelivered messages are never counted.
pub trait Transport: Sync {
    /// System name used in rows.
    fn name(&self) -> &'static str;

    /// Serves connections on `listener` until `stop` is set (checked after each
    /// accepted connection). `workers` sizes the event loop where there is one.
    fn serve(&self, listener: TcpListener, workers: u32, stop: Arc<AtomicBool>) -> Result<()>;

    /// One-way stream of `size`-byte messages on `connections` connections.
    fn stream_client(
        &self,
        addr: SocketAddr,
        size: usize,
        connections: u32,
        workers: u32,
        duration: Duration,
    ) -> Result<Row>;

    /// Ping-pong of `size`-byte messages on one connection; full round-trip latency.
    fn pingpong_client(&self, addr: SocketAddr, size: usize, duration: Duration) -> Result<Row>;
}

/// A [`Transport`] server on a free loopback port, stopped when dropped.
pub struct LocalServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl LocalServer {
    /// Starts `transport`'s server on `127.0.0.1:0` in a background thread.
    pub fn start(transport: &'static dyn Transport, workers: u32) -> Result<Self> {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a loopback listener")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("{}-server", transport.name()))
            .spawn(move || transport.serve(listener, workers, stop2))
            .context("spawning the server thread")?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and returns its result.
    pub fn stop(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        thread
            .join()
            .map_err(|_| anyhow!("server thread panicked"))?
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Runs a stream row of `transport` with client and server on loopback.
pub fn local_stream(
    transport: &'static dyn Transport,
    size: usize,
    connections: u32,
    workers: u32,
    duration: Duration,
) -> Result<Row> {
    let server = LocalServer::start(transport, workers)?;
    let row = transport.stream_client(server.addr(), size, connections, workers, duration)?;
    server.stop()?;
    Ok(row)
}

/// Runs a ping-pong row of `transport` with client and server on loopback.
pub fn local_pingpong(
    transport: &'static dyn Transport,
    size: usize,
    workers: u32,
    duration: Duration,
) -> Result<Row> {
    let server = LocalServer::start(transport, workers)?;
    let row = transport.pingpong_client(server.addr(), size, duration)?;
    server.stop()?;
    Ok(row)
}

/// Share of the duration spent warming up a ping-pong before recording (capped).
pub fn warmup(duration: Duration) -> Duration {
    (duration / 10).min(Duration::from_millis(200))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_roundtrip() {
        let (m, b) = decode_report(&encode_report(7, 448)).unwrap();
        assert_eq!((m, b), (7, 448));
        assert!(decode_report(&[0; 3]).is_err());
        assert!(Mode::from_byte(9).is_err());
        assert_eq!(Mode::from_byte(1).unwrap(), Mode::Echo);
    }
}
