//! Group commit: appenders that need durability share fsyncs; a failed
//! fsync poisons the ring and distrusts the page cache.

use crate::sync::atomic::AtomicU64;
use crate::sync::{Condvar, LEVEL_SYNC, Mutex};
use std::path::Path;
use std::time::{Duration, Instant};

use super::RingCore;
use super::meta::{SYNC_MARK_OFFSETS, encode_sync_mark};
use crate::SyncPolicy;
use crate::sync::atomic::Ordering;
use crate::{Error, Result};

/// How many times a group-commit leader yields, at most, for the threads
/// the last fsync released to append before it starts the next fsync: a
/// few yields let them in, so one fsync covers more records; many more,
/// or sleeping, cost more latency than they save.
pub(super) const GROUP_COMMIT_YIELDS: u32 = if cfg!(loom) { 1 } else { 16 };

/// And for this long at most, however the scheduler treats yields.
pub(super) const GROUP_COMMIT_WAIT: Duration = Duration::from_micros(100);

/// The group-commit coordinator's state (`ring.sync`).
#[derive(Default)]
pub(super) struct SyncState {
    /// Where the frame of the durable seq ends.
    pub(super) durable_pos: u64,
    pub(super) in_progress: bool,
    /// Threads waiting for the fsync in progress.
    pub(super) waiting: u64,
    /// Threads the last fsync released: they are likely to append again
    /// at once, and the next fsync waits a moment for them.
    pub(super) released: u64,
    /// Sync marks written: the next goes to slot `marks % 2`, so a torn
    /// one leaves the one before.
    pub(super) marks: u64,
}

/// Group commit (level 30, `ring.sync`): which seqs are written and which
/// durable, and the fsync in progress.
pub(super) struct GroupCommit {
    pub(super) fsyncs: Mutex<SyncState>,
    /// Signalled when an fsync ends.
    pub(super) synced: Condvar,
    /// The last seq written to the page cache.
    pub(super) written_seq: AtomicU64,
    /// The last seq on stable storage. Raised under `fsyncs`, so that it
    /// and `SyncState::durable_pos` read there are a pair.
    pub(super) durable_seq: AtomicU64,
}

impl GroupCommit {
    /// Everything up to `written`, whose frame ends at `head`, is durable.
    pub(super) fn new(written: u64, head: u64) -> Self {
        GroupCommit {
            fsyncs: Mutex::new(
                LEVEL_SYNC,
                "ring.sync",
                SyncState { durable_pos: head, in_progress: false, waiting: 0, released: 0, marks: 0 },
            ),
            synced: Condvar::new(),
            written_seq: AtomicU64::new(written),
            durable_seq: AtomicU64::new(written),
        }
    }

    /// The last durable seq and where its frame ends, together.
    pub(super) fn durable_pair(&self) -> (u64, u64) {
        let g = self.fsyncs.lock();
        (self.durable_seq.load(Ordering::Acquire), g.durable_pos)
    }
}

impl RingCore {
    /// Waits until `seq` is durable, running the fsync itself if no other
    /// thread is (group commit). No lock is held during the fsync.
    pub(super) fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut g = self.commit.fsyncs.lock();
        loop {
            if self.commit.durable_seq.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            if self.poisoned.load(Ordering::Acquire) {
                drop(g);
                let path = self.state.lock().poisoned.clone().unwrap_or_default();
                return Err(Error::Poisoned { path });
            }
            if g.in_progress {
                g.waiting += 1;
                self.commit.synced.wait(&mut g);
                g.waiting -= 1;
                continue;
            }
            g.in_progress = true;
            let (released, mark_slot) = (g.released, g.marks % 2);
            drop(g);
            // Threads the last fsync released usually append again right
            // away: give them a moment (no lock held) so this fsync covers
            // their records too, rather than leaving them for the next.
            let before = self.commit.written_seq.load(Ordering::Acquire);
            let started = Instant::now();
            // Loom explores each execution again and again, and must see
            // the same choices each time: a wall clock there would make
            // the model depend on how loaded the machine is (loom then
            // fails with "unexpected exploration state").
            let in_time = || cfg!(loom) || started.elapsed() < GROUP_COMMIT_WAIT;
            let mut spins = 0;
            while released > 0 && spins < GROUP_COMMIT_YIELDS && in_time() {
                if self.commit.written_seq.load(Ordering::Acquire) >= before + released {
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
            // The claim goes with the data it names: the one fsync makes
            // both durable, and a sync needs no checkpoint fsync.
            if self.config.sync != SyncPolicy::Always {
                let at = SYNC_MARK_OFFSETS[mark_slot as usize];
                if let Err(e) = self.data.write_at(&encode_sync_mark(target), at) {
                    g = self.commit.fsyncs.lock();
                    g.in_progress = false;
                    self.commit.synced.notify_all();
                    return Err(Error::io("write", &self.data_path, e));
                }
            }
            let result = self.data.sync_data();
            if result.is_err() {
                // Before any waiter wakes: none may retry the fsync.
                self.poison(&self.data_path);
                self.distrust_cache();
            }
            g = self.commit.fsyncs.lock();
            g.in_progress = false;
            match result {
                Ok(()) => {
                    g.marks += 1;
                    if self.commit.durable_seq.fetch_max(target, Ordering::AcqRel) < target {
                        g.durable_pos = target_pos;
                    }
                    g.released = g.waiting;
                    self.commit.synced.notify_all();
                }
                Err(e) => {
                    self.commit.synced.notify_all();
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
    pub(super) fn distrust_cache(&self) {
        self.checkpoints.cache_distrusted.store(true, Ordering::Release);
        // `Ok(false)`: `close` ran meanwhile, and wrote no mark.
        if matches!(self.write_checkpoint(false), Ok(true)) {
            // Made durable if it can be: the sync mark written before the
            // failed fsync may have reached the disk, and only this
            // checkpoint voids its claim after a power loss.
            let _ = self.sync_meta();
            self.data.drop_cache();
        }
    }

    pub(super) fn poison(&self, path: &Path) {
        self.poisoned.store(true, Ordering::Release);
        let mut st = self.state.lock();
        if st.poisoned.is_none() {
            st.poisoned = Some(path.to_path_buf());
        }
    }

    /// fsync the data (with a sync mark), then write a checkpoint; closing
    /// (`clean`), fsync that checkpoint too.
    pub(super) fn sync_all(&self, clean: bool) -> Result<u64> {
        let reserved = {
            let st = self.state.lock();
            // Closing (`clean`) marks the ring closed first.
            match &st.poisoned {
                Some(path) if clean => return Err(Error::Poisoned { path: path.clone() }),
                _ if clean => {}
                _ => Self::poisoned_error(&st)?,
            }
            st.reserved().1 - 1
        };
        // Every append that reserved seqs by now, written and published.
        self.wait_written(reserved);
        let target = self.commit.written_seq.load(Ordering::Acquire);
        self.wait_durable(target)?;
        if clean {
            // Closing: no seq above the last one was handed out. Recorded
            // durably, so a reboot after a clean close skips no seqs.
            let (target, counter) = {
                let mut st = self.state.lock();
                // An append may be writing a larger reservation: the final
                // one must be written after it, or it could land last.
                while st.extending {
                    self.reservation.extended.wait(&mut st);
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
        if clean {
            self.sync_meta()?;
        }
        Ok(self.commit.durable_seq.load(Ordering::Acquire))
    }
}
