//! The bounded durable ring.

mod append;
mod background;
mod checkpoint;
mod commit;
pub(crate) mod config;
mod delivery;
mod evict;
pub(crate) mod frame;
mod geometry;
pub(crate) mod meta;
mod open;
mod read;
pub(crate) mod recovery;
mod reserve;
pub(crate) mod scan;
pub(crate) mod state;
pub(crate) mod storage;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use self::background::Background;
use self::background::spawn_background;
use self::checkpoint::Checkpoints;
use self::commit::GroupCommit;
use self::geometry::Geometry;
use self::reserve::SeqReservation;
use self::state::RingState;
use crate::ring::storage::Storage;
use crate::stats::{LossRange, RecoveryReport, RingStats};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Condvar, JoinHandle, LEVEL_RING_BACKGROUND, Mutex};
use crate::{Error, Result, RingConfig, SyncPolicy};

pub use read::{ReadBatch, Record};

/// What the ack of a delivered batch says besides its seq
/// ([`Ring::ack_delivery`]).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Delivered {
    /// The rejected count its gap notice reported up to.
    pub(crate) rejected: Option<u64>,
    /// The refused count its gap notice reported up to.
    pub(crate) refused_reported: Option<u64>,
    /// How many of its records the receiver refused...
    pub(crate) refused: u64,
    /// ... and the first and last timestamps of its records.
    pub(crate) refused_ts: (u64, u64),
    /// The batch's gap notice was not delivered (the batch was refused
    /// whole, or the receiver may have refused the notice itself): the
    /// next notice starts at this seq, where it did (or at the batch's
    /// first record), so that it names those seqs. Refusals counted by
    /// such an ack are named by that range, and count as reported.
    pub(crate) undelivered_from: Option<u64>,
    /// The first seq the batch's delivered gap notice named, if it named
    /// a range: it covered everything an earlier undelivered notice did
    /// from there.
    pub(crate) notice_first: Option<u64>,
}

/// The ring behind a [`Ring`] handle: its files, its state, and the parts
/// that own the rest (each in its own file, with its lock level in
/// docs/LOCKS.md).
pub(crate) struct RingCore {
    dir: PathBuf,
    data_path: PathBuf,
    meta_path: PathBuf,
    data: Box<dyn Storage>,
    meta: Box<dyn Storage>,
    geometry: Geometry,
    config: RingConfig,
    ring_id: u64,
    boot_id: Option<[u8; 16]>,
    /// Level 20: seqs, head, tail, cursor, counters, holes; held across a
    /// record write, never an fsync.
    state: Mutex<RingState>,
    /// Signalled when acks free room (for `FullPolicy::Block`).
    room: Condvar,
    /// Signalled when an append's frames are published or its write fails
    /// (for threads waiting on `RingState::in_flight`).
    flights: Condvar,
    checkpoints: Checkpoints,
    reservation: SeqReservation,
    commit: GroupCommit,
    background: Background,
    /// Where readers' asking for the bytes ahead of them stopped (a
    /// data-area offset; `scan::ReadAhead`). Concurrent readers may ask
    /// for a range twice or skip one: it is a hint only.
    read_ahead: AtomicU64,
    /// Set with `RingState::poisoned`, readable without the state lock.
    poisoned: AtomicBool,
    /// Bytes reads could not get from the files since open (counted each
    /// time): see [`RingStats::unreadable_bytes`].
    unreadable_bytes: AtomicU64,
    lock_file: Mutex<Option<File>>,
}

/// A bounded, crash-safe ring of records on local disk.
///
/// **When full**, the ring follows its [`FullPolicy`](crate::FullPolicy): by default it evicts
/// the oldest records, as few as the new record needs, and counts every
/// unacknowledged one it evicts as overwritten, with its seq range, time
/// span and size ([`Ring::losses`]). Nothing leaves the ring uncounted.
///
/// Records get consecutive sequence numbers starting at 1, across restarts
/// (I1). [`Ring::read`] returns records from a seq on; [`Ring::ack`]
/// advances the persisted delivery cursor. [`Ring::stats`] exposes every
/// counter of the accounting identity (I2).
///
/// All methods take `&self`; share the ring between threads with an `Arc`.
/// Dropping the ring syncs nothing (call [`Ring::close`] to sync and record
/// a clean shutdown); it waits only for a flush its background thread has
/// already started, so that nothing of the ring writes to its files once
/// the drop has returned and the directory can be opened again at once.
pub struct Ring {
    inner: Arc<RingCore>,
    /// The background thread: renews the seq reservation ahead of the
    /// appenders and, under `SyncPolicy::Interval`, flushes.
    background_thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

pub(crate) fn now_nanos() -> u64 {
    // The clock directly: `SystemTime::now().duration_since(UNIX_EPOCH)`
    // costs more, on a path that runs once per append (BENCHMARKS.md).
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    let (secs, nanos) = (u64::try_from(t.tv_sec).unwrap_or(0), u64::try_from(t.tv_nsec).unwrap_or(0));
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

impl Ring {
    /// Opens the ring in `dir`, creating the directory and the ring if
    /// needed, and recovers it after a crash.
    ///
    /// # Errors
    /// [`Error::Locked`] if another process or handle has the directory
    /// open; [`Error::NotARing`] or [`Error::UnsupportedVersion`] if the
    /// directory holds something else; [`Error::Config`] for a bad
    /// configuration; [`Error::Io`] (naming the file) for OS errors, such as
    /// a read-only directory or a full disk at creation.
    pub fn open(dir: impl AsRef<Path>, config: RingConfig) -> Result<(Ring, RecoveryReport)> {
        let (inner, report) = open::open(dir.as_ref(), config)?;
        Ok(Self::start(inner, report))
    }

    /// Opens a ring on two storages instead of a directory: no lock file,
    /// no directory. Empty storages get a new ring. This is how tests run
    /// the ring on a [`SimDisk`](crate::sim::SimDisk).
    ///
    /// # Errors
    /// As [`Ring::open`], but for the directory errors.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub fn open_on(
        data: Box<dyn Storage>,
        meta: Box<dyn Storage>,
        config: RingConfig,
    ) -> Result<(Ring, RecoveryReport)> {
        let (inner, report) = open::open_on(data, meta, config)?;
        Ok(Self::start(inner, report))
    }

    fn start(inner: RingCore, report: RecoveryReport) -> (Ring, RecoveryReport) {
        let inner = Arc::new(inner);
        let every = match inner.config.sync {
            SyncPolicy::Interval(every) => Some(every),
            _ => None,
        };
        let background = spawn_background(Arc::downgrade(&inner), Arc::clone(&inner.background.wake), every);
        (
            Ring { inner, background_thread: Mutex::new(LEVEL_RING_BACKGROUND, "ring.background", Some(background)) },
            report,
        )
    }

    /// The ring's id: random, chosen when the ring was created, and the
    /// same for its whole life, across restarts and crashes. With a seq it
    /// names a record uniquely among every ring's, so receivers taking
    /// records from many senders de-duplicate by (ring id, seq); every
    /// transport sends it with every batch ([`Batch::ring_id`](crate::Batch::ring_id)).
    pub fn id(&self) -> u64 {
        self.inner.ring_id
    }

    /// The ring's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The largest payload [`append`](Ring::append) accepts: the configured
    /// limit, lowered to what the ring's capacity on disk holds.
    pub fn max_record_len(&self) -> usize {
        self.inner.geometry.max_len
    }

    /// Appends one record and returns its seq.
    ///
    /// Under [`SyncPolicy::Always`] it returns once the record is durable;
    /// otherwise once the record is in the operating system's page cache
    /// (it survives a crash of the process, not a power loss). It waits for
    /// an fsync only under `Always`, and for room only under
    /// [`FullPolicy::Block`](crate::FullPolicy::Block); the front-ends
    /// (`RingLayer`, `RingLogger`, the OpenTelemetry processors) never
    /// wait for either (docs/FRONTENDS.md).
    ///
    /// # Errors
    /// [`Error::RecordTooLarge`], [`Error::Full`], [`Error::BlockTimeout`]
    /// (each counted as rejected), [`Error::Poisoned`] after a failed fsync,
    /// [`Error::Closed`], or [`Error::Io`]. An `Io` error that leaves the
    /// ring unpoisoned refused the record before any of it reached the disk,
    /// and counts it as rejected too; one that poisons the ring leaves
    /// counting it to the next open's recovery.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        self.append_batch(&[payload]).map(|(first, _)| first)
    }

    /// Appends many records in one write and returns the first and last
    /// seq. All or nothing: on error no record of the batch was written.
    ///
    /// # Errors
    /// As [`Ring::append`]. A batch whose frames (each record's payload
    /// plus 32 bytes, rounded up to 8) and its largest frame once more
    /// exceed the capacity is [`Error::BatchTooLarge`] wherever the head
    /// is: wrapping at the end of the data area may leave up to that many
    /// bytes unused.
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(u64, u64)> {
        let inner = &*self.inner;
        let n = payloads.len() as u64;
        if n == 0 {
            let st = inner.state.lock();
            return Ok((st.next_seq, st.next_seq - 1));
        }
        let (first, last) = inner.append_batch(payloads)?;
        if inner.config.sync == SyncPolicy::Always {
            // An fsync covers what is published: the appends before this
            // one that are still writing first.
            inner.wait_written(last);
            inner.wait_durable(last)?;
        }
        Ok((first, last))
    }

    /// A front-end's append: as [`append`](Self::append), but it never
    /// waits for an fsync or for acknowledgements. Under
    /// [`SyncPolicy::Always`] it returns once the record is written and has
    /// the background thread fsync it (one fsync covers every front-end
    /// append since the last); under [`FullPolicy::Block`] a full ring
    /// refuses the record at once, as under `RejectNew`, and counts it as
    /// rejected. It may still wait for another append's write into the
    /// page cache, and for a seq reservation's fsync when appends outrun
    /// the background thread by half a reservation block.
    #[cfg_attr(not(any(feature = "tracing", feature = "log", feature = "opentelemetry")), allow(dead_code))]
    pub(crate) fn append_nowait(&self, payload: &[u8]) -> Result<u64> {
        let inner = &*self.inner;
        let payloads = [payload];
        let (first, _) = loop {
            if let Some(placed) = inner.try_append_batch(&payloads, None)? {
                break placed;
            }
        };
        if inner.config.sync == SyncPolicy::Always {
            inner.background.sync_upto.fetch_max(first, Ordering::AcqRel);
            inner.background.wake.notify();
        }
        Ok(first)
    }

    /// Has the background thread make every record appended so far durable,
    /// without waiting for it (a front-end's `flush`).
    #[cfg_attr(not(any(feature = "tracing", feature = "log")), allow(dead_code))]
    pub(crate) fn sync_soon(&self) {
        let inner = &*self.inner;
        let last = inner.state.lock().reserved().1 - 1;
        if last > 0 {
            inner.background.sync_upto.fetch_max(last, Ordering::AcqRel);
            inner.background.wake.notify();
        }
    }

    /// Whether a failed fsync or write poisoned the ring.
    #[cfg_attr(not(any(feature = "tracing", feature = "log", feature = "opentelemetry")), allow(dead_code))]
    pub(crate) fn poisoned(&self) -> bool {
        self.inner.poisoned.load(Ordering::Acquire)
    }

    /// Reads up to `max_records` records (and about `max_bytes` payload
    /// bytes, at least one record) with seq `from_seq` or above, oldest
    /// first. Records that were lost are skipped: compare seqs with
    /// [`ReadBatch::next_seq`] and [`Ring::losses`] to see which.
    ///
    /// # Errors
    /// [`Error::Config`] if `max_records` is 0; [`Error::Closed`] or
    /// [`Error::Io`].
    pub fn read(&self, from_seq: u64, max_records: usize, max_bytes: usize) -> Result<ReadBatch> {
        if max_records == 0 {
            return Err(Error::Config("a read of 0 records: max_records must be at least 1".into()));
        }
        self.inner.read(from_seq, max_records, max_bytes)
    }

    /// Acknowledges every record up to and including `seq` and persists the
    /// delivery cursor. Acknowledged records may be evicted without loss.
    /// Acknowledging a seq at or below the cursor does nothing.
    ///
    /// # Errors
    /// [`Error::AckBeyondHead`] for a seq never assigned, [`Error::Closed`],
    /// or [`Error::Io`] if the checkpoint could not be written.
    pub fn ack(&self, seq: u64) -> Result<()> {
        self.ack_delivery(seq, seq.saturating_add(1), Delivered::default()).map(|_| ())
    }

    /// Acks through `seq` the delivery of the records from `first` on, in
    /// one checkpoint with what `delivered` says: the receiver was told of
    /// the ring's first `rejected` rejections and `refused_reported`
    /// refusals (the counts [`read_delivery`](Self::read_delivery) gave a
    /// batch whose gap notice was delivered; maxima, not sums: the same
    /// notice can be delivered twice, by an abandoned send's late success
    /// after its replacement's), and it refused `refused` of the batch's
    /// records (counted refused, with a loss range, instead of acked).
    /// Returns how many of the records the ring evicted meanwhile (counted
    /// overwritten, yet the receiver has them).
    pub(crate) fn ack_delivery(&self, seq: u64, first: u64, delivered: Delivered) -> Result<u64> {
        let Delivered { rejected, refused_reported, refused, refused_ts, undelivered_from, notice_first } = delivered;
        let inner = &*self.inner;
        let evicted;
        let unplaced = {
            let mut st = inner.state.lock();
            if st.closed {
                return Err(Error::Closed);
            }
            let last = st.next_seq - 1;
            if seq > last {
                return Err(Error::AckBeyondHead { seq, last });
            }
            // Only ever a count the ring gave out.
            let reported = rejected
                .map_or(st.counts.rejected_reported, |r| r.min(st.counts.rejected).max(st.counts.rejected_reported));
            let refusals_reported = refused_reported
                .map_or(st.counts.refused_reported, |r| r.min(st.counts.refused).max(st.counts.refused_reported));
            let newly_reported =
                reported > st.counts.rejected_reported || refusals_reported > st.counts.refused_reported;
            st.counts.rejected_reported = reported;
            st.counts.refused_reported = refusals_reported;
            if seq <= st.ack_seq {
                // A late ack (an abandoned worker's) of seqs a later one
                // settled: it moves no notice start either way.
                drop(st);
                return if newly_reported { inner.write_checkpoint(false).map(|_| 0) } else { Ok(0) };
            }
            let notice_from = st.counts.notice_from;
            match (undelivered_from, notice_first) {
                (Some(from), _) if notice_from == 0 || from < notice_from => st.counts.notice_from = from,
                // A delivered notice from there on named every seq the
                // undelivered one did.
                (None, Some(first)) if notice_from > 0 && first <= notice_from => st.counts.notice_from = 0,
                _ => {}
            }
            // Seqs below the oldest record still in the ring and above the
            // cursor were evicted unacknowledged: counted overwritten.
            evicted = st.tail_seq.min(seq.saturating_add(1)).saturating_sub(first.max(st.ack_seq + 1));
            let from = st.settled() + 1;
            let present = st.present_in(from, seq);
            // Refused records of the batch are settled as refused, not
            // acked: at most as many as it has in the acked range.
            let lo = from.max(first);
            let refused = refused.min(st.present_in(lo, seq));
            st.counts.acked += present - refused;
            if refused > 0 {
                st.counts.refused += refused;
                if undelivered_from.is_some() {
                    // The next notice's range names them: counted there,
                    // they would be counted twice.
                    st.counts.refused_reported += refused;
                }
                st.record_loss(LossRange {
                    first_seq: lo,
                    last_seq: seq,
                    first_ts: refused_ts.0,
                    last_ts: refused_ts.1,
                    count: refused,
                    bytes: 0,
                    cause: crate::LossCause::Refused,
                });
            }
            st.ack_seq = seq;
            st.ack_pos = st.hints.get(&(seq + 1)).copied();
            st.settle();
            st.debug_check("ack");
            st.ack_pos.is_none() && seq >= st.tail_seq && seq + 1 < st.next_seq && st.hole_at(seq + 1).is_none()
        };
        inner.room.notify_all();
        if unplaced {
            // No read ended at `seq`: find the next record's frame, so the
            // checkpoint can name it and a reopen need not read the ring
            // to find it. An I/O error here is left for the next read to
            // report: the ack itself is done.
            if let Ok(Some(pos)) = inner.locate(seq + 1) {
                let mut st = inner.state.lock();
                if st.ack_seq == seq && st.ack_pos.is_none() && pos >= st.tail_pos {
                    st.ack_pos = Some(pos);
                    st.note_hint(seq + 1, pos);
                }
            }
        }
        inner.write_checkpoint(false).map(|_| evicted)
    }

    /// Makes every record appended so far durable with one fsync of the
    /// data file, and returns the durable seq. The claim travels in that
    /// fsync (a sync mark, docs/FORMAT.md), so a record reported durable is
    /// never counted lost unsynced. The checkpoint (delivery cursor,
    /// counters) is written too and reaches the disk with the kernel's
    /// write-back, the next seq reservation or [`close`](Self::close):
    /// after a power loss, records acknowledged since may be read again
    /// (delivery is at-least-once).
    ///
    /// # Errors
    /// [`Error::Io`] if the fsync fails, which poisons the ring, or if
    /// writing the sync mark or the checkpoint fails; [`Error::Poisoned`] if
    /// an earlier fsync failed; [`Error::Closed`].
    pub fn sync(&self) -> Result<u64> {
        self.inner.sync_all(false)
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> RingStats {
        let durable = self.inner.commit.durable_seq.load(Ordering::Acquire);
        let mut stats = self.inner.state.lock().stats(durable);
        stats.unreadable_bytes = self.inner.unreadable_bytes.load(Ordering::Relaxed);
        stats
    }

    /// The lost ranges, oldest first: a bounded list (ranges merge when it
    /// is full), persisted across restarts.
    pub fn losses(&self) -> Vec<LossRange> {
        self.inner.state.lock().losses()
    }

    /// Starts a feed of the losses recorded from now on (the shipper's
    /// `on_loss`).
    pub(crate) fn watch_losses(&self) {
        self.inner.state.lock().feed.get_or_insert_with(Default::default);
    }

    /// Has every append from now on wake `reader` (replacing the one set
    /// before).
    pub(crate) fn wake_on_append(&self, reader: Arc<crate::sync::Signal>) {
        self.inner.state.lock().reader = Some(reader);
    }

    /// The losses recorded since the last call (none when not watched).
    pub(crate) fn take_new_losses(&self) -> Vec<LossRange> {
        self.inner.state.lock().feed.as_mut().map(crate::stats::LossFeed::take).unwrap_or_default()
    }

    /// Syncs, records a clean shutdown, stops the background thread and
    /// releases the directory. Later appends, reads, acks and syncs on this
    /// handle fail with [`Error::Closed`]; `stats`, `losses` and another
    /// `close` still answer.
    ///
    /// # Errors
    /// The sync or checkpoint error, if any; the directory is released
    /// either way.
    pub fn close(&self) -> Result<()> {
        // Stop the background thread first: a renewal it is writing ends
        // before the final reservation below, which must be the last.
        self.inner.background.wake.close();
        // Joined with no lock held (LOCKS.md).
        let handle = self.background_thread.lock().take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        // Refuse appends first, so the final fsync covers every record the
        // clean checkpoint will describe: an append checks the flag when it
        // reserves its span, so each either reserved before this (and the
        // sync below waits for its write, then covers it) or fails with
        // `Error::Closed`.
        let was_closed = std::mem::replace(&mut self.inner.state.lock().closed, true);
        self.inner.room.notify_all();
        if was_closed {
            // Another close is (or was) writing the last checkpoint; it
            // releases the directory lock when done.
            return Ok(());
        }
        let result = self.inner.sync_all(true).map(|_| ());
        // Nothing more goes to a slot, even when the clean checkpoint was
        // not written (a failed fsync): once the lock is released, the
        // files may be the next owner's. An ack or eviction writing one
        // holds `meta_io`, so it has finished when this takes it.
        self.inner.checkpoints.slots.lock().finished = true;
        self.inner.lock_file.lock().take();
        result
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The thread holds a weak reference and ends once signalled, but it
        // may be inside a flush with a strong one: waiting for it means
        // nothing of this ring writes to its files after the drop, where a
        // late checkpoint would meet whatever comes next (the same files
        // opened again). It never owns a `Ring`, so it never runs this.
        self.inner.background.wake.close();
        let handle = self.background_thread.lock().take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// A ring opened to be looked at (`ringship inspect`): recovered in
/// memory, read-only, without the directory's lock; see
/// [`open::open_read_only`].
#[cfg(feature = "inspect")]
pub(crate) struct Inspection {
    inner: RingCore,
    pub(crate) report: RecoveryReport,
    /// The checkpoint recovery started from, if a slot held one.
    pub(crate) checkpoint: Option<meta::Checkpoint>,
}

#[cfg(feature = "inspect")]
impl Inspection {
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let (inner, opened) = open::open_read_only(dir)?;
        Ok(Inspection { inner, report: opened.report, checkpoint: opened.checkpoint })
    }

    pub(crate) fn id(&self) -> u64 {
        self.inner.ring_id
    }

    /// As [`Ring::stats`] would say right after an open.
    pub(crate) fn stats(&self) -> RingStats {
        let durable = self.inner.commit.durable_seq.load(Ordering::Acquire);
        let mut stats = self.inner.state.lock().stats(durable);
        stats.unreadable_bytes = self.inner.unreadable_bytes.load(Ordering::Relaxed);
        stats
    }

    pub(crate) fn losses(&self) -> Vec<LossRange> {
        self.inner.state.lock().losses()
    }

    /// As [`Ring::read`]: every record returned had its checksum checked,
    /// and damage found on the way is counted (in memory).
    pub(crate) fn read(&self, from_seq: u64, max_records: usize, max_bytes: usize) -> Result<ReadBatch> {
        self.inner.read(from_seq, max_records, max_bytes)
    }
}
