//! nats-server for the tests, started on loopback ports (alone, or three
//! in a JetStream cluster), and a minimal client of the tests' own for
//! JetStream's API: create a stream, read every message stored. Shared by
//! tests/nats.rs and the compare benchmark, which uses only part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

pub const NATS_SERVER: &str = "/usr/sbin/nats-server";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    pub dir: PathBuf,
}

impl NatsServer {
    /// One server; with JetStream (file storage under `dir`) if `js`.
    pub fn start(dir: &Path, port: u16, js: bool) -> NatsServer {
        let mut args = vec!["-a".into(), "127.0.0.1".into(), "-p".into(), port.to_string()];
        if js {
            args.extend(["-js".into(), "-sd".into(), dir.join("js").display().to_string()]);
        }
        NatsServer::spawn(dir, port, args)
    }

    /// One JetStream server with extra arguments (credentials, TLS).
    pub fn start_with(dir: &Path, port: u16, extra: &[String]) -> NatsServer {
        let mut args = vec!["-a".into(), "127.0.0.1".into(), "-p".into(), port.to_string()];
        args.extend(["-js".into(), "-sd".into(), dir.join("js").display().to_string()]);
        args.extend(extra.iter().cloned());
        NatsServer::spawn(dir, port, args)
    }

    /// Three servers in one JetStream cluster.
    pub fn cluster(dir: &Path) -> Vec<NatsServer> {
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let routes: Vec<String> = ports.iter().map(|(_, c)| format!("nats://127.0.0.1:{c}")).collect();
        ports
            .iter()
            .enumerate()
            .map(|(i, &(port, cluster))| {
                let d = dir.join(format!("n{i}"));
                std::fs::create_dir_all(&d).unwrap();
                let conf = format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: ringship\n listen: 127.0.0.1:{cluster}\n routes: [{}] }}\n",
                    d.join("js").display(),
                    routes.join(", ")
                );
                std::fs::write(d.join("nats.conf"), conf).unwrap();
                NatsServer::spawn(&d, port, vec!["-c".into(), d.join("nats.conf").display().to_string()])
            })
            .collect()
    }

    fn spawn(dir: &Path, port: u16, args: Vec<String>) -> NatsServer {
        let mut s = NatsServer { child: None, port, args, dir: dir.to_path_buf() };
        s.restart();
        s
    }

    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.join(format!("server-{}.log", self.port))).unwrap();
        let child = Command::new(NATS_SERVER)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start listening on {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A byte stream, plain or TLS.
pub trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// A blocking client for requests to JetStream's API.
pub struct Api {
    stream: BufReader<Box<dyn Io>>,
    next: u64,
}

impl Api {
    pub fn connect(port: u16) -> Api {
        Api::connect_as(port, "")
    }

    /// With credentials, as `CONNECT` fields (`"user":"u","pass":"p",`).
    pub fn connect_as(port: u16, credentials: &str) -> Api {
        Api::open(port, credentials, None)
    }

    /// Over TLS, trusting the CAs in `ca` (PEM), to server `name`.
    pub fn connect_tls(port: u16, ca: &Path, name: &str) -> Api {
        Api::open(port, "", Some((ca, name)))
    }

    fn open(port: u16, credentials: &str, tls: Option<(&Path, &str)>) -> Api {
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The INFO comes before any TLS.
        let mut info = Vec::new();
        let mut byte = [0u8; 1];
        let mut raw = &tcp;
        while !info.ends_with(b"\r\n") {
            raw.read_exact(&mut byte).unwrap();
            info.push(byte[0]);
        }
        assert!(info.starts_with(b"INFO "), "{}", String::from_utf8_lossy(&info));
        let io: Box<dyn Io> = match tls {
            None => Box::new(tcp),
            Some((ca, name)) => {
                use rustls::pki_types::pem::PemObject as _;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(cert.unwrap()).unwrap();
                }
                let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
                let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
        };
        let mut api = Api { stream: BufReader::new(io), next: 0 };
        let connect = format!(
            "CONNECT {{{credentials}\"verbose\":false,\"headers\":true,\"no_responders\":true}}\r\n\
             SUB _TEST_INBOX.> 1\r\nPING\r\n"
        );
        api.write(connect.as_bytes());
        loop {
            let mut line = String::new();
            let n = api.stream.read_line(&mut line).unwrap();
            assert!(n > 0 && !line.starts_with("-ERR"), "the server refused the test's connection: {line:?}");
            if line.trim() == "PONG" {
                break;
            }
        }
        api
    }

    fn write(&mut self, b: &[u8]) {
        self.stream.get_mut().write_all(b).unwrap();
    }

    /// A request's answer (JSON), retried while the cluster elects.
    pub fn request(&mut self, subject: &str, body: &serde_json::Value) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let answer = self.request_once(subject, body);
            let unavailable = answer.get("error").is_some_and(|e| {
                let d = e["description"].as_str().unwrap_or_default();
                d.contains("unavailable") || d.contains("no suitable peers") || d.contains("insufficient resources")
            }) || answer.is_null();
            if !unavailable || Instant::now() > deadline {
                return answer;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn request_once(&mut self, subject: &str, body: &serde_json::Value) -> serde_json::Value {
        self.next += 1;
        let reply = format!("_TEST_INBOX.{}", self.next);
        let payload = body.to_string();
        self.write(format!("PUB {subject} {reply} {}\r\n{payload}\r\n", payload.len()).as_bytes());
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).unwrap_or(0) == 0 {
                return serde_json::Value::Null;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.first().copied() {
                Some("PING") => self.write(b"PONG\r\n"),
                Some("MSG") if f.len() >= 4 => {
                    let len: usize = f[f.len() - 1].parse().unwrap();
                    let mut buf = vec![0u8; len + 2];
                    self.stream.read_exact(&mut buf).unwrap();
                    if f[1] == reply {
                        return serde_json::from_slice(&buf[..len]).unwrap();
                    }
                }
                Some("HMSG") if f.len() >= 5 => {
                    let len: usize = f[f.len() - 1].parse().unwrap();
                    let mut buf = vec![0u8; len + 2];
                    self.stream.read_exact(&mut buf).unwrap();
                    if f[1] == reply {
                        // No responders: JetStream is not up yet.
                        return serde_json::Value::Null;
                    }
                }
                _ => {}
            }
        }
    }

    pub fn create_stream(&mut self, config: &serde_json::Value) {
        let name = config["name"].as_str().unwrap();
        let answer = self.request(&format!("$JS.API.STREAM.CREATE.{name}"), config);
        assert!(answer.get("error").is_none() && !answer.is_null(), "create stream: {answer}");
    }

    /// Every message stored: (ringship seq header or None, headers text, payload).
    pub fn messages(&mut self, stream: &str) -> Vec<(Option<u64>, String, Vec<u8>)> {
        let info = self.request(&format!("$JS.API.STREAM.INFO.{stream}"), &serde_json::json!({}));
        let (first, last) = (info["state"]["first_seq"].as_u64().unwrap(), info["state"]["last_seq"].as_u64().unwrap());
        let mut out = Vec::new();
        for seq in first..=last {
            let m = self.request(&format!("$JS.API.STREAM.MSG.GET.{stream}"), &serde_json::json!({"seq": seq}));
            if m.get("error").is_some() {
                continue;
            }
            let b64 = base64::engine::general_purpose::STANDARD;
            let headers = String::from_utf8(b64.decode(m["message"]["hdrs"].as_str().unwrap_or("")).unwrap()).unwrap();
            let data = b64.decode(m["message"]["data"].as_str().unwrap_or("")).unwrap();
            let ring_seq =
                headers.lines().find_map(|l| l.strip_prefix("Ringship-Seq: ")).and_then(|v| v.trim().parse().ok());
            out.push((ring_seq, headers, data));
        }
        out
    }
}
