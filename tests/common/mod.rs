//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod nats;
pub mod pki;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use ringship::{Ring, RingConfig, RingStats, SyncPolicy};

/// xorshift64: reproducible choices from a seed (never 0).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A fresh directory for a ring, removed when dropped.
pub struct TempRing {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl TempRing {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ring");
        TempRing { tmp, dir }
    }

    pub fn data_file(&self) -> PathBuf {
        self.dir.join("ring.data")
    }

    pub fn meta_file(&self) -> PathBuf {
        self.dir.join("ring.meta")
    }
}

/// A small ring that syncs only when asked.
pub fn small(capacity: u64) -> RingConfig {
    RingConfig::default().capacity(capacity).max_record_len(1024).sync(SyncPolicy::Never)
}

pub fn open(dir: &Path, config: RingConfig) -> Ring {
    Ring::open(dir, config).expect("open ring").0
}

/// Asserts the accounting identity, printing the counters when it fails.
#[track_caller]
pub fn assert_identity(s: &RingStats) {
    assert!(s.identity_holds(), "accounting identity broken: {s:?} (accounted {})", s.accounted());
}

/// A payload that encodes its own index, so a wrong record is detectable.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut p = format!("record-{i:010}-").into_bytes();
    p.resize(len.max(p.len()), b'a' + (i % 26) as u8);
    p
}

/// Waits until `f` holds, for at most 20 s.
#[track_caller]
pub fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Starts a child with `spawn` once per delay and SIGKILLs it after that
/// delay if it is still running; then runs it once more to the end.
/// Returns how many runs were killed and the last run's stdout. A run that
/// ended on its own must have succeeded: a child's failed check (a panic,
/// exit code 101) fails the test.
pub fn kill_and_restart(spawn: impl Fn() -> Child, delays_ms: &[u64]) -> (u32, String) {
    use std::os::unix::process::ExitStatusExt;
    let mut kills = 0;
    for (run, &delay) in delays_ms.iter().enumerate() {
        let mut c = spawn();
        std::thread::sleep(Duration::from_millis(delay));
        let status = if let Some(status) = c.try_wait().unwrap() {
            status
        } else {
            c.kill().unwrap();
            kills += 1;
            c.wait().unwrap()
        };
        // SIGKILL, or done just before it.
        assert!(status.success() || status.signal() == Some(9), "run {run} of the child ended with {status}");
    }
    let out = spawn().wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the last run of the child ended with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (kills, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What a [`Hooked`] storage does before forwarding each call: an error
/// returned here is the call's result, and the call is not forwarded.
pub trait Hooks: Send + Sync + 'static {
    fn before_read(&self, _len: usize, _offset: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn before_write(&self, _buf: &[u8], _offset: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn before_sync(&self) -> std::io::Result<()> {
        Ok(())
    }
    /// Whether this write is reported done without reaching the file (a
    /// kill came first); it may block first.
    fn drops_write(&self, _buf: &[u8]) -> bool {
        false
    }
    /// Whether this sync is reported done without reaching the file.
    fn drops_sync(&self) -> bool {
        false
    }
}

/// A storage that runs `hooks` before forwarding to `inner`: the one
/// wrapper tests need to watch or fail reads, writes and fsyncs.
pub struct Hooked<H: Hooks> {
    pub inner: Box<dyn ringship::Storage>,
    pub hooks: H,
}

impl<H: Hooks> ringship::Storage for Hooked<H> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.hooks.before_read(buf.len(), offset)?;
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.hooks.before_write(buf, offset)?;
        if self.hooks.drops_write(buf) {
            return Ok(());
        }
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.hooks.before_sync()?;
        if self.hooks.drops_sync() {
            return Ok(());
        }
        self.inner.sync_data()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.inner.set_len(len)
    }
    fn drop_cache(&self) {
        self.inner.drop_cache();
    }
    fn prefetch(&self, offset: u64, len: u64) {
        self.inner.prefetch(offset, len);
    }
    fn prefetch_for_write(&self, offset: u64, len: u64) {
        self.inner.prefetch_for_write(offset, len);
    }
    fn boot_id(&self) -> Option<[u8; 16]> {
        self.inner.boot_id()
    }
}

/// `config` with the file whose path ends with `name` wrapped in a
/// [`Hooked`] storage, each time with hooks from `hooks`.
pub fn hook_file<H: Hooks>(
    config: RingConfig,
    name: &'static str,
    hooks: impl Fn() -> H + Send + Sync + 'static,
) -> RingConfig {
    config.storage_wrapper(std::sync::Arc::new(move |path, inner| {
        if path.ends_with(name) { Box::new(Hooked { inner, hooks: hooks() }) } else { inner }
    }))
}
