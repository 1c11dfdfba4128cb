//! Messenger set-up: port ranges, backend selection, configuration errors.

mod common;

use std::sync::Arc;

use common::*;
use dataplane::{Config, Error, Messenger};
use dataplane_stack_posix::PosixStack;

/// A messenger on the POSIX stack with a checking dispatcher, built but not started.
fn unstarted(name: &str, cfg: Config) -> Result<Messenger, Error> {
    Messenger::builder(name)
        .config(cfg)
        .stack(Arc::new(PosixStack::new()))
        .dispatcher(Checker::fast())
        .build()
}

#[test]
fn bind_port_range_skips_taken_ports() {
    // Find three consecutive free ports, then occupy the first.
    let (base, _hold) = loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = l.local_addr().unwrap().port();
        if p < 65000
            && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", p + 2)).is_ok()
        {
            break (p, l);
        }
    };
    let cfg = Config {
        bind_port_min: base,
        bind_port_max: base + 2,
        ..test_config()
    };
    let m = unstarted("ranged", cfg).unwrap();
    let bound = m.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    assert_eq!(bound.port(), base + 1, "the taken port is skipped");
    assert_eq!(m.addr(), Some(bound));
}

#[test]
fn bind_port_range_exhausted_is_a_clear_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = l.local_addr().unwrap().port();
    let cfg = Config {
        bind_port_min: p,
        bind_port_max: p,
        ..test_config()
    };
    let m = unstarted("ranged", cfg).unwrap();
    let e = m.bind("127.0.0.1:0".parse().unwrap()).unwrap_err();
    assert!(matches!(e, Error::NoFreePort { .. }), "{e}");
}

#[test]
fn unknown_backend_is_a_clear_error() {
    let cfg = Config {
        backend: "rdma".into(),
        ..test_config()
    };
    let e = unstarted("x", cfg).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, Error::UnknownBackend(_)), "{text}");
    assert!(
        text.contains("rdma") && text.contains("posix"),
        "says what is missing: {text}"
    );
}

#[test]
fn connect_before_start_is_refused() {
    let m = unstarted("early", test_config()).unwrap();
    let e = m.connect("127.0.0.1:9".parse().unwrap()).unwrap_err();
    assert!(matches!(e, Error::NotStarted));
}

#[test]
fn missing_dispatcher_and_bad_name_are_refused() {
    let e = Messenger::builder("x")
        .stack(Arc::new(PosixStack::new()))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("dispatcher"));
    let long = "n".repeat(100);
    let e = Messenger::builder(&long)
        .stack(Arc::new(PosixStack::new()))
        .dispatcher(Checker::fast())
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("name"));
}

#[test]
fn connect_reuses_and_open_does_not() {
    let server = messenger("server", test_config(), Checker::fast(), true);
    let client = messenger("client", test_config(), Checker::fast(), false);
    let a = client.connect(addr(&server)).unwrap();
    let b = client.connect(addr(&server)).unwrap();
    assert_eq!(a, b);
    let c = client
        .open(addr(&server), dataplane::Policy::lossless_client())
        .unwrap();
    assert_ne!(a, c);
}
