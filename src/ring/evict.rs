//! Eviction: making room at the head by moving the tail past the oldest
//! frames, counting unacknowledged ones as overwritten, and stepping over
//! damage there.

use super::frame::HEADER_LEN;
use super::meta::DATA_OFFSET;
use super::scan::next_lap;
use super::state::{Hole, RingState};
use super::{RingCore, frame, scan, storage};
use crate::stats::{LossCause, LossRange};
use crate::sync::atomic::Ordering;
use crate::{Error, FullPolicy, Result};

/// How far eviction searches damage for the next frame in one step, with
/// `ring.state` held (LOCKS.md): a step scans these bytes 8 at a time.
pub(super) const RESYNC_STEP: u64 = 1 << 20;

/// Bytes read ahead of the tail at a time when evicting.
pub(super) const TAIL_AHEAD: u64 = 64 << 10;

/// Outcome of trying to make room for a write.
pub(super) enum Room {
    Ready,
    /// Only unacknowledged records could be evicted, and the policy forbids it.
    MustNotEvict,
    /// The room is taken by frames other appends are still writing.
    Writing,
}

impl RingCore {
    /// The header bytes at `pos` (the tail, with room for a header before
    /// the end of the lap), through a read-ahead buffer: evicting record by
    /// record then costs one read per `TAIL_AHEAD` bytes, not one per record.
    pub(super) fn tail_header(&self, st: &mut RingState, pos: u64) -> std::io::Result<[u8; HEADER_LEN]> {
        let (start, buf) = &mut st.tail_ahead;
        let cached = pos >= *start && pos + HEADER_LEN as u64 <= *start + buf.len() as u64;
        if !cached {
            // Only bytes below the head: those beyond are an older lap's and
            // will change (see `RingState::tail_ahead`).
            let len =
                TAIL_AHEAD.min(st.head - pos).min(self.geometry.cap - pos % self.geometry.cap).max(HEADER_LEN as u64);
            buf.resize(len as usize, 0);
            match storage::read_or_fill(&*self.data, buf, DATA_OFFSET + pos % self.geometry.cap) {
                Ok(filled) => {
                    let bytes = storage::filled_bytes(&filled);
                    if bytes > 0 {
                        self.unreadable_bytes.fetch_add(bytes, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    // Nothing cached: the next call must not take what a
                    // failed read left in the buffer for the bytes at `start`.
                    buf.clear();
                    return Err(e);
                }
            }
            *start = pos;
            if st.head - pos < HEADER_LEN as u64 {
                // Too close to the head to keep: used once.
                let raw = buf[..HEADER_LEN].try_into().expect("header");
                buf.clear();
                return Ok(raw);
            }
        }
        let at = (pos - *start) as usize;
        Ok(buf[at..at + HEADER_LEN].try_into().expect("header"))
    }

    /// Evicts the oldest frames until a write ending at `new_head` fits.
    pub(super) fn make_room(&self, st: &mut RingState, new_head: u64) -> Result<Room> {
        while new_head - st.tail_pos > self.geometry.cap {
            // Whatever moved the tail last time, holes below it are settled.
            st.settle();
            if let Some(h) = st.hole_at(st.tail_seq).filter(|h| h.pos <= st.tail_pos) {
                st.tail_pos = h.resume_pos.max(st.tail_pos);
                st.tail_seq = h.last + 1;
                st.settle();
                continue;
            }
            if st.tail_pos >= st.head {
                // Nothing written is left to evict. With no other append
                // writing, the write fits by size; otherwise their frames
                // are in the way until they are published.
                st.tail_pos = st.head;
                if st.in_flight.is_empty() {
                    break;
                }
                st.settle();
                return Ok(Room::Writing);
            }
            let pos = st.tail_pos;
            let room = self.geometry.cap - pos % self.geometry.cap;
            if room < HEADER_LEN as u64 {
                st.tail_pos = next_lap(pos, self.geometry.cap);
                continue;
            }
            let raw = self.tail_header(st, pos).map_err(|e| Error::io("read", &self.data_path, e))?;
            match frame::decode_header(&raw, pos, self.geometry.stored_len) {
                Some(h) if h.is_pad && h.size() == room => st.tail_pos = next_lap(pos, self.geometry.cap),
                Some(h) if !h.is_pad && h.seq == st.tail_seq && pos + h.size() <= st.head => {
                    if !self.evict_frame(st, &h, pos) {
                        return Ok(Room::MustNotEvict);
                    }
                }
                Some(h) if !h.is_pad && h.seq > st.tail_seq && self.frame_intact(pos)? => {
                    // Intact framing with seqs missing before it: a gap no
                    // reader has registered yet.
                    let hole = Hole {
                        first: st.tail_seq,
                        last: h.seq - 1,
                        pos,
                        resume_pos: pos,
                        first_ts: st.tail_ts,
                        last_ts: h.ts,
                        cause: LossCause::Corrupted,
                    };
                    if st.add_hole(hole).is_empty() {
                        st.tail_seq = h.seq;
                    }
                }
                _ => self.step_over_damage(st, pos)?,
            }
        }
        st.settle();
        Ok(Room::Ready)
    }

    /// Evicts the tail record `h` at `pos`, counting it overwritten if it
    /// was not acknowledged. `false`: the full policy forbids that.
    fn evict_frame(&self, st: &mut RingState, h: &frame::Header, pos: u64) -> bool {
        if h.seq > st.ack_seq {
            if self.config.full != FullPolicy::OverwriteOldest {
                return false;
            }
            st.counts.overwritten += 1;
            st.counts.overwritten_bytes = crate::stats::bounded_add(st.counts.overwritten_bytes, h.size());
            let range = LossRange {
                first_seq: h.seq,
                last_seq: h.seq,
                first_ts: h.ts,
                last_ts: h.ts,
                count: 1,
                bytes: h.size(),
                cause: LossCause::Overwritten,
            };
            st.record_loss(range);
        }
        st.tail_pos = pos + h.size();
        st.tail_seq = h.seq + 1;
        st.tail_ts = h.ts;
        true
    }

    /// Damage at the tail, at `pos`, that no reader has met yet: moves the
    /// tail past it to the next frame, counting the seqs it held.
    fn step_over_damage(&self, st: &mut RingState, pos: u64) -> Result<()> {
        // The search for the next frame holds `ring.state`: it looks at
        // most `RESYNC_STEP` bytes ahead per step.
        let limit = st.head.min(pos + RESYNC_STEP);
        let resume = {
            let mut scan = scan::Scanner::new(&*self.data, self.geometry.cap, self.geometry.stored_len, 64 << 10)
                .counting(&self.unreadable_bytes);
            scan.resync(pos, limit).map_err(|e| Error::io("read", &self.data_path, e))?
        };
        let (resume_pos, next) = match resume {
            Some((q, scan::Found::Record(h) | scan::Found::Pad(h))) => (q, h.seq),
            None if limit < st.head => {
                // No frame starts before `limit`: the damage goes on. Move
                // past what was searched; the seqs it held are counted
                // once a frame past it is found (`make_room` meets an
                // intact frame with seqs missing before it), or when the
                // head is reached.
                st.tail_pos = limit;
                return Ok(());
            }
            _ => (st.head, st.next_seq),
        };
        let hole = Hole {
            first: st.tail_seq,
            last: next.max(st.tail_seq + 1) - 1,
            pos,
            resume_pos,
            first_ts: st.tail_ts,
            last_ts: st.tail_ts,
            cause: LossCause::Corrupted,
        };
        if next <= st.tail_seq || st.add_hole(hole).is_empty() {
            // Nothing to count: skip the unreadable bytes.
            st.tail_pos = resume_pos;
            if next > st.tail_seq {
                st.tail_seq = next;
            }
        }
        Ok(())
    }

    /// Whether the frame at `pos` passes its checksum (eviction trusts a
    /// header's seq beyond the expected one only then).
    pub(super) fn frame_intact(&self, pos: u64) -> Result<bool> {
        let mut scan = scan::Scanner::new(&*self.data, self.geometry.cap, self.geometry.stored_len, 0)
            .counting(&self.unreadable_bytes);
        let found = scan.frame_at(pos).map_err(|e| Error::io("read", &self.data_path, e))?;
        Ok(matches!(found, scan::Found::Record(_)))
    }
}
