//! Each front-end end to end through real SIGKILLs: a child process logs
//! at full speed through `tracing`, `log` or the OpenTelemetry SDK into a
//! ring shipped over HTTP to a loopback receiver, and is killed at random
//! moments and restarted. Every event whose macro (or `emit`) returned
//! must reach the receiver with its fields intact.
//!
//! The test binary plays both parts: with `RINGSHIP_FRONTEND_CHILD` set it
//! is the child.

mod common;
#[path = "../examples/common/http_receiver.rs"]
mod http_receiver;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_receiver::HttpReceiver;
use ringship::{BodyFormat, Endpoint, FrontEndStats, HttpConfig, HttpTransport, Ring, RingConfig, Shipper, SyncPolicy};
use serde_json::Value;

const CHILD_ENV: &str = "RINGSHIP_FRONTEND_CHILD";
/// Runs killed before the last, which logs `LAST_RUN_EVENTS` and drains.
const KILLED_RUNS: u64 = 4;
const LAST_RUN_EVENTS: u64 = 2000;

/// Event `n`'s string field: quotes, a tab, a newline, non-ASCII, and a
/// length that varies.
fn payload(n: u64) -> String {
    format!("p{n} \"q\"\t\u{e9}\n{}", "x".repeat((n % 50) as usize))
}

fn config() -> RingConfig {
    RingConfig::default().capacity(64 << 20).sync(SyncPolicy::Interval(Duration::from_millis(50)))
}

/// A front-end installed in the child: emits event `n`, and says what it
/// could not append.
type Emit = Box<dyn Fn(u64)>;

fn install(kind: &str, ring: &Arc<Ring>) -> (Emit, Box<dyn Fn() -> FrontEndStats>) {
    match kind {
        "tracing" => {
            use tracing_subscriber::layer::SubscriberExt;
            let layer = ringship::RingLayer::new(Arc::clone(ring));
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer.clone())).unwrap();
            (
                Box::new(|n| tracing::info!(n, payload = payload(n).as_str(), "event {n}")),
                Box::new(move || layer.stats()),
            )
        }
        "log" => {
            let logger = ringship::RingLogger::new(Arc::clone(ring));
            logger.clone().install(log::LevelFilter::Info).unwrap();
            (
                Box::new(|n| log::info!(n = n, payload = payload(n).as_str(); "event {n}")),
                Box::new(move || logger.stats()),
            )
        }
        "otel" => {
            use opentelemetry::logs::{LogRecord, Logger, LoggerProvider, Severity};
            let processor = ringship::RingLogProcessor::new(Arc::clone(ring));
            let provider =
                opentelemetry_sdk::logs::SdkLoggerProvider::builder().with_log_processor(processor.clone()).build();
            let logger = provider.logger("app");
            let emit = move |n: u64| {
                let mut r = logger.create_log_record();
                r.set_severity_number(Severity::Info);
                r.set_body(format!("event {n}").into());
                r.add_attribute("n", i64::try_from(n).expect("n fits"));
                r.add_attribute("payload", payload(n));
                logger.emit(r);
            };
            (Box::new(emit), Box::new(move || processor.stats()))
        }
        other => panic!("no front-end {other}"),
    }
}

/// The child: logs events `start..` until killed, reporting every 64th
/// (all before it returned too); or, with `count`, that many, then drains
/// the ring to the receiver.
fn child(kind: &str, dir: &str, url: &str, start: u64, count: Option<u64>) {
    let ring = Arc::new(Ring::open(dir, config()).unwrap().0);
    let shipper = Shipper::builder(Arc::clone(&ring))
        .endpoint(Endpoint::new(url))
        .transport(HttpTransport::factory(HttpConfig::default().format(BodyFormat::LengthPrefixed)))
        .max_batch_records(1000)
        .linger(Duration::from_millis(2))
        .backoff_initial(Duration::from_millis(10))
        .backoff_max(Duration::from_millis(100))
        .start()
        .unwrap();
    let (emit, stats) = install(kind, &ring);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let end = count.map_or(u64::MAX, |c| start + c);
    for n in start..end {
        emit(n);
        if n % 64 == 0 || n + 1 == end {
            writeln!(out, "E {n}").unwrap();
            out.flush().unwrap();
        }
    }
    assert_eq!(stats(), FrontEndStats::default(), "the front-end lost or cut nothing");
    let report = shipper.shutdown(Duration::from_secs(60)).unwrap();
    assert!(report.drained, "{report:?}");
    writeln!(out, "DRAINED").unwrap();
}

fn run(kind: &str, test: &str) {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        let a: Vec<&str> = args.split(' ').collect();
        return child(a[0], a[1], a[2], a[3].parse().unwrap(), a[4].parse().ok());
    }
    let t = common::TempRing::new();
    let rx = HttpReceiver::start();
    let exe = std::env::current_exe().unwrap();
    let spawn = |start: u64, count: Option<u64>| {
        let count = count.map_or("-".to_owned(), |c| c.to_string());
        Command::new(&exe)
            .args(["--exact", test, "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, format!("{kind} {} {} {start} {count}", t.dir.display(), rx.url()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    };
    // The last event each run reported returned, by run.
    let mut returned: Vec<(u64, u64)> = Vec::new();
    let mut rng = common::Rng(0x5eed ^ kind.len() as u64);
    for run in 0..=KILLED_RUNS {
        let start = run << 32;
        let last_run = run == KILLED_RUNS;
        let mut c = spawn(start, last_run.then_some(LAST_RUN_EVENTS));
        let reported = Arc::new(Mutex::new((None::<u64>, false)));
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = {
            let reported = Arc::clone(&reported);
            let stdout = c.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let line = line.rsplit(" ... ").next().unwrap_or_default().to_owned();
                    let mut r = reported.lock().unwrap();
                    if let Some(n) = line.strip_prefix("E ").and_then(|n| n.parse().ok()) {
                        r.0 = Some(n);
                        let _ = first_tx.send(());
                    } else if line == "DRAINED" {
                        r.1 = true;
                    }
                }
            })
        };
        if last_run {
            let status = c.wait().unwrap();
            assert!(status.success(), "the last run ended with {status}");
        } else {
            first_rx.recv_timeout(Duration::from_secs(60)).expect("the child logs");
            std::thread::sleep(Duration::from_millis(50 + rng.below(250)));
            c.kill().unwrap();
            c.wait().unwrap();
        }
        reader.join().unwrap();
        let (last, drained) = *reported.lock().unwrap();
        returned.push((start, last.expect("the child reported an event")));
        assert_eq!(drained, last_run);
    }

    // Every event that returned arrived, with its fields as logged.
    let inbox = rx.inbox.lock().unwrap();
    let mut by_n: HashMap<u64, Value> = HashMap::new();
    for (seq, p) in &inbox.records {
        let v: Value =
            serde_json::from_slice(p).unwrap_or_else(|e| panic!("seq {seq}: {e}: {}", String::from_utf8_lossy(p)));
        let n = v["fields"]["n"].as_u64().unwrap_or_else(|| panic!("seq {seq} has no n: {v}"));
        by_n.insert(n, v);
    }
    let mut checked = 0;
    for &(start, last) in &returned {
        for n in start..=last {
            let v = by_n.get(&n).unwrap_or_else(|| panic!("event {n} returned but never arrived"));
            assert_eq!(v["fields"]["payload"], payload(n), "event {n}'s field arrived altered");
            assert_eq!(v["message"], format!("event {n}"));
            assert_eq!(v["level"], "INFO");
            checked += 1;
        }
    }
    // Nothing was overwritten; a crash may only have skipped seqs it
    // never handed out.
    for g in &inbox.gaps {
        assert!(g.contains("cause=skipped"), "a gap other than a crash's: {g}");
    }
    eprintln!("{kind}: {checked} events checked across {KILLED_RUNS} SIGKILLs; per run {returned:?}");
    assert!(returned.iter().take(KILLED_RUNS as usize).all(|&(s, l)| l >= s + 64), "each killed run logged");
}

#[test]
fn tracing_events_survive_sigkill_and_arrive_intact() {
    run("tracing", "tracing_events_survive_sigkill_and_arrive_intact");
}

#[test]
fn log_records_survive_sigkill_and_arrive_intact() {
    run("log", "log_records_survive_sigkill_and_arrive_intact");
}

#[test]
fn opentelemetry_log_records_survive_sigkill_and_arrive_intact() {
    run("otel", "opentelemetry_log_records_survive_sigkill_and_arrive_intact");
}
