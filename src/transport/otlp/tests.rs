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
