//! The worker thread: drives the state machine, owns the transport.

use std::sync::Arc;
use std::time::Instant;

use super::Shared;
use super::machine::{Action, BatchInfo, Counters, Machine, Nanos, Outcome};
use crate::Error;
use crate::sync::Woken;
use crate::sync::atomic::Ordering;
use crate::transport::{Batch, CancelToken, Endpoint, SendContext, SendError, Transport};

/// Runs until stopped, abandoned or the ring closes: the thread around a
/// [`Driver`], which it hands the transport's answers and the wake-ups.
pub(super) fn run(shared: &Arc<Shared>, epoch: u64) {
    let Some(mut transport) = make_transport(shared, epoch) else { return };
    let mut d = Driver::new(shared, epoch);
    loop {
        match d.step(shared) {
            Step::Exit => return,
            Step::Wait(until) => {
                if shared.wake.wait_timeout(shared.duration_until(until)) == Woken::Closed {
                    return;
                }
                d.woken(shared);
            }
            Step::Send(job) => {
                let ctx =
                    SendContext { deadline: Instant::now() + shared.cfg.send_timeout, cancel: job.cancel.clone() };
                // User code: a panic is a failed send, and the transport,
                // in whatever state the panic left it, is replaced.
                let mut panicked = false;
                let batch = d.batch();
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    transport.send(&job.endpoint, batch, &ctx)
                }))
                .unwrap_or_else(|p| {
                    panicked = true;
                    Err(SendError::retryable(format!("the transport panicked: {}", super::panic_message(&*p))))
                });
                if !d.finish_send(shared, &job, &result) {
                    return;
                }
                if panicked {
                    let Some(t) = make_transport(shared, epoch) else { return };
                    transport = t;
                }
            }
        }
    }
}

/// What a [`Driver`] needs from the thread (or simulation) running it.
pub(super) enum Step {
    /// Wait until this time (the shipper's clock), or a wake-up, then call
    /// [`Driver::woken`].
    Wait(Nanos),
    /// Send the held batch ([`Driver::batch`]) to the job's endpoint, then
    /// call [`Driver::finish_send`] with the transport's answer.
    Send(SendJob),
    /// Stopped, replaced, or the ring closed: the worker ends.
    Exit,
}

/// A send to make: the endpoint as registered for it, and the token a
/// switch or an abandonment fires.
pub(super) struct SendJob {
    pub(super) generation: u64,
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) cancel: CancelToken,
}

/// One worker's protocol: the sans-IO [`Machine`] plus what it reads from
/// and acks in the ring. Reads and acks are carried out inside
/// [`step`](Self::step); waits and sends are handed to the caller, so a
/// thread and the whole-shipper simulation drive the same code.
pub(super) struct Driver {
    epoch: u64,
    m: Machine,
    /// The batch read, and the ring's rejected count its notice reports
    /// up to.
    held: Option<Batch>,
    held_rejected: u64,
    /// Set once the held batch's gap notice was delivered: the rejections
    /// its ack notes as reported.
    report_rejected: Option<u64>,
    counted: Counters,
    draining: bool,
    /// The ring's overwritten count at the last read: when it grows while
    /// a batch lingers, the batch is read again.
    overwritten_at_read: u64,
    /// The ring's last seq at the last read.
    last_seq_at_read: u64,
}

impl Driver {
    pub(super) fn new(shared: &Shared, epoch: u64) -> Self {
        let stats = shared.ring.stats();
        let half_ring = usize::try_from(stats.capacity / 2).unwrap_or(usize::MAX);
        let m = Machine::new(shared.cfg.machine, stats.ack_seq + 1, shared.generation(), shared.cfg.seed ^ epoch)
            .with_evict_guard(half_ring);
        Driver {
            epoch,
            counted: m.counters,
            m,
            held: None,
            held_rejected: 0,
            report_rejected: None,
            draining: false,
            overwritten_at_read: stats.overwritten,
            last_seq_at_read: stats.last_seq,
        }
    }

    /// The batch a [`Step::Send`] asks to send.
    pub(super) fn batch(&self) -> &Batch {
        self.held.as_ref().expect("a send follows a non-empty read")
    }

    /// Runs the machine until it waits, sends or stops.
    pub(super) fn step(&mut self, shared: &Shared) -> Step {
        loop {
            if shared.stop.load(Ordering::Acquire) || shared.epoch.load(Ordering::Acquire) != self.epoch {
                return Step::Exit;
            }
            if !self.draining && shared.closing.load(Ordering::Acquire) {
                self.draining = true;
                self.m.on_shutdown();
            }
            let Some(action) = self.m.poll_action(shared.now()) else {
                debug_assert!(false, "the worker reports every read and send");
                return Step::Exit;
            };
            match action {
                Action::Read { from_seq } => {
                    if self.read(shared, from_seq).is_err() {
                        return Step::Exit;
                    }
                }
                Action::Send => {
                    let (generation, endpoint, cancel) = shared.begin_send(self.epoch);
                    return Step::Send(SendJob { generation, endpoint, cancel });
                }
                Action::Ack { seq } => match self.ack(shared, seq) {
                    Ok(()) => shared.note_ack(),
                    Err(Error::Closed) => return Step::Exit,
                    Err(e) => shared.note_error(&e.to_string()),
                },
                Action::Wait { until } => return Step::Wait(until),
                Action::Stop => return Step::Exit,
            }
        }
    }

    /// Whether the machine holds a partial batch back, waiting for more.
    #[cfg(test)]
    pub(super) fn lingering(&self) -> bool {
        self.lingering_now()
    }

    /// Reads the next batch from `from_seq` into the machine. `Err` when
    /// the ring is closed.
    fn read(&mut self, shared: &Shared, from_seq: u64) -> Result<(), Error> {
        match shared.ring.read_delivery(from_seq, self.m.read_limits()) {
            Ok(delivery) => {
                self.held = delivery.batch;
                self.held_rejected = delivery.rejected;
                self.report_rejected = None;
                let before = delivery.before;
                (self.overwritten_at_read, self.last_seq_at_read) = (before.overwritten, before.last_seq);
                let info = self.held.as_ref().map(|b| BatchInfo {
                    first_seq: b.first_seq(),
                    last_seq: b.last_seq(),
                    records: b.records.len(),
                    bytes: b.payload_bytes(),
                });
                self.m.on_batch(shared.now(), info);
            }
            Err(Error::Closed) => return Err(Error::Closed),
            Err(e) => {
                shared.note_error(&e.to_string());
                self.m.on_read_failed(shared.now());
            }
        }
        Ok(())
    }

    /// Acks the held batch through `seq`, with the rejections its gap
    /// notice reported, counting its records the ring evicted while it was
    /// in flight: the ring counts them overwritten, yet the receiver has
    /// them.
    fn ack(&self, shared: &Shared, seq: u64) -> crate::Result<()> {
        let first = self.held.as_ref().map_or(seq + 1, Batch::first_seq);
        let evicted = shared.ring.ack_delivery(seq, first, self.report_rejected)?;
        shared.counters.overwritten_after_delivery.fetch_add(evicted, Ordering::Relaxed);
        Ok(())
    }

    /// A wait ended (a wake-up, or its time came).
    pub(super) fn woken(&mut self, shared: &Shared) {
        self.m.on_switch(shared.generation());
        self.m.on_records_available();
        if let Some(held) = self.held.as_ref().filter(|_| self.lingering_now()) {
            // Read the lingering batch again only when that changes
            // something: not at every append, which would read it over
            // and over as it fills.
            let s = shared.ring.stats();
            // A batch that ended before the ring's last record (at a gap,
            // or the bytes limit) does not grow by reading it again.
            let fills = held.last_seq() >= self.last_seq_at_read
                && s.last_seq.saturating_sub(held.first_seq()) >= self.m.batch_records_limit() as u64;
            if s.overwritten > self.overwritten_at_read || fills {
                self.m.on_batch_outdated();
            }
        }
    }

    fn lingering_now(&self) -> bool {
        matches!(self.m.state(), super::machine::State::Lingering { .. })
    }

    /// The transport answered the send of `job`. Returns `false` when this
    /// worker was abandoned meanwhile and ends.
    pub(super) fn finish_send(&mut self, shared: &Shared, job: &SendJob, result: &Result<(), SendError>) -> bool {
        let batch = self.held.as_ref().expect("a send follows a non-empty read");
        shared.end_send(self.epoch);
        if shared.epoch.load(Ordering::Acquire) != self.epoch {
            // Abandoned while stuck: what the endpoint accepted still
            // counts, its rejections included (noted with the ack, so a
            // read that sees the ack sees them).
            if result.is_ok() {
                shared.note_accepted(batch);
                self.report_rejected = batch.gap.as_ref().map(|_| self.held_rejected);
                let _ = self.ack(shared, batch.last_seq());
            }
            return false;
        }
        let outcome = match result {
            Ok(()) => {
                shared.note_accepted(batch);
                self.report_rejected = batch.gap.as_ref().map(|_| self.held_rejected);
                Outcome::Accepted
            }
            Err(e) => {
                shared.note_error(&format!("sending to {}: {e}", job.endpoint));
                Outcome::Failed { kind: e.kind, retry_after: e.retry_after }
            }
        };
        self.m.on_switch(shared.generation());
        self.m.on_send_result(shared.now(), job.generation, outcome);
        shared.add_counters(&self.counted, &self.m.counters);
        self.counted = self.m.counters;
        true
    }
}

/// A transport from the factory (user code). A panic in it is caught and
/// shows in health (`Degraded`, the message as the last error), and the
/// factory is asked again after a backoff (`backoff_initial`, doubling up
/// to `backoff_max`). A factory that blocks holds up this worker only: the
/// supervisor still reports the stall. `None`: stopped or replaced
/// meanwhile, or draining with no transport to drain with.
fn make_transport(shared: &Shared, epoch: u64) -> Option<Box<dyn Transport>> {
    let cfg = shared.cfg.machine;
    let mut delay = cfg.backoff_initial;
    let gone = || shared.stop.load(Ordering::Acquire) || shared.epoch.load(Ordering::Acquire) != epoch;
    // Shutting down with no transport: nothing can be drained.
    let closing = || shared.closing.load(Ordering::Acquire);
    loop {
        if gone() {
            return None;
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.factory.make())) {
            Ok(Ok(t)) => return Some(t),
            Ok(Err(e)) => shared.note_error(&format!("the transport factory failed: {e}")),
            Err(p) => shared.note_error(&format!("the transport factory panicked: {}", super::panic_message(&*p))),
        }
        if closing() {
            return None;
        }
        // Appends wake this signal too: wait out the whole delay.
        let until = Instant::now() + delay;
        while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            if gone() || closing() || shared.wake.wait_timeout(left) == Woken::Closed {
                return None;
            }
        }
        delay = delay.saturating_mul(2).min(cfg.backoff_max);
    }
}
