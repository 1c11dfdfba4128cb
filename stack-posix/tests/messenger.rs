//! Integration tests of the messenger over real loopback sockets (POSIX stack), one per
//! behaviour: lossless, lossy, malformed input, backpressure, local delivery, priority,
//! keepalive, handshake refusal, multi-worker, many connections, large messages.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::raw;
use common::*;
use dataplane::wire::{FrameHead, HelloStatus, Tag};
use dataplane::{
    priority, Buf, Config, Connection, Dispatcher, FaultInjection, Message, Messenger, Policy,
    RecordBatch, SendErrorKind,
};

const T: Duration = Duration::from_secs(60);

/// A lossless client connected to a server, both failing one socket read or write in 20 and
/// holding back one read turn in 5 for up to 5 ms (seeds `server_seed`, `client_seed`).
fn faulty_pair(
    server_seed: u64,
    client_seed: u64,
) -> (Messenger, Arc<Checker>, Messenger, Connection) {
    let inject = |seed| FaultInjection {
        socket_failures: 20,
        seed,
        delays: 5,
        delay_max_ms: 5,
    };
    pair_with_faults(inject(server_seed), inject(client_seed))
}

/// A lossless client connected to a server, with faults injected as `server` and `client`
/// say.
fn pair_with_faults(
    server: FaultInjection,
    client: FaultInjection,
) -> (Messenger, Arc<Checker>, Messenger, Connection) {
    let srv_d = Checker::fast();
    let server = messenger(
        "server",
        Config {
            inject: server,
            ..test_config()
        },
        srv_d.clone(),
        true,
    );
    let client = messenger(
        "client",
        Config {
            inject: client,
            ..test_config()
        },
        Checker::fast(),
        false,
    );
    let conn = client.connect(addr(&server)).unwrap();
    (server, srv_d, client, conn)
}

#[test]
fn inject_faults_and_delays_one_million_lossless_messages_exactly_once_in_order() {
    // One socket read or write in 20 fails and one read turn in 5 is held back for up to 5 ms,
    // on both ends.
    const N: u64 = 1_000_000;
    let (server, srv_d, client, conn) = faulty_pair(1, 2);
    for i in 0..N {
        send_retry(
            &conn,
            Message::new(1, payload(0, i, 16 + (i % 100) as usize)),
        );
    }
    srv_d.assert_delivered_exactly_once(N, T, Duration::from_millis(100));
    let (c, s) = (client.counters(), server.counters());
    assert!(
        c.injected_faults + s.injected_faults >= 100,
        "faults injected: {c:?} {s:?}"
    );
    assert!(c.reconnects >= 100, "reconnected {} times", c.reconnects);
    assert!(
        c.injected_delays + s.injected_delays >= 100,
        "delays injected: {c:?} {s:?}"
    );
    eprintln!(
        "lossless: {} injected faults, {} injected delays, {} reconnects",
        c.injected_faults + s.injected_faults,
        c.injected_delays + s.injected_delays,
        c.reconnects
    );
    assert_eq!(c.remote_resets + s.remote_resets, 0);
    assert!(
        wait_until(T, || conn.queued() == (0, 0)),
        "everything acknowledged: {:?}",
        conn.queued()
    );
}

#[test]
fn lossless_messages_sent_before_the_server_exists_are_delivered() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = messenger("client", test_config(), Checker::fast(), false);
    let conn = client.connect(port).unwrap();
    for i in 0..100 {
        conn.send(Message::new(1, payload(0, i, 64))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100)); // several refused connects
    let srv_d = Checker::fast();
    let server = messenger("server", test_config(), srv_d.clone(), false);
    server.bind(port).unwrap();
    srv_d.assert_delivered(100, T);
    assert!(client.counters().faults >= 1);
}

#[test]
fn lossy_connection_failure_reports_reset_and_drops_queue() {
    // A peer that accepts but never answers the hello, then goes away: messages queued
    // meanwhile are dropped with the lossy connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
        listener
    });
    let d = Checker::fast();
    let client = messenger_with(
        "client",
        test_config(),
        d.clone(),
        false,
        Policy::lossy_client(),
    );
    let conn = client.connect(port).unwrap();
    for i in 0..10 {
        conn.send(Message::new(1, payload(0, i, 64))).unwrap();
    }
    assert!(
        wait_until(T, || conn.is_closed()),
        "lossy connection closes on its first fault"
    );
    assert!(
        wait_until(T, || d.events().contains(&Ev::Reset(conn.id()))),
        "events {:?}",
        d.events()
    );
    let c = client.counters();
    assert_eq!(c.resets, 1);
    assert_eq!(c.dropped, 10, "queued messages are dropped");
    let e = conn.send(Message::new(1, payload(0, 0, 64))).unwrap_err();
    assert_eq!(e.kind, SendErrorKind::Closed);
    // A new connect gives a fresh connection.
    let _listener = peer.join().unwrap();
    assert_ne!(client.connect(port).unwrap().id(), conn.id());
}

#[test]
fn lossy_peer_shutdown_reports_reset() {
    let d = Checker::fast();
    let server = messenger("server", test_config(), Checker::fast(), true);
    let client = messenger_with(
        "client",
        test_config(),
        d.clone(),
        false,
        Policy::lossy_client(),
    );
    let conn = client.connect(addr(&server)).unwrap();
    conn.send(Message::new(1, payload(0, 0, 64))).unwrap();
    assert!(wait_until(T, || d
        .events()
        .contains(&Ev::Connect(conn.id()))));
    drop(server);
    assert!(
        wait_until(T, || d.events().contains(&Ev::Reset(conn.id()))),
        "{:?}",
        d.events()
    );
    assert!(conn.is_closed());
}

#[test]
fn lossless_peer_closed_on_purpose_then_fresh_connection_to_restarted_server() {
    let cd = Checker::fast();
    let client = messenger("client", test_config(), cd.clone(), false);
    let s1 = Checker::fast();
    let server = messenger("server", test_config(), s1.clone(), true);
    let a = addr(&server);
    let conn = client.connect(a).unwrap();
    conn.send(Message::new(1, payload(0, 0, 64))).unwrap();
    assert!(wait_until(T, || s1.count() == 1));
    // A clean shutdown sends a close frame: the peer ends the session (reset), no reconnect.
    drop(server);
    assert!(
        wait_until(T, || cd.events().contains(&Ev::Reset(conn.id()))),
        "{:?}",
        cd.events()
    );
    assert!(conn.is_closed());
    // The restarted server on the same port gets a fresh connection.
    let s2 = Checker::fast();
    let server2 = messenger("server", test_config(), s2.clone(), false);
    server2.bind(a).unwrap();
    let conn2 = client.connect(a).unwrap();
    assert_ne!(conn2.id(), conn.id());
    conn2.send(Message::new(1, payload(1, 0, 64))).unwrap();
    s2.assert_delivered(1, T);
}

#[test]
fn remote_reset_on_silent_peer_restart() {
    // A server that "crashes" (its process state vanishes without a close frame) is modelled
    // by a raw peer that accepts the hello with one incarnation, then with another.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = listener.local_addr().unwrap();
    let cd = Checker::fast();
    let client = messenger("client", test_config(), cd.clone(), false);
    let conn = client.connect(a).unwrap();
    let serve = |sid: u64, listener: &std::net::TcpListener| {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (tag, _, _, _) = raw::read_frame(&mut s).unwrap();
        assert_eq!(tag, Tag::Hello);
        let mut h = raw::hello("server", true);
        h.session_id = sid;
        let body = dataplane::wire::encode_hello(&h).unwrap();
        s.write_all(&raw::tagged_frame(Tag::HelloReply, 0, &body, &[]))
            .unwrap();
        s
    };
    let s1 = serve(1, &listener);
    assert!(wait_until(T, || cd
        .events()
        .contains(&Ev::Connect(conn.id()))));
    drop(s1); // crash: connection reset, no close frame
    let mut s2 = serve(2, &listener);
    assert!(
        wait_until(T, || cd.events().contains(&Ev::RemoteReset(conn.id()))),
        "{:?}",
        cd.events()
    );
    assert_eq!(client.counters().remote_resets, 1);
    // Messages flow to the new incarnation, numbered from 1.
    conn.send(Message::new(1, payload(0, 0, 64))).unwrap();
    loop {
        let (tag, _, _, seq) = raw::read_frame(&mut s2).expect("message");
        if tag == Tag::Message {
            assert_eq!(seq, 1);
            break;
        }
    }
}

fn malformed_case(bytes: Vec<u8>, after_handshake: bool) {
    let srv_d = Checker::fast();
    let server = messenger("server", test_config(), srv_d.clone(), true);
    // A well-behaved lossless client keeps talking the whole time.
    let good = messenger("good", test_config(), Checker::fast(), false);
    let gconn = good.connect(addr(&server)).unwrap();
    for i in 0..500 {
        send_retry(&gconn, Message::new(1, payload(0, i, 200)));
    }
    let mut s = if after_handshake {
        raw::handshake(addr(&server), "evil", true).0
    } else {
        raw::connect(addr(&server))
    };
    s.write_all(&bytes).unwrap();
    assert!(
        raw::closed_by_peer(&mut s),
        "server closes the bad connection"
    );
    for i in 500..1000 {
        send_retry(&gconn, Message::new(1, payload(0, i, 200)));
    }
    srv_d.assert_delivered(1000, T);
    assert!(
        wait_until(T, || server.counters().malformed >= 1),
        "counted: {:?}",
        server.counters()
    );
}

#[test]
fn malformed_garbage_before_handshake_is_refused() {
    malformed_case(
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n and then some more junk bytes....".to_vec(),
        false,
    );
}

#[test]
fn malformed_bad_magic_closes_connection() {
    let mut f = raw::tagged_frame(Tag::Keepalive, 0, &[], &[]);
    f[0] ^= 0xff;
    malformed_case(f, true);
}

#[test]
fn malformed_bad_preamble_crc_closes_connection() {
    let mut f = raw::tagged_frame(Tag::Keepalive, 0, &[], &[]);
    f[20] ^= 1;
    malformed_case(f, true);
}

#[test]
fn malformed_bad_payload_crc_closes_connection() {
    let mut f = raw::tagged_frame(Tag::Message, 1, &[], b"hello world");
    let n = f.len();
    f[n - 1] ^= 1;
    malformed_case(f, true);
}

#[test]
fn malformed_oversized_length_closes_without_allocating() {
    let mut h = FrameHead {
        tag: Tag::Message as u8,
        seq: 1,
        ..FrameHead::default()
    };
    h.data_len = u32::MAX;
    let f = dataplane::wire::encode_preamble(&h).to_vec();
    malformed_case(f, true);
}

#[test]
fn malformed_unknown_tag_closes_connection() {
    let mut h = FrameHead {
        tag: 0x6e,
        ..FrameHead::default()
    };
    h.seq = 1;
    let f = dataplane::wire::encode_preamble(&h).to_vec();
    malformed_case(f, true);
}

#[test]
fn malformed_sequence_gap_closes_connection() {
    let f = raw::tagged_frame(Tag::Message, 7, &[], b"x");
    malformed_case(f, true);
}

#[test]
fn malformed_disconnect_mid_frame_is_survived() {
    let srv_d = Checker::fast();
    let server = messenger("server", test_config(), srv_d.clone(), true);
    let (mut s, _) = raw::handshake(addr(&server), "half", false);
    let f = raw::tagged_frame(Tag::Message, 1, &[], &[7u8; 1000]);
    s.write_all(&f[..500]).unwrap();
    drop(s);
    assert!(wait_until(T, || server.counters().faults >= 1));
    assert_eq!(srv_d.count(), 0, "a partial frame is never delivered");
    // The server still works.
    let client = messenger("client", test_config(), Checker::fast(), false);
    let c = client.connect(addr(&server)).unwrap();
    c.send(Message::new(1, payload(0, 0, 64))).unwrap();
    assert!(wait_until(T, || srv_d.count() == 1));
}

#[test]
fn handshake_wrong_version_is_refused_with_reason() {
    let server = messenger("server", test_config(), Checker::fast(), true);
    let mut h = raw::hello("old", true);
    h.proto_version = 2;
    let mut s = raw::connect(addr(&server));
    s.write_all(&raw::hello_frame(&h)).unwrap();
    let (tag, front, _, _) = raw::read_frame(&mut s).expect("a refusal, not silence");
    assert_eq!(tag, Tag::HelloReply);
    let reply = dataplane::wire::parse_hello(&front).unwrap();
    assert_eq!(reply.status, HelloStatus::VersionMismatch);
    let (tag, _, _, _) = raw::read_frame(&mut s).expect("close frame");
    assert_eq!(tag, Tag::Close);
    assert!(raw::closed_by_peer(&mut s));
    assert_eq!(server.counters().handshake_failures, 1);
}

#[test]
fn handshake_wrong_preamble_version_is_refused() {
    let server = messenger("server", test_config(), Checker::fast(), true);
    let mut f = raw::hello_frame(&raw::hello("future", true));
    f[4] = 2; // version byte; the preamble crc no longer matters: version is checked first
    let mut s = raw::connect(addr(&server));
    s.write_all(&f).unwrap();
    let (tag, front, _, _) = raw::read_frame(&mut s).expect("refusal");
    assert_eq!(tag, Tag::HelloReply);
    assert_eq!(
        dataplane::wire::parse_hello(&front).unwrap().status,
        HelloStatus::VersionMismatch
    );
}

#[test]
fn handshake_feature_mismatch_refused_on_both_sides() {
    let server = messenger("server", test_config(), Checker::fast(), true);
    let d = Checker::fast();
    let client = messenger(
        "client",
        Config {
            required_features: 1 << 7,
            ..test_config()
        },
        d.clone(),
        false,
    );
    let conn = client.connect(addr(&server)).unwrap();
    assert!(
        wait_until(T, || d.events().contains(&Ev::Reset(conn.id()))),
        "{:?}",
        d.events()
    );
    assert!(wait_until(T, || server.counters().handshake_failures == 1));
    assert_eq!(client.counters().handshake_failures, 1);
    assert!(conn.is_closed());
}

#[test]
fn handshake_timeout_drops_silent_peer() {
    let server = messenger(
        "server",
        Config {
            handshake_timeout_ms: 200,
            ..test_config()
        },
        Checker::fast(),
        true,
    );
    let mut s = raw::connect(addr(&server));
    let t0 = std::time::Instant::now();
    assert!(raw::closed_by_peer(&mut s));
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(server.counters().handshake_failures, 1);
}

#[test]
fn handshake_timeout_drops_peer_that_dribbles_bytes() {
    use std::io::Write;
    let server = messenger(
        "server",
        Config {
            handshake_timeout_ms: 300,
            ..test_config()
        },
        Checker::fast(),
        true,
    );
    let hello = raw::hello_frame(&raw::hello("slowloris", true));
    let mut s = raw::connect(addr(&server));
    let t0 = std::time::Instant::now();
    let mut sent = 0;
    // One byte every 50 ms: the whole hello would take seconds.
    for b in &hello {
        if s.write_all(std::slice::from_ref(b)).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(50));
        if t0.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    assert!(sent < hello.len(), "dropped before the hello was complete");
    assert!(raw::closed_by_peer(&mut s));
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(server.counters().handshake_failures, 1);
    assert_eq!(server.counters().accepted, 0);
}

#[test]
fn keepalive_timeout_marks_silent_peer_dead() {
    let d = Checker::fast();
    let server = messenger(
        "server",
        Config {
            peer_timeout_ms: 300,
            ..test_config()
        },
        d.clone(),
        true,
    );
    let (mut s, _) = raw::handshake(addr(&server), "mute", false);
    // Read (and ignore) the server's keepalives but never answer.
    assert!(raw::closed_by_peer(&mut s), "a silent peer is dropped");
    assert_eq!(server.counters().peer_timeouts, 1);
    assert!(
        wait_until(T, || d.events().iter().any(|e| matches!(e, Ev::Reset(_)))),
        "lossy peer reset reported"
    );
}

#[test]
fn keepalive_keeps_idle_connection_alive() {
    let cfg = Config {
        keepalive_interval_ms: 50,
        peer_timeout_ms: 400,
        ..test_config()
    };
    let server = messenger("server", cfg.clone(), Checker::fast(), true);
    let client = messenger("client", cfg, Checker::fast(), false);
    let conn = client.connect(addr(&server)).unwrap();
    conn.send(Message::new(1, payload(0, 0, 64))).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(
        client.counters().peer_timeouts + server.counters().peer_timeouts,
        0
    );
    assert_eq!(client.counters().faults, 0);
}

#[test]
fn backpressure_full_queue_refuses_and_memory_stays_bounded() {
    let inner = Checker::queued();
    let (gate, server) = throttled_gated_server(inner.clone());
    let limits = Config {
        queue_max_msgs: 2000,
        queue_max_bytes: 4 << 20,
        ..test_config()
    };
    let client = messenger("client", limits, Checker::fast(), false);
    let conn = client.connect(addr(&server)).unwrap();
    let mut accepted = 0u64;
    let mut refused = 0u64;
    let mut max_queued = (0, 0);
    for i in 0..200_000u64 {
        match conn.send(Message::new(1, payload(0, accepted, 4096))) {
            Ok(()) => accepted += 1,
            Err(e) => {
                assert!(matches!(e.kind, SendErrorKind::QueueFull { .. }), "{e}");
                refused += 1;
                if refused > 1000 {
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let q = conn.queued();
        max_queued = (max_queued.0.max(q.0), max_queued.1.max(q.1));
        let _ = i;
    }
    assert!(refused > 0, "the queue limit must refuse");
    assert!(
        max_queued.0 <= 2000 && max_queued.1 <= 4 << 20,
        "bounded: {max_queued:?}"
    );
    assert!(
        server.counters().throttled_reads > 0,
        "receiver stopped reading"
    );
    gate.open.store(true, Ordering::Release);
    inner.assert_delivered(accepted, T);
}

#[test]
fn local_delivery_never_touches_a_socket() {
    let d = Checker::queued();
    let m = messenger("self", test_config(), d.clone(), true);
    let conn = m.connect(addr(&m)).unwrap();
    assert!(conn.is_local());
    for i in 0..1000 {
        conn.send(Message::new(1, payload(0, i, 64))).unwrap();
    }
    d.assert_delivered(1000, T);
    let c = m.counters();
    assert_eq!(c.local_delivered, 1000);
    assert_eq!((c.bytes_out, c.accepted, c.connected), (0, 0, 0));
}

#[test]
fn priority_orders_dispatch() {
    let inner = Checker::keeping();
    let gate = Gate::closed(inner.clone());
    let server = messenger("server", test_config(), gate.clone(), true);
    let client = messenger("client", test_config(), Checker::fast(), false);
    let conn = client.connect(addr(&server)).unwrap();
    // One message holds the gate; the rest queue up behind it in the dispatch queue.
    for (stream, prio) in [
        (0u32, priority::LOW),
        (1, priority::LOW),
        (2, priority::HIGHEST),
        (3, priority::DEFAULT),
    ] {
        conn.send(Message::new(1, payload(stream, 0, 64)).with_priority(prio))
            .unwrap();
        if stream == 0 {
            assert!(wait_until(T, || server.counters().msgs_in == 1));
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(wait_until(T, || server.counters().msgs_in == 4));
    gate.open.store(true, Ordering::Release);
    assert!(wait_until(T, || inner.count() == 4));
    let order: Vec<u32> = inner
        .kept()
        .iter()
        .map(|m| u32::from_le_bytes(m.payload.to_vec()[0..4].try_into().unwrap()))
        .collect();
    assert_eq!(
        order,
        vec![0, 2, 3, 1],
        "highest first, then default, then low"
    );
}

#[test]
fn sixteen_mib_message_arrives_byte_for_byte() {
    let d = Checker::fast();
    let server = messenger("server", test_config(), d.clone(), true);
    let client = messenger("client", test_config(), Checker::fast(), false);
    let conn = client.connect(addr(&server)).unwrap();
    for i in 0..3 {
        conn.send(Message::new(1, payload(0, i, 16 << 20))).unwrap();
    }
    d.assert_delivered(3, T);
    assert_eq!(d.bytes(), 3 * (16 << 20));
}

#[test]
fn too_large_message_is_refused_at_send() {
    let server = messenger("server", test_config(), Checker::fast(), true);
    let client = messenger(
        "client",
        Config {
            max_message_bytes: 1 << 20,
            ..test_config()
        },
        Checker::fast(),
        false,
    );
    let conn = client.connect(addr(&server)).unwrap();
    let e = conn
        .send(Message::new(1, Buf::from_vec(vec![0; 2 << 20])))
        .unwrap_err();
    assert!(matches!(e.kind, SendErrorKind::TooLarge { .. }));
}

#[test]
fn multi_worker_spreads_connections_and_delivers_everything() {
    let d = Checker::fast();
    let server = messenger(
        "server",
        Config {
            workers: 2,
            ..test_config()
        },
        d.clone(),
        true,
    );
    let (_clients, conns) = connected_clients(6, addr(&server));
    for i in 0..5000u64 {
        for (s, c) in conns.iter().enumerate() {
            send_retry(c, Message::new(1, payload(s as u32, i, 100)));
        }
    }
    d.assert_delivered(30_000, T);
    let loads = server.worker_loads();
    assert!(
        loads.iter().all(|l| *l >= 2),
        "least-loaded placement: {loads:?}"
    );
}

#[test]
fn many_connections_echo_round_trip() {
    let server = messenger(
        "server",
        Config {
            workers: 2,
            ..test_config()
        },
        Checker::echo(),
        true,
    );
    let mut clients = Vec::new();
    for i in 0..32 {
        let d = Checker::fast();
        let m = messenger(&format!("c{i}"), test_config(), d.clone(), false);
        let c = m.connect(addr(&server)).unwrap();
        for j in 0..200 {
            send_retry(&c, Message::new(1, payload(0, j, 256)));
        }
        clients.push((m, d));
    }
    for (_, d) in &clients {
        d.assert_delivered(200, T);
    }
    assert_eq!(server.counters().accepted, 32);
}

#[test]
fn mark_down_closes_without_reset_and_peer_is_told() {
    let sd = Checker::fast();
    let server = messenger("server", test_config(), sd.clone(), true);
    let cd = Checker::fast();
    let client = messenger("client", test_config(), cd.clone(), false);
    let conn = client.connect(addr(&server)).unwrap();
    conn.send(Message::new(1, payload(0, 0, 64))).unwrap();
    assert!(wait_until(T, || sd.count() == 1));
    conn.mark_down();
    assert!(conn.is_closed());
    assert!(
        wait_until(T, || sd.events().iter().any(|e| matches!(e, Ev::Reset(_)))),
        "peer told: {:?}",
        sd.events()
    );
    assert!(!cd.events().iter().any(|e| matches!(e, Ev::Reset(_))));
}

/// Echoes on the dispatch thread, waiting while its queue is full (backpressure end to end).
struct BlockingEcho;
impl Dispatcher for BlockingEcho {
    fn dispatch(&self, c: &Connection, m: Message) {
        let _ = c.send_wait(m, Duration::from_secs(30));
    }
}

#[test]
fn backpressure_bidirectional_echo_never_stalls() {
    // Both directions saturated at once: each worker's socket fills (WouldBlock) while its
    // peer is also writing. A worker must then wait for writability without spinning and
    // keep reading, or both sides stop forever (the livelock this test caught).
    for round in 0..3 {
        let cfg = Config {
            workers: 2,
            ..test_config()
        };
        let server = messenger("server", cfg.clone(), Arc::new(BlockingEcho), true);
        let d = Checker::fast();
        let client = messenger("client", cfg, d.clone(), false);
        let conn = client.connect(addr(&server)).unwrap();
        const N: u64 = 200_000;
        for i in 0..N {
            conn.send_wait(Message::new(1, payload(0, i, 128)), T)
                .unwrap();
        }
        assert!(
            wait_until(Duration::from_secs(20), || d.count() == N),
            "round {round}: echoes stalled at {} of {N}",
            d.count()
        );
        d.assert_clean();
    }
}

/// A server and a client whose connection queues at most `max_msgs` messages; the server's
/// checker and the client's connection to it.
fn pair_with_queue_limit(max_msgs: usize) -> (Arc<Checker>, Messenger, Messenger, Connection) {
    let d = Checker::fast();
    let server = messenger("server", test_config(), d.clone(), true);
    let client = messenger(
        "client",
        Config {
            queue_max_msgs: max_msgs,
            ..test_config()
        },
        Checker::fast(),
        false,
    );
    let conn = client.connect(addr(&server)).unwrap();
    (d, server, client, conn)
}

#[test]
fn batch_send_delivers_in_order_and_refuses_a_batch_whole() {
    let (d, _server, _client, conn) = pair_with_queue_limit(1000);
    let mut next = 0u64;
    for _ in 0..400 {
        let batch: Vec<Message> = (0..250)
            .map(|_| {
                next += 1;
                Message::new(1, payload(0, next - 1, 64 + (next % 300) as usize))
            })
            .collect();
        conn.send_batch_wait(batch, T).unwrap();
    }
    d.assert_delivered(100_000, T);
    // A batch over the queue limit is refused whole, and every message comes back in order.
    let big: Vec<Message> = (0..1001)
        .map(|i| Message::new(1, payload(1, i, 64)))
        .collect();
    let e = conn.send_batch(big).unwrap_err();
    assert!(matches!(e.kind, SendErrorKind::QueueFull { .. }), "{e}");
    assert_eq!(e.messages.len(), 1001);
    assert_eq!(
        &e.messages[1000].payload.to_vec()[4..12],
        &1000u64.to_le_bytes()
    );
}

/// A `RecordBatch` of `count` records, sequence numbers from `*next` on, of 16..1000 bytes.
fn record_batch(next: &mut u64, count: u64) -> RecordBatch {
    let mut batch = RecordBatch::with_capacity(count as usize, count as usize * 500);
    for _ in 0..count {
        let len = 16 + ((*next * 37) % 1000) as usize;
        batch.push(1, &payload(0, *next, len)).unwrap();
        *next += 1;
    }
    batch
}

#[test]
fn record_batches_deliver_in_order_with_messages_and_are_refused_whole() {
    let (d, _server, _client, conn) = pair_with_queue_limit(1000);
    let mut next = 0u64;
    for round in 0..200u64 {
        conn.send_records_wait(record_batch(&mut next, 240), T)
            .unwrap();
        // Between the batches, messages on the message path (one over 1 KiB every third
        // round): all of one stream, so the checker sees one order.
        let len = if round % 3 == 0 { 3000 } else { 100 };
        conn.send_wait(Message::new(1, payload(0, next, len)), T)
            .unwrap();
        next += 1;
    }
    d.assert_delivered(next, T);
    // A batch over the queue limit is refused whole and handed back intact.
    let big = record_batch(&mut next, 1001);
    let e = conn.send_records(big).unwrap_err();
    assert!(matches!(e.kind, SendErrorKind::QueueFull { .. }), "{e}");
    assert_eq!(e.batch.len(), 1001);
    // The same 1001 messages go through split in two.
    drop(e);
    let mut again = next - 1001;
    conn.send_records_wait(record_batch(&mut again, 600), T)
        .unwrap();
    conn.send_records_wait(record_batch(&mut again, 401), T)
        .unwrap();
    d.assert_delivered(next, T);
    // A record too large for a batch is refused at `push`, which leaves the batch as it was.
    let mut b = RecordBatch::new();
    assert!(b.push(1, &[0; RecordBatch::MAX_PAYLOAD + 1]).is_err());
    assert!(b.is_empty());
    // A closed connection hands the batch back.
    conn.mark_down();
    let e = conn.send_records(record_batch(&mut next, 3)).unwrap_err();
    assert!(matches!(e.kind, SendErrorKind::Closed), "{e}");
    assert_eq!(e.batch.len(), 3);
}

#[test]
fn inject_faults_in_handshakes_and_transfers_lossless_exactly_once() {
    // One socket operation in five fails, anywhere: connects, connect completion, handshake
    // reads on the accepting side, and every read and write afterwards. Handshakes die at
    // every step; the session must still deliver every message once, in order.
    const N: u64 = 50_000;
    let inject = |seed| FaultInjection {
        socket_failures: 5,
        seed,
        delays: 20,
        delay_max_ms: 20,
    };
    let (server, d, client, conn) = pair_with_faults(inject(11), inject(12));
    for i in 0..N {
        conn.send_wait(Message::new(1, payload(0, i, 40 + (i % 200) as usize)), T)
            .unwrap();
    }
    d.assert_delivered_exactly_once(N, T, Duration::from_millis(100));
    let (c, s) = (client.counters(), server.counters());
    assert!(
        c.injected_faults + s.injected_faults >= 100,
        "faults injected: {c:?} {s:?}"
    );
    assert!(c.reconnects >= 50, "reconnected {} times", c.reconnects);
    eprintln!(
        "inject: {} injected faults, {} reconnects, {} connect attempts failed",
        c.injected_faults + s.injected_faults,
        c.reconnects,
        c.faults - c.reconnects
    );
}

/// `send_batch` encodes small messages into record blocks on the sending thread; they travel
/// as batch frames, are held as blocks and resent across reconnects. With faults and delays
/// injected on both ends, every message still arrives once, in order, including the larger
/// ones (over 1 KiB) that take the message path between the blocks.
#[test]
fn inject_faults_batched_sends_lossless_exactly_once_in_order() {
    const BATCHES: u64 = 3_000;
    const PER: u64 = 100;
    let (server, srv_d, client, conn) = faulty_pair(3, 4);
    let mut next = 0u64;
    for b in 0..BATCHES {
        let batch: Vec<Message> = (0..PER)
            .map(|i| {
                next += 1;
                // Every 7th batch carries one 3 KiB message in the middle.
                let len = if b % 7 == 0 && i == PER / 2 {
                    3000
                } else {
                    16 + ((next * 37) % 1000) as usize
                };
                Message::new(1, payload(0, next - 1, len))
            })
            .collect();
        conn.send_batch_wait(batch, T).unwrap();
    }
    let n = BATCHES * PER;
    srv_d.assert_delivered_exactly_once(n, T, Duration::from_millis(100));
    let (c, s) = (client.counters(), server.counters());
    assert!(
        c.injected_faults + s.injected_faults >= 20,
        "faults injected: {c:?} {s:?}"
    );
    assert!(c.reconnects >= 10, "reconnected {} times", c.reconnects);
    assert_eq!(c.remote_resets + s.remote_resets, 0);
    assert_eq!(s.malformed, 0);
}

/// Record batches written by the application travel as the same blocks: held, resent across
/// reconnects with faults and delays injected on both ends, delivered once and in order,
/// interleaved with messages sent one by one.
#[test]
fn inject_faults_record_batches_lossless_exactly_once_in_order() {
    let (server, srv_d, client, conn) = faulty_pair(5, 6);
    let mut next = 0u64;
    for b in 0..3_000u64 {
        conn.send_records_wait(record_batch(&mut next, 100), T)
            .unwrap();
        if b % 5 == 0 {
            conn.send_wait(Message::new(1, payload(0, next, 2000)), T)
                .unwrap();
            next += 1;
        }
    }
    srv_d.assert_delivered_exactly_once(next, T, Duration::from_millis(100));
    let (c, s) = (client.counters(), server.counters());
    assert!(c.reconnects >= 10, "reconnected {} times", c.reconnects);
    assert_eq!(c.remote_resets + s.remote_resets, 0);
    assert_eq!(s.malformed, 0);
}

/// One client messenger that reaches one server twice, through two of its addresses (IPv4
/// and IPv6 loopback on a dual-stack listener), has one session with it: the second
/// connection is refused with a clear reason instead of feeding that session a second,
/// independent sequence (whose messages the server used to take for duplicates and drop,
/// while the client counted them delivered). The first connection is untouched.
#[test]
fn a_second_connection_to_the_same_server_is_refused_not_merged() {
    let d = Checker::fast();
    let server = start_messenger(
        "server",
        test_config(),
        Arc::new(dataplane_stack_posix::PosixStack::new()),
        d.clone(),
        Policy::lossless_client(),
        Some("[::]:0".parse().unwrap()),
    );
    let port = addr(&server).port();
    let client = messenger("client", test_config(), Checker::fast(), false);
    let a = client
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    for i in 0..1000 {
        send_retry(&a, Message::new(1, payload(0, i, 64)));
    }
    d.assert_delivered(1000, T);
    let b = client
        .connect(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)))
        .unwrap();
    assert!(
        wait_until(T, || b.is_closed()),
        "the second connection must be refused"
    );
    let e = b
        .send(Message::new(1, payload(1, 0, 64)))
        .expect_err("closed");
    assert!(matches!(e.kind, SendErrorKind::Closed), "{e}");
    assert!(server.counters().handshake_failures >= 1);
    // The first connection goes on as before.
    for i in 1000..2000 {
        send_retry(&a, Message::new(1, payload(0, i, 64)));
    }
    d.assert_delivered(2000, T);
    assert!(!a.is_closed());
    assert_eq!(server.counters().duplicates, 0);
    d.assert_clean();
}

/// A message larger than the connection's queue byte limit (but within the message size
/// limit) can never be queued: `send_wait` says so at once instead of waiting out its timeout.
#[test]
fn send_wait_fails_at_once_for_a_message_over_the_queue_limit() {
    let server = messenger("server", test_config(), Checker::fast(), true);
    let client = messenger(
        "client",
        Config {
            queue_max_bytes: 1000,
            ..test_config()
        },
        Checker::fast(),
        false,
    );
    let conn = client.connect(addr(&server)).unwrap();
    let start = std::time::Instant::now();
    let e = conn
        .send_wait(
            Message::new(1, payload(0, 0, 2000)),
            Duration::from_secs(120),
        )
        .unwrap_err();
    assert!(matches!(e.kind, SendErrorKind::QueueFull { .. }), "{e}");
    assert_eq!(e.message.len(), 2000, "the message comes back");
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "waited {:?} for a message that can never fit",
        start.elapsed()
    );
}
