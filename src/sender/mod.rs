//! The shipping half: a worker that reads batches from the ring, sends them
//! through a transport and acknowledges them; a supervisor that detects
//! stalls and replaces stuck workers; and `switch_endpoint`, which never
//! waits for anything.

mod health;
pub(crate) mod machine;
pub(crate) mod supervisor;
pub(crate) mod switch;
mod worker;

#[cfg(test)]
mod sim;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use health::{Health, HealthState, SenderStats, ShutdownReport};

use self::machine::{Counters, MachineConfig, Nanos};
use self::supervisor::{Observation, Verdict, Watch};
use self::switch::Switchboard;
use crate::stats::{LossFeed, LossRange};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{LEVEL_SENDER_HANDLE, LEVEL_SENDER_STATUS, LEVEL_SENDER_WORKERS, Mutex, Signal, Woken};
use crate::transport::{Batch, CancelToken, Endpoint, TransportFactory};
use crate::{Error, Result, Ring};

/// Longest duration a shipper setting may name (a year).
const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Called with the health snapshot when a stall is detected.
pub type StallCallback = Box<dyn Fn(&Health) + Send + Sync>;
/// Called with the loss ranges the ring recorded since the last call:
/// exact, their counts add up to the growth of the ring's loss counters
/// (ranges of one cause that touch arrive merged).
pub type LossCallback = Box<dyn Fn(&[LossRange]) + Send + Sync>;

/// Settings fixed at start.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShipperConfig {
    pub(crate) machine: MachineConfig,
    pub(crate) send_timeout: Duration,
    pub(crate) abandon_after: Duration,
    pub(crate) stall_after: Duration,
    pub(crate) supervise_every: Duration,
    pub(crate) seed: u64,
}

/// Where the shipper's time comes from.
enum Clock {
    /// `Instant`, from the shipper's start.
    Real,
    /// Set by the whole-shipper simulation, which runs the worker and the
    /// supervisor on one thread and jumps time.
    #[cfg(test)]
    Sim(Arc<AtomicU64>),
}

/// `sender.status` (level 50).
#[derive(Default)]
struct Status {
    /// (worker epoch, start) of the send in flight. Times are the
    /// shipper's clock ([`Shared::now`]).
    send_started: Option<(u64, Nanos)>,
    last_ack: Option<Nanos>,
    last_error: Option<String>,
    failing: bool,
    stalled_since: Option<Nanos>,
    stopped: bool,
}

#[derive(Default)]
struct AtomicCounters {
    batches_sent: AtomicU64,
    records_sent: AtomicU64,
    retries: AtomicU64,
    failures: AtomicU64,
    permanent_failures: AtomicU64,
    cancelled: AtomicU64,
    switches: AtomicU64,
    restarts: AtomicU64,
    stalls: AtomicU64,
    gap_notices: AtomicU64,
    callbacks_dropped: AtomicU64,
    overwritten_after_delivery: AtomicU64,
}

pub(crate) struct Shared {
    ring: Arc<Ring>,
    cfg: ShipperConfig,
    factory: Box<dyn TransportFactory>,
    endpoint: Switchboard,
    status: Mutex<Status>,
    /// Wakes the worker: records appended, endpoint switched, shutdown.
    wake: Arc<Signal>,
    /// The epoch of the current worker; an abandoned worker sees it change.
    epoch: AtomicU64,
    /// Intake stopped, drain what is pending.
    closing: AtomicBool,
    /// Stop now.
    stop: AtomicBool,
    counters: AtomicCounters,
    base: Instant,
    clock: Clock,
    /// The worker threads.
    workers: Mutex<Workers>,
    /// The epoch of a worker that died (a panic outside the user code it
    /// contains) or whose thread could not start, 0 for none: the
    /// supervisor replaces it at its next look if it is still the current
    /// one (a replaced worker's death changes nothing).
    worker_died: AtomicU64,
    /// Workers the simulation is to start (it runs them itself).
    #[cfg(test)]
    sim_spawns: std::sync::Mutex<Vec<u64>>,
}

impl Shared {
    /// The body of [`Shipper::shutdown`], run once.
    fn shut_down(
        &self,
        start: Instant,
        deadline: Duration,
        supervisor: Option<(Arc<Signal>, JoinHandle<()>)>,
    ) -> Result<ShutdownReport> {
        let acked_before = self.ring.stats().acked;
        self.closing.store(true, Ordering::Release);
        self.wake();
        // Until drained, or the worker has stopped (an empty read while
        // draining, or a closed ring) with no replacement under way (its
        // epoch still the current one): nothing more will ship then.
        let worker_running = || {
            self.workers
                .lock()
                .current
                .as_ref()
                .is_none_or(|(epoch, h)| !h.is_finished() || *epoch != self.epoch.load(Ordering::Acquire))
        };
        while self.ring.stats().pending > 0 && start.elapsed() < deadline && worker_running() {
            std::thread::sleep(Duration::from_millis(2).min(deadline.saturating_sub(start.elapsed())));
        }
        self.stop_threads();
        if let Some((stop, handle)) = supervisor {
            stop.close();
            let _ = handle.join();
        }
        // Give the worker a moment to leave; a transport stuck past its
        // deadline is left behind, detached, and counted with the abandoned
        // ones (which stay detached too).
        let worker = self.workers.lock().current.take();
        if let Some((_, handle)) = worker {
            let grace = Instant::now() + SHUTDOWN_GRACE;
            while !handle.is_finished() && Instant::now() < grace {
                std::thread::sleep(Duration::from_millis(1));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                self.workers.lock().abandoned.push(handle);
            }
        }
        self.status.lock().stopped = true;
        let stats = self.stats();
        // `close` syncs, and releases the directory even when that fails:
        // a separate `sync` first would return before the release.
        self.ring.close()?;
        Ok(ShutdownReport {
            drained: stats.ring.pending == 0,
            delivered: stats.ring.acked - acked_before,
            left_pending: stats.ring.pending,
            elapsed: start.elapsed(),
            stats,
        })
    }

    /// Tells every thread to stop, cancelling the send in flight.
    fn stop_threads(&self) {
        self.closing.store(true, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        self.cancel_inflight();
        self.wake();
    }

    fn new(
        ring: Arc<Ring>,
        cfg: ShipperConfig,
        factory: Box<dyn TransportFactory>,
        endpoint: Endpoint,
        clock: Clock,
    ) -> Shared {
        let wake = Arc::new(Signal::new());
        ring.wake_on_append(Arc::clone(&wake));
        Shared {
            ring,
            cfg,
            factory,
            endpoint: Switchboard::new(endpoint),
            status: Mutex::new(LEVEL_SENDER_STATUS, "sender.status", Status::default()),
            wake,
            epoch: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            counters: AtomicCounters::default(),
            base: Instant::now(),
            clock,
            workers: Mutex::new(LEVEL_SENDER_WORKERS, "sender.workers", Workers::default()),
            worker_died: AtomicU64::new(0),
            #[cfg(test)]
            sim_spawns: std::sync::Mutex::default(),
        }
    }

    /// Nanoseconds since the shipper started: the one clock its decisions
    /// use (a simulated one in the whole-shipper simulation).
    fn now(&self) -> Nanos {
        match &self.clock {
            Clock::Real => u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX),
            #[cfg(test)]
            Clock::Sim(t) => t.load(Ordering::Acquire),
        }
    }

    /// The time from `at` (the shipper's clock) to now.
    fn since(&self, at: Nanos) -> Duration {
        Duration::from_nanos(self.now().saturating_sub(at))
    }

    fn duration_until(&self, at: Nanos) -> Duration {
        Duration::from_nanos(at.saturating_sub(self.now()))
    }

    fn generation(&self) -> u64 {
        self.endpoint.generation()
    }

    fn wake(&self) {
        self.wake.notify();
    }

    fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(u64, u64)> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // The ring wakes the worker.
        self.ring.append_batch(payloads)
    }

    fn switch_endpoint(&self, endpoint: Endpoint) -> Result<u64> {
        check_endpoint(&*self.factory, &endpoint)?;
        let (generation, changed) = self.endpoint.switch(endpoint);
        self.counters.switches.fetch_add(1, Ordering::Relaxed);
        if changed {
            self.wake();
        }
        Ok(generation)
    }

    /// Registers a send by worker `epoch`: returns the endpoint to use and
    /// the token a switch will fire.
    fn begin_send(&self, epoch: u64) -> (u64, Arc<Endpoint>, CancelToken) {
        if self.epoch.load(Ordering::Acquire) != epoch {
            // Replaced already: register nothing (the supervisor would take
            // a hang here for the current worker's), and send nothing.
            let (generation, endpoint) = self.endpoint.current();
            let cancelled = CancelToken::new();
            cancelled.cancel();
            return (generation, endpoint, cancelled);
        }
        let sent = self.endpoint.begin_send(epoch);
        let mut st = self.status.lock();
        // A replaced worker's late call never hides its replacement's send
        // from the supervisor.
        if st.send_started.is_none_or(|(e, _)| e <= epoch) {
            st.send_started = Some((epoch, self.now()));
        }
        sent
    }

    fn end_send(&self, epoch: u64) {
        self.endpoint.end_send(epoch);
        let mut st = self.status.lock();
        if st.send_started.is_some_and(|(e, _)| e == epoch) {
            st.send_started = None;
        }
    }

    fn note_error(&self, message: &str) {
        let mut st = self.status.lock();
        st.failing = true;
        st.last_error = Some(message.to_owned());
    }

    /// The endpoint accepted `batch`: counts its gap notice, and clears
    /// the error shown in health.
    fn note_accepted(&self, batch: &Batch) {
        if batch.gap.is_some() {
            self.counters.gap_notices.fetch_add(1, Ordering::Relaxed);
        }
        let mut st = self.status.lock();
        st.failing = false;
        st.last_error = None;
    }

    fn note_ack(&self) {
        let now = self.now();
        self.status.lock().last_ack = Some(now);
    }

    fn add_counters(&self, before: &Counters, after: &Counters) {
        let c = &self.counters;
        c.batches_sent.fetch_add(after.batches_sent - before.batches_sent, Ordering::Relaxed);
        c.records_sent.fetch_add(after.records_sent - before.records_sent, Ordering::Relaxed);
        c.retries.fetch_add(after.retries - before.retries, Ordering::Relaxed);
        c.failures.fetch_add(after.failures - before.failures, Ordering::Relaxed);
        c.permanent_failures.fetch_add(after.permanent_failures - before.permanent_failures, Ordering::Relaxed);
        c.cancelled.fetch_add(after.cancelled - before.cancelled, Ordering::Relaxed);
    }

    fn health(&self) -> Health {
        self.health_with(&self.ring.stats())
    }

    /// Health, given a snapshot of the ring's counters.
    fn health_with(&self, ring: &crate::RingStats) -> Health {
        let (generation, endpoint) = self.endpoint.current();
        let endpoint = endpoint.address.clone();
        let st = self.status.lock();
        let state = if st.stopped {
            HealthState::Stopped
        } else if st.stalled_since.is_some() {
            HealthState::Stalled
        } else if st.failing {
            HealthState::Degraded
        } else {
            HealthState::Healthy
        };
        Health {
            state,
            stalled_for: st.stalled_since.map(|s| self.since(s)),
            pending: ring.pending,
            since_last_ack: st.last_ack.map(|a| self.since(a)),
            last_error: st.last_error.clone(),
            endpoint,
            generation,
            worker_restarts: self.counters.restarts.load(Ordering::Relaxed),
        }
    }

    fn stats(&self) -> SenderStats {
        // One ring snapshot serves both the counters and the health.
        let ring = self.ring.stats();
        let health = self.health_with(&ring);
        let c = &self.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SenderStats {
            ring,
            batches_sent: load(&c.batches_sent),
            records_sent: load(&c.records_sent),
            retries: load(&c.retries),
            send_failures: load(&c.failures),
            permanent_failures: load(&c.permanent_failures),
            cancelled_sends: load(&c.cancelled),
            switches: load(&c.switches),
            worker_restarts: load(&c.restarts),
            abandoned_workers: self.abandoned_running(),
            stalls: load(&c.stalls),
            gap_notices: load(&c.gap_notices),
            callbacks_dropped: load(&c.callbacks_dropped),
            overwritten_after_delivery: load(&c.overwritten_after_delivery),
            since_last_ack: health.since_last_ack,
            endpoint: health.endpoint,
            generation: health.generation,
            health: health.state,
        }
    }

    /// Cancels the send in flight, whichever worker runs it.
    fn cancel_inflight(&self) {
        self.endpoint.cancel_inflight();
    }

    /// Abandons the current worker (stuck in a send past its deadline) and
    /// starts a fresh one with a new transport (I7). An abandoned worker
    /// whose transport ignores its deadline and cancellation keeps its
    /// thread until the send returns: those are counted in
    /// [`SenderStats::abandoned_workers`], so the leak shows.
    fn replace_worker(self: &Arc<Self>) {
        let finished = self.take_finished_abandoned();
        // Joining a finished thread does not wait; no lock is held anyway.
        for h in finished {
            let _ = h.join();
        }
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.cancel_inflight();
        self.status.lock().send_started = None;
        self.counters.restarts.fetch_add(1, Ordering::Relaxed);
        spawn_worker(self, epoch);
    }

    /// Removes the abandoned workers that have finished, to be joined.
    fn take_finished_abandoned(&self) -> Vec<JoinHandle<()>> {
        let mut w = self.workers.lock();
        let (done, running) = std::mem::take(&mut w.abandoned).into_iter().partition(JoinHandle::is_finished);
        w.abandoned = running;
        done
    }

    /// Abandoned workers still in their sends.
    fn abandoned_running(&self) -> u64 {
        self.workers.lock().abandoned.iter().filter(|h| !h.is_finished()).count() as u64
    }
}

/// The worker threads: the current one, with the epoch it was started
/// for, and abandoned ones not yet known to have finished.
#[derive(Default)]
struct Workers {
    current: Option<(u64, JoinHandle<()>)>,
    abandoned: Vec<JoinHandle<()>>,
}

/// Starts worker `epoch`. It makes its own transport, so that the factory
/// (user code) never runs on the supervisor's thread or the host's; a
/// panic that escapes the worker is caught, shows in health, and the
/// supervisor replaces the worker at its next look.
fn spawn_worker(shared: &Arc<Shared>, epoch: u64) {
    #[cfg(test)]
    if let Clock::Sim(_) = shared.clock {
        shared.sim_spawns.lock().expect("sim spawns").push(epoch);
        return;
    }
    let s = Arc::clone(shared);
    let spawned = std::thread::Builder::new().name(format!("ringship-send-{epoch}")).spawn(move || {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker::run(&s, epoch))) {
            s.note_error(&format!("the sender worker panicked: {}", panic_message(&*p)));
            s.worker_died.store(epoch, Ordering::Release);
        }
    });
    let handle = match spawned {
        Ok(h) => h,
        Err(e) => {
            shared.note_error(&format!("could not start a sender worker thread: {e}"));
            shared.worker_died.store(epoch, Ordering::Release);
            return;
        }
    };
    let mut w = shared.workers.lock();
    if let Some((_, previous)) = w.current.replace((epoch, handle)) {
        w.abandoned.push(previous);
    }
}

/// The message of a caught panic, for health.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with no message".to_owned())
}

/// Runs a user callback; a panic in it is caught so the callback thread
/// lives on.
fn call_back(what: &str, f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        eprintln!("ringship: the {what} callback panicked ({}); later ones still run", panic_message(&*p));
        // A payload whose own drop panics must not end the thread either.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(p)));
    }
}

/// Events for the callback thread, queued at most this many.
const CALLBACK_QUEUE: usize = 16;

/// What the supervisor hands to the user's callbacks.
enum Event {
    Stall(Health),
    Loss(Vec<LossRange>),
}

/// Runs the user's callbacks on a thread of their own, so that a slow or
/// blocking one holds up neither supervision nor shutdown. Ends when the
/// supervisor drops its sender; never joined.
fn run_callbacks(
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
struct Callbacks {
    /// `None` when no callback is set.
    tx: Option<crossbeam_channel::Sender<Event>>,
    /// `on_stall` is set.
    on_stall: bool,
    /// Loss ranges the full queue did not take yet, handed over with the
    /// next ones.
    backlog: LossFeed,
}

impl Callbacks {
    /// Queues a stall notice, if `on_stall` is set; dropped (and counted)
    /// when the queue is full.
    fn stall(&self, shared: &Shared) {
        if let Some(tx) = self.tx.as_ref().filter(|_| self.on_stall) {
            if tx.try_send(Event::Stall(shared.health())).is_err() {
                shared.counters.callbacks_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues loss ranges; when the queue is full they wait, merged by
    /// cause with later ones (counts exact), so that none is dropped.
    fn loss(&mut self, ranges: Vec<LossRange>) {
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

/// `ring` is the ring's stats when the shipper started: stalls are judged
/// from that moment, whenever this thread gets to run. Losses come from
/// the ring's feed, watched from the start.
fn supervise(shared: &Arc<Shared>, stop: &Signal, ring: &crate::RingStats, mut cb: Callbacks) {
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
fn tick(shared: &Arc<Shared>, watch: &mut Watch, cb: &mut Callbacks) {
    let died = shared.worker_died.swap(0, Ordering::AcqRel);
    if died != 0 && died == shared.epoch.load(Ordering::Acquire) && !shared.stop.load(Ordering::Acquire) {
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

/// Refuses an endpoint no transport could use: an empty address, or one
/// with whitespace or control characters (a configuration typo).
/// Refuses an endpoint no transport can use (an empty address, or one with
/// whitespace or control characters), then one the factory's transports
/// cannot (its check is user code: a panic in it refuses the endpoint).
fn check_endpoint(factory: &dyn TransportFactory, endpoint: &Endpoint) -> Result<()> {
    let a = &endpoint.address;
    if a.is_empty() {
        return Err(Error::Config("the endpoint address is empty".into()));
    }
    if a.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::Config(format!("the endpoint address {a:?} holds whitespace or control characters")));
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| factory.check_endpoint(endpoint))) {
        Ok(checked) => checked,
        Err(p) => Err(Error::Config(format!(
            "the transport factory's check of endpoint {a:?} panicked: {}",
            panic_message(&*p)
        ))),
    }
}

/// Ships the records of a [`Ring`] to an endpoint that can be switched at
/// any moment.
///
/// A worker thread reads batches from the ring, sends them through the
/// transport, and acknowledges them in the ring only once the endpoint
/// accepted them (at-least-once: receivers de-duplicate by seq). A
/// supervisor thread reports a stall when records are pending and nothing is
/// acknowledged for `stall_after`, and replaces a worker whose send runs
/// past `abandon_after` with a fresh one from the transport factory.
///
/// [`Shipper::switch_endpoint`] never waits: it records the new endpoint,
/// cancels a send in flight to an older one and returns.
///
/// A `Shipper` is a handle: clones are cheap and share one shipper, so a
/// metrics thread and a logging layer can each hold one. Any clone can
/// [`shutdown`](Shipper::shutdown) it. Dropping the last clone without a
/// shutdown only signals the threads to stop, leaving the ring to be
/// recovered at the next open.
#[derive(Clone)]
pub struct Shipper {
    handle: Arc<Handle>,
}

/// What the clones of a [`Shipper`] share.
struct Handle {
    shared: Arc<Shared>,
    /// `sender.handle` (level 45): the supervisor thread and how far
    /// shutdown has got.
    phase: Mutex<Phase>,
    /// Fired when a shutdown ends, for the callers waiting on another's.
    finished: CancelToken,
}

enum Phase {
    Running {
        supervisor: Option<(Arc<Signal>, JoinHandle<()>)>,
    },
    ShuttingDown,
    /// The first shutdown's report, or its error's message.
    Done(Box<std::result::Result<ShutdownReport, String>>),
}

/// How long a worker still in its send at the end of a shutdown gets to
/// leave before it is left behind.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper").field("ring", &self.handle.shared.ring).finish_non_exhaustive()
    }
}

impl Shipper {
    /// Starts configuring a shipper for `ring`.
    pub fn builder(ring: impl Into<Arc<Ring>>) -> ShipperBuilder {
        ShipperBuilder::new(ring.into())
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The ring the shipper reads from.
    pub fn ring(&self) -> &Arc<Ring> {
        &self.shared().ring
    }

    /// Appends a record to the ring. See [`Ring::append`].
    ///
    /// # Errors
    /// As [`Ring::append`]; [`Error::Closed`] once shutdown has begun.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        self.append_batch(&[payload]).map(|(first, _)| first)
    }

    /// Appends many records in one write. See [`Ring::append_batch`].
    ///
    /// # Errors
    /// As [`Ring::append_batch`]; [`Error::Closed`] once shutdown has begun.
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(u64, u64)> {
        self.shared().append_batch(payloads)
    }

    /// Points the shipper at `endpoint` and returns its generation.
    ///
    /// Returns at once: it never waits for the send in flight, which is
    /// cancelled if it targets an older endpoint. That batch then goes to
    /// the new endpoint, unless the old one had already accepted it. Rapid
    /// switches coalesce: only the latest matters. Switching to the
    /// endpoint in use (equal address and headers, as a configuration
    /// reload does) returns its generation and changes nothing.
    ///
    /// # Errors
    /// [`Error::Config`] for an endpoint the transport cannot use (see
    /// [`TransportFactory::check_endpoint`]), or an address that is empty or
    /// holds whitespace or control characters; shipping goes on to the
    /// endpoint in use.
    pub fn switch_endpoint(&self, endpoint: Endpoint) -> Result<u64> {
        self.shared().switch_endpoint(endpoint)
    }

    /// The endpoint in use.
    pub fn endpoint(&self) -> Endpoint {
        (*self.shared().endpoint.current().1).clone()
    }

    /// Every counter, the ring's included.
    pub fn stats(&self) -> SenderStats {
        self.shared().stats()
    }

    /// The sender's health.
    pub fn health(&self) -> Health {
        self.shared().health()
    }

    /// Stops intake, drains for at most `deadline`, stops the threads, and
    /// syncs and closes the ring, keeping whatever could not be shipped for
    /// the next start.
    ///
    /// Returns within `deadline` plus 200 ms (a worker still in its send
    /// then is left behind, counted in `abandoned_workers`) plus the final
    /// sync, whatever the transport, the factory or the callbacks do:
    /// callbacks still queued run on their own thread afterwards.
    ///
    /// Any clone may call it. A call while another clone's shutdown runs
    /// waits for that one, within its own `deadline` plus the same bound;
    /// a call after it returns the same report.
    ///
    /// # Errors
    /// The ring's sync or checkpoint error (the ring is closed and its
    /// directory released either way); to a later call,
    /// [`Error::ShutDown`] naming that error, or saying that another
    /// clone's shutdown is still running when this call's wait ends.
    pub fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport> {
        let start = Instant::now();
        let supervisor = {
            let mut phase = self.handle.phase.lock();
            match &mut *phase {
                Phase::Running { supervisor } => {
                    let supervisor = supervisor.take();
                    *phase = Phase::ShuttingDown;
                    supervisor
                }
                Phase::ShuttingDown => {
                    drop(phase);
                    return self.await_other_shutdown(start, deadline);
                }
                Phase::Done(done) => return (**done).clone().map_err(Error::ShutDown),
            }
        };
        let result = self.handle.shared.shut_down(start, deadline, supervisor);
        *self.handle.phase.lock() =
            Phase::Done(Box::new(result.as_ref().map(Clone::clone).map_err(ToString::to_string)));
        self.handle.finished.cancel();
        result
    }

    fn await_other_shutdown(&self, start: Instant, deadline: Duration) -> Result<ShutdownReport> {
        let bound = deadline.saturating_add(SHUTDOWN_GRACE).saturating_add(Duration::from_secs(1));
        self.handle.finished.wait_timeout(bound.saturating_sub(start.elapsed()));
        match &*self.handle.phase.lock() {
            Phase::Done(done) => (**done).clone().map_err(Error::ShutDown),
            _ => Err(Error::ShutDown("another handle's shutdown of this shipper is still running".into())),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Signal only; never block.
        self.shared.stop_threads();
        if let Phase::Running { supervisor: Some((stop, _handle)) } = &*self.phase.lock() {
            stop.close();
        }
    }
}

/// Configures a [`Shipper`]. Every knob has a default but the endpoint and
/// the transport.
pub struct ShipperBuilder {
    ring: Arc<Ring>,
    endpoint: Option<Endpoint>,
    factory: Option<Box<dyn TransportFactory>>,
    cfg: ShipperConfig,
    abandon_after: Option<Duration>,
    supervise_every: Option<Duration>,
    on_stall: Option<StallCallback>,
    on_loss: Option<LossCallback>,
}

impl ShipperBuilder {
    fn new(ring: Arc<Ring>) -> Self {
        ShipperBuilder {
            ring,
            endpoint: None,
            factory: None,
            cfg: ShipperConfig {
                machine: MachineConfig {
                    max_batch_records: 1000,
                    max_batch_bytes: 1 << 20,
                    linger: Duration::from_millis(10),
                    backoff_initial: Duration::from_millis(100),
                    backoff_max: Duration::from_secs(30),
                },
                send_timeout: Duration::from_secs(10),
                abandon_after: Duration::ZERO,
                stall_after: Duration::from_secs(30),
                supervise_every: Duration::ZERO,
                seed: 0x5eed,
            },
            abandon_after: None,
            supervise_every: None,
            on_stall: None,
            on_loss: None,
        }
    }

    /// The endpoint to start with (required).
    #[must_use]
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Makes the transports (required); called on the worker's thread, and
    /// again for each replacement of a stuck worker. A panic in it is
    /// caught, shown in health, and the factory asked again after a
    /// backoff.
    #[must_use]
    pub fn transport(mut self, factory: impl TransportFactory + 'static) -> Self {
        self.factory = Some(Box::new(factory));
        self
    }

    /// Most records in a batch (default 1000).
    #[must_use]
    pub fn max_batch_records(mut self, n: usize) -> Self {
        self.cfg.machine.max_batch_records = n;
        self
    }

    /// Most payload bytes in a batch, roughly: a batch stops at the first
    /// record that reaches it (default 1 MiB).
    #[must_use]
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.cfg.machine.max_batch_bytes = n;
        self
    }

    /// How long a partial batch waits for more records (default 10 ms).
    #[must_use]
    pub fn linger(mut self, d: Duration) -> Self {
        self.cfg.machine.linger = d;
        self
    }

    /// Deadline given to each send (default 10 s).
    #[must_use]
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.cfg.send_timeout = d;
        self
    }

    /// A send still running this long after it started is abandoned with
    /// its worker, which a fresh one replaces (default twice `send_timeout`).
    #[must_use]
    pub fn abandon_after(mut self, d: Duration) -> Self {
        self.abandon_after = Some(d);
        self
    }

    /// First retry delay; doubles per attempt with jitter (default 100 ms).
    #[must_use]
    pub fn backoff_initial(mut self, d: Duration) -> Self {
        self.cfg.machine.backoff_initial = d;
        self
    }

    /// Longest retry delay, also used after a non-retryable error (default 30 s).
    #[must_use]
    pub fn backoff_max(mut self, d: Duration) -> Self {
        self.cfg.machine.backoff_max = d;
        self
    }

    /// Records pending with no acknowledgement for this long is a stall
    /// (default 30 s).
    #[must_use]
    pub fn stall_after(mut self, d: Duration) -> Self {
        self.cfg.stall_after = d;
        self
    }

    /// How often the supervisor looks (default a tenth of the smaller of
    /// `stall_after` and `abandon_after`, between 5 ms and 1 s).
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    #[must_use]
    pub fn supervise_every(mut self, d: Duration) -> Self {
        self.supervise_every = Some(d);
        self
    }

    /// Seed of the retry jitter (for reproducible tests).
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    #[must_use]
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.cfg.seed = seed;
        self
    }

    /// Called when a stall is detected, on ringship's callback thread with
    /// no lock held: a slow callback delays only later callbacks (stall
    /// notices beyond 16 waiting are dropped and counted in
    /// [`SenderStats::callbacks_dropped`]); it may call into the shipper.
    #[must_use]
    pub fn on_stall(mut self, f: impl Fn(&Health) + Send + Sync + 'static) -> Self {
        self.on_stall = Some(Box::new(f));
        self
    }

    /// Called with the loss ranges the ring recorded since the last call
    /// (overwritten, damaged, skipped), on ringship's callback thread with
    /// no lock held. While the callback is busy, ranges wait, merged by
    /// cause; none is dropped.
    #[must_use]
    pub fn on_loss(mut self, f: impl Fn(&[LossRange]) + Send + Sync + 'static) -> Self {
        self.on_loss = Some(Box::new(f));
        self
    }

    /// Starts the worker and supervisor threads.
    ///
    /// # Errors
    /// [`Error::Config`] for a missing endpoint or transport, or a value
    /// out of range (a duration of zero where one is needed, or of more
    /// than 365 days).
    pub fn start(self) -> Result<Shipper> {
        let mut cfg = self.cfg;
        let endpoint = self.endpoint.ok_or_else(|| Error::Config("the shipper needs an endpoint".into()))?;
        let factory = self.factory.ok_or_else(|| Error::Config("the shipper needs a transport".into()))?;
        check_endpoint(&*factory, &endpoint)?;
        let m = cfg.machine;
        if m.max_batch_records == 0 || m.max_batch_bytes == 0 {
            return Err(Error::Config("max_batch_records and max_batch_bytes must be at least 1".into()));
        }
        // Each duration set (unset: a default derived below), whether zero
        // is allowed. None may be too long to add to an instant, as
        // deadlines are (`Duration::MAX` is a natural way to write "never",
        // and would panic there).
        let durations = [
            ("linger", Some(m.linger), true),
            ("send_timeout", Some(cfg.send_timeout), false),
            ("abandon_after", self.abandon_after, true),
            ("backoff_max", Some(m.backoff_max), true),
            ("stall_after", Some(cfg.stall_after), false),
            ("supervise_every", self.supervise_every, true),
        ];
        for (name, d, zero_allowed) in durations {
            let Some(d) = d else { continue };
            if d.is_zero() && !zero_allowed {
                return Err(Error::Config(format!("{name} must be longer than zero")));
            }
            if d > MAX_DURATION {
                return Err(Error::Config(format!("{name} must be at most {} days", MAX_DURATION.as_secs() / 86_400)));
            }
        }
        if m.backoff_initial.is_zero() || m.backoff_initial > m.backoff_max {
            return Err(Error::Config("backoff_initial must be above zero and at most backoff_max".into()));
        }
        cfg.abandon_after = self.abandon_after.unwrap_or(cfg.send_timeout * 2);
        if cfg.abandon_after <= cfg.send_timeout {
            return Err(Error::Config("abandon_after must be longer than send_timeout".into()));
        }
        if cfg.abandon_after > MAX_DURATION {
            return Err(Error::Config(format!(
                "abandon_after (twice send_timeout unless set) must be at most {} days",
                MAX_DURATION.as_secs() / 86_400
            )));
        }
        cfg.supervise_every = self.supervise_every.unwrap_or_else(|| {
            (cfg.stall_after.min(cfg.abandon_after) / 10).clamp(Duration::from_millis(5), Duration::from_secs(1))
        });
        let shared = Arc::new(Shared::new(self.ring, cfg, factory, endpoint, Clock::Real));
        let thread_error = |what: &str, e: std::io::Error| Error::Io { op: "spawn", path: what.into(), source: e };
        let (has_on_stall, has_on_loss) = (self.on_stall.is_some(), self.on_loss.is_some());
        let tx = if has_on_stall || has_on_loss {
            let (tx, rx) = crossbeam_channel::bounded(CALLBACK_QUEUE);
            let (on_stall, on_loss) = (self.on_stall, self.on_loss);
            std::thread::Builder::new()
                .name("ringship-callbacks".into())
                .spawn(move || run_callbacks(&rx, on_stall.as_ref(), on_loss.as_ref()))
                .map_err(|e| thread_error("the callback thread", e))?;
            Some(tx)
        } else {
            None
        };
        if has_on_loss {
            shared.ring.watch_losses();
        }
        let initial = shared.ring.stats();
        let stop = Arc::new(Signal::new());
        let stop_rx = Arc::clone(&stop);
        let s = Arc::clone(&shared);
        let cb = Callbacks { tx, on_stall: has_on_stall, backlog: LossFeed::default() };
        // The supervisor first: if it cannot start, no worker is left
        // shipping with nobody to stop it.
        let supervisor = std::thread::Builder::new()
            .name("ringship-supervisor".into())
            .spawn(move || supervise(&s, &stop_rx, &initial, cb))
            .map_err(|e| thread_error("the supervisor thread", e))?;
        spawn_worker(&shared, 1);
        let phase = Phase::Running { supervisor: Some((stop, supervisor)) };
        let handle = Handle {
            shared,
            phase: Mutex::new(LEVEL_SENDER_HANDLE, "sender.handle", phase),
            finished: CancelToken::new(),
        };
        Ok(Shipper { handle: Arc::new(handle) })
    }
}
