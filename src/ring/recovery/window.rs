//! Step 2 of recovery: the walk of the live window from the tail to the
//! head, which finds the records and the holes between them, jumping over
//! the records a checkpoint describes when they are known to be intact.

use std::io;

use super::settle::Classifier;
use crate::ring::frame::HEADER_LEN;
use crate::ring::meta::Checkpoint;
use crate::ring::scan::{Found, Scanner, next_lap};
use crate::ring::state::Hole;
use crate::stats::LossCause;

/// The lowest seq of a record frame whose header survives, between the
/// start of the live window and the oldest intact record (`tail`), with a
/// seq below `below`. Such a frame lies inside the window, so it was never
/// evicted: its record was damaged, not overwritten. Bounded by the gap,
/// which without damage is less than one frame.
pub(super) fn damaged_below_tail(scan: &mut Scanner<'_>, from: u64, tail: u64, below: u64) -> io::Result<Option<u64>> {
    let cap = scan.cap();
    let mut q = from.next_multiple_of(crate::ring::frame::ALIGN);
    let mut lowest = None;
    while q < tail {
        match scan.header_at(q)? {
            Found::Wrap => q = next_lap(q, cap),
            Found::Record(h) if h.seq < below && q + h.size() <= tail => {
                lowest = Some(lowest.map_or(h.seq, |l: u64| l.min(h.seq)));
                q += h.size();
            }
            Found::Pad(h) if q + h.size() <= tail => q += h.size(),
            _ => q += crate::ring::frame::ALIGN,
        }
    }
    Ok(lowest)
}

/// What the walk over the live window found.
pub(super) struct Window {
    pub(super) holes: Vec<Hole>,
    /// The oldest record: seq, position, timestamp.
    pub(super) tail: Option<(u64, u64, u64)>,
    /// The newest record: seq, end position, timestamp.
    pub(super) last: Option<(u64, u64, u64)>,
    /// Position of the record after the delivery cursor.
    pub(super) ack_pos: Option<u64>,
    pub(super) records: u64,
}

/// The highest seq whose frame, if present, was written once and fsynced:
/// the checkpoint's durable seq, but below any hole the checkpoint knows.
/// A hole's seqs may have frames torn by a power loss, and its positions
/// were written again after recovery; if those writes are lost in turn, the
/// torn frames reappear.
pub(super) fn trusted_through(ck: &Checkpoint) -> u64 {
    if ck.hole_hints.len() >= crate::ring::meta::MAX_HOLE_HINTS {
        // The hints may not name every hole.
        return ck.settled_seq;
    }
    let below_holes = ck.hole_hints.iter().map(|&(first, _, _)| first.saturating_sub(1)).min().unwrap_or(u64::MAX);
    ck.durable_seq.min(below_holes)
}

/// Whether the frame after a record of `seq` ending at `q` continues the
/// chain: the head, or a header naming `q` (or, at the end of the lap, the
/// next lap's start) with the next seq. Then the record did not lie about
/// its length. The header at `q` is kept in `peeked` for the next step of
/// the walk.
pub(super) fn chained_next(
    scan: &mut Scanner<'_>,
    (seq, q): (u64, u64),
    head: u64,
    peeked: &mut Option<(u64, Found)>,
) -> io::Result<bool> {
    if q >= head {
        return Ok(q == head);
    }
    let found = scan.header_at(q)?;
    *peeked = Some((q, found));
    Ok(match found {
        Found::Wrap => {
            let lap = next_lap(q, scan.cap());
            lap == head
                || (lap < head && matches!(scan.header_at(lap)?, Found::Record(h) | Found::Pad(h) if h.seq == seq + 1))
        }
        Found::Record(h) | Found::Pad(h) => h.seq == seq + 1,
        Found::Invalid => false,
    })
}

/// Whether the header bytes at `pos` (or, with no room for a header before
/// the end of the lap, at the next lap's start) could be read: a block the
/// disk failed to read is damage, whatever else it might have been.
pub(super) fn readable_at(scan: &mut Scanner<'_>, pos: u64) -> io::Result<bool> {
    let pos = match scan.header_at(pos)? {
        Found::Wrap => next_lap(pos, scan.cap()),
        _ => pos,
    };
    scan.readable(pos % scan.cap(), HEADER_LEN)
}

/// Walks `start..head` in logical order: intact frames are records, seq
/// gaps between them holes.
///
/// A record is judged by its header alone, without its checksum, when it
/// was durable at the checkpoint (`seq <= trusted`), follows the previous
/// record directly (seq one above, starting where it ended) and is followed
/// by the next seq's header or the head ([`chained_next`]). Such a frame
/// cannot be torn (it was fsynced), and damage to its payload is found by
/// the reader, which verifies every frame it returns. Anything else has its
/// checksum checked.
///
/// With `skip`, the walk jumps from the first record the checkpoint
/// describes straight to the checkpoint's head (see [`CheckpointJump`]). A frame with
/// a seq below `oldest`, the checkpoint's oldest record, is a leftover.
pub(super) fn walk_window(
    scan: &mut Scanner<'_>,
    (start, head): (u64, u64),
    (oldest, ack_seq): (u64, u64),
    trusted: u64,
    mut skip: Option<CheckpointJump>,
    classify: &Classifier<'_>,
) -> io::Result<Window> {
    let cap = scan.cap();
    let mut w = Window { holes: Vec::new(), tail: None, last: None, ack_pos: None, records: 0 };
    let mut p = start;
    let mut peeked = None;
    while p < head {
        let header = match peeked.take() {
            Some((q, found)) if q == p => found,
            _ => scan.header_at(p)?,
        };
        let found = match header {
            Found::Record(h)
                if h.seq <= trusted
                    && w.last.is_some_and(|(ps, pend, _)| h.seq == ps + 1 && pend == p)
                    && chained_next(scan, (h.seq, p + h.size()), head, &mut peeked)? =>
            {
                Found::Record(h)
            }
            Found::Record(h) | Found::Pad(h) => scan.verify(h)?,
            other => other,
        };
        match found {
            Found::Wrap => p = next_lap(p, cap),
            Found::Pad(h) => p += h.size(),
            Found::Invalid => match scan.resync(p, head)? {
                Some((q, _)) => p = q,
                None => p = head,
            },
            Found::Record(h) if h.seq < oldest => {
                // Older than the checkpoint's oldest record yet inside its
                // window: a leftover of writes that a power loss undid (the
                // head moved back, and the space around it was written
                // again). Intact, so nothing newer overlaps it; not a record.
                p += h.size();
            }
            Found::Record(h) => {
                let size = h.size();
                match w.last {
                    Some((ps, _, _)) if h.seq <= ps => {
                        p += size;
                        continue;
                    }
                    Some((ps, pend, pts)) if h.seq > ps + 1 => {
                        // Two frames that touch leave no bytes for a record
                        // between them: seqs missing there were skipped by an
                        // earlier recovery (whose hint may have been dropped
                        // for a newer one), never records.
                        let readable = h.behind && readable_at(scan, pend)?;
                        let unhinted = if pend == p {
                            Some((0, LossCause::Skipped))
                        } else {
                            classify.cut_off(h.behind, readable)
                        };
                        w.holes.extend(classify.holes_or(ps + 1, h.seq - 1, (pend, p), (pts, h.ts), unhinted));
                    }
                    Some(_) => {}
                    None => w.tail = Some((h.seq, p, h.ts)),
                }
                if h.seq == ack_seq + 1 {
                    w.ack_pos = Some(p);
                }
                w.records += 1;
                w.last = Some((h.seq, p + size, h.ts));
                p += size;
                let passed = skip
                    .as_ref()
                    .filter(|s| h.seq >= s.first_seq && h.seq < s.last_seq && p <= s.through)
                    .and_then(|s| s.passed(h.seq));
                if let Some((s, passed)) = passed.and_then(|n| skip.take().map(|s| (s, n))) {
                    w.records += passed;
                    if let Some((seq, pos)) = s.ack.filter(|&(seq, _)| seq > h.seq) {
                        debug_assert_eq!(seq, ack_seq + 1);
                        w.ack_pos = Some(pos);
                    }
                    // The newest record's timestamp is not in the checkpoint:
                    // this one's bounds it from below.
                    w.last = Some((s.last_seq, s.through, h.ts));
                    p = s.through;
                }
            }
        }
    }
    Ok(w)
}

/// The records from the oldest surviving one to the checkpoint's head are
/// the ones the checkpoint describes. After a process crash they are all in
/// the page cache; after a power loss those up to the durable position were
/// on the disk. With no hole known they are counted without being read.
/// Damage to them is found by readers, as for records judged by their
/// headers.
pub(super) struct CheckpointJump {
    /// The checkpoint's oldest record.
    pub(super) first_seq: u64,
    /// The last seq jumped over.
    pub(super) last_seq: u64,
    /// Where its frame ends.
    pub(super) through: u64,
    /// The record after the delivery cursor, checked in place.
    pub(super) ack: Option<(u64, u64)>,
    /// Loss ranges (first seq, last seq, count) reaching above the oldest
    /// record: seqs settled as lost by an ack past them (as after the seqs
    /// a power loss skipped) hold no frame, and are not counted as records.
    pub(super) lost: Vec<(u64, u64, u64)>,
}

impl CheckpointJump {
    /// The records a jump from the record `seq` would pass over, if the
    /// loss ranges allow counting them: each lies wholly inside the jump or
    /// wholly outside it.
    pub(super) fn passed(&self, seq: u64) -> Option<u64> {
        let mut lost = 0u64;
        for &(first, last, count) in &self.lost {
            if last <= seq || first > self.last_seq {
                continue;
            }
            if first <= seq || last > self.last_seq {
                return None;
            }
            // Checked: a hostile checkpoint (valid CRC) may hold
            // overlapping ranges whose counts add up past u64.
            lost = lost.checked_add(count)?;
        }
        (self.last_seq - seq).checked_sub(lost)
    }
}

/// The [`CheckpointJump`] through `last_seq`, ending at `through`, if the checkpoint
/// allows one: no hole known, and the record after the delivery cursor
/// where the checkpoint says it is (when the skip would pass it).
pub(super) fn skip_for(
    scan: &mut Scanner<'_>,
    ck: &Checkpoint,
    last_seq: u64,
    through: u64,
) -> io::Result<Option<CheckpointJump>> {
    if !ck.hole_hints.is_empty() || ck.tail_seq == 0 || last_seq <= ck.tail_seq {
        return Ok(None);
    }
    let ack = if ck.ack_seq >= ck.tail_seq && ck.ack_seq < last_seq {
        let in_place = ck.settled_seq == ck.ack_seq
            && matches!(scan.frame_at(ck.settled_pos)?, Found::Record(h) if h.seq == ck.ack_seq + 1);
        if !in_place {
            return Ok(None);
        }
        Some((ck.ack_seq + 1, ck.settled_pos))
    } else {
        None
    };
    let lost = ck
        .losses
        .ranges
        .iter()
        .filter(|r| r.last_seq >= ck.tail_seq)
        .map(|r| (r.first_seq, r.last_seq, r.count))
        .collect();
    Ok(Some(CheckpointJump { first_seq: ck.tail_seq, last_seq, through, ack, lost }))
}
