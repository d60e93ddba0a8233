//! The ring's everyday behaviour: append, read, ack, reopen, full policies.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use common::{Hooks, TempRing, assert_identity, eventually, hook_file, open, payload, small};
use ringship::{Error, FullPolicy, LossCause, Ring, RingConfig, SyncPolicy};

#[test]
fn append_read_ack_round_trip() {
    let t = TempRing::new();
    let ring = open(&t.dir, small(64 << 10));
    for i in 1..=10 {
        assert_eq!(ring.append(&payload(i, 100)).unwrap(), i);
    }
    let batch = ring.read(1, 100, 1 << 20).unwrap();
    assert_eq!(batch.records.len(), 10);
    for (i, r) in batch.records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(&r.payload[..], &payload(r.seq, 100)[..]);
    }
    assert_eq!(batch.next_seq, 11);
    ring.ack(4).unwrap();
    let s = ring.stats();
    assert_eq!((s.appended, s.acked, s.pending), (10, 4, 6));
    assert_identity(&s);
    let rest = ring.read(5, 3, 1 << 20).unwrap();
    assert_eq!(rest.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![5, 6, 7]);
}

#[test]
fn batch_append_assigns_consecutive_seqs() {
    let t = TempRing::new();
    let ring = open(&t.dir, small(64 << 10));
    ring.append(b"one").unwrap();
    let (first, last) = ring.append_batch(&[b"a".as_slice(), b"bb", b"ccc"]).unwrap();
    assert_eq!((first, last), (2, 4));
    let b = ring.read(1, 10, 1 << 20).unwrap();
    assert_eq!(b.records[3].payload, &b"ccc"[..]);
}

#[test]
fn seqs_continue_across_reopen_and_counters_survive() {
    let t = TempRing::new();
    {
        let ring = open(&t.dir, small(8 << 10));
        for i in 1..=200 {
            ring.append(&payload(i, 100)).unwrap();
        }
        ring.ack(150).unwrap();
        ring.close().unwrap();
    }
    let (ring, report) = Ring::open(&t.dir, small(8 << 10)).unwrap();
    assert!(report.clean_shutdown);
    let s = ring.stats();
    assert_eq!(s.last_seq, 200);
    assert!(s.overwritten > 0, "an 8 KiB ring cannot hold 200 records of 100 bytes");
    assert_identity(&s);
    assert_eq!(ring.append(b"next").unwrap(), 201);
    assert_eq!(ring.losses().iter().map(|l| l.count).sum::<u64>(), s.overwritten);
}

#[test]
fn overwrite_counts_exactly_the_unacked_evictions() {
    let t = TempRing::new();
    let ring = open(&t.dir, small(4096));
    // frames of 100-byte payloads are 136 bytes: 30 fit in 4096.
    for i in 1..=30 {
        ring.append(&payload(i, 100)).unwrap();
    }
    assert_eq!(ring.stats().overwritten, 0);
    ring.ack(5).unwrap();
    for i in 31..=40 {
        ring.append(&payload(i, 100)).unwrap();
    }
    let s = ring.stats();
    assert_identity(&s);
    // 10 more records evicted 10 (plus the pad's worth): 5 acked, the rest lost.
    assert!(s.overwritten >= 5, "{s:?}");
    let losses = ring.losses();
    assert_eq!(losses.len(), 1);
    assert_eq!(losses[0].first_seq, 6);
    assert_eq!(losses[0].last_seq, 5 + s.overwritten);
    assert_eq!(losses[0].cause, LossCause::Overwritten);
    assert_eq!(losses[0].bytes, s.overwritten_bytes);
    let b = ring.read(1, 100, 1 << 20).unwrap();
    assert_eq!(b.records[0].seq, 6 + s.overwritten);
    for r in &b.records {
        assert_eq!(&r.payload[..], &payload(r.seq, 100)[..]);
    }
}

#[test]
fn reject_new_refuses_and_counts() {
    let t = TempRing::new();
    let ring = open(&t.dir, small(4096).full(FullPolicy::RejectNew));
    let mut accepted = 0;
    let mut rejected = 0;
    for i in 1..=40 {
        match ring.append(&payload(i, 100)) {
            Ok(_) => accepted += 1,
            Err(Error::Full { .. }) => rejected += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(rejected > 0 && accepted > 0);
    let s = ring.stats();
    assert_eq!((s.rejected, s.overwritten), (rejected, 0));
    assert_identity(&s);
    // Acked records make room again.
    ring.ack(s.last_seq).unwrap();
    ring.append(b"fits now").unwrap();
}

#[test]
fn block_waits_for_acks_then_times_out() {
    let t = TempRing::new();
    let ring = Arc::new(open(&t.dir, small(4096).full(FullPolicy::Block(Duration::from_millis(300)))));
    for i in 1..=29 {
        ring.append(&payload(i, 100)).unwrap();
    }
    // An acker frees room shortly: the blocked append succeeds.
    let r2 = Arc::clone(&ring);
    let acker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        r2.ack(10).unwrap();
    });
    for i in 30..=35 {
        ring.append(&payload(i, 100)).unwrap();
    }
    acker.join().unwrap();
    // Nobody acks now: the append times out and is counted.
    let err = (0..20).find_map(|i| ring.append(&payload(100 + i, 100)).err()).unwrap();
    assert!(matches!(err, Error::BlockTimeout(_)), "{err}");
    let s = ring.stats();
    assert_eq!((s.rejected, s.overwritten), (1, 0));
    assert_identity(&s);
}

/// Durations too long to add to an instant mean "no end": blocking for
/// `Duration::MAX` waits for acknowledgements as long as it takes, and an
/// `Interval` of `Duration::MAX` never flushes, rather than overflowing an
/// `Instant` (a panic in every append and in the background thread).
#[test]
fn durations_too_long_to_end_wait_without_end() {
    let t = TempRing::new();
    let config = small(4096).full(FullPolicy::Block(Duration::MAX)).sync(SyncPolicy::Interval(Duration::MAX));
    let ring = Arc::new(open(&t.dir, config));
    for i in 1..=3 {
        assert_eq!(ring.append(&payload(i, 1000)).unwrap(), i);
    }
    let r = Arc::clone(&ring);
    let blocked = std::thread::spawn(move || r.append(&payload(4, 1000)));
    std::thread::sleep(Duration::from_millis(100));
    assert!(!blocked.is_finished(), "a full ring let an append through");
    ring.ack(1).unwrap();
    assert_eq!(blocked.join().unwrap().unwrap(), 4);
    assert_eq!(ring.stats().durable_seq, 0, "an Interval of Duration::MAX flushed");
    assert_eq!(ring.sync().unwrap(), 4);
}

/// What `ring.meta` saw, and whether its writes fail.
#[derive(Default)]
struct MetaProbe {
    /// Writes fail while set (and are counted in `failed`).
    fail: AtomicBool,
    failed: AtomicU64,
    /// Checkpoint slot writes ("slot 0", "slot 1") and fsyncs, in order.
    log: parking_lot::Mutex<Vec<&'static str>>,
}

impl MetaProbe {
    /// `config` with `ring.meta` watched by this probe.
    fn install(self: &Arc<Self>, config: RingConfig) -> RingConfig {
        let probe = Arc::clone(self);
        hook_file(config, "ring.meta", move || Arc::clone(&probe))
    }
}

impl Hooks for Arc<MetaProbe> {
    fn before_write(&self, _buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.fail.load(SeqCst) {
            self.failed.fetch_add(1, SeqCst);
            return Err(std::io::Error::other("injected write error"));
        }
        match offset {
            0 => self.log.lock().push("slot 0"),
            4096 => self.log.lock().push("slot 1"),
            _ => {}
        }
        Ok(())
    }
    fn before_sync(&self) -> std::io::Result<()> {
        self.log.lock().push("fsync");
        Ok(())
    }
}

/// A checkpoint the `Interval` flusher fails to write poisons nothing, and
/// the flusher goes on: were it to end at the first error, no record would
/// become durable from then on without a `sync` call.
#[test]
fn the_interval_flusher_outlives_a_failed_checkpoint_write() {
    let t = TempRing::new();
    let probe = Arc::new(MetaProbe::default());
    let ring = open(&t.dir, probe.install(small(64 << 10).sync(SyncPolicy::Interval(Duration::from_millis(5)))));
    assert_eq!(ring.append(b"one").unwrap(), 1);
    eventually("the first flush", || ring.stats().durable_seq == 1);
    probe.fail.store(true, SeqCst);
    assert_eq!(ring.append(b"two").unwrap(), 2);
    eventually("a failed checkpoint write", || probe.failed.load(SeqCst) > 0);
    probe.fail.store(false, SeqCst);
    assert_eq!(ring.append(b"three").unwrap(), 3);
    eventually("a flush after the failed one", || ring.stats().durable_seq == 3);
    ring.close().unwrap();
}

/// An append whose records were written succeeds even if the checkpoint
/// that fell due after it cannot be written: failing it would have the
/// caller append the records again under new seqs while the first copies
/// are read and shipped. The checkpoint's losses are written later.
#[test]
fn an_append_that_wrote_succeeds_when_its_checkpoint_fails() {
    let t = TempRing::new();
    let probe = Arc::new(MetaProbe::default());
    let config = probe.install(small(4096).checkpoint_interval(Duration::ZERO));
    let ring = open(&t.dir, config.clone());
    for i in 1..=3 {
        assert_eq!(ring.append(&payload(i, 1000)).unwrap(), i);
    }
    // The fourth record evicts the first: a loss, so a checkpoint is due.
    probe.fail.store(true, SeqCst);
    assert_eq!(ring.append(&payload(4, 1000)).unwrap(), 4);
    assert!(probe.failed.load(SeqCst) > 0, "no checkpoint was attempted");
    let got = ring.read(4, 10, 1 << 20).unwrap();
    assert_eq!(got.records.len(), 1);
    assert_eq!(&got.records[0].payload[..], &payload(4, 1000)[..]);
    probe.fail.store(false, SeqCst);
    ring.close().unwrap();
    drop(ring);
    let ring = open(&t.dir, config);
    let s = ring.stats();
    assert_eq!((s.last_seq, s.overwritten), (4, 1), "{s:?}");
    assert_eq!(ring.losses()[0].first_seq, 1);
}

/// `max_record_len` bounds new appends only: records written when it was
/// larger (here by a larger configured capacity, whose quarter it
/// defaults to; the ring keeps the capacity on disk) stay records: reads
/// and recovery never take them for damage or count them corrupted.
#[test]
fn records_longer_than_a_lowered_max_record_len_are_still_read() {
    for crash in [false, true] {
        let t = TempRing::new();
        let big = payload(1, 100 << 10);
        {
            let ring = open(&t.dir, RingConfig::default().capacity(1 << 20).sync(SyncPolicy::Never));
            assert_eq!(ring.append(&big).unwrap(), 1);
            assert_eq!(ring.append(b"small").unwrap(), 2);
            if !crash {
                ring.close().unwrap();
            }
        }
        let lowered = RingConfig::default().capacity(256 << 10).sync(SyncPolicy::Never);
        let (ring, report) = Ring::open(&t.dir, lowered).unwrap();
        assert_eq!(ring.max_record_len(), 64 << 10);
        assert_eq!(report.clean_shutdown, !crash);
        let got = ring.read(1, 10, 1 << 20).unwrap();
        assert_eq!(got.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2], "crash: {crash}");
        assert_eq!(&got.records[0].payload[..], &big[..]);
        let s = ring.stats();
        assert_eq!((s.corrupted, s.pending), (0, 2), "crash: {crash}: {s:?}");
        assert!(matches!(ring.append(&big), Err(Error::RecordTooLarge { .. })));
    }
}

/// After a crash of the process, the newest checkpoint slot may hold an
/// ack's checkpoint that no fsync covered, and the other slot the last
/// durable one. The open must fsync before it overwrites that slot, or a
/// power loss during its write could leave neither.
#[test]
fn an_open_after_a_crash_makes_the_newest_checkpoint_durable_before_writing() {
    // After a crash, and after a clean close too: a kill between close's
    // clean checkpoint and its fsync leaves a clean checkpoint that was
    // never fsynced, and the open cannot tell.
    for clean in [false, true] {
        let t = TempRing::new();
        {
            let ring = open(&t.dir, small(64 << 10));
            ring.append(b"one").unwrap();
            ring.append(b"two").unwrap();
            ring.sync().unwrap();
            // A checkpoint in the page cache only, in the other slot.
            ring.ack(1).unwrap();
            if clean {
                ring.close().unwrap();
            }
            // Otherwise dropped without close: as after kill -9.
        }
        let probe = Arc::new(MetaProbe::default());
        let (ring, report) = Ring::open(&t.dir, probe.install(small(64 << 10))).unwrap();
        assert_eq!(report.clean_shutdown, clean);
        assert_eq!(ring.stats().acked, 1);
        let log = probe.log.lock().clone();
        let first_slot_write = log.iter().position(|e| e.starts_with("slot")).expect("open wrote a checkpoint");
        assert!(
            log[..first_slot_write].contains(&"fsync"),
            "clean {clean}: a slot was written before any fsync: {log:?}"
        );
    }
}

/// Ring bytes a record of `len` payload bytes takes (docs/FORMAT.md).
fn frame_len(len: usize) -> u64 {
    (32 + len as u64).next_multiple_of(8)
}

#[test]
fn a_batch_that_wraps_never_overwrites_its_own_records() {
    // A batch that does not fit before the end of the data area is padded
    // there and goes on at the start: the unused bytes before the wrap
    // (fewer than its largest frame) count against the ring too, or its
    // last records would land on its first.
    let t = TempRing::new();
    let cap = 4096;
    let ring = open(&t.dir, small(cap).max_record_len(1200));
    let mut rejected = 0;
    let mut expected = std::collections::BTreeMap::new();
    // Heads all around the ring, batches around the limit.
    for round in 0..40u64 {
        let filler = 100 + (round as usize * 37) % 900;
        let seq = ring.append(&payload(round, filler)).unwrap();
        expected.insert(seq, payload(round, filler));
        for lens in [[800, 1024, 1024, 1024], [200, 1200, 1200, 1200], [1200, 1200, 1200, 100], [500, 500, 1200, 1000]]
        {
            let batch: Vec<Vec<u8>> =
                lens.iter().enumerate().map(|(k, &len)| payload(round * 10 + k as u64, len)).collect();
            let frames: u64 = lens.iter().map(|&len| frame_len(len)).sum();
            let largest = lens.iter().map(|&len| frame_len(len)).max().unwrap();
            match ring.append_batch(&batch) {
                Ok((first, last)) => {
                    assert!(frames + largest <= cap, "accepted a batch of {frames} bytes with a {largest}-byte frame");
                    let got = ring.read(first, 10, 1 << 20).unwrap();
                    let seqs: Vec<u64> = got.records.iter().map(|r| r.seq).collect();
                    assert_eq!(seqs, (first..=last).collect::<Vec<_>>(), "round {round}, batch {lens:?}");
                    for (r, p) in got.records.iter().zip(&batch) {
                        assert_eq!(&r.payload[..], &p[..], "round {round}, seq {}", r.seq);
                        expected.insert(r.seq, p.clone());
                    }
                }
                Err(Error::BatchTooLarge { needed, capacity }) => {
                    assert_eq!((needed, capacity), (frames + largest, cap));
                    assert!(frames + largest > cap, "refused a batch of {frames} bytes with a {largest}-byte frame");
                    rejected += 4;
                }
                Err(e) => panic!("round {round}, batch {lens:?}: {e}"),
            }
        }
    }
    let s = ring.stats();
    assert_eq!((s.rejected, s.corrupted), (rejected, 0));
    assert_identity(&s);
    // Whatever is still in the ring reads back as it was written.
    let all = ring.read(1, 10_000, 1 << 20).unwrap();
    assert!(!all.records.is_empty());
    for r in &all.records {
        assert_eq!(&r.payload[..], &expected[&r.seq][..], "seq {}", r.seq);
    }
}

#[test]
fn too_large_record_is_refused_and_counted() {
    let t = TempRing::new();
    let ring = open(&t.dir, small(64 << 10));
    let err = ring.append(&[0; 1025]).unwrap_err();
    assert_eq!(err.to_string(), "record of 1025 bytes exceeds the maximum record size of 1024 bytes");
    let s = ring.stats();
    assert_eq!((s.appended, s.rejected, s.last_seq), (1, 1, 0));
    assert_eq!(ring.append(b"ok").unwrap(), 1);
}

/// An existing ring keeps its capacity on disk whatever is configured: a
/// record two of whose frames that capacity cannot hold is too large, with
/// the limit the ring can keep, never `Full` (which says acks would help).
#[test]
fn a_ring_reopened_with_a_larger_capacity_limits_records_by_its_own() {
    let t = TempRing::new();
    open(&t.dir, small(64 << 10)).close().unwrap();
    for (round, (max_record_len, limit)) in
        [(Some(100 << 10), (32 << 10) - 32), (None, (32 << 10) - 32)].into_iter().enumerate()
    {
        let mut config = RingConfig::default().capacity(1 << 20).sync(SyncPolicy::Never);
        if let Some(len) = max_record_len {
            config = config.max_record_len(len);
        }
        let (ring, report) = Ring::open(&t.dir, config).unwrap();
        assert!(report.capacity_mismatch);
        let err = ring.append(&vec![7; 40 << 10]).unwrap_err();
        assert!(
            matches!(err, Error::RecordTooLarge { len, max } if len == 40 << 10 && max == limit),
            "configured {max_record_len:?}: {err}"
        );
        assert!(matches!(ring.append(&vec![7; limit + 1]), Err(Error::RecordTooLarge { .. })));
        ring.append(&vec![7; limit]).unwrap();
        let s = ring.stats();
        assert_eq!((s.rejected, s.capacity), (2 * round as u64 + 2, 64 << 10));
        assert_identity(&s);
        ring.close().unwrap();
    }
}

#[test]
fn capacity_too_small_for_one_record_is_a_config_error() {
    let t = TempRing::new();
    let err = Ring::open(&t.dir, small(512)).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("too small for one record"), "{err}");
    assert!(!t.dir.join("ring.data").exists());
}

/// Settings whose arithmetic would overflow are refused with a message
/// naming the setting: a seq reservation of `u64::MAX` would overflow in
/// the first append (a panic, then every append and `close` waiting
/// forever), and a capacity near `u64::MAX` the file's size.
#[test]
fn settings_too_large_or_small_to_compute_with_are_config_errors() {
    for (config, setting) in [
        (small(1 << 20).seq_reservation(u64::MAX), "seq_reservation"),
        (small(1 << 20).seq_reservation((1 << 32) + 1), "seq_reservation"),
        (small(1 << 20).seq_reservation(0), "seq_reservation"),
        (RingConfig::default().capacity(u64::MAX - 7), "capacity"),
        (RingConfig::default().capacity((1 << 48) + 8), "capacity"),
        (RingConfig::default().capacity(4), "capacity"),
    ] {
        let t = TempRing::new();
        let err = Ring::open(&t.dir, config).unwrap_err();
        assert!(matches!(&err, Error::Config(m) if m.starts_with(setting)), "{setting}: {err}");
        assert!(!t.dir.join("ring.data").exists());
    }
    let t = TempRing::new();
    let ring = open(&t.dir, small(1 << 20).seq_reservation(1 << 32));
    assert_eq!(ring.append(b"one").unwrap(), 1);
}

#[test]
fn second_open_of_a_directory_fails_at_once_naming_it() {
    let t = TempRing::new();
    let ring = open(&t.dir, small(64 << 10));
    let err = Ring::open(&t.dir, small(64 << 10)).unwrap_err();
    assert!(matches!(err, Error::Locked { .. }), "{err}");
    assert!(err.to_string().contains(&t.dir.display().to_string()));
    ring.close().unwrap();
    open(&t.dir, small(64 << 10));
}

#[test]
fn a_directory_that_is_not_a_ring_is_refused() {
    let t = TempRing::new();
    std::fs::create_dir_all(&t.dir).unwrap();
    std::fs::write(t.dir.join("notes.txt"), "hello").unwrap();
    let err = Ring::open(&t.dir, small(64 << 10)).unwrap_err();
    assert!(matches!(err, Error::NotARing { .. }), "{err}");

    let t = TempRing::new();
    std::fs::create_dir_all(&t.dir).unwrap();
    std::fs::write(t.dir.join("ring.data"), vec![7u8; 8192]).unwrap();
    let err = Ring::open(&t.dir, small(64 << 10)).unwrap_err();
    assert!(matches!(err, Error::NotARing { .. }), "{err}");
}

/// A creation interrupted (a crash, a full disk) before its renames leaves
/// its temporary files: the next open starts the creation again, at once.
#[test]
fn an_interrupted_creation_is_started_again() {
    for leftovers in [&["ring.data.tmp", "ring.meta.tmp"][..], &["ring.data.tmp"], &["ring.meta.tmp"]] {
        let t = TempRing::new();
        std::fs::create_dir_all(&t.dir).unwrap();
        for name in leftovers {
            std::fs::write(t.dir.join(name), vec![7u8; 3000]).unwrap();
        }
        let (ring, report) = Ring::open(&t.dir, small(64 << 10)).expect("the creation starts again");
        assert!(report.created);
        assert_eq!(ring.append(b"first").unwrap(), 1);
        let names: Vec<String> =
            std::fs::read_dir(&t.dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(!names.iter().any(|n| n == "ring.data.tmp" || n == "ring.meta.tmp"), "{names:?}");
    }
}

#[test]
fn an_unknown_format_version_is_refused() {
    let t = TempRing::new();
    open(&t.dir, small(64 << 10)).close().unwrap();
    // Rewrite the data header as version 99 with a valid checksum.
    let mut data = std::fs::read(t.data_file()).unwrap();
    data[8..12].copy_from_slice(&99u32.to_le_bytes());
    let crc = crc32c::crc32c(&data[..32]);
    data[32..36].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(t.data_file(), data).unwrap();
    let err = Ring::open(&t.dir, small(64 << 10)).unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { found: 99, supported: 7, .. }), "{err}");
}

/// A ring of format version 3 (whose `ring.meta` is 9,216 bytes, with
/// both seq reservations in one block) is refused, and neither file is
/// touched: the open reads the versions before it extends `ring.meta`.
#[test]
fn a_version_3_ring_is_refused_untouched() {
    let t = TempRing::new();
    let ring = open(&t.dir, small(64 << 10));
    ring.append(b"one").unwrap();
    ring.close().unwrap();
    let set_version = |b: &mut [u8], crc_at: usize| {
        b[8..12].copy_from_slice(&3u32.to_le_bytes());
        let crc = crc32c::crc32c(&b[..crc_at]);
        b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
    };
    let mut data = std::fs::read(t.data_file()).unwrap();
    set_version(&mut data, 32);
    let mut meta = std::fs::read(t.meta_file()).unwrap();
    meta.truncate(9216);
    for slot in [0, 4096] {
        let len = u32::from_le_bytes(meta[slot + 12..slot + 16].try_into().unwrap()) as usize;
        set_version(&mut meta[slot..slot + 4096], len);
    }
    std::fs::write(t.data_file(), &data).unwrap();
    std::fs::write(t.meta_file(), &meta).unwrap();
    let err = Ring::open(&t.dir, small(64 << 10)).unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { found: 3, supported: 7, .. }), "{err}");
    let after = std::fs::read(t.meta_file()).unwrap();
    assert!(after == meta, "ring.meta touched: {} bytes, was {}", after.len(), meta.len());
    assert!(std::fs::read(t.data_file()).unwrap() == data, "ring.data touched");
}

#[test]
fn files_are_preallocated_private_and_never_grow() {
    use std::os::unix::fs::PermissionsExt;
    let t = TempRing::new();
    let ring = open(&t.dir, small(16 << 10));
    let len = std::fs::metadata(t.data_file()).unwrap().len();
    for i in 0..2000 {
        ring.append(&payload(i, 300)).unwrap();
    }
    ring.sync().unwrap();
    assert_eq!(std::fs::metadata(t.data_file()).unwrap().len(), len);
    assert_eq!(len, 4096 + (16 << 10));
    for f in [t.data_file(), t.meta_file()] {
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o600, "{f:?}");
    }
    assert_identity(&ring.stats());
}

#[test]
fn sync_policies_report_durable_seq() {
    for policy in [SyncPolicy::Always, SyncPolicy::Interval(Duration::from_millis(5)), SyncPolicy::Never] {
        let t = TempRing::new();
        let ring = open(&t.dir, small(64 << 10).sync(policy));
        let seq = ring.append(b"x").unwrap();
        if policy == SyncPolicy::Always {
            assert_eq!(ring.stats().durable_seq, seq);
        }
        assert_eq!(ring.sync().unwrap(), seq);
        assert_eq!(ring.stats().durable_seq, seq);
    }
}

#[test]
fn interval_flusher_makes_records_durable_without_sync_calls() {
    let t = TempRing::new();
    let ring = open(&t.dir, small(64 << 10).sync(SyncPolicy::Interval(Duration::from_millis(10))));
    let seq = ring.append(b"x").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ring.stats().durable_seq < seq {
        assert!(std::time::Instant::now() < deadline, "flusher never synced");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn concurrent_appenders_get_unique_consecutive_seqs() {
    let t = TempRing::new();
    let ring = Arc::new(open(&t.dir, small(1 << 20).sync(SyncPolicy::Always)));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let ring = Arc::clone(&ring);
            std::thread::spawn(move || (0..200).map(|i| ring.append(&payload(i, 50)).unwrap()).collect::<Vec<_>>())
        })
        .collect();
    let mut all: Vec<u64> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=800).collect::<Vec<_>>());
    assert_eq!(ring.stats().durable_seq, 800);
}

#[test]
fn ack_beyond_head_is_an_error_and_ack_is_idempotent() {
    let t = TempRing::new();
    let ring = open(&t.dir, small(64 << 10));
    ring.append(b"a").unwrap();
    assert!(matches!(ring.ack(2), Err(Error::AckBeyondHead { seq: 2, last: 1 })));
    ring.ack(1).unwrap();
    ring.ack(1).unwrap();
    ring.ack(0).unwrap();
    assert_eq!(ring.stats().acked, 1);
}

#[test]
fn closed_ring_refuses_work() {
    let t = TempRing::new();
    let ring = open(&t.dir, small(64 << 10));
    ring.close().unwrap();
    assert!(matches!(ring.append(b"a"), Err(Error::Closed)));
    assert!(matches!(ring.read(1, 1, 1), Err(Error::Closed)));
}

#[test]
fn close_refuses_new_appends_so_its_clean_checkpoint_claims_only_durable_records() {
    use ringship::RingConfig;
    use ringship::sim::{Faults, SimDisk};
    // Producers append until the ring says it is closed; then the power
    // fails and every write not fsynced is lost. The clean checkpoint close
    // wrote must describe only records its fsync covered: nothing counted
    // corrupted or lost, and every append that returned is there.
    for seed in 0..40 {
        let disk = SimDisk::new(seed, Faults { lose_unsynced: 1.0, ..Faults::NONE });
        let config = || RingConfig::default().capacity(1 << 20).sync(SyncPolicy::Never);
        let (ring, _) = Ring::open_on(disk.file("data"), disk.file("meta"), config()).unwrap();
        let ring = Arc::new(ring);
        let producers: Vec<_> = (0..3)
            .map(|_| {
                let ring = Arc::clone(&ring);
                std::thread::spawn(move || {
                    let mut last = 0;
                    loop {
                        match ring.append(&payload(last, 40)) {
                            Ok(seq) => last = seq,
                            Err(Error::Closed) => return last,
                            Err(e) => panic!("seed {seed}: {e}"),
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(2));
        ring.close().unwrap();
        let last = producers.into_iter().map(|p| p.join().unwrap()).max().unwrap();
        drop(ring);
        disk.power_loss();
        let (ring, report) = Ring::open_on(disk.file("data"), disk.file("meta"), config()).unwrap();
        let batch = ring.read(1, usize::MAX, usize::MAX).unwrap();
        let s = ring.stats();
        assert_identity(&s);
        assert_eq!((s.corrupted, s.lost_unsynced), (0, 0), "seed {seed}: {s:?} {report:?}");
        assert!(s.last_seq >= last, "seed {seed}: appended {last}, ring has {}", s.last_seq);
        assert_eq!(batch.records.len() as u64, s.pending, "seed {seed}");
    }
}

/// A gate a test holds shut: `pass` waits while it is shut.
#[derive(Default)]
struct Gate {
    /// (shut, threads waiting in `pass`)
    state: parking_lot::Mutex<(bool, u32)>,
    changed: parking_lot::Condvar,
}

impl Gate {
    fn set_shut(&self, shut: bool) {
        self.state.lock().0 = shut;
        self.changed.notify_all();
    }
    fn pass(&self) {
        let mut g = self.state.lock();
        g.1 += 1;
        self.changed.notify_all();
        while g.0 {
            self.changed.wait(&mut g);
        }
        g.1 -= 1;
    }
    fn wait_for_a_waiter(&self) {
        let mut g = self.state.lock();
        while g.1 == 0 {
            self.changed.wait(&mut g);
        }
    }
}

/// `ring.meta`'s storage whose fsyncs pass `gate` (and are counted when
/// done), and whose next write at `held_offset`, once `hold_write` is set,
/// passes it too.
struct GatedMeta {
    inner: Box<dyn ringship::Storage>,
    gate: Arc<Gate>,
    synced: Arc<AtomicU64>,
    held_offset: u64,
    hold_write: Arc<AtomicBool>,
}

impl GatedMeta {
    fn wrap(inner: Box<dyn ringship::Storage>, gate: &Arc<Gate>) -> Self {
        let (synced, hold_write) = (Arc::default(), Arc::default());
        GatedMeta { inner, gate: Arc::clone(gate), synced, held_offset: 8192, hold_write }
    }
}

impl ringship::Storage for GatedMeta {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if offset == self.held_offset && self.hold_write.swap(false, SeqCst) {
            self.gate.pass();
        }
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.gate.pass();
        let r = self.inner.sync_data();
        self.synced.fetch_add(1, SeqCst);
        r
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
}

/// I6 for the seq reservation: under `SyncPolicy::Never` appends hand out
/// seqs beyond the reservation they started with while the fsync of the
/// next one hangs, because the background thread renewed it ahead of
/// time: an append that ran past the reservation, writing and fsyncing
/// the next one itself, would never return while that fsync hangs.
#[test]
fn appends_do_not_wait_for_a_hung_reservation_fsync() {
    let t = TempRing::new();
    let gate = Arc::new(Gate::default());
    let synced = Arc::new(AtomicU64::new(0));
    let (g, s) = (Arc::clone(&gate), Arc::clone(&synced));
    let config = small(1 << 20).seq_reservation(64).storage_wrapper(Arc::new(move |path, inner| {
        if path.ends_with("ring.meta") {
            Box::new(GatedMeta { synced: Arc::clone(&s), ..GatedMeta::wrap(inner, &g) })
        } else {
            inner
        }
    }));
    let ring = Arc::new(open(&t.dir, config));
    // The first append reserves seqs up to 65 itself; the 33rd asks the
    // background thread to renew (half the block used).
    let before = synced.load(SeqCst);
    for i in 1..=40 {
        assert_eq!(ring.append(&payload(i, 50)).unwrap(), i);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while synced.load(SeqCst) < before + 2 {
        assert!(std::time::Instant::now() < deadline, "no reservation was renewed ahead of the appends");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Hang every fsync of ring.meta, then append past the first reservation.
    gate.set_shut(true);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let r = Arc::clone(&ring);
    let appender = std::thread::spawn(move || {
        for i in 41..=90 {
            assert_eq!(r.append(&payload(i, 50)).unwrap(), i);
        }
        done_tx.send(()).unwrap();
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(10));
    gate.set_shut(false);
    appender.join().unwrap();
    assert!(finished.is_ok(), "appends waited for a hung reservation fsync");
    ring.close().unwrap();
    drop(ring);
    // Seqs go on from 91 after a clean close: no seq reused, none skipped.
    let ring = open(&t.dir, small(1 << 20));
    let s = ring.stats();
    assert_eq!((s.last_seq, s.lost_unsynced), (90, 0), "{s:?}");
    assert_eq!(ring.append(b"next").unwrap(), 91);
}

/// I1 under `FullPolicy::Block`: an append that waited for room checks the
/// seq reservation again when it wakes, since appenders that ran while it
/// waited may have used it up. Going on would hand out seqs no durable
/// reservation covers, which a power loss would let the reopened ring
/// hand out again.
#[test]
fn appends_that_waited_for_room_check_the_seq_reservation_again() {
    let t = TempRing::new();
    let gate = Arc::new(Gate::default());
    let g = Arc::clone(&gate);
    let config =
        small(4096).seq_reservation(4).full(FullPolicy::Block(Duration::from_secs(60))).storage_wrapper(Arc::new(
            move |path, inner| {
                if path.ends_with("ring.meta") { Box::new(GatedMeta::wrap(inner, &g)) } else { inner }
            },
        ));
    let ring = Arc::new(open(&t.dir, config));
    // The first append reserves seqs up to 5 itself. Then every fsync of
    // ring.meta hangs: the third append asks the background thread to
    // renew the reservation, and it waits at the gate.
    assert_eq!(ring.append(&payload(1, 1000)).unwrap(), 1);
    gate.set_shut(true);
    for i in 2..=3 {
        assert_eq!(ring.append(&payload(i, 1000)).unwrap(), i);
    }
    gate.wait_for_a_waiter();
    // The ring (three 1,032-byte frames of 4,096) is full of unacknowledged
    // records: a batch of two (seqs 4 and 5) and a single record wait for
    // room. Together they need seq 6, beyond the reservation.
    let r = Arc::clone(&ring);
    let two = std::thread::spawn(move || r.append_batch(&[payload(4, 1000), payload(5, 1000)]));
    let r = Arc::clone(&ring);
    let one = std::thread::spawn(move || r.append(&payload(6, 1000)));
    std::thread::sleep(Duration::from_millis(100));
    ring.ack(3).unwrap();
    eventually("an append that waited for room", || ring.stats().last_seq >= 4);
    std::thread::sleep(Duration::from_millis(200));
    let last = ring.stats().last_seq;
    gate.set_shut(false);
    let (two, one) = (two.join().unwrap(), one.join().unwrap());
    assert!(last <= 5, "seq {last} handed out while the reservation covering it could not be written");
    let mut seqs = vec![one.unwrap()];
    let (first, second) = two.unwrap();
    seqs.extend([first, second]);
    seqs.sort_unstable();
    assert_eq!(seqs, [4, 5, 6]);
    assert_eq!(first + 1, second);
}

/// `close` against an append writing a larger seq reservation: the final
/// reservation (the last seq) must be written after it, or the larger one
/// lands last, and after a power loss the reopened ring counts every seq it
/// covers as lost although none was handed out ("none after a clean close",
/// docs/FORMAT.md). Close waits for the reservation in flight.
#[test]
fn close_writes_the_final_seq_reservation_after_one_in_flight() {
    use ringship::sim::{Faults, SimDisk};
    let disk = SimDisk::new(7, Faults { lose_unsynced: 1.0, ..Faults::NONE });
    let config = || small(64 << 10);
    let (ring, _) = Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config()).unwrap();
    ring.append(b"one").unwrap();
    ring.close().unwrap();
    drop(ring);
    // Reopened, the reservation ends at the last seq: the next append
    // writes a larger one itself. Hold that write.
    let gate = Arc::new(Gate::default());
    let meta = GatedMeta::wrap(disk.file("ring.meta"), &gate);
    meta.hold_write.store(true, SeqCst);
    let (ring, _) = Ring::open_on(disk.file("ring.data"), Box::new(meta), config()).unwrap();
    gate.set_shut(true);
    let ring = Arc::new(ring);
    let r = Arc::clone(&ring);
    let appender = std::thread::spawn(move || r.append(b"two"));
    gate.wait_for_a_waiter();
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    let r = Arc::clone(&ring);
    let closer = std::thread::spawn(move || {
        let result = r.close();
        closed_tx.send(()).unwrap();
        result
    });
    // A close that did not wait would finish here, before the held write;
    // close waits for that write, so this times out.
    let _ = closed_rx.recv_timeout(Duration::from_millis(300));
    gate.set_shut(false);
    let second = appender.join().unwrap();
    closer.join().unwrap().unwrap();
    assert!(matches!(second, Ok(2) | Err(Error::Closed)), "{second:?}");
    drop(ring);
    disk.power_loss();
    let (ring, _) = Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config()).unwrap();
    let s = ring.stats();
    assert_eq!(s.lost_unsynced, 0, "{s:?}");
    assert_eq!(s.last_seq, if second.is_ok() { 2 } else { 1 }, "{s:?}");
}

/// The `Interval` flusher keeps its schedule while appends keep waking the
/// background thread to renew the seq reservation (here every 8 appends):
/// records become durable without `sync` calls.
#[test]
fn interval_flushes_on_time_while_appends_keep_renewing_the_reservation() {
    let t = TempRing::new();
    let config = small(1 << 20).sync(SyncPolicy::Interval(Duration::from_millis(20))).seq_reservation(16);
    let ring = open(&t.dir, config);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    while ring.stats().durable_seq == 0 {
        assert!(std::time::Instant::now() < deadline, "no flush in 10 s of appends ({last} appended)");
        last = ring.append(b"x").unwrap();
    }
}

/// Reads logged by [`Prefetches`]: offset, length, and how many prefetches
/// had been asked for then.
type ReadLog = Arc<parking_lot::Mutex<Vec<(u64, u64, usize)>>>;

/// Records the data file's prefetches (and, if asked, its reads).
struct Prefetches {
    inner: Box<dyn ringship::Storage>,
    calls: Arc<parking_lot::Mutex<Vec<(u64, u64)>>>,
    /// If set: each read's offset and length, and how many prefetches
    /// `calls` held then.
    reads: Option<ReadLog>,
    /// The boot id to report; `None`: the machine's.
    boot: Option<[u8; 16]>,
}

impl ringship::Storage for Prefetches {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if let Some(reads) = &self.reads {
            let calls = self.calls.lock();
            reads.lock().push((offset, buf.len() as u64, calls.len()));
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.inner.sync_data()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn prefetch(&self, offset: u64, len: u64) {
        self.calls.lock().push((offset, len));
        self.inner.prefetch(offset, len);
    }
    fn prefetch_for_write(&self, offset: u64, len: u64) {
        self.calls.lock().push((offset, len));
        self.inner.prefetch_for_write(offset, len);
    }
    fn boot_id(&self) -> Option<[u8; 16]> {
        self.boot.or_else(|| self.inner.boot_id())
    }
}

/// Waits for the last prefetches in `calls` to be `want`.
#[track_caller]
fn wait_for_prefetch(calls: &parking_lot::Mutex<Vec<(u64, u64)>>, want: &[(u64, u64)]) {
    eventually(&format!("prefetches ending with {want:?}"), || calls.lock().ends_with(want));
}

/// The ring prefetches the data file a quarter of its capacity (at most
/// 1 MiB) ahead of the head: `open` from the head it opened at, then the
/// background thread each time the head crosses a multiple of 256 KiB, in
/// two parts when the bytes ahead wrap around the end of the data area.
/// With mapped writes from the first append on; with `pwrite` only bytes
/// a lap was written to (the first lap has nothing to read). Offsets are
/// the file's: the data area starts after a 4096-byte header
/// (docs/FORMAT.md).
#[test]
fn the_ring_prefetches_ahead_of_the_head_and_around_the_end() {
    const AREA: u64 = 4096;
    for mapped in [true, false] {
        let t = TempRing::new();
        let calls = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let c = Arc::clone(&calls);
        // 2 MiB of 1 KiB frames (992 bytes of payload, a 32-byte header):
        // no pads, and the head lands on every multiple of 256 KiB.
        let config = small(2 << 20).mapped_writes(mapped).storage_wrapper(Arc::new(move |path, inner| {
            if path.ends_with("ring.data") {
                Box::new(Prefetches { inner, calls: Arc::clone(&c), reads: None, boot: None })
            } else {
                inner
            }
        }));
        let first_lap = |calls: &[(u64, u64)]| if mapped { calls.to_vec() } else { Vec::new() };
        let ring = open(&t.dir, config.clone());
        assert_eq!(*calls.lock(), first_lap(&[(AREA, 512 << 10)]), "open prefetches from the head");
        let record = payload(1, 992);
        for _ in 0..256 {
            ring.append(&record).unwrap();
        }
        // The head reached 256 KiB.
        if mapped {
            wait_for_prefetch(&calls, &[(AREA + (256 << 10), 512 << 10)]);
        }
        // Up to 1792 KiB: the bytes ahead run 256 KiB to the end of the
        // first lap, then from the start of the data area (written).
        for _ in 256..1792 {
            ring.append(&record).unwrap();
        }
        let mut want = first_lap(&[(AREA + (1792 << 10), 256 << 10)]);
        want.push((AREA, 256 << 10));
        wait_for_prefetch(&calls, &want);
        ring.close().unwrap();
        drop(ring);

        // A reopened ring prefetches from the head it reopened at.
        calls.lock().clear();
        let ring = open(&t.dir, config);
        assert_eq!(*calls.lock(), want);
        // On the second lap everything ahead was written: both paths.
        for _ in 1792..2304 {
            ring.append(&record).unwrap();
        }
        wait_for_prefetch(&calls, &[(AREA + (256 << 10), 512 << 10)]);
        ring.close().unwrap();
    }
}

/// Checks that every read of the data area in `reads` was of bytes some
/// earlier prefetch in `calls` asked for; returns the bytes read.
#[track_caller]
fn assert_reads_were_asked_for(calls: &[(u64, u64)], reads: &[(u64, u64, usize)], what: &str) -> u64 {
    const AREA: u64 = 4096;
    let mut read = 0;
    for &(offset, len, asked) in reads.iter().filter(|r| r.0 >= AREA) {
        let mut earlier: Vec<(u64, u64)> = calls[..asked].iter().map(|&(o, l)| (o, o + l)).collect();
        earlier.sort_unstable();
        // Where the asked-for bytes that cover `offset` on end.
        let covered = earlier.iter().fold(offset, |end, &(from, to)| if from <= end { end.max(to) } else { end });
        assert!(covered >= offset + len, "{what}: read of {len} bytes at {offset} not asked for before");
        read += len;
    }
    read
}

/// Recovery after a power loss reads the whole data area, and reads after
/// a restart start at the oldest record: after a reboot those bytes are on
/// the disk only, and the default path's data file has the kernel's
/// read-ahead off. So every read of the data area they make must have been
/// asked for (`Storage::prefetch`) before it is made: on both write paths,
/// with the checkpoint as the crash left it (recovery looks for the head
/// past the last data fsync it records) and with the meta file lost
/// (recovery walks every frame).
#[test]
fn recovery_and_reads_ask_for_the_bytes_ahead_of_their_reads() {
    let cap = 24 << 20;
    for (mapped, meta_lost) in [(false, false), (true, false), (false, true)] {
        let t = TempRing::new();
        let record = payload(1, 992);
        let batch = vec![&record[..]; 1024];
        let meta = {
            let ring = open(&t.dir, small(cap).mapped_writes(mapped));
            // 30 MiB of 1 KiB frames: the ring is full and has wrapped.
            for _ in 0..30 {
                ring.append_batch(&batch).unwrap();
            }
            ring.sync().unwrap();
            let meta = std::fs::read(t.meta_file()).unwrap();
            ring.close().unwrap();
            meta
        };
        // The files as a crash after the sync left them, opened after a
        // reboot (another boot id): recovery scans the data area.
        if meta_lost {
            std::fs::remove_file(t.meta_file()).unwrap();
        } else {
            std::fs::write(t.meta_file(), meta).unwrap();
        }
        let calls = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let reads = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (calls_log, reads_log) = (Arc::clone(&calls), Arc::clone(&reads));
        let config = small(cap).mapped_writes(mapped).storage_wrapper(Arc::new(move |path, inner| {
            if path.ends_with("ring.data") {
                let (calls, reads) = (Arc::clone(&calls_log), Some(Arc::clone(&reads_log)));
                Box::new(Prefetches { inner, calls, reads, boot: Some([0xab; 16]) })
            } else {
                inner
            }
        }));
        let (ring, report) = Ring::open(&t.dir, config).unwrap();
        assert!(!report.clean_shutdown && report.records_recovered >= 24 << 10, "{report:?}");
        let scanned = assert_reads_were_asked_for(&calls.lock(), &reads.lock(), "recovery");
        assert!(scanned >= cap, "recovery read {scanned} bytes, not the whole data area ({mapped}, {meta_lost})");
        // Reads from the oldest record to the newest, in batches.
        let s = ring.stats();
        reads.lock().clear();
        calls.lock().clear();
        let (mut from, mut delivered) = (1, 0);
        loop {
            let batch = ring.read(from, 1000, 1 << 20).unwrap();
            if batch.records.is_empty() {
                break;
            }
            delivered += batch.records.len() as u64;
            from = batch.next_seq;
        }
        assert_eq!(delivered, s.pending);
        let read = assert_reads_were_asked_for(&calls.lock(), &reads.lock(), "reads");
        assert!(read >= s.pending * 1024, "reads read {read} bytes for {} records", s.pending);
    }
}

/// Counts the bytes read from `ring.data`.
struct CountedReads(Arc<AtomicU64>);

impl Hooks for CountedReads {
    fn before_read(&self, len: usize, _offset: u64) -> std::io::Result<()> {
        self.0.fetch_add(len as u64, SeqCst);
        Ok(())
    }
}

/// After a reopen a read from the delivery cursor starts at the frame the
/// checkpoint names, and a read from the head reads nothing: neither walks
/// the acknowledged records still in the ring.
#[test]
fn reads_after_a_reopen_start_at_the_cursor_not_the_oldest_record() {
    let t = TempRing::new();
    let ring = open(&t.dir, small(1 << 20));
    for i in 1..=5000 {
        ring.append(&payload(i, 100)).unwrap();
    }
    assert_eq!(ring.read(1, 4000, usize::MAX).unwrap().next_seq, 4001);
    ring.ack(4000).unwrap();
    ring.close().unwrap();
    drop(ring);
    let read = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&read);
    let config = hook_file(small(1 << 20), "ring.data", move || CountedReads(Arc::clone(&counter)));
    let ring = open(&t.dir, config);
    read.store(0, SeqCst);
    // Records 1..=4000 take 544,000 bytes before the cursor; a read asks
    // for 64 KiB at a time.
    let got = ring.read(4001, 10, 1000).unwrap();
    assert_eq!(got.records.iter().map(|r| r.seq).collect::<Vec<_>>(), (4001..=4010).collect::<Vec<_>>());
    assert!(read.load(SeqCst) <= 64 << 10, "read {} bytes to reach the cursor", read.load(SeqCst));
    let ring_again = || {
        read.store(0, SeqCst);
        ring.read(5001, 10, 1000).unwrap()
    };
    assert!(ring_again().is_empty());
    assert_eq!(read.load(SeqCst), 0, "a read from the head read the ring");
}

/// A batch refused for its sizes reserves no seqs: after a power loss the
/// ring counts no more seqs lost than one reservation block. Extending the
/// reservation by the refused batch's length would have a power loss count
/// all of those seqs lost as well as rejected: `appended` would count them
/// twice.
#[test]
fn a_batch_refused_for_its_size_reserves_no_seqs() {
    use ringship::sim::{Faults, SimDisk};
    let disk = SimDisk::new(11, Faults { lose_unsynced: 1.0, ..Faults::NONE });
    let config = || small(64 << 10).sync(SyncPolicy::Always).seq_reservation(4);
    let (ring, _) = Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config()).unwrap();
    assert_eq!(ring.append(b"one").unwrap(), 1);
    let mut batch = vec![vec![1u8; 10]; 1000];
    batch[999] = vec![1; 1025];
    assert!(matches!(ring.append_batch(&batch), Err(Error::RecordTooLarge { .. })));
    let huge = vec![vec![1u8; 1000]; 100];
    assert!(matches!(ring.append_batch(&huge), Err(Error::BatchTooLarge { .. })));
    assert_eq!(ring.stats().rejected, 1100);
    drop(ring);
    disk.power_loss();
    let (ring, _) = Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config()).unwrap();
    let s = ring.stats();
    assert_identity(&s);
    assert!(s.lost_unsynced <= 4, "seqs of refused batches counted lost: {s:?}");
    assert!(ring.append(b"two").unwrap() <= 6);
}

/// A ring dropped (not closed) while its background thread is inside a
/// flush: the drop waits for the flush, so no write of the ring reaches
/// its files once the drop has returned, where it would meet whatever
/// comes next (the files opened again; in the simulation, a power loss
/// then a checkpoint claiming records the loss took).
#[test]
fn nothing_of_a_dropped_ring_writes_after_the_drop_returns() {
    use std::sync::{Condvar, Mutex};
    #[derive(Default)]
    struct Gate {
        /// Hold the next data fsync until released.
        armed: AtomicBool,
        held: Mutex<(bool, bool)>, // (entered, released)
        moved: Condvar,
        dropped: AtomicBool,
        writes_after_drop: AtomicU64,
    }
    struct GateHooks(Arc<Gate>, bool);
    impl Hooks for GateHooks {
        fn before_write(&self, _: &[u8], _: u64) -> std::io::Result<()> {
            if self.0.dropped.load(SeqCst) {
                self.0.writes_after_drop.fetch_add(1, SeqCst);
            }
            Ok(())
        }
        fn before_sync(&self) -> std::io::Result<()> {
            if self.0.dropped.load(SeqCst) {
                self.0.writes_after_drop.fetch_add(1, SeqCst);
            }
            if self.1 && self.0.armed.swap(false, SeqCst) {
                let mut held = self.0.held.lock().unwrap();
                held.0 = true;
                self.0.moved.notify_all();
                while !held.1 {
                    held = self.0.moved.wait(held).unwrap();
                }
            }
            Ok(())
        }
    }
    let t = TempRing::new();
    let gate = Arc::new(Gate::default());
    let watched = Arc::clone(&gate);
    let config = small(1 << 20).sync(SyncPolicy::Interval(Duration::from_millis(5))).storage_wrapper(Arc::new(
        move |path: &std::path::Path, inner| {
            let data = path.ends_with("ring.data");
            Box::new(common::Hooked { inner, hooks: GateHooks(Arc::clone(&watched), data) })
                as Box<dyn ringship::Storage>
        },
    ));
    let ring = Ring::open(&t.dir, config).unwrap().0;
    gate.armed.store(true, SeqCst);
    ring.append(b"flushed by the background thread").unwrap();
    {
        let mut held = gate.held.lock().unwrap();
        while !held.0 {
            held = gate.moved.wait(held).unwrap();
        }
    }
    // The background thread is inside its flush's fsync: drop the ring.
    let dropper = {
        let gate = Arc::clone(&gate);
        std::thread::spawn(move || {
            drop(ring);
            gate.dropped.store(true, SeqCst);
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!gate.dropped.load(SeqCst), "the drop returned while the flush was still running");
    gate.held.lock().unwrap().1 = true;
    gate.moved.notify_all();
    dropper.join().unwrap();
    // The flush's checkpoint (and anything else) came before the drop's end.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(gate.writes_after_drop.load(SeqCst), 0);
    let (ring, report) = Ring::open(&t.dir, small(1 << 20)).unwrap();
    assert_eq!(report.pending, 1);
    ring.close().unwrap();
}
