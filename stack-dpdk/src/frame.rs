//! Checks on received frames, done before smoltcp sees them so that every dropped frame is
//! counted by cause (smoltcp drops bad frames silently).

use smoltcp::wire::{
    EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket,
};

/// Why a received frame was dropped before smoltcp saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    /// Shorter than an Ethernet header.
    Runt,
    /// Neither IPv4, IPv6 nor ARP.
    NotIp,
    /// An IP or TCP header or length that does not fit the frame.
    Truncated,
    /// Wrong IPv4 header or TCP checksum.
    Checksum,
}

/// Checks one received frame. `ip_ok` / `tcp_ok`: the NIC already verified that checksum;
/// `hw_bad`: the NIC flagged a bad checksum.
pub fn check_frame(frame: &[u8], ip_ok: bool, tcp_ok: bool, hw_bad: bool) -> Result<(), Drop> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| Drop::Runt)?;
    let ipv6 = match eth.ethertype() {
        EthernetProtocol::Arp => return Ok(()),
        EthernetProtocol::Ipv4 => false,
        EthernetProtocol::Ipv6 => true,
        _ => return Err(Drop::NotIp),
    };
    if hw_bad {
        return Err(Drop::Checksum);
    }
    if ipv6 {
        check_ipv6(eth.payload(), tcp_ok)
    } else {
        check_ipv4(eth.payload(), ip_ok, tcp_ok)
    }
}

/// The IPv4 part of [`check_frame`]: header, lengths and header checksum, then a TCP segment
/// that is not a fragment.
fn check_ipv4(packet: &[u8], ip_ok: bool, tcp_ok: bool) -> Result<(), Drop> {
    let ip = Ipv4Packet::new_checked(packet).map_err(|_| Drop::Truncated)?;
    if !ip_ok && !ip.verify_checksum() {
        return Err(Drop::Checksum);
    }
    if ip.next_header() == IpProtocol::Tcp && !ip.more_frags() && ip.frag_offset() == 0 {
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        check_tcp(
            ip.payload(),
            IpAddress::Ipv4(src),
            IpAddress::Ipv4(dst),
            tcp_ok,
        )?;
    }
    Ok(())
}

/// The IPv6 part of [`check_frame`]: the header and its payload length fit, and a TCP
/// segment right behind the header (no extension headers) has the right checksum. IPv6 has no
/// header checksum; ICMPv6 (neighbour discovery, echo) is checked by smoltcp.
fn check_ipv6(packet: &[u8], tcp_ok: bool) -> Result<(), Drop> {
    let ip = Ipv6Packet::new_checked(packet).map_err(|_| Drop::Truncated)?;
    if ip.next_header() == IpProtocol::Tcp {
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        check_tcp(
            ip.payload(),
            IpAddress::Ipv6(src),
            IpAddress::Ipv6(dst),
            tcp_ok,
        )?;
    }
    Ok(())
}

/// A TCP segment from `src` to `dst`: its header fits, and its checksum over the pseudo-header
/// is right unless the NIC verified it (`tcp_ok`).
fn check_tcp(segment: &[u8], src: IpAddress, dst: IpAddress, tcp_ok: bool) -> Result<(), Drop> {
    let tcp = TcpPacket::new_checked(segment).map_err(|_| Drop::Truncated)?;
    if !tcp_ok && !tcp.verify_checksum(&src, &dst) {
        return Err(Drop::Checksum);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetRepr, IpAddress, Ipv4Address, Ipv4Repr, Ipv6Repr, TcpControl,
        TcpRepr, TcpSeqNumber,
    };

    fn tcp_repr(payload: &[u8]) -> TcpRepr<'_> {
        TcpRepr {
            src_port: 1000,
            dst_port: 2000,
            control: TcpControl::Psh,
            seq_number: TcpSeqNumber(1),
            ack_number: None,
            window_len: 1000,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None, None, None],
            timestamp: None,
            payload,
        }
    }

    fn eth_repr(ethertype: EthernetProtocol) -> EthernetRepr {
        EthernetRepr {
            src_addr: EthernetAddress([2, 0, 0, 0, 0, 1]),
            dst_addr: EthernetAddress([2, 0, 0, 0, 0, 2]),
            ethertype,
        }
    }

    /// A valid Ethernet + IPv4 + TCP frame with `payload`.
    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let src = Ipv4Address::new(10, 0, 0, 1);
        let dst = Ipv4Address::new(10, 0, 0, 2);
        let tcp = tcp_repr(payload);
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let eth = eth_repr(EthernetProtocol::Ipv4);
        let mut buf = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        eth.emit(&mut f);
        let mut p = Ipv4Packet::new_unchecked(f.payload_mut());
        ip.emit(&mut p, &caps);
        let mut t = TcpPacket::new_unchecked(p.payload_mut());
        tcp.emit(&mut t, &IpAddress::Ipv4(src), &IpAddress::Ipv4(dst), &caps);
        buf
    }

    /// A valid Ethernet + IPv6 + TCP frame with `payload`.
    fn tcp6_frame(payload: &[u8]) -> Vec<u8> {
        let src: std::net::Ipv6Addr = "fd00::1".parse().unwrap();
        let dst: std::net::Ipv6Addr = "fd00::2".parse().unwrap();
        let tcp = tcp_repr(payload);
        let ip = Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut buf = vec![0u8; 14 + ip.buffer_len() + tcp.buffer_len()];
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        eth_repr(EthernetProtocol::Ipv6).emit(&mut f);
        let mut p = Ipv6Packet::new_unchecked(f.payload_mut());
        ip.emit(&mut p);
        let mut t = TcpPacket::new_unchecked(p.payload_mut());
        let caps = ChecksumCapabilities::default();
        tcp.emit(&mut t, &IpAddress::Ipv6(src), &IpAddress::Ipv6(dst), &caps);
        buf
    }

    #[test]
    fn ipv6_frames_are_checked_like_ipv4_ones() {
        let good = tcp6_frame(b"hello");
        assert_eq!(check_frame(&good, false, false, false), Ok(()));
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(check_frame(&bad, false, false, false), Err(Drop::Checksum));
        assert_eq!(check_frame(&bad, false, true, false), Ok(()), "offloaded");
        assert_eq!(
            check_frame(&good, false, false, true),
            Err(Drop::Checksum),
            "flagged by the NIC"
        );
        // Shorter than its IPv6 header, or than the payload length the header claims.
        assert_eq!(
            check_frame(&good[..14 + 30], false, false, false),
            Err(Drop::Truncated)
        );
        assert_eq!(
            check_frame(&good[..good.len() - 2], false, false, false),
            Err(Drop::Truncated)
        );
        // A TCP header cut short inside a consistent IPv6 packet.
        let mut short = good[..14 + 40 + 10].to_vec();
        short[14 + 4..14 + 6].copy_from_slice(&10u16.to_be_bytes());
        assert_eq!(
            check_frame(&short, false, false, false),
            Err(Drop::Truncated)
        );
    }

    #[test]
    fn good_frame_passes() {
        assert_eq!(
            check_frame(&tcp_frame(b"hello"), false, false, false),
            Ok(())
        );
    }

    #[test]
    fn runt_and_non_ip_dropped() {
        assert_eq!(
            check_frame(&[0u8; 10], false, false, false),
            Err(Drop::Runt)
        );
        let mut f = tcp_frame(b"x");
        f[12] = 0x88;
        f[13] = 0xcc; // LLDP
        assert_eq!(check_frame(&f, false, false, false), Err(Drop::NotIp));
        // net_null's all-zero frames: ethertype 0.
        assert_eq!(
            check_frame(&[0u8; 64], false, false, false),
            Err(Drop::NotIp)
        );
    }

    #[test]
    fn truncated_dropped() {
        let f = tcp_frame(b"hello world");
        assert_eq!(
            check_frame(&f[..30], false, false, false),
            Err(Drop::Truncated)
        );
        assert_eq!(
            check_frame(&f[..f.len() - 3], false, false, false),
            Err(Drop::Truncated)
        );
    }

    #[test]
    fn bad_checksums_dropped_unless_offloaded() {
        let mut f = tcp_frame(b"hello");
        let last = f.len() - 1;
        f[last] ^= 0xff; // payload byte: TCP checksum now wrong
        assert_eq!(check_frame(&f, false, false, false), Err(Drop::Checksum));
        assert_eq!(check_frame(&f, false, true, false), Ok(()));
        let mut g = tcp_frame(b"hello");
        g[14 + 8] ^= 1; // TTL: IPv4 header checksum now wrong
        assert_eq!(check_frame(&g, false, false, false), Err(Drop::Checksum));
        assert_eq!(
            check_frame(&tcp_frame(b"x"), true, true, true),
            Err(Drop::Checksum)
        );
    }
}
