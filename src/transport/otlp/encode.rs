//! OTLP logs bodies, by hand: an `ExportLogsServiceRequest` in protobuf
//! or in OTLP's JSON mapping (opentelemetry-proto, `logs_service.proto`,
//! `logs.proto`, `common.proto`, `resource.proto`).
//!
//! One `ResourceLogs` with the configured resource attributes, one
//! `ScopeLogs` (scope `ringship`), and one `LogRecord` per record: its
//! payload as the body (a string when it is UTF-8, else bytes), its
//! timestamp as both times, and the attributes `ringship.ring_id` and
//! `ringship.seq`. A gap notice comes first, as a WARN record of its own
//! (event name `ringship.gap`).

use std::borrow::Cow;
use std::io::Write as _;

use base64::Engine as _;

use crate::transport::{Batch, GapNotice};

/// An attribute value: OTLP's `AnyValue`, for the kinds ringship sends.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
}

/// What every request carries besides the records.
#[derive(Debug, Clone, Default)]
pub(crate) struct Envelope {
    pub(crate) resource: Vec<(String, Value)>,
}

/// `SeverityNumber` WARN.
const SEVERITY_WARN: u64 = 13;

/// The scope every record is in.
const SCOPE: &str = "ringship";

/// One log record, before encoding.
struct Log<'a> {
    /// When it happened: the front-end's `ts`, else the append time.
    time: u64,
    /// When the ring took it (its append time).
    observed: u64,
    severity: Option<(u64, Cow<'a, str>)>,
    body: Body<'a>,
    attributes: Vec<(Cow<'a, str>, Value)>,
    event_name: Option<Cow<'a, str>>,
    /// Trace and span id.
    trace: Option<([u8; 16], [u8; 8])>,
}

enum Body<'a> {
    Str(Cow<'a, str>),
    Bytes(&'a [u8]),
}

impl Body<'_> {
    fn len(&self) -> usize {
        match self {
            Body::Str(s) => s.len(),
            Body::Bytes(b) => b.len(),
        }
    }
}

/// One span of the OpenTelemetry front-end, before encoding.
struct Span {
    /// Trace and span id.
    ids: ([u8; 16], [u8; 8]),
    parent: Option<[u8; 8]>,
    /// Its instrumentation scope's name (the record's `target`).
    scope: String,
    name: String,
    /// `SpanKind`.
    kind: u64,
    start: u64,
    end: u64,
    attributes: Vec<(Cow<'static, str>, Value)>,
    events: Vec<Event>,
    links: Vec<([u8; 16], [u8; 8])>,
    /// `StatusCode` and message.
    status: (u64, String),
}

struct Event {
    time: u64,
    name: String,
    attributes: Vec<(Cow<'static, str>, Value)>,
}

/// A batch's records sorted by signal: log records (a gap notice's
/// first) and spans.
pub(crate) struct Parts<'a> {
    logs: Vec<Log<'a>>,
    spans: Vec<Span>,
}

impl<'a> Parts<'a> {
    /// The batch's records as OTLP sees them: with `traces` on, a
    /// span record of the OpenTelemetry front-end is a span; every other
    /// record, and the gap notice, a log record.
    pub(crate) fn of(batch: &'a Batch, traces: bool, now: u64) -> Self {
        let ring = format!("{:016x}", batch.ring_id);
        let mut parts = Parts { logs: Vec::with_capacity(batch.records.len() + 1), spans: Vec::new() };
        if let Some(g) = &batch.gap {
            parts.logs.push(gap_log(g, ring.clone(), now));
        }
        for r in &batch.records {
            match structured(&r.payload, traces) {
                Some(Structured::Span(mut span)) => {
                    stamp(&mut span.attributes, &ring, r.seq);
                    parts.spans.push(span);
                }
                found => {
                    let mut log = match found {
                        Some(Structured::Log(log)) => log,
                        _ => Log {
                            time: r.timestamp,
                            severity: None,
                            body: std::str::from_utf8(&r.payload)
                                .map_or(Body::Bytes(&r.payload), |s| Body::Str(Cow::Borrowed(s))),
                            attributes: Vec::new(),
                            event_name: None,
                            trace: None,
                            observed: 0,
                        },
                    };
                    log.observed = r.timestamp;
                    stamp(&mut log.attributes, &ring, r.seq);
                    parts.logs.push(log);
                }
            }
        }
        parts
    }

    /// Log records, the gap notice's included.
    pub(crate) fn logs(&self) -> usize {
        self.logs.len()
    }

    /// Spans.
    pub(crate) fn spans(&self) -> usize {
        self.spans.len()
    }
}

/// The attributes by which a receiver de-duplicates.
fn stamp(attributes: &mut Vec<(Cow<'_, str>, Value)>, ring: &str, seq: u64) {
    attributes.push((Cow::Borrowed("ringship.ring_id"), Value::Str(ring.to_owned())));
    attributes.push((Cow::Borrowed("ringship.seq"), Value::Int(i64::try_from(seq).unwrap_or(i64::MAX))));
}

/// A front-end's record, as OTLP takes it.
enum Structured {
    Log(Log<'static>),
    Span(Span),
}

/// A record of ringship's front-ends (docs/FRONTENDS.md: a JSON object
/// with a string `ts`) as OTLP takes it. A span (`"type":"span"`, with
/// valid times and ids), when `traces` is on, as a span: its scope, name,
/// kind, times, ids, status, `fields` as attributes, events and links. A
/// log event (with a string `level`) as a log record of its own kind:
/// `level` as the severity, `message` (or `body`) as the body, `fields`
/// as attributes, `target`, `spans` and `truncated` as attributes too,
/// `event_name`, and `trace_id` and `span_id` as the trace context.
/// `None` for any other payload, which goes as its body.
fn structured(payload: &[u8], traces: bool) -> Option<Structured> {
    if payload.first() != Some(&b'{') {
        return None;
    }
    let serde_json::Value::Object(mut o) = serde_json::from_slice(payload).ok()? else { return None };
    let serde_json::Value::String(ts) = o.remove("ts")? else { return None };
    if traces && o.get("type").and_then(serde_json::Value::as_str) == Some("span") {
        if let Some(span) = span(&ts, &mut o) {
            return Some(Structured::Span(span));
        }
    }
    let serde_json::Value::String(level) = o.remove("level")? else { return None };
    let severity = severity_number(&level);
    let body = match o.remove("message").or_else(|| o.remove("body")) {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let mut attributes = fields(o.remove("fields"));
    for key in ["target", "spans", "truncated"] {
        if let Some(v) = o.remove(key) {
            attributes.push((Cow::Borrowed(key), json_value(v)));
        }
    }
    let event_name = match o.remove("event_name") {
        Some(serde_json::Value::String(s)) => Some(Cow::Owned(s)),
        _ => None,
    };
    let trace = match (hex_id(o.remove("trace_id")), hex_id(o.remove("span_id"))) {
        (Some(t), Some(s)) => Some((t, s)),
        _ => None,
    };
    Some(Structured::Log(Log {
        time: rfc3339_nanos(&ts).unwrap_or(0),
        observed: 0,
        severity: Some((severity, Cow::Owned(level))),
        body: Body::Str(Cow::Owned(body)),
        attributes,
        event_name,
        trace,
    }))
}

/// A span record's parts; `None` (it goes as a log record) when its times
/// or ids are not there or not valid.
fn span(ts: &str, o: &mut serde_json::Map<String, serde_json::Value>) -> Option<Span> {
    let start = rfc3339_nanos(ts)?;
    let end = rfc3339_nanos(o.get("end")?.as_str()?)?;
    let trace_id: [u8; 16] = hex_id(o.get("trace_id").cloned())?;
    let span_id: [u8; 8] = hex_id(o.get("span_id").cloned())?;
    let text = |o: &mut serde_json::Map<String, serde_json::Value>, key: &str| match o.remove(key) {
        Some(serde_json::Value::String(s)) => s,
        _ => String::new(),
    };
    let kind = match o.get("kind").and_then(serde_json::Value::as_str) {
        Some("internal") => 1,
        Some("server") => 2,
        Some("client") => 3,
        Some("producer") => 4,
        Some("consumer") => 5,
        _ => 0,
    };
    let code = match o.get("status").and_then(serde_json::Value::as_str) {
        Some("ok") => 1,
        Some("error") => 2,
        _ => 0,
    };
    let mut attributes = fields(o.remove("fields"));
    if let Some(v) = o.remove("truncated") {
        attributes.push((Cow::Borrowed("truncated"), json_value(v)));
    }
    let list = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::Array(items)) => items,
        _ => Vec::new(),
    };
    let events = list(o.remove("events"))
        .into_iter()
        .filter_map(|e| {
            let serde_json::Value::Object(mut e) = e else { return None };
            Some(Event {
                time: rfc3339_nanos(e.get("ts")?.as_str()?)?,
                name: text(&mut e, "name"),
                attributes: fields(e.remove("fields")),
            })
        })
        .collect();
    let links = list(o.remove("links"))
        .into_iter()
        .filter_map(|l| Some((hex_id(l.get("trace_id").cloned())?, hex_id(l.get("span_id").cloned())?)))
        .collect();
    Some(Span {
        ids: (trace_id, span_id),
        parent: hex_id(o.remove("parent_span_id")),
        scope: text(o, "target"),
        name: text(o, "name"),
        kind,
        start,
        end,
        attributes,
        events,
        links,
        status: (code, text(o, "status_message")),
    })
}

/// A front-end record's `fields` as attributes.
fn fields(v: Option<serde_json::Value>) -> Vec<(Cow<'static, str>, Value)> {
    match v {
        Some(serde_json::Value::Object(fields)) => {
            fields.into_iter().map(|(k, v)| (Cow::Owned(k), json_value(v))).collect()
        }
        _ => Vec::new(),
    }
}

/// An id in lowercase or uppercase hex, exactly `N` bytes long.
fn hex_id<const N: usize>(v: Option<serde_json::Value>) -> Option<[u8; N]> {
    let s = v?;
    let s = s.as_str()?.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Nanoseconds since the Unix epoch of a UTC time as the front-ends write
/// it, `2026-12-07T14:43:20.123456789Z` (fraction of 0 to 9 digits).
pub(super) fn rfc3339_nanos(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let num = |from: usize, to: usize| -> Option<u64> {
        let digits = bytes.get(from..to)?;
        digits.iter().try_fold(0u64, |n, &d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if bytes.len() < 20 || separators.iter().any(|&(at, c)| bytes[at] != c) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if year < 1970 || !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60
    {
        return None;
    }
    let nanos = match (&bytes[19..], bytes.last()) {
        (b"Z", _) => 0,
        ([b'.', frac @ ..], Some(b'Z')) if (2..=10).contains(&frac.len()) => {
            let digits = frac.len() - 1;
            num(20, 20 + digits)? * 10u64.pow(9 - u32::try_from(digits).ok()?)
        }
        _ => return None,
    };
    // Days from the civil date (proleptic Gregorian), in years that start
    // in March so that the leap day ends them.
    let (year, month) = if month <= 2 { (year - 1, month + 9) } else { (year, month - 3) };
    let (era, year_of_era) = (year / 400, year % 400);
    let day_of_year = (153 * month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = (era * 146_097 + day_of_era).checked_sub(719_468)?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// OTLP's `SeverityNumber` for a level name (`INFO`, `WARN2`...), 0 if
/// unknown.
fn severity_number(level: &str) -> u64 {
    let upper = level.to_ascii_uppercase();
    let (name, step) = match upper.as_bytes().last() {
        Some(d @ b'2'..=b'4') => (&upper[..upper.len() - 1], u64::from(d - b'1')),
        _ => (upper.as_str(), 0),
    };
    let base = match name {
        "TRACE" => 1,
        "DEBUG" => 5,
        "INFO" => 9,
        "WARN" | "WARNING" => 13,
        "ERROR" => 17,
        "FATAL" | "CRITICAL" => 21,
        _ => return 0,
    };
    base + step
}

/// A JSON value as an attribute: strings, integers, floats and booleans
/// as themselves, anything else as its JSON text.
fn json_value(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(f)) if n.is_f64() => Value::Double(f),
            _ => Value::Str(n.to_string()),
        },
        other => Value::Str(other.to_string()),
    }
}

/// The text of a gap notice's record.
pub(crate) fn gap_text(g: &GapNotice) -> String {
    if g.missing() == 0 {
        format!(
            "ringship: since the last notice, {} records were refused at append and {} by the receiver",
            g.rejected, g.refused
        )
    } else {
        format!(
            "ringship: {} records lost before this batch (seqs {} to {}, {}); since the last notice, {} refused at \
             append and {} by the receiver",
            g.missing(),
            g.first_seq,
            g.last_seq,
            g.cause_label(),
            g.rejected,
            g.refused
        )
    }
}

fn gap_log(g: &GapNotice, ring: String, now: u64) -> Log<'static> {
    let int = |v: u64| Value::Int(i64::try_from(v).unwrap_or(i64::MAX));
    let attributes = [
        ("ringship.ring_id", Value::Str(ring)),
        ("ringship.gap.first_seq", int(g.first_seq)),
        ("ringship.gap.last_seq", int(g.last_seq)),
        ("ringship.gap.count", int(g.missing())),
        ("ringship.gap.cause", Value::Str(g.cause_label().to_owned())),
        ("ringship.gap.rejected", int(g.rejected)),
        ("ringship.gap.refused", int(g.refused)),
        ("ringship.gap.first_ts", int(g.first_ts)),
        ("ringship.gap.last_ts", int(g.last_ts)),
    ];
    Log {
        time: now,
        observed: now,
        severity: Some((SEVERITY_WARN, Cow::Borrowed("WARN"))),
        body: Body::Str(Cow::Owned(gap_text(g))),
        attributes: attributes.into_iter().map(|(k, v)| (Cow::Borrowed(k), v)).collect(),
        event_name: Some(Cow::Borrowed("ringship.gap")),
        trace: None,
    }
}

/// The batch's log records as an `ExportLogsServiceRequest` in protobuf.
#[cfg(test)]
pub(crate) fn protobuf(batch: &Batch, envelope: &Envelope, now: u64) -> Vec<u8> {
    Parts::of(batch, false, now).logs_protobuf(envelope)
}

/// The batch's log records as an `ExportLogsServiceRequest` in JSON.
#[cfg(test)]
pub(crate) fn json(batch: &Batch, envelope: &Envelope, now: u64) -> Vec<u8> {
    Parts::of(batch, false, now).logs_json(envelope)
}

impl Parts<'_> {
    /// The log records as an `ExportLogsServiceRequest` in protobuf.
    pub(crate) fn logs_protobuf(&self, envelope: &Envelope) -> Vec<u8> {
        let mut records = Vec::with_capacity(self.logs.iter().map(|l| l.body.len() + 96).sum());
        let mut scratch = Vec::new();
        for log in &self.logs {
            scratch.clear();
            log_record(&mut scratch, log);
            message(&mut records, 2, &scratch); // ScopeLogs.log_records
        }
        let mut scope_logs = Vec::with_capacity(records.len() + 16);
        let mut scope = Vec::new();
        string(&mut scope, 1, SCOPE); // InstrumentationScope.name
        string(&mut scope, 2, env!("CARGO_PKG_VERSION"));
        message(&mut scope_logs, 1, &scope); // ScopeLogs.scope
        scope_logs.extend_from_slice(&records);
        request_protobuf(envelope, &[scope_logs])
    }

    /// The spans as an `ExportTraceServiceRequest` in protobuf: one
    /// `ScopeSpans` per instrumentation scope, in order of first use.
    pub(crate) fn traces_protobuf(&self, envelope: &Envelope) -> Vec<u8> {
        let mut scratch = Vec::new();
        let scopes = self
            .scopes()
            .into_iter()
            .map(|(name, spans)| {
                let mut scope_spans = Vec::new();
                let mut scope = Vec::new();
                string(&mut scope, 1, name); // InstrumentationScope.name
                message(&mut scope_spans, 1, &scope); // ScopeSpans.scope
                for span in spans {
                    scratch.clear();
                    span_protobuf(&mut scratch, span);
                    message(&mut scope_spans, 2, &scratch); // ScopeSpans.spans
                }
                scope_spans
            })
            .collect::<Vec<_>>();
        request_protobuf(envelope, &scopes)
    }

    /// The spans grouped by instrumentation scope, in order of first use.
    fn scopes(&self) -> Vec<(&str, Vec<&Span>)> {
        let mut scopes: Vec<(&str, Vec<&Span>)> = Vec::new();
        for span in &self.spans {
            match scopes.iter_mut().find(|(name, _)| *name == span.scope) {
                Some((_, spans)) => spans.push(span),
                None => scopes.push((&span.scope, vec![span])),
            }
        }
        scopes
    }
}

/// An export request (logs and traces share the shape): one resource
/// with the envelope's attributes, holding the given encoded scope
/// messages.
fn request_protobuf(envelope: &Envelope, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut scratch = Vec::new();
    let mut resource = Vec::new();
    for (k, v) in &envelope.resource {
        scratch.clear();
        key_value(&mut scratch, k, v);
        message(&mut resource, 1, &scratch); // Resource.attributes
    }
    let mut inner = Vec::with_capacity(scopes.iter().map(|s| s.len() + 8).sum::<usize>() + resource.len() + 16);
    message(&mut inner, 1, &resource); // ResourceLogs/ResourceSpans.resource
    for scope in scopes {
        message(&mut inner, 2, scope); // ResourceLogs.scope_logs/ResourceSpans.scope_spans
    }
    let mut out = Vec::with_capacity(inner.len() + 8);
    message(&mut out, 1, &inner); // Export*ServiceRequest.resource_logs/resource_spans
    out
}

fn span_protobuf(out: &mut Vec<u8>, span: &Span) {
    bytes_always(out, 1, &span.ids.0); // trace_id
    bytes_always(out, 2, &span.ids.1); // span_id
    if let Some(parent) = &span.parent {
        bytes_always(out, 4, parent); // parent_span_id
    }
    string(out, 5, &span.name); // name
    varint_field(out, 6, span.kind); // kind
    fixed64(out, 7, span.start); // start_time_unix_nano
    fixed64(out, 8, span.end); // end_time_unix_nano
    attributes_protobuf(out, 9, &span.attributes);
    let mut inner = Vec::new();
    for event in &span.events {
        inner.clear();
        fixed64(&mut inner, 1, event.time); // Event.time_unix_nano
        string(&mut inner, 2, &event.name); // Event.name
        attributes_protobuf(&mut inner, 3, &event.attributes);
        message(out, 11, &inner); // events
    }
    for (trace_id, span_id) in &span.links {
        inner.clear();
        bytes_always(&mut inner, 1, trace_id); // Link.trace_id
        bytes_always(&mut inner, 2, span_id); // Link.span_id
        message(out, 13, &inner); // links
    }
    if span.status.0 != 0 || !span.status.1.is_empty() {
        inner.clear();
        string(&mut inner, 2, &span.status.1); // Status.message
        varint_field(&mut inner, 3, span.status.0); // Status.code
        message(out, 15, &inner); // status
    }
}

fn attributes_protobuf(out: &mut Vec<u8>, field: u32, attributes: &[(Cow<'_, str>, Value)]) {
    let mut kv = Vec::new();
    for (k, v) in attributes {
        kv.clear();
        key_value(&mut kv, k, v);
        message(out, field, &kv);
    }
}

fn log_record(out: &mut Vec<u8>, log: &Log<'_>) {
    fixed64(out, 1, log.time); // time_unix_nano
    if let Some((number, text)) = &log.severity {
        varint_field(out, 2, *number); // severity_number
        string(out, 3, text); // severity_text
    }
    let mut body = Vec::new();
    match &log.body {
        Body::Str(s) => string_always(&mut body, 1, s),
        Body::Bytes(b) => bytes_always(&mut body, 7, b),
    }
    message(out, 5, &body); // body
    attributes_protobuf(out, 6, &log.attributes);
    if let Some((trace_id, span_id)) = &log.trace {
        bytes_always(out, 9, trace_id); // trace_id
        bytes_always(out, 10, span_id); // span_id
    }
    fixed64(out, 11, log.observed); // observed_time_unix_nano
    if let Some(name) = &log.event_name {
        string(out, 12, name); // event_name
    }
}

fn key_value(out: &mut Vec<u8>, k: &str, v: &Value) {
    string(out, 1, k);
    let mut any = Vec::new();
    // AnyValue's oneof members are written even when zero or empty: left
    // out, the value would be unset rather than 0, "" or false.
    match v {
        Value::Str(s) => string_always(&mut any, 1, s),
        Value::Int(i) => {
            tag(&mut any, 3, 0);
            // int64 is not zigzag: a negative value is ten bytes.
            varint(&mut any, u64::from_ne_bytes(i.to_ne_bytes()));
        }
        Value::Bool(b) => {
            tag(&mut any, 2, 0);
            varint(&mut any, u64::from(*b));
        }
        Value::Double(d) => {
            tag(&mut any, 4, 1);
            any.extend_from_slice(&d.to_le_bytes());
        }
    }
    message(out, 2, &any);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field) << 3 | u64::from(wire));
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(out, field, 0);
        varint(out, v);
    }
}

fn fixed64(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        tag(out, field, 1);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        string_always(out, field, s);
    }
}

fn string_always(out: &mut Vec<u8>, field: u32, s: &str) {
    bytes_always(out, field, s.as_bytes());
}

fn bytes_always(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A sub-message, written even when empty (it is set).
fn message(out: &mut Vec<u8>, field: u32, body: &[u8]) {
    bytes_always(out, field, body);
}

impl Parts<'_> {
    /// The log records as an `ExportLogsServiceRequest` in OTLP's JSON
    /// mapping: lowerCamelCase keys, 64-bit integers as decimal strings,
    /// enums as numbers, bytes in base64, ids in hex.
    pub(crate) fn logs_json(&self, envelope: &Envelope) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.logs.iter().map(|l| l.body.len() * 2 + 160).sum::<usize>() + 256);
        out.extend_from_slice(br#"{"resourceLogs":[{"#);
        resource_json(&mut out, envelope);
        out.extend_from_slice(br#","scopeLogs":[{"scope":{"name":"#);
        json_string(&mut out, SCOPE);
        out.extend_from_slice(br#","version":"#);
        json_string(&mut out, env!("CARGO_PKG_VERSION"));
        out.extend_from_slice(br#"},"logRecords":["#);
        for (i, log) in self.logs.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            log_json(&mut out, log);
        }
        out.extend_from_slice(b"]}]}]}");
        out
    }

    /// The spans as an `ExportTraceServiceRequest` in OTLP's JSON mapping.
    pub(crate) fn traces_json(&self, envelope: &Envelope) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.spans.len() * 400 + 256);
        out.extend_from_slice(br#"{"resourceSpans":[{"#);
        resource_json(&mut out, envelope);
        out.extend_from_slice(br#","scopeSpans":["#);
        for (i, (name, spans)) in self.scopes().into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"scope":{"name":"#);
            json_string(&mut out, name);
            out.extend_from_slice(br#"},"spans":["#);
            for (j, span) in spans.into_iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                span_json(&mut out, span);
            }
            out.extend_from_slice(b"]}");
        }
        out.extend_from_slice(b"]}]}");
        out
    }
}

fn resource_json(out: &mut Vec<u8>, envelope: &Envelope) {
    out.extend_from_slice(br#""resource":{"attributes":"#);
    attributes_json(out, &envelope.resource);
    out.push(b'}');
}

fn attributes_json<K: AsRef<str>>(out: &mut Vec<u8>, attributes: &[(K, Value)]) {
    out.push(b'[');
    for (i, (k, v)) in attributes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_key_value(out, k.as_ref(), v);
    }
    out.push(b']');
}

fn log_json(out: &mut Vec<u8>, log: &Log<'_>) {
    let _ = write!(out, r#"{{"timeUnixNano":"{}","observedTimeUnixNano":"{}","#, log.time, log.observed);
    if let Some((number, text)) = &log.severity {
        let _ = write!(out, r#""severityNumber":{number},"severityText":"#);
        json_string(out, text);
        out.push(b',');
    }
    if let Some((trace_id, span_id)) = &log.trace {
        out.extend_from_slice(br#""traceId":"#);
        json_hex(out, trace_id);
        out.extend_from_slice(br#","spanId":"#);
        json_hex(out, span_id);
        out.push(b',');
    }
    out.extend_from_slice(br#""body":"#);
    match &log.body {
        Body::Str(s) => {
            out.extend_from_slice(br#"{"stringValue":"#);
            json_string(out, s);
        }
        Body::Bytes(b) => {
            out.extend_from_slice(br#"{"bytesValue":""#);
            out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(b).as_bytes());
            out.push(b'"');
        }
    }
    out.extend_from_slice(br#"},"attributes":"#);
    attributes_json(out, &log.attributes);
    if let Some(name) = &log.event_name {
        out.extend_from_slice(br#","eventName":"#);
        json_string(out, name);
    }
    out.push(b'}');
}

fn span_json(out: &mut Vec<u8>, span: &Span) {
    out.extend_from_slice(br#"{"traceId":"#);
    json_hex(out, &span.ids.0);
    out.extend_from_slice(br#","spanId":"#);
    json_hex(out, &span.ids.1);
    if let Some(parent) = &span.parent {
        out.extend_from_slice(br#","parentSpanId":"#);
        json_hex(out, parent);
    }
    out.extend_from_slice(br#","name":"#);
    json_string(out, &span.name);
    let _ = write!(
        out,
        r#","kind":{},"startTimeUnixNano":"{}","endTimeUnixNano":"{}","attributes":"#,
        span.kind, span.start, span.end
    );
    attributes_json(out, &span.attributes);
    out.extend_from_slice(br#","events":["#);
    for (i, event) in span.events.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, r#"{{"timeUnixNano":"{}","name":"#, event.time);
        json_string(out, &event.name);
        out.extend_from_slice(br#","attributes":"#);
        attributes_json(out, &event.attributes);
        out.push(b'}');
    }
    out.extend_from_slice(br#"],"links":["#);
    for (i, (trace_id, span_id)) in span.links.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"traceId":"#);
        json_hex(out, trace_id);
        out.extend_from_slice(br#","spanId":"#);
        json_hex(out, span_id);
        out.push(b'}');
    }
    out.push(b']');
    if span.status.0 != 0 || !span.status.1.is_empty() {
        let _ = write!(out, r#","status":{{"code":{},"message":"#, span.status.0);
        json_string(out, &span.status.1);
        out.push(b'}');
    }
    out.push(b'}');
}

/// Bytes as a JSON string of lowercase hex (OTLP/JSON's trace and span
/// ids).
fn json_hex(out: &mut Vec<u8>, b: &[u8]) {
    out.push(b'"');
    for x in b {
        let _ = write!(out, "{x:02x}");
    }
    out.push(b'"');
}

fn json_key_value(out: &mut Vec<u8>, k: &str, v: &Value) {
    out.extend_from_slice(br#"{"key":"#);
    json_string(out, k);
    out.extend_from_slice(br#","value":"#);
    match v {
        Value::Str(s) => {
            out.extend_from_slice(br#"{"stringValue":"#);
            json_string(out, s);
            out.push(b'}');
        }
        Value::Int(i) => {
            let _ = write!(out, r#"{{"intValue":"{i}"}}"#);
        }
        Value::Bool(b) => {
            let _ = write!(out, r#"{{"boolValue":{b}}}"#);
        }
        Value::Double(d) if d.is_finite() => {
            let _ = write!(out, r#"{{"doubleValue":{d:?}}}"#);
        }
        Value::Double(d) => {
            let name = if d.is_nan() {
                "NaN"
            } else if *d > 0.0 {
                "Infinity"
            } else {
                "-Infinity"
            };
            let _ = write!(out, r#"{{"doubleValue":"{name}"}}"#);
        }
    }
    out.push(b'}');
}

/// A JSON string: quote, backslash and control characters escaped.
fn json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    crate::escape::json_escape(out, s.as_bytes());
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    // The fixtures the official decoder checks too.
    use crate::transport::otlp::tests::{batch, envelope};

    #[test]
    fn varints_follow_protobuf() {
        let mut b = Vec::new();
        varint(&mut b, 300);
        assert_eq!(b, [0xac, 0x02]);
        b.clear();
        varint(&mut b, u64::MAX); // -1 as an int64
        assert_eq!(b, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    }

    #[test]
    fn json_is_valid_json_with_camel_case_keys_and_string_int64s() {
        let body = json(&batch(), &envelope(), 5);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let records = &v["resourceLogs"][0]["scopeLogs"][0]["logRecords"];
        assert_eq!(records.as_array().unwrap().len(), 4);
        assert_eq!(records[0]["severityNumber"], 13);
        assert_eq!(records[0]["eventName"], "ringship.gap");
        assert_eq!(records[1]["timeUnixNano"], "1795500000123456789");
        assert_eq!(records[1]["body"]["stringValue"], "hé \"q\"\n\u{1}");
        assert_eq!(records[2]["body"]["bytesValue"], "/wBh");
        assert_eq!(records[1]["attributes"][1]["value"]["intValue"], "7");
        assert_eq!(v["resourceLogs"][0]["resource"]["attributes"][1]["value"]["intValue"], "-1");
        let text = String::from_utf8(body).unwrap();
        assert!(!text.contains("_value") && !text.contains("time_unix"), "{text}");
    }
}
