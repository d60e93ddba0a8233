//! Checkpoints: the state written (without fsync) to the slot that does
//! not hold the last synced checkpoint, and the meta file's fsync.

use super::meta::SLOT_LEN;
use super::{RingCore, now_nanos};
use crate::sync::atomic::AtomicBool;
use crate::sync::atomic::Ordering;
use crate::sync::{LEVEL_META_IO, Mutex};
use crate::{Error, Result, SyncPolicy};

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

/// The checkpoint slots (level 10, `ring.meta_io`), and whether the page
/// cache is still trusted.
pub(super) struct Checkpoints {
    pub(super) slots: Mutex<MetaIo>,
    /// A data fsync failed: see [`RingCore::distrust_cache`].
    pub(super) cache_distrusted: AtomicBool,
}

impl Checkpoints {
    /// Slots of which `durable_slot` holds the last synced checkpoint, of
    /// generation `generation`.
    pub(super) fn new(generation: u64, durable_slot: u64) -> Self {
        let io = MetaIo { generation, durable_slot, writes: 0, last_slot: 0, finished: false };
        Checkpoints { slots: Mutex::new(LEVEL_META_IO, "ring.meta_io", io), cache_distrusted: AtomicBool::new(false) }
    }
}

impl RingCore {
    /// fsyncs the meta file. If no checkpoint was written while it ran, the
    /// slot last written is now the durable one, and the next checkpoints
    /// go to the other.
    pub(super) fn sync_meta(&self) -> Result<()> {
        let (writes, slot) = {
            let m = self.checkpoints.slots.lock();
            (m.writes, m.last_slot)
        };
        if let Err(e) = self.meta.sync_data() {
            self.poison(&self.meta_path);
            return Err(Error::io("fsync", &self.meta_path, e));
        }
        let mut m = self.checkpoints.slots.lock();
        if writes > 0 && m.writes == writes {
            m.durable_slot = slot;
        }
        Ok(())
    }

    /// Writes a checkpoint of the current state (no fsync) to the slot that
    /// does not hold the last synced checkpoint. `Ok(false)`: nothing was
    /// written, as nothing may be once `close` has run.
    pub(super) fn write_checkpoint(&self, clean: bool) -> Result<bool> {
        let mut m = self.checkpoints.slots.lock();
        if m.finished {
            return Ok(false);
        }
        let (mut ck, had_unsaved_losses) = {
            let mut st = self.state.lock();
            st.last_checkpoint = now_nanos();
            let had_unsaved_losses = std::mem::replace(&mut st.unsaved_losses, false);
            let mut ck = st.checkpoint();
            // Read under the state lock: never ahead of the state's seqs.
            (ck.durable_seq, ck.durable_pos) = self.commit.durable_pair();
            (ck, had_unsaved_losses)
        };
        m.generation += 1;
        ck.generation = m.generation;
        ck.ring_id = self.ring_id;
        ck.clean = clean;
        ck.sync_always = self.config.sync == SyncPolicy::Always;
        let distrusted = self.checkpoints.cache_distrusted.load(Ordering::Acquire);
        ck.boot_id = if distrusted { None } else { self.boot_id };
        ck.marks_void = distrusted;
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
