//! The incident, replayed with ringship, and told as a person would want
//! to read it.
//!
//! Endpoint A hangs every send until it is cancelled; endpoint B accepts.
//! Two producers append at full speed into a small ring while four threads
//! switch between A and B a thousand times each. Then the sender is left on
//! A long enough to stall, and finally pointed at B for good.
//!
//! Run with `cargo run --example incident`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringship::{
    Batch, Endpoint, MemoryReceiver, Ring, RingConfig, SendContext, SendError, Shipper, SyncPolicy, Transport,
};

/// A hangs until cancelled; everything else is delivered to the receiver.
struct Flaky {
    receiver: MemoryReceiver,
}

impl Transport for Flaky {
    fn send(&mut self, endpoint: &Endpoint, batch: &Batch, ctx: &SendContext) -> Result<(), SendError> {
        if endpoint.address() == "A" {
            return if ctx.wait_cancelled(ctx.remaining()) {
                Err(SendError::cancelled())
            } else {
                Err(SendError::timed_out())
            };
        }
        self.receiver.transport().send(endpoint, batch, ctx)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let config = RingConfig::default().capacity(64 << 10).sync(SyncPolicy::Never).max_loss_ranges(48);
    let (ring, _) = Ring::open(tmp.path().join("ring"), config)?;
    let receiver = MemoryReceiver::new();
    let r = receiver.clone();
    let stall_report: Arc<Mutex<Option<Duration>>> = Arc::default();
    let sr = Arc::clone(&stall_report);
    let shipper = Shipper::builder(ring)
        .endpoint(Endpoint::new("A"))
        .transport(move || Box::new(Flaky { receiver: r.clone() }) as Box<dyn Transport>)
        .max_batch_records(200)
        .linger(Duration::from_millis(1))
        .backoff_initial(Duration::from_millis(1))
        .backoff_max(Duration::from_millis(20))
        .send_timeout(Duration::from_millis(50))
        .stall_after(Duration::from_millis(250))
        .on_stall(move |h| {
            sr.lock().unwrap().get_or_insert(h.stalled_for.unwrap_or_default());
        })
        .start()?;
    println!("ringship incident replay: ring 64 KiB, 2 producers at full speed, 4 threads x 1000 switches A<->B");
    println!("  endpoint A hangs every send until cancelled; endpoint B accepts");

    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..2)
        .map(|p| {
            let (shipper, stop) = (shipper.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    shipper.append(format!("producer={p} n={n} event=login-audit").as_bytes()).unwrap();
                    n += 1;
                }
            })
        })
        .collect();
    let started = Instant::now();
    let switchers: Vec<_> = (0..4)
        .map(|s| {
            let shipper = shipper.clone();
            std::thread::spawn(move || {
                let mut slowest = Duration::ZERO;
                for i in 0..1000 {
                    let t = Instant::now();
                    shipper.switch_endpoint(Endpoint::new(if (i + s) % 2 == 0 { "A" } else { "B" })).unwrap();
                    slowest = slowest.max(t.elapsed());
                    std::thread::sleep(Duration::from_micros(300));
                }
                slowest
            })
        })
        .collect();
    let progress = |label: &str| {
        let s = shipper.stats();
        println!(
            "  [{:>5} ms] {label:<22} appended {:>7}  acked {:>6}  pending {:>5}  overwritten {:>7}  endpoint {}",
            started.elapsed().as_millis(),
            s.ring.appended,
            s.ring.acked,
            s.ring.pending,
            s.ring.overwritten,
            s.endpoint
        );
    };
    while switchers.iter().any(|h| !h.is_finished()) {
        progress("switch storm");
        std::thread::sleep(Duration::from_millis(250));
    }
    let slowest = switchers.into_iter().map(|h| h.join().unwrap()).max().unwrap_or_default();

    shipper.switch_endpoint(Endpoint::new("A")).unwrap();
    progress("left on A (hangs)");
    while stall_report.lock().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(10));
    }
    progress("stall reported");
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        p.join().unwrap();
    }
    shipper.switch_endpoint(Endpoint::new("B")).unwrap();
    while shipper.stats().ring.pending > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    progress("drained to B");

    let stall = stall_report.lock().unwrap().unwrap_or_default();
    report(&shipper, &receiver, slowest, stall);
    Ok(())
}

/// Prints what happened.
fn report(shipper: &Shipper, receiver: &MemoryReceiver, slowest: Duration, stall: Duration) {
    let stats = shipper.stats();
    let got = receiver.received("B");
    let distinct: HashSet<u64> = got.records.iter().map(|r| r.seq).collect();
    let noticed: u64 = got.gaps.iter().map(ringship::GapNotice::missing).sum();
    println!();
    println!("what happened");
    println!("  switches made           {} (slowest switch_endpoint call: {slowest:?})", stats.switches);
    println!("  stall detected after    {stall:?} without an acknowledgement (stall_after 250 ms)");
    println!("  stalls reported         {}", stats.stalls);
    println!("  worker restarts         {}", stats.worker_restarts);
    println!("  sends cancelled         {}", stats.cancelled_sends);
    println!("  records appended        {}", stats.ring.appended);
    println!(
        "  delivered to B          {} distinct, {} duplicates (identifiable by seq)",
        distinct.len(),
        got.records.len() - distinct.len()
    );
    println!(
        "  overwritten             {} records, {} bytes, in these ranges:",
        stats.ring.overwritten, stats.ring.overwritten_bytes
    );
    for l in shipper.ring().losses() {
        println!(
            "    seq {:>7}..={:<7} {:>6} records  {:>8} bytes  over {:?}  ({:?})",
            l.first_seq,
            l.last_seq,
            l.count,
            l.bytes,
            Duration::from_nanos(l.last_ts.saturating_sub(l.first_ts)),
            l.cause
        );
    }
    println!("  gap notices received    {} by B, announcing {noticed} missing seqs", got.gaps.len());
    println!("  accounting identity     {}", if stats.ring.identity_holds() { "holds" } else { "BROKEN" });
    assert!(stats.ring.identity_holds());
}
