//! `dpdk-node`: a messenger node on the DPDK stack, for tests and manual experiments.
//!
//! ```text
//! dpdk-node --vdev <vdev> [--vdev <vdev>…] --port <name|id> --ip <a.b.c.d> [--ipv6 <addr>]
//!           [--listen <port>] [--expect <messages>] [--no-huge] [--seconds <limit>]
//!           [--workers <n>]
//! ```
//!
//! It binds `ip:listen` (with `--ipv6`, the interface is dual stack and it binds
//! `[::]:listen`, which takes both families), checks every message it receives (per stream: sequence numbers
//! exactly once and in order, payload bytes as the tests generate them: see
//! `tests/common/mod.rs`), prints `READY <addr>` once listening, and with `--expect N` prints
//! `DONE <messages> <bytes> errors=<n> streams=<s> accepted=<a,b,…> stats=…` and exits (0 if
//! clean) after N messages; `loads` counts the connections each worker holds then. With
//! `--workers N` the messenger has N workers and the port N queue pairs.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::{Config, Connection, Dispatcher, Message, Messenger};
use dataplane_stack_dpdk::{DpdkConfig, DpdkStack};

/// Checks the test payloads: stream id (u32 LE), sequence (u64 LE), then bytes
/// `seq * 31 + index`.
#[derive(Default)]
struct Checker {
    next: Mutex<HashMap<u32, u64>>,
    received: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

impl Checker {
    fn check(&self, m: &Message) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(m.len() as u64, Ordering::Relaxed);
        let data = m.payload.to_vec();
        let ok = (|| {
            let stream = u32::from_le_bytes(data.get(0..4)?.try_into().ok()?);
            let seq = u64::from_le_bytes(data.get(4..12)?.try_into().ok()?);
            let mut next = self.next.lock().ok()?;
            let e = next.entry(stream).or_insert(0);
            let in_order = *e == seq;
            *e = seq + 1;
            let bytes_ok = data[12..]
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (seq as usize).wrapping_mul(31).wrapping_add(i + 12) as u8);
            Some(in_order && bytes_ok)
        })();
        if ok != Some(true) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Dispatcher for Checker {
    fn can_fast_dispatch(&self, _m: &Message) -> bool {
        true
    }
    fn fast_dispatch(&self, _c: &Connection, m: Message) {
        self.check(&m);
    }
    fn dispatch(&self, _c: &Connection, m: Message) {
        self.check(&m);
    }
}

struct Args {
    vdevs: Vec<String>,
    port: String,
    ip: Ipv4Addr,
    ipv6: Option<Ipv6Addr>,
    listen: u16,
    expect: Option<u64>,
    no_huge: bool,
    seconds: u64,
    workers: usize,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        vdevs: Vec::new(),
        port: "0".into(),
        ip: Ipv4Addr::new(10, 88, 0, 1),
        ipv6: None,
        listen: 7300,
        expect: None,
        no_huge: false,
        seconds: 300,
        workers: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--vdev" => a.vdevs.push(v()?),
            "--port" => a.port = v()?,
            "--ip" => a.ip = v()?.parse().map_err(|e| format!("--ip: {e}"))?,
            "--ipv6" => a.ipv6 = Some(v()?.parse().map_err(|e| format!("--ipv6: {e}"))?),
            "--listen" => a.listen = v()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--expect" => a.expect = Some(v()?.parse().map_err(|e| format!("--expect: {e}"))?),
            "--seconds" => a.seconds = v()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--no-huge" => a.no_huge = true,
            "--workers" => {
                a.workers = v()?.parse().map_err(|e| format!("--workers: {e}"))?;
                if !(1..=64).contains(&a.workers) {
                    return Err("--workers must be 1..=64".into());
                }
            }
            "-h" | "--help" => {
                return Err("usage: dpdk-node --vdev <vdev> --port <name> --ip <ip> \
                            [--ipv6 <addr>] [--listen <port>] [--expect <n>] [--no-huge] [--seconds <s>] \
                            [--workers <n>]"
                    .into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dpdk-node: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> Result<ExitCode, String> {
    let stack = Arc::new(
        DpdkStack::new(DpdkConfig {
            no_huge: a.no_huge,
            no_pci: true,
            vdevs: a.vdevs.clone(),
            port: a.port.clone(),
            queues: a.workers as u16,
            ip: a.ip,
            ipv6: a.ipv6,
            ..DpdkConfig::default()
        })
        .map_err(|e| e.to_string())?,
    );
    let checker = Arc::new(Checker::default());
    let m = Messenger::builder("dpdk-node")
        .config(Config {
            workers: a.workers,
            backend: "dpdk".into(),
            hugepages: false,
            peer_timeout_ms: 30_000,
            ..Config::default()
        })
        .stack(stack.clone())
        .dispatcher(checker.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let addr = m
        .bind(match a.ipv6 {
            Some(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, a.listen)),
            None => SocketAddr::from((a.ip, a.listen)),
        })
        .map_err(|e| e.to_string())?;
    m.start().map_err(|e| e.to_string())?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "READY {addr}");
    let _ = out.flush();
    let end = Instant::now() + Duration::from_secs(a.seconds);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
        if let Some(n) = a.expect {
            if checker.received.load(Ordering::Relaxed) >= n {
                break;
            }
        }
    }
    // Give the last acknowledgements time to leave.
    std::thread::sleep(Duration::from_millis(500));
    let (n, b, e) = (
        checker.received.load(Ordering::Relaxed),
        checker.bytes.load(Ordering::Relaxed),
        checker.errors.load(Ordering::Relaxed),
    );
    let streams = checker.next.lock().map_or(0, |s| s.len());
    let loads: Vec<String> = m.worker_loads().iter().map(|x| x.to_string()).collect();
    let _ = writeln!(
        out,
        "DONE {n} {b} errors={e} streams={streams} loads={} stats={:?}",
        loads.join(","),
        stack.stats()
    );
    let _ = out.flush();
    m.shutdown();
    let clean = e == 0 && a.expect.is_none_or(|x| n == x);
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
