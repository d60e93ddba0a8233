use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;

const MS: Nanos = 1_000_000;

fn cfg() -> MachineConfig {
    MachineConfig {
        max_batch_records: 10,
        max_batch_bytes: 1000,
        linger: Duration::from_millis(20),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
    }
}

fn batch(first: u64, last: u64) -> BatchInfo {
    BatchInfo {
        first_seq: first,
        last_seq: last,
        records: (last - first + 1) as usize,
        bytes: 10,
        notice_rejected: None,
    }
}

/// A machine that has read a full batch 1..=10 and is sending it.
fn sending() -> Machine {
    let mut m = Machine::new(cfg(), 1, 1, 42, Arc::default());
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 1 }));
    m.handle_batch(0, Some(batch(1, 10)), RingMark::default());
    assert_eq!(m.poll_action(0), Some(Action::Send));
    m
}

#[test]
fn starts_by_reading_from_the_cursor() {
    let mut m = Machine::new(cfg(), 7, 1, 1, Arc::default());
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 7 }));
    assert_eq!(m.state(), MachineState::Reading);
    assert_eq!(m.poll_action(0), None, "nothing until the read is reported");
}

#[test]
fn empty_read_idles_then_reads_again_after_the_safety_recheck() {
    let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default());
    m.poll_action(0);
    m.handle_batch(0, None, RingMark::default());
    let recheck = nanos(IDLE_RECHECK);
    assert_eq!(m.poll_action(10 * MS), Some(Action::Wait { until: recheck }));
    assert_eq!(m.poll_timeout(), Some(recheck));
    assert_eq!(m.poll_action(recheck), Some(Action::Read { from_seq: 1 }));
}

#[test]
fn records_available_wakes_an_idle_machine() {
    let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default());
    m.poll_action(0);
    m.handle_batch(0, None, RingMark::default());
    m.handle_wake(RingMark::default());
    assert_eq!(m.poll_action(1), Some(Action::Read { from_seq: 1 }));
}

#[test]
fn full_batch_is_sent_at_once() {
    let m = sending();
    assert_eq!(m.state(), MachineState::Sending { generation: 1 });
}

#[test]
fn partial_batch_lingers_then_is_sent() {
    let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default());
    m.poll_action(0);
    m.handle_batch(0, Some(batch(1, 3)), RingMark::default());
    assert_eq!(m.poll_action(5 * MS), Some(Action::Wait { until: 20 * MS }));
    // Re-read after the linger: the batch grew but is still partial;
    // the linger clock runs from the first read at this cursor, so it
    // goes now.
    assert_eq!(m.poll_action(20 * MS), Some(Action::Read { from_seq: 1 }));
    m.handle_batch(20 * MS, Some(batch(1, 5)), RingMark::default());
    assert_eq!(m.poll_action(20 * MS), Some(Action::Send));
}

/// A small ring overflowing while a batch lingers: each re-read starts
/// at a later seq (the oldest were evicted). The linger clock keeps
/// running from the first read, and a batch past evicted records goes
/// at once, so shipping never starves under eviction pressure.
#[test]
fn a_batch_whose_records_are_being_evicted_is_not_lingered_on() {
    let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default());
    m.poll_action(0);
    m.handle_batch(0, Some(batch(1, 3)), RingMark::default());
    assert_eq!(m.poll_action(5 * MS), Some(Action::Wait { until: 20 * MS }));
    m.handle_wake(RingMark { overwritten: 0, last_seq: 4 });
    assert_eq!(m.poll_action(6 * MS), Some(Action::Wait { until: 20 * MS }), "appends alone: linger on");
    m.handle_wake(RingMark { overwritten: 2, last_seq: 5 });
    assert_eq!(m.poll_action(7 * MS), Some(Action::Read { from_seq: 1 }), "evictions: read again at once");
    // Seqs 1 and 2 were evicted meanwhile.
    m.handle_batch(7 * MS, Some(batch(3, 5)), RingMark::default());
    assert_eq!(m.poll_action(7 * MS), Some(Action::Send), "records before the batch are being evicted");
    // The same without eviction: the clock started at the first read.
    let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default());
    m.poll_action(0);
    m.handle_batch(0, Some(batch(1, 3)), RingMark::default());
    m.poll_action(20 * MS);
    m.handle_batch(20 * MS, Some(batch(1, 4)), RingMark::default());
    assert_eq!(m.poll_action(20 * MS), Some(Action::Send));
}

/// A batch taking half the ring goes at once: more appends would evict it.
#[test]
fn a_batch_taking_half_the_ring_is_not_lingered_on() {
    let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default()).with_evict_guard(200);
    m.poll_action(0);
    m.handle_batch(
        0,
        Some(BatchInfo { first_seq: 1, last_seq: 2, records: 2, bytes: 30, notice_rejected: None }),
        RingMark::default(),
    );
    assert!(matches!(m.poll_action(0), Some(Action::Wait { .. })), "30 bytes and 2 headers: below the guard");
    let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default()).with_evict_guard(200);
    m.poll_action(0);
    m.handle_batch(
        0,
        Some(BatchInfo { first_seq: 1, last_seq: 3, records: 3, bytes: 100, notice_rejected: None }),
        RingMark::default(),
    );
    assert_eq!(m.poll_action(0), Some(Action::Send), "100 bytes and 3 frame headers reach the guard");
}

#[test]
fn batch_full_by_bytes_is_sent_at_once() {
    let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default());
    m.poll_action(0);
    m.handle_batch(
        0,
        Some(BatchInfo { first_seq: 1, last_seq: 2, records: 2, bytes: 5000, notice_rejected: None }),
        RingMark::default(),
    );
    assert_eq!(m.poll_action(0), Some(Action::Send));
}

#[test]
fn accepted_send_acks_and_moves_the_cursor() {
    let mut m = sending();
    m.handle_send_result(MS, 1, Outcome::Accepted);
    assert_eq!(m.poll_action(MS), Some(Action::Ack { seq: 10, rejected: None }));
    assert_eq!(m.poll_action(MS), Some(Action::Read { from_seq: 11 }));
    assert_eq!(
        (m.counters.batches_sent.load(Ordering::Relaxed), m.counters.records_sent.load(Ordering::Relaxed)),
        (1, 10)
    );
}

#[test]
fn retryable_failure_backs_off_exponentially_with_a_cap() {
    let mut m = sending();
    let mut now = 0;
    let mut delays = Vec::new();
    for _ in 0..8 {
        m.handle_send_result(now, 1, Outcome::Failed { kind: SendErrorKind::Retryable, retry_after: None });
        let MachineState::Backoff { until } = m.state() else { panic!("{:?}", m.state()) };
        delays.push(until - now);
        now = until;
        assert_eq!(m.poll_action(now), Some(Action::Read { from_seq: 1 }), "retries re-read from the cursor");
        m.handle_batch(now, Some(batch(1, 3)), RingMark::default());
        assert_eq!(m.poll_action(now), Some(Action::Send), "a retry does not linger");
    }
    // Equal jitter: attempt n waits between half and all of min(100ms * 2^(n-1), 2s).
    for (i, d) in delays.iter().enumerate() {
        let step = ((100 * MS) << i).min(2_000 * MS);
        assert!((step / 2..=step).contains(d), "attempt {}: {d} not in [{}, {step}]", i + 1, step / 2);
    }
    assert!(delays[7] <= 2_000 * MS);
    assert_eq!(m.counters.retries.load(Ordering::Relaxed), 8);
    assert_eq!(m.cursor(), 1, "nothing acked that was not accepted");
}

#[test]
fn retry_after_is_honoured_up_to_a_limit() {
    let mut m = sending();
    let ask = Duration::from_secs(7);
    m.handle_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Retryable, retry_after: Some(ask) });
    assert_eq!(m.state(), MachineState::Backoff { until: nanos(ask) });
    let mut m = sending();
    let huge = Duration::from_secs(100_000);
    m.handle_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Retryable, retry_after: Some(huge) });
    assert_eq!(m.state(), MachineState::Backoff { until: nanos(MAX_RETRY_AFTER) });
}

#[test]
fn permanent_failure_waits_the_longest_backoff_and_keeps_the_batch() {
    let mut m = sending();
    m.handle_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Permanent, retry_after: None });
    assert_eq!(m.state(), MachineState::Backoff { until: 2_000 * MS });
    assert_eq!(m.counters.permanent_failures.load(Ordering::Relaxed), 1);
    assert_eq!(m.cursor(), 1);
}

/// A batch refused for its size is read again at once, half as large
/// (records and bytes), sent without lingering, and later batches keep
/// to that size until full batches pass (see the next test) or the
/// endpoint changes. A single record refused so would be refused again:
/// it is settled as refused, and shipping goes on past it.
#[test]
fn a_batch_too_large_is_halved_at_once_until_one_record_is_left() {
    let too_large = Outcome::Failed { kind: SendErrorKind::TooLarge, retry_after: None };
    let mut m = sending();
    assert_eq!(m.read_limits(), (10, 1000));
    m.handle_send_result(0, 1, too_large);
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 1 }), "at once, no backoff");
    assert_eq!(m.read_limits(), (5, 5));
    m.handle_batch(
        0,
        Some(BatchInfo { first_seq: 1, last_seq: 5, records: 5, bytes: 5, notice_rejected: None }),
        RingMark::default(),
    );
    assert_eq!(m.poll_action(0), Some(Action::Send), "a halved batch is full: no linger");
    m.handle_send_result(0, 1, Outcome::Accepted);
    assert_eq!(m.poll_action(0), Some(Action::Ack { seq: 5, rejected: None }));
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 6 }));
    assert_eq!(m.read_limits(), (5, 5), "one accepted batch does not grow them");
    // Down to one record: then refused. A read may pass its byte limit
    // by one record: the limits never grow for it.
    m.handle_batch(
        0,
        Some(BatchInfo { first_seq: 6, last_seq: 7, records: 2, bytes: 400, notice_rejected: None }),
        RingMark::default(),
    );
    assert_eq!(m.poll_action(0), Some(Action::Send));
    m.handle_send_result(0, 1, too_large);
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 6 }));
    assert_eq!(m.read_limits(), (1, 5));
    m.handle_batch(
        0,
        Some(BatchInfo { first_seq: 6, last_seq: 6, records: 1, bytes: 300, notice_rejected: None }),
        RingMark::default(),
    );
    assert_eq!(m.poll_action(0), Some(Action::Send));
    m.handle_send_result(0, 1, too_large);
    assert_eq!(m.poll_action(0), Some(Action::Refuse { seq: 6 }), "no backoff, no retry");
    assert_eq!(
        (
            m.counters.permanent_failures.load(Ordering::Relaxed),
            m.counters.failures.load(Ordering::Relaxed),
            m.cursor()
        ),
        (1, 3, 7)
    );
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 7 }));
    // Another endpoint may take whole batches again.
    m.handle_switch(2);
    assert_eq!(m.read_limits(), (10, 1000));
    // A single record refused for its size by an endpoint switched away
    // from goes to the new one.
    let one = BatchInfo { first_seq: 7, last_seq: 7, records: 1, bytes: 300, notice_rejected: None };
    m.handle_batch(0, Some(one), RingMark::default());
    // It lingers, is read again, and goes.
    assert_eq!(m.poll_action(20 * MS), Some(Action::Read { from_seq: 7 }));
    m.handle_batch(20 * MS, Some(one), RingMark::default());
    assert_eq!(m.poll_action(20 * MS), Some(Action::Send));
    m.handle_switch(3);
    m.handle_send_result(20 * MS, 2, too_large);
    assert_eq!(m.poll_action(20 * MS), Some(Action::Read { from_seq: 7 }), "sent again, to the new endpoint");
}

/// Reads a batch from `from` as full as the read limits allow, and
/// sends it with `outcome`; returns the seq after it.
fn send_full_batch(m: &mut Machine, from: u64, outcome: Outcome) -> u64 {
    let (records, bytes) = m.read_limits();
    let last = from + records as u64 - 1;
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: from }));
    m.handle_batch(
        0,
        Some(BatchInfo { first_seq: from, last_seq: last, records, bytes, notice_rejected: None }),
        RingMark::default(),
    );
    assert_eq!(m.poll_action(0), Some(Action::Send));
    m.handle_send_result(0, 1, outcome);
    if outcome == Outcome::Accepted {
        assert_eq!(m.poll_action(0), Some(Action::Ack { seq: last, rejected: None }));
    }
    last + 1
}

/// Limits halved for size double back, up to the configured ones,
/// once `GROW_AFTER` full batches in a row pass: one record too large
/// for a receiver's limit, or a limit raised since, must not keep
/// batches small for good. Against a limit that is real, each refusal
/// of grown limits doubles the streak needed before the next probe; a
/// growth that holds halves it back.
#[test]
fn halved_limits_grow_back_as_full_batches_pass() {
    let too_large = Outcome::Failed { kind: SendErrorKind::TooLarge, retry_after: None };
    let mut m = Machine::new(cfg(), 1, 1, 42, Arc::default());
    // Refused three times: (10, 1000) -> (5, 500) -> (2, 250) -> (1, 125).
    for _ in 0..3 {
        send_full_batch(&mut m, 1, too_large);
    }
    assert_eq!(m.read_limits(), (1, 125));
    let mut next = send_full_batch(&mut m, 1, Outcome::Accepted);
    assert_eq!(m.read_limits(), (1, 125), "one accepted batch does not grow them");
    next = send_full_batch(&mut m, next, Outcome::Accepted);
    assert_eq!(m.read_limits(), (2, 250), "doubled after two full batches");
    // A batch short of the limits (it lingered) says nothing of them.
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: next }));
    m.handle_batch(
        0,
        Some(BatchInfo { first_seq: next, last_seq: next, records: 1, bytes: 10, notice_rejected: None }),
        RingMark::default(),
    );
    assert_eq!(m.poll_action(0), Some(Action::Wait { until: 20 * MS }));
    assert_eq!(m.poll_action(20 * MS), Some(Action::Read { from_seq: next }));
    m.handle_batch(
        20 * MS,
        Some(BatchInfo { first_seq: next, last_seq: next, records: 1, bytes: 10, notice_rejected: None }),
        RingMark::default(),
    );
    assert_eq!(m.poll_action(20 * MS), Some(Action::Send));
    m.handle_send_result(20 * MS, 1, Outcome::Accepted);
    assert_eq!(m.poll_action(20 * MS), Some(Action::Ack { seq: next, rejected: None }));
    next = send_full_batch(&mut m, next + 1, Outcome::Accepted);
    assert_eq!(m.read_limits(), (2, 250), "the short batch did not count");
    next = send_full_batch(&mut m, next, Outcome::Accepted);
    assert_eq!(m.read_limits(), (4, 500));
    for _ in 0..2 {
        next = send_full_batch(&mut m, next, Outcome::Accepted);
    }
    assert_eq!(m.read_limits(), (8, 1000));
    for _ in 0..4 {
        next = send_full_batch(&mut m, next, Outcome::Accepted);
    }
    assert_eq!(m.read_limits(), (10, 1000), "up to the configured limits, no further");

    // A real limit: grown batches are refused again, and each such
    // refusal doubles the streak before the next probe.
    send_full_batch(&mut m, next, too_large);
    assert_eq!(m.read_limits(), (5, 500));
    for streak in [2, 4, 8] {
        for _ in 0..streak {
            assert_eq!(m.read_limits(), (5, 500), "grew before {streak} full batches passed");
            next = send_full_batch(&mut m, next, Outcome::Accepted);
        }
        assert_eq!(m.read_limits(), (10, 1000), "probes after {streak}");
        send_full_batch(&mut m, next, too_large);
    }
    // Any other failure breaks the streak (now 16): 15, a retry, 1.
    for _ in 0..15 {
        next = send_full_batch(&mut m, next, Outcome::Accepted);
    }
    let retry = Outcome::Failed { kind: SendErrorKind::Retryable, retry_after: None };
    send_full_batch(&mut m, next, retry);
    let MachineState::Backoff { until } = m.state() else { panic!("{:?}", m.state()) };
    assert_eq!(m.poll_action(until), Some(Action::Read { from_seq: next }));
    m.handle_batch(
        until,
        Some(BatchInfo { first_seq: next, last_seq: next + 4, records: 5, bytes: 500, notice_rejected: None }),
        RingMark::default(),
    );
    assert_eq!(m.poll_action(until), Some(Action::Send));
    m.handle_send_result(until, 1, Outcome::Accepted);
    assert_eq!(m.poll_action(until), Some(Action::Ack { seq: next + 4, rejected: None }));
    next += 5;
    assert_eq!(m.read_limits(), (5, 500), "15 and 1 are not 16 in a row");
    // 15 more: a probe, which holds; once it has held for 16 batches,
    // the next probe comes after 8.
    for _ in 0..15 {
        next = send_full_batch(&mut m, next, Outcome::Accepted);
    }
    assert_eq!(m.read_limits(), (10, 1000));
    for _ in 0..16 {
        next = send_full_batch(&mut m, next, Outcome::Accepted);
    }
    send_full_batch(&mut m, next, too_large);
    for _ in 0..7 {
        next = send_full_batch(&mut m, next, Outcome::Accepted);
    }
    assert_eq!(m.read_limits(), (5, 500));
    send_full_batch(&mut m, next, Outcome::Accepted);
    assert_eq!(m.read_limits(), (10, 1000), "probes after 8 again");
    // A switch starts over: the configured limits, GROW_AFTER.
    m.handle_switch(2);
    assert_eq!((m.read_limits(), m.grow_after, m.streak), ((10, 1000), GROW_AFTER, 0));
}

#[test]
fn failure_for_an_old_generation_retries_at_once_to_the_new_endpoint() {
    let mut m = sending();
    m.handle_switch(2);
    m.handle_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Cancelled, retry_after: None });
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 1 }));
    m.handle_batch(0, Some(batch(1, 2)), RingMark::default());
    assert_eq!(m.poll_action(0), Some(Action::Send));
    assert_eq!(m.state(), MachineState::Sending { generation: 2 });
    assert_eq!(m.counters.cancelled.load(Ordering::Relaxed), 1);
}

#[test]
fn success_for_an_old_generation_still_counts() {
    let mut m = sending();
    m.handle_switch(5);
    m.handle_send_result(0, 1, Outcome::Accepted);
    assert_eq!(m.poll_action(0), Some(Action::Ack { seq: 10, rejected: None }));
    assert_eq!(m.cursor(), 11);
}

#[test]
fn switch_cuts_a_backoff_short() {
    let mut m = sending();
    m.handle_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Permanent, retry_after: None });
    m.handle_switch(2);
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 1 }));
}

#[test]
fn stale_or_repeated_switches_change_nothing() {
    let mut m = sending();
    m.handle_switch(1);
    m.handle_switch(0);
    m.handle_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Retryable, retry_after: None });
    assert!(matches!(m.state(), MachineState::Backoff { .. }), "same generation: back off");
}

#[test]
fn shutdown_flushes_a_lingering_batch_and_stops_when_empty() {
    let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default());
    m.poll_action(0);
    m.handle_batch(0, Some(batch(1, 2)), RingMark::default());
    m.handle_shutdown();
    assert_eq!(m.poll_action(0), Some(Action::Send));
    m.handle_send_result(0, 1, Outcome::Accepted);
    assert_eq!(m.poll_action(0), Some(Action::Ack { seq: 2, rejected: None }));
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 3 }));
    m.handle_batch(0, None, RingMark::default());
    assert_eq!(m.poll_action(0), Some(Action::Stop));
}

/// An idle machine reads once more before it stops: a record appended
/// after its last (empty) read, before intake stopped, is shipped, not
/// left pending while the shutdown waits out its whole deadline.
#[test]
fn shutdown_of_an_idle_machine_reads_once_more_then_stops() {
    let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default());
    m.poll_action(0);
    m.handle_batch(0, None, RingMark::default());
    m.handle_shutdown();
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 1 }));
    m.handle_batch(0, Some(batch(1, 1)), RingMark::default());
    assert_eq!(m.poll_action(0), Some(Action::Send));
    m.handle_send_result(0, 1, Outcome::Accepted);
    assert_eq!(m.poll_action(0), Some(Action::Ack { seq: 1, rejected: None }));
    assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 2 }));
    m.handle_batch(0, None, RingMark::default());
    assert_eq!(m.poll_action(0), Some(Action::Stop));
}

#[test]
fn cancelled_send_during_shutdown_stops() {
    let mut m = sending();
    m.handle_shutdown();
    m.handle_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Cancelled, retry_after: None });
    assert_eq!(m.poll_action(0), Some(Action::Stop));
}

#[test]
fn read_failure_backs_off_then_reads_again() {
    let mut m = Machine::new(cfg(), 3, 1, 1, Arc::default());
    m.poll_action(0);
    m.handle_read_failed(0);
    let MachineState::Backoff { until } = m.state() else { panic!() };
    assert!((50 * MS..=100 * MS).contains(&until));
    assert_eq!(m.poll_action(until), Some(Action::Read { from_seq: 3 }));
}

/// The ack of a batch that opened with a gap notice records the
/// rejections the notice reported; other acks record none.
#[test]
fn an_ack_carries_the_rejections_its_notice_reported() {
    let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default());
    m.poll_action(0);
    let noticed = BatchInfo { notice_rejected: Some(3), ..batch(1, 10) };
    m.handle_batch(0, Some(noticed), RingMark::default());
    assert_eq!(m.poll_action(0), Some(Action::Send));
    m.handle_send_result(MS, 1, Outcome::Failed { kind: SendErrorKind::Retryable, retry_after: None });
    assert_eq!(m.counters.gap_notices.load(Ordering::Relaxed), 0, "not delivered yet");
    let until = match m.poll_action(MS) {
        Some(Action::Wait { until }) => until,
        other => panic!("{other:?}"),
    };
    assert_eq!(m.poll_action(until), Some(Action::Read { from_seq: 1 }));
    m.handle_batch(until, Some(BatchInfo { notice_rejected: Some(4), ..batch(1, 10) }), RingMark::default());
    assert_eq!(m.poll_action(until), Some(Action::Send));
    m.handle_send_result(until, 1, Outcome::Accepted);
    assert_eq!(m.poll_action(until), Some(Action::Ack { seq: 10, rejected: Some(4) }));
    assert_eq!(m.counters.gap_notices.load(Ordering::Relaxed), 1);
    m.poll_action(until);
    m.handle_batch(until, Some(batch(11, 20)), RingMark::default());
    m.poll_action(until);
    m.handle_send_result(until, 1, Outcome::Accepted);
    assert_eq!(m.poll_action(until), Some(Action::Ack { seq: 20, rejected: None }));
}

/// A worker the supervisor replaced acks what its late send got accepted,
/// then stops; a failed late send, or one abandoned between sends, stops
/// at once and counts nothing as failed.
#[test]
fn an_abandoned_machine_acks_a_late_success_then_stops() {
    for accepted in [true, false] {
        let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default());
        m.poll_action(0);
        m.handle_batch(0, Some(batch(1, 10)), RingMark::default());
        assert_eq!(m.poll_action(0), Some(Action::Send));
        m.handle_abandoned();
        assert_eq!(m.poll_action(0), None, "the send is still out");
        let outcome = if accepted {
            Outcome::Accepted
        } else {
            Outcome::Failed { kind: SendErrorKind::Retryable, retry_after: None }
        };
        m.handle_send_result(MS, 1, outcome);
        if accepted {
            assert_eq!(m.poll_action(MS), Some(Action::Ack { seq: 10, rejected: None }));
        }
        assert_eq!(m.poll_action(MS), Some(Action::Stop), "accepted: {accepted}");
        assert_eq!(m.counters.failures.load(Ordering::Relaxed), 0);
    }
    let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default());
    m.poll_action(0);
    m.handle_batch(0, None, RingMark::default());
    m.handle_abandoned();
    assert_eq!(m.poll_action(0), Some(Action::Stop));
}

/// A lingering batch is read again when the ring evicted records since
/// its read, or when enough were appended to fill it; appends that do not
/// fill it leave it lingering.
#[test]
fn a_lingering_batch_is_outdated_by_evictions_or_by_filling() {
    let read_at = RingMark { overwritten: 5, last_seq: 3 };
    let lingering = || {
        let mut m = Machine::new(cfg(), 1, 1, 1, Arc::default());
        m.poll_action(0);
        m.handle_batch(0, Some(batch(1, 3)), read_at);
        assert_eq!(m.poll_action(MS), Some(Action::Wait { until: 20 * MS }));
        m
    };
    let cases = [
        (RingMark { overwritten: 5, last_seq: 9 }, false, "appends short of a full batch"),
        (RingMark { overwritten: 5, last_seq: 11 }, true, "appends that fill it"),
        (RingMark { overwritten: 6, last_seq: 3 }, true, "an eviction"),
    ];
    for (now, reread, what) in cases {
        let mut m = lingering();
        m.handle_wake(now);
        let expected = if reread { Action::Read { from_seq: 1 } } else { Action::Wait { until: 20 * MS } };
        assert_eq!(m.poll_action(2 * MS), Some(expected), "{what}");
    }
}
