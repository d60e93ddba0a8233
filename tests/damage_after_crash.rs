//! Damage at rest after a process crash (the same boot, no power loss), at
//! the newest and the oldest frames.
//!
//! After an unclean shutdown nothing on disk tells a zeroed, garbled, cut
//! off or bit-flipped newest frame from one never written, or from writes
//! the disk dropped without a reboot. So every seq up to the durable seq
//! reservation is passed over (`seqs_skipped`), none is handed out again
//! (I1), and a record whose damaged header survives is counted, with the
//! right cause (I2, I4). The same damage after a clean close is checked
//! too: the same promises hold there.

mod common;

use common::{TempRing, assert_identity, payload};
use ringship::{LossCause, Ring, RingConfig, SyncPolicy};

const DATA_OFFSET: usize = 4096;
/// Records of 64 bytes: frames of 96.
const LEN: usize = 64;
const FRAME: usize = 96;
const CAP: u64 = 64 << 10;

fn config(sync: SyncPolicy) -> RingConfig {
    RingConfig::default().capacity(CAP).sync(sync)
}

/// Appends `n` records, then leaves the ring as a kill -9 would (dropped
/// without close) or closes it.
fn fill(t: &TempRing, sync: SyncPolicy, n: u64, clean: bool) {
    let (ring, _) = Ring::open(&t.dir, config(sync)).unwrap();
    for i in 1..=n {
        assert_eq!(ring.append(&payload(i, LEN)).unwrap(), i);
    }
    if clean {
        ring.close().unwrap();
    }
}

fn damage(t: &TempRing, f: impl FnOnce(&mut Vec<u8>)) {
    let mut data = std::fs::read(t.data_file()).unwrap();
    f(&mut data);
    std::fs::write(t.data_file(), &data).unwrap();
}

/// Reads everything, checks the bytes, returns the seqs.
fn read_back(ring: &Ring) -> Vec<u64> {
    let b = ring.read(1, usize::MAX, usize::MAX).unwrap();
    for r in &b.records {
        assert_eq!(&r.payload[..], &payload(r.seq, LEN)[..], "I4: seq {}", r.seq);
    }
    b.records.iter().map(|r| r.seq).collect()
}

/// `SyncPolicy::Always`, 10 records (all durable), kill -9, one bit
/// of seq 10's payload flips. Seq 10 was handed out: it is counted
/// corrupted, and the next append gets a seq above every one the crash may
/// have handed out.
#[test]
fn a_bit_flip_in_the_newest_durable_frame_after_a_crash_reuses_no_seq() {
    for clean in [false, true] {
        let t = TempRing::new();
        fill(&t, SyncPolicy::Always, 10, clean);
        damage(&t, |d| d[DATA_OFFSET + 9 * FRAME + 40] ^= 0x10);
        let (ring, report) = Ring::open(&t.dir, config(SyncPolicy::Always)).unwrap();
        assert_eq!(read_back(&ring), (1..=9).collect::<Vec<_>>(), "clean {clean}");
        let s = ring.stats();
        assert_identity(&s);
        assert_eq!(s.corrupted, 1, "clean {clean}: the durable record is counted: {s:?} {report:?}");
        let l: Vec<_> = ring.losses().into_iter().filter(|l| l.cause == LossCause::Corrupted).collect();
        assert_eq!((l[0].first_seq, l[0].last_seq), (10, 10), "clean {clean}: {l:?}");
        let next = ring.append(b"after").unwrap();
        assert!(next > 10, "clean {clean}: seq {next} handed out again");
        assert_eq!(s.appended, 10, "clean {clean}: {s:?}");
    }
}

/// `SyncPolicy::Never`, 10 records, kill -9, `ring.data` cut to its
/// header. Nothing tells how many records there were: seqs up to the
/// reservation are skipped and none is reused.
#[test]
fn a_data_file_cut_to_its_header_after_a_crash_reuses_no_seq() {
    let t = TempRing::new();
    fill(&t, SyncPolicy::Never, 10, false);
    damage(&t, |d| d.truncate(DATA_OFFSET));
    let (ring, report) = Ring::open(&t.dir, config(SyncPolicy::Never)).unwrap();
    assert_eq!(report.data_file_extended_from, Some(DATA_OFFSET as u64));
    assert!(read_back(&ring).is_empty());
    let s = ring.stats();
    assert_identity(&s);
    assert!(s.seqs_skipped >= 10, "{s:?} {report:?}");
    let next = ring.append(b"after").unwrap();
    assert!(next > 10, "seq {next} handed out again");
    assert_eq!(next, s.last_seq + 1);
}

/// Zeros or garbage over the newest frames, after a crash or a clean
/// close: no seq goes back, and what survives reads back byte-exact.
#[test]
fn zeros_or_garbage_over_the_newest_frames_reuse_no_seq() {
    const N: u64 = 500;
    for fill_byte in [0u8, 0xAB] {
        for clean in [false, true] {
            let what = format!("byte {fill_byte:#x}, clean {clean}");
            let t = TempRing::new();
            fill(&t, SyncPolicy::Never, N, clean);
            // The newest 21 frames, and the rest of their 4 KiB block.
            let end = DATA_OFFSET + N as usize * FRAME;
            damage(&t, |d| d[end - 21 * FRAME..end.next_multiple_of(4096)].fill(fill_byte));
            let (ring, report) = Ring::open(&t.dir, config(SyncPolicy::Never)).unwrap();
            let seqs = read_back(&ring);
            assert_eq!(seqs, (1..=N - 21).collect::<Vec<_>>(), "{what}");
            let s = ring.stats();
            assert_identity(&s);
            assert!(s.last_seq >= N, "{what}: last seq went back: {s:?} {report:?}");
            // Each missing seq is counted, as a damaged record or a skipped seq.
            assert_eq!(s.corrupted + s.seqs_skipped, s.last_seq - (N - 21), "{what}: {s:?}");
            assert!(ring.append(b"after").unwrap() > N, "{what}");
        }
    }
}

/// A lapped ring with no acks, a crash, then one bit of the oldest live
/// record flips. That frame lies inside the live window: it was never
/// evicted, so its record is corrupted, not overwritten; the records
/// evicted before it are overwritten, as before the crash.
#[test]
fn a_damaged_oldest_frame_after_a_crash_is_corrupted_not_overwritten() {
    // 682 frames of 96 bytes fill a lap (and a pad); after 1,000 records
    // the oldest live one is seq 319, at data position 318 * 96.
    const N: u64 = 1000;
    const OLDEST: u64 = 319;
    for clean in [false, true] {
        let t = TempRing::new();
        {
            let (ring, _) = Ring::open(&t.dir, config(SyncPolicy::Never)).unwrap();
            for i in 1..=N {
                ring.append(&payload(i, LEN)).unwrap();
            }
            assert_eq!(ring.stats().overwritten, OLDEST - 1, "the geometry this test assumes");
            if clean {
                ring.close().unwrap();
            }
        }
        damage(&t, |d| d[DATA_OFFSET + (OLDEST as usize - 1) * FRAME + 40] ^= 1);
        let (ring, report) = Ring::open(&t.dir, config(SyncPolicy::Never)).unwrap();
        let seqs = read_back(&ring);
        assert_eq!(seqs.first(), Some(&(OLDEST + 1)), "clean {clean}");
        let s = ring.stats();
        assert_identity(&s);
        assert_eq!((s.corrupted, s.overwritten), (1, OLDEST - 1), "clean {clean}: {s:?} {report:?}");
        let losses = ring.losses();
        let cause_of = |seq: u64| losses.iter().find(|l| l.first_seq <= seq && seq <= l.last_seq).map(|l| l.cause);
        assert_eq!(cause_of(OLDEST), Some(LossCause::Corrupted), "clean {clean}: {losses:?}");
        assert_eq!(cause_of(OLDEST - 1), Some(LossCause::Overwritten), "clean {clean}: {losses:?}");
    }
}

/// A creation killed between its two renames leaves `ring.meta.tmp` beside
/// `ring.data`; the next open recovers the ring and removes it.
#[test]
fn an_open_after_a_creation_cut_between_its_renames_leaves_no_temporary_file() {
    let t = TempRing::new();
    fill(&t, SyncPolicy::Never, 3, true);
    std::fs::rename(t.meta_file(), t.dir.join("ring.meta.tmp")).unwrap();
    let (ring, _) = Ring::open(&t.dir, config(SyncPolicy::Never)).unwrap();
    assert!(!t.dir.join("ring.meta.tmp").exists(), "ring.meta.tmp left behind");
    assert!(t.meta_file().exists());
    assert!(ring.append(b"after").unwrap() > 3);
}

/// A read of 0 records is refused with a clear error: a read returns at
/// least one record, so it cannot honour a limit of 0.
#[test]
fn a_read_of_zero_records_is_refused() {
    let t = TempRing::new();
    let (ring, _) = Ring::open(&t.dir, config(SyncPolicy::Never)).unwrap();
    ring.append(b"one").unwrap();
    let err = ring.read(1, 0, 4096).unwrap_err();
    assert!(err.to_string().contains("max_records"), "{err}");
}

/// Counts the bytes read from the data file.
struct CountReads(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl common::Hooks for CountReads {
    fn before_read(&self, len: usize, _offset: u64) -> std::io::Result<()> {
        self.0.fetch_add(len as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// A crash leaves seqs skipped after the newest record until an ack passes
/// them; a clean close and reopen meanwhile still takes the fast path (it
/// reads a few frames, not the ring), keeps them skipped, and hands out no
/// seq again.
#[test]
fn a_clean_reopen_after_a_crash_stays_fast_with_the_skipped_seqs_unsettled() {
    const N: u64 = 500;
    const BIG: u64 = 16 << 20;
    let big = || RingConfig::default().capacity(BIG).sync(SyncPolicy::Never);
    let t = TempRing::new();
    {
        let (ring, _) = Ring::open(&t.dir, big()).unwrap();
        for i in 1..=N {
            ring.append(&payload(i, LEN)).unwrap();
        }
    }
    let (ring, _) = Ring::open(&t.dir, big()).unwrap();
    let skipped = ring.stats().seqs_skipped;
    assert!(skipped > 0);
    ring.close().unwrap();
    drop(ring);
    let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = std::sync::Arc::clone(&read);
    let hooked = common::hook_file(big(), "ring.data", move || CountReads(counter.clone()));
    let (ring, report) = Ring::open(&t.dir, hooked).unwrap();
    assert!(report.clean_shutdown);
    assert_eq!(report.records_recovered, N, "{report:?}");
    let bytes = read.load(std::sync::atomic::Ordering::Relaxed);
    assert!(bytes < BIG / 8, "a clean reopen read {bytes} bytes of a {BIG}-byte ring");
    let s = ring.stats();
    assert_eq!((s.seqs_skipped, s.pending, s.appended), (skipped, N, N), "{s:?}");
    assert_eq!(read_back(&ring), (1..=N).collect::<Vec<_>>());
    assert_eq!(ring.append(b"after").unwrap(), s.last_seq + 1);
}

/// After a crash, the bytes of records evicted since the last checkpoint
/// are counted exactly, without the padding at the lap ends between them
/// (their frames are gone; each lap end the head crossed was
/// checkpointed).
#[test]
fn overwritten_bytes_after_a_crash_are_exact() {
    let t = TempRing::new();
    let mut r = common::Rng(0x000b_17e5);
    let (before, ring) = {
        let (ring, _) = Ring::open(&t.dir, config(SyncPolicy::Never)).unwrap();
        for i in 1..=20_000 {
            ring.append(&payload(i, 1 + r.below(400) as usize)).unwrap();
        }
        (ring.stats(), ring)
    };
    drop(ring);
    let (ring, _) = Ring::open(&t.dir, config(SyncPolicy::Never)).unwrap();
    let after = ring.stats();
    assert_eq!((after.overwritten, after.overwritten_bytes), (before.overwritten, before.overwritten_bytes));
    let ranges: u64 = ring.losses().iter().filter(|l| l.cause == LossCause::Overwritten).map(|l| l.bytes).sum();
    assert_eq!(ranges, after.overwritten_bytes);
}

/// The payload byte (eight in a row) of the append whose write is held.
const HELD_BYTE: u8 = 0xAB;

/// Holds back every write of `HELD_BYTE` x 8: meets the test at the
/// barrier, waits there again, then reports it written without writing it.
struct HoldsMarked(std::sync::Arc<std::sync::Barrier>);

impl common::Hooks for HoldsMarked {
    fn drops_write(&self, buf: &[u8]) -> bool {
        let held = buf.windows(8).any(|w| w == [HELD_BYTE; 8]);
        if held {
            self.0.wait();
            self.0.wait();
        }
        held
    }
}

/// Appends write their frames with no lock held, so a kill can come after
/// one append reserved its span and before it wrote, while a later append
/// wrote its frames. That append never returned: after the crash its seq
/// counts as skipped (not a record, and not damage), the records around it
/// are delivered, and no seq is handed out again. Checked with the gap
/// first after the checkpoint and between two records.
#[test]
fn an_append_killed_before_its_write_while_a_later_one_wrote_is_skipped() {
    use ringship::sim::{Faults, SimDisk};
    use std::sync::{Arc, Barrier};
    for before in [0u64, 3] {
        let disk = SimDisk::new(before, Faults::NONE);
        let barrier = Arc::new(Barrier::new(2));
        let data = Box::new(common::Hooked { inner: disk.file("ring.data"), hooks: HoldsMarked(Arc::clone(&barrier)) });
        let (ring, _) = Ring::open_on(data, disk.file("ring.meta"), config(SyncPolicy::Never)).unwrap();
        let ring = Arc::new(ring);
        for i in 1..=before {
            assert_eq!(ring.append(&payload(i, LEN)).unwrap(), i);
        }
        let held = {
            let ring = Arc::clone(&ring);
            std::thread::spawn(move || ring.append(&[HELD_BYTE; LEN]).unwrap())
        };
        // The held append has reserved its seq and is "writing".
        barrier.wait();
        let after = ring.append(&payload(before + 2, LEN)).unwrap();
        assert_eq!(after, before + 2);
        // The kill: nothing more reaches the files (the held append's write
        // never does).
        disk.process_crash();
        let reopened = Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config(SyncPolicy::Never));
        barrier.wait();
        assert_eq!(held.join().unwrap(), before + 1);
        drop(ring);
        let (ring, report) = reopened.unwrap();
        let s = ring.stats();
        assert_identity(&s);
        assert_eq!((s.corrupted, s.lost_unsynced), (0, 0), "before {before}: {s:?} {report:?}");
        let losses = ring.losses();
        let held_seq = before + 1;
        let cause = losses.iter().find(|l| l.first_seq <= held_seq && held_seq <= l.last_seq).map(|l| l.cause);
        assert_eq!(cause, Some(LossCause::Skipped), "before {before}: {losses:?}");
        let mut want: Vec<u64> = (1..=before).collect();
        want.push(after);
        assert_eq!(read_back(&ring), want, "before {before}");
        assert!(ring.append(b"next").unwrap() > after, "before {before}: a seq was handed out again");
    }
}
