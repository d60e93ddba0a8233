//! The OpenTelemetry SDK front-end: a log processor and a span processor
//! appending each record to the ring, which so becomes the SDK's
//! persistent export queue, and the shipper its exporter.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::logs::AnyValue;
use opentelemetry::trace::{SpanId, SpanKind, Status, TraceId};
use opentelemetry::{Array, Context, InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};

use super::json::Json;
use super::{FrontEndStats, Sink};
use crate::Ring;

/// An OpenTelemetry SDK [`LogProcessor`] that appends each log record to a
/// ring as one JSON record (docs/FRONTENDS.md), synchronously, on the
/// emitting thread: the ring is the SDK's persistent export queue and the
/// [`Shipper`](crate::Shipper) its exporter. Where the SDK's batch
/// processor drops records on a full queue or after failed exports, a
/// record in the ring is shipped, or counted lost with its range.
///
/// It never waits for an fsync or for room, as
/// [`RingLayer`](crate::RingLayer); records emitted in the SDK's
/// suppression scope, and on ringship's own threads (which run in it), are
/// left out. `force_flush` makes what was appended durable (one fsync).
///
/// ```
/// # fn main() -> Result<(), ringship::Error> {
/// # let tmp = tempfile::tempdir().unwrap();
/// use std::sync::Arc;
/// use opentelemetry::logs::{LogRecord, Logger, LoggerProvider, Severity};
///
/// let (ring, _) = ringship::Ring::open(tmp.path().join("ring"), ringship::RingConfig::default())?;
/// let ring = Arc::new(ring);
/// let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder()
///     .with_log_processor(ringship::RingLogProcessor::new(Arc::clone(&ring)))
///     .build();
/// let logger = provider.logger("checkout");
/// let mut record = logger.create_log_record();
/// record.set_severity_number(Severity::Warn);
/// record.set_body("card declined".into());
/// logger.emit(record);
/// assert_eq!(ring.stats().appended, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RingLogProcessor {
    sink: Sink,
}

impl RingLogProcessor {
    /// A processor appending to `ring`.
    pub fn new(ring: Arc<Ring>) -> Self {
        RingLogProcessor { sink: Sink::new(ring) }
    }

    /// Records cut to fit and records lost so far.
    pub fn stats(&self) -> FrontEndStats {
        self.sink.stats()
    }
}

/// An OpenTelemetry SDK [`SpanProcessor`] that appends each ended span to
/// a ring as one JSON record (docs/FRONTENDS.md), as
/// [`RingLogProcessor`] does log records.
#[derive(Clone, Debug)]
pub struct RingSpanProcessor {
    sink: Sink,
}

impl RingSpanProcessor {
    /// A processor appending to `ring`.
    pub fn new(ring: Arc<Ring>) -> Self {
        RingSpanProcessor { sink: Sink::new(ring) }
    }

    /// Spans cut to fit and spans lost so far.
    pub fn stats(&self) -> FrontEndStats {
        self.sink.stats()
    }
}

/// Whether a record emitted now is to be left out.
fn suppressed(sink: &Sink) -> bool {
    // The SDK checks its scope before calling processors; a processor
    // called directly checks it here.
    if Context::is_current_telemetry_suppressed() {
        return sink.suppress();
    }
    sink.suppressed()
}

/// `force_flush`: what was appended reaches the disk.
fn flush(sink: &Sink) -> OTelSdkResult {
    sink.ring().sync().map(|_| ()).map_err(|e| OTelSdkError::InternalFailure(e.to_string()))
}

impl LogProcessor for RingLogProcessor {
    fn emit(&self, data: &mut SdkLogRecord, scope: &InstrumentationScope) {
        if suppressed(&self.sink) {
            return;
        }
        let now = crate::ring::now_nanos();
        let data = &*data;
        self.sink.emit(&|j| {
            j.key("ts");
            j.timestamp(data.timestamp().or(data.observed_timestamp()).map_or(now, nanos));
            if let Some(level) = data.severity_text().or(data.severity_number().map(|s| s.name())) {
                j.key("level");
                j.str(level);
            }
            j.key("target");
            j.str(data.target().map_or(scope.name(), |t| t.as_ref()));
            if let Some(name) = data.event_name() {
                j.key("event_name");
                j.str(name);
            }
            if let Some(tc) = data.trace_context() {
                ids(j, tc.trace_id, tc.span_id);
            }
            match data.body() {
                Some(AnyValue::String(s)) => {
                    j.key("message");
                    j.str(s.as_str());
                }
                Some(body) => {
                    let m = j.mark();
                    j.key("body");
                    any_value(j, body);
                    j.keep(m);
                }
                None => {}
            }
            let m = j.mark();
            j.key("fields");
            j.open_object();
            for (k, v) in data.attributes_iter() {
                let m = j.mark();
                j.key(k.as_str());
                any_value(j, v);
                j.keep(m);
            }
            j.close_or_rollback(m);
            j.finish();
        });
    }

    fn force_flush(&self) -> OTelSdkResult {
        flush(&self.sink)
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        // The ring belongs to its owner (a shipper drains and closes it).
        Ok(())
    }
}

impl SpanProcessor for RingSpanProcessor {
    fn on_start(&self, _: &mut Span, _: &Context) {}

    fn on_end(&self, span: SpanData) {
        if suppressed(&self.sink) {
            return;
        }
        self.sink.emit(&|j| {
            j.key("type");
            j.str("span");
            j.key("ts");
            j.timestamp(nanos(span.start_time));
            j.key("end");
            j.timestamp(nanos(span.end_time));
            j.key("name");
            j.str(&span.name);
            j.key("target");
            j.str(span.instrumentation_scope.name());
            j.key("kind");
            j.str(match span.span_kind {
                SpanKind::Client => "client",
                SpanKind::Server => "server",
                SpanKind::Producer => "producer",
                SpanKind::Consumer => "consumer",
                SpanKind::Internal => "internal",
            });
            j.key("status");
            match &span.status {
                Status::Unset => j.str("unset"),
                Status::Ok => j.str("ok"),
                Status::Error { description } => {
                    j.str("error");
                    if !description.is_empty() {
                        j.key("status_message");
                        j.str(description);
                    }
                }
            }
            ids(j, span.span_context.trace_id(), span.span_context.span_id());
            if span.parent_span_id != SpanId::INVALID {
                j.key("parent_span_id");
                j.hex(&span.parent_span_id.to_bytes());
            }
            let m = j.mark();
            j.key("fields");
            j.open_object();
            attributes(j, &span.attributes);
            j.close_or_rollback(m);
            if !span.events.is_empty() {
                let m = j.mark();
                j.key("events");
                j.open_array();
                for event in span.events.iter() {
                    let e = j.mark();
                    j.elem();
                    j.open_object();
                    j.key("ts");
                    j.timestamp(nanos(event.timestamp));
                    j.key("name");
                    j.str(&event.name);
                    if !event.attributes.is_empty() {
                        j.key("fields");
                        j.open_object();
                        attributes(j, &event.attributes);
                        j.close_object();
                    }
                    j.close_object();
                    j.keep(e);
                }
                if j.is_empty() {
                    j.rollback(m);
                } else {
                    j.close_array();
                }
            }
            if !span.links.is_empty() {
                let m = j.mark();
                j.key("links");
                j.open_array();
                for link in span.links.iter() {
                    j.elem();
                    j.open_object();
                    ids(j, link.span_context.trace_id(), link.span_context.span_id());
                    j.close_object();
                }
                j.close_array();
                j.keep(m);
            }
            j.finish();
        });
    }

    fn force_flush(&self) -> OTelSdkResult {
        flush(&self.sink)
    }

    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The trace and span ids of the current OpenTelemetry context, if it has
/// a valid span (a `tracing` event's record carries them).
#[cfg(feature = "tracing")]
pub(super) fn current_ids(j: &mut Json) {
    use opentelemetry::trace::TraceContextExt;
    Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            ids(j, sc.trace_id(), sc.span_id());
        }
    });
}

fn ids(j: &mut Json, trace_id: TraceId, span_id: SpanId) {
    if trace_id != TraceId::INVALID {
        j.key("trace_id");
        j.hex(&trace_id.to_bytes());
    }
    if span_id != SpanId::INVALID {
        j.key("span_id");
        j.hex(&span_id.to_bytes());
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn attributes(j: &mut Json, kvs: &[KeyValue]) {
    for kv in kvs {
        let m = j.mark();
        j.key(kv.key.as_str());
        value(j, &kv.value);
        j.keep(m);
    }
}

fn value(j: &mut Json, v: &Value) {
    match v {
        Value::Bool(b) => j.bool(*b),
        Value::I64(i) => j.i64(*i),
        Value::F64(f) => j.f64(*f),
        Value::String(s) => j.str(s.as_str()),
        Value::Array(a) => {
            j.open_array();
            match a {
                Array::Bool(v) => v.iter().for_each(|b| {
                    j.elem();
                    j.bool(*b);
                }),
                Array::I64(v) => v.iter().for_each(|i| {
                    j.elem();
                    j.i64(*i);
                }),
                Array::F64(v) => v.iter().for_each(|f| {
                    j.elem();
                    j.f64(*f);
                }),
                Array::String(v) => v.iter().for_each(|s| {
                    j.elem();
                    j.str(s.as_str());
                }),
                other => {
                    j.elem();
                    j.fmt(format_args!("{other}"));
                }
            }
            j.close_array();
        }
        other => j.fmt(format_args!("{other}")),
    }
}

fn any_value(j: &mut Json, v: &AnyValue) {
    match v {
        AnyValue::Int(i) => j.i64(*i),
        AnyValue::Double(f) => j.f64(*f),
        AnyValue::String(s) => j.str(s.as_str()),
        AnyValue::Boolean(b) => j.bool(*b),
        AnyValue::Bytes(b) => j.bytes(b),
        AnyValue::ListAny(items) => {
            j.open_array();
            for item in items.iter() {
                j.elem();
                any_value(j, item);
            }
            j.close_array();
        }
        AnyValue::Map(map) => {
            j.open_object();
            // Sorted, so that equal maps encode equally.
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            for (k, v) in entries {
                j.key(k.as_str());
                any_value(j, v);
            }
            j.close_object();
        }
        other => j.fmt(format_args!("{other:?}")),
    }
}
