//! Bad environments get clear errors and lose nothing: a read-only
//! directory, a disk too full to create the ring, and ENOSPC while
//! appending.
//!
//! The first two run the test binary again inside a private mount
//! namespace (`unshare -m`, or `unshare -rm` when not root) with a
//! read-only bind mount or a tiny tmpfs, so the kernel produces the real
//! EROFS and ENOSPC.

mod common;

use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{TempRing, assert_identity, open, payload, small};
use ringship::{Error, FullPolicy, Ring, RingConfig, Storage};

const CHILD_ENV: &str = "RINGSHIP_BAD_INPUT_CHILD";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|ids| ids.split_whitespace().nth(1) == Some("0"))
}

/// Runs `test` of this binary as a child after `setup` (a shell snippet
/// that may use "$DIR") in a private mount namespace, with `DIR` set.
fn run_in_mount_namespace(test: &str, dir: &Path, setup: &str) {
    let exe = std::env::current_exe().unwrap();
    let ns = if is_root() { "-m" } else { "-rm" };
    let script = format!("{setup} && exec \"$EXE\" --exact {test} --nocapture --test-threads 1");
    let out = Command::new("unshare")
        .args([ns, "sh", "-c", &script])
        .env("EXE", &exe)
        .env("DIR", dir)
        .env(CHILD_ENV, dir)
        .output()
        .expect("run unshare (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child {test} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("CHILD CHECKS PASSED"), "child {test} did not run its checks:\n{stdout}\n{stderr}");
}

#[test]
fn read_only_directory_gives_a_clear_error() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let dir = Path::new(&dir).join("ring");
        let err = Ring::open(&dir, small(64 << 10)).unwrap_err();
        let io = err.io_error().unwrap_or_else(|| panic!("expected an I/O error, got {err}"));
        assert_eq!(io.raw_os_error(), Some(30), "EROFS expected: {err}");
        assert!(err.to_string().contains(&dir.display().to_string()), "the error names the directory: {err}");
        println!("CHILD CHECKS PASSED");
        return;
    }
    let t = TempRing::new();
    let ring = open(&t.dir, small(64 << 10));
    ring.append(b"kept").unwrap();
    ring.close().unwrap();
    drop(ring);
    run_in_mount_namespace(
        "read_only_directory_gives_a_clear_error",
        t.tmp.path(),
        "mount --bind \"$DIR\" \"$DIR\" && mount -o remount,bind,ro \"$DIR\"",
    );
    // Nothing was lost: the ring opens normally once writable.
    let (ring, _) = Ring::open(&t.dir, small(64 << 10)).unwrap();
    assert_eq!(ring.read(1, 10, 1 << 20).unwrap().records[0].payload, &b"kept"[..]);
}

#[test]
fn disk_too_full_to_create_the_ring() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let dir = Path::new(&dir).join("ring");
        let err = Ring::open(&dir, small(1 << 20)).unwrap_err();
        let io = err.io_error().unwrap_or_else(|| panic!("expected an I/O error, got {err}"));
        assert_eq!(io.raw_os_error(), Some(28), "ENOSPC expected: {err}");
        assert!(err.to_string().contains("ring.data"), "the error names the file: {err}");
        // Nothing half-made is left behind, and a ring that fits opens.
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, vec!["ring.lock"], "leftovers: {left:?}");
        let (ring, report) = Ring::open(&dir, small(64 << 10)).unwrap();
        assert!(report.created);
        ring.append(b"fits").unwrap();
        println!("CHILD CHECKS PASSED");
        return;
    }
    let t = TempRing::new();
    run_in_mount_namespace(
        "disk_too_full_to_create_the_ring",
        t.tmp.path(),
        "mount -t tmpfs -o size=256k tmpfs \"$DIR\"",
    );
}

/// Fails the next `fail` writes with ENOSPC, and the next `fail_reads`
/// reads with ENOMEM (not EIO: the ring reads a range that failed with EIO
/// again, block by block; `tests/bad_sector.rs`).
struct FullDisk {
    inner: Box<dyn Storage>,
    fail: Arc<AtomicU64>,
    fail_reads: Arc<AtomicU64>,
}

/// The error the fault wrapper's failed reads return.
const ENOMEM: i32 = 12;

/// Takes one from `n` if it is not zero: whether to fail this call.
fn take_one(n: &AtomicU64) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

impl Storage for FullDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if take_one(&self.fail_reads) {
            return Err(io::Error::from_raw_os_error(ENOMEM));
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if take_one(&self.fail) {
            return Err(io::Error::from_raw_os_error(28));
        }
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.inner.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

/// How many of the next calls fail, per file and kind: writes with
/// ENOSPC, reads with ENOMEM.
#[derive(Default)]
struct Faults {
    data_writes: Arc<AtomicU64>,
    data_reads: Arc<AtomicU64>,
    meta_writes: Arc<AtomicU64>,
}

/// `config` with `ring.data` and `ring.meta` failing as `faults` says.
fn faulty(config: RingConfig, faults: &Faults) -> RingConfig {
    let (dw, dr, mw) =
        (Arc::clone(&faults.data_writes), Arc::clone(&faults.data_reads), Arc::clone(&faults.meta_writes));
    config.storage_wrapper(Arc::new(move |path: &Path, inner| {
        let (fail, fail_reads) = if path.ends_with("ring.data") {
            (Arc::clone(&dw), Arc::clone(&dr))
        } else {
            (Arc::clone(&mw), Arc::default())
        };
        Box::new(FullDisk { inner, fail, fail_reads })
    }))
}

fn ring_with_full_disk(t: &TempRing) -> (Ring, Arc<AtomicU64>) {
    let fail = Arc::new(AtomicU64::new(0));
    let faults = Faults { data_writes: Arc::clone(&fail), ..Faults::default() };
    let (ring, _) = Ring::open(&t.dir, faulty(small(64 << 10), &faults)).unwrap();
    for i in 1..=5 {
        ring.append(&payload(i, 50)).unwrap();
    }
    (ring, fail)
}

/// Opens the ring a test closed. The tests that run the binary again in a
/// mount namespace spawn children, and a child holds a copy of every file
/// descriptor, the directory lock's included, from its fork to its exec:
/// a reopen at that moment finds the ring locked for that long.
fn reopen(dir: &Path, config: &RingConfig) -> Ring {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match Ring::open(dir, config.clone()) {
            Err(Error::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            r => return r.unwrap().0,
        }
    }
}

fn check_reopened(t: &TempRing, appended: u64, rejected: u64) {
    let ring = reopen(&t.dir, &small(64 << 10));
    let s = ring.stats();
    assert_identity(&s);
    assert_eq!((s.appended, s.rejected), (appended, rejected), "{s:?}");
    let b = ring.read(1, 100, 1 << 20).unwrap();
    assert_eq!(b.records.len() as u64, s.pending);
    for r in &b.records {
        assert_eq!(&r.payload[..], &payload(r.seq, 50)[..]);
    }
}

#[test]
fn enospc_once_is_rejected_and_the_ring_goes_on() {
    let t = TempRing::new();
    let (ring, fail) = ring_with_full_disk(&t);
    // The append's write fails; undoing it succeeds: a clean refusal.
    fail.store(1, Ordering::SeqCst);
    let err = ring.append(&payload(6, 50)).unwrap_err();
    assert_eq!(err.io_error().and_then(io::Error::raw_os_error), Some(28), "{err}");
    assert!(err.to_string().contains("ring.data"), "{err}");
    let s = ring.stats();
    assert_eq!((s.appended, s.rejected, s.last_seq), (6, 1, 5));
    assert_identity(&s);
    assert_eq!(ring.append(&payload(6, 50)).unwrap(), 6);
    ring.close().unwrap();
    check_reopened(&t, 7, 1);
}

#[test]
fn enospc_that_persists_poisons_the_ring_until_reopened() {
    let t = TempRing::new();
    let (ring, fail) = ring_with_full_disk(&t);
    // The write fails and so does undoing it: what reached the disk is
    // unknown, so the ring refuses to go on pretending.
    fail.store(u64::MAX, Ordering::SeqCst);
    let err = ring.append(&payload(6, 50)).unwrap_err();
    assert_eq!(err.io_error().and_then(io::Error::raw_os_error), Some(28), "{err}");
    assert!(matches!(ring.append(&payload(6, 50)), Err(Error::Poisoned { .. })));
    let s = ring.stats();
    assert_eq!((s.appended, s.last_seq), (5, 5), "an append of unknown outcome is not counted yet");
    assert_identity(&s);
    drop(ring);
    // Recovery decides: here nothing of the failed append reached the disk.
    check_reopened(&t, 5, 0);
}

/// An I/O error that refuses an append before any of it is written counts
/// the record as rejected, as a full ring does, so that the count (and a
/// receiver's next gap notice) includes it.
#[test]
fn appends_refused_by_io_errors_before_writing_are_counted_rejected() {
    let t = TempRing::new();
    let faults = Faults::default();
    let (meta_writes, data_reads) = (&faults.meta_writes, &faults.data_reads);
    let (ring, _) = Ring::open(&t.dir, faulty(small(4096), &faults)).unwrap();
    // The first append writes a seq reservation, and cannot.
    meta_writes.store(1, Ordering::SeqCst);
    let err = ring.append(&payload(1, 1000)).unwrap_err();
    assert_eq!(err.io_error().and_then(io::Error::raw_os_error), Some(28), "{err}");
    let s = ring.stats();
    assert_eq!((s.appended, s.rejected, s.last_seq), (1, 1, 0), "{s:?}");
    assert_identity(&s);
    // Three records fill the ring; the fourth must evict the first, and
    // reading the first one's header fails.
    for i in 1..=3 {
        assert_eq!(ring.append(&payload(i, 1000)).unwrap(), i);
    }
    data_reads.store(1, Ordering::SeqCst);
    let err = ring.append(&payload(4, 1000)).unwrap_err();
    assert_eq!(err.io_error().and_then(io::Error::raw_os_error), Some(ENOMEM), "{err}");
    let s = ring.stats();
    assert_eq!((s.appended, s.rejected, s.last_seq, s.pending), (5, 2, 3, 3), "{s:?}");
    assert_identity(&s);
    // Neither error stopped the ring, and the counts survive a reopen.
    assert_eq!(ring.append(&payload(4, 1000)).unwrap(), 4);
    ring.close().unwrap();
    let ring = reopen(&t.dir, &small(4096));
    let s = ring.stats();
    assert_eq!((s.appended, s.rejected, s.overwritten), (6, 2, 1), "{s:?}");
    assert_identity(&s);
}

/// A failed read of the tail leaves nothing behind for the next eviction
/// to take as the tail's bytes: a stale or zeroed buffer would decode as
/// damage and drop a good record as corrupted, even under `RejectNew`.
#[test]
fn a_failed_tail_read_never_drops_a_good_record() {
    let t = TempRing::new();
    let faults = Faults::default();
    let data_reads = &faults.data_reads;
    let config = faulty(small(4096).full(FullPolicy::RejectNew), &faults);
    let (ring, _) = Ring::open(&t.dir, config).unwrap();
    for i in 1..=3 {
        assert_eq!(ring.append(&payload(i, 1000)).unwrap(), i);
    }
    data_reads.store(1, Ordering::SeqCst);
    let err = ring.append(&payload(4, 1000)).unwrap_err();
    assert_eq!(err.io_error().and_then(io::Error::raw_os_error), Some(ENOMEM), "{err}");
    let err = ring.append(&payload(4, 1000)).unwrap_err();
    assert!(matches!(err, Error::Full { .. }), "{err}");
    let s = ring.stats();
    assert_eq!((s.corrupted, s.rejected, s.pending), (0, 2, 3), "{s:?}");
    assert_identity(&s);
    let got = ring.read(1, 10, 1 << 20).unwrap();
    assert_eq!(got.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
}

/// A file where the ring directory (or one of its parents) should be is
/// refused with a sentence naming it, not the OS's "File exists".
#[test]
fn a_file_in_the_way_of_the_ring_directory_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("telemetry");
    std::fs::write(&file, b"not a ring").unwrap();
    for (dir, says) in [(file.clone(), "it is a file, not a directory"), (file.join("ring"), "telemetry is a file")] {
        let err = ringship::Ring::open(&dir, ringship::RingConfig::default()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ringship::Error::NotARing { .. }), "{text}");
        assert!(text.contains(says) && !text.contains("File exists"), "{text}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a ring", "the file is left alone");
}
