//! `SO_REUSEPORT` mode over real loopback sockets: every worker listens on the same port,
//! accepted sockets stay on the worker that accepted them, and a lossless session whose
//! client comes back on another worker migrates there (with the route worker forwarding
//! what the application sends on it), without losing, duplicating or reordering anything.

mod common;

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dataplane::buf::BufMut;
use dataplane::stack::ConnectedSocket;
use dataplane::{Config, Connection, Dispatcher, FaultInjection, Message, Messenger, Policy};
use dataplane_stack_posix::PosixStack;
use mio::{Registry, Token};
use parking_lot::Mutex;

const T: Duration = Duration::from_secs(60);

/// A started, bound server on the POSIX stack in `SO_REUSEPORT` mode.
fn reuseport_server(workers: usize, d: Arc<dyn Dispatcher>) -> Messenger {
    start_messenger(
        "server",
        Config {
            workers,
            ..test_config()
        },
        Arc::new(PosixStack::with_reuseport()),
        d,
        Policy::stateful_server(),
        Some("127.0.0.1:0".parse().unwrap()),
    )
}

/// Checks what it receives and keeps the connections it accepted.
struct Keeper {
    check: Arc<Checker>,
    accepted: Mutex<Vec<Connection>>,
}

impl Dispatcher for Keeper {
    fn can_fast_dispatch(&self, m: &Message) -> bool {
        self.check.can_fast_dispatch(m)
    }
    fn fast_dispatch(&self, c: &Connection, m: Message) {
        self.check.fast_dispatch(c, m);
    }
    fn dispatch(&self, c: &Connection, m: Message) {
        self.check.dispatch(c, m);
    }
    fn handle_accept(&self, c: &Connection) {
        self.accepted.lock().push(c.clone());
    }
}

#[test]
fn reuseport_every_worker_accepts_and_delivers_exactly_once_in_order() {
    const CLIENTS: usize = 16;
    const N: u64 = 3_000;
    let d = Checker::fast();
    let server = reuseport_server(2, d.clone());
    let (_clients, conns) = connected_clients(CLIENTS, addr(&server));
    for i in 0..N {
        for (s, c) in conns.iter().enumerate() {
            send_retry(
                c,
                Message::new(1, payload(s as u32, i, 40 + (i % 200) as usize)),
            );
        }
    }
    let total = N * CLIENTS as u64;
    d.assert_delivered_exactly_once(total, T, Duration::from_millis(50));
    assert_eq!(d.streams(), CLIENTS, "every stream arrived");
    // The kernel hashed 16 connections over two listen queues; each worker kept its own
    // (all on one worker has probability 2^-15).
    let loads = server.worker_loads();
    assert_eq!(loads.iter().sum::<usize>(), CLIENTS, "loads {loads:?}");
    assert!(
        loads.iter().all(|&l| l > 0),
        "both workers accepted: {loads:?}"
    );
    let s = server.counters();
    assert_eq!(s.accepted, CLIENTS as u64);
    assert_eq!(s.sessions_migrated, 0, "no reconnect, no migration");
}

/// The POSIX stack under another name, optionally binding each accepted socket to the next
/// worker in turn (`homes`): a deterministic stand-in for a stack whose sockets are bound.
fn homed(
    inner: PosixStack,
    name: &'static str,
    homes: Option<(Arc<AtomicUsize>, usize)>,
) -> Wrapping {
    Wrapping {
        inner,
        name,
        wrap: Arc::new(move |s, accepted| match &homes {
            Some((next, workers)) if accepted => {
                let home = Some(next.fetch_add(1, Ordering::Relaxed) % workers);
                Box::new(HomedSocket { inner: s, home })
            }
            _ => s,
        }),
    }
}

struct HomedSocket {
    inner: Box<dyn ConnectedSocket>,
    home: Option<usize>,
}

impl ConnectedSocket for HomedSocket {
    fn home_worker(&self) -> Option<usize> {
        self.home
    }
    fn register(&mut self, r: &Registry, t: Token) -> io::Result<()> {
        self.inner.register(r, t)
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        self.inner.deregister(r)
    }
    fn finish_connect(&mut self) -> io::Result<bool> {
        self.inner.finish_connect()
    }
    fn read(&mut self, b: &mut BufMut) -> io::Result<usize> {
        self.inner.read(b)
    }
    fn writev(&mut self, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        self.inner.writev(iov)
    }
    fn short_read_drains(&self) -> bool {
        self.inner.short_read_drains()
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
    fn shutdown(&mut self) {
        self.inner.shutdown()
    }
}

#[test]
fn listening_on_every_worker_fails_whole_and_closes_what_it_opened() {
    // Worker 0 runs the plain stack (no SO_REUSEPORT), worker 1 the reuseport one: worker 1
    // cannot listen on worker 0's port, so bind fails and worker 0's listener is closed.
    let server = Messenger::builder("server")
        .config(Config {
            workers: 2,
            worker_backends: vec!["posix".into(), "posix-rp".into()],
            ..test_config()
        })
        .stack(Arc::new(PosixStack::new()))
        .stack(Arc::new(homed(
            PosixStack::with_reuseport(),
            "posix-rp",
            None,
        )))
        .dispatcher(Checker::fast())
        .build()
        .unwrap();
    let err = server
        .bind("127.0.0.1:0".parse().unwrap())
        .expect_err("worker 1 cannot share worker 0's port");
    let dataplane::Error::ListenOnWorker { worker, addr, .. } = err else {
        panic!("unexpected error {err}");
    };
    assert_eq!(worker, 1);
    assert_ne!(addr.port(), 0, "worker 0 resolved the port first");
    assert_eq!(server.addr(), None);
    // Worker 0 closed its listener: the port is free again, without SO_REUSEPORT.
    std::net::TcpListener::bind(addr).expect("port released");
}

#[test]
fn bound_sockets_cycling_workers_migrate_every_reconnect_exactly_once_in_order() {
    // Three workers; worker 0 accepts and binds each accepted socket to the next worker in
    // turn, so almost every reconnect of the lossless client moves its session: from the
    // route worker, between two others (the route worker forwards to where the session goes
    // and the destination holds commands until it arrives), and back to the route worker.
    const ROUND: u64 = 5_000;
    let check = Checker::fast();
    let keeper = Arc::new(Keeper {
        check: check.clone(),
        accepted: Mutex::new(Vec::new()),
    });
    let server = start_messenger(
        "server",
        Config {
            workers: 3,
            ..test_config()
        },
        Arc::new(homed(
            PosixStack::new(),
            "posix",
            Some((Arc::new(AtomicUsize::new(0)), 3)),
        )),
        keeper.clone(),
        Policy::lossless_client(),
        Some("127.0.0.1:0".parse().unwrap()),
    );
    let client_d = Checker::fast();
    let client = messenger(
        "client",
        Config {
            inject: FaultInjection {
                socket_failures: 10,
                seed: 5,
                ..FaultInjection::default()
            },
            ..test_config()
        },
        client_d.clone(),
        false,
    );
    let conn = client.connect(addr(&server)).unwrap();
    send_retry(&conn, Message::new(1, payload(0, 0, 20)));
    assert!(wait_until(T, || keeper.accepted.lock().len() == 1));
    let back = keeper.accepted.lock()[0].clone();
    // Rounds in both directions at once until enough migrations happened (bounded).
    let (mut up, mut down) = (1u64, 0u64);
    let end = Instant::now() + T;
    // Also until the session sits away from its route worker (which then forwards), so the
    // close below has a forwarding entry to drop.
    let forwarding = |m: &Messenger| m.forwarding_entries().iter().sum::<usize>();
    while (server.counters().sessions_migrated < 12 || forwarding(&server) == 0)
        && Instant::now() < end
    {
        let b = back.clone();
        let from = down;
        let sender = std::thread::spawn(move || {
            for i in from..from + ROUND {
                send_retry(&b, Message::new(1, payload(7, i, 24 + (i % 100) as usize)));
            }
        });
        for i in up..up + ROUND {
            send_retry(
                &conn,
                Message::new(1, payload(0, i, 20 + (i % 300) as usize)),
            );
        }
        sender.join().unwrap();
        up += ROUND;
        down += ROUND;
    }
    let n = up;
    assert!(
        wait_until(T, || check.count() >= n),
        "server got {} of {n}",
        check.count()
    );
    assert!(
        wait_until(T, || client_d.count() >= down),
        "client got {} of {down}",
        client_d.count()
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(check.count(), n, "exactly once to the server");
    assert_eq!(client_d.count(), down, "exactly once to the client");
    check.assert_clean();
    client_d.assert_clean();
    let s = server.counters();
    eprintln!(
        "cycling: {} migrations, {} server reconnects, {} client reconnects",
        s.sessions_migrated,
        s.reconnects,
        client.counters().reconnects
    );
    assert!(s.sessions_migrated >= 10, "migrations: {s:?}");
    assert_eq!(s.remote_resets, 0);
    assert_eq!(server.worker_loads().iter().sum::<usize>(), 1);
    // Closing the session for good (a mark-down through the server's handle: forwarded by
    // the route worker too) drops the route worker's forwarding entry.
    // The client goes first, so nothing reconnects meanwhile.
    drop(client);
    back.mark_down();
    assert!(
        wait_until(T, || server.worker_loads().iter().sum::<usize>() == 0),
        "server session closed: {:?}",
        server.worker_loads()
    );
    assert!(
        wait_until(T, || forwarding(&server) == 0),
        "forwarding entries left: {:?}",
        server.forwarding_entries()
    );
}

#[test]
fn reuseport_bind_fails_cleanly_when_the_port_is_taken_without_reuseport() {
    // A plain listener holds the port: worker 0 of a reuseport server cannot bind it.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = plain.local_addr().unwrap();
    let server = Messenger::builder("server")
        .config(Config {
            workers: 2,
            ..test_config()
        })
        .stack(Arc::new(PosixStack::with_reuseport()))
        .dispatcher(Checker::fast())
        .build()
        .unwrap();
    assert!(server.bind(taken).is_err());
    assert_eq!(server.addr(), None);
    // A free port works afterwards: nothing half-open stayed behind.
    let a = server.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    assert_ne!(a.port(), 0);
}

#[test]
fn lossless_reconnects_migrate_sessions_and_deliver_exactly_once_in_order() {
    const CLIENTS: usize = 4;
    const BATCH: u64 = 2_000;
    const BACK: u64 = 20_000;
    let check = Checker::fast();
    let keeper = Arc::new(Keeper {
        check: check.clone(),
        accepted: Mutex::new(Vec::new()),
    });
    let server = reuseport_server(2, keeper.clone());
    // Clients fail one socket operation in 40: they reconnect often, and each new socket
    // lands on either server worker (kernel hash of the new source port).
    let client_d: Vec<_> = (0..CLIENTS).map(|_| Checker::fast()).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let cfg = Config {
                inject: FaultInjection {
                    socket_failures: 40,
                    seed: 11 + i as u64,
                    ..FaultInjection::default()
                },
                ..test_config()
            };
            messenger(&format!("client{i}"), cfg, client_d[i].clone(), false)
        })
        .collect();
    let conns: Vec<_> = clients
        .iter()
        .map(|c| c.connect(addr(&server)).unwrap())
        .collect();
    let mut sent = 0u64;
    let send_round = |sent: &mut u64| {
        for i in *sent..*sent + BATCH {
            for (s, c) in conns.iter().enumerate() {
                send_retry(
                    c,
                    Message::new(1, payload(s as u32, i, 20 + (i % 300) as usize)),
                );
            }
        }
        *sent += BATCH;
    };
    // Client to server until sessions have migrated (bounded).
    let end = Instant::now() + T;
    while server.counters().sessions_migrated < 3 && Instant::now() < end {
        send_round(&mut sent);
        wait_until(T, || check.count() >= sent * CLIENTS as u64);
    }
    let migrated = server.counters().sessions_migrated;
    assert!(migrated > 0, "no session migrated: {:?}", server.counters());
    assert!(
        wait_until(T, || keeper.accepted.lock().len() == CLIENTS),
        "accepted {}",
        keeper.accepted.lock().len()
    );
    // Now both directions at once while clients keep faulting: the server sends through the
    // accepted handles (forwarded by their route worker when the session migrated) while
    // clients keep sending (more migrations happen meanwhile).
    let accepted = keeper.accepted.lock().clone();
    let done = Arc::new(AtomicBool::new(false));
    let back = {
        let done = done.clone();
        std::thread::spawn(move || {
            for i in 0..BACK {
                for c in &accepted {
                    // Stream = the client's own index, which its first message carried.
                    let stream = c.id() as u32;
                    send_retry(
                        c,
                        Message::new(1, payload(stream, i, 24 + (i % 100) as usize)),
                    );
                }
            }
            done.store(true, Ordering::Release);
        })
    };
    for _ in 0..3 {
        send_round(&mut sent);
    }
    back.join().unwrap();
    assert!(done.load(Ordering::Acquire));
    let total = sent * CLIENTS as u64;
    assert!(
        wait_until(T, || check.count() >= total),
        "server got {} of {total}",
        check.count()
    );
    for (i, d) in client_d.iter().enumerate() {
        assert!(
            wait_until(T, || d.count() >= BACK),
            "client {i} got {} of {BACK}",
            d.count()
        );
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(check.count(), total, "exactly once to the server");
    check.assert_clean();
    for d in &client_d {
        assert_eq!(d.count(), BACK, "exactly once to the client");
        d.assert_clean();
    }
    let s = server.counters();
    let reconnects: u64 = clients.iter().map(|c| c.counters().reconnects).sum();
    eprintln!(
        "reuseport: {} sessions migrated, {} client reconnects, server loads {:?}",
        s.sessions_migrated,
        reconnects,
        server.worker_loads()
    );
    assert_eq!(s.remote_resets, 0);
    assert_eq!(server.worker_loads().iter().sum::<usize>(), CLIENTS);
    for c in &conns {
        assert!(
            wait_until(T, || c.queued() == (0, 0)),
            "client queue drained: {:?}",
            c.queued()
        );
    }
}
