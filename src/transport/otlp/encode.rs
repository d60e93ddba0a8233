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

use std::io::Write as _;

use base64::Engine as _;

use crate::transport::{Batch, GapNotice};

/// An attribute value: OTLP's `AnyValue`, for the kinds ringship sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Str(String),
    Int(i64),
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
    severity: Option<(u64, &'a str)>,
    body: Body<'a>,
    attributes: Vec<(&'a str, Value)>,
    event_name: Option<&'a str>,
}

enum Body<'a> {
    Str(&'a str),
    Bytes(&'a [u8]),
}

fn logs<'a>(batch: &'a Batch, gap_text: Option<&'a str>, now: u64) -> impl Iterator<Item = Log<'a>> + 'a {
    let ring = format!("{:016x}", batch.ring_id);
    let gap = batch.gap.zip(gap_text).map(|(g, text)| gap_log(&g, text, ring.clone(), now));
    gap.into_iter().chain(batch.records.iter().map(move |r| Log {
        time: r.timestamp,
        severity: None,
        body: std::str::from_utf8(&r.payload).map_or(Body::Bytes(&r.payload), Body::Str),
        attributes: vec![
            ("ringship.ring_id", Value::Str(ring.clone())),
            ("ringship.seq", Value::Int(i64::try_from(r.seq).unwrap_or(i64::MAX))),
        ],
        event_name: None,
    }))
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
    Log {
        time: now,
        severity: Some((SEVERITY_WARN, "WARN")),
        body: Body::Str(text),
        attributes: vec![
            ("ringship.ring_id", Value::Str(ring)),
            ("ringship.gap.first_seq", int(g.first_seq)),
            ("ringship.gap.last_seq", int(g.last_seq)),
            ("ringship.gap.count", int(g.missing())),
            ("ringship.gap.cause", Value::Str(g.cause_label().to_owned())),
            ("ringship.gap.rejected", int(g.rejected)),
            ("ringship.gap.refused", int(g.refused)),
            ("ringship.gap.first_ts", int(g.first_ts)),
            ("ringship.gap.last_ts", int(g.last_ts)),
        ],
        event_name: Some("ringship.gap"),
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
    if let Some((number, text)) = log.severity {
        varint_field(out, 2, number); // severity_number
        string(out, 3, text); // severity_text
    }
    let mut body = Vec::new();
    match log.body {
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
    fixed64(out, 11, log.time); // observed_time_unix_nano
    if let Some(name) = log.event_name {
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
        if let Some((number, text)) = log.severity {
            let _ = write!(out, r#""severityNumber":{number},"severityText":"#);
            json_string(&mut out, text);
            out.push(b',');
        }
        out.extend_from_slice(br#""body":"#);
        match log.body {
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
        if let Some(name) = log.event_name {
            out.extend_from_slice(br#","eventName":"#);
            json_string(&mut out, name);
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}]}]}");
    out
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
