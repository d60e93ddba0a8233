//! The ring's background thread: renews the seq reservation ahead of the
//! appenders, prefetches the data file ahead of the head, and flushes under
//! `SyncPolicy::Interval`.

use crate::sync::atomic::AtomicU64;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::RingCore;
use super::meta::DATA_OFFSET;
use crate::sync::atomic::Ordering;
use crate::sync::{JoinHandle, Signal, Woken};

/// Starts the ring's background thread. Woken by an append, it renews the
/// seq reservation ahead of time, so that appends rarely write and fsync
/// one themselves (I6); every `every` (`SyncPolicy::Interval`) it flushes,
/// on time however often it is woken. It holds only a weak reference, and
/// ends when `wake` is closed.
pub(super) fn spawn_background(inner: Weak<RingCore>, wake: Arc<Signal>, every: Option<Duration>) -> JoinHandle<()> {
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
                inner.sync_asked();
            }
            let (Some(at), Some(every)) = (next_flush, every) else { continue };
            if Instant::now() < at {
                continue;
            }
            next_flush = Instant::now().checked_add(every);
            let written = inner.commit.written_seq.load(Ordering::Acquire);
            let dirty = written > inner.commit.durable_seq.load(Ordering::Acquire) || inner.state.lock().unsaved_losses;
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

/// The background thread prefetches the data file this far ahead of the
/// head (at most a quarter of the ring)...
pub(super) const PREFETCH_AHEAD: u64 = 1 << 20;

/// ... each time the head crosses a multiple of this (and `open` from the
/// head it opened at).
pub(crate) const PREFETCH_STEP: u64 = 256 << 10;

/// `RingCore::prefetch_from` when no prefetch is asked for.
pub(super) const NO_PREFETCH: u64 = u64::MAX;

/// What appends tell the background thread.
pub(super) struct Background {
    /// Wakes the thread: to renew the seq reservation ahead of time (any
    /// policy), to prefetch the data file ahead of the head, and closed to
    /// stop it.
    pub(super) wake: Arc<Signal>,
    /// The head an append asked the thread to prefetch from
    /// (`NO_PREFETCH`: none asked since it last did; at open, the head).
    pub(super) prefetch_from: AtomicU64,
    /// Under `SyncPolicy::Always`, the last seq a front-end appended
    /// without waiting for its fsync (0: none since the thread last synced):
    /// the thread makes it durable (`Ring::append_nowait`).
    pub(super) sync_upto: AtomicU64,
}

impl Background {
    /// Prefetching first from `head`.
    pub(super) fn new(head: u64) -> Self {
        Background { wake: Arc::new(Signal::new()), prefetch_from: AtomicU64::new(head), sync_upto: AtomicU64::new(0) }
    }
}

impl RingCore {
    /// The background thread's fsync for front-ends' appends under
    /// `SyncPolicy::Always`: one group commit covers every seq asked for.
    /// A failure poisons the ring, and the next append says so.
    fn sync_asked(&self) {
        let upto = self.background.sync_upto.swap(0, Ordering::AcqRel);
        if upto > 0 {
            self.wait_written(upto);
            let _ = self.wait_durable(upto);
        }
    }

    /// The background thread's prefetch (and `open`'s): `PREFETCH_AHEAD`
    /// bytes, at most a quarter of the ring, from the head an append asked
    /// for, if one did, in two parts where they wrap around the end of the
    /// data area. No lock is held.
    ///
    /// On the `pwrite` path, bytes of the first lap are left out: nothing
    /// was ever written there, so there is nothing to read, and prefetching
    /// would only have the kernel zero pages that whole-page writes need
    /// not zero, which slows batched appends (BENCHMARKS.md). A mapped
    /// store into such a page has it zeroed anyway, so the mapped path
    /// prefetches those too.
    pub(crate) fn prefetch_ahead(&self) {
        let from = self.background.prefetch_from.swap(NO_PREFETCH, Ordering::Relaxed);
        if from == NO_PREFETCH {
            return;
        }
        let end = from + PREFETCH_AHEAD.min(self.geometry.cap / 4);
        let from = if self.config.mapped_writes { from } else { from.max(self.geometry.cap) };
        if from >= end {
            return;
        }
        let (off, len) = (from % self.geometry.cap, end - from);
        let first = len.min(self.geometry.cap - off);
        self.data.prefetch_for_write(DATA_OFFSET + off, first);
        if first < len {
            self.data.prefetch_for_write(DATA_OFFSET, len - first);
        }
    }
}
