//! The durable seq reservation: no seq is handed out before a reservation
//! covering it is on stable storage, so none is reused after any crash.

use super::RingCore;
use super::meta::{self};
use crate::sync::Condvar;
use crate::sync::atomic::AtomicBool;
use crate::sync::atomic::Ordering;
use crate::{Error, Result};

/// The seq reservation's own state; the reserved seq itself and the
/// extension in progress are in `ring.state`, which appends hold anyway.
pub(super) struct SeqReservation {
    /// Seqs one reservation covers.
    pub(super) block: u64,
    /// An append asked the background thread to renew the seq reservation
    /// ahead of time, and no renewal has succeeded since. Appends read and
    /// set it under `ring.state`; the background thread reads it without
    /// the lock, so that a wake-up for a prefetch alone does not contend
    /// with appends for that lock. A renewal clearing it while an append
    /// reads it loses nothing: the append's seq was covered by then.
    pub(super) renew_asked: AtomicBool,
    /// Signalled when an extension ends.
    pub(super) extended: Condvar,
}

impl SeqReservation {
    pub(super) fn new(block: u64) -> Self {
        SeqReservation { block, renew_asked: AtomicBool::new(false), extended: Condvar::new() }
    }
}

impl RingCore {
    /// Seqs the reservation is kept ahead of the last one: half a block.
    /// Appends ask for a renewal when fewer are left; renewals (the
    /// background thread's, the flusher's and `sync`'s) restore it.
    pub(super) fn renew_margin(&self) -> u64 {
        self.reservation.block / 2
    }

    /// The background thread's renewal: the reservation covers at least
    /// half a block beyond the last seq. An error leaves `renew_asked` set,
    /// so appends do not ask again; the append that runs past the
    /// reservation renews it itself and reports the error.
    pub(super) fn renew_ahead(&self) {
        if !self.reservation.renew_asked.load(Ordering::Relaxed) {
            return;
        }
        if self.ensure_reserved(1, self.renew_margin()).is_ok() {
            self.reservation.renew_asked.store(false, Ordering::Relaxed);
        }
    }

    /// Makes sure `n` seqs past the last handed out (and `ahead` more) are
    /// covered by a durable reservation, writing and fsyncing a larger one
    /// if not. One thread extends at a time; others wait for it, which
    /// happens once per `reserve_block` seqs at most.
    pub(super) fn ensure_reserved(&self, n: u64, ahead: u64) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            let next_seq = st.reserved().1;
            if next_seq + n - 1 + ahead <= st.seq_reserved || st.poisoned.is_some() || st.closed {
                return Ok(());
            }
            if st.extending {
                self.reservation.extended.wait(&mut st);
                continue;
            }
            st.extending = true;
            st.reserve_writes += 1;
            let target = next_seq + n - 1 + self.reservation.block.max(ahead);
            let counter = st.reserve_writes;
            drop(st);
            let result = self.write_reservation(target, counter);
            st = self.state.lock();
            st.extending = false;
            if result.is_ok() {
                st.seq_reserved = st.seq_reserved.max(target);
                self.reservation.renew_asked.store(false, Ordering::Relaxed);
            }
            self.reservation.extended.notify_all();
            result?;
        }
    }

    /// Writes reservation record `counter` to both copies (each one sector,
    /// so a power loss can lose a copy's update but not tear it, and a
    /// damaged copy leaves the other) and fsyncs them. No seq it covers is
    /// handed out before this returns. No lock is held.
    pub(super) fn write_reservation(&self, seq_reserved: u64, counter: u64) -> Result<()> {
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
}
