//! The user's callbacks, run on their own thread from a bounded queue, so
//! that a slow or panicking callback holds up nothing else.

use super::health::Health;
use super::{ShipperCore, panic_message};
use crate::stats::{LossFeed, LossRange};
use crate::sync::atomic::Ordering;

/// Called with the health snapshot when a stall is detected.
pub type StallCallback = Box<dyn Fn(&Health) + Send + Sync>;

/// Called with the loss ranges the ring recorded since the last call:
/// exact, their counts add up to the growth of the ring's loss counters
/// (ranges of one cause that touch arrive merged).
pub type LossCallback = Box<dyn Fn(&[LossRange]) + Send + Sync>;

/// Runs a user callback; a panic in it is caught so the callback thread
/// lives on.
pub(super) fn call_back(what: &str, f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        crate::threads::diag!("the {what} callback panicked ({}); later ones still run", panic_message(&*p));
        // A payload whose own drop panics must not end the thread either.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(p)));
    }
}

/// Events for the callback thread, queued at most this many.
pub(super) const CALLBACK_QUEUE: usize = 16;

/// What the supervisor hands to the user's callbacks.
pub(super) enum Event {
    Stall(Health),
    Loss(Vec<LossRange>),
}

/// Runs the user's callbacks on a thread of their own, so that a slow or
/// blocking one holds up neither supervision nor shutdown. Ends when the
/// supervisor drops its sender; never joined.
pub(super) fn run_callbacks(
    rx: &crossbeam_channel::Receiver<Event>,
    on_stall: Option<&StallCallback>,
    on_loss: Option<&LossCallback>,
) {
    for event in rx {
        match event {
            Event::Stall(h) => {
                if let Some(cb) = on_stall {
                    call_back("on_stall", || cb(&h));
                }
            }
            Event::Loss(r) => {
                if let Some(cb) = on_loss {
                    call_back("on_loss", || cb(&r));
                }
            }
        }
    }
}

/// The supervisor's side of the callback thread.
pub(super) struct Callbacks {
    /// `None` when no callback is set.
    pub(super) tx: Option<crossbeam_channel::Sender<Event>>,
    /// `on_stall` is set.
    pub(super) on_stall: bool,
    /// Loss ranges the full queue did not take yet, handed over with the
    /// next ones.
    pub(super) backlog: LossFeed,
}

impl Callbacks {
    /// Queues a stall notice, if `on_stall` is set; dropped (and counted)
    /// when the queue is full.
    pub(super) fn stall(&self, shared: &ShipperCore) {
        if let Some(tx) = self.tx.as_ref().filter(|_| self.on_stall) {
            if tx.try_send(Event::Stall(shared.health())).is_err() {
                shared.counters.callbacks_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues loss ranges; when the queue is full they wait, merged by
    /// cause with later ones (counts exact), so that none is dropped.
    pub(super) fn loss(&mut self, ranges: Vec<LossRange>) {
        let Some(tx) = &self.tx else { return };
        for r in ranges {
            self.backlog.push(r);
        }
        let ranges = self.backlog.take();
        if ranges.is_empty() {
            return;
        }
        if let Err(crossbeam_channel::TrySendError::Full(Event::Loss(r))) = tx.try_send(Event::Loss(ranges)) {
            for x in r {
                self.backlog.push(x);
            }
        }
    }
}
