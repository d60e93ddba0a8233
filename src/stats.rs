//! Counters, loss ranges and recovery reports.

/// Why a range of records was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LossCause {
    /// Evicted by [`FullPolicy::OverwriteOldest`](crate::FullPolicy::OverwriteOldest)
    /// before it was acknowledged.
    Overwritten,
    /// Damaged on disk (checksum mismatch, broken framing).
    Corrupted,
    /// Never reported durable and gone after a power loss (or a failed
    /// fsync, which may drop writes too).
    LostUnsynced,
    /// Two ranges of different causes merged to keep the list bounded.
    Mixed,
    /// Seqs passed over, never given to a record, after an unclean
    /// shutdown: any of them may have been handed out to an append whose
    /// record did not survive (damage at the newest frames, writes the
    /// disk dropped), so none is used again. Its seqs are not records:
    /// they are in `seqs_skipped`, not in `appended`. How many records
    /// were lost among them is not known.
    Skipped,
    /// Refused by the receiver: sent, answered, and not taken (a partial
    /// acceptance, or a record refused alone as too large). The range is
    /// the batch's; its count says how many of its records were refused.
    Refused,
}

impl LossCause {
    /// The cause as receivers see it in gap notices: `overwritten`,
    /// `corrupted`, `lost-unsynced`, `mixed`, `skipped` or `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            LossCause::Overwritten => "overwritten",
            LossCause::Corrupted => "corrupted",
            LossCause::LostUnsynced => "lost-unsynced",
            LossCause::Mixed => "mixed",
            LossCause::Skipped => "skipped",
            LossCause::Refused => "refused",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            LossCause::Overwritten => 1,
            LossCause::Corrupted => 2,
            LossCause::LostUnsynced => 3,
            LossCause::Mixed => 4,
            LossCause::Skipped => 5,
            LossCause::Refused => 6,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => LossCause::Overwritten,
            2 => LossCause::Corrupted,
            3 => LossCause::LostUnsynced,
            4 => LossCause::Mixed,
            5 => LossCause::Skipped,
            6 => LossCause::Refused,
            _ => return None,
        })
    }
}

/// A range of sequence numbers whose records were lost.
///
/// Within `first_seq..=last_seq`, `count` seqs are missing: records lost,
/// or seqs passed over ([`LossCause::Skipped`]). Less than the width of the
/// range only after two ranges were merged to keep the list bounded. Timestamps are nanoseconds since the Unix epoch; for ranges
/// discovered by recovery rather than seen while evicting, they are bounds
/// taken from the nearest surviving records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LossRange {
    /// First lost seq.
    pub first_seq: u64,
    /// Last lost seq.
    pub last_seq: u64,
    /// Timestamp of the first lost record (or a lower bound).
    pub first_ts: u64,
    /// Timestamp of the last lost record (or an upper bound).
    pub last_ts: u64,
    /// Seqs missing in the range (records lost, or seqs skipped).
    pub count: u64,
    /// Ring bytes (frames, headers included) the lost records occupied.
    pub bytes: u64,
    /// Why they were lost.
    pub cause: LossCause,
}

/// The earlier of two timestamp bounds, where 0 is no bound (unknown).
pub(crate) fn min_known_ts(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, t) | (t, 0) => t,
        (a, b) => a.min(b),
    }
}

/// Adds to a byte or record counter that checkpoints store, stopping one
/// below 2^62 (the bound a checkpoint's counters are held to when read
/// back): a hostile checkpoint near the bound can neither overflow the
/// addition nor make the next checkpoint one that no open would accept.
pub(crate) fn bounded_add(a: u64, b: u64) -> u64 {
    a.saturating_add(b).min(crate::ring::frame::MAX_POSITION - 1)
}

/// Extends the newest of `ranges` with `r` when they touch and share a
/// cause; whether it did.
fn extend_newest(ranges: &mut [LossRange], r: &LossRange) -> bool {
    match ranges.last_mut() {
        Some(last) if last.cause == r.cause && last.last_seq + 1 == r.first_seq => {
            last.last_seq = r.last_seq;
            last.last_ts = last.last_ts.max(r.last_ts);
            last.count = last.count.saturating_add(r.count);
            last.bytes = bounded_add(last.bytes, r.bytes);
            true
        }
        _ => false,
    }
}

/// A bounded list of loss ranges, merged as they arrive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LossList {
    pub(crate) ranges: Vec<LossRange>,
}

impl LossList {
    /// Adds a range, merging it into the newest one when they touch and
    /// share a cause; when `max` is exceeded the two oldest ranges merge.
    pub(crate) fn add(&mut self, r: LossRange, max: usize) {
        if extend_newest(&mut self.ranges, &r) {
            return;
        }
        let at = self.ranges.partition_point(|x| x.first_seq < r.first_seq);
        self.ranges.insert(at, r);
        while self.ranges.len() > max.max(1) {
            let b = self.ranges.remove(1);
            let a = &mut self.ranges[0];
            a.last_seq = a.last_seq.max(b.last_seq);
            a.first_ts = min_known_ts(a.first_ts, b.first_ts);
            a.last_ts = a.last_ts.max(b.last_ts);
            a.count = a.count.saturating_add(b.count);
            a.bytes = bounded_add(a.bytes, b.bytes);
            if a.cause != b.cause {
                a.cause = LossCause::Mixed;
            }
        }
    }
}

/// Loss ranges recorded since they were last taken (the shipper's
/// `on_loss`), never clipped, so that their counts add up to exactly what
/// the counters grew by, whatever merging the persisted list does. Bounded:
/// past [`MAX_FEED`] ranges the oldest merges into the next one of the same
/// cause (ranges of few causes reach the feed, so one exists), keeping the
/// counts per cause exact and the time bounds real.
#[derive(Debug, Default)]
pub(crate) struct LossFeed {
    ranges: Vec<LossRange>,
}

/// Ranges a [`LossFeed`] keeps apart at most.
const MAX_FEED: usize = 64;

impl LossFeed {
    pub(crate) fn push(&mut self, r: LossRange) {
        if extend_newest(&mut self.ranges, &r) {
            return;
        }
        self.ranges.push(r);
        if self.ranges.len() > MAX_FEED {
            let n = self.ranges.len();
            let pair =
                (0..n).find_map(|i| (i + 1..n).find(|&j| self.ranges[j].cause == self.ranges[i].cause).map(|j| (i, j)));
            if let Some((i, j)) = pair {
                let a = self.ranges.remove(i);
                let b = &mut self.ranges[j - 1];
                b.first_seq = b.first_seq.min(a.first_seq);
                b.last_seq = b.last_seq.max(a.last_seq);
                b.first_ts = min_known_ts(a.first_ts, b.first_ts);
                b.last_ts = b.last_ts.max(a.last_ts);
                b.count = b.count.saturating_add(a.count);
                b.bytes = bounded_add(a.bytes, b.bytes);
            }
        }
    }

    pub(crate) fn take(&mut self) -> Vec<LossRange> {
        std::mem::take(&mut self.ranges)
    }
}

/// A snapshot of the ring's counters.
///
/// The accounting identity (invariant I2) holds in every snapshot, and
/// after any crash and recovery:
///
/// `appended = acked + pending + overwritten + rejected + corrupted + lost_unsynced + refused`
///
/// All record counters survive restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RingStats {
    /// Records offered to `append` (accepted plus rejected).
    pub appended: u64,
    /// Records acknowledged by `ack`.
    pub acked: u64,
    /// Records in the ring that are not acknowledged yet.
    pub pending: u64,
    /// Records evicted before they were acknowledged.
    pub overwritten: u64,
    /// Ring bytes those evicted records occupied.
    pub overwritten_bytes: u64,
    /// Records refused by `append` (full ring, too large, write error).
    pub rejected: u64,
    /// Of `rejected`, how many a receiver has been told of in a gap notice
    /// the shipper delivered. Kept across restarts, so rejections not yet
    /// reported when the process stops are reported after it starts again.
    /// Not part of the identity.
    pub rejected_reported: u64,
    /// Records the receiver refused: sent and answered, yet not taken (a
    /// partial acceptance such as OTLP's `partial_success`, or a record
    /// refused alone as too large). They are not sent again; their ranges
    /// are in [`Ring::losses`](crate::Ring::losses) with
    /// [`LossCause::Refused`], and the next gap notice counts them.
    pub refused: u64,
    /// Of `refused`, how many a receiver has been told of in a gap notice
    /// the shipper delivered (as `rejected_reported`). Not part of the
    /// identity.
    pub refused_reported: u64,
    /// Records found damaged and never delivered.
    pub corrupted: u64,
    /// Records lost to a power loss (or a failed fsync) before they were
    /// reported durable.
    pub lost_unsynced: u64,
    /// Seqs passed over after an unclean shutdown because they may have
    /// been handed out ([`LossCause::Skipped`]). They are not records, so
    /// they are not in `appended` or the identity: `last_seq` counts them,
    /// `appended` does not.
    pub seqs_skipped: u64,
    /// The last seq assigned (0 before the first record).
    pub last_seq: u64,
    /// Every record up to this seq is on stable storage.
    pub durable_seq: u64,
    /// The delivery cursor: every record up to this seq is acknowledged or lost.
    pub ack_seq: u64,
    /// Ring bytes in use by records still in the ring, acked or not.
    pub used_bytes: u64,
    /// Size of the ring's data area in bytes.
    pub capacity: u64,
    /// Bytes of the ring's files that reads could not get since this open
    /// (`EIO` twice: a bad sector; counted each time they are read), taken
    /// as damage: the records there are counted in `corrupted`. Not part
    /// of the identity, and, unlike the counters above, not kept across
    /// restarts. Anything but 0 means a failing disk.
    pub unreadable_bytes: u64,
}

impl RingStats {
    /// The right-hand side of the accounting identity.
    pub fn accounted(&self) -> u64 {
        self.acked
            + self.pending
            + self.overwritten
            + self.rejected
            + self.corrupted
            + self.lost_unsynced
            + self.refused
    }

    /// Whether `appended` equals the sum of where every record went.
    pub fn identity_holds(&self) -> bool {
        self.appended == self.accounted()
    }
}

/// What [`Ring::open`](crate::Ring::open) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// The ring was created by this open.
    pub created: bool,
    /// The previous owner closed the ring cleanly.
    pub clean_shutdown: bool,
    /// Intact records found in the ring (acked or not).
    pub records_recovered: u64,
    /// Of those, records not yet acknowledged.
    pub pending: u64,
    /// Bytes of a torn (partially written) frame at the head, dropped.
    pub torn_bytes_truncated: u64,
    /// Records recovery found damaged and skipped. Recovery does not read
    /// every frame (after a clean close it reads none): damage it did not
    /// read is found, counted as corrupted and skipped by the reader.
    pub damaged_records: u64,
    /// Records discovered as overwritten from sequence gaps since the last checkpoint.
    pub overwritten_discovered: u64,
    /// Records discovered lost to a power loss (or a failed fsync) before
    /// they were synced.
    pub lost_unsynced_discovered: u64,
    /// Seqs passed over so that none that may have been handed out is
    /// used again ([`LossCause::Skipped`]): after every unclean shutdown,
    /// those above the newest surviving record up to the seq reservation.
    pub seqs_skipped: u64,
    /// Bytes of the ring's files that recovery could not read (a bad
    /// sector), taken as damage.
    pub unreadable_bytes: u64,
    /// Checkpoint slots found damaged: a bad checksum, magic or contents
    /// (0, 1 or 2).
    pub damaged_checkpoint_slots: u8,
    /// The capacity on disk differs from the one configured; the one on
    /// disk is used.
    pub capacity_mismatch: bool,
    /// The data file was shorter than its capacity (it had this many
    /// bytes) and was extended; records in the missing part are counted as
    /// damaged.
    pub data_file_extended_from: Option<u64>,
    /// Loss ranges discovered by this recovery.
    pub losses_discovered: Vec<LossRange>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u64, last: u64, cause: LossCause) -> LossRange {
        LossRange {
            first_seq: first,
            last_seq: last,
            first_ts: first,
            last_ts: last,
            count: last - first + 1,
            bytes: 10 * (last - first + 1),
            cause,
        }
    }

    #[test]
    fn adjacent_ranges_of_one_cause_merge() {
        let mut l = LossList::default();
        l.add(r(1, 3, LossCause::Overwritten), 4);
        l.add(r(4, 9, LossCause::Overwritten), 4);
        assert_eq!(l.ranges, vec![r(1, 9, LossCause::Overwritten)]);
        l.add(r(10, 10, LossCause::Corrupted), 4);
        assert_eq!(l.ranges.len(), 2);
    }

    #[test]
    fn list_stays_bounded_and_keeps_the_count() {
        let mut l = LossList::default();
        for i in 0..10 {
            l.add(r(i * 10, i * 10 + 1, LossCause::Overwritten), 3);
        }
        assert_eq!(l.ranges.len(), 3);
        assert_eq!(l.ranges.iter().map(|x| x.count).sum::<u64>(), 20);
        assert_eq!(l.ranges[0].first_seq, 0);
        assert_eq!(l.ranges[2].last_seq, 91);
    }

    /// Byte totals stop below 2^62 instead of overflowing (a panic in a
    /// debug build) or passing the bound checkpoints are read back with:
    /// checkpoints bound each range's bytes below 2^62, and merges add
    /// them up.
    #[test]
    fn merged_byte_totals_saturate() {
        let mut l = LossList::default();
        for i in 0..6 {
            l.add(LossRange { bytes: (1 << 62) - 1, ..r(i * 10, i * 10 + 1, LossCause::Overwritten) }, 1);
            l.add(LossRange { bytes: (1 << 62) - 1, ..r(i * 10 + 2, i * 10 + 3, LossCause::Overwritten) }, 1);
        }
        assert_eq!(l.ranges.len(), 1);
        assert_eq!((l.ranges[0].bytes, l.ranges[0].count), ((1 << 62) - 1, 24));
    }
}
