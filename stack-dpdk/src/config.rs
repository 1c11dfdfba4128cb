//! Configuration of the DPDK stack: EAL arguments, the port, its address and the tuning of
//! the user-space TCP/IP stack.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Smallest MTU accepted ([RFC 791](https://www.rfc-editor.org/rfc/rfc791)'s 576-byte
/// datagram every host must take).
pub const MIN_MTU: u16 = 576;
/// Largest MTU accepted: the jumbo frame size of common NICs (9600 and up). One frame must fit
/// one mbuf, whose data room is a `u16`.
pub const MAX_MTU: u16 = 9600;

/// Bytes one buffer needs to hold a whole frame of `mtu` (the device's usual 1500 for `None`):
/// the IP packet, the Ethernet header and a VLAN tag, at least 2 KiB, in whole KiB. The mbuf
/// data room is this plus headroom, and it is the `bsize=` to give `net_memif` so that a frame
/// fills one descriptor.
pub fn frame_buffer_len(mtu: Option<u16>) -> usize {
    let frame = usize::from(mtu.unwrap_or(1500)) + 18;
    frame.max(2048).div_ceil(1024) * 1024
}

/// How the EAL is started and which port the stack drives.
#[derive(Debug, Clone)]
pub struct DpdkConfig {
    /// Cores for the EAL (`-l`), e.g. `"0"` or `"2-3"`. The messenger's workers register as
    /// DPDK lcores on top of this (they are pinned by the messenger's core list).
    pub cores: String,
    /// Memory in MiB (`-m`).
    pub memory_mb: u32,
    /// Run without hugepages (`--no-huge`): slower DMA set-up, fine for virtual devices.
    /// When false and no hugepage is free, the stack falls back to `--no-huge` with one
    /// warning.
    pub no_huge: bool,
    /// Virtual devices (`--vdev`), e.g. `net_af_packet0,iface=veth0` or
    /// `net_memif0,role=server,socket=/run/memif.sock`. A memif client with `zero-copy=yes`
    /// shares its own mbuf memory with the server (one copy per packet on the link instead
    /// of two); the EAL then needs `--single-file-segments`, which [`DpdkConfig::eal_args`]
    /// adds.
    pub vdevs: Vec<String>,
    /// PCI devices to use (`-a`); empty with `no_pci` set means no PCI scan at all.
    pub pci_allow: Vec<String>,
    /// Skip the PCI bus (`--no-pci`), for machines with only virtual devices.
    pub no_pci: bool,
    /// `--file-prefix` for the runtime files; `None` runs `--in-memory` (or `--no-shconf`
    /// with `no_huge`): no shared files, so several DPDK processes can run side by side.
    pub file_prefix: Option<String>,
    /// Extra raw EAL arguments, appended last.
    pub extra_eal_args: Vec<String>,
    /// The port: a device name (`net_af_packet0`) or, if it parses as a number, a port id.
    pub port: String,
    /// RX/TX queue pairs of the port: one per messenger worker (set it to the messenger's
    /// `workers`). With more than one, every worker listens on the bound port with its own
    /// smoltcp interface on its own queue; flows are spread by the device's RSS hash (TCP/IPv4),
    /// or by queue pairing on devices without RSS whose queues are symmetric (`net_memif`,
    /// `net_ring`). See `docs/dpdk.md`.
    pub queues: u16,
    /// IP MTU of the port; `None` keeps the device's (1500 on most). Jumbo frames (e.g.
    /// 9000) carry six times the messages per TCP segment, and the user-space TCP/IP stack's
    /// cost is mostly per segment. The device must carry them: the MTU is set through ethdev
    /// where the device supports it (a larger value than the device takes is refused at
    /// start). `net_memif` has no MTU of its own (a frame spans chained descriptors), so there
    /// the value is used as given; add `bsize=` at least `mtu + 14` to its `--vdev` so that a
    /// frame fills one descriptor and one mbuf. Both ends of a link need the same MTU. The
    /// mbuf data room grows to hold one whole frame.
    pub mtu: Option<u16>,
    /// Neither compute nor verify TCP checksums, as Linux does on loopback: only for links
    /// that cannot corrupt a frame, such as `net_memif` or `net_ring` between processes of one
    /// host, and only when both ends set it (frames carry a zero TCP checksum). The
    /// messenger's crc32c still checks every frame end to end. Off by default; frames from a
    /// NIC are checked by the NIC (where it offers it) or in software.
    pub skip_tcp_checksum: bool,
    /// The interface's IPv4 address.
    pub ip: Ipv4Addr,
    /// Prefix length of the interface's subnet.
    pub prefix_len: u8,
    /// Default gateway, if peers are off-link.
    pub gateway: Option<Ipv4Addr>,
    /// The interface's IPv6 address, if it also speaks IPv6 (dual stack: both families on
    /// one port, listeners accept both). Neighbour discovery and ICMPv6 echo are answered.
    pub ipv6: Option<Ipv6Addr>,
    /// Prefix length of the IPv6 subnet.
    pub ipv6_prefix_len: u8,
    /// IPv6 default gateway, if IPv6 peers are off-link.
    pub ipv6_gateway: Option<Ipv6Addr>,
    /// Packet buffers in the mbuf pool (shared by all queues of the port).
    pub mbufs: u32,
    /// Per-lcore mbuf cache.
    pub mbuf_cache: u32,
    /// RX / TX descriptors per queue.
    pub rx_desc: u16,
    /// TX descriptors per queue.
    pub tx_desc: u16,
    /// Frames taken per `rx_burst`, and the `max_burst_size` told to smoltcp (≤ 64).
    pub burst: usize,
    /// Receive buffer of each TCP socket (bytes; above 64 KiB uses window scaling).
    pub socket_rx_buffer: usize,
    /// Send buffer of each TCP socket.
    pub socket_tx_buffer: usize,
    /// After the last packet, keep busy-polling this long before backing off.
    pub busy_poll: Duration,
    /// Longest sleep of an idle worker between two polls of its queue.
    pub idle_sleep: Duration,
    /// While busy-polling, give the core away (`sched_yield`) after a round that found
    /// nothing. On by default: right when cores are shared (laptops, CI, this project's 2-core
    /// machines); turn it off on isolated cores (`isolcpus`) for the lowest latency.
    pub yield_when_idle: bool,
}

impl Default for DpdkConfig {
    fn default() -> Self {
        DpdkConfig {
            cores: "0".into(),
            memory_mb: 256,
            no_huge: false,
            vdevs: Vec::new(),
            pci_allow: Vec::new(),
            no_pci: false,
            file_prefix: None,
            extra_eal_args: Vec::new(),
            port: "0".into(),
            queues: 1,
            mtu: None,
            skip_tcp_checksum: false,
            ip: Ipv4Addr::new(10, 0, 0, 2),
            prefix_len: 24,
            gateway: None,
            ipv6: None,
            ipv6_prefix_len: 64,
            ipv6_gateway: None,
            mbufs: 8191,
            mbuf_cache: 256,
            rx_desc: 1024,
            tx_desc: 1024,
            burst: 32,
            socket_rx_buffer: 1 << 20,
            socket_tx_buffer: 1 << 20,
            busy_poll: Duration::from_millis(2),
            idle_sleep: Duration::from_millis(1),
            yield_when_idle: true,
        }
    }
}

/// Free hugepages of the default size (`/proc/meminfo`), 0 if unknown: without any, the
/// stack runs the EAL with `--no-huge`.
pub fn hugepages_free() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("HugePages_Free:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// The EAL option a memif zero-copy client needs.
const SINGLE_FILE: &str = "--single-file-segments";

impl DpdkConfig {
    /// Checks the values the TCP/IP stack would otherwise reject with a panic.
    pub fn validate(&self) -> Result<(), crate::DpdkError> {
        let bad = |m: String| Err(crate::DpdkError::InvalidArgument(m));
        if self.prefix_len > 32 {
            return bad(format!("prefix length {} > 32", self.prefix_len));
        }
        if self.ip.is_unspecified() || self.ip.is_multicast() || self.ip.is_broadcast() {
            return bad(format!("{} is not a unicast interface address", self.ip));
        }
        if let Some(a) = self.ipv6 {
            if self.ipv6_prefix_len > 128 {
                return bad(format!("IPv6 prefix length {} > 128", self.ipv6_prefix_len));
            }
            if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                return bad(format!("{a} is not a unicast interface address"));
            }
        }
        if self.burst == 0 || self.burst > 64 {
            return bad(format!("burst {} must be 1..=64", self.burst));
        }
        if self.queues == 0 {
            return bad("queues must be at least 1 (one per messenger worker)".into());
        }
        if let Some(mtu) = self.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                return bad(format!("MTU {mtu} must be {MIN_MTU}..={MAX_MTU}"));
            }
        }
        if self.mbufs < 64 {
            return bad(format!("{} mbufs are too few (at least 64)", self.mbufs));
        }
        Ok(())
    }

    /// The EAL command line this configuration stands for (`argv[0]` included).
    pub fn eal_args(&self) -> Vec<String> {
        let mut a = vec!["dataplane".to_string(), "-l".into(), self.cores.clone()];
        a.push("-m".into());
        a.push(self.memory_mb.to_string());
        if self.no_huge {
            a.push("--no-huge".into());
        }
        if self.no_pci {
            a.push("--no-pci".into());
        }
        for p in &self.pci_allow {
            a.push("-a".into());
            a.push(p.clone());
        }
        for v in &self.vdevs {
            a.push(format!("--vdev={v}"));
        }
        match &self.file_prefix {
            Some(p) => a.push(format!("--file-prefix={p}")),
            // `--in-memory` needs hugepages; without them `--no-shconf` gives the same
            // independence (no shared runtime files).
            None if self.no_huge => a.push("--no-shconf".into()),
            None => a.push("--in-memory".into()),
        }
        a.push("--log-level=*:warning".into());
        if self.memif_zero_copy() && !self.extra_eal_args.iter().any(|x| x == SINGLE_FILE) {
            // memif's zero-copy client hands the server one file descriptor per memory
            // segment list; without this the PMD refuses the device.
            a.push(SINGLE_FILE.into());
        }
        a.extend(self.extra_eal_args.iter().cloned());
        a
    }

    /// Whether a memif client among the virtual devices asks for zero-copy (`zero-copy=yes`).
    pub fn memif_zero_copy(&self) -> bool {
        self.vdevs.iter().any(|v| {
            v.starts_with("net_memif")
                && v.split(',')
                    .any(|kv| kv.trim().eq_ignore_ascii_case("zero-copy=yes"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eal_args_follow_the_config() {
        let c = DpdkConfig {
            no_huge: true,
            no_pci: true,
            vdevs: vec!["net_null0".into()],
            pci_allow: vec!["0000:3b:00.0".into()],
            ..DpdkConfig::default()
        };
        let a = c.eal_args();
        for want in [
            "--no-huge",
            "--no-pci",
            "--vdev=net_null0",
            "--no-shconf",
            "-a",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        let h = DpdkConfig::default().eal_args();
        assert!(h.iter().any(|x| x == "--in-memory"), "{h:?}");
        assert!(!h.iter().any(|x| x == SINGLE_FILE), "{h:?}");
    }

    #[test]
    fn a_memif_zero_copy_client_gets_single_file_segments_once() {
        let zc = DpdkConfig {
            vdevs: vec![
                "net_memif0,role=server,socket=/tmp/m.sock".into(),
                "net_memif1,role=client,socket=/tmp/m.sock,zero-copy=yes".into(),
            ],
            ..DpdkConfig::default()
        };
        assert!(zc.memif_zero_copy());
        let count = |c: &DpdkConfig| c.eal_args().iter().filter(|x| *x == SINGLE_FILE).count();
        assert_eq!(count(&zc), 1);
        let given = DpdkConfig {
            extra_eal_args: vec![SINGLE_FILE.into()],
            ..zc.clone()
        };
        assert_eq!(count(&given), 1, "not added twice");
        let copy = DpdkConfig {
            vdevs: vec!["net_memif1,role=client,zero-copy=no".into()],
            ..DpdkConfig::default()
        };
        assert!(!copy.memif_zero_copy());
        assert_eq!(count(&copy), 0);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(DpdkConfig::default().validate().is_ok());
        for c in [
            DpdkConfig {
                prefix_len: 33,
                ..DpdkConfig::default()
            },
            DpdkConfig {
                ip: Ipv4Addr::UNSPECIFIED,
                ..DpdkConfig::default()
            },
            DpdkConfig {
                ip: Ipv4Addr::new(224, 0, 0, 1),
                ..DpdkConfig::default()
            },
            DpdkConfig {
                mtu: Some(100),
                ..DpdkConfig::default()
            },
            DpdkConfig {
                ipv6: Some(Ipv6Addr::UNSPECIFIED),
                ..DpdkConfig::default()
            },
            DpdkConfig {
                ipv6: Some("ff02::1".parse().unwrap()),
                ..DpdkConfig::default()
            },
            DpdkConfig {
                ipv6: Some("fd00::2".parse().unwrap()),
                ipv6_prefix_len: 129,
                ..DpdkConfig::default()
            },
            DpdkConfig {
                mtu: Some(65000),
                ..DpdkConfig::default()
            },
            DpdkConfig {
                burst: 0,
                ..DpdkConfig::default()
            },
            DpdkConfig {
                mbufs: 10,
                ..DpdkConfig::default()
            },
            DpdkConfig {
                queues: 0,
                ..DpdkConfig::default()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
