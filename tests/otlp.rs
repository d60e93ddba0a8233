//! The OTLP transport against a receiver that decodes every request with
//! the official OTLP classes (Python's `opentelemetry-proto`, in
//! `tests/otlp_receiver.py`, started here on loopback): both encodings,
//! gzip, gap records, the statuses OTLP says to retry and not, partial
//! success, answers that are not OTLP, a receiver killed mid-stream.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TempRing, assert_identity, eventually, payload, small};
use ringship::{Endpoint, Error, OtlpConfig, OtlpEncoding, OtlpTransport, Ring, Shipper, ShipperBuilder};
use serde_json::Value;

/// The Python receiver, killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
}

impl Receiver {
    fn start(port: u16) -> Self {
        Self::start_logging(port, None)
    }

    /// A receiver that also appends the seqs it takes to `log`.
    fn start_logging(port: u16, log: Option<&std::path::Path>) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .args(log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port = line.strip_prefix("PORT ").and_then(|p| p.trim().parse().ok()).unwrap_or_else(|| {
            let status = child.wait();
            panic!(
                "the OTLP test receiver did not start ({status:?}): it needs `pip install opentelemetry-proto` \
                 (.ci/run installs it)"
            )
        });
        Receiver { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/logs", self.port)
    }

    fn dump(&self) -> Value {
        let body = ureq::get(&format!("http://127.0.0.1:{}/dump", self.port))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        serde_json::from_str(&body).unwrap()
    }

    /// Scripted answers, in order: (status, Retry-After, rejected, garbage).
    fn script(&self, steps: &[(u16, Option<u64>, Option<u64>, bool)]) {
        let body = serde_json::to_string(steps).unwrap();
        ureq::post(&format!("http://127.0.0.1:{}/script", self.port)).send(body).unwrap();
    }

    /// Scripted answers to `/v1/traces`, as [`script`](Self::script).
    fn script_traces(&self, steps: &[(u16, Option<u64>, Option<u64>, bool)]) {
        let body = serde_json::to_string(steps).unwrap();
        ureq::post(&format!("http://127.0.0.1:{}/script/traces", self.port)).send(body).unwrap();
    }

    /// Distinct seqs received, sorted.
    fn seqs(&self) -> Vec<u64> {
        let mut seqs: Vec<u64> =
            self.dump()["records"].as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn builder(ring: Ring, url: &str, config: OtlpConfig) -> ShipperBuilder {
    Shipper::builder(ring)
        .endpoint(Endpoint::new(url))
        .transport(OtlpTransport::factory(config))
        .max_batch_records(100)
        .linger(Duration::from_millis(1))
        .backoff_initial(Duration::from_millis(10))
        .backoff_max(Duration::from_millis(200))
        .send_timeout(Duration::from_secs(5))
}

#[test]
fn records_and_gaps_arrive_as_the_official_classes_decode_them_in_both_encodings() {
    for (encoding, gzip) in [(OtlpEncoding::Protobuf, true), (OtlpEncoding::Json, false), (OtlpEncoding::Json, true)] {
        let t = TempRing::new();
        let rx = Receiver::start(0);
        let ring = Ring::open(&t.dir, small(64 << 10)).unwrap().0;
        // Overwrite some before the shipper starts: its first batch opens
        // with a gap record.
        for i in 1..=1000 {
            ring.append(&payload(i, 100)).unwrap();
        }
        let (ring_id, lost) = (ring.id(), ring.stats().overwritten);
        assert!(lost > 0);
        let config = OtlpConfig::default().encoding(encoding).gzip(gzip).resource("service.name", "checkout");
        let shipper = builder(ring, &rx.url(), config).start().unwrap();
        eventually("delivered", || shipper.stats().ring.pending == 0);
        let d = rx.dump();
        assert_eq!(d["errors"], serde_json::json!([]), "{encoding:?}");
        let records = d["records"].as_array().unwrap();
        assert_eq!(rx.seqs(), (lost + 1..=1000).collect::<Vec<_>>(), "{encoding:?}");
        for r in records {
            let seq = r["seq"].as_u64().unwrap();
            assert_eq!(r["body"].as_str().unwrap().as_bytes(), &payload(seq, 100)[..], "{encoding:?} seq {seq}");
            assert_eq!(r["ring"], format!("{ring_id:016x}"));
            assert_eq!(r["scope"], "ringship");
        }
        assert!(d["resources"].as_array().unwrap().iter().all(|r| r["service.name"] == "checkout"));
        let gaps = d["gaps"].as_array().unwrap();
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        let g = &gaps[0];
        assert_eq!((g["ringship.gap.first_seq"].as_u64(), g["ringship.gap.last_seq"].as_u64()), (Some(1), Some(lost)));
        assert_eq!((g["ringship.gap.cause"].as_str(), g["severity"].as_u64()), (Some("overwritten"), Some(13)));
        shipper.shutdown(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn the_statuses_otlp_calls_retryable_are_retried_honouring_retry_after() {
    let t = TempRing::new();
    let rx = Receiver::start(0);
    rx.script(&[
        (503, Some(1), None, false),
        (429, None, None, false),
        (502, None, None, false),
        (504, None, None, false),
    ]);
    let shipper =
        builder(Ring::open(&t.dir, small(1 << 20)).unwrap().0, &rx.url(), OtlpConfig::default()).start().unwrap();
    let started = Instant::now();
    for i in 1..=10 {
        shipper.append(&payload(i, 20)).unwrap();
    }
    eventually("delivered", || shipper.stats().ring.acked == 10);
    assert!(started.elapsed() >= Duration::from_millis(950), "Retry-After: 1 honoured: {:?}", started.elapsed());
    let s = shipper.stats();
    assert_eq!((s.permanent_failures, s.retries >= 4), (0, true), "{s:?}");
    assert_eq!(rx.seqs(), (1..=10).collect::<Vec<_>>());
}

#[test]
fn other_statuses_are_permanent_and_keep_the_records() {
    let t = TempRing::new();
    let rx = Receiver::start(0);
    rx.script(&[(400, None, None, false), (500, None, None, false), (404, None, None, false)]);
    let shipper =
        builder(Ring::open(&t.dir, small(1 << 20)).unwrap().0, &rx.url(), OtlpConfig::default()).start().unwrap();
    shipper.append(&payload(1, 20)).unwrap();
    eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
    let error = shipper.health().last_error.unwrap();
    assert!(error.contains("HTTP 400") && error.contains("not to retry"), "{error}");
    assert_eq!(shipper.stats().ring.acked, 0, "nothing acked on a refusal");
    eventually("delivered once the receiver takes it", || shipper.stats().ring.acked == 1);
    assert_eq!(shipper.stats().permanent_failures, 3);
}

#[test]
fn partial_success_counts_the_rejected_records_refused() {
    let t = TempRing::new();
    let rx = Receiver::start(0);
    rx.script(&[(200, None, Some(2), false)]);
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    for i in 1..=5 {
        ring.append(&payload(i, 20)).unwrap();
    }
    let shipper = builder(ring, &rx.url(), OtlpConfig::default().encoding(OtlpEncoding::Json)).start().unwrap();
    eventually("settled", || shipper.stats().ring.pending == 0);
    let s = shipper.stats().ring;
    assert_eq!((s.acked, s.refused), (3, 2), "{s:?}");
    assert_identity(&s);
    // The next batch's gap record tells the receiver.
    shipper.append(&payload(6, 20)).unwrap();
    eventually("acked", || shipper.stats().ring.acked == 4);
    let gaps = rx.dump()["gaps"].clone();
    assert_eq!(gaps[0]["ringship.gap.refused"], 2, "{gaps}");
}

#[test]
fn answers_that_are_not_otlp_or_reject_more_than_was_sent_acknowledge_nothing() {
    let t = TempRing::new();
    let rx = Receiver::start(0);
    rx.script(&[(200, None, None, true), (200, None, Some(9_999), false)]);
    let shipper =
        builder(Ring::open(&t.dir, small(1 << 20)).unwrap().0, &rx.url(), OtlpConfig::default()).start().unwrap();
    shipper.append(&payload(1, 20)).unwrap();
    eventually("two permanent failures", || shipper.stats().permanent_failures >= 2);
    eventually("then delivered", || shipper.stats().ring.acked == 1);
    let s = shipper.stats().ring;
    assert_eq!(s.refused, 0, "{s:?}");
    let requests = rx.dump()["requests"].as_u64().unwrap();
    assert_eq!(requests, 3, "sent again after each answer it could not trust");
}

#[test]
fn a_receiver_killed_and_restarted_mid_stream_loses_nothing() {
    let t = TempRing::new();
    let log = t.dir.with_extension("taken");
    let mut rx = Receiver::start_logging(0, Some(&log));
    let port = rx.port;
    let shipper = builder(Ring::open(&t.dir, small(4 << 20)).unwrap().0, &rx.url(), OtlpConfig::default().gzip(true))
        .start()
        .unwrap();
    for i in 1..=3000 {
        shipper.append(&payload(i, 60)).unwrap();
        if i == 1000 {
            eventually("some delivered", || shipper.stats().ring.acked >= 500);
            drop(rx);
            rx = Receiver::start_on_again(port, &log);
        }
    }
    eventually("all delivered", || shipper.stats().ring.acked == 3000);
    drop(rx);
    let mut seqs: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .flat_map(|l| serde_json::from_str::<Vec<u64>>(l).unwrap())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let missing: Vec<u64> = (1..=3000).filter(|s| seqs.binary_search(s).is_err()).collect();
    assert!(missing.is_empty(), "acked but never taken: {missing:?}");
    assert_identity(&shipper.stats().ring);
}

impl Receiver {
    /// A receiver on `port` again, once the old one's socket is free.
    fn start_on_again(port: u16, log: &std::path::Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() || Instant::now() > deadline {
                return Receiver::start_logging(port, Some(log));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn bad_endpoints_and_settings_are_refused_at_start() {
    let t = TempRing::new();
    let ring = || Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    for url in ["ftp://collector/v1/logs", "collector:4318", "http:///v1/logs"] {
        match builder(ring(), url, OtlpConfig::default()).start() {
            Err(Error::Config(msg)) => assert!(msg.contains("HTTP URL"), "{msg}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    match builder(ring(), "http://127.0.0.1:1/v1/logs", OtlpConfig::default().resource(" ", "x")).start() {
        Err(Error::Config(msg)) => assert!(msg.contains("empty key"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

/// A collector that rejects every record of a request, its gap record too:
/// the next gap record names the gap's seqs again, with the batch's.
#[test]
fn a_gap_record_rejected_with_the_whole_batch_is_announced_again() {
    let t = TempRing::new();
    let rx = Receiver::start(0);
    let ring = Ring::open(&t.dir, small(64 << 10)).unwrap().0;
    for i in 1..=1000 {
        ring.append(&payload(i, 100)).unwrap();
    }
    let lost = ring.stats().overwritten;
    // The first request holds the gap record and 10 records: all 11
    // rejected.
    rx.script(&[(200, None, Some(11), false)]);
    let shipper = builder(ring, &rx.url(), OtlpConfig::default()).max_batch_records(10).start().unwrap();
    eventually("delivered", || shipper.stats().ring.pending == 0);
    let s = shipper.stats().ring;
    assert_eq!(s.refused, 10, "{s:?}");
    assert_identity(&s);
    let gaps = rx.dump()["gaps"].as_array().unwrap().clone();
    assert_eq!(gaps.len(), 2, "{gaps:?}");
    for g in &gaps {
        assert_eq!(g["ringship.gap.first_seq"].as_u64(), Some(1), "{g}");
    }
    // The second names the gap and the ten refused records.
    assert_eq!(gaps[1]["ringship.gap.last_seq"].as_u64(), Some(lost + 10), "{gaps:?}");
}

/// Ends `n` spans of the OpenTelemetry SDK into `ring`: each a child of
/// one root (ended last), with an attribute, an event, a link to the
/// root and an error status.
fn sdk_spans(ring: &std::sync::Arc<Ring>, n: usize) -> String {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{Link, Span, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(ringship::RingSpanProcessor::new(std::sync::Arc::clone(ring)))
        .build();
    let tracer = provider.tracer("payments");
    let root = tracer.span_builder("request").with_kind(SpanKind::Server).start(&tracer);
    let root_cx = root.span_context().clone();
    let cx = opentelemetry::Context::current().with_remote_span_context(root_cx.clone());
    for i in 0..n {
        let mut child = tracer
            .span_builder(format!("charge {i}"))
            .with_kind(SpanKind::Client)
            .with_links(vec![Link::with_context(root_cx.clone())])
            .start_with_context(&tracer, &cx);
        child.set_attribute(KeyValue::new("i", i64::try_from(i).unwrap()));
        child.add_event("retry", vec![KeyValue::new("attempt", 2)]);
        child.set_status(Status::error("gateway timeout"));
        child.end();
    }
    let mut root = root;
    root.end();
    root_cx.trace_id().to_string()
}

/// Spans of the OpenTelemetry SDK, through `RingSpanProcessor` and the
/// ring, arrive at the collector's traces URL as spans, every part in
/// place, in both encodings; the ring's other records arrive as logs.
#[test]
fn spans_of_the_opentelemetry_sdk_arrive_as_traces_beside_the_logs() {
    for (encoding, gzip) in [(OtlpEncoding::Protobuf, false), (OtlpEncoding::Json, true)] {
        let t = TempRing::new();
        let rx = Receiver::start(0);
        let ring = std::sync::Arc::new(Ring::open(&t.dir, small(1 << 20)).unwrap().0);
        ring.append(b"before").unwrap();
        let trace_id = sdk_spans(&ring, 30);
        ring.append(b"after").unwrap();
        let ring_id = ring.id();
        let config = OtlpConfig::default().encoding(encoding).gzip(gzip).resource("service.name", "checkout");
        let ring = std::sync::Arc::into_inner(ring).unwrap();
        let shipper = builder(ring, &rx.url(), config).max_batch_records(7).start().unwrap();
        eventually("delivered", || shipper.stats().ring.pending == 0);
        let d = rx.dump();
        assert_eq!(d["errors"], serde_json::json!([]), "{encoding:?}");
        assert_eq!(rx.seqs(), vec![1, 33], "{encoding:?}: the log records");
        let spans = d["spans"].as_array().unwrap();
        let mut seqs: Vec<u64> = spans.iter().map(|s| s["seq"].as_u64().unwrap()).collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (2..=32).collect::<Vec<_>>(), "{encoding:?}: each span once");
        let root = spans.iter().find(|s| s["name"] == "request").unwrap();
        assert_eq!((&root["kind"], &root["parent_span_id"]), (&2.into(), &"".into()), "{root}");
        for s in spans.iter().filter(|s| s["name"] != "request") {
            assert_eq!(s["trace_id"], trace_id, "{s}");
            assert_eq!(s["parent_span_id"], root["span_id"], "{s}");
            assert_eq!(
                (&s["scope"], &s["kind"], &s["ring"]),
                (&"payments".into(), &3.into(), &format!("{ring_id:016x}").into())
            );
            assert_eq!(s["status"], serde_json::json!([2, "gateway timeout"]), "{s}");
            assert_eq!(s["events"][0][0], "retry");
            assert_eq!(s["events"][0][2]["attempt"], 2);
            assert_eq!(s["links"][0], serde_json::json!([trace_id, root["span_id"]]));
            let (start, end) = (s["start"].as_u64().unwrap(), s["end"].as_u64().unwrap());
            assert!(start > 1_700_000_000_000_000_000 && start <= end, "{s}");
            let i = s["attributes"]["i"].as_u64().unwrap();
            assert_eq!(s["name"], format!("charge {i}"));
        }
        assert!(d["resources"].as_array().unwrap().iter().all(|r| r["service.name"] == "checkout"));
        shipper.shutdown(Duration::from_secs(5)).unwrap();
    }
}

/// A batch whose log records the collector took while its spans were
/// refused for a while (503, then a 200 that is not OTLP): sent again,
/// only its spans go, so the logs arrive once; rejected spans are refused.
#[test]
fn a_traces_failure_sends_only_the_spans_again_and_rejected_spans_are_refused() {
    let t = TempRing::new();
    let rx = Receiver::start(0);
    let ring = std::sync::Arc::new(Ring::open(&t.dir, small(1 << 20)).unwrap().0);
    for round in 0..3u8 {
        ring.append(&[b'a' + round; 10]).unwrap();
        sdk_spans(&ring, 2);
    }
    rx.script_traces(&[(503, Some(0), None, false), (200, None, None, true), (200, None, Some(2), false)]);
    let ring = std::sync::Arc::into_inner(ring).unwrap();
    let shipper = builder(ring, &rx.url(), OtlpConfig::default()).start().unwrap();
    eventually("delivered", || shipper.stats().ring.pending == 0);
    let d = rx.dump();
    assert_eq!(d["errors"], serde_json::json!([]));
    let logs: Vec<u64> = d["records"].as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(logs, vec![1, 5, 9], "each log record once");
    assert_eq!(d["requests"], 1, "one logs request");
    assert_eq!(d["trace_requests"], 3, "the spans three times");
    let s = shipper.stats().ring;
    assert_eq!(s.refused, 2, "{s:?}");
    assert_identity(&s);
    shipper.shutdown(Duration::from_secs(5)).unwrap();
}

/// With spans as traces, the endpoint must be a logs URL (the traces URL
/// is made from it); with them off, any path goes.
#[test]
fn spans_as_traces_need_a_logs_url() {
    let t = TempRing::new();
    let ring = || Ring::open(&t.dir, small(64 << 10)).unwrap().0;
    match builder(ring(), "http://127.0.0.1:1/ingest", OtlpConfig::default()).start() {
        Err(Error::Config(m)) => assert!(m.contains("/v1/logs") && m.contains("traces(false)"), "{m}"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let shipper = builder(ring(), "http://127.0.0.1:1/ingest", OtlpConfig::default().traces(false)).start().unwrap();
    shipper.shutdown(Duration::from_secs(1)).unwrap();
    let shipper = builder(ring(), "http://127.0.0.1:1/otlp/v1/logs?tenant=a", OtlpConfig::default()).start().unwrap();
    shipper.shutdown(Duration::from_secs(1)).unwrap();
}
