//! Recovery: rebuilding the ring's state from its frames and checkpoint.
//!
//! After a clean close nothing is read ([`clean_reopen`]). After a process
//! crash the head is found by following the frames written since the
//! checkpoint ([`chain_head`]) and the records the checkpoint describes are
//! counted without being read ([`CheckpointJump`]). Otherwise, and when either cannot
//! prove its case:
//!
//! 1. Find the head: one pass over the data area, physical offset by
//!    offset, for the intact frame that ends furthest along. Positions only
//!    grow, so that frame is the newest one, whatever the checkpoint says.
//!    When every record the checkpoint describes was durable (the usual
//!    case after a power loss), only frames from its head on can be the
//!    head: a scan of every 8-byte word picks the few offsets whose word
//!    names a position in that range, and only those are checksummed
//!    ([`find_head_since`]); the checkpoint's records are counted as after
//!    a process crash.
//! 2. Walk the live window, from the checkpoint's tail (or from one
//!    capacity behind the head, if the writer lapped it since), to the
//!    head. Intact frames are the records; sequence gaps between them are
//!    holes (damage, or writes lost to a power loss); seqs missing before
//!    the first surviving record were overwritten.
//! 3. Seqs the checkpoint says were assigned but no frame holds any more are
//!    a hole at the head, so no seq is ever reused.
//!
//! Outside those proven cases nothing here trusts the checkpoint for what
//! can be derived from the frames; the checkpoint supplies only the settled
//! part (acks and losses already counted).

mod clean;
mod head;
mod settle;
#[cfg(test)]
mod tests;
mod window;

use std::io;

use super::meta::Checkpoint;
use super::scan::{Found, ReadAhead, Scanner};
use super::state::RingState;
use crate::ring::storage::Storage;
use crate::stats::{LossCause, RecoveryReport};

pub(super) const SCAN_CHUNK: usize = 512 << 10;

pub(crate) struct Input<'a> {
    pub(crate) data: &'a dyn Storage,
    pub(crate) cap: u64,
    pub(crate) max_len: usize,
    pub(crate) max_losses: usize,
    pub(crate) checkpoint: Option<Checkpoint>,
    pub(crate) boot_now: Option<[u8; 16]>,
    /// The durable seq reservation: no seq above it was ever handed out.
    pub(crate) reserved: u64,
    /// The largest seq a sync mark in the data file claims durable (0:
    /// none).
    pub(crate) sync_mark: u64,
    /// The data file was whole (not cut short) when opened.
    pub(crate) data_whole: bool,
}

/// Rebuilds the ring's state from the data file and the checkpoint: the
/// clean reopen when the files prove it, otherwise the three steps of the
/// module doc.
pub(crate) fn recover(mut input: Input<'_>) -> io::Result<(RingState, RecoveryReport)> {
    let mut scan = Scanner::new(input.data, input.cap, input.max_len, SCAN_CHUNK);
    if let Some(reopened) = clean_reopen(&mut scan, &input)? {
        return Ok(reopened);
    }
    // From here it may read the whole ring, with nothing cached (a reboot).
    scan.read_ahead(ReadAhead::default());
    let have_checkpoint = input.checkpoint.is_some();
    let ck =
        input.checkpoint.take().unwrap_or_else(|| Checkpoint { next_seq: 1, tail_seq: 1, ..Checkpoint::default() });
    let mut report = RecoveryReport { clean_shutdown: ck.clean, ..RecoveryReport::default() };
    let head = find_newest(&mut scan, &input, &ck, have_checkpoint)?;
    report.torn_bytes_truncated = head.torn.map_or(0, |(bytes, _)| bytes);
    let classify = Classifier {
        hints: &ck.hole_hints,
        power_loss_possible: head.power_loss_possible,
        durable_seq: head.durable_seq,
        unwritten_after: ck.durable_claim(input.sync_mark, input.reserved).max(ck.next_seq.saturating_sub(1)),
    };
    let walked = walk(&mut scan, &input, &ck, &head, &classify)?;
    report.records_recovered = walked.window.records;
    let mut st = rebuild(&mut scan, &input, &ck, &head, walked, &classify, &mut report)?;
    st.settle();
    st.debug_check("recovery");
    report.pending = st.stats(0).pending;
    report.unreadable_bytes = scan.unreadable_bytes;
    Ok((st, report))
}

/// What step 1 found: the newest intact frame, and what the checkpoint
/// proves about the writes before it.
struct Newest {
    /// Where the newest intact frame ends, and the seq after it.
    head: u64,
    found_next: u64,
    /// Found by following the frames from the checkpoint (a process crash).
    chained: bool,
    /// A torn frame at the head: its bytes, and its seq if its header
    /// survives.
    torn: Option<(u64, Option<u64>)>,
    power_loss_possible: bool,
    durable_seq: u64,
    /// Found from the last data fsync the checkpoint records.
    from_durable: bool,
}

/// Step 1: the head.
fn find_newest(
    scan: &mut Scanner<'_>,
    input: &Input<'_>,
    ck: &Checkpoint,
    have_checkpoint: bool,
) -> io::Result<Newest> {
    // Not `ck.clean`: that flag may come from an older slot when the newest
    // was torn. A clean close shrinks the reservation to its last seq, so a
    // reboot after one costs nothing.
    let power_loss_possible = ck.boot_id.is_none() || input.boot_now.is_none() || ck.boot_id != input.boot_now;
    let chained = if power_loss_possible || !have_checkpoint { None } else { chain_head(scan, ck)? };
    // The last data fsync the checkpoint records bounds the head from below
    // even after a power loss: every frame below its position was durable,
    // and every later write lies above it. (Holes are below the head: they
    // matter to the walk's jump, which checks for them itself.)
    let from_durable = have_checkpoint && input.data_whole;
    let newest = match chained {
        Some(newest) => Some(newest),
        None if from_durable => Some(head_since_durable(input.data, scan, ck, input.reserved, input.max_len)?),
        None => find_head(input.data, scan)?,
    };
    let (head, found_next) = newest.unwrap_or((ck.head_pos, ck.next_seq));
    // A sync mark may claim more than the checkpoint (a sync writes no
    // checkpoint it waits for): the seqs it names were handed out to
    // records, and were durable unless the fsync it came before failed or
    // a power loss cut it short. Missing ones count as damage, never as lost
    // unsynced: a record `sync` reported durable must not be.
    let durable_seq = ck.durable_claim(input.sync_mark, input.reserved);
    // Under SyncPolicy::Always every returned append was durable: nothing
    // below the newest surviving record can have been lost unsynced.
    let durable_seq = if ck.sync_always { durable_seq.max(found_next.saturating_sub(1)) } else { durable_seq };
    let torn = torn_at(scan, head, input.max_len)?;
    Ok(Newest { head, found_next, chained: chained.is_some(), torn, power_loss_possible, durable_seq, from_durable })
}

/// What step 2 found.
struct Walked {
    window: Window,
    /// The writer lapped the checkpoint's tail since.
    lapped: bool,
    window_start: u64,
}

/// Step 2: the live window.
fn walk(
    scan: &mut Scanner<'_>,
    input: &Input<'_>,
    ck: &Checkpoint,
    newest: &Newest,
    classify: &Classifier<'_>,
) -> io::Result<Walked> {
    let head = newest.head;
    // A data file found cut short is checked frame by frame.
    let trusted = if input.data_whole { trusted_through(ck) } else { ck.settled_seq };
    let lapped = head.saturating_sub(input.cap) > ck.tail_pos;
    let window_start = head.saturating_sub(input.cap).max(ck.tail_pos).min(head);
    // The records the checkpoint describes are all in the page cache after
    // a process crash; after a power loss those up to the durable seq are.
    let skip = match (newest.chained, input.data_whole) {
        (true, true) => skip_for(scan, ck, ck.next_seq - 1, ck.head_pos)?,
        (false, true) if newest.from_durable => skip_for(scan, ck, ck.durable_seq, ck.durable_pos)?,
        _ => None,
    };
    let window = walk_window(scan, (window_start, head), (ck.tail_seq, ck.ack_seq), trusted, skip, classify)?;
    Ok(Walked { window, lapped, window_start })
}

/// Step 3 and the state: the seqs assigned that no frame holds any more,
/// the tail, and the losses below it.
fn rebuild(
    scan: &mut Scanner<'_>,
    input: &Input<'_>,
    ck: &Checkpoint,
    newest: &Newest,
    walked: Walked,
    classify: &Classifier<'_>,
    report: &mut RecoveryReport,
) -> io::Result<RingState> {
    let Walked { window: Window { mut holes, tail, last: prev, ack_pos, .. }, lapped, window_start } = walked;
    let (head, found_next) = (newest.head, newest.found_next);
    let settled_c = ck.settled_seq;
    // A surviving pad after the last surviving record names seqs whose
    // frames are gone (a torn record before the pad).
    if let Some((last, end, ts)) = prev {
        if found_next > last + 1 {
            holes.extend(classify.holes(last + 1, found_next - 1, end, head, ts, ts));
        }
    }
    let next_seq = missing_head(
        &mut holes,
        classify,
        (found_next.max(prev.map_or(0, |(s, _, _)| s + 1)), head),
        prev,
        newest.torn.and_then(|(_, seq)| seq),
        ck,
        input.reserved,
    );
    // Seqs the checkpoint settled (acknowledged or counted lost) stay
    // settled whatever the frames say: when the data file is older than the
    // checkpoint (restored from a copy, or writes lost under it), the
    // missing seqs above the newest frame reach down into them.
    holes.retain_mut(|h| {
        h.first = h.first.max(settled_c + 1);
        h.first <= h.last
    });
    let (tail_seq, tail_pos, tail_ts) = tail.unwrap_or((next_seq, head, 0));
    let tail_seq = holes.first().map_or(tail_seq, |h| h.first.min(tail_seq));
    let tail_pos = holes.first().filter(|h| h.first == tail_seq).map_or(tail_pos, |h| h.pos.min(tail_pos));

    let mut st = fresh_state(input.cap, input.max_losses);
    st.next_seq = next_seq;
    st.head = head;
    (st.tail_seq, st.tail_pos, st.tail_ts) = (tail_seq, tail_pos, tail_ts);
    st.ack_seq = ck.ack_seq.min(next_seq - 1);
    st.ack_pos = ack_pos;
    take_counters(&mut st, ck);

    // Seqs below the oldest survivor that the checkpoint had not settled.
    if tail_seq > settled_c + 1 {
        let (first, last) = (settled_c + 1, tail_seq - 1);
        // Frames inside the window were never evicted: a surviving header
        // there names a record that was damaged, not overwritten.
        let damaged = match tail {
            Some((_, pos, _)) if lapped => damaged_below_tail(scan, window_start, pos, tail_seq)?,
            _ => None,
        };
        let cut_off = match tail {
            Some((_, pos, _)) if !lapped => {
                let behind = matches!(scan.header_at(pos)?, Found::Record(h) if h.behind);
                classify.cut_off(behind, behind && readable_at(scan, ck.head_pos)?)
            }
            _ => None,
        };
        let parts = match cut_off {
            // The first seq the checkpoint did not describe goes at its head.
            Some(cut) => classify.split_or(first, last, Some(cut)),
            None if lapped => classify.split_lapped(first, last, damaged),
            None => classify.split(first, last),
        };
        settle_below_tail(&mut st, report, ck, parts, (ck.settled_pos, tail_pos), tail_ts);
    }
    for h in holes {
        for added in st.add_hole(h) {
            match added.cause {
                LossCause::LostUnsynced => report.lost_unsynced_discovered += added.count(),
                LossCause::Skipped => report.seqs_skipped += added.count(),
                _ => report.damaged_records += added.count(),
            }
            report.losses_discovered.push(added.to_range());
        }
    }
    Ok(st)
}

use clean::clean_reopen;
use head::{chain_head, find_head, head_since_durable, torn_at};
pub(crate) use settle::fresh_state;
use settle::{Classifier, missing_head, settle_below_tail, take_counters};
use window::{Window, damaged_below_tail, readable_at, skip_for, trusted_through, walk_window};
