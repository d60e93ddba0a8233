//! `ringship inspect`: an operator's view of a ring directory, read-only
//! (feature `inspect`, the `ringship` binary). docs/INSPECT.md has the
//! commands, their output and exit statuses.
//!
//! The ring is recovered in memory exactly as an open would (the same
//! code), from files opened read-only, without the directory's lock: it
//! works while the owning service runs and on a copy taken off a broken
//! machine, and writes nothing.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::ring::Inspection;
use crate::{Error, LossCause, LossRange, RingStats};

/// Exit status: damage found (`verify`).
pub const EXIT_DAMAGE: i32 = 1;
/// Exit status: not a ring, unreadable, or a bad command line.
pub const EXIT_UNUSABLE: i32 = 2;

#[derive(Parser)]
#[command(name = "ringship", version, about = "Look at a ringship ring directory, read-only")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every counter, position and loss range of a ring.
    Stat {
        /// The ring's directory.
        dir: PathBuf,
        /// One JSON object.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Prometheus text (for `node_exporter`'s textfile collector).
        #[arg(long)]
        prometheus: bool,
    },
    /// Checks every record's checksum and the checkpoint slots, changing
    /// nothing: exit 0 clean, 1 damage found, 2 not a ring or unreadable.
    Verify {
        /// The ring's directory.
        dir: PathBuf,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The records, oldest first, and the gaps between them with their
    /// causes.
    Dump {
        /// The ring's directory.
        dir: PathBuf,
        /// The first seq to show.
        #[arg(long)]
        from: Option<u64>,
        /// The last seq to show.
        #[arg(long)]
        to: Option<u64>,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
}

/// Runs the tool on `args` (the program name first), writing to stdout and
/// stderr; returns the exit status.
#[doc(hidden)]
pub fn main(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_UNUSABLE } else { 0 };
        }
    };
    let mut out = std::io::stdout().lock();
    let result = match cli.command {
        Command::Stat { dir, json, prometheus } => stat(&dir, json, prometheus, &mut out),
        Command::Verify { dir, json } => verify(&dir, json, &mut out),
        Command::Dump { dir, from, to, json } => dump(&dir, from, to, json, &mut out),
    };
    match result {
        Ok(status) => status,
        Err(message) => {
            // A closed pipe (`| head`) is no error of the ring's.
            if !message.is_empty() {
                eprintln!("ringship: {message}");
            }
            EXIT_UNUSABLE
        }
    }
}

/// The ring, or one line saying why it cannot be looked at.
fn open(dir: &Path) -> Result<Inspection, String> {
    Inspection::open(dir).map_err(|e| match e {
        Error::NotARing { path, reason } => format!("{} is not a ringship ring: {reason}", path.display()),
        Error::UnsupportedVersion { path, found, supported } => format!(
            "{} is a ringship ring of format version {found}; this ringship reads version {supported}",
            path.display()
        ),
        other => other.to_string(),
    })
}

/// Whether another process holds the directory's lock (the owner is
/// running), from `/proc/locks`: taking the lock, even for a moment,
/// could make the owner's own open fail.
fn owner_running(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::metadata(dir.join("ring.lock")) else { return false };
    let Ok(locks) = std::fs::read_to_string("/proc/locks") else { return false };
    let dev = meta.dev();
    let (major, minor) = (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff), (dev & 0xff) | ((dev >> 12) & !0xff));
    let id = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    locks.lines().any(|l| l.split_whitespace().any(|field| field == id))
}

fn write_failed(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::BrokenPipe { String::new() } else { format!("writing the output: {e}") }
}

/// Every counter of the identity, with what it means, in the order the
/// identity names them.
fn counters(s: &RingStats) -> [(&'static str, u64, &'static str); 18] {
    [
        ("appended", s.appended, "records offered to append"),
        ("acked", s.acked, "acknowledged by an endpoint"),
        ("pending", s.pending, "in the ring, not acknowledged"),
        ("overwritten", s.overwritten, "evicted before acknowledged"),
        ("rejected", s.rejected, "refused at append"),
        ("corrupted", s.corrupted, "found damaged on disk"),
        ("lost_unsynced", s.lost_unsynced, "lost to a power loss before synced"),
        ("refused", s.refused, "taken but refused by a receiver"),
        ("overwritten_bytes", s.overwritten_bytes, "payload bytes evicted unacknowledged"),
        ("rejected_reported", s.rejected_reported, "rejections a receiver was told of"),
        ("refused_reported", s.refused_reported, "refusals a receiver was told of"),
        ("seqs_skipped", s.seqs_skipped, "seqs passed over after unclean shutdowns"),
        ("last_seq", s.last_seq, "last seq handed out"),
        ("durable_seq", s.durable_seq, "every record up to it is on stable storage"),
        ("ack_seq", s.ack_seq, "delivery cursor"),
        ("used_bytes", s.used_bytes, "bytes of the ring in use"),
        ("capacity", s.capacity, "bytes of the ring"),
        ("unreadable_bytes", s.unreadable_bytes, "bytes of the files that could not be read"),
    ]
}

fn loss_json(l: &LossRange) -> serde_json::Value {
    json!({
        "first_seq": l.first_seq,
        "last_seq": l.last_seq,
        "count": l.count,
        "cause": l.cause.as_str(),
        "bytes": l.bytes,
        "first_ts": l.first_ts,
        "last_ts": l.last_ts,
        "first_time": crate::civil::rfc3339(l.first_ts, 6),
        "last_time": crate::civil::rfc3339(l.last_ts, 6),
    })
}

fn stat(dir: &Path, json: bool, prometheus: bool, out: &mut dyn std::io::Write) -> Result<i32, String> {
    let live = owner_running(dir);
    let mut ring = open(dir)?;
    // Damage the owner's recovery has not counted, seen while it writes,
    // may be a frame read mid-write: look again before showing it.
    let new_damage = |r: &Inspection| r.stats().corrupted > r.checkpoint.as_ref().map_or(0, |c| c.counts.corrupted);
    for _ in 0..3 {
        if !live || !new_damage(&ring) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        ring = open(dir)?;
    }
    let s = ring.stats();
    let losses = ring.losses();
    let r = &ring.report;
    let text = if json {
        let mut counts = serde_json::Map::new();
        for (name, value, _) in counters(&s) {
            counts.insert(name.into(), value.into());
        }
        let v = json!({
            "dir": dir.display().to_string(),
            "ring_id": format!("{:016x}", ring.id()),
            "format_version": crate::ring::meta::FORMAT_VERSION,
            "owner_running": live,
            "clean_shutdown": r.clean_shutdown,
            "identity_holds": s.identity_holds(),
            "stats": counts,
            "files": {
                "unreadable_bytes": s.unreadable_bytes,
                "damaged_checkpoint_slots": r.damaged_checkpoint_slots,
                "data_file_short": r.data_file_extended_from,
                "torn_bytes_at_head": r.torn_bytes_truncated,
            },
            "losses": losses.iter().map(loss_json).collect::<Vec<_>>(),
        });
        format!("{v}\n")
    } else if prometheus {
        prometheus_text(dir, &ring, &s, live, losses.len())
    } else {
        human_stat(dir, &ring, &s, live, &losses)
    };
    out.write_all(text.as_bytes()).map_err(|e| write_failed(&e))?;
    Ok(0)
}

fn human_stat(dir: &Path, ring: &Inspection, s: &RingStats, live: bool, losses: &[LossRange]) -> String {
    let r = &ring.report;
    let mut t = String::new();
    let _ = writeln!(t, "ring            {}", dir.display());
    let _ = writeln!(t, "id              {:016x}", ring.id());
    let _ = writeln!(t, "format          version {}", crate::ring::meta::FORMAT_VERSION);
    let owner = if live {
        "running (another process holds the directory's lock): the figures are a snapshot"
    } else {
        "not running"
    };
    let _ = writeln!(t, "owner           {owner}");
    let shutdown = if r.clean_shutdown { "clean" } else { "unclean (recovered as after a crash)" };
    let _ = writeln!(t, "last shutdown   {shutdown}");
    // Per mille, in integers: exact for any size.
    let permille = s.used_bytes.saturating_mul(1000).checked_div(s.capacity).unwrap_or(0);
    let _ = writeln!(
        t,
        "capacity        {} bytes, {} in use ({}.{} %)",
        s.capacity,
        s.used_bytes,
        permille / 10,
        permille % 10
    );
    let _ = writeln!(
        t,
        "identity        appended {} = acked {} + pending {} + overwritten {} + rejected {} + corrupted {} + lost unsynced {} + refused {}{}",
        s.appended,
        s.acked,
        s.pending,
        s.overwritten,
        s.rejected,
        s.corrupted,
        s.lost_unsynced,
        s.refused,
        if s.identity_holds() { "" } else { "  (DOES NOT HOLD)" }
    );
    let _ = writeln!(
        t,
        "seqs            last {}, durable {}, acknowledged through {}, skipped {}",
        s.last_seq, s.durable_seq, s.ack_seq, s.seqs_skipped
    );
    let _ = writeln!(
        t,
        "reported        {} of {} rejected, {} of {} refused",
        s.rejected_reported, s.rejected, s.refused_reported, s.refused
    );
    let short = r.data_file_extended_from.map_or("no".to_owned(), |len| format!("yes, {len} bytes"));
    let _ = writeln!(
        t,
        "files           {} unreadable bytes, {} damaged checkpoint slots, data file short: {short}",
        s.unreadable_bytes, r.damaged_checkpoint_slots
    );
    let _ = writeln!(t, "losses          {} ranges", losses.len());
    if !losses.is_empty() {
        let _ = writeln!(
            t,
            "  {:>12} {:>12} {:>10} {:<13} {:>12}  {:<27} to",
            "first", "last", "count", "cause", "bytes", "from"
        );
        for l in losses {
            let _ = writeln!(
                t,
                "  {:>12} {:>12} {:>10} {:<13} {:>12}  {:<27} {}",
                l.first_seq,
                l.last_seq,
                l.count,
                l.cause.as_str(),
                l.bytes,
                crate::civil::rfc3339(l.first_ts, 6),
                crate::civil::rfc3339(l.last_ts, 6)
            );
        }
    }
    t
}

fn prometheus_text(dir: &Path, ring: &Inspection, s: &RingStats, live: bool, ranges: usize) -> String {
    let r = &ring.report;
    let escape = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let labels = format!("ring=\"{:016x}\",dir=\"{}\"", ring.id(), escape(&dir.display().to_string()));
    let mut t = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(t, "# HELP ringship_inspect_{name} {help}");
        let _ = writeln!(t, "# TYPE ringship_inspect_{name} gauge");
        let _ = writeln!(t, "ringship_inspect_{name}{{{labels}}} {value}");
    };
    for (name, value, help) in counters(s) {
        gauge(name, help, value);
    }
    gauge("loss_ranges", "loss ranges kept", ranges as u64);
    gauge("damaged_checkpoint_slots", "checkpoint slots found damaged", u64::from(r.damaged_checkpoint_slots));
    gauge("clean_shutdown", "1 if the last shutdown was clean", u64::from(r.clean_shutdown));
    gauge("owner_running", "1 if another process holds the directory's lock", u64::from(live));
    t
}

/// What one full check found.
struct Check {
    stats: RingStats,
    losses: Vec<LossRange>,
    /// Records read whole.
    records: u64,
    /// Records found damaged by this check (not known before it).
    damaged_now: u64,
    damaged_slots: u8,
    unreadable: u64,
    torn: u64,
}

/// Reads every record (each checksum verified), as a reader would.
fn check(ring: &Inspection) -> Result<Check, String> {
    let before = ring.stats();
    let (mut from, mut records) = (1, 0);
    while from <= before.last_seq {
        let batch = ring.read(from, 4096, 16 << 20).map_err(|e| e.to_string())?;
        if batch.records.is_empty() {
            break;
        }
        records += batch.records.len() as u64;
        from = batch.next_seq;
    }
    let stats = ring.stats();
    Ok(Check {
        records,
        damaged_now: stats.corrupted.saturating_sub(ring.checkpoint.as_ref().map_or(0, |c| c.counts.corrupted)),
        losses: ring.losses(),
        damaged_slots: ring.report.damaged_checkpoint_slots,
        unreadable: stats.unreadable_bytes,
        torn: ring.report.torn_bytes_truncated,
        stats,
    })
}

fn verify(dir: &Path, json: bool, out: &mut dyn std::io::Write) -> Result<i32, String> {
    let live = owner_running(dir);
    let found = check(&open(dir)?)?;
    let damaged = |c: &Check| -> Vec<LossRange> {
        c.losses.iter().filter(|l| matches!(l.cause, LossCause::Corrupted | LossCause::Mixed)).copied().collect()
    };
    let mut damaged_ranges = damaged(&found);
    let found = if live && found.damaged_now > 0 {
        // The owner may have been writing what this read: damage is
        // damage only if a second look finds it too.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let again = check(&open(dir)?)?;
        let seen_again = damaged(&again);
        damaged_ranges.retain(|l| seen_again.iter().any(|a| (a.first_seq, a.last_seq) == (l.first_seq, l.last_seq)));
        let confirmed = damaged_ranges.iter().map(|l| l.count).sum::<u64>();
        Check { damaged_now: again.damaged_now.min(confirmed), ..again }
    } else {
        found
    };
    let damage = found.damaged_now > 0 || found.damaged_slots > 0 || found.unreadable > 0;
    let text = if json {
        let v = json!({
            "dir": dir.display().to_string(),
            "clean": !damage,
            "owner_running": live,
            "records_checked": found.records,
            "damaged_records_found": found.damaged_now,
            "damaged_records_known": found.stats.corrupted.saturating_sub(found.damaged_now),
            "damaged_checkpoint_slots": found.damaged_slots,
            "unreadable_bytes": found.unreadable,
            "torn_bytes_at_head": found.torn,
            "damage": damaged_ranges.iter().map(loss_json).collect::<Vec<_>>(),
        });
        format!("{v}\n")
    } else {
        let mut t = String::new();
        let verdict = if damage { "DAMAGE FOUND" } else { "clean" };
        let _ = writeln!(t, "{}: {verdict}", dir.display());
        let _ = writeln!(t, "records checked             {}", found.records);
        let _ = writeln!(t, "damaged records found now   {}", found.damaged_now);
        let _ = writeln!(t, "damaged records known       {}", found.stats.corrupted.saturating_sub(found.damaged_now));
        let _ = writeln!(t, "damaged checkpoint slots    {}", found.damaged_slots);
        let _ = writeln!(t, "unreadable bytes            {}", found.unreadable);
        if found.torn > 0 {
            let why = if live { "a write in flight" } else { "a write a crash cut short: expected after kill -9" };
            let _ = writeln!(t, "torn bytes at the head      {} ({why}; not damage)", found.torn);
        }
        for l in &damaged_ranges {
            let _ = writeln!(
                t,
                "  seqs {}..={} ({} records, {} bytes), {}, appended {} to {}",
                l.first_seq,
                l.last_seq,
                l.count,
                l.bytes,
                l.cause.as_str(),
                crate::civil::rfc3339(l.first_ts, 6),
                crate::civil::rfc3339(l.last_ts, 6)
            );
        }
        t
    };
    out.write_all(text.as_bytes()).map_err(|e| write_failed(&e))?;
    Ok(if damage { EXIT_DAMAGE } else { 0 })
}

/// A payload as one line of text: UTF-8 as it is, with control
/// characters, backslashes and bytes that are not UTF-8 escaped.
fn escaped(payload: &[u8]) -> String {
    let mut out = String::with_capacity(payload.len());
    for chunk in payload.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn dump(
    dir: &Path,
    from: Option<u64>,
    to: Option<u64>,
    json: bool,
    out: &mut dyn std::io::Write,
) -> Result<i32, String> {
    if let (Some(f), Some(t)) = (from, to) {
        if f > t {
            return Err(format!("--from {f} is after --to {t}"));
        }
    }
    let ring = open(dir)?;
    let last = ring.stats().last_seq;
    let (first, end) = (from.unwrap_or(1).max(1), to.unwrap_or(last).min(last));
    let mut out = std::io::BufWriter::new(out);
    let mut expect = first;
    let gap = |out: &mut dyn std::io::Write, a: u64, b: u64, losses: &[LossRange]| -> std::io::Result<()> {
        let causes: Vec<&str> = losses
            .iter()
            .filter(|l| l.first_seq <= b && l.last_seq >= a)
            .map(|l| l.cause.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let causes = if causes.is_empty() { vec!["acknowledged and evicted"] } else { causes };
        if json {
            writeln!(out, "{}", json!({"gap": {"first_seq": a, "last_seq": b, "count": b - a + 1, "causes": causes}}))
        } else {
            writeln!(out, "-- seqs {a}..={b} missing ({} seqs): {}", b - a + 1, causes.join(", "))
        }
    };
    let mut at = first;
    while at <= end {
        let batch = ring.read(at, 1024, 8 << 20).map_err(|e| e.to_string())?;
        let losses = ring.losses();
        let mut done = batch.records.is_empty();
        for r in &batch.records {
            if r.seq > end {
                done = true;
                break;
            }
            if r.seq > expect {
                gap(&mut out, expect, r.seq - 1, &losses).map_err(|e| write_failed(&e))?;
            }
            let line = if json {
                let mut v = json!({"seq": r.seq, "ts": r.timestamp, "time": crate::civil::rfc3339(r.timestamp, 9)});
                if let Ok(text) = std::str::from_utf8(&r.payload) {
                    v["payload"] = text.into();
                } else {
                    use base64::Engine as _;
                    v["payload_b64"] = base64::engine::general_purpose::STANDARD.encode(&r.payload).into();
                }
                v.to_string()
            } else {
                format!("{:>12}  {}  {}", r.seq, crate::civil::rfc3339(r.timestamp, 9), escaped(&r.payload))
            };
            writeln!(out, "{line}").map_err(|e| write_failed(&e))?;
            expect = r.seq + 1;
        }
        if done {
            break;
        }
        at = batch.next_seq;
    }
    if expect <= end {
        gap(&mut out, expect, end, &ring.losses()).map_err(|e| write_failed(&e))?;
    }
    out.flush().map_err(|e| write_failed(&e))?;
    Ok(0)
}
