//! Delivery bookkeeping: what a shipper reads from the cursor (records,
//! and the gap notice naming what went missing before them and the
//! rejections not yet reported), and the ack that records both the new
//! cursor and the rejections the receiver was told of, in one checkpoint.

use super::Ring;
use crate::Result;
use crate::stats::{LossCause, min_known_ts};
use crate::transport::{Batch, BatchRecord, GapNotice};

/// A batch read for delivery.
pub(crate) struct Delivery {
    /// The records from the cursor, and the gap notice before them;
    /// `None` when nothing is pending.
    pub(crate) batch: Option<Batch>,
    /// The rejected and refused counts the notice reports up to: pass them
    /// to [`Ring::ack_delivery`] once the batch is delivered.
    pub(crate) rejected: u64,
    pub(crate) refused: u64,
    /// The ring's overwritten count and last seq just before the read.
    pub(crate) overwritten: u64,
    pub(crate) last_seq: u64,
}

impl Ring {
    /// Reads the next batch for delivery from `from_seq`, at most `limits`
    /// records and bytes, taking `ring.state` twice (with the read's window
    /// and after its walk; once more when a gap needs its loss ranges).
    ///
    /// Seqs acked since the cursor was set (the late success of an
    /// abandoned worker's send) were delivered: the read starts past them,
    /// and the batch past the ack as it stands once the read returns, as an
    /// ack made while it ran delivered what it covers too (and let the
    /// writer evict those records: no gap). A read whose every record was
    /// acked meanwhile reads on: reported empty, it would end a drain with
    /// records still pending.
    pub(crate) fn read_delivery(&self, from_seq: u64, limits: (usize, usize)) -> Result<Delivery> {
        let mut from = from_seq;
        loop {
            let (rb, m) = self.inner.read_marked(from, limits.0.max(1), limits.1, true)?;
            // An ack, or rejections reported, since the read began (an
            // abandoned send's late success) are not repeated.
            let start = m.from_seq.max(m.ack_after + 1);
            let unreported = m.rejected.saturating_sub(m.reported_after);
            let unreported_refused = m.refused.saturating_sub(m.refused_reported_after);
            let read_any = !rb.records.is_empty();
            // A refused batch's undelivered notice: the next one starts
            // where it did.
            let notice_start = m.notice_from.map_or(start, |n| n.min(start));
            match self.build_batch(rb.records, start, notice_start, unreported, unreported_refused) {
                None if read_any => from = start,
                batch => {
                    let (rejected, refused, overwritten, last_seq) = (m.rejected, m.refused, m.overwritten, m.last_seq);
                    return Ok(Delivery { batch, rejected, refused, overwritten, last_seq });
                }
            }
        }
    }

    /// Turns records read from `cursor` into a batch, with a gap notice
    /// when seqs between the cursor (or an earlier `notice_start`) and the
    /// first record are missing, or `rejected` rejections or `refused`
    /// refusals are still to be reported.
    ///
    /// The batch ends before the first seq missing after its first record:
    /// the records after such a gap are read again, in the next batch,
    /// which opens with the notice for it. Each notice thus covers every
    /// seq missing before its batch, and no seq goes missing inside a batch.
    fn build_batch(
        &self,
        records: Vec<super::Record>,
        cursor: u64,
        notice_start: u64,
        rejected: u64,
        refused: u64,
    ) -> Option<Batch> {
        // Records below the cursor were read before an ack passed them.
        let mut read = records.into_iter().skip_while(|r| r.seq < cursor).peekable();
        let first = read.peek()?.seq;
        let records: Vec<BatchRecord> = read
            .zip(first..)
            .take_while(|(r, expected)| r.seq == *expected)
            .map(|(r, _)| BatchRecord { seq: r.seq, timestamp: r.timestamp, payload: r.payload })
            .collect();
        let mut gap = None;
        let cursor = notice_start.min(cursor);
        if first > cursor || rejected > 0 || refused > 0 {
            let mut notice = GapNotice {
                first_seq: 0,
                last_seq: 0,
                first_ts: 0,
                last_ts: 0,
                cause: LossCause::Overwritten,
                rejected,
                refused,
            };
            if first > cursor {
                notice.first_seq = cursor;
                notice.last_seq = first - 1;
                let overlapping: Vec<_> =
                    self.losses().into_iter().filter(|l| l.last_seq >= cursor && l.first_seq < first).collect();
                notice.first_ts = overlapping.iter().map(|l| l.first_ts).fold(0, min_known_ts);
                notice.last_ts = overlapping.iter().map(|l| l.last_ts).max().unwrap_or(0);
                if let Some(c) = overlapping.first().map(|l| l.cause) {
                    notice.cause = if overlapping.iter().all(|l| l.cause == c) { c } else { LossCause::Mixed };
                }
            }
            gap = Some(notice);
        }
        Some(Batch { ring_id: self.id(), records, gap })
    }
}

#[cfg(test)]
mod tests {
    use crate::ring::Delivered;
    use crate::sim::{Faults, SimDisk};
    use crate::{LossCause, Ring, RingConfig, SyncPolicy};

    fn open(disk: &SimDisk) -> Ring {
        let config = RingConfig::default().capacity(64 << 10).max_record_len(1024).sync(SyncPolicy::Never);
        Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config).unwrap().0
    }

    /// The rejections an ack notes as reported are only ever ones the ring
    /// counted, never fewer than noted before, and kept by the ack's
    /// checkpoint through a crash; each batch's notice carries the ones
    /// still unreported.
    #[test]
    fn rejections_reported_with_an_ack_are_bounded_and_kept() {
        let disk = SimDisk::new(7, Faults::NONE);
        let ring = open(&disk);
        for _ in 0..3 {
            assert!(ring.append(&[0; 2000]).is_err());
        }
        let seq = ring.append(b"one").unwrap();
        let d = ring.read_delivery(1, (10, 1 << 20)).unwrap();
        assert_eq!(d.rejected, 3);
        assert_eq!(d.batch.unwrap().gap.map(|g| g.rejected), Some(3));
        ring.ack_delivery(seq, seq, Delivered { rejected: Some(2), ..Delivered::default() }).unwrap();
        assert_eq!(ring.stats().rejected_reported, 2);
        ring.ack_delivery(seq, seq, Delivered { rejected: Some(1), ..Delivered::default() }).unwrap();
        assert_eq!(ring.stats().rejected_reported, 2, "a maximum");
        let seq = ring.append(b"two").unwrap();
        let d = ring.read_delivery(seq, (10, 1 << 20)).unwrap();
        assert_eq!(d.batch.unwrap().gap.map(|g| g.rejected), Some(1), "the one still unreported");
        ring.ack_delivery(seq, seq, Delivered { rejected: Some(9), ..Delivered::default() }).unwrap();
        assert_eq!(ring.stats().rejected_reported, 3, "never above what the ring counted");
        drop(ring);
        disk.process_crash();
        let ring = open(&disk);
        let s = ring.stats();
        assert_eq!((s.rejected, s.rejected_reported, s.acked), (3, 3, 2));
        assert!(s.identity_holds(), "{s:?}");
        let seq = ring.append(b"three").unwrap();
        assert!(ring.read_delivery(seq, (10, 1 << 20)).unwrap().batch.unwrap().gap.is_none());
    }

    /// Records a receiver took but refused are settled as refused, not
    /// acked, with a loss range over their batch; the next batch's notice
    /// counts them; all of it survives a crash, and the identity holds.
    #[test]
    fn records_refused_by_the_receiver_are_counted_ranged_and_announced() {
        let disk = SimDisk::new(8, Faults::NONE);
        let ring = open(&disk);
        for i in 0..10u8 {
            ring.append(&[i; 16]).unwrap();
        }
        let d = ring.read_delivery(1, (10, 1 << 20)).unwrap();
        let b = d.batch.unwrap();
        assert!(b.gap.is_none());
        let ts = (b.records[0].timestamp, b.records[9].timestamp);
        // The receiver took the batch and refused 3 of its records; a
        // claim past the batch counts no more than the batch.
        ring.ack_delivery(10, 1, Delivered { refused: 3, refused_ts: ts, ..Delivered::default() }).unwrap();
        let s = ring.stats();
        assert_eq!((s.acked, s.refused, s.refused_reported, s.pending), (7, 3, 0, 0));
        assert!(s.identity_holds(), "{s:?}");
        let loss = ring.losses().into_iter().find(|l| l.cause == LossCause::Refused).unwrap();
        assert_eq!((loss.first_seq, loss.last_seq, loss.count, loss.first_ts, loss.last_ts), (1, 10, 3, ts.0, ts.1));
        ring.append(b"next").unwrap();
        let d = ring.read_delivery(11, (10, 1 << 20)).unwrap();
        assert_eq!(d.refused, 3);
        let gap = d.batch.unwrap().gap.expect("a notice for the refusals");
        assert_eq!((gap.refused, gap.missing(), gap.rejected), (3, 0, 0));
        ring.ack_delivery(11, 11, Delivered { refused_reported: Some(3), refused: 99, ..Delivered::default() })
            .unwrap();
        let s = ring.stats();
        assert_eq!((s.acked, s.refused, s.refused_reported), (7, 4, 3), "at most the batch's one record");
        drop(ring);
        disk.process_crash();
        let ring = open(&disk);
        let s = ring.stats();
        assert_eq!((s.acked, s.refused, s.refused_reported), (7, 4, 3));
        assert!(s.identity_holds(), "{s:?}");
        assert_eq!(ring.losses().iter().filter(|l| l.cause == LossCause::Refused).map(|l| l.count).sum::<u64>(), 4);
    }

    /// A batch whose notice was not delivered (refused whole) has the
    /// next notice start where it did; a late ack (an abandoned worker's,
    /// of seqs already settled) neither clears nor sets that; a delivered
    /// notice from there on clears it; and it survives a crash.
    #[test]
    fn an_undelivered_notice_is_named_again_and_a_late_ack_does_not_lose_it() {
        let disk = SimDisk::new(9, Faults::NONE);
        let ring = open(&disk);
        for i in 1..=5u8 {
            ring.append(&[i; 8]).unwrap();
        }
        ring.ack_delivery(3, 1, Delivered::default()).unwrap();
        // Seq 4 went missing (say), and 5, refused alone, took the notice
        // for 4 with it.
        let refused = Delivered { refused: 1, undelivered_from: Some(4), ..Delivered::default() };
        ring.ack_delivery(5, 5, refused).unwrap();
        assert_eq!((ring.stats().refused, ring.stats().refused_reported), (1, 1), "named by the range");
        // A late success of an abandoned send of 1..3 with a notice.
        let late = Delivered { rejected: Some(0), notice_first: Some(1), ..Delivered::default() };
        ring.ack_delivery(3, 1, late).unwrap();
        drop(ring);
        disk.process_crash();
        let ring = open(&disk);
        // (The crash skipped the seqs reserved past 5: the notice names
        // them too.)
        let six = ring.append(b"six").unwrap();
        let gap = ring.read_delivery(6, (10, 1 << 20)).unwrap().batch.unwrap().gap.expect("a notice");
        assert_eq!((gap.first_seq, gap.last_seq, gap.refused), (4, six - 1, 0));
        let delivered = Delivered { rejected: Some(0), notice_first: Some(4), ..Delivered::default() };
        ring.ack_delivery(six, six, delivered).unwrap();
        let seven = ring.append(b"seven").unwrap();
        assert!(ring.read_delivery(seven, (10, 1 << 20)).unwrap().batch.unwrap().gap.is_none());
    }
}
