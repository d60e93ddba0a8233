//! Tests of the syslog transport: timestamps, RFC 5424 formatting and the
//! splitting of long records into parts no receiver shortens, RELP frame
//! parsing, settings validation, and, against loopback listeners, the
//! reconnect after a receiver closes, the RELP `close` on drop, and the
//! connect that tries every resolved address.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::connection::connect_any;
use super::message::{format_gap, format_record, rfc3339, split_payload};

/// The ring id the tests' records come from.
const RING: u64 = 0x00ab_cdef_0123_4567;
use super::relp::{RELP_CLOSE_WAIT, parse_frame};
use super::*;
use crate::transport::BatchRecord;

#[test]
fn timestamps_are_rfc3339_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(rfc3339(1_795_500_000_123_456_789), "2026-11-24T06:00:00.123456Z"); // date -u -d @1795500000
    assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000000Z");
}

#[test]
fn records_format_as_rfc5424_with_their_seq() {
    let cfg = SyslogConfig { hostname: "h".into(), ..SyslogConfig::default() };
    let r = BatchRecord { seq: 42, timestamp: 0, payload: bytes::Bytes::from_static(b"hello") };
    assert_eq!(
        format_record(&cfg, RING, &r),
        vec![b"<14>1 1970-01-01T00:00:00.000000Z h ringship - - [ringship@32473 seq=\"42\" ring=\"00abcdef01234567\"] hello".to_vec()]
    );
}

#[test]
fn a_gap_notice_names_its_ring() {
    let cfg = SyslogConfig { hostname: "h".into(), ..SyslogConfig::default() };
    let g = crate::transport::GapNotice {
        first_seq: 3,
        last_seq: 5,
        first_ts: 0,
        last_ts: 0,
        cause: crate::stats::LossCause::Overwritten,
        rejected: 2,
        refused: 0,
    };
    let m = String::from_utf8(format_gap(&cfg, RING, &g)).unwrap();
    assert!(
        m.contains(r#"[ringship-gap@32473 first="3" last="5" count="3" cause="overwritten" rejected="2" refused="0" ring="00abcdef01234567"]"#),
        "{m}"
    );
}

/// A record too long for one message goes in parts, each at most
/// `max_message_len`, numbered, that join to the payload byte for
/// byte; UTF-8 text is cut between characters. Sent whole, it would be
/// truncated by the receiver (rsyslog: to 8 KiB) and still acknowledged.
#[test]
fn a_record_longer_than_a_message_goes_in_parts() {
    let host = "h".repeat(255);
    let cfg = SyslogConfig { hostname: host.clone(), max_message_len: 1024, ..SyslogConfig::default() };
    let text = "abc-é-€-𝄞-".repeat(700);
    let binary: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for payload in [text.into_bytes(), binary] {
        let r = BatchRecord { seq: 7, timestamp: 0, payload: bytes::Bytes::from(payload.clone()) };
        let messages = format_record(&cfg, RING, &r);
        let n = messages.len();
        assert!(n > 1 && n <= payload.len() / 500 + 1, "{n} parts");
        let mut joined = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            assert!(m.len() <= 1024, "part {i}: {} bytes", m.len());
            let head = format!(
                "<14>1 1970-01-01T00:00:00.000000Z {host} ringship - - [ringship@32473 seq=\"7\" part=\"{}/{n}\" ring=\"00abcdef01234567\"] ",
                i + 1
            );
            assert!(m.starts_with(head.as_bytes()), "part {i}");
            let chunk = &m[head.len()..];
            if std::str::from_utf8(&payload).is_ok() {
                assert!(std::str::from_utf8(chunk).is_ok(), "part {i} cut inside a character");
            }
            joined.extend_from_slice(chunk);
        }
        assert!(joined == payload, "parts do not join to the payload");
    }
    // Exactly at the limit: one message, no part.
    let cfg = SyslogConfig { hostname: "h".into(), max_message_len: 1024, ..SyslogConfig::default() };
    let head = format_record(&cfg, RING, &BatchRecord { seq: 7, timestamp: 0, payload: bytes::Bytes::new() })[0].len();
    let fits = BatchRecord { seq: 7, timestamp: 0, payload: bytes::Bytes::from(vec![b'x'; 1024 - head]) };
    assert_eq!(format_record(&cfg, RING, &fits).len(), 1);
    let over = BatchRecord { payload: bytes::Bytes::from(vec![b'x'; 1025 - head]), ..fits };
    assert_eq!(format_record(&cfg, RING, &over).len(), 2);
}

/// Whether `chunk` ends in a byte a receiver may strip from a
/// message's end: a space or ASCII control byte, or, in UTF-8 text,
/// any whitespace or control character.
fn ends_strippable(chunk: &[u8], utf8: bool) -> bool {
    match chunk.last() {
        Some(&b) if b == b' ' || b.is_ascii_control() => true,
        Some(_) if utf8 => {
            let c = std::str::from_utf8(chunk).expect("a UTF-8 part").chars().next_back();
            c.is_some_and(|c| c.is_whitespace() || c.is_control())
        }
        _ => false,
    }
}

/// Random records of words, multibyte characters, and line feeds,
/// carriage returns, spaces, tabs and NULs alone and in runs; one in
/// four is made invalid UTF-8 (0xff bytes here and there).
fn random_records(seed: u64, count: usize, max_len: usize) -> Vec<Vec<u8>> {
    let pieces = "\n|\n\n\n|\r\n| |    |\t|\0|word|x-y.z|é|€|𝄞|ab𝄞é€|\u{a0}|\u{2028}|\u{85}";
    let pieces: Vec<&str> = pieces.split('|').collect();
    let mut rng = seed | 1;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as usize
    };
    (0..count)
        .map(|_| {
            let len = next(max_len + 1);
            let mut r = Vec::with_capacity(len + 64);
            while r.len() < len {
                match next(8) {
                    0 => r.extend(std::iter::repeat_n(b'\n', 1 + next(40))),
                    1 => r.extend(std::iter::repeat_n(b' ', 1 + next(40))),
                    _ => r.extend_from_slice(pieces[next(pieces.len())].as_bytes()),
                }
            }
            if next(4) == 0 && !r.is_empty() {
                for _ in 0..=next(3) {
                    let at = next(r.len());
                    r[at] = 0xff;
                }
            }
            r
        })
        .collect()
}

/// A receiver strips a message's trailing line feeds (syslog-ng) or
/// whitespace and control characters (rsyslog can): a part ending in
/// them would come back short, and so would the record joined from its
/// parts. On records full of line feeds and spaces, where a cut at the
/// limit often falls just after one, no part but a record's last ends
/// in such a byte, every message fits the limit, and the parts join to
/// the record byte for byte.
#[test]
fn no_part_ends_in_bytes_a_receiver_strips() {
    const HEADER: &str = "<14>1 1970-01-01T00:00:00.000000Z h ringship - - ";
    let cfg = SyslogConfig { hostname: "h".into(), max_message_len: 1024, ..SyslogConfig::default() };
    let mut split = 0;
    for (seq, payload) in random_records(0x5eed_1717, 300, 6000).into_iter().enumerate() {
        let utf8 = std::str::from_utf8(&payload).is_ok();
        let r = BatchRecord { seq: seq as u64, timestamp: 0, payload: bytes::Bytes::from(payload.clone()) };
        let messages = format_record(&cfg, RING, &r);
        let n = messages.len();
        if n > 1 {
            split += 1;
        }
        let mut joined = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            assert!(m.len() <= 1024, "seq {seq} part {i}: {} bytes", m.len());
            let part = if n == 1 { String::new() } else { format!(" part=\"{}/{n}\"", i + 1) };
            let head = format!("{HEADER}[ringship@32473 seq=\"{seq}\"{part} ring=\"00abcdef01234567\"] ");
            assert!(m.starts_with(head.as_bytes()), "seq {seq} part {i}");
            let chunk = &m[head.len()..];
            if utf8 {
                assert!(std::str::from_utf8(chunk).is_ok(), "seq {seq} part {i} cut inside a character");
            }
            if i + 1 < n {
                assert!(!chunk.is_empty(), "seq {seq} part {i} is empty");
                assert!(
                    !ends_strippable(chunk, utf8),
                    "seq {seq} part {}/{n} ends in {:?}",
                    i + 1,
                    &chunk[chunk.len().saturating_sub(8)..]
                );
            }
            joined.extend_from_slice(chunk);
        }
        assert!(joined == payload, "seq {seq}: the parts do not join to the record");
    }
    assert!(split > 100, "only {split} records went in parts");
}

/// A run of strippable bytes longer than a part cannot be kept whole
/// (every part inside it is all strippable): those parts are cut at
/// the limit, and the rest of the record still splits as above.
#[test]
fn a_strippable_run_longer_than_a_part_is_cut_at_the_limit() {
    for room in 4..=24 {
        for payload in random_records(room as u64, 40, 400) {
            let utf8 = std::str::from_utf8(&payload).is_ok();
            let parts = split_payload(&payload, room);
            for (i, part) in parts.iter().enumerate() {
                assert!(!part.is_empty() && part.len() <= room, "room {room}: part {i} of {} bytes", part.len());
                if utf8 {
                    assert!(std::str::from_utf8(part).is_ok(), "room {room}: part {i} cut inside a character");
                }
                if i + 1 < parts.len() && ends_strippable(part, utf8) {
                    // Only a part wholly inside a run ends so.
                    let all = if utf8 {
                        std::str::from_utf8(part).unwrap().chars().all(|c| c.is_whitespace() || c.is_control())
                    } else {
                        part.iter().all(|&b| b == b' ' || b.is_ascii_control())
                    };
                    assert!(all, "room {room}: part {i} ends in a strippable byte: {part:?}");
                }
            }
            assert!(parts.concat() == payload, "room {room}: the parts do not join to the record");
        }
    }
    let lfs = [b"ab".as_slice(), [b'\n'; 10].as_slice(), b"cd".as_slice()].concat();
    let expected: Vec<&[u8]> = vec![&b"ab"[..], &b"\n\n\n\n"[..], &b"\n\n\n\n"[..], &b"\n\ncd"[..]];
    assert_eq!(split_payload(&lfs, 4), expected, "the run of line feeds starts a part");
}

#[test]
fn relp_frames_parse_whole_or_not_at_all() {
    let f = b"12 rsp 6 200 OK\n3 serverclose 0\n";
    let (txnr, cmd, data, used) = parse_frame(f).unwrap().unwrap();
    assert_eq!((txnr, cmd.as_str(), &data[..], used), (12, "rsp", &b"200 OK"[..], 16));
    let (txnr, cmd, data, _) = parse_frame(&f[used..]).unwrap().unwrap();
    assert_eq!((txnr, cmd.as_str(), data.len()), (3, "serverclose", 0));
    for cut in 0..15 {
        assert!(parse_frame(&f[..cut]).unwrap().is_none(), "cut at {cut}");
    }
    assert!(parse_frame(b"x rsp 6 200 OK\n").is_err());
    assert!(parse_frame(b"1 rsp 3 200 OK\n").is_err());
    // No data, with or without a space before the LF: all of it used.
    let f = b"3 rsp 0 \n4 rsp 0\n";
    let (txnr, _, data, used) = parse_frame(f).unwrap().unwrap();
    assert_eq!((txnr, data.len(), used), (3, 0, 9));
    assert_eq!(parse_frame(&f[used..]).unwrap().unwrap().0, 4);
    assert!(parse_frame(b"3 rsp 0 ").unwrap().is_none());
    assert!(parse_frame(b"3 rsp 0 x").is_err());
}

#[test]
fn settings_that_break_rfc5424_are_refused() {
    let ok = SyslogConfig { hostname: "h".into(), ..SyslogConfig::default() };
    assert!(SyslogTransport::new(ok.clone()).is_ok());
    assert!(SyslogTransport::new(SyslogConfig { hostname: "-".into(), ..ok.clone() }).is_ok());
    for (bad, field) in [
        (SyslogConfig { app_name: "my app".into(), ..ok.clone() }, "app_name"),
        (SyslogConfig { app_name: "a".repeat(49), ..ok.clone() }, "app_name"),
        (SyslogConfig { hostname: String::new(), ..ok.clone() }, "hostname"),
        (SyslogConfig { hostname: "höst".into(), ..ok.clone() }, "hostname"),
        (SyslogConfig { facility: 24, ..ok.clone() }, "facility"),
        (SyslogConfig { severity: 8, ..ok.clone() }, "severity"),
        (SyslogConfig { max_message_len: MIN_SYSLOG_MESSAGE_LEN - 1, ..ok.clone() }, "max_message_len"),
    ] {
        let err = SyslogTransport::factory(bad).err().expect("refused");
        assert!(matches!(&err, crate::Error::Config(m) if m.contains(field)), "{err}");
    }
}

fn one_record_batch(seq: u64) -> Batch {
    let r = BatchRecord { seq, timestamp: 0, payload: bytes::Bytes::from_static(b"hello") };
    Batch { ring_id: RING, records: vec![r], gap: None }
}

fn ctx() -> SendContext {
    SendContext::until(Instant::now() + Duration::from_secs(5), crate::transport::CancelToken::new())
}

/// Reads one octet-counted message from `s`.
fn read_message(s: &mut TcpStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut len = Vec::new();
    let mut b = [0u8; 1];
    while s.read_exact(&mut b).is_ok() && b[0] != b' ' {
        len.push(b[0]);
    }
    let mut m = vec![0u8; String::from_utf8(len).unwrap().parse().unwrap()];
    s.read_exact(&mut m).unwrap();
    String::from_utf8(m).unwrap()
}

/// A receiver that restarts while the connection is idle: the next
/// batch goes over a new connection, not into the closed one (where
/// it would be written, reported sent, and lost).
#[test]
fn a_connection_the_receiver_closed_is_not_reused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = Endpoint::new(format!("tcp://{}", listener.local_addr().unwrap()));
    let mut t = SyslogTransport::new(SyslogConfig { hostname: "h".into(), ..SyslogConfig::default() }).unwrap();
    t.send(&endpoint, &one_record_batch(1), &ctx()).unwrap();
    let (mut first, _) = listener.accept().unwrap();
    assert!(read_message(&mut first).contains("seq=\"1\""));
    drop(first);
    // Let the close reach the sender's socket.
    std::thread::sleep(Duration::from_millis(50));
    t.send(&endpoint, &one_record_batch(2), &ctx()).unwrap();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut second = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("batch 2 went into the closed connection: no new one ({e})"),
        }
    };
    second.set_nonblocking(false).unwrap();
    assert!(read_message(&mut second).contains("seq=\"2\""));
}

/// The commands a fake RELP server received, and when it answered `close`.
type RelpSession = (Vec<String>, Option<Instant>);

/// A RELP server on loopback for one session: answers each command
/// with `200 OK` but `close`, which it answers (an empty `rsp`, as
/// librelp does) after `close_delay`, or never if `None`. Its thread
/// returns the commands received, in order, and when it answered
/// `close`.
fn fake_relp_server(close_delay: Option<Duration>) -> (Endpoint, std::thread::JoinHandle<RelpSession>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = Endpoint::new(format!("relp://{}", listener.local_addr().unwrap()));
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut inbox: Vec<u8> = Vec::new();
        let mut commands: Vec<String> = Vec::new();
        let mut answered: Option<Instant> = None;
        let mut buf = [0u8; 4096];
        loop {
            while let Some((txnr, command, _, used)) = parse_frame(&inbox).unwrap() {
                inbox.drain(..used);
                if command != "close" {
                    s.write_all(format!("{txnr} rsp 6 200 OK\n").as_bytes()).unwrap();
                } else if let Some(delay) = close_delay {
                    std::thread::sleep(delay);
                    answered = Some(Instant::now());
                    s.write_all(format!("{txnr} rsp 0\n").as_bytes()).unwrap();
                }
                commands.push(command);
            }
            // Until the client closes the connection (or 5 s pass).
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return (commands, answered),
                Ok(n) => inbox.extend_from_slice(&buf[..n]),
            }
        }
    });
    (endpoint, server)
}

/// A transport dropped (its worker ended: a shutdown) ends its RELP
/// session with `close` and waits for the answer, so that rsyslog does
/// not log a broken session at every shutdown; a server that never
/// answers holds the drop up for `RELP_CLOSE_WAIT` at most.
#[test]
fn a_dropped_transport_closes_its_relp_session_and_waits_for_the_answer() {
    let cfg = SyslogConfig { hostname: "h".into(), ..SyslogConfig::default() };
    let (endpoint, server) = fake_relp_server(Some(Duration::from_millis(150)));
    let mut t = SyslogTransport::new(cfg.clone()).unwrap();
    t.send(&endpoint, &one_record_batch(1), &ctx()).unwrap();
    drop(t);
    let dropped = Instant::now();
    let (commands, answered) = server.join().unwrap();
    assert_eq!(commands, ["open", "syslog", "close"]);
    assert!(dropped >= answered.expect("close answered"), "the drop did not wait for the answer to close");

    let (endpoint, server) = fake_relp_server(None);
    let mut t = SyslogTransport::new(cfg).unwrap();
    t.send(&endpoint, &one_record_batch(2), &ctx()).unwrap();
    let started = Instant::now();
    drop(t);
    let waited = started.elapsed();
    assert!(
        waited >= RELP_CLOSE_WAIT / 2 && waited < RELP_CLOSE_WAIT + Duration::from_secs(2),
        "waited {waited:?} for an answer that never came"
    );
    let (commands, answered) = server.join().unwrap();
    assert_eq!((commands, answered), (vec!["open".to_owned(), "syslog".into(), "close".into()], None));
}

/// A host name's first address may have no listener (`localhost` as
/// `::1` for a receiver on 127.0.0.1): the next ones are tried.
#[test]
fn every_resolved_address_is_tried_in_turn() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let s = connect_any(&[closed, open.local_addr().unwrap()], deadline).unwrap();
    assert_eq!(s.peer_addr().unwrap(), open.local_addr().unwrap());
    let err = connect_any(&[closed], deadline).unwrap_err();
    assert_eq!(err.kind, crate::transport::SendErrorKind::Retryable);
    assert!(err.message.contains(&closed.to_string()), "{err}");
}

#[test]
fn an_endpoint_that_is_not_host_and_port_is_a_permanent_failure() {
    let mut t = SyslogTransport::new(SyslogConfig { hostname: "h".into(), ..SyslogConfig::default() }).unwrap();
    let err = t.send(&Endpoint::new("tcp://127.0.0.1"), &one_record_batch(1), &ctx()).unwrap_err();
    assert_eq!(err.kind, crate::transport::SendErrorKind::Permanent, "{err}");
}
