//! The NATS JetStream transport against real nats-servers on loopback
//! (Debian's `nats-server`): byte-exact delivery with every seq stored
//! once; the server killed and restarted mid-stream; ringship killed (`SIGKILL`) and
//! restarted mid-stream; a three-node cluster losing the node in use;
//! streams that refuse; endpoints and servers that are wrong.
//!
//! Without nats-server the tests say why and pass; with
//! `RINGSHIP_REQUIRE_SERVERS=1` (as `.ci/run` sets) that is a failure.
//!
//! The test binary plays the shipping process too: run with
//! `RINGSHIP_NATS_CHILD=<dir>` it appends and ships until killed.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::nats::{Api, NATS_SERVER, NatsServer, free_port};
use common::pki::Pki;
use common::{TempRing, assert_identity, eventually, payload, small};
use ringship::{Endpoint, Error, NatsConfig, NatsTransport, Ring, Shipper, ShipperBuilder, Tls};
use serde_json::json;

const CHILD_ENV: &str = "RINGSHIP_NATS_CHILD";
const URL_ENV: &str = "RINGSHIP_NATS_URL";

macro_rules! require_nats {
    () => {
        if !Path::new(NATS_SERVER).exists() {
            if std::env::var("RINGSHIP_REQUIRE_SERVERS").is_ok() {
                panic!("RINGSHIP_REQUIRE_SERVERS is set but {NATS_SERVER} is not installed");
            }
            eprintln!("SKIPPED: {NATS_SERVER} is not installed (Debian: apt-get install nats-server)");
            return;
        }
    };
}

fn builder(ring: Ring, url: &str) -> ShipperBuilder {
    Shipper::builder(ring)
        .endpoint(Endpoint::new(url))
        .transport(NatsTransport::factory(NatsConfig::default()))
        .max_batch_records(200)
        .linger(Duration::from_millis(2))
        .backoff_initial(Duration::from_millis(20))
        .backoff_max(Duration::from_millis(200))
        .send_timeout(Duration::from_secs(3))
}

fn stream(api: &mut Api, name: &str, subject: &str, replicas: u64, extra: &serde_json::Value) {
    let mut config = json!({
        "name": name,
        "subjects": [subject],
        "storage": "file",
        "num_replicas": replicas,
        "duplicate_window": 120_000_000_000u64,
        "discard": "new",
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    api.create_stream(&config);
}

/// How many times each ringship seq is stored, the payloads, and the gap
/// messages' headers.
struct Stored(BTreeMap<u64, usize>, BTreeMap<u64, Vec<u8>>, Vec<String>);

fn stored(api: &mut Api, name: &str) -> Stored {
    let (mut counts, mut payloads, mut gaps) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for (seq, headers, data) in api.messages(name) {
        match seq {
            Some(seq) => {
                *counts.entry(seq).or_insert(0) += 1;
                payloads.insert(seq, data);
            }
            None => gaps.push(headers),
        }
    }
    Stored(counts, payloads, gaps)
}

fn assert_once(counts: &BTreeMap<u64, usize>, n: u64) {
    let twice: Vec<_> = counts.iter().filter(|&(_, &c)| c > 1).collect();
    assert!(twice.is_empty(), "seqs stored twice: {twice:?}");
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>(), "every seq stored");
}

#[test]
fn records_arrive_byte_exact_each_seq_stored_once_with_a_gap_message() {
    require_nats!();
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path(), free_port(), true);
    let mut api = Api::connect(server.port);
    stream(&mut api, "LOGS", "logs.app", 1, &json!({}));
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(64 << 10)).unwrap().0;
    // Overwrite some before shipping: the first batch carries a gap.
    for i in 1..=1000 {
        ring.append(&payload(i, 100)).unwrap();
    }
    let (ring_id, lost) = (ring.id(), ring.stats().overwritten);
    let shipper = builder(ring, &format!("nats://{}/logs.app", server.url())).start().unwrap();
    eventually("delivered", || shipper.stats().ring.pending == 0);
    let Stored(counts, payloads, gaps) = stored(&mut api, "LOGS");
    assert_eq!(counts.keys().next(), Some(&(lost + 1)));
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    assert_eq!(counts.len() as u64, 1000 - lost);
    for (seq, data) in &payloads {
        assert_eq!(&data[..], &payload(*seq, 100)[..], "seq {seq}");
    }
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(
        gaps[0].contains(&format!("Ringship-Gap: 1-{lost}")) && gaps[0].contains("Ringship-Gap-Cause: overwritten"),
        "{}",
        gaps[0]
    );
    assert!(gaps[0].contains(&format!("Ringship-Ring-Id: {ring_id:016x}")), "{}", gaps[0]);
    assert_identity(&shipper.stats().ring);
    shipper.shutdown(Duration::from_secs(2)).unwrap();
}

#[test]
fn the_server_killed_and_restarted_mid_stream_stores_every_seq_once() {
    require_nats!();
    let dir = tempfile::tempdir().unwrap();
    let mut server = NatsServer::start(dir.path(), free_port(), true);
    let mut api = Api::connect(server.port);
    stream(&mut api, "LOGS", "logs.app", 1, &json!({}));
    drop(api);
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(4 << 20)).unwrap().0;
    let shipper = builder(ring, &format!("nats://{}/logs.app", server.url())).start().unwrap();
    for round in 0..3 {
        for i in 1..=1000 {
            shipper.append(&payload(round * 1000 + i, 64)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(30));
        server.kill(); // SIGKILL, mid-stream
        std::thread::sleep(Duration::from_millis(200));
        server.restart();
    }
    eventually("all acked", || shipper.stats().ring.acked == 3000);
    let mut api = Api::connect(server.port);
    let Stored(counts, payloads, _) = stored(&mut api, "LOGS");
    assert_once(&counts, 3000);
    assert!(payloads.iter().all(|(s, p)| p[..] == payload(*s, 64)[..]));
    assert_identity(&shipper.stats().ring);
    shipper.shutdown(Duration::from_secs(2)).unwrap();
}

/// The child: opens the ring and ships, appending and printing the last
/// seq it appended, until killed.
fn child(dir: &Path, url: &str) -> ! {
    let ring = Ring::open(dir, small(4 << 20)).unwrap().0;
    let shipper = builder(ring, url).start().unwrap();
    loop {
        let seq = shipper.append(&payload(shipper.stats().ring.last_seq + 1, 64)).unwrap();
        println!("S {seq}");
        // About 10,000 a second: the ring keeps them all, so every one
        // must be stored.
        if seq % 10 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn ringship_killed_and_restarted_mid_stream_stores_every_seq_once() {
    if let (Ok(dir), Ok(url)) = (std::env::var(CHILD_ENV), std::env::var(URL_ENV)) {
        child(Path::new(&dir), &url);
    }
    require_nats!();
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path(), free_port(), true);
    let mut api = Api::connect(server.port);
    stream(&mut api, "LOGS", "logs.app", 1, &json!({}));
    let url = format!("nats://{}/logs.app", server.url());
    let t = TempRing::new();
    let mut appended = std::collections::BTreeSet::new();
    for kill in 0..4 {
        let mut c = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "ringship_killed_and_restarted_mid_stream_stores_every_seq_once", "--nocapture"])
            .env(CHILD_ENV, &t.dir)
            .env(URL_ENV, &url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(c.stdout.take().unwrap());
        let reader = std::thread::spawn(move || {
            lines
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.rsplit(" ... ").next()?.strip_prefix("S ")?.trim().parse::<u64>().ok())
                .collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(200 + 150 * kill));
        let _ = c.kill();
        let _ = c.wait();
        appended.extend(reader.join().unwrap());
    }
    // The last start ships what is left.
    let ring = Ring::open(&t.dir, small(4 << 20)).unwrap().0;
    let last = ring.stats().last_seq;
    let shipper = builder(ring, &url).start().unwrap();
    eventually("all shipped", || shipper.stats().ring.pending == 0);
    let s = shipper.stats().ring;
    assert_identity(&s);
    let Stored(counts, payloads, _) = stored(&mut api, "LOGS");
    let twice: Vec<_> = counts.iter().filter(|&(_, &c)| c > 1).collect();
    assert!(twice.is_empty(), "seqs stored twice: {twice:?}");
    // Every record an append returned for is stored (a process's kill
    // loses nothing the page cache has), and only those the ring acked.
    let missing: Vec<_> = appended.iter().filter(|seq| !counts.contains_key(seq)).take(10).collect();
    assert!(appended.len() > 1000 && missing.is_empty(), "{} appended; not stored: {missing:?}", appended.len());
    assert_eq!((counts.len() as u64, s.overwritten), (s.acked, 0), "{s:?}");
    assert!(counts.keys().all(|&seq| seq <= last));
    assert!(payloads.iter().all(|(seq, p)| p[..] == payload(*seq, 64)[..]));
    shipper.shutdown(Duration::from_secs(2)).unwrap();
}

#[test]
fn a_cluster_losing_the_node_in_use_stores_every_seq_once() {
    require_nats!();
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = NatsServer::cluster(dir.path());
    let mut api = Api::connect(nodes[1].port);
    stream(&mut api, "LOGS", "logs.app", 3, &json!({}));
    drop(api);
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(4 << 20)).unwrap().0;
    let shipper = builder(ring, &format!("nats://{}/logs.app", urls.join(","))).start().unwrap();
    for i in 1..=1500 {
        shipper.append(&payload(i, 64)).unwrap();
    }
    eventually("some acked", || shipper.stats().ring.acked > 0);
    // The transport starts at the first server listed.
    nodes[0].kill();
    for i in 1501..=3000 {
        shipper.append(&payload(i, 64)).unwrap();
    }
    eventually("all acked through the others", || shipper.stats().ring.acked == 3000);
    let mut api = Api::connect(nodes[2].port);
    let Stored(counts, _, _) = stored(&mut api, "LOGS");
    assert_once(&counts, 3000);
    assert_identity(&shipper.stats().ring);
    shipper.shutdown(Duration::from_secs(2)).unwrap();
}

/// Streams that refuse: no stream on the subject, and a full stream that
/// discards new messages, are permanent failures in health that keep the
/// records; a record over the stream's largest message is refused alone
/// and counted, and the rest are stored.
#[test]
fn streams_that_refuse_say_so_and_keep_or_count_the_records() {
    require_nats!();
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path(), free_port(), true);
    let mut api = Api::connect(server.port);
    stream(&mut api, "FULL", "logs.full", 1, &json!({"max_msgs": 10}));
    stream(&mut api, "SMALL", "logs.small", 1, &json!({"max_msg_size": 300}));
    for (subject, says) in
        [("logs.nowhere", "no JetStream stream takes subject logs.nowhere"), ("logs.full", "maximum messages")]
    {
        let t = TempRing::new();
        let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
        let shipper =
            builder(ring, &format!("nats://{}/{subject}", server.url())).max_batch_records(5).start().unwrap();
        for i in 1..=20 {
            shipper.append(&payload(i, 64)).unwrap();
        }
        eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
        let error = shipper.health().last_error.unwrap_or_default();
        assert!(error.contains(says), "{subject}: {error}");
        let s = shipper.stats().ring;
        assert_eq!(s.pending + s.acked, 20, "{s:?}");
        assert!(s.pending > 0, "kept: {s:?}");
        shipper.shutdown(Duration::from_secs(2)).unwrap();
    }
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    let shipper = builder(ring, &format!("nats://{}/logs.small", server.url())).start().unwrap();
    for i in 1..=10 {
        shipper.append(&payload(i, if i == 4 { 1000 } else { 64 })).unwrap();
    }
    eventually("shipped", || shipper.stats().ring.pending == 0);
    let s = shipper.stats().ring;
    assert_eq!((s.refused, s.acked), (1, 9), "{s:?}");
    assert_identity(&s);
    let Stored(counts, _, _) = stored(&mut api, "SMALL");
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3, 5, 6, 7, 8, 9, 10]);
    shipper.shutdown(Duration::from_secs(2)).unwrap();
}

#[test]
fn wrong_endpoints_and_a_server_without_jetstream_fail_clearly() {
    require_nats!();
    let t = TempRing::new();
    for (url, says) in [
        ("http://127.0.0.1:4222/logs", "no nats:// or tls:// scheme"),
        ("nats://127.0.0.1:4222/logs.*", "wildcard"),
        ("nats://127.0.0.1:4222/logs app", "whitespace"),
        ("nats://127.0.0.1:4222/", "empty"),
        ("nats://127.0.0.1/logs", "without a port"),
        ("nats://127.0.0.1:4222", "names no subject"),
    ] {
        let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
        match builder(ring, url).start() {
            Err(Error::Config(m)) => assert!(m.contains(says), "{url}: {m}"),
            other => panic!("{url}: {:?}", other.map(|_| ())),
        }
    }
    // Plain NATS, no JetStream: nobody acknowledges; never an ack.
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path(), free_port(), false);
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    let shipper = builder(ring, &format!("nats://{}/logs.app", server.url())).start().unwrap();
    shipper.append(b"kept").unwrap();
    eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
    let error = shipper.health().last_error.unwrap_or_default();
    assert!(error.contains("no JetStream stream"), "{error}");
    assert_eq!(shipper.stats().ring.acked, 0);
    shipper.shutdown(Duration::from_secs(2)).unwrap();
}

/// Credentials in the endpoint (a token; a user and password) are what
/// the server takes; wrong ones fail for good, naming no secret.
#[test]
fn token_and_user_password_authentication() {
    require_nats!();
    for (server_args, api_credentials, good, bad) in [
        (vec!["--auth", "t0ken-s3cret"], r#""auth_token":"t0ken-s3cret","#, "t0ken-s3cret@", "wr0ng-t0ken@"),
        (
            vec!["--user", "svc", "--pass", "pa55-s3cret"],
            r#""user":"svc","pass":"pa55-s3cret","#,
            "svc:pa55-s3cret@",
            "svc:wr0ng-pa55@",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = server_args.iter().map(|a| (*a).to_owned()).collect();
        let server = NatsServer::start_with(dir.path(), free_port(), &args);
        let mut api = Api::connect_as(server.port, api_credentials);
        stream(&mut api, "LOGS", "logs.app", 1, &json!({}));
        let t = TempRing::new();
        let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
        let shipper = builder(ring, &format!("nats://{good}{}/logs.app", server.url())).start().unwrap();
        for i in 1..=100 {
            shipper.append(&payload(i, 32)).unwrap();
        }
        eventually("acked", || shipper.stats().ring.acked == 100);
        shipper.shutdown(Duration::from_secs(2)).unwrap();
        assert_once(&stored(&mut api, "LOGS").0, 100);

        let t = TempRing::new();
        let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
        let shipper = builder(ring, &format!("nats://{bad}{}/logs.app", server.url())).start().unwrap();
        shipper.append(b"kept").unwrap();
        eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
        let shown = format!("{:?}", shipper.health());
        assert!(shown.to_ascii_lowercase().contains("authorization"), "{shown}");
        assert!(!shown.contains("wr0ng"), "{shown}");
        assert_eq!(shipper.stats().ring.acked, 0);
        shipper.shutdown(Duration::from_secs(2)).unwrap();
    }
}

/// TLS with verification: a server with the test CA's certificate is
/// trusted through the CA file; without it the failure is permanent and
/// says why; a `nats://` endpoint to a server that requires TLS says so.
#[test]
fn tls_with_verification() {
    require_nats!();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.pair("server");
    let args = vec![
        "--tls".to_owned(),
        "--tlscert".to_owned(),
        cert.display().to_string(),
        "--tlskey".to_owned(),
        key.display().to_string(),
    ];
    let server = NatsServer::start_with(dir.path(), free_port(), &args);
    let ship = |url: &str, tls: Tls| {
        let t = TempRing::new();
        let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
        let shipper = Shipper::builder(ring)
            .endpoint(Endpoint::new(url))
            .transport(NatsTransport::factory(NatsConfig::default().tls(tls)))
            .linger(Duration::from_millis(2))
            .backoff_initial(Duration::from_millis(20))
            .backoff_max(Duration::from_millis(200))
            .start()
            .unwrap();
        (t, shipper)
    };
    let trusted = Tls::default().ca_file(pki.path("ca.pem"));
    let url = format!("tls://localhost:{}/logs.app", server.port);
    let mut api = Api::connect_tls(server.port, &pki.path("ca.pem"), "localhost");
    stream(&mut api, "LOGS", "logs.app", 1, &json!({}));
    let (_t, shipper) = ship(&url, trusted.clone());
    for i in 1..=200 {
        shipper.append(&payload(i, 48)).unwrap();
    }
    eventually("acked over TLS", || shipper.stats().ring.acked == 200);
    shipper.shutdown(Duration::from_secs(2)).unwrap();
    let Stored(counts, payloads, _) = stored(&mut api, "LOGS");
    assert_once(&counts, 200);
    assert!(payloads.iter().all(|(seq, p)| p[..] == payload(*seq, 48)[..]));
    let (_t, shipper) = ship(&url, Tls::default());
    shipper.append(b"kept").unwrap();
    eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
    let error = shipper.health().last_error.unwrap_or_default();
    assert!(error.contains("UnknownIssuer") && error.contains("Tls::ca_file"), "{error}");
    assert_eq!(shipper.stats().ring.acked, 0);
    shipper.shutdown(Duration::from_secs(2)).unwrap();
    let (_t, shipper) = ship(&format!("nats://localhost:{}/logs.app", server.port), trusted);
    shipper.append(b"kept").unwrap();
    eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
    let error = shipper.health().last_error.unwrap_or_default();
    assert!(error.contains("requires TLS"), "{error}");
    shipper.shutdown(Duration::from_secs(2)).unwrap();
}

/// A server that accepts the connection and never speaks: the send ends
/// by its deadline, nothing is acked, and a switch to a real server moves
/// on at once (the stuck send is cancelled).
#[test]
fn a_silent_server_times_out_and_a_switch_moves_on() {
    require_nats!();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let conns: Vec<_> = silent.incoming().take(3).collect();
        std::thread::sleep(Duration::from_secs(10));
        drop(conns);
    });
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(dir.path(), free_port(), true);
    let mut api = Api::connect(server.port);
    stream(&mut api, "LOGS", "logs.app", 1, &json!({}));
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    let shipper = builder(ring, &format!("nats://127.0.0.1:{silent_port}/logs.app"))
        .send_timeout(Duration::from_millis(500))
        .start()
        .unwrap();
    for i in 1..=50 {
        shipper.append(&payload(i, 32)).unwrap();
    }
    eventually("a timeout", || shipper.stats().send_failures >= 1);
    assert_eq!(shipper.stats().ring.acked, 0);
    shipper.switch_endpoint(Endpoint::new(format!("nats://{}/logs.app", server.url()))).unwrap();
    eventually("acked by the real server", || shipper.stats().ring.acked == 50);
    assert_once(&stored(&mut api, "LOGS").0, 50);
    shipper.shutdown(Duration::from_secs(2)).unwrap();
    drop(held);
}
