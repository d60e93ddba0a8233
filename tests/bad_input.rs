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
use ringship::{Error, Ring, Storage};

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

/// Fails the next `fail` writes with ENOSPC.
struct FullDisk {
    inner: Box<dyn Storage>,
    fail: Arc<AtomicU64>,
}

impl Storage for FullDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
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

fn ring_with_full_disk(t: &TempRing) -> (Ring, Arc<AtomicU64>) {
    let fail = Arc::new(AtomicU64::new(0));
    let f = Arc::clone(&fail);
    let config = small(64 << 10).with_storage_wrapper(Arc::new(move |path: &Path, inner| {
        let fail = if path.ends_with("ring.data") { Arc::clone(&f) } else { Arc::new(AtomicU64::new(0)) };
        Box::new(FullDisk { inner, fail })
    }));
    let (ring, _) = Ring::open(&t.dir, config).unwrap();
    for i in 1..=5 {
        ring.append(&payload(i, 50)).unwrap();
    }
    (ring, fail)
}

fn check_reopened(t: &TempRing, appended: u64, rejected: u64) {
    let (ring, _) = Ring::open(&t.dir, small(64 << 10)).unwrap();
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
