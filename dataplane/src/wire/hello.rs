//! The handshake body: the front segment of `Hello` and `HelloReply` frames.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::error::WireError;

/// First 8 bytes of every handshake body.
pub const BANNER: [u8; 8] = *b"dataplan";
/// Longest entity name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Size of [`HelloBody`]; the entity name follows it.
pub const HELLO_BODY_LEN: usize = 80;

/// `policy` value: lossy session.
pub const POLICY_LOSSY: u8 = 0;
/// `policy` value: lossless session.
pub const POLICY_LOSSLESS: u8 = 1;
/// `addr_family` value: no address.
pub const AF_NONE: u8 = 0;
/// `addr_family` value: IPv4, address in `ip[0..4]`, `ip[4..16]` zero.
pub const AF_INET: u8 = 4;
/// `addr_family` value: IPv6, address in `ip[0..16]`.
pub const AF_INET6: u8 = 6;

/// Fixed part of the handshake body as it lies on the wire: 80 bytes,
/// little-endian, no padding; followed by `name_len` bytes of UTF-8 name.
#[repr(C)]
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
pub struct HelloBody {
    /// Must equal [`BANNER`].
    pub banner: [u8; 8],
    /// Messenger protocol version of the sender.
    pub proto_version: U16,
    /// Kind of entity the sender is (opaque to the wire layer).
    pub entity_type: u8,
    /// `HelloReply` only: a [`HelloStatus`]; 0 in `Hello`.
    pub status: u8,
    /// Feature bits the sender supports.
    pub features: U64,
    /// Feature bits the sender requires of the peer.
    pub required: U64,
    /// Random per process incarnation (detects peer restart).
    pub session_id: U64,
    /// How many times this session has (re)connected.
    pub connect_seq: U64,
    /// Highest message seq received in order from the peer in this session.
    pub in_seq: U64,
    /// [`POLICY_LOSSY`] or [`POLICY_LOSSLESS`].
    pub policy: u8,
    /// [`AF_NONE`], [`AF_INET`] or [`AF_INET6`].
    pub addr_family: u8,
    /// Port of the sender's address (little-endian like every field; 0 if none).
    pub port: U16,
    /// IP of the sender's address; IPv4 in the first 4 bytes, rest zero.
    pub ip: [u8; 16],
    /// Length of the entity name that follows, at most [`MAX_NAME_LEN`].
    pub name_len: U16,
    /// Which of several parallel connections between the same two entities this is (0 for
    /// the default one); part of the key a server finds a lossless session by.
    pub lane: U32,
    /// Client connections: a tag that tells the client's connections to one server apart
    /// (two connections of one messenger, e.g. through two of the server's addresses, share
    /// its name, address, lane and `session_id`); 0 when not given (older peers, replies).
    pub conn_tag: U16,
}

const _: () = assert!(core::mem::size_of::<HelloBody>() == HELLO_BODY_LEN);

/// Outcome of a handshake, carried in a `HelloReply`.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HelloStatus {
    /// Accepted (also the value sent in every `Hello`).
    #[default]
    Ok = 0,
    /// The peers' `proto_version`s are incompatible.
    VersionMismatch = 1,
    /// A required feature bit is missing on one side.
    FeatureMismatch = 2,
    /// The acceptor refuses the connection (policy, overload, ...).
    Refused = 3,
    /// The acceptor has no (or a newer) session for this peer: start afresh.
    SessionReset = 4,
}

impl From<HelloStatus> for u8 {
    fn from(s: HelloStatus) -> u8 {
        s as u8
    }
}

impl TryFrom<u8> for HelloStatus {
    type Error = WireError;

    fn try_from(v: u8) -> Result<HelloStatus, WireError> {
        Ok(match v {
            0 => HelloStatus::Ok,
            1 => HelloStatus::VersionMismatch,
            2 => HelloStatus::FeatureMismatch,
            3 => HelloStatus::Refused,
            4 => HelloStatus::SessionReset,
            _ => return Err(WireError::BadHello("unknown status")),
        })
    }
}

/// Owned, validated handshake contents returned by [`parse_hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Messenger protocol version of the sender.
    pub proto_version: u16,
    /// Kind of entity the sender is.
    pub entity_type: u8,
    /// Handshake outcome (`HelloReply`); [`HelloStatus::Ok`] in a `Hello`.
    pub status: HelloStatus,
    /// Feature bits the sender supports.
    pub features: u64,
    /// Feature bits the sender requires of the peer.
    pub required: u64,
    /// Random per process incarnation.
    pub session_id: u64,
    /// How many times this session has (re)connected.
    pub connect_seq: u64,
    /// Highest message seq received in order from the peer in this session.
    pub in_seq: u64,
    /// True for a lossless session policy.
    pub lossless: bool,
    /// The sender's address, if it advertises one. IPv6 flow info and scope id
    /// are not carried (they parse back as 0).
    pub addr: Option<SocketAddr>,
    /// The sender's entity name, at most [`MAX_NAME_LEN`] bytes of UTF-8.
    pub name: String,
    /// Parallel-connection lane (0 for the default connection).
    pub lane: u32,
    /// Tag of the client's connection (see [`HelloBody::conn_tag`]); 0 when not given.
    pub conn_tag: u16,
}

/// Encodes a handshake body (fixed part followed by the name).
///
/// Errors with [`WireError::NameTooLong`] if the name exceeds [`MAX_NAME_LEN`] bytes.
pub fn encode_hello(h: &Hello) -> Result<Vec<u8>, WireError> {
    let name = h.name.as_bytes();
    let name_len = u16::try_from(name.len())
        .ok()
        .filter(|&n| usize::from(n) <= MAX_NAME_LEN)
        .ok_or(WireError::NameTooLong {
            len: name.len(),
            max: MAX_NAME_LEN,
        })?;
    let (addr_family, port, ip) = match h.addr {
        None => (AF_NONE, 0, [0u8; 16]),
        Some(SocketAddr::V4(a)) => {
            let mut ip = [0u8; 16];
            let [a0, a1, a2, a3] = a.ip().octets();
            ip[..4].copy_from_slice(&[a0, a1, a2, a3]);
            (AF_INET, a.port(), ip)
        }
        Some(SocketAddr::V6(a)) => (AF_INET6, a.port(), a.ip().octets()),
    };
    let body = HelloBody {
        banner: BANNER,
        proto_version: U16::new(h.proto_version),
        entity_type: h.entity_type,
        status: h.status.into(),
        features: U64::new(h.features),
        required: U64::new(h.required),
        session_id: U64::new(h.session_id),
        connect_seq: U64::new(h.connect_seq),
        in_seq: U64::new(h.in_seq),
        policy: if h.lossless {
            POLICY_LOSSLESS
        } else {
            POLICY_LOSSY
        },
        addr_family,
        port: U16::new(port),
        ip,
        name_len: U16::new(name_len),
        lane: U32::new(h.lane),
        conn_tag: U16::new(h.conn_tag),
    };
    let mut out = Vec::with_capacity(HELLO_BODY_LEN + name.len());
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(name);
    Ok(out)
}

/// Parses and validates a handshake body (the whole front segment).
///
/// Checks, in order: at least [`HELLO_BODY_LEN`] bytes, banner, status known,
/// policy known, address family known (and unused address bytes zero),
/// `name_len <= MAX_NAME_LEN`, `name_len` equal to the bytes remaining, name
/// UTF-8. `proto_version` and feature bits are returned, not judged: deciding
/// compatibility is the handshake's job.
pub fn parse_hello(front: &[u8]) -> Result<Hello, WireError> {
    let (body, name) = HelloBody::ref_from_prefix(front).map_err(|_| WireError::Truncated {
        what: "hello body",
        need: HELLO_BODY_LEN,
        have: front.len(),
    })?;
    if body.banner != BANNER {
        return Err(WireError::BadBanner);
    }
    let status = HelloStatus::try_from(body.status)?;
    let lossless = match body.policy {
        POLICY_LOSSY => false,
        POLICY_LOSSLESS => true,
        _ => return Err(WireError::BadHello("unknown session policy")),
    };
    let addr = parse_addr(body)?;
    let name_len = usize::from(body.name_len.get());
    if name_len > MAX_NAME_LEN {
        return Err(WireError::NameTooLong {
            len: name_len,
            max: MAX_NAME_LEN,
        });
    }
    if name.len() < name_len {
        return Err(WireError::Truncated {
            what: "hello name",
            need: name_len,
            have: name.len(),
        });
    }
    if name.len() > name_len {
        return Err(WireError::BadHello("trailing bytes after entity name"));
    }
    let name = core::str::from_utf8(name).map_err(|_| WireError::BadName)?;
    Ok(Hello {
        proto_version: body.proto_version.get(),
        entity_type: body.entity_type,
        status,
        features: body.features.get(),
        required: body.required.get(),
        session_id: body.session_id.get(),
        connect_seq: body.connect_seq.get(),
        in_seq: body.in_seq.get(),
        lossless,
        addr,
        name: name.to_owned(),
        lane: body.lane.get(),
        conn_tag: body.conn_tag.get(),
    })
}

fn parse_addr(body: &HelloBody) -> Result<Option<SocketAddr>, WireError> {
    let port = body.port.get();
    match body.addr_family {
        AF_NONE => {
            if port != 0 || body.ip != [0; 16] {
                return Err(WireError::BadHello("address bytes set without a family"));
            }
            Ok(None)
        }
        AF_INET => match body.ip {
            [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] => Ok(Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
                port,
            ))),
            _ => Err(WireError::BadHello("IPv4 address with non-zero padding")),
        },
        AF_INET6 => Ok(Some(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(body.ip)),
            port,
        ))),
        _ => Err(WireError::BadHello("unknown address family")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Hello {
        Hello {
            proto_version: 1,
            entity_type: 2,
            status: HelloStatus::Ok,
            features: 0xF0,
            required: 0x10,
            session_id: 0xDEAD_BEEF_0000_0001,
            connect_seq: 3,
            in_seq: 99,
            lossless: true,
            lane: 5,
            conn_tag: 0,
            addr: Some("10.1.2.3:6800".parse().unwrap()),
            name: "osd.12".to_owned(),
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let b = encode_hello(&sample()).unwrap();
        assert_eq!(b.len(), HELLO_BODY_LEN + 6);
        assert_eq!(&b[0..8], b"dataplan");
        assert_eq!(&b[8..10], &1u16.to_le_bytes());
        assert_eq!(b[10], 2);
        assert_eq!(b[11], 0);
        assert_eq!(&b[12..20], &0xF0u64.to_le_bytes());
        assert_eq!(&b[20..28], &0x10u64.to_le_bytes());
        assert_eq!(&b[28..36], &0xDEAD_BEEF_0000_0001u64.to_le_bytes());
        assert_eq!(&b[36..44], &3u64.to_le_bytes());
        assert_eq!(&b[44..52], &99u64.to_le_bytes());
        assert_eq!(b[52], POLICY_LOSSLESS);
        assert_eq!(b[53], AF_INET);
        assert_eq!(&b[54..56], &6800u16.to_le_bytes());
        assert_eq!(
            &b[56..72],
            &[10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(&b[72..74], &6u16.to_le_bytes());
        assert_eq!(&b[74..78], &5u32.to_le_bytes());
        assert_eq!(&b[78..80], &[0; 2]);
        assert_eq!(&b[80..], b"osd.12");
        assert_eq!(parse_hello(&b), Ok(sample()));
    }

    #[test]
    fn ipv6_and_no_addr_round_trip() {
        let mut h = sample();
        h.addr = Some("[fe80::1]:1".parse().unwrap());
        assert_eq!(parse_hello(&encode_hello(&h).unwrap()), Ok(h.clone()));
        h.addr = None;
        h.name.clear();
        h.lossless = false;
        assert_eq!(parse_hello(&encode_hello(&h).unwrap()), Ok(h));
    }

    #[test]
    fn rejects_truncated_body() {
        let b = encode_hello(&sample()).unwrap();
        for n in 0..HELLO_BODY_LEN {
            assert_eq!(
                parse_hello(&b[..n]),
                Err(WireError::Truncated {
                    what: "hello body",
                    need: HELLO_BODY_LEN,
                    have: n
                })
            );
        }
        assert_eq!(
            parse_hello(&b[..b.len() - 1]),
            Err(WireError::Truncated {
                what: "hello name",
                need: 6,
                have: 5
            })
        );
    }

    #[test]
    fn rejects_bad_banner() {
        let mut b = encode_hello(&sample()).unwrap();
        b[7] = b'e';
        assert_eq!(parse_hello(&b), Err(WireError::BadBanner));
    }

    #[test]
    fn rejects_name_too_long() {
        let mut h = sample();
        h.name = "x".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            encode_hello(&h),
            Err(WireError::NameTooLong {
                len: MAX_NAME_LEN + 1,
                max: MAX_NAME_LEN
            })
        );
        h.name = "x".repeat(70_000);
        assert!(matches!(
            encode_hello(&h),
            Err(WireError::NameTooLong { len: 70_000, .. })
        ));
        h.name = "x".repeat(MAX_NAME_LEN);
        let mut b = encode_hello(&h).unwrap();
        assert_eq!(parse_hello(&b).map(|p| p.name.len()), Ok(MAX_NAME_LEN));
        // Announce 65 with 65 bytes present.
        b[72..74].copy_from_slice(&65u16.to_le_bytes());
        b.push(b'x');
        assert_eq!(
            parse_hello(&b),
            Err(WireError::NameTooLong {
                len: 65,
                max: MAX_NAME_LEN
            })
        );
        // A huge announced length is rejected before looking at the bytes.
        b[72..74].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(matches!(
            parse_hello(&b),
            Err(WireError::NameTooLong { len: 65535, .. })
        ));
    }

    #[test]
    fn rejects_trailing_bytes() {
        let mut b = encode_hello(&sample()).unwrap();
        b.push(0);
        assert_eq!(
            parse_hello(&b),
            Err(WireError::BadHello("trailing bytes after entity name"))
        );
    }

    #[test]
    fn rejects_non_utf8_name() {
        let mut b = encode_hello(&sample()).unwrap();
        let n = b.len();
        b[n - 1] = 0xFF;
        assert_eq!(parse_hello(&b), Err(WireError::BadName));
        // A multi-byte character cut in half is not UTF-8 either.
        let mut h = sample();
        h.name = "é".to_owned();
        let mut b = encode_hello(&h).unwrap();
        b.pop();
        b[72..74].copy_from_slice(&1u16.to_le_bytes());
        assert_eq!(parse_hello(&b), Err(WireError::BadName));
    }

    #[test]
    fn rejects_unknown_status_policy_family() {
        let good = encode_hello(&sample()).unwrap();
        let mut b = good.clone();
        b[11] = 5;
        assert_eq!(parse_hello(&b), Err(WireError::BadHello("unknown status")));
        let mut b = good.clone();
        b[52] = 2;
        assert_eq!(
            parse_hello(&b),
            Err(WireError::BadHello("unknown session policy"))
        );
        let mut b = good.clone();
        b[53] = 5;
        assert_eq!(
            parse_hello(&b),
            Err(WireError::BadHello("unknown address family"))
        );
    }

    #[test]
    fn rejects_stray_address_bytes() {
        let good = encode_hello(&sample()).unwrap();
        let mut b = good.clone();
        b[60] = 1; // ip[4] with family 4
        assert_eq!(
            parse_hello(&b),
            Err(WireError::BadHello("IPv4 address with non-zero padding"))
        );
        let mut b = good;
        b[53] = AF_NONE; // family none, port and ip still set
        assert_eq!(
            parse_hello(&b),
            Err(WireError::BadHello("address bytes set without a family"))
        );
    }

    #[test]
    fn status_values() {
        for v in 0..=4u8 {
            assert_eq!(HelloStatus::try_from(v).map(u8::from), Ok(v));
        }
        assert!(HelloStatus::try_from(5).is_err());
    }

    fn any_addr() -> impl Strategy<Value = Option<SocketAddr>> {
        prop_oneof![
            Just(None),
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, p)| Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, p)| Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p))),
        ]
    }

    fn any_status() -> impl Strategy<Value = HelloStatus> {
        prop_oneof![
            Just(HelloStatus::Ok),
            Just(HelloStatus::VersionMismatch),
            Just(HelloStatus::FeatureMismatch),
            Just(HelloStatus::Refused),
            Just(HelloStatus::SessionReset),
        ]
    }

    prop_compose! {
        fn any_hello()(
            proto_version in any::<u16>(),
            entity_type in any::<u8>(),
            status in any_status(),
            features in any::<u64>(),
            required in any::<u64>(),
            session_id in any::<u64>(),
            connect_seq in any::<u64>(),
            in_seq in any::<u64>(),
            lossless in any::<bool>(),
            addr in any_addr(),
            name in "\\PC{0,16}",
            lane in any::<u32>(),
            conn_tag in any::<u16>(),
        ) -> Hello {
            Hello { proto_version, entity_type, status, features, required, session_id,
                    connect_seq, in_seq, lossless, addr, name, lane, conn_tag }
        }
    }

    proptest! {
        #[test]
        fn prop_round_trip(h in any_hello()) {
            if h.name.len() <= MAX_NAME_LEN {
                let b = encode_hello(&h).unwrap();
                prop_assert_eq!(b.len(), HELLO_BODY_LEN + h.name.len());
                prop_assert_eq!(parse_hello(&b), Ok(h));
            } else {
                let too_long = matches!(encode_hello(&h), Err(WireError::NameTooLong { .. }));
                prop_assert!(too_long);
            }
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_hello(&buf);
        }

        #[test]
        fn prop_bannered_garbage_never_panics(rest in proptest::collection::vec(any::<u8>(), 0..200)) {
            let buf = [BANNER.as_slice(), &rest].concat();
            if let Ok(h) = parse_hello(&buf) {
                // Anything accepted re-encodes to exactly the same bytes.
                prop_assert_eq!(encode_hello(&h).unwrap(), buf);
            }
        }

        #[test]
        fn prop_valid_fixed_part_arbitrary_name_never_panics(
            h in any_hello(),
            name_len in 0u16..100,
            name in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut h = h;
            h.name.clear();
            let mut b = encode_hello(&h).unwrap();
            b[72..74].copy_from_slice(&name_len.to_le_bytes());
            b.extend_from_slice(&name);
            let r = parse_hello(&b);
            let n = usize::from(name_len);
            if n <= MAX_NAME_LEN && n == name.len() && core::str::from_utf8(&name).is_ok() {
                prop_assert!(r.is_ok());
            } else {
                prop_assert!(r.is_err());
            }
        }
    }
}
