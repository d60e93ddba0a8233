//! `ringship inspect` (the `ringship` binary) against rings the tests
//! build: cleanly closed, after `kill -9`, after a simulated power loss,
//! with flipped bits, cut short, and while another process appends at full
//! speed. Its numbers equal `Ring::stats()` and `losses()` of the same
//! ring opened afterwards; `verify` finds every flip and nothing on a clean
//! ring; nothing in the directory changes; bad input gets one line and the
//! documented exit status.
//!
//! The test binary plays the appending process too: run with
//! `RINGSHIP_INSPECT_CHILD=<dir>` it appends until killed.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use common::{TempRing, payload, small};
use ringship::sim::{Faults, SimDisk};
use ringship::{Ring, RingConfig, RingStats};
use serde_json::Value;

const CHILD_ENV: &str = "RINGSHIP_INSPECT_CHILD";

fn tool(args: &[&str], dir: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_ringship")).args(args).arg(dir).output().expect("run ringship");
    assert!(
        out.status.code().is_some(),
        "ringship {args:?} died: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// The counters `stat --json` printed, as a `RingStats` would debug-print
/// them (name, value).
fn stat_counts(dir: &Path) -> BTreeMap<String, u64> {
    let out = tool(&["stat", "--json"], dir);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v = json_of(&out);
    v["stats"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
}

fn counts_of(s: &RingStats) -> BTreeMap<String, u64> {
    [
        ("appended", s.appended),
        ("acked", s.acked),
        ("pending", s.pending),
        ("overwritten", s.overwritten),
        ("rejected", s.rejected),
        ("corrupted", s.corrupted),
        ("lost_unsynced", s.lost_unsynced),
        ("refused", s.refused),
        ("overwritten_bytes", s.overwritten_bytes),
        ("rejected_reported", s.rejected_reported),
        ("refused_reported", s.refused_reported),
        ("seqs_skipped", s.seqs_skipped),
        ("last_seq", s.last_seq),
        ("durable_seq", s.durable_seq),
        ("ack_seq", s.ack_seq),
        ("used_bytes", s.used_bytes),
        ("capacity", s.capacity),
        ("unreadable_bytes", s.unreadable_bytes),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Every file's bytes and modification time.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let m = std::fs::metadata(&p).unwrap();
            (p.clone(), (std::fs::read(&p).unwrap(), m.modified().unwrap()))
        })
        .collect()
}

/// Runs every command on `dir` and checks the tool's figures against the
/// ring opened afterwards, and that the directory did not change. Returns
/// `verify`'s exit status and JSON.
fn inspect_and_compare(dir: &Path) -> (i32, Value) {
    let before = snapshot(dir);
    let counts = stat_counts(dir);
    let losses = json_of(&tool(&["stat", "--json"], dir))["losses"].clone();
    let human = tool(&["stat"], dir);
    assert!(String::from_utf8_lossy(&human.stdout).contains("identity"), "{human:?}");
    let prom = String::from_utf8(tool(&["stat", "--prometheus"], dir).stdout).unwrap();
    assert!(prom.contains("ringship_inspect_appended{ring=\""), "{prom}");
    let verify = tool(&["verify", "--json"], dir);
    let status = verify.status.code().unwrap();
    let verified = json_of(&verify);
    let dump = tool(&["dump", "--json"], dir);
    assert_eq!(dump.status.code(), Some(0), "{}", String::from_utf8_lossy(&dump.stderr));
    assert_eq!(snapshot(dir), before, "the tool changed the directory");
    // The ring itself, opened now, says the same.
    let ring = Ring::open(dir, small(1 << 20)).unwrap().0;
    assert_eq!(counts, counts_of(&ring.stats()), "stat against Ring::stats");
    let got: Vec<(u64, u64, u64, String)> = losses
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["first_seq"].as_u64().unwrap(),
                l["last_seq"].as_u64().unwrap(),
                l["count"].as_u64().unwrap(),
                l["cause"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, u64, String)> =
        ring.losses().iter().map(|l| (l.first_seq, l.last_seq, l.count, l.cause.as_str().to_owned())).collect();
    assert_eq!(got, want, "stat against Ring::losses");
    // The dump holds each record the ring reads, byte for byte.
    let mut read = Vec::new();
    let mut from = 1;
    loop {
        let b = ring.read(from, 1000, usize::MAX).unwrap();
        if b.is_empty() {
            break;
        }
        read.extend(b.records.iter().map(|r| (r.seq, String::from_utf8(r.payload.to_vec()).unwrap())));
        from = b.next_seq;
    }
    let dumped: Vec<(u64, String)> = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Some((v["seq"].as_u64()?, v["payload"].as_str()?.to_owned()))
        })
        .collect();
    assert_eq!(dumped, read, "dump against Ring::read");
    // The damage verify found is what the reader counted.
    assert_eq!(verified["damaged_records_found"].as_u64(), Some(ring.stats().corrupted), "{verified}");
    ring.close().unwrap();
    (status, verified)
}

fn text(i: u64) -> Vec<u8> {
    payload(i, 40)
}

#[test]
fn a_clean_ring_and_one_after_a_crash_read_as_the_ring_says() {
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    for i in 1..=500 {
        ring.append(&text(i)).unwrap();
    }
    ring.ack(120).unwrap();
    ring.close().unwrap();
    let stat = json_of(&tool(&["stat", "--json"], &t.dir));
    assert_eq!(stat["clean_shutdown"], true);
    let (status, v) = inspect_and_compare(&t.dir);
    assert_eq!((status, v["clean"].as_bool()), (0, Some(true)), "{v}");

    // Dropped without close: the process's crash, as the page cache has it.
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    for i in 501..=900 {
        ring.append(&text(i)).unwrap();
    }
    drop(ring);
    let stat = json_of(&tool(&["stat", "--json"], &t.dir));
    assert_eq!(stat["clean_shutdown"], false);
    let (status, v) = inspect_and_compare(&t.dir);
    assert_eq!(status, 0, "{v}");
}

/// A ring made on the simulated disk, with a power loss that drops
/// unsynced writes, written out as a directory.
#[test]
fn a_ring_after_a_power_loss_reads_as_the_ring_says() {
    let disk = SimDisk::new(7, Faults { lose_unsynced: 1.0, ..Faults::NONE });
    let config = RingConfig::default().capacity(1 << 20);
    let ring = Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config).unwrap().0;
    for i in 1..=300 {
        ring.append(&text(i)).unwrap();
        if i == 200 {
            ring.sync().unwrap();
        }
    }
    drop(ring);
    disk.power_loss();
    let t = TempRing::new();
    std::fs::create_dir_all(&t.dir).unwrap();
    for name in ["ring.data", "ring.meta"] {
        let f = disk.file(name);
        let mut bytes = vec![0u8; usize::try_from(f.len().unwrap()).unwrap()];
        f.read_at(&mut bytes, 0).unwrap();
        std::fs::write(t.dir.join(name), bytes).unwrap();
    }
    let (status, v) = inspect_and_compare(&t.dir);
    assert_eq!(status, 0, "{v}");
    let counts = stat_counts(&t.dir);
    assert!(counts["lost_unsynced"] + counts["seqs_skipped"] > 0, "{counts:?}");
    assert_eq!(counts["pending"], 200, "the synced records survive: {counts:?}");
}

/// Bits flipped in records' payloads: `verify` exits 1 and names every
/// damaged seq; cut short, the file's missing part is damage too.
#[test]
fn verify_finds_every_flipped_record_and_a_file_cut_short() {
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    for i in 1..=400 {
        ring.append(&text(i)).unwrap();
    }
    ring.close().unwrap();
    let data = t.dir.join("ring.data");
    let mut bytes = std::fs::read(&data).unwrap();
    // Find records by their payloads, flip one bit in each of three.
    let mut flipped = Vec::new();
    for seq in [17u64, 230, 399] {
        let needle = text(seq);
        let at = bytes.windows(needle.len()).position(|w| w == &needle[..]).unwrap();
        bytes[at + 5] ^= 0x10;
        flipped.push(seq);
    }
    std::fs::write(&data, &bytes).unwrap();
    let (status, v) = inspect_and_compare(&t.dir);
    assert_eq!(status, 1, "{v}");
    let damaged: Vec<u64> = v["damage"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|d| d["first_seq"].as_u64().unwrap()..=d["last_seq"].as_u64().unwrap())
        .collect();
    assert_eq!(damaged, flipped, "{v}");
    let human = tool(&["verify"], &t.dir);
    assert_eq!(human.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&human.stdout).contains("DAMAGE FOUND"), "{human:?}");

    // A fresh ring cut to half its length.
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    for i in 1..=2000 {
        ring.append(&payload(i, 400)).unwrap();
    }
    ring.close().unwrap();
    let data = t.dir.join("ring.data");
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&data).unwrap().set_len(len / 2).unwrap();
    let before = snapshot(&t.dir);
    let out = tool(&["verify", "--json"], &t.dir);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stdout));
    let stat = json_of(&tool(&["stat", "--json"], &t.dir));
    assert_eq!(stat["files"]["data_file_short"].as_u64(), Some(len / 2), "{stat}");
    assert_eq!(snapshot(&t.dir), before, "the tool extended the file");
}

/// The child: appends at full speed until killed.
fn child(dir: &Path) -> ! {
    let ring = Ring::open(dir, small(4 << 20)).unwrap().0;
    println!("READY");
    let mut i = 0u64;
    loop {
        i += 1;
        ring.append(&text(i % 100_000 + 1)).unwrap();
    }
}

/// While another process appends at full speed (and laps the ring),
/// `verify` finds no damage, `stat` sees a consistent snapshot with the
/// owner running, and `dump` shows whole records; then the process is
/// killed, and the tool reads the ring as the ring says.
#[test]
fn the_tool_reads_a_ring_while_its_owner_appends() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
    }
    let t = TempRing::new();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "the_tool_reads_a_ring_while_its_owner_appends", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, &t.dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    // libtest's own lines may come first.
    assert!(lines.map_while(Result::ok).any(|l| l.contains("READY")), "the child never got ready");
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let out = tool(&["verify", "--json"], &t.dir);
        let v = json_of(&out);
        assert_eq!(out.status.code(), Some(0), "damage reported on a live ring: {v}");
        assert_eq!(v["owner_running"], true, "{v}");
        let stat = json_of(&tool(&["stat", "--json"], &t.dir));
        assert_eq!(
            (&stat["owner_running"], &stat["identity_holds"]),
            (&Value::Bool(true), &Value::Bool(true)),
            "{stat}"
        );
        let dump = tool(&["dump", "--json", "--from", "1", "--to", "100000"], &t.dir);
        assert_eq!(dump.status.code(), Some(0));
        for l in String::from_utf8(dump.stdout).unwrap().lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            if let (Some(seq), Some(p)) = (v["seq"].as_u64(), v["payload"].as_str()) {
                assert_eq!(p.as_bytes(), &text(seq % 100_000 + 1)[..], "seq {seq}");
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let (status, v) = inspect_and_compare(&t.dir);
    assert_eq!(status, 0, "{v}");
}

#[test]
fn bad_input_gets_one_line_and_the_documented_status() {
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    ring.append(b"x").unwrap();
    ring.close().unwrap();
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("data.bin"), b"not a ring").unwrap();
    let file = other.path().join("data.bin");
    let missing = other.path().join("missing");
    // A ring of an unknown format version: its data header says 99.
    let future = tempfile::tempdir().unwrap();
    for name in ["ring.data", "ring.meta"] {
        std::fs::copy(t.dir.join(name), future.path().join(name)).unwrap();
    }
    let mut header = std::fs::read(future.path().join("ring.data")).unwrap();
    // The version after the 8-byte magic, the CRC32C of the first 32
    // bytes at 32 (docs/FORMAT.md): a whole header, of another version.
    header[8..12].copy_from_slice(&99u32.to_le_bytes());
    let crc = crc32c::crc32c(&header[..32]);
    header[32..36].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(future.path().join("ring.data"), &header).unwrap();
    for (dir, says) in [
        (missing.as_path(), "does not exist"),
        (file.as_path(), "not a directory"),
        (other.path(), "has no ring.data"),
        (future.path(), "version 99"),
    ] {
        for cmd in ["stat", "verify", "dump"] {
            let out = tool(&[cmd], dir);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {}: {err}", dir.display());
            assert!(err.contains(says) && err.lines().count() == 1, "{cmd}: {err}");
            assert!(out.stdout.is_empty());
        }
    }
    let out = tool(&["dump", "--from", "9", "--to", "3"], &t.dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--from 9 is after --to 3") && err.lines().count() == 1, "{err}");
    let out = tool(&["frobnicate"], &t.dir);
    assert_eq!(out.status.code(), Some(2));
}
