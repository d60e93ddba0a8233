//! The whole-shipper simulation: the ring on a simulated disk, the real
//! worker protocol ([`Driver`]) and the real supervisor ([`tick`]) on one
//! thread and a simulated clock, against adversarial endpoints and user
//! code, with switch storms, shutdowns, process crashes and damage at rest.
//!
//! The faults it imagines, by class:
//! - endpoints: hangs that honour or ignore cancellation, late success
//!   after abandonment, slow answers, refusals (4xx), refusals for size
//!   (413), transports that panic (a failed send, as the worker makes it);
//! - user code: callbacks that call `switch_endpoint` from inside, and
//!   configuration re-applied in a loop (the endpoint in use switched to
//!   again and again);
//! - the process: shutdowns at random points, kills, and damage at rest
//!   before the restart.
//!
//! After every seed: every seq is delivered byte-exact or announced in a
//! gap notice whose cause is the ring's; a record that was returned is
//! skipped only after damage at rest; `on_loss` sums equal the growth of
//! `overwritten`; health is never `Healthy` while pending records go
//! unshipped past `stall_after` (plus a supervisor tick); a batch is never
//! held back after records were evicted while it lingered. A failing seed
//! prints the command that replays it.

mod scenarios;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::callbacks::Event;
use super::machine::{MachineConfig, Nanos};
use super::supervisor::Watch;
use super::supervisor::tick;
use super::worker::{Driver, SendJob, Step};
use super::{CALLBACK_QUEUE, Callbacks, Clock, ShipperConfig, ShipperCore};
use crate::sim::{Damage, Faults, SimDisk};
use crate::stats::LossCause;
use crate::sync::Woken;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::transport::{Batch, Endpoint, GapNotice, SendError, Transport};
use crate::{Ring, RingConfig, SyncPolicy};

const MS: Nanos = 1_000_000;
/// Seeds a plain `cargo test` runs; `RINGSHIP_SHIPPER_SIM_SEEDS` sets more.
const DEFAULT_SEEDS: u64 = 16;
/// Simulated time per seed before the final drain.
const RUN_FOR: Nanos = 3_000 * MS;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// How an endpoint answers, for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Deliver {
        latency: Nanos,
    },
    HangHonouring,
    HangIgnoring {
        late_success: bool,
    },
    Panic,
    TooLarge {
        limit: usize,
    },
    Refuse,
    Flaky,
    /// Takes each batch but refuses its last `refuse` records (a partial
    /// acceptance, `SendContext::refuse`).
    Partial {
        refuse: u64,
    },
}

fn random_mode(r: &mut Rng) -> Mode {
    match r.below(13) {
        0..=4 => Mode::Deliver { latency: r.below(20) * MS },
        5 => Mode::HangHonouring,
        6 => Mode::HangIgnoring { late_success: r.below(2) == 0 },
        7 => Mode::Panic,
        8 => Mode::TooLarge { limit: 64 + r.below(4096) as usize },
        9 => Mode::Refuse,
        10 => Mode::Partial { refuse: 1 + r.below(3) },
        _ => Mode::Flaky,
    }
}

/// A send the simulation is carrying out: its answer, when it comes, and
/// whether a cancellation ends it earlier.
struct InFlight {
    job: SendJob,
    done_at: Nanos,
    result: Result<(), SendError>,
    honours_cancel: bool,
    /// Records of the batch the endpoint refuses if it takes it.
    refused: u64,
}

enum WorkerState {
    Ready,
    Waiting { until: Nanos, lingering_at: Option<u64> },
    Sending(InFlight),
}

struct Worker {
    driver: Driver,
    state: WorkerState,
}

#[derive(Default)]
struct Receiver {
    records: BTreeMap<u64, Vec<u8>>,
    notices: Vec<GapNotice>,
    /// Seqs it took in a batch but refused (a partial acceptance).
    refused: std::collections::BTreeSet<u64>,
}

impl Receiver {
    /// Takes `batch`, but for its last `refused` records.
    fn take(&mut self, batch: &Batch, refused: u64) {
        if let Some(g) = batch.gap {
            self.notices.push(g);
        }
        let keep = batch.records.len().saturating_sub(usize::try_from(refused).unwrap_or(usize::MAX));
        for r in &batch.records[..keep] {
            self.records.insert(r.seq, r.payload.to_vec());
        }
        self.refused.extend(batch.records[keep..].iter().map(|r| r.seq));
    }
}

/// One run of the shipper, from a start (or restart) to a stop.
struct Run {
    shared: Arc<ShipperCore>,
    clock: Arc<AtomicU64>,
    watch: Watch,
    cb: Callbacks,
    events: crossbeam_channel::Receiver<Event>,
    workers: Vec<Worker>,
    next_tick: Nanos,
    overwritten_at_start: u64,
    on_loss_overwritten: u64,
    /// The last time the delivery cursor moved (or nothing was pending).
    progress: (Nanos, u64),
    /// The stall callback switches endpoints from inside (the random
    /// simulation's user code); scripted scenarios turn it off.
    switch_on_stall: bool,
    /// Stall notices the callback received.
    stall_notices: u64,
}

fn shipper_config(r: &mut Rng) -> ShipperConfig {
    let send_timeout = Duration::from_millis(20 + r.below(100));
    ShipperConfig {
        machine: MachineConfig {
            max_batch_records: 1 + r.below(200) as usize,
            max_batch_bytes: 256 + r.below(16 << 10) as usize,
            linger: Duration::from_millis(r.below(20)),
            backoff_initial: Duration::from_millis(1 + r.below(20)),
            backoff_max: Duration::from_millis(50 + r.below(200)),
        },
        send_timeout,
        abandon_after: send_timeout * 2,
        stall_after: Duration::from_millis(100 + r.below(400)),
        supervise_every: Duration::from_millis(5 + r.below(20)),
        seed: r.next(),
    }
}

impl Run {
    fn start(ring: Ring, cfg: ShipperConfig, endpoint: Endpoint, now: Nanos) -> Run {
        let clock = Arc::new(AtomicU64::new(now));
        let factory = Box::new(|| -> Box<dyn Transport> { unreachable!("the simulation sends itself") });
        let shared = Arc::new(ShipperCore::new(Arc::new(ring), cfg, factory, endpoint, Clock::Sim(Arc::clone(&clock))));
        shared.ring.watch_losses();
        let stats = shared.ring.stats();
        let (tx, events) = crossbeam_channel::bounded(CALLBACK_QUEUE);
        let watch = Watch::new(now, cfg.stall_after, cfg.abandon_after, stats.ack_seq);
        let workers = vec![Worker { driver: Driver::new(&shared, 1), state: WorkerState::Ready }];
        Run {
            shared,
            clock,
            watch,
            cb: Callbacks { tx: Some(tx), on_stall: true, backlog: crate::stats::LossFeed::default() },
            events,
            workers,
            next_tick: now + nanos(cfg.supervise_every),
            overwritten_at_start: stats.overwritten,
            on_loss_overwritten: 0,
            progress: (now, stats.ack_seq),
            switch_on_stall: true,
            stall_notices: 0,
        }
    }

    fn now(&self) -> Nanos {
        self.clock.load(Ordering::Acquire)
    }

    /// The next moment something is due.
    fn next_due(&self) -> Nanos {
        let mut due = self.next_tick;
        for w in &self.workers {
            due = due.min(match &w.state {
                WorkerState::Ready => self.now(),
                WorkerState::Waiting { until, .. } => *until,
                WorkerState::Sending(f) => f.done_at,
            });
        }
        due
    }

    /// Runs everything due at the current time.
    fn run_due(&mut self, modes: &BTreeMap<String, Mode>, rx: &mut Receiver, rng: &mut Rng) {
        let now = self.now();
        let woken = self.shared.wake.wait_timeout(Duration::ZERO) == Woken::Notified;
        let mut i = 0;
        while i < self.workers.len() {
            if self.advance(i, now, woken, modes, rx) {
                i += 1;
            } else {
                self.workers.remove(i);
            }
        }
        if now >= self.next_tick {
            self.next_tick = now + nanos(self.shared.cfg.supervise_every);
            tick(&self.shared, &mut self.watch, &mut self.cb);
            for worker_id in std::mem::take(&mut *self.shared.sim_spawns.lock().expect("sim spawns")) {
                self.workers.push(Worker { driver: Driver::new(&self.shared, worker_id), state: WorkerState::Ready });
            }
            self.check_stall(now);
            self.callbacks(rng);
        }
    }

    /// Moves worker `i` on; `false` when it has ended.
    fn advance(
        &mut self,
        i: usize,
        now: Nanos,
        woken: bool,
        modes: &BTreeMap<String, Mode>,
        rx: &mut Receiver,
    ) -> bool {
        let shared = Arc::clone(&self.shared);
        let w = &mut self.workers[i];
        match &mut w.state {
            WorkerState::Waiting { until, lingering_at } => {
                if now < *until && !woken {
                    return true;
                }
                let evicted_meanwhile = lingering_at.is_some_and(|o| shared.ring.stats().overwritten > o);
                w.driver.woken(&shared);
                w.state = WorkerState::Ready;
                if evicted_meanwhile {
                    // Records were evicted while a partial batch waited:
                    // the next step must ship, not linger again.
                    let step = w.driver.step(&shared);
                    assert!(
                        !matches!(step, Step::Wait(_)) || !w.driver.lingering(),
                        "a batch lingered on after records were evicted while it waited"
                    );
                    return Self::take_step(w, step, &shared, now, modes);
                }
            }
            WorkerState::Sending(f) => {
                let cancelled = f.honours_cancel && f.job.cancel.is_cancelled();
                if now < f.done_at && !cancelled {
                    return true;
                }
                let result = if cancelled && now < f.done_at { Err(SendError::cancelled()) } else { f.result.clone() };
                let refused = if result.is_ok() { f.refused } else { 0 };
                if result.is_ok() {
                    rx.take(w.driver.batch(), refused);
                }
                let WorkerState::Sending(f) = std::mem::replace(&mut w.state, WorkerState::Ready) else {
                    unreachable!()
                };
                let answer = crate::transport::SendAnswer { refused, notice_refused: false };
                w.driver.finish_send(&shared, &f.job, &result, answer);
            }
            WorkerState::Ready => {}
        }
        let step = w.driver.step(&shared);
        Self::take_step(w, step, &shared, now, modes)
    }

    fn take_step(w: &mut Worker, step: Step, shared: &ShipperCore, now: Nanos, modes: &BTreeMap<String, Mode>) -> bool {
        match step {
            Step::Exit => return false,
            Step::Wait(until) => {
                let lingering_at = w.driver.lingering().then(|| shared.ring.stats().overwritten);
                w.state = WorkerState::Waiting { until: until.max(now + 1), lingering_at };
            }
            Step::Send(job) => {
                let mode = modes.get(&job.endpoint.address).copied().unwrap_or(Mode::Deliver { latency: 0 });
                let timeout = nanos(shared.cfg.send_timeout);
                let bytes = w.driver.batch().payload_bytes();
                let records = w.driver.batch().records.len() as u64;
                let refused = if let Mode::Partial { refuse } = mode { refuse.min(records) } else { 0 };
                let (after, result, honours_cancel) = match mode {
                    Mode::Deliver { latency } => (latency, Ok(()), true),
                    Mode::HangHonouring => (timeout, Err(SendError::timed_out()), true),
                    Mode::HangIgnoring { late_success } => {
                        let r = if late_success { Ok(()) } else { Err(SendError::retryable("released")) };
                        (timeout * 5, r, false)
                    }
                    Mode::Panic => (0, Err(SendError::retryable("the transport panicked: scripted")), true),
                    Mode::TooLarge { limit } if bytes > limit => (MS, Err(SendError::too_large("413")), true),
                    Mode::TooLarge { .. } | Mode::Partial { .. } => (MS, Ok(()), true),
                    Mode::Refuse => (MS, Err(SendError::permanent("403")), true),
                    Mode::Flaky => (MS, Err(SendError::retryable("503")), true),
                };
                let done_at = now + after.max(1);
                w.state = WorkerState::Sending(InFlight { job, done_at, result, honours_cancel, refused });
            }
        }
        true
    }

    /// I10: records pending with no progress for `stall_after` and a tick
    /// are never reported healthy.
    fn check_stall(&mut self, now: Nanos) {
        let s = self.shared.ring.stats();
        if s.pending == 0 || s.ack_seq > self.progress.1 {
            self.progress = (now, s.ack_seq);
            return;
        }
        let bound = nanos(self.shared.cfg.stall_after) + 2 * nanos(self.shared.cfg.supervise_every);
        if now - self.progress.0 > bound {
            let h = self.shared.health();
            assert_ne!(
                h.state,
                super::HealthState::Healthy,
                "I10: {} pending, no progress since {}",
                s.pending,
                self.progress.0
            );
        }
    }

    /// The user's callbacks: loss ranges are summed; a stall makes the
    /// callback switch endpoints from inside, sometimes to the one in use.
    fn callbacks(&mut self, rng: &mut Rng) {
        while let Ok(e) = self.events.try_recv() {
            match e {
                Event::Loss(ranges) => {
                    let over = ranges.iter().filter(|l| l.cause == LossCause::Overwritten);
                    self.on_loss_overwritten += over.map(|l| l.count).sum::<u64>();
                }
                Event::Stall(_) => {
                    self.stall_notices += 1;
                    if !self.switch_on_stall {
                        continue;
                    }
                    let to =
                        if rng.below(2) == 0 { self.shared.endpoint.current().1.address.clone() } else { "B".into() };
                    self.shared.switch_endpoint(Endpoint::new(to)).expect("a valid endpoint");
                }
            }
        }
    }

    /// Ends the run: one last tick so that every loss reached `on_loss`.
    fn end(mut self, random: &mut Rng) -> Ring {
        tick(&self.shared, &mut self.watch, &mut self.cb);
        self.cb.loss(Vec::new());
        self.callbacks(random);
        let grew = self.shared.ring.stats().overwritten - self.overwritten_at_start;
        assert_eq!(
            self.on_loss_overwritten, grew,
            "on_loss counted {} of {grew} overwritten",
            self.on_loss_overwritten
        );
        self.shared.stop.store(true, Ordering::Release);
        let handle = Arc::clone(&self.shared.ring);
        drop(self);
        Arc::try_unwrap(handle).expect("the run held the only other handle")
    }
}

fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn open(disk: &SimDisk, cap: u64) -> Ring {
    let config = RingConfig::default().capacity(cap).max_record_len(1024).sync(SyncPolicy::Never);
    Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config).expect("the ring opens").0
}

/// What one seed did, for the totals.
#[derive(Default)]
struct Counts {
    restarts: u64,
    shutdowns: u64,
    damage: u64,
    switches: u64,
    user_faults: u64,
}

/// One seed's run: the shipper, what was appended, what the receiver got.
struct SeedRun {
    seed: u64,
    r: Rng,
    counts: Counts,
    disk: SimDisk,
    cap: u64,
    cfg: ShipperConfig,
    payloads: BTreeMap<u64, Vec<u8>>,
    rx: Receiver,
    modes: BTreeMap<String, Mode>,
    /// Damage at rest was done: a returned record may be skipped.
    damaged: bool,
    run: Option<Run>,
    /// When a shutdown began, if one is under way.
    closing_since: Option<Nanos>,
}

fn run_seed(seed: u64) -> Counts {
    let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let disk = SimDisk::new(seed, Faults::NONE);
    let cap = 4096 + 8 * r.below(8192);
    let cfg = shipper_config(&mut r);
    let mut modes: BTreeMap<String, Mode> = BTreeMap::new();
    modes.insert("A".into(), random_mode(&mut r));
    modes.insert("B".into(), Mode::Deliver { latency: r.below(10) * MS });
    let run = Run::start(open(&disk, cap), cfg, Endpoint::new("A"), 0);
    let mut s = SeedRun {
        seed,
        r,
        counts: Counts::default(),
        disk,
        cap,
        cfg,
        payloads: BTreeMap::new(),
        rx: Receiver::default(),
        modes,
        damaged: false,
        run: Some(run),
        closing_since: None,
    };
    let mut next_event = 0;
    loop {
        let now = s.run().now();
        let ending = now >= RUN_FOR;
        if ending && s.closing_since.is_none() {
            // The final drain: every endpoint delivers.
            for m in s.modes.values_mut() {
                *m = Mode::Deliver { latency: MS };
            }
            if now > RUN_FOR + 60_000 * MS || s.run().shared.ring.stats().pending == 0 {
                break;
            }
        }
        if !ending && now >= next_event {
            next_event = now + s.r.below(4 * MS);
            s.random_event(now);
        }
        s.end_shutdown_if_over(now);
        let SeedRun { run, modes, rx, r, .. } = &mut s;
        let run = run.as_mut().expect("a run");
        run.run_due(modes, rx, r);
        let due = run.next_due().min(if ending { u64::MAX } else { next_event });
        run.clock.store(due.max(now + 1), Ordering::Release);
    }
    let ring = s.run.take().expect("a run").end(&mut s.r);
    let st = ring.stats();
    assert_eq!(st.pending, 0, "drained at the end: {st:?}");
    check_every_seq(&ring, &s.payloads, &s.rx, s.damaged);
    s.counts
}

impl SeedRun {
    fn run(&self) -> &Run {
        self.run.as_ref().expect("a run")
    }

    /// One random event of the user, the endpoints or the process.
    fn random_event(&mut self, now: Nanos) {
        match self.r.below(200) {
            0..=149 if self.closing_since.is_none() => self.append(),
            150..=169 => {
                // A switch storm: the endpoint in use re-applied, or a real change.
                self.counts.switches += 1;
                let to = match self.r.below(3) {
                    0 => self.run().shared.endpoint.current().1.address.clone(),
                    1 => "A".into(),
                    _ => "B".into(),
                };
                self.run().shared.switch_endpoint(Endpoint::new(to)).expect("a valid endpoint");
            }
            170..=184 => {
                let which = if self.r.below(2) == 0 { "A" } else { "B" };
                let mode = random_mode(&mut self.r);
                if !matches!(mode, Mode::Deliver { .. }) {
                    self.counts.user_faults += 1;
                }
                self.modes.insert(which.into(), mode);
            }
            185 if self.closing_since.is_none() => {
                self.counts.shutdowns += 1;
                self.closing_since = Some(now);
                self.run().shared.closing.store(true, Ordering::Release);
                self.run().shared.wake();
            }
            190 => self.kill_and_restart(now),
            _ => {}
        }
    }

    fn append(&mut self) {
        let n = 1 + self.r.below(8);
        let batch: Vec<Vec<u8>> = (0..n).map(|i| vec![(self.seed + i) as u8; 1 + self.r.below(300) as usize]).collect();
        if let Ok((first, _)) = self.run().shared.append_batch(&batch) {
            for (i, p) in batch.into_iter().enumerate() {
                assert!(self.payloads.insert(first + i as u64, p).is_none(), "I1: a seq handed out twice");
            }
        }
    }

    /// A kill, sometimes damage at rest, and a restart.
    fn kill_and_restart(&mut self, now: Nanos) {
        self.counts.restarts += 1;
        let endpoint = (*self.run().shared.endpoint.current().1).clone();
        drop(self.run.take().expect("a run").end(&mut self.r));
        self.disk.process_crash();
        if self.r.below(3) == 0 {
            self.counts.damage += 1;
            self.damaged = true;
            let (at, n) = self.disk.last_write("ring.data").unwrap_or((4096, 64));
            let kind = [Damage::BitFlip, Damage::Zeros, Damage::Garbage][self.r.below(3) as usize];
            self.disk.damage_at_rest("ring.data", kind, at + self.r.below(n.max(1)), 1 + self.r.below(2048));
        }
        self.run = Some(Run::start(open(&self.disk, self.cap), self.cfg, endpoint, now));
        self.closing_since = None;
    }

    /// A shutdown ends once drained or past its deadline; the shipper then
    /// starts again on the cleanly closed ring, which kept what it could
    /// not ship.
    fn end_shutdown_if_over(&mut self, now: Nanos) {
        let Some(since) = self.closing_since else { return };
        if !self.run().workers.is_empty() && now < since + 200 * MS {
            return;
        }
        let endpoint = (*self.run().shared.endpoint.current().1).clone();
        let ring = self.run.take().expect("a run").end(&mut self.r);
        let (before, losses) = (ring.stats(), ring.losses());
        ring.close().expect("a clean close");
        drop(ring);
        let ring = open(&self.disk, self.cap);
        let after = ring.stats();
        // Damage done at rest earlier may be found only now.
        let found = if self.damaged { after.corrupted - before.corrupted } else { 0 };
        assert_eq!(
            after.pending + found,
            before.pending,
            "a shutdown kept what it could not ship: {before:?} {losses:?}, then {after:?} {:?}",
            ring.losses()
        );
        self.run = Some(Run::start(ring, self.cfg, endpoint, now));
        self.closing_since = None;
    }
}

/// Every seq is delivered byte-exact or announced in a gap notice with the
/// ring's cause for it; a returned record is skipped only after damage.
fn check_every_seq(ring: &Ring, payloads: &BTreeMap<u64, Vec<u8>>, rx: &Receiver, damaged: bool) {
    let s = ring.stats();
    assert!(s.identity_holds(), "I2: {s:?}");
    assert!(s.refused_reported <= s.refused, "{s:?}");
    let losses = ring.losses();
    let last = ring.stats().last_seq;
    // Seqs missing after the last delivered record are announced with the
    // next batch, once there is one; until then the ring counts them.
    let announced_through = rx.records.keys().next_back().copied().unwrap_or(0);
    for seq in 1..=last {
        if let Some(got) = rx.records.get(&seq) {
            assert_eq!(Some(got), payloads.get(&seq), "I4: seq {seq} delivered with other bytes");
            continue;
        }
        // Refused by the receiver itself, which took the rest of its
        // batch: the ring counts it lost (refused, or overwritten if it
        // was evicted while its batch was in flight), in a range.
        if rx.refused.contains(&seq) {
            assert!(
                losses.iter().any(|l| l.first_seq <= seq && seq <= l.last_seq),
                "seq {seq}, refused by the receiver, is not counted lost"
            );
            continue;
        }
        if seq > announced_through {
            assert!(
                losses.iter().any(|l| l.first_seq <= seq && seq <= l.last_seq),
                "seq {seq} after the last delivery is not counted lost"
            );
            continue;
        }
        let notice = rx.notices.iter().find(|g| g.first_seq <= seq && seq <= g.last_seq);
        let Some(notice) = notice else {
            let range = losses.iter().find(|l| l.first_seq <= seq && seq <= l.last_seq);
            let near: Vec<_> =
                rx.notices.iter().filter(|g| g.last_seq + 100 >= seq && g.first_seq <= seq + 100).collect();
            let before = rx.records.range(..seq).next_back().map(|(s, _)| *s);
            let after = rx.records.range(seq..).next().map(|(s, _)| *s);
            panic!(
                "seq {seq} neither delivered nor announced (appended: {}); the ring's range {range:?}; notices near \
                 {near:?}; delivered before {before:?}, after {after:?}",
                payloads.contains_key(&seq)
            )
        };
        let cause = losses.iter().find(|l| l.first_seq <= seq && seq <= l.last_seq).map(|l| l.cause);
        assert!(
            notice.cause == LossCause::Mixed || cause == Some(LossCause::Mixed) || cause == Some(notice.cause),
            "seq {seq}: the notice says {:?}, the ring {cause:?}",
            notice.cause
        );
        if payloads.contains_key(&seq) && notice.cause == LossCause::Skipped {
            assert!(damaged, "seq {seq} was returned to its appender, then skipped without damage");
        }
    }
}

#[test]
fn whole_shipper_simulation() {
    let seeds: Vec<u64> = if let Ok(s) = std::env::var("RINGSHIP_SHIPPER_SIM_SEED") {
        vec![s.parse().expect("RINGSHIP_SHIPPER_SIM_SEED is a number")]
    } else {
        let n = std::env::var("RINGSHIP_SHIPPER_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_SEEDS);
        (0..n).collect()
    };
    let mut total = Counts::default();
    for &seed in &seeds {
        match std::panic::catch_unwind(|| run_seed(seed)) {
            Ok(c) => {
                total.restarts += c.restarts;
                total.shutdowns += c.shutdowns;
                total.damage += c.damage;
                total.switches += c.switches;
                total.user_faults += c.user_faults;
            }
            Err(e) => {
                eprintln!(
                    "shipper simulation failed at seed {seed}; replay it with:\n  \
                     RINGSHIP_SHIPPER_SIM_SEED={seed} cargo test --lib whole_shipper_simulation -- --nocapture"
                );
                std::panic::resume_unwind(e);
            }
        }
    }
    eprintln!(
        "shipper simulation: {} seeds, {} kills and restarts, {} shutdowns, {} damage at rest, {} switches, \
         {} endpoint faults",
        seeds.len(),
        total.restarts,
        total.shutdowns,
        total.damage,
        total.switches,
        total.user_faults
    );
}
