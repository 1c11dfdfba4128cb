//! Micro-benchmarks of the hot-path building blocks: preamble encode/parse, crc32c, and the
//! command rings. `cargo bench -p dataplane`.

use std::collections::VecDeque;
use std::hint::black_box;

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use dataplane::ring::{mpsc, spsc};
use dataplane::wire::{self, FrameHead, Limits, Tag};

fn frames(c: &mut Criterion) {
    let head = FrameHead {
        tag: Tag::Message as u8,
        flags: wire::FLAG_ACK_VALID,
        priority: 127,
        msg_type: 7,
        seq: 123_456,
        ack: 654_321,
        front_len: 0,
        data_len: 64,
    };
    c.bench_function("preamble_encode", |b| {
        b.iter(|| wire::encode_preamble(black_box(&head)))
    });
    let bytes = wire::encode_preamble(&head);
    let limits = Limits::default();
    c.bench_function("preamble_parse", |b| {
        b.iter(|| {
            wire::parse_preamble(black_box(&bytes[..]), &limits).map(|p| p.map(|p| p.seq.get()))
        })
    });
}

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [36usize, 64, 512, 4096, 65536] {
        let data = vec![0xA5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, d| {
            b.iter(|| wire::crc32c(black_box(d)))
        });
    }
    g.finish();
}

fn rings(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    g.throughput(Throughput::Elements(1));
    let (mut tx, mut rx) = spsc::channel::<[u8; 64]>(1024);
    g.bench_function("spsc_push_pop", |b| {
        b.iter(|| {
            let _ = tx.push(black_box([1u8; 64]));
            rx.pop()
        })
    });
    let (mtx, mut mrx) = mpsc::channel::<[u8; 64]>(1024);
    g.bench_function("mpsc_push_pop", |b| {
        b.iter(|| {
            let _ = mtx.push(black_box([1u8; 64]));
            mrx.pop()
        })
    });
    g.throughput(Throughput::Elements(64));
    let mut batch: VecDeque<u64> = VecDeque::with_capacity(64);
    let mut out = Vec::with_capacity(64);
    let (mut btx, mut brx) = spsc::channel::<u64>(1024);
    g.bench_function("spsc_batch64", |b| {
        b.iter(|| {
            batch.extend(0..64u64);
            btx.push_batch(&mut batch);
            out.clear();
            brx.pop_batch(&mut out, 64)
        })
    });
    g.finish();
}

/// Criterion's generated group function has no doc comment of its own.
mod group {
    #![allow(missing_docs)]
    use super::{crc, frames, rings};
    criterion::criterion_group!(benches, frames, crc, rings);
}

criterion_main!(group::benches);
