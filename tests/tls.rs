//! TLS as operators deploy it, against a real nginx terminating TLS in
//! front of the test receiver, with certificates from a private CA made
//! here (`tests/common/pki.rs`): trust through a CA file, a server the
//! default trust refuses, mutual TLS with a client certificate rotated on
//! disk mid-stream, expired and wrong-name certificates, the server name
//! override, TLS 1.3 only, a real proxy (tinyproxy); and TLS files that
//! cannot be used, refused at start naming the file.
//!
//! Without nginx or tinyproxy (Debian: `apt-get install nginx-light
//! tinyproxy`) the tests that need them say why and pass; with
//! `RINGSHIP_REQUIRE_SERVERS=1` (as `.ci/run` sets) that is a failure.

mod common;
#[path = "../examples/common/http_receiver.rs"]
mod http_receiver;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::{TempRing, assert_identity, eventually, payload, small};
use http_receiver::HttpReceiver;
use ringship::{
    BodyFormat, Endpoint, Error, HttpConfig, HttpTransport, Proxy, Ring, Shipper, ShipperBuilder, Tls, TlsVersion,
};

const NGINX: &str = "/usr/sbin/nginx";
const TINYPROXY: &str = "/usr/bin/tinyproxy";

/// Skips the test (saying why) when `program` is missing, unless CI
/// requires the servers.
macro_rules! require {
    ($program:expr) => {
        if !Path::new($program).exists() {
            if std::env::var("RINGSHIP_REQUIRE_SERVERS").is_ok() {
                panic!("RINGSHIP_REQUIRE_SERVERS is set but {} is not installed", $program);
            }
            eprintln!("SKIPPED: {} is not installed (Debian: apt-get install nginx-light tinyproxy)", $program);
            return;
        }
    };
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "{what} did not start listening on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An nginx of our own terminating TLS on a loopback port with `cert`
/// and `key`, asking for a client certificate from the test CA when
/// `verify_client`, and passing requests to `upstream`; its access log
/// has each request's client certificate subject and TLS version.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nginx {
    fn start(pki: &Pki, server: &str, verify_client: bool, upstream: u16, tls13_only: bool) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = free_port();
        let (cert, key) = pki.pair(server);
        let conf = format!(
            "daemon off;\nmaster_process off;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               log_format client '$ssl_client_s_dn|$ssl_protocol|$status';\n\
               access_log {d}/access.log client;\n\
               client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;\n\
               uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
               client_max_body_size 64m;\n\
               server {{\n\
                 listen 127.0.0.1:{port} ssl;\n\
                 ssl_certificate {cert}; ssl_certificate_key {key};\n\
                 ssl_protocols {protocols};\n\
                 ssl_client_certificate {ca}; ssl_verify_client {verify};\n\
                 location / {{ proxy_pass http://127.0.0.1:{upstream}; proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\"; }}\n\
               }}\n\
             }}\n",
            cert = cert.display(),
            key = key.display(),
            ca = pki.path("ca.pem").display(),
            verify = if verify_client { "on" } else { "off" },
            protocols = if tls13_only { "TLSv1.3" } else { "TLSv1.2 TLSv1.3" },
        );
        std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
        let mut child = Command::new(NGINX)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        wait_listening(port, "nginx", &mut child);
        Nginx { child, dir, port }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}/ingest", self.port)
    }

    /// (client certificate subject, TLS version, status) of each request.
    fn requests(&self) -> Vec<(String, String, u16)> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .filter_map(|l| {
                let mut f = l.split('|');
                Some((f.next()?.to_owned(), f.next()?.to_owned(), f.next()?.parse().ok()?))
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn builder(t: &TempRing, url: &str, tls: Tls) -> ShipperBuilder {
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    Shipper::builder(ring)
        .endpoint(Endpoint::new(url))
        .transport(HttpTransport::factory(HttpConfig::default().format(BodyFormat::LengthPrefixed).tls(tls)))
        .max_batch_records(50)
        .linger(Duration::from_millis(2))
        .backoff_initial(Duration::from_millis(10))
        .backoff_max(Duration::from_millis(100))
        .send_timeout(Duration::from_secs(5))
}

fn assert_exact(rx: &HttpReceiver, n: u64, len: usize) {
    let inbox = rx.inbox.lock().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (seq, body) in &inbox.records {
        assert_eq!(&body[..], &payload(*seq, len)[..], "seq {seq} altered");
        seen.insert(*seq);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
}

/// A server whose certificate comes from a private CA: trusted through
/// `Tls::ca_file`, every record byte-exact; with the default trust (the
/// system's CAs) a permanent failure naming the cause and the remedy,
/// nothing acknowledged, nothing lost.
#[test]
fn a_private_ca_is_trusted_through_its_file_and_refused_without_it() {
    require!(NGINX);
    let pki = Pki::new();
    let rx = HttpReceiver::start();
    let nginx = Nginx::start(&pki, "server", false, rx.port, false);
    let t = TempRing::new();
    let shipper = builder(&t, &nginx.url(), Tls::default()).start().unwrap();
    for i in 1..=300 {
        shipper.append(&payload(i, 64)).unwrap();
    }
    eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
    let error = shipper.health().last_error.unwrap_or_default();
    assert!(error.contains("UnknownIssuer") && error.contains("Tls::ca_file"), "{error}");
    let s = shipper.stats();
    assert_eq!((s.ring.acked, s.ring.pending), (0, 300), "{s:?}");
    assert_eq!(s.send_failures, s.permanent_failures, "retried as transient: {error}");
    shipper.shutdown(Duration::from_secs(2)).unwrap();
    // The same ring, now trusting the CA: every record arrives.
    let shipper = builder(&t, &nginx.url(), Tls::default().ca_file(pki.path("ca.pem"))).start().unwrap();
    eventually("all acked", || shipper.stats().ring.acked == 300);
    assert_exact(&rx, 300, 64);
    assert_identity(&shipper.stats().ring);
    shipper.shutdown(Duration::from_secs(2)).unwrap();
}

/// Mutual TLS: refused without a client certificate (nothing acked),
/// accepted with one; the certificate and key replaced on disk mid-stream,
/// and the next connection presents the new one.
#[test]
fn mutual_tls_with_a_client_certificate_rotated_on_disk() {
    require!(NGINX);
    let pki = Pki::new();
    let rx = HttpReceiver::start();
    let nginx = Nginx::start(&pki, "server", true, rx.port, false);
    let t = TempRing::new();
    let trust = Tls::default().system_roots(false).ca_file(pki.path("ca.pem"));
    let shipper = builder(&t, &nginx.url(), trust.clone()).start().unwrap();
    shipper.append(&payload(1, 64)).unwrap();
    eventually("refused", || shipper.stats().permanent_failures >= 1);
    let error = shipper.health().last_error.unwrap_or_default();
    assert!(error.contains("400") && error.contains("certificate"), "{error}");
    assert_eq!(shipper.stats().ring.acked, 0);
    shipper.shutdown(Duration::from_secs(2)).unwrap();

    // The files the service is configured with; rotation replaces them.
    let live = tempfile::tempdir().unwrap();
    let (cert, key) = (live.path().join("client.pem"), live.path().join("client.key"));
    let install = |name: &str| {
        let (c, k) = pki.pair(name);
        // As a rotation tool does: write aside, rename over.
        for (from, to) in [(c, &cert), (k, &key)] {
            let tmp = to.with_extension("new");
            std::fs::copy(from, &tmp).unwrap();
            std::fs::rename(&tmp, to).unwrap();
        }
    };
    install("client1");
    let shipper = builder(&t, &nginx.url(), trust.client_cert(&cert, &key)).start().unwrap();
    eventually("the first acked", || shipper.stats().ring.acked == 1);
    for i in 2..=100 {
        shipper.append(&payload(i, 64)).unwrap();
    }
    eventually("100 acked", || shipper.stats().ring.acked == 100);
    install("client2");
    for i in 101..=200 {
        shipper.append(&payload(i, 64)).unwrap();
    }
    eventually("200 acked", || shipper.stats().ring.acked == 200);
    assert_exact(&rx, 200, 64);
    let requests = nginx.requests();
    let subjects: Vec<&str> = requests.iter().filter(|r| r.2 == 200).map(|r| r.0.as_str()).collect();
    assert!(subjects.first().is_some_and(|s| s.contains("client-1")), "{requests:?}");
    assert!(subjects.last().is_some_and(|s| s.contains("client-2")), "the rotated certificate is used: {requests:?}");
    // Once the new one is in use, the old one never comes back.
    let first_new = subjects.iter().position(|s| s.contains("client-2")).unwrap();
    assert!(subjects[first_new..].iter().all(|s| s.contains("client-2")), "{subjects:?}");
    assert_identity(&shipper.stats().ring);
    shipper.shutdown(Duration::from_secs(2)).unwrap();
}

/// An expired server certificate and one for another name: permanent
/// failures naming the cause, nothing acked. The second is accepted once
/// `Tls::server_name` names the name it carries.
#[test]
fn expired_and_wrong_name_certificates_fail_for_good_naming_the_cause() {
    require!(NGINX);
    let pki = Pki::new();
    let rx = HttpReceiver::start();
    let trust = Tls::default().ca_file(pki.path("ca.pem"));
    for (server, cause) in [("expired", "expired"), ("other", "not valid for name")] {
        let nginx = Nginx::start(&pki, server, false, rx.port, false);
        let t = TempRing::new();
        let shipper = builder(&t, &nginx.url(), trust.clone()).start().unwrap();
        shipper.append(b"kept").unwrap();
        eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
        let error = shipper.health().last_error.unwrap_or_default();
        assert!(error.contains(cause), "{server}: {error}");
        let s = shipper.stats();
        assert_eq!((s.send_failures, s.ring.acked, s.ring.pending), (s.permanent_failures, 0, 1), "{s:?}");
        shipper.shutdown(Duration::from_secs(2)).unwrap();
        if server == "other" {
            assert!(error.contains("Tls::server_name"), "{error}");
            let shipper = builder(&t, &nginx.url(), trust.clone().server_name("other.example")).start().unwrap();
            eventually("acked under the name the certificate carries", || shipper.stats().ring.acked == 1);
            shipper.shutdown(Duration::from_secs(2)).unwrap();
        }
    }
}

/// `TlsVersion::Tls13` speaks TLS 1.3 only: against a TLS 1.3 server it
/// delivers (and the server saw TLS 1.3); against a TLS 1.2-only server
/// (`openssl s_server -tls1_2`) it fails for good.
#[test]
fn tls13_only_is_what_it_says() {
    require!(NGINX);
    let pki = Pki::new();
    let rx = HttpReceiver::start();
    let nginx = Nginx::start(&pki, "server", false, rx.port, true);
    let t = TempRing::new();
    let tls = Tls::default().ca_file(pki.path("ca.pem")).min_version(TlsVersion::Tls13);
    let shipper = builder(&t, &nginx.url(), tls.clone()).start().unwrap();
    shipper.append(&payload(1, 64)).unwrap();
    eventually("acked", || shipper.stats().ring.acked == 1);
    assert!(nginx.requests().iter().all(|r| r.1 == "TLSv1.3"), "{:?}", nginx.requests());
    shipper.shutdown(Duration::from_secs(2)).unwrap();

    let port = free_port();
    let (cert, key) = pki.pair("server");
    let mut server = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-tls1_2", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port, "openssl s_server", &mut server);
    let t = TempRing::new();
    let shipper = builder(&t, &format!("https://localhost:{port}/ingest"), tls).start().unwrap();
    shipper.append(b"kept").unwrap();
    eventually("a permanent failure", || shipper.stats().permanent_failures >= 1);
    let error = shipper.health().last_error.unwrap_or_default();
    let _ = server.kill();
    let _ = server.wait();
    assert!(error.contains("TLS"), "{error}");
    assert_eq!(shipper.stats().ring.acked, 0);
}

/// TLS files that cannot be used are refused when the shipper starts,
/// with the file and what is wrong with it.
#[test]
fn unusable_tls_files_are_refused_at_start_naming_the_file() {
    let pki = Pki::new();
    let odd = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &[u8]| {
        let p = odd.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let empty = write("empty.pem", b"");
    let encrypted = odd.path().join("encrypted.key");
    let out = Command::new("openssl")
        .args(["pkey", "-aes256", "-passout", "pass:secret", "-in"])
        .arg(pki.path("client1.key"))
        .arg("-out")
        .arg(&encrypted)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let garbage = write("garbage.pem", b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n");
    let missing = odd.path().join("missing.pem");
    let (c1, k1) = pki.pair("client1");
    let (_, k2) = pki.pair("client2");
    let ca_key = pki.path("ca.key");
    let none = PathBuf::new();
    let cases: Vec<(Tls, &Path, &str)> = vec![
        (Tls::default().ca_file(&ca_key), &ca_key, "private key where certificates belong"),
        (Tls::default().ca_file(&empty), &empty, "is empty"),
        (Tls::default().ca_file(odd.path()), odd.path(), "is a directory"),
        (Tls::default().ca_file(&missing), &missing, "cannot be read"),
        (Tls::default().ca_file(&garbage), &garbage, "not valid PEM"),
        (Tls::default().client_cert(&c1, &encrypted), &encrypted, "encrypted"),
        (Tls::default().client_cert(&k1, &k1), &k1, "private key where certificates belong"),
        (Tls::default().client_cert(&c1, &c1), &c1, "certificate where the private key belongs"),
        (Tls::default().client_cert(&c1, &k2), &k2, "does not go with"),
        (Tls::default().system_roots(false), &none, "trusts no CA"),
        (Tls::default().server_name("not a name"), &none, "not a DNS name"),
    ];
    for (tls, file, says) in cases {
        let t = TempRing::new();
        match builder(&t, "https://localhost:1/ingest", tls).start() {
            Err(Error::Config(m)) => {
                assert!(m.contains(says), "{m} (wanted {says:?})");
                assert!(m.contains(&file.display().to_string()), "{m} names no file {}", file.display());
            }
            other => panic!("{says}: {:?}", other.map(|_| ())),
        }
    }
    // The OTLP and syslog transports take the same settings, checked the
    // same way (syslog only for a TLS endpoint).
    let bad = Tls::default().ca_file(&empty);
    let ring = |t: &TempRing| Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    let t = TempRing::new();
    let otlp = Shipper::builder(ring(&t))
        .endpoint(Endpoint::new("https://localhost:1/v1/logs"))
        .transport(ringship::OtlpTransport::factory(ringship::OtlpConfig::default().tls(bad.clone())))
        .start();
    assert!(matches!(&otlp, Err(Error::Config(m)) if m.contains("is empty")), "{:?}", otlp.map(|_| ()));
    let syslog = |url: &str| {
        let t = TempRing::new();
        let config = ringship::SyslogConfig::default().tls(bad.clone());
        Shipper::builder(ring(&t))
            .endpoint(Endpoint::new(url))
            .transport(ringship::SyslogTransport::factory(config).unwrap())
            .start()
            .map(|s| s.shutdown(Duration::from_secs(1)))
    };
    assert!(matches!(syslog("relp+tls://localhost:1"), Err(Error::Config(m)) if m.contains("is empty")));
    assert!(syslog("relp://localhost:1").is_ok(), "no TLS: the TLS settings are not used");
}

/// A tinyproxy of our own on a loopback port, asking for a password when
/// given one; its log names each request.
struct Tinyproxy {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Tinyproxy {
    fn start(auth: Option<(&str, &str)>) -> Tinyproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let auth = auth.map_or(String::new(), |(user, password)| format!("BasicAuth {user} {password}\n"));
        std::fs::write(
            dir.path().join("tinyproxy.conf"),
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\nAllow 127.0.0.1\n{auth}LogFile \
                 \"{d}/tinyproxy.log\"\nLogLevel Connect\nPidFile \"{d}/tinyproxy.pid\"\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(TINYPROXY)
            .arg("-d")
            .arg("-c")
            .arg(dir.path().join("tinyproxy.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(port, "tinyproxy", &mut child);
        Tinyproxy { child, dir, port }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tinyproxy.log")).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the ignored test `name` of this binary in a child process with
/// `env` set (the environment is the process's), and asserts it passed.
fn run_child(name: &str, env: &[(&str, String)]) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", name, "--nocapture"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the child failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn via_proxy(url: &str, proxy: Proxy) -> (TempRing, Shipper) {
    let t = TempRing::new();
    let config = HttpConfig::default().format(BodyFormat::LengthPrefixed).proxy(proxy);
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    let shipper = Shipper::builder(ring)
        .endpoint(Endpoint::new(url))
        .transport(HttpTransport::factory(config))
        .linger(Duration::from_millis(2))
        .backoff_initial(Duration::from_millis(10))
        .backoff_max(Duration::from_millis(100))
        .start()
        .unwrap();
    (t, shipper)
}

/// An explicit proxy (a real tinyproxy, with a password) carries every
/// request; its password appears nowhere ringship shows, not even when
/// the proxy refuses it.
#[test]
fn an_explicit_proxy_carries_the_requests_and_keeps_its_password() {
    require!(TINYPROXY);
    let rx = HttpReceiver::start();
    let proxy = Tinyproxy::start(Some(("ringship", "pr0xy-s3cret")));
    let url = |password: &str| Proxy::url(format!("http://ringship:{password}@127.0.0.1:{}", proxy.port));
    let (_t, shipper) = via_proxy(&rx.url(), url("pr0xy-s3cret"));
    for i in 1..=100 {
        shipper.append(&payload(i, 64)).unwrap();
    }
    eventually("all acked", || shipper.stats().ring.acked == 100);
    assert_exact(&rx, 100, 64);
    assert!(proxy.log().contains(&format!("127.0.0.1:{}", rx.port)), "the proxy saw no request: {}", proxy.log());
    shipper.shutdown(Duration::from_secs(2)).unwrap();

    let (_t, shipper) = via_proxy(&rx.url(), url("wr0ng-passw0rd"));
    shipper.append(b"kept").unwrap();
    eventually("refused by the proxy", || shipper.health().last_error.is_some());
    let shown = format!("{:?}{}", shipper.health(), shipper.stats().to_prometheus());
    assert!(!shown.contains("wr0ng-passw0rd"), "{shown}");
    assert_eq!(shipper.stats().ring.acked, 0);
}

/// The environment's proxy is used only when asked for: run in a child
/// process (the environment is the process's) with `HTTP_PROXY` naming a
/// live tinyproxy, a shipper with the default setting sends to receiver A
/// directly, and one with `Proxy::from_env()` to receiver B through the
/// proxy, whose log names B and never A.
#[test]
fn the_environments_proxy_is_used_only_when_asked_for() {
    require!(TINYPROXY);
    let proxy = Tinyproxy::start(None);
    let (a, b) = (HttpReceiver::start(), HttpReceiver::start());
    run_child(
        "proxy_from_the_environment_child",
        &[
            ("HTTP_PROXY", format!("http://127.0.0.1:{}", proxy.port)),
            ("RINGSHIP_TEST_RECEIVERS", format!("{} {}", a.url(), b.url())),
        ],
    );
    assert_eq!((a.seqs().len(), b.seqs().len()), (20, 20));
    let log = proxy.log();
    assert!(log.contains(&format!("127.0.0.1:{}", b.port)), "{log}");
    assert!(!log.contains(&format!("127.0.0.1:{}", a.port)), "the default setting used the environment's proxy: {log}");
}

/// Run by the test above, in a process with the proxy environment set.
#[test]
#[ignore = "run by the_environments_proxy_is_used_only_when_asked_for, in a child process"]
fn proxy_from_the_environment_child() {
    let urls = std::env::var("RINGSHIP_TEST_RECEIVERS").expect("run by its parent test");
    let (a, b) = urls.split_once(' ').unwrap();
    for (url, proxy) in [(a, Proxy::none()), (b, Proxy::from_env())] {
        let (_t, shipper) = via_proxy(url, proxy);
        for i in 1..=20 {
            shipper.append(&payload(i, 16)).unwrap();
        }
        eventually("acked", || shipper.stats().ring.acked == 20);
        shipper.shutdown(Duration::from_secs(2)).unwrap();
    }
}

/// `Tls::default()` trusts the system's bundle, which `SSL_CERT_FILE`
/// names: run in a child process with it naming the private CA, a shipper
/// with the default settings delivers through nginx.
#[test]
fn the_default_trusts_the_bundle_ssl_cert_file_names() {
    require!(NGINX);
    let pki = Pki::new();
    let rx = HttpReceiver::start();
    let nginx = Nginx::start(&pki, "server", false, rx.port, false);
    run_child(
        "default_trust_child",
        &[("SSL_CERT_FILE", pki.path("ca.pem").display().to_string()), ("RINGSHIP_TEST_RECEIVERS", nginx.url())],
    );
    assert_exact(&rx, 20, 16);
}

/// Run by the test above, in a process with `SSL_CERT_FILE` set.
#[test]
#[ignore = "run by the_default_trusts_the_bundle_ssl_cert_file_names, in a child process"]
fn default_trust_child() {
    let url = std::env::var("RINGSHIP_TEST_RECEIVERS").expect("run by its parent test");
    let t = TempRing::new();
    let shipper = builder(&t, &url, Tls::default()).start().unwrap();
    for i in 1..=20 {
        shipper.append(&payload(i, 16)).unwrap();
    }
    eventually("acked", || shipper.stats().ring.acked == 20);
    shipper.shutdown(Duration::from_secs(2)).unwrap();
}
