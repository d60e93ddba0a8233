//! The supervisor: its judgement, kept pure (observations in, verdicts
//! out, [`Watch`]), and the thread that feeds it and acts on the verdicts
//! ([`supervise`]).

use std::time::Duration;

use std::sync::Arc;

use super::machine::Nanos;
use super::{Callbacks, ShipperCore, panic_message};
use crate::sync::atomic::Ordering;
use crate::sync::{Signal, Woken};

/// What the supervisor sees on one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observation {
    pub(crate) now: Nanos,
    /// Records in the ring not yet acknowledged.
    pub(crate) pending: u64,
    /// The ring's delivery cursor.
    pub(crate) ack_seq: u64,
    /// When the current worker's send started, if one is in flight.
    pub(crate) send_started: Option<Nanos>,
}

/// What the supervisor should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Records are pending and nothing was acknowledged since `since`.
    Stalled { since: Nanos },
    /// Acknowledgements flow again (or nothing is pending).
    Recovered,
    /// The worker's send has run past `abandon_after`: replace the worker.
    Abandon,
}

#[derive(Debug)]
pub(crate) struct Watch {
    stall_after: Nanos,
    abandon_after: Nanos,
    last_progress: Nanos,
    last_ack_seq: u64,
    stalled: bool,
    abandoned_send: Option<Nanos>,
}

impl Watch {
    pub(crate) fn new(now: Nanos, stall_after: Duration, abandon_after: Duration, ack_seq: u64) -> Self {
        Watch {
            stall_after: u64::try_from(stall_after.as_nanos()).unwrap_or(u64::MAX),
            abandon_after: u64::try_from(abandon_after.as_nanos()).unwrap_or(u64::MAX),
            last_progress: now,
            last_ack_seq: ack_seq,
            stalled: false,
            abandoned_send: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled
    }

    pub(crate) fn observe(&mut self, o: Observation) -> Vec<Verdict> {
        let mut v = Vec::new();
        if o.ack_seq > self.last_ack_seq || o.pending == 0 {
            self.last_progress = o.now;
            self.last_ack_seq = self.last_ack_seq.max(o.ack_seq);
            if self.stalled {
                self.stalled = false;
                v.push(Verdict::Recovered);
            }
        } else if !self.stalled && o.now.saturating_sub(self.last_progress) >= self.stall_after {
            self.stalled = true;
            v.push(Verdict::Stalled { since: self.last_progress });
        }
        if let Some(started) = o.send_started {
            if o.now.saturating_sub(started) >= self.abandon_after && self.abandoned_send != Some(started) {
                self.abandoned_send = Some(started);
                v.push(Verdict::Abandon);
            }
        }
        v
    }
}

/// `ring` is the ring's stats when the shipper started: stalls are judged
/// from that moment, whenever this thread gets to run. Losses come from
/// the ring's feed, watched from the start.
pub(super) fn supervise(shared: &Arc<ShipperCore>, stop: &Signal, ring: &crate::RingStats, mut cb: Callbacks) {
    let cfg = shared.cfg;
    let mut watch = Watch::new(shared.now(), cfg.stall_after, cfg.abandon_after, ring.ack_seq);
    loop {
        if stop.wait_timeout(cfg.supervise_every) != Woken::TimedOut {
            // The losses of the last moments (a drain evicts too) go out,
            // unless the callback's queue is full.
            cb.loss(shared.ring.take_new_losses());
            return;
        }
        // No user code runs here (the factory runs on the worker, callbacks
        // on their own thread); a bug of ours is caught all the same, so
        // the supervisor cannot die (I10).
        let tick = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tick(shared, &mut watch, &mut cb)));
        if let Err(p) = tick {
            shared.note_error(&format!("the ringship supervisor panicked: {}", panic_message(&*p)));
        }
    }
}

/// One look of the supervisor.
pub(super) fn tick(shared: &Arc<ShipperCore>, watch: &mut Watch, cb: &mut Callbacks) {
    let died = shared.worker_died.swap(0, Ordering::AcqRel);
    if died != 0 && died == shared.worker_id.load(Ordering::Acquire) && !shared.stop.load(Ordering::Acquire) {
        shared.replace_worker();
    }
    let ring = shared.ring.stats();
    let send_started = shared.status.lock().send_started.map(|(_, at)| at);
    let observation = Observation { now: shared.now(), pending: ring.pending, ack_seq: ring.ack_seq, send_started };
    for verdict in watch.observe(observation) {
        match verdict {
            Verdict::Stalled { since } => {
                shared.status.lock().stalled_since = Some(since);
                shared.counters.stalls.fetch_add(1, Ordering::Relaxed);
                cb.stall(shared);
            }
            Verdict::Recovered => shared.status.lock().stalled_since = None,
            Verdict::Abandon => shared.replace_worker(),
        }
    }
    cb.loss(shared.ring.take_new_losses());
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    fn obs(now: Nanos, pending: u64, ack_seq: u64) -> Observation {
        Observation { now, pending, ack_seq, send_started: None }
    }

    fn watch() -> Watch {
        Watch::new(0, Duration::from_secs(10), Duration::from_secs(5), 0)
    }

    #[test]
    fn pending_without_acks_stalls_after_the_bound_once() {
        let mut w = watch();
        assert!(w.observe(obs(9 * S, 5, 0)).is_empty());
        assert_eq!(w.observe(obs(10 * S, 5, 0)), vec![Verdict::Stalled { since: 0 }]);
        assert!(w.observe(obs(11 * S, 5, 0)).is_empty(), "reported once per episode");
        assert_eq!(w.observe(obs(12 * S, 5, 3)), vec![Verdict::Recovered]);
        assert!(!w.is_stalled());
    }

    #[test]
    fn nothing_pending_is_never_a_stall() {
        let mut w = watch();
        assert!(w.observe(obs(100 * S, 0, 0)).is_empty());
        // The clock starts when records become pending.
        assert!(w.observe(obs(105 * S, 3, 0)).is_empty());
        assert_eq!(w.observe(obs(110 * S, 3, 0)), vec![Verdict::Stalled { since: 100 * S }]);
    }

    #[test]
    fn a_send_past_the_abandon_bound_is_abandoned_once() {
        let mut w = watch();
        let o = |now| Observation { send_started: Some(S), ..obs(now, 1, 0) };
        assert!(w.observe(o(5 * S)).is_empty());
        assert_eq!(w.observe(o(6 * S)), vec![Verdict::Abandon]);
        assert!(w.observe(o(7 * S)).is_empty());
        let next = Observation { send_started: Some(8 * S), ..obs(13 * S, 1, 1) };
        assert_eq!(w.observe(next), vec![Verdict::Abandon], "a new send is judged afresh");
    }
}
