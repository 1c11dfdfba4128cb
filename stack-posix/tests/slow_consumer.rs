//! A slow consumer: a receiver that stops reading. In its own test binary (its own
//! process) because it measures the process's resident memory.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use dataplane::{Config, Message};

const T: Duration = Duration::from_secs(60);

/// Resident set size of this process in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn slow_consumer_memory_stays_flat_and_nothing_is_lost() {
    // A receiver that stops reading while a sender offers 200 MiB: the sender's queue
    // limit and TCP backpressure hold memory flat; everything arrives once it resumes.
    const N: u64 = 50_000;
    const SIZE: usize = 4096;
    let inner = Checker::queued();
    let (gate, server) = throttled_gated_server(inner.clone());
    let client = messenger(
        "client",
        Config {
            queue_max_msgs: 1000,
            queue_max_bytes: 4 << 20,
            ..test_config()
        },
        Checker::fast(),
        false,
    );
    let conn = client.connect(addr(&server)).unwrap();
    let before = rss_bytes();
    let sender = {
        let conn = conn.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                conn.send_wait(
                    Message::new(1, payload(0, i, SIZE)),
                    Duration::from_secs(60),
                )
                .unwrap();
            }
        })
    };
    let mut peak = before;
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        peak = peak.max(rss_bytes());
        let q = conn.queued();
        assert!(q.0 <= 1000 && q.1 <= 4 << 20, "queue bounded: {q:?}");
    }
    assert!(!sender.is_finished(), "the sender must be held back");
    let offered = N * SIZE as u64;
    let growth = peak.saturating_sub(before);
    assert!(
        growth < 64 << 20,
        "memory grew {} MiB while {} MiB were offered",
        growth >> 20,
        offered >> 20
    );
    eprintln!(
        "slow consumer: RSS grew {} MiB while {} MiB were offered and held back",
        growth >> 20,
        offered >> 20
    );
    gate.open.store(true, Ordering::Release);
    sender.join().unwrap();
    inner.assert_delivered(N, T);
}
