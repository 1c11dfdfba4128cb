//! Authentication: right key in, wrong or missing key out (both directions), nothing
//! dispatched before authentication, keys never logged.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::raw;
use common::*;
use dataplane::wire::{self, HelloStatus, Tag, FEATURE_AUTH};
use dataplane::{AuthConfig, Config, Message, Messenger};

const T: Duration = Duration::from_secs(30);
const KEY_A: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8";
const KEY_B: &str = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b";

/// Everything the library logs, to check no key ever appears.
fn log_sink() -> &'static Arc<Mutex<Vec<u8>>> {
    static SINK: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    SINK.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let w = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_env_filter("dataplane=trace")
            .with_writer(move || LogWriter(w.clone()))
            .try_init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);
impl Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn with_key(key: &str) -> Config {
    log_sink();
    Config {
        auth: AuthConfig {
            cluster_key: key.into(),
            ..AuthConfig::default()
        },
        ..test_config()
    }
}

fn assert_no_key_logged() {
    let logs = String::from_utf8_lossy(&log_sink().lock().unwrap()).to_string();
    for k in [KEY_A, KEY_B] {
        assert!(!logs.contains(k), "a key appeared in the logs");
    }
}

#[test]
fn auth_right_key_messages_flow_both_ways() {
    let server = messenger("server", with_key(KEY_A), Checker::echo(), true);
    let d = Checker::fast();
    let client = messenger("client", with_key(KEY_A), d.clone(), false);
    let conn = client.connect(addr(&server)).unwrap();
    for i in 0..1000 {
        conn.send_wait(Message::new(1, payload(0, i, 100)), T)
            .unwrap();
    }
    d.assert_delivered(1000, T);
    assert_eq!(
        server.counters().auth_failures + client.counters().auth_failures,
        0
    );
    assert_no_key_logged();
}

#[test]
fn auth_wrong_key_is_refused_and_counted() {
    let sd = Checker::fast();
    let server = messenger("server", with_key(KEY_A), sd.clone(), true);
    let cd = Checker::fast();
    let client = messenger("client", with_key(KEY_B), cd.clone(), false);
    let conn = client.connect(addr(&server)).unwrap();
    let _ = conn.send(Message::new(1, payload(0, 0, 64)));
    assert!(
        wait_until(T, || cd.events().contains(&Ev::Reset(conn.id()))),
        "{:?}",
        cd.events()
    );
    assert_eq!(
        client.counters().auth_failures,
        1,
        "{:?}",
        client.counters()
    );
    assert_eq!(
        client.counters().auth_failures,
        1,
        "the client detects the server's wrong proof"
    );
    assert!(
        conn.is_closed(),
        "no reconnect after an authentication failure"
    );
    assert_eq!(sd.count(), 0);
    assert!(
        sd.events().is_empty(),
        "the server never accepted: {:?}",
        sd.events()
    );
    assert_no_key_logged();
}

/// A server with key A (its dispatcher, the messenger) and a raw TCP peer ("mallory") that
/// connected to it and sent a hello asking for authentication.
fn server_and_raw_auth_peer() -> (Arc<Checker>, Messenger, TcpStream) {
    let sd = Checker::fast();
    let server = messenger("server", with_key(KEY_A), sd.clone(), true);
    let mut h = raw::hello("mallory", true);
    h.features = FEATURE_AUTH;
    let mut s = raw::connect(addr(&server));
    s.write_all(&raw::hello_frame(&h)).unwrap();
    (sd, server, s)
}

#[test]
fn auth_bad_client_proof_is_refused_by_the_server() {
    let (sd, server, mut s) = server_and_raw_auth_peer();
    let auth = |nonce: &[u8; 32], proof: &[u8; 32]| {
        raw::tagged_frame(Tag::Auth, 0, &wire::encode_auth(nonce, proof), &[])
    };
    s.write_all(&auth(&[7; 32], &[0; 32])).unwrap();
    let (tag, _, _, _) = raw::read_frame(&mut s).expect("challenge");
    assert_eq!(tag, Tag::Auth);
    // A guessed proof, then a message that must never be dispatched.
    s.write_all(&auth(&[0; 32], &[0x42; 32])).unwrap();
    let _ = s.write_all(&raw::tagged_frame(Tag::Message, 1, &[], &payload(0, 0, 64)));
    let (tag, front, _, _) = raw::read_frame(&mut s).expect("refusal");
    assert_eq!(tag, Tag::HelloReply);
    assert_eq!(
        wire::parse_hello(&front).unwrap().status,
        HelloStatus::Refused
    );
    assert!(raw::closed_by_peer(&mut s));
    assert!(wait_until(T, || server.counters().auth_failures == 1));
    assert_eq!(sd.count(), 0, "nothing dispatched before authentication");
    assert!(sd.events().is_empty());
}

#[test]
fn auth_message_instead_of_proof_is_refused() {
    let (sd, _server, mut s) = server_and_raw_auth_peer();
    s.write_all(&raw::tagged_frame(
        Tag::Auth,
        0,
        &wire::encode_auth(&[1; 32], &[0; 32]),
        &[],
    ))
    .unwrap();
    let (tag, _, _, _) = raw::read_frame(&mut s).expect("challenge");
    assert_eq!(tag, Tag::Auth);
    s.write_all(&raw::tagged_frame(Tag::Message, 1, &[], &payload(0, 0, 64)))
        .unwrap();
    assert!(raw::closed_by_peer(&mut s));
    assert_eq!(sd.count(), 0);
}

#[test]
fn auth_missing_key_is_refused_in_both_directions() {
    // A client without a key, a server that requires one.
    let server = messenger("server", with_key(KEY_A), Checker::fast(), true);
    let cd = Checker::fast();
    let client = messenger("client", test_config(), cd.clone(), false);
    let conn = client.connect(addr(&server)).unwrap();
    assert!(
        wait_until(T, || cd.events().contains(&Ev::Reset(conn.id()))),
        "{:?}",
        cd.events()
    );
    assert!(wait_until(T, || server.counters().handshake_failures == 1));
    // A client that requires authentication, a server without a key.
    let plain = messenger("plain", test_config(), Checker::fast(), true);
    let cd2 = Checker::fast();
    let client2 = messenger("client2", with_key(KEY_A), cd2.clone(), false);
    let conn2 = client2.connect(addr(&plain)).unwrap();
    assert!(
        wait_until(T, || cd2.events().contains(&Ev::Reset(conn2.id()))),
        "{:?}",
        cd2.events()
    );
    assert!(conn2.is_closed());
}

#[test]
fn auth_optional_key_still_talks_to_peers_without_one() {
    let server = messenger("server", test_config(), Checker::fast(), true);
    let d = Checker::fast();
    let mut cfg = with_key(KEY_A);
    cfg.auth.required = false;
    let server2 = messenger("server2", cfg.clone(), d.clone(), true);
    let client = messenger("client", cfg, Checker::fast(), false);
    // No key on the server: no authentication, the connection works.
    let c = client.connect(addr(&server)).unwrap();
    c.send(Message::new(1, payload(0, 0, 64))).unwrap();
    // Both have keys: they authenticate.
    let c2 = client.connect(addr(&server2)).unwrap();
    c2.send(Message::new(1, payload(0, 0, 64))).unwrap();
    assert!(wait_until(T, || d.count() == 1));
    assert!(wait_until(T, || server.counters().accepted == 1));
}

#[test]
fn auth_per_entity_keyring() {
    let dir = std::env::temp_dir().join(format!("dp-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ring = dir.join("keyring.toml");
    std::fs::write(&ring, format!("[entities]\n\"alice\" = \"{KEY_A}\"\n")).unwrap();
    log_sink();
    let server_cfg = Config {
        auth: AuthConfig {
            keyring_file: ring.display().to_string(),
            ..AuthConfig::default()
        },
        ..test_config()
    };
    let d = Checker::fast();
    let server = messenger("server", server_cfg, d.clone(), true);
    // alice has her key: in.
    let alice = messenger("alice", with_key(KEY_A), Checker::fast(), false);
    alice
        .connect(addr(&server))
        .unwrap()
        .send(Message::new(1, payload(0, 0, 64)))
        .unwrap();
    assert!(wait_until(T, || d.count() == 1));
    // bob is not in the keyring (and there is no cluster key): out.
    let bd = Checker::fast();
    let bob = messenger("bob", with_key(KEY_A), bd.clone(), false);
    let conn = bob.connect(addr(&server)).unwrap();
    assert!(
        wait_until(T, || bd.events().contains(&Ev::Reset(conn.id()))),
        "{:?}",
        bd.events()
    );
    assert!(wait_until(T, || server.counters().auth_failures == 1));
    assert_eq!(d.count(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}
