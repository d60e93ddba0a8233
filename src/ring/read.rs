//! Reading batches of records for shipping.

use bytes::{Bytes, BytesMut};

use super::RingCore;
use super::scan::{Found, ReadAhead, Scanner, next_lap};
use super::state::Hole;
use crate::stats::LossCause;
use crate::sync::atomic::Ordering;
use crate::{Error, Result};

/// How far [`RingCore::locate`] hops from the nearest known position.
const LOCATE_BYTES: u64 = 1 << 20;

/// One record read from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// When it was appended, nanoseconds since the Unix epoch.
    pub timestamp: u64,
    /// Its bytes, exactly as appended (checked by CRC32C).
    pub payload: Bytes,
}

/// Records read by [`Ring::read`](crate::Ring::read), oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadBatch {
    /// The records, in seq order. Seqs missing between them were lost.
    pub records: Vec<Record>,
    /// The seq to read from next.
    pub next_seq: u64,
}

impl ReadBatch {
    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Payload bytes in the batch.
    pub fn payload_bytes(&self) -> usize {
        self.records.iter().map(|r| r.payload.len()).sum()
    }
}

/// A record a walk found: its payload is `out[from..to]`.
struct FoundRecord {
    seq: u64,
    ts: u64,
    /// Where its frame starts.
    pos: u64,
    from: usize,
    to: usize,
}

/// What one walk over the ring found.
struct ReadWalk {
    out: BytesMut,
    found: Vec<FoundRecord>,
    new_holes: Vec<Hole>,
    /// Where the walk stopped, and the seq expected there.
    end_pos: u64,
    next_seq: u64,
}

/// Where a read starts and what it may cover, copied under the state lock.
struct ReadWindow {
    start_seq: u64,
    start_pos: u64,
    head: u64,
    next_seq: u64,
    holes: Vec<Hole>,
    /// A lower bound of the timestamps of the records from the start on:
    /// the newest evicted record's.
    start_ts: u64,
}

/// The ring's counters a read takes under the locks it takes anyway: with
/// its window, and after its walk.
#[derive(Default)]
pub(super) struct ReadMarks {
    /// Where the read started: `from_seq`, or past the delivery cursor.
    pub(super) from_seq: u64,
    /// Before the walk: records evicted unacknowledged, the last seq, the
    /// rejected count.
    pub(super) overwritten: u64,
    pub(super) last_seq: u64,
    pub(super) rejected: u64,
    /// Before the walk: the refused count, and where the next notice
    /// starts if a refused batch's notice was never delivered.
    pub(super) refused: u64,
    pub(super) notice_from: Option<u64>,
    /// After the walk: the delivery cursor, and the rejections and
    /// refusals reported.
    pub(super) ack_after: u64,
    pub(super) reported_after: u64,
    pub(super) refused_reported_after: u64,
}

impl RingCore {
    pub(super) fn read(&self, from_seq: u64, max_records: usize, max_bytes: usize) -> Result<ReadBatch> {
        self.read_marked(from_seq, max_records, max_bytes, false).map(|(batch, _)| batch)
    }

    /// A read from `from_seq` (from past the delivery cursor if `past_ack`),
    /// with the counters taken along ([`ReadMarks`]).
    pub(super) fn read_marked(
        &self,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
        past_ack: bool,
    ) -> Result<(ReadBatch, ReadMarks)> {
        loop {
            let mut marks = ReadMarks { from_seq, ..ReadMarks::default() };
            let window = {
                let st = self.state.lock();
                if st.closed {
                    return Err(Error::Closed);
                }
                if past_ack {
                    marks.from_seq = from_seq.max(st.ack_seq + 1);
                }
                (marks.overwritten, marks.last_seq, marks.rejected, marks.refused, marks.notice_from) = (
                    st.counts.overwritten,
                    st.next_seq - 1,
                    st.counts.rejected,
                    st.counts.refused,
                    (st.counts.notice_from > 0).then_some(st.counts.notice_from),
                );
                let (start_seq, start_pos) = st.start_for(marks.from_seq);
                ReadWindow {
                    start_seq,
                    start_pos,
                    head: st.head,
                    next_seq: st.next_seq,
                    holes: st.holes.clone(),
                    start_ts: st.tail_ts,
                }
            };
            let from_seq = marks.from_seq;
            let mut walk = self
                .walk(&window, from_seq, max_records, max_bytes)
                .map_err(|e| Error::io("read", &self.data_path, e))?;
            let mut st = self.state.lock();
            (marks.ack_after, marks.reported_after, marks.refused_reported_after) =
                (st.ack_seq, st.counts.rejected_reported, st.counts.refused_reported);
            if st.tail_pos > window.start_pos {
                // The writer evicted part of what we read while we read it:
                // keep only what was still in the ring afterwards.
                let tail = st.tail_pos;
                let before = walk.found.len();
                walk.found.retain(|r| r.pos >= tail);
                walk.new_holes.retain(|h| h.pos >= tail);
                if walk.found.is_empty() && before > 0 {
                    continue;
                }
            }
            for h in walk.new_holes {
                st.add_hole(h);
            }
            st.debug_check("read");
            st.note_hint(walk.next_seq, walk.end_pos);
            drop(st);
            let out = walk.out.freeze();
            let records = walk
                .found
                .into_iter()
                .map(|r| Record { seq: r.seq, timestamp: r.ts, payload: out.slice(r.from..r.to) })
                .collect();
            return Ok((ReadBatch { records, next_seq: walk.next_seq.max(from_seq) }, marks));
        }
    }

    /// The position of the intact frame of `seq`, hopping from header to
    /// header (no lock held) from the nearest position the state knows, at
    /// most `LOCATE_BYTES` ahead of it. The caller checks, under the state
    /// lock, that the frame was not evicted meanwhile. `None` if the walk
    /// meets damage, passes `seq`, or goes too far.
    pub(super) fn locate(&self, seq: u64) -> std::io::Result<Option<u64>> {
        let (mut at, head) = {
            let st = self.state.lock();
            (st.start_for(seq).1, st.head)
        };
        let limit = head.min(at + LOCATE_BYTES);
        // Small reads: an ack per record hops one frame from the last.
        let mut scan = Scanner::new(&*self.data, self.geometry.cap, self.geometry.stored_len, 4096)
            .counting(&self.unreadable_bytes);
        while at < limit {
            match scan.header_at(at)? {
                Found::Wrap => at = next_lap(at, self.geometry.cap),
                Found::Pad(h) => at += h.size(),
                Found::Record(h) if h.seq < seq => at += h.size(),
                Found::Record(h) if h.seq == seq => {
                    return Ok(matches!(scan.verify(h)?, Found::Record(_)).then_some(at));
                }
                Found::Record(_) | Found::Invalid => break,
            }
        }
        Ok(None)
    }

    /// Walks frames from `span.start_pos` without any lock, collecting
    /// records with seq `from_seq` or above and noting damage.
    fn walk(
        &self,
        window: &ReadWindow,
        from_seq: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> std::io::Result<ReadWalk> {
        let hole_at = |seq: u64| {
            let at = window.holes.partition_point(|h| h.last < seq);
            window.holes.get(at).filter(|h| h.first <= seq).copied()
        };
        let chunk = max_bytes.clamp(64 << 10, 4 << 20);
        let mut scan = Scanner::new(&*self.data, self.geometry.cap, self.geometry.stored_len, chunk)
            .counting(&self.unreadable_bytes);
        // Reads after a restart may be of bytes on the disk only: ask for
        // those ahead, going on where the last read's asking stopped.
        scan.read_ahead(ReadAhead::from(self.read_ahead.load(Ordering::Relaxed)));
        let mut w = ReadWalk {
            out: BytesMut::new(),
            found: Vec::new(),
            new_holes: Vec::new(),
            end_pos: window.start_pos,
            next_seq: window.start_seq,
        };
        // Bounds for the timestamps of damaged records: the last intact
        // record's before them, the first intact one's after them.
        let mut prev_ts = window.start_ts;
        let head = window.head;
        while w.end_pos < head && w.found.len() < max_records && (w.found.is_empty() || w.out.len() < max_bytes) {
            let (at, expect) = (w.end_pos, w.next_seq);
            let damage = |first: u64, last: u64, resume_pos: u64, last_ts: u64| Hole {
                first,
                last,
                pos: at,
                resume_pos,
                first_ts: prev_ts,
                last_ts,
                cause: LossCause::Corrupted,
            };
            match scan.frame_at(at)? {
                Found::Wrap => w.end_pos = next_lap(at, self.geometry.cap),
                Found::Pad(h) => w.end_pos = at + h.size(),
                // A seq never handed out is no record of this ring.
                Found::Record(h) if h.seq >= expect && h.seq < window.next_seq => {
                    if h.seq > expect {
                        // Intact framing, missing seqs: damage the walk
                        // skipped over (`RingState::add_hole` keeps the parts no
                        // known hole covers).
                        w.new_holes.push(damage(expect, h.seq - 1, at, h.ts));
                    }
                    // A seq already counted lost is never delivered too,
                    // whatever frame claims it.
                    if h.seq >= from_seq && hole_at(h.seq).is_none() {
                        let payload = scan.payload(&h)?;
                        let from = w.out.len();
                        w.out.extend_from_slice(payload);
                        w.found.push(FoundRecord { seq: h.seq, ts: h.ts, pos: at, from, to: w.out.len() });
                    }
                    prev_ts = h.ts;
                    w.next_seq = h.seq + 1;
                    w.end_pos = at + h.size();
                }
                Found::Record(_) | Found::Invalid => {
                    if let Some(k) = hole_at(expect).filter(|k| k.resume_pos > at) {
                        w.end_pos = k.resume_pos;
                        w.next_seq = k.last + 1;
                        continue;
                    }
                    let (q, next, next_ts) = match scan.resync(at, head)? {
                        Some((q, Found::Record(h))) => (q, h.seq.min(window.next_seq).max(expect), h.ts),
                        Some((q, Found::Pad(h))) => (q, h.seq.min(window.next_seq).max(expect), prev_ts),
                        _ => (head, window.next_seq, prev_ts),
                    };
                    if next > expect {
                        w.new_holes.push(damage(expect, next - 1, q, next_ts.max(prev_ts)));
                        w.next_seq = next;
                    }
                    w.end_pos = q;
                }
            }
        }
        if let Some(ahead) = scan.take_read_ahead() {
            self.read_ahead.store(ahead.to(), Ordering::Relaxed);
        }
        Ok(w)
    }
}
