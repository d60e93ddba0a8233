//! How long single appends take one by one, not on average: what a host
//! thread calling `append` waits for at worst. Each path appends 400,000
//! records, timing every call, into a fresh 256 MiB ring (the first lap,
//! where each page of the data file is touched for the first time), into a
//! full 64 MiB ring (the steady state: each append evicts the oldest
//! record), and into a full ring reopened after its pages were dropped
//! from the page cache (as after a reboot), next to the physical limit:
//! one raw `pwrite` of a frame per record into a fresh file.
//!
//! ```text
//! cargo bench --bench latency
//! ```
//!
//! For every path: mean, p50, p99, p99.9, p99.99, the worst, how many took
//! over 1 ms, and where the five worst fell: which append (the seq
//! reservation is renewed every 65,536 seqs) and how many MiB of frames
//! that run had written by then (the mapped path releases its pages 4 MiB
//! at a time, and the kernel reads ahead a window at a time). BENCHMARKS.md
//! explains what it shows on the project's machine.

// Not a library: print freely, and nanosecond arithmetic needs casts.
#![allow(missing_docs, clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use ringship::{Ring, RingConfig, SyncPolicy};

const APPENDS: usize = 400_000;
const RING: u64 = 256 << 20;
/// The full ring's capacity: 400,000 appends of 128 bytes nearly lap it.
const FULL_RING: u64 = 64 << 20;
/// A frame's header (docs/FORMAT.md); 128 and 1024 byte payloads need no
/// padding. The raw limit writes frames of the same size as the ring.
const FRAME_OVERHEAD: usize = 32;

/// Times `APPENDS` calls of `append(i)`.
fn time_each(mut append: impl FnMut(usize)) -> Vec<Duration> {
    (0..APPENDS)
        .map(|i| {
            let t = Instant::now();
            append(i);
            t.elapsed()
        })
        .collect()
}

/// Which ring the appends go into.
#[derive(Clone, Copy, PartialEq)]
enum Lap {
    /// A fresh ring: the first lap, where every page of the data file is
    /// touched for the first time.
    Fresh,
    /// A full ring: the steady state, every append evicting the oldest
    /// record.
    Full,
    /// A full ring closed, its data file's pages dropped from the page
    /// cache, and opened again: as after a reboot, the bytes ahead of the
    /// head are on the disk only.
    Rebooted,
}

/// Appends into a ring in the state `lap` names.
fn ring_path(payload: usize, mapped: bool, lap: Lap) -> Vec<Duration> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ring");
    let capacity = if lap == Lap::Fresh { RING } else { FULL_RING };
    let config = RingConfig::default().capacity(capacity).sync(SyncPolicy::Never).mapped_writes(mapped);
    let (mut ring, _) = Ring::open(&dir, config.clone()).unwrap();
    let record = vec![b'x'; payload];
    if lap != Lap::Fresh {
        let batch = vec![&record[..]; 64];
        for _ in 0..=capacity / (payload + FRAME_OVERHEAD) as u64 / 64 {
            ring.append_batch(&batch).unwrap();
        }
    }
    if lap == Lap::Rebooted {
        // `close` wrote every page back, so the kernel can drop them all.
        ring.close().unwrap();
        drop(ring);
        let data = std::fs::File::open(dir.join("ring.data")).unwrap();
        rustix::fs::fadvise(&data, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        ring = Ring::open(&dir, config).unwrap().0;
    }
    let times = time_each(|_| {
        ring.append(&record).unwrap();
    });
    ring.close().unwrap();
    times
}

/// The limit: one `pwrite` of a frame-sized buffer per record, one after
/// another into a fresh (sparse) file, as the default path writes.
fn raw_pwrite(payload: usize) -> Vec<Duration> {
    let tmp = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(tmp.path().join("raw")).unwrap();
    file.set_len(RING).unwrap();
    let frame = vec![b'y'; payload + FRAME_OVERHEAD];
    time_each(|i| file.write_all_at(&frame, (i * frame.len()) as u64 % (RING - frame.len() as u64)).unwrap())
}

/// Prints one row of the table and the five worst appends.
fn report(name: &str, payload: usize, times: &[Duration]) {
    let frame = payload + FRAME_OVERHEAD;
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
    let us = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e6);
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    let over_ms = times.iter().filter(|t| **t > Duration::from_millis(1)).count();
    let mut worst: Vec<(Duration, usize)> = times.iter().copied().zip(0..).collect();
    worst.sort_unstable_by_key(|w| std::cmp::Reverse(w.0));
    let worst: Vec<String> = worst
        .iter()
        .take(5)
        .map(|(t, i)| {
            format!("{} us at append {} ({:.2} MiB in)", us(*t), i + 1, (i * frame) as f64 / f64::from(1 << 20))
        })
        .collect();
    println!(
        "{name:<40} {:>6} ns {:>6} ns {:>7} {:>7} {:>7} {:>8} {over_ms:>5}",
        mean.as_nanos(),
        at(0.5).as_nanos(),
        us(at(0.99)),
        us(at(0.999)),
        us(at(0.9999)),
        us(sorted[sorted.len() - 1])
    );
    println!("    worst: {}", worst.join(", "));
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    println!(
        "{:<40} {:>9} {:>9} {:>7} {:>7} {:>7} {:>8} {:>5}",
        "append path (Never)", "mean", "p50", "p99 us", "p99.9", "p99.99", "max us", ">1ms"
    );
    for payload in [128, 1024] {
        for (path, mapped) in [("pwrite (default)", false), ("mapped writes", true)] {
            report(&format!("{payload} B, {path}, fresh ring"), payload, &ring_path(payload, mapped, Lap::Fresh));
            report(&format!("{payload} B, {path}, full ring"), payload, &ring_path(payload, mapped, Lap::Full));
            let rebooted = ring_path(payload, mapped, Lap::Rebooted);
            report(&format!("{payload} B, {path}, full, rebooted"), payload, &rebooted);
        }
        report(&format!("{payload} B, raw pwrite per record (limit)"), payload, &raw_pwrite(payload));
    }
}
