//! `dataplane-bench`: measures the dataplane messenger and named baselines (blocking
//! std, tokio `Framed`, sockperf, iperf3, rtrb, crossbeam) on loopback or across two
//! hosts, and prints a table, JSON and charts.
//!
//! Run `cargo run --release -p dataplane-bench -- --help` for the flags.

#![warn(missing_docs)]

mod cli;
mod machine;
mod measure;
mod report;
mod rounds;
mod row;
mod suite;
mod systems;
mod targets;

use std::io::IsTerminal;
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cli::{Backend, Cli, ClientArgs, Command, CommonArgs, ServerArgs};
use crate::machine::Machine;
use crate::measure::format_size;
use crate::row::Row;
use crate::suite::{SuiteConfig, Workload};
use crate::systems::{messenger_remote, messenger_rows, Transport};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run_suite(cli.run),
        Some(Command::Server(args)) => run_server(args),
        Some(Command::Client(args)) => run_client(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A system with a two-host mode (`server` / `client` subcommands).
#[derive(Clone, Copy)]
enum Remote {
    /// A baseline over a TCP listener of its own.
    Transport(&'static dyn Transport),
    /// The dataplane messenger on one of its stacks, on both hosts.
    Messenger(&'static dyn messenger_rows::Backend),
}

/// The system `name` in its two-host mode.
fn remote_system(name: &str) -> Result<Remote> {
    let transports: [&'static dyn Transport; 2] = [
        &systems::std_blocking::STD_BLOCKING,
        &systems::tokio_framed::TOKIO_FRAMED,
    ];
    let messengers = [
        systems::dataplane_posix::backend(),
        systems::dataplane_rdma::backend(),
        systems::dataplane_dpdk::remote_backend(),
    ];
    if let Some(t) = transports.iter().find(|t| t.name() == name) {
        return Ok(Remote::Transport(*t));
    }
    if let Some(b) = messengers.iter().find(|b| b.name() == name) {
        return Ok(Remote::Messenger(*b));
    }
    let names: Vec<_> = transports
        .iter()
        .map(|t| t.name())
        .chain(messengers.iter().map(|b| b.name()))
        .collect();
    bail!(
        "system `{name}` has no two-host mode; choose one of: {}",
        names.join(", ")
    )
}

fn progress_bar(len: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

fn run_suite(args: cli::RunArgs) -> Result<()> {
    let backend = args.backend;
    systems::dataplane_dpdk::set_mtu(args.dpdk_mtu);
    let systems = suite::systems(backend)?;
    let workloads = args
        .workloads
        .as_ref()
        .map(|names| {
            names
                .iter()
                .map(|n| {
                    Workload::from_name(n).with_context(|| {
                        let all: Vec<_> = Workload::ALL.iter().map(|w| w.name()).collect();
                        format!("unknown workload `{n}`; known: {}", all.join(", "))
                    })
                })
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    let cfg = SuiteConfig {
        sizes: args.common.sizes.clone(),
        duration: SuiteConfig::duration_for(args.quick, args.common.duration)?,
        workers: args.common.workers.max(1),
        connections: args.common.connections.max(1),
        systems: args.systems.clone(),
        workloads,
        rounds: args.rounds,
    };
    let jobs = suite::plan(&systems, &cfg)?;
    if jobs.is_empty() {
        bail!("nothing to run with these filters");
    }
    let machine = Machine::detect();
    let started = Instant::now();
    // Measured first, on a fresh heap: after other rows, freed memory would absorb new
    // connections without growing RSS.
    let with_dataplane = jobs
        .iter()
        .any(|j| systems[j.system].name() == systems::dataplane_posix::NAME);
    let extras = measure_extras(with_dataplane);
    let bar = progress_bar(jobs.len() as u64);
    let attended = std::io::stderr().is_terminal();
    let mut rows = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        let mut label = format!(
            "{} {} {}",
            systems[job.system].name(),
            job.workload.name(),
            format_size(job.params.size as u64)
        );
        if cfg.rounds > 1 {
            label.push_str(&format!(" (round {}/{})", job.round + 1, cfg.rounds));
        }
        bar.set_message(label.clone());
        if !attended {
            eprintln!("[{}/{}] {label}", i + 1, jobs.len());
        }
        let row = suite::run_job(&systems, job);
        if let Some(note) = row.note.as_deref().filter(|n| n.starts_with("error")) {
            bar.suspend(|| eprintln!("warning: {label}: {note}"));
        }
        rows.push((*job, row));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let rows = rounds::median_of_rounds(rows);
    finish(&machine, &rows, &extras, backend, &args.common)?;
    eprintln!(
        "{} rows in {:.1} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Idle connections opened to measure memory per connection.
const IDLE_CONNECTIONS: usize = 500;

/// Figures that are not rows: memory per idle dataplane connection, measured when the run
/// includes a dataplane-posix row.
fn measure_extras(with_dataplane: bool) -> report::json::Extras {
    let mut extras = report::json::Extras::default();
    if with_dataplane {
        match systems::dataplane_posix::idle_connection_bytes(IDLE_CONNECTIONS) {
            Ok(b) => extras.dataplane_idle_connection_bytes = Some(b),
            Err(e) => eprintln!("warning: idle-connection memory not measured: {e:#}"),
        }
    }
    extras
}

/// Prints the table and writes the optional JSON and plot files.
fn finish(
    machine: &Machine,
    rows: &[Row],
    extras: &report::json::Extras,
    backend: Backend,
    common: &CommonArgs,
) -> Result<()> {
    let load = machine
        .load_average_1m
        .map(|l| format!(", load average {l:.2} at start"))
        .unwrap_or_default();
    println!(
        "dataplane-bench on {} ({} cores, kernel {}{load})\n",
        machine.cpu_model, machine.cores, machine.kernel
    );
    print!("{}", report::table::render(rows, backend));
    if let Some(b) = extras.dataplane_idle_connection_bytes {
        println!(
            "\nMemory per idle dataplane-posix connection: {:.1} KiB (user-space RSS, both ends, {IDLE_CONNECTIONS} connections)",
            b as f64 / 1024.0
        );
    }
    if let Some(path) = &common.json {
        report::json::write(path, machine, rows, extras)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &common.plot {
        report::plot::write(path, rows)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn run_server(args: ServerArgs) -> Result<()> {
    let transport = match remote_system(&args.system)? {
        Remote::Transport(t) => t,
        Remote::Messenger(b) => {
            return messenger_remote::serve(
                b,
                args.addr,
                args.workers.max(1),
                Duration::from_secs(args.max_secs),
            );
        }
    };
    let listener =
        TcpListener::bind(args.addr).with_context(|| format!("binding {}", args.addr))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "serving {} on {addr} for at most {} s (Ctrl-C to stop)",
        transport.name(),
        args.max_secs
    );
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let workers = args.workers.max(1);
    let server = std::thread::spawn(move || transport.serve(listener, workers, stop2));
    let deadline = Instant::now() + Duration::from_secs(args.max_secs);
    while Instant::now() < deadline && !server.is_finished() {
        std::thread::sleep(Duration::from_millis(200));
    }
    if server.is_finished() {
        return server
            .join()
            .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
    }
    stop.store(true, Ordering::SeqCst);
    // Wake the accept loop; an unspecified bind address is reached through loopback.
    let mut wake = addr;
    if wake.ip().is_unspecified() {
        wake.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let _ = std::net::TcpStream::connect_timeout(&wake, Duration::from_secs(1));
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?
}

fn run_client(args: ClientArgs) -> Result<()> {
    let remote = remote_system(&args.system)?;
    let system = match remote {
        Remote::Transport(t) => t.name(),
        Remote::Messenger(b) => b.name(),
    };
    let duration = SuiteConfig::duration_for(false, args.common.duration)?;
    let machine = Machine::detect();
    let mut rows = Vec::new();
    for name in &args.workloads {
        let workload =
            Workload::from_name(name).with_context(|| format!("unknown workload `{name}`"))?;
        let (sizes, connections): (Vec<usize>, u32) = match workload {
            Workload::Stream => (
                args.common
                    .sizes
                    .clone()
                    .unwrap_or_else(|| suite::STREAM_SIZES.to_vec()),
                args.common.connections.max(1),
            ),
            Workload::PingPong => (
                args.common
                    .sizes
                    .clone()
                    .unwrap_or_else(|| suite::PINGPONG_SIZES.to_vec()),
                1,
            ),
            Workload::StreamManyConn => (vec![suite::MANY_CONN.0], suite::MANY_CONN.1),
            other => bail!("workload `{}` has no two-host mode", other.name()),
        };
        for size in sizes {
            let workers = args.common.workers.max(1);
            for round in 0..args.rounds {
                eprintln!(
                    "{system} {} {} (round {}/{})",
                    workload.name(),
                    format_size(size as u64),
                    round + 1,
                    args.rounds
                );
                let mut row = match (remote, workload == Workload::PingPong) {
                    (Remote::Transport(t), true) => t.pingpong_client(args.addr, size, duration)?,
                    (Remote::Transport(t), false) => {
                        t.stream_client(args.addr, size, connections, workers, duration)?
                    }
                    (Remote::Messenger(b), true) => {
                        messenger_remote::pingpong_client(b, args.addr, size, duration)?
                    }
                    (Remote::Messenger(b), false) => messenger_remote::stream_client(
                        b,
                        args.addr,
                        size,
                        connections,
                        workers,
                        duration,
                    )?,
                };
                row.workload = workload.name().to_string();
                row.note = Some(format!("remote server {}", args.addr));
                let job = suite::Job {
                    system: 0,
                    workload,
                    params: suite::Params {
                        size,
                        connections,
                        workers,
                        duration,
                    },
                    round,
                };
                rows.push((job, row));
            }
        }
    }
    let rows = rounds::median_of_rounds(rows);
    // The table's reference and targets are those of the system's backend.
    let backend = match system {
        systems::dataplane_rdma::NAME => Backend::Rdma,
        systems::dataplane_dpdk::NAME => Backend::Dpdk,
        _ => Backend::Posix,
    };
    finish(
        &machine,
        &rows,
        &report::json::Extras::default(),
        backend,
        &args.common,
    )
}
