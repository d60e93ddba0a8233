//! Step 3 of recovery and its bookkeeping: seqs handed out that no frame
//! holds any more, why each missing seq is missing, and the state built
//! from what the steps found.

use std::collections::BTreeMap;

use crate::ring::meta::Checkpoint;
use crate::ring::state::{Counts, Hole, RingState};
use crate::stats::{LossCause, LossList, LossRange, RecoveryReport};

/// Step 3 of recovery: the holes for seqs handed out that no frame holds
/// any more, from `next_seq` (after the newest surviving record, whose
/// frame ends at `head`) on; returns the seq to resume at.
pub(super) fn missing_head(
    holes: &mut Vec<Hole>,
    classify: &Classifier<'_>,
    (mut next_seq, head): (u64, u64),
    prev: Option<(u64, u64, u64)>,
    torn_seq: Option<u64>,
    ck: &Checkpoint,
    reserved: u64,
) -> u64 {
    // Seqs known to have been handed out to records: the checkpoint's, and
    // that of a record whose header survives at the head (its frame torn,
    // or damaged at rest) if it was durable, or if a power loss may have
    // cut its write (counted lost unsynced). After a process crash a torn
    // frame above the durable seq is a write the kill cut short, whose
    // append never returned: its seq is skipped with the rest. Under
    // `SyncPolicy::Always` that write and a durable record damaged since
    // look the same; it is counted damaged, since a durable record must
    // not go uncounted.
    let torn_seq = torn_seq.filter(|&s| {
        s >= next_seq
            && s <= reserved.max(ck.next_seq - 1)
            && (classify.power_loss_possible || s <= classify.durable_seq || ck.sync_always)
    });
    // And those up to the durable seq, which a sync mark may raise above
    // the checkpoint's.
    let assigned_before = ck.next_seq.max(classify.durable_seq + 1).max(torn_seq.map_or(0, |s| s + 1));
    let (first_ts, pos) = prev.map_or((ck.tail_ts, head), |(_, e, t)| (t, e));
    // Records gone from the head were appended before this recovery.
    let now = crate::ring::now_nanos();
    if assigned_before > next_seq {
        holes.extend(classify.holes(next_seq, assigned_before - 1, pos, head.max(pos), first_ts, now));
        next_seq = assigned_before;
    }
    // Any seq up to the reservation may have been handed out to a record
    // that is gone without a trace: lost with writes the disk dropped
    // (a power loss, or write-back lost with no reboot), or its frames
    // zeroed, cut off or garbled at rest. Nothing on disk tells those
    // apart from seqs never handed out, so after every unclean shutdown
    // they are passed over, none used again, and counted as skipped, not
    // as records. (A clean close shrinks the reservation to its last seq:
    // nothing is skipped after one.)
    if reserved + 1 > next_seq {
        holes.push(Hole {
            first: next_seq,
            last: reserved,
            pos: head,
            resume_pos: head,
            first_ts,
            last_ts: now,
            cause: LossCause::Skipped,
        });
        next_seq = reserved + 1;
    }
    next_seq
}

/// Says why seqs missing at recovery are missing.
pub(super) struct Classifier<'a> {
    /// Causes an earlier recovery or reader gave (first, last, cause).
    pub(super) hints: &'a [(u64, u64, LossCause)],
    pub(super) power_loss_possible: bool,
    pub(super) durable_seq: u64,
    /// Seqs an append may have reserved and been killed (or cut off by a
    /// power loss) before writing, while a later append wrote its frames:
    /// from the first one the checkpoint did not describe, above the
    /// durable seq a checkpoint or sync mark claims.
    pub(super) unwritten_after: u64,
}

impl Classifier<'_> {
    /// Where seqs missing just before a record `behind` an append still
    /// writing when it was reserved, with their bytes `readable`, may be an
    /// append killed before or during its write (none of it, or a torn
    /// part, reached the file), which never returned: from the returned seq
    /// on, and their cause: skipped (no record), or after a power loss
    /// lost unsynced. `None` for anything else. (Damage at rest to such a
    /// span, above every durable claim, looks the same: as at the head, it
    /// is taken for the write the kill cut short.)
    pub(super) fn cut_off(&self, behind: bool, readable: bool) -> Option<(u64, LossCause)> {
        let cause = if self.power_loss_possible { LossCause::LostUnsynced } else { LossCause::Skipped };
        (behind && readable).then_some((self.unwritten_after + 1, cause))
    }

    /// Splits `first..=last` into runs of one cause: a run an earlier
    /// recovery classified keeps its cause; otherwise seqs above the durable
    /// seq after a power loss were lost unsynced, and anything else is damage.
    pub(super) fn split(&self, first: u64, last: u64) -> Vec<(u64, u64, LossCause)> {
        self.split_or(first, last, None)
    }

    /// [`split`](Self::split), with `unhinted` (from, cause) the cause of
    /// seqs from `from` on that no hint names, when given.
    pub(super) fn split_or(
        &self,
        first: u64,
        last: u64,
        unhinted: Option<(u64, LossCause)>,
    ) -> Vec<(u64, u64, LossCause)> {
        let mut parts: Vec<(u64, u64, LossCause)> = Vec::new();
        let mut cur = first;
        while cur <= last {
            let (end, cause) = if let Some(&(_, b, c)) = self.hints.iter().find(|&&(a, b, _)| a <= cur && cur <= b) {
                (b.min(last), c)
            } else {
                let next_hint = self.hints.iter().map(|&(a, _, _)| a).filter(|&a| a > cur).min().unwrap_or(u64::MAX);
                let mut end = last.min(next_hint.saturating_sub(1));
                if let Some((from, _)) = unhinted.filter(|&(from, _)| cur < from) {
                    end = end.min(from - 1);
                }
                let cause = if let Some((_, c)) = unhinted.filter(|&(from, _)| cur >= from) {
                    c
                } else if self.power_loss_possible && cur > self.durable_seq {
                    LossCause::LostUnsynced
                } else {
                    if self.power_loss_possible {
                        end = end.min(self.durable_seq);
                    }
                    LossCause::Corrupted
                };
                (end, cause)
            };
            match parts.last_mut() {
                Some(p) if p.2 == cause && p.1 + 1 == cur => p.1 = end,
                _ => parts.push((cur, end, cause)),
            }
            if end == u64::MAX {
                break;
            }
            cur = end + 1;
        }
        parts
    }

    /// Splits `first..=last`, seqs missing below the oldest survivor of a
    /// ring the writer lapped, into runs of one cause: a run an earlier
    /// recovery or reader classified keeps its cause (seqs skipped after a
    /// crash are no records, whatever evicted their place); from
    /// `damaged_from` on the rest were damaged inside the live window;
    /// below it they were overwritten. (No hint names overwritten seqs:
    /// holes are damage, lost writes or skipped seqs.)
    pub(super) fn split_lapped(&self, first: u64, last: u64, damaged_from: Option<u64>) -> Vec<(u64, u64, LossCause)> {
        let mut parts = Vec::new();
        for (a, b, cause) in self.split_or(first, last, Some((0, LossCause::Overwritten))) {
            match damaged_from {
                Some(d) if cause == LossCause::Overwritten && d <= b => {
                    if a < d {
                        parts.push((a, d - 1, LossCause::Overwritten));
                    }
                    parts.push((a.max(d), b, LossCause::Corrupted));
                }
                _ => parts.push((a, b, cause)),
            }
        }
        parts
    }

    /// The holes for missing seqs `first..=last` found between positions
    /// `pos` and `resume_pos`: one per run of one cause, the bytes counted
    /// on the first.
    pub(super) fn holes(
        &self,
        first: u64,
        last: u64,
        pos: u64,
        resume_pos: u64,
        first_ts: u64,
        last_ts: u64,
    ) -> Vec<Hole> {
        self.holes_or(first, last, (pos, resume_pos), (first_ts, last_ts), None)
    }

    /// [`holes`](Self::holes), with `unhinted` the cause of seqs no hint
    /// names, when given.
    pub(super) fn holes_or(
        &self,
        first: u64,
        last: u64,
        (pos, resume_pos): (u64, u64),
        (first_ts, last_ts): (u64, u64),
        unhinted: Option<(u64, LossCause)>,
    ) -> Vec<Hole> {
        self.split_or(first, last, unhinted)
            .into_iter()
            .enumerate()
            .map(|(i, (a, b, cause))| Hole {
                first: a,
                last: b,
                pos: if i == 0 { pos } else { resume_pos },
                resume_pos,
                first_ts,
                last_ts,
                cause,
            })
            .collect()
    }
}

/// Settles the seqs missing below the oldest survivor (`parts`, by cause),
/// which lay in the data area's `span` (from the checkpoint's settled
/// position to the oldest record).
pub(super) fn settle_below_tail(
    st: &mut RingState,
    report: &mut RecoveryReport,
    ck: &Checkpoint,
    parts: Vec<(u64, u64, LossCause)>,
    (from, to): (u64, u64),
    tail_ts: u64,
) {
    // Their span, less the bytes left unused at the lap ends in it (each
    // lap end the head crossed was checkpointed).
    let unused: u64 = ck.lap_ends.iter().filter(|&&(end, _)| from < end && end <= to).map(|&(_, unused)| unused).sum();
    let mut bytes = to.saturating_sub(from).saturating_sub(unused);
    // The bytes go to the overwritten records (skipped seqs had no frames),
    // or to the first part that held records.
    let owner = parts
        .iter()
        .position(|p| p.2 == LossCause::Overwritten)
        .or_else(|| parts.iter().position(|p| p.2 != LossCause::Skipped));
    for (i, (first_seq, last_seq, cause)) in parts.into_iter().enumerate() {
        let range = LossRange {
            first_seq,
            last_seq,
            first_ts: ck.tail_ts,
            last_ts: tail_ts,
            count: last_seq - first_seq + 1,
            bytes: if Some(i) == owner { std::mem::take(&mut bytes) } else { 0 },
            cause,
        };
        settle_discovered(st, report, range);
    }
}

/// Counts a range discovered lost below the oldest survivor as settled.
pub(super) fn settle_discovered(st: &mut RingState, report: &mut RecoveryReport, range: LossRange) {
    let count = range.count;
    match range.cause {
        LossCause::Overwritten => {
            st.counts.overwritten += count;
            st.counts.overwritten_bytes = crate::stats::bounded_add(st.counts.overwritten_bytes, range.bytes);
            report.overwritten_discovered += count;
        }
        LossCause::LostUnsynced => {
            st.counts.lost_unsynced += count;
            report.lost_unsynced_discovered += count;
        }
        LossCause::Skipped => {
            st.counts.skipped += count;
            report.seqs_skipped += count;
        }
        _ => {
            st.counts.corrupted += count;
            report.damaged_records += count;
        }
    }
    st.losses.add(range, st.max_losses);
    report.losses_discovered.push(range);
}

/// The settled counters and loss ranges a checkpoint keeps, into `st`.
pub(super) fn take_counters(st: &mut RingState, ck: &Checkpoint) {
    st.counts = ck.counts;
    st.lap_ends.clone_from(&ck.lap_ends);
    st.losses = ck.losses.clone();
}

/// The state of a new, empty ring.
pub(crate) fn fresh_state(cap: u64, max_losses: usize) -> RingState {
    RingState {
        cap,
        next_seq: 1,
        head: 0,
        tail_seq: 1,
        tail_pos: 0,
        tail_ts: 0,
        ack_seq: 0,
        ack_pos: None,
        counts: Counts::default(),
        holes: Vec::new(),
        losses: LossList::default(),
        max_losses,
        feed: None,
        reader: None,
        lap_ends: Vec::new(),
        hints: BTreeMap::new(),
        poisoned: None,
        closed: false,
        last_checkpoint: crate::ring::now_nanos(),
        unsaved_losses: false,
        seq_reserved: 0,
        extending: false,
        prefetch_step: 0,
        reserve_writes: 0,
        tail_ahead: (0, Vec::new()),
        write_buf: Vec::new(),
        in_flight: std::collections::VecDeque::new(),
        flight_waiters: 0,
    }
}
