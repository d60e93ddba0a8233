//! The sender's protocol core: a deterministic state machine with no
//! threads, clocks or I/O inside (sans-IO).
//!
//! The worker thread drives it:
//!
//! 1. call [`Machine::poll_action`] with the current time and carry the
//!    action out;
//! 2. report what happened with the matching `on_*` method (`on_batch` after
//!    a `Read`, `on_send_result` after a `Send`);
//! 3. on `Wait`, sleep until the deadline or an event (records appended,
//!    endpoint switched, shutdown) and report the event.
//!
//! States and transitions are drawn in docs/SENDER.md.

use std::time::Duration;

use crate::transport::SendErrorKind;

/// Instants as the machine sees them: any monotonic clock, in nanoseconds.
/// Tests jump it; the worker feeds it from `Instant`.
pub(crate) type Nanos = u64;

fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Longest `Retry-After` honoured; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Full batches accepted in a row before read limits halved for size
/// double back (at first: see `Machine::grow_after`).
const GROW_AFTER: u32 = 2;
/// Most full batches accepted in a row needed before the limits grow.
const MAX_GROW_AFTER: u32 = 1024;

/// How long an idle worker waits before it reads again with no wake-up: a
/// safety net only, since every append wakes it.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// Batching and retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MachineConfig {
    pub(crate) max_batch_records: usize,
    pub(crate) max_batch_bytes: usize,
    pub(crate) linger: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
}

/// What the worker should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Read a batch from the ring starting at `from_seq`; report it with
    /// [`Machine::on_batch`] or [`Machine::on_read_failed`].
    Read { from_seq: u64 },
    /// Send the batch last reported to the current endpoint; report with
    /// [`Machine::on_send_result`].
    Send,
    /// Acknowledge the ring up to `seq`.
    Ack { seq: u64 },
    /// Nothing to do before `until` unless an event arrives.
    Wait { until: Nanos },
    /// The machine has stopped.
    Stop,
}

/// The machine's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    NeedRead,
    Reading,
    Idle { until: Nanos },
    Lingering { until: Nanos },
    ReadyToSend,
    Sending { generation: u64 },
    Acking { seq: u64 },
    Backoff { until: Nanos },
    Stopped,
}

impl State {
    pub(crate) fn is_sending(self) -> bool {
        matches!(self, State::Sending { .. })
    }
}

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchInfo {
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) records: usize,
    pub(crate) bytes: usize,
}

/// How a send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted,
    Failed { kind: SendErrorKind, retry_after: Option<Duration> },
}

/// Counters the machine keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) batches_sent: u64,
    pub(crate) records_sent: u64,
    pub(crate) retries: u64,
    pub(crate) failures: u64,
    pub(crate) permanent_failures: u64,
    pub(crate) cancelled: u64,
}

#[derive(Debug)]
pub(crate) struct Machine {
    cfg: MachineConfig,
    state: State,
    /// The next seq to read: everything below it was accepted by an endpoint.
    cursor: u64,
    held: Option<BatchInfo>,
    /// Records and bytes a read may return: the configured batch limits,
    /// or less once the endpoint refused a batch for its size, growing
    /// back as full batches pass.
    limits: (usize, usize),
    /// Full batches (at the read limits) accepted in a row since the
    /// limits last changed or a send failed.
    streak: u32,
    /// The streak at which the limits double, up to the configured ones:
    /// `GROW_AFTER`, doubled each time grown limits are refused (the
    /// endpoint's limit is real: probe less often), halved back each time
    /// grown limits hold.
    grow_after: u32,
    /// Whether the limits grew since the last refusal for size.
    grown: bool,
    /// The cursor the batch being lingered on was read from, and since
    /// when: the linger clock. Keyed by the cursor, not the batch's first
    /// seq, so that evictions moving the first seq never restart it.
    linger_start: Option<(u64, Nanos)>,
    /// A batch taking this many ring bytes or more is sent without
    /// lingering: appends meanwhile could evict it (`usize::MAX`: no such
    /// bound).
    evict_guard: usize,
    attempt: u32,
    /// The newest endpoint generation the worker has reported.
    generation: u64,
    retrying: bool,
    draining: bool,
    rng: u64,
    pub(crate) counters: Counters,
}

/// Ring bytes a record takes beyond its payload, at most (a 32-byte
/// header, rounded up to 8 bytes).
const FRAME_OVERHEAD: usize = 39;

impl Machine {
    pub(crate) fn new(cfg: MachineConfig, cursor: u64, generation: u64, seed: u64) -> Self {
        Machine {
            cfg,
            state: State::NeedRead,
            cursor,
            held: None,
            limits: (cfg.max_batch_records, cfg.max_batch_bytes),
            streak: 0,
            grow_after: GROW_AFTER,
            grown: false,
            linger_start: None,
            evict_guard: usize::MAX,
            attempt: 0,
            generation,
            retrying: false,
            draining: false,
            rng: seed | 1,
            counters: Counters::default(),
        }
    }

    /// Batches taking `bytes` of ring space or more are not lingered on
    /// (the worker gives half the ring's capacity).
    pub(crate) fn with_evict_guard(mut self, bytes: usize) -> Self {
        self.evict_guard = bytes.max(1);
        self
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    #[cfg(any(test, fuzzing))]
    pub(crate) fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The most records and bytes the next `Read` may return.
    pub(crate) fn read_limits(&self) -> (usize, usize) {
        self.limits
    }

    /// The next action. `None` while waiting for a read or send to be
    /// reported.
    pub(crate) fn poll_action(&mut self, now: Nanos) -> Option<Action> {
        match self.state {
            State::NeedRead => Some(self.start_read()),
            State::Idle { until } | State::Lingering { until } | State::Backoff { until } => {
                if now >= until {
                    Some(self.start_read())
                } else {
                    Some(Action::Wait { until })
                }
            }
            State::ReadyToSend => {
                self.state = State::Sending { generation: self.generation };
                Some(Action::Send)
            }
            State::Acking { seq } => {
                self.state = State::NeedRead;
                Some(Action::Ack { seq })
            }
            State::Reading | State::Sending { .. } => None,
            State::Stopped => Some(Action::Stop),
        }
    }

    /// When the machine next wants `poll_action` called without an event.
    #[cfg(test)]
    pub(crate) fn poll_timeout(&self) -> Option<Nanos> {
        match self.state {
            State::Idle { until } | State::Lingering { until } | State::Backoff { until } => Some(until),
            _ => None,
        }
    }

    fn start_read(&mut self) -> Action {
        self.state = State::Reading;
        Action::Read { from_seq: self.cursor }
    }

    /// A read from the cursor returned `batch` (`None`: nothing to send).
    pub(crate) fn on_batch(&mut self, now: Nanos, batch: Option<BatchInfo>) {
        let Some(info) = batch else {
            self.held = None;
            self.linger_start = None;
            self.state = if self.draining { State::Stopped } else { State::Idle { until: now + nanos(IDLE_RECHECK) } };
            return;
        };
        let start = match self.linger_start {
            Some((cursor, since)) if cursor == self.cursor => since,
            _ => {
                self.linger_start = Some((self.cursor, now));
                now
            }
        };
        let until = start.saturating_add(nanos(self.cfg.linger));
        let full = info.records >= self.limits.0 || info.bytes >= self.limits.1;
        // Lingering would lose records: the ring evicted some past the
        // cursor already, or the batch takes so much of the ring that the
        // next appends could evict it.
        let footprint = info.bytes.saturating_add(info.records.saturating_mul(FRAME_OVERHEAD));
        let evicting = info.first_seq > self.cursor || footprint >= self.evict_guard;
        self.held = Some(info);
        self.state = if full || evicting || self.retrying || self.draining || now >= until {
            State::ReadyToSend
        } else {
            State::Lingering { until }
        };
    }

    /// The read failed (an I/O error): try again after a backoff.
    pub(crate) fn on_read_failed(&mut self, now: Nanos) {
        self.attempt += 1;
        self.state = State::Backoff { until: now + nanos(self.backoff()) };
    }

    /// The send of the held batch to endpoint generation `sent_generation`
    /// ended with `outcome`.
    pub(crate) fn on_send_result(&mut self, now: Nanos, sent_generation: u64, outcome: Outcome) {
        debug_assert!(self.state.is_sending(), "send result in state {:?}", self.state);
        let info = self.held.expect("a send result needs a held batch");
        match outcome {
            Outcome::Accepted => {
                if info.records >= self.limits.0 || info.bytes >= self.limits.1 {
                    self.on_full_batch_accepted();
                }
                self.counters.batches_sent += 1;
                self.counters.records_sent += info.records as u64;
                self.cursor = self.cursor.max(info.last_seq + 1);
                self.held = None;
                self.linger_start = None;
                self.attempt = 0;
                self.retrying = false;
                self.state = State::Acking { seq: info.last_seq };
            }
            Outcome::Failed { kind, retry_after } => {
                self.streak = 0;
                self.counters.failures += 1;
                self.counters.retries += 1;
                self.retrying = true;
                let halve = kind == SendErrorKind::TooLarge && info.records > 1;
                // A single record too large for the endpoint will be
                // refused again: a permanent failure.
                let permanent = kind == SendErrorKind::Permanent || (kind == SendErrorKind::TooLarge && !halve);
                if permanent {
                    self.counters.permanent_failures += 1;
                } else if kind == SendErrorKind::Cancelled {
                    self.counters.cancelled += 1;
                }
                if sent_generation < self.generation {
                    // The endpoint changed under the send: go to the new one now.
                    self.attempt = 0;
                    self.state = State::NeedRead;
                } else if self.draining && kind == SendErrorKind::Cancelled {
                    self.state = State::Stopped;
                } else if halve {
                    // Half the records and bytes, at once: a prefix of the
                    // same records, so each refusal makes progress.
                    // (A read may pass its byte limit by one record: a
                    // halving never grows the limits.)
                    if self.grown {
                        // Grown limits refused: the endpoint's limit is
                        // real, probe past it less often.
                        self.grow_after = self.grow_after.saturating_mul(2).min(MAX_GROW_AFTER);
                        self.grown = false;
                    }
                    self.limits =
                        ((info.records / 2).clamp(1, self.limits.0), (info.bytes / 2).clamp(1, self.limits.1));
                    self.state = State::NeedRead;
                } else {
                    self.attempt += 1;
                    let delay = if permanent { self.cfg.backoff_max } else { self.backoff() };
                    let delay = delay.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER));
                    self.state = State::Backoff { until: now + nanos(delay) };
                }
            }
        }
    }

    /// The worker saw endpoint generation `generation`. A retry waiting
    /// out a backoff goes to the new endpoint at once.
    pub(crate) fn on_switch(&mut self, generation: u64) {
        if generation <= self.generation {
            return;
        }
        self.generation = generation;
        // A new endpoint may take batches of the configured size.
        self.limits = (self.cfg.max_batch_records, self.cfg.max_batch_bytes);
        (self.streak, self.grow_after, self.grown) = (0, GROW_AFTER, false);
        if let State::Backoff { .. } = self.state {
            self.attempt = 0;
            self.state = State::NeedRead;
        }
    }

    /// A full batch was accepted: after `grow_after` in a row, limits
    /// halved for size double, up to the configured ones, so that one
    /// refusal (a single huge record, a receiver's limit since raised)
    /// does not keep batches small for good.
    fn on_full_batch_accepted(&mut self) {
        self.streak += 1;
        if self.streak < self.grow_after {
            return;
        }
        self.streak = 0;
        if self.grown {
            // The last growth held: probe sooner again.
            self.grow_after = (self.grow_after / 2).max(GROW_AFTER);
        }
        let max = (self.cfg.max_batch_records, self.cfg.max_batch_bytes);
        self.grown = self.limits != max;
        self.limits = (self.limits.0.saturating_mul(2).min(max.0), self.limits.1.saturating_mul(2).min(max.1));
    }

    /// Records were appended: an idle machine reads at once.
    pub(crate) fn on_records_available(&mut self) {
        if let State::Idle { .. } = self.state {
            self.state = State::NeedRead;
        }
    }

    /// The batch held back by the linger is out of date: the ring evicted
    /// records since it was read (they must not wait out the linger), or
    /// enough were appended to fill it. A lingering machine reads again;
    /// the linger clock goes on from the first read at this cursor.
    pub(crate) fn on_batch_outdated(&mut self) {
        if let State::Lingering { .. } = self.state {
            self.state = State::NeedRead;
        }
    }

    /// The most records a batch holds now.
    pub(crate) fn batch_records_limit(&self) -> usize {
        self.limits.0
    }

    /// Shutdown: stop lingering, send what is held, stop once the ring
    /// reads empty. An idle machine reads once more: records appended
    /// since its last read (before intake stopped) are sent too.
    pub(crate) fn on_shutdown(&mut self) {
        self.draining = true;
        match self.state {
            State::Idle { .. } => self.state = State::NeedRead,
            State::Lingering { .. } => self.state = State::ReadyToSend,
            _ => {}
        }
    }

    /// Exponential backoff for the current attempt with "equal jitter":
    /// half the step fixed, half random, never above the cap.
    fn backoff(&mut self) -> Duration {
        let exp = self.attempt.saturating_sub(1).min(30);
        let step = self.cfg.backoff_initial.saturating_mul(1 << exp).min(self.cfg.backoff_max);
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = step / 2;
        let jitter = self.rng % nanos(half).saturating_add(1);
        half + Duration::from_nanos(jitter)
    }
}

#[cfg(test)]
mod tests {
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
        BatchInfo { first_seq: first, last_seq: last, records: (last - first + 1) as usize, bytes: 10 }
    }

    /// A machine that has read a full batch 1..=10 and is sending it.
    fn sending() -> Machine {
        let mut m = Machine::new(cfg(), 1, 1, 42);
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 1 }));
        m.on_batch(0, Some(batch(1, 10)));
        assert_eq!(m.poll_action(0), Some(Action::Send));
        m
    }

    #[test]
    fn starts_by_reading_from_the_cursor() {
        let mut m = Machine::new(cfg(), 7, 1, 1);
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 7 }));
        assert_eq!(m.state(), State::Reading);
        assert_eq!(m.poll_action(0), None, "nothing until the read is reported");
    }

    #[test]
    fn empty_read_idles_then_reads_again_after_the_safety_recheck() {
        let mut m = Machine::new(cfg(), 1, 1, 1);
        m.poll_action(0);
        m.on_batch(0, None);
        let recheck = nanos(IDLE_RECHECK);
        assert_eq!(m.poll_action(10 * MS), Some(Action::Wait { until: recheck }));
        assert_eq!(m.poll_timeout(), Some(recheck));
        assert_eq!(m.poll_action(recheck), Some(Action::Read { from_seq: 1 }));
    }

    #[test]
    fn records_available_wakes_an_idle_machine() {
        let mut m = Machine::new(cfg(), 1, 1, 1);
        m.poll_action(0);
        m.on_batch(0, None);
        m.on_records_available();
        assert_eq!(m.poll_action(1), Some(Action::Read { from_seq: 1 }));
    }

    #[test]
    fn full_batch_is_sent_at_once() {
        let m = sending();
        assert_eq!(m.state(), State::Sending { generation: 1 });
    }

    #[test]
    fn partial_batch_lingers_then_is_sent() {
        let mut m = Machine::new(cfg(), 1, 1, 1);
        m.poll_action(0);
        m.on_batch(0, Some(batch(1, 3)));
        assert_eq!(m.poll_action(5 * MS), Some(Action::Wait { until: 20 * MS }));
        // Re-read after the linger: the batch grew but is still partial;
        // the linger clock started with its first seq, so it goes now.
        assert_eq!(m.poll_action(20 * MS), Some(Action::Read { from_seq: 1 }));
        m.on_batch(20 * MS, Some(batch(1, 5)));
        assert_eq!(m.poll_action(20 * MS), Some(Action::Send));
    }

    /// A small ring overflowing while a batch lingers: each re-read starts
    /// at a later seq (the oldest were evicted). The linger clock keeps
    /// running from the first read, and a batch past evicted records goes
    /// at once, so shipping never starves under eviction pressure.
    #[test]
    fn a_batch_whose_records_are_being_evicted_is_not_lingered_on() {
        let mut m = Machine::new(cfg(), 1, 1, 1);
        m.poll_action(0);
        m.on_batch(0, Some(batch(1, 3)));
        assert_eq!(m.poll_action(5 * MS), Some(Action::Wait { until: 20 * MS }));
        m.on_records_available();
        assert_eq!(m.poll_action(6 * MS), Some(Action::Wait { until: 20 * MS }), "appends alone: linger on");
        m.on_batch_outdated();
        assert_eq!(m.poll_action(7 * MS), Some(Action::Read { from_seq: 1 }), "evictions: read again at once");
        // Seqs 1 and 2 were evicted meanwhile.
        m.on_batch(7 * MS, Some(batch(3, 5)));
        assert_eq!(m.poll_action(7 * MS), Some(Action::Send), "records before the batch are being evicted");
        // The same without eviction: the clock started at the first read.
        let mut m = Machine::new(cfg(), 1, 1, 1);
        m.poll_action(0);
        m.on_batch(0, Some(batch(1, 3)));
        m.poll_action(20 * MS);
        m.on_batch(20 * MS, Some(batch(1, 4)));
        assert_eq!(m.poll_action(20 * MS), Some(Action::Send));
    }

    /// A batch taking half the ring goes at once: more appends would evict it.
    #[test]
    fn a_batch_taking_half_the_ring_is_not_lingered_on() {
        let mut m = Machine::new(cfg(), 1, 1, 1).with_evict_guard(200);
        m.poll_action(0);
        m.on_batch(0, Some(BatchInfo { first_seq: 1, last_seq: 2, records: 2, bytes: 30 }));
        assert!(matches!(m.poll_action(0), Some(Action::Wait { .. })), "30 bytes and 2 headers: below the guard");
        let mut m = Machine::new(cfg(), 1, 1, 1).with_evict_guard(200);
        m.poll_action(0);
        m.on_batch(0, Some(BatchInfo { first_seq: 1, last_seq: 3, records: 3, bytes: 100 }));
        assert_eq!(m.poll_action(0), Some(Action::Send), "100 bytes and 3 frame headers reach the guard");
    }

    #[test]
    fn batch_full_by_bytes_is_sent_at_once() {
        let mut m = Machine::new(cfg(), 1, 1, 1);
        m.poll_action(0);
        m.on_batch(0, Some(BatchInfo { first_seq: 1, last_seq: 2, records: 2, bytes: 5000 }));
        assert_eq!(m.poll_action(0), Some(Action::Send));
    }

    #[test]
    fn accepted_send_acks_and_moves_the_cursor() {
        let mut m = sending();
        m.on_send_result(MS, 1, Outcome::Accepted);
        assert_eq!(m.poll_action(MS), Some(Action::Ack { seq: 10 }));
        assert_eq!(m.poll_action(MS), Some(Action::Read { from_seq: 11 }));
        assert_eq!((m.counters.batches_sent, m.counters.records_sent), (1, 10));
    }

    #[test]
    fn retryable_failure_backs_off_exponentially_with_a_cap() {
        let mut m = sending();
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            m.on_send_result(now, 1, Outcome::Failed { kind: SendErrorKind::Retryable, retry_after: None });
            let State::Backoff { until } = m.state() else { panic!("{:?}", m.state()) };
            delays.push(until - now);
            now = until;
            assert_eq!(m.poll_action(now), Some(Action::Read { from_seq: 1 }), "retries re-read from the cursor");
            m.on_batch(now, Some(batch(1, 3)));
            assert_eq!(m.poll_action(now), Some(Action::Send), "a retry does not linger");
        }
        // Equal jitter: attempt n waits between half and all of min(100ms * 2^(n-1), 2s).
        for (i, d) in delays.iter().enumerate() {
            let step = ((100 * MS) << i).min(2_000 * MS);
            assert!((step / 2..=step).contains(d), "attempt {}: {d} not in [{}, {step}]", i + 1, step / 2);
        }
        assert!(delays[7] <= 2_000 * MS);
        assert_eq!(m.counters.retries, 8);
        assert_eq!(m.cursor(), 1, "nothing acked that was not accepted");
    }

    #[test]
    fn retry_after_is_honoured_up_to_a_limit() {
        let mut m = sending();
        let ask = Duration::from_secs(7);
        m.on_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Retryable, retry_after: Some(ask) });
        assert_eq!(m.state(), State::Backoff { until: nanos(ask) });
        let mut m = sending();
        let huge = Duration::from_secs(100_000);
        m.on_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Retryable, retry_after: Some(huge) });
        assert_eq!(m.state(), State::Backoff { until: nanos(MAX_RETRY_AFTER) });
    }

    #[test]
    fn permanent_failure_waits_the_longest_backoff_and_keeps_the_batch() {
        let mut m = sending();
        m.on_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Permanent, retry_after: None });
        assert_eq!(m.state(), State::Backoff { until: 2_000 * MS });
        assert_eq!(m.counters.permanent_failures, 1);
        assert_eq!(m.cursor(), 1);
    }

    /// A batch refused for its size is read again at once, half as large
    /// (records and bytes), sent without lingering, and later batches keep
    /// to that size until full batches pass (see the next test) or the
    /// endpoint changes. A single record refused so is a permanent failure.
    #[test]
    fn a_batch_too_large_is_halved_at_once_until_one_record_is_left() {
        let too_large = Outcome::Failed { kind: SendErrorKind::TooLarge, retry_after: None };
        let mut m = sending();
        assert_eq!(m.read_limits(), (10, 1000));
        m.on_send_result(0, 1, too_large);
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 1 }), "at once, no backoff");
        assert_eq!(m.read_limits(), (5, 5));
        m.on_batch(0, Some(BatchInfo { first_seq: 1, last_seq: 5, records: 5, bytes: 5 }));
        assert_eq!(m.poll_action(0), Some(Action::Send), "a halved batch is full: no linger");
        m.on_send_result(0, 1, Outcome::Accepted);
        assert_eq!(m.poll_action(0), Some(Action::Ack { seq: 5 }));
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 6 }));
        assert_eq!(m.read_limits(), (5, 5), "one accepted batch does not grow them");
        // Down to one record: then permanent. A read may pass its byte
        // limit by one record: the limits never grow for it.
        m.on_batch(0, Some(BatchInfo { first_seq: 6, last_seq: 7, records: 2, bytes: 400 }));
        assert_eq!(m.poll_action(0), Some(Action::Send));
        m.on_send_result(0, 1, too_large);
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 6 }));
        assert_eq!(m.read_limits(), (1, 5));
        m.on_batch(0, Some(BatchInfo { first_seq: 6, last_seq: 6, records: 1, bytes: 300 }));
        assert_eq!(m.poll_action(0), Some(Action::Send));
        m.on_send_result(0, 1, too_large);
        assert_eq!(m.state(), State::Backoff { until: 2_000 * MS });
        assert_eq!((m.counters.permanent_failures, m.counters.failures, m.cursor()), (1, 3, 6));
        // Another endpoint may take whole batches again.
        m.on_switch(2);
        assert_eq!(m.read_limits(), (10, 1000));
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 6 }));
    }

    /// Reads a batch from `from` as full as the read limits allow, and
    /// sends it with `outcome`; returns the seq after it.
    fn send_full_batch(m: &mut Machine, from: u64, outcome: Outcome) -> u64 {
        let (records, bytes) = m.read_limits();
        let last = from + records as u64 - 1;
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: from }));
        m.on_batch(0, Some(BatchInfo { first_seq: from, last_seq: last, records, bytes }));
        assert_eq!(m.poll_action(0), Some(Action::Send));
        m.on_send_result(0, 1, outcome);
        if outcome == Outcome::Accepted {
            assert_eq!(m.poll_action(0), Some(Action::Ack { seq: last }));
        }
        last + 1
    }

    /// Limits halved for size double back, up to the configured ones,
    /// once `GROW_AFTER` full batches in a row pass. Before, they never
    /// grew: after one record too large for a receiver's 64 KiB limit,
    /// raised since, 4,000 records took 445 requests instead of about 4.
    /// Against a limit that is real, each refusal of grown limits doubles
    /// the streak needed before the next probe; a growth that holds halves
    /// it back.
    #[test]
    fn halved_limits_grow_back_as_full_batches_pass() {
        let too_large = Outcome::Failed { kind: SendErrorKind::TooLarge, retry_after: None };
        let mut m = Machine::new(cfg(), 1, 1, 42);
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
        m.on_batch(0, Some(BatchInfo { first_seq: next, last_seq: next, records: 1, bytes: 10 }));
        assert_eq!(m.poll_action(0), Some(Action::Wait { until: 20 * MS }));
        assert_eq!(m.poll_action(20 * MS), Some(Action::Read { from_seq: next }));
        m.on_batch(20 * MS, Some(BatchInfo { first_seq: next, last_seq: next, records: 1, bytes: 10 }));
        assert_eq!(m.poll_action(20 * MS), Some(Action::Send));
        m.on_send_result(20 * MS, 1, Outcome::Accepted);
        assert_eq!(m.poll_action(20 * MS), Some(Action::Ack { seq: next }));
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
        let State::Backoff { until } = m.state() else { panic!("{:?}", m.state()) };
        assert_eq!(m.poll_action(until), Some(Action::Read { from_seq: next }));
        m.on_batch(until, Some(BatchInfo { first_seq: next, last_seq: next + 4, records: 5, bytes: 500 }));
        assert_eq!(m.poll_action(until), Some(Action::Send));
        m.on_send_result(until, 1, Outcome::Accepted);
        assert_eq!(m.poll_action(until), Some(Action::Ack { seq: next + 4 }));
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
        m.on_switch(2);
        assert_eq!((m.read_limits(), m.grow_after, m.streak), ((10, 1000), GROW_AFTER, 0));
    }

    #[test]
    fn failure_for_an_old_generation_retries_at_once_to_the_new_endpoint() {
        let mut m = sending();
        m.on_switch(2);
        m.on_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Cancelled, retry_after: None });
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 1 }));
        m.on_batch(0, Some(batch(1, 2)));
        assert_eq!(m.poll_action(0), Some(Action::Send));
        assert_eq!(m.state(), State::Sending { generation: 2 });
        assert_eq!(m.counters.cancelled, 1);
    }

    #[test]
    fn success_for_an_old_generation_still_counts() {
        let mut m = sending();
        m.on_switch(5);
        m.on_send_result(0, 1, Outcome::Accepted);
        assert_eq!(m.poll_action(0), Some(Action::Ack { seq: 10 }));
        assert_eq!(m.cursor(), 11);
    }

    #[test]
    fn switch_cuts_a_backoff_short() {
        let mut m = sending();
        m.on_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Permanent, retry_after: None });
        m.on_switch(2);
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 1 }));
    }

    #[test]
    fn stale_or_repeated_switches_change_nothing() {
        let mut m = sending();
        m.on_switch(1);
        m.on_switch(0);
        m.on_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Retryable, retry_after: None });
        assert!(matches!(m.state(), State::Backoff { .. }), "same generation: back off");
    }

    #[test]
    fn shutdown_flushes_a_lingering_batch_and_stops_when_empty() {
        let mut m = Machine::new(cfg(), 1, 1, 1);
        m.poll_action(0);
        m.on_batch(0, Some(batch(1, 2)));
        m.on_shutdown();
        assert_eq!(m.poll_action(0), Some(Action::Send));
        m.on_send_result(0, 1, Outcome::Accepted);
        assert_eq!(m.poll_action(0), Some(Action::Ack { seq: 2 }));
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 3 }));
        m.on_batch(0, None);
        assert_eq!(m.poll_action(0), Some(Action::Stop));
    }

    /// An idle machine reads once more before it stops: a record appended
    /// after its last (empty) read, before intake stopped, is shipped.
    /// Before, it stopped at once and the shutdown waited out its whole
    /// deadline with that record pending.
    #[test]
    fn shutdown_of_an_idle_machine_reads_once_more_then_stops() {
        let mut m = Machine::new(cfg(), 1, 1, 1);
        m.poll_action(0);
        m.on_batch(0, None);
        m.on_shutdown();
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 1 }));
        m.on_batch(0, Some(batch(1, 1)));
        assert_eq!(m.poll_action(0), Some(Action::Send));
        m.on_send_result(0, 1, Outcome::Accepted);
        assert_eq!(m.poll_action(0), Some(Action::Ack { seq: 1 }));
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 2 }));
        m.on_batch(0, None);
        assert_eq!(m.poll_action(0), Some(Action::Stop));
    }

    #[test]
    fn cancelled_send_during_shutdown_stops() {
        let mut m = sending();
        m.on_shutdown();
        m.on_send_result(0, 1, Outcome::Failed { kind: SendErrorKind::Cancelled, retry_after: None });
        assert_eq!(m.poll_action(0), Some(Action::Stop));
    }

    #[test]
    fn read_failure_backs_off_then_reads_again() {
        let mut m = Machine::new(cfg(), 3, 1, 1);
        m.poll_action(0);
        m.on_read_failed(0);
        let State::Backoff { until } = m.state() else { panic!() };
        assert!((50 * MS..=100 * MS).contains(&until));
        assert_eq!(m.poll_action(until), Some(Action::Read { from_seq: 3 }));
    }
}
