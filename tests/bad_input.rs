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
use std::sync::atomic::{AtomicBool, Ordering};

use common::{TempRing, assert_identity, open, payload, small};
use ringship::{Ring, Storage};

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

/// Fails every write with ENOSPC while `full` is set.
struct FullDisk {
    inner: Box<dyn Storage>,
    full: Arc<AtomicBool>,
}

impl Storage for FullDisk {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.full.load(Ordering::SeqCst) {
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

#[test]
fn enospc_while_appending_is_an_error_and_the_ring_stays_consistent() {
    let t = TempRing::new();
    let full = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&full);
    let config = small(64 << 10).with_storage_wrapper(Arc::new(move |path: &Path, inner| {
        let full = if path.ends_with("ring.data") { Arc::clone(&f) } else { Arc::new(AtomicBool::new(false)) };
        Box::new(FullDisk { inner, full })
    }));
    let (ring, _) = Ring::open(&t.dir, config).unwrap();
    for i in 1..=5 {
        ring.append(&payload(i, 50)).unwrap();
    }
    full.store(true, Ordering::SeqCst);
    let err = ring.append(&payload(6, 50)).unwrap_err();
    assert_eq!(err.io_error().and_then(io::Error::raw_os_error), Some(28), "{err}");
    assert!(err.to_string().contains("ring.data"), "{err}");
    let s = ring.stats();
    assert_eq!((s.appended, s.rejected, s.last_seq), (6, 1, 5));
    assert_identity(&s);
    full.store(false, Ordering::SeqCst);
    assert_eq!(ring.append(&payload(6, 50)).unwrap(), 6);
    ring.close().unwrap();
    let (ring, _) = Ring::open(&t.dir, small(64 << 10)).unwrap();
    let s = ring.stats();
    assert_identity(&s);
    assert_eq!((s.appended, s.rejected, s.pending), (7, 1, 6));
    let b = ring.read(1, 100, 1 << 20).unwrap();
    for r in &b.records {
        assert_eq!(&r.payload[..], &payload(r.seq, 50)[..]);
    }
}
