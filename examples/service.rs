//! Embedding ringship in a service that logs through it.
//!
//! A toy "service" handles requests on a few worker threads and logs
//! through a small `Telemetry` handle: structured lines appended to the
//! ring and shipped over HTTP (here to a receiver inside the example). It
//! exposes ringship's metrics in the Prometheus text format and shuts down
//! gracefully, keeping on disk whatever it could not ship.
//!
//! Run with `cargo run --example service`.

#[path = "common/http_receiver.rs"]
mod http_receiver;

use std::fmt::Write as _;
use std::time::Duration;

use http_receiver::HttpReceiver;
use ringship::{Endpoint, HttpConfig, HttpTransport, Ring, RingConfig, Shipper, SyncPolicy};

/// What the service's code sees: log a line, read the metrics, shut down.
#[derive(Clone)]
struct Telemetry {
    shipper: Shipper,
}

impl Telemetry {
    fn start(dir: &std::path::Path, collector: &str) -> ringship::Result<Self> {
        let config = RingConfig::default().capacity(16 << 20).sync(SyncPolicy::Interval(Duration::from_millis(200)));
        let (ring, report) = Ring::open(dir, config)?;
        if report.pending > 0 || !report.losses_discovered.is_empty() {
            eprintln!(
                "telemetry: {} records from the last run to ship; losses found: {:?}",
                report.pending, report.losses_discovered
            );
        }
        let shipper = Shipper::builder(ring)
            .endpoint(Endpoint::new(collector).header("Authorization", "Bearer example-token"))
            .transport(HttpTransport::factory(HttpConfig::default()))
            .stall_after(Duration::from_secs(5))
            .on_stall(|h| eprintln!("telemetry stalled: {} records pending, last error {:?}", h.pending, h.last_error))
            .on_loss(|ranges| eprintln!("telemetry lost records: {ranges:?}"))
            .start()?;
        Ok(Telemetry { shipper })
    }

    /// Logs one line; never blocks on the network.
    fn log(&self, level: &str, msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
        let mut line = format!("level={level} msg={msg:?}");
        for (k, v) in fields {
            let _ = write!(line, " {k}={v}");
        }
        if let Err(e) = self.shipper.append(line.as_bytes()) {
            eprintln!("telemetry: could not log ({e}): {line}");
        }
    }

    fn metrics(&self) -> String {
        self.shipper.stats().to_prometheus()
    }

    /// Any clone may shut telemetry down: the metrics thread may still
    /// hold one.
    fn shutdown(&self) -> ringship::Result<()> {
        let report = self.shipper.shutdown(Duration::from_secs(5))?;
        eprintln!(
            "telemetry: shut down, {} delivered during shutdown, {} kept on disk",
            report.delivered, report.left_pending
        );
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let collector = HttpReceiver::start();
    let tmp = tempfile::tempdir()?;
    let telemetry = Telemetry::start(&tmp.path().join("telemetry"), &collector.url())?;

    let workers: Vec<_> = (0..3)
        .map(|w| {
            let t = telemetry.clone();
            std::thread::spawn(move || {
                for req in 0..200u32 {
                    let latency_ms = 3 + (req * 7 + w * 11) % 40;
                    t.log("info", "request served", &[("worker", &w), ("req", &req), ("latency_ms", &latency_ms)]);
                    if latency_ms > 40 {
                        t.log("warn", "slow request", &[("worker", &w), ("req", &req)]);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker panicked");
    }
    std::thread::sleep(Duration::from_millis(200));
    println!("--- /metrics ---");
    for line in telemetry.metrics().lines().filter(|l| !l.starts_with('#')) {
        println!("{line}");
    }
    telemetry.shutdown()?;
    println!("--- the collector received {} log lines ---", collector.received());
    Ok(())
}
