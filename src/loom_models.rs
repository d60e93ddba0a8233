//! loom models: the real code, explored over every interleaving within a
//! preemption bound. Run with
//!
//! ```text
//! RUSTFLAGS="--cfg loom" cargo test --release --lib loom_models
//! ```
//!
//! Under `cfg(loom)` the lock shim (`src/sync.rs`) swaps parking_lot,
//! std atomics and crossbeam-channel for loom's types, so these models
//! check the same mutexes, condition variables and atomics the crate runs
//! with.

use std::sync::Arc;
use std::time::Duration;

use loom::thread;

use crate::sender::machine::{Action, BatchInfo, Machine, MachineConfig, MachineState, Outcome, RingMark};
use crate::sender::switch::Switchboard;
use crate::sim::{Faults, SimDisk};
use crate::transport::{Endpoint, SendErrorKind};
use crate::{Ring, RingConfig, SyncPolicy};

/// Runs `f` under loom and returns how many interleavings it explored.
fn model(f: impl Fn() + Sync + Send + 'static) -> usize {
    let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    let n = runs.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("loom explored {n} interleavings");
    n
}

fn machine_config() -> MachineConfig {
    let ms = std::time::Duration::from_millis;
    MachineConfig {
        max_batch_records: 1,
        max_batch_bytes: 1 << 20,
        linger: ms(0),
        backoff_initial: ms(1),
        backoff_max: ms(10),
    }
}

/// A configuration reload re-applying the endpoint in use, racing a send
/// to it (and a real switch to another): the reload never cancels the
/// send and never counts as a new generation; the real switch does both.
#[test]
fn loom_models_reapplied_endpoint_against_send() {
    let explored = model(|| {
        let board = Arc::new(Switchboard::new(Endpoint::new("A")));
        let reload = {
            let board = Arc::clone(&board);
            thread::spawn(move || board.switch(Endpoint::new("A")))
        };
        let (sent_generation, endpoint, token) = board.begin_send(1);
        let cancelled = token.is_cancelled();
        board.end_send(1);
        let (generation, changed) = reload.join().unwrap();
        assert_eq!((generation, changed), (1, false), "an equal endpoint is no switch");
        assert_eq!((sent_generation, endpoint.address.as_str()), (1, "A"));
        assert!(!cancelled, "a reload of the endpoint in use cancelled its send");
        assert!(!token.is_cancelled());
        // A real change still cancels a send in flight at once.
        let (_, _, token) = board.begin_send(1);
        assert_eq!(board.switch(Endpoint::new("A").header("k", "v")), (2, true));
        assert!(token.is_cancelled());
    });
    assert!(explored > 1, "loom explored no interleaving");
}

/// Two switchers and the worker, whose send completes (or is cancelled)
/// for what may be an old generation by then. No deadlock (loom fails a
/// model that cannot finish); the final endpoint is the last switch's;
/// nothing is acked without a successful send; a failed send for an old
/// generation goes to the new endpoint at once.
#[test]
fn loom_models_endpoint_switch() {
    let explored = model(|| {
        let board = Arc::new(Switchboard::new(Endpoint::new("A")));
        let switchers: Vec<_> = ["B", "C"]
            .into_iter()
            .map(|to| {
                let board = Arc::clone(&board);
                thread::spawn(move || (board.switch(Endpoint::new(to)).0, to))
            })
            .collect();

        // The worker: one send, driven through the real state machine.
        let mut m = Machine::new(machine_config(), 1, board.generation(), 7, std::sync::Arc::default());
        assert_eq!(m.poll_action(0), Some(Action::Read { from_seq: 1 }));
        m.handle_batch(
            0,
            Some(BatchInfo { first_seq: 1, last_seq: 1, records: 1, bytes: 1, notice_rejected: None }),
            RingMark::default(),
        );
        assert_eq!(m.poll_action(0), Some(Action::Send));
        let (sent_generation, _endpoint, token) = board.begin_send(1);
        // The endpoint accepts unless the send was cancelled first.
        let accepted = !token.is_cancelled();
        board.end_send(1);
        m.handle_switch(board.generation());
        let outcome = if accepted {
            Outcome::Accepted
        } else {
            Outcome::Failed { kind: SendErrorKind::Cancelled, retry_after: None }
        };
        m.handle_send_result(0, sent_generation, outcome);
        let next = m.poll_action(0);

        let results: Vec<(u64, &str)> = switchers.into_iter().map(|h| h.join().unwrap()).collect();
        let (generation, endpoint) = board.current();
        assert_eq!(generation, 3, "both switches counted");
        let last = results.iter().find(|(g, _)| *g == 3).expect("one switch made generation 3").1;
        assert_eq!(endpoint.address, last, "the final endpoint is the last switch");
        match next {
            Some(Action::Ack { seq, .. }) => assert!(accepted && seq == 1, "acked without a successful send"),
            Some(Action::Read { from_seq: 1 }) => {
                assert!(!accepted && sent_generation < 3, "only a cancelled send to an old endpoint retries at once");
                assert_eq!(m.state(), MachineState::Reading);
            }
            other => panic!("unexpected next action {other:?}"),
        }
    });
    assert!(explored > 1, "loom explored no interleaving");
}

fn ring_on(disk: &SimDisk, config: RingConfig) -> Ring {
    Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config).unwrap().0
}

/// Two appenders under `SyncPolicy::Always` (group commit, and a seq
/// reservation renewed on every append) and a thread calling `sync`. Every
/// append returns a distinct seq; once they return, their records are
/// durable; the durable seq never runs ahead of the data: after a power
/// loss that drops every unsynced write, every seq reported durable is
/// there.
#[test]
fn loom_models_group_commit() {
    let explored = model(|| {
        let disk = SimDisk::new(1, Faults { lose_unsynced: 1.0, ..Faults::NONE });
        let config = RingConfig::default().capacity(4096).sync(SyncPolicy::Always).seq_reservation(1);
        let ring = Arc::new(ring_on(&disk, config.clone()));
        let appenders: Vec<_> = [b"a", b"b"]
            .into_iter()
            .map(|p| {
                let ring = Arc::clone(&ring);
                thread::spawn(move || ring.append(p).unwrap())
            })
            .collect();
        let synced = ring.sync().unwrap();
        let seqs: Vec<u64> = appenders.into_iter().map(|h| h.join().unwrap()).collect();
        assert_ne!(seqs[0], seqs[1]);
        let durable = ring.stats().durable_seq;
        assert!(durable >= seqs[0].max(seqs[1]), "appends under Always returned before they were durable");
        drop(ring);
        disk.power_loss();
        let ring = ring_on(&disk, config);
        let present: Vec<u64> = ring.read(1, 10, 1 << 20).unwrap().records.iter().map(|r| r.seq).collect();
        for seq in 1..=durable.max(synced) {
            assert!(present.contains(&seq), "seq {seq} reported durable but lost: {present:?}");
        }
    });
    assert!(explored > 1, "loom explored no interleaving");
}

/// An appender that makes the ring evict while another thread acks: the
/// overwritten count is exact whichever comes first, and the accounting
/// identity holds.
#[test]
fn loom_models_append_against_ack_and_overwrite() {
    let explored = model(|| {
        let disk = SimDisk::new(2, Faults::NONE);
        // Frames of 32-byte payloads are 64 bytes: 4 fit in 256. An
        // eviction of unacked records writes a checkpoint when one is due by
        // the wall clock; a zero interval makes it due every time, so the
        // model takes the same path however long an execution runs (loom
        // replays each one and requires the same choices).
        let config = RingConfig::default()
            .capacity(256)
            .max_record_len(32)
            .sync(SyncPolicy::Never)
            .checkpoint_interval(Duration::ZERO);
        let ring = Arc::new(ring_on(&disk, config));
        for _ in 0..4 {
            ring.append(&[7; 32]).unwrap();
        }
        let r = Arc::clone(&ring);
        let appender = thread::spawn(move || {
            r.append(&[8; 32]).unwrap();
            r.append(&[9; 32]).unwrap();
        });
        ring.ack(2).unwrap();
        appender.join().unwrap();
        let s = ring.stats();
        assert!(s.identity_holds(), "{s:?}");
        // Seqs 1 and 2 were evicted: each is either acked (ack first) or
        // overwritten (eviction first), never both, never neither.
        assert_eq!(s.acked + s.overwritten, 2, "{s:?}");
        assert_eq!(s.pending, 4, "{s:?}");
        let lost: u64 = ring.losses().iter().map(|l| l.count).sum();
        assert_eq!(lost, s.overwritten);
    });
    assert!(explored > 1, "loom explored no interleaving");
}

/// `close` against an append: the append either fails with `Closed` or its
/// record is covered by close's final fsync. After a power loss that drops
/// every unsynced write, the ring reopens with exactly the records whose
/// appends returned, nothing counted lost.
#[test]
fn loom_models_close_against_append() {
    let explored = model(|| {
        let disk = SimDisk::new(3, Faults { lose_unsynced: 1.0, ..Faults::NONE });
        let config = || RingConfig::default().capacity(4096).max_record_len(32).sync(SyncPolicy::Never);
        let ring = Arc::new(ring_on(&disk, config()));
        ring.append(&[7; 32]).unwrap();
        let r = Arc::clone(&ring);
        let appender = thread::spawn(move || r.append(&[8; 32]));
        ring.close().unwrap();
        let appended = appender.join().unwrap();
        assert!(matches!(appended, Ok(2) | Err(crate::Error::Closed)), "{appended:?}");
        drop(ring);
        disk.power_loss();
        let reopened = ring_on(&disk, config());
        let s = reopened.stats();
        assert_eq!((s.lost_unsynced, s.corrupted), (0, 0), "{s:?}");
        assert_eq!(s.last_seq, if appended.is_ok() { 2 } else { 1 }, "{s:?}");
        assert_eq!(s.pending, s.last_seq, "{s:?}");
    });
    assert!(explored > 1, "loom explored no interleaving");
}

/// Two appenders writing their frames with no lock held, in either order,
/// and a reader: the reader sees only published frames (seqs from 1 on,
/// without a gap, each with its own bytes), and once both appends return
/// both records are there. Seqs follow reservation order whatever order
/// the writes end in.
#[test]
fn loom_models_writes_outside_the_lock_publish_in_seq_order() {
    let explored = model(|| {
        let disk = SimDisk::new(5, Faults::NONE);
        let config = RingConfig::default().capacity(4096).max_record_len(32).sync(SyncPolicy::Never);
        let ring = Arc::new(ring_on(&disk, config));
        let appenders: Vec<_> = [1u8, 2]
            .into_iter()
            .map(|b| {
                let r = Arc::clone(&ring);
                thread::spawn(move || (b, r.append(&[b; 32]).unwrap()))
            })
            .collect();
        let seen = ring.read(1, 10, 1 << 20).unwrap().records;
        for (i, r) in seen.iter().enumerate() {
            assert_eq!(r.seq, i as u64 + 1, "a gap in what the reader saw: {seen:?}");
            assert!(r.payload[..] == [1; 32] || r.payload[..] == [2; 32], "unwritten bytes read: {r:?}");
        }
        let placed: Vec<(u8, u64)> = appenders.into_iter().map(|h| h.join().unwrap()).collect();
        let all = ring.read(1, 10, 1 << 20).unwrap().records;
        assert_eq!(all.len(), 2, "{all:?}");
        for (b, seq) in placed {
            assert_eq!(all[seq as usize - 1].payload[..], [b; 32], "seq {seq}");
        }
        assert_eq!(ring.stats().last_seq, 2);
    });
    assert!(explored > 1, "loom explored no interleaving");
}

/// Two appenders whose writes may fail (`ENOSPC`), against each other: a
/// failed append whose span nothing follows is undone and counted
/// rejected; one followed by another append's span poisons the ring.
/// Either way every returned seq is readable with its bytes (unless
/// poisoned), the identity holds, no damage is counted, and after a crash
/// no seq returned is handed out again (the failed span, below a later
/// append's frames, counts as skipped: its append never returned).
#[test]
fn loom_models_a_failed_write_outside_the_lock_against_another_append() {
    // Seeds whose draws fail the first write, the second, or both.
    for seed in 0..10 {
        failed_write_against_another_append(seed);
    }
}

fn failed_write_against_another_append(seed: u64) {
    let explored = model(move || {
        let disk = SimDisk::new(seed, Faults::NONE);
        let config = || RingConfig::default().capacity(4096).max_record_len(32).sync(SyncPolicy::Never);
        let ring = Arc::new(ring_on(&disk, config()));
        // The first append writes the seq reservation: then the faults
        // fall on the two appends' data writes (and their undoing).
        assert_eq!(ring.append(&[9; 32]).unwrap(), 1);
        disk.set_faults(Faults { enospc: 0.5, ..Faults::NONE });
        let appenders: Vec<_> = [1u8, 2]
            .into_iter()
            .map(|b| {
                let r = Arc::clone(&ring);
                thread::spawn(move || (b, r.append(&[b; 32])))
            })
            .collect();
        let results: Vec<(u8, crate::Result<u64>)> = appenders.into_iter().map(|h| h.join().unwrap()).collect();
        disk.set_faults(Faults::NONE);
        let s = ring.stats();
        assert!(s.identity_holds(), "{s:?}");
        let returned: Vec<(u8, u64)> = results.iter().filter_map(|(b, r)| r.as_ref().ok().map(|&q| (*b, q))).collect();
        if s.rejected == 0 && results.iter().any(|(_, r)| r.is_err()) {
            assert!(matches!(ring.append(&[3; 32]), Err(crate::Error::Poisoned { .. })), "{results:?} {s:?}");
        } else {
            let all = ring.read(1, 10, 1 << 20).unwrap().records;
            for &(b, seq) in &returned {
                assert!(all.iter().any(|r| r.seq == seq && r.payload[..] == [b; 32]), "seq {seq} lost: {all:?}");
            }
            assert_eq!(s.last_seq, 1 + returned.len() as u64, "{s:?}");
            assert_eq!(ring.stats().corrupted, 0, "{results:?}");
        }
        drop(ring);
        disk.process_crash();
        let reopened = ring_on(&disk, config());
        let after = reopened.stats();
        assert!(after.identity_holds(), "{after:?}");
        assert_eq!(after.corrupted, 0, "a failed write left damage: {results:?} {after:?}");
        let all = reopened.read(1, 10, 1 << 20).unwrap().records;
        for &(b, seq) in &returned {
            assert!(all.iter().any(|r| r.seq == seq && r.payload[..] == [b; 32]), "seq {seq} lost: {all:?}");
        }
        let max = returned.iter().map(|&(_, q)| q).max().unwrap_or(0);
        assert!(reopened.append(&[4; 32]).unwrap() > max, "a returned seq was handed out again");
    });
    assert!(explored > 1, "loom explored no interleaving");
}

/// `close` against `ack`: close's clean checkpoint stays the last one. An
/// ack that passed its closed check before close began must not write its
/// own checkpoint after close's: the reopened ring would find a newer
/// checkpoint that is not clean (and, on real files, one written after the
/// directory lock was released). The ack either fails with `Closed` or is
/// in the clean checkpoint.
#[test]
fn loom_models_close_against_ack() {
    let explored = model(|| {
        let disk = SimDisk::new(4, Faults::NONE);
        let config = || RingConfig::default().capacity(4096).max_record_len(32).sync(SyncPolicy::Never);
        let ring = Arc::new(ring_on(&disk, config()));
        ring.append(&[7; 32]).unwrap();
        let r = Arc::clone(&ring);
        let acker = thread::spawn(move || r.ack(1));
        ring.close().unwrap();
        let acked = acker.join().unwrap();
        assert!(matches!(acked, Ok(()) | Err(crate::Error::Closed)), "{acked:?}");
        drop(ring);
        let (reopened, report) = Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config()).unwrap();
        assert!(report.clean_shutdown, "a checkpoint was written after close's clean one");
        assert_eq!(reopened.stats().acked, u64::from(acked.is_ok()));
    });
    assert!(explored > 1, "loom explored no interleaving");
}

/// `close` whose final fsync fails against an `ack`: close releases the
/// directory either way, so nothing may write a checkpoint after it
/// returns (the files may be the next owner's), not even an ack that
/// passed its closed check before the failed close began.
#[test]
fn loom_models_failed_close_against_ack() {
    let explored = model(|| {
        let disk = SimDisk::new(4, Faults::NONE);
        let config = RingConfig::default().capacity(4096).max_record_len(32).sync(SyncPolicy::Never);
        let ring = Arc::new(ring_on(&disk, config));
        ring.append(&[7; 32]).unwrap();
        disk.set_faults(Faults { fsync_failure: 1.0, ..Faults::NONE });
        let r = Arc::clone(&ring);
        let acker = thread::spawn(move || r.ack(1));
        assert!(ring.close().is_err(), "the final fsync fails");
        let meta = disk.file("ring.meta");
        let len = disk.len("ring.meta") as usize;
        let (mut at_close, mut after) = (vec![0; len], vec![0; len]);
        meta.read_at(&mut at_close, 0).unwrap();
        let _ = acker.join().unwrap();
        meta.read_at(&mut after, 0).unwrap();
        assert!(at_close == after, "a checkpoint was written after close released the directory");
    });
    assert!(explored > 1, "loom explored no interleaving");
}

/// The background renewal of the seq reservation against appends and
/// `close`: an append asks the background thread to renew once half the
/// reservation is used, appends beyond it renew it themselves or wait for
/// the renewal in flight, and `close` stops the thread (a thread that does
/// not stop fails the model) and writes the final reservation. After a
/// power loss that drops every unsynced write, the ring reopens with
/// exactly the records whose appends returned and counts nothing lost.
/// (A reservation write landing after close's final one is the subject of
/// `ring_basics::close_writes_the_final_seq_reservation_after_one_in_flight`:
/// SimDisk's writes are not loom operations, and this model does not find
/// that order.)
#[test]
fn loom_models_reservation_renewal_against_append_and_close() {
    let explored = model(|| {
        let disk = SimDisk::new(4, Faults { lose_unsynced: 1.0, ..Faults::NONE });
        let config =
            || RingConfig::default().capacity(4096).max_record_len(32).sync(SyncPolicy::Never).seq_reservation(2);
        let ring = Arc::new(ring_on(&disk, config()));
        // Reserves seqs up to 3 itself.
        ring.append(&[7; 8]).unwrap();
        let r = Arc::clone(&ring);
        // Seq 2 asks for a renewal; seq 4 is beyond the first reservation.
        let appender = thread::spawn(move || (0..3).map(|_| r.append(&[8; 8]).is_ok()).filter(|ok| *ok).count());
        ring.close().unwrap();
        let appended = appender.join().unwrap() as u64;
        drop(ring);
        disk.power_loss();
        let reopened = ring_on(&disk, config());
        let s = reopened.stats();
        assert_eq!((s.lost_unsynced, s.corrupted), (0, 0), "{s:?}");
        assert_eq!(s.last_seq, 1 + appended, "{s:?}");
        assert_eq!(s.pending, s.last_seq, "{s:?}");
    });
    assert!(explored > 1, "loom explored no interleaving");
}

/// Two front-end appends under `SyncPolicy::Always`, which return before
/// their fsync: the ring's background thread makes both durable (no ask is
/// lost between its taking the asked seq and a later ask, or the model
/// spins forever), and after a power loss both are there.
#[test]
fn loom_models_front_end_appends_under_always_are_synced_in_the_background() {
    let explored = model(|| {
        let disk = SimDisk::new(5, Faults { lose_unsynced: 1.0, ..Faults::NONE });
        let config = RingConfig::default().capacity(4096).sync(SyncPolicy::Always);
        let ring = Arc::new(ring_on(&disk, config.clone()));
        let r = Arc::clone(&ring);
        let other = thread::spawn(move || r.append_nowait(b"a").unwrap());
        let mine = ring.append_nowait(b"b").unwrap();
        let theirs = other.join().unwrap();
        while ring.stats().durable_seq < mine.max(theirs) {
            thread::yield_now();
        }
        drop(ring);
        disk.power_loss();
        let ring = ring_on(&disk, config);
        let present: Vec<u64> = ring.read(1, 10, 1 << 20).unwrap().records.iter().map(|r| r.seq).collect();
        assert_eq!(present, [mine.min(theirs), mine.max(theirs)]);
    });
    assert!(explored > 1, "loom explored no interleaving");
}
