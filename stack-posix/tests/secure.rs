//! Secure mode on real sockets: round trips of every size, no payload in the clear, re-keying
//! without loss, mode mismatches refused, and a man in the middle who flips a bit, replays a
//! frame or truncates one: the connection is closed and counted, nothing altered is
//! delivered, and the lossless session reconnects and delivers everything exactly once.

mod common;

use std::time::Duration;

use common::proxy::{Proxy, Tamper};
use common::*;
use dataplane::{AuthConfig, AuthMode, Config, Message};

const T: Duration = Duration::from_secs(60);
const KEY: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

fn secure() -> Config {
    Config {
        auth: AuthConfig {
            cluster_key: KEY.into(),
            mode: AuthMode::Secure,
            ..AuthConfig::default()
        },
        ..test_config()
    }
}

fn crc_with_key() -> Config {
    Config {
        auth: AuthConfig {
            cluster_key: KEY.into(),
            ..AuthConfig::default()
        },
        ..test_config()
    }
}

#[test]
fn secure_round_trip_of_every_size_both_ways() {
    let server = messenger("server", secure(), Checker::echo(), true);
    let d = Checker::fast();
    let client = messenger("client", secure(), d.clone(), false);
    let conn = client.connect(addr(&server)).unwrap();
    let sizes = [
        12usize,
        13,
        64,
        255,
        256,
        257,
        4096,
        65_536,
        1 << 20,
        4 << 20,
    ];
    let mut n = 0u64;
    for round in 0..20 {
        for &s in &sizes {
            if s > 65_536 && round > 1 {
                continue;
            }
            conn.send_wait(Message::new(1, payload(0, n, s)), T)
                .unwrap();
            n += 1;
        }
    }
    d.assert_delivered(n, T);
    let (sc, cc) = (server.counters(), client.counters());
    assert_eq!(sc.integrity_failures + cc.integrity_failures, 0);
    assert_eq!(sc.malformed + cc.malformed, 0);
    assert_eq!(cc.reconnects, 0);
}

#[test]
fn secure_batched_sends_round_trip_sealed() {
    let server = messenger("server", secure(), Checker::echo(), true);
    let d = Checker::fast();
    let client = messenger("client", secure(), d.clone(), false);
    let conn = client.connect(addr(&server)).unwrap();
    let mut n = 0u64;
    for _ in 0..200 {
        let batch: Vec<Message> = (0..100u64)
            .map(|i| {
                n += 1;
                Message::new(1, payload(0, n - 1, 1 + ((n * 13 + i) % 1500) as usize))
            })
            .collect();
        conn.send_batch_wait(batch, T).unwrap();
    }
    d.assert_delivered(n, T);
    let (sc, cc) = (server.counters(), client.counters());
    assert_eq!(sc.integrity_failures + cc.integrity_failures, 0);
    assert_eq!(sc.malformed + cc.malformed, 0);
    assert_eq!(cc.reconnects, 0);
}

/// Runs traffic through a recording proxy and reports whether a distinctive payload
/// appeared on the wire.
fn payload_visible(cfg: fn() -> Config) -> bool {
    let server = messenger("server", cfg(), Checker::echo(), true);
    let proxy = Proxy::start(addr(&server), Tamper::Nothing, 0);
    let d = Checker::fast();
    let client = messenger("client", cfg(), d.clone(), false);
    let conn = client.connect(proxy.addr()).unwrap();
    for i in 0..50 {
        conn.send_wait(Message::new(1, payload(0, i, 200 + i as usize * 100)), T)
            .unwrap();
    }
    d.assert_delivered(50, T);
    let secret = payload(0, 30, 3200).to_vec();
    let wire = proxy.captured.lock().clone();
    assert!(wire.len() > 50 * 200, "the proxy saw the traffic");
    wire.windows(64).any(|w| w == &secret[100..164])
}

#[test]
fn secure_payload_never_appears_on_the_wire() {
    assert!(
        payload_visible(crc_with_key),
        "control: in crc mode the payload is on the wire"
    );
    assert!(
        !payload_visible(secure),
        "secure mode must not show the payload"
    );
}

#[test]
fn secure_rekeys_by_reconnecting_without_loss() {
    // One frame per message (no batches), so that 300 frames are 300 messages.
    let rekeying = || Config {
        auth: AuthConfig {
            rekey_after_frames: 300,
            ..secure().auth
        },
        features: 0,
        ..secure()
    };
    let sd = Checker::fast();
    let server = messenger("server", rekeying(), sd.clone(), true);
    let client = messenger("client", rekeying(), Checker::fast(), false);
    let conn = client.connect(addr(&server)).unwrap();
    let n = 20_000u64;
    for i in 0..n {
        send_retry(
            &conn,
            Message::new(1, payload(0, i, 64 + (i % 200) as usize)),
        );
    }
    sd.assert_delivered(n, T);
    let cc = client.counters();
    assert!(
        cc.rekeys >= n / 300 - 1,
        "a connection per 300 frames: {cc:?}"
    );
    assert!(cc.reconnects >= cc.rekeys.saturating_sub(1), "{cc:?}");
    assert_eq!(
        cc.integrity_failures + server.counters().integrity_failures,
        0
    );
}

#[test]
fn secure_mode_needs_a_key() {
    let cfg = Config {
        auth: AuthConfig {
            mode: AuthMode::Secure,
            ..AuthConfig::default()
        },
        ..test_config()
    };
    let built = dataplane::Messenger::builder("x")
        .config(cfg)
        .stack(std::sync::Arc::new(dataplane_stack_posix::PosixStack::new()))
        .dispatcher(Checker::fast())
        .build();
    let Err(e) = built else {
        panic!("secure mode without a key must be refused");
    };
    assert!(e.to_string().contains("secure"), "{e}");
}

#[test]
fn secure_and_crc_peers_refuse_each_other_in_both_directions() {
    for (server_cfg, client_cfg) in [
        (secure as fn() -> Config, crc_with_key as fn() -> Config),
        (crc_with_key, secure),
    ] {
        let sd = Checker::fast();
        let server = messenger("server", server_cfg(), sd.clone(), true);
        let cd = Checker::fast();
        let client = messenger("client", client_cfg(), cd.clone(), false);
        let conn = client.connect(addr(&server)).unwrap();
        let _ = conn.send(Message::new(1, payload(0, 0, 64)));
        assert!(
            wait_until(T, || cd.events().contains(&dataplane_ev_reset(conn.id()))),
            "{:?}",
            cd.events()
        );
        assert!(conn.is_closed(), "a mode mismatch is permanent");
        assert_eq!(sd.count(), 0);
        assert!(
            client.counters().handshake_failures >= 1,
            "{:?}",
            client.counters()
        );
    }
}

fn dataplane_ev_reset(id: u64) -> Ev {
    Ev::Reset(id)
}

/// Sends `n` messages through a proxy that alters one frame of the first connection.
fn tampered_run(tamper: Tamper) {
    let sd = Checker::fast();
    let server = messenger("server", secure(), sd.clone(), true);
    // Small messages travel in batch frames: the 9th message frame is a sealed batch.
    let proxy = Proxy::start(addr(&server), tamper, 8);
    let client = messenger("client", secure(), Checker::fast(), false);
    let conn = client.connect(proxy.addr()).unwrap();
    let n = 3000u64;
    for i in 0..n {
        send_retry(
            &conn,
            Message::new(1, payload(0, i, 100 + (i % 50) as usize)),
        );
    }
    sd.assert_delivered(n, T);
    assert_eq!(proxy.tampered.load(std::sync::atomic::Ordering::Relaxed), 1);
    let sc = server.counters();
    assert_eq!(sc.integrity_failures, 1, "{tamper:?}: {sc:?}");
    assert_eq!(sc.malformed, 1, "{tamper:?}: {sc:?}");
    assert!(
        client.counters().reconnects >= 1,
        "{tamper:?}: the lossless session came back"
    );
    assert!(proxy.connections.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}

#[test]
fn tamper_flipped_bit_closes_the_connection_and_nothing_is_lost() {
    tampered_run(Tamper::FlipBit);
}

#[test]
fn tamper_replayed_frame_closes_the_connection_and_nothing_is_lost() {
    tampered_run(Tamper::Replay);
}

#[test]
fn tamper_truncated_frame_closes_the_connection_and_nothing_is_lost() {
    tampered_run(Tamper::Truncate);
}

#[test]
fn secure_inject_faults_and_delays_lossless_exactly_once() {
    // Every reconnect runs a fresh authenticated handshake with fresh keys.
    let injecting = |seed| Config {
        inject: dataplane::FaultInjection {
            socket_failures: 20,
            seed,
            delays: 10,
            delay_max_ms: 3,
        },
        ..secure()
    };
    let sd = Checker::fast();
    let server = messenger("server", injecting(5), sd.clone(), true);
    let client = messenger("client", injecting(6), Checker::fast(), false);
    let conn = client.connect(addr(&server)).unwrap();
    let n = 100_000u64;
    for i in 0..n {
        send_retry(
            &conn,
            Message::new(1, payload(0, i, 16 + (i % 300) as usize)),
        );
    }
    sd.assert_delivered_exactly_once(n, T, Duration::from_millis(50));
    let (c, s) = (client.counters(), server.counters());
    assert!(c.injected_faults + s.injected_faults >= 20, "{c:?} {s:?}");
    assert!(c.reconnects >= 10, "{c:?}");
    assert_eq!(c.integrity_failures + s.integrity_failures, 0);
}
