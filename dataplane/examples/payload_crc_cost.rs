//! What the payload crc costs on this core, against a copy of the same bytes: the number
//! behind `Config::trust_transport_crc` (on RDMA, where sends and receives are zero-copy, the
//! payload crc is the only pass the CPU makes over a message's bytes).
//!
//! ```text
//! cargo run --release --example payload_crc_cost -- [payload bytes, default 65536] [rounds]
//! ```

use std::time::Instant;

use dataplane::wire::payload_crc;

fn main() {
    let mut args = std::env::args().skip(1);
    let size: usize = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64 * 1024);
    let rounds: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let size = size.max(1);
    let rounds = rounds.max(1);
    let src: Vec<u8> = (0..size).map(|i| (i * 131 % 251) as u8).collect();
    let mut dst = vec![0u8; size];

    let t = Instant::now();
    let mut crc = 0u32;
    for _ in 0..rounds {
        crc = crc.wrapping_add(payload_crc([std::hint::black_box(src.as_slice())]));
    }
    let crc_time = t.elapsed() / rounds;

    let t = Instant::now();
    for _ in 0..rounds {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
    }
    let copy_time = t.elapsed() / rounds;

    let gbps = |d: std::time::Duration| size as f64 / d.as_secs_f64().max(1e-12) / 1e9;
    let crc_gbps = gbps(crc_time);
    // 100 Gbit/s of payload is 12.5 GB/s to check at each end.
    let share = 12.5 / crc_gbps * 100.0;
    println!(
        "{size}-byte payload: crc32c {crc_time:?} ({crc_gbps:.1} GB/s), copy {copy_time:?} \
         ({:.1} GB/s); at 100 Gbit/s the crc alone needs {share:.0}% of this core at each end \
         (sum of crcs {crc:08x})",
        gbps(copy_time)
    );
}
