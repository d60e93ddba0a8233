//! The ring's in-memory state, guarded by the `ring.state` lock.
//!
//! Sequence numbers partition into three parts:
//!
//! - settled, `1..=settled()`: acknowledged or counted lost, in the persisted
//!   counters and loss list;
//! - holes: known-missing seqs above the settled point (damage found by
//!   recovery or a reader), counted as lost but not yet settled;
//! - pending: every other seq below `next_seq`, a record in the ring.
//!
//! Recovery rebuilds the holes and pending parts from the frames, so a
//! checkpoint only has to persist the settled part.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::meta::Checkpoint;
use crate::stats::{LossCause, LossFeed, LossList, LossRange, RingStats};

/// Bound on the seq -> position hints kept for readers.
const MAX_HINTS: usize = 1024;

/// Known-missing seqs above the settled point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hole {
    pub(crate) first: u64,
    pub(crate) last: u64,
    /// Where the damage starts.
    pub(crate) pos: u64,
    /// Where the frame after the hole starts (or the head).
    pub(crate) resume_pos: u64,
    pub(crate) first_ts: u64,
    pub(crate) last_ts: u64,
    pub(crate) cause: LossCause,
}

impl Hole {
    pub(crate) fn count(&self) -> u64 {
        self.last - self.first + 1
    }

    pub(crate) fn to_range(self) -> LossRange {
        LossRange {
            first_seq: self.first,
            last_seq: self.last,
            first_ts: self.first_ts,
            last_ts: self.last_ts,
            count: self.count(),
            bytes: self.resume_pos - self.pos,
            cause: self.cause,
        }
    }
}

/// The ring's counters that the checkpoint keeps: every one of them only
/// grows. The loss counters hold the settled part only (holes below the
/// head add to them in [`RingState::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) rejected: u64,
    /// Of `rejected`, how many a receiver was told of (at most `rejected`).
    pub(crate) rejected_reported: u64,
    pub(crate) acked: u64,
    pub(crate) overwritten: u64,
    pub(crate) overwritten_bytes: u64,
    pub(crate) corrupted: u64,
    pub(crate) lost_unsynced: u64,
    /// Seqs passed over after an unclean shutdown.
    pub(crate) skipped: u64,
    /// Records the receiver refused (settled, like `acked`).
    pub(crate) refused: u64,
    /// Of `refused`, how many a receiver was told of (at most `refused`).
    pub(crate) refused_reported: u64,
    /// Not a count: where the next gap notice starts because a batch's
    /// notice was not delivered (the first seq it named, else the batch's
    /// first record; 0: none), so the receiver hears of those seqs too;
    /// kept with the counts so that it survives a restart.
    pub(crate) notice_from: u64,
}

/// The ring's state in memory (`ring.state`, level 20).
#[derive(Debug)]
pub(crate) struct RingState {
    pub(crate) cap: u64,
    pub(crate) next_seq: u64,
    pub(crate) head: u64,
    pub(crate) tail_seq: u64,
    pub(crate) tail_pos: u64,
    pub(crate) tail_ts: u64,
    pub(crate) ack_seq: u64,
    /// Position of the frame of `ack_seq + 1`, when known.
    pub(crate) ack_pos: Option<u64>,
    /// The counters, as the checkpoint keeps them (holes add to the loss
    /// counters in `stats`).
    pub(crate) counts: Counts,
    /// Sorted, disjoint, all above `settled()`.
    pub(crate) holes: Vec<Hole>,
    pub(crate) losses: LossList,
    pub(crate) max_losses: usize,
    /// Losses recorded since a shipper last took them, while one watches.
    pub(crate) feed: Option<LossFeed>,
    /// Woken by every append: the reader waiting for records (a shipper's
    /// worker), so that it needs no polling.
    pub(crate) reader: Option<std::sync::Arc<crate::sync::Signal>>,
    /// The newest lap ends the head crossed, with the bytes left unused
    /// before each (checkpointed: see `Checkpoint::lap_ends`).
    pub(crate) lap_ends: Vec<(u64, u64)>,
    pub(crate) hints: BTreeMap<u64, u64>,
    pub(crate) poisoned: Option<PathBuf>,
    pub(crate) closed: bool,
    /// Wall-clock time of the last checkpoint, in nanoseconds.
    pub(crate) last_checkpoint: u64,
    pub(crate) unsaved_losses: bool,
    /// No seq above this may be handed out until a larger reservation is
    /// durable.
    pub(crate) seq_reserved: u64,
    /// A thread is writing a larger reservation.
    pub(crate) extending: bool,
    /// The prefetch step (`head / PREFETCH_STEP`) of the last prefetch
    /// asked for (at open: the head's).
    pub(crate) prefetch_step: u64,
    /// Reservation records written so far (picks the copy to write next).
    pub(crate) reserve_writes: u64,
    /// Bytes of the data area read ahead of the tail for eviction: the
    /// logical position of the first, and the bytes. Only positions below
    /// the head when read, so never stale: a position's bytes change only
    /// when the position one lap later is written, after it was evicted.
    pub(crate) tail_ahead: (u64, Vec<u8>),
    /// The buffer appends lay their frames out in, kept between appends
    /// (an append writing while another lays out takes a new one).
    pub(crate) write_buf: Vec<u8>,
    /// Appends writing their frames with no lock held, in seq order. The
    /// head and `next_seq` above cover only frames written: they move past
    /// a flight once it and every one before it are written (published).
    pub(crate) in_flight: std::collections::VecDeque<Flight>,
    /// Threads waiting for a flight to be published.
    pub(crate) flight_waiters: u64,
}

/// An append writing its frames outside `ring.state`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flight {
    pub(crate) first: u64,
    pub(crate) last: u64,
    /// Where its frames end.
    pub(crate) end: u64,
    /// The lap end it crosses, with the bytes it leaves unused there.
    pub(crate) lap_end: Option<(u64, u64)>,
    pub(crate) ts: u64,
    pub(crate) written: bool,
    /// Its write failed while later appends were writing: it is never
    /// published (the ring is poisoned).
    pub(crate) failed: bool,
}

impl RingState {
    /// Where the next append's frames go, and its first seq: past the
    /// appends still writing.
    pub(crate) fn reserved(&self) -> (u64, u64) {
        self.in_flight.back().map_or((self.head, self.next_seq), |f| (f.end, f.last + 1))
    }

    /// Whether an append that reserved seqs up to `seq` is still writing.
    pub(crate) fn writing_through(&self, seq: u64) -> bool {
        self.in_flight.iter().any(|f| f.first <= seq && !f.written && !f.failed)
    }

    /// Every seq up to this one is acknowledged or counted lost.
    pub(crate) fn settled(&self) -> u64 {
        self.ack_seq.max(self.tail_seq - 1)
    }

    /// Position of the first frame above `settled()`: that of
    /// `settled() + 1`, or, when that seq is in a hole (an ack into seqs
    /// skipped after a crash), the frame after the hole.
    pub(crate) fn settled_pos(&self) -> u64 {
        if self.ack_seq < self.tail_seq {
            return self.tail_pos;
        }
        let after_hole = || self.hole_at(self.ack_seq + 1).map(|h| h.resume_pos.max(self.tail_pos));
        self.ack_pos.or_else(after_hole).unwrap_or(self.tail_pos)
    }

    /// Moves holes (or their parts) at or below the settled point into the
    /// settled counters and the loss list.
    pub(crate) fn settle(&mut self) {
        let s = self.settled();
        // Every append settles: with no hole at or below the settled point
        // (the usual case) there is nothing to do.
        if self.holes.first().is_none_or(|h| h.first > s) {
            return;
        }
        // Holes wholly settled leave the list in one go.
        let whole = self.holes.partition_point(|h| h.last <= s);
        let mut parts: Vec<Hole> = self.holes.drain(..whole).collect();
        if let Some(h) = self.holes.first_mut().filter(|h| h.first <= s) {
            parts.push(Hole { last: s, resume_pos: h.pos, ..*h });
            h.first = s + 1;
        }
        for part in parts {
            match part.cause {
                LossCause::LostUnsynced => self.counts.lost_unsynced += part.count(),
                LossCause::Skipped => self.counts.skipped += part.count(),
                _ => self.counts.corrupted += part.count(),
            }
            self.record_loss(part.to_range());
        }
    }

    /// Records a loss in the persisted list and, while a shipper watches,
    /// in its feed.
    pub(crate) fn record_loss(&mut self, r: LossRange) {
        self.losses.add(r, self.max_losses);
        if let Some(feed) = &mut self.feed {
            feed.push(r);
        }
        self.unsaved_losses = true;
    }

    /// Notes that the head crossed the lap end at `end`, leaving `unused`
    /// bytes before it.
    pub(crate) fn note_lap_end(&mut self, end: u64, unused: u64) {
        self.lap_ends.push((end, unused));
        if self.lap_ends.len() > super::meta::MAX_LAP_ENDS {
            self.lap_ends.remove(0);
        }
    }

    /// Adds the parts of a hole found above the settled point that no known
    /// hole covers, and returns them. Damage can grow while the ring is
    /// open (a disk going bad), so a hole found later may reach around
    /// known ones: each uncovered part gets the bytes between its known
    /// neighbours, so no seq is left uncounted and no byte counted twice.
    pub(crate) fn add_hole(&mut self, mut h: Hole) -> Vec<Hole> {
        h.first = h.first.max(self.settled() + 1);
        let mut added = Vec::new();
        if h.first > h.last {
            return added;
        }
        let clamp = |p: u64, lo: u64| p.clamp(lo, h.resume_pos.max(lo));
        let (mut seq, mut pos) = (h.first, h.pos);
        let mut at = self.holes.partition_point(|x| x.last < h.first);
        while seq <= h.last {
            let known = self.holes.get(at).filter(|k| k.first <= h.last).copied();
            let (last, resume) = match known {
                Some(k) if k.first <= seq => {
                    seq = k.last + 1;
                    pos = clamp(k.resume_pos, pos);
                    at += 1;
                    continue;
                }
                Some(k) => (k.first - 1, clamp(k.pos, pos)),
                None => (h.last, clamp(h.resume_pos, pos)),
            };
            let part = Hole { first: seq, last, pos, resume_pos: resume, ..h };
            self.holes.insert(at, part);
            added.push(part);
            at += 1;
            (seq, pos) = (last + 1, resume);
        }
        added
    }

    /// The hole containing `seq`, if any.
    pub(crate) fn hole_at(&self, seq: u64) -> Option<Hole> {
        let at = self.holes.partition_point(|x| x.last < seq);
        self.holes.get(at).filter(|h| h.first <= seq).copied()
    }

    /// Seqs in holes: (corrupted, lost unsynced, skipped).
    fn hole_counts(&self) -> (u64, u64, u64) {
        let mut counts = (0, 0, 0);
        for h in &self.holes {
            match h.cause {
                LossCause::LostUnsynced => counts.1 += h.count(),
                LossCause::Skipped => counts.2 += h.count(),
                _ => counts.0 += h.count(),
            }
        }
        counts
    }

    /// Records in `from..=to` that are in the ring (not in a hole).
    pub(crate) fn present_in(&self, from: u64, to: u64) -> u64 {
        if from > to {
            return 0;
        }
        let at = self.holes.partition_point(|h| h.last < from);
        let missing: u64 = self.holes[at..]
            .iter()
            .take_while(|h| h.first <= to)
            .map(|h| {
                let (lo, hi) = (h.first.max(from), h.last.min(to));
                if lo <= hi { hi - lo + 1 } else { 0 }
            })
            .sum();
        to - from + 1 - missing
    }

    pub(crate) fn note_hint(&mut self, seq: u64, pos: u64) {
        self.hints.insert(seq, pos);
        if self.hints.len() > MAX_HINTS {
            self.hints.pop_first();
        }
    }

    /// Best known starting point at or before `seq`: `(seq, pos)`. Beside
    /// the hints readers leave, the state always knows two frames: the
    /// delivery cursor's (when known) and the head, where `next_seq` will
    /// go. After a reopen, with no hints yet, those keep the first read
    /// from walking every record still in the ring.
    pub(crate) fn start_for(&self, seq: u64) -> (u64, u64) {
        if seq <= self.tail_seq {
            return (self.tail_seq, self.tail_pos);
        }
        if seq >= self.next_seq {
            return (self.next_seq, self.head);
        }
        let mut best = (self.tail_seq, self.tail_pos);
        if let Some((&s, &p)) = self.hints.range(..=seq).next_back() {
            if s >= self.tail_seq && p >= self.tail_pos {
                best = (s, p);
            }
        }
        if let Some(p) = self.ack_pos {
            let s = self.ack_seq + 1;
            if s > best.0 && s <= seq && self.ack_seq >= self.tail_seq && p >= self.tail_pos {
                best = (s, p);
            }
        }
        best
    }

    /// Checks the state's own invariants (debug builds): holes sorted,
    /// disjoint, above the settled point and below `next_seq`.
    pub(crate) fn debug_check(&self, after: &str) {
        if cfg!(debug_assertions) {
            let s = self.settled();
            let mut prev = s;
            for h in &self.holes {
                assert!(
                    h.first > prev && h.first <= h.last && h.last < self.next_seq,
                    "ring state after {after}: bad hole {h:?} (settled {s}, next_seq {}, tail_seq {}, ack {}) in {:?}",
                    self.next_seq,
                    self.tail_seq,
                    self.ack_seq,
                    self.holes
                );
                prev = h.last;
            }
            assert!(self.tail_seq <= self.next_seq, "ring state after {after}: tail beyond head");
        }
    }

    pub(crate) fn stats(&self, durable_seq: u64) -> RingStats {
        let last_seq = self.next_seq - 1;
        let (hc, hu, hs) = self.hole_counts();
        RingStats {
            appended: last_seq - self.counts.skipped - hs + self.counts.rejected,
            acked: self.counts.acked,
            pending: last_seq - self.settled() - hc - hu - hs,
            overwritten: self.counts.overwritten,
            overwritten_bytes: self.counts.overwritten_bytes,
            rejected: self.counts.rejected,
            rejected_reported: self.counts.rejected_reported,
            refused: self.counts.refused,
            refused_reported: self.counts.refused_reported,
            corrupted: self.counts.corrupted + hc,
            lost_unsynced: self.counts.lost_unsynced + hu,
            seqs_skipped: self.counts.skipped + hs,
            last_seq,
            durable_seq: durable_seq.min(last_seq),
            ack_seq: self.ack_seq,
            used_bytes: self.head - self.tail_pos,
            capacity: self.cap,
            // Kept by the ring, outside the state: `Ring::stats` fills it.
            unreadable_bytes: 0,
        }
    }

    /// All loss ranges: the settled list, then the holes.
    pub(crate) fn losses(&self) -> Vec<LossRange> {
        let mut v = self.losses.ranges.clone();
        v.extend(self.holes.iter().map(|h| h.to_range()));
        v
    }

    /// The checkpoint of this state (generation, ids and flags filled in by
    /// the caller).
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            capacity: self.cap,
            next_seq: self.next_seq,
            head_pos: self.head,
            tail_seq: self.tail_seq,
            tail_pos: self.tail_pos,
            tail_ts: self.tail_ts,
            settled_seq: self.settled(),
            settled_pos: self.settled_pos(),
            ack_seq: self.ack_seq,
            counts: self.counts,
            losses: self.losses.clone(),
            hole_hints: self
                .holes
                .iter()
                .rev()
                .take(super::meta::MAX_HOLE_HINTS)
                .rev()
                .map(|h| (h.first, h.last, h.cause))
                .collect(),
            // A recovery after a power loss can move the head back below
            // lap ends an earlier run crossed.
            lap_ends: self.lap_ends.iter().copied().filter(|&(end, _)| end <= self.head).collect(),
            ..Checkpoint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holes of seqs `first..=last` lying at positions `100 * seq`.
    fn hole(first: u64, last: u64) -> Hole {
        Hole {
            first,
            last,
            pos: 100 * first,
            resume_pos: 100 * (last + 1),
            first_ts: 0,
            last_ts: 0,
            cause: LossCause::Corrupted,
        }
    }

    #[test]
    fn overlapping_holes_add_exactly_the_uncovered_seqs_and_bytes() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _ in 0..2000 {
            let mut st = crate::ring::recovery::fresh_state(1 << 20, 16);
            st.next_seq = 61;
            let mut want = std::collections::BTreeSet::new();
            for _ in 0..=next(6) {
                let first = 1 + next(60);
                let last = (first + next(12)).min(60);
                let added = st.add_hole(hole(first, last));
                let new: Vec<u64> = (first..=last).filter(|s| !want.contains(s)).collect();
                let got: Vec<u64> = added.iter().flat_map(|h| h.first..=h.last).collect();
                assert_eq!(got, new, "adding {first}..={last} to {:?}", st.holes);
                want.extend(new);
                st.debug_check("test");
                // On consistent positions each part keeps its own bytes.
                for h in &st.holes {
                    assert_eq!((h.pos, h.resume_pos), (100 * h.first, 100 * (h.last + 1)), "{:?}", st.holes);
                }
            }
            let held: Vec<u64> = st.holes.iter().flat_map(|h| h.first..=h.last).collect();
            assert_eq!(held, want.into_iter().collect::<Vec<_>>());
        }
    }
}
