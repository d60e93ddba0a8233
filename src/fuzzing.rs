//! Internals the fuzz targets (`fuzz/`) reach, compiled only with
//! `--cfg fuzzing` (cargo-fuzz sets it).

use std::time::Duration;

use crate::ring::frame;
use crate::sender::machine::{Action, BatchInfo, Machine, MachineConfig, Outcome, RingMark};
use crate::transport::SendErrorKind;

/// Decodes the frame `buf` claims to be at logical position `pos`; returns
/// `(seq, timestamp, payload)` of an intact record frame. Panics if a frame
/// is accepted whose checksum does not match its bytes.
pub fn decode_frame(buf: &[u8], pos: u64, max_len: usize) -> Option<(u64, u64, Vec<u8>)> {
    let h = frame::decode_header(buf, pos, max_len)?;
    if h.is_pad {
        return None;
    }
    let payload = buf.get(frame::HEADER_LEN..frame::HEADER_LEN + h.len)?;
    if !frame::crc_ok(buf, &h) {
        return None;
    }
    // Independent re-check: the CRC over bytes 4..32 and the payload.
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[4..frame::HEADER_LEN]), payload);
    assert_eq!(crc.to_le_bytes(), buf[..4], "a frame with a bad checksum was accepted");
    Some((h.seq, h.ts, payload.to_vec()))
}

/// Encodes a record frame.
pub fn encode_frame(seq: u64, ts: u64, pos: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode_record(&mut out, seq, ts, pos, payload, false);
    out
}

/// Drives the sender's state machine with choices taken from `input`,
/// following the protocol (a read is answered after `Read`, a send result
/// after `Send`), and checks it: the cursor never moves back, only an
/// accepted batch is acked, and never beyond it, and the read limits stay
/// between one and the configured ones.
pub fn drive_machine(input: &[u8]) {
    let cfg = MachineConfig {
        max_batch_records: 1 + usize::from(input.first().copied().unwrap_or(0) % 8),
        max_batch_bytes: 1 << 12,
        linger: Duration::from_millis(u64::from(input.get(1).copied().unwrap_or(0))),
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(100),
    };
    let mut m = Machine::new(cfg, 1, 1, 9, std::sync::Arc::default());
    let mut now: u64 = 0;
    let mut generation = 1;
    let mut next_seq = 1u64;
    let mut last_accepted: Option<u64> = None;
    let mut last_refused: Option<u64> = None;
    let mut in_flight: Option<BatchInfo> = None;
    let mut bytes = input.iter().skip(2).copied();
    for _ in 0..10_000 {
        let Some(b) = bytes.next() else { break };
        now += u64::from(b) * 1_000_000;
        match b % 5 {
            0 => {
                generation += 1;
                m.handle_switch(generation);
            }
            1 => m.handle_wake(RingMark::default()),
            2 => m.handle_shutdown(),
            _ => {}
        }
        let cursor_before = m.cursor();
        match m.poll_action(now) {
            Some(Action::Read { from_seq }) => {
                assert_eq!(from_seq, m.cursor());
                // Halved after refusals for size, never to nothing, never
                // above what was configured.
                let (max_records, max_bytes) = m.read_limits();
                assert!((1..=cfg.max_batch_records).contains(&max_records), "read limit {max_records}");
                assert!((1..=cfg.max_batch_bytes).contains(&max_bytes), "read limit {max_bytes} bytes");
                let n = u64::from(bytes.next().unwrap_or(0) % 6).min(max_records as u64);
                if n == 0 {
                    m.handle_batch(now, None, RingMark::default());
                } else {
                    let first = from_seq.max(next_seq.min(from_seq + 3));
                    // Bytes as a read returns them: up to one record past
                    // the limit.
                    let size = usize::from(bytes.next().unwrap_or(0)) * 64;
                    let info = BatchInfo {
                        first_seq: first,
                        last_seq: first + n - 1,
                        records: n as usize,
                        bytes: size.min(max_bytes + (16 << 10)),
                        notice_rejected: None,
                    };
                    next_seq = next_seq.max(info.last_seq + 1);
                    in_flight = Some(info);
                    m.handle_batch(now, Some(info), RingMark::default());
                }
            }
            Some(Action::Send) => {
                let info = in_flight.expect("a send follows a read that found records");
                let sent = generation;
                let outcome = match bytes.next().unwrap_or(0) % 6 {
                    0 => Outcome::Accepted,
                    1 => Outcome::Failed { kind: SendErrorKind::Retryable, retry_after: None },
                    2 => Outcome::Failed { kind: SendErrorKind::Permanent, retry_after: None },
                    3 => Outcome::Failed { kind: SendErrorKind::Cancelled, retry_after: None },
                    4 => Outcome::Failed { kind: SendErrorKind::TooLarge, retry_after: None },
                    _ => Outcome::Failed { kind: SendErrorKind::TimedOut, retry_after: Some(Duration::from_secs(1)) },
                };
                if outcome == Outcome::Accepted {
                    last_accepted = Some(info.last_seq);
                }
                let too_large = outcome == Outcome::Failed { kind: SendErrorKind::TooLarge, retry_after: None };
                if too_large && info.records == 1 {
                    last_refused = Some(info.last_seq);
                }
                m.handle_send_result(now, sent, outcome);
            }
            Some(Action::Ack { seq, .. }) => {
                assert_eq!(Some(seq), last_accepted, "acked a batch the endpoint did not accept");
                last_accepted = None;
            }
            Some(Action::Refuse { seq }) => {
                assert_eq!(Some(seq), last_refused, "refused a batch the endpoint did not refuse alone for its size");
                last_refused = None;
            }
            Some(Action::Wait { until }) => assert!(until > now, "waits for a moment already past"),
            Some(Action::Stop) => return,
            None => panic!("the driver answers every read and send"),
        }
        assert!(m.cursor() >= cursor_before, "the cursor moved back");
    }
}

/// Parses RELP frames from `buf` one after another, as the client reads
/// responses, and checks each: it never claims more bytes than there are,
/// its data is exactly what the length said, and parsing stops cleanly on
/// a partial or malformed frame.
#[cfg(feature = "syslog")]
pub fn parse_relp(mut buf: &[u8]) {
    while let Ok(Some((_txnr, command, data, used))) = crate::transport::parse_frame(buf) {
        assert!(used <= buf.len() && used > command.len() + data.len(), "frame claims {used} of {} bytes", buf.len());
        assert!(!command.contains(' '));
        if !data.is_empty() {
            assert_eq!(buf[used - 1], b'\n');
            assert_eq!(&buf[used - 1 - data.len()..used - 1], &data[..]);
        }
        buf = &buf[used..];
    }
}
