//! The encoder against the official OTLP definitions: Python's generated
//! classes (`pip install opentelemetry-proto`) decode both encodings of one
//! batch to the same message, with every value as sent.

use super::encode::{Envelope, Value, json, protobuf};
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

fn batch() -> Batch {
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

fn envelope() -> Envelope {
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
