//! Quick start: the whole mission on one machine, with no set-up.
//!
//! Opens a ring in a temporary directory, starts two HTTP receivers on
//! loopback, appends from four threads while the shipper sends batches to
//! the first receiver, switches to the second mid-stream, and ends with a
//! report: appended, delivered, duplicates, overwritten (with ranges),
//! stalls, switches, and whether the accounting identity held.
//!
//! Run with `cargo run --example quickstart`.

#[path = "common/http_receiver.rs"]
mod http_receiver;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use http_receiver::HttpReceiver;
use ringship::{BodyFormat, Endpoint, HttpConfig, HttpTransport, Ring, RingConfig, Shipper, SyncPolicy};

const THREADS: u64 = 4;
const PER_THREAD: u64 = 10_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("ring");
    let (primary, secondary) = (HttpReceiver::start(), HttpReceiver::start());

    // A 2 MiB ring: big enough for this burst at loopback speed. Shrink it
    // to see overwritten records counted, ranged and announced.
    let config = RingConfig::default().capacity(2 << 20).sync(SyncPolicy::Interval(Duration::from_millis(50)));
    let (ring, report) = Ring::open(&dir, config)?;
    println!("ring     {} (created: {})", dir.display(), report.created);
    println!("primary  {}", primary.url());
    println!("standby  {}", secondary.url());

    let http = HttpConfig::default().format(BodyFormat::LengthPrefixed).gzip(true);
    let shipper = Shipper::builder(ring)
        .endpoint(Endpoint::new(primary.url()))
        .transport(HttpTransport::factory(http))
        .max_batch_records(1000)
        .linger(Duration::from_millis(2))
        .stall_after(Duration::from_secs(2))
        .start()?;

    let started = Instant::now();
    let producers: Vec<_> = (0..THREADS)
        .map(|t| {
            let shipper = shipper.clone();
            std::thread::spawn(move || -> ringship::Result<()> {
                for i in 0..PER_THREAD {
                    shipper.append(format!("level=info thread={t} n={i} msg=\"request served\"").as_bytes())?;
                    if i % 100 == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                Ok(())
            })
        })
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let progress = {
        let (shipper, done, standby) = (shipper.clone(), Arc::clone(&done), secondary.url());
        std::thread::spawn(move || {
            let mut switched = false;
            while !done.load(Ordering::Relaxed) {
                let s = shipper.stats();
                println!(
                    "[{:>5} ms] appended {:>6}  delivered {:>6}  pending {:>5}  overwritten {:>5}  -> {}",
                    started.elapsed().as_millis(),
                    s.ring.appended,
                    s.ring.acked,
                    s.ring.pending,
                    s.ring.overwritten,
                    s.endpoint
                );
                if !switched && s.ring.appended >= THREADS * PER_THREAD / 2 {
                    switched = true;
                    println!("           switching to the standby receiver mid-stream");
                    shipper.switch_endpoint(Endpoint::new(standby.clone())).unwrap();
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    for p in producers {
        p.join().expect("producer thread panicked")?;
    }
    done.store(true, Ordering::Relaxed);
    progress.join().expect("progress thread panicked");
    if shipper.stats().switches == 0 {
        // A very fast run finished before the progress thread saw half.
        shipper.switch_endpoint(Endpoint::new(secondary.url())).unwrap();
    }
    let stats = shipper.shutdown(Duration::from_secs(10))?.stats;

    print_report(&stats, &primary, &secondary, &dir, started)
}

/// Prints what happened and checks that every record is accounted for.
fn print_report(
    stats: &ringship::SenderStats,
    primary: &HttpReceiver,
    secondary: &HttpReceiver,
    dir: &std::path::Path,
    started: Instant,
) -> Result<(), Box<dyn std::error::Error>> {
    let (a, b) = (primary.inbox.lock().unwrap(), secondary.inbox.lock().unwrap());
    let received = a.records.len() + b.records.len();
    let delivered: BTreeSet<u64> = a.records.iter().chain(b.records.iter()).map(|r| r.0).collect();
    let losses = stats.ring.overwritten;
    println!();
    println!("report after {:.1?}", started.elapsed());
    println!("  appended                {:>7}", stats.ring.appended);
    println!(
        "  delivered (distinct)    {:>7}  ({} to primary, {} to standby)",
        delivered.len(),
        a.records.len(),
        b.records.len()
    );
    println!("  duplicates              {:>7}  (identifiable by seq)", received - delivered.len());
    println!("  overwritten             {losses:>7}  ({} bytes)", stats.ring.overwritten_bytes);
    for l in ring_losses(dir)? {
        println!("      seq {}..={}: {} records, {} bytes, {:?}", l.first_seq, l.last_seq, l.count, l.bytes, l.cause);
    }
    println!("  gap notices received    {:>7}", a.gaps.len() + b.gaps.len());
    println!("  stalls                  {:>7}", stats.stalls);
    println!("  switches                {:>7}", stats.switches);
    println!("  pending at shutdown     {:>7}", stats.ring.pending);
    // Every seq was delivered, or counted as overwritten (a record can be
    // both: sent, then evicted before its ack).
    let every_record_accounted = delivered.len() as u64 + losses >= stats.ring.last_seq
        && delivered.iter().all(|&s| s >= 1 && s <= stats.ring.last_seq);
    println!(
        "  accounting identity     {}",
        if stats.ring.identity_holds() && every_record_accounted {
            "holds: every record delivered or counted"
        } else {
            "BROKEN"
        }
    );
    assert!(stats.ring.identity_holds() && every_record_accounted);
    Ok(())
}

/// The loss ranges, read from the ring's files after shutdown.
fn ring_losses(dir: &std::path::Path) -> ringship::Result<Vec<ringship::LossRange>> {
    let (ring, _) = Ring::open(dir, RingConfig::default().capacity(2 << 20))?;
    Ok(ring.losses())
}
