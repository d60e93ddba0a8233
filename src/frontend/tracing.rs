//! The `tracing` front-end: a `Layer` encoding each event as a JSON
//! record, and a `MakeWriter` taking the lines another layer formats.

use std::fmt;
use std::io;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::json::Json;
use super::{FrontEndStats, Sink};
use crate::Ring;

/// A [`tracing_subscriber::Layer`] that appends each event to a ring as
/// one JSON record: its time, level, target, message and fields, and the
/// spans it is in with theirs (docs/FRONTENDS.md gives the encoding).
///
/// The record is appended on the thread that emitted the event before the
/// macro returns, so an event whose macro returned survives a `kill -9`
/// of the process. The layer never waits for an fsync or, under
/// [`FullPolicy::Block`](crate::FullPolicy::Block), for room: a full ring
/// refuses the event at once and counts it as rejected. Events ringship
/// emits itself (target `ringship`) and events emitted on ringship's own
/// threads are left out. [`stats`](Self::stats) counts events cut to fit
/// and events lost.
///
/// ```
/// # fn main() -> Result<(), ringship::Error> {
/// # let tmp = tempfile::tempdir().unwrap();
/// use std::sync::Arc;
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let (ring, _) = ringship::Ring::open(tmp.path().join("ring"), ringship::RingConfig::default())?;
/// let ring = Arc::new(ring);
/// let subscriber = tracing_subscriber::registry().with(ringship::RingLayer::new(Arc::clone(&ring)));
/// tracing::subscriber::with_default(subscriber, || {
///     tracing::info!(user = "alice", "logged in");
/// });
/// let record = ring.read(1, 1, 1 << 20)?.records.remove(0);
/// assert!(record.payload.starts_with(br#"{"ts":""#));
/// # Ok(())
/// # }
/// ```
///
/// Clones share the counters. Adding two of them to one subscriber
/// appends each event twice.
#[derive(Clone, Debug)]
pub struct RingLayer {
    sink: Sink,
}

impl RingLayer {
    /// A layer appending to `ring`.
    pub fn new(ring: Arc<Ring>) -> Self {
        RingLayer { sink: Sink::new(ring) }
    }

    /// A layer encoding as [`new`](Self::new)'s does but handing each
    /// record to `to`: the benchmarks compare its cost against other
    /// writers with it.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn to_fn(ring: Arc<Ring>, to: super::RecordFn) -> Self {
        RingLayer { sink: Sink::to(ring, to) }
    }

    /// Events cut to fit and events lost so far.
    pub fn stats(&self) -> FrontEndStats {
        self.sink.stats()
    }
}

/// A span's fields: each name with its value encoded as JSON, in the
/// order first recorded. A field recorded again replaces its value, so the
/// list stays as long as the span's declared fields.
#[derive(Default)]
struct SpanFields(Vec<(&'static str, Vec<u8>)>);

impl<S> Layer<S> for RingLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = SpanFields::default();
        attrs.record(&mut SpanRecorder(&mut fields));
        span.extensions_mut().replace(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        // Recorded with the span's extensions unlocked: a value's `Debug`
        // is the host's code, and may emit an event in this very span
        // (which reads them) or panic (which would poison the lock).
        let taken = span.extensions_mut().remove::<SpanFields>();
        let mut fields = taken.unwrap_or_default();
        values.record(&mut SpanRecorder(&mut fields));
        span.extensions_mut().replace(fields);
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        if super::own_target(meta.target()) {
            self.sink.suppress();
            return;
        }
        if self.sink.suppressed() {
            return;
        }
        let now = crate::ring::now_nanos();
        self.sink.emit(&|j| {
            // Required members first, optional ones (which a record too
            // long for the ring leaves out) after.
            j.key("ts");
            j.timestamp(now);
            j.key("level");
            j.str(level_name(*meta.level()));
            j.key("target");
            j.str(meta.target());
            event.record(&mut Message { j: &mut *j });
            // The OpenTelemetry SDK's own diagnostics are emitted while it
            // holds its context borrowed: reading the context then would
            // panic.
            #[cfg(feature = "opentelemetry")]
            if !meta.target().starts_with("opentelemetry") {
                super::otel::current_ids(j);
            }
            let m = j.mark();
            j.key("fields");
            j.open_object();
            event.record(&mut Fields { j: &mut *j });
            j.close_or_rollback(m);
            if let Some(scope) = ctx.event_scope(event) {
                let m = j.mark();
                j.key("spans");
                j.open_array();
                for span in scope.from_root() {
                    let e = j.mark();
                    j.elem();
                    j.open_object();
                    j.key("name");
                    j.str(span.name());
                    if let Some(SpanFields(fields)) = span.extensions().get::<SpanFields>() {
                        let f = j.mark();
                        j.key("fields");
                        j.open_object();
                        for (name, value) in fields {
                            let v = j.mark();
                            j.key(name);
                            j.raw(value);
                            j.keep(v);
                        }
                        j.close_or_rollback(f);
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
            j.finish();
        });
    }
}

pub(super) fn level_name(level: Level) -> &'static str {
    match level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARN",
        Level::ERROR => "ERROR",
    }
}

/// Writes the event's `message` field as the record's `message`.
struct Message<'a> {
    j: &'a mut Json,
}

impl Visit for Message<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.j.key("message");
            self.j.str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.j.key("message");
            self.j.fmt(format_args!("{value:?}"));
        }
    }
}

/// Writes an event's fields but `message` as members, each left out if it
/// would pass the limit.
struct Fields<'a> {
    j: &'a mut Json,
}

impl Fields<'_> {
    fn put(&mut self, field: &Field, value: impl FnOnce(&mut Json)) {
        if field.name() == "message" {
            return;
        }
        let m = self.j.mark();
        self.j.key(field.name());
        value(self.j);
        self.j.keep(m);
    }
}

/// Records a span's fields into its [`SpanFields`].
struct SpanRecorder<'a>(&'a mut SpanFields);

impl SpanRecorder<'_> {
    fn put(&mut self, field: &Field, value: impl FnOnce(&mut Json)) {
        let mut j = Json::new();
        value(&mut j);
        match self.0.0.iter_mut().find(|(name, _)| *name == field.name()) {
            Some(slot) => slot.1 = j.buf,
            None => self.0.0.push((field.name(), j.buf)),
        }
    }
}

/// Encodes each kind of value the same way for event and span fields.
macro_rules! visit_by_put {
    ($visitor:ty) => {
        impl Visit for $visitor {
            fn record_f64(&mut self, field: &Field, value: f64) {
                self.put(field, |j| j.f64(value));
            }

            fn record_i64(&mut self, field: &Field, value: i64) {
                self.put(field, |j| j.i64(value));
            }

            fn record_u64(&mut self, field: &Field, value: u64) {
                self.put(field, |j| j.u64(value));
            }

            fn record_i128(&mut self, field: &Field, value: i128) {
                self.put(field, |j| j.int(value));
            }

            fn record_u128(&mut self, field: &Field, value: u128) {
                self.put(field, |j| j.int(value));
            }

            fn record_bool(&mut self, field: &Field, value: bool) {
                self.put(field, |j| j.bool(value));
            }

            fn record_str(&mut self, field: &Field, value: &str) {
                self.put(field, |j| j.str(value));
            }

            fn record_bytes(&mut self, field: &Field, value: &[u8]) {
                self.put(field, |j| j.bytes(value));
            }

            fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
                self.put(field, |j| j.fmt(format_args!("{value}")));
            }

            fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                self.put(field, |j| j.fmt(format_args!("{value:?}")));
            }
        }
    };
}

visit_by_put!(Fields<'_>);
visit_by_put!(SpanRecorder<'_>);

/// A [`MakeWriter`](tracing_subscriber::fmt::MakeWriter) appending each
/// write to a ring as one record: a drop-in for
/// `tracing_appender::non_blocking`, so that a `fmt` layer keeps its own
/// format and every line whose macro returned survives a `kill -9`.
///
/// Each `write` call is one record, without its trailing newline (a `fmt`
/// layer writes each event in one call). A line longer than the ring's
/// [`max_record_len`](Ring::max_record_len) is cut to fit and ends with
/// `…[truncated]`. As [`RingLayer`], it never waits for an fsync or for
/// room, and lines written on ringship's own threads are left out.
///
/// ```
/// # fn main() -> Result<(), ringship::Error> {
/// # let tmp = tempfile::tempdir().unwrap();
/// use std::sync::Arc;
///
/// let (ring, _) = ringship::Ring::open(tmp.path().join("ring"), ringship::RingConfig::default())?;
/// let ring = Arc::new(ring);
/// let subscriber = tracing_subscriber::fmt().with_writer(ringship::RingWriter::new(Arc::clone(&ring))).finish();
/// tracing::subscriber::with_default(subscriber, || tracing::warn!(disk = "sda", "slow"));
/// let line = ring.read(1, 1, 1 << 20)?.records.remove(0).payload;
/// assert!(line.ends_with(b"slow disk=\"sda\"") || line.ends_with(b"slow disk=sda"));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RingWriter {
    sink: Sink,
}

impl RingWriter {
    /// A writer appending to `ring`.
    pub fn new(ring: Arc<Ring>) -> Self {
        RingWriter { sink: Sink::new(ring) }
    }

    /// Lines cut to fit and lines lost so far.
    pub fn stats(&self) -> FrontEndStats {
        self.sink.stats()
    }
}

/// The marker ending a line cut to fit.
const CUT_MARK: &[u8] = "…[truncated]".as_bytes();

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RingWriter {
    type Writer = &'a RingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

impl io::Write for &RingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.sink.suppressed() {
            return Ok(buf.len());
        }
        let line = buf.strip_suffix(b"\n").unwrap_or(buf);
        let max = self.sink.ring().max_record_len();
        if line.len() <= max || max < CUT_MARK.len() {
            self.sink.append(line, false);
        } else {
            let end = super::json::utf8_floor(line, max - CUT_MARK.len());
            let mut cut = Vec::with_capacity(end + CUT_MARK.len());
            cut.extend_from_slice(&line[..end]);
            cut.extend_from_slice(CUT_MARK);
            self.sink.append(&cut, true);
        }
        // Refusals are counted; the host's formatter has nothing to do
        // with them.
        Ok(buf.len())
    }

    /// Has ringship's background thread make what was written durable,
    /// without waiting for it.
    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush();
        Ok(())
    }
}
