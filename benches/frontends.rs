//! The front-ends against `tracing_appender::non_blocking`, in one run:
//!
//! 1. The host's cost per event: the same `tracing` event, encoded by the
//!    same code into the same JSON line, appended to a ring (the default
//!    `pwrite` path, and mapped writes) or handed to `non_blocking` writing
//!    a file. Targets: at most 1.5 x and 1.1 x `non_blocking`'s cost.
//! 2. What each loses when its sink stalls: events at a steady rate while
//!    `non_blocking`'s file writer, or the shipper's endpoint, stalls for
//!    10 s (`RINGSHIP_BENCH_STALL_SECS`).
//!
//! ```text
//! cargo bench --bench frontends
//! ```

#![allow(missing_docs, clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss)]

use std::io::{self, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringship::{
    Batch, Endpoint, MemoryReceiver, Ring, RingConfig, RingLayer, SendContext, SendError, Shipper, Transport,
};
use tracing_subscriber::layer::SubscriberExt;

const RUNS: usize = 5;

fn events() -> u64 {
    std::env::var("RINGSHIP_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000)
}

/// The event every row emits: a message and four fields, about 190 bytes
/// of JSON.
fn emit(i: u64) {
    tracing::info!(i, user = "alice", path = "/api/v1/items", status = 200u16, "request handled");
}

/// Time to emit `n` events through `layer` on this thread.
fn time_layer(layer: RingLayer, n: u64) -> Duration {
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        let t = Instant::now();
        for i in 0..n {
            emit(i);
        }
        t.elapsed()
    })
}

fn ring(dir: &std::path::Path, mapped: bool) -> Arc<Ring> {
    let _ = std::fs::remove_dir_all(dir);
    let config = RingConfig::default().capacity(256 << 20).mapped_writes(mapped);
    Arc::new(Ring::open(dir, config).expect("open").0)
}

/// A ring past its first lap, as a service's is after its first
/// `capacity` bytes: every append overwrites (and evicts) old records.
fn ring_in_steady_state(dir: &std::path::Path, mapped: bool) -> Arc<Ring> {
    let r = ring(dir, mapped);
    let chunk = vec![vec![b'x'; 4000]; 64];
    while r.stats().overwritten == 0 {
        r.append_batch(&chunk).expect("fill");
    }
    r
}

/// A layer encoding as `RingLayer` does, writing each line (with its
/// newline, in one write, as a `fmt` layer does) to `nb`.
fn appender_layer(dir: &std::path::Path, nb: tracing_appender::non_blocking::NonBlocking) -> (RingLayer, Arc<Ring>) {
    thread_local! {
        static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // The ring only lends the layer its record limit; nothing is appended.
    let unused = ring(&dir.join("unused"), false);
    let to = Arc::new(move |line: &[u8]| {
        LINE.with(|buf| {
            let mut buf = buf.borrow_mut();
            buf.clear();
            buf.extend_from_slice(line);
            buf.push(b'\n');
            let _ = nb.clone().write_all(&buf);
        });
    });
    (RingLayer::to_fn(Arc::clone(&unused), to), unused)
}

fn per_event(d: Duration, n: u64) -> f64 {
    d.as_nanos() as f64 / n as f64
}

fn cost_rows(dir: &std::path::Path) {
    let n = events();
    let mut best = [Duration::MAX; 6];
    for _ in 0..RUNS {
        // Taken in turns, so that the figures see the same moments.
        for (k, mapped, steady) in [(0, false, true), (1, true, true), (3, false, false), (4, true, false)] {
            let dir = dir.join(format!("ring{k}"));
            let r = if steady { ring_in_steady_state(&dir, mapped) } else { ring(&dir, mapped) };
            best[k] = best[k].min(time_layer(RingLayer::new(Arc::clone(&r)), n));
            r.close().expect("close");
        }
        // The floor of the pwrite path: the same line, one pwrite each,
        // into a preallocated file, with nothing else.
        let file = std::fs::File::create(dir.join("raw.data")).expect("raw file");
        file.set_len(256 << 20).expect("size");
        let unused = ring(&dir.join("unused"), false);
        let offset = std::sync::atomic::AtomicU64::new(0);
        let to = Arc::new(move |line: &[u8]| {
            use std::os::unix::fs::FileExt;
            let at = offset.fetch_add(line.len() as u64, std::sync::atomic::Ordering::Relaxed) % (255 << 20);
            file.write_at(line, at).expect("pwrite");
        });
        best[2] = best[2].min(time_layer(RingLayer::to_fn(unused, to), n));
        // To a file, as `tracing_appender::rolling` gives it.
        let file = tracing_appender::rolling::never(dir.join("appender"), "appender.log");
        let (nb, guard) = tracing_appender::non_blocking(file);
        let (layer, _unused) = appender_layer(&dir.join("appender"), nb);
        best[5] = best[5].min(time_layer(layer, n));
        drop(guard);
    }
    let base = per_event(best[5], n);
    println!("host cost per event, {n} events on one thread, best of {RUNS}:");
    println!("| writer | ns/event | vs non_blocking | target | met |");
    println!("|---|---|---|---|---|");
    println!("| tracing_appender::non_blocking (file) | {base:.0} | 1.00 | | |");
    for (name, d, target) in [
        ("RingLayer, pwrite", best[0], Some(1.5)),
        ("RingLayer, mapped writes", best[1], Some(1.1)),
        ("RingLayer, pwrite, a new ring's first lap", best[3], None),
        ("RingLayer, mapped writes, a new ring's first lap", best[4], None),
        ("the same line, one raw pwrite each (the pwrite path's floor)", best[2], None),
    ] {
        let ratio = per_event(d, n) / base;
        let (target, met) = match target {
            Some(t) => (format!("<= {t}"), if ratio <= t { "yes" } else { "NO" }),
            None => (String::new(), ""),
        };
        println!("| {name} | {:.0} | {ratio:.2} | {target} | {met} |", per_event(d, n));
    }
}

/// A writer that blocks until `until`, then writes nowhere.
struct StallingFile {
    until: Instant,
}

impl Write for StallingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        std::thread::sleep(self.until.saturating_duration_since(Instant::now()));
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An endpoint that refuses every batch (retryably) until `until`.
struct StallingEndpoint {
    until: Instant,
    inner: ringship::MemoryTransport,
}

impl Transport for StallingEndpoint {
    fn send(&mut self, endpoint: &Endpoint, batch: &Batch, ctx: &SendContext) -> Result<(), SendError> {
        if Instant::now() < self.until {
            return Err(SendError::retryable("stalled"));
        }
        self.inner.send(endpoint, batch, ctx)
    }
}

/// Emits `rate` events a second for `secs` seconds.
fn paced(rate: u64, secs: u64) -> u64 {
    let start = Instant::now();
    let mut sent = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            emit(sent);
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    sent
}

fn stall_rows(dir: &std::path::Path) {
    let secs: u64 = std::env::var("RINGSHIP_BENCH_STALL_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let rate = 50_000;

    let until = Instant::now() + Duration::from_secs(secs);
    let (nb, guard) = tracing_appender::non_blocking(StallingFile { until });
    let counter = nb.error_counter();
    let (layer, _unused) = appender_layer(dir, nb);
    let subscriber = tracing_subscriber::registry().with(layer);
    let sent = tracing::subscriber::with_default(subscriber, || paced(rate, secs));
    drop(guard);
    let appender_lost = counter.dropped_lines() as u64;

    println!();
    println!("the sink stalls for {secs} s while the host logs {rate} events/s:");
    println!("| writer | events | lost | lost and announced to the receiver |");
    println!("|---|---|---|---|");
    println!(
        "| tracing_appender::non_blocking (lossy, 128,000 lines) | {sent} | {appender_lost} | 0 (only its own counter) |"
    );
    for mib in [256, 16] {
        let (sent, lost, announced) = ring_through_stall(&dir.join(format!("stall{mib}")), mib, rate, secs);
        println!("| RingLayer, {mib} MiB ring | {sent} | {lost} | {announced} |");
    }
}

/// The ring's row: events at `rate` while the endpoint refuses for `secs`,
/// then a drain. Returns the events, those lost, and those the receiver
/// was told of.
fn ring_through_stall(dir: &std::path::Path, mib: u64, rate: u64, secs: u64) -> (u64, u64, u64) {
    let _ = std::fs::remove_dir_all(dir);
    let r = Arc::new(Ring::open(dir, RingConfig::default().capacity(mib << 20)).expect("open").0);
    let receiver = MemoryReceiver::counting();
    let until = Instant::now() + Duration::from_secs(secs);
    let rx = receiver.clone();
    let shipper = Shipper::builder(Arc::clone(&r))
        .endpoint(Endpoint::new("mem://stall"))
        .transport(move || StallingEndpoint { until, inner: rx.transport() })
        .backoff_max(Duration::from_millis(200))
        .start()
        .expect("start");
    let layer = RingLayer::new(Arc::clone(&r));
    let subscriber = tracing_subscriber::registry().with(layer.clone());
    let sent = tracing::subscriber::with_default(subscriber, || paced(rate, secs));
    let report = shipper.shutdown(Duration::from_secs(120)).expect("shutdown");
    let s = r.stats();
    let lost = s.overwritten + s.rejected + layer.stats().dropped;
    let got = receiver.received("mem://stall");
    let announced: u64 = got.gaps.iter().map(|g| g.missing() + g.rejected).sum();
    assert!(report.drained, "{report:?}");
    assert_eq!(got.record_count + lost, sent, "every event delivered or counted lost");
    assert_eq!(announced, lost, "every loss announced");
    (sent, lost, announced)
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let only = std::env::var("RINGSHIP_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only.contains("cost") {
        cost_rows(tmp.path());
    }
    if only.is_empty() || only.contains("stall") {
        stall_rows(tmp.path());
    }
}
