//! What the shipper's threads share: settings, the clock, health status,
//! counters, the endpoint switchboard and the worker threads.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::health::{Health, SenderStats, ShutdownReport};
use super::machine::{MachineConfig, Nanos, SendCounters};
use super::switch::Switchboard;
use super::{HealthState, SHUTDOWN_GRACE, worker};
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::{LEVEL_SENDER_STATUS, LEVEL_SENDER_WORKERS, Mutex, Signal};
use crate::transport::{CancelToken, Endpoint, TransportFactory};
use crate::{Error, Result, Ring};

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
pub(super) enum Clock {
    /// `Instant`, from the shipper's start.
    Real,
    /// Set by the whole-shipper simulation, which runs the worker and the
    /// supervisor on one thread and jumps time.
    #[cfg(test)]
    Sim(Arc<AtomicU64>),
}

/// `sender.status` (level 50).
#[derive(Default)]
pub(super) struct Status {
    /// (worker id, start) of the send in flight. Times are the
    /// shipper's clock ([`ShipperCore::now`]).
    pub(super) send_started: Option<(u64, Nanos)>,
    pub(super) last_ack: Option<Nanos>,
    pub(super) last_error: Option<String>,
    pub(super) failing: bool,
    pub(super) stalled_since: Option<Nanos>,
    pub(super) stopped: bool,
    /// The secrets of every endpoint given, scrubbed from errors before
    /// they are kept (a transport's error may quote its URL or headers).
    pub(super) secrets: crate::redact::Secrets,
}

pub(crate) struct ShipperCore {
    pub(super) ring: Arc<Ring>,
    pub(super) cfg: ShipperConfig,
    pub(super) factory: Box<dyn TransportFactory>,
    pub(super) endpoint: Switchboard,
    pub(super) status: Mutex<Status>,
    /// Wakes the worker: records appended, endpoint switched, shutdown.
    pub(super) wake: Arc<Signal>,
    /// The worker id of the current worker; an abandoned worker sees it change.
    pub(super) worker_id: AtomicU64,
    /// Intake stopped, drain what is pending.
    pub(super) closing: AtomicBool,
    /// Stop now.
    pub(super) stop: AtomicBool,
    pub(super) counters: Arc<SendCounters>,
    pub(super) base: Instant,
    pub(super) clock: Clock,
    /// The worker threads.
    pub(super) workers: Mutex<Workers>,
    /// The worker id of a worker that died (a panic outside the user code it
    /// contains) or whose thread could not start, 0 for none: the
    /// supervisor replaces it at its next look if it is still the current
    /// one (a replaced worker's death changes nothing).
    pub(super) worker_died: AtomicU64,
    /// Workers the simulation is to start (it runs them itself).
    #[cfg(test)]
    pub(super) sim_spawns: std::sync::Mutex<Vec<u64>>,
}

impl ShipperCore {
    /// The body of [`Shipper::shutdown`], run once.
    pub(super) fn shut_down(
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
        // worker id still the current one): nothing more will ship then.
        let worker_running =
            || {
                self.workers.lock().current.as_ref().is_none_or(|(worker_id, h)| {
                    !h.is_finished() || *worker_id != self.worker_id.load(Ordering::Acquire)
                })
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
    pub(super) fn stop_threads(&self) {
        self.closing.store(true, Ordering::Release);
        self.stop.store(true, Ordering::Release);
        self.cancel_inflight();
        self.wake();
    }

    pub(super) fn new(
        ring: Arc<Ring>,
        cfg: ShipperConfig,
        factory: Box<dyn TransportFactory>,
        endpoint: Endpoint,
        clock: Clock,
    ) -> ShipperCore {
        let wake = Arc::new(Signal::new());
        ring.wake_on_append(Arc::clone(&wake));
        ShipperCore {
            ring,
            cfg,
            factory,
            status: Mutex::new(LEVEL_SENDER_STATUS, "sender.status", {
                let mut status = Status::default();
                status.secrets.add(&endpoint.address, &endpoint.headers);
                status
            }),
            endpoint: Switchboard::new(endpoint),
            wake,
            worker_id: AtomicU64::new(1),
            closing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            counters: Arc::default(),
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
    pub(super) fn now(&self) -> Nanos {
        match &self.clock {
            Clock::Real => u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX),
            #[cfg(test)]
            Clock::Sim(t) => t.load(Ordering::Acquire),
        }
    }

    /// The time from `at` (the shipper's clock) to now.
    pub(super) fn since(&self, at: Nanos) -> Duration {
        Duration::from_nanos(self.now().saturating_sub(at))
    }

    pub(super) fn duration_until(&self, at: Nanos) -> Duration {
        Duration::from_nanos(at.saturating_sub(self.now()))
    }

    pub(super) fn generation(&self) -> u64 {
        self.endpoint.generation()
    }

    pub(super) fn wake(&self) {
        self.wake.notify();
    }

    pub(super) fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(u64, u64)> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        // The ring wakes the worker.
        self.ring.append_batch(payloads)
    }

    pub(super) fn switch_endpoint(&self, endpoint: Endpoint) -> Result<u64> {
        check_endpoint(&*self.factory, &endpoint)?;
        // Before the switch: the first error from the new endpoint is
        // scrubbed of its secrets too.
        self.status.lock().secrets.add(&endpoint.address, &endpoint.headers);
        let (generation, changed) = self.endpoint.switch(endpoint);
        self.counters.switches.fetch_add(1, Ordering::Relaxed);
        if changed {
            self.wake();
        }
        Ok(generation)
    }

    /// Registers a send by worker `worker_id`: returns the endpoint to use and
    /// the token a switch will fire.
    pub(super) fn begin_send(&self, worker_id: u64) -> (u64, Arc<Endpoint>, CancelToken) {
        if self.worker_id.load(Ordering::Acquire) != worker_id {
            // Replaced already: register nothing (the supervisor would take
            // a hang here for the current worker's), and send nothing.
            let (generation, endpoint) = self.endpoint.current();
            let cancelled = CancelToken::new();
            cancelled.cancel();
            return (generation, endpoint, cancelled);
        }
        let sent = self.endpoint.begin_send(worker_id);
        let mut st = self.status.lock();
        // A replaced worker's late call never hides its replacement's send
        // from the supervisor.
        if st.send_started.is_none_or(|(e, _)| e <= worker_id) {
            st.send_started = Some((worker_id, self.now()));
        }
        sent
    }

    pub(super) fn end_send(&self, worker_id: u64) {
        self.endpoint.end_send(worker_id);
        let mut st = self.status.lock();
        if st.send_started.is_some_and(|(e, _)| e == worker_id) {
            st.send_started = None;
        }
    }

    pub(super) fn note_error(&self, message: &str) {
        let mut st = self.status.lock();
        st.failing = true;
        st.last_error = Some(st.secrets.scrub(message));
    }

    /// The endpoint accepted a batch: clears the error shown in health.
    pub(super) fn note_accepted(&self) {
        let mut st = self.status.lock();
        st.failing = false;
        st.last_error = None;
    }

    pub(super) fn note_ack(&self) {
        let now = self.now();
        self.status.lock().last_ack = Some(now);
    }

    pub(super) fn health(&self) -> Health {
        self.health_with(&self.ring.stats())
    }

    /// Health, given a snapshot of the ring's counters.
    pub(super) fn health_with(&self, ring: &crate::RingStats) -> Health {
        let (generation, endpoint) = self.endpoint.current();
        let endpoint = endpoint.to_string();
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

    pub(super) fn stats(&self) -> SenderStats {
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
    pub(super) fn cancel_inflight(&self) {
        self.endpoint.cancel_inflight();
    }

    /// Abandons the current worker (stuck in a send past its deadline) and
    /// starts a fresh one with a new transport (I7). An abandoned worker
    /// whose transport ignores its deadline and cancellation keeps its
    /// thread until the send returns: those are counted in
    /// [`SenderStats::abandoned_workers`], so the leak shows.
    pub(super) fn replace_worker(self: &Arc<Self>) {
        let finished = self.take_finished_abandoned();
        // Joining a finished thread does not wait; no lock is held anyway.
        for h in finished {
            let _ = h.join();
        }
        let worker_id = self.worker_id.fetch_add(1, Ordering::AcqRel) + 1;
        self.cancel_inflight();
        self.status.lock().send_started = None;
        self.counters.restarts.fetch_add(1, Ordering::Relaxed);
        spawn_worker(self, worker_id);
    }

    /// Removes the abandoned workers that have finished, to be joined.
    pub(super) fn take_finished_abandoned(&self) -> Vec<JoinHandle<()>> {
        let mut w = self.workers.lock();
        let (done, running) = std::mem::take(&mut w.abandoned).into_iter().partition(JoinHandle::is_finished);
        w.abandoned = running;
        done
    }

    /// Abandoned workers still in their sends.
    pub(super) fn abandoned_running(&self) -> u64 {
        self.workers.lock().abandoned.iter().filter(|h| !h.is_finished()).count() as u64
    }
}

/// The worker threads: the current one, with the worker id it was started
/// for, and abandoned ones not yet known to have finished.
#[derive(Default)]
pub(super) struct Workers {
    pub(super) current: Option<(u64, JoinHandle<()>)>,
    pub(super) abandoned: Vec<JoinHandle<()>>,
}

/// Starts worker `worker_id`. It makes its own transport, so that the factory
/// (user code) never runs on the supervisor's thread or the host's; a
/// panic that escapes the worker is caught, shows in health, and the
/// supervisor replaces the worker at its next look.
pub(super) fn spawn_worker(shared: &Arc<ShipperCore>, worker_id: u64) {
    #[cfg(test)]
    if let Clock::Sim(_) = shared.clock {
        shared.sim_spawns.lock().expect("sim spawns").push(worker_id);
        return;
    }
    let s = Arc::clone(shared);
    let spawned = crate::threads::spawn(format!("ringship-send-{worker_id}"), move || {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| worker::run(&s, worker_id))) {
            s.note_error(&format!("the sender worker panicked: {}", panic_message(&*p)));
            s.worker_died.store(worker_id, Ordering::Release);
        }
    });
    let handle = match spawned {
        Ok(h) => h,
        Err(e) => {
            shared.note_error(&format!("could not start a sender worker thread: {e}"));
            shared.worker_died.store(worker_id, Ordering::Release);
            return;
        }
    };
    let mut w = shared.workers.lock();
    if let Some((_, previous)) = w.current.replace((worker_id, handle)) {
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

/// Refuses an endpoint no transport can use (an empty address, or one with
/// whitespace or control characters), then one the factory's transports
/// cannot (its check is user code: a panic in it refuses the endpoint).
pub(super) fn check_endpoint(factory: &dyn TransportFactory, endpoint: &Endpoint) -> Result<()> {
    let mut secrets = crate::redact::Secrets::default();
    secrets.add(&endpoint.address, &endpoint.headers);
    // The factory's message may quote the address or headers it refused.
    check_endpoint_unscrubbed(factory, endpoint).map_err(|e| match e {
        Error::Config(m) => Error::Config(secrets.scrub(&m)),
        other => other,
    })
}

fn check_endpoint_unscrubbed(factory: &dyn TransportFactory, endpoint: &Endpoint) -> Result<()> {
    let (raw, a) = (&endpoint.address, &crate::redact::url(&endpoint.address));
    if raw.is_empty() {
        return Err(Error::Config("the endpoint address is empty".into()));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
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
