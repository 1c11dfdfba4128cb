//! Receive-side scaling: which RX queue a device's Toeplitz hash sends a TCP flow to, so
//! a worker can pick the local port of an outgoing connection whose replies come back to its
//! own queue (its smoltcp interface holds the socket). Pure code, tested without DPDK.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The Toeplitz hash of `input` under `key` (the RSS hash of Microsoft's specification, which
/// NICs implement): for every set bit of the input, XOR in the 32 key bits starting there.
pub fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let bit = |i: usize| -> u32 {
        key.get(i / 8)
            .map_or(0, |b| u32::from((b >> (7 - i % 8)) & 1))
    };
    // The 32-bit window of the key starting at bit 0, slid one bit per input bit.
    let mut window: u32 = (0..32).fold(0, |w, i| (w << 1) | bit(i));
    let mut hash = 0u32;
    for (n, byte) in input.iter().enumerate() {
        for b in 0..8 {
            if byte & (0x80 >> b) != 0 {
                hash ^= window;
            }
            window = (window << 1) | bit(n * 8 + b + 32);
        }
    }
    hash
}

/// The hash input of a TCP/IPv4 segment as the receiver sees it: source address,
/// destination address, source port, destination port (network byte order).
pub fn tcp4_input(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[0..4].copy_from_slice(&src.octets());
    v[4..8].copy_from_slice(&dst.octets());
    v[8..10].copy_from_slice(&sport.to_be_bytes());
    v[10..12].copy_from_slice(&dport.to_be_bytes());
    v
}

/// The hash input of a TCP/IPv6 segment (no extension headers) as the receiver sees it:
/// source address, destination address, source port, destination port.
pub fn tcp6_input(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> [u8; 36] {
    let mut v = [0u8; 36];
    v[0..16].copy_from_slice(&src.octets());
    v[16..32].copy_from_slice(&dst.octets());
    v[32..34].copy_from_slice(&sport.to_be_bytes());
    v[34..36].copy_from_slice(&dport.to_be_bytes());
    v
}

/// A port's RSS set-up: its hash key and redirection table (hash → queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RssTable {
    /// The Toeplitz key.
    pub key: Vec<u8>,
    /// Redirection table: entry `hash % len` is the queue.
    pub reta: Vec<u16>,
}

impl RssTable {
    /// The queue a segment from `src:sport` to `dst:dport` is received on, if the table is
    /// usable (a key of at least 4 bytes more than the hash input) and both addresses are of
    /// one family.
    pub fn queue_of(&self, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Option<u16> {
        let (v4, v6);
        let input: &[u8] = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                v4 = tcp4_input(s, d, sport, dport);
                &v4
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                v6 = tcp6_input(s, d, sport, dport);
                &v6
            }
            _ => return None,
        };
        if self.reta.is_empty() || self.key.len() < input.len() + 4 {
            return None;
        }
        let h = toeplitz(&self.key, input);
        self.reta.get(h as usize % self.reta.len()).copied()
    }

    /// True if the table sends some flow to every queue below `queues` (otherwise a worker
    /// could never get replies on its own queue).
    pub fn covers(&self, queues: u16) -> bool {
        (0..queues).all(|q| self.reta.contains(&q))
    }
}

/// How an outgoing connection of the worker on `queue` must choose its local port so that the
/// peer's segments come back to `queue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Steering {
    /// One queue: any port.
    Single,
    /// The device hashes flows to queues: a port whose reply flow hashes to our queue.
    Rss(RssTable),
    /// No hashing, but queues are paired with the peer's (`net_memif`, `net_ring`: what is
    /// sent on queue i arrives on the peer's queue i, and its replies come back on i): any
    /// port; ports are split between queues (`port % queues == queue`) so two workers
    /// never pick the same one.
    Symmetric {
        /// Queue pairs of the port.
        queues: u16,
    },
}

impl Steering {
    /// True if `local_port` suits a connection from `local` to `remote` made by the worker
    /// on `queue`.
    pub fn accepts(
        &self,
        queue: u16,
        local: IpAddr,
        local_port: u16,
        remote: IpAddr,
        remote_port: u16,
    ) -> bool {
        match self {
            Steering::Single => true,
            // The peer's segments: source = remote, destination = us.
            Steering::Rss(t) => t.queue_of(remote, local, remote_port, local_port) == Some(queue),
            Steering::Symmetric { queues } => local_port % (*queues).max(1) == queue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key of Microsoft's RSS verification suite (also DPDK's and Intel's default).
    const MS_KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    #[test]
    fn toeplitz_matches_the_microsoft_verification_suite() {
        // (destination, dport, source, sport, IPv4-only hash, IPv4+TCP hash)
        let cases = [
            (
                "161.142.100.80",
                1766,
                "66.9.149.187",
                2794,
                0x323e8fc2u32,
                0x51ccc178u32,
            ),
            (
                "65.69.140.83",
                4739,
                "199.92.111.2",
                14230,
                0xd718262a,
                0xc626b0ea,
            ),
            (
                "12.22.207.184",
                38024,
                "24.19.198.95",
                12898,
                0xd2d0a5de,
                0x5c2b394a,
            ),
            (
                "209.142.163.6",
                2217,
                "38.27.205.30",
                48228,
                0x82989176,
                0xafc7327f,
            ),
            (
                "202.188.127.2",
                1303,
                "153.39.163.191",
                44251,
                0x5d1809c5,
                0x10e828a2,
            ),
        ];
        for (dst, dport, src, sport, h_ip, h_tcp) in cases {
            let (dst, src): (Ipv4Addr, Ipv4Addr) = (dst.parse().unwrap(), src.parse().unwrap());
            let input = tcp4_input(src, dst, sport, dport);
            assert_eq!(toeplitz(&MS_KEY, &input[..8]), h_ip, "{src} → {dst}");
            assert_eq!(
                toeplitz(&MS_KEY, &input),
                h_tcp,
                "{src}:{sport} → {dst}:{dport}"
            );
        }
    }

    #[test]
    fn toeplitz_matches_the_microsoft_verification_suite_for_ipv6() {
        // (destination, dport, source, sport, IPv6-only hash, IPv6+TCP hash)
        let cases = [
            (
                "3ffe:2501:200:3::1",
                1766,
                "3ffe:2501:200:1fff::7",
                2794,
                0x2cc18cd5u32,
                0x40207d3du32,
            ),
            (
                "ff02::1",
                4739,
                "3ffe:501:8::260:97ff:fe40:efab",
                14230,
                0x0f0c461c,
                0xdde51bbf,
            ),
            (
                "fe80::200:f8ff:fe21:67cf",
                38024,
                "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
                44251,
                0x4b61e985,
                0x02d1feef,
            ),
        ];
        for (dst, dport, src, sport, h_ip, h_tcp) in cases {
            let (dst, src): (Ipv6Addr, Ipv6Addr) = (dst.parse().unwrap(), src.parse().unwrap());
            let input = tcp6_input(src, dst, sport, dport);
            assert_eq!(toeplitz(&MS_KEY, &input[..32]), h_ip, "{src} → {dst}");
            assert_eq!(
                toeplitz(&MS_KEY, &input),
                h_tcp,
                "{src}:{sport} → {dst}:{dport}"
            );
        }
    }

    #[test]
    fn steering_finds_a_local_port_for_every_queue() {
        let t = RssTable {
            key: MS_KEY.to_vec(),
            reta: (0..128).map(|i| i % 4).collect(),
        };
        assert!(t.covers(4));
        assert!(!t.covers(5));
        let (us, peer) = (
            IpAddr::from(Ipv4Addr::new(10, 0, 0, 2)),
            IpAddr::from(Ipv4Addr::new(10, 0, 0, 1)),
        );
        let (us6, peer6): (IpAddr, IpAddr) =
            ("fd00::2".parse().unwrap(), "fd00::1".parse().unwrap());
        let s = Steering::Rss(t.clone());
        for (us, peer) in [(us, peer), (us6, peer6)] {
            for q in 0..4u16 {
                let p = (49152..=u16::MAX)
                    .find(|&p| s.accepts(q, us, p, peer, 7300))
                    .expect("a port for every queue");
                // The reply flow (peer → us) lands on q.
                assert_eq!(t.queue_of(peer, us, 7300, p), Some(q));
            }
        }
        // Mixed families hash nothing.
        assert_eq!(t.queue_of(peer6, us, 7300, 1), None);
        let sym = Steering::Symmetric { queues: 2 };
        assert!(sym.accepts(1, us, 50001, peer, 7300));
        assert!(!sym.accepts(0, us, 50001, peer, 7300));
        assert!(Steering::Single.accepts(0, us, 50001, peer, 7300));
        // A table with no entries steers nothing.
        let empty = RssTable {
            key: MS_KEY.to_vec(),
            reta: Vec::new(),
        };
        assert_eq!(empty.queue_of(peer, us, 1, 2), None);
    }
}
