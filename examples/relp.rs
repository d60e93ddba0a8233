//! Shipping to rsyslog over RELP.
//!
//! rsyslog needs imrelp listening, for example in /etc/rsyslog.d/relp.conf:
//!
//! ```text
//! module(load="imrelp")
//! input(type="imrelp" port="2514" address="127.0.0.1")
//! ```
//!
//! Then: `cargo run --example relp [relp://127.0.0.1:2514]`. Each record
//! becomes an RFC 5424 message with `[ringship@32473 seq="N" ring=".."]`; a batch
//! counts as delivered only once rsyslog has acknowledged every message in
//! it. If rsyslog is not there, the example says so and the records stay in
//! the ring for the next run.

use std::time::{Duration, Instant};

use ringship::{Endpoint, Ring, RingConfig, Shipper, SyslogConfig, SyslogTransport};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args().nth(1).unwrap_or_else(|| "relp://127.0.0.1:2514".to_owned());
    let dir = std::env::temp_dir().join("ringship-relp-example");
    let (ring, report) = Ring::open(&dir, RingConfig::default().capacity(8 << 20))?;
    println!("ring {} ({} records pending from earlier runs)", dir.display(), report.pending);
    let shipper = Shipper::builder(ring)
        .endpoint(Endpoint::new(&endpoint))
        .transport(SyslogTransport::factory(SyslogConfig::default().app_name("relp-example"))?)
        .send_timeout(Duration::from_secs(2))
        .start()?;
    for i in 0..1000 {
        shipper.append(format!("event={i} user=alice action=login result=ok").as_bytes())?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while shipper.stats().ring.pending > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let health = shipper.health();
    let report = shipper.shutdown(Duration::from_secs(2))?;
    println!("endpoint {endpoint}: health {:?}", health.state);
    if let Some(e) = health.last_error {
        println!("last error: {e}");
    }
    println!(
        "delivered {} records (acknowledged by rsyslog), {} left in the ring for the next run",
        report.delivered, report.left_pending
    );
    Ok(())
}
