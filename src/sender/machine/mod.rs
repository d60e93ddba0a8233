//! The sender's protocol core: a deterministic state machine with no
//! threads, clocks or I/O inside (sans-IO).
//!
//! Every protocol decision is made here: what to read, when a batch is
//! sent (batching, linger, a batch outdated by evictions), what an answer
//! means (retry, backoff, halving for size, a switch under the send), what
//! an ack records (the rejections its gap notice reported), and when the
//! worker stops (drained, or abandoned by the supervisor). The worker
//! thread and the whole-shipper simulation drive it alike:
//!
//! 1. call [`Machine::poll_action`] with the current time and carry the
//!    action out;
//! 2. report what happened with the matching `handle_*` method
//!    (`handle_batch` after a `Read`, `handle_send_result` after a `Send`);
//! 3. on `Wait`, sleep until the deadline or an event (records appended,
//!    endpoint switched, shutdown, abandonment) and report the event.
//!
//! States and transitions are drawn in docs/SENDER.md.

use std::sync::Arc;
use std::time::Duration;

use crate::sync::atomic::{AtomicU64, Ordering};
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
    /// [`Machine::handle_batch`] or [`Machine::handle_read_failed`].
    Read { from_seq: u64 },
    /// Send the batch last reported to the current endpoint; report with
    /// [`Machine::handle_send_result`].
    Send,
    /// Acknowledge the ring up to `seq`, noting the ring's first `rejected`
    /// rejections as reported (the batch's gap notice told of them).
    Ack { seq: u64, rejected: Option<u64> },
    /// The endpoint refused the batch, one record through `seq`, for its
    /// size: it will refuse it again. Settle it as refused (not sent
    /// again); its gap notice was not delivered.
    Refuse { seq: u64 },
    /// Nothing to do before `until` unless an event arrives.
    Wait { until: Nanos },
    /// The machine has stopped.
    Stop,
}

/// The machine's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MachineState {
    NeedRead,
    Reading,
    Idle { until: Nanos },
    Lingering { until: Nanos },
    ReadyToSend,
    Sending { generation: u64 },
    Acking { seq: u64, rejected: Option<u64> },
    Backoff { until: Nanos },
    Stopped,
}

impl MachineState {
    pub(crate) fn is_sending(self) -> bool {
        matches!(self, MachineState::Sending { .. })
    }
}

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchInfo {
    pub(crate) first_seq: u64,
    pub(crate) last_seq: u64,
    pub(crate) records: usize,
    pub(crate) bytes: usize,
    /// The batch opens with a gap notice reporting the ring's rejections
    /// up to this count (`None`: no notice).
    pub(crate) notice_rejected: Option<u64>,
}

/// The ring's counters that say whether a lingering batch is out of date.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RingMark {
    /// Records evicted unacknowledged so far.
    pub(crate) overwritten: u64,
    /// The last seq appended.
    pub(crate) last_seq: u64,
}

/// How a send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Accepted,
    Failed { kind: SendErrorKind, retry_after: Option<Duration> },
}

/// The sender's counters: one set per shipper, counted where they happen
/// (the machine counts sends, the shipper switches and stalls), read by
/// `stats` without a lock.
#[derive(Debug, Default)]
pub(crate) struct SendCounters {
    pub(crate) batches_sent: AtomicU64,
    pub(crate) records_sent: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) permanent_failures: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) switches: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) gap_notices: AtomicU64,
    pub(crate) callbacks_dropped: AtomicU64,
    pub(crate) overwritten_after_delivery: AtomicU64,
}

impl SendCounters {
    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[derive(Debug)]
#[expect(clippy::struct_excessive_bools, reason = "independent flags of the protocol, each read on its own")]
pub(crate) struct Machine {
    cfg: MachineConfig,
    state: MachineState,
    /// The next seq to read: everything below it was accepted by an endpoint.
    cursor: u64,
    held: Option<BatchInfo>,
    /// The ring's counters when the held batch was read.
    mark_at_read: RingMark,
    /// The supervisor gave up on this worker: it acks what its send got
    /// accepted, and stops.
    abandoned: bool,
    /// The batch in `Acking` was refused, not accepted ([`Action::Refuse`]).
    refusing: bool,
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
    counters: Arc<SendCounters>,
}

/// Ring bytes a record takes beyond its payload, at most (a 32-byte
/// header, rounded up to 8 bytes).
const FRAME_OVERHEAD: usize = 39;

impl Machine {
    pub(crate) fn new(
        cfg: MachineConfig,
        cursor: u64,
        generation: u64,
        seed: u64,
        counters: Arc<SendCounters>,
    ) -> Self {
        Machine {
            cfg,
            state: MachineState::NeedRead,
            cursor,
            held: None,
            mark_at_read: RingMark::default(),
            abandoned: false,
            refusing: false,
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
            counters,
        }
    }

    /// Batches taking `bytes` of ring space or more are not lingered on
    /// (the worker gives half the ring's capacity).
    pub(crate) fn with_evict_guard(mut self, bytes: usize) -> Self {
        self.evict_guard = bytes.max(1);
        self
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> MachineState {
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
            MachineState::NeedRead => Some(self.start_read()),
            MachineState::Idle { until } | MachineState::Lingering { until } | MachineState::Backoff { until } => {
                if now >= until { Some(self.start_read()) } else { Some(Action::Wait { until }) }
            }
            MachineState::ReadyToSend => {
                self.state = MachineState::Sending { generation: self.generation };
                Some(Action::Send)
            }
            MachineState::Acking { seq, rejected } => {
                self.state = if self.abandoned { MachineState::Stopped } else { MachineState::NeedRead };
                if std::mem::take(&mut self.refusing) {
                    return Some(Action::Refuse { seq });
                }
                Some(Action::Ack { seq, rejected })
            }
            MachineState::Reading | MachineState::Sending { .. } => None,
            MachineState::Stopped => Some(Action::Stop),
        }
    }

    /// When the machine next wants `poll_action` called without an event.
    #[cfg(test)]
    pub(crate) fn poll_timeout(&self) -> Option<Nanos> {
        match self.state {
            MachineState::Idle { until } | MachineState::Lingering { until } | MachineState::Backoff { until } => {
                Some(until)
            }
            _ => None,
        }
    }

    fn start_read(&mut self) -> Action {
        self.state = MachineState::Reading;
        Action::Read { from_seq: self.cursor }
    }

    /// A read from the cursor returned `batch` (`None`: nothing to send),
    /// with the ring's counters as they were just before it.
    pub(crate) fn handle_batch(&mut self, now: Nanos, batch: Option<BatchInfo>, mark: RingMark) {
        self.mark_at_read = mark;
        let Some(info) = batch else {
            self.held = None;
            self.linger_start = None;
            self.state = if self.draining {
                MachineState::Stopped
            } else {
                MachineState::Idle { until: now + nanos(IDLE_RECHECK) }
            };
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
            MachineState::ReadyToSend
        } else {
            MachineState::Lingering { until }
        };
    }

    /// The read failed (an I/O error): try again after a backoff.
    pub(crate) fn handle_read_failed(&mut self, now: Nanos) {
        self.attempt += 1;
        self.state = MachineState::Backoff { until: now + nanos(self.backoff()) };
    }

    /// The send of the held batch to endpoint generation `sent_generation`
    /// ended with `outcome`.
    pub(crate) fn handle_send_result(&mut self, now: Nanos, sent_generation: u64, outcome: Outcome) {
        debug_assert!(self.state.is_sending(), "send result in state {:?}", self.state);
        let info = self.held.expect("a send result needs a held batch");
        let c = Arc::clone(&self.counters);
        match outcome {
            Outcome::Accepted => {
                if info.records >= self.limits.0 || info.bytes >= self.limits.1 {
                    self.on_full_batch_accepted();
                }
                SendCounters::add(&c.batches_sent, 1);
                SendCounters::add(&c.records_sent, info.records as u64);
                if info.notice_rejected.is_some() {
                    SendCounters::add(&c.gap_notices, 1);
                }
                self.cursor = self.cursor.max(info.last_seq + 1);
                self.held = None;
                self.linger_start = None;
                self.attempt = 0;
                self.retrying = false;
                self.state = MachineState::Acking { seq: info.last_seq, rejected: info.notice_rejected };
            }
            Outcome::Failed { .. } if self.abandoned => self.state = MachineState::Stopped,
            // One record the endpoint refuses alone for its size will be
            // refused again, and would hold up every record behind it until
            // the ring overwrote them: settled as refused, and shipping
            // goes on. (Refused by an endpoint switched away from, it goes
            // to the new one below.)
            Outcome::Failed { kind: SendErrorKind::TooLarge, .. }
                if info.records == 1 && sent_generation >= self.generation =>
            {
                SendCounters::add(&c.failures, 1);
                SendCounters::add(&c.permanent_failures, 1);
                self.cursor = self.cursor.max(info.last_seq + 1);
                self.held = None;
                self.linger_start = None;
                self.attempt = 0;
                self.retrying = false;
                self.refusing = true;
                self.state = MachineState::Acking { seq: info.last_seq, rejected: None };
            }
            Outcome::Failed { kind, retry_after } => {
                self.streak = 0;
                SendCounters::add(&c.failures, 1);
                SendCounters::add(&c.retries, 1);
                self.retrying = true;
                let halve = kind == SendErrorKind::TooLarge && info.records > 1;
                let permanent = kind == SendErrorKind::Permanent;
                if permanent {
                    SendCounters::add(&c.permanent_failures, 1);
                } else if kind == SendErrorKind::Cancelled {
                    SendCounters::add(&c.cancelled, 1);
                }
                if sent_generation < self.generation {
                    // The endpoint changed under the send: go to the new one now.
                    self.attempt = 0;
                    self.state = MachineState::NeedRead;
                } else if self.draining && kind == SendErrorKind::Cancelled {
                    self.state = MachineState::Stopped;
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
                    self.state = MachineState::NeedRead;
                } else {
                    self.attempt += 1;
                    let delay = if permanent { self.cfg.backoff_max } else { self.backoff() };
                    let delay = delay.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER));
                    self.state = MachineState::Backoff { until: now + nanos(delay) };
                }
            }
        }
    }

    /// The worker saw endpoint generation `generation`. A retry waiting
    /// out a backoff goes to the new endpoint at once.
    pub(crate) fn handle_switch(&mut self, generation: u64) {
        if generation <= self.generation {
            return;
        }
        self.generation = generation;
        // A new endpoint may take batches of the configured size.
        self.limits = (self.cfg.max_batch_records, self.cfg.max_batch_bytes);
        (self.streak, self.grow_after, self.grown) = (0, GROW_AFTER, false);
        if let MachineState::Backoff { .. } = self.state {
            self.attempt = 0;
            self.state = MachineState::NeedRead;
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

    /// The worker was woken: records may have been appended (an idle
    /// machine reads at once) or evicted. `ring` is the ring's counters
    /// now.
    pub(crate) fn handle_wake(&mut self, ring: RingMark) {
        match self.state {
            MachineState::Idle { .. } => self.state = MachineState::NeedRead,
            MachineState::Lingering { .. } if self.batch_outdated(ring) => self.state = MachineState::NeedRead,
            _ => {}
        }
    }

    /// Whether the batch held back by the linger is out of date: the ring
    /// evicted records since it was read (they must not wait out the
    /// linger), or enough were appended to fill it. Reading it again at
    /// every append instead would read it over and over as it fills. The
    /// linger clock goes on from the first read at this cursor.
    fn batch_outdated(&self, ring: RingMark) -> bool {
        let Some(held) = self.held else { return false };
        // A batch that ended before the ring's last record (at a gap, or
        // the bytes limit) does not grow by reading it again.
        let fills = held.last_seq >= self.mark_at_read.last_seq
            && ring.last_seq.saturating_sub(held.first_seq) >= self.limits.0 as u64;
        ring.overwritten > self.mark_at_read.overwritten || fills
    }

    /// The supervisor replaced this worker (its send ran past
    /// `abandon_after`): a send still out is answered first, and an
    /// accepted batch acked; then the machine stops.
    pub(crate) fn handle_abandoned(&mut self) {
        self.abandoned = true;
        if !matches!(self.state, MachineState::Sending { .. } | MachineState::Acking { .. }) {
            self.state = MachineState::Stopped;
        }
    }

    /// Shutdown: stop lingering, send what is held, stop once the ring
    /// reads empty. An idle machine reads once more: records appended
    /// since its last read (before intake stopped) are sent too.
    pub(crate) fn handle_shutdown(&mut self) {
        self.draining = true;
        match self.state {
            MachineState::Idle { .. } => self.state = MachineState::NeedRead,
            MachineState::Lingering { .. } => self.state = MachineState::ReadyToSend,
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
mod tests;
