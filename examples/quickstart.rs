//! Quick start: open a ring, append from several threads, ship (read and
//! ack) part of it, let the small ring overflow, close, reopen, and print
//! the accounting.
//!
//! Run with `cargo run --example quickstart`.

use std::sync::Arc;
use std::thread;

use ringship::{Ring, RingConfig, SyncPolicy};

const THREADS: u64 = 4;
const PER_THREAD: u64 = 5_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ring");
    // A deliberately small ring (256 KiB), so it overflows and shows how
    // overwritten records are counted.
    let config = RingConfig::default().with_capacity(256 << 10).with_sync(SyncPolicy::Never);

    let (ring, report) = Ring::open(&dir, config.clone())?;
    println!("opened {} (created: {})", dir.display(), report.created);
    let ring = Arc::new(ring);

    let producers: Vec<_> = (0..THREADS)
        .map(|t| {
            let ring = Arc::clone(&ring);
            thread::spawn(move || -> ringship::Result<()> {
                for i in 0..PER_THREAD {
                    let line = format!("level=info thread={t} n={i} msg=\"request served\"");
                    ring.append(line.as_bytes())?;
                }
                Ok(())
            })
        })
        .collect();

    // Meanwhile, a "shipper" reads batches and acknowledges them.
    let mut next = 1;
    let mut shipped = 0;
    for _ in 0..50 {
        let batch = ring.read(next, 500, 1 << 20)?;
        if let Some(last) = batch.records.last() {
            shipped += batch.records.len();
            ring.ack(last.seq)?;
        }
        next = batch.next_seq;
        thread::yield_now();
    }
    for p in producers {
        p.join().expect("producer thread panicked")?;
    }
    let durable = ring.sync()?;
    println!(
        "appended {} records from {THREADS} threads; shipped {shipped}; durable up to seq {durable}",
        THREADS * PER_THREAD
    );
    ring.close()?;
    drop(ring);

    let (ring, report) = Ring::open(&dir, config)?;
    println!(
        "reopened: clean shutdown {}, {} records recovered, {} pending",
        report.clean_shutdown, report.records_recovered, report.pending
    );
    let s = ring.stats();
    println!();
    println!("accounting");
    println!("  appended       {:>8}", s.appended);
    println!("  acked          {:>8}", s.acked);
    println!("  pending        {:>8}", s.pending);
    println!("  overwritten    {:>8}  ({} bytes)", s.overwritten, s.overwritten_bytes);
    println!("  rejected       {:>8}", s.rejected);
    println!("  corrupted      {:>8}", s.corrupted);
    println!("  lost_unsynced  {:>8}", s.lost_unsynced);
    println!("  identity {}", if s.identity_holds() { "holds" } else { "BROKEN" });
    for l in ring.losses() {
        println!("  lost seq {}..={} ({} records, {} bytes, {:?})", l.first_seq, l.last_seq, l.count, l.bytes, l.cause);
    }
    assert!(s.identity_holds(), "accounting identity broken: {s:?}");
    ring.close()?;
    Ok(())
}
