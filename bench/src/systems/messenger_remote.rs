//! Two-host mode of the `dataplane-*` systems: `dataplane-bench server --system
//! dataplane-rdma --addr 0.0.0.0:7878` on one host, `dataplane-bench client --system
//! dataplane-rdma --addr HOST:7878` on the other (or two processes on one host). The rows are
//! measured as in this process ([`messenger_rows`]): the same messengers, payloads and
//! senders, the ping-pong on the client's worker thread.
//!
//! The server's dispatcher tells the workloads apart by message type: [`DATA`] is counted in
//! place, [`PING`] is echoed, and [`TALLY`] is answered with what the server has counted so
//! far (16 bytes: messages, then payload bytes, little-endian). A stream row asks for the
//! tally before its measured interval and again after it, on every connection, and stops its
//! clock at the last answer: a connection delivers in order, so the last answer counts every
//! message sent before it on every connection. Messages still queued when the interval ends
//! are therefore counted, and the interval includes the time to deliver them, as in the
//! local rows.

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use dataplane::{Buf, Connection, Dispatcher, Message, MessageRef, Policy};

use crate::measure::Throughput;
use crate::row::Row;
use crate::systems::messenger_rows::{
    self, messenger, pool_payload, send, send_for, sink, Backend, Sink,
};

/// Stream messages: counted by the server (the type the stream senders use).
pub const DATA: u16 = messenger_rows::STREAM_TYPE;
/// Ping-pong messages: echoed by the server.
pub const PING: u16 = 2;
/// A request for the server's tally, answered with it.
pub const TALLY: u16 = 3;

/// The server's dispatcher: counts [`DATA`] in place, echoes [`PING`], answers [`TALLY`].
struct Server {
    counts: Arc<Sink>,
}

impl Dispatcher for Server {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn dispatches_in_place(&self) -> bool {
        true
    }
    fn in_place(&self, msg_type: u16) -> bool {
        msg_type == DATA
    }
    fn dispatch_in_place(&self, conn: &Connection, m: MessageRef<'_>) {
        self.counts.dispatch_in_place(conn, m);
    }
    fn dispatch(&self, conn: &Connection, m: Message) {
        match m.msg_type {
            // One message in flight per connection: the queue cannot be full.
            PING => {
                let _ = conn.send(m);
            }
            TALLY => {
                let mut tally = Vec::with_capacity(16);
                tally.extend_from_slice(&self.counts.msgs.get().to_le_bytes());
                tally.extend_from_slice(&self.counts.bytes.get().to_le_bytes());
                if let Err(e) = conn.send(Message::new(TALLY, Buf::from_vec(tally))) {
                    eprintln!("warning: cannot answer a tally request: {e}");
                }
            }
            DATA => self.counts.dispatch(conn, m),
            // Another client's protocol: not ours to answer.
            _ => {}
        }
    }
}

/// A started server of `b`'s rows bound to `addr`, and the address it listens on.
pub fn start_server(
    b: &dyn Backend,
    addr: SocketAddr,
    workers: u32,
) -> Result<(dataplane::Messenger, SocketAddr)> {
    let counts = sink(false);
    let m = messenger(
        b,
        "bench-server",
        true,
        b.workers(workers),
        Arc::new(Server { counts }),
    )?;
    let bound = m
        .bind(addr)
        .with_context(|| format!("binding {} on {addr}", b.name()))?;
    Ok((m, bound))
}

/// Serves `b`'s rows on `addr` for `max` (or until the process is stopped).
pub fn serve(b: &dyn Backend, addr: SocketAddr, workers: u32, max: Duration) -> Result<()> {
    let (m, bound) = start_server(b, addr, workers)?;
    eprintln!(
        "serving {} on {bound} for at most {} s",
        b.name(),
        max.as_secs()
    );
    std::thread::sleep(max);
    m.shutdown();
    Ok(())
}

/// The client's dispatcher: collects tally answers.
#[derive(Default)]
struct Tallies {
    answers: Mutex<Vec<(u64, u64, Instant)>>,
    arrived: Condvar,
}

impl Dispatcher for Tallies {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn dispatch(&self, _conn: &Connection, m: Message) {
        let at = Instant::now();
        if m.msg_type != TALLY {
            return;
        }
        let bytes = m.payload.to_vec();
        let (Some(msgs), Some(payload)) = (bytes.get(..8), bytes.get(8..16)) else {
            eprintln!("warning: tally answer of {} bytes ignored", bytes.len());
            return;
        };
        let word = |b: &[u8]| b.try_into().map(u64::from_le_bytes).unwrap_or(0);
        if let Ok(mut a) = self.answers.lock() {
            a.push((word(msgs), word(payload), at));
            self.arrived.notify_all();
        }
    }
}

impl Tallies {
    /// Asks for the tally on every connection and waits for every answer: the largest
    /// counts (the last answer's, as counts only grow) and when the last answer arrived.
    fn ask(&self, conns: &[Connection]) -> Result<(u64, u64, Instant)> {
        let mut answers = self
            .answers
            .lock()
            .map_err(|_| anyhow!("tally state poisoned"))?;
        answers.clear();
        drop(answers);
        for c in conns {
            send(c, Message::new(TALLY, Buf::from_vec(Vec::new())))?;
        }
        let answers = self
            .answers
            .lock()
            .map_err(|_| anyhow!("tally state poisoned"))?;
        let (answers, waited) = self
            .arrived
            .wait_timeout_while(answers, Duration::from_secs(120), |a| a.len() < conns.len())
            .map_err(|_| anyhow!("tally state poisoned"))?;
        if waited.timed_out() {
            bail!(
                "{} of {} tally answers within 120 s",
                answers.len(),
                conns.len()
            );
        }
        answers
            .iter()
            .copied()
            .reduce(|a, b| (a.0.max(b.0), a.1.max(b.1), a.2.max(b.2)))
            .context("no tally answer")
    }
}

/// One-way stream of `size`-byte messages on `connections` lossless connections to a
/// [`serve`]r at `addr`.
pub fn stream_client(
    b: &dyn Backend,
    addr: SocketAddr,
    size: usize,
    connections: u32,
    workers: u32,
    duration: Duration,
) -> Result<Row> {
    let workers = b.workers(workers);
    let tallies = Arc::new(Tallies::default());
    let client = messenger(
        b,
        &messenger_rows::client_name(),
        false,
        workers,
        tallies.clone(),
    )?;
    let conns: Vec<Connection> = (0..connections.max(1))
        .map(|_| client.open(addr, Policy::lossless_client()))
        .collect::<Result<_, _>>()?;
    let payload = pool_payload(size, 0xAB)?;
    // Warm-up: every connection handshaken and carrying traffic, then the server's counts.
    for c in &conns {
        send(c, Message::new(DATA, payload.clone()))?;
    }
    let (base, base_bytes, _) = tallies.ask(&conns)?;
    let start = Instant::now();
    let sent = send_for(&conns, &payload, b.max_senders(), start + duration)?;
    let (msgs, bytes, at) = tallies.ask(&conns)?;
    let received = msgs.saturating_sub(base);
    if received < sent {
        bail!("the server counted {received} of the {sent} messages sent");
    }
    let mut row = Row::new(b.name(), "stream", size, connections.max(1));
    row.workers = Some(workers);
    Throughput {
        // The server's count: other clients of the same server would show here.
        messages: received,
        bytes: bytes.saturating_sub(base_bytes),
        elapsed: at.saturating_duration_since(start),
    }
    .fill(&mut row);
    drop(conns);
    client.shutdown();
    Ok(row)
}

/// Ping-pong of `size`-byte messages on one lossless connection to a [`serve`]r at `addr`.
pub fn pingpong_client(
    b: &dyn Backend,
    addr: SocketAddr,
    size: usize,
    duration: Duration,
) -> Result<Row> {
    messenger_rows::pingpong_to(b, addr, PING, size, duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::systems::dataplane_posix;

    /// A server and a client of the POSIX rows in this process, talking over loopback as two
    /// hosts would: the stream's count comes back in the tally, the pings are echoed.
    #[test]
    fn posix_rows_across_a_server_and_a_client() {
        let b = dataplane_posix::backend();
        let (server, addr) = start_server(b, "127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let row = stream_client(b, addr, 64, 2, 1, Duration::from_millis(200)).unwrap();
        assert!(row.msgs_per_sec.unwrap() > 0.0, "{row:?}");
        assert_eq!(row.connections, 2);
        // A second row on the same server counts only its own messages.
        let again = stream_client(b, addr, 4096, 1, 1, Duration::from_millis(200)).unwrap();
        let per_msg = again.gbit_per_sec.unwrap() * 1e9 / 8.0 / again.msgs_per_sec.unwrap();
        assert!((per_msg - 4096.0).abs() < 1.0, "{again:?}");
        let pp = pingpong_client(b, addr, 64, Duration::from_millis(200)).unwrap();
        assert!(pp.p50_us.unwrap() > 0.0, "{pp:?}");
        server.shutdown();
    }
}
