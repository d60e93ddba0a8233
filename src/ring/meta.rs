//! The data file header and the checkpoint slots of the meta file.
//!
//! Byte layouts are in docs/FORMAT.md; this module is their only reader and
//! writer.

use super::frame::MAX_POSITION;
use crate::ring::state::Counts;
use crate::stats::{LossCause, LossList, LossRange};

/// Version of the on-disk format this build reads and writes.
pub(crate) const FORMAT_VERSION: u32 = 7;
/// Magic of the data file header.
pub(crate) const DATA_MAGIC: &[u8; 8] = b"RSHPDATA";
/// Magic of a checkpoint slot.
pub(crate) const META_MAGIC: &[u8; 8] = b"RSHPMETA";
/// The data area starts here in the data file.
pub(crate) const DATA_OFFSET: u64 = 4096;
/// Size of one checkpoint slot; the meta file holds two.
pub(crate) const SLOT_LEN: usize = 4096;
/// Magic of a seq reservation record.
pub(crate) const RESERVATION_MAGIC: &[u8; 8] = b"RSHPRSRV";
/// Offsets of the two reservation records: each opens a 4 KiB block of its
/// own, so one unreadable block (a bad sector) leaves the other.
pub(crate) const RESERVATION_OFFSETS: [u64; 2] = [2 * SLOT_LEN as u64, 3 * SLOT_LEN as u64];
/// Length of the meta file: two checkpoint slots, two reservation blocks.
pub(crate) const META_LEN: u64 = 4 * SLOT_LEN as u64;
const RESERVATION_LEN: usize = 40;
pub(crate) const DATA_HEADER_LEN: usize = 36;
/// Magic of a sync mark.
pub(crate) const SYNC_MARK_MAGIC: &[u8; 8] = b"RSHPSYNC";
/// Offsets of the two sync marks in the data file's header page, each in a
/// sector of its own (and neither in the header's).
pub(crate) const SYNC_MARK_OFFSETS: [u64; 2] = [512, 1024];
pub(crate) const SYNC_MARK_LEN: usize = 20;
const LOSS_LEN: usize = 56;
const HINT_LEN: usize = 24;
const FIXED_LEN: usize = 240;
/// Most unsettled holes a checkpoint remembers the cause of.
pub(crate) const MAX_HOLE_HINTS: usize = 16;
/// Lap ends whose padding a checkpoint keeps, newest last.
pub(crate) const MAX_LAP_ENDS: usize = 8;
const LAP_END_LEN: usize = 16;

/// The data file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataHeader {
    pub(crate) ring_id: u64,
    pub(crate) capacity: u64,
}

/// Why a header could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    BadMagic,
    Version(u32),
    Checksum,
}

impl DataHeader {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(DATA_OFFSET as usize);
        b.extend_from_slice(DATA_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&(DATA_HEADER_LEN as u32).to_le_bytes());
        b.extend_from_slice(&self.ring_id.to_le_bytes());
        b.extend_from_slice(&self.capacity.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.resize(DATA_OFFSET as usize, 0);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < DATA_HEADER_LEN || &b[0..8] != DATA_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if crc32c::crc32c(&b[..32]) != u32_at(b, 32) {
            return Err(HeaderError::Checksum);
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        Ok(DataHeader { ring_id: u64_at(b, 16), capacity: u64_at(b, 24) })
    }
}

/// One checkpoint: everything recovery cannot derive from the frames.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) ring_id: u64,
    pub(crate) generation: u64,
    pub(crate) capacity: u64,
    pub(crate) next_seq: u64,
    pub(crate) head_pos: u64,
    pub(crate) tail_seq: u64,
    pub(crate) tail_pos: u64,
    pub(crate) tail_ts: u64,
    pub(crate) settled_seq: u64,
    pub(crate) settled_pos: u64,
    pub(crate) ack_seq: u64,
    pub(crate) durable_seq: u64,
    /// Where the frame of `durable_seq` ends: every frame below this
    /// position was fsynced (the head when the last data fsync began).
    pub(crate) durable_pos: u64,
    pub(crate) counts: Counts,
    pub(crate) clean: bool,
    /// The ring ran under `SyncPolicy::Always`: every returned append was durable.
    pub(crate) sync_always: bool,
    /// A data fsync failed: the sync mark written before it, and any since,
    /// claim nothing beyond `durable_seq`.
    pub(crate) marks_void: bool,
    pub(crate) boot_id: Option<[u8; 16]>,
    pub(crate) losses: LossList,
    /// Causes of holes not yet settled (first seq, last seq, cause), so a
    /// later recovery that finds the same gap again gives the same cause.
    pub(crate) hole_hints: Vec<(u64, u64, LossCause)>,
    /// The newest ends of a lap the head crossed: (the lap end's position,
    /// bytes left unused before it), so that a recovery counts the bytes of
    /// records evicted since this checkpoint without that padding.
    pub(crate) lap_ends: Vec<(u64, u64)>,
}

/// A sync mark: the last seq a data fsync covers, written into the data
/// file just before that fsync, so that the one fsync makes the records and
/// the claim durable together (docs/FORMAT.md, "Sync marks").
pub(crate) fn encode_sync_mark(seq: u64) -> [u8; SYNC_MARK_LEN] {
    let mut b = [0u8; SYNC_MARK_LEN];
    b[..8].copy_from_slice(SYNC_MARK_MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The seq a sync mark claims durable, if `b` holds an intact one.
pub(crate) fn decode_sync_mark(b: &[u8]) -> Option<u64> {
    let b = b.get(..SYNC_MARK_LEN)?;
    let intact = &b[..8] == SYNC_MARK_MAGIC && crc32c::crc32c(&b[..16]) == u32_at(b, 16);
    Some(u64_at(b, 8)).filter(|&seq| intact && seq < MAX_POSITION)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Checkpoint {
    /// The last seq known durable: the durable seq here, or more if a sync
    /// mark claims more and no failed fsync voided it since. (No seq above
    /// `reserved`, the seq reservation, was ever handed out.)
    pub(crate) fn durable_claim(&self, sync_mark: u64, reserved: u64) -> u64 {
        let marked = if self.marks_void { 0 } else { sync_mark.min(reserved.max(self.next_seq.saturating_sub(1))) };
        self.durable_seq.max(marked)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SLOT_LEN);
        let len = FIXED_LEN
            + self.losses.ranges.len() * LOSS_LEN
            + self.hole_hints.len() * HINT_LEN
            + self.lap_ends.len() * LAP_END_LEN;
        b.extend_from_slice(META_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&(len as u32).to_le_bytes());
        for v in [
            self.ring_id,
            self.generation,
            self.capacity,
            self.next_seq,
            self.head_pos,
            self.tail_seq,
            self.tail_pos,
            self.tail_ts,
            self.settled_seq,
            self.settled_pos,
            self.ack_seq,
            self.durable_seq,
            self.counts.rejected,
            self.counts.acked,
            self.counts.overwritten,
            self.counts.overwritten_bytes,
            self.counts.corrupted,
            self.counts.lost_unsynced,
            self.durable_pos,
            self.counts.rejected_reported,
            self.counts.skipped,
            self.counts.refused,
            self.counts.refused_reported,
            self.counts.notice_from,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let flags = u32::from(self.clean)
            | (u32::from(self.boot_id.is_some()) << 1)
            | (u32::from(self.sync_always) << 2)
            | (u32::from(self.marks_void) << 3);
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&self.boot_id.unwrap_or_default());
        b.extend_from_slice(&(self.losses.ranges.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.hole_hints.len() as u32).to_le_bytes());
        b.extend_from_slice(&(self.lap_ends.len() as u32).to_le_bytes());
        debug_assert_eq!(b.len(), FIXED_LEN);
        for r in &self.losses.ranges {
            for v in [r.first_seq, r.last_seq, r.first_ts, r.last_ts, r.count, r.bytes] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.push(r.cause.code());
            b.extend_from_slice(&[0; 7]);
        }
        for &(first, last, cause) in &self.hole_hints {
            b.extend_from_slice(&first.to_le_bytes());
            b.extend_from_slice(&last.to_le_bytes());
            b.push(cause.code());
            b.extend_from_slice(&[0; 7]);
        }
        for &(end, unused) in &self.lap_ends {
            b.extend_from_slice(&end.to_le_bytes());
            b.extend_from_slice(&unused.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        debug_assert!(b.len() <= SLOT_LEN);
        b
    }

    /// Whether the fields agree with each other as every checkpoint a ring
    /// writes does: every seq up to the settled one is acked or counted
    /// lost, the settled seq is the cursor or the one below the oldest
    /// record, loss ranges are in order, apart, and within the settled
    /// seqs, and the positions and hole hints fit the seqs.
    pub(crate) fn consistent(&self) -> bool {
        let settled_counts = [
            self.counts.acked,
            self.counts.overwritten,
            self.counts.corrupted,
            self.counts.lost_unsynced,
            self.counts.skipped,
            self.counts.refused,
        ]
        .into_iter()
        .try_fold(0u64, u64::checked_add);
        // Seqs and positions are bounded (every other one is at most
        // these), so arithmetic on them cannot overflow.
        self.next_seq >= 1
            && self.next_seq < MAX_POSITION
            && self.head_pos < MAX_POSITION
            && self.counts.rejected < MAX_POSITION
            && self.counts.rejected_reported <= self.counts.rejected
            && self.counts.refused_reported <= self.counts.refused
            && self.counts.notice_from <= self.settled_seq
            && self.counts.overwritten_bytes < MAX_POSITION
            && (1..=self.next_seq).contains(&self.tail_seq)
            && self.ack_seq < self.next_seq
            && self.settled_seq == self.ack_seq.max(self.tail_seq - 1)
            && settled_counts == Some(self.settled_seq)
            && self.losses.ranges.windows(2).all(|w| w[0].last_seq < w[1].first_seq)
            && self.losses.ranges.iter().all(|r| {
                r.first_seq <= r.last_seq
                    && r.last_seq <= self.settled_seq
                    && (1..=r.last_seq - r.first_seq + 1).contains(&r.count)
                    && r.bytes < MAX_POSITION
            })
            && self.lap_ends.iter().all(|&(end, unused)| {
                self.capacity > 0 && end % self.capacity == 0 && end <= self.head_pos && unused < self.capacity
            })
            && self.tail_pos <= self.head_pos
            && self.head_pos - self.tail_pos <= self.capacity
            && self.durable_seq < self.next_seq
            && self.durable_pos <= self.head_pos
            && self
                .hole_hints
                .iter()
                .all(|&(first, last, _)| self.settled_seq < first && first <= last && last < self.next_seq)
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < FIXED_LEN + 4 || &b[0..8] != META_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let len = u32_at(b, 12) as usize;
        if !(FIXED_LEN..=SLOT_LEN - 4).contains(&len)
            || b.len() < len + 4
            || crc32c::crc32c(&b[..len]) != u32_at(b, len)
        {
            return Err(HeaderError::Checksum);
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        let v = |i: usize| u64_at(b, 16 + 8 * i);
        let flags = u32_at(b, 208);
        let n = u32_at(b, 228) as usize;
        let h = u32_at(b, 232) as usize;
        let ends = u32_at(b, 236) as usize;
        // More than a checkpoint ever holds: a forged or foreign slot, and
        // encoding it again would overrun the slot.
        if n > crate::ring::config::MAX_LOSS_RANGES
            || h > MAX_HOLE_HINTS
            || ends > MAX_LAP_ENDS
            || FIXED_LEN + n * LOSS_LEN + h * HINT_LEN + ends * LAP_END_LEN != len
        {
            return Err(HeaderError::Checksum);
        }
        let (losses, hole_hints, lap_ends) = Self::decode_lists(b, n, h, ends)?;
        let ck = Checkpoint {
            ring_id: v(0),
            generation: v(1),
            capacity: v(2),
            next_seq: v(3),
            head_pos: v(4),
            tail_seq: v(5),
            tail_pos: v(6),
            tail_ts: v(7),
            settled_seq: v(8),
            settled_pos: v(9),
            ack_seq: v(10),
            durable_seq: v(11),
            counts: Counts {
                rejected: v(12),
                acked: v(13),
                overwritten: v(14),
                overwritten_bytes: v(15),
                corrupted: v(16),
                lost_unsynced: v(17),
                rejected_reported: v(19),
                skipped: v(20),
                refused: v(21),
                refused_reported: v(22),
                notice_from: v(23),
            },
            durable_pos: v(18),
            clean: flags & 1 != 0,
            sync_always: flags & 4 != 0,
            marks_void: flags & 8 != 0,
            boot_id: (flags & 2 != 0).then(|| b[212..228].try_into().expect("16 bytes")),
            losses,
            hole_hints,
            lap_ends,
        };
        // A checksum proves the bytes are as written, not that they were
        // written by a ring: an inconsistent slot is treated as damaged.
        if !ck.consistent() {
            return Err(HeaderError::Checksum);
        }
        Ok(ck)
    }

    /// The variable part of a slot: `n` loss ranges, `h` hole hints and
    /// `ends` lap ends, after the fixed fields.
    #[expect(clippy::type_complexity, reason = "the three lists, each with its own decoder below")]
    fn decode_lists(
        b: &[u8],
        n: usize,
        h: usize,
        ends: usize,
    ) -> Result<(LossList, Vec<(u64, u64, LossCause)>, Vec<(u64, u64)>), HeaderError> {
        let mut losses = LossList::default();
        for i in 0..n {
            let at = FIXED_LEN + i * LOSS_LEN;
            let cause = LossCause::from_code(b[at + 48]).ok_or(HeaderError::Checksum)?;
            losses.ranges.push(LossRange {
                first_seq: u64_at(b, at),
                last_seq: u64_at(b, at + 8),
                first_ts: u64_at(b, at + 16),
                last_ts: u64_at(b, at + 24),
                count: u64_at(b, at + 32),
                bytes: u64_at(b, at + 40),
                cause,
            });
        }
        let mut hole_hints = Vec::with_capacity(h);
        for i in 0..h {
            let at = FIXED_LEN + n * LOSS_LEN + i * HINT_LEN;
            let cause = LossCause::from_code(b[at + 16]).ok_or(HeaderError::Checksum)?;
            hole_hints.push((u64_at(b, at), u64_at(b, at + 8), cause));
        }
        let lap_ends = (0..ends)
            .map(|i| {
                let at = FIXED_LEN + n * LOSS_LEN + h * HINT_LEN + i * LAP_END_LEN;
                (u64_at(b, at), u64_at(b, at + 8))
            })
            .collect();
        Ok((losses, hole_hints, lap_ends))
    }
}

/// A seq reservation: no seq above `seq_reserved` has been handed out.
/// Written alone in its own sector, and fsynced before any seq it covers
/// is used, so a power loss can lose an update but never tear one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub(crate) ring_id: u64,
    pub(crate) counter: u64,
    pub(crate) seq_reserved: u64,
}

impl Reservation {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(512);
        b.extend_from_slice(RESERVATION_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&self.ring_id.to_le_bytes());
        b.extend_from_slice(&self.counter.to_le_bytes());
        b.extend_from_slice(&self.seq_reserved.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(b.len(), RESERVATION_LEN);
        b.resize(512, 0);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < RESERVATION_LEN || &b[..8] != RESERVATION_MAGIC || crc32c::crc32c(&b[..36]) != u32_at(b, 36) {
            return None;
        }
        let r = Reservation { ring_id: u64_at(b, 12), counter: u64_at(b, 20), seq_reserved: u64_at(b, 28) };
        // As with a checkpoint, a checksum proves the bytes are as written,
        // not that a ring wrote them: no ring reserves that many seqs.
        (u32_at(b, 8) == FORMAT_VERSION && r.seq_reserved < MAX_POSITION).then_some(r)
    }
}

/// What the two checkpoint slots hold.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    /// The newest valid checkpoint and the slot it is in.
    pub(crate) best: Option<(u64, Checkpoint)>,
    /// Slots found damaged (bad checksum, magic or contents).
    pub(crate) damaged: u8,
    /// A version this build does not read, if a slot had one.
    pub(crate) version: Option<u32>,
}

/// Picks the newest valid slot.
pub(crate) fn pick_checkpoint(slots: [&[u8]; 2]) -> Slots {
    let mut out = Slots::default();
    for (i, s) in slots.into_iter().enumerate() {
        match Checkpoint::decode(s) {
            Ok(c) => {
                if out.best.as_ref().is_none_or(|(_, b)| c.generation > b.generation) {
                    out.best = Some((i as u64, c));
                }
            }
            Err(HeaderError::Version(v)) => out.version = Some(v),
            Err(_) if s.iter().all(|&x| x == 0) => {}
            Err(_) => out.damaged += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_mark_round_trips_and_any_flipped_bit_voids_it() {
        let mark = encode_sync_mark(123_456);
        assert_eq!(decode_sync_mark(&mark), Some(123_456));
        for bit in 0..SYNC_MARK_LEN * 8 {
            let mut m = mark;
            m[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_sync_mark(&m), None, "bit {bit}");
        }
        assert_eq!(decode_sync_mark(&[0; SYNC_MARK_LEN]), None);
        assert_eq!(decode_sync_mark(&mark[..SYNC_MARK_LEN - 1]), None);
    }

    /// More loss ranges or hole hints than a checkpoint ever holds: a slot
    /// the ring did not write (and would overrun if it wrote it back).
    #[test]
    fn a_slot_holding_more_ranges_or_hints_than_allowed_is_damaged() {
        let with = |ranges: usize, hints: u64| {
            let mut c = sample();
            // Seqs 10..=99 overwritten too: room for 49 ranges apart.
            (c.tail_seq, c.settled_seq, c.counts.overwritten) = (100, 99, 97);
            c.losses.ranges = (0..ranges as u64)
                .map(|i| LossRange { first_seq: 3 + 2 * i, last_seq: 3 + 2 * i, count: 1, ..c.losses.ranges[0] })
                .collect();
            c.hole_hints = (0..hints).map(|i| (200 + i, 200 + i, LossCause::Corrupted)).collect();
            Checkpoint::decode(&c.encode())
        };
        assert!(with(crate::ring::config::MAX_LOSS_RANGES, MAX_HOLE_HINTS as u64).is_ok());
        assert!(with(crate::ring::config::MAX_LOSS_RANGES + 1, 1).is_err());
        assert!(with(1, MAX_HOLE_HINTS as u64 + 1).is_err());
    }

    #[test]
    fn a_checksummed_but_inconsistent_slot_is_damaged() {
        let mut c = sample();
        c.settled_seq = 0;
        assert!(Checkpoint::decode(&c.encode()).is_err());
        let mut c = sample();
        c.counts.overwritten += 1;
        assert!(Checkpoint::decode(&c.encode()).is_err());
        let mut c = sample();
        c.hole_hints = vec![(5, 6, LossCause::Corrupted)];
        assert!(Checkpoint::decode(&c.encode()).is_err());
        let mut c = sample();
        c.losses.ranges[0].last_seq = 1 << 33;
        assert!(Checkpoint::decode(&c.encode()).is_err());
        // Seqs or positions no ring reaches (arithmetic on them overflows).
        let mut c = sample();
        c.next_seq = u64::MAX;
        assert!(Checkpoint::decode(&c.encode()).is_err());
        let mut c = sample();
        c.head_pos = MAX_POSITION;
        c.durable_pos = MAX_POSITION;
        c.tail_pos = MAX_POSITION - 1000;
        c.settled_pos = c.tail_pos;
        assert!(Checkpoint::decode(&c.encode()).is_err());
        // Loss ranges that overlap (merging them would count seqs twice).
        let mut c = sample();
        let r = c.losses.ranges[0];
        c.losses.ranges = vec![LossRange { last_seq: 5, count: 3, ..r }, LossRange { first_seq: 5, count: 5, ..r }];
        assert!(Checkpoint::decode(&c.encode()).is_err());
        c.losses.ranges[1].first_seq = 6;
        c.losses.ranges[1].count = 4;
        assert!(Checkpoint::decode(&c.encode()).is_ok());
        // Counters no ring reaches: adding to them overflows (a panic in a
        // debug build at the next rejection or eviction).
        let mut c = sample();
        c.counts.rejected = u64::MAX;
        assert!(Checkpoint::decode(&c.encode()).is_err());
        // More rejections reported than there were.
        let mut c = sample();
        c.counts.rejected_reported = c.counts.rejected + 1;
        assert!(Checkpoint::decode(&c.encode()).is_err());
        c.counts.rejected_reported = c.counts.rejected;
        assert!(Checkpoint::decode(&c.encode()).is_ok());
        let mut c = sample();
        c.counts.overwritten_bytes = u64::MAX - 10;
        assert!(Checkpoint::decode(&c.encode()).is_err());
        let mut c = sample();
        c.losses.ranges[0].bytes = u64::MAX;
        assert!(Checkpoint::decode(&c.encode()).is_err());
        let mut c = sample();
        (c.counts.rejected, c.counts.overwritten_bytes, c.losses.ranges[0].bytes) =
            (MAX_POSITION - 1, MAX_POSITION - 1, MAX_POSITION - 1);
        assert!(Checkpoint::decode(&c.encode()).is_ok());
        assert!(Checkpoint::decode(&sample().encode()).is_ok());
    }

    #[test]
    fn a_checksummed_reservation_of_impossible_seqs_is_damaged() {
        let r = |seq_reserved| Reservation { ring_id: 1, counter: 2, seq_reserved };
        assert_eq!(Reservation::decode(&r(1000).encode()), Some(r(1000)));
        assert_eq!(Reservation::decode(&r(MAX_POSITION).encode()), None);
        assert_eq!(Reservation::decode(&r(u64::MAX).encode()), None);
    }

    fn sample() -> Checkpoint {
        let mut losses = LossList::default();
        losses.add(
            LossRange {
                first_seq: 3,
                last_seq: 9,
                first_ts: 1,
                last_ts: 2,
                count: 7,
                bytes: 700,
                cause: LossCause::Overwritten,
            },
            8,
        );
        // Seqs 1 and 2 acked, 3..=9 overwritten, 10..=299 in the ring.
        Checkpoint {
            ring_id: 42,
            generation: 5,
            capacity: 1 << 20,
            next_seq: 300,
            head_pos: 40_000,
            tail_seq: 10,
            tail_pos: 1_000,
            settled_seq: 9,
            settled_pos: 1_000,
            ack_seq: 2,
            counts: Counts { acked: 2, overwritten: 7, rejected: 5, rejected_reported: 3, ..Counts::default() },
            boot_id: Some([7; 16]),
            clean: true,
            losses,
            hole_hints: vec![(200, 210, LossCause::LostUnsynced)],
            ..Checkpoint::default()
        }
    }

    #[test]
    fn reservation_round_trips_and_rejects_damage() {
        let r = Reservation { ring_id: 3, counter: 9, seq_reserved: 1 << 40 };
        let mut e = r.encode();
        assert_eq!(e.len(), 512);
        assert_eq!(Reservation::decode(&e), Some(r));
        e[30] ^= 4;
        assert_eq!(Reservation::decode(&e), None);
    }

    #[test]
    fn checkpoint_round_trips() {
        let c = sample();
        assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
    }

    /// Each reservation record opens a block of its own: no 4 KiB block
    /// (the unit a bad sector takes with it) holds both, or a checkpoint
    /// slot.
    #[test]
    fn reservation_records_share_no_block() {
        let block = |at: u64| at / 4096;
        let [a, b] = RESERVATION_OFFSETS;
        assert_ne!(block(a), block(b));
        for at in RESERVATION_OFFSETS {
            assert!(at >= 2 * SLOT_LEN as u64 && at + 512 <= META_LEN);
        }
    }

    #[test]
    fn newer_valid_slot_wins_and_damage_is_counted() {
        let a = sample();
        let mut b = sample();
        b.generation = 6;
        let (ea, mut eb) = (a.encode(), b.encode());
        let picked = pick_checkpoint([&ea, &eb]).best.unwrap();
        assert_eq!((picked.0, picked.1.generation), (1, 6));
        eb[50] ^= 1;
        let slots = pick_checkpoint([&ea, &eb]);
        assert_eq!((slots.best.unwrap().1.generation, slots.damaged), (5, 1));
    }

    #[test]
    fn data_header_round_trips_and_rejects_other_versions() {
        let h = DataHeader { ring_id: 9, capacity: 4096 };
        let mut e = h.encode();
        assert_eq!(DataHeader::decode(&e), Ok(h));
        e[8] = 99;
        assert_eq!(DataHeader::decode(&e), Err(HeaderError::Checksum));
        let crc = crc32c::crc32c(&e[..32]);
        e[32..36].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(DataHeader::decode(&e), Err(HeaderError::Version(99)));
        e[0] = b'X';
        assert_eq!(DataHeader::decode(&e), Err(HeaderError::BadMagic));
    }
}
