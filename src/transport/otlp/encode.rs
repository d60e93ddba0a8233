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
    time: u64,
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

fn logs<'a>(batch: &'a Batch, gap_text: Option<&'a str>, now: u64) -> impl Iterator<Item = Log<'a>> + 'a {
    let ring = format!("{:016x}", batch.ring_id);
    let gap = batch.gap.zip(gap_text).map(|(g, text)| gap_log(&g, text, ring.clone(), now));
    gap.into_iter().chain(batch.records.iter().map(move |r| {
        let mut log = structured(&r.payload).unwrap_or_else(|| Log {
            time: 0,
            severity: None,
            body: std::str::from_utf8(&r.payload).map_or(Body::Bytes(&r.payload), |s| Body::Str(Cow::Borrowed(s))),
            attributes: Vec::new(),
            event_name: None,
            trace: None,
        });
        log.time = r.timestamp;
        log.attributes.push((Cow::Borrowed("ringship.ring_id"), Value::Str(ring.clone())));
        log.attributes.push((Cow::Borrowed("ringship.seq"), Value::Int(i64::try_from(r.seq).unwrap_or(i64::MAX))));
        log
    }))
}

/// A record of ringship's front-ends (docs/FRONTENDS.md: a JSON object
/// with a string `ts` and `level`) as an OTLP log record of its own kind:
/// `level` as the severity, `message` (or `body`) as the body, `fields`
/// as attributes, `target`, `spans` and `truncated` as attributes too,
/// `event_name`, and `trace_id` and `span_id` as the trace context.
/// `None` for any other payload, which goes as its body.
fn structured(payload: &[u8]) -> Option<Log<'static>> {
    if payload.first() != Some(&b'{') {
        return None;
    }
    let serde_json::Value::Object(mut o) = serde_json::from_slice(payload).ok()? else { return None };
    if !o.get("ts").is_some_and(serde_json::Value::is_string) {
        return None;
    }
    let serde_json::Value::String(level) = o.remove("level")? else { return None };
    let severity = severity_number(&level);
    let body = match o.remove("message").or_else(|| o.remove("body")) {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let mut attributes = Vec::new();
    if let Some(serde_json::Value::Object(fields)) = o.remove("fields") {
        for (k, v) in fields {
            attributes.push((Cow::Owned(k), json_value(v)));
        }
    }
    for key in ["target", "spans", "truncated"] {
        if let Some(v) = o.remove(key) {
            attributes.push((Cow::Borrowed(key), json_value(v)));
        }
    }
    let event_name = match o.remove("event_name") {
        Some(serde_json::Value::String(s)) => Some(Cow::Owned(s)),
        _ => None,
    };
    let hex = |v: Option<serde_json::Value>| -> Option<Vec<u8>> {
        let s = v?.as_str()?.to_owned();
        (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
    };
    let trace = match (hex(o.remove("trace_id")), hex(o.remove("span_id"))) {
        (Some(t), Some(s)) => Some((t.try_into().ok()?, s.try_into().ok()?)),
        _ => None,
    };
    Some(Log {
        time: 0,
        severity: Some((severity, Cow::Owned(level))),
        body: Body::Str(Cow::Owned(body)),
        attributes,
        event_name,
        trace,
    })
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

fn gap_log<'a>(g: &GapNotice, text: &'a str, ring: String, now: u64) -> Log<'a> {
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
        severity: Some((SEVERITY_WARN, Cow::Borrowed("WARN"))),
        body: Body::Str(Cow::Borrowed(text)),
        attributes: attributes.into_iter().map(|(k, v)| (Cow::Borrowed(k), v)).collect(),
        event_name: Some(Cow::Borrowed("ringship.gap")),
        trace: None,
    }
}

/// The batch as an `ExportLogsServiceRequest` in protobuf.
pub(crate) fn protobuf(batch: &Batch, envelope: &Envelope, now: u64) -> Vec<u8> {
    let text = batch.gap.as_ref().map(gap_text);
    let mut records = Vec::with_capacity(batch.payload_bytes() + batch.records.len() * 64);
    let mut scratch = Vec::new();
    for log in logs(batch, text.as_deref(), now) {
        scratch.clear();
        log_record(&mut scratch, &log);
        message(&mut records, 2, &scratch); // ScopeLogs.log_records
    }
    let mut scope_logs = Vec::with_capacity(records.len() + 16);
    let mut scope = Vec::new();
    string(&mut scope, 1, SCOPE); // InstrumentationScope.name
    string(&mut scope, 2, env!("CARGO_PKG_VERSION"));
    message(&mut scope_logs, 1, &scope); // ScopeLogs.scope
    scope_logs.extend_from_slice(&records);
    let mut resource = Vec::new();
    for (k, v) in &envelope.resource {
        scratch.clear();
        key_value(&mut scratch, k, v);
        message(&mut resource, 1, &scratch); // Resource.attributes
    }
    let mut resource_logs = Vec::with_capacity(scope_logs.len() + resource.len() + 16);
    message(&mut resource_logs, 1, &resource); // ResourceLogs.resource
    message(&mut resource_logs, 2, &scope_logs); // ResourceLogs.scope_logs
    let mut out = Vec::with_capacity(resource_logs.len() + 8);
    message(&mut out, 1, &resource_logs); // ExportLogsServiceRequest.resource_logs
    out
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
    let mut kv = Vec::new();
    for (k, v) in &log.attributes {
        kv.clear();
        key_value(&mut kv, k, v);
        message(out, 6, &kv); // attributes
    }
    if let Some((trace_id, span_id)) = &log.trace {
        bytes_always(out, 9, trace_id); // trace_id
        bytes_always(out, 10, span_id); // span_id
    }
    fixed64(out, 11, log.time); // observed_time_unix_nano
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

/// The batch as an `ExportLogsServiceRequest` in OTLP's JSON mapping:
/// lowerCamelCase keys, 64-bit integers as decimal strings, enums as
/// numbers, bytes in base64.
pub(crate) fn json(batch: &Batch, envelope: &Envelope, now: u64) -> Vec<u8> {
    let text = batch.gap.as_ref().map(gap_text);
    let mut out = Vec::with_capacity(batch.payload_bytes() * 2 + batch.records.len() * 160);
    out.extend_from_slice(br#"{"resourceLogs":[{"resource":{"attributes":["#);
    for (i, (k, v)) in envelope.resource.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_key_value(&mut out, k, v);
    }
    out.extend_from_slice(br#"]},"scopeLogs":[{"scope":{"name":"#);
    json_string(&mut out, SCOPE);
    out.extend_from_slice(br#","version":"#);
    json_string(&mut out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(br#"},"logRecords":["#);
    for (i, log) in logs(batch, text.as_deref(), now).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = write!(out, r#"{{"timeUnixNano":"{}","observedTimeUnixNano":"{}","#, log.time, log.time);
        if let Some((number, text)) = &log.severity {
            let _ = write!(out, r#""severityNumber":{number},"severityText":"#);
            json_string(&mut out, text);
            out.push(b',');
        }
        if let Some((trace_id, span_id)) = &log.trace {
            out.extend_from_slice(br#""traceId":"#);
            json_hex(&mut out, trace_id);
            out.extend_from_slice(br#","spanId":"#);
            json_hex(&mut out, span_id);
            out.push(b',');
        }
        out.extend_from_slice(br#""body":"#);
        match &log.body {
            Body::Str(s) => {
                out.extend_from_slice(br#"{"stringValue":"#);
                json_string(&mut out, s);
            }
            Body::Bytes(b) => {
                out.extend_from_slice(br#"{"bytesValue":""#);
                out.extend_from_slice(base64::engine::general_purpose::STANDARD.encode(b).as_bytes());
                out.push(b'"');
            }
        }
        out.extend_from_slice(br#"},"attributes":["#);
        for (j, (k, v)) in log.attributes.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            json_key_value(&mut out, k, v);
        }
        out.push(b']');
        if let Some(name) = &log.event_name {
            out.extend_from_slice(br#","eventName":"#);
            json_string(&mut out, name);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}]}]}");
    out
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
    use crate::stats::LossCause;
    use crate::transport::BatchRecord;

    fn batch() -> Batch {
        Batch {
            ring_id: 0x0123_4567_89ab_cdef,
            records: vec![
                BatchRecord { seq: 7, timestamp: 1_795_500_000_123_456_789, payload: "hé \"q\"\n\u{1}".into() },
                BatchRecord { seq: 8, timestamp: 2, payload: bytes::Bytes::from_static(&[0xff, 0, b'a']) },
            ],
            gap: Some(GapNotice {
                first_seq: 3,
                last_seq: 6,
                first_ts: 10,
                last_ts: 20,
                cause: LossCause::Overwritten,
                rejected: 1,
                refused: 0,
            }),
        }
    }

    fn envelope() -> Envelope {
        Envelope {
            resource: vec![("service.name".into(), Value::Str("checkout".into())), ("n".into(), Value::Int(-1))],
        }
    }

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
        assert_eq!(records.as_array().unwrap().len(), 3);
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
