//! The EAL (initialised once per process) and the ports the stacks drive.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use crate::arp::ArpShare;
use crate::config::{frame_buffer_len, DpdkConfig};
use crate::error::DpdkError;
use crate::rss::Steering;
use crate::sys::safe::{self, Mempool, PortInfo};

/// The EAL's command line of this process, or why `rte_eal_init` failed. DPDK allows one
/// `rte_eal_init` per process, so the first stack's configuration decides; later stacks must
/// ask for the same EAL arguments (their ports may differ).
static EAL: OnceLock<Result<Vec<String>, DpdkError>> = OnceLock::new();

/// One mbuf pool per port, created with the port's first stack and kept for the process's
/// lifetime: a stopped port's RX ring still holds mbufs of it, so it can never be freed safely
/// while the port may be started again.
static POOLS: Mutex<Option<HashMap<u16, (&'static Mempool, u16)>>> = Mutex::new(None);

/// Ports claimed by a live stack (one stack per port).
static CLAIMED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Initialises the EAL with `cfg`'s arguments, once per process.
pub(crate) fn eal(cfg: &DpdkConfig) -> Result<(), DpdkError> {
    let args = if !cfg.no_huge && crate::hugepages_free() == 0 {
        // A laptop or CI box without reserved hugepages: run without them rather than fail.
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "no free hugepages (reserve some: echo 512 > /proc/sys/vm/nr_hugepages); \
                 the DPDK EAL runs with --no-huge (slower memory, fine for virtual devices)"
            );
        });
        DpdkConfig {
            no_huge: true,
            ..cfg.clone()
        }
        .eal_args()
    } else {
        cfg.eal_args()
    };
    let r = EAL.get_or_init(|| {
        tracing::info!(args = ?args, "initialising DPDK EAL");
        safe::eal_init(&args).map(|()| args.clone())
    });
    match r {
        Ok(first) if *first == args => Ok(()),
        Ok(first) => Err(DpdkError::EalArgs {
            running: first.clone(),
            asked: args,
        }),
        Err(e) => Err(e.clone()),
    }
}

/// A started port: its queues, its mbuf pool, what it can do. Stopped on drop.
#[derive(Debug)]
pub(crate) struct Port {
    /// DPDK port id.
    pub(crate) id: u16,
    /// The pool every RX queue fills from and every worker allocates TX frames from.
    pub(crate) pool: &'static Mempool,
    /// What the device offers.
    pub(crate) info: PortInfo,
    /// Queue pairs (one per worker).
    pub(crate) queues: u16,
    /// How a worker picks local ports so replies come back to its queue.
    pub(crate) steering: Steering,
    /// TCP checksums are neither computed nor verified ([`DpdkConfig::skip_tcp_checksum`]).
    pub(crate) skip_tcp_checksum: bool,
    /// ARP replies shared between the queues' interfaces.
    pub(crate) arp: ArpShare,
}

impl Port {
    /// Finds, configures and starts the port named in `cfg` with `queues` queue pairs.
    pub(crate) fn open(cfg: &DpdkConfig, queues: u16) -> Result<Port, DpdkError> {
        let id = match cfg.port.parse::<u16>() {
            Ok(id) => id,
            Err(_) => safe::port_by_name(&cfg.port).ok_or_else(|| DpdkError::NoPort {
                port: cfg.port.clone(),
                probed: safe::port_count(),
            })?,
        };
        if id >= safe::port_count() {
            return Err(DpdkError::NoPort {
                port: cfg.port.clone(),
                probed: safe::port_count(),
            });
        }
        {
            let mut c = CLAIMED
                .lock()
                .map_err(|_| DpdkError::Poisoned("port registry"))?;
            if !c.get_or_insert_with(HashSet::new).insert(id) {
                return Err(DpdkError::PortInUse(id));
            }
        }
        let opened = (|| {
            let pool = pool_for(id, cfg)?;
            let info = safe::port_setup(
                id,
                queues,
                pool,
                cfg.rx_desc,
                cfg.tx_desc,
                cfg.mtu.unwrap_or(0),
            )?;
            Ok::<_, DpdkError>((pool, info))
        })();
        match opened {
            Ok((pool, info)) => {
                let steering = steering(id, &info, queues);
                tracing::info!(port = id, driver = %info.driver, mac = ?info.mac, mtu = info.mtu,
                    rss = info.rss, queues, ?steering, skip_tcp_checksum = cfg.skip_tcp_checksum,
                    "DPDK port started");
                Ok(Port {
                    id,
                    pool,
                    info,
                    queues,
                    steering,
                    skip_tcp_checksum: cfg.skip_tcp_checksum,
                    arp: ArpShare::new(queues),
                })
            }
            Err(e) => {
                unclaim(id);
                Err(e)
            }
        }
    }

    /// Whether the link is up (unknown counts as up).
    pub(crate) fn link_up(&self) -> bool {
        safe::link_up(self.id).unwrap_or(true)
    }
}

/// How outgoing connections keep their flow on the connecting worker's queue: by the RSS
/// hash where the device hashes (and its key and table can be read), else by the queue
/// pairing of symmetric devices (memif, ring).
fn steering(id: u16, info: &PortInfo, queues: u16) -> Steering {
    if queues <= 1 {
        return Steering::Single;
    }
    if info.rss {
        match safe::rss_conf(id) {
            Ok(t) if t.covers(queues) => return Steering::Rss(t),
            Ok(t) => tracing::warn!(port = id, reta = ?t.reta, queues,
                "the RSS table leaves queues out; steering by queue pairing instead"),
            Err(e) => tracing::warn!(port = id, error = %e,
                "cannot read the RSS key and table; steering by queue pairing instead"),
        }
    } else if !matches!(info.driver.as_str(), "net_memif" | "net_ring") {
        tracing::warn!(port = id, driver = %info.driver, queues,
            "several queues without RSS: connections stay on their queue only if the device \
             pairs queues with the peer's (as net_memif and net_ring do)");
    }
    Steering::Symmetric { queues }
}

/// The mbuf data room for `mtu`: 128 B headroom plus room for one whole frame
/// ([`frame_buffer_len`]).
pub(crate) fn data_room(mtu: Option<u16>) -> u16 {
    u16::try_from(frame_buffer_len(mtu) + 128).unwrap_or(u16::MAX)
}

/// The port's pool, created on first use: one whole frame of the configured MTU fits one
/// segment ([`data_room`]).
fn pool_for(id: u16, cfg: &DpdkConfig) -> Result<&'static Mempool, DpdkError> {
    let mut pools = POOLS
        .lock()
        .map_err(|_| DpdkError::Poisoned("pool registry"))?;
    let pools = pools.get_or_insert_with(HashMap::new);
    let room = data_room(cfg.mtu);
    if let Some(&(p, made)) = pools.get(&id) {
        if made < room {
            return Err(DpdkError::InvalidArgument(format!(
                "port {id}'s mbuf pool was made for frames of {made} B (with headroom) earlier \
                 in this process; MTU {:?} needs {room} B",
                cfg.mtu
            )));
        }
        return Ok(p);
    }
    let pool = Mempool::new(&format!("dp_mbuf_p{id}"), cfg.mbufs, cfg.mbuf_cache, room)?;
    let pool: &'static Mempool = Box::leak(Box::new(pool));
    pools.insert(id, (pool, room));
    Ok(pool)
}

fn unclaim(id: u16) {
    if let Ok(mut c) = CLAIMED.lock() {
        if let Some(set) = c.as_mut() {
            set.remove(&id);
        }
    }
}

impl Drop for Port {
    fn drop(&mut self) {
        // Every worker (the only users of the queues) holds an `Arc<Port>`: none is left.
        // The port is stopped, not closed, so a later stack of this process can start it
        // again (closing releases a virtual device for good).
        safe::port_stop(self.id);
        unclaim(self.id);
        tracing::info!(port = self.id, "DPDK port stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::data_room;

    #[test]
    fn one_frame_fits_one_mbuf() {
        assert_eq!(data_room(None), 2048 + 128);
        assert_eq!(data_room(Some(1500)), 2048 + 128);
        assert_eq!(data_room(Some(9000)), 9216 + 128);
        for mtu in [576u16, 1500, 4000, 9000, crate::config::MAX_MTU] {
            assert!(usize::from(data_room(Some(mtu))) >= usize::from(mtu) + 18 + 128);
        }
    }
}
