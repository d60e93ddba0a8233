//! The syslog transport (RFC 5424 over TCP, octet counting) against a real
//! syslog-ng, a receiver with quirks of its own: it strips a message's
//! trailing line feeds. Multi-line records split into parts must come back
//! byte-exact when joined.
//!
//! syslog-ng is found through `RINGSHIP_SYSLOG_NG`, the root of an unpacked
//! `syslog-ng-core` package (Debian's conflicts with rsyslog, so `.ci/run`
//! unpacks it beside rsyslog rather than installing it). Without it the test
//! says so and passes, unless `RINGSHIP_REQUIRE_SYSLOG_NG` is set, as in CI.

mod common;

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Rng, TempRing, eventually, small};
use ringship::{Endpoint, Ring, Shipper, SyslogConfig, SyslogTransport};

/// A syslog-ng of our own on a loopback port, writing each message as
/// `SDATA|base64(MSG)`, so line breaks in a message survive the file.
struct SyslogNg {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl SyslogNg {
    /// `None` (with the reason printed) when no syslog-ng is here and none
    /// is required.
    fn start() -> Option<SyslogNg> {
        let Ok(root) = std::env::var("RINGSHIP_SYSLOG_NG") else {
            assert!(
                std::env::var_os("RINGSHIP_REQUIRE_SYSLOG_NG").is_none(),
                "RINGSHIP_REQUIRE_SYSLOG_NG is set but RINGSHIP_SYSLOG_NG names no syslog-ng"
            );
            eprintln!("no syslog-ng (set RINGSHIP_SYSLOG_NG to an unpacked syslog-ng-core): not run");
            return None;
        };
        let root = PathBuf::from(root);
        let lib = root.join("usr/lib/syslog-ng");
        // The modules sit in a folder named for the version (`3.38`).
        let version = std::fs::read_dir(&lib)
            .expect("RINGSHIP_SYSLOG_NG holds usr/lib/syslog-ng")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|n| {
                n.chars().next().is_some_and(|c| c.is_ascii_digit()) && lib.join(n).join("libafsocket.so").exists()
            })
            .expect("a syslog-ng module folder");
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let d = dir.path().display();
        let conf = format!(
            "@version: {version}\n\
             source s {{ syslog(transport(\"tcp\") port({port}) ip(\"127.0.0.1\") log-msg-size(65536)); }};\n\
             destination d {{ file(\"{d}/out.log\" template(\"$SDATA|$(base64-encode $MSG)\\n\")); }};\n\
             log {{ source(s); destination(d); }};\n"
        );
        std::fs::write(dir.path().join("syslog-ng.conf"), conf).unwrap();
        let child = Command::new(root.join("usr/sbin/syslog-ng"))
            .env("LD_LIBRARY_PATH", &lib)
            .arg("-F")
            .arg(format!("--module-path={}", lib.join(&version).display()))
            .arg("-f")
            .arg(dir.path().join("syslog-ng.conf"))
            .arg("-R")
            .arg(dir.path().join("persist"))
            .arg("-p")
            .arg(dir.path().join("pid"))
            .arg("-c")
            .arg(dir.path().join("ctl"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start syslog-ng");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "syslog-ng did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(SyslogNg { child, dir, port })
    }

    /// Records by seq, parts joined in order.
    fn reassembled(&self) -> BTreeMap<u64, Vec<u8>> {
        let text = std::fs::read_to_string(self.dir.path().join("out.log")).unwrap_or_default();
        let mut parts: BTreeMap<u64, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
        for line in text.lines() {
            let Some((sdata, msg)) = line.rsplit_once('|') else { continue };
            let Some(seq) = field(sdata, "seq") else { continue };
            let part = field(sdata, "part").unwrap_or(1);
            parts.entry(seq).or_default().insert(part, base64_decode(msg));
        }
        parts
            .into_iter()
            .filter(|(_, p)| {
                let n = p.len() as u64;
                p.keys().copied().eq(1..=n)
            })
            .map(|(seq, p)| (seq, p.into_values().flatten().collect()))
            .collect()
    }
}

impl Drop for SyslogNg {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The number in `name="N"` (or `name="N/M"`) of an SD element.
fn field(sdata: &str, name: &str) -> Option<u64> {
    let at = sdata.find(&format!(" {name}=\""))? + name.len() + 3;
    sdata[at..].split(['"', '/']).next()?.parse().ok()
}

fn line_feeds(b: &[u8]) -> usize {
    b.split(|&c| c == b'\n').count() - 1
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let v: Vec<u32> = chunk.iter().map(|&c| u32::from(value(c))).collect();
        let n = v.iter().enumerate().fold(0u32, |n, (i, &x)| n | (x << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Multi-line records of every shape that ends up split into parts whose
/// ends a receiver would strip: stack traces, runs of line feeds, blank
/// lines, trailing spaces, multibyte characters.
fn records(n: u64) -> Vec<Vec<u8>> {
    let mut r = Rng(0x5eed_1234_5678_9abc);
    let pieces: [&[u8]; 8] = [
        b"at com.example.Service.handle(Service.java:42)\n",
        b"\n",
        b"\n\n\n",
        b"  ",
        b"caused by: \xc3\xa9t\xc3\xa9 \xe2\x82\xac\n",
        b"x",
        b"\t\n",
        b"line",
    ];
    (0..n)
        .map(|_| {
            let len = 100 + r.below(12_000) as usize;
            let mut v = Vec::with_capacity(len + 64);
            while v.len() < len {
                v.extend_from_slice(pieces[r.below(pieces.len() as u64) as usize]);
            }
            v.extend_from_slice(b"end");
            v
        })
        .collect()
}

#[test]
fn multi_line_records_in_parts_arrive_byte_exact_at_syslog_ng() {
    const N: u64 = 60;
    let Some(ng) = SyslogNg::start() else { return };
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(4 << 20).max_record_len(64 << 10)).unwrap().0;
    let config = SyslogConfig::default().max_message_len(1024);
    let shipper = Shipper::builder(ring)
        .endpoint(Endpoint::new(format!("tcp://127.0.0.1:{}", ng.port)))
        .transport(SyslogTransport::factory(config).expect("valid config"))
        .linger(Duration::from_millis(2))
        .start()
        .unwrap();
    let sent = records(N);
    for (i, p) in sent.iter().enumerate() {
        assert_eq!(shipper.append(p).unwrap(), i as u64 + 1);
    }
    eventually("acked", || shipper.stats().ring.acked == N);
    shipper.shutdown(Duration::from_secs(5)).unwrap();
    eventually("every record whole", || ng.reassembled().len() as u64 == N);
    let got = ng.reassembled();
    for (i, want) in sent.iter().enumerate() {
        let seq = i as u64 + 1;
        let have = &got[&seq];
        assert!(
            have == want,
            "seq {seq}: {} bytes arrived of {} ({} line feeds of {})",
            have.len(),
            want.len(),
            line_feeds(have),
            line_feeds(want)
        );
    }
}
