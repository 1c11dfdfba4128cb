//! `std-blocking` baseline: blocking `std::net` TCP, one thread per connection.
//!
//! Framing is a little-endian `u32` length prefix followed by the payload. The
//! sender builds prefix + payload once and issues one `write_all` per message; the
//! receiver reads through a `BufReader`. `TCP_NODELAY` is set on every socket, as a
//! messaging library would.

use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::measure::{LatencyRecorder, Throughput, CLOCK_CHECK_EVERY};
use crate::row::Row;
use crate::systems::{decode_report, encode_report, warmup, Mode, Transport};

/// System name of this baseline.
pub const NAME: &str = "std-blocking";

/// The `std-blocking` transport.
pub struct StdBlocking;

/// The instance the suite registers.
pub static STD_BLOCKING: StdBlocking = StdBlocking;

/// Runs a loopback stream row (client and server in this process).
pub fn stream(size: usize, connections: u32, workers: u32, duration: Duration) -> Result<Row> {
    super::local_stream(&STD_BLOCKING, size, connections, workers, duration)
}

/// Runs a loopback ping-pong row (client and server in this process).
pub fn pingpong(size: usize, duration: Duration) -> Result<Row> {
    super::local_pingpong(&STD_BLOCKING, size, 1, duration)
}

/// Builds one wire frame: length prefix then payload.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads one frame into `buf`; `Ok(false)` on a clean EOF before a new frame.
fn read_frame<R: Read>(reader: &mut R, buf: &mut Vec<u8>) -> Result<bool> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(false),
        Err(e) => return Err(e).context("reading a frame length"),
    }
    let len = u32::from_le_bytes(len) as usize;
    buf.resize(len, 0);
    reader.read_exact(buf).context("reading a frame payload")?;
    Ok(true)
}

fn connect(addr: SocketAddr, mode: Mode) -> Result<TcpStream> {
    let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    (&stream)
        .write_all(&frame(&[mode as u8]))
        .context("sending the hello frame")?;
    Ok(stream)
}

fn handle(stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(256 * 1024, stream.try_clone()?);
    let mut buf = Vec::new();
    if !read_frame(&mut reader, &mut buf)? {
        return Ok(()); // a wake-up connection
    }
    let mode = Mode::from_byte(*buf.first().context("empty hello frame")?)?;
    let mut writer = &stream;
    match mode {
        Mode::Sink => {
            let (mut messages, mut bytes) = (0u64, 0u64);
            while read_frame(&mut reader, &mut buf)? {
                messages += 1;
                bytes += buf.len() as u64;
            }
            writer
                .write_all(&frame(&encode_report(messages, bytes)))
                .context("sending the sink report")?;
        }
        Mode::Echo => {
            let mut out = Vec::new();
            while read_frame(&mut reader, &mut buf)? {
                out.clear();
                out.extend_from_slice(&(buf.len() as u32).to_le_bytes());
                out.extend_from_slice(&buf);
                writer.write_all(&out).context("echoing a frame")?;
            }
        }
    }
    Ok(())
}

/// Sends for `duration` after the barrier, half-closes and returns the sink's report.
fn stream_connection(
    addr: SocketAddr,
    size: usize,
    duration: Duration,
    barrier: &Barrier,
) -> Result<(u64, u64)> {
    let stream = connect(addr, Mode::Sink)?;
    let message = frame(&vec![0xA5u8; size]);
    barrier.wait();
    let deadline = Instant::now() + duration;
    let mut writer = &stream;
    let mut sent = 0u64;
    loop {
        writer.write_all(&message).context("sending a message")?;
        sent += 1;
        if sent.is_multiple_of(CLOCK_CHECK_EVERY) && Instant::now() >= deadline {
            break;
        }
    }
    stream.shutdown(Shutdown::Write)?;
    let mut reader = BufReader::new(&stream);
    let mut buf = Vec::new();
    if !read_frame(&mut reader, &mut buf)? {
        bail!("server closed without a sink report");
    }
    let (messages, bytes) = decode_report(&buf)?;
    if messages != sent {
        bail!("sink counted {messages} messages, client sent {sent}");
    }
    Ok((messages, bytes))
}

impl Transport for StdBlocking {
    fn name(&self) -> &'static str {
        NAME
    }

    fn serve(&self, listener: TcpListener, _workers: u32, stop: Arc<AtomicBool>) -> Result<()> {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let conn = conn.context("accepting a connection")?;
            std::thread::Builder::new()
                .name("std-blocking-conn".into())
                .spawn(move || {
                    if let Err(e) = handle(conn) {
                        eprintln!("std-blocking server connection: {e:#}");
                    }
                })
                .context("spawning a connection thread")?;
        }
        Ok(())
    }

    fn stream_client(
        &self,
        addr: SocketAddr,
        size: usize,
        connections: u32,
        _workers: u32,
        duration: Duration,
    ) -> Result<Row> {
        let barrier = Barrier::new(connections as usize + 1);
        let (totals, start) = std::thread::scope(|s| -> Result<_> {
            let handles: Vec<_> = (0..connections)
                .map(|_| s.spawn(|| stream_connection(addr, size, duration, &barrier)))
                .collect();
            barrier.wait();
            let start = Instant::now();
            let mut totals = (0u64, 0u64);
            for h in handles {
                let (m, b) = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
                totals.0 += m;
                totals.1 += b;
            }
            Ok((totals, start))
        })?;
        let mut row = Row::new(NAME, "stream", size, connections);
        Throughput {
            messages: totals.0,
            bytes: totals.1,
            elapsed: start.elapsed(),
        }
        .fill(&mut row);
        Ok(row)
    }

    fn pingpong_client(&self, addr: SocketAddr, size: usize, duration: Duration) -> Result<Row> {
        let stream = connect(addr, Mode::Echo)?;
        let message = frame(&vec![0x5Au8; size]);
        let mut reader = BufReader::new(&stream);
        let mut writer = &stream;
        let mut buf = Vec::with_capacity(size);
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
            writer.write_all(&message).context("sending a ping")?;
            if !read_frame(&mut reader, &mut buf)? {
                bail!("server closed the ping-pong connection");
            }
            if !warming {
                recorder.record(t0.elapsed());
            }
        }
        let elapsed = start.elapsed();
        let mut row = Row::new(NAME, "pingpong", size, 1);
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
        let row = stream(64, 2, 1, Duration::from_millis(100)).unwrap();
        assert!(row.msgs_per_sec.unwrap() > 0.0);
        assert_eq!(row.connections, 2);
        let row = pingpong(64, Duration::from_millis(100)).unwrap();
        assert!(row.p50_us.unwrap() > 0.0);
        assert!(row.p999_us.unwrap() >= row.p50_us.unwrap());
    }
}
