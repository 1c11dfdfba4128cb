//! `tokio-framed` baseline: tokio + `tokio_util::codec::LengthDelimitedCodec`, written
//! the way a Rust user would: `Framed` sink/stream, frames queued with `feed` and one
//! `flush` every [`FLUSH_EVERY`] frames (not one flush per message).
//!
//! Client and server each get their own multi-threaded runtime with `workers` worker
//! threads (as two processes would). `TCP_NODELAY` is set on every socket.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::measure::{LatencyRecorder, Throughput};
use crate::row::Row;
use crate::systems::{decode_report, encode_report, warmup, Mode, Transport};

/// System name of this baseline.
pub const NAME: &str = "tokio-framed";

/// Frames queued with `feed` between two `flush` calls on the sending side.
pub const FLUSH_EVERY: usize = 256;

/// The `tokio-framed` transport.
pub struct TokioFramed;

/// The instance the suite registers.
pub static TOKIO_FRAMED: TokioFramed = TokioFramed;

/// Runs a loopback stream row (client and server in this process).
pub fn stream(size: usize, connections: u32, workers: u32, duration: Duration) -> Result<Row> {
    super::local_stream(&TOKIO_FRAMED, size, connections, workers, duration)
}

/// Runs a loopback ping-pong row (client and server in this process).
pub fn pingpong(size: usize, duration: Duration) -> Result<Row> {
    super::local_pingpong(&TOKIO_FRAMED, size, 1, duration)
}

type Conn = Framed<TcpStream, LengthDelimitedCodec>;

fn runtime(workers: u32) -> Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1) as usize)
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(64 * 1024 * 1024)
        .new_codec()
}

async fn connect(addr: SocketAddr, mode: Mode) -> Result<Conn> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let mut conn = Framed::new(stream, codec());
    conn.send(Bytes::from(vec![mode as u8]))
        .await
        .context("sending the hello frame")?;
    Ok(conn)
}

async fn handle(stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut conn = Framed::new(stream, codec());
    let Some(hello) = conn.next().await else {
        return Ok(()); // a wake-up connection
    };
    let hello = hello.context("reading the hello frame")?;
    match Mode::from_byte(*hello.first().context("empty hello frame")?)? {
        Mode::Sink => {
            let (mut messages, mut bytes) = (0u64, 0u64);
            while let Some(frame) = conn.next().await {
                let frame = frame.context("reading a frame")?;
                messages += 1;
                bytes += frame.len() as u64;
            }
            conn.send(Bytes::copy_from_slice(&encode_report(messages, bytes)))
                .await
                .context("sending the sink report")?;
        }
        Mode::Echo => {
            while let Some(frame) = conn.next().await {
                let frame = frame.context("reading a frame")?;
                conn.send(frame.freeze()).await.context("echoing a frame")?;
            }
        }
    }
    Ok(())
}

async fn stream_connection(mut conn: Conn, size: usize, deadline: Instant) -> Result<(u64, u64)> {
    let payload = Bytes::from(vec![0xA5u8; size]);
    let mut sent = 0u64;
    while Instant::now() < deadline {
        for _ in 0..FLUSH_EVERY {
            conn.feed(payload.clone())
                .await
                .context("queueing a frame")?;
        }
        SinkExt::<Bytes>::flush(&mut conn)
            .await
            .context("flushing frames")?;
        sent += FLUSH_EVERY as u64;
    }
    conn.get_mut()
        .shutdown()
        .await
        .context("half-closing the connection")?;
    let report = conn
        .next()
        .await
        .context("server closed without a sink report")?
        .context("reading the sink report")?;
    let (messages, bytes) = decode_report(&report)?;
    if messages != sent {
        bail!("sink counted {messages} messages, client sent {sent}");
    }
    Ok((messages, bytes))
}

impl Transport for TokioFramed {
    fn name(&self) -> &'static str {
        NAME
    }

    fn serve(&self, listener: TcpListener, workers: u32, stop: Arc<AtomicBool>) -> Result<()> {
        let rt = runtime(workers)?;
        rt.block_on(async move {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            loop {
                let (stream, _) = listener.accept().await.context("accepting a connection")?;
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                tokio::spawn(async move {
                    if let Err(e) = handle(stream).await {
                        eprintln!("tokio-framed server connection: {e:#}");
                    }
                });
            }
            Ok::<_, anyhow::Error>(())
        })?;
        rt.shutdown_background();
        Ok(())
    }

    fn stream_client(
        &self,
        addr: SocketAddr,
        size: usize,
        connections: u32,
        workers: u32,
        duration: Duration,
    ) -> Result<Row> {
        let rt = runtime(workers)?;
        let (totals, elapsed) = rt.block_on(async move {
            let mut conns = Vec::with_capacity(connections as usize);
            for _ in 0..connections {
                conns.push(connect(addr, Mode::Sink).await?);
            }
            let start = Instant::now();
            let deadline = start + duration;
            let tasks: Vec<_> = conns
                .into_iter()
                .map(|c| tokio::spawn(stream_connection(c, size, deadline)))
                .collect();
            let mut totals = (0u64, 0u64);
            for t in tasks {
                let (m, b) = t.await.context("sender task panicked")??;
                totals.0 += m;
                totals.1 += b;
            }
            Ok::<_, anyhow::Error>((totals, start.elapsed()))
        })?;
        rt.shutdown_background();
        let mut row = Row::new(NAME, "stream", size, connections);
        row.workers = Some(workers);
        Throughput {
            messages: totals.0,
            bytes: totals.1,
            elapsed,
        }
        .fill(&mut row);
        Ok(row)
    }

    fn pingpong_client(&self, addr: SocketAddr, size: usize, duration: Duration) -> Result<Row> {
        let rt = runtime(1)?;
        let (recorder, elapsed) = rt.block_on(async move {
            let mut conn = connect(addr, Mode::Echo).await?;
            let payload = Bytes::from(vec![0x5Au8; size]);
            let mut recorder = LatencyRecorder::new()?;
            let warm_until = Instant::now() + warmup(duration);
            let mut start = Instant::now();
            let mut deadline = warm_until + duration;
            let mut warming = true;
            loop {
                let t0 = Instant::now();
                if warming && t0 >= warm_until {
                    warming = false;
                    start = t0;
                    deadline = t0 + duration;
                }
                if t0 >= deadline {
                    break;
                }
                conn.send(payload.clone()).await.context("sending a ping")?;
                conn.next()
                    .await
                    .context("server closed the ping-pong connection")?
                    .context("reading a pong")?;
                if !warming {
                    recorder.record(t0.elapsed());
                }
            }
            Ok::<_, anyhow::Error>((recorder, start.elapsed()))
        })?;
        rt.shutdown_background();
        let mut row = Row::new(NAME, "pingpong", size, 1);
        row.workers = Some(1);
        row.msgs_per_sec = Some(recorder.len() as f64 / elapsed.as_secs_f64());
        row.duration_secs = Some(elapsed.as_secs_f64());
        recorder.fill(&mut row);
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_stream_and_pingpong() {
        let row = stream(4096, 2, 1, Duration::from_millis(100)).unwrap();
        assert!(row.msgs_per_sec.unwrap() > 0.0);
        assert!(row.gbit_per_sec.unwrap() > 0.0);
        let row = pingpong(64, Duration::from_millis(100)).unwrap();
        assert!(row.p50_us.unwrap() > 0.0);
    }
}
