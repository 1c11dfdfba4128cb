//! `dataplane-rdma`: the messenger on the RDMA verbs stack (`stack-rdma`), client and server
//! messengers in this process, both on the same device (Soft-RoCE `rxe0` in the VM of
//! `scripts/test-rdma-vm.sh`), lossless connections. Same measurement as `dataplane-posix`
//! (the shared harness in `messenger_rows`, with the stack swapped): stream rows are measured at the receiver,
//! ping-pong on the client's worker thread.
//!
//! Environment: `DATAPLANE_RDMA_ADDR` (address to bind, the netdev under the RDMA device;
//! default 127.0.0.1), `DATAPLANE_RDMA_DEVICE`, `DATAPLANE_RDMA_GID_INDEX`,
//! `DATAPLANE_RDMA_BUSY_POLL_US` (CQ busy-poll window, default the stack's),
//! `DATAPLANE_RDMA_SHARED_RQ=0` (a receive queue per QP instead of the shared one),
//! `DATAPLANE_RDMA_SRQ_SHARE` (credits per connection in the SRQ),
//! `DATAPLANE_RDMA_WRITE_CHUNKS` (0: no RDMA WRITE, every byte in SENDs),
//! `DATAPLANE_RDMA_ZERO_COPY=0` (copy every payload into send slots instead of sending the
//! pool buffers zero-copy), `DATAPLANE_RDMA_LEND=0` (copy every received byte instead of
//! lending receive buffers to the messenger), `DATAPLANE_RDMA_PIN=1` (one worker per end,
//! pinned apart: the server's to the last core, the client's to the first).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use dataplane::stack::NetworkStack;
use dataplane::Config;
use dataplane_stack_rdma::{RdmaConfig, RdmaStack};

use crate::row::Row;
use crate::systems::messenger_rows::{self, Backend};

/// System name of this row.
pub const NAME: &str = "dataplane-rdma";

/// Opens the RDMA device (a clear error without one).
fn stack() -> Result<Arc<dyn NetworkStack>> {
    let cfg = RdmaConfig {
        device: std::env::var("DATAPLANE_RDMA_DEVICE").ok(),
        gid_index: std::env::var("DATAPLANE_RDMA_GID_INDEX")
            .ok()
            .and_then(|s| s.parse().ok()),
        ..RdmaConfig::default()
    };
    let cfg = match std::env::var("DATAPLANE_RDMA_BUSY_POLL_US")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(us) => RdmaConfig {
            busy_poll: Duration::from_micros(us),
            ..cfg
        },
        None => cfg,
    };
    // `DATAPLANE_RDMA_SHARED_RQ=0`: a receive queue per QP instead of the shared one.
    let num = |name: &str| std::env::var(name).ok().and_then(|s| s.parse::<u32>().ok());
    let d = RdmaConfig::default();
    let cfg = RdmaConfig {
        shared_rq: std::env::var("DATAPLANE_RDMA_SHARED_RQ").map_or(true, |v| v != "0"),
        srq_share: num("DATAPLANE_RDMA_SRQ_SHARE").unwrap_or(d.srq_share),
        write_chunks: num("DATAPLANE_RDMA_WRITE_CHUNKS").unwrap_or(d.write_chunks),
        zero_copy: std::env::var("DATAPLANE_RDMA_ZERO_COPY").map_or(true, |v| v != "0"),
        lend_receive: std::env::var("DATAPLANE_RDMA_LEND").map_or(true, |v| v != "0"),
        max_inline: num("DATAPLANE_RDMA_MAX_INLINE").unwrap_or(d.max_inline),
        ..cfg
    };
    Ok(Arc::new(RdmaStack::with_config(cfg)?))
}

/// Where the server binds: the address of the netdev under the RDMA device.
fn bind_addr() -> Result<SocketAddr> {
    let ip = std::env::var("DATAPLANE_RDMA_ADDR").unwrap_or_else(|_| "127.0.0.1".into());
    Ok(format!("{ip}:0").parse()?)
}

/// The RDMA verbs stack on the configured device.
struct Rdma;

impl Backend for Rdma {
    fn name(&self) -> &'static str {
        NAME
    }
    /// With `DATAPLANE_RDMA_PIN=1` and one worker per end, the workers are pinned apart as
    /// the DPDK rows' are: the server's to the last core, the client's to the first.
    fn config(&self, server: bool, workers: u32) -> Config {
        let pin = workers <= 1 && std::env::var("DATAPLANE_RDMA_PIN").is_ok_and(|v| v == "1");
        Config {
            workers: workers.max(1) as usize,
            backend: "rdma".into(),
            pin_workers: pin,
            worker_cores: if pin {
                vec![messenger_rows::core_apart(server)]
            } else {
                Vec::new()
            },
            ..Config::default()
        }
    }
    fn stack(&self, _server: bool) -> Result<Arc<dyn NetworkStack>> {
        stack()
    }
    fn bind_addr(&self) -> Result<SocketAddr> {
        bind_addr()
    }
}

/// The RDMA rows' backend, for the two-host mode (`systems::messenger_remote`).
pub fn backend() -> &'static dyn Backend {
    &Rdma
}

/// One-way stream of `size`-byte messages on `connections` lossless connections.
pub fn stream(size: usize, connections: u32, workers: u32, duration: Duration) -> Result<Row> {
    messenger_rows::stream(&Rdma, size, connections, workers, duration)
}

/// Ping-pong of `size`-byte messages on one lossless connection.
pub fn pingpong(size: usize, duration: Duration) -> Result<Row> {
    messenger_rows::pingpong(&Rdma, size, duration)
}
