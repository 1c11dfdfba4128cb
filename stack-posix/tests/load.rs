//! Load: many concurrent connections, connection limits.

mod common;

use std::time::Duration;

use common::*;
use dataplane::{Config, Message, Policy};

const T: Duration = Duration::from_secs(60);

/// Raises the open-file limit so the test can hold a few thousand sockets.
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    s.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 4096
}

#[test]
fn many_connections_one_thousand_with_traffic_on_all() {
    raise_nofile(8192);
    const N: usize = 1000;
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
    let client = messenger(
        "client",
        Config {
            workers: 2,
            ..test_config()
        },
        Checker::fast(),
        false,
    );
    let fds_before = open_fds();
    let rss_before = rss();
    let conns: Vec<_> = (0..N)
        .map(|_| {
            client
                .open(addr(&server), Policy::lossless_client())
                .unwrap()
        })
        .collect();
    for round in 0..20u64 {
        for (i, c) in conns.iter().enumerate() {
            c.send_wait(Message::new(1, payload(i as u32, round, 100)), T)
                .unwrap();
        }
    }
    d.assert_delivered(20 * N as u64, T);
    assert_eq!(server.counters().accepted, N as u64);
    let fds_during = open_fds();
    // Two sockets per connection (both ends live in this process), nothing else per connection.
    assert!(
        fds_during - fds_before <= 2 * N + 16,
        "fds: {fds_before} -> {fds_during}"
    );
    let grown = rss().saturating_sub(rss_before);
    // Pools are bounded per worker; per connection we keep a few KiB.
    assert!(grown < 256 << 20, "memory grew by {} MiB", grown >> 20);
    for c in &conns {
        c.mark_down();
    }
    assert!(
        wait_until(T, || open_fds() <= fds_before + 16),
        "sockets released: {} open, {fds_before} before",
        open_fds()
    );
    eprintln!(
        "many_connections: {N} connections, {} KiB RSS growth, {} fds at peak",
        grown >> 10,
        fds_during - fds_before
    );
}

#[test]
fn connection_limit_refuses_floods_cleanly() {
    let d = Checker::fast();
    let server = messenger(
        "server",
        Config {
            max_connections: 4,
            ..test_config()
        },
        d.clone(),
        true,
    );
    // Four well-behaved clients fill the limit.
    let clients: Vec<_> = (0..4)
        .map(|i| messenger(&format!("c{i}"), test_config(), Checker::fast(), false))
        .collect();
    for (i, c) in clients.iter().enumerate() {
        let conn = c.connect(addr(&server)).unwrap();
        conn.send(Message::new(1, payload(i as u32, 0, 64)))
            .unwrap();
    }
    assert!(wait_until(T, || d.count() == 4));
    // A flood of raw connections is closed at once, without a handshake.
    let mut flood: Vec<_> = (0..20).map(|_| raw::connect(addr(&server))).collect();
    for s in &mut flood {
        assert!(raw::closed_by_peer(s), "refused");
    }
    assert_eq!(server.counters().refused_connections, 20);
    assert_eq!(server.counters().accepted, 4);
}
