//! The HTTP transport against a real HTTP server on loopback: every record
//! arrives byte-exact across an endpoint switch and across a receiver
//! killed and restarted mid-stream; statuses, Retry-After, headers, gzip
//! and both body formats do what the docs say.

mod common;
#[path = "../examples/common/http_receiver.rs"]
mod http_receiver;

use std::time::{Duration, Instant};

use common::{TempRing, assert_identity, eventually, kill_and_restart, payload, small};
use http_receiver::HttpReceiver;
use ringship::{BodyFormat, Endpoint, HealthState, HttpConfig, HttpTransport, Ring, Shipper, ShipperBuilder};

fn shipper_builder(t: &TempRing, cap: u64, url: &str, config: HttpConfig) -> ShipperBuilder {
    let ring = Ring::open(&t.dir, small(cap)).unwrap().0;
    Shipper::builder(ring)
        .endpoint(Endpoint::new(url))
        .transport(HttpTransport::factory(config))
        .max_batch_records(50)
        .linger(Duration::from_millis(2))
        .backoff_initial(Duration::from_millis(10))
        .backoff_max(Duration::from_millis(100))
        .send_timeout(Duration::from_secs(2))
}

fn exact() -> HttpConfig {
    HttpConfig::default().format(BodyFormat::LengthPrefixed)
}

fn check_exact(rx: &HttpReceiver, seqs: std::ops::RangeInclusive<u64>, len: usize) {
    let inbox = rx.inbox.lock().unwrap();
    for (seq, p) in &inbox.records {
        assert_eq!(&p[..], &payload(*seq, len)[..], "seq {seq} arrived altered");
    }
    drop(inbox);
    assert_eq!(rx.seqs(), seqs.collect::<Vec<_>>());
}

#[test]
fn every_record_arrives_byte_exact_across_a_switch() {
    let t = TempRing::new();
    let (a, b) = (HttpReceiver::start(), HttpReceiver::start());
    let shipper = shipper_builder(&t, 1 << 20, &a.url(), exact()).start().unwrap();
    for i in 1..=500 {
        shipper.append(&payload(i, 64)).unwrap();
    }
    eventually("first half acked", || shipper.stats().ring.acked == 500);
    shipper.switch_endpoint(Endpoint::new(b.url())).unwrap();
    for i in 501..=1000 {
        shipper.append(&payload(i, 64)).unwrap();
    }
    eventually("second half acked", || shipper.stats().ring.acked == 1000);
    check_exact(&a, 1..=500, 64);
    check_exact(&b, 501..=1000, 64);
    assert_identity(&shipper.stats().ring);
}

#[test]
fn a_receiver_killed_and_restarted_mid_stream_loses_nothing() {
    let t = TempRing::new();
    let rx = HttpReceiver::start();
    let port = rx.port;
    let shipper = shipper_builder(&t, 1 << 20, &rx.url(), exact()).start().unwrap();
    for i in 1..=300 {
        shipper.append(&payload(i, 32)).unwrap();
    }
    eventually("some delivered", || rx.received() > 0);
    let first: Vec<(u64, Vec<u8>)> = rx.inbox.lock().unwrap().records.clone();
    rx.stop();
    // Down: the sender retries with backoff and keeps everything.
    for i in 301..=600 {
        shipper.append(&payload(i, 32)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let rx = HttpReceiver::start_on(port);
    eventually("all acked", || shipper.stats().ring.acked == 600);
    let mut all: Vec<u64> = first.iter().map(|r| r.0).chain(rx.seqs()).collect();
    let total = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all, (1..=600).collect::<Vec<_>>(), "nothing lost");
    for (seq, p) in first.iter().chain(rx.inbox.lock().unwrap().records.iter()) {
        assert_eq!(&p[..], &payload(*seq, 32)[..]);
    }
    eprintln!("receiver restart: {} records received, {} distinct", total, all.len());
    assert!(shipper.stats().send_failures > 0, "the outage was seen");
}

#[test]
fn server_errors_and_429_are_retried_honouring_retry_after() {
    let t = TempRing::new();
    let rx = HttpReceiver::start();
    rx.inbox.lock().unwrap().script.extend([(500, None), (503, None), (429, Some(1))]);
    let shipper = shipper_builder(&t, 1 << 20, &rx.url(), exact()).start().unwrap();
    let started = Instant::now();
    shipper.append(&payload(1, 10)).unwrap();
    eventually("delivered", || shipper.stats().ring.acked == 1);
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After: 1 was honoured");
    assert_eq!(shipper.stats().send_failures, 3);
    assert_eq!(rx.seqs(), vec![1]);
}

#[test]
fn client_errors_are_permanent_and_keep_the_records() {
    let t = TempRing::new();
    let rx = HttpReceiver::start();
    rx.inbox.lock().unwrap().script.extend([(400, None); 3]);
    let shipper =
        shipper_builder(&t, 1 << 20, &rx.url(), exact()).backoff_max(Duration::from_millis(200)).start().unwrap();
    shipper.append(&payload(1, 10)).unwrap();
    eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
    let h = shipper.health();
    assert_eq!(h.state, HealthState::Degraded);
    let error = h.last_error.unwrap();
    assert!(error.contains("HTTP 400"), "the status shows in health: {error}");
    assert!(error.contains("scripted refusal: HTTP 400"), "the receiver's answer shows in health: {error}");
    assert_eq!(shipper.stats().ring.pending, 1, "never silently dropped");
    // Fixed on the receiving side: the record goes through.
    eventually("delivered after the 400s", || shipper.stats().ring.acked == 1);
}

/// A receiver that takes bodies of at most 64 KiB (a proxy's body limit)
/// answers a 1,000-record batch 413: the sender halves its batches until
/// they pass, at once, and every record arrives: a 413 taken as a
/// permanent failure would be retried at the longest backoff for ever,
/// and shipping would stall for good. Later refusals are the sender
/// probing back up (at twice a size that passed), less often each time.
#[test]
fn batches_refused_for_their_size_are_halved_until_they_pass() {
    let t = TempRing::new();
    let rx = HttpReceiver::start();
    rx.inbox.lock().unwrap().max_body = Some(64 << 10);
    // 1,000 records of 300 bytes: a batch of about 320 KB as sent.
    let shipper = shipper_builder(&t, 4 << 20, &rx.url(), exact())
        .max_batch_records(1000)
        .linger(Duration::from_millis(50))
        .backoff_max(Duration::from_secs(30))
        .start()
        .unwrap();
    let records: Vec<Vec<u8>> = (1..=1000).map(|i| payload(i, 300)).collect();
    shipper.append_batch(&records).unwrap();
    let started = Instant::now();
    eventually("all acked", || shipper.stats().ring.acked == 1000);
    // Halving is immediate: no backoff (30 s here) between the refusals.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    check_exact(&rx, 1..=1000, 300);
    let refused = rx.inbox.lock().unwrap().refused_sizes.clone();
    assert!(refused.len() >= 2 && refused[1] <= refused[0] / 2 + 1, "{refused:?}");
    assert!(refused[1..].iter().all(|&n| n <= refused[0] / 2 + 1) && refused.len() <= 8, "{refused:?}");
    let s = shipper.stats();
    assert_eq!((s.permanent_failures, s.ring.pending), (0, 0), "{s:?}");
}

/// One record too large for the receiver's body limit halves the batches
/// down to a batch of its own (then refused and counted); once the limit
/// is raised, the batches grow back as full ones pass, rather than keeping
/// the halved size (a request per few records) for good.
#[test]
fn batches_grow_back_once_the_receiver_takes_them() {
    let t = TempRing::new();
    let rx = HttpReceiver::start();
    rx.inbox.lock().unwrap().max_body = Some(800);
    let shipper = shipper_builder(&t, 1 << 20, &rx.url(), exact()).max_batch_records(1000).start().unwrap();
    // Nine small records and one of 1,000 bytes, which no batch can pass.
    let mut first: Vec<Vec<u8>> = (1..=9).map(|i| payload(i, 50)).collect();
    first.push(payload(10, 1000));
    shipper.append_batch(&first).unwrap();
    eventually("the large record refused on its own", || shipper.stats().ring.refused == 1);
    assert_eq!(shipper.stats().ring.acked, 9);
    rx.inbox.lock().unwrap().max_body = None;
    let before = rx.inbox.lock().unwrap().requests;
    let records: Vec<Vec<u8>> = (11..=4010).map(|i| payload(i, 50)).collect();
    shipper.append_batch(&records).unwrap();
    eventually("all acked", || shipper.stats().ring.acked == 4009);
    let requests = rx.inbox.lock().unwrap().requests - before;
    // Doubling every two full batches from a few records: about 20.
    assert!(requests <= 100, "{requests} requests for 4,000 records");
    assert_eq!(rx.seqs(), (1..=9).chain(11..=4010).collect::<Vec<_>>());
}

/// A single record larger than the receiver takes would be refused
/// forever and hold up every record behind it until the ring overwrote
/// them. Refused alone, it is counted refused, announced
/// (by seq) in the next gap notice, and the records behind it ship.
#[test]
fn a_record_too_large_for_the_receiver_is_refused_counted_and_the_rest_ship() {
    let t = TempRing::new();
    let rx = HttpReceiver::start();
    rx.inbox.lock().unwrap().max_body = Some(500);
    let shipper = shipper_builder(&t, 1 << 20, &rx.url(), HttpConfig::default())
        .backoff_max(Duration::from_millis(200))
        .start()
        .unwrap();
    shipper.append(&payload(1, 10)).unwrap();
    eventually("the first delivered", || shipper.stats().ring.acked == 1);
    shipper.append(&payload(2, 1000)).unwrap();
    for seq in 3..=5 {
        shipper.append(&payload(seq, 10)).unwrap();
    }
    eventually("the rest delivered", || shipper.stats().ring.acked == 4);
    let s = shipper.stats();
    assert_eq!((s.ring.refused, s.ring.pending), (1, 0), "{s:?}");
    assert_identity(&s.ring);
    assert!(s.permanent_failures >= 1, "the refusal counts as a permanent failure of its send");
    let losses = shipper.ring().losses();
    assert!(losses.iter().any(|l| l.cause == ringship::LossCause::Refused && l.first_seq == 2 && l.last_seq == 2));
    assert_eq!(rx.seqs(), vec![1, 3, 4, 5]);
    let inbox = rx.inbox.lock().unwrap();
    assert_eq!(inbox.gaps.len(), 1, "{:?}", inbox.gaps);
    // Named by the range, and so not counted again in `refused=`.
    assert!(inbox.gaps[0].starts_with("2-2; count=1; cause=refused; rejected=0; refused=0;"), "{}", inbox.gaps[0]);
    assert_eq!(shipper.stats().ring.refused_reported, 1);
}

/// A redirect fails the send. Followed, a 302 would turn the POST into a
/// GET without the batch, and the 200 the GET got would ack it: lost.
#[test]
fn redirects_are_not_followed_and_keep_the_records() {
    let t = TempRing::new();
    let rx = HttpReceiver::start();
    rx.inbox.lock().unwrap().script.extend([(302, None), (301, None)]);
    let shipper =
        shipper_builder(&t, 1 << 20, &rx.url(), exact()).backoff_max(Duration::from_millis(200)).start().unwrap();
    shipper.append(&payload(1, 10)).unwrap();
    eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
    let h = shipper.health();
    assert!(h.last_error.unwrap().contains("redirect"), "the redirect shows in health");
    eventually("delivered after the redirects", || shipper.stats().ring.acked == 1);
    assert_eq!(rx.seqs(), vec![1], "acked only once the receiver had it");
    assert_eq!(rx.inbox.lock().unwrap().requests, 3, "no GET followed a redirect");
}

#[test]
fn headers_carry_the_seq_range_the_gap_and_custom_values_and_gzip_works() {
    let t = TempRing::new();
    let rx = HttpReceiver::start();
    let ring = Ring::open(&t.dir, small(4096)).unwrap().0;
    for i in 1..=100 {
        ring.append(&payload(i, 100)).unwrap();
    }
    let lost = ring.stats().overwritten;
    let ring_id = ring.id();
    let config = HttpConfig::default().format(BodyFormat::NewlineDelimited).gzip(true);
    let shipper = Shipper::builder(ring)
        .endpoint(Endpoint::new(rx.url()).header("Authorization", "Bearer s3cret"))
        .transport(HttpTransport::factory(config))
        .max_batch_records(1000)
        .linger(Duration::from_millis(1))
        .start()
        .unwrap();
    eventually("delivered", || shipper.stats().ring.pending == 0);
    let inbox = rx.inbox.lock().unwrap();
    let h = |name: &str| inbox.last_headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    assert_eq!(h("authorization"), "Bearer s3cret");
    assert_eq!(h("content-encoding"), "gzip");
    assert_eq!(h("x-ringship-first-seq"), (lost + 1).to_string());
    assert_eq!(h("x-ringship-last-seq"), "100");
    assert_eq!(h("x-ringship-ring-id"), format!("{ring_id:016x}"));
    assert_eq!(inbox.gaps.len(), 1);
    assert!(inbox.gaps[0].starts_with(&format!("1-{lost}; count={lost}; cause=overwritten")), "{}", inbox.gaps[0]);
    for (seq, p) in &inbox.records {
        assert_eq!(&p[..], &payload(*seq, 100)[..], "NDJSON round trip of seq {seq}");
    }
}

#[test]
fn a_switch_cancels_a_hung_request_at_once() {
    let t = TempRing::new();
    // A listener that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/ingest", silent.local_addr().unwrap());
    let rx = HttpReceiver::start();
    let shipper =
        shipper_builder(&t, 1 << 20, &silent_url, exact()).send_timeout(Duration::from_secs(30)).start().unwrap();
    shipper.append(&payload(1, 10)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    shipper.switch_endpoint(Endpoint::new(rx.url())).unwrap();
    eventually("delivered to the new endpoint", || shipper.stats().ring.acked == 1);
    assert!(started.elapsed() < Duration::from_secs(5), "the hung request was cancelled, not waited out");
    assert!(shipper.stats().cancelled_sends >= 1);
}

const CHILD_ENV: &str = "RINGSHIP_HTTP_CHILD";
const TOTAL: u64 = 3000;

/// The child: appends records until the ring holds `TOTAL` (continuing
/// from the ring's last seq, past seqs a crash made it skip) while
/// shipping them, then drains. Killed at random by the parent, restarted,
/// it must pick up where the ring says.
fn child(dir: &str, url: &str) {
    let ring = Ring::open(dir, small(256 << 10)).unwrap().0;
    let shipper = Shipper::builder(ring)
        .endpoint(Endpoint::new(url))
        .transport(HttpTransport::factory(exact()))
        .max_batch_records(100)
        .linger(Duration::from_millis(1))
        .backoff_initial(Duration::from_millis(10))
        .backoff_max(Duration::from_millis(100))
        .start()
        .unwrap();
    let stats = shipper.stats().ring;
    let mut next = stats.last_seq + 1;
    for _ in stats.appended..TOTAL {
        assert_eq!(shipper.append(&payload(next, 48)).unwrap(), next);
        next += 1;
        if next % 10 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let report = shipper.shutdown(Duration::from_secs(20)).unwrap();
    assert!(report.drained, "{report:?}");
    println!("CHILD DRAINED");
}

#[test]
fn a_ringship_process_killed_and_restarted_loses_nothing() {
    if let Ok(args) = std::env::var(CHILD_ENV) {
        let (dir, url) = args.split_once(' ').unwrap();
        child(dir, url);
        return;
    }
    let t = TempRing::new();
    let rx = HttpReceiver::start();
    let exe = std::env::current_exe().unwrap();
    let spawn = || {
        std::process::Command::new(&exe)
            .args(["--exact", "a_ringship_process_killed_and_restarted_loses_nothing", "--nocapture"])
            .env(CHILD_ENV, format!("{} {}", t.dir.display(), rx.url()))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let (kills, last_run) = kill_and_restart(spawn, &[150, 80, 200]);
    assert!(last_run.contains("CHILD DRAINED"), "the last run drained");
    let seqs = rx.seqs();
    assert_eq!(seqs.len() as u64, TOTAL, "every record arrived once by seq");
    let inbox = rx.inbox.lock().unwrap();
    for (seq, p) in &inbox.records {
        assert_eq!(&p[..], &payload(*seq, 48)[..]);
    }
    // Each crash skipped the seqs it may have handed out; the receiver was
    // told of every missing seq, with that cause.
    let told: Vec<(u64, u64)> = inbox
        .gaps
        .iter()
        .map(|g| {
            assert!(g.contains("cause=skipped"), "a gap notice for a crash alone: {g}");
            let (range, _) = g.split_once(';').unwrap();
            let (a, b) = range.split_once('-').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    for w in seqs.windows(2).filter(|w| w[1] > w[0] + 1) {
        assert!(
            told.iter().any(|&(a, b)| a <= w[0] + 1 && w[1] - 1 <= b),
            "seqs {}..={} missing without a notice: {told:?}",
            w[0] + 1,
            w[1] - 1
        );
    }
    drop(inbox);
    eprintln!("{kills} SIGKILLs; {} records received for {TOTAL} appended (duplicates by seq)", rx.received());
    assert!(kills >= 1);
}

/// A receiver that answers every request with a body (as most do: a JSON
/// status) on a connection it keeps open: the transport reads the answer
/// to its end and sends the next batch on the same connection, instead of
/// opening one per batch.
#[test]
fn answers_with_a_body_keep_the_connection_for_the_next_batch() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    let (connections, requests) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            c.fetch_add(1, SeqCst);
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut len = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    reader.read_exact(&mut body).unwrap();
                    r.fetch_add(1, SeqCst);
                    let answer = "{\"status\":\"ok\",\"detail\":\"every record stored\"}";
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        answer.len()
                    );
                    if out.write_all(head.as_bytes()).and_then(|()| out.write_all(answer.as_bytes())).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let t = TempRing::new();
    let shipper = shipper_builder(&t, 1 << 20, &url, exact()).max_batch_records(10).start().unwrap();
    for i in 1..=100 {
        shipper.append(&payload(i, 32)).unwrap();
        if i % 10 == 0 {
            let acked = i;
            eventually("batch acked", || shipper.stats().ring.acked == acked);
        }
    }
    assert_eq!(requests.load(SeqCst), 10);
    assert_eq!(connections.load(SeqCst), 1, "one connection per batch");
}

/// A live TLS server with a self-signed certificate (`openssl s_server`):
/// the transport will never accept it, so the failure is permanent (not
/// retried as transient for ever) and reads as a sentence an operator can
/// act on.
#[test]
fn a_self_signed_certificate_is_a_permanent_failure_that_says_so() {
    let openssl = std::path::Path::new("/usr/bin/openssl");
    if !openssl.exists() {
        assert!(std::env::var_os("CI").is_none(), "CI has openssl");
        eprintln!("no openssl: not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new(openssl)
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(made.success(), "openssl req failed");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut server = std::process::Command::new(openssl)
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually("openssl s_server listens", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let t = TempRing::new();
    let shipper = shipper_builder(&t, 1 << 20, &format!("https://127.0.0.1:{port}/ingest"), exact()).start().unwrap();
    shipper.append(b"x").unwrap();
    eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
    let s = shipper.stats();
    let error = shipper.health().last_error.unwrap_or_default();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(s.send_failures, s.permanent_failures, "retried as transient: {s:?} {error}");
    assert!(error.contains("certificate is not accepted") && error.contains("Tls::ca_file"), "{error}");
    assert!(!error.contains('\n'), "{error:?}");
}
