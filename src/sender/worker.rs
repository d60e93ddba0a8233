//! The worker thread: drives the state machine, owns the transport.

use std::sync::Arc;
use std::time::Instant;

use super::ShipperCore;
use super::machine::{Action, BatchInfo, Machine, Nanos, Outcome, RingMark, SendCounters};
use crate::Error;
use crate::ring::Delivered;
use crate::sync::Woken;
use crate::sync::atomic::Ordering;
use crate::transport::{Batch, CancelToken, Endpoint, SendAnswer, SendContext, SendError, Transport};

/// Runs until stopped, abandoned or the ring closes: the thread around a
/// [`Driver`], which it hands the transport's answers and the wake-ups.
pub(super) fn run(shared: &Arc<ShipperCore>, worker_id: u64) {
    let Some(mut transport) = make_transport(shared, worker_id) else { return };
    let mut d = Driver::new(shared, worker_id);
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
                let ctx = SendContext::until(Instant::now() + shared.cfg.send_timeout, job.cancel.clone());
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
                d.finish_send(shared, &job, &result, ctx.answer());
                if panicked {
                    let Some(t) = make_transport(shared, worker_id) else { return };
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

/// One worker's driver: carries out the [`Machine`]'s reads and acks on
/// the ring inside [`step`](Self::step), and hands waits and sends to the
/// caller, so a thread and the whole-shipper simulation drive the same
/// code. It decides nothing: it reports what happened (a read, a send's
/// answer, a wake-up, a switch, shutdown, abandonment) to the machine.
pub(super) struct Driver {
    worker_id: u64,
    m: Machine,
    /// The batch read.
    held: Option<Batch>,
    /// The refused count the held batch's gap notice reports up to, if it
    /// has a notice.
    notice_refused_count: Option<u64>,
    /// Records of the held batch its endpoint took yet refused
    /// ([`SendContext::refuse`](crate::SendContext::refuse)), and whether
    /// it refused the batch's gap notice too.
    endpoint_refused: u64,
    notice_refused: bool,
    /// Shutdown and abandonment were reported to the machine.
    told_shutdown: bool,
    told_abandoned: bool,
}

impl Driver {
    pub(super) fn new(shared: &ShipperCore, worker_id: u64) -> Self {
        let stats = shared.ring.stats();
        let half_ring = usize::try_from(stats.capacity / 2).unwrap_or(usize::MAX);
        let seed = shared.cfg.seed ^ worker_id;
        let counters = Arc::clone(&shared.counters);
        let m = Machine::new(shared.cfg.machine, stats.ack_seq + 1, shared.generation(), seed, counters)
            .with_evict_guard(half_ring);
        Driver {
            worker_id,
            m,
            held: None,
            notice_refused_count: None,
            endpoint_refused: 0,
            notice_refused: false,
            told_shutdown: false,
            told_abandoned: false,
        }
    }

    /// The batch a [`Step::Send`] asks to send.
    pub(super) fn batch(&self) -> &Batch {
        self.held.as_ref().expect("a send follows a non-empty read")
    }

    /// Reports the shipper's flags to the machine: shutdown, and whether
    /// the supervisor replaced this worker.
    fn report_flags(&mut self, shared: &ShipperCore) {
        if !self.told_shutdown && shared.closing.load(Ordering::Acquire) {
            self.told_shutdown = true;
            self.m.handle_shutdown();
        }
        if !self.told_abandoned && shared.worker_id.load(Ordering::Acquire) != self.worker_id {
            self.told_abandoned = true;
            self.m.handle_abandoned();
        }
    }

    /// Runs the machine until it waits, sends or stops.
    pub(super) fn step(&mut self, shared: &ShipperCore) -> Step {
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return Step::Exit;
            }
            self.report_flags(shared);
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
                    let (generation, endpoint, cancel) = shared.begin_send(self.worker_id);
                    return Step::Send(SendJob { generation, endpoint, cancel });
                }
                Action::Ack { seq, rejected } => match self.ack(shared, seq, rejected) {
                    Ok(()) => shared.note_ack(),
                    Err(Error::Closed) => return Step::Exit,
                    Err(e) => shared.note_error(&e.to_string()),
                },
                Action::Refuse { seq } => match self.refuse(shared, seq) {
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
        matches!(self.m.state(), super::machine::MachineState::Lingering { .. })
    }

    /// Reads the next batch from `from_seq` into the machine. `Err` when
    /// the ring is closed.
    fn read(&mut self, shared: &ShipperCore, from_seq: u64) -> Result<(), Error> {
        match shared.ring.read_delivery(from_seq, self.m.read_limits()) {
            Ok(delivery) => {
                self.held = delivery.batch;
                self.notice_refused_count = self.held.as_ref().and_then(|b| b.gap).map(|_| delivery.refused);
                self.endpoint_refused = 0;
                self.notice_refused = false;
                let mark = RingMark { overwritten: delivery.overwritten, last_seq: delivery.last_seq };
                let info = self.held.as_ref().map(|b| BatchInfo {
                    first_seq: b.first_seq(),
                    last_seq: b.last_seq(),
                    records: b.records.len(),
                    bytes: b.payload_bytes(),
                    notice_rejected: b.gap.map(|_| delivery.rejected),
                });
                self.m.handle_batch(shared.now(), info, mark);
            }
            Err(Error::Closed) => return Err(Error::Closed),
            Err(e) => {
                shared.note_error(&e.to_string());
                self.m.handle_read_failed(shared.now());
            }
        }
        Ok(())
    }

    /// Acks the held batch through `seq`, with the rejections and
    /// refusals its gap notice reported and the records its endpoint
    /// refused, counting its records the ring evicted while it was in
    /// flight: the ring counts them overwritten, yet the receiver has them.
    fn ack(&self, shared: &ShipperCore, seq: u64, rejected: Option<u64>) -> crate::Result<()> {
        let held = self.held.as_ref();
        let first = held.map_or(seq + 1, Batch::first_seq);
        let ts = |r: Option<&crate::BatchRecord>| r.map_or(0, |r| r.timestamp);
        let gap = held.and_then(|b| b.gap);
        let named_from = gap.filter(|g| g.missing() > 0).map(|g| g.first_seq);
        // A refused notice is named again by the next one, from where it
        // started (or, naming no seqs, from the batch's first record, all
        // of them refused with it).
        let delivered = if self.notice_refused && gap.is_some() {
            Delivered {
                refused: self.endpoint_refused,
                refused_ts: held.map_or((0, 0), |b| (ts(b.records.first()), ts(b.records.last()))),
                undelivered_from: Some(named_from.unwrap_or(first)),
                ..Delivered::default()
            }
        } else {
            Delivered {
                rejected,
                refused_reported: self.notice_refused_count,
                refused: self.endpoint_refused,
                refused_ts: held.map_or((0, 0), |b| (ts(b.records.first()), ts(b.records.last()))),
                undelivered_from: None,
                notice_first: named_from,
            }
        };
        let evicted = shared.ring.ack_delivery(seq, first, delivered)?;
        SendCounters::add(&shared.counters.overwritten_after_delivery, evicted);
        Ok(())
    }

    /// Settles the held batch, one record through `seq` that its endpoint
    /// refused for its size, as refused: it is not sent again, and the next
    /// gap notice names its seq and the seqs its own undelivered notice
    /// named.
    fn refuse(&self, shared: &ShipperCore, seq: u64) -> crate::Result<()> {
        let held = self.held.as_ref();
        let first = held.map_or(seq, Batch::first_seq);
        let from = held.and_then(|b| b.gap).filter(|g| g.missing() > 0).map_or(first, |g| g.first_seq);
        let ts = held.and_then(|b| b.records.first()).map_or(0, |r| r.timestamp);
        let delivered = Delivered {
            rejected: None,
            refused_reported: None,
            refused: held.map_or(1, |b| b.records.len() as u64),
            refused_ts: (ts, ts),
            undelivered_from: Some(from),
            notice_first: None,
        };
        shared.ring.ack_delivery(seq, first, delivered)?;
        Ok(())
    }

    /// A wait ended (a wake-up, or its time came).
    pub(super) fn woken(&mut self, shared: &ShipperCore) {
        self.m.handle_switch(shared.generation());
        let s = shared.ring.stats();
        self.m.handle_wake(RingMark { overwritten: s.overwritten, last_seq: s.last_seq });
    }

    /// The transport answered the send of `job`, refusing `refused` of the
    /// batch's records if it took it.
    pub(super) fn finish_send(
        &mut self,
        shared: &ShipperCore,
        job: &SendJob,
        result: &Result<(), SendError>,
        answer: SendAnswer,
    ) {
        let refused = answer.refused;
        shared.end_send(self.worker_id);
        self.report_flags(shared);
        let outcome = match result {
            Ok(()) => {
                // An abandoned worker's late success says nothing of how
                // its replacement's sends go.
                if !self.told_abandoned {
                    shared.note_accepted();
                }
                let records = self.held.as_ref().map_or(0, |b| b.records.len() as u64);
                self.endpoint_refused = refused.min(records);
                self.notice_refused = answer.notice_refused;
                if refused > 0 {
                    // Records the ring will count lost: health says who.
                    shared.note_error(&format!(
                        "{} took a batch of {records} records but refused {} of them; they are counted refused",
                        job.endpoint, self.endpoint_refused
                    ));
                }
                Outcome::Accepted
            }
            Err(e) => {
                // An abandoned worker's failure is old news: its
                // replacement sends the batch again.
                if !self.told_abandoned {
                    shared.note_error(&format!("sending to {}: {e}", job.endpoint));
                }
                Outcome::Failed { kind: e.kind, retry_after: e.retry_after }
            }
        };
        self.m.handle_switch(shared.generation());
        self.m.handle_send_result(shared.now(), job.generation, outcome);
    }
}

/// A transport from the factory (user code). A panic in it is caught and
/// shows in health (`Degraded`, the message as the last error), and the
/// factory is asked again after a backoff (`backoff_initial`, doubling up
/// to `backoff_max`). A factory that blocks holds up this worker only: the
/// supervisor still reports the stall. `None`: stopped or replaced
/// meanwhile, or draining with no transport to drain with.
fn make_transport(shared: &ShipperCore, worker_id: u64) -> Option<Box<dyn Transport>> {
    let cfg = shared.cfg.machine;
    let mut delay = cfg.backoff_initial;
    let gone = || shared.stop.load(Ordering::Acquire) || shared.worker_id.load(Ordering::Acquire) != worker_id;
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
        let until = shared.now().saturating_add(u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX));
        while shared.now() < until {
            if gone() || closing() || shared.wake.wait_timeout(shared.duration_until(until)) == Woken::Closed {
                return None;
            }
        }
        delay = delay.saturating_mul(2).min(cfg.backoff_max);
    }
}
