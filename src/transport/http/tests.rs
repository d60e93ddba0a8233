//! Tests of the HTTP transport: the NDJSON and length-prefixed bodies,
//! the refusal of endpoint headers the transport sets itself, the gap
//! header, `Retry-After` parsing, the mapping of statuses and TLS
//! certificate failures to retry decisions, and the receiver's answer cut
//! to one short line for the error.

use super::*;
use crate::stats::LossCause;
use crate::transport::SendErrorKind;
use crate::transport::{BatchRecord, GapNotice};

fn batch() -> Batch {
    Batch {
        ring_id: 0x0123_4567_89ab_cdef,
        records: vec![
            BatchRecord { seq: 7, timestamp: 1, payload: bytes::Bytes::from_static(b"a \"quoted\"\nline") },
            BatchRecord { seq: 9, timestamp: 2, payload: bytes::Bytes::from_static(&[0xff, 0x00]) },
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

#[test]
fn ndjson_escapes_and_falls_back_to_base64() {
    let body = String::from_utf8(encode_body(&batch(), &HttpConfig::default())).unwrap();
    assert_eq!(
        body,
        "{\"seq\":7,\"ts\":1,\"msg\":\"a \\\"quoted\\\"\\nline\"}\n{\"seq\":9,\"ts\":2,\"msg_b64\":\"/wA=\"}\n"
    );
}

#[test]
fn ndjson_embeds_one_line_json_payloads_as_is_when_asked() {
    let json = br#"{"level":"WARN","n":[1,2]}"#;
    let mut b = batch();
    b.records[0].payload = bytes::Bytes::from_static(json);
    b.records.push(BatchRecord { seq: 10, timestamp: 3, payload: bytes::Bytes::from_static(b"{\"a\":\n1}") });
    let body = String::from_utf8(encode_body(&b, &HttpConfig::default().embed_json(true))).unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], r#"{"seq":7,"ts":1,"json":{"level":"WARN","n":[1,2]}}"#);
    // Not UTF-8, and JSON over two lines: as before.
    assert_eq!(lines[1], r#"{"seq":9,"ts":2,"msg_b64":"/wA="}"#);
    assert_eq!(lines[2], r#"{"seq":10,"ts":3,"msg":"{\"a\":\n1}"}"#);
    for l in lines {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
    // Off by default.
    assert!(
        String::from_utf8(encode_body(&b, &HttpConfig::default()))
            .unwrap()
            .starts_with(r#"{"seq":7,"ts":1,"msg":"{\"level"#)
    );
}

#[test]
fn length_prefixed_is_byte_exact() {
    let body = encode_body(&batch(), &HttpConfig::default().format(BodyFormat::LengthPrefixed));
    assert_eq!(&body[..8], &7u64.to_le_bytes());
    assert_eq!(&body[16..20], &15u32.to_le_bytes());
    assert_eq!(&body[20..35], b"a \"quoted\"\nline");
    assert_eq!(body.len(), 2 * 20 + 15 + 2);
}

/// An endpoint header named like one the transport sets would go out
/// twice, and the receiver could take either value: it is a permanent
/// failure that names it.
#[test]
fn endpoint_headers_that_the_transport_sets_itself_are_refused() {
    assert!(check_headers(&Endpoint::new("http://x").header("Authorization", "Bearer t")).is_ok());
    for name in ["X-Ringship-Gap", "content-type", "Content-Length"] {
        let err = check_headers(&Endpoint::new("http://x").header(name, "1")).unwrap_err();
        assert_eq!(err.kind, SendErrorKind::Permanent);
        assert!(err.message.contains(name), "{err:?}");
    }
}

#[test]
fn gap_header_names_the_window() {
    assert_eq!(
        gap_header(&batch()).unwrap(),
        "3-6; count=4; cause=overwritten; rejected=1; refused=0; first-ts=10; last-ts=20"
    );
    let only_rejections = GapNotice {
        first_seq: 0,
        last_seq: 0,
        first_ts: 0,
        last_ts: 0,
        cause: LossCause::Overwritten,
        rejected: 4,
        refused: 0,
    };
    let b = Batch { ring_id: 1, records: Vec::new(), gap: Some(only_rejections) };
    assert_eq!(gap_header(&b).unwrap(), "0-0; count=0; cause=none; rejected=4; refused=0; first-ts=0; last-ts=0");
}

#[test]
fn retry_after_is_seconds_or_an_http_date() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_747); // Sun, 06 Nov 1994 08:49:07 GMT
    let wait = |v: &str| parse_retry_after(v, now);
    assert_eq!(wait(" 120 "), Some(Duration::from_secs(120)));
    // The three date formats RFC 9110 asks recipients to accept.
    assert_eq!(wait("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::from_secs(30)));
    assert_eq!(wait("Sunday, 06-Nov-94 08:49:37 GMT"), Some(Duration::from_secs(30)));
    assert_eq!(wait("Sun Nov  6 08:49:37 1994"), Some(Duration::from_secs(30)));
    assert_eq!(wait("Sun, 06 Nov 1994 08:00:00 GMT"), Some(Duration::ZERO), "a date passed: retry now");
    assert_eq!(wait("-5"), None);
    assert_eq!(wait("tomorrow"), None);
}

/// A server certificate TLS verification refused, as ureq reports
/// rustls's verdict (an I/O error around it), is a permanent failure
/// that says what to fix: no retry passes until the server or the
/// configuration changes, and the bare verdict
/// (`Other(OtherError(CaUsedAsEndEntity))`) tells an operator little.
#[test]
fn certificate_failures_are_permanent_and_say_what_to_fix() {
    for (error, says) in [
        ("io: invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))", "presents a CA certificate"),
        ("io: invalid peer certificate: UnknownIssuer", "give its CA with Tls::ca_file"),
        (
            "io: invalid peer certificate: certificate not valid for name \"logs.example\"; certificate is \
             only valid for other.example",
            "Tls::server_name",
        ),
        (
            "io: invalid peer certificate: certificate expired: verification time 1795500000 (UNIX), but \
             certificate is not valid after 1795400000 (100000 seconds ago)",
            "renew the server's certificate",
        ),
        ("rustls: invalid peer certificate: BadSignature", "fix the server's certificate"),
    ] {
        let e = request_failure(error, "the CAs given");
        assert_eq!(e.kind, SendErrorKind::Permanent, "{error}");
        assert!(e.message.starts_with("the server's TLS certificate is not accepted: "), "{e}");
        assert!(e.message.contains(says) && e.message.ends_with("(trusted: the CAs given)"), "{e}");
    }
    let e = request_failure("io: peer sent no certificates", "");
    assert_eq!(e.kind, SendErrorKind::Permanent, "{e}");
    for alert in ["HandshakeFailure", "UnknownCA", "CertificateRequired", "ProtocolVersion"] {
        let e = request_failure(&format!("io: received fatal alert: {alert}"), "");
        assert_eq!(e.kind, SendErrorKind::Permanent, "{e}");
        assert!(e.message.contains("refused the TLS handshake") && e.message.contains(alert), "{e}");
    }
    let e = request_failure("io: peer is incompatible: NoCipherSuitesInCommon", "");
    assert!(e.kind == SendErrorKind::Permanent && e.message.contains("NoCipherSuitesInCommon"), "{e}");
    // What a later attempt can get past stays retryable.
    for error in [
        "io: Connection refused (os error 111)",
        "io: Connection reset by peer (os error 104)",
        "host not found",
        "io: received fatal alert: InternalError",
        "io: received corrupt message of type InvalidContentType",
    ] {
        let e = request_failure(error, "");
        assert_eq!((e.kind, e.message.as_str()), (SendErrorKind::Retryable, error));
    }
}

/// A receiver's answer goes into the error (and health's `last_error`)
/// as one short line: an HTML error page's tags and line breaks are
/// dropped.
#[test]
fn a_receivers_answer_becomes_one_short_line() {
    let nginx = "<html>\r\n<head><title>413 Request Entity Too Large</title></head>\r\n<body>\r\n<center><h1>413 \
                 Request Entity Too Large</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n\
                 </html>\r\n";
    assert_eq!(sanitize(nginx), "413 Request Entity Too Large 413 Request Entity Too Large nginx/1.24.0");
    let page = "<!DOCTYPE html><html><head><style>p { color: red }</style><script>if (1 < 2) {}</script>\
                </head><body><p>Bad\n\n   request:\tmissing   seq</p></body></html>";
    assert_eq!(sanitize(page), "Bad request: missing seq");
    // Not HTML: its angle brackets stay; whitespace and control
    // characters still collapse.
    assert_eq!(sanitize("  limit < 5 MiB\r\n\r\nretry later \0 "), "limit < 5 MiB retry later");
    let long = sanitize(&"é".repeat(300));
    assert_eq!((long.chars().count(), long.ends_with('…')), (MAX_REASON + 1, true));
    assert_eq!(sanitize(&"word ".repeat(100)).chars().count(), MAX_REASON, "a cut after a space drops it");
    assert_eq!(sanitize(" \n\t"), "");
}

#[test]
fn statuses_map_to_retry_decisions() {
    assert!(classify(204, None).is_ok());
    assert_eq!(classify(503, Some("7")).unwrap_err().retry_after, Some(Duration::from_secs(7)));
    assert_eq!(classify(503, Some("soon")).unwrap_err().retry_after, None);
    assert_eq!(classify(429, None).unwrap_err().kind, SendErrorKind::Retryable);
    assert_eq!(classify(408, None).unwrap_err().kind, SendErrorKind::Retryable);
    assert_eq!(classify(400, None).unwrap_err().kind, SendErrorKind::Permanent);
    assert_eq!(classify(404, None).unwrap_err().kind, SendErrorKind::Permanent);
    assert_eq!(classify(413, None).unwrap_err().kind, SendErrorKind::TooLarge);
    for redirect in [301, 302, 303, 307, 308] {
        let e = classify(redirect, None).unwrap_err();
        assert_eq!(e.kind, SendErrorKind::Permanent);
        assert!(e.message.contains("redirect"), "{e}");
    }
}
