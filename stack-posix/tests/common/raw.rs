//! A hand-driven peer on a plain blocking socket, for feeding a messenger bad or odd input.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use dataplane::wire::{self, FrameHead, Hello, HelloStatus, Tag};

/// Encodes a whole frame: preamble, front, data, epilogue.
pub fn frame(mut h: FrameHead, front: &[u8], data: &[u8]) -> Vec<u8> {
    h.front_len = front.len() as u32;
    h.data_len = data.len() as u32;
    let mut v = wire::encode_preamble(&h).to_vec();
    v.extend_from_slice(front);
    v.extend_from_slice(data);
    if !front.is_empty() || !data.is_empty() {
        v.extend_from_slice(&wire::encode_epilogue(wire::payload_crc([front, data])));
    }
    v
}

/// A frame of `tag` with sequence number `seq` (0 on control frames), `front` and `data`, the
/// rest of its header default.
pub fn tagged_frame(tag: Tag, seq: u64, front: &[u8], data: &[u8]) -> Vec<u8> {
    frame(
        FrameHead {
            tag: tag as u8,
            seq,
            ..FrameHead::default()
        },
        front,
        data,
    )
}

/// A hello from a raw peer.
pub fn hello(name: &str, lossless: bool) -> Hello {
    Hello {
        proto_version: u16::from(wire::VERSION),
        entity_type: 9,
        status: HelloStatus::Ok,
        features: 0,
        required: 0,
        session_id: 0xfeed,
        connect_seq: 1,
        in_seq: 0,
        lossless,
        addr: None,
        name: name.into(),
        lane: 0,
        conn_tag: 0,
    }
}

pub fn hello_frame(h: &Hello) -> Vec<u8> {
    let body = wire::encode_hello(h).unwrap();
    tagged_frame(Tag::Hello, 0, &body, &[])
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads one whole frame: (tag, front, data). None on EOF.
pub fn read_frame(s: &mut TcpStream) -> Option<(Tag, Vec<u8>, Vec<u8>, u64)> {
    let mut pre = [0u8; wire::PREAMBLE_LEN];
    s.read_exact(&mut pre).ok()?;
    let p = wire::parse_preamble(&pre, &wire::Limits::default()).ok()??;
    let (fl, dl) = (p.front_len.get() as usize, p.data_len.get() as usize);
    let tag = p.tag().ok()?;
    let seq = p.seq.get();
    let mut front = vec![0; fl];
    let mut data = vec![0; dl];
    s.read_exact(&mut front).ok()?;
    s.read_exact(&mut data).ok()?;
    if fl + dl > 0 {
        let mut epi = [0u8; 4];
        s.read_exact(&mut epi).ok()?;
    }
    Some((tag, front, data, seq))
}

/// Connects and completes a handshake as `name`; returns the stream and the server's reply.
pub fn handshake(addr: SocketAddr, name: &str, lossless: bool) -> (TcpStream, Hello) {
    let mut s = connect(addr);
    s.write_all(&hello_frame(&hello(name, lossless))).unwrap();
    let (tag, front, _, _) = read_frame(&mut s).expect("hello reply");
    assert_eq!(tag, Tag::HelloReply);
    (s, wire::parse_hello(&front).unwrap())
}

/// True once the server closed the stream (EOF or reset), reading and discarding until then.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}
