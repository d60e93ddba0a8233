//! The encoder against the official OTLP definitions: Python's generated
//! classes (`pip install opentelemetry-proto`) decode both encodings of one
//! batch to the same message, with every value as sent.

use super::encode::{Envelope, Parts, Value, json, protobuf};
use crate::stats::LossCause;
use crate::transport::{Batch, BatchRecord, GapNotice};

const DECODE: &str = r#"
import sys, json
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
out = {}
for kind, path in (("pb", sys.argv[1]), ("json", sys.argv[2])):
    r = ExportLogsServiceRequest()
    body = open(path, "rb").read()
    if kind == "json":
        json_format.Parse(body, r)
    else:
        r.ParseFromString(body)
    out[kind] = json_format.MessageToDict(r, preserving_proto_field_name=True, use_integers_for_enums=True)
print(json.dumps(out))
"#;

pub(super) fn batch() -> Batch {
    Batch {
        ring_id: 0x0123_4567_89ab_cdef,
        records: vec![
            BatchRecord { seq: 7, timestamp: 1_795_500_000_123_456_789, payload: "hé \"q\"\n\u{1}".into() },
            BatchRecord { seq: 8, timestamp: 2, payload: bytes::Bytes::from_static(&[0xff, 0, b'a']) },
            BatchRecord { seq: 9, timestamp: 3, payload: bytes::Bytes::new() },
        ],
        gap: Some(GapNotice {
            first_seq: 3,
            last_seq: 6,
            first_ts: 10,
            last_ts: 20,
            cause: LossCause::Overwritten,
            rejected: 1,
            refused: 2,
        }),
    }
}

pub(super) fn envelope() -> Envelope {
    Envelope {
        resource: vec![
            ("service.name".into(), Value::Str("checkout".into())),
            ("n".into(), Value::Int(-1)),
            ("z".into(), Value::Int(0)),
            ("e".into(), Value::Str(String::new())),
        ],
    }
}

#[test]
fn the_official_decoder_reads_both_encodings_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (pb, js) = (dir.path().join("body.pb"), dir.path().join("body.json"));
    std::fs::write(&pb, protobuf(&batch(), &envelope(), 5)).unwrap();
    std::fs::write(&js, json(&batch(), &envelope(), 5)).unwrap();
    let out = std::process::Command::new("python3").arg("-c").arg(DECODE).arg(&pb).arg(&js).output().expect("python3");
    assert!(
        out.status.success(),
        "the official decoder failed (pip install opentelemetry-proto): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pb"], v["json"], "both encodings decode to the same message");
    let rl = &v["pb"]["resource_logs"][0];
    let attrs = &rl["resource"]["attributes"];
    assert_eq!(attrs[0], serde_json::json!({"key": "service.name", "value": {"string_value": "checkout"}}));
    assert_eq!(attrs[1]["value"], serde_json::json!({"int_value": "-1"}));
    assert_eq!(attrs[2]["value"], serde_json::json!({"int_value": "0"}), "0 is a value, not unset");
    assert_eq!(attrs[3]["value"], serde_json::json!({"string_value": ""}), "an empty string is a value");
    let scope = &rl["scope_logs"][0];
    assert_eq!(scope["scope"]["name"], "ringship");
    let logs = scope["log_records"].as_array().unwrap();
    assert_eq!(logs.len(), 4);
    let gap = &logs[0];
    assert_eq!(
        (&gap["severity_number"], &gap["severity_text"], &gap["event_name"]),
        (&13.into(), &"WARN".into(), &"ringship.gap".into())
    );
    assert_eq!(gap["time_unix_nano"], "5");
    let gap_attr =
        |k: &str| gap["attributes"].as_array().unwrap().iter().find(|a| a["key"] == k).map(|a| a["value"].clone());
    assert_eq!(gap_attr("ringship.gap.first_seq"), Some(serde_json::json!({"int_value": "3"})));
    assert_eq!(gap_attr("ringship.gap.count"), Some(serde_json::json!({"int_value": "4"})));
    assert_eq!(gap_attr("ringship.gap.cause"), Some(serde_json::json!({"string_value": "overwritten"})));
    assert_eq!(gap_attr("ringship.gap.rejected"), Some(serde_json::json!({"int_value": "1"})));
    assert_eq!(gap_attr("ringship.gap.refused"), Some(serde_json::json!({"int_value": "2"})));
    let r = &logs[1];
    assert_eq!(r["body"], serde_json::json!({"string_value": "hé \"q\"\n\u{1}"}));
    assert_eq!(
        (&r["time_unix_nano"], &r["observed_time_unix_nano"]),
        (&"1795500000123456789".into(), &"1795500000123456789".into())
    );
    assert_eq!(
        r["attributes"][0],
        serde_json::json!({"key": "ringship.ring_id", "value": {"string_value": "0123456789abcdef"}})
    );
    assert_eq!(r["attributes"][1], serde_json::json!({"key": "ringship.seq", "value": {"int_value": "7"}}));
    assert!(r.get("severity_number").is_none());
    assert_eq!(logs[2]["body"], serde_json::json!({"bytes_value": "/wBh"}));
    assert_eq!(logs[3]["body"], serde_json::json!({"string_value": ""}), "an empty payload is an empty string body");
}

/// Decodes every `N.pb` and `N.json` in a directory with the official
/// classes and prints, per case, what a receiver reads: the resource,
/// and each record's seq, ring id and body (bytes in base64) and each gap
/// record's attributes.
const DECODE_MANY: &str = r#"
import base64, json, os, sys
from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
def value(v):
    k = v.WhichOneof("value")
    if k == "bytes_value": return {"bytes": base64.b64encode(v.bytes_value).decode()}
    return getattr(v, k) if k else None
def read(r):
    out = {"resource": [], "records": [], "gaps": []}
    for rl in r.resource_logs:
        out["resource"] += [[kv.key, value(kv.value)] for kv in rl.resource.attributes]
        for sl in rl.scope_logs:
            for lr in sl.log_records:
                a = {kv.key: value(kv.value) for kv in lr.attributes}
                if lr.event_name == "ringship.gap":
                    out["gaps"].append(a)
                else:
                    out["records"].append([a["ringship.seq"], a["ringship.ring_id"], value(lr.body), lr.time_unix_nano])
    return out
d = sys.argv[1]
result = {}
for name in sorted(os.listdir(d)):
    case, kind = name.split(".")
    r = ExportLogsServiceRequest()
    body = open(os.path.join(d, name), "rb").read()
    if kind == "json":
        json_format.Parse(body, r)
    else:
        r.ParseFromString(body)
    result.setdefault(case, {})[kind] = read(r)
print(json.dumps(result))
"#;

/// What a receiver should read from `batch`, as `DECODE_MANY` prints it.
fn expected(batch: &Batch, envelope: &Envelope) -> serde_json::Value {
    use base64::Engine as _;
    let body = |p: &[u8]| match std::str::from_utf8(p) {
        Ok(s) => serde_json::json!(s),
        Err(_) => serde_json::json!({"bytes": base64::engine::general_purpose::STANDARD.encode(p)}),
    };
    let resource: Vec<serde_json::Value> = envelope
        .resource
        .iter()
        .map(|(k, v)| match v {
            Value::Str(s) => serde_json::json!([k, s]),
            Value::Int(i) => serde_json::json!([k, i]),
            Value::Double(d) => serde_json::json!([k, d]),
            Value::Bool(b) => serde_json::json!([k, b]),
        })
        .collect();
    let records: Vec<serde_json::Value> = batch
        .records
        .iter()
        .map(|r| serde_json::json!([r.seq, format!("{:016x}", batch.ring_id), body(&r.payload), r.timestamp]))
        .collect();
    let gaps: Vec<serde_json::Value> = batch
        .gap
        .iter()
        .map(|g| {
            serde_json::json!({
                "ringship.ring_id": format!("{:016x}", batch.ring_id),
                "ringship.gap.first_seq": g.first_seq,
                "ringship.gap.last_seq": g.last_seq,
                "ringship.gap.count": g.missing(),
                "ringship.gap.cause": g.cause_label(),
                "ringship.gap.rejected": g.rejected,
                "ringship.gap.refused": g.refused,
                "ringship.gap.first_ts": g.first_ts,
                "ringship.gap.last_ts": g.last_ts,
            })
        })
        .collect();
    serde_json::json!({"resource": resource, "records": records, "gaps": gaps})
}

/// Random batches (payloads of every byte, text in many scripts, empty
/// ones, huge seqs and timestamps, gap notices of every cause, resource
/// attributes with odd keys and values), each in both encodings, all read
/// back by the official decoder exactly as sent.
#[test]
fn random_batches_decode_exactly_with_the_official_classes() {
    let mut rng = 0x00dd_ba11_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let texts = ["", "plain", "é日本🎉", "quote \" back \\ nl \n tab \t nul \u{0}", "\u{7f}\u{80}\u{ffff}"];
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for case in 0..300u64 {
        let n = next() % 6;
        let first = next() % (1 << 40) + 1;
        let records = (0..n)
            .map(|i| {
                let payload: Vec<u8> = match next() % 3 {
                    0 => (0..next() % 300).map(|_| next() as u8).collect(),
                    1 => texts[(next() % texts.len() as u64) as usize].repeat((next() % 4) as usize).into_bytes(),
                    _ => Vec::new(),
                };
                BatchRecord { seq: first + i, timestamp: next() >> 1, payload: payload.into() }
            })
            .collect();
        let loss_causes = [
            LossCause::Overwritten,
            LossCause::Corrupted,
            LossCause::LostUnsynced,
            LossCause::Mixed,
            LossCause::Skipped,
            LossCause::Refused,
        ];
        let gap = (next() % 2 == 0).then(|| GapNotice {
            first_seq: first.saturating_sub(5).max(1),
            last_seq: first.saturating_sub(1),
            first_ts: next() >> 1,
            last_ts: next() >> 1,
            cause: loss_causes[(next() % loss_causes.len() as u64) as usize],
            rejected: next() % 1000,
            refused: next() % 1000,
        });
        let batch = Batch { ring_id: next(), records, gap };
        let envelope = Envelope {
            resource: vec![
                ("service.name".into(), Value::Str(texts[(next() % texts.len() as u64) as usize].into())),
                (
                    format!("k.{case} \"x\""),
                    Value::Int(i64::try_from(next() >> 1).unwrap() * if next() % 2 == 0 { -1 } else { 1 }),
                ),
            ],
        };
        std::fs::write(dir.path().join(format!("{case:03}.pb")), protobuf(&batch, &envelope, 5)).unwrap();
        std::fs::write(dir.path().join(format!("{case:03}.json")), json(&batch, &envelope, 5)).unwrap();
        cases.push(expected(&batch, &envelope));
    }
    let out =
        std::process::Command::new("python3").arg("-c").arg(DECODE_MANY).arg(dir.path()).output().expect("python3");
    assert!(out.status.success(), "the official decoder failed: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (case, want) in cases.iter().enumerate() {
        for kind in ["pb", "json"] {
            let read = &got[format!("{case:03}")][kind];
            assert_eq!(read, want, "case {case}, {kind}");
        }
    }
}

/// A front-end's record (docs/FRONTENDS.md) goes as a log record of its
/// own kind: severity from its level, its message as the body, its fields,
/// target, spans and truncation as attributes, its trace context as the
/// record's; other JSON goes as its text.
#[test]
fn front_end_records_become_structured_log_records() {
    let record = r#"{"ts":"2026-12-07T14:43:20.123456789Z","level":"WARN","target":"app::auth","message":"login failed","fields":{"user":"alice","attempt":3,"ratio":0.5,"ok":false,"big":18446744073709551615},"spans":[{"name":"request"}],"trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","truncated":true}"#;
    let batch = Batch {
        ring_id: 1,
        records: vec![
            BatchRecord { seq: 1, timestamp: 5, payload: record.into() },
            BatchRecord { seq: 2, timestamp: 6, payload: r#"{"level":"INFO","msg":"no ts"}"#.into() },
        ],
        gap: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let (pb, js) = (dir.path().join("body.pb"), dir.path().join("body.json"));
    std::fs::write(&pb, protobuf(&batch, &Envelope::default(), 5)).unwrap();
    std::fs::write(&js, json(&batch, &Envelope::default(), 5)).unwrap();
    let out = std::process::Command::new("python3").arg("-c").arg(DECODE).arg(&pb).arg(&js).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // The JSON encoding's hex ids read as base64 by json_format: compare
    // the protobuf decode, and the rest of both.
    let logs = &v["pb"]["resource_logs"][0]["scope_logs"][0]["log_records"];
    let r = &logs[0];
    assert_eq!((&r["severity_number"], &r["severity_text"]), (&13.into(), &"WARN".into()));
    assert_eq!(r["body"], serde_json::json!({"string_value": "login failed"}));
    assert_eq!(r["trace_id"], "CvdlGRbNQ92ESOshHIAxnA==", "0af7651916cd43dd8448eb211c80319c in base64");
    assert_eq!(r["span_id"], "t61rcWkgMzE=");
    let attr = |k: &str| r["attributes"].as_array().unwrap().iter().find(|a| a["key"] == k).map(|a| a["value"].clone());
    assert_eq!(attr("user"), Some(serde_json::json!({"string_value": "alice"})));
    assert_eq!(attr("attempt"), Some(serde_json::json!({"int_value": "3"})));
    assert_eq!(attr("ratio"), Some(serde_json::json!({"double_value": 0.5})));
    assert_eq!(attr("ok"), Some(serde_json::json!({"bool_value": false})));
    assert_eq!(attr("big"), Some(serde_json::json!({"string_value": "18446744073709551615"})));
    assert_eq!(attr("target"), Some(serde_json::json!({"string_value": "app::auth"})));
    assert_eq!(attr("spans"), Some(serde_json::json!({"string_value": "[{\"name\":\"request\"}]"})));
    assert_eq!(attr("truncated"), Some(serde_json::json!({"bool_value": true})));
    assert_eq!(attr("ringship.seq"), Some(serde_json::json!({"int_value": "1"})));
    // Without a `ts`, not a front-end record: its text is the body.
    assert_eq!(logs[1]["body"], serde_json::json!({"string_value": r#"{"level":"INFO","msg":"no ts"}"#}));
    assert!(logs[1].get("severity_number").is_none());
    // The JSON encoding decodes to the same, ids apart (hex there).
    let jl = &v["json"]["resource_logs"][0]["scope_logs"][0]["log_records"];
    assert_eq!(jl[0]["attributes"], r["attributes"]);
    assert_eq!(jl[0]["severity_number"], 13);
}

/// Decodes `pb` and `json` as `ExportTraceServiceRequest`s with the
/// official classes; prints both as dicts (ids in base64).
const DECODE_TRACES: &str = r#"
import base64, sys, json
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
def b64_ids(o):
    if isinstance(o, dict):
        return {k: base64.b64encode(bytes.fromhex(v)).decode() if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str) else b64_ids(v) for k, v in o.items()}
    return [b64_ids(x) for x in o] if isinstance(o, list) else o
out = {}
for kind, path in (("pb", sys.argv[1]), ("json", sys.argv[2])):
    r = ExportTraceServiceRequest()
    body = open(path, "rb").read()
    if kind == "json":
        json_format.ParseDict(b64_ids(json.loads(body)), r)
    else:
        r.ParseFromString(body)
    out[kind] = json_format.MessageToDict(r, preserving_proto_field_name=True, use_integers_for_enums=True)
print(json.dumps(out))
"#;

/// The OpenTelemetry front-end's span records (docs/FRONTENDS.md) go as
/// spans, grouped by scope, every part in its place as the official
/// classes read it, in both encodings; a span record without valid ids
/// or times goes as a log record; with traces off, every span record does.
#[test]
fn span_records_become_spans_the_official_classes_read() {
    let span = r#"{"type":"span","ts":"2026-12-07T14:43:20.123456789Z","end":"2026-12-07T14:43:21.5Z","name":"charge","target":"payments","kind":"client","status":"error","status_message":"gateway timeout","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"b7ad6b7169203331","parent_span_id":"00f067aa0ba902b7","fields":{"amount":12,"currency":"EUR"},"events":[{"ts":"2026-12-07T14:43:20.2Z","name":"retry","fields":{"attempt":2}}],"links":[{"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b8"}]}"#;
    let root = r#"{"type":"span","ts":"1970-01-01T00:00:00.000000001Z","end":"2000-02-29T00:00:00Z","name":"root","target":"web","kind":"server","status":"unset","trace_id":"0af7651916cd43dd8448eb211c80319c","span_id":"1111111111111111"}"#;
    let broken = r#"{"type":"span","ts":"2026-12-07T14:43:20Z","end":"2026-12-07T14:43:21Z","name":"bad","trace_id":"0af7","span_id":"b7ad6b7169203331","level":"INFO","message":"not a span"}"#;
    let batch = Batch {
        ring_id: 0xfeed,
        records: vec![
            BatchRecord { seq: 4, timestamp: 1, payload: span.into() },
            BatchRecord { seq: 5, timestamp: 2, payload: "plain".into() },
            BatchRecord { seq: 6, timestamp: 3, payload: root.into() },
            BatchRecord { seq: 7, timestamp: 4, payload: broken.into() },
        ],
        gap: None,
    };
    let parts = Parts::of(&batch, true, 9);
    assert_eq!((parts.logs(), parts.spans()), (2, 2));
    let dir = tempfile::tempdir().unwrap();
    let (pb, js) = (dir.path().join("t.pb"), dir.path().join("t.json"));
    std::fs::write(&pb, parts.traces_protobuf(&envelope())).unwrap();
    std::fs::write(&js, parts.traces_json(&envelope())).unwrap();
    let out =
        std::process::Command::new("python3").arg("-c").arg(DECODE_TRACES).arg(&pb).arg(&js).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pb"], v["json"], "both encodings decode to the same message");
    let rs = &v["pb"]["resource_spans"][0];
    assert_eq!(rs["resource"]["attributes"][0]["value"], serde_json::json!({"string_value": "checkout"}));
    let scopes = rs["scope_spans"].as_array().unwrap();
    assert_eq!(scopes.len(), 2);
    assert_eq!((&scopes[0]["scope"]["name"], &scopes[1]["scope"]["name"]), (&"payments".into(), &"web".into()));
    let s = &scopes[0]["spans"][0];
    assert_eq!(s["trace_id"], "CvdlGRbNQ92ESOshHIAxnA==", "0af7651916cd43dd8448eb211c80319c in base64");
    assert_eq!(s["span_id"], "t61rcWkgMzE=");
    assert_eq!(s["parent_span_id"], "APBnqgupArc=", "00f067aa0ba902b7 in base64");
    assert_eq!((&s["name"], &s["kind"]), (&"charge".into(), &3.into()));
    // `date -u -d 2026-12-07T14:43:20Z +%s` is 1796654600.
    assert_eq!(s["start_time_unix_nano"], "1796654600123456789");
    assert_eq!(s["end_time_unix_nano"], "1796654601500000000");
    assert_eq!(s["status"], serde_json::json!({"code": 2, "message": "gateway timeout"}));
    let attr = |k: &str| s["attributes"].as_array().unwrap().iter().find(|a| a["key"] == k).map(|a| a["value"].clone());
    assert_eq!(attr("amount"), Some(serde_json::json!({"int_value": "12"})));
    assert_eq!(attr("currency"), Some(serde_json::json!({"string_value": "EUR"})));
    assert_eq!(attr("ringship.ring_id"), Some(serde_json::json!({"string_value": "000000000000feed"})));
    assert_eq!(attr("ringship.seq"), Some(serde_json::json!({"int_value": "4"})));
    assert_eq!(
        s["events"],
        serde_json::json!([{"time_unix_nano": "1796654600200000000", "name": "retry",
            "attributes": [{"key": "attempt", "value": {"int_value": "2"}}]}])
    );
    assert_eq!(s["links"], serde_json::json!([{"trace_id": "S/kvNXezTaajzpKdDg5HNg==", "span_id": "APBnqgupArg="}]));
    let root = &scopes[1]["spans"][0];
    assert_eq!((&root["kind"], root.get("parent_span_id")), (&2.into(), None));
    assert_eq!(
        (&root["start_time_unix_nano"], &root["end_time_unix_nano"]),
        (&"1".into(), &"951782400000000000".into())
    );
    assert!(root.get("status").is_none_or(|st| st.get("code").is_none()), "unset: {root}");
    // The broken span record and the plain one are log records.
    std::fs::write(&pb, parts.logs_protobuf(&envelope())).unwrap();
    std::fs::write(&js, parts.logs_json(&envelope())).unwrap();
    let out = std::process::Command::new("python3").arg("-c").arg(DECODE).arg(&pb).arg(&js).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logs = &v["pb"]["resource_logs"][0]["scope_logs"][0]["log_records"];
    assert_eq!(logs[0]["body"], serde_json::json!({"string_value": "plain"}));
    assert_eq!(logs[1]["body"], serde_json::json!({"string_value": "not a span"}));
    assert_eq!(logs[1]["time_unix_nano"], "1796654600000000000", "the event's own time");
    assert_eq!(logs[1]["observed_time_unix_nano"], "4", "the append time");
    // Traces off: every record a log record.
    let off = Parts::of(&batch, false, 9);
    assert_eq!((off.logs(), off.spans()), (4, 0));
}

#[test]
fn front_end_times_parse_as_rfc3339_utc_and_anything_else_does_not() {
    use super::encode::rfc3339_nanos;
    for (text, want) in [
        ("1970-01-01T00:00:00Z", Some(0)),
        ("1970-01-01T00:00:00.000000001Z", Some(1)),
        ("2000-02-29T00:00:00.5Z", Some(951_782_400_500_000_000)),
        ("2026-12-07T14:43:20.123456789Z", Some(1_796_654_600_123_456_789)),
        ("2100-03-01T00:00:00.000000000Z", Some(4_107_542_400_000_000_000)),
        ("2026-12-07T14:43:20.1234567891Z", None),
        ("2026-12-07T14:43:20.Z", None),
        ("2026-12-07T14:43:20+01:00", None),
        ("2026-13-07T14:43:20Z", None),
        ("2026-12-07 14:43:20Z", None),
        ("1969-12-31T23:59:59Z", None),
        ("2026-12-07T14:43:2xZ", None),
        ("", None),
        ("2026-12-07T14:43:20.١Z", None),
    ] {
        assert_eq!(rfc3339_nanos(text), want, "{text}");
    }
}

/// Prints, per `N.pb`/`N.json` pair of `ExportTraceServiceRequest`s, what
/// a receiver reads of each span.
const DECODE_MANY_TRACES: &str = r#"
import base64, json, os, sys
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
def value(v):
    k = v.WhichOneof("value")
    return getattr(v, k) if k else None
def attrs(kvs):
    return [[kv.key, value(kv.value)] for kv in kvs]
def b64_ids(o):
    if isinstance(o, dict):
        return {k: base64.b64encode(bytes.fromhex(v)).decode() if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str) else b64_ids(v) for k, v in o.items()}
    return [b64_ids(x) for x in o] if isinstance(o, list) else o
d = sys.argv[1]
result = {}
for name in sorted(os.listdir(d)):
    case, kind = name.split(".")
    r = ExportTraceServiceRequest()
    body = open(os.path.join(d, name), "rb").read()
    if kind == "json":
        json_format.ParseDict(b64_ids(json.loads(body)), r)
    else:
        r.ParseFromString(body)
    spans = []
    for rs in r.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                spans.append([ss.scope.name, s.name, s.kind, s.trace_id.hex(), s.span_id.hex(), s.parent_span_id.hex(),
                    s.start_time_unix_nano, s.end_time_unix_nano, attrs(s.attributes),
                    [[e.time_unix_nano, e.name, attrs(e.attributes)] for e in s.events],
                    [[l.trace_id.hex(), l.span_id.hex()] for l in s.links], s.status.code, s.status.message])
    result.setdefault(case, {})[kind] = spans
print(json.dumps(result))
"#;

/// A random span record as `RingSpanProcessor` writes it, at `seq` of
/// ring `ring_id`, with its scope and what `DECODE_MANY_TRACES` should
/// read of it.
fn random_span(next: &mut impl FnMut() -> u64, ring_id: u64, seq: u64) -> (BatchRecord, String, serde_json::Value) {
    let texts = ["", "plain", "é日本🎉", "quote \" back \\ nl \n tab \t nul \u{0}", "\u{7f}\u{80}\u{ffff}"];
    let mut pick = |list: &[&'static str]| list[usize::try_from(next() % list.len() as u64).unwrap()];
    let (scope, name, key_text) = (pick(&texts[..3]), pick(&texts), pick(&texts));
    let (kind, status) =
        (pick(&["internal", "server", "client", "producer", "consumer"]), pick(&["unset", "ok", "error"]));
    let (message, event_name) = (if status == "error" { pick(&texts) } else { "" }, pick(&texts));
    let hex = |b: u64, n: usize| format!("{b:016x}{:016x}", b.rotate_left(17))[..n].to_string();
    // `date` writes the times: an oracle apart from the encoder's parser.
    let time = |nanos: u64| {
        let secs = nanos / 1_000_000_000;
        let out = std::process::Command::new("date")
            .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S"])
            .output()
            .unwrap();
        format!("{}.{:09}Z", String::from_utf8(out.stdout).unwrap().trim(), nanos % 1_000_000_000)
    };
    let start = next() % 7_258_118_400_000_000_000; // 1970 to 2200
    let end = start + next() % 1_000_000_000_000;
    let (tid, sid) = (hex(next() | 1, 32), hex(next() | 1, 16));
    let parent = (next() % 2 == 0).then(|| hex(next() | 1, 16));
    let int = i64::try_from(next() >> 1).unwrap() * if next() % 2 == 0 { -1 } else { 1 };
    let (key, flag) = (format!("{key_text} {seq}"), next() % 2 == 0);
    let event = (next() % 2 == 0).then_some((start + 5, event_name));
    let mut record = serde_json::json!({
        "type": "span", "ts": time(start), "end": time(end), "name": name, "target": scope,
        "kind": kind, "status": status, "trace_id": tid, "span_id": sid,
        "fields": {key.clone(): int, "flag": flag, "text": name},
        "links": [{"trace_id": tid, "span_id": sid}],
    });
    if let Some(p) = &parent {
        record["parent_span_id"] = p.clone().into();
    }
    if !message.is_empty() {
        record["status_message"] = message.into();
    }
    if let Some((ts, name)) = event {
        record["events"] = serde_json::json!([{"ts": time(ts), "name": name, "fields": {"n": 1}}]);
    }
    // Fields in serde_json's order (sorted keys), then the stamps.
    let mut attributes =
        vec![(key, serde_json::json!(int)), ("flag".into(), flag.into()), ("text".into(), name.into())];
    attributes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut attributes: Vec<serde_json::Value> =
        attributes.into_iter().map(|(k, v)| serde_json::json!([k, v])).collect();
    attributes.push(serde_json::json!(["ringship.ring_id", format!("{ring_id:016x}")]));
    attributes.push(serde_json::json!(["ringship.seq", seq]));
    let events = event.map_or(serde_json::json!([]), |(ts, name)| serde_json::json!([[ts, name, [["n", 1]]]]));
    let kind_number =
        ["internal", "server", "client", "producer", "consumer"].iter().position(|k| *k == kind).unwrap() + 1;
    let status_code = ["unset", "ok", "error"].iter().position(|s| *s == status).unwrap();
    let want = serde_json::json!([
        scope,
        name,
        kind_number,
        tid,
        sid,
        parent.unwrap_or_default(),
        start,
        end,
        attributes,
        events,
        [[tid, sid]],
        status_code,
        message
    ]);
    (BatchRecord { seq, timestamp: 1, payload: record.to_string().into() }, scope.to_owned(), want)
}

/// Random span records (names, scopes, attribute keys and values in many
/// scripts and with control characters, every kind and status, times from
/// 1970 to 2200, events and links), each batch in both encodings, read by
/// the official classes exactly as written, grouped by scope in order of
/// first use.
#[test]
fn random_span_records_decode_exactly_with_the_official_classes() {
    let mut rng = 0x5eed_5a11_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cases = Vec::new();
    for case in 0..40u64 {
        let n = 1 + next() % 5;
        let spans: Vec<_> = (0..n).map(|i| random_span(&mut next, case, case * 10 + i + 1)).collect();
        let mut order: Vec<&String> = Vec::new();
        for (_, scope, _) in &spans {
            if !order.contains(&scope) {
                order.push(scope);
            }
        }
        let grouped: Vec<serde_json::Value> = order
            .iter()
            .flat_map(|s| spans.iter().filter(move |(_, w, _)| w == *s).map(|(_, _, v)| v.clone()))
            .collect();
        let batch = Batch { ring_id: case, records: spans.iter().map(|(r, _, _)| r.clone()).collect(), gap: None };
        let parts = Parts::of(&batch, true, 5);
        assert_eq!(parts.spans(), batch.records.len(), "case {case}: every record a span");
        std::fs::write(dir.path().join(format!("{case:03}.pb")), parts.traces_protobuf(&Envelope::default())).unwrap();
        std::fs::write(dir.path().join(format!("{case:03}.json")), parts.traces_json(&Envelope::default())).unwrap();
        cases.push(serde_json::Value::Array(grouped));
    }
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(DECODE_MANY_TRACES)
        .arg(dir.path())
        .output()
        .expect("python3");
    assert!(out.status.success(), "the official decoder failed: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (case, want) in cases.iter().enumerate() {
        for kind in ["pb", "json"] {
            assert_eq!(&got[format!("{case:03}")][kind], want, "case {case}, {kind}");
        }
    }
}
