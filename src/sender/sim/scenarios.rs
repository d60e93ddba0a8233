//! Scripted scenarios on the whole-shipper simulation: the real worker
//! protocol and supervisor, a simulated disk and simulated time, endpoints
//! that answer as each scenario says. A scenario runs in microseconds and
//! measures its bounds on the simulated clock, so it asserts exact timing
//! promises (I7, I10) that a test on real threads could only poll for.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{MS, Mode, Receiver, Rng, Run, nanos, open};
use crate::sender::machine::{MachineConfig, Nanos};
use crate::sender::{Health, HealthState, SenderStats, ShipperConfig};
use crate::sim::{Faults, SimDisk};
use crate::sync::atomic::Ordering;
use crate::transport::Endpoint;

/// One shipper on a simulated disk, driven by hand.
struct Scenario {
    run: Option<Run>,
    modes: BTreeMap<String, Mode>,
    rx: Receiver,
    rng: Rng,
    disk: SimDisk,
    cap: u64,
}

fn config() -> ShipperConfig {
    ShipperConfig {
        machine: MachineConfig {
            max_batch_records: 100,
            max_batch_bytes: 1 << 16,
            linger: Duration::ZERO,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(200),
        },
        send_timeout: Duration::from_millis(100),
        abandon_after: Duration::from_millis(200),
        stall_after: Duration::from_millis(500),
        supervise_every: Duration::from_millis(10),
        seed: 1,
    }
}

impl Scenario {
    fn new(endpoint: &str) -> Scenario {
        Scenario::with_ring(endpoint, 64 << 10)
    }

    /// A shipper to `endpoint` on a ring of `cap` bytes (records of at
    /// most 1 KiB).
    fn with_ring(endpoint: &str, cap: u64) -> Scenario {
        let disk = SimDisk::new(1, Faults::NONE);
        let mut run = Run::start(open(&disk, cap), config(), Endpoint::new(endpoint), 0);
        run.switch_on_stall = false;
        Scenario { run: Some(run), modes: BTreeMap::new(), rx: Receiver::default(), rng: Rng(7), disk, cap }
    }

    fn run(&self) -> &Run {
        self.run.as_ref().expect("a run")
    }

    /// Shuts the shipper down cleanly and starts it again on the same
    /// ring, as a restarted process does.
    fn restart(&mut self) {
        let now = self.now();
        let endpoint = (*self.run().shared.endpoint.current().1).clone();
        let ring = self.run.take().expect("a run").end(&mut self.rng);
        ring.close().expect("a clean close");
        drop(ring);
        let mut run = Run::start(open(&self.disk, self.cap), config(), endpoint, now);
        run.switch_on_stall = false;
        self.run = Some(run);
    }

    /// Offers a record larger than the ring takes: refused and counted as
    /// rejected.
    fn reject(&mut self) {
        assert!(self.run().shared.append_batch(&[vec![0u8; 4096]]).is_err(), "refused as too large");
    }

    fn set(&mut self, endpoint: &str, mode: Mode) {
        self.modes.insert(endpoint.into(), mode);
    }

    fn append(&mut self, n: u64) {
        let batch: Vec<Vec<u8>> = (0..n).map(|i| format!("record {i}").into_bytes()).collect();
        self.run().shared.append_batch(&batch).expect("the ring takes the records");
    }

    fn switch(&mut self, endpoint: &str) {
        self.run().shared.switch_endpoint(Endpoint::new(endpoint)).expect("a valid endpoint");
    }

    fn now(&self) -> Nanos {
        self.run().now()
    }

    fn stats(&self) -> SenderStats {
        self.run().shared.stats()
    }

    fn health(&self) -> Health {
        self.run().shared.health()
    }

    /// Runs everything due up to `at`, moving the clock from one due moment
    /// to the next.
    fn run_to(&mut self, at: Nanos) {
        while self.now() < at {
            self.step();
        }
    }

    fn step(&mut self) {
        let now = self.now();
        let Scenario { run, modes, rx, rng, .. } = self;
        let run = run.as_mut().expect("a run");
        run.run_due(modes, rx, rng);
        let due = run.next_due().clamp(now + 1, now + MS);
        run.clock.store(due, Ordering::Release);
    }

    /// Runs until `done` holds, and returns the simulated time it took;
    /// panics naming `what` past `limit`.
    fn run_until(&mut self, what: &str, limit: Duration, done: impl Fn(&Scenario) -> bool) -> Nanos {
        let start = self.now();
        while !done(self) {
            assert!(self.now() - start <= nanos(limit), "{what}: not within {limit:?} of simulated time");
            self.step();
        }
        self.now() - start
    }
}

/// I7: after a switch away from an endpoint whose send hangs, the records
/// reach the new one at once when the transport honours the cancellation,
/// and within `abandon_after` and a supervisor tick when it ignores it
/// (the stuck worker is abandoned and replaced).
#[test]
fn a_switch_away_from_a_hung_send_delivers_within_its_bound() {
    let cfg = config();
    let cases = [
        (Mode::HangHonouring, 2 * MS, 0),
        (Mode::HangIgnoring { late_success: false }, nanos(cfg.abandon_after + cfg.supervise_every) + 2 * MS, 1),
    ];
    for (mode, bound, restarts) in cases {
        let mut sc = Scenario::new("A");
        sc.set("A", mode);
        sc.append(10);
        sc.run_to(5 * MS);
        assert!(sc.run().shared.status.lock().send_started.is_some(), "{mode:?}: the send to A is out");
        sc.switch("B");
        let took = sc.run_until("delivery to B", Duration::from_secs(10), |s| s.stats().ring.acked == 10);
        assert!(took <= bound, "{mode:?}: delivered {took} ns after the switch, bound {bound} ns");
        assert_eq!(sc.stats().worker_restarts, restarts, "{mode:?}");
        assert_eq!(sc.rx.records.len(), 10, "{mode:?}");
    }
}

/// Retries of a failing endpoint back off exponentially up to
/// `backoff_max` (with jitter: between half of it and all of it), so over
/// ten simulated seconds the count lies in a known band, and nothing is
/// acked that the endpoint did not accept.
#[test]
fn retries_back_off_up_to_backoff_max() {
    let cfg = config();
    let mut sc = Scenario::new("A");
    sc.set("A", Mode::Flaky);
    sc.append(1);
    let run_for = 10_000 * MS;
    sc.run_to(run_for);
    let retries = sc.stats().retries;
    let max = nanos(cfg.machine.backoff_max);
    // At the cap a retry waits between max / 2 and max; the ramp up to it
    // (10, 20, ... ms) adds a few.
    let (least, most) = (run_for / max, run_for / (max / 2) + 8);
    assert!((least..=most).contains(&retries), "{retries} retries in 10 s, expected {least} to {most}");
    assert_eq!(sc.stats().ring.acked, 0);
    assert_eq!(sc.health().state, HealthState::Stalled, "pending for 10 s with no ack");
}

/// I10: pending records that no endpoint accepts are reported stalled
/// within `stall_after` and two supervisor ticks, once, with the error;
/// delivery clears the stall.
#[test]
fn a_stall_is_reported_within_its_bound_and_cleared_by_delivery() {
    let cfg = config();
    let mut sc = Scenario::new("A");
    sc.set("A", Mode::Refuse);
    sc.append(3);
    let took = sc.run_until("a stall", Duration::from_secs(10), |s| s.health().state == HealthState::Stalled);
    let bound = nanos(cfg.stall_after) + 2 * nanos(cfg.supervise_every);
    assert!(took <= bound, "stalled after {took} ns, bound {bound} ns");
    assert!(sc.health().last_error.is_some_and(|e| e.contains("403")), "{:?}", sc.health());
    let later = sc.now() + 1_000 * MS;
    sc.run_to(later);
    assert_eq!((sc.stats().stalls, sc.run().stall_notices), (1, 1), "one stall, one notice");
    sc.set("A", Mode::Deliver { latency: MS });
    // A permanent refusal retries at `backoff_max`.
    sc.run_until("delivery", cfg.machine.backoff_max * 2, |s| s.stats().ring.acked == 3);
    sc.run_to(sc.now() + 2 * nanos(cfg.supervise_every));
    assert_eq!(sc.health().state, HealthState::Healthy, "{:?}", sc.health());
}

/// A send abandoned as stuck that succeeds late, after its replacement
/// delivered the same records, is no gap: the receiver gets no notice,
/// every record is acked once, and nothing stays pending.
#[test]
fn a_late_success_after_abandonment_is_no_gap() {
    let cfg = config();
    let mut sc = Scenario::new("A");
    sc.set("A", Mode::HangIgnoring { late_success: true });
    sc.append(5);
    sc.run_until("the abandonment", Duration::from_secs(10), |s| s.stats().worker_restarts == 1);
    sc.set("A", Mode::Deliver { latency: MS });
    sc.run_until("the replacement's delivery", Duration::from_secs(10), |s| s.stats().ring.acked == 5);
    // The abandoned send answers at five times the send timeout.
    sc.run_to(sc.now() + 5 * nanos(cfg.send_timeout));
    let s = sc.stats();
    assert_eq!((s.ring.acked, s.ring.pending, s.gap_notices), (5, 0, 0), "{s:?}");
    assert!(sc.rx.notices.is_empty(), "{:?}", sc.rx.notices);
    assert_eq!(sc.rx.records.keys().copied().collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
}

/// Records the ring overwrote while the endpoint refused reach the
/// receiver as one gap notice with their exact range and cause, ahead of
/// the survivors, once the endpoint takes batches again.
#[test]
fn records_overwritten_while_the_endpoint_refused_arrive_as_a_gap_notice() {
    let mut sc = Scenario::with_ring("A", 4096);
    sc.set("A", Mode::Refuse);
    // 200 frames of 40 bytes: twice what the ring holds.
    for _ in 0..20 {
        sc.append(10);
    }
    sc.run_to(50 * MS);
    let lost = sc.stats().ring.overwritten;
    assert!(lost > 0, "the 4 KiB ring overflowed");
    sc.set("A", Mode::Deliver { latency: MS });
    sc.run_until("the survivors' delivery", Duration::from_secs(10), |s| s.stats().ring.pending == 0);
    let notices: Vec<_> = sc.rx.notices.iter().map(|g| (g.first_seq, g.last_seq, g.cause)).collect();
    assert_eq!(notices, [(1, lost, crate::LossCause::Overwritten)]);
    assert_eq!(sc.rx.records.keys().copied().collect::<Vec<_>>(), (lost + 1..=200).collect::<Vec<_>>());
    assert_eq!(sc.stats().gap_notices, 1);
}

/// Rejections reach the receiver in the next batch's gap notice, each
/// once, those not yet reported when the shipper stops included: the
/// count reported is kept in the ring across the restart.
#[test]
fn rejections_are_reported_once_across_a_restart() {
    let mut sc = Scenario::with_ring("A", 64 << 10);
    sc.set("A", Mode::Deliver { latency: MS });
    let rejected = |sc: &Scenario| sc.rx.notices.iter().map(|g| g.rejected).collect::<Vec<_>>();
    sc.reject();
    sc.append(1);
    sc.run_until("the first delivery", Duration::from_secs(1), |s| s.stats().ring.acked == 1);
    assert_eq!(rejected(&sc), [1]);
    sc.reject();
    sc.reject();
    sc.restart();
    assert_eq!(sc.stats().ring.rejected_reported, 1, "kept by the ring");
    sc.append(1);
    sc.run_until("the delivery after the restart", Duration::from_secs(1), |s| s.stats().ring.acked == 2);
    assert_eq!(rejected(&sc), [1, 2]);
    sc.restart();
    sc.append(1);
    sc.run_until("a later delivery", Duration::from_secs(1), |s| s.stats().ring.acked == 3);
    assert_eq!(rejected(&sc), [1, 2], "nothing reported twice");
}
