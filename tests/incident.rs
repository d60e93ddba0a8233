//! The incident, replayed.
//!
//! A monitoring agent was told to switch its upload endpoint rapidly while a
//! send to the first endpoint was in flight; its sending threads deadlocked
//! one by one while its circular cache overwrote the oldest data, and nobody
//! noticed for days.
//!
//! Here: sends to endpoint A hang (until cancelled, or forever, ignoring
//! cancellation); producers append at full speed into a small ring; several
//! threads switch between A and B thousands of times. The test must finish
//! (a watchdog fails it on deadlock); every appended record must reach B or
//! be counted as overwritten with its range reported; the gap notices must
//! reach B; and health must have reported the stall.

mod common;
#[path = "common/transports.rs"]
mod transports;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{TempRing, assert_identity};
use ringship::{Endpoint, HealthState, LossCause, Ring, RingConfig, Shipper, SyncPolicy};
use transports::{Behavior, Script};

const PRODUCERS: usize = 2;
const SWITCHERS: usize = 4;
const SWITCHES_PER_THREAD: usize = 1000;
const RING_BYTES: u64 = 64 << 10;
const STALL_AFTER: Duration = Duration::from_millis(200);
const WATCHDOG: Duration = Duration::from_secs(90);

fn replay(a: Behavior) {
    let t = TempRing::new();
    let config =
        RingConfig::default().capacity(RING_BYTES).max_record_len(256).max_loss_ranges(48).sync(SyncPolicy::Never);
    let (ring, _) = Ring::open(&t.dir, config).unwrap();
    let script = Script::new();
    script.set("A", a);
    script.set("B", Behavior::Deliver);
    let stalls = Arc::new(AtomicU64::new(0));
    let stall_seen = Arc::clone(&stalls);
    let shipper = Arc::new(
        Shipper::builder(ring)
            .endpoint(Endpoint::new("A"))
            .transport(script.factory())
            .max_batch_records(200)
            .linger(Duration::from_millis(1))
            .backoff_initial(Duration::from_millis(1))
            .backoff_max(Duration::from_millis(20))
            .send_timeout(Duration::from_millis(50))
            .abandon_after(Duration::from_millis(100))
            .stall_after(STALL_AFTER)
            .on_stall(move |h| {
                assert_eq!(h.state, HealthState::Stalled);
                stall_seen.fetch_add(1, Ordering::SeqCst);
            })
            .start()
            .unwrap(),
    );

    // Phase 1: producers at full speed, a storm of switches.
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (shipper, stop) = (shipper.clone(), Arc::clone(&stop_producing));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    shipper.append(format!("producer={p} n={n} event=audit").as_bytes()).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let barrier = Arc::new(Barrier::new(SWITCHERS));
    let switchers: Vec<_> = (0..SWITCHERS)
        .map(|s| {
            let (shipper, barrier) = (shipper.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                let mut worst = Duration::ZERO;
                for i in 0..SWITCHES_PER_THREAD {
                    let to = if (i + s) % 2 == 0 { "A" } else { "B" };
                    let started = Instant::now();
                    shipper.switch_endpoint(Endpoint::new(to)).unwrap();
                    worst = worst.max(started.elapsed());
                    // Hold each endpoint a moment, so sends start, hang, get
                    // cancelled and complete in every order.
                    std::thread::sleep(Duration::from_micros(if i % 7 == 0 { 2000 } else { 300 }));
                }
                worst
            })
        })
        .collect();
    let worst_switch = switchers.into_iter().map(|h| h.join().unwrap()).max().unwrap();

    // Phase 2: stuck on A long enough for the stall to be detected.
    shipper.switch_endpoint(Endpoint::new("A")).unwrap();
    let stall_deadline = Instant::now() + STALL_AFTER * 10;
    let mut saw_stalled_health = false;
    while stalls.load(Ordering::SeqCst) == 0 || !saw_stalled_health {
        assert!(Instant::now() < stall_deadline, "no stall reported: {:?}", shipper.health());
        saw_stalled_health |= shipper.health().state == HealthState::Stalled;
        std::thread::sleep(Duration::from_millis(5));
    }
    stop_producing.store(true, Ordering::SeqCst);
    let appended_by_producers: u64 = producers.into_iter().map(|h| h.join().unwrap()).sum();

    // Phase 3: B again; everything pending must arrive.
    shipper.switch_endpoint(Endpoint::new("B")).unwrap();
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while shipper.stats().ring.pending > 0 {
        assert!(Instant::now() < drain_deadline, "not drained: {:?}", shipper.stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    script.release.store(true, Ordering::SeqCst);

    check_outcome(&shipper, &script, appended_by_producers, worst_switch);
}

/// Every record delivered to B or counted overwritten, with a gap notice.
fn check_outcome(shipper: &Shipper, script: &Script, appended_by_producers: u64, worst_switch: Duration) {
    let stats = shipper.stats();
    let ring = stats.ring;
    assert_identity(&ring);
    assert_eq!(ring.appended, appended_by_producers);
    assert_eq!(ring.last_seq, appended_by_producers, "no record rejected");
    assert_eq!(stats.switches, (SWITCHERS * SWITCHES_PER_THREAD + 2) as u64);
    assert!(ring.overwritten > 0, "the small ring must have overflowed: {stats:?}");

    let received = script.receiver.received("B");
    let delivered: HashSet<u64> = received.records.iter().map(|r| r.seq).collect();
    let losses = shipper.ring().losses();
    assert_eq!(losses.iter().map(|l| l.count).sum::<u64>(), ring.overwritten, "every overwrite is in a range");
    assert!(losses.iter().all(|l| matches!(l.cause, LossCause::Overwritten | LossCause::Mixed)));
    let in_loss_range = |seq: u64| losses.iter().any(|l| l.first_seq <= seq && seq <= l.last_seq);
    let in_gap_notice = |seq: u64| received.gaps.iter().any(|g| g.first_seq <= seq && seq <= g.last_seq);
    let mut missing = 0u64;
    for seq in 1..=ring.last_seq {
        if !delivered.contains(&seq) {
            missing += 1;
            assert!(in_loss_range(seq), "seq {seq} neither delivered to B nor counted overwritten");
            assert!(in_gap_notice(seq), "seq {seq} lost without a gap notice reaching B");
        }
    }
    assert!(missing <= ring.overwritten, "{missing} missing, {} counted overwritten", ring.overwritten);
    assert!(!received.gaps.is_empty(), "gap notices must reach B");
    eprintln!(
        "incident replay: {} appended, {} delivered to B, {} overwritten in {} ranges, {} gap notices, \
         {} switches (slowest {:?}), {} stalls, {} worker restarts",
        ring.appended,
        delivered.len(),
        ring.overwritten,
        losses.len(),
        received.gaps.len(),
        stats.switches,
        worst_switch,
        stats.stalls,
        stats.worker_restarts
    );
}

/// Runs `f` on a thread and fails if it does not finish: a deadlock is a
/// failure, not a hang of the test suite.
fn with_watchdog(name: &str, f: impl FnOnce() + Send + 'static) {
    let h = std::thread::spawn(f);
    let deadline = Instant::now() + WATCHDOG;
    while !h.is_finished() {
        assert!(Instant::now() < deadline, "{name}: still running after {WATCHDOG:?}: deadlock");
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Err(e) = h.join() {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn incident_with_sends_that_hang_until_cancelled() {
    with_watchdog("honouring cancel", || replay(Behavior::HangHonouringCancel));
}

#[test]
fn incident_with_sends_that_ignore_cancellation() {
    with_watchdog("ignoring cancel", || replay(Behavior::HangIgnoringCancel));
}
