//! A frame-aware man in the middle on loopback: forwards a messenger connection, records the
//! bytes it saw, and can alter one frame of the first connection on its way from client to
//! server (flip a bit, replay it, truncate it). Later connections pass untouched, so a
//! lossless session that detects the tampering can reconnect through it and finish.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use dataplane::wire::{FLAG_SEALED, PREAMBLE_LEN};
use parking_lot::Mutex;

/// What to do to the chosen frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tamper {
    /// Forward everything as is.
    Nothing,
    /// Flip one bit in the middle of the frame's payload.
    FlipBit,
    /// Send the frame twice.
    Replay,
    /// Drop the frame's last 5 bytes.
    Truncate,
}

/// Bytes recorded at most per direction (enough for the tests' traffic).
const CAPTURE_MAX: usize = 8 << 20;

pub struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    /// Bytes seen, client to server and server to client.
    pub captured: Arc<Mutex<Vec<u8>>>,
    /// Frames altered so far.
    pub tampered: Arc<AtomicU64>,
    /// Connections forwarded so far.
    pub connections: Arc<AtomicU64>,
    accept: Option<JoinHandle<()>>,
}

impl Proxy {
    /// Forwards to `upstream`; alters the `nth` (from 0) message frame of the first
    /// connection as `tamper` says.
    pub fn start(upstream: SocketAddr, tamper: Tamper, nth: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let captured: Arc<Mutex<Vec<u8>>> = Arc::default();
        let tampered = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let accept = {
            let (stop, streams, captured, tampered, connections) = (
                stop.clone(),
                streams.clone(),
                captured.clone(),
                tampered.clone(),
                connections.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (client, _) = match listener.accept() {
                        Ok(c) => c,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                    };
                    let Ok(server) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    client.set_nonblocking(false).unwrap();
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let index = connections.fetch_add(1, Ordering::Relaxed);
                    {
                        let mut s = streams.lock();
                        s.push(client.try_clone().unwrap());
                        s.push(server.try_clone().unwrap());
                    }
                    let mode = if index == 0 { tamper } else { Tamper::Nothing };
                    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                    let (cap, tam) = (captured.clone(), tampered.clone());
                    std::thread::spawn(move || {
                        client_to_server(client, server, mode, nth, &cap, &tam);
                    });
                    let cap = captured.clone();
                    std::thread::spawn(move || copy_plain(s2, c2, &cap));
                }
            })
        };
        Proxy {
            addr,
            stop,
            streams,
            captured,
            tampered,
            connections,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.streams.lock().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn record(cap: &Mutex<Vec<u8>>, bytes: &[u8]) {
    let mut c = cap.lock();
    if c.len() + bytes.len() <= CAPTURE_MAX {
        c.extend_from_slice(bytes);
    }
}

fn copy_plain(mut from: TcpStream, mut to: TcpStream, cap: &Mutex<Vec<u8>>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                record(cap, &buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}

/// Forwards frame by frame, so one whole frame can be altered.
fn client_to_server(
    mut from: TcpStream,
    mut to: TcpStream,
    mode: Tamper,
    nth: u64,
    cap: &Mutex<Vec<u8>>,
    tampered: &AtomicU64,
) {
    let mut messages = 0u64;
    loop {
        let mut frame = vec![0u8; PREAMBLE_LEN];
        if from.read_exact(&mut frame).is_err() {
            break;
        }
        let tag = frame[5];
        let flags = frame[6];
        let front = u32::from_le_bytes(frame[8..12].try_into().unwrap()) as usize;
        let data = u32::from_le_bytes(frame[12..16].try_into().unwrap()) as usize;
        let sealed = flags & FLAG_SEALED != 0;
        let trailer = if sealed {
            16
        } else if front + data > 0 {
            4
        } else {
            0
        };
        let body = front + data + trailer;
        if body > 64 << 20 {
            break;
        }
        frame.resize(PREAMBLE_LEN + body, 0);
        if from.read_exact(&mut frame[PREAMBLE_LEN..]).is_err() {
            break;
        }
        record(cap, &frame);
        // Message frames: single (3) or batches (9).
        let is_target = (tag == 3 || tag == 9) && mode != Tamper::Nothing && {
            messages += 1;
            messages - 1 == nth
        };
        let ok = if is_target {
            tampered.fetch_add(1, Ordering::Relaxed);
            match mode {
                Tamper::FlipBit => {
                    let mid = PREAMBLE_LEN + (front + data) / 2;
                    frame[mid] ^= 0x10;
                    to.write_all(&frame).is_ok()
                }
                Tamper::Replay => to.write_all(&frame).is_ok() && to.write_all(&frame).is_ok(),
                Tamper::Truncate => to.write_all(&frame[..frame.len() - 5]).is_ok(),
                Tamper::Nothing => to.write_all(&frame).is_ok(),
            }
        } else {
            to.write_all(&frame).is_ok()
        };
        if !ok {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
