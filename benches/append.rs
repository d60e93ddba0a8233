//! Append throughput: 128-byte and 1 KiB records, one at a time and in
//! batches of 64, under `SyncPolicy::Never`, on a 64 MiB ring that laps
//! (so eviction is part of the measured cost).

// criterion_group! generates an undocumented function.
#![allow(missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringship::{Ring, RingConfig, SyncPolicy};

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    for len in [128usize, 1024] {
        let tmp = tempfile::tempdir().unwrap();
        let config = RingConfig::default().capacity(64 << 20).sync(SyncPolicy::Never);
        let (ring, _) = Ring::open(tmp.path().join("ring"), config).unwrap();
        let payload = vec![7u8; len];
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("single", len), &payload, |b, p| {
            b.iter(|| ring.append(p).unwrap());
        });
        let batch: Vec<&[u8]> = (0..64).map(|_| payload.as_slice()).collect();
        group.throughput(Throughput::Bytes(64 * len as u64));
        group.bench_with_input(BenchmarkId::new("batch64", len), &batch, |b, batch| {
            b.iter(|| ring.append_batch(batch).unwrap());
        });
        ring.close().unwrap();
    }
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);
