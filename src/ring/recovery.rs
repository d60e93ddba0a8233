//! Recovery: rebuilding the ring's state from its frames and checkpoint.
//!
//! After a clean close nothing is read ([`clean_reopen`]). After a process
//! crash the head is found by following the frames written since the
//! checkpoint ([`chain_head`]) and the records the checkpoint describes are
//! counted without being read ([`Skip`]). Otherwise, and when either cannot
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

use std::collections::BTreeMap;
use std::io;

use super::frame::HEADER_LEN;
use super::frame::{UNDONE, decode_header};
use super::meta::Checkpoint;
use super::scan::{Found, ReadAhead, Scanner, next_lap};
use super::state::{Hole, State};
use crate::ring::storage::Storage;
use crate::stats::{LossCause, LossList, LossRange, RecoveryReport};

const SCAN_CHUNK: usize = 512 << 10;

pub(crate) struct Input<'a> {
    pub(crate) data: &'a dyn Storage,
    pub(crate) cap: u64,
    pub(crate) max_len: usize,
    pub(crate) max_losses: usize,
    pub(crate) checkpoint: Option<Checkpoint>,
    pub(crate) boot_now: Option<[u8; 16]>,
    /// The durable seq reservation: no seq above it was ever handed out.
    pub(crate) reserved: u64,
    /// The data file was whole (not cut short) when opened.
    pub(crate) data_whole: bool,
}

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
fn clean_reopen(scan: &mut Scanner<'_>, input: &Input<'_>) -> io::Result<Option<(State, RecoveryReport)>> {
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
    // Seqs from the oldest record on that hold no frame: lost, or skipped
    // after an earlier crash, and settled by an ack past them.
    let missing: u64 = ck
        .losses
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
        .sum();
    let report = RecoveryReport {
        clean_shutdown: true,
        records_recovered: top.saturating_sub(ck.tail_seq).saturating_sub(missing),
        pending: st.stats(0).pending,
        ..RecoveryReport::default()
    };
    Ok(Some((st, report)))
}

/// The head after a process crash, found from the checkpoint's head without
/// reading the whole ring.
///
/// In the same boot the page cache kept every write that completed, in
/// order: the frames written since the checkpoint follow its head in a
/// chain. The chain is followed, checksums checked, to the first position
/// `p` without an intact frame naming it. That is the head if the first
/// intact frame after `p` is a leftover of an earlier lap: the writer
/// writes positions in order and would have overwritten it had it gone
/// past `p`. Returns `None` (read the whole ring) if that frame is instead
/// a newer one (damage in the middle of the chain), or one of a later lap
/// (the writer lapped the checkpoint's head), or if the bytes of an undone
/// write come first: the undo may have wiped frames the writer wrote past
/// `p`, leaving an older lap's leftover (say in the unwritten body of a pad
/// it wiped) to look like the end.
fn chain_head(scan: &mut Scanner<'_>, ck: &Checkpoint) -> io::Result<Option<(u64, u64)>> {
    let cap = scan.cap();
    let (mut p, mut next_seq) = (ck.head_pos, ck.next_seq);
    loop {
        match scan.frame_at(p)? {
            Found::Wrap => p = next_lap(p, cap),
            // Frames written since carry seqs from the checkpoint's next seq
            // on; an older one is a leftover from before a recovery.
            Found::Record(h) if h.seq >= next_seq => {
                (p, next_seq) = (p + h.size(), h.seq + 1);
            }
            Found::Pad(h) if h.seq >= next_seq => {
                (p, next_seq) = (p + h.size(), h.seq);
            }
            Found::Record(_) | Found::Pad(_) | Found::Invalid => {
                return Ok(match first_intact_after(scan, p)? {
                    After::Frame(pos, at) if pos >= at => None,
                    After::Frame(..) | After::Nothing => Some((p, next_seq)),
                    After::Undone => None,
                });
            }
        }
    }
}

/// What lies after the position where a chain of frames stops.
enum After {
    /// The first intact frame of any lap: its position, and the position of
    /// this lap it sits at.
    Frame(u64, u64),
    /// No intact frame within a lap.
    Nothing,
    /// Bytes of an undone write ([`UNDONE`]) at or before the first intact
    /// frame: a failed write was wiped there, possibly over frames written
    /// after the checkpoint and then evicted, so what follows proves
    /// nothing about where the writer stopped.
    Undone,
}

/// What follows position `p` (where a chain stopped), within one lap.
///
/// An older lap's frame in the rest of `p`'s lap proves nothing: a pad the
/// writer put at `p` (and that was later overwritten or wiped) would leave
/// that space unwritten. The scan goes on from the next lap's start, which
/// a writer that went past `p` always wrote.
fn first_intact_after(scan: &mut Scanner<'_>, p: u64) -> io::Result<After> {
    let cap = scan.cap();
    if scan.bytes(p % cap, HEADER_LEN)?.chunks_exact(8).any(|w| w == UNDONE) {
        return Ok(After::Undone);
    }
    let pad_could_cover = if p % cap == 0 { p } else { next_lap(p, cap) };
    let mut q = p + super::frame::ALIGN;
    while q < p + cap {
        let off = q % cap;
        if cap - off < HEADER_LEN as u64 {
            q = next_lap(q, cap);
            continue;
        }
        let zeros = scan.zeros_at(off)?;
        if zeros > 0 {
            q += zeros;
            continue;
        }
        if scan.bytes(off, 8)? == UNDONE {
            return Ok(After::Undone);
        }
        match scan.frame_at_offset(off)? {
            (pos, Found::Record(_) | Found::Pad(_)) if pos < q && q < pad_could_cover => q = pad_could_cover,
            (pos, Found::Record(_) | Found::Pad(_)) => return Ok(After::Frame(pos, q)),
            _ => q += super::frame::ALIGN,
        }
    }
    Ok(After::Nothing)
}

/// Where the newest intact frame ends and the seq that follows it: one pass
/// over the data area, offset by offset, checking the CRC of every frame
/// whose header names its own offset.
///
/// Not hopping from frame to frame: after a power loss, a newer frame can
/// sit inside an older pad's span (a pad's CRC covers its header only; the
/// write that would have overwritten that header was lost, the newer
/// frame's was kept), and a hop over the pad would miss it. The head then
/// came out short of surviving records: counted as damage, or their seqs
/// handed out again (simulation seed 79,122; `damage::the_whole_ring_head_
/// search_finds_newer_frames_inside_an_old_pad`).
fn find_head(data: &dyn Storage, scan: &mut Scanner<'_>) -> io::Result<Option<(u64, u64)>> {
    search_heads::<true>(data, scan, 0, u64::MAX)
}

/// The newest intact frame naming a position from `since` to
/// `since + reach` ([`find_head`]: any position). Where every record of
/// the checkpoint was durable, only such a frame can be the head, `since`
/// being the durable position, and the head is `since` itself if none
/// survived.
///
/// Such a frame may sit anywhere, even inside an older frame's payload (a
/// power loss can keep it and lose the writes that would have overwritten
/// the older frame's header), so every 8-byte-aligned offset is a
/// candidate. A header stores its position in bytes 24..32: a word there
/// in the range, naming its own offset, marks a candidate, and only
/// candidates are decoded and checksummed. Other words cost a subtraction
/// and a comparison.
fn find_head_since(
    data: &dyn Storage,
    scan: &mut Scanner<'_>,
    since: u64,
    reach: u64,
) -> io::Result<Option<(u64, u64)>> {
    search_heads::<false>(data, scan, since, reach)
}

/// The search of [`find_head`] (`WHOLE`: any position) and
/// [`find_head_since`], compiled apart so that the bounded search (the
/// power-loss recovery the benchmarks time) keeps a one-comparison filter.
fn search_heads<const WHOLE: bool>(
    data: &dyn Storage,
    scan: &mut Scanner<'_>,
    since: u64,
    reach: u64,
) -> io::Result<Option<(u64, u64)>> {
    let cap = scan.cap();
    let mut best: Option<(u64, u64)> = None;
    let mut buf = vec![0u8; SCAN_CHUNK];
    let mut ahead = ReadAhead::default();
    let mut start = 0u64;
    while start < cap {
        let len = (SCAN_CHUNK as u64).min(cap - start) as usize;
        ahead.reading(data, start, cap);
        let filled = super::storage::read_or_fill(data, &mut buf[..len], super::meta::DATA_OFFSET + start)?;
        scan.note_unreadable(filled);
        let word = |w: &[u8]| u64::from_le_bytes(w.try_into().expect("8 bytes"));
        // A word that could be a header's position. Bounded: in range.
        // Whole: 8-byte aligned and below 2^62 (positions are), and not
        // zero (a zero position is that of the data area's first header
        // only, at word 3, which the loop below always looks at). Bitwise,
        // so that the test of a block of eight has no branch.
        #[allow(clippy::needless_bitwise_bool)]
        let in_range = |w: u64| {
            if WHOLE {
                (w % super::frame::ALIGN == 0) & (w < super::frame::MAX_POSITION) & (w != 0)
            } else {
                w.wrapping_sub(since) <= reach
            }
        };
        for (b, block) in buf[..len].chunks(64).enumerate() {
            // Almost no word is in range: test a block of eight at once,
            // without branches (the compiler vectorises this). The first
            // block may hold the first header's zero position.
            if let Some(block) = <&[u8; 64]>::try_from(block).ok().filter(|_| start > 0 || b > 0) {
                let mut any = false;
                for k in 0..8 {
                    any |= in_range(word(&block[k * 8..k * 8 + 8]));
                }
                if !any {
                    continue;
                }
            }
            for (k, w) in block.chunks_exact(8).enumerate() {
                let word = word(w);
                // The word would be bytes 24..32 of a header at `off`.
                let Some(off) = (start + (b * 8 + k) as u64 * 8).checked_sub(24) else { continue };
                // Most words fail here, before the division below.
                if !(in_range(word) || (WHOLE && word == 0 && off == 0)) {
                    continue;
                }
                if word % cap != off {
                    continue;
                }
                let (h, next_seq) = match scan.frame_at(word)? {
                    Found::Record(h) => (h, h.seq + 1),
                    Found::Pad(h) => (h, h.seq),
                    Found::Wrap | Found::Invalid => continue,
                };
                let end = word + h.size();
                if best.is_none_or(|(e, _)| end > e) {
                    best = Some((end, next_seq));
                }
            }
        }
        start += len as u64;
    }
    Ok(best)
}

/// The head and the seq after it, found past the position of the last data
/// fsync `ck` records ([`find_head_since`]); that position if no frame
/// past it survived.
fn head_since_durable(
    data: &dyn Storage,
    scan: &mut Scanner<'_>,
    ck: &Checkpoint,
    reserved: u64,
    max_len: usize,
) -> io::Result<(u64, u64)> {
    // Every frame written since carries a seq from the one after the
    // durable seq up to the reservation; a frame is at most
    // `frame_size(max_len)` bytes, plus at most one pad per lap.
    let seqs = reserved.max(ck.next_seq).saturating_sub(ck.durable_seq + 1).saturating_add(1);
    let reach = seqs.saturating_mul(2 * super::frame::frame_size(max_len)).saturating_add(2 * scan.cap());
    let newest = find_head_since(data, scan, ck.durable_pos, reach)?;
    Ok(newest.unwrap_or((ck.durable_pos, ck.durable_seq + 1)))
}

/// A torn or damaged frame at `head`: a header that names its position
/// but whose frame fails its checksum (a write cut short, or damage at
/// rest to the newest frame). Returns its size in the lap and, for a
/// record, its seq: that seq was handed out.
fn torn_at(scan: &mut Scanner<'_>, head: u64, max_len: usize) -> io::Result<Option<(u64, Option<u64>)>> {
    let cap = scan.cap();
    // With no room for a header before the end of the lap, the next frame
    // goes at the next lap's start.
    let pos = if head % cap + HEADER_LEN as u64 > cap { next_lap(head, cap) } else { head };
    let off = pos % cap;
    let Some(h) = decode_header(scan.bytes(off, HEADER_LEN)?, pos, max_len) else {
        return Ok(None);
    };
    Ok((scan.frame_at(pos)? == Found::Invalid).then(|| (h.size().min(cap - off), (!h.is_pad).then_some(h.seq))))
}

/// The lowest seq of a record frame whose header survives, between the
/// start of the live window and the oldest intact record (`tail`), with a
/// seq below `below`. Such a frame lies inside the window, so it was never
/// evicted: its record was damaged, not overwritten. Bounded by the gap,
/// which without damage is less than one frame.
fn damaged_below_tail(scan: &mut Scanner<'_>, from: u64, tail: u64, below: u64) -> io::Result<Option<u64>> {
    let cap = scan.cap();
    let mut q = from.next_multiple_of(super::frame::ALIGN);
    let mut lowest = None;
    while q < tail {
        match scan.header_at(q)? {
            Found::Wrap => q = next_lap(q, cap),
            Found::Record(h) if h.seq < below && q + h.size() <= tail => {
                lowest = Some(lowest.map_or(h.seq, |l: u64| l.min(h.seq)));
                q += h.size();
            }
            Found::Pad(h) if q + h.size() <= tail => q += h.size(),
            _ => q += super::frame::ALIGN,
        }
    }
    Ok(lowest)
}

/// What the walk over the live window found.
struct Window {
    holes: Vec<Hole>,
    /// The oldest record: seq, position, timestamp.
    tail: Option<(u64, u64, u64)>,
    /// The newest record: seq, end position, timestamp.
    last: Option<(u64, u64, u64)>,
    /// Position of the record after the delivery cursor.
    ack_pos: Option<u64>,
    records: u64,
}

/// The highest seq whose frame, if present, was written once and fsynced:
/// the checkpoint's durable seq, but below any hole the checkpoint knows.
/// A hole's seqs may have frames torn by a power loss, and its positions
/// were written again after recovery; if those writes are lost in turn, the
/// torn frames reappear.
fn trusted_through(ck: &Checkpoint) -> u64 {
    if ck.hole_hints.len() >= super::meta::MAX_HOLE_HINTS {
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
fn chained_next(
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
/// describes straight to the checkpoint's head (see [`Skip`]). A frame with
/// a seq below `oldest`, the checkpoint's oldest record, is a leftover.
fn walk_window(
    scan: &mut Scanner<'_>,
    (start, head): (u64, u64),
    (oldest, ack_seq): (u64, u64),
    trusted: u64,
    mut skip: Option<Skip>,
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
                        let unhinted = (pend == p).then_some(LossCause::Skipped);
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
struct Skip {
    /// The checkpoint's oldest record.
    first_seq: u64,
    /// The last seq jumped over.
    last_seq: u64,
    /// Where its frame ends.
    through: u64,
    /// The record after the delivery cursor, checked in place.
    ack: Option<(u64, u64)>,
    /// Loss ranges (first seq, last seq, count) reaching above the oldest
    /// record: seqs settled as lost by an ack past them (as after the seqs
    /// a power loss skipped) hold no frame, and are not counted as records.
    lost: Vec<(u64, u64, u64)>,
}

impl Skip {
    /// The records a jump from the record `seq` would pass over, if the
    /// loss ranges allow counting them: each lies wholly inside the jump or
    /// wholly outside it.
    fn passed(&self, seq: u64) -> Option<u64> {
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

/// The [`Skip`] through `last_seq`, ending at `through`, if the checkpoint
/// allows one: no hole known, and the record after the delivery cursor
/// where the checkpoint says it is (when the skip would pass it).
fn skip_for(scan: &mut Scanner<'_>, ck: &Checkpoint, last_seq: u64, through: u64) -> io::Result<Option<Skip>> {
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
    Ok(Some(Skip { first_seq: ck.tail_seq, last_seq, through, ack, lost }))
}

pub(crate) fn recover(input: Input<'_>) -> io::Result<(State, RecoveryReport)> {
    let mut scan = Scanner::new(input.data, input.cap, input.max_len, SCAN_CHUNK);
    if let Some(reopened) = clean_reopen(&mut scan, &input)? {
        return Ok(reopened);
    }
    // From here it may read the whole ring, with nothing cached (a reboot).
    scan.read_ahead(ReadAhead::default());
    let Input { cap, max_len, max_losses, checkpoint, boot_now, reserved, data_whole, .. } = input;
    let have_checkpoint = checkpoint.is_some();
    let ck = checkpoint.unwrap_or_else(|| Checkpoint { next_seq: 1, tail_seq: 1, ..Checkpoint::default() });
    // Not `ck.clean`: that flag may come from an older slot when the newest
    // was torn. A clean close shrinks the reservation to its last seq, so a
    // reboot after one costs nothing.
    let power_loss_possible = ck.boot_id.is_none() || boot_now.is_none() || ck.boot_id != boot_now;
    let mut report = RecoveryReport { clean_shutdown: ck.clean, ..RecoveryReport::default() };

    // 1. The head.
    let chained = if power_loss_possible || !have_checkpoint { None } else { chain_head(&mut scan, &ck)? };
    // The last data fsync the checkpoint records bounds the head from below
    // even after a power loss: every frame below its position was durable,
    // and every later write lies above it. (Holes are below the head: they
    // matter to the walk's jump, which checks for them itself.)
    let from_durable = have_checkpoint && data_whole;
    let newest = match chained {
        Some(newest) => Some(newest),
        None if from_durable => Some(head_since_durable(input.data, &mut scan, &ck, reserved, max_len)?),
        None => find_head(input.data, &mut scan)?,
    };
    let (head, found_next) = newest.unwrap_or((ck.head_pos, ck.next_seq));
    // Under SyncPolicy::Always every returned append was durable: nothing
    // below the newest surviving record can have been lost unsynced.
    let durable_seq = if ck.sync_always { ck.durable_seq.max(found_next.saturating_sub(1)) } else { ck.durable_seq };
    let classify = Classifier { hints: &ck.hole_hints, power_loss_possible, durable_seq };
    let torn = torn_at(&mut scan, head, max_len)?;
    report.torn_bytes_truncated = torn.map_or(0, |(bytes, _)| bytes);

    // 2. The live window.
    // A data file found cut short is checked frame by frame.
    let trusted = if data_whole { trusted_through(&ck) } else { ck.settled_seq };
    let lapped = head.saturating_sub(cap) > ck.tail_pos;
    let window_start = head.saturating_sub(cap).max(ck.tail_pos).min(head);
    // The records the checkpoint describes are all in the page cache after
    // a process crash; after a power loss those up to the durable seq are.
    let skip = match (chained, data_whole) {
        (Some(_), true) => skip_for(&mut scan, &ck, ck.next_seq - 1, ck.head_pos)?,
        (None, true) if from_durable => skip_for(&mut scan, &ck, ck.durable_seq, ck.durable_pos)?,
        _ => None,
    };
    let Window { mut holes, tail, last: prev, ack_pos, records } =
        walk_window(&mut scan, (window_start, head), (ck.tail_seq, ck.ack_seq), trusted, skip, &classify)?;
    report.records_recovered = records;

    let settled_c = ck.settled_seq;
    // 3. Seqs assigned before the crash that no frame holds any more.
    // A surviving pad after the last surviving record names seqs whose
    // frames are gone (a torn record before the pad).
    if let Some((last, end, ts)) = prev {
        if found_next > last + 1 {
            holes.extend(classify.holes(last + 1, found_next - 1, end, head, ts, ts));
        }
    }
    let next_seq = missing_head(
        &mut holes,
        &classify,
        (found_next.max(prev.map_or(0, |(s, _, _)| s + 1)), head),
        prev,
        torn.and_then(|(_, seq)| seq),
        &ck,
        reserved,
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

    let mut st = fresh_state(cap, max_losses);
    st.next_seq = next_seq;
    st.head = head;
    (st.tail_seq, st.tail_pos, st.tail_ts) = (tail_seq, tail_pos, tail_ts);
    st.ack_seq = ck.ack_seq.min(next_seq - 1);
    st.ack_pos = ack_pos;
    take_counters(&mut st, &ck);

    // Seqs below the oldest survivor that the checkpoint had not settled.
    if tail_seq > settled_c + 1 {
        let (first, last) = (settled_c + 1, tail_seq - 1);
        // Frames inside the window were never evicted: a surviving header
        // there names a record that was damaged, not overwritten.
        let damaged = match tail {
            Some((_, pos, _)) if lapped => damaged_below_tail(&mut scan, window_start, pos, tail_seq)?,
            _ => None,
        };
        let parts = if lapped { classify.split_lapped(first, last, damaged) } else { classify.split(first, last) };
        settle_below_tail(&mut st, &mut report, &ck, parts, (ck.settled_pos, tail_pos), tail_ts);
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
    st.settle();
    st.debug_check("recovery");
    report.pending = st.stats(0).pending;
    report.unreadable_bytes = scan.unreadable_bytes;
    Ok((st, report))
}

/// Step 3 of recovery: the holes for seqs handed out that no frame holds
/// any more, from `next_seq` (after the newest surviving record, whose
/// frame ends at `head`) on; returns the seq to resume at.
fn missing_head(
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
            && (classify.power_loss_possible || s <= ck.durable_seq || ck.sync_always)
    });
    let assigned_before = ck.next_seq.max(torn_seq.map_or(0, |s| s + 1));
    let (first_ts, pos) = prev.map_or((ck.tail_ts, head), |(_, e, t)| (t, e));
    // Records gone from the head were appended before this recovery.
    let now = super::now_nanos();
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
struct Classifier<'a> {
    /// Causes an earlier recovery or reader gave (first, last, cause).
    hints: &'a [(u64, u64, LossCause)],
    power_loss_possible: bool,
    durable_seq: u64,
}

impl Classifier<'_> {
    /// Splits `first..=last` into runs of one cause: a run an earlier
    /// recovery classified keeps its cause; otherwise seqs above the durable
    /// seq after a power loss were lost unsynced, and anything else is damage.
    fn split(&self, first: u64, last: u64) -> Vec<(u64, u64, LossCause)> {
        self.split_or(first, last, None)
    }

    /// [`split`](Self::split), with `unhinted` the cause of seqs no hint
    /// names, when given.
    fn split_or(&self, first: u64, last: u64, unhinted: Option<LossCause>) -> Vec<(u64, u64, LossCause)> {
        let mut parts: Vec<(u64, u64, LossCause)> = Vec::new();
        let mut cur = first;
        while cur <= last {
            let (end, cause) = if let Some(&(_, b, c)) = self.hints.iter().find(|&&(a, b, _)| a <= cur && cur <= b) {
                (b.min(last), c)
            } else {
                let next_hint = self.hints.iter().map(|&(a, _, _)| a).filter(|&a| a > cur).min().unwrap_or(u64::MAX);
                let mut end = last.min(next_hint.saturating_sub(1));
                let cause = if let Some(c) = unhinted {
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
    fn split_lapped(&self, first: u64, last: u64, damaged_from: Option<u64>) -> Vec<(u64, u64, LossCause)> {
        let mut parts = Vec::new();
        for (a, b, cause) in self.split_or(first, last, Some(LossCause::Overwritten)) {
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
    fn holes(&self, first: u64, last: u64, pos: u64, resume_pos: u64, first_ts: u64, last_ts: u64) -> Vec<Hole> {
        self.holes_or(first, last, (pos, resume_pos), (first_ts, last_ts), None)
    }

    /// [`holes`](Self::holes), with `unhinted` the cause of seqs no hint
    /// names, when given.
    fn holes_or(
        &self,
        first: u64,
        last: u64,
        (pos, resume_pos): (u64, u64),
        (first_ts, last_ts): (u64, u64),
        unhinted: Option<LossCause>,
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
fn settle_below_tail(
    st: &mut State,
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
fn settle_discovered(st: &mut State, report: &mut RecoveryReport, range: LossRange) {
    let count = range.count;
    match range.cause {
        LossCause::Overwritten => {
            st.overwritten += count;
            st.overwritten_bytes = crate::stats::bounded_add(st.overwritten_bytes, range.bytes);
            report.overwritten_discovered += count;
        }
        LossCause::LostUnsynced => {
            st.lost_unsynced += count;
            report.lost_unsynced_discovered += count;
        }
        LossCause::Skipped => {
            st.skipped += count;
            report.seqs_skipped += count;
        }
        _ => {
            st.corrupted += count;
            report.damaged_records += count;
        }
    }
    st.losses.add(range, st.max_losses);
    report.losses_discovered.push(range);
}

/// The state of a new, empty ring.
/// The settled counters and loss ranges a checkpoint keeps, into `st`.
fn take_counters(st: &mut State, ck: &Checkpoint) {
    st.rejected = ck.rejected;
    st.rejected_reported = ck.rejected_reported;
    st.acked = ck.acked;
    st.overwritten = ck.overwritten;
    st.overwritten_bytes = ck.overwritten_bytes;
    st.corrupted = ck.corrupted;
    st.lost_unsynced = ck.lost_unsynced;
    st.skipped = ck.skipped;
    st.lap_ends.clone_from(&ck.lap_ends);
    st.losses = ck.losses.clone();
}

pub(crate) fn fresh_state(cap: u64, max_losses: usize) -> State {
    State {
        cap,
        next_seq: 1,
        head: 0,
        tail_seq: 1,
        tail_pos: 0,
        tail_ts: 0,
        ack_seq: 0,
        ack_pos: None,
        rejected: 0,
        rejected_reported: 0,
        acked: 0,
        overwritten: 0,
        overwritten_bytes: 0,
        corrupted: 0,
        lost_unsynced: 0,
        skipped: 0,
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Overlapping loss ranges (a hostile checkpoint with a valid CRC; the
    /// ring never writes them) whose counts add up past `u64::MAX` refuse
    /// the jump instead of overflowing.
    #[test]
    fn a_skip_over_ranges_whose_counts_overflow_is_refused() {
        let huge = (1 << 62) - 1;
        let skip = Skip { first_seq: 1, last_seq: 1 << 62, through: 0, ack: None, lost: vec![(2, 100, huge); 5] };
        assert_eq!(skip.passed(1), None);
        let skip = Skip { lost: vec![(2, 100, 99)], ..skip };
        assert_eq!(skip.passed(1), Some((1 << 62) - 1 - 99));
    }
}
