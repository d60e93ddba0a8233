//! The front-ends (`tracing`, `log`, OpenTelemetry) against a real ring:
//! the records they write, what they do with bad input, and that they
//! never wait for an fsync or for room. Each test installs its subscriber
//! for its own thread only; `tests/frontend_threads.rs` holds the ones that
//! need a process-wide subscriber.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Hooks, TempRing, assert_identity, hook_file, small};
use ringship::{
    FullPolicy, Ring, RingConfig, RingLayer, RingLogProcessor, RingLogger, RingSpanProcessor, RingWriter, SyncPolicy,
};
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;

fn ring(t: &TempRing, config: RingConfig) -> Arc<Ring> {
    Arc::new(Ring::open(&t.dir, config).unwrap().0)
}

/// Every record in the ring, parsed.
fn records(ring: &Ring) -> Vec<Value> {
    let batch = ring.read(1, 100_000, usize::MAX).unwrap();
    batch
        .records
        .iter()
        .map(|r| {
            serde_json::from_slice(&r.payload)
                .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&r.payload)))
        })
        .collect()
}

fn with_layer(ring: &Arc<Ring>, f: impl FnOnce()) -> RingLayer {
    let layer = RingLayer::new(Arc::clone(ring));
    let subscriber = tracing_subscriber::registry().with(layer.clone());
    tracing::subscriber::with_default(subscriber, f);
    layer
}

#[derive(Debug)]
struct Oops;

impl std::fmt::Display for Oops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("disk on fire")
    }
}

impl std::error::Error for Oops {}

#[test]
fn a_tracing_event_is_one_json_record_with_its_fields_and_spans() {
    let t = TempRing::new();
    let ring = ring(&t, small(1 << 20));
    let before = std::time::SystemTime::now();
    with_layer(&ring, || {
        let outer = tracing::info_span!("request", id = 7u64, path = "/login");
        let _o = outer.enter();
        let inner = tracing::debug_span!("db", table = tracing::field::Empty);
        inner.record("table", "users");
        let _i = inner.enter();
        let err: &(dyn std::error::Error + 'static) = &Oops;
        tracing::warn!(
            target: "app::auth",
            rows = 3i64,
            big = u128::MAX,
            ok = true,
            ratio = 0.25,
            who = "alice",
            opt = ?Some(1),
            err,
            "login {} for {}",
            "failed",
            "alice"
        );
        tracing::error!("no fields");
    });
    let recs = records(&ring);
    assert_eq!(recs.len(), 2);
    let r = &recs[0];
    assert_eq!(r["level"], "WARN");
    assert_eq!(r["target"], "app::auth");
    assert_eq!(r["message"], "login failed for alice");
    let f = &r["fields"];
    assert_eq!((f["rows"].as_i64(), f["ok"].as_bool(), f["ratio"].as_f64()), (Some(3), Some(true), Some(0.25)));
    assert_eq!(
        (f["who"].as_str(), f["opt"].as_str(), f["err"].as_str()),
        (Some("alice"), Some("Some(1)"), Some("disk on fire"))
    );
    assert!(f.get("message").is_none());
    let raw = String::from_utf8(ring.read(1, 1, usize::MAX).unwrap().records[0].payload.to_vec()).unwrap();
    assert!(raw.contains(&format!("\"big\":{}", u128::MAX)), "{raw}");
    let spans = r["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(
        (&spans[0]["name"], &spans[0]["fields"]["id"], &spans[0]["fields"]["path"]),
        (&"request".into(), &7.into(), &"/login".into())
    );
    assert_eq!((&spans[1]["name"], &spans[1]["fields"]["table"]), (&"db".into(), &"users".into()));
    // The time is RFC 3339 UTC and now.
    let ts = r["ts"].as_str().unwrap();
    assert_eq!((ts.len(), &ts[10..11], &ts[29..]), (30, "T", "Z"), "{ts}");
    let year: i32 = ts[..4].parse().unwrap();
    let now_year = 1970 + (before.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 31_556_952) as i32;
    assert!((year - now_year).abs() <= 1, "{ts}");
    let r = &recs[1];
    assert_eq!((&r["level"], &r["message"]), (&"ERROR".into(), &"no fields".into()));
    assert!(r.get("fields").is_none() && r.get("truncated").is_none(), "{r}");
    assert_eq!(r["spans"].as_array().unwrap().len(), 2);
}

#[test]
fn control_characters_quotes_and_bytes_that_are_not_utf8_are_escaped() {
    let t = TempRing::new();
    let ring = ring(&t, small(1 << 20));
    let nasty = "tab\there \"quoted\" back\\slash bell\u{7} esc\u{1b}[31m del\u{7f} line\nbreak é 日本";
    with_layer(&ring, || {
        let raw: &[u8] = b"ok\xff\xfe\n";
        tracing::info!(nasty, raw, "{nasty}");
    });
    let r = &records(&ring)[0];
    assert_eq!(r["message"], nasty);
    assert_eq!(r["fields"]["nasty"], nasty);
    assert_eq!(r["fields"]["raw"], "ok\\xff\\xfe\n");
    let raw = ring.read(1, 1, usize::MAX).unwrap().records.remove(0).payload;
    assert!(raw.iter().all(|&b| b >= 0x20 && b != 0x7f), "no raw control byte in the record");
}

#[test]
fn an_event_past_max_record_len_is_cut_to_fit_says_so_and_is_counted() {
    let t = TempRing::new();
    let ring = ring(&t, small(1 << 20).max_record_len(1024));
    let huge = "x".repeat(100_000);
    let layer = with_layer(&ring, || {
        let s = tracing::info_span!("job", spec = huge.as_str()).entered();
        tracing::info!(a = huge.as_str(), b = 1, "{huge}");
        // Small, but in a span whose fields alone pass the limit.
        tracing::info!("in the span");
        drop(s);
        tracing::info!("small");
    });
    let recs = records(&ring);
    assert_eq!(recs.len(), 3);
    let raw = ring.read(1, 1, usize::MAX).unwrap().records.remove(0).payload;
    assert!(raw.len() <= 1024, "{}", raw.len());
    let r = &recs[0];
    assert_eq!(r["truncated"], true);
    let message = r["message"].as_str().unwrap();
    assert!(huge.starts_with(message));
    assert!(message.len() >= 256, "cut shorter than it had to be: {} bytes", message.len());
    assert_eq!(r["level"], "INFO");
    assert_eq!(
        (&recs[1]["message"], &recs[1]["truncated"], &recs[1]["spans"][0]["name"]),
        (&"in the span".into(), &true.into(), &"job".into())
    );
    assert!(recs[1]["spans"][0].get("fields").is_none());
    assert!(recs[2].get("truncated").is_none());
    assert_eq!(layer.stats().truncated, 2);
    assert_eq!((layer.stats().rejected, layer.stats().dropped), (0, 0));
}

#[test]
fn a_closed_ring_drops_events_counting_them_and_never_panics() {
    let t = TempRing::new();
    let ring = ring(&t, small(1 << 20));
    let layer = with_layer(&ring, || {
        tracing::info!("before");
        ring.close().unwrap();
        for i in 0..5 {
            tracing::info!(i, "after");
        }
    });
    let s = layer.stats();
    assert_eq!((s.dropped, s.rejected, s.truncated), (5, 0, 0));
    assert_eq!(ring.stats().appended, 1);
    // Nothing already appended is lost: it is there after a reopen.
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    assert_eq!(ring.read(1, 10, usize::MAX).unwrap().records.len(), 1);
}

#[test]
fn a_full_ring_under_block_refuses_at_once_and_counts_the_events_rejected() {
    let t = TempRing::new();
    let ring = ring(&t, small(64 << 10).full(FullPolicy::Block(Duration::from_secs(3600))));
    let (done_tx, done_rx) = mpsc::channel();
    let r2 = Arc::clone(&ring);
    let emitter = std::thread::spawn(move || {
        let layer = with_layer(&r2, || {
            for i in 0..2000u64 {
                tracing::info!(i, pad = "p".repeat(100).as_str(), "fill");
            }
        });
        done_tx.send(()).unwrap();
        layer
    });
    // A layer that waited for room would wait an hour: nothing acks.
    done_rx.recv_timeout(Duration::from_secs(60)).expect("the layer waited for room");
    let layer = emitter.join().unwrap();
    let (rs, fs) = (ring.stats(), layer.stats());
    assert!(fs.rejected > 1000, "{fs:?}");
    assert_eq!(rs.rejected, fs.rejected);
    assert_eq!(rs.appended, 2000);
    assert_eq!(rs.overwritten, 0);
    assert_identity(&rs);
}

#[test]
fn a_full_ring_under_reject_new_counts_the_events_rejected() {
    let t = TempRing::new();
    let ring = ring(&t, small(64 << 10).full(FullPolicy::RejectNew));
    let logger = RingLogger::new(Arc::clone(&ring));
    for i in 0..2000u64 {
        log::Log::log(&logger, &log::Record::builder().args(format_args!("fill {i}")).level(log::Level::Info).build());
    }
    let (rs, fs) = (ring.stats(), logger.stats());
    assert!(fs.rejected > 1000 && rs.rejected == fs.rejected, "{fs:?} {rs:?}");
    assert_identity(&rs);
}

/// Holds every fsync of the data file while the gate is shut.
#[derive(Clone)]
struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    fn set(&self, open: bool) {
        *self.0.0.lock().unwrap() = open;
        self.0.1.notify_all();
    }
}

impl Hooks for Gate {
    fn before_sync(&self) -> std::io::Result<()> {
        let mut open = self.0.0.lock().unwrap();
        while !*open {
            open = self.0.1.wait(open).unwrap();
        }
        Ok(())
    }
}

#[test]
fn under_sync_always_a_front_end_never_waits_for_the_fsync_and_the_record_still_becomes_durable() {
    let t = TempRing::new();
    let gate = Gate(Arc::new((Mutex::new(true), std::sync::Condvar::new())));
    let g = gate.clone();
    let config = hook_file(small(1 << 20).sync(SyncPolicy::Always), "ring.data", move || g.clone());
    let ring = ring(&t, config);
    gate.set(false);
    let (done_tx, done_rx) = mpsc::channel();
    let r2 = Arc::clone(&ring);
    std::thread::spawn(move || {
        with_layer(&r2, || tracing::info!("one"));
        let logger = RingLogger::new(Arc::clone(&r2));
        log::Log::log(&logger, &log::Record::builder().args(format_args!("two")).level(log::Level::Warn).build());
        done_tx.send(()).unwrap();
    });
    // Every fsync is held: a front-end that waited for one would not
    // return until the gate opens.
    done_rx.recv_timeout(Duration::from_secs(60)).expect("a front-end waited for an fsync");
    assert_eq!(ring.stats().appended, 2);
    assert!(ring.stats().durable_seq < 2);
    gate.set(true);
    common::eventually("the background thread syncs what the front-ends appended", || ring.stats().durable_seq >= 2);
}

#[test]
fn the_make_writer_appends_each_formatted_line_and_cuts_long_ones() {
    let t = TempRing::new();
    let ring = ring(&t, small(1 << 20).max_record_len(200));
    let writer = RingWriter::new(Arc::clone(&ring));
    let subscriber = tracing_subscriber::fmt().with_writer(writer.clone()).with_ansi(false).finish();
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(user = "alice", "logged in");
        tracing::info!("{}", "é".repeat(500));
    });
    let batch = ring.read(1, 10, usize::MAX).unwrap();
    assert_eq!(batch.records.len(), 2);
    let first = std::str::from_utf8(&batch.records[0].payload).unwrap();
    assert!(first.contains("INFO") && first.ends_with("logged in user=\"alice\""), "{first}");
    let second = std::str::from_utf8(&batch.records[1].payload).expect("cut on a character boundary");
    assert!(second.len() <= 200 && second.ends_with("…[truncated]"), "{second}");
    assert_eq!(writer.stats().truncated, 1);
}

#[test]
fn the_log_front_end_writes_level_target_message_and_key_values() {
    let t = TempRing::new();
    let ring = ring(&t, small(1 << 20));
    let logger = RingLogger::new(Arc::clone(&ring));
    let kvs: [(&str, log::kv::Value); 4] =
        [("n", 5u64.into()), ("neg", (-3i64).into()), ("who", "bob\n".into()), ("f", 1.5f64.into())];
    log::Log::log(
        &logger,
        &log::Record::builder()
            .args(format_args!("user {} in", "bob"))
            .level(log::Level::Error)
            .target("app::web")
            .key_values(&kvs)
            .build(),
    );
    let r = &records(&ring)[0];
    assert_eq!(
        (&r["level"], &r["target"], &r["message"]),
        (&"ERROR".into(), &"app::web".into(), &"user bob in".into())
    );
    let f = &r["fields"];
    assert_eq!(
        (f["n"].as_u64(), f["neg"].as_i64(), f["who"].as_str(), f["f"].as_f64()),
        (Some(5), Some(-3), Some("bob\n"), Some(1.5))
    );
}

#[test]
fn the_opentelemetry_log_processor_appends_body_attributes_and_trace_context() {
    use opentelemetry::logs::{AnyValue, LogRecord, Logger, LoggerProvider, Severity};
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let t = TempRing::new();
    let ring = ring(&t, small(1 << 20));
    let processor = RingLogProcessor::new(Arc::clone(&ring));
    let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder().with_log_processor(processor.clone()).build();
    let logger = provider.logger("checkout");
    let mut rec = logger.create_log_record();
    rec.set_severity_number(Severity::Warn);
    rec.set_severity_text("WARN");
    rec.set_body("card declined".into());
    rec.add_attribute("amount", 1250i64);
    rec.add_attribute("bytes", AnyValue::Bytes(Box::new(vec![b'a', 0xff])));
    let tid = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let sid = SpanId::from_hex("b7ad6b7169203331").unwrap();
    rec.set_trace_context(tid, sid, Some(TraceFlags::SAMPLED));
    logger.emit(rec);
    // A map body, and a record emitted in the SDK's suppression scope.
    let mut rec = logger.create_log_record();
    rec.set_body(AnyValue::Map(Box::new([("k".into(), AnyValue::Int(1))].into_iter().collect())));
    logger.emit(rec);
    {
        let _suppressed = opentelemetry::Context::enter_telemetry_suppressed_scope();
        logger.emit(logger.create_log_record());
    }
    let recs = records(&ring);
    assert_eq!(recs.len(), 2, "{recs:?}");
    let r = &recs[0];
    assert_eq!(
        (&r["level"], &r["target"], &r["message"]),
        (&"WARN".into(), &"checkout".into(), &"card declined".into())
    );
    assert_eq!((&r["fields"]["amount"], &r["fields"]["bytes"]), (&1250.into(), &"a\\xff".into()));
    assert_eq!(
        (&r["trace_id"], &r["span_id"]),
        (&"0af7651916cd43dd8448eb211c80319c".into(), &"b7ad6b7169203331".into())
    );
    assert_eq!(recs[1]["body"]["k"], 1);
    // The SDK drops suppressed records before processors; a processor
    // called directly in the scope leaves them out itself.
    {
        let _suppressed = opentelemetry::Context::enter_telemetry_suppressed_scope();
        let mut rec = logger.create_log_record();
        rec.set_body("inside".into());
        opentelemetry_sdk::logs::LogProcessor::emit(
            &processor,
            &mut rec,
            &opentelemetry::InstrumentationScope::builder("x").build(),
        );
    }
    assert_eq!(records(&ring).len(), 2);
    assert_eq!(processor.stats().suppressed, 1);
    // force_flush makes the records durable.
    opentelemetry_sdk::logs::LogProcessor::force_flush(&processor).unwrap();
    assert!(ring.stats().durable_seq >= 2);
    let _ = (SpanContext::empty_context(), TraceState::default());
}

#[test]
fn the_opentelemetry_span_processor_appends_each_ended_span() {
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{Span, Status, Tracer, TracerProvider};
    let t = TempRing::new();
    let ring = ring(&t, small(1 << 20));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(RingSpanProcessor::new(Arc::clone(&ring)))
        .build();
    let tracer = provider.tracer("payments");
    let mut span = tracer.start("charge");
    span.set_attribute(KeyValue::new("amount", 12));
    span.add_event("retry", vec![KeyValue::new("attempt", 2)]);
    span.set_status(Status::error("gateway timeout"));
    let tid = span.span_context().trace_id().to_string();
    span.end();
    let r = &records(&ring)[0];
    assert_eq!(
        (&r["type"], &r["name"], &r["target"], &r["kind"]),
        (&"span".into(), &"charge".into(), &"payments".into(), &"internal".into())
    );
    assert_eq!((&r["status"], &r["status_message"]), (&"error".into(), &"gateway timeout".into()));
    assert_eq!((&r["fields"]["amount"], &r["trace_id"]), (&12.into(), &tid.into()));
    assert_eq!((&r["events"][0]["name"], &r["events"][0]["fields"]["attempt"]), (&"retry".into(), &2.into()));
}

#[test]
fn a_tracing_event_inside_an_opentelemetry_span_carries_its_ids() {
    use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
    let t = TempRing::new();
    let ring = ring(&t, small(1 << 20));
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let tracer = provider.tracer("t");
    let ids = Arc::new(Mutex::new(None));
    let ids2 = Arc::clone(&ids);
    with_layer(&ring, || {
        tracer.in_span("op", |cx| {
            let sc = cx.span().span_context().clone();
            *ids2.lock().unwrap() = Some((sc.trace_id().to_string(), sc.span_id().to_string()));
            tracing::info!("inside");
        });
        tracing::info!("outside");
    });
    let recs = records(&ring);
    let (tid, sid) = ids.lock().unwrap().clone().unwrap();
    assert_eq!((recs[0]["trace_id"].as_str(), recs[0]["span_id"].as_str()), (Some(&*tid), Some(&*sid)));
    assert!(recs[1].get("trace_id").is_none());
}

/// A field whose `Debug` logs an event of its own, one whose `Debug`
/// fails, and one whose `Debug` panics: the host's own code, run by the
/// layer while it encodes.
struct Logs;

impl std::fmt::Debug for Logs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // tracing hands an event emitted while its subscriber handles
        // another on the same thread to no subscriber; `log` has no such
        // guard, so this one reaches the logger again while it encodes.
        tracing::info!("logged from Debug");
        let logger = LOGGER.with(|l| l.borrow().clone()).expect("the test's logger");
        log::Log::log(
            &logger,
            &log::Record::builder().args(format_args!("logged from Debug")).level(log::Level::Info).build(),
        );
        f.write_str("logs")
    }
}

thread_local! {
    static LOGGER: std::cell::RefCell<Option<RingLogger>> = const { std::cell::RefCell::new(None) };
}

struct Fails;

impl std::fmt::Debug for Fails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("half \"way")?;
        Err(std::fmt::Error)
    }
}

struct Panics;

impl std::fmt::Debug for Panics {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("Debug panicked")
    }
}

#[test]
fn field_values_that_log_fail_or_panic_while_encoded_leave_the_layer_working() {
    let t = TempRing::new();
    let ring = ring(&t, small(1 << 20));
    let logger = RingLogger::new(Arc::clone(&ring));
    LOGGER.with(|l| *l.borrow_mut() = Some(logger.clone()));
    let kvs: [(&str, log::kv::Value); 1] = [("v", log::kv::Value::from_debug(&Logs))];
    log::Log::log(
        &logger,
        &log::Record::builder().args(format_args!("outer")).level(log::Level::Info).key_values(&kvs).build(),
    );
    with_layer(&ring, || {
        tracing::info!(v = ?Logs, "outer");
        tracing::info!(v = ?Fails, "failing");
        let panicked = std::panic::catch_unwind(|| tracing::info!(v = ?Panics, "panicking"));
        assert!(panicked.is_err(), "the host's panic reaches the host");
        tracing::info!("after");
        // A span value whose `Debug` panics while recorded: the span's
        // fields are not left locked or poisoned.
        let span = tracing::info_span!("s", v = tracing::field::Empty);
        let _entered = span.enter();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            span.record("v", tracing::field::debug(Panics));
        }));
        assert!(panicked.is_err());
        tracing::info!("in the span after");
    });
    let msgs: Vec<String> = records(&ring).iter().map(|r| r["message"].as_str().unwrap().to_owned()).collect();
    // The record logged from Debug comes first: it is encoded in a
    // buffer of its own and appended before the outer one's encoding ends.
    assert_eq!(
        msgs,
        ["logged from Debug", "outer", "logged from Debug", "outer", "failing", "after", "in the span after"]
    );
    assert_eq!(records(&ring)[1]["fields"]["v"], "logs");
    assert_eq!(records(&ring)[4]["fields"]["v"], "half \"way");
}

#[test]
fn a_span_field_recorded_again_replaces_its_value() {
    let t = TempRing::new();
    let ring = ring(&t, small(1 << 20));
    with_layer(&ring, || {
        let span = tracing::info_span!("job", progress = 0u64, state = "new");
        for i in 1..=1000u64 {
            span.record("progress", i);
        }
        span.in_scope(|| tracing::info!("done"));
    });
    let raw = String::from_utf8(ring.read(1, 1, usize::MAX).unwrap().records.remove(0).payload.to_vec()).unwrap();
    assert_eq!(raw.matches("progress").count(), 1, "{raw}");
    let r = &records(&ring)[0];
    assert_eq!(
        (&r["spans"][0]["fields"]["progress"], &r["spans"][0]["fields"]["state"]),
        (&1000.into(), &"new".into())
    );
}

#[test]
fn a_record_with_trace_ids_and_too_many_attributes_is_cut_to_fit_not_refused() {
    use opentelemetry::logs::{LogRecord, Logger, LoggerProvider};
    use opentelemetry::trace::{SpanId, TraceId};
    let t = TempRing::new();
    let ring = ring(&t, small(1 << 20).max_record_len(1024));
    let processor = RingLogProcessor::new(Arc::clone(&ring));
    let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder().with_log_processor(processor.clone()).build();
    let logger = provider.logger("app");
    let mut rec = logger.create_log_record();
    rec.set_body("many attributes".into());
    for i in 0..50 {
        rec.add_attribute(format!("attr{i}"), "v".repeat(100));
    }
    rec.set_trace_context(TraceId::from(7), SpanId::from(9), None);
    logger.emit(rec);
    assert_eq!((ring.stats().rejected, processor.stats().truncated), (0, 1));
    let r = &records(&ring)[0];
    assert_eq!((&r["message"], &r["truncated"]), (&"many attributes".into(), &true.into()));
    assert_eq!(r["trace_id"], format!("{:032x}", 7));
    assert!(!r["fields"].as_object().unwrap().is_empty());
}
