//! A service logging through `tracing`, with ringship as its sink: every
//! event whose macro returned is in the ring (it survives `kill -9`) and
//! is shipped as one JSON line to an HTTP receiver on loopback, while a
//! `fmt` layer still prints to the terminal.
//!
//! Run with `cargo run --example tracing` (needs the `tracing` feature,
//! which the examples have).

#[path = "common/http_receiver.rs"]
mod http_receiver;

use std::sync::Arc;
use std::time::Duration;

use http_receiver::HttpReceiver;
use ringship::{Endpoint, HttpConfig, HttpTransport, Ring, RingConfig, RingLayer, Shipper};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let receiver = HttpReceiver::start();

    // Mapped writes: each event costs a copy into the page cache rather
    // than a system call (BENCHMARKS.md, "Front-ends").
    let (ring, _) = Ring::open(tmp.path().join("ring"), RingConfig::default().mapped_writes(true))?;
    let ring = Arc::new(ring);
    let shipper = Shipper::builder(Arc::clone(&ring))
        .endpoint(Endpoint::new(receiver.url()))
        // Each record is JSON already: sent as is, not as a string.
        .transport(HttpTransport::factory(HttpConfig::default().embed_json(true)))
        .linger(Duration::from_millis(5))
        .start()?;

    let layer = RingLayer::new(Arc::clone(&ring));
    tracing_subscriber::registry()
        .with(layer.clone())
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .try_init()?;

    for request in 0..3u64 {
        let span = tracing::info_span!("request", id = request, path = "/checkout");
        let _entered = span.enter();
        tracing::info!(items = 2 + request, "cart priced");
        if request == 2 {
            tracing::warn!(card = "visa", "card declined");
        }
    }

    let report = shipper.shutdown(Duration::from_secs(10))?;
    println!("\nshipped (drained: {}):", report.drained);
    let inbox = receiver.inbox.lock().expect("inbox");
    for (seq, line) in &inbox.records {
        println!("  seq {seq}: {}", String::from_utf8_lossy(line));
    }
    let stats = layer.stats();
    println!("front-end: {} cut to fit, {} rejected, {} dropped", stats.truncated, stats.rejected, stats.dropped);
    assert_eq!(inbox.records.len(), 4, "every event arrived");
    assert_eq!(inbox.embedded, 4, "each as JSON, not as a string");
    Ok(())
}
