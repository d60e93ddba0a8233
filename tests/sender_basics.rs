//! The sender's everyday behaviour: shipping, switching, retries, failures,
//! stalls, losses, shutdown.

mod common;
#[path = "common/transports.rs"]
mod transports;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{Hooks, TempRing, assert_identity, eventually, hook_file, payload, small};
use ringship::{Endpoint, HealthState, LossCause, Ring, SendErrorKind, Shipper};
use transports::{Behavior, Script, builder, ring, seqs};

#[test]
fn ships_every_record_byte_exact_and_acks() {
    let t = TempRing::new();
    let script = Script::new();
    let shipper = builder(ring(&t, 1 << 20), &script, "a").max_batch_records(100).start().unwrap();
    for i in 1..=1000 {
        shipper.append(&payload(i, 40)).unwrap();
    }
    eventually("all acked", || shipper.stats().ring.acked == 1000);
    let got = script.receiver.received("a");
    for r in &got.records {
        assert_eq!(&r.payload[..], &payload(r.seq, 40)[..]);
    }
    assert_eq!(seqs(&script, "a"), (1..=1000).collect::<Vec<_>>());
    let s = shipper.stats();
    assert_identity(&s.ring);
    assert!(s.batches_sent >= 10, "batches of at most 100: {}", s.batches_sent);
    assert_eq!(shipper.health().state, HealthState::Healthy);
    assert!(got.gaps.is_empty());
}

#[test]
fn switch_sends_the_rest_to_the_new_endpoint() {
    let t = TempRing::new();
    let script = Script::new();
    let shipper = builder(ring(&t, 1 << 20), &script, "a").start().unwrap();
    for i in 1..=100 {
        shipper.append(&payload(i, 10)).unwrap();
    }
    eventually("first half acked", || shipper.stats().ring.acked == 100);
    assert_eq!(shipper.switch_endpoint(Endpoint::new("b")).unwrap(), 2);
    for i in 101..=200 {
        shipper.append(&payload(i, 10)).unwrap();
    }
    eventually("second half acked", || shipper.stats().ring.acked == 200);
    assert_eq!(seqs(&script, "b"), (101..=200).collect::<Vec<_>>());
    assert_eq!(shipper.endpoint().address(), "b");
    assert_eq!(shipper.stats().switches, 1);
}

#[test]
fn retryable_failures_are_retried_and_nothing_is_acked_before_acceptance() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("a", Behavior::FailThenDeliver(SendErrorKind::Retryable, 5));
    let shipper = builder(ring(&t, 1 << 20), &script, "a").start().unwrap();
    shipper.append(b"one").unwrap();
    // While the endpoint refuses, the cursor never moves.
    eventually("three failures", || shipper.stats().send_failures >= 3);
    assert_eq!(shipper.stats().ring.ack_seq, 0);
    assert_eq!(shipper.health().state, HealthState::Degraded);
    assert!(shipper.health().last_error.unwrap().contains("scripted failure"));
    eventually("delivered", || shipper.stats().ring.acked == 1);
    let s = shipper.stats();
    assert_eq!((s.send_failures, s.retries), (5, 5));
    assert_eq!(shipper.health().state, HealthState::Healthy);
}

#[test]
fn timeouts_are_retried() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("a", Behavior::FailThenDeliver(SendErrorKind::TimedOut, 2));
    let shipper = builder(ring(&t, 1 << 20), &script, "a").start().unwrap();
    shipper.append(b"one").unwrap();
    eventually("delivered", || shipper.stats().ring.acked == 1);
    assert_eq!(shipper.stats().send_failures, 2);
}

#[test]
fn permanent_errors_surface_and_keep_the_records() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("bad", Behavior::Fail(SendErrorKind::Permanent));
    let shipper = builder(ring(&t, 1 << 20), &script, "bad").start().unwrap();
    for i in 1..=10 {
        shipper.append(&payload(i, 10)).unwrap();
    }
    eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
    let h = shipper.health();
    assert_eq!(h.state, HealthState::Degraded);
    assert!(h.last_error.unwrap().contains("Permanent"));
    assert_eq!(shipper.stats().ring.pending, 10, "nothing dropped");
    // A good endpoint gets them all, at once (the switch cuts the backoff).
    shipper.switch_endpoint(Endpoint::new("good")).unwrap();
    eventually("delivered after switch", || shipper.stats().ring.acked == 10);
    assert_eq!(seqs(&script, "good"), (1..=10).collect::<Vec<_>>());
}

#[test]
fn gap_notice_tells_the_receiver_what_was_overwritten() {
    let t = TempRing::new();
    // 4 KiB ring: 100 records of 100 bytes overflow it before shipping starts.
    let r = ring(&t, 4096);
    for i in 1..=100 {
        r.append(&payload(i, 100)).unwrap();
    }
    let lost = r.stats().overwritten;
    assert!(lost > 0);
    let script = Script::new();
    let shipper = builder(r, &script, "a").start().unwrap();
    eventually("survivors acked", || shipper.stats().ring.pending == 0);
    let got = script.receiver.received("a");
    assert_eq!(got.gaps.len(), 1, "{:?}", got.gaps);
    let g = got.gaps[0];
    assert_eq!((g.first_seq, g.last_seq, g.missing()), (1, lost, lost));
    assert_eq!(g.cause, LossCause::Overwritten);
    assert_eq!(seqs(&script, "a"), (lost + 1..=100).collect::<Vec<_>>());
    assert_eq!(shipper.stats().gap_notices, 1);
}

/// Records lost between two records of one read (here a damaged one) are
/// announced as a gap of their own: the batch ends before them, and the
/// next one starts with the notice.
#[test]
fn a_gap_between_records_of_one_read_gets_its_own_notice() {
    let t = TempRing::new();
    let r = ring(&t, 1 << 20);
    for i in 1..=10 {
        r.append(&payload(i, 100)).unwrap();
    }
    r.close().unwrap();
    drop(r);
    // Flip a payload byte of seq 5: frames of 100-byte records take 136
    // bytes, and the data area starts at 4096.
    let mut data = std::fs::read(t.data_file()).unwrap();
    data[4096 + 4 * 136 + 40] ^= 0x10;
    std::fs::write(t.data_file(), &data).unwrap();
    let script = Script::new();
    let shipper = builder(ring(&t, 1 << 20), &script, "a").start().unwrap();
    eventually("all shipped", || shipper.stats().ring.pending == 0);
    let got = script.receiver.received("a");
    let gaps: Vec<_> = got.gaps.iter().map(|g| (g.first_seq, g.last_seq, g.cause)).collect();
    assert_eq!(gaps, vec![(5, 5, LossCause::Corrupted)]);
    // Its time is bounded by its neighbours'.
    let ts = |seq| got.records.iter().find(|r| r.seq == seq).unwrap().timestamp;
    assert_eq!((got.gaps[0].first_ts, got.gaps[0].last_ts), (ts(4), ts(6)));
    assert_eq!(seqs(&script, "a"), vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
    let s = shipper.stats();
    assert_eq!((s.ring.corrupted, s.gap_notices), (1, 1));
}

/// Rejections are reported in-band, in the gap notice of the next batch,
/// each once, including those no shipper had reported when the process
/// stopped: the count reported is kept in the ring, since a shipper that
/// took every rejection counted at its start as reported would keep one
/// made just before a restart from the receiver for good.
#[test]
fn rejected_records_are_reported_in_a_gap_notice_once_across_restarts() {
    let t = TempRing::new();
    let script = Script::new();
    let rejected = |script: &Script| script.receiver.received("a").gaps.iter().map(|g| g.rejected).collect::<Vec<_>>();
    let r = ring(&t, 64 << 10);
    // Before any shipper: reported by the first one.
    assert!(r.append(&vec![0; 5000]).is_err());
    let shipper = builder(r, &script, "a").start().unwrap();
    shipper.append(b"after").unwrap();
    eventually("acked", || shipper.stats().ring.acked == 1);
    assert_eq!(rejected(&script), vec![1]);
    assert!(shipper.append(&vec![0; 5000]).is_err());
    shipper.append(b"after 2").unwrap();
    eventually("acked 2", || shipper.stats().ring.acked == 2);
    assert_eq!(rejected(&script), vec![1, 1]);
    assert_eq!(shipper.stats().ring.rejected_reported, 2);
    // Two more, then a restart before any batch carries them.
    assert!(shipper.append(&vec![0; 5000]).is_err());
    assert!(shipper.append(&vec![0; 5000]).is_err());
    shipper.shutdown(Duration::from_secs(5)).unwrap();
    let r = ring(&t, 64 << 10);
    assert_eq!((r.stats().rejected, r.stats().rejected_reported), (4, 2));
    let shipper = builder(r, &script, "a").start().unwrap();
    shipper.append(b"after the restart").unwrap();
    eventually("acked 3", || shipper.stats().ring.acked == 3);
    assert_eq!(rejected(&script), vec![1, 1, 2]);
    let g = script.receiver.received("a").gaps;
    assert_eq!(g.last().unwrap().missing(), 0, "{g:?}");
    assert_eq!(shipper.stats().ring.rejected_reported, 4);
    shipper.shutdown(Duration::from_secs(5)).unwrap();
    // Nothing is reported twice after another restart.
    let shipper = builder(ring(&t, 64 << 10), &script, "a").start().unwrap();
    shipper.append(b"again").unwrap();
    eventually("acked 4", || shipper.stats().ring.acked == 4);
    assert_eq!(rejected(&script), vec![1, 1, 2]);
}

/// Records acknowledged while the worker reads (the late success of an
/// abandoned worker's send) and evicted before the read ends were
/// delivered: no gap notice names them, since the worker takes its cursor
/// from the ack as it stands after the read, not before it.
#[test]
fn records_acked_and_evicted_during_a_read_are_no_gap() {
    /// On the worker's first read of the data file: acks seqs 1..=10, as
    /// an abandoned send's late success would, and appends 5 records,
    /// which evict seqs 1..=5.
    struct AckDuringRead {
        ring: Arc<OnceLock<Arc<Ring>>>,
        fired: Arc<AtomicBool>,
    }
    impl Hooks for AckDuringRead {
        fn before_read(&self, _len: usize, _offset: u64) -> std::io::Result<()> {
            let worker = std::thread::current().name().is_some_and(|n| n.starts_with("ringship-send-"));
            if let Some(ring) = self.ring.get().filter(|_| worker)
                && !self.fired.swap(true, Ordering::SeqCst)
            {
                ring.ack(10).unwrap();
                for i in 31..=35 {
                    assert_eq!(ring.append(&payload(i, 100)).unwrap(), i);
                }
                // Seqs 1..=5 evicted, none of them lost.
                assert_eq!(ring.read(1, 1, usize::MAX).unwrap().records[0].seq, 6);
                assert_eq!(ring.stats().overwritten, 0);
            }
            Ok(())
        }
    }
    let t = TempRing::new();
    let script = Script::new();
    let slot = Arc::new(OnceLock::new());
    let fired = Arc::new(AtomicBool::new(false));
    let (s, f) = (Arc::clone(&slot), Arc::clone(&fired));
    // 30 frames of 136 bytes fill the ring.
    let config =
        hook_file(small(4096), "ring.data", move || AckDuringRead { ring: Arc::clone(&s), fired: Arc::clone(&f) });
    let ring = Arc::new(Ring::open(&t.dir, config).unwrap().0);
    for i in 1..=30 {
        ring.append(&payload(i, 100)).unwrap();
    }
    slot.set(Arc::clone(&ring)).unwrap();
    // No linger: a re-read after it would start past the ack anyway.
    let shipper = builder(ring, &script, "a").linger(Duration::ZERO).start().unwrap();
    eventually("all acked", || shipper.stats().ring.acked == 35);
    assert!(fired.load(Ordering::SeqCst));
    let got = script.receiver.received("a");
    assert!(got.gaps.is_empty(), "{:?}", got.gaps);
    assert_eq!(seqs(&script, "a"), (11..=35).collect::<Vec<_>>());
    let s = shipper.stats();
    assert_eq!((s.ring.overwritten, s.gap_notices), (0, 0), "{s:?}");
}

/// A drain whose read finds every record it read acked meanwhile (an
/// abandoned send's late success) reads on: reported as nothing to send,
/// that read would end the drain, and shutdown would return with records
/// pending long before its deadline.
#[test]
fn a_drain_reads_on_past_records_acked_while_it_read() {
    /// Once armed, on the worker's next read of a batch (the walk reads
    /// 64 KiB at a time; an ack's frame search reads less): acks 6..=10.
    struct AckOnNextRead {
        ring: Arc<OnceLock<Arc<Ring>>>,
        armed: Arc<AtomicBool>,
        fired: Arc<AtomicBool>,
    }
    impl Hooks for AckOnNextRead {
        fn before_read(&self, len: usize, _offset: u64) -> std::io::Result<()> {
            let worker = std::thread::current().name().is_some_and(|n| n.starts_with("ringship-send-"));
            if worker
                && len >= 64 << 10
                && self.armed.load(Ordering::SeqCst)
                && let Some(ring) = self.ring.get()
                && !self.fired.swap(true, Ordering::SeqCst)
            {
                ring.ack(10).unwrap();
            }
            Ok(())
        }
    }
    let t = TempRing::new();
    let script = Script::new();
    script.set("gate", Behavior::HangThenDeliver);
    let (slot, armed, fired) =
        (Arc::new(OnceLock::new()), Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let (s, a, f) = (Arc::clone(&slot), Arc::clone(&armed), Arc::clone(&fired));
    let config = hook_file(small(1 << 20), "ring.data", move || AckOnNextRead {
        ring: Arc::clone(&s),
        armed: Arc::clone(&a),
        fired: Arc::clone(&f),
    });
    let ring = Arc::new(Ring::open(&t.dir, config).unwrap().0);
    for i in 1..=30 {
        ring.append(&payload(i, 100)).unwrap();
    }
    slot.set(Arc::clone(&ring)).unwrap();
    let shipper = builder(ring, &script, "gate")
        .max_batch_records(5)
        .linger(Duration::ZERO)
        .send_timeout(Duration::from_secs(5))
        .start()
        .unwrap();
    // The first batch (1..=5) hangs in its send; the drain starts meanwhile.
    eventually("first send under way", || script.sends.load(Ordering::SeqCst) == 1);
    armed.store(true, Ordering::SeqCst);
    let shutdown = std::thread::spawn(move || shipper.shutdown(Duration::from_secs(10)).unwrap());
    std::thread::sleep(Duration::from_millis(50));
    script.release.store(true, Ordering::SeqCst);
    let report = shutdown.join().unwrap();
    assert!(fired.load(Ordering::SeqCst), "the ack never landed during a read");
    assert!(report.drained && report.left_pending == 0, "{report:?}");
    assert_eq!(seqs(&script, "gate"), (1..=5).chain(11..=30).collect::<Vec<_>>());
}

#[test]
fn on_loss_fires_with_the_overwritten_ranges() {
    on_loss_reports_every_overwritten_record(0, None);
}

/// Records already in the ring when the shipper starts (a restart while
/// the endpoint is down) are reported when they are overwritten, like any
/// other: none is left out, and no range they merge into is cut short.
#[test]
fn on_loss_reports_records_that_were_in_the_ring_at_start() {
    on_loss_reports_every_overwritten_record(20, None);
}

/// The same with a damaged record among them, found before the start: the
/// damage is not taken as the end of what was reported: the overwrites of
/// the records below it are reported too.
#[test]
fn on_loss_reports_overwrites_below_damage_found_before_the_start() {
    on_loss_reports_every_overwritten_record(20, Some(10));
}

/// Appends `in_ring_at_start` records (with one byte of the record
/// `damaged` flipped, and the damage found by a read), starts a shipper
/// whose endpoint is down, and overwrites them: `on_loss` must report
/// every overwritten record once.
fn on_loss_reports_every_overwritten_record(in_ring_at_start: u64, damaged: Option<u64>) {
    let t = TempRing::new();
    let script = Script::new();
    script.set("down", Behavior::Fail(SendErrorKind::Retryable));
    let reported = Arc::new(AtomicU64::new(0));
    let r2 = Arc::clone(&reported);
    let mut ring = ring(&t, 4096);
    for i in 1..=in_ring_at_start {
        ring.append(&payload(i, 100)).unwrap();
    }
    if let Some(seq) = damaged {
        ring.close().unwrap();
        drop(ring);
        // Frames of 100-byte records take 136 bytes; the data area starts
        // at 4096.
        let mut data = std::fs::read(t.data_file()).unwrap();
        data[4096 + (seq as usize - 1) * 136 + 40] ^= 0x10;
        std::fs::write(t.data_file(), &data).unwrap();
        ring = Ring::open(&t.dir, small(4096)).unwrap().0;
        assert_eq!(ring.read(1, 100, usize::MAX).unwrap().records.len() as u64, in_ring_at_start - 1);
        assert_eq!(ring.stats().corrupted, 1);
    }
    assert_eq!(ring.stats().overwritten, 0);
    let shipper = builder(ring, &script, "down")
        .on_loss(move |ranges| {
            let overwritten = ranges.iter().filter(|l| l.cause == LossCause::Overwritten);
            r2.fetch_add(overwritten.map(|l| l.count).sum(), Ordering::SeqCst);
        })
        .supervise_every(Duration::from_millis(5))
        .start()
        .unwrap();
    for i in 1..=100 {
        shipper.append(&payload(in_ring_at_start + i, 100)).unwrap();
    }
    let lost = shipper.stats().ring.overwritten;
    assert!(lost > in_ring_at_start);
    let deadline = Instant::now() + Duration::from_secs(20);
    while reported.load(Ordering::SeqCst) != lost {
        assert!(
            Instant::now() < deadline,
            "on_loss reported {} of {lost}: {:?}",
            reported.load(Ordering::SeqCst),
            shipper.ring().losses()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Two overflow episodes separated by deliveries, with the ring keeping one
/// loss range (or a few): it merges them, yet `on_loss` counts each
/// overwritten record once, so its sum is the growth of `overwritten`.
#[test]
fn on_loss_counts_each_record_once_when_the_ring_merges_ranges() {
    for max_ranges in [1, 2, 48] {
        let t = TempRing::new();
        let script = Script::new();
        script.set("a", Behavior::Fail(SendErrorKind::Retryable));
        let reported = Arc::new(AtomicU64::new(0));
        let r2 = Arc::clone(&reported);
        let ring = Ring::open(&t.dir, small(4096).max_loss_ranges(max_ranges)).unwrap().0;
        let shipper = builder(ring, &script, "a")
            .supervise_every(Duration::from_millis(5))
            .on_loss(move |ranges| {
                let over = ranges.iter().filter(|l| l.cause == LossCause::Overwritten);
                r2.fetch_add(over.map(|l| l.count).sum(), Ordering::SeqCst);
            })
            .start()
            .unwrap();
        let mut next = 1;
        for _episode in 0..3 {
            for _ in 0..100 {
                shipper.append(&payload(next, 100)).unwrap();
                next += 1;
            }
            let lost = shipper.stats().ring.overwritten;
            eventually("reported", || reported.load(Ordering::SeqCst) >= lost);
            // Deliveries between the episodes.
            script.set("a", Behavior::Deliver);
            eventually("drained", || shipper.stats().ring.pending == 0);
            script.set("a", Behavior::Fail(SendErrorKind::Retryable));
        }
        std::thread::sleep(Duration::from_millis(50));
        let s = shipper.stats().ring;
        assert!(shipper.ring().losses().len() <= max_ranges);
        assert_eq!(reported.load(Ordering::SeqCst), s.overwritten, "max {max_ranges}: {:?}", shipper.ring().losses());
    }
}

#[test]
fn stall_is_detected_and_a_stuck_worker_replaced() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("hang", Behavior::HangIgnoringCancel);
    let stalls = Arc::new(AtomicU64::new(0));
    let s2 = Arc::clone(&stalls);
    let shipper = builder(ring(&t, 1 << 20), &script, "hang")
        .send_timeout(Duration::from_millis(50))
        .abandon_after(Duration::from_millis(100))
        .stall_after(Duration::from_millis(150))
        .on_stall(move |h| {
            assert_eq!(h.state, HealthState::Stalled);
            s2.fetch_add(1, Ordering::SeqCst);
        })
        .start()
        .unwrap();
    shipper.append(b"stuck").unwrap();
    eventually("stall reported", || stalls.load(Ordering::SeqCst) == 1);
    assert_eq!(shipper.health().state, HealthState::Stalled);
    eventually("worker replaced", || shipper.stats().worker_restarts >= 1);
    assert!(script.transports_made.load(Ordering::SeqCst) >= 2, "a fresh transport from the factory");
    // The endpoint is fixed: the fresh worker delivers, the stall clears.
    shipper.switch_endpoint(Endpoint::new("ok")).unwrap();
    eventually("delivered", || shipper.stats().ring.acked == 1);
    eventually("healthy again", || shipper.health().state == HealthState::Healthy);
    script.release.store(true, Ordering::SeqCst);
    assert_eq!(seqs(&script, "ok"), vec![1]);
}

/// A transport that ignores its deadline and cancellation keeps each
/// abandoned worker's thread in its send. The worker is replaced all the
/// same (I7: a switch to a working endpoint delivers), and the threads
/// left behind are counted, so the leak shows in stats and Prometheus;
/// they leave the count once their sends return.
#[test]
fn abandoned_workers_stuck_in_their_sends_are_counted() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("hang", Behavior::HangIgnoringCancel);
    let shipper = builder(ring(&t, 1 << 20), &script, "hang")
        .send_timeout(Duration::from_millis(10))
        .abandon_after(Duration::from_millis(20))
        .supervise_every(Duration::from_millis(5))
        .start()
        .unwrap();
    shipper.append(b"stuck").unwrap();
    eventually("3 workers abandoned", || shipper.stats().worker_restarts >= 3);
    let s = shipper.stats();
    let restarts_after = shipper.stats().worker_restarts;
    // Every abandoned one is still in its send (the one whose replacement
    // is under way may not be counted yet; the current one is not).
    assert!((s.worker_restarts - 1..=restarts_after).contains(&s.abandoned_workers), "{s:?}");
    assert!(s.to_prometheus().contains("ringship_abandoned_workers "), "the gauge is exported");
    // A working endpoint: the current worker is replaced too and delivers.
    shipper.switch_endpoint(Endpoint::new("ok")).unwrap();
    eventually("delivered", || shipper.stats().ring.acked == 1);
    assert_eq!(seqs(&script, "ok"), vec![1]);
    // The hung sends return: none is left running.
    script.release.store(true, Ordering::SeqCst);
    eventually("no abandoned worker left", || shipper.stats().abandoned_workers == 0);
}

#[test]
fn an_abandoned_send_that_succeeds_late_is_neither_a_gap_nor_reported_twice() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("slow", Behavior::HangThenDeliver);
    let shipper = builder(ring(&t, 4096), &script, "slow")
        .send_timeout(Duration::from_millis(50))
        .abandon_after(Duration::from_millis(100))
        .start()
        .unwrap();
    // A rejection before the first record rides in the first batch's notice.
    assert!(shipper.append(&vec![0; 5000]).is_err());
    for i in 1..=5 {
        shipper.append(&payload(i, 100)).unwrap();
    }
    eventually("the first send hangs", || script.sends.load(Ordering::SeqCst) == 1);
    // Every later send fails until the end: the replacement worker keeps
    // re-reading from its cursor, seq 1.
    script.set("slow", Behavior::Fail(SendErrorKind::Retryable));
    eventually("worker replaced", || shipper.stats().worker_restarts >= 1);
    script.release.store(true, Ordering::SeqCst);
    eventually("the abandoned send's late ack", || shipper.stats().ring.acked == 5);
    let first_batch = script.receiver.received("slow");
    assert_eq!(first_batch.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert_eq!(first_batch.gaps.iter().map(|g| g.rejected).sum::<u64>(), 1);
    // Wrap the ring: the delivered 1..=5 go without loss, older unsent
    // records are overwritten.
    for i in 6..=100 {
        shipper.append(&payload(i, 100)).unwrap();
    }
    let lost = shipper.stats().ring.overwritten;
    assert!(lost > 0);
    std::thread::sleep(Duration::from_millis(60));
    script.set("slow", Behavior::Deliver);
    eventually("all shipped", || shipper.stats().ring.pending == 0);
    let got = script.receiver.received("slow");
    let gaps: Vec<_> = got.gaps.iter().filter(|g| g.missing() > 0).collect();
    assert_eq!(gaps.iter().map(|g| g.missing()).sum::<u64>(), lost, "{gaps:?}");
    assert_eq!(got.gaps.iter().map(|g| g.rejected).sum::<u64>(), 1, "{:?}", got.gaps);
    // Every seq is either delivered or in a gap notice, never both.
    let delivered = seqs(&script, "slow");
    let mut all: Vec<u64> = gaps.iter().flat_map(|g| g.first_seq..=g.last_seq).collect();
    all.extend(&delivered);
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<_>>(), "delivered {delivered:?}, gaps {gaps:?}");
}

/// The abandoned send's late success comes after its replacement already
/// delivered the same rejections to the new endpoint: they are not
/// counted as reported twice, so the next rejection still reaches the
/// receiver: counting the late success again would swallow the next
/// rejection's notice.
#[test]
fn rejections_delivered_twice_are_reported_once_and_later_ones_still_are() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("slow", Behavior::HangThenDeliver);
    let shipper = builder(ring(&t, 1 << 20), &script, "slow")
        .send_timeout(Duration::from_millis(50))
        .abandon_after(Duration::from_millis(100))
        .start()
        .unwrap();
    assert!(shipper.append(&vec![0; 1 << 20]).is_err());
    for i in 1..=5 {
        shipper.append(&payload(i, 100)).unwrap();
    }
    eventually("the first send hangs", || script.sends.load(Ordering::SeqCst) == 1);
    shipper.switch_endpoint(Endpoint::new("ok")).unwrap();
    eventually("the replacement delivered", || shipper.stats().ring.acked == 5);
    script.release.store(true, Ordering::SeqCst);
    eventually("the late success", || script.receiver.received("slow").records.len() == 5);
    assert!(shipper.append(&vec![0; 1 << 20]).is_err());
    shipper.append(&payload(6, 100)).unwrap();
    eventually("seq 6 delivered", || shipper.stats().ring.acked == 6);
    let got = script.receiver.received("ok");
    assert_eq!(got.gaps.iter().map(|g| g.rejected).collect::<Vec<_>>(), vec![1, 1], "{:?}", got.gaps);
}

#[test]
fn shutdown_drains_then_closes() {
    let t = TempRing::new();
    let script = Script::new();
    let shipper = builder(ring(&t, 1 << 20), &script, "a").linger(Duration::from_secs(60)).start().unwrap();
    for i in 1..=50 {
        shipper.append(&payload(i, 10)).unwrap();
    }
    let report = shipper.shutdown(Duration::from_secs(10)).unwrap();
    assert!(report.drained, "{report:?}");
    assert_eq!((report.left_pending, report.stats.ring.acked), (0, 50));
    assert_eq!(report.stats.health, HealthState::Stopped);
    assert_eq!(seqs(&script, "a"), (1..=50).collect::<Vec<_>>());
}

#[test]
fn shutdown_keeps_what_it_could_not_ship() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("down", Behavior::Fail(SendErrorKind::Retryable));
    let shipper = builder(ring(&t, 1 << 20), &script, "down").start().unwrap();
    for i in 1..=20 {
        shipper.append(&payload(i, 10)).unwrap();
    }
    let report = shipper.shutdown(Duration::from_millis(100)).unwrap();
    assert!(!report.drained);
    assert_eq!(report.left_pending, 20);
    // The records are still on disk for the next start.
    let (r, _) = Ring::open(&t.dir, small(1 << 20)).unwrap();
    assert_eq!(r.stats().pending, 20);
    assert_eq!(r.read(1, 100, 1 << 20).unwrap().records.len(), 20);
}

#[test]
fn shutdown_with_a_hung_send_returns_by_its_deadline() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("hang", Behavior::HangIgnoringCancel);
    let shipper = builder(ring(&t, 1 << 20), &script, "hang").start().unwrap();
    shipper.append(b"x").unwrap();
    let start = Instant::now();
    let report = shipper.shutdown(Duration::from_millis(100)).unwrap();
    assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
    assert_eq!(report.left_pending, 1);
    script.release.store(true, Ordering::SeqCst);
}

/// Fails `ring.data`'s fsyncs once set.
struct FailingSync(Arc<std::sync::atomic::AtomicBool>);

impl Hooks for FailingSync {
    fn before_sync(&self) -> std::io::Result<()> {
        if self.0.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
}

/// A shutdown whose final fsync fails still closes the ring and releases
/// its directory, even while an abandoned send (ignoring its cancellation)
/// keeps a reference to the ring: the host can reopen it at once, as the
/// docs advise after a failed fsync. Returning the error before the close
/// would keep the directory locked for as long as the send hangs.
#[test]
fn a_shutdown_whose_fsync_fails_still_releases_the_ring() {
    let t = TempRing::new();
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&fail);
    let config = hook_file(small(1 << 20), "ring.data", move || FailingSync(Arc::clone(&flag)));
    let script = Script::new();
    script.set("hang", Behavior::HangIgnoringCancel);
    let shipper = builder(Ring::open(&t.dir, config).unwrap().0, &script, "hang").start().unwrap();
    shipper.append(b"x").unwrap();
    eventually("the send hangs", || script.sends.load(Ordering::SeqCst) == 1);
    fail.store(true, Ordering::SeqCst);
    let err = shipper.shutdown(Duration::from_millis(50)).unwrap_err();
    assert!(err.to_string().contains("fsync"), "{err}");
    let reopened = Ring::open(&t.dir, small(1 << 20));
    script.release.store(true, Ordering::SeqCst);
    let (ring, _) = reopened.expect("the directory was released");
    assert_eq!(ring.stats().pending, 1);
}

#[test]
fn append_after_shutdown_began_is_refused() {
    let t = TempRing::new();
    let script = Script::new();
    let shipper = builder(ring(&t, 1 << 20), &script, "a").start().unwrap();
    let ring = Arc::clone(shipper.ring());
    shipper.shutdown(Duration::from_secs(1)).unwrap();
    assert!(ring.append(b"late").is_err());
}

#[test]
fn prometheus_rendering_of_live_stats() {
    let t = TempRing::new();
    let script = Script::new();
    let shipper = builder(ring(&t, 1 << 20), &script, "http://collector:4318/v1/logs").start().unwrap();
    shipper.append(b"x").unwrap();
    eventually("acked", || shipper.stats().ring.acked == 1);
    let text = shipper.stats().to_prometheus();
    assert!(text.contains("ringship_records_acked_total 1\n"), "{text}");
    assert!(text.contains("ringship_endpoint_info{endpoint=\"http://collector:4318/v1/logs\",generation=\"1\"} 1"));
}

#[test]
fn builder_rejects_bad_settings() {
    let script = Script::new();
    for (what, b) in [
        ("no endpoint", Shipper::builder(ring(&TempRing::new(), 1 << 20)).transport(script.factory())),
        ("no transport", Shipper::builder(ring(&TempRing::new(), 1 << 20)).endpoint(Endpoint::new("a"))),
        ("zero batch", builder(ring(&TempRing::new(), 1 << 20), &script, "a").max_batch_records(0)),
        (
            "abandon before timeout",
            builder(ring(&TempRing::new(), 1 << 20), &script, "a").abandon_after(Duration::from_millis(1)),
        ),
        (
            "backoff order",
            builder(ring(&TempRing::new(), 1 << 20), &script, "a").backoff_initial(Duration::from_secs(100)),
        ),
        // Too long to add to an instant: refused at start, not a panic later.
        ("endless send timeout", builder(ring(&TempRing::new(), 1 << 20), &script, "a").send_timeout(Duration::MAX)),
        ("endless linger", builder(ring(&TempRing::new(), 1 << 20), &script, "a").linger(Duration::MAX)),
        (
            "endless abandon",
            builder(ring(&TempRing::new(), 1 << 20), &script, "a").abandon_after(Duration::from_secs(400 * 86_400)),
        ),
    ] {
        let err = b.start().unwrap_err();
        assert!(matches!(err, ringship::Error::Config(_)), "{what}: {err}");
    }
}

/// A service shares its shipper (a metrics thread, a logging layer): any
/// clone shuts it down, the ring is closed and released, a call racing
/// the first waits for it, and later calls get the same report; appends
/// through any clone are refused from then on.
#[test]
fn any_clone_shuts_the_shipper_down_once() {
    let t = TempRing::new();
    let script = Script::new();
    let shipper = builder(ring(&t, 1 << 20), &script, "a").start().unwrap();
    let (metrics, logger) = (shipper.clone(), shipper.clone());
    for i in 0..100u32 {
        logger.append(&i.to_le_bytes()).unwrap();
    }
    let racer = {
        let metrics = metrics.clone();
        std::thread::spawn(move || metrics.shutdown(Duration::from_secs(5)))
    };
    let first = logger.shutdown(Duration::from_secs(5)).unwrap();
    let racing = racer.join().unwrap().unwrap();
    assert!(first.drained, "{first:?}");
    assert_eq!(first.left_pending, 0);
    assert_eq!(racing, first, "the racing call gets the same report");
    assert_eq!(metrics.shutdown(Duration::ZERO).unwrap(), first, "a later call gets the same report");
    assert!(matches!(shipper.append(b"late"), Err(ringship::Error::Closed)));
    assert_eq!(seqs(&script, "a").len(), 100);
    drop((shipper, metrics, logger));
    let (_, report) = Ring::open(&t.dir, small(1 << 20)).expect("the directory was released");
    assert!(report.clean_shutdown, "{report:?}");
}

/// A transport whose endpoint takes each batch but refuses its first
/// record (a partial acceptance), and tells the shipper so.
struct RefusesFirst {
    rx: ringship::MemoryTransport,
}

impl ringship::Transport for RefusesFirst {
    fn send(
        &mut self,
        endpoint: &Endpoint,
        batch: &ringship::Batch,
        ctx: &ringship::SendContext,
    ) -> Result<(), ringship::SendError> {
        self.rx.send(endpoint, batch, ctx)?;
        ctx.refuse(1);
        Ok(())
    }
}

/// Records an endpoint takes but refuses are a loss the receiver caused:
/// counted refused (not acked) in the identity, ranged in `losses()` and
/// `on_loss`, announced in the next gap notice, shown in health, kept
/// across a restart, and never sent again.
#[test]
fn records_an_endpoint_refuses_are_counted_announced_and_not_sent_again() {
    let t = TempRing::new();
    let receiver = ringship::MemoryReceiver::new();
    let rx = receiver.clone();
    let fed = Arc::new(AtomicU64::new(0));
    let f = Arc::clone(&fed);
    let shipper = Shipper::builder(ring(&t, 1 << 20))
        .endpoint(Endpoint::new("a"))
        .transport(move || RefusesFirst { rx: rx.transport() })
        .max_batch_records(10)
        .linger(Duration::from_millis(1))
        .on_loss(move |ranges| {
            let refused: u64 = ranges.iter().filter(|r| r.cause == LossCause::Refused).map(|r| r.count).sum();
            f.fetch_add(refused, Ordering::SeqCst);
        })
        .start()
        .unwrap();
    for i in 1..=30 {
        shipper.append(&payload(i, 20)).unwrap();
        if i % 10 == 0 {
            // One batch at a time: each refusal is announced by the next.
            eventually("a batch settled", || shipper.stats().ring.pending == 0);
        }
    }
    let s = shipper.stats().ring;
    assert_eq!((s.acked, s.refused, s.pending), (27, 3, 0), "{s:?}");
    assert_identity(&s);
    eventually("on_loss told of each refusal", || fed.load(Ordering::SeqCst) == 3);
    let refused_ranges: u64 =
        shipper.ring().losses().iter().filter(|l| l.cause == LossCause::Refused).map(|l| l.count).sum();
    assert_eq!(refused_ranges, 3);
    let got = receiver.received("a");
    assert_eq!(got.records.len(), 30, "sent once each, none again");
    // Each batch after the first announces the refusal before it.
    let announced: Vec<u64> = got.gaps.iter().map(|g| g.refused).collect();
    assert_eq!(announced, vec![1, 1], "{:?}", got.gaps);
    assert!(shipper.health().last_error.unwrap_or_default().contains("refused 1"));
    shipper.shutdown(Duration::from_secs(5)).unwrap();
    // The third refusal is announced after a restart, and only then.
    let r = ring(&t, 1 << 20);
    assert_eq!((r.stats().refused, r.stats().refused_reported), (3, 2));
    let rx = receiver.clone();
    let shipper = Shipper::builder(r).endpoint(Endpoint::new("a")).transport(move || rx.transport()).start().unwrap();
    shipper.append(b"after").unwrap();
    eventually("acked", || shipper.stats().ring.acked == 28);
    assert_eq!(receiver.received("a").gaps.last().map(|g| g.refused), Some(1));
    assert_eq!(shipper.stats().ring.refused_reported, 3);
    assert_identity(&shipper.stats().ring);
    shipper.shutdown(Duration::from_secs(5)).unwrap();
}
