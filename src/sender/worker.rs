//! The worker thread: drives the state machine, owns the transport.

use std::sync::Arc;
use std::time::Instant;

use super::Shared;
use super::machine::{Action, BatchInfo, Machine, Outcome};
use crate::Error;
use crate::ring::ReadBatch;
use crate::stats::{LossCause, min_known_ts};
use crate::sync::Woken;
use crate::sync::atomic::Ordering;
use crate::transport::{Batch, BatchRecord, GapNotice, SendContext, SendError, Transport};

/// Runs until stopped, abandoned or the ring closes.
pub(super) fn run(shared: &Arc<Shared>, epoch: u64) {
    let Some(mut transport) = make_transport(shared, epoch) else { return };
    let ring = &shared.ring;
    let cfg = shared.cfg.machine;
    let stats = ring.stats();
    let half_ring = usize::try_from(stats.capacity / 2).unwrap_or(usize::MAX);
    let mut m =
        Machine::new(cfg, stats.ack_seq + 1, shared.generation(), shared.cfg.seed ^ epoch).with_evict_guard(half_ring);
    // The batch read, and the ring's rejected count its notice reports up
    // to.
    let mut held: Option<Batch> = None;
    let mut held_rejected = 0;
    let mut counted = m.counters;
    let mut draining = false;
    loop {
        if shared.stop.load(Ordering::Acquire) || shared.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if !draining && shared.closing.load(Ordering::Acquire) {
            draining = true;
            m.on_shutdown();
        }
        let Some(action) = m.poll_action(shared.now()) else {
            debug_assert!(false, "the worker reports every read and send");
            return;
        };
        match action {
            Action::Read { from_seq } => match read_batch(shared, from_seq, m.read_limits()) {
                Ok((batch, rejected)) => {
                    held = batch;
                    held_rejected = rejected;
                    let info = held.as_ref().map(|b| BatchInfo {
                        first_seq: b.first_seq(),
                        last_seq: b.last_seq(),
                        records: b.records.len(),
                        bytes: b.payload_bytes(),
                    });
                    m.on_batch(shared.now(), info);
                }
                Err(Error::Closed) => return,
                Err(e) => {
                    shared.note_error(&e.to_string());
                    m.on_read_failed(shared.now());
                }
            },
            Action::Send => {
                let batch = held.as_ref().expect("a send follows a non-empty read");
                let (generation, endpoint, cancel) = shared.begin_send(epoch);
                let ctx = SendContext { deadline: Instant::now() + shared.cfg.send_timeout, cancel };
                // User code: a panic is a failed send, and the transport,
                // in whatever state the panic left it, is replaced.
                let mut panicked = false;
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| transport.send(&endpoint, batch, &ctx)))
                        .unwrap_or_else(|p| {
                            panicked = true;
                            Err(SendError::retryable(format!("the transport panicked: {}", super::panic_message(&*p))))
                        });
                shared.end_send(epoch);
                if shared.epoch.load(Ordering::Acquire) != epoch {
                    // Abandoned while stuck: what the endpoint accepted
                    // still counts, its rejections included. They are noted
                    // before the ack, so a read that sees the ack sees them.
                    if result.is_ok() {
                        shared.note_gap_delivered(batch, held_rejected);
                        let _ = ring.ack(batch.last_seq());
                    }
                    return;
                }
                let outcome = match &result {
                    Ok(()) => {
                        shared.note_accepted(batch, held_rejected);
                        Outcome::Accepted
                    }
                    Err(e) => {
                        shared.note_error(&format!("sending to {endpoint}: {e}"));
                        Outcome::Failed { kind: e.kind, retry_after: e.retry_after }
                    }
                };
                m.on_switch(shared.generation());
                m.on_send_result(shared.now(), generation, outcome);
                shared.add_counters(&counted, &m.counters);
                counted = m.counters;
                if panicked {
                    let Some(t) = make_transport(shared, epoch) else { return };
                    transport = t;
                }
            }
            Action::Ack { seq } => match ring.ack(seq) {
                Ok(()) => shared.note_ack(),
                Err(Error::Closed) => return,
                Err(e) => shared.note_error(&e.to_string()),
            },
            Action::Wait { until } => {
                let timeout = shared.duration_until(until);
                if shared.wake.wait_timeout(timeout) == Woken::Closed {
                    return;
                }
                m.on_switch(shared.generation());
                m.on_records_available();
            }
            Action::Stop => return,
        }
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
    loop {
        if gone() {
            return None;
        }
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.factory.make())) {
            Ok(t) => return Some(t),
            Err(p) => shared.note_error(&format!("the transport factory panicked: {}", super::panic_message(&*p))),
        }
        if shared.closing.load(Ordering::Acquire) {
            return None;
        }
        // Appends wake this signal too: wait out the whole delay.
        let until = Instant::now() + delay;
        while let Some(left) = until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            if gone() || shared.wake.wait_timeout(left) == Woken::Closed {
                return None;
            }
        }
        delay = delay.saturating_mul(2).min(cfg.backoff_max);
    }
}

/// Reads the next batch from `from_seq`, at most `limits` records and
/// bytes, and returns it with the ring's rejected count its notice
/// reports up to.
///
/// Seqs acked since the cursor was set (the late success of an abandoned
/// worker's send) were delivered: the read starts past them, and the batch
/// past the ack as it stands once the read returns, as an ack made while
/// it ran delivered what it covers too (and let the writer evict those
/// records: no gap). A read whose every record was acked meanwhile reads
/// on: reported empty, it would end a drain with records still pending.
fn read_batch(shared: &Shared, from_seq: u64, limits: (usize, usize)) -> crate::Result<(Option<Batch>, u64)> {
    let ring = &shared.ring;
    let mut from = from_seq;
    loop {
        let before = ring.stats();
        from = from.max(before.ack_seq + 1);
        let rb = ring.read(from, limits.0, limits.1)?;
        let read_any = !rb.records.is_empty();
        // Taken after the read: an ack, or a note of rejections reported,
        // made since (an abandoned send's late success) is not repeated.
        let after = ring.stats();
        let start = from.max(after.ack_seq + 1);
        let unreported = before.rejected.saturating_sub(after.rejected_reported);
        match build_batch(shared, rb, start, unreported) {
            None if read_any => from = start,
            batch => return Ok((batch, before.rejected)),
        }
    }
}

/// Turns a ring read from `cursor` into a batch, with a gap notice when
/// seqs between the cursor and the first record are missing or `rejected`
/// rejections are still to be reported.
///
/// The batch ends before the first seq missing after its first record: the
/// records after such a gap are read again, in the next batch, which opens
/// with the notice for it. Each notice thus covers every seq missing before
/// its batch, and no seq goes missing inside a batch.
fn build_batch(shared: &Shared, rb: ReadBatch, cursor: u64, rejected: u64) -> Option<Batch> {
    // Records below the cursor were read before an ack passed them.
    let mut read = rb.records.into_iter().skip_while(|r| r.seq < cursor).peekable();
    let first = read.peek()?.seq;
    let records: Vec<BatchRecord> = read
        .zip(first..)
        .take_while(|(r, expected)| r.seq == *expected)
        .map(|(r, _)| BatchRecord { seq: r.seq, timestamp: r.timestamp, payload: r.payload })
        .collect();
    let mut gap = None;
    if first > cursor || rejected > 0 {
        let mut notice =
            GapNotice { first_seq: 0, last_seq: 0, first_ts: 0, last_ts: 0, cause: LossCause::Overwritten, rejected };
        if first > cursor {
            notice.first_seq = cursor;
            notice.last_seq = first - 1;
            let overlapping: Vec<_> =
                shared.ring.losses().into_iter().filter(|l| l.last_seq >= cursor && l.first_seq < first).collect();
            notice.first_ts = overlapping.iter().map(|l| l.first_ts).fold(0, min_known_ts);
            notice.last_ts = overlapping.iter().map(|l| l.last_ts).max().unwrap_or(0);
            if let Some(c) = overlapping.first().map(|l| l.cause) {
                notice.cause = if overlapping.iter().all(|l| l.cause == c) { c } else { LossCause::Mixed };
            }
        }
        gap = Some(notice);
    }
    Some(Batch { records, gap })
}
