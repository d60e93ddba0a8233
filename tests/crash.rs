//! Crash test: a child process appends, syncs, reads and acks at full
//! speed and is killed with SIGKILL at random moments. After each kill the
//! parent reopens the ring and checks I1-I4: seqs continue, the accounting
//! identity holds, every record the child saw reported durable is present
//! byte-exact or counted as overwritten (or was acked), and every record
//! read back has exactly the bytes appended for its seq.
//!
//! The test binary plays both parts: run with `RINGSHIP_CRASH_CHILD=<dir>`
//! it becomes the child.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TempRing, assert_identity};
use ringship::{LossCause, Ring, RingConfig, SyncPolicy};

const CHILD_ENV: &str = "RINGSHIP_CRASH_CHILD";
/// Set for a child of the test with mapped writes.
const MAPPED_ENV: &str = "RINGSHIP_CRASH_MAPPED";
/// How many threads of a child append (1 unless set).
const THREADS_ENV: &str = "RINGSHIP_CRASH_THREADS";

fn config(mapped: bool) -> RingConfig {
    RingConfig::default()
        .capacity(64 << 10)
        .max_record_len(512)
        .sync(SyncPolicy::Interval(Duration::from_millis(3)))
        .mapped_writes(mapped)
}

/// The payload for a seq, so the parent can check bytes without a log.
fn payload_for(seq: u64) -> Vec<u8> {
    let len = 16 + (seq.wrapping_mul(7919) % 300) as usize;
    let mut p = seq.to_le_bytes().to_vec();
    p.resize(len, (seq % 251) as u8);
    p
}

/// A payload that names itself: `v`, then bytes derived from it. Appends
/// from several threads cannot know their seqs beforehand; the parent
/// checks each record's bytes against its own first eight.
fn self_payload(v: u64) -> Vec<u8> {
    let mut p = v.to_le_bytes().to_vec();
    p.resize(16 + (v.wrapping_mul(7919) % 300) as usize, (v % 251) as u8);
    p
}

/// Whether `p` holds the bytes appended for `seq`.
fn bytes_ok(seq: u64, p: &[u8], threads: u64) -> bool {
    if threads > 1 {
        p.len() >= 8 && p == self_payload(u64::from_le_bytes(p[..8].try_into().unwrap()))
    } else {
        p == payload_for(seq)
    }
}

/// A child whose `threads` threads append at once, writing their frames
/// side by side (appends write outside the ring's lock); the first also
/// syncs, reads and acks. Works until killed, reporting what it was told.
fn threaded_child(dir: &Path, mapped: bool, threads: u64) -> ! {
    let (ring, _) = Ring::open(dir, config(mapped)).expect("child open");
    let ring = Arc::new(ring);
    writeln!(std::io::stdout().lock(), "READY").unwrap();
    for t in 1..threads {
        let ring = Arc::clone(&ring);
        std::thread::spawn(move || {
            for round in 0u64.. {
                let batch: Vec<Vec<u8>> = (0..=round % 4).map(|i| self_payload(t << 40 | round << 3 | i)).collect();
                let (_, last) = ring.append_batch(&batch).expect("append");
                writeln!(std::io::stdout().lock(), "S {last}").unwrap();
            }
        });
    }
    for round in 0u64.. {
        let last = ring.append(&self_payload(round << 3)).expect("append");
        writeln!(std::io::stdout().lock(), "S {last}").unwrap();
        if round % 8 == 0 {
            let durable = ring.sync().expect("sync");
            writeln!(std::io::stdout().lock(), "D {durable}").unwrap();
        }
        if round % 3 == 0 {
            let from = ring.stats().ack_seq + 1;
            let b = ring.read(from, 20, 4096).expect("read");
            for r in &b.records {
                assert!(bytes_ok(r.seq, &r.payload, threads), "child read wrong bytes");
            }
            if let Some(r) = b.records.last() {
                ring.ack(r.seq).expect("ack");
                writeln!(std::io::stdout().lock(), "A {}", r.seq).unwrap();
            }
        }
    }
    unreachable!("the child works until killed")
}

/// The child: works until killed, reporting what it was told.
fn child(dir: &Path, mapped: bool) -> ! {
    let (ring, _) = Ring::open(dir, config(mapped)).expect("child open");
    let out = std::io::stdout();
    let mut next = ring.stats().last_seq + 1;
    writeln!(out.lock(), "READY").unwrap();
    let mut round = 0u64;
    loop {
        round += 1;
        let k = 1 + (round % 16);
        let batch: Vec<Vec<u8>> = (next..next + k).map(payload_for).collect();
        let (first, last) = ring.append_batch(&batch).expect("append");
        assert_eq!(first, next);
        next = last + 1;
        writeln!(out.lock(), "S {last}").unwrap();
        if round % 8 == 0 {
            let durable = ring.sync().expect("sync");
            writeln!(out.lock(), "D {durable}").unwrap();
        }
        if round % 3 == 0 {
            let from = ring.stats().ack_seq + 1;
            let b = ring.read(from, 20, 4096).expect("read");
            for r in &b.records {
                assert_eq!(r.payload[..], payload_for(r.seq)[..], "child read wrong bytes");
            }
            if let Some(r) = b.records.last() {
                ring.ack(r.seq).expect("ack");
                writeln!(out.lock(), "A {}", r.seq).unwrap();
            }
        }
    }
}

#[derive(Default, Debug)]
struct Reported {
    appended: u64,
    durable: u64,
    acked: u64,
}

fn check_after_kill(dir: &Path, rep: &Reported, kill: u32, mapped: bool, threads: u64) {
    let (ring, report) = Ring::open(dir, config(mapped)).unwrap_or_else(|e| panic!("kill {kill}: reopen failed: {e}"));
    let s = ring.stats();
    assert_identity(&s);
    assert!(s.last_seq >= rep.appended, "kill {kill}: I1 seq went back: {s:?} {rep:?}");
    assert!(s.ack_seq >= rep.acked, "kill {kill}: acked cursor went back: {s:?} {rep:?}");
    assert_eq!(
        (s.corrupted, s.lost_unsynced),
        (0, 0),
        "kill {kill}: a process crash damaged nothing: {report:?} {rep:?} {s:?}"
    );
    assert_eq!(report.damaged_records, 0, "kill {kill}");
    let batch = ring.read(1, usize::MAX, usize::MAX).unwrap();
    for r in &batch.records {
        assert!(bytes_ok(r.seq, &r.payload, threads), "kill {kill}: I4 wrong bytes for seq {}", r.seq);
    }
    let oldest_present = batch.records.first().map_or(s.last_seq + 1, |r| r.seq);
    // I3: everything reported durable is present, acked, or counted overwritten.
    let seqs: std::collections::HashSet<u64> = batch.records.iter().map(|r| r.seq).collect();
    let losses = ring.losses();
    let overwritten =
        |seq: u64| losses.iter().any(|l| l.cause == LossCause::Overwritten && l.first_seq <= seq && seq <= l.last_seq);
    // Seqs passed over at an earlier reopen, since an unclean shutdown may
    // have handed them out, are not records.
    let skipped =
        |seq: u64| losses.iter().any(|l| l.cause == LossCause::Skipped && l.first_seq <= seq && seq <= l.last_seq);
    for seq in oldest_present..=rep.durable {
        assert!(seqs.contains(&seq) || seq <= s.ack_seq || skipped(seq), "kill {kill}: durable seq {seq} missing");
    }
    for seq in (s.ack_seq + 1)..oldest_present.min(rep.durable + 1) {
        assert!(overwritten(seq) || skipped(seq), "kill {kill}: durable seq {seq} gone but not counted overwritten");
    }
    // Pending records are all readable: nothing silently dropped.
    assert_eq!(seqs.iter().filter(|&&q| q > s.ack_seq).count() as u64, s.pending, "kill {kill}");
    // I1: the next seq follows the last one.
    assert_eq!(ring.append(&payload_for(s.last_seq + 1)).unwrap(), s.last_seq + 1);
    ring.close().unwrap();
}

#[test]
fn sigkill_at_random_moments() {
    kill_repeatedly("sigkill_at_random_moments", 200, false, 1);
}

/// Four threads appending at once: a kill often comes between one append
/// reserving its span and writing it while a later append wrote its
/// frames. Nothing counts as damaged; the span left unwritten (its append
/// never returned) is skipped.
#[test]
fn sigkill_with_four_threads_appending() {
    kill_repeatedly("sigkill_with_four_threads_appending", 150, false, 4);
}

/// The same with `RingConfig::with_mapped_writes`: records copied into the
/// shared map survive `kill -9` as `pwrite`'s do.
#[test]
fn sigkill_at_random_moments_with_mapped_writes() {
    kill_repeatedly("sigkill_at_random_moments_with_mapped_writes", 100, true, 1);
}

/// The two tests take turns: run side by side, one test's fork can
/// briefly hold a duplicate of the other's lock-file descriptor (between
/// fork and exec), and the other's next child would find its ring `Locked`.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Starts a child working on one ring `kills` times, SIGKILLs it at a
/// random moment and checks the ring after each kill.
fn kill_repeatedly(test: &str, kills: u32, mapped: bool, threads: u64) {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let mapped = std::env::var_os(MAPPED_ENV).is_some_and(|v| v == "1");
        let threads = std::env::var(THREADS_ENV).ok().and_then(|t| t.parse().ok()).unwrap_or(1);
        if threads > 1 {
            threaded_child(Path::new(&dir), mapped, threads);
        }
        child(Path::new(&dir), mapped);
    }
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let t = TempRing::new();
    let exe = std::env::current_exe().unwrap();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let start = Instant::now();
    let mut reported = Reported::default();
    for kill in 0..kills {
        let mut child = Command::new(&exe)
            .args(["--exact", test, "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, &t.dir)
            .env(MAPPED_ENV, if mapped { "1" } else { "" })
            .env(THREADS_ENV, threads.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let shared = Arc::new(Mutex::new(Reported {
            appended: reported.appended,
            durable: reported.durable,
            acked: reported.acked,
        }));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    // libtest's "test name ... " may precede the first line.
                    let line = line.rsplit(" ... ").next().unwrap_or_default();
                    let mut r = shared.lock().unwrap();
                    let mut parts = line.split_whitespace();
                    let (Some(tag), value) = (parts.next(), parts.next().and_then(|v| v.parse::<u64>().ok())) else {
                        continue;
                    };
                    match (tag, value) {
                        ("READY", _) => {
                            let _ = ready_tx.send(());
                        }
                        ("S", Some(v)) => r.appended = r.appended.max(v),
                        ("D", Some(v)) => r.durable = r.durable.max(v),
                        ("A", Some(v)) => r.acked = r.acked.max(v),
                        _ => {}
                    }
                }
            })
        };
        if ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("kill {kill}: child never became ready: {}", String::from_utf8_lossy(&out.stderr));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(1 + rng % 40));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        reader.join().unwrap();
        // A child's failed check panics (exit code 101): only SIGKILL ends it.
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "kill {kill}: the child ended on its own ({status})"
        );
        reported = std::mem::take(&mut *shared.lock().unwrap());
        check_after_kill(&t.dir, &reported, kill, mapped, threads);
    }
    eprintln!(
        "crash test{}: {kills} SIGKILLs in {:.1?}; last seq reported appended {}, durable {}, acked {}",
        if mapped { " (mapped writes)" } else { "" },
        start.elapsed(),
        reported.appended,
        reported.durable,
        reported.acked
    );
    assert!(reported.acked > 0 && reported.durable > 0);
}
