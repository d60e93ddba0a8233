//! Step 1 of recovery: the head, the newest intact frame: followed from the
//! checkpoint after a process crash, searched for from the last durable
//! position or over the whole data area otherwise; and a torn frame there.

use std::io;

use super::SCAN_CHUNK;
use crate::ring::append::IN_FLIGHT_BYTES;
use crate::ring::frame::{HEADER_LEN, Header, UNDONE, decode_header};
use crate::ring::meta::Checkpoint;
use crate::ring::scan::{Found, ReadAhead, Scanner, next_lap};
use crate::ring::storage::Storage;

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
pub(super) fn chain_head(scan: &mut Scanner<'_>, ck: &Checkpoint) -> io::Result<Option<(u64, u64)>> {
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
                // Appends write outside the ring's lock: a later one may
                // have written past a span an earlier one never did. Its
                // frames say so, and lie within the bytes in flight.
                if let Some((q, h)) = behind_within(scan, p, next_seq)? {
                    (p, next_seq) = (q + h.size(), h.seq + 1);
                    continue;
                }
                return Ok(match first_intact_after(scan, p)? {
                    NextFrame::Frame(pos, at) if pos >= at => None,
                    NextFrame::Frame(..) | NextFrame::Nothing => Some((p, next_seq)),
                    NextFrame::Undone => None,
                });
            }
        }
    }
}

/// The first intact record after `p`, within [`IN_FLIGHT_BYTES`], that
/// was reserved behind an append still writing, with a seq from
/// `next_seq` on: written past a span that append left unwritten.
fn behind_within(scan: &mut Scanner<'_>, p: u64, next_seq: u64) -> io::Result<Option<(u64, Header)>> {
    // (No further than a lap: beyond, positions repeat.)
    let reach = p + IN_FLIGHT_BYTES.min(scan.cap());
    let mut q = p + crate::ring::frame::ALIGN;
    while q < reach {
        match scan.frame_at(q)? {
            Found::Record(h) if h.behind && h.seq >= next_seq => return Ok(Some((q, h))),
            Found::Wrap => q = next_lap(q, scan.cap()),
            _ => q += crate::ring::frame::ALIGN,
        }
    }
    Ok(None)
}

/// What lies after the position where a chain of frames stops.
pub(super) enum NextFrame {
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
pub(super) fn first_intact_after(scan: &mut Scanner<'_>, p: u64) -> io::Result<NextFrame> {
    let cap = scan.cap();
    if scan.bytes(p % cap, HEADER_LEN)?.chunks_exact(8).any(|w| w == UNDONE) {
        return Ok(NextFrame::Undone);
    }
    let pad_could_cover = if p % cap == 0 { p } else { next_lap(p, cap) };
    let mut q = p + crate::ring::frame::ALIGN;
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
            return Ok(NextFrame::Undone);
        }
        match scan.frame_at_offset(off)? {
            (pos, Found::Record(_) | Found::Pad(_)) if pos < q && q < pad_could_cover => q = pad_could_cover,
            (pos, Found::Record(_) | Found::Pad(_)) => return Ok(NextFrame::Frame(pos, q)),
            _ => q += crate::ring::frame::ALIGN,
        }
    }
    Ok(NextFrame::Nothing)
}

/// Where the newest intact frame ends and the seq that follows it: one pass
/// over the data area, offset by offset, checking the CRC of every frame
/// whose header names its own offset.
///
/// Not hopping from frame to frame: after a power loss, a newer frame can
/// sit inside an older pad's span (a pad's CRC covers its header only; the
/// write that would have overwritten that header was lost, the newer
/// frame's was kept), and a hop over the pad would miss it. The head would
/// then come out short of surviving records: counted as damage, or their
/// seqs handed out again
/// (`damage::the_whole_ring_head_search_finds_newer_frames_inside_an_old_pad`).
pub(super) fn find_head(data: &dyn Storage, scan: &mut Scanner<'_>) -> io::Result<Option<(u64, u64)>> {
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
pub(super) fn find_head_since(
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
pub(super) fn search_heads<const WHOLE: bool>(
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
        let filled = crate::ring::storage::read_or_fill(data, &mut buf[..len], crate::ring::meta::DATA_OFFSET + start)?;
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
                (w % crate::ring::frame::ALIGN == 0) & (w < crate::ring::frame::MAX_POSITION) & (w != 0)
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
pub(super) fn head_since_durable(
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
    let reach = seqs.saturating_mul(2 * crate::ring::frame::frame_size(max_len)).saturating_add(2 * scan.cap());
    let newest = find_head_since(data, scan, ck.durable_pos, reach)?;
    Ok(newest.unwrap_or((ck.durable_pos, ck.durable_seq + 1)))
}

/// A torn or damaged frame at `head`: a header that names its position
/// but whose frame fails its checksum (a write cut short, or damage at
/// rest to the newest frame). Returns its size in the lap and, for a
/// record, its seq: that seq was handed out.
pub(super) fn torn_at(scan: &mut Scanner<'_>, head: u64, max_len: usize) -> io::Result<Option<(u64, Option<u64>)>> {
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
