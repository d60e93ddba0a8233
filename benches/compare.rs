//! The comparison: ringship against the physical limit (raw buffered writes,
//! raw write + fdatasync) and against peers (queue-file, yaque), measured
//! side by side in one run, printed as one table of ratios.
//!
//! ```text
//! cargo bench --bench compare                         # takes minutes
//! RINGSHIP_BENCH_RING_MIB=1024 cargo bench --bench compare   # the 1 GiB figures
//! ```
//!
//! Each figure is the best of three runs (wall clock), and a figure and its
//! baseline or peer take turns run by run. Ratios, not absolute numbers,
//! are what the targets (BENCHMARKS.md, "Targets") are about.

// Not a library: print freely, and wall-clock measuring needs casts.
// `main` is the table: one row after another, long by nature.
#![allow(
    missing_docs,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines
)]

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ringship::{
    Batch, BodyFormat, Endpoint, HttpConfig, HttpTransport, MemoryReceiver, Ring, RingConfig, SendContext, SendError,
    Shipper, Storage, SyncPolicy, Transport,
};

const RUNS: usize = 3;

struct Row {
    scenario: String,
    ours: String,
    theirs: String,
    ratio: f64,
    target: String,
    /// `None` for rows without a target (a physical limit, for reading the
    /// others against).
    met: Option<bool>,
}

#[path = "../tests/common/nats.rs"]
mod nats;

fn best<F: FnMut() -> Duration>(mut f: F) -> Duration {
    (0..RUNS).map(|_| f()).min().expect("runs")
}

/// The best of `RUNS` runs of each of `fs`, taken in turns (one run of
/// each, then again), so that a figure and the baseline it is divided by
/// see the same moments of a noisy machine: measured one after the other,
/// a slow spell of a few seconds would skew their ratio.
fn side_by_side<const K: usize>(mut fs: [&mut dyn FnMut() -> Duration; K]) -> [Duration; K] {
    let mut out = [Duration::MAX; K];
    for _ in 0..RUNS {
        for (f, best) in fs.iter_mut().zip(&mut out) {
            *best = (*best).min(f());
        }
    }
    out
}

fn frame_len(payload: usize) -> usize {
    (32 + payload).next_multiple_of(8)
}

/// The bytes ringship would write for one record (same layout and CRC).
fn frame(seq: u64, pos: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 32];
    f[4..8].copy_from_slice(&((1u32 << 24) | payload.len() as u32).to_le_bytes());
    f[8..16].copy_from_slice(&seq.to_le_bytes());
    f[16..24].copy_from_slice(&1u64.to_le_bytes());
    f[24..32].copy_from_slice(&pos.to_le_bytes());
    f.extend_from_slice(payload);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&f[4..32]), payload);
    f[..4].copy_from_slice(&crc.to_le_bytes());
    f.resize(frame_len(payload.len()), 0);
    f
}

fn ring(dir: &std::path::Path, cap: u64, sync: SyncPolicy) -> Ring {
    ring_with(dir, cap, sync, false)
}

/// A ring with `RingConfig::with_mapped_writes(mapped)`.
fn ring_with(dir: &std::path::Path, cap: u64, sync: SyncPolicy, mapped: bool) -> Ring {
    let config = RingConfig::default().capacity(cap).sync(sync).max_record_len(4096).mapped_writes(mapped);
    Ring::open(dir, config).expect("open ring").0
}

/// A file that reports another boot id: the machine rebooted since the
/// ring was written, so recovery must assume a power loss.
struct Rebooted(Box<dyn Storage>);

impl Storage for Rebooted {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn prefetch(&self, offset: u64, len: u64) {
        self.0.prefetch(offset, len);
    }
    fn prefetch_for_write(&self, offset: u64, len: u64) {
        self.0.prefetch_for_write(offset, len);
    }
    fn boot_id(&self) -> Option<[u8; 16]> {
        Some([0xab; 16])
    }
}

/// One run of `n` appends of `len` bytes from `threads` threads.
fn append_threads(n: u64, len: usize, threads: u64, sync: SyncPolicy, cap: u64, mapped: bool) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let r = Arc::new(ring_with(&tmp.path().join("r"), cap, sync, mapped));
    let payload = vec![7u8; len];
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (r, p) = (Arc::clone(&r), payload.clone());
            std::thread::spawn(move || {
                for _ in 0..n / threads {
                    r.append(&p).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    start.elapsed()
}

/// One run of `n` appends of `len` bytes in batches of `batch`.
fn append_batches(n: u64, len: usize, batch: usize, mapped: bool) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let r = ring_with(&tmp.path().join("r"), 512 << 20, SyncPolicy::Never, mapped);
    let p = vec![7u8; len];
    let payloads = vec![&p[..]; batch];
    let start = Instant::now();
    for _ in 0..n / batch as u64 {
        r.append_batch(&payloads).unwrap();
    }
    start.elapsed()
}

/// One run of `n` single appends into a full 64 MiB ring: every append
/// evicts the oldest record (`OverwriteOldest`), the ring's steady state.
fn append_full(n: u64, len: usize, mapped: bool) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let cap = 64 << 20;
    let r = ring_with(&tmp.path().join("r"), cap, SyncPolicy::Never, mapped);
    let p = vec![7u8; len];
    let batch = vec![&p[..]; 64];
    for _ in 0..=(cap / frame_len(len) as u64 / 64) {
        r.append_batch(&batch).unwrap();
    }
    let start = Instant::now();
    for _ in 0..n {
        r.append(&p).unwrap();
    }
    start.elapsed()
}

/// One run of the raw buffered-write baseline: `n` framed records through a
/// 64 KiB `BufWriter`.
fn raw_buffered(n: u64, len: usize) -> Duration {
    let frames: Vec<Vec<u8>> = (0..256).map(|i| frame(i, i * frame_len(len) as u64, &vec![7u8; len])).collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut w = BufWriter::with_capacity(64 << 10, File::create(tmp.path().join("raw")).unwrap());
    let start = Instant::now();
    for i in 0..n {
        w.write_all(&frames[(i % 256) as usize]).unwrap();
    }
    w.flush().unwrap();
    start.elapsed()
}

/// A file with `len` bytes reserved (`fallocate`), as the ring's data file
/// is: writes into it change no file size, so an fdatasync flushes data only.
fn preallocated(path: &std::path::Path, len: u64) -> File {
    let f = OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path).unwrap();
    fs2::FileExt::allocate(&f, len).unwrap();
    f.sync_all().unwrap();
    f
}

/// One run of `batches` writes of `batch` framed records, each followed by
/// an fdatasync: the faster of appending to a new file and writing into a
/// preallocated one (which is faster depends on the batch size: ext4 must
/// convert preallocated extents on their first write).
fn raw_fdatasync(batches: u64, batch: usize, len: usize) -> Duration {
    let one: Vec<u8> = (0..batch as u64).flat_map(|i| frame(i, 0, &vec![7u8; len])).collect();
    let appending = {
        let tmp = tempfile::tempdir().unwrap();
        let mut f = OpenOptions::new().create(true).truncate(true).write(true).open(tmp.path().join("raw")).unwrap();
        let start = Instant::now();
        for _ in 0..batches {
            f.write_all(&one).unwrap();
            f.sync_data().unwrap();
        }
        start.elapsed()
    };
    let into_preallocated = {
        let tmp = tempfile::tempdir().unwrap();
        let f = preallocated(&tmp.path().join("raw"), 256 << 20);
        let start = Instant::now();
        for i in 0..batches {
            f.write_all_at(&one, i * one.len() as u64).unwrap();
            f.sync_data().unwrap();
        }
        start.elapsed()
    };
    appending.min(into_preallocated)
}

/// One run of one `pwrite` per framed record from `threads` threads into a
/// preallocated file: the least an append can cost when each record must
/// be in the kernel before `append` returns (the ring's promise that a
/// process crash loses nothing).
fn raw_pwrite(n: u64, len: usize, threads: u64) -> Duration {
    let frames: Arc<Vec<Vec<u8>>> =
        Arc::new((0..256).map(|i| frame(i, i * frame_len(len) as u64, &vec![7u8; len])).collect());
    let tmp = tempfile::tempdir().unwrap();
    let f = Arc::new(preallocated(&tmp.path().join("raw"), 512 << 20));
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (f, next, frames) = (Arc::clone(&f), Arc::clone(&next), Arc::clone(&frames));
            std::thread::spawn(move || {
                for i in 0..n / threads {
                    let frame = &frames[(i % 256) as usize];
                    let at = next.fetch_add(frame.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    f.write_all_at(frame, at).unwrap();
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    start.elapsed()
}

/// One run of `n` records from `threads` threads, each written with one
/// `pwrite` and made durable before the thread writes its next: the threads
/// share `fdatasync`s (a leader runs one for every record written before
/// it began; the others wait for it). The least a group commit costs: the
/// baseline of the ring's `SyncPolicy::Always` from several threads.
fn raw_group_commit(n: u64, threads: u64) -> Duration {
    use std::sync::{Condvar, Mutex};
    struct Commit {
        /// (bytes written, bytes durable, an fsync in progress)
        state: Mutex<(u64, u64, bool)>,
        done: Condvar,
    }
    let frame = Arc::new(frame(1, 0, &[7u8; 128]));
    let tmp = tempfile::tempdir().unwrap();
    let f = Arc::new(preallocated(&tmp.path().join("raw"), 64 << 20));
    let commit = Arc::new(Commit { state: Mutex::new((0, 0, false)), done: Condvar::new() });
    let start = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|_| {
            let (f, commit, frame) = (Arc::clone(&f), Arc::clone(&commit), Arc::clone(&frame));
            std::thread::spawn(move || {
                for _ in 0..n / threads {
                    let end = {
                        let mut st = commit.state.lock().unwrap();
                        let at = st.0;
                        st.0 += frame.len() as u64;
                        // Written under the lock, as the ring writes in seq order.
                        f.write_all_at(&frame, at).unwrap();
                        st.0
                    };
                    let mut st = commit.state.lock().unwrap();
                    while st.1 < end {
                        if st.2 {
                            st = commit.done.wait(st).unwrap();
                            continue;
                        }
                        st.2 = true;
                        let target = st.0;
                        drop(st);
                        f.sync_data().unwrap();
                        st = commit.state.lock().unwrap();
                        (st.1, st.2) = (st.1.max(target), false);
                        commit.done.notify_all();
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    start.elapsed()
}

/// One run of `batches` batches of `batch` records appended under `sync`, with a
/// `sync()` after each (`sync_each`) or once at the end, so the run ends with
/// everything durable, as the raw baseline's does.
fn ringship_batches(batches: u64, batch: usize, len: usize, sync: SyncPolicy, sync_each: bool) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let r = ring(&tmp.path().join("r"), 256 << 20, sync);
    let payloads = vec![vec![7u8; len]; batch];
    let start = Instant::now();
    for _ in 0..batches {
        r.append_batch(&payloads).unwrap();
        if sync_each {
            r.sync().unwrap();
        }
    }
    if !sync_each {
        r.sync().unwrap();
    }
    start.elapsed()
}

/// One run of `n` records added to a queue-file queue.
fn queue_file(n: u64, len: usize, sync: bool) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let mut q = queue_file::QueueFile::open(tmp.path().join("q")).unwrap();
    q.set_sync_writes(sync);
    let p = vec![7u8; len];
    let start = Instant::now();
    for _ in 0..n {
        q.add(&p).unwrap();
    }
    start.elapsed()
}

/// One run of `n` records sent into a yaque queue.
fn yaque(n: u64, len: usize) -> Duration {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = yaque::Sender::open(tmp.path().join("y")).unwrap();
    let p = vec![7u8; len];
    let start = Instant::now();
    for _ in 0..n {
        s.try_send(&p).unwrap();
    }
    start.elapsed()
}

fn read_ack(n: u64) -> Duration {
    best(|| {
        let tmp = tempfile::tempdir().unwrap();
        let r = ring(&tmp.path().join("r"), 256 << 20, SyncPolicy::Never);
        let p = [7u8; 128];
        for _ in 0..n / 1000 {
            r.append_batch(&vec![&p[..]; 1000]).unwrap();
        }
        let start = Instant::now();
        let mut from = 1;
        loop {
            let b = r.read(from, 1000, 1 << 20).unwrap();
            let Some(last) = b.records.last() else { break };
            r.ack(last.seq).unwrap();
            from = b.next_seq;
        }
        start.elapsed()
    })
}

/// Time to open the ring in `dir` with `meta` as its meta file, on a
/// storage that reports another boot id (recovery must assume a power
/// loss); with `uncached`, the data file's pages are dropped from the page
/// cache first, as after a real reboot.
fn reopen_after_power_loss(dir: &std::path::Path, cap: u64, meta: &[u8], uncached: bool) -> Duration {
    std::fs::write(dir.join("ring.meta"), meta).unwrap();
    if uncached {
        uncache(&dir.join("ring.data"));
    }
    let config = RingConfig::default()
        .capacity(cap)
        .sync(SyncPolicy::Never)
        .max_record_len(4096)
        .storage_wrapper(Arc::new(|_, s| Box::new(Rebooted(s))));
    let start = Instant::now();
    let (r, _) = Ring::open(dir, config).unwrap();
    let t = start.elapsed();
    assert_eq!(r.stats().corrupted, 0, "a clean power-loss image");
    r.close().unwrap();
    t
}

/// Writes back and then drops the cached pages of `path`
/// (`POSIX_FADV_DONTNEED`): its next reads come from the disk.
fn uncache(path: &std::path::Path) {
    let f = File::open(path).unwrap();
    f.sync_all().unwrap();
    rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

/// Time of a sequential read of `path` in 1 MiB reads.
fn read_through(path: &std::path::Path) -> Duration {
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    let mut sum = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        sum = sum.wrapping_add(u64::from(buf[n - 1]));
    }
    std::hint::black_box(sum);
    start.elapsed()
}

/// Reopen times of a full ring (see `recovery`), and the sequential reads
/// they are held against.
struct Recovery {
    clean: Duration,
    crashed: Duration,
    power_loss: Duration,
    power_loss_later: Duration,
    read: Duration,
    /// After a power loss with nothing cached, and a read with nothing
    /// cached, taking turns.
    power_loss_uncached: Duration,
    read_uncached: Duration,
}

/// Reopen times of a full ring of `mib` MiB after a clean close, after a
/// process crash, after a power loss right after a `sync()` (with the data
/// file cached and not), and after a power loss with appends and an ack
/// since the last fsync; and the time of a sequential read of its data
/// file.
fn recovery(mib: u64) -> Recovery {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let cap = mib << 20;
    let crash_meta = {
        let r = ring(&dir, cap, SyncPolicy::Never);
        let p = [7u8; 128];
        let batch = vec![&p[..]; 1000];
        for _ in 0..(cap / 160 / 1000 + 10) {
            r.append_batch(&batch).unwrap();
        }
        r.sync().unwrap();
        // The meta file as a kill -9 here would leave it: not closed.
        let crash_meta = std::fs::read(dir.join("ring.meta")).unwrap();
        r.close().unwrap();
        crash_meta
    };
    let reopen = best(|| {
        let start = Instant::now();
        let r = ring(&dir, cap, SyncPolicy::Never);
        let t = start.elapsed();
        r.close().unwrap();
        t
    });
    let crashed = best(|| {
        std::fs::write(dir.join("ring.meta"), &crash_meta).unwrap();
        let start = Instant::now();
        let r = ring(&dir, cap, SyncPolicy::Never);
        let t = start.elapsed();
        let s = r.stats();
        assert_eq!(s.pending, s.last_seq - s.overwritten - s.seqs_skipped, "full recovery");
        r.close().unwrap();
        t
    });
    let power_loss = best(|| reopen_after_power_loss(&dir, cap, &crash_meta, false));
    // Shipping went on after the last fsync: 10,000 more records, and an
    // ack that wrote a checkpoint describing them (not durable).
    let later_meta = {
        let r = ring(&dir, cap, SyncPolicy::Never);
        let p = [7u8; 128];
        for _ in 0..10 {
            r.append_batch(&vec![&p[..]; 1000]).unwrap();
        }
        let s = r.stats();
        r.ack(s.last_seq - 5000).unwrap();
        let meta = std::fs::read(dir.join("ring.meta")).unwrap();
        r.close().unwrap();
        meta
    };
    let power_loss_later = best(|| reopen_after_power_loss(&dir, cap, &later_meta, false));
    let data = dir.join("ring.data");
    let read = best(|| read_through(&data));
    let [power_loss_uncached, read_uncached] =
        side_by_side([&mut || reopen_after_power_loss(&dir, cap, &crash_meta, true), &mut || {
            uncache(&data);
            read_through(&data)
        }]);
    Recovery { clean: reopen, crashed, power_loss, power_loss_later, read, power_loss_uncached, read_uncached }
}

/// Records per second shipped end to end through `transport`.
type Factory = Arc<dyn Fn() -> Box<dyn Transport> + Send + Sync>;

fn ship(n: u64, endpoint: &str, factory: &Factory) -> f64 {
    let d = best(|| {
        let tmp = tempfile::tempdir().unwrap();
        let r = ring(&tmp.path().join("r"), 512 << 20, SyncPolicy::Never);
        let f = Arc::clone(factory);
        let shipper = Shipper::builder(r)
            .endpoint(Endpoint::new(endpoint))
            .transport(move || f())
            .max_batch_records(1000)
            .max_batch_bytes(4 << 20)
            .linger(Duration::from_millis(1))
            .start()
            .unwrap();
        let p = [7u8; 128];
        let batch = vec![&p[..]; 1000];
        let start = Instant::now();
        for _ in 0..n / 1000 {
            shipper.append_batch(&batch).unwrap();
        }
        while shipper.stats().ring.acked < n {
            std::thread::sleep(Duration::from_micros(200));
        }
        start.elapsed()
    });
    n as f64 / d.as_secs_f64()
}

/// Loopback JetStream, file storage, one replica (one server) and three
/// (a three-node cluster): each record a message, each acknowledged.
fn nats_rows(rows: &mut Vec<Row>) {
    if !std::path::Path::new(nats::NATS_SERVER).exists() {
        assert!(std::env::var_os("CI").is_none(), "CI has nats-server");
        eprintln!("no nats-server: the NATS rows are left out");
        return;
    }
    let factory: Factory =
        Arc::new(|| Box::new(ringship::NatsTransport::new(ringship::NatsConfig::default())) as Box<dyn Transport>);
    let stream = |api: &mut nats::Api, replicas: u64| {
        api.create_stream(&serde_json::json!({
            "name": "BENCH", "subjects": ["bench.logs"], "storage": "file", "num_replicas": replicas,
            "duplicate_window": 120_000_000_000u64,
        }));
    };
    let dir = tempfile::tempdir().unwrap();
    let server = nats::NatsServer::start(dir.path(), nats::free_port(), true);
    stream(&mut nats::Api::connect(server.port), 1);
    let one = ship(200_000, &format!("nats://{}/bench.logs", server.url()), &factory);
    rows.push(Row {
        scenario: "end to end, loopback NATS JetStream (file, 1 replica), 1000 x 128 B batches".into(),
        ours: format!("{one:.0} rec/s"),
        theirs: "100000 rec/s".into(),
        ratio: one / 1e5,
        target: ">= 1.0".into(),
        met: Some(one >= 1e5),
    });
    drop(server);
    let cluster = nats::NatsServer::cluster(dir.path());
    stream(&mut nats::Api::connect(cluster[0].port), 3);
    let urls: Vec<String> = cluster.iter().map(nats::NatsServer::url).collect();
    let three = ship(200_000, &format!("nats://{}/bench.logs", urls.join(",")), &factory);
    rows.push(Row {
        scenario: "end to end, loopback NATS JetStream (file, 3 replicas), 1000 x 128 B batches".into(),
        ours: format!("{three:.0} rec/s"),
        theirs: "(reported)".into(),
        ratio: three / 1e5,
        target: "-".into(),
        met: None,
    });
}

/// A send that hangs until cancelled.
struct Hang;
impl Transport for Hang {
    fn send(&mut self, _: &Endpoint, _: &Batch, ctx: &SendContext) -> Result<(), SendError> {
        ctx.wait_cancelled(ctx.remaining());
        Err(SendError::cancelled())
    }
}

/// `switch_endpoint` latency while `producers` threads append through the
/// same shipper at full speed (and a send hangs, so the ring overflows).
fn switch_latency_under_load(n: usize, producers: usize) -> (Duration, Duration, Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let shipper = hanging_shipper(&tmp.path().join("r"), 64 << 20);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut lat = std::thread::scope(|s| {
        for _ in 0..producers {
            s.spawn(|| {
                let p = [7u8; 100];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    shipper.append(&p).unwrap();
                }
            });
        }
        std::thread::sleep(Duration::from_millis(100));
        let lat: Vec<Duration> = (0..n)
            .map(|i| {
                let t = Instant::now();
                shipper.switch_endpoint(Endpoint::new(if i % 2 == 0 { "a" } else { "b" })).unwrap();
                let d = t.elapsed();
                std::thread::sleep(Duration::from_micros(50));
                d
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        lat
    });
    lat.sort_unstable();
    (lat[n / 2], lat[n * 99 / 100], lat[n - 1])
}

/// A shipper of a `cap`-byte ring whose every send hangs until cancelled.
fn hanging_shipper(dir: &std::path::Path, cap: u64) -> Shipper {
    Shipper::builder(ring(dir, cap, SyncPolicy::Never))
        .endpoint(Endpoint::new("hang"))
        .transport(|| Box::new(Hang) as Box<dyn Transport>)
        .send_timeout(Duration::from_secs(60))
        .start()
        .unwrap()
}

fn switch_latency(n: usize) -> (Duration, Duration, Duration) {
    let tmp = tempfile::tempdir().unwrap();
    let shipper = hanging_shipper(&tmp.path().join("r"), 1 << 20);
    shipper.append(b"x").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let mut lat: Vec<Duration> = (0..n)
        .map(|i| {
            let t = Instant::now();
            shipper.switch_endpoint(Endpoint::new(if i % 2 == 0 { "a" } else { "b" })).unwrap();
            t.elapsed()
        })
        .collect();
    lat.sort_unstable();
    (lat[n / 2], lat[n * 99 / 100], lat[n - 1])
}

fn rss_child(mib: u64, mapped: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let r = ring_with(&tmp.path().join("r"), mib << 20, SyncPolicy::Never, mapped);
    let p = vec![7u8; 1024];
    let batch = vec![&p[..]; 256];
    for _ in 0..((mib << 20) / 1056 / 256 + 4) {
        r.append_batch(&batch).unwrap();
    }
    let mut from = 1;
    loop {
        let b = r.read(from, 1000, 1 << 20).unwrap();
        if b.is_empty() {
            break;
        }
        from = b.next_seq;
    }
    r.close().unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status.lines().find(|l| l.starts_with("VmHWM")).unwrap_or("VmHWM: 0 kB");
    println!("{hwm}");
}

fn http_sink() -> (u16, Arc<AtomicBool>) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let mut sink = Vec::new();
            let _ = req.as_reader().read_to_end(&mut sink);
            let _ = req.respond(tiny_http::Response::empty(200));
        }
    });
    (port, stop)
}

/// A throughput row: `ours` against `theirs` (durations of the same work),
/// met at `target` or above (`None`: for information).
fn row(scenario: String, unit: (f64, &str), ours: Duration, theirs: Duration, target: Option<f64>) -> Row {
    let (work, label) = unit;
    let ratio = theirs.as_secs_f64() / ours.as_secs_f64();
    Row {
        scenario,
        ours: format!("{:.0} {label}", work / ours.as_secs_f64()),
        theirs: format!("{:.0} {label}", work / theirs.as_secs_f64()),
        ratio,
        target: target.map_or_else(|| "(info)".into(), |t| format!(">= {t:.2}")),
        met: target.map(|t| ratio >= t),
    }
}

/// Appends, judged against the least their promise costs: on the default
/// path a `pwrite` per record from as many threads (a record must be in
/// the kernel when `append` returns, or `kill -9` would lose it), with
/// mapped writes a 64 KiB `BufWriter` (a store into a shared map is a
/// memory copy). The `BufWriter` column of the default path is for
/// information: it loses up to 64 KiB on `kill -9`.
fn append_rows(rows: &mut Vec<Row>, n: u64) {
    for len in [128usize, 1024] {
        let mb = (n * frame_len(len) as u64) as f64 / 1e6;
        let unit = (mb, "MB/s");
        let mut info = Vec::new();
        for threads in [1, 4] {
            let producers = if threads > 1 { "producers" } else { "producer" };
            let [ours, limit, buffered] = side_by_side([
                &mut || append_threads(n, len, threads, SyncPolicy::Never, 512 << 20, false),
                &mut || raw_pwrite(n, len, threads),
                &mut || raw_buffered(n, len),
            ]);
            let what = format!("append {len} B, {threads} {producers}, Never, pwrite");
            rows.push(row(format!("{what} (vs raw pwrite per record)"), unit, ours, limit, Some(0.9)));
            info.push(row(format!("{what} (vs raw buffered write)"), unit, ours, buffered, None));
        }
        for threads in [1, 4] {
            let producers = if threads > 1 { "producers" } else { "producer" };
            let [ours, buffered] = side_by_side([
                &mut || append_threads(n, len, threads, SyncPolicy::Never, 512 << 20, true),
                &mut || raw_buffered(n, len),
            ]);
            let scenario =
                format!("append {len} B, {threads} {producers}, Never, mapped writes (vs raw buffered write)");
            rows.push(row(scenario, unit, ours, buffered, Some(0.7)));
        }
        for mapped in [false, true] {
            let how = if mapped { "mapped writes" } else { "pwrite" };
            let target = mapped.then_some(0.7);
            let [ours, buffered] =
                side_by_side([&mut || append_batches(n, len, 64, mapped), &mut || raw_buffered(n, len)]);
            let scenario = format!("append_batch of 64 x {len} B, Never, {how} (vs raw buffered write)");
            rows.push(row(scenario, unit, ours, buffered, target));
            let [ours, buffered] = side_by_side([&mut || append_full(n, len, mapped), &mut || raw_buffered(n, len)]);
            let scenario =
                format!("append {len} B into a full ring (each evicts), Never, {how} (vs raw buffered write)");
            rows.push(row(scenario, unit, ours, buffered, target));
        }
        rows.append(&mut info);
    }
}

/// Durability: a flusher against a write and fdatasync per batch, and a
/// `sync()` per batch against the same.
fn sync_rows(rows: &mut Vec<Row>) {
    let (batches, batch) = (3000u64, 64usize);
    // The flusher fsyncs several times during the run.
    let [ours, raw] = side_by_side([
        &mut || ringship_batches(batches, batch, 128, SyncPolicy::Interval(Duration::from_millis(10)), false),
        &mut || raw_fdatasync(batches, batch, 128),
    ]);
    let unit = ((batches * batch as u64) as f64, "rec/s");
    let scenario = format!("{batch} x 128 B batches, Interval 10 ms (vs raw write + fdatasync per batch)");
    rows.push(row(scenario, unit, ours, raw, Some(0.7)));
    let batches = 300;
    let [ours, raw] =
        side_by_side([&mut || ringship_batches(batches, batch, 128, SyncPolicy::Never, true), &mut || {
            raw_fdatasync(batches, batch, 128)
        }]);
    let unit = ((batches * batch as u64) as f64, "rec/s");
    let scenario = format!("{batch} x 128 B then sync, each batch durable (vs raw write + one fdatasync)");
    rows.push(row(scenario, unit, ours, raw, Some(0.9)));
}

/// Group commit against a raw group-commit program, the peers, and a
/// durable append against a write and fdatasync per record.
fn peer_rows(rows: &mut Vec<Row>, n: u64) {
    let na = 1_000u64;
    let [one, four, raw_one, raw_four] = side_by_side([
        &mut || append_threads(na, 128, 1, SyncPolicy::Always, 64 << 20, false),
        &mut || append_threads(na * 4, 128, 4, SyncPolicy::Always, 64 << 20, false),
        &mut || raw_group_commit(na, 1),
        &mut || raw_group_commit(na * 4, 4),
    ]);
    let rate = |records: u64, d: Duration| records as f64 / d.as_secs_f64();
    let ours = rate(na * 4, four) / rate(na, one);
    let raw = rate(na * 4, raw_four) / rate(na, raw_one);
    rows.push(Row {
        scenario: "Always, 4 producers vs 1 (vs the same of a raw group-commit program)".into(),
        ours: format!("{ours:.2} x ({:.0} rec/s)", rate(na * 4, four)),
        theirs: format!("{raw:.2} x ({:.0} rec/s)", rate(na * 4, raw_four)),
        ratio: ours / raw,
        target: ">= 1.00".into(),
        met: Some(ours >= raw),
    });
    for mapped in [false, true] {
        let [ours, qf, yq] = side_by_side([
            &mut || append_threads(n, 128, 1, SyncPolicy::Never, 512 << 20, mapped),
            &mut || queue_file(n, 128, false),
            &mut || yaque(n, 128),
        ]);
        let how = if mapped { "mapped writes" } else { "pwrite" };
        let target = if mapped { 2.0 } else { 1.0 };
        let scenario = format!("append 128 B, no fsync, {how} (vs yaque)");
        rows.push(row(scenario, (n as f64, "rec/s"), ours, yq, Some(target)));
        let scenario = format!("append 128 B, no fsync, {how} (vs queue-file)");
        rows.push(row(scenario, (n as f64, "rec/s"), ours, qf, None));
    }
    let [ours, limit, qf] = side_by_side([
        &mut || append_threads(na, 128, 1, SyncPolicy::Always, 64 << 20, false),
        &mut || raw_fdatasync(na, 1, 128),
        &mut || queue_file(na, 128, true),
    ]);
    let unit = (na as f64, "rec/s");
    let scenario = "append 128 B, Always, 1 producer (vs raw write + fdatasync per record)".to_owned();
    rows.push(row(scenario, unit, ours, limit, Some(0.95)));
    rows.push(row("append 128 B, fsync each (vs queue-file sync_writes)".into(), unit, ours, qf, None));
}

fn main() {
    if let Ok(mib) = std::env::var("RINGSHIP_BENCH_RSS_CHILD") {
        rss_child(mib.parse().unwrap(), std::env::var_os("RINGSHIP_BENCH_RSS_MAPPED").is_some());
        return;
    }
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` and criterion-style probes
    }
    let ring_mib: u64 = std::env::var("RINGSHIP_BENCH_RING_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(256);
    // RINGSHIP_BENCH_ONLY=recovery,peers runs only the named groups (append,
    // sync, peers, read, recovery, ship, switch, rss).
    let only = std::env::var("RINGSHIP_BENCH_ONLY").unwrap_or_default();
    let want = |group: &str| only.is_empty() || only.split(',').any(|g| g.trim() == group);
    let mut rows = Vec::new();
    let n = 200_000u64;

    if want("append") {
        append_rows(&mut rows, n);
    }

    if want("sync") {
        sync_rows(&mut rows);
    }

    if want("peers") {
        peer_rows(&mut rows, n);
    }

    if want("read") {
        let d = read_ack(n);
        rows.push(Row {
            scenario: "read + ack, batches of 1000 x 128 B".into(),
            ours: format!("{:.0} rec/s", n as f64 / d.as_secs_f64()),
            theirs: "-".into(),
            ratio: f64::NAN,
            target: "-".into(),
            met: None,
        });
    }

    if want("recovery") {
        let r = recovery(ring_mib);
        let (cached, uncached) = ("sequential read", "sequential read, nothing cached");
        for (how, took, read, vs) in [
            ("clean close", r.clean, r.read, cached),
            ("process crash", r.crashed, r.read, cached),
            ("power loss", r.power_loss, r.read, cached),
            ("power loss, 10,000 appends and an ack after the last fsync", r.power_loss_later, r.read, cached),
            ("power loss, nothing cached", r.power_loss_uncached, r.read_uncached, uncached),
        ] {
            rows.push(Row {
                scenario: format!("reopen of a full {ring_mib} MiB ring after a {how} (vs {vs})"),
                ours: format!("{:.1} ms", took.as_secs_f64() * 1e3),
                theirs: format!("{:.0} ms", read.as_secs_f64() * 1e3),
                ratio: took.as_secs_f64() / read.as_secs_f64(),
                target: "<= 2.0 x".into(),
                met: Some(took.as_secs_f64() / read.as_secs_f64() <= 2.0),
            });
        }
    }

    if want("ship") {
        let counting = MemoryReceiver::counting();
        let mem_factory: Factory = Arc::new(move || Box::new(counting.transport()) as Box<dyn Transport>);
        let mem = ship(1_000_000, "mem", &mem_factory);
        rows.push(Row {
            scenario: "end to end, in-memory transport, 1000 x 128 B batches".into(),
            ours: format!("{mem:.0} rec/s"),
            theirs: "1000000 rec/s".into(),
            ratio: mem / 1e6,
            target: ">= 1.0".into(),
            met: Some(mem >= 1e6),
        });
        let (port, _stop) = http_sink();
        let url = format!("http://127.0.0.1:{port}/ingest");
        let http_factory: Factory = Arc::new(|| {
            Box::new(HttpTransport::new(HttpConfig::default().format(BodyFormat::LengthPrefixed))) as Box<dyn Transport>
        });
        let http = ship(200_000, &url, &http_factory);
        rows.push(Row {
            scenario: "end to end, loopback HTTP, 1000 x 128 B batches".into(),
            ours: format!("{http:.0} rec/s"),
            theirs: "300000 rec/s".into(),
            ratio: http / 3e5,
            target: ">= 1.0".into(),
            met: Some(http >= 3e5),
        });
        // The same sink answers 200 with an empty body: an OTLP success.
        let otlp_factory: Factory =
            Arc::new(|| Box::new(ringship::OtlpTransport::new(ringship::OtlpConfig::default())) as Box<dyn Transport>);
        let otlp = ship(200_000, &url.replace("/ingest", "/v1/logs"), &otlp_factory);
        rows.push(Row {
            scenario: "end to end, loopback OTLP/HTTP (protobuf), 1000 x 128 B batches".into(),
            ours: format!("{otlp:.0} rec/s"),
            theirs: "300000 rec/s".into(),
            ratio: otlp / 3e5,
            target: ">= 1.0".into(),
            met: Some(otlp >= 3e5),
        });
        nats_rows(&mut rows);
    }

    if want("switch") {
        // p50 / p99 / max in microseconds.
        let micros = |(p50, p99, max): (Duration, Duration, Duration)| {
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            (format!("{:.1} / {:.1} / {:.0} us", us(p50), us(p99), us(max)), us(p99), us(max))
        };
        let (ours, p99, _) = micros(switch_latency(20_000));
        rows.push(Row {
            scenario: "switch_endpoint while a send hangs (p50 / p99 / max)".into(),
            ours,
            theirs: "p99 100 us".into(),
            ratio: p99 / 100.0,
            target: "<= 1.0".into(),
            met: Some(p99 < 100.0),
        });
        let (ours, p99, max) = micros(switch_latency_under_load(20_000, 3));
        rows.push(Row {
            scenario: "switch_endpoint, 3 producers appending through the shipper (p50 / p99 / max)".into(),
            ours,
            theirs: "p99 100 us, max 1 ms".into(),
            ratio: p99 / 100.0,
            target: "<= 1.0, max <= 1 ms".into(),
            met: Some(p99 < 100.0 && max < 1000.0),
        });
    }

    if want("rss") {
        for mapped in [false, true] {
            let mut child = std::process::Command::new(std::env::current_exe().unwrap());
            child.env("RINGSHIP_BENCH_RSS_CHILD", ring_mib.to_string());
            if mapped {
                child.env("RINGSHIP_BENCH_RSS_MAPPED", "1");
            }
            let out = child.output().unwrap();
            let hwm_kb: u64 = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let how = if mapped { "mapped writes" } else { "pwrite" };
            rows.push(Row {
                scenario: format!("peak resident memory, full {ring_mib} MiB ring written and read, {how}"),
                ours: format!("{:.1} MiB", hwm_kb as f64 / 1024.0),
                theirs: "32 MiB".into(),
                ratio: hwm_kb as f64 / 1024.0 / 32.0,
                target: "<= 1.0".into(),
                met: Some(hwm_kb < 32 * 1024),
            });
        }
    }

    println!();
    println!("| scenario | ringship | baseline / peer | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        let ratio = if r.ratio.is_nan() { "-".to_owned() } else { format!("{:.2}", r.ratio) };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.ours,
            r.theirs,
            ratio,
            r.target,
            match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            }
        );
    }
}
