//! The bounded durable ring.

mod delivery;
pub(crate) mod frame;
pub(crate) mod meta;
mod open;
mod read;
pub(crate) mod recovery;
pub(crate) mod scan;
pub(crate) mod state;
pub(crate) mod storage;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use self::frame::{HEADER_LEN, encode_pad, encode_record, frame_size};
use self::meta::{DATA_OFFSET, SLOT_LEN};
use self::scan::next_lap;
use self::state::{Hole, State};
use crate::ring::storage::Storage;
use crate::stats::{LossCause, LossRange, RecoveryReport, RingStats};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{Condvar, JoinHandle, LEVEL_RING_BACKGROUND, Mutex, Signal, Woken};
use crate::{Error, FullPolicy, Result, RingConfig, SyncPolicy};

pub use read::{ReadBatch, Record};

/// Which checkpoint slot is safe to overwrite (`ring.meta_io`).
///
/// The slot holding the last checkpoint covered by an fsync is never
/// overwritten by an unsynced write: checkpoints between fsyncs all go to
/// the other slot, so a power loss that tears it leaves the synced one.
pub(crate) struct MetaIo {
    pub(crate) generation: u64,
    /// The slot holding the last synced checkpoint.
    pub(crate) durable_slot: u64,
    /// Checkpoint writes so far.
    pub(crate) writes: u64,
    /// The slot of the last write.
    pub(crate) last_slot: u64,
    /// `close` wrote its clean checkpoint, or failed and released the
    /// directory: nothing more is written to a slot (a late ack's or
    /// append's would mark the ring unclean, or land in the files of the
    /// next owner once the directory lock is released).
    pub(crate) finished: bool,
}

/// How far eviction searches damage for the next frame in one step, with
/// `ring.state` held (LOCKS.md): a step scans these bytes 8 at a time.
const RESYNC_STEP: u64 = 1 << 20;

/// How many times a group-commit leader yields, at most, for the threads
/// the last fsync released to append before it starts the next fsync.
/// Measured on 2 vCPUs with 4 producers under `SyncPolicy::Always`: 16
/// yields doubled records per fsync; hundreds, or sleeping, cost more in
/// latency than they gained (an fsync there takes about 80 us).
const GROUP_COMMIT_YIELDS: u32 = if cfg!(loom) { 1 } else { 16 };
/// And for this long at most, however the scheduler treats yields.
const GROUP_COMMIT_WAIT: Duration = Duration::from_micros(100);

/// The group-commit coordinator's state (`ring.sync`).
#[derive(Default)]
struct SyncState {
    durable: u64,
    /// Where the frame of `durable` ends.
    durable_pos: u64,
    in_progress: bool,
    /// Threads waiting for the fsync in progress.
    waiting: u64,
    /// Threads the last fsync released: they are likely to append again
    /// at once, and the next fsync waits a moment for them.
    released: u64,
}

pub(crate) struct Inner {
    dir: PathBuf,
    data_path: PathBuf,
    meta_path: PathBuf,
    data: Box<dyn Storage>,
    meta: Box<dyn Storage>,
    cap: u64,
    /// Longest payload an append accepts (the configuration's).
    max_len: usize,
    /// Longest payload a stored frame may have ([`frame::max_stored_len`]).
    stored_len: usize,
    config: RingConfig,
    ring_id: u64,
    boot_id: Option<[u8; 16]>,
    /// Level 10: checkpoint slots; held across one checkpoint write.
    meta_io: Mutex<MetaIo>,
    /// Level 20: everything else; held across a record write, never an fsync.
    state: Mutex<State>,
    /// Signalled when acks free room (for `FullPolicy::Block`).
    room: Condvar,
    /// Signalled when a seq reservation extension ends.
    reserved: Condvar,
    /// Seqs one reservation covers.
    reserve_block: u64,
    /// Wakes the ring's background thread: to renew the seq reservation
    /// ahead of time (any policy), to prefetch the data file ahead of the
    /// head, and closed to stop it.
    background: Arc<Signal>,
    /// The head an append asked the background thread to prefetch from
    /// (`NO_PREFETCH`: none asked since it last did; at open, the head).
    prefetch_from: AtomicU64,
    /// An append asked the background thread to renew the seq reservation
    /// ahead of time, and no renewal has succeeded since. Appends read and
    /// set it under `ring.state`; the background thread reads it without
    /// the lock, so that a wake-up for a prefetch alone does not contend
    /// with appends for that lock. A renewal clearing it while an append
    /// reads it loses nothing: the append's seq was covered by then.
    renew_asked: AtomicBool,
    /// Where readers' asking for the bytes ahead of them stopped (a
    /// data-area offset; `scan::ReadAhead`). Concurrent readers may ask
    /// for a range twice or skip one: it is a hint only.
    read_ahead: AtomicU64,
    /// Level 30: group commit; released before every fsync.
    sync: Mutex<SyncState>,
    synced: Condvar,
    written_seq: AtomicU64,
    durable_seq: AtomicU64,
    /// Set with `State::poisoned`, readable without the state lock.
    poisoned: AtomicBool,
    /// A data fsync failed: see [`Inner::distrust_cache`].
    cache_distrusted: AtomicBool,
    /// Bytes reads could not get from the files since open (counted each
    /// time): see [`RingStats::unreadable_bytes`].
    unreadable_bytes: AtomicU64,
    lock_file: Mutex<Option<File>>,
}

/// A bounded, crash-safe ring of records on local disk.
///
/// **When full**, the ring follows its [`FullPolicy`]: by default it evicts
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
/// Dropping the ring never blocks: call [`Ring::close`] to sync and record
/// a clean shutdown.
pub struct Ring {
    inner: Arc<Inner>,
    /// The background thread: renews the seq reservation ahead of the
    /// appenders and, under `SyncPolicy::Interval`, flushes.
    background: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("dir", &self.inner.dir).finish_non_exhaustive()
    }
}

pub(crate) fn now_nanos() -> u64 {
    // The clock directly: `SystemTime::now().duration_since(UNIX_EPOCH)`
    // costs about a third more, on a path that runs once per append.
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    let (secs, nanos) = (u64::try_from(t.tv_sec).unwrap_or(0), u64::try_from(t.tv_nsec).unwrap_or(0));
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Outcome of trying to make room for a write.
enum Room {
    Ready,
    /// Only unacknowledged records could be evicted, and the policy forbids it.
    MustNotEvict,
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

    fn start(inner: Inner, report: RecoveryReport) -> (Ring, RecoveryReport) {
        let inner = Arc::new(inner);
        let every = match inner.config.sync {
            SyncPolicy::Interval(every) => Some(every),
            _ => None,
        };
        let background = spawn_background(Arc::downgrade(&inner), Arc::clone(&inner.background), every);
        (Ring { inner, background: Mutex::new(LEVEL_RING_BACKGROUND, "ring.background", Some(background)) }, report)
    }

    /// The ring's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The largest payload [`append`](Ring::append) accepts: the configured
    /// limit, lowered to what the ring's capacity on disk holds.
    pub fn max_record_len(&self) -> usize {
        self.inner.max_len
    }

    /// Appends one record and returns its seq.
    ///
    /// Under [`SyncPolicy::Always`] it returns once the record is durable;
    /// otherwise once the record is in the operating system's page cache
    /// (it survives a crash of the process, not a power loss).
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
            inner.wait_durable(last)?;
        }
        Ok((first, last))
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
        self.ack_delivery(seq, seq.saturating_add(1), None).map(|_| ())
    }

    /// Acks through `seq` the delivery of the records from `first` on, and
    /// notes that the receiver was told of the ring's first `rejected`
    /// rejections (the count [`read_delivery`](Self::read_delivery) gave a
    /// batch whose gap notice was delivered), in one checkpoint. A maximum,
    /// not a sum: the same rejections can be delivered twice (an abandoned
    /// send's late success after its replacement's). Returns how many of
    /// the records the ring evicted meanwhile (counted overwritten, yet the
    /// receiver has them).
    pub(crate) fn ack_delivery(&self, seq: u64, first: u64, rejected: Option<u64>) -> Result<u64> {
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
            let reported = rejected.map_or(st.rejected_reported, |r| r.min(st.rejected).max(st.rejected_reported));
            let newly_reported = reported > st.rejected_reported;
            st.rejected_reported = reported;
            if seq <= st.ack_seq {
                drop(st);
                return if newly_reported { inner.write_checkpoint(false).map(|_| 0) } else { Ok(0) };
            }
            // Seqs below the oldest record still in the ring and above the
            // cursor were evicted unacknowledged: counted overwritten.
            evicted = st.tail_seq.min(seq.saturating_add(1)).saturating_sub(first.max(st.ack_seq + 1));
            let from = st.settled() + 1;
            let present = st.present_in(from, seq);
            st.acked += present;
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

    /// Makes every record appended so far durable, writes a checkpoint, and
    /// returns the durable seq.
    ///
    /// # Errors
    /// [`Error::Io`] if this fsync (or the checkpoint's write) fails, which
    /// poisons the ring; [`Error::Poisoned`] if an earlier fsync failed;
    /// [`Error::Closed`].
    pub fn sync(&self) -> Result<u64> {
        self.inner.sync_all(false)
    }

    /// A snapshot of every counter.
    pub fn stats(&self) -> RingStats {
        let durable = self.inner.durable_seq.load(Ordering::Acquire);
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
        self.inner.background.close();
        // Joined with no lock held (LOCKS.md).
        let handle = self.background.lock().take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        // Refuse appends first, so the final fsync covers every record the
        // clean checkpoint will describe: appends hold the state lock from
        // this check to their write, so each either wrote before this (and
        // the fsync below covers it) or fails with `Error::Closed`.
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
        self.inner.meta_io.lock().finished = true;
        self.inner.lock_file.lock().take();
        result
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Only signal: the thread holds a weak reference and exits on its own.
        self.inner.background.close();
    }
}

/// Starts the ring's background thread. Woken by an append, it renews the
/// seq reservation ahead of time, so that appends rarely write and fsync
/// one themselves (I6); every `every` (`SyncPolicy::Interval`) it flushes,
/// on time however often it is woken. It holds only a weak reference, and
/// ends when `wake` is closed.
fn spawn_background(inner: Weak<Inner>, wake: Arc<Signal>, every: Option<Duration>) -> JoinHandle<()> {
    let run = move || {
        // None for an interval too long to name its end: never.
        let mut next_flush = every.and_then(|every| Instant::now().checked_add(every));
        loop {
            let woken = match next_flush {
                Some(at) => wake.wait_timeout(at.saturating_duration_since(Instant::now())),
                None => wake.wait(),
            };
            // Closed: return without taking a strong reference, so that the
            // ring's files (and its directory lock) go when the ring does.
            if woken == Woken::Closed {
                return;
            }
            let Some(inner) = inner.upgrade() else { return };
            if woken == Woken::Notified {
                // The renewal first: one that comes late has an append
                // fsync a reservation itself, while a prefetch that comes
                // late leaves an append a few page faults, or with mapped
                // writes a wait for pages the prefetch is reading.
                inner.renew_ahead();
                inner.prefetch_ahead();
            }
            let (Some(at), Some(every)) = (next_flush, every) else { continue };
            if Instant::now() < at {
                continue;
            }
            next_flush = Instant::now().checked_add(every);
            let written = inner.written_seq.load(Ordering::Acquire);
            let dirty = written > inner.durable_seq.load(Ordering::Acquire) || inner.state.lock().unsaved_losses;
            if dirty && inner.sync_all(false).is_err() && inner.poisoned.load(Ordering::Acquire) {
                // Appends now fail and say why; nothing more to do here.
                // Other errors (a failed write of a checkpoint, which
                // poisons nothing) are tried again at the next flush.
                return;
            }
        }
    };
    crate::sync::spawn("ringship-background", run)
}

/// A write buffer grown beyond this by a large batch is not kept.
const WRITE_BUF_KEEP: usize = 256 << 10;

/// Bytes read ahead of the tail at a time when evicting.
const TAIL_AHEAD: u64 = 64 << 10;

/// The background thread prefetches the data file this far ahead of the
/// head (at most a quarter of the ring)...
const PREFETCH_AHEAD: u64 = 1 << 20;

/// ... each time the head crosses a multiple of this (and `open` from the
/// head it opened at).
pub(crate) const PREFETCH_STEP: u64 = 256 << 10;

/// `Inner::prefetch_from` when no prefetch is asked for.
const NO_PREFETCH: u64 = u64::MAX;

impl Inner {
    fn poisoned_error(st: &State) -> Result<()> {
        if st.closed {
            return Err(Error::Closed);
        }
        match &st.poisoned {
            Some(path) => Err(Error::Poisoned { path: path.clone() }),
            None => Ok(()),
        }
    }

    fn reject(st: &mut State, n: u64, err: Error) -> Error {
        st.rejected = crate::stats::bounded_add(st.rejected, n);
        st.unsaved_losses = true;
        err
    }

    /// An append refused by `err` before any of it was written: counted as
    /// rejected, unless `err` poisoned the ring (a poisoned ring counts no
    /// refusal; the next open's recovery counts what it finds).
    fn refuse_unwritten(st: &mut State, n: u64, err: Error) -> Error {
        if st.poisoned.is_some() || st.closed { err } else { Self::reject(st, n, err) }
    }

    fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(u64, u64)> {
        // Waiting for room ends at this instant (none: the timeout is too
        // far ahead to name one).
        let deadline = match self.config.full {
            FullPolicy::Block(t) => Some((Instant::now().checked_add(t), t)),
            _ => None,
        };
        loop {
            if let Some(placed) = self.try_append_batch(payloads, deadline)? {
                return Ok(placed);
            }
        }
    }

    /// One attempt of [`append_batch`](Self::append_batch): `None` if it
    /// waited for room and the seq reservation it had checked was used up
    /// meanwhile (by appenders that ran while it waited).
    fn try_append_batch<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        deadline: Option<(Option<Instant>, Duration)>,
    ) -> Result<Option<(u64, u64)>> {
        let n = payloads.len() as u64;
        // Sizes first: a batch refused for them must not reserve seqs (a
        // power loss would count the reserved ones lost as well).
        let (frames, largest) = payloads
            .iter()
            .map(|p| frame_size(p.as_ref().len()))
            .fold((0, 0), |(sum, largest), size| (sum + size, size.max(largest)));
        let refusal = if let Some(p) = payloads.iter().find(|p| p.as_ref().len() > self.max_len) {
            Some(Error::RecordTooLarge { len: p.as_ref().len(), max: self.max_len })
        } else if frames + largest > self.cap {
            // A batch that wraps leaves the bytes before the end of the
            // data area unused, fewer than the frame that did not fit
            // there: it must fit with them, or its last frames would land
            // on its first.
            Some(Error::BatchTooLarge { needed: frames + largest, capacity: self.cap })
        } else {
            None
        };
        let mut st = loop {
            let st = self.state.lock();
            if refusal.is_some() || st.next_seq + n - 1 <= st.seq_reserved || st.poisoned.is_some() || st.closed {
                break st;
            }
            drop(st);
            // Another appender may use the new reservation up before this
            // one takes the lock again: check again.
            if let Err(e) = self.ensure_reserved(n, 0) {
                return Err(Self::refuse_unwritten(&mut self.state.lock(), n, e));
            }
        };
        Self::poisoned_error(&st)?;
        if let Some(err) = refusal {
            return Err(Self::reject(&mut st, n, err));
        }
        let ts = now_nanos();
        // The frames are laid out in a buffer the state keeps between
        // appends (a batch holds the state lock from here to its write).
        let mut buf = std::mem::take(&mut st.write_buf);
        let result = self.place(&mut st, payloads, &mut buf, frames, ts, deadline);
        if buf.capacity() <= WRITE_BUF_KEEP {
            st.write_buf = buf;
        }
        // Half the reservation used: have the background thread renew it,
        // so no append has to wait for that fsync (I6).
        let renew = !self.renew_asked.load(Ordering::Relaxed)
            && !st.extending
            && st.next_seq + self.renew_margin() > st.seq_reserved;
        if renew {
            self.renew_asked.store(true, Ordering::Relaxed);
        }
        // The head crossed into another prefetch step: have the background
        // thread bring in the bytes ahead, so that no append waits for the
        // disk or for the kernel to prepare pages.
        let prefetch = st.head / PREFETCH_STEP != st.prefetch_step;
        if prefetch {
            st.prefetch_step = st.head / PREFETCH_STEP;
            self.prefetch_from.store(st.head, Ordering::Relaxed);
        }
        if let (Ok(Some(_)), Some(reader)) = (&result, &st.reader) {
            reader.notify();
        }
        drop(st);
        if renew || prefetch {
            self.background.notify();
        }
        let Some((first, last, checkpoint_due)) = result? else {
            return Ok(None);
        };
        if checkpoint_due {
            // The batch is written and will be read and shipped: failing
            // the append now would have the caller append it again under
            // new seqs. The losses stay unsaved, so the next checkpoint
            // (the next append's, or sync's or close's, which report an
            // error) writes them.
            let _ = self.write_checkpoint(false);
        }
        Ok(Some((first, last)))
    }

    /// Lays out and writes a batch at the head, making room first; see
    /// [`append_batch`](Self::append_batch). Returns the first and last seq
    /// and whether a checkpoint is due, or `None` if it waited for room
    /// and the seq reservation no longer covers the batch.
    fn place<P: AsRef<[u8]>>(
        &self,
        st: &mut crate::sync::MutexGuard<'_, State>,
        payloads: &[P],
        buf: &mut Vec<u8>,
        frames: u64,
        ts: u64,
        deadline: Option<(Option<Instant>, Duration)>,
    ) -> Result<Option<(u64, u64, bool)>> {
        let n = payloads.len() as u64;
        buf.reserve(frames as usize + HEADER_LEN);
        loop {
            // Lay the frames out from the current head.
            buf.clear();
            // A batch is smaller than the ring: it wraps at most once.
            let mut segments = [(0u64, 0usize); 2];
            let mut nseg = 0;
            let mut pos = st.head;
            let mut seg_start = (pos, 0usize);
            let first_seq = st.next_seq;
            // The lap end the batch crosses, if it leaves bytes unused.
            let mut lap_end = None;
            for (i, p) in payloads.iter().enumerate() {
                let p = p.as_ref();
                let size = frame_size(p.len());
                let room = self.cap - pos % self.cap;
                if size > room {
                    if room >= HEADER_LEN as u64 {
                        encode_pad(buf, first_seq + i as u64, pos, (room - HEADER_LEN as u64) as usize);
                    }
                    pos = next_lap(pos, self.cap);
                    lap_end = Some((pos, room));
                }
                // A segment never crosses the end of the data area.
                if pos % self.cap == 0 && pos != seg_start.0 {
                    if buf.len() > seg_start.1 {
                        segments[nseg] = seg_start;
                        nseg += 1;
                    }
                    seg_start = (pos, buf.len());
                }
                encode_record(buf, first_seq + i as u64, ts, pos, p);
                pos += size;
            }
            segments[nseg] = seg_start;
            nseg += 1;
            let segments = &segments[..nseg];
            let new_head = pos;
            debug_assert!(new_head - st.head <= self.cap, "a batch spans more than the ring");
            let room = self.make_room(st, new_head);
            st.debug_check("make_room");
            match room.map_err(|e| Self::refuse_unwritten(st, n, e))? {
                Room::Ready => {}
                Room::MustNotEvict => match deadline {
                    None => return Err(Self::reject(st, n, Error::Full { needed: frames })),
                    Some((at, total)) => {
                        let timed_out = if let Some(at) = at {
                            let now = Instant::now();
                            now >= at || self.room.wait_for(st, at - now) && Instant::now() >= at
                        } else {
                            self.room.wait(st);
                            false
                        };
                        if timed_out {
                            return Err(Self::reject(st, n, Error::BlockTimeout(total)));
                        }
                        Self::poisoned_error(st)?;
                        // Appenders that ran while this one waited may have
                        // used up the seq reservation it checked.
                        if st.next_seq + n - 1 > st.seq_reserved {
                            return Ok(None);
                        }
                        continue;
                    }
                },
            }
            // Write each segment; segment i ends where segment i + 1 starts.
            let mut spans = [(0u64, 0usize, 0usize); 2];
            for (i, &(seg_pos, from)) in segments.iter().enumerate() {
                spans[i] = (seg_pos % self.cap, from, segments.get(i + 1).map_or(buf.len(), |s| s.1));
            }
            let spans = &spans[..segments.len()];
            for (i, &(off, from, to)) in spans.iter().enumerate() {
                debug_assert!(off + (to - from) as u64 <= self.cap);
                if let Err(e) = self.data.write_at(&buf[from..to], DATA_OFFSET + off) {
                    let err = Error::io("write", &self.data_path, e);
                    return Err(self.undo_failed_write(st, n, &spans[..=i], err));
                }
            }
            st.head = new_head;
            st.next_seq += n;
            let last = st.next_seq - 1;
            self.written_seq.store(last, Ordering::Release);
            // By the batch's timestamp, not another clock read; a wall clock
            // that jumped either way makes a checkpoint due.
            let interval = u64::try_from(self.config.checkpoint_interval.as_nanos()).unwrap_or(u64::MAX);
            let mut due = st.unsaved_losses && ts.abs_diff(st.last_checkpoint) >= interval;
            if let Some((end, unused)) = lap_end {
                // A checkpoint per lap keeps every lap end a crash recovery
                // may find between the checkpoint and the oldest record, so
                // that the bytes it counts overwritten leave the padding out.
                st.note_lap_end(end, unused);
                due = true;
            }
            return Ok(Some((first_seq, last, due)));
        }
    }

    /// After a failed write, zeroes whatever the batch may have written, so
    /// no part of it can be recovered: then it was cleanly refused and is
    /// counted as rejected. If even that fails, what reached the disk is
    /// unknown: the ring is poisoned and recovery at the next open decides
    /// (records that made it are kept; delivery is at-least-once).
    fn undo_failed_write(&self, st: &mut State, n: u64, spans: &[(u64, usize, usize)], err: Error) -> Error {
        // Filled with a marker rather than zeros: the fill may cover frames
        // the batch was to replace (evicted, but newer than the last
        // checkpoint), and crash recovery must not mistake the gap for
        // space the writer never reached (see `recovery::chain_head`).
        let fill = |len: usize| frame::UNDONE.iter().copied().cycle().take(len).collect::<Vec<u8>>();
        let undone =
            spans.iter().all(|&(off, from, to)| self.data.write_at(&fill(to - from), DATA_OFFSET + off).is_ok());
        if undone {
            Self::reject(st, n, err)
        } else {
            self.poisoned.store(true, Ordering::Release);
            st.poisoned.get_or_insert_with(|| self.data_path.clone());
            err
        }
    }

    /// The header bytes at `pos` (the tail, with room for a header before
    /// the end of the lap), through a read-ahead buffer: evicting record by
    /// record then costs one read per `TAIL_AHEAD` bytes, not one per record.
    fn tail_header(&self, st: &mut State, pos: u64) -> std::io::Result<[u8; HEADER_LEN]> {
        let (start, buf) = &mut st.tail_ahead;
        let cached = pos >= *start && pos + HEADER_LEN as u64 <= *start + buf.len() as u64;
        if !cached {
            // Only bytes below the head: those beyond are an older lap's and
            // will change (see `State::tail_ahead`).
            let len = TAIL_AHEAD.min(st.head - pos).min(self.cap - pos % self.cap).max(HEADER_LEN as u64);
            buf.resize(len as usize, 0);
            match storage::read_or_fill(&*self.data, buf, DATA_OFFSET + pos % self.cap) {
                Ok(filled) => {
                    let bytes = storage::filled_bytes(&filled);
                    if bytes > 0 {
                        self.unreadable_bytes.fetch_add(bytes, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    // Nothing cached: the next call must not take what a
                    // failed read left in the buffer for the bytes at `start`.
                    buf.clear();
                    return Err(e);
                }
            }
            *start = pos;
            if st.head - pos < HEADER_LEN as u64 {
                // Too close to the head to keep: used once.
                let raw = buf[..HEADER_LEN].try_into().expect("header");
                buf.clear();
                return Ok(raw);
            }
        }
        let at = (pos - *start) as usize;
        Ok(buf[at..at + HEADER_LEN].try_into().expect("header"))
    }

    /// Evicts the oldest frames until a write ending at `new_head` fits.
    fn make_room(&self, st: &mut State, new_head: u64) -> Result<Room> {
        while new_head - st.tail_pos > self.cap {
            // Whatever moved the tail last time, holes below it are settled.
            st.settle();
            if let Some(h) = st.hole_at(st.tail_seq).filter(|h| h.pos <= st.tail_pos) {
                st.tail_pos = h.resume_pos.max(st.tail_pos);
                st.tail_seq = h.last + 1;
                st.settle();
                continue;
            }
            if st.tail_pos >= st.head {
                // Empty: nothing left to evict, and the write fits by size.
                st.tail_pos = st.head;
                break;
            }
            let pos = st.tail_pos;
            let room = self.cap - pos % self.cap;
            if room < HEADER_LEN as u64 {
                st.tail_pos = next_lap(pos, self.cap);
                continue;
            }
            let raw = self.tail_header(st, pos).map_err(|e| Error::io("read", &self.data_path, e))?;
            match frame::decode_header(&raw, pos, self.stored_len) {
                Some(h) if h.is_pad && h.size() == room => st.tail_pos = next_lap(pos, self.cap),
                Some(h) if !h.is_pad && h.seq == st.tail_seq && pos + h.size() <= st.head => {
                    if h.seq > st.ack_seq {
                        if self.config.full != FullPolicy::OverwriteOldest {
                            return Ok(Room::MustNotEvict);
                        }
                        st.overwritten += 1;
                        st.overwritten_bytes = crate::stats::bounded_add(st.overwritten_bytes, h.size());
                        let range = LossRange {
                            first_seq: h.seq,
                            last_seq: h.seq,
                            first_ts: h.ts,
                            last_ts: h.ts,
                            count: 1,
                            bytes: h.size(),
                            cause: LossCause::Overwritten,
                        };
                        st.record_loss(range);
                    }
                    st.tail_pos = pos + h.size();
                    st.tail_seq = h.seq + 1;
                    st.tail_ts = h.ts;
                }
                Some(h) if !h.is_pad && h.seq > st.tail_seq && self.frame_intact(pos)? => {
                    // Intact framing with seqs missing before it: a gap no
                    // reader has registered yet.
                    let hole = Hole {
                        first: st.tail_seq,
                        last: h.seq - 1,
                        pos,
                        resume_pos: pos,
                        first_ts: st.tail_ts,
                        last_ts: h.ts,
                        cause: LossCause::Corrupted,
                    };
                    if st.add_hole(hole).is_empty() {
                        st.tail_seq = h.seq;
                    }
                }
                _ => {
                    // Damage at the tail that no reader has met yet. The
                    // search for the next frame holds `ring.state`: it looks
                    // at most `RESYNC_STEP` bytes ahead per step.
                    let limit = st.head.min(pos + RESYNC_STEP);
                    let resume = {
                        let mut scan = scan::Scanner::new(&*self.data, self.cap, self.stored_len, 64 << 10)
                            .counting(&self.unreadable_bytes);
                        scan.resync(pos, limit).map_err(|e| Error::io("read", &self.data_path, e))?
                    };
                    let (resume_pos, next) = match resume {
                        Some((q, scan::Found::Record(h) | scan::Found::Pad(h))) => (q, h.seq),
                        None if limit < st.head => {
                            // No frame starts before `limit`: the damage goes
                            // on. Move past what was searched; the seqs it
                            // held are counted once a frame past it is found
                            // (the branch above), or when the head is reached.
                            st.tail_pos = limit;
                            continue;
                        }
                        _ => (st.head, st.next_seq),
                    };
                    let hole = Hole {
                        first: st.tail_seq,
                        last: next.max(st.tail_seq + 1) - 1,
                        pos,
                        resume_pos,
                        first_ts: st.tail_ts,
                        last_ts: st.tail_ts,
                        cause: LossCause::Corrupted,
                    };
                    if next <= st.tail_seq || st.add_hole(hole).is_empty() {
                        // Nothing to count: skip the unreadable bytes.
                        st.tail_pos = resume_pos;
                        if next > st.tail_seq {
                            st.tail_seq = next;
                        }
                    }
                }
            }
        }
        st.settle();
        Ok(Room::Ready)
    }

    /// Whether the frame at `pos` passes its checksum (eviction trusts a
    /// header's seq beyond the expected one only then).
    fn frame_intact(&self, pos: u64) -> Result<bool> {
        let mut scan = scan::Scanner::new(&*self.data, self.cap, self.stored_len, 0).counting(&self.unreadable_bytes);
        let found = scan.frame_at(pos).map_err(|e| Error::io("read", &self.data_path, e))?;
        Ok(matches!(found, scan::Found::Record(_)))
    }

    /// The background thread's prefetch (and `open`'s): `PREFETCH_AHEAD`
    /// bytes, at most a quarter of the ring, from the head an append asked
    /// for, if one did, in two parts where they wrap around the end of the
    /// data area. No lock is held.
    ///
    /// On the `pwrite` path, bytes of the first lap are left out: nothing
    /// was ever written there, so there is nothing to read, and prefetching
    /// would only have the kernel zero pages that whole-page writes need
    /// not zero (batches of 64 x 1 KiB: 20 % slower). A mapped store into
    /// such a page has it zeroed anyway, so the mapped path prefetches
    /// those too.
    pub(crate) fn prefetch_ahead(&self) {
        let from = self.prefetch_from.swap(NO_PREFETCH, Ordering::Relaxed);
        if from == NO_PREFETCH {
            return;
        }
        let end = from + PREFETCH_AHEAD.min(self.cap / 4);
        let from = if self.config.mapped_writes { from } else { from.max(self.cap) };
        if from >= end {
            return;
        }
        let (off, len) = (from % self.cap, end - from);
        let first = len.min(self.cap - off);
        self.data.prefetch_for_write(DATA_OFFSET + off, first);
        if first < len {
            self.data.prefetch_for_write(DATA_OFFSET, len - first);
        }
    }

    /// Seqs the reservation is kept ahead of the last one: half a block.
    /// Appends ask for a renewal when fewer are left; renewals (the
    /// background thread's, the flusher's and `sync`'s) restore it.
    fn renew_margin(&self) -> u64 {
        self.reserve_block / 2
    }

    /// The background thread's renewal: the reservation covers at least
    /// half a block beyond the last seq. An error leaves `renew_asked` set,
    /// so appends do not ask again; the append that runs past the
    /// reservation renews it itself and reports the error.
    fn renew_ahead(&self) {
        if !self.renew_asked.load(Ordering::Relaxed) {
            return;
        }
        if self.ensure_reserved(1, self.renew_margin()).is_ok() {
            self.renew_asked.store(false, Ordering::Relaxed);
        }
    }

    /// Makes sure seqs up to `next_seq + n - 1` (and `ahead` more) are
    /// covered by a durable reservation, writing and fsyncing a larger one
    /// if not. One thread extends at a time; others wait for it, which
    /// happens once per `reserve_block` seqs at most.
    fn ensure_reserved(&self, n: u64, ahead: u64) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            if st.next_seq + n - 1 + ahead <= st.seq_reserved || st.poisoned.is_some() || st.closed {
                return Ok(());
            }
            if st.extending {
                self.reserved.wait(&mut st);
                continue;
            }
            st.extending = true;
            st.reserve_writes += 1;
            let target = st.next_seq + n - 1 + self.reserve_block.max(ahead);
            let counter = st.reserve_writes;
            drop(st);
            let result = self.write_reservation(target, counter);
            st = self.state.lock();
            st.extending = false;
            if result.is_ok() {
                st.seq_reserved = st.seq_reserved.max(target);
                self.renew_asked.store(false, Ordering::Relaxed);
            }
            self.reserved.notify_all();
            result?;
        }
    }

    /// Writes reservation record `counter` to both copies (each one sector,
    /// so a power loss can lose a copy's update but not tear it, and a
    /// damaged copy leaves the other) and fsyncs them. No seq it covers is
    /// handed out before this returns. No lock is held.
    fn write_reservation(&self, seq_reserved: u64, counter: u64) -> Result<()> {
        let record = meta::Reservation { ring_id: self.ring_id, counter, seq_reserved }.encode();
        for at in meta::RESERVATION_OFFSETS {
            self.meta.write_at(&record, at).map_err(|e| Error::io("write", &self.meta_path, e))?;
        }
        if let Err(e) = self.meta.sync_data() {
            self.poison(&self.meta_path);
            return Err(Error::io("fsync", &self.meta_path, e));
        }
        Ok(())
    }

    /// Waits until `seq` is durable, running the fsync itself if no other
    /// thread is (group commit). No lock is held during the fsync.
    fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut g = self.sync.lock();
        loop {
            if g.durable >= seq {
                return Ok(());
            }
            if self.poisoned.load(Ordering::Acquire) {
                drop(g);
                let path = self.state.lock().poisoned.clone().unwrap_or_default();
                return Err(Error::Poisoned { path });
            }
            if g.in_progress {
                g.waiting += 1;
                self.synced.wait(&mut g);
                g.waiting -= 1;
                continue;
            }
            g.in_progress = true;
            let released = g.released;
            drop(g);
            // Threads the last fsync released usually append again right
            // away: give them a moment (no lock held) so this fsync covers
            // their records too, rather than leaving them for the next.
            let before = self.written_seq.load(Ordering::Acquire);
            let started = Instant::now();
            // Loom explores each execution again and again, and must see
            // the same choices each time: a wall clock there would make
            // the model depend on how loaded the machine is (loom then
            // fails with "unexpected exploration state").
            let in_time = || cfg!(loom) || started.elapsed() < GROUP_COMMIT_WAIT;
            let mut spins = 0;
            while released > 0 && spins < GROUP_COMMIT_YIELDS && in_time() {
                if self.written_seq.load(Ordering::Acquire) >= before + released {
                    break;
                }
                crate::sync::yield_now();
                spins += 1;
            }
            // The seq and the position it ends at, together: checkpoints
            // record both (`Checkpoint::durable_pos`).
            let (target, target_pos) = {
                let st = self.state.lock();
                (st.next_seq - 1, st.head)
            };
            let result = self.data.sync_data();
            if result.is_err() {
                // Before any waiter wakes: none may retry the fsync.
                self.poison(&self.data_path);
                self.distrust_cache();
            }
            g = self.sync.lock();
            g.in_progress = false;
            match result {
                Ok(()) => {
                    if target > g.durable {
                        (g.durable, g.durable_pos) = (target, target_pos);
                    }
                    g.released = g.waiting;
                    self.durable_seq.fetch_max(target, Ordering::AcqRel);
                    self.synced.notify_all();
                }
                Err(e) => {
                    self.synced.notify_all();
                    return Err(Error::io("fsync", &self.data_path, e));
                }
            }
        }
    }

    /// After a failed fsync of the data file: Linux marks the pages it
    /// failed to write clean, so the page cache may show bytes the disk
    /// does not hold, and would go on showing them until it evicts them.
    /// From here on checkpoints carry no boot id, so the next open assumes
    /// writes were lost, as after a power loss, and never reuses a seq; then
    /// the data file's cached pages are dropped, so that open reads what
    /// the disk holds. (In that order, and only if the checkpoint could be
    /// written: otherwise the next open trusts the cache as after a crash
    /// of the process, and must find it as it was.)
    fn distrust_cache(&self) {
        self.cache_distrusted.store(true, Ordering::Release);
        // `Ok(false)`: `close` ran meanwhile, and wrote no mark.
        if matches!(self.write_checkpoint(false), Ok(true)) {
            self.data.drop_cache();
        }
    }

    fn poison(&self, path: &Path) {
        self.poisoned.store(true, Ordering::Release);
        let mut st = self.state.lock();
        if st.poisoned.is_none() {
            st.poisoned = Some(path.to_path_buf());
        }
    }

    /// fsync the data, then write and fsync a checkpoint.
    fn sync_all(&self, clean: bool) -> Result<u64> {
        {
            let st = self.state.lock();
            // Closing (`clean`) marks the ring closed first.
            match &st.poisoned {
                Some(path) if clean => return Err(Error::Poisoned { path: path.clone() }),
                _ if clean => {}
                _ => Self::poisoned_error(&st)?,
            }
        }
        let target = self.written_seq.load(Ordering::Acquire);
        self.wait_durable(target)?;
        if clean {
            // Closing: no seq above the last one was handed out. Recorded
            // durably, so a reboot after a clean close skips no seqs.
            let (target, counter) = {
                let mut st = self.state.lock();
                // An append may be writing a larger reservation: the final
                // one must be written after it, or it could land last.
                while st.extending {
                    self.reserved.wait(&mut st);
                }
                st.reserve_writes += 1;
                st.seq_reserved = st.next_seq - 1;
                (st.seq_reserved, st.reserve_writes)
            };
            self.write_reservation(target, counter)?;
        } else {
            // Renew the reservation ahead of time, so appenders rarely wait.
            self.ensure_reserved(1, self.renew_margin())?;
        }
        self.write_checkpoint(clean)?;
        self.sync_meta()?;
        Ok(self.durable_seq.load(Ordering::Acquire))
    }

    /// fsyncs the meta file. If no checkpoint was written while it ran, the
    /// slot last written is now the durable one, and the next checkpoints
    /// go to the other.
    fn sync_meta(&self) -> Result<()> {
        let (writes, slot) = {
            let m = self.meta_io.lock();
            (m.writes, m.last_slot)
        };
        if let Err(e) = self.meta.sync_data() {
            self.poison(&self.meta_path);
            return Err(Error::io("fsync", &self.meta_path, e));
        }
        let mut m = self.meta_io.lock();
        if writes > 0 && m.writes == writes {
            m.durable_slot = slot;
        }
        Ok(())
    }

    /// Writes a checkpoint of the current state (no fsync) to the slot that
    /// does not hold the last synced checkpoint. `Ok(false)`: nothing was
    /// written, as nothing may be once `close` has run.
    fn write_checkpoint(&self, clean: bool) -> Result<bool> {
        let mut m = self.meta_io.lock();
        if m.finished {
            return Ok(false);
        }
        let (mut ck, had_unsaved_losses) = {
            let mut st = self.state.lock();
            st.last_checkpoint = now_nanos();
            let had_unsaved_losses = std::mem::replace(&mut st.unsaved_losses, false);
            let mut ck = st.checkpoint();
            // Read under the state lock: never ahead of the state's seqs.
            let sync = self.sync.lock();
            (ck.durable_seq, ck.durable_pos) = (sync.durable, sync.durable_pos);
            (ck, had_unsaved_losses)
        };
        m.generation += 1;
        ck.generation = m.generation;
        ck.ring_id = self.ring_id;
        ck.clean = clean;
        ck.sync_always = self.config.sync == SyncPolicy::Always;
        ck.boot_id = if self.cache_distrusted.load(Ordering::Acquire) { None } else { self.boot_id };
        debug_assert!(ck.consistent(), "writing an inconsistent checkpoint: {ck:?}");
        let slot = 1 - m.durable_slot;
        if let Err(e) = self.meta.write_at(&ck.encode(), slot * SLOT_LEN as u64) {
            // The losses it carried, if any, are still to be written.
            self.state.lock().unsaved_losses |= had_unsaved_losses;
            return Err(Error::io("write", &self.meta_path, e));
        }
        m.writes += 1;
        m.last_slot = slot;
        m.finished = clean;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::sim::SimDisk;
    use crate::sync::{Signal, Woken};
    use crate::{Ring, RingConfig, SyncPolicy};

    /// A shipper's worker sleeps until woken: every append, through the
    /// shipper or on the ring directly, must wake it, and a refused one
    /// need not.
    #[test]
    fn every_append_wakes_the_reader() {
        let disk = SimDisk::new(1, crate::sim::Faults::NONE);
        let config = RingConfig::default().capacity(64 << 10).max_record_len(1024).sync(SyncPolicy::Never);
        let (ring, _) = Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config).unwrap();
        let reader = Arc::new(Signal::new());
        ring.wake_on_append(Arc::clone(&reader));
        assert_eq!(reader.wait_timeout(std::time::Duration::ZERO), Woken::TimedOut);
        ring.append(b"one").unwrap();
        assert_eq!(reader.wait_timeout(std::time::Duration::ZERO), Woken::Notified);
        ring.append_batch(&[b"two", b"six"]).unwrap();
        assert_eq!(reader.wait_timeout(std::time::Duration::ZERO), Woken::Notified);
        assert!(ring.append(&[0; 2000]).is_err());
        assert_eq!(reader.wait_timeout(std::time::Duration::ZERO), Woken::TimedOut);
    }
}
