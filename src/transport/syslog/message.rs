//! RFC 5424 message formatting: the header with its priority, RFC 3339
//! timestamp, host and app name, the `[ringship@32473 seq=".."]`
//! structured data that lets a receiver de-duplicate, the splitting of a
//! record too long for one message into `part="i/n"` messages that no
//! receiver shortens, and the gap-notice message with MSGID `gap`. The
//! octet counting or RELP frame around each message is added as it is
//! sent (`SyslogTransport::send`, `relp`).

use std::time::{SystemTime, UNIX_EPOCH};

use super::SyslogConfig;
use crate::transport::{BatchRecord, GapNotice};

/// Private enterprise number used in structured-data IDs (reserved for
/// documentation examples by RFC 5612).
const PEN: u32 = 32473;

/// RFC 3339 UTC timestamp with microseconds.
pub(super) fn rfc3339(nanos: u64) -> String {
    crate::civil::rfc3339(nanos, 6)
}

/// Formats one record as RFC 5424 messages: one, or, when that would be
/// longer than `cfg.max_message_len`, one per part of the payload.
pub(crate) fn format_record(cfg: &SyslogConfig, ring_id: u64, r: &BatchRecord) -> Vec<Vec<u8>> {
    let pri = u32::from(cfg.facility) * 8 + u32::from(cfg.severity);
    let ts = rfc3339(r.timestamp);
    let head = |part: &str| {
        format!(
            "<{pri}>1 {ts} {} {} - - [ringship@{PEN} seq=\"{}\"{part} ring=\"{ring_id:016x}\"] ",
            cfg.hostname, cfg.app_name, r.seq
        )
        .into_bytes()
    };
    let whole = head("");
    if whole.len() + r.payload.len() <= cfg.max_message_len {
        let mut m = whole;
        m.extend_from_slice(&r.payload);
        return vec![m];
    }
    // Room for a part's payload next to the longest part header (no
    // record has a million parts: 16 MiB in parts of at least 500 bytes).
    let room = cfg.max_message_len.saturating_sub(head(" part=\"999999/999999\"").len()).max(4);
    let parts = split_payload(&r.payload, room);
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut m = head(&format!(" part=\"{}/{n}\"", i + 1));
            m.extend_from_slice(chunk);
            m
        })
        .collect()
}

/// Cuts `payload` into pieces of at most `room` bytes (`room` >= 4),
/// between characters if it is UTF-8, so each piece is text on its own.
///
/// No piece but the last ends in a byte a receiver may strip from the end
/// of a message (syslog-ng drops trailing line feeds, rsyslog can drop
/// trailing whitespace and control characters): such a run is moved to
/// the start of the next piece, where nothing strips it. Only a run longer
/// than `room` cannot be kept whole that way: its pieces are all
/// strippable bytes, cut at `room`.
pub(super) fn split_payload(payload: &[u8], room: usize) -> Vec<&[u8]> {
    let text = std::str::from_utf8(payload).ok();
    let mut parts = Vec::with_capacity(payload.len().div_ceil(room));
    let mut start = 0;
    while start < payload.len() {
        let mut end = (start + room).min(payload.len());
        if let Some(t) = text {
            // A character is at most 4 bytes: one of the 4 cuts before
            // `end` is a boundary, and all of them are past `start`.
            while !t.is_char_boundary(end) {
                end -= 1;
            }
        }
        if end < payload.len() {
            let mut keep = end;
            while keep > start {
                let (len, strippable) = last_char(payload, text, keep);
                if !strippable {
                    break;
                }
                keep -= len;
            }
            // `keep == start`: the whole piece is strippable bytes, a run
            // longer than `room` that no cut can keep whole.
            if keep > start {
                end = keep;
            }
        }
        parts.push(&payload[start..end]);
        start = end;
    }
    parts
}

/// The last character of `payload[..end]` (its last byte if `payload` is
/// not UTF-8; `end` > 0 and on a character boundary): its length in bytes,
/// and whether a receiver may strip it from the end of a message.
fn last_char(payload: &[u8], text: Option<&str>, end: usize) -> (usize, bool) {
    match text.and_then(|t| t[..end].chars().next_back()) {
        Some(c) => (c.len_utf8(), strippable_char(c)),
        None => (1, strippable_byte(payload[end - 1])),
    }
}

/// Whether a receiver may strip `c` from the end of a message: whitespace
/// (line feeds, carriage returns, spaces, tabs, and Unicode's, which a
/// downstream `trim` takes) and control characters (NUL...).
fn strippable_char(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

/// [`strippable_char`] for a payload that is not UTF-8: space and the
/// ASCII control bytes.
fn strippable_byte(b: u8) -> bool {
    b == b' ' || b.is_ascii_control()
}

/// Formats a gap notice as an RFC 5424 message with MSGID `gap`.
pub(crate) fn format_gap(cfg: &SyslogConfig, ring_id: u64, g: &GapNotice) -> Vec<u8> {
    let pri = u32::from(cfg.facility) * 8 + 4; // warning
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
    format!(
        "<{pri}>1 {} {} {} - gap [ringship-gap@{PEN} first=\"{}\" last=\"{}\" count=\"{}\" cause=\"{}\" rejected=\"{}\" refused=\"{}\" ring=\"{ring_id:016x}\"] records lost before the next batch",
        rfc3339(now),
        cfg.hostname,
        cfg.app_name,
        g.first_seq,
        g.last_seq,
        g.missing(),
        g.cause_label(),
        g.rejected,
        g.refused
    )
    .into_bytes()
}
