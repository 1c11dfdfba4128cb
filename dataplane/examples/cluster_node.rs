//! One node of a full-mesh test cluster (used by `scripts/test-cluster.sh`): it listens,
//! opens a lossless connection to every peer, sends each peer `--count` numbered messages at
//! a steady pace, checks what it receives from every peer (exactly once, in order, byte for
//! byte), and keeps writing its figures to a status file until a stop file appears.
//!
//! ```text
//! cluster_node --name n1 --listen 10.77.0.1:7000 --peer n2=10.77.0.2:7000 ... \
//!              --count 20000 --rate 2500 --status-dir DIR [--stop FILE] [--max-seconds S]
//! ```
//!
//! Every message carries the sender's incarnation and the message's index. The status file
//! `DIR/<name>.<incarnation>.status` holds `key value` lines: `sent.<peer>`, `acked.<peer>`
//! (sent and no longer held: acknowledged), and for each sender incarnation seen
//! `rx.<peer>.<incarnation>` = `first next delivered duplicates gaps corrupt`, plus
//! `remote_resets`, `reconnects`, `done` (all sent and acknowledged) and `stopped`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane::{Buf, Config, Connection, Dispatcher, Message, Messenger, Policy};
use dataplane_stack_posix::PosixStack;
use parking_lot::Mutex;

/// Bytes of every message: incarnation (8), index (8), then a pattern of both.
const MSG_LEN: usize = 100;

fn body(incarnation: u64, index: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(MSG_LEN);
    v.extend_from_slice(&incarnation.to_le_bytes());
    v.extend_from_slice(&index.to_le_bytes());
    v.extend((16..MSG_LEN).map(|i| (index as usize).wrapping_mul(7).wrapping_add(i) as u8));
    v
}

/// What arrived from one sender incarnation.
#[derive(Default, Clone, Copy)]
struct Stream {
    first: Option<u64>,
    next: u64,
    delivered: u64,
    duplicates: u64,
    gaps: u64,
    corrupt: u64,
}

#[derive(Default)]
struct Receiver {
    streams: Mutex<BTreeMap<(String, u64), Stream>>,
    remote_resets: AtomicU64,
}

impl Dispatcher for Receiver {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn dispatch(&self, conn: &Connection, m: Message) {
        let peer = conn.peer_name().unwrap_or_default();
        let data = m.payload.to_vec();
        let mut streams = self.streams.lock();
        if data.len() != MSG_LEN {
            streams.entry((peer, 0)).or_default().corrupt += 1;
            return;
        }
        let mut word = [0u8; 8];
        word.copy_from_slice(&data[0..8]);
        let incarnation = u64::from_le_bytes(word);
        word.copy_from_slice(&data[8..16]);
        let index = u64::from_le_bytes(word);
        let s = streams.entry((peer, incarnation)).or_default();
        if data != body(incarnation, index) {
            s.corrupt += 1;
            return;
        }
        match s.first {
            None => {
                s.first = Some(index);
                s.next = index + 1;
                s.delivered += 1;
            }
            Some(_) if index < s.next => s.duplicates += 1,
            Some(_) => {
                s.gaps += index - s.next;
                s.next = index + 1;
                s.delivered += 1;
            }
        }
    }
    fn handle_remote_reset(&self, _conn: &Connection) {
        self.remote_resets.fetch_add(1, Ordering::Relaxed);
    }
}

struct Args {
    name: String,
    listen: SocketAddr,
    peers: Vec<(String, SocketAddr)>,
    count: u64,
    rate: u64,
    status_dir: PathBuf,
    stop: Option<PathBuf>,
    max_seconds: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        name: String::new(),
        listen: "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
        peers: Vec::new(),
        count: 10_000,
        rate: 2_000,
        status_dir: std::env::temp_dir(),
        stop: None,
        max_seconds: 600,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--name" => a.name = val()?,
            "--listen" => a.listen = val()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--peer" => {
                let v = val()?;
                let (n, addr) = v.split_once('=').ok_or("--peer NAME=ADDR")?;
                let addr = addr.parse().map_err(|e| format!("--peer {v}: {e}"))?;
                a.peers.push((n.to_owned(), addr));
            }
            "--count" => a.count = val()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--rate" => a.rate = val()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--status-dir" => a.status_dir = val()?.into(),
            "--stop" => a.stop = Some(val()?.into()),
            "--max-seconds" => {
                a.max_seconds = val()?.parse().map_err(|e| format!("--max-seconds: {e}"))?
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.name.is_empty() {
        return Err("--name is required".into());
    }
    Ok(a)
}

struct Node {
    name: String,
    incarnation: u64,
    messenger: Messenger,
    receiver: Arc<Receiver>,
    conns: Vec<(String, Connection)>,
    sent: Vec<AtomicU64>,
}

impl Node {
    fn status(&self, done: bool, stopped: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "name {}", self.name);
        let _ = writeln!(s, "incarnation {}", self.incarnation);
        for ((peer, conn), sent) in self.conns.iter().zip(&self.sent) {
            let sent = sent.load(Ordering::Acquire);
            let held = conn.queued().0 as u64;
            let _ = writeln!(s, "sent.{peer} {sent}");
            let _ = writeln!(s, "acked.{peer} {}", sent.saturating_sub(held));
        }
        for ((peer, inc), st) in self.receiver.streams.lock().iter() {
            let _ = writeln!(
                s,
                "rx.{peer}.{inc} {} {} {} {} {} {}",
                st.first.unwrap_or(0),
                st.next,
                st.delivered,
                st.duplicates,
                st.gaps,
                st.corrupt
            );
        }
        let c = self.messenger.counters();
        let _ = writeln!(
            s,
            "remote_resets {}",
            self.receiver.remote_resets.load(Ordering::Relaxed)
        );
        let _ = writeln!(s, "reconnects {}", c.reconnects);
        let _ = writeln!(s, "faults {}", c.faults);
        let _ = writeln!(s, "peer_timeouts {}", c.peer_timeouts);
        let _ = writeln!(s, "done {}", u8::from(done));
        let _ = writeln!(s, "stopped {}", u8::from(stopped));
        s
    }

    fn write_status(&self, dir: &Path, done: bool, stopped: bool) {
        let path = dir.join(format!("{}.{}.status", self.name, self.incarnation));
        let tmp = path.with_extension("tmp");
        // Written whole then renamed, so a reader (or a kill -9) never sees half a file.
        if let Err(e) = std::fs::write(&tmp, self.status(done, stopped))
            .and_then(|()| std::fs::rename(&tmp, &path))
        {
            eprintln!(
                "cluster_node {}: cannot write {}: {e}",
                self.name,
                path.display()
            );
        }
    }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "dataplane=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cluster_node: {e}");
            std::process::exit(2);
        }
    };
    let incarnation = rand::random::<u32>() as u64 + 1;
    let cfg = Config {
        workers: 1,
        hugepages: false,
        rx_buffers: 256,
        // Short timers so that a link taken down is noticed (and healed) within seconds.
        keepalive_interval_ms: 200,
        peer_timeout_ms: 1_000,
        handshake_timeout_ms: 1_000,
        reconnect_min_ms: 20,
        reconnect_max_ms: 300,
        ..Config::default()
    };
    let receiver = Arc::new(Receiver::default());
    let messenger = match Messenger::builder(&args.name)
        .config(cfg)
        .stack(Arc::new(PosixStack::new()))
        .dispatcher(receiver.clone())
        .default_policy(Policy::lossless_client())
        .build()
    {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cluster_node {}: {e}", args.name);
            std::process::exit(1);
        }
    };
    if let Err(e) = messenger.bind(args.listen).and_then(|_| messenger.start()) {
        eprintln!("cluster_node {}: {e}", args.name);
        std::process::exit(1);
    }
    let mut conns = Vec::new();
    for (peer, addr) in &args.peers {
        match messenger.connect(*addr) {
            Ok(c) => conns.push((peer.clone(), c)),
            Err(e) => {
                eprintln!("cluster_node {}: connect {peer}: {e}", args.name);
                std::process::exit(1);
            }
        }
    }
    let sent = conns.iter().map(|_| AtomicU64::new(0)).collect();
    let node = Arc::new(Node {
        name: args.name.clone(),
        incarnation,
        messenger,
        receiver,
        conns,
        sent,
    });
    eprintln!(
        "cluster_node {} incarnation {incarnation} on {}",
        args.name, args.listen
    );

    // Sender: `count` messages to every peer, in batches every 10 ms at `rate` per peer.
    let sender = {
        let node = node.clone();
        let (count, rate) = (args.count, args.rate.max(100));
        std::thread::spawn(move || {
            let start = Instant::now();
            let per_tick = (rate / 100).max(1);
            let mut i = 0u64;
            while i < count {
                let upto = (i + per_tick).min(count);
                for (k, (peer, conn)) in node.conns.iter().enumerate() {
                    for j in i..upto {
                        let m = Message::new(1, Buf::from_vec(body(node.incarnation, j)));
                        // Lossless: waits while the queue is full (a peer down for a while).
                        if let Err(e) = conn.send_wait(m, Duration::from_secs(120)) {
                            eprintln!("cluster_node {}: send to {peer}: {e}", node.name);
                            return;
                        }
                        node.sent[k].fetch_add(1, Ordering::Release);
                    }
                }
                i = upto;
                let due = start + Duration::from_millis(10 * (i / per_tick));
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        })
    };

    let end = Instant::now() + Duration::from_secs(args.max_seconds);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let all_sent = sender.is_finished();
        let done = all_sent && node.conns.iter().all(|(_, c)| c.queued().0 == 0);
        let stop = args.stop.as_ref().is_some_and(|p| p.exists()) || Instant::now() >= end;
        node.write_status(&args.status_dir, done, stop);
        if stop {
            break;
        }
    }
    node.messenger.shutdown();
}
