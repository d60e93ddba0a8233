//! The reopen after a clean close: the state taken from the checkpoint,
//! once the files prove nothing happened since, without reading the data.

use std::io;

use super::Input;
use super::settle::{fresh_state, take_counters};
use crate::ring::meta::Checkpoint;
use crate::ring::scan::{Found, Scanner};
use crate::ring::state::{Hole, RingState};
use crate::stats::{LossCause, RecoveryReport};

/// The state a cleanly closed ring left, taken from its checkpoint without
/// reading the data, if the files prove that nothing happened since.
///
/// The proof: the checkpoint is marked clean, a clean close shrinks the
/// seq reservation to the last seq, and an open fsyncs an unclean
/// checkpoint before it returns and every append beyond the reservation
/// fsyncs a larger one first. So a clean checkpoint with no reservation
/// beyond its last seq means no frame was written after it. The frames at
/// the oldest record, at the delivery cursor and at the head are checked as
/// well (a data file restored from an older copy fails them); damage
/// elsewhere is found, counted and skipped by readers, as it is for damage
/// that happens while the ring is open.
pub(super) fn clean_reopen(
    scan: &mut Scanner<'_>,
    input: &Input<'_>,
) -> io::Result<Option<(RingState, RecoveryReport)>> {
    let Some(ck) = input.checkpoint.as_ref() else { return Ok(None) };
    // Seqs skipped after the newest record by an earlier recovery, not yet
    // settled, are the one hole a clean close can leave that holds no
    // bytes: it ends the ring, where the next record will go.
    let top_skip = match ck.hole_hints[..] {
        [] => None,
        [(first, last, LossCause::Skipped)] if last + 1 == ck.next_seq && first > ck.settled_seq => Some(first),
        _ => return Ok(None),
    };
    let top = top_skip.unwrap_or(ck.next_seq);
    if !ck.clean
        || ck.tail_seq == 0
        || !input.data_whole
        || input.reserved >= ck.next_seq
        || ck.tail_seq > ck.next_seq
        || ck.settled_seq < ck.tail_seq - 1
        || ck.head_pos < ck.tail_pos
        || ck.head_pos - ck.tail_pos > input.cap
    {
        return Ok(None);
    }
    let record_at = |scan: &mut Scanner<'_>, pos: u64, seq: u64| -> io::Result<bool> {
        Ok(match scan.frame_at(pos)? {
            Found::Record(h) => h.seq == seq,
            _ => false,
        })
    };
    let has_records = ck.tail_seq < top;
    if has_records && !record_at(scan, ck.tail_pos, ck.tail_seq)? {
        return Ok(None);
    }
    let ack_pos = if ck.ack_seq >= ck.tail_seq && ck.ack_seq + 1 < top {
        if ck.settled_seq != ck.ack_seq || !record_at(scan, ck.settled_pos, ck.ack_seq + 1)? {
            return Ok(None);
        }
        Some(ck.settled_pos)
    } else {
        None
    };
    // Nothing names the head's position: no frame was written past it.
    if ck.head_pos < ck.tail_pos + input.cap && matches!(scan.frame_at(ck.head_pos)?, Found::Record(_) | Found::Pad(_))
    {
        return Ok(None);
    }
    let mut st = fresh_state(input.cap, input.max_losses);
    st.next_seq = ck.next_seq;
    st.head = ck.head_pos;
    (st.tail_seq, st.tail_pos, st.tail_ts) = (ck.tail_seq, ck.tail_pos, ck.tail_ts);
    st.ack_seq = ck.ack_seq.min(ck.next_seq - 1);
    st.ack_pos = ack_pos;
    take_counters(&mut st, ck);
    if st.settled() != ck.settled_seq {
        return Ok(None);
    }
    if let Some(first) = top_skip {
        // Its time bounds went with the crash's process: unknown (0).
        let at = ck.head_pos;
        let cause = LossCause::Skipped;
        let hole = Hole { first, last: ck.next_seq - 1, pos: at, resume_pos: at, first_ts: 0, last_ts: 0, cause };
        st.holes.push(hole);
    }
    st.debug_check("clean reopen");
    let missing = settled_in_window(ck);
    let report = RecoveryReport {
        clean_shutdown: true,
        records_recovered: top.saturating_sub(ck.tail_seq).saturating_sub(missing),
        pending: st.stats(0).pending,
        ..RecoveryReport::default()
    };
    Ok(Some((st, report)))
}

/// Seqs from the checkpoint's oldest record on that hold no frame: lost, or
/// skipped after an earlier crash, and settled by an ack past them.
fn settled_in_window(ck: &Checkpoint) -> u64 {
    ck.losses
        .ranges
        .iter()
        .map(|r| {
            let (lo, hi) = (r.first_seq.max(ck.tail_seq), r.last_seq.min(ck.next_seq - 1));
            match (lo <= hi, r.count == r.last_seq - r.first_seq + 1) {
                // Every seq of the range is missing: its part in the window.
                (true, true) => hi - lo + 1,
                // A merged range: where its missing seqs lie is not known;
                // counted only when it lies wholly in the window.
                (true, false) if r.first_seq >= ck.tail_seq => r.count,
                _ => 0,
            }
        })
        .sum()
}
