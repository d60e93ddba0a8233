//! Sequential, buffered reading of frames by logical position.

use std::io;
use std::ops::Range;

use crate::sync::atomic::{AtomicU64, Ordering};

use super::frame::{ALIGN, HEADER_LEN, Header, crc_ok, decode_header};
use super::meta::DATA_OFFSET;
use crate::ring::storage::Storage;

/// What lies at a logical position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    /// An intact record frame.
    Record(Header),
    /// An intact pad frame: the rest of the lap is unused.
    Pad(Header),
    /// Too few bytes left in the lap for a header: the lap ends here.
    Wrap,
    /// Nothing valid at this position.
    Invalid,
}

/// First logical position of the lap after the one holding `pos`.
pub(crate) fn next_lap(pos: u64, cap: u64) -> u64 {
    (pos / cap + 1) * cap
}

/// Asks the storage ([`Storage::prefetch`]) for the bytes ahead of a
/// reader that goes forward through the data area, `STEP` at a time, up to
/// `AHEAD` ahead. The default path's data file has the kernel's read-ahead
/// off (`storage::no_read_ahead`), so without this each read of a scan over
/// bytes that are not cached (recovery after a power loss, which is after
/// a reboot) would wait for the device in turn.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    /// Data-area offset up to which bytes were asked for.
    to: u64,
}

impl ReadAhead {
    const STEP: u64 = 1 << 20;
    const AHEAD: u64 = 8 << 20;

    /// Goes on from where an earlier one (see [`to`](Self::to)) stopped.
    pub(crate) fn from(to: u64) -> Self {
        ReadAhead { to }
    }

    /// Data-area offset up to which bytes were asked for.
    pub(crate) fn to(&self) -> u64 {
        self.to
    }

    /// The reader reads on from data-area offset `from`.
    pub(crate) fn reading(&mut self, data: &dyn Storage, from: u64, cap: u64) {
        if from > self.to || from + Self::AHEAD + Self::STEP < self.to {
            // Started, or jumped: ask from here.
            self.to = from;
        }
        let end = (from + Self::AHEAD).min(cap);
        while self.to < end {
            let len = Self::STEP.min(cap - self.to);
            data.prefetch(DATA_OFFSET + self.to, len);
            self.to += len;
        }
    }
}

/// Reads frames through a buffer of `chunk` bytes, so a walk over the ring
/// costs one large read per chunk rather than one per frame. Memory is the
/// chunk (or one record, if larger), whatever the ring's size.
pub(crate) struct Scanner<'a> {
    data: &'a dyn Storage,
    cap: u64,
    max_len: usize,
    chunk: usize,
    buf: Vec<u8>,
    buf_off: u64,
    /// The parts of `buf` that could not be read (data area offsets).
    buf_unreadable: Vec<Range<u64>>,
    /// Set for scans that may read much of the ring
    /// ([`read_ahead`](Self::read_ahead)).
    ahead: Option<ReadAhead>,
    /// Bytes that could not be read, counted each time.
    pub(crate) unreadable_bytes: u64,
    /// Where those bytes are counted as well.
    sink: Option<&'a AtomicU64>,
}

impl<'a> Scanner<'a> {
    pub(crate) fn new(data: &'a dyn Storage, cap: u64, max_len: usize, chunk: usize) -> Self {
        Scanner {
            data,
            cap,
            max_len,
            chunk,
            buf: Vec::new(),
            buf_off: 0,
            buf_unreadable: Vec::new(),
            ahead: None,
            unreadable_bytes: 0,
            sink: None,
        }
    }

    /// Counts unreadable bytes in `sink` too.
    pub(crate) fn counting(mut self, sink: &'a AtomicU64) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Notes file ranges [`read_or_fill`](super::storage::read_or_fill)
    /// could not read.
    pub(crate) fn note_unreadable(&mut self, filled: Vec<Range<u64>>) {
        for r in filled {
            self.unreadable_bytes += r.end - r.start;
            if let Some(sink) = self.sink {
                sink.fetch_add(r.end - r.start, Ordering::Relaxed);
            }
        }
    }

    /// From now on, has every read ask for the bytes after it.
    pub(crate) fn read_ahead(&mut self, ahead: ReadAhead) {
        self.ahead = Some(ahead);
    }

    /// The [`ReadAhead`] given to [`read_ahead`](Self::read_ahead), as the
    /// reads since have left it.
    pub(crate) fn take_read_ahead(&mut self) -> Option<ReadAhead> {
        self.ahead.take()
    }

    /// Size of the data area.
    pub(crate) fn cap(&self) -> u64 {
        self.cap
    }

    /// Bytes `off..off + len` of the data area (`off + len <= cap`).
    pub(crate) fn bytes(&mut self, off: u64, len: usize) -> io::Result<&[u8]> {
        let end = off + len as u64;
        debug_assert!(end <= self.cap);
        if off < self.buf_off || end > self.buf_off + self.buf.len() as u64 {
            let want = (self.chunk.max(len) as u64).min(self.cap - off) as usize;
            if let Some(ahead) = &mut self.ahead {
                ahead.reading(self.data, off, self.cap);
            }
            self.buf.resize(want, 0);
            match super::storage::read_or_fill(self.data, &mut self.buf, DATA_OFFSET + off) {
                Ok(filled) => {
                    self.buf_unreadable = filled.iter().map(|r| r.start - DATA_OFFSET..r.end - DATA_OFFSET).collect();
                    self.note_unreadable(filled);
                }
                Err(e) => {
                    // Nothing cached: the bytes left would pass for `buf_off`'s.
                    self.buf.clear();
                    return Err(e);
                }
            }
            self.buf_off = off;
        }
        let at = (off - self.buf_off) as usize;
        Ok(&self.buf[at..at + len])
    }

    /// Whether bytes `off..off + len` of the data area could be read (not
    /// filled in for a failed read).
    pub(crate) fn readable(&mut self, off: u64, len: usize) -> io::Result<bool> {
        self.bytes(off, len)?;
        let end = off + len as u64;
        Ok(!self.buf_unreadable.iter().any(|r| r.start < end && off < r.end))
    }

    /// Bytes of zeroed 8-byte words from physical offset `off` on, looking
    /// at most one 4 KiB block ahead. A frame header's first eight bytes are
    /// never zero, so a scan can skip them (a ring's never-written part) a
    /// block at a time.
    pub(crate) fn zeros_at(&mut self, off: u64) -> io::Result<u64> {
        let block = self.bytes(off, (self.cap - off).min(4096) as usize)?;
        Ok(block.chunks_exact(8).take_while(|w| w.iter().all(|&b| b == 0)).count() as u64 * 8)
    }

    /// The frame stored for logical position `pos`, checksum verified.
    pub(crate) fn frame_at(&mut self, pos: u64) -> io::Result<Found> {
        match self.header_at(pos)? {
            Found::Record(h) | Found::Pad(h) => self.verify(h),
            other => Ok(other),
        }
    }

    /// The frame stored for logical position `pos`, judged by its header
    /// alone: it names `pos`, has a known kind and a length that fits the
    /// lap. The checksum is not checked; [`verify`](Self::verify) does that.
    pub(crate) fn header_at(&mut self, pos: u64) -> io::Result<Found> {
        let (cap, max_len) = (self.cap, self.max_len);
        let off = pos % cap;
        let room = cap - off;
        if room < HEADER_LEN as u64 {
            return Ok(Found::Wrap);
        }
        Ok(judge_header(self.bytes(off, HEADER_LEN)?, pos, room, max_len))
    }

    /// Checks the checksum of a frame whose header
    /// [`header_at`](Self::header_at) accepted.
    pub(crate) fn verify(&mut self, h: Header) -> io::Result<Found> {
        let off = h.pos % self.cap;
        let total = if h.is_pad { HEADER_LEN } else { HEADER_LEN + h.len };
        let b = self.bytes(off, total)?;
        if !crc_ok(b, &h) {
            return Ok(Found::Invalid);
        }
        Ok(if h.is_pad { Found::Pad(h) } else { Found::Record(h) })
    }

    /// The payload of a record returned by [`frame_at`](Self::frame_at).
    pub(crate) fn payload(&mut self, h: &Header) -> io::Result<&[u8]> {
        self.bytes(h.pos % self.cap + HEADER_LEN as u64, h.len)
    }

    /// The first intact frame stored for its own position in
    /// `(after, limit)`, scanning at frame alignment. Used to resume past
    /// damage: a frame that names its own position cannot be a leftover of
    /// another lap.
    pub(crate) fn resync(&mut self, after: u64, limit: u64) -> io::Result<Option<(u64, Found)>> {
        let mut q = after + ALIGN;
        while q < limit {
            match self.frame_at(q)? {
                Found::Wrap => q = next_lap(q, self.cap),
                Found::Invalid => q += ALIGN,
                found => return Ok(Some((q, found))),
            }
        }
        Ok(None)
    }

    /// The intact frame at physical offset `off` of any lap, if any.
    pub(crate) fn frame_at_offset(&mut self, off: u64) -> io::Result<(u64, Found)> {
        match self.header_at_offset(off)? {
            (pos, Found::Record(h) | Found::Pad(h)) => Ok((pos, self.verify(h)?)),
            other => Ok(other),
        }
    }

    /// The frame at physical offset `off` of any lap, judged by its header
    /// alone (see [`header_at`](Self::header_at)).
    pub(crate) fn header_at_offset(&mut self, off: u64) -> io::Result<(u64, Found)> {
        let (cap, max_len) = (self.cap, self.max_len);
        let room = cap - off;
        if room < HEADER_LEN as u64 {
            return Ok((off, Found::Wrap));
        }
        let b = self.bytes(off, HEADER_LEN)?;
        let pos = u64::from_le_bytes(b[24..32].try_into().expect("8 bytes"));
        if pos % cap != off {
            return Ok((off, Found::Invalid));
        }
        Ok((pos, judge_header(b, pos, room, max_len)))
    }
}

/// The header in `b` for position `pos`, with `room` bytes left in its lap.
fn judge_header(b: &[u8], pos: u64, room: u64, max_len: usize) -> Found {
    let Some(h) = decode_header(b, pos, max_len) else {
        return Found::Invalid;
    };
    if h.size() > room || (h.is_pad && h.size() != room) {
        return Found::Invalid;
    }
    if h.is_pad { Found::Pad(h) } else { Found::Record(h) }
}
