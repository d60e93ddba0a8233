//! Record frames: the unit written to the data file.
//!
//! A frame is a 32-byte header followed by the payload, padded with zeros to
//! a multiple of 8 bytes (docs/FORMAT.md):
//!
//! ```text
//! 0..4    crc32c of bytes 4..32 of the header, then of the payload (records only)
//! 4..8    u32: low 24 bits payload length, high 8 bits kind (1 record, 2 pad;
//!         a record's high bit set: reserved while an earlier append was
//!         still writing)
//! 8..16   u64 seq (for a pad: the seq of the record that follows it)
//! 16..24  u64 timestamp, nanoseconds since the Unix epoch (0 for a pad)
//! 24..32  u64 logical position of the frame
//! ```
//!
//! The logical position is the number of ring bytes written before the frame
//! since the ring was created; the frame lives at `pos % capacity`. Storing
//! it makes every frame self-locating: a frame left over from an earlier lap
//! around the ring never passes for a current one.

/// Size of a frame header.
pub(crate) const HEADER_LEN: usize = 32;
/// Frames start at multiples of this.
pub(crate) const ALIGN: u64 = 8;
/// Largest payload the length field can describe.
pub(crate) const MAX_PAYLOAD: usize = (1 << 24) - 1;

/// Longest payload a frame in a ring of `cap` bytes can hold: what reads
/// and recovery accept, whatever `max_record_len` is now (it bounds new
/// appends only, and may have been larger when the ring was written).
pub(crate) fn max_stored_len(cap: u64) -> usize {
    MAX_PAYLOAD.min(usize::try_from(cap.saturating_sub(HEADER_LEN as u64)).unwrap_or(usize::MAX))
}

/// Seqs and positions stay below this (a ring writing 2^62 bytes would take
/// centuries): a header naming more is damage, and arithmetic on the ones
/// accepted cannot overflow.
pub(crate) const MAX_POSITION: u64 = 1 << 62;

/// The 8-byte word a failed write's bytes are overwritten with when it is
/// undone (docs/FORMAT.md, "Undone writes"). Never a valid header start: its
/// kind byte is neither a record's nor a pad's.
pub(crate) const UNDONE: [u8; 8] = *b"rsUNDONE";

const KIND_RECORD: u8 = 1;
const KIND_PAD: u8 = 2;
/// Set in a record's kind byte when its append reserved its span while an
/// earlier append was still writing (appends write outside the ring's
/// lock): a kill may have left the earlier span unwritten below this frame.
const BEHIND_FLIGHT: u8 = 0x80;

/// Ring bytes a record of `len` payload bytes occupies.
pub(crate) fn frame_size(len: usize) -> u64 {
    (HEADER_LEN as u64 + len as u64).next_multiple_of(ALIGN)
}

/// A decoded header whose fields passed the cheap plausibility checks (the
/// CRC is checked separately, once the payload is at hand).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) crc: u32,
    pub(crate) is_pad: bool,
    /// A record whose append reserved its span while an earlier append was
    /// still writing ([`BEHIND_FLIGHT`]).
    pub(crate) behind: bool,
    pub(crate) len: usize,
    pub(crate) seq: u64,
    pub(crate) ts: u64,
    pub(crate) pos: u64,
}

impl Header {
    /// Ring bytes the frame occupies (for a pad: header plus its body).
    pub(crate) fn size(&self) -> u64 {
        if self.is_pad { HEADER_LEN as u64 + self.len as u64 } else { frame_size(self.len) }
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Decodes a header if its kind is known and its stored position is `pos`.
/// Returns `None` for anything else: zeros, garbage, or a frame of another
/// lap. `max_len` bounds a record's payload length.
pub(crate) fn decode_header(buf: &[u8], pos: u64, max_len: usize) -> Option<Header> {
    let buf = buf.get(..HEADER_LEN)?;
    if u64_at(buf, 24) != pos || pos >= MAX_POSITION || u64_at(buf, 8) >= MAX_POSITION {
        return None;
    }
    let len_kind = u32_at(buf, 4);
    let kind = (len_kind >> 24) as u8;
    let len = (len_kind & 0x00ff_ffff) as usize;
    let is_pad = match kind & !BEHIND_FLIGHT {
        KIND_RECORD if len <= max_len => false,
        KIND_PAD if kind == KIND_PAD => true,
        _ => return None,
    };
    let behind = kind & BEHIND_FLIGHT != 0;
    Some(Header { crc: u32_at(buf, 0), is_pad, behind, len, seq: u64_at(buf, 8), ts: u64_at(buf, 16), pos })
}

/// Whether a frame's bytes (its header, then a record's payload) match the
/// stored CRC, which covers header bytes 4..32 and the payload. A `frame`
/// too short to hold them does not match.
pub(crate) fn crc_ok(frame: &[u8], header: &Header) -> bool {
    let covered = if header.is_pad { HEADER_LEN } else { HEADER_LEN + header.len };
    frame.get(4..covered).is_some_and(|b| crc32c::crc32c(b) == header.crc)
}

fn put_header(out: &mut Vec<u8>, kind: u8, len: usize, seq: u64, ts: u64, pos: u64) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&((u32::from(kind) << 24) | len as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&pos.to_le_bytes());
    start
}

/// Appends an encoded record frame to `out`; `behind`: its append
/// reserved it while an earlier one was still writing.
pub(crate) fn encode_record(out: &mut Vec<u8>, seq: u64, ts: u64, pos: u64, payload: &[u8], behind: bool) {
    debug_assert!(payload.len() <= MAX_PAYLOAD);
    let kind = if behind { KIND_RECORD | BEHIND_FLIGHT } else { KIND_RECORD };
    let start = put_header(out, kind, payload.len(), seq, ts, pos);
    out.extend_from_slice(payload);
    // The CRC covers header bytes 4..32 and the payload, contiguous here.
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    let padded = start + frame_size(payload.len()) as usize;
    out.resize(padded, 0);
}

/// Appends a pad header that marks the `body_len` bytes after it, up to the
/// end of the lap, as unused.
pub(crate) fn encode_pad(out: &mut Vec<u8>, next_seq: u64, pos: u64, body_len: usize) {
    let start = put_header(out, KIND_PAD, body_len, next_seq, 0, pos);
    let crc = crc32c::crc32c(&out[start + 4..start + HEADER_LEN]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, 99, 4096, b"hello", false);
        assert_eq!(buf.len() as u64, frame_size(5));
        let h = decode_header(&buf, 4096, 100).unwrap();
        assert_eq!((h.seq, h.ts, h.len, h.is_pad), (7, 99, 5, false));
        assert!(crc_ok(&buf, &h));
    }

    #[test]
    fn wrong_position_or_flipped_bit_is_rejected() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, 99, 4096, b"hello", false);
        assert!(decode_header(&buf, 4096 + 8, 100).is_none());
        for bit in 0..(HEADER_LEN + 5) * 8 {
            let mut b = buf.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            if let Some(h) = decode_header(&b, 4096, 100) {
                assert!(!crc_ok(&b, &h), "bit {bit}");
            }
        }
    }

    #[test]
    fn a_record_reserved_behind_a_flight_says_so_and_a_pad_cannot() {
        let mut buf = Vec::new();
        encode_record(&mut buf, 7, 99, 4096, b"hello", true);
        let h = decode_header(&buf, 4096, 100).unwrap();
        assert!(h.behind && !h.is_pad);
        assert!(crc_ok(&buf, &h));
        let mut pad = Vec::new();
        encode_pad(&mut pad, 3, 8, 100);
        pad[7] |= BEHIND_FLIGHT;
        assert_eq!(decode_header(&pad, 8, 10), None);
    }

    #[test]
    fn pad_round_trips_and_oversized_length_is_rejected() {
        let mut buf = Vec::new();
        encode_pad(&mut buf, 3, 8, 100);
        let h = decode_header(&buf, 8, 10).unwrap();
        assert!(h.is_pad);
        assert_eq!(h.size(), 132);
        assert!(crc_ok(&buf, &h));
        let mut rec = Vec::new();
        encode_record(&mut rec, 1, 1, 0, &[0; 20], false);
        assert!(decode_header(&rec, 0, 19).is_none());
    }
}
