//! Damage: torn tails at every offset, truncated files, single bit flips
//! across the data file and both checkpoint slots. Never a panic, never a
//! wrong record returned, every record either delivered byte-exact or
//! counted, and the accounting identity holds.

mod common;

use std::io;
use std::path::Path;
use std::sync::Arc;

use common::{TempRing, assert_identity, payload};
use ringship::{LossCause, Ring, RingConfig, Storage, SyncPolicy};

const CAP: u64 = 2048;
const LEN: usize = 100;
/// Frame size of a `LEN`-byte record.
const FRAME: u64 = 136;
const DATA_OFFSET: u64 = 4096;

/// Skips fsync: thousands of reopens stay fast, and durability is not what
/// these tests check. Reports the boot id it was given, so a test can open
/// files "after a reboot" (a power loss).
struct NoSync(Box<dyn Storage>, u8);

impl Storage for NoSync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn boot_id(&self) -> Option<[u8; 16]> {
        Some([self.1; 16])
    }
}

fn config() -> RingConfig {
    config_on_boot(1)
}

fn config_on_boot(boot: u8) -> RingConfig {
    RingConfig::default()
        .capacity(CAP)
        .max_record_len(256)
        .sync(SyncPolicy::Never)
        .storage_wrapper(Arc::new(move |_, s| Box::new(NoSync(s, boot))))
}

/// A closed ring holding `n` records; returns its files' bytes.
fn pristine(n: u64, ack: u64) -> (Vec<u8>, Vec<u8>) {
    image(n, ack, true)
}

/// The files of a ring holding `n` records, synced but never closed, as a
/// process crash leaves them.
fn crashed(n: u64, ack: u64) -> (Vec<u8>, Vec<u8>) {
    image(n, ack, false)
}

fn image(n: u64, ack: u64, close: bool) -> (Vec<u8>, Vec<u8>) {
    let t = TempRing::new();
    let (ring, _) = Ring::open(&t.dir, config()).unwrap();
    for i in 1..=n {
        ring.append(&payload(i, LEN)).unwrap();
    }
    if ack > 0 {
        ring.ack(ack).unwrap();
    }
    if close {
        ring.close().unwrap();
    } else {
        ring.sync().unwrap();
    }
    (std::fs::read(t.data_file()).unwrap(), std::fs::read(t.meta_file()).unwrap())
}

/// Opens a ring from the given file bytes and checks the promises.
/// Returns the seqs delivered. Recovery checks the checksum of frames that
/// were not yet durable, and of every frame of a data file found cut short:
/// then it finds all damage at open (`found_at_open`). Damage in durable
/// frames is found by the reader.
fn check_open(dir: &Path, data: &[u8], meta: &[u8], appended: u64, found_at_open: bool) -> Vec<u64> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ring.data"), data).unwrap();
    std::fs::write(dir.join("ring.meta"), meta).unwrap();
    let (ring, report) = Ring::open(dir, config()).unwrap_or_else(|e| panic!("refused to open: {e}"));
    let s = ring.stats();
    assert_identity(&s);
    assert_eq!(s.appended, appended, "{s:?} {report:?}");
    let batch = ring.read(1, usize::MAX, usize::MAX).unwrap();
    for r in &batch.records {
        assert_eq!(&r.payload[..], &payload(r.seq, LEN)[..], "wrong bytes for seq {}", r.seq);
    }
    let after = ring.stats();
    assert_identity(&after);
    let delivered_pending = batch.records.iter().filter(|r| r.seq > s.ack_seq).count() as u64;
    assert_eq!(delivered_pending, after.pending, "every pending record must be readable: {after:?}");
    if found_at_open {
        assert_eq!(s, after, "recovery must find all damage: {report:?}");
    }
    // No seq is reused.
    assert_eq!(ring.append(b"after").unwrap(), s.last_seq + 1);
    ring.close().unwrap();
    batch.records.iter().map(|r| r.seq).collect()
}

#[test]
fn synced_last_frame_zeroed_from_every_offset() {
    let n = 10;
    let (data, meta) = crashed(n, 0);
    let last_start = DATA_OFFSET + (n - 1) * FRAME;
    let t = TempRing::new();
    for k in 0..FRAME {
        // The tail of the last frame lost after it was synced.
        let mut torn = data.clone();
        for b in &mut torn[(last_start + k) as usize..(last_start + FRAME) as usize] {
            *b = 0;
        }
        let seqs = check_open(&t.tmp.path().join(format!("torn{k}")), &torn, &meta, n, false);
        let whole = k >= 32 + LEN as u64;
        assert_eq!(seqs.len() as u64, if whole { n } else { n - 1 }, "offset {k}");
        assert_eq!(seqs[..9], (1..=9).collect::<Vec<_>>()[..]);
    }
}

#[test]
fn torn_tail_after_power_loss_reports_truncated_bytes_and_counts_the_record() {
    // Records 1..=9 synced, record 10 written but not synced, then the power
    // fails halfway through writing it.
    let t = TempRing::new();
    let (ring, _) = Ring::open(&t.dir, config()).unwrap();
    for i in 1..=9 {
        ring.append(&payload(i, LEN)).unwrap();
    }
    ring.sync().unwrap();
    ring.append(&payload(10, LEN)).unwrap();
    let (mut data, meta) = (std::fs::read(t.data_file()).unwrap(), std::fs::read(t.meta_file()).unwrap());
    drop(ring);
    let last_start = (DATA_OFFSET + 9 * FRAME) as usize;
    for b in &mut data[last_start + 80..last_start + FRAME as usize] {
        *b = 0;
    }
    let dir = t.tmp.path().join("rebooted");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ring.data"), &data).unwrap();
    std::fs::write(dir.join("ring.meta"), &meta).unwrap();
    let (ring, report) = Ring::open(&dir, config_on_boot(2)).unwrap();
    assert_eq!(report.torn_bytes_truncated, FRAME);
    let s = ring.stats();
    assert_identity(&s);
    assert_eq!((s.pending, s.corrupted), (9, 0), "{s:?}");
    // Seq 10 counts as lost unsynced; the seqs the reservation covered
    // beyond it are skipped.
    let l = ring.losses();
    assert_eq!((l[0].first_seq, l[0].last_seq, l[0].cause), (10, 10, LossCause::LostUnsynced), "{l:?}");
    assert_eq!((l[1].first_seq, l[1].last_seq, l[1].cause), (11, s.last_seq, LossCause::Skipped), "{l:?}");
    assert_eq!((report.lost_unsynced_discovered, s.lost_unsynced), (1, 1));
    assert_eq!(report.seqs_skipped, s.seqs_skipped);
    assert_eq!(ring.append(b"after").unwrap(), s.last_seq + 1);
}

#[test]
fn file_truncated_at_every_offset_of_the_last_record() {
    let n = 10;
    let (data, meta) = pristine(n, 0);
    let last_start = DATA_OFFSET + (n - 1) * FRAME;
    let t = TempRing::new();
    for k in 0..FRAME {
        let cut = &data[..(last_start + k) as usize];
        let seqs = check_open(&t.tmp.path().join(format!("cut{k}")), cut, &meta, n, true);
        let whole = k >= 32 + LEN as u64;
        assert_eq!(seqs, (1..if whole { n + 1 } else { n }).collect::<Vec<_>>(), "cut at {k}");
    }
}

#[test]
fn bit_flips_across_the_data_file() {
    // A lapped ring: 25 records of 136 bytes in 2048 (15 survive), 8 acked,
    // synced: after a crash or a clean close, the reader finds the damage.
    let n = 25;
    for clean in [false, true] {
        let (data, meta) = image(n, 8, clean);
        let t = TempRing::new();
        let mut delivered_all = 0;
        for byte in 0..data.len() {
            // Every byte of the header and frames; one bit per byte past it.
            let bits: Vec<usize> = if byte < 64 || (byte >= DATA_OFFSET as usize && byte < DATA_OFFSET as usize + 512) {
                (0..8).collect()
            } else if byte >= 64 && byte < DATA_OFFSET as usize {
                if byte % 64 == 0 { vec![byte % 8] } else { vec![] }
            } else {
                vec![byte % 8]
            };
            for bit in bits {
                let mut d = data.clone();
                d[byte] ^= 1 << bit;
                let dir = t.tmp.path().join(format!("flip{byte}_{bit}"));
                let seqs = check_open(&dir, &d, &meta, n, false);
                if seqs.len() == 15 {
                    delivered_all += 1;
                }
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
        // Most flips land in bytes no reader depends on, or in frames that
        // are then counted; the check is that none was delivered wrong.
        assert!(delivered_all > 0);
    }
}

#[test]
fn clean_reopen_reads_no_frames_and_readers_count_damage() {
    let n = 25;
    let (mut data, meta) = pristine(n, 8);
    // Damage the payload of seq 20, the fifth frame of the second lap.
    let at = (DATA_OFFSET + 4 * FRAME + 40) as usize;
    data[at] ^= 0x10;
    let t = TempRing::new();
    std::fs::create_dir_all(&t.dir).unwrap();
    std::fs::write(t.data_file(), &data).unwrap();
    std::fs::write(t.meta_file(), &meta).unwrap();
    let (ring, report) = Ring::open(&t.dir, config()).unwrap();
    assert!(report.clean_shutdown);
    assert_eq!((report.records_recovered, report.pending, report.damaged_records), (15, 15, 0));
    assert_eq!(ring.stats().corrupted, 0, "not read yet");
    let batch = ring.read(1, usize::MAX, usize::MAX).unwrap();
    let seqs: Vec<u64> = batch.records.iter().map(|r| r.seq).collect();
    assert!(!seqs.contains(&20) && seqs.len() == 14, "{seqs:?}");
    let s = ring.stats();
    assert_identity(&s);
    assert_eq!((s.corrupted, s.pending), (1, 14));
    let l = ring.losses();
    assert!(l.iter().any(|l| (l.first_seq, l.last_seq) == (20, 20)), "{l:?}");
}

#[test]
fn bit_flips_across_both_checkpoint_slots() {
    let n = 25;
    let (data, meta) = pristine(n, 8);
    let t = TempRing::new();
    for slot in 0..2 {
        for byte in 0..400 {
            for bit in 0..8 {
                let mut m = meta.clone();
                m[slot * 4096 + byte] ^= 1 << bit;
                let dir = t.tmp.path().join(format!("meta{slot}_{byte}_{bit}"));
                check_open(&dir, &data, &m, n, true);
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
    }
}

#[test]
fn one_checkpoint_slot_destroyed_entirely() {
    let n = 25;
    let (data, meta) = pristine(n, 8);
    let t = TempRing::new();
    for slot in 0..2 {
        let mut m = meta.clone();
        for b in &mut m[slot * 4096..(slot + 1) * 4096] {
            *b = 0xa5;
        }
        let dir = t.tmp.path().join(format!("slot{slot}"));
        let seqs = check_open(&dir, &data, &m, n, true);
        assert_eq!(seqs.len(), 15, "all 15 surviving records are delivered (slot {slot})");
    }
}

#[test]
fn meta_file_lost_entirely() {
    let n = 25;
    let (data, _) = pristine(n, 8);
    let t = TempRing::new();
    std::fs::create_dir_all(&t.dir).unwrap();
    std::fs::write(t.data_file(), &data).unwrap();
    let (ring, report) = Ring::open(&t.dir, config()).unwrap();
    let s = ring.stats();
    assert_identity(&s);
    // Without the checkpoint the acks are unknown: survivors are pending
    // again (at-least-once), everything before them counted overwritten.
    assert_eq!(s.last_seq, n);
    assert_eq!(report.records_recovered, 15);
    assert_eq!(s.pending, 15);
    assert_eq!(s.overwritten, 10);
}

#[test]
fn data_file_older_than_the_checkpoint() {
    // The data file as it was after 20 records, the meta file after 40
    // (a data file restored from a copy, or writes lost under a durable
    // checkpoint). Seqs 1..=25 were counted overwritten by the checkpoint;
    // 26..=40 are gone from the data and must be counted once, not again
    // from 21 where the data file stops.
    let t = TempRing::new();
    let (ring, _) = Ring::open(&t.dir, config()).unwrap();
    for i in 1..=20 {
        ring.append(&payload(i, LEN)).unwrap();
    }
    ring.sync().unwrap();
    let old_data = std::fs::read(t.data_file()).unwrap();
    for i in 21..=40 {
        ring.append(&payload(i, LEN)).unwrap();
    }
    let before = ring.stats();
    ring.close().unwrap();
    let meta = std::fs::read(t.meta_file()).unwrap();
    assert_eq!((before.overwritten, before.pending), (25, 15));

    let dir = t.tmp.path().join("restored");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ring.data"), &old_data).unwrap();
    std::fs::write(dir.join("ring.meta"), &meta).unwrap();
    let (ring, report) = Ring::open(&dir, config()).unwrap();
    let s = ring.stats();
    assert_identity(&s);
    assert_eq!((s.appended, s.overwritten, s.corrupted, s.pending), (40, 25, 15, 0), "{s:?} {report:?}");
    assert_eq!(report.damaged_records, 15);
    let losses = ring.losses();
    let counted: u64 = losses.iter().map(|l| l.count).sum();
    assert_eq!(counted, 40, "every seq in exactly one loss range: {losses:?}");
    assert_eq!(ring.append(b"after").unwrap(), 41);
    ring.close().unwrap();
    // And the next open agrees.
    let (ring, _) = Ring::open(&dir, config()).unwrap();
    let s = ring.stats();
    assert_identity(&s);
    assert_eq!((s.appended, s.overwritten, s.corrupted, s.pending), (41, 25, 15, 1), "{s:?}");
}

#[test]
fn damage_after_the_checkpoint_head_does_not_hide_later_records() {
    // Records 1..=10 synced and checkpointed; 11..=16 written after, then
    // the process dies. Frames 11 to 13 are destroyed (a bad block):
    // recovery must still find 14..=16 and never reuse their seqs.
    let t = TempRing::new();
    let (ring, _) = Ring::open(&t.dir, config()).unwrap();
    for i in 1..=10 {
        ring.append(&payload(i, LEN)).unwrap();
    }
    ring.sync().unwrap();
    // The checkpoint as it stood after seq 10: seq 16 crosses the lap end,
    // which writes another (this is the image if that write was lost).
    let meta = std::fs::read(t.meta_file()).unwrap();
    for i in 11..=16 {
        ring.append(&payload(i, LEN)).unwrap();
    }
    let mut data = std::fs::read(t.data_file()).unwrap();
    drop(ring);
    let start = (DATA_OFFSET + 10 * FRAME) as usize;
    for b in &mut data[start..start + 3 * FRAME as usize] {
        *b = 0xee;
    }
    let dir = t.tmp.path().join("crashed");
    let seqs = check_open(&dir, &data, &meta, 16, true);
    // Seq 1 made room for seq 16.
    assert_eq!(seqs, [2, 3, 4, 5, 6, 7, 8, 9, 10, 14, 15, 16]);
    let (ring, _) = Ring::open(&dir, config()).unwrap();
    let s = ring.stats();
    assert_eq!((s.corrupted, s.lost_unsynced), (3, 0), "{s:?}");
}

#[test]
fn power_loss_head_search_is_not_fooled_by_a_damaged_durable_header() {
    // Records 1..=10 synced and checkpointed, one or three more written
    // after and kept by the disk, then the power fails. After the reboot
    // recovery looks for frames newer than the checkpoint's head; the
    // headers of the records before it, which it judges without their
    // checksums, are hit bit by bit. The newer records must always be found
    // and their seqs never reused.
    for last in [11u64, 13] {
        let (t, ring) = synced_ten_then_up_to(last);
        let (data, meta) = (std::fs::read(t.data_file()).unwrap(), std::fs::read(t.meta_file()).unwrap());
        drop(ring);
        let newer: Vec<u64> = (11..=last).collect();
        each_header_bit_flipped(&t, (&data, &meta), &[9, 10], |ring, report, record, what| {
            let what = format!("last {last}, {what}");
            assert_identity(&ring.stats());
            let seqs = read_exact(&ring, 1, &what);
            assert!(seqs.ends_with(&newer), "{what}: {seqs:?} {report:?}");
            let damaged = (1..=last).filter(|q| !seqs.contains(q)).count() as u64;
            assert!(damaged <= 1 && (damaged == 0 || !seqs.contains(&record)), "{what}: {seqs:?}");
            let after = ring.stats();
            assert_identity(&after);
            assert_eq!(after.corrupted, damaged, "{what}: {after:?}");
            assert!(ring.append(b"after").unwrap() > last);
        });
    }
}

/// A ring with records 1..=10 synced, then 11..=`last` appended.
fn synced_ten_then_up_to(last: u64) -> (TempRing, Ring) {
    let t = TempRing::new();
    let (ring, _) = Ring::open(&t.dir, config()).unwrap();
    for i in 1..=10 {
        ring.append(&payload(i, LEN)).unwrap();
    }
    ring.sync().unwrap();
    for i in 11..=last {
        ring.append(&payload(i, LEN)).unwrap();
    }
    (t, ring)
}

/// For each bit of the headers of `records` (of `LEN` bytes, in the first
/// lap): the files with that bit flipped, opened after a reboot.
fn each_header_bit_flipped(
    t: &TempRing,
    (data, meta): (&[u8], &[u8]),
    records: &[u64],
    mut check: impl FnMut(Ring, ringship::RecoveryReport, u64, String),
) {
    let base = tempfile::tempdir_in(t.tmp.path()).unwrap();
    for &record in records {
        let start = (DATA_OFFSET + (record - 1) * FRAME) as usize;
        for bit in 0..32 * 8 {
            let mut hit = data.to_vec();
            hit[start + bit / 8] ^= 1 << (bit % 8);
            let dir = base.path().join(format!("r{record}b{bit}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("ring.data"), &hit).unwrap();
            std::fs::write(dir.join("ring.meta"), meta).unwrap();
            let (ring, report) = Ring::open(&dir, config_on_boot(2)).unwrap();
            check(ring, report, record, format!("record {record}, bit {bit}"));
        }
    }
}

/// Reads every record from `from` on, checks its bytes, returns the seqs.
fn read_exact(ring: &Ring, from: u64, what: &str) -> Vec<u64> {
    let batch = ring.read(from, usize::MAX, usize::MAX).unwrap();
    for r in &batch.records {
        assert_eq!(&r.payload[..], &payload(r.seq, LEN)[..], "{what}: wrong bytes for seq {}", r.seq);
    }
    batch.records.iter().map(|r| r.seq).collect()
}

#[test]
fn power_loss_recovery_from_the_durable_position_of_a_later_checkpoint() {
    // Records 1..=10 synced, then more appended and an ack writes a
    // checkpoint that describes them all, though only 1..=10 are durable.
    // After the power loss recovery searches from the checkpoint's durable
    // position and jumps over the durable records without reading them;
    // the newer ones are checked frame by frame. Header bits of the last
    // two durable records and of the first newer one are hit one by one:
    // at most the record hit goes missing, no wrong byte is delivered, and
    // no seq is reused.
    for last in [11u64, 13] {
        let (t, ring) = synced_ten_then_up_to(last);
        ring.ack(4).unwrap();
        let (data, meta) = (std::fs::read(t.data_file()).unwrap(), std::fs::read(t.meta_file()).unwrap());
        drop(ring);
        each_header_bit_flipped(&t, (&data, &meta), &[9, 10, 11], |ring, report, record, what| {
            let what = format!("last {last}, {what}");
            let s = ring.stats();
            assert_identity(&s);
            assert_eq!(s.ack_seq, 4, "{what}: {s:?}");
            let seqs = read_exact(&ring, 5, &what);
            let missing: Vec<u64> = (5..=last).filter(|q| !seqs.contains(q)).collect();
            assert!(missing.is_empty() || missing == [record], "{what}: {seqs:?} {report:?}");
            let after = ring.stats();
            assert_identity(&after);
            if record <= 10 {
                // Durable: a missing one is damage.
                assert_eq!(after.corrupted, missing.len() as u64, "{what}: {after:?}");
            }
            assert!(ring.append(b"after").unwrap() > last, "{what}");
        });
    }
}

#[test]
fn mapped_writes_open_a_data_file_cut_short_or_emptied() {
    // The map covers what the file held at open; the part recovery extends
    // is written with pwrite. Appends after the open land either way.
    let n = 10;
    let (data, meta) = pristine(n, 0);
    let t = TempRing::new();
    for cut in [0, 4096 + 3 * FRAME as usize, data.len() / 2] {
        let dir = t.tmp.path().join(format!("cut{cut}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ring.data"), &data[..cut]).unwrap();
        std::fs::write(dir.join("ring.meta"), &meta).unwrap();
        let (ring, report) = Ring::open(&dir, config().mapped_writes(true))
            .unwrap_or_else(|e| panic!("cut at {cut}: refused to open: {e}"));
        assert_eq!(report.data_file_extended_from, Some(cut as u64), "cut at {cut}");
        let s = ring.stats();
        assert_identity(&s);
        for i in 1..=20 {
            ring.append(&payload(s.last_seq + i, LEN)).unwrap();
        }
        let batch = ring.read(1, usize::MAX, usize::MAX).unwrap();
        for r in &batch.records {
            assert_eq!(&r.payload[..], &payload(r.seq, LEN)[..], "cut at {cut}: wrong bytes for seq {}", r.seq);
        }
        assert!(batch.records.iter().any(|r| r.seq == s.last_seq + 20), "cut at {cut}");
        assert_identity(&ring.stats());
        ring.close().unwrap();
        assert_eq!(std::fs::metadata(dir.join("ring.data")).unwrap().len(), data.len() as u64);
    }
}

#[test]
fn seqs_skipped_after_a_power_loss_and_acknowledged_are_not_counted_as_records() {
    // A power loss makes the ring skip the seqs it may have handed out (up
    // to the reservation). Acknowledging past them settles them as lost,
    // among records still in the ring (all fit in it: none is evicted). Recovery jumps over the records the
    // checkpoint describes without reading them; it must not count those
    // seqs as records, with or without records appended after them.
    for (boot_after, more) in [(2u8, 0u64), (3, 0), (2, 5), (3, 5)] {
        let t = TempRing::new();
        let (ring, _) = Ring::open(&t.dir, config()).unwrap();
        for i in 1..=10 {
            ring.append(&payload(i, LEN)).unwrap();
        }
        ring.sync().unwrap();
        drop(ring);
        let (ring, _) = Ring::open(&t.dir, config_on_boot(2)).unwrap();
        let s = ring.stats();
        assert!(s.last_seq > 10 && s.seqs_skipped == s.last_seq - 10 && s.lost_unsynced == 0, "{s:?}");
        ring.ack(s.last_seq).unwrap();
        for i in 1..=more {
            ring.append(&payload(s.last_seq + i, LEN)).unwrap();
        }
        ring.sync().unwrap();
        let before = ring.stats();
        assert_eq!(before.pending, more, "{before:?}");
        drop(ring);
        let what = format!("{} after {more} more", if boot_after == 2 { "process crash" } else { "power loss" });
        let (ring, report) = Ring::open(&t.dir, config_on_boot(boot_after)).unwrap();
        let after = ring.stats();
        assert_identity(&after);
        assert_eq!(after.pending, more, "{what}: {after:?} {report:?}");
        assert_eq!(after.acked, before.acked, "{what}: {after:?}");
        let records = ring.read(1, usize::MAX, usize::MAX).unwrap().records;
        assert_eq!(
            records.len() as u64,
            10 + more,
            "{what}: {:?} {report:?}",
            records.iter().map(|r| r.seq).collect::<Vec<_>>()
        );
        for r in &records {
            assert_eq!(&r.payload[..], &payload(r.seq, LEN)[..], "{what}: wrong bytes for seq {}", r.seq);
        }
        assert_eq!(report.records_recovered, records.len() as u64, "{what}: {report:?}");
        assert!(ring.append(b"after").unwrap() > before.last_seq);
    }
}

#[test]
fn after_a_failed_fsync_the_next_open_reads_the_disk_and_reuses_no_seq() {
    // Records 1..=10 synced, 11..=30 written, then the fsync fails: the
    // simulated disk keeps each of those writes or not, and the page cache
    // shows them all. After a crash of the process the next open must read
    // what the disk holds (not the cache), count what is gone as lost, and
    // hand out no seq again, as after a power loss.
    use ringship::sim::{Faults, SimDisk};
    for seed in 0..20 {
        let disk = SimDisk::new(seed, Faults::NONE);
        let open = || {
            let config = RingConfig::default().capacity(1 << 16).sync(SyncPolicy::Never);
            Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config).unwrap()
        };
        let (ring, _) = open();
        for i in 1..=10 {
            ring.append(&payload(i, LEN)).unwrap();
        }
        ring.sync().unwrap();
        for i in 11..=30 {
            // One write each, so that the disk keeps some and drops others.
            ring.append(&payload(i, LEN)).unwrap();
        }
        disk.set_faults(Faults { fsync_failure: 1.0, ..Faults::NONE });
        assert!(ring.sync().is_err(), "seed {seed}");
        disk.set_faults(Faults::NONE);
        drop(ring);
        disk.process_crash();
        let (ring, report) = open();
        let s = ring.stats();
        assert_identity(&s);
        let records = ring.read(1, usize::MAX, usize::MAX).unwrap().records;
        for r in &records {
            assert_eq!(&r.payload[..], &payload(r.seq, LEN)[..], "seed {seed}: wrong bytes for seq {}", r.seq);
        }
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert!((1..=10).all(|q| seqs.contains(&q)), "seed {seed}: a synced record is missing: {seqs:?}");
        let missing = (11..=30).filter(|q| !seqs.contains(q)).count() as u64;
        assert!(s.lost_unsynced >= missing, "seed {seed}: {s:?} {report:?}");
        assert!(ring.append(b"after").unwrap() > 30, "seed {seed}: a seq was handed out again");
        // What the open reported durable must survive a power loss (I3):
        // it must not have taken the cache's word for bytes the disk lacks.
        let durable = ring.stats().durable_seq;
        drop(ring);
        disk.power_loss();
        let (ring, _) = open();
        let after: Vec<u64> = ring.read(1, usize::MAX, usize::MAX).unwrap().records.iter().map(|r| r.seq).collect();
        for q in seqs.iter().filter(|&&q| q <= durable) {
            assert!(after.contains(q), "seed {seed}: seq {q} reported durable, lost at a power loss: {after:?}");
        }
    }
}

#[test]
fn a_record_sync_reported_durable_is_never_counted_lost_unsynced_or_skipped() {
    // `sync` makes one fsync, of the data file: the checkpoint it writes
    // reaches the disk later, and a power loss can take it. Records 1..=10
    // synced, 11 and 12 written and dropped by the power loss with the
    // checkpoint, then damage at rest zeroes the newest synced frames.
    // Those records were reported durable: they count as corrupted, never
    // as lost unsynced, nor as skipped seqs (which are no records).
    use ringship::sim::{Damage, Faults, SimDisk};
    for zeroed in 1..=3u64 {
        let disk = SimDisk::new(zeroed, Faults { lose_unsynced: 1.0, ..Faults::NONE });
        let open = || {
            let config = RingConfig::default().capacity(1 << 16).sync(SyncPolicy::Never);
            Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config).unwrap()
        };
        let (ring, _) = open();
        for i in 1..=10 {
            ring.append(&payload(i, LEN)).unwrap();
        }
        assert_eq!(ring.sync().unwrap(), 10);
        for i in 11..=12 {
            ring.append(&payload(i, LEN)).unwrap();
        }
        drop(ring);
        disk.power_loss();
        disk.damage_at_rest("ring.data", Damage::Zeros, DATA_OFFSET + (10 - zeroed) * FRAME, zeroed * FRAME);
        let (ring, report) = open();
        let s = ring.stats();
        assert_identity(&s);
        let losses = ring.losses();
        for q in 11 - zeroed..=10 {
            let cause = losses.iter().find(|l| l.first_seq <= q && q <= l.last_seq).map(|l| l.cause);
            assert_eq!(cause, Some(LossCause::Corrupted), "seq {q}: {losses:?} {report:?}");
        }
        assert_eq!((s.corrupted, s.lost_unsynced), (zeroed, 0), "{s:?} {report:?}");
        let seqs: Vec<u64> = ring.read(1, usize::MAX, usize::MAX).unwrap().records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=10 - zeroed).collect::<Vec<_>>());
        assert!(ring.append(b"after").unwrap() > 12, "a seq was handed out again");
    }
}

#[test]
fn with_mapped_writes_a_data_file_cut_short_under_the_ring_fails_the_append_not_the_process() {
    // Another process ignoring the ring's lock cuts the data file short. A
    // store into the map past the file's end would raise SIGBUS and kill
    // this test; the append must fail with an error naming the file, and
    // the ring refuse further appends until reopened.
    let t = TempRing::new();
    let cap = 256 << 10;
    let ring = common::open(&t.dir, common::small(cap).mapped_writes(true));
    for i in 1..=10 {
        ring.append(&payload(i, LEN)).unwrap();
    }
    std::fs::OpenOptions::new().write(true).open(t.data_file()).unwrap().set_len(DATA_OFFSET + 8192).unwrap();
    // Past the time a populated range is trusted (10 ms).
    std::thread::sleep(std::time::Duration::from_millis(50));
    let failed = (11..cap / FRAME).find_map(|i| ring.append(&payload(i, LEN)).err());
    match failed {
        Some(ringship::Error::Io { op: "write", path, .. }) => assert_eq!(path, t.data_file()),
        other => panic!("expected a write error, got {other:?}"),
    }
    assert!(matches!(ring.append(b"more"), Err(ringship::Error::Poisoned { .. })));
}

/// Damage a read meets where it starts (a position an earlier read left)
/// is bounded in time by the newest evicted record and the first intact
/// record after it, not by 0 (which a receiver's gap notice would show as 1970).
#[test]
fn damage_where_a_read_starts_gets_timestamp_bounds() {
    use std::os::unix::fs::FileExt;
    let t = TempRing::new();
    let ring = common::open(&t.dir, common::small(4096));
    // 1,032-byte frames: 4 and 5 wrap and evict 1 and 2.
    for i in 1..=5 {
        ring.append(&payload(i, 1000)).unwrap();
    }
    assert_eq!(ring.read(3, 1, 1 << 20).unwrap().records[0].seq, 3);
    // Seq 4's frame, first in the data area, goes bad after that read.
    let file = std::fs::OpenOptions::new().write(true).open(t.data_file()).unwrap();
    file.write_at(&[0xff], DATA_OFFSET + 40).unwrap();
    let got = ring.read(4, 10, 1 << 20).unwrap();
    assert_eq!(got.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![5]);
    let losses = ring.losses();
    let evicted = losses.iter().find(|l| l.cause == LossCause::Overwritten).expect("1 and 2 overwritten");
    let s = ring.stats();
    assert_eq!((s.corrupted, s.pending), (1, 2), "{s:?}");
    ring.ack(5).unwrap();
    let losses = ring.losses();
    let damaged = losses.iter().find(|l| l.cause == LossCause::Corrupted).expect("4 corrupted");
    assert_eq!((damaged.first_seq, damaged.last_seq), (4, 4));
    assert!(evicted.last_ts > 0);
    assert_eq!((damaged.first_ts, damaged.last_ts), (evicted.last_ts, got.records[0].timestamp), "{losses:?}");
    assert_identity(&ring.stats());
}

/// Damage found around a hole already known: seqs 8..=10 are found bad
/// first, then 5..=12 go bad. Every one of the eight is counted, and the
/// bytes of the ranges add up to the eight frames, whether a read or the
/// writer's eviction finds the larger damage.
#[test]
fn damage_that_grows_around_a_known_hole_is_counted_whole() {
    use std::os::unix::fs::FileExt;
    for found_by_read in [true, false] {
        let t = TempRing::new();
        let ring = common::open(&t.dir, common::small(8192));
        for i in 1..=20 {
            ring.append(&payload(i, LEN)).unwrap();
        }
        let file = std::fs::OpenOptions::new().write(true).open(t.data_file()).unwrap();
        // Flips the low byte of the frame's own position: the header is bad.
        let spoil = |seq: u64| file.write_all_at(&[0xff], DATA_OFFSET + (seq - 1) * FRAME + 24).unwrap();
        (8..=10).for_each(spoil);
        let got = ring.read(1, usize::MAX, usize::MAX).unwrap();
        assert_eq!(got.records.len(), 17);
        assert_eq!(ring.stats().corrupted, 3);
        (5..=7).chain(11..=12).for_each(spoil);
        if found_by_read {
            let got = ring.read(1, usize::MAX, usize::MAX).unwrap();
            let seqs: Vec<u64> = got.records.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (1..=4).chain(13..=20).collect::<Vec<_>>());
        } else {
            // 60 more frames: the writer evicts everything written before.
            for i in 21..=80 {
                ring.append(&payload(i, LEN)).unwrap();
            }
        }
        let s = ring.stats();
        assert_identity(&s);
        assert_eq!(s.corrupted, 8, "found by a read: {found_by_read}, {s:?}");
        let damaged: Vec<_> = ring.losses().into_iter().filter(|l| l.cause == LossCause::Corrupted).collect();
        let seqs: Vec<u64> = damaged.iter().flat_map(|l| l.first_seq..=l.last_seq).collect();
        assert_eq!(seqs, (5..=12).collect::<Vec<_>>(), "{damaged:?}");
        assert_eq!(damaged.iter().map(|l| l.bytes).sum::<u64>(), 8 * FRAME, "{damaged:?}");
    }
}

/// Acks that end where no read ended (a consumer acking record by record)
/// still leave a checkpoint naming the next record's frame, so a clean
/// reopen reads no frames: damage further on is met by the first read,
/// not by the open.
#[test]
fn acks_between_read_boundaries_keep_the_clean_reopen_fast() {
    use std::os::unix::fs::FileExt;
    let t = TempRing::new();
    let ring = common::open(&t.dir, common::small(8192));
    for i in 1..=40 {
        ring.append(&payload(i, LEN)).unwrap();
    }
    let got = ring.read(1, usize::MAX, usize::MAX).unwrap();
    for r in &got.records[..25] {
        ring.ack(r.seq).unwrap();
    }
    ring.close().unwrap();
    drop(ring);
    // Seq 30's header goes bad while the ring is closed.
    let file = std::fs::OpenOptions::new().write(true).open(t.data_file()).unwrap();
    file.write_all_at(&[0xff], DATA_OFFSET + 29 * FRAME + 24).unwrap();
    let (ring, report) = Ring::open(&t.dir, common::small(8192)).unwrap();
    assert!(report.clean_shutdown);
    assert_eq!((report.pending, report.damaged_records), (15, 0), "the open read the ring: {report:?}");
    let got = ring.read(26, usize::MAX, usize::MAX).unwrap();
    let seqs: Vec<u64> = got.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (26..=40).filter(|&s| s != 30).collect::<Vec<_>>());
    let s = ring.stats();
    assert_eq!((s.acked, s.corrupted, s.pending), (25, 1, 14));
    assert_identity(&s);
}

/// Eviction through a damaged span (2.5 MiB) longer than one search step
/// (1 MiB) that no reader has met: the search for the next frame holds the
/// ring's state lock, so it goes a step per round rather than scanning the
/// whole span under the lock, moving the tail past what it searched, and
/// the span's records are counted corrupted, exactly once, once a frame
/// past it is found. With a crash after 2,000 evictions, the records lost
/// are the same; recovery counts those of the span it finds between the
/// checkpoint's tail and the oldest surviving record as overwritten
/// (docs/DESIGN.md, "Loss accounting").
#[test]
fn eviction_through_damage_longer_than_a_search_step() {
    /// Records the ring holds before the damage, 30,000 frames in 4 MiB.
    const FILLED: u64 = 30_000;
    /// The damage: from the 1,001st frame, 2.5 MiB.
    const FROM: u64 = 1000 * FRAME;
    const SPAN: u64 = 5 << 19;
    let damaged = (FROM / FRAME + 1..=FILLED).filter(|k| (k - 1) * FRAME < FROM + SPAN).count() as u64;
    let mut lost_without_crash = None;
    for crash_inside in [false, true] {
        let t = TempRing::new();
        let config = || common::small(4 << 20);
        let ring = common::open(&t.dir, config());
        for i in 1..=FILLED {
            ring.append(&payload(i, LEN)).unwrap();
        }
        ring.close().unwrap();
        drop(ring);
        let mut data = std::fs::read(t.data_file()).unwrap();
        let at = (DATA_OFFSET + FROM) as usize;
        data[at..at + SPAN as usize].fill(0xAB);
        std::fs::write(t.data_file(), &data).unwrap();
        let mut ring = common::open(&t.dir, config());
        let mut next = FILLED + 1;
        if crash_inside {
            // 2,000 evictions: the tail has reached the span.
            for _ in 0..2000 {
                assert_eq!(ring.append(&payload(next, LEN)).unwrap(), next);
                next += 1;
            }
            drop(ring);
            ring = common::open(&t.dir, config());
            // The crash may have handed out seqs up to the reservation.
            next = ring.stats().last_seq + 1;
        }
        // Enough to evict past the span.
        for _ in 0..25_000 - if crash_inside { 2000 } else { 0 } {
            assert_eq!(ring.append(&payload(next, LEN)).unwrap(), next);
            next += 1;
        }
        let s = ring.stats();
        assert_identity(&s);
        assert_eq!(s.lost_unsynced, 0, "{s:?}");
        let lost = s.corrupted + s.overwritten;
        if crash_inside {
            assert!(s.corrupted <= damaged, "{s:?}");
            assert_eq!(Some(lost), lost_without_crash, "{s:?}");
        } else {
            assert_eq!(s.corrupted, damaged, "{s:?}");
            let corrupted: Vec<_> = ring.losses().into_iter().filter(|l| l.cause == LossCause::Corrupted).collect();
            assert_eq!(
                corrupted.iter().map(|l| (l.first_seq, l.last_seq)).collect::<Vec<_>>(),
                vec![(1001, 1000 + damaged)]
            );
            lost_without_crash = Some(lost);
        }
    }
}

/// After a power loss, with no checkpoint to bound the search (ring.meta
/// gone), the head is searched for over the whole ring. A newer frame can
/// survive inside the span of an older lap's pad (whose CRC covers its
/// header only) when the write that would have overwritten the pad's
/// header was lost. A search hopping from frame to frame would jump over
/// the pad's span, and the ring would hand the newer frames' seqs out
/// again (I1): the search looks at every offset.
#[test]
fn the_whole_ring_head_search_finds_newer_frames_inside_an_old_pad() {
    let cap = 4096;
    let cfg = || RingConfig::default().capacity(cap).max_record_len(1024).sync(SyncPolicy::Never);
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, cfg()).unwrap().0;
    // Lap 1: 23 records of 136-byte frames (offsets 0..3128); record 24
    // (1,032 bytes) does not fit in the 968 left: a pad fills them, and
    // record 24 starts lap 2 at offset 0.
    for seq in 1..=23 {
        assert_eq!(ring.append(&payload(seq, LEN)).unwrap(), seq);
    }
    assert_eq!(ring.append(&payload(24, 1000)).unwrap(), 24);
    let lap1 = std::fs::read(t.data_file()).unwrap();
    // Lap 2 goes on from offset 1,032: seq 40 at offset 3,072 covers the
    // pad's header at 3,128; seqs 41 and 42 lie inside the pad's span.
    for seq in 25..=42 {
        assert_eq!(ring.append(&payload(seq, LEN)).unwrap(), seq);
    }
    ring.close().unwrap();
    drop(ring);
    let lap2 = std::fs::read(t.data_file()).unwrap();
    // A power loss lost seq 40's write only.
    let mut image = lap2;
    let lost = (DATA_OFFSET + 3072) as usize..(DATA_OFFSET + 3072 + FRAME) as usize;
    image[lost.clone()].copy_from_slice(&lap1[lost]);
    std::fs::write(t.data_file(), &image).unwrap();
    std::fs::remove_file(t.meta_file()).unwrap();

    let (ring, report) = Ring::open(&t.dir, cfg()).unwrap();
    let next = ring.append(b"after").unwrap();
    assert!(next > 42, "seq {next} handed out again (seqs 41 and 42 are on disk): {report:?}");
    let batch = ring.read(1, 1000, usize::MAX).unwrap();
    let survivors: Vec<&ringship::Record> = batch.records.iter().filter(|r| r.seq != next).collect();
    let seqs: Vec<u64> = survivors.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (24..=39).chain([41, 42]).collect::<Vec<_>>());
    for r in survivors {
        let len = if r.seq == 24 { 1000 } else { LEN };
        assert_eq!(&r.payload[..], &payload(r.seq, len)[..], "seq {}", r.seq);
    }
    assert_identity(&ring.stats());
}
