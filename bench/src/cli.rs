//! Command-line interface (clap derive).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::measure::parse_size;

/// Throughput and latency benchmark of the dataplane messenger against named baselines.
///
/// Without a subcommand, runs the suite on loopback and prints a table.
#[derive(Debug, Parser)]
#[command(name = "dataplane-bench", version, about, long_about = None)]
pub struct Cli {
    /// Two-host mode; omit to run the local suite.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of the local suite.
    #[command(flatten)]
    pub run: RunArgs,
}

/// Subcommands for running client and server on two hosts.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve one system's benchmark protocol on `--addr` (the receiving/echo side).
    Server(ServerArgs),
    /// Measure against a `dataplane-bench server` running on `--addr`.
    Client(ClientArgs),
}

/// Transport backend of the dataplane messenger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    /// Kernel sockets.
    Posix,
    /// RDMA verbs.
    Rdma,
    /// DPDK user-space networking.
    Dpdk,
}

impl Backend {
    /// Lower-case name as used in system names (`dataplane-posix`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Posix => "posix",
            Self::Rdma => "rdma",
            Self::Dpdk => "dpdk",
        }
    }
}

/// Options shared by the local suite and the client.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Message sizes for `stream` and `pingpong`, comma separated (e.g. `64,4K,1M`).
    /// Default: the suite's sizes.
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    pub sizes: Option<Vec<usize>>,
    /// Seconds measured per row (fractions allowed). Default: 1.5, or 0.5 with `--quick`.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Worker threads of event-loop systems (dataplane, tokio).
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Connections of the `stream` workload.
    #[arg(long, default_value_t = 1)]
    pub connections: u32,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw throughput-vs-size and latency-CDF charts into this `.svg` or `.png` file.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

/// Options of the local suite.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Shorter rows (the whole suite, baselines included, in well under 3 minutes).
    #[arg(long)]
    pub quick: bool,
    /// Dataplane backend to measure.
    #[arg(long, value_enum, default_value_t = Backend::Posix)]
    pub backend: Backend,
    /// IP MTU of the memif link of the `dpdk` backend's rows (`--backend dpdk`): 9000 (jumbo
    /// frames, as on a tuned NIC) by default; 1500 for the standard Ethernet frame. The POSIX
    /// rows run on loopback, whose MTU is 65536.
    #[arg(long, default_value_t = 9000)]
    pub dpdk_mtu: u16,
    /// Only these systems, comma separated (e.g. `tokio-framed,iperf3`).
    #[arg(long, value_delimiter = ',')]
    pub systems: Option<Vec<String>>,
    /// Only these workloads, comma separated (e.g. `stream,pingpong`).
    #[arg(long, value_delimiter = ',')]
    pub workloads: Option<Vec<String>>,
    /// Measure every row this many times, interleaved with the other systems of its
    /// workload and size (A B, B A, A B, ...), and report the median round with every
    /// round's value in the note and in the JSON's `rounds`. For machines whose speed
    /// drifts during a run (shared hosts, emulated VMs).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=25))]
    pub rounds: u32,
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Options of `dataplane-bench server`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Address to listen on, e.g. `0.0.0.0:7878`.
    #[arg(long)]
    pub addr: SocketAddr,
    /// System whose protocol to serve (see `client --help`).
    #[arg(long, default_value = "tokio-framed")]
    pub system: String,
    /// Worker threads of event-loop systems.
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 3600)]
    pub max_secs: u64,
}

/// Options of `dataplane-bench client`.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// Address of the `dataplane-bench server`.
    #[arg(long)]
    pub addr: SocketAddr,
    /// System to measure; the server must serve the same one: `std-blocking`,
    /// `tokio-framed`, `dataplane-posix`, `dataplane-rdma` (the RDMA device, GID index and
    /// the stack's options come from the `DATAPLANE_RDMA_*` variables, as in the local rows)
    /// or `dataplane-dpdk` (its port from the `DATAPLANE_DPDK_*` variables).
    #[arg(long, default_value = "tokio-framed")]
    pub system: String,
    /// Workloads to run, comma separated: `stream`, `pingpong`, `stream-64conn`.
    #[arg(long, value_delimiter = ',', default_value = "stream,pingpong")]
    pub workloads: Vec<String>,
    /// Measure every row this many times in a row and report the median round (as the
    /// local suite's `--rounds`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=25))]
    pub rounds: u32,
    /// Shared options.
    #[command(flatten)]
    pub common: CommonArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_flags() {
        let cli = Cli::try_parse_from([
            "dataplane-bench",
            "--quick",
            "--sizes",
            "64,4K",
            "--backend",
            "posix",
            "--json",
            "out.json",
        ])
        .unwrap();
        assert!(cli.run.quick);
        assert_eq!(cli.run.common.sizes, Some(vec![64, 4096]));
        let cli = Cli::try_parse_from([
            "dataplane-bench",
            "client",
            "--addr",
            "127.0.0.1:9000",
            "--system",
            "std-blocking",
        ])
        .unwrap();
        assert!(matches!(cli.command, Some(Command::Client(_))));
    }
}
