//! A disk block that can no longer be read (a bad sector: every read of it
//! fails with `EIO`) is damage, not a dead ring.
//!
//! Were every read a plain `?`, once the tail came within reach of such a
//! block every append that needed room would fail (the tail could not
//! move, even under `OverwriteOldest`), readers would fail on it, and
//! after a restart every open would fail in recovery: a crash loop that
//! only deleting the ring ends, losing everything in it. So the ring reads
//! around the block (4 KiB at a time), takes it as bytes that decode as
//! nothing, and skips and counts the records there as corrupted.

mod common;

use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::SeqCst;

use common::Hooked;
use common::{Hooks, TempRing, assert_identity, hook_file, open, payload, small};
use ringship::sim::{Faults, SimDisk};
use ringship::{FullPolicy, LossCause, Ring, RingConfig};

/// Records appended in each scenario.
const RECORDS: u64 = 100;
/// Payload bytes per record: frames of 136 bytes, 30 to a 4 KiB block.
const LEN: usize = 100;

/// A file's reads: those that touch `bad` (file offsets) always fail with
/// EIO, and the next `transient` reads fail with EIO once each.
#[derive(Clone, Default)]
struct Disk {
    bad: Arc<parking_lot::Mutex<Option<Range<u64>>>>,
    transient: Arc<AtomicU64>,
    eio: Arc<AtomicU64>,
}

impl Hooks for Disk {
    fn before_read(&self, len: usize, offset: u64) -> io::Result<()> {
        let touches_bad = self.bad.lock().as_ref().is_some_and(|b| offset < b.end && b.start < offset + len as u64);
        let transient = self.transient.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok();
        if touches_bad || transient {
            self.eio.fetch_add(1, SeqCst);
            return Err(io::Error::from_raw_os_error(5));
        }
        Ok(())
    }
}

fn on(disk: &Disk, name: &'static str, config: RingConfig) -> RingConfig {
    let disk = disk.clone();
    hook_file(config, name, move || disk.clone())
}

/// Reads the whole ring from seq 1: every record must be byte-exact.
/// Returns the seqs read.
fn read_all(ring: &Ring) -> Vec<u64> {
    read_all_but(ring, 0)
}

/// [`read_all`], leaving out the record `seq` (one appended for the test).
fn read_all_but(ring: &Ring, seq: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    let mut from = 1;
    loop {
        let batch = ring.read(from, 1000, usize::MAX).expect("reads go around the bad block");
        if batch.is_empty() {
            return seqs;
        }
        for r in batch.records.iter().filter(|r| r.seq != seq) {
            assert_eq!(&r.payload[..], &payload(r.seq, LEN)[..], "seq {} altered", r.seq);
            seqs.push(r.seq);
        }
        from = batch.next_seq;
    }
}

/// After a crash, a bad block in the middle of the records: the ring opens,
/// reads every other record, and counts those in the block as corrupted.
#[test]
fn a_ring_with_a_bad_block_opens_after_a_crash_and_counts_the_records_there() {
    let t = TempRing::new();
    let disk = Disk::default();
    {
        let ring = open(&t.dir, small(64 << 10));
        for i in 1..=RECORDS {
            assert_eq!(ring.append(&payload(i, LEN)).unwrap(), i);
        }
        // Dropped without close: as after kill -9.
    }
    // The data area starts at file offset 4096: this is its second block.
    *disk.bad.lock() = Some(8192..12288);
    let (ring, report) = Ring::open(&t.dir, on(&disk, "ring.data", small(64 << 10))).expect("the ring opens");
    assert!(!report.clean_shutdown);
    let seqs = read_all(&ring);
    assert!(disk.eio.load(SeqCst) > 0, "the bad block was never read");
    let s = ring.stats();
    assert_identity(&s);
    assert!((28..=32).contains(&s.corrupted), "{s:?}");
    assert_eq!(seqs.len() as u64 + s.corrupted, RECORDS, "{s:?}");
    assert_eq!(s.pending, seqs.len() as u64);
    // The failing disk shows, apart from the damage it caused.
    assert!(s.unreadable_bytes >= 4096, "{s:?}");
    let damaged: Vec<_> = ring.losses().into_iter().filter(|l| l.cause == LossCause::Corrupted).collect();
    assert_eq!(damaged.iter().map(|l| l.count).sum::<u64>(), s.corrupted, "{damaged:?}");
    // The ring goes on, past every seq the crash may have handed out.
    let next = ring.append(b"after").unwrap();
    assert!(next > RECORDS, "seq {next} handed out again");
    assert_eq!(s.seqs_skipped, next - 1 - RECORDS, "{s:?}");
}

/// After a crash, a bad block holding the newest records: recovery finds
/// the head short of them, so seqs up to the durable reservation are
/// passed over, and none is used again (I1). They are skipped seqs, not
/// records: nothing tells how many were handed out.
#[test]
fn a_bad_block_at_the_head_never_lets_a_seq_be_used_again() {
    let t = TempRing::new();
    let disk = Disk::default();
    let config = || small(64 << 10).seq_reservation(1000);
    {
        let ring = open(&t.dir, config());
        for i in 1..=RECORDS {
            assert_eq!(ring.append(&payload(i, LEN)).unwrap(), i);
        }
    }
    // Records 1..=100 end at data position 13,600: the data area's fourth
    // block (file offsets 16384..20480) holds the newest ones.
    *disk.bad.lock() = Some(16384..20480);
    let (ring, report) = Ring::open(&t.dir, on(&disk, "ring.data", config())).expect("the ring opens");
    assert!(report.unreadable_bytes >= 4096, "{report:?}");
    let next = ring.append(b"after").unwrap();
    assert!(next > RECORDS, "seq {next} handed out again");
    let s = ring.stats();
    assert_identity(&s);
    assert!(s.seqs_skipped >= 9 && s.seqs_skipped < 1000, "{s:?}");
    let seqs = read_all_but(&ring, next);
    assert_eq!(seqs.len() as u64 + s.corrupted + s.seqs_skipped, next - 1, "{s:?}");
}

/// A bad block ahead of the tail of a full ring: appends go on under
/// `OverwriteOldest`, evicting the records there as corrupted, rather
/// than failing with EIO for good.
#[test]
fn appends_evict_past_a_bad_block_at_the_tail() {
    let t = TempRing::new();
    let disk = Disk::default();
    let ring = open(&t.dir, on(&disk, "ring.data", small(16 << 10)));
    for i in 1..=RECORDS {
        assert_eq!(ring.append(&payload(i, LEN)).unwrap(), i);
    }
    // The data area's second block (of four): the tail reaches it within
    // a lap, and the appends below make more than one.
    *disk.bad.lock() = Some(8192..12288);
    for i in RECORDS + 1..=3 * RECORDS {
        assert_eq!(ring.append(&payload(i, LEN)).expect("appends go on past the bad block"), i);
    }
    assert!(disk.eio.load(SeqCst) > 0, "the bad block was never read");
    let s = ring.stats();
    assert_identity(&s);
    assert!(s.corrupted > 0 && s.unreadable_bytes > 0, "{s:?}");
    *disk.bad.lock() = None;
    assert_eq!(read_all(&ring).len() as u64, s.pending);
}

/// A single failed read (EIO once, then the block reads again) costs
/// nothing: the block is read again, no record is counted lost, and the
/// append that needed it succeeds.
#[test]
fn a_read_that_fails_once_is_read_again() {
    let t = TempRing::new();
    let disk = Disk::default();
    let ring = open(&t.dir, on(&disk, "ring.data", small(4096).full(FullPolicy::OverwriteOldest)));
    for i in 1..=3 {
        assert_eq!(ring.append(&payload(i, 1000)).unwrap(), i);
    }
    disk.transient.store(1, SeqCst);
    assert_eq!(ring.append(&payload(4, 1000)).unwrap(), 4);
    assert_eq!(disk.eio.load(SeqCst), 1);
    let s = ring.stats();
    assert_identity(&s);
    assert_eq!((s.corrupted, s.overwritten, s.pending, s.unreadable_bytes), (0, 1, 3, 0), "{s:?}");
}

/// A bad block over one checkpoint slot of `ring.meta`: the ring opens
/// from the other slot, with every record.
#[test]
fn a_bad_block_over_a_checkpoint_slot_is_a_damaged_slot() {
    let t = TempRing::new();
    let disk = Disk::default();
    {
        let ring = open(&t.dir, small(64 << 10));
        for i in 1..=RECORDS {
            ring.append(&payload(i, LEN)).unwrap();
        }
        ring.ack(10).unwrap();
        ring.close().unwrap();
    }
    for slot in [0..4096, 4096..8192] {
        *disk.bad.lock() = Some(slot.clone());
        let (ring, report) = Ring::open(&t.dir, on(&disk, "ring.meta", small(64 << 10))).expect("the ring opens");
        assert_eq!((report.unreadable_bytes, report.damaged_checkpoint_slots), (4096, 1), "{report:?}");
        let s = ring.stats();
        assert_identity(&s);
        // The other slot may be older than the ack: acked records are then
        // pending again (sent twice, never lost).
        assert!(s.acked <= 10, "slot {slot:?}: {s:?}");
        assert_eq!((s.acked + s.pending, s.corrupted, s.overwritten), (RECORDS, 0, 0), "slot {slot:?}: {s:?}");
        ring.close().unwrap();
    }
}

/// A bad block over either seq reservation record of `ring.meta`, then a
/// power loss that takes the newest records: the other record still says
/// which seqs were handed out, and none is used again (I1). Each record
/// has a 4 KiB block of its own: with both in one unreadable block the
/// ring would resume right after the last durable record, handing out
/// seqs a receiver may already hold.
#[test]
fn a_bad_block_over_either_reservation_record_still_keeps_seqs_from_reuse() {
    for bad in [8192..12288, 12288..16384] {
        let disk = SimDisk::new(7, Faults { lose_unsynced: 1.0, ..Faults::NONE });
        let config = || small(64 << 10).seq_reservation(1000);
        {
            let (ring, _) = Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config()).unwrap();
            for i in 1..=RECORDS {
                assert_eq!(ring.append(&payload(i, LEN)).unwrap(), i);
                if i == RECORDS / 2 {
                    ring.sync().unwrap();
                }
            }
        }
        disk.power_loss();
        let bad_meta = Disk::default();
        *bad_meta.bad.lock() = Some(bad.clone());
        let meta = Box::new(Hooked { inner: disk.file("ring.meta"), hooks: bad_meta.clone() });
        let (ring, report) = Ring::open_on(disk.file("ring.data"), meta, config()).expect("the ring opens");
        assert!(bad_meta.eio.load(SeqCst) > 0, "the bad block was never read");
        assert_eq!(report.unreadable_bytes, 4096, "{bad:?}: {report:?}");
        let next = ring.append(b"after").unwrap();
        assert!(next > RECORDS, "{bad:?}: seq {next} handed out again");
        let s = ring.stats();
        assert_identity(&s);
        assert_eq!(s.pending, RECORDS / 2 + 1, "{bad:?}: {s:?}");
        assert_eq!(s.lost_unsynced + s.seqs_skipped, next - 1 - RECORDS / 2, "{bad:?}: {s:?}");
    }
}
