//! The ring's everyday behaviour: append, read, ack, reopen, full policies.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TempRing, assert_identity, open, payload, small};
use ringship::{Error, FullPolicy, LossCause, Ring, SyncPolicy};

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
    let ring = open(&t.dir, small(4096).with_full(FullPolicy::RejectNew));
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
    let ring = Arc::new(open(&t.dir, small(4096).with_full(FullPolicy::Block(Duration::from_millis(300)))));
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

#[test]
fn capacity_too_small_for_one_record_is_a_config_error() {
    let t = TempRing::new();
    let err = Ring::open(&t.dir, small(512)).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("too small for one record"), "{err}");
    assert!(!t.dir.join("ring.data").exists());
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
    assert!(matches!(err, Error::UnsupportedVersion { found: 99, supported: 3, .. }), "{err}");
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
        let ring = open(&t.dir, small(64 << 10).with_sync(policy));
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
    let ring = open(&t.dir, small(64 << 10).with_sync(SyncPolicy::Interval(Duration::from_millis(10))));
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
    let ring = Arc::new(open(&t.dir, small(1 << 20).with_sync(SyncPolicy::Always)));
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
        let config = || RingConfig::default().with_capacity(1 << 20).with_sync(SyncPolicy::Never);
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
