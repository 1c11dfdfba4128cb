//! The TCP side channel: what the two ends exchange to connect their queue pairs, then the
//! small control messages that must not need receive credits themselves.
//!
//! ```text
//! hello   (64 B): magic "DPRD" | version u16 | reserved u16 | qpn u32 | psn u32 | gid [16]
//!                 | lid u16 | mtu u8 | flags u8 | recv_credits u32 | slot_size u32
//!                 | write_addr u64 | write_rkey u32 | write_chunk u32 | write_chunks u32
//!                 flags: bit 0 = the sender receives through a shared receive queue
//!                        bit 1 = the sender lends receive buffers (zero-copy receive): its
//!                                peer should start each large frame in a SEND of its own
//!                        bit 2 = write chunks are memory windows: write_addr and write_rkey
//!                                are 0, each chunk's address and key come in GRANTs
//!                 write_*: the buffer the peer may RDMA-WRITE into (write_chunks chunks of
//!                 write_chunk bytes from write_addr, remote key write_rkey); 0 chunks = none
//! control (8 B):  tag u32 | value u32      tag 1 READY, 2 CREDIT(n), 3 CLOSE(data WRs posted),
//!                                          4 WRITE_CREDIT(n)
//! grant (24 B):   tag u32 = 5 | chunk u32 | addr u64 | rkey u32 | reserved u32
//!                 one more write chunk (the next in ring order, `chunk`) the peer may write,
//!                 at `addr` under `rkey` (memory-window mode only; there every returned
//!                 chunk comes as a GRANT, never as WRITE_CREDIT or in an immediate)
//! ```
//!
//! Immediate data of every data work request (SEND or RDMA WRITE, both with immediate):
//!
//! ```text
//! bits 0..11  receive credits returned       bits 12..15 write chunks returned
//! bits 16..23 chunk written (WRITE only)     bit 24      1 = RDMA WRITE, 0 = SEND
//! bits 25..31 reserved, zero
//! ```
//!
//! All integers little-endian. Every field is checked before use: a bad peer gets a clear
//! error, never a panic.

/// `"DPRD"`.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"DPRD");
/// Side-channel protocol version.
pub(crate) const VERSION: u16 = 3;
/// Encoded size of [`Hello`].
pub(crate) const HELLO_LEN: usize = 64;
/// Encoded size of a control message.
pub(crate) const CTL_LEN: usize = 8;
/// Encoded size of a [`Ctl::Grant`].
pub(crate) const GRANT_LEN: usize = 24;
/// Most receive credits a peer may announce (bounds what we must track).
pub(crate) const MAX_CREDITS: u32 = 1 << 15;
/// Most write chunks a peer may advertise (the chunk index has 8 bits).
pub(crate) const MAX_WRITE_CHUNKS: u32 = 255;
/// Most receive credits one immediate value carries.
pub(crate) const IMM_MAX_CREDITS: u32 = 0xfff;
/// Most write-chunk credits one immediate value carries.
pub(crate) const IMM_MAX_WRITE_CREDITS: u32 = 0xf;

/// A buffer the peer may RDMA-WRITE into: `chunks` chunks of `chunk` bytes from `addr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteRegion {
    pub(crate) addr: u64,
    pub(crate) rkey: u32,
    pub(crate) chunk: u32,
    pub(crate) chunks: u32,
}

/// Queue-pair coordinates and receive-buffer terms of one end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) qpn: u32,
    pub(crate) psn: u32,
    pub(crate) gid: [u8; 16],
    pub(crate) lid: u16,
    /// `ibv_mtu` code (1 = 256 … 5 = 4096).
    pub(crate) mtu: u8,
    /// Receive buffers posted for this connection: the sender's initial credits.
    pub(crate) recv_credits: u32,
    /// Bytes per receive buffer: the largest SEND the peer may post.
    pub(crate) slot_size: u32,
    /// The sender receives through a shared receive queue (the other end then retries RNR:
    /// another peer overrunning its credits may briefly empty the SRQ).
    pub(crate) srq: bool,
    /// The sender lends the receive buffers SENDs land in to its messenger (zero-copy
    /// receive): a frame that arrives whole in one SEND is not copied, so its peer starts a
    /// SEND at each large frame and prefers SENDs to RDMA WRITE for frames that fit a slot.
    pub(crate) lends: bool,
    /// Where the peer may RDMA-WRITE large messages, if anywhere.
    pub(crate) write: Option<WriteRegion>,
    /// The write chunks are memory windows: `write`'s address and key are 0, and each chunk
    /// is granted (address and key) by a [`Ctl::Grant`].
    pub(crate) windows: bool,
}

impl Hello {
    pub(crate) fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.qpn.to_le_bytes());
        b[12..16].copy_from_slice(&self.psn.to_le_bytes());
        b[16..32].copy_from_slice(&self.gid);
        b[32..34].copy_from_slice(&self.lid.to_le_bytes());
        b[34] = self.mtu;
        b[35] = u8::from(self.srq) | (u8::from(self.lends) << 1) | (u8::from(self.windows) << 2);
        b[36..40].copy_from_slice(&self.recv_credits.to_le_bytes());
        b[40..44].copy_from_slice(&self.slot_size.to_le_bytes());
        if let Some(w) = self.write {
            b[44..52].copy_from_slice(&w.addr.to_le_bytes());
            b[52..56].copy_from_slice(&w.rkey.to_le_bytes());
            b[56..60].copy_from_slice(&w.chunk.to_le_bytes());
            b[60..64].copy_from_slice(&w.chunks.to_le_bytes());
        }
        b
    }

    /// Parses and validates a peer's hello.
    pub(crate) fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, String> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        if u32_at(0) != MAGIC {
            return Err("side channel: bad magic (peer is not an RDMA dataplane stack)".into());
        }
        if u16_at(4) != VERSION {
            return Err(format!(
                "side channel: version {} unsupported (want {VERSION})",
                u16_at(4)
            ));
        }
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[16..32]);
        let h = Hello {
            qpn: u32_at(8),
            psn: u32_at(12),
            gid,
            lid: u16_at(32),
            mtu: b[34],
            recv_credits: u32_at(36),
            slot_size: u32_at(40),
            srq: b[35] & 1 != 0,
            lends: b[35] & 2 != 0,
            write: None,
            windows: b[35] & 4 != 0,
        };
        let mut addr = [0u8; 8];
        addr.copy_from_slice(&b[44..52]);
        let w = WriteRegion {
            addr: u64::from_le_bytes(addr),
            rkey: u32_at(52),
            chunk: u32_at(56),
            chunks: u32_at(60),
        };
        let h = Hello {
            write: if w.chunks == 0 { None } else { Some(w) },
            ..h
        };
        if let Some(w) = h.write {
            let span = u64::from(w.chunk) * u64::from(w.chunks);
            if w.chunks > MAX_WRITE_CHUNKS
                || !(4096..=1 << 30).contains(&w.chunk)
                || w.addr.checked_add(span).is_none()
            {
                return Err(format!(
                    "side channel: bad write buffer ({} chunks of {} bytes at {:#x})",
                    w.chunks, w.chunk, w.addr
                ));
            }
        }
        if h.windows && h.write.is_none_or(|w| w.addr != 0 || w.rkey != 0) {
            return Err(
                "side channel: memory-window write chunks need a chunk count and no address".into(),
            );
        }
        if b[35] & !7 != 0 {
            return Err(format!("side channel: unknown hello flags {:#04x}", b[35]));
        }
        if h.qpn == 0 || h.qpn > 0x00ff_ffff {
            return Err(format!("side channel: bad QP number {:#x}", h.qpn));
        }
        if h.psn > 0x00ff_ffff {
            return Err(format!("side channel: bad PSN {:#x}", h.psn));
        }
        if !(1..=5).contains(&h.mtu) {
            return Err(format!("side channel: bad MTU code {}", h.mtu));
        }
        if h.recv_credits == 0 || h.recv_credits > MAX_CREDITS {
            return Err(format!(
                "side channel: bad receive credits {}",
                h.recv_credits
            ));
        }
        if h.slot_size < 64 {
            return Err(format!(
                "side channel: receive buffers of {} bytes are too small",
                h.slot_size
            ));
        }
        Ok(h)
    }
}

/// A control message after the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ctl {
    /// The sender's QP is ready to receive: RDMA traffic may start.
    Ready,
    /// The sender re-posted this many receive buffers for us.
    Credit(u32),
    /// The sender is closing after posting this many data work requests in total (wrapping).
    Close(u32),
    /// The sender consumed this many more chunks of its write buffer: they may be written.
    WriteCredit(u32),
    /// Memory-window mode: one more chunk may be written, the next in ring order (`chunk`),
    /// at `addr` under `rkey`.
    Grant { chunk: u32, addr: u64, rkey: u32 },
}

impl Ctl {
    /// Appends the encoding to `out`.
    pub(crate) fn encode_into(self, out: &mut Vec<u8>) {
        let (tag, v) = match self {
            Ctl::Ready => (1u32, 0u32),
            Ctl::Credit(n) => (2, n),
            Ctl::Close(n) => (3, n),
            Ctl::WriteCredit(n) => (4, n),
            Ctl::Grant { chunk, .. } => (5, chunk),
        };
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&v.to_le_bytes());
        if let Ctl::Grant { addr, rkey, .. } = self {
            out.extend_from_slice(&addr.to_le_bytes());
            out.extend_from_slice(&rkey.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
    }

    /// Decodes the control message at the start of `b`: `None` until all of it is there,
    /// else the message and its length.
    pub(crate) fn decode(b: &[u8]) -> Result<Option<(Ctl, usize)>, String> {
        let Some(head) = b.get(..CTL_LEN) else {
            return Ok(None);
        };
        let tag = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let v = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let c = match tag {
            1 => Ctl::Ready,
            2 => Ctl::Credit(v),
            3 => Ctl::Close(v),
            4 => Ctl::WriteCredit(v),
            5 => {
                let Some(g) = b.get(..GRANT_LEN) else {
                    return Ok(None);
                };
                let mut addr = [0u8; 8];
                addr.copy_from_slice(&g[8..16]);
                let rkey = u32::from_le_bytes([g[16], g[17], g[18], g[19]]);
                if g[20..24] != [0; 4] {
                    return Err("side channel: grant with reserved bytes set".into());
                }
                return Ok(Some((
                    Ctl::Grant {
                        chunk: v,
                        addr: u64::from_le_bytes(addr),
                        rkey,
                    },
                    GRANT_LEN,
                )));
            }
            t => return Err(format!("side channel: unknown control tag {t}")),
        };
        Ok(Some((c, CTL_LEN)))
    }
}

/// The decoded immediate value of a data work request (layout in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Imm {
    /// Receive credits returned to the receiver of this work request.
    pub(crate) credits: u32,
    /// Write chunks returned.
    pub(crate) write_credits: u32,
    /// `Some(chunk)` for an RDMA WRITE into that chunk, `None` for a SEND.
    pub(crate) write: Option<u32>,
}

impl Imm {
    /// Encodes; the caller keeps `credits` ≤ [`IMM_MAX_CREDITS`], `write_credits` ≤
    /// [`IMM_MAX_WRITE_CREDITS`] and the chunk below 256 (excess bits are masked off).
    pub(crate) fn encode(self) -> u32 {
        let mut v = (self.credits & IMM_MAX_CREDITS) | (self.write_credits & 0xf) << 12;
        if let Some(c) = self.write {
            v |= (c & 0xff) << 16 | 1 << 24;
        }
        v
    }

    /// Decodes and checks a peer's immediate value.
    pub(crate) fn decode(imm: u32) -> Result<Imm, String> {
        let write = imm & 1 << 24 != 0;
        if imm >> 25 != 0 || (!write && imm >> 16 != 0) {
            return Err(format!(
                "bad immediate value {imm:#010x} (reserved bits set)"
            ));
        }
        Ok(Imm {
            credits: imm & IMM_MAX_CREDITS,
            write_credits: imm >> 12 & 0xf,
            write: write.then_some(imm >> 16 & 0xff),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            qpn: 17,
            psn: 0x12_3456,
            gid: [7; 16],
            lid: 0,
            mtu: 3,
            recv_credits: 32,
            slot_size: 65536,
            srq: true,
            lends: true,
            write: Some(WriteRegion {
                addr: 0x7f00_0000_0000,
                rkey: 0x1234,
                chunk: 512 << 10,
                chunks: 2,
            }),
            windows: false,
        }
    }

    #[test]
    fn hello_round_trips() {
        assert_eq!(Hello::decode(&hello().encode()), Ok(hello()));
    }

    #[test]
    fn bad_hellos_are_refused_with_a_reason() {
        let mut b = hello().encode();
        b[0] ^= 1;
        assert!(Hello::decode(&b).unwrap_err().contains("magic"));
        type Case = (fn(&mut Hello), &'static str);
        let cases: [Case; 5] = [
            (|h| h.qpn = 0, "QP number"),
            (|h| h.psn = 1 << 24, "PSN"),
            (|h| h.mtu = 9, "MTU"),
            (|h| h.recv_credits = MAX_CREDITS + 1, "credits"),
            (|h| h.slot_size = 1, "too small"),
        ];
        for (f, want) in cases {
            let mut h = hello();
            f(&mut h);
            let e = Hello::decode(&h.encode()).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let mut b = hello().encode();
        b[35] = 0x82;
        assert!(Hello::decode(&b).unwrap_err().contains("flags"));
        for w in [
            WriteRegion {
                chunks: 256,
                ..hello().write.unwrap()
            },
            WriteRegion {
                chunk: 100,
                ..hello().write.unwrap()
            },
            WriteRegion {
                addr: u64::MAX - 10,
                ..hello().write.unwrap()
            },
        ] {
            let h = Hello {
                write: Some(w),
                ..hello()
            };
            assert!(Hello::decode(&h.encode())
                .unwrap_err()
                .contains("write buffer"));
        }
        let none = Hello {
            write: None,
            ..hello()
        };
        assert_eq!(Hello::decode(&none.encode()), Ok(none));
        // Memory-window chunks: no address or key in the hello, and not without chunks.
        let windows = Hello {
            windows: true,
            write: Some(WriteRegion {
                addr: 0,
                rkey: 0,
                ..hello().write.unwrap()
            }),
            ..hello()
        };
        assert_eq!(Hello::decode(&windows.encode()), Ok(windows));
        for h in [
            Hello {
                windows: true,
                ..hello()
            },
            Hello {
                write: None,
                ..windows
            },
        ] {
            assert!(Hello::decode(&h.encode())
                .unwrap_err()
                .contains("memory-window"));
        }
    }

    #[test]
    fn control_messages_round_trip_and_unknown_tags_fail() {
        for c in [
            Ctl::Ready,
            Ctl::Credit(5),
            Ctl::Close(u32::MAX),
            Ctl::WriteCredit(2),
            Ctl::Grant {
                chunk: 3,
                addr: 0x7f12_3456_7000,
                rkey: 0xabcd_ef01,
            },
        ] {
            let mut b = Vec::new();
            c.encode_into(&mut b);
            assert_eq!(Ctl::decode(&b), Ok(Some((c, b.len()))));
            // Not all there yet: wait for the rest.
            assert_eq!(Ctl::decode(&b[..b.len() - 1]), Ok(None));
        }
        assert!(Ctl::decode(&[9, 0, 0, 0, 0, 0, 0, 0]).is_err());
        let mut g = Vec::new();
        Ctl::Grant {
            chunk: 0,
            addr: 1,
            rkey: 2,
        }
        .encode_into(&mut g);
        g[23] = 1;
        assert!(Ctl::decode(&g).unwrap_err().contains("reserved"));
    }

    #[test]
    fn immediate_values_round_trip_and_reserved_bits_are_checked() {
        for imm in [
            Imm {
                credits: 12,
                ..Imm::default()
            },
            Imm {
                credits: IMM_MAX_CREDITS,
                write_credits: 15,
                write: Some(254),
            },
            Imm {
                credits: 0,
                write_credits: 1,
                write: Some(0),
            },
        ] {
            assert_eq!(Imm::decode(imm.encode()), Ok(imm));
        }
        assert!(Imm::decode(1 << 16).unwrap_err().contains("reserved bits"));
        assert!(Imm::decode(1 << 25).unwrap_err().contains("reserved bits"));
    }
}
