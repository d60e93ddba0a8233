//! The syslog transports against a real rsyslogd (imtcp and imrelp) on
//! loopback ports, writing to a file: every record arrives byte-exact
//! across an endpoint switch between two rsyslogs, across rsyslog killed
//! and restarted mid-stream (RELP: nothing lost, duplicates identifiable by
//! seq), and across a ringship process killed and restarted.
//!
//! Without rsyslog (Debian: `apt-get install rsyslog rsyslog-relp`) these
//! tests print why they were skipped and pass; with
//! `RINGSHIP_REQUIRE_RSYSLOG=1` (as `.ci/run` sets) a skip is a failure.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::{TempRing, assert_identity, eventually, kill_and_restart, payload, small};
use ringship::{Endpoint, Ring, Shipper, ShipperBuilder, SyslogConfig, SyslogTransport, Tls};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
const MODULE_DIRS: [&str; 3] = ["/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib/rsyslog", "/usr/lib64/rsyslog"];

/// `Ok` if rsyslogd with imtcp and imrelp is here; otherwise why not.
fn available() -> Result<(), String> {
    if !Path::new(RSYSLOGD).exists() {
        return Err(format!("{RSYSLOGD} is not installed"));
    }
    let has = |m: &str| MODULE_DIRS.iter().any(|d| Path::new(d).join(m).exists());
    if !has("imrelp.so") || !has("imtcp.so") {
        return Err("rsyslog's imrelp/imtcp modules are not installed".into());
    }
    Ok(())
}

/// Skips the test (saying why) when rsyslog is missing, unless CI requires it.
macro_rules! require_rsyslog {
    () => {
        if let Err(why) = available() {
            if std::env::var("RINGSHIP_REQUIRE_RSYSLOG").is_ok() {
                panic!("RINGSHIP_REQUIRE_RSYSLOG is set but {why}");
            }
            eprintln!("SKIPPED: {why} (Debian: apt-get install rsyslog rsyslog-relp)");
            return;
        }
    };
}

/// Skips the test (saying why) without rsyslog's TLS driver, unless CI
/// requires it.
macro_rules! require_gtls {
    () => {
        if !MODULE_DIRS.iter().any(|d| Path::new(d).join("lmnsd_gtls.so").exists()) {
            assert!(std::env::var("RINGSHIP_REQUIRE_RSYSLOG").is_err(), "rsyslog-gnutls is not installed");
            eprintln!("SKIPPED: rsyslog's gtls driver is not installed (Debian: apt-get install rsyslog-gnutls)");
            return;
        }
    };
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An rsyslogd of our own, listening on loopback ports and writing each
/// message as `STRUCTURED-DATA|MSG` to a file.
struct Rsyslog {
    child: Child,
    dir: PathBuf,
    tcp: u16,
    relp: u16,
    /// The temporary directory, when this instance made it.
    owned_dir: Option<tempfile::TempDir>,
}

impl Rsyslog {
    fn start() -> Rsyslog {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut r = Rsyslog::start_in(&dir, free_port(), free_port());
        r.owned_dir = Some(tmp);
        r
    }

    fn start_in(dir: &Path, tcp: u16, relp: u16) -> Rsyslog {
        Rsyslog::start_with(dir, tcp, relp, None)
    }

    /// Over TLS (rsyslog's gtls driver) with the test CA's server
    /// certificate; RELP asks for a client certificate the CA issued.
    fn start_tls(pki: &Pki) -> Rsyslog {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut r = Rsyslog::start_with(&dir, free_port(), free_port(), Some(pki));
        r.owned_dir = Some(tmp);
        r
    }

    fn start_with(dir: &Path, tcp: u16, relp: u16, tls: Option<&Pki>) -> Rsyslog {
        let d = dir.display();
        let (global, imtcp, relp_tls) = match tls {
            None => (String::new(), String::new(), String::new()),
            Some(pki) => {
                let (ca, (cert, key)) = (pki.path("ca.pem"), pki.pair("server"));
                let (ca, cert, key) = (ca.display(), cert.display(), key.display());
                (
                    format!(
                        " defaultNetstreamDriver=\"gtls\" defaultNetstreamDriverCAFile=\"{ca}\" \
                         defaultNetstreamDriverCertFile=\"{cert}\" defaultNetstreamDriverKeyFile=\"{key}\""
                    ),
                    " streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=\"anon\"".to_owned(),
                    format!(
                        " tls=\"on\" tls.caCert=\"{ca}\" tls.myCert=\"{cert}\" tls.myPrivKey=\"{key}\" \
                         tls.authMode=\"certvalid\""
                    ),
                )
            }
        };
        // A direct main queue: imrelp acks a message only after omfile has
        // written it, so killing rsyslogd cannot drop an acked message from
        // an in-memory queue (the default), which would look like our loss.
        let conf = format!(
            "global(workDirectory=\"{d}\"{global})\n\
             main_queue(queue.type=\"Direct\")\n\
             module(load=\"imtcp\"{imtcp})\n\
             module(load=\"imrelp\")\n\
             input(type=\"imtcp\" port=\"{tcp}\" address=\"127.0.0.1\")\n\
             input(type=\"imrelp\" port=\"{relp}\" address=\"127.0.0.1\"{relp_tls})\n\
             template(name=\"ringship\" type=\"string\" string=\"%structured-data%|%msg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{d}/out.log\" template=\"ringship\")\n"
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).unwrap();
        let child = Command::new(RSYSLOGD)
            .args(["-n", "-f"])
            .arg(dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(dir.join("rsyslogd.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rsyslogd");
        let r = Rsyslog { child, dir: dir.to_path_buf(), tcp, relp, owned_dir: None };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", relp)).is_err() || TcpStream::connect(("127.0.0.1", tcp)).is_err() {
            assert!(Instant::now() < deadline, "rsyslogd did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    fn relp_url(&self) -> String {
        format!("relp://127.0.0.1:{}", self.relp)
    }

    fn tcp_url(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.tcp)
    }

    /// (seq, message) of every record line written so far.
    fn records(&self) -> Vec<(u64, String)> {
        let text = std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("[ringship@32473 seq=\"")?;
                let (sd, rest) = rest.split_once("]|")?;
                assert!(sd.contains(" ring=\""), "no ring id: {l}");
                Some((sd.split('"').next()?.parse().ok()?, rest.to_owned()))
            })
            .collect()
    }

    /// Each record's payload, its parts (`part="i/n"`) joined in order;
    /// a record with a part missing is left out.
    fn reassembled(&self) -> BTreeMap<u64, Vec<u8>> {
        let text = std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default();
        let mut parts: BTreeMap<u64, Vec<Option<String>>> = BTreeMap::new();
        let mut whole = BTreeMap::new();
        for l in text.lines() {
            let Some(rest) = l.strip_prefix("[ringship@32473 seq=\"") else { continue };
            let Some((sd, msg)) = rest.split_once("]|") else { continue };
            // `42" part="1/3" ring="..."` or `42" ring="..."`.
            let seq = sd.split('"').next().unwrap_or_default();
            let part = sd.split_once(" part=\"").and_then(|(_, p)| p.split('"').next());
            let Ok(seq) = seq.parse::<u64>() else { continue };
            match part.and_then(|p| p.split_once('/')) {
                None => {
                    whole.insert(seq, msg.as_bytes().to_vec());
                }
                Some((i, n)) => {
                    let (i, n): (usize, usize) = (i.parse().unwrap(), n.parse().unwrap());
                    parts.entry(seq).or_insert_with(|| vec![None; n])[i - 1] = Some(msg.to_owned());
                }
            }
        }
        for (seq, p) in parts {
            if p.iter().all(Option::is_some) {
                whole.insert(seq, p.into_iter().flatten().collect::<String>().into_bytes());
            }
        }
        whole
    }

    /// How many parts each record split in parts was sent in.
    fn part_counts(&self) -> BTreeMap<u64, usize> {
        let text = std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("[ringship@32473 seq=\"")?;
                let (seq, rest) = rest.split_once("\" part=\"")?;
                let n = rest.split_once('/')?.1.split_once('"')?.0;
                Some((seq.parse().ok()?, n.parse().ok()?))
            })
            .collect()
    }

    fn seqs(&self) -> BTreeSet<u64> {
        self.records().into_iter().map(|r| r.0).collect()
    }

    fn gap_lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("out.log")).unwrap_or_default();
        text.lines().filter(|l| l.starts_with("[ringship-gap@32473")).map(str::to_owned).collect()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.kill();
    }
}

fn builder(ring: Ring, url: &str) -> ShipperBuilder {
    builder_with(ring, url, SyslogConfig::default())
}

fn builder_with(ring: Ring, url: &str, config: SyslogConfig) -> ShipperBuilder {
    Shipper::builder(ring)
        .endpoint(Endpoint::new(url))
        .transport(SyslogTransport::factory(config).expect("valid settings"))
        .max_batch_records(100)
        .linger(Duration::from_millis(2))
        .backoff_initial(Duration::from_millis(20))
        .backoff_max(Duration::from_millis(200))
        .send_timeout(Duration::from_secs(2))
}

fn assert_exact(records: &[(u64, String)], len: usize) {
    for (seq, msg) in records {
        assert_eq!(msg.as_bytes(), &payload(*seq, len)[..], "seq {seq} arrived altered");
    }
}

#[test]
fn relp_every_record_arrives_byte_exact_across_a_switch() {
    require_rsyslog!();
    let (a, b) = (Rsyslog::start(), Rsyslog::start());
    let t = TempRing::new();
    let shipper = builder(Ring::open(&t.dir, small(1 << 20)).unwrap().0, &a.relp_url()).start().unwrap();
    for i in 1..=400 {
        shipper.append(&payload(i, 40)).unwrap();
    }
    eventually("first half acked", || shipper.stats().ring.acked == 400);
    shipper.switch_endpoint(Endpoint::new(b.relp_url())).unwrap();
    for i in 401..=800 {
        shipper.append(&payload(i, 40)).unwrap();
    }
    eventually("second half acked", || shipper.stats().ring.acked == 800);
    // RELP acks once rsyslog has the message; the file follows shortly.
    eventually("A wrote 1..=400", || a.seqs() == (1..=400).collect());
    eventually("B wrote 401..=800", || b.seqs() == (401..=800).collect());
    assert_exact(&a.records(), 40);
    assert_exact(&b.records(), 40);
    assert_identity(&shipper.stats().ring);
}

#[test]
fn octet_counted_tcp_delivers_every_record() {
    require_rsyslog!();
    let r = Rsyslog::start();
    let t = TempRing::new();
    let shipper = builder(Ring::open(&t.dir, small(1 << 20)).unwrap().0, &r.tcp_url()).start().unwrap();
    for i in 1..=500 {
        shipper.append(&payload(i, 60)).unwrap();
    }
    eventually("acked", || shipper.stats().ring.acked == 500);
    eventually("written", || r.seqs().len() == 500);
    assert_exact(&r.records(), 60);
}

#[test]
fn relp_rsyslog_killed_and_restarted_mid_stream_loses_nothing() {
    require_rsyslog!();
    let tmp = tempfile::tempdir().unwrap();
    let (tcp, relp) = (free_port(), free_port());
    let mut r = Rsyslog::start_in(tmp.path(), tcp, relp);
    let t = TempRing::new();
    let shipper = builder(Ring::open(&t.dir, small(1 << 20)).unwrap().0, &r.relp_url()).start().unwrap();
    for i in 1..=300 {
        shipper.append(&payload(i, 32)).unwrap();
    }
    eventually("some written", || !r.seqs().is_empty());
    r.kill(); // SIGKILL, mid-stream
    for i in 301..=600 {
        shipper.append(&payload(i, 32)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = Rsyslog::start_in(tmp.path(), tcp, relp);
    eventually("all acked", || shipper.stats().ring.acked == 600);
    eventually("all written", || r.seqs() == (1..=600).collect());
    let records = r.records();
    assert_exact(&records, 32);
    eprintln!("rsyslog restart: {} lines for 600 records (duplicates by seq)", records.len());
}

#[test]
fn gap_notices_reach_rsyslog() {
    require_rsyslog!();
    let r = Rsyslog::start();
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(4096)).unwrap().0;
    for i in 1..=100 {
        ring.append(&payload(i, 100)).unwrap();
    }
    let lost = ring.stats().overwritten;
    let shipper = builder(ring, &r.relp_url()).start().unwrap();
    eventually("drained", || shipper.stats().ring.pending == 0);
    eventually("gap written", || !r.gap_lines().is_empty());
    let gap = &r.gap_lines()[0];
    assert!(gap.contains(&format!("first=\"1\" last=\"{lost}\" count=\"{lost}\" cause=\"overwritten\"")), "{gap}");
    eventually("survivors written", || r.seqs() == (lost + 1..=100).collect());
}

const CHILD_ENV: &str = "RINGSHIP_RELP_CHILD";
const TOTAL: u64 = 2000;

#[test]
fn relp_ringship_killed_and_restarted_loses_nothing() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        let (dir, url) = args.split_once(' ').unwrap();
        let shipper = builder(Ring::open(dir, small(256 << 10)).unwrap().0, url).start().unwrap();
        // Records, not seqs: a reopen after a kill skips the seqs the kill
        // may have handed out.
        let stats = shipper.stats().ring;
        let mut next = stats.last_seq + 1;
        for _ in stats.appended..TOTAL {
            assert_eq!(shipper.append(&payload(next, 24)).unwrap(), next);
            next += 1;
            if next % 10 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(shipper.shutdown(Duration::from_secs(20)).unwrap().drained);
        println!("CHILD DRAINED");
        return;
    }
    require_rsyslog!();
    let r = Rsyslog::start();
    let t = TempRing::new();
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        Command::new(&exe)
            .args(["--exact", "relp_ringship_killed_and_restarted_loses_nothing", "--nocapture"])
            .env(CHILD_ENV, format!("{} {}", t.dir.display(), r.relp_url()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (kills, last_run) = kill_and_restart(spawn, &[100, 60, 60]);
    assert!(last_run.contains("CHILD DRAINED"));
    eventually("all written", || r.seqs().len() as u64 == TOTAL);
    assert_exact(&r.records(), 24);
    // Every seq missing in between was skipped after a kill, and rsyslog
    // was told so.
    let seqs: Vec<u64> = r.seqs().into_iter().collect();
    let gaps = r.gap_lines();
    let field = |g: &str, name: &str| -> u64 {
        let at = g.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
        g[at..].split('"').next().unwrap().parse().unwrap()
    };
    for w in seqs.windows(2).filter(|w| w[1] > w[0] + 1) {
        assert!(
            gaps.iter().any(|g| g.contains("cause=\"skipped\"")
                && field(g, "first") <= w[0] + 1
                && field(g, "last") + 1 >= w[1]),
            "seqs {}..{} missing without a notice: {gaps:?}",
            w[0] + 1,
            w[1]
        );
    }
    assert!(kills >= 1);
    eprintln!("{kills} SIGKILLs of ringship; {} lines for {TOTAL} records", r.records().len());
}

/// Records longer than rsyslog's default message size (8,096 bytes) arrive
/// whole, in parts, over RELP and TCP; a record whose message is exactly
/// the limit arrives as one. Sent whole, each would be truncated to 8,096
/// bytes and acknowledged (RELP), or its tail taken for further messages
/// (TCP).
#[test]
fn records_longer_than_a_syslog_message_arrive_whole_in_parts() {
    require_rsyslog!();
    let header = ringship_header_len();
    // Lengths: small, the whole limit exactly, one byte over, several parts.
    let lens = [100, 8096 - header, 8097 - header, 20_000, 50_000];
    for relp in [true, false] {
        let r = Rsyslog::start();
        let url = if relp { r.relp_url() } else { r.tcp_url() };
        let t = TempRing::new();
        let ring = Ring::open(&t.dir, small(1 << 20).max_record_len(64 << 10)).unwrap().0;
        let shipper = builder(ring, &url).start().unwrap();
        for (i, &len) in lens.iter().enumerate() {
            assert_eq!(shipper.append(&payload(i as u64 + 1, len)).unwrap(), i as u64 + 1);
        }
        eventually("acked", || shipper.stats().ring.acked == lens.len() as u64);
        shipper.shutdown(Duration::from_secs(5)).unwrap();
        eventually("every record whole", || {
            let got = r.reassembled();
            (1..=lens.len() as u64).all(|seq| got.get(&seq).is_some_and(|p| *p == payload(seq, lens[seq as usize - 1])))
        });
        // Parts for the longer ones only.
        let parts = r.part_counts();
        assert_eq!((parts.get(&1), parts.get(&2)), (None, None), "{url}: {parts:?}");
        assert_eq!(parts.get(&3), Some(&2), "{url}: {parts:?}");
    }
}

/// Header bytes of a record's message with seq 2 (one digit) as the
/// default `SyslogConfig` formats it, timestamp included.
fn ringship_header_len() -> usize {
    // The default HOSTNAME: the machine's host name, as the kernel has it.
    let host =
        std::fs::read_to_string("/proc/sys/kernel/hostname").map_or_else(|_| "-".to_owned(), |h| h.trim().to_owned());
    "<14>1 2026-12-02T14:20:00.123456Z ".len()
        + host.len()
        + " ringship - - [ringship@32473 seq=\"2\" ring=\"0123456789abcdef\"] ".len()
}

/// Syslog over TLS (RFC 5425) and RELP over TLS with a client
/// certificate, against rsyslog's gtls driver with the test CA's
/// certificates: every record byte-exact over each; RELP without a client
/// certificate delivers nothing; RELP over TLS across rsyslog killed and
/// restarted mid-stream loses nothing.
#[test]
fn syslog_and_relp_over_tls_deliver_byte_exact() {
    require_rsyslog!();
    require_gtls!();
    let pki = Pki::new();
    let r = Rsyslog::start_tls(&pki);
    let trust = Tls::default().system_roots(false).ca_file(pki.path("ca.pem")).server_name("localhost");
    let (cert, key) = pki.pair("client1");
    let config = SyslogConfig::default().tls(trust.clone().client_cert(cert, key));

    let t = TempRing::new();
    let url = format!("tls://127.0.0.1:{}", r.tcp);
    let shipper = builder_with(Ring::open(&t.dir, small(1 << 20)).unwrap().0, &url, config.clone()).start().unwrap();
    for i in 1..=300 {
        shipper.append(&payload(i, 48)).unwrap();
    }
    eventually("acked over TLS", || shipper.stats().ring.acked == 300);
    eventually("written", || r.seqs() == (1..=300).collect());
    shipper.shutdown(Duration::from_secs(2)).unwrap();

    // RELP over TLS without a client certificate: refused, nothing acked.
    let t2 = TempRing::new();
    let relp = format!("relp+tls://127.0.0.1:{}", r.relp);
    let refused =
        builder_with(Ring::open(&t2.dir, small(1 << 20)).unwrap().0, &relp, SyslogConfig::default().tls(trust))
            .start()
            .unwrap();
    refused.append(b"kept").unwrap();
    eventually("a failure", || refused.stats().send_failures >= 1);
    assert_eq!(refused.stats().ring.acked, 0);
    refused.shutdown(Duration::from_secs(2)).unwrap();

    let shipper = builder_with(Ring::open(&t.dir, small(1 << 20)).unwrap().0, &relp, config).start().unwrap();
    for i in 301..=600 {
        shipper.append(&payload(i, 48)).unwrap();
    }
    eventually("acked over RELP and TLS", || shipper.stats().ring.acked == 600);
    eventually("written", || r.seqs() == (1..=600).collect());
    assert_exact(&r.records(), 48);
    assert_identity(&shipper.stats().ring);
}

#[test]
fn relp_over_tls_rsyslog_killed_and_restarted_mid_stream_loses_nothing() {
    require_rsyslog!();
    require_gtls!();
    let pki = Pki::new();
    let tmp = tempfile::tempdir().unwrap();
    let (tcp, relp) = (free_port(), free_port());
    let mut r = Rsyslog::start_with(tmp.path(), tcp, relp, Some(&pki));
    let (cert, key) = pki.pair("client2");
    let tls =
        Tls::default().system_roots(false).ca_file(pki.path("ca.pem")).server_name("localhost").client_cert(cert, key);
    let t = TempRing::new();
    let url = format!("relp+tls://127.0.0.1:{relp}");
    let shipper = builder_with(Ring::open(&t.dir, small(1 << 20)).unwrap().0, &url, SyslogConfig::default().tls(tls))
        .start()
        .unwrap();
    for i in 1..=300 {
        shipper.append(&payload(i, 32)).unwrap();
    }
    eventually("some written", || !r.seqs().is_empty());
    r.kill();
    for i in 301..=600 {
        shipper.append(&payload(i, 32)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = Rsyslog::start_with(tmp.path(), tcp, relp, Some(&pki));
    eventually("all acked", || shipper.stats().ring.acked == 600);
    eventually("all written", || r.seqs() == (1..=600).collect());
    assert_exact(&r.records(), 32);
}
