//! Safe wrappers over the raw DPDK calls. The rest of the crate uses only these.

use std::ffi::{c_char, c_int, CStr, CString};
use std::ptr::NonNull;

use super::*;
use crate::error::DpdkError;

/// DPDK's error text for `err` (a positive errno value).
pub fn strerror(err: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string
    // for any value; it is copied before anything else can change it on this thread.
    unsafe {
        let p = rte_strerror(err);
        if p.is_null() {
            return format!("error {err}");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// The calling thread's `rte_errno`.
pub fn errno() -> i32 {
    // SAFETY: reads a per-thread integer.
    unsafe { shim_rte_errno() }
}

/// Initialises the EAL with `args` (`args[0]` is the program name). Must be called once per
/// process; the caller guards that.
pub fn eal_init(args: &[String]) -> Result<(), DpdkError> {
    let c: Vec<CString> = args
        .iter()
        .map(|a| {
            CString::new(a.as_str())
                .map_err(|_| DpdkError::InvalidArgument(format!("EAL argument {a:?} contains NUL")))
        })
        .collect::<Result<_, _>>()?;
    // rte_eal_init may permute argv: hand it pointers it owns for the process's lifetime
    // (the strings are leaked on purpose; this runs once).
    let leaked: Vec<*mut c_char> = c.into_iter().map(CString::into_raw).collect();
    let argv: &'static mut [*mut c_char] = Box::leak(leaked.into_boxed_slice());
    let argc = c_int::try_from(argv.len())
        .map_err(|_| DpdkError::InvalidArgument("too many EAL arguments".into()))?;
    // rte_eal_init pins the calling thread to the main lcore's core. That thread is the
    // application's (it goes on to spawn the messenger's workers, which would inherit the
    // pin and all share one core): give it its own affinity back afterwards.
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most its size into it.
    let mut saved: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 = the calling thread; the pointer and size describe `saved`.
    let have_saved =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut saved) }
            == 0;
    // SAFETY: argv holds argc valid NUL-terminated strings that live forever; EAL is not
    // initialised yet (the caller's once-guard).
    let r = unsafe { rte_eal_init(argc, argv.as_mut_ptr()) };
    if have_saved {
        // SAFETY: as above; `saved` is the thread's mask from before rte_eal_init.
        let ok =
            unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &saved) }
                == 0;
        if !ok {
            tracing::warn!("could not restore the thread's CPU affinity after rte_eal_init");
        }
    }
    if r < 0 {
        let e = errno();
        return Err(DpdkError::Eal {
            reason: format!("{} (errno {e})", strerror(e)),
        });
    }
    Ok(())
}

/// Registers the calling (non-EAL) thread as a DPDK lcore, so it gets an lcore id and a
/// per-lcore mempool cache. Returns the lcore id.
pub fn thread_register() -> Result<u32, DpdkError> {
    // SAFETY: EAL is initialised (callers hold an `Eal` proof through the stack); registering
    // an unregistered thread is allowed from any thread, and again is a no-op.
    let r = unsafe { rte_thread_register() };
    if r != 0 {
        let e = errno();
        return Err(DpdkError::Lcore(strerror(e)));
    }
    // SAFETY: reads the calling thread's lcore id.
    Ok(unsafe { shim_lcore_id() })
}

/// Number of Ethernet ports the EAL probed.
pub fn port_count() -> u16 {
    // SAFETY: plain query after EAL init.
    unsafe { rte_eth_dev_count_avail() }
}

/// Port id of the device called `name` (e.g. `net_af_packet0`).
pub fn port_by_name(name: &str) -> Option<u16> {
    let c = CString::new(name).ok()?;
    let mut id = 0u16;
    // SAFETY: `c` is a valid C string, `id` a valid out pointer.
    let r = unsafe { rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
    (r == 0).then_some(id)
}

/// What the port set-up found out about a device.
#[derive(Debug, Clone)]
pub struct PortInfo {
    /// MAC address.
    pub mac: [u8; 6],
    /// MTU the stack uses: the device's, or the one asked for in the set-up.
    pub mtu: u16,
    /// Largest MTU the device lets ethdev set (0 if unknown).
    pub max_mtu: u16,
    /// The device has no MTU of its own (`net_memif`): the asked MTU is used as given.
    pub mtu_unlimited: bool,
    /// RSS enabled across the queues.
    pub rss: bool,
    /// The device checks IPv4 header checksums on receive.
    pub rx_ip_cksum: bool,
    /// The device checks TCP checksums on receive.
    pub rx_tcp_cksum: bool,
    /// Driver name.
    pub driver: String,
    /// Queue limits of the device.
    pub max_queues: (u16, u16),
}

/// Configures `port` with `queues` RX/TX queue pairs backed by `pool`, sets its MTU (`mtu`
/// 0 keeps the device's), and starts it.
pub fn port_setup(
    port: u16,
    queues: u16,
    pool: &Mempool,
    rx_desc: u16,
    tx_desc: u16,
    mtu: u16,
) -> Result<PortInfo, DpdkError> {
    let mut info = shim_port_info::default();
    // SAFETY: the pool pointer is valid for the pool's lifetime (the stack keeps it alive
    // longer than the port runs); `info` is a valid out pointer.
    let r = unsafe { shim_port_setup(port, queues, pool.ptr(), rx_desc, tx_desc, mtu, &mut info) };
    if r != 0 && mtu != 0 && info.max_mtu != 0 && mtu > info.max_mtu && info.mtu_unlimited == 0 {
        return Err(DpdkError::Port {
            port,
            op: "set-up",
            reason: format!(
                "MTU {mtu} is more than the device carries (at most {})",
                info.max_mtu
            ),
        });
    }
    if r != 0 {
        return Err(DpdkError::Port {
            port,
            op: "set-up",
            reason: format!(
                "{} with {queues} queue pair(s) (the device allows {} rx / {} tx queues)",
                strerror(r.abs()),
                info.max_rx_queues,
                info.max_tx_queues
            ),
        });
    }
    // SAFETY: the shim NUL-terminates `driver` (strncpy into a zeroed array, size - 1).
    let driver = unsafe { CStr::from_ptr(info.driver.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Ok(PortInfo {
        mac: info.mac,
        mtu: info.mtu,
        max_mtu: info.max_mtu,
        mtu_unlimited: info.mtu_unlimited != 0,
        rss: info.rss != 0,
        rx_ip_cksum: info.rx_ip_cksum != 0,
        rx_tcp_cksum: info.rx_tcp_cksum != 0,
        driver,
        max_queues: (info.max_rx_queues, info.max_tx_queues),
    })
}

/// Stops a port (its queues keep their configuration and can be started again).
pub fn port_stop(port: u16) {
    // SAFETY: stopping a started port is allowed once no queue is polled any more; the caller
    // (the port's drop) guarantees that all workers are gone.
    unsafe {
        let _ = rte_eth_dev_stop(port);
    }
}

/// Starts a stopped port again.
pub fn port_start(port: u16) -> Result<(), DpdkError> {
    // SAFETY: starting a configured, stopped port; the caller (the stack's `set_link`) holds
    // every worker's engine lock, so no queue is polled meanwhile.
    let r = unsafe { rte_eth_dev_start(port) };
    if r != 0 {
        return Err(DpdkError::Port {
            port,
            op: "start",
            reason: strerror(r.abs()),
        });
    }
    Ok(())
}

/// The port's RSS key and redirection table, or why they cannot be read.
pub fn rss_conf(port: u16) -> Result<crate::rss::RssTable, String> {
    let mut key = [0u8; 256];
    let mut key_len: u16 = key.len() as u16;
    let mut reta = [0u16; 512];
    let mut reta_size: u16 = reta.len() as u16;
    // SAFETY: the out buffers are valid for the lengths passed, which the shim never exceeds
    // (it clamps the key to `key_len` and refuses tables above `reta_size`).
    let r = unsafe {
        shim_rss_conf(
            port,
            key.as_mut_ptr(),
            &mut key_len,
            reta.as_mut_ptr(),
            &mut reta_size,
        )
    };
    if r != 0 {
        return Err(strerror(r.abs()));
    }
    Ok(crate::rss::RssTable {
        key: key[..usize::from(key_len).min(key.len())].to_vec(),
        reta: reta[..usize::from(reta_size).min(reta.len())].to_vec(),
    })
}

/// Link state: `Some(true)` up, `Some(false)` down, `None` unknown.
pub fn link_up(port: u16) -> Option<bool> {
    // SAFETY: plain query.
    let r = unsafe { shim_link_up(port) };
    (r >= 0).then_some(r == 1)
}

/// Administratively sets the link down (`false`) or up (`true`), where the driver can.
pub fn set_link(port: u16, up: bool) -> Result<(), DpdkError> {
    // SAFETY: plain control call on a configured port.
    let r = unsafe {
        if up {
            rte_eth_dev_set_link_up(port)
        } else {
            rte_eth_dev_set_link_down(port)
        }
    };
    if r != 0 {
        return Err(DpdkError::Port {
            port,
            op: if up { "set link up" } else { "set link down" },
            reason: strerror(r.abs()),
        });
    }
    Ok(())
}

/// Port counters: (received, sent, missed, rx errors, rx no-mbuf).
pub fn port_stats(port: u16) -> Option<[u64; 5]> {
    let mut out = [0u64; 5];
    // SAFETY: `out` has the five slots the shim writes.
    let r = unsafe { shim_port_stats(port, out.as_mut_ptr()) };
    (r == 0).then_some(out)
}

/// An mbuf pool. Never freed: ports keep mbufs of it in their rings while stopped, so pools
/// live as long as the process (see `port.rs`).
#[derive(Debug)]
pub struct Mempool {
    ptr: NonNull<rte_mempool>,
}

// SAFETY: DPDK mempools are multi-producer / multi-consumer safe; the handle is a pointer to
// shared-memory state designed for use from every lcore.
unsafe impl Send for Mempool {}
// SAFETY: as above: every operation on a mempool is thread-safe.
unsafe impl Sync for Mempool {}

impl Mempool {
    /// Creates a packet mbuf pool of `n` buffers with `data_room` bytes each.
    pub fn new(name: &str, n: u32, cache: u32, data_room: u16) -> Result<Mempool, DpdkError> {
        let c = CString::new(name)
            .map_err(|_| DpdkError::InvalidArgument("pool name contains NUL".into()))?;
        // SAFETY: EAL is initialised; `c` is a valid C string; SOCKET_ID_ANY is -1.
        let p = unsafe { rte_pktmbuf_pool_create(c.as_ptr(), n, cache, 0, data_room, -1) };
        match NonNull::new(p) {
            Some(ptr) => Ok(Mempool { ptr }),
            None => {
                let e = errno();
                Err(DpdkError::Pool {
                    name: name.to_string(),
                    count: n,
                    data_room,
                    reason: strerror(e),
                })
            }
        }
    }

    fn ptr(&self) -> *mut rte_mempool {
        self.ptr.as_ptr()
    }

    /// Buffers currently free in the pool.
    pub fn available(&self) -> u32 {
        // SAFETY: the pool is alive.
        unsafe { shim_mempool_avail(self.ptr.as_ptr()) }
    }

    /// One empty mbuf, `None` when the pool is dry.
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: the pool is alive; a non-null result is an mbuf we now own.
        NonNull::new(unsafe { shim_pktmbuf_alloc(self.ptr.as_ptr()) }).map(|ptr| Mbuf { ptr })
    }

    /// Fills `out` with `n` empty mbufs, all or nothing. False when the pool cannot give `n`.
    pub fn alloc_bulk(&self, out: &mut Vec<Mbuf>, n: usize) -> bool {
        let mut raw: [*mut rte_mbuf; 64] = [std::ptr::null_mut(); 64];
        let n = n.min(raw.len());
        // SAFETY: `raw` has room for `n` pointers; on success each is an mbuf we now own.
        let r = unsafe { shim_pktmbuf_alloc_bulk(self.ptr.as_ptr(), raw.as_mut_ptr(), n as u32) };
        if r != 0 {
            return false;
        }
        out.extend(
            raw[..n]
                .iter()
                .filter_map(|p| NonNull::new(*p))
                .map(|ptr| Mbuf { ptr }),
        );
        true
    }
}

/// An owned, single-segment packet buffer. Freed back to its pool when dropped.
#[derive(Debug)]
#[repr(transparent)]
pub struct Mbuf {
    ptr: NonNull<rte_mbuf>,
}

// SAFETY: an mbuf is owned by exactly one `Mbuf`; DPDK allows freeing it from any thread.
unsafe impl Send for Mbuf {}

impl Mbuf {
    /// Segments in the chain (this stack only hands single-segment frames up).
    pub fn segments(&self) -> u16 {
        // SAFETY: we own a valid mbuf.
        unsafe { shim_pktmbuf_nb_segs(self.ptr.as_ptr()) }
    }

    /// The received frame (first segment).
    pub fn data(&self) -> &[u8] {
        // SAFETY: the mbuf is valid and owned; mtod points at `data_len` initialised bytes in
        // its data room, which live as long as the mbuf (borrowed from `self`).
        unsafe {
            let len = shim_pktmbuf_data_len(self.ptr.as_ptr()) as usize;
            let p = shim_pktmbuf_mtod(self.ptr.as_ptr()) as *const u8;
            std::slice::from_raw_parts(p, len)
        }
    }

    /// Offload flags set by the driver on receive.
    pub fn ol_flags(&self) -> u64 {
        // SAFETY: reads a field of a valid mbuf.
        unsafe { shim_pktmbuf_ol_flags(self.ptr.as_ptr()) }
    }

    /// Appends `len` bytes to an empty mbuf and returns them, `None` if they do not fit.
    pub fn append(&mut self, len: usize) -> Option<&mut [u8]> {
        let l = u16::try_from(len).ok()?;
        // SAFETY: the mbuf is valid and owned; a non-null result points at `len` bytes of its
        // data room reserved for us, living as long as the mbuf (borrowed mutably).
        unsafe {
            let p = shim_pktmbuf_append(self.ptr.as_ptr(), l) as *mut u8;
            if p.is_null() {
                return None;
            }
            Some(std::slice::from_raw_parts_mut(p, len))
        }
    }
}

impl Drop for Mbuf {
    fn drop(&mut self) {
        // SAFETY: we own the mbuf; it is returned to its pool exactly once.
        unsafe { shim_pktmbuf_free(self.ptr.as_ptr()) }
    }
}

/// Receives up to `max` frames (≤ 64) from `port`/`queue` into `out`.
pub fn rx_burst(port: u16, queue: u16, out: &mut Vec<Mbuf>, max: usize) -> usize {
    let mut raw: [*mut rte_mbuf; 64] = [std::ptr::null_mut(); 64];
    let max = max.min(raw.len()) as u16;
    // SAFETY: the queue was set up by `port_setup` and is polled only by the worker that owns
    // it (one queue per worker); `raw` has room for `max` pointers; each returned mbuf is
    // ours.
    let n = unsafe { shim_rx_burst(port, queue, raw.as_mut_ptr(), max) } as usize;
    out.extend(
        raw[..n]
            .iter()
            .filter_map(|p| NonNull::new(*p))
            .map(|ptr| Mbuf { ptr }),
    );
    n
}

/// Transmits from the front of `pkts` in one burst; the frames the driver took are removed
/// (the driver frees them once sent); the rest stay queued for the next burst.
pub fn tx_burst(port: u16, queue: u16, pkts: &mut Vec<Mbuf>) -> usize {
    if pkts.is_empty() {
        return 0;
    }
    let n = pkts.len().min(u16::MAX as usize) as u16;
    // SAFETY: `Mbuf` is `repr(transparent)` over a non-null `*mut rte_mbuf`, so the vector's
    // buffer is an array of `n` valid mbuf pointers; the queue is owned by this worker.
    let sent =
        unsafe { shim_tx_burst(port, queue, pkts.as_mut_ptr() as *mut *mut rte_mbuf, n) } as usize;
    // The driver owns the first `sent` mbufs now: remove them without freeing.
    for m in pkts.drain(..sent) {
        std::mem::forget(m);
    }
    sent
}
