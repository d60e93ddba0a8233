//! A small synchronous client of the NATS protocol, as much of it as
//! publishing to JetStream with acknowledgements takes: the `INFO` /
//! `CONNECT` handshake (token or user and password, TLS when asked for or
//! required), `HPUB` with headers and a reply subject, one `SUB` on an
//! inbox for the acknowledgements, `MSG` / `HMSG` (and the no-responders
//! status), `PING` / `PONG`, `+OK` and `-ERR`. Every wait is bounded by the
//! send's deadline and sees its cancellation within 20 ms.

use std::io::{Read, Write};

use crate::transport::net::{Stream, retryable};
use crate::transport::{SendContext, SendError};

/// Longest protocol line taken from a server (an `INFO` with many
/// cluster URLs fits).
const MAX_LINE: usize = 64 << 10;

/// What the server said in its `INFO`.
#[derive(Debug, Default)]
pub(super) struct Info {
    pub(super) max_payload: usize,
    pub(super) headers: bool,
    pub(super) tls_required: bool,
    /// Other servers of its cluster (`host:port`).
    pub(super) connect_urls: Vec<String>,
}

impl Info {
    fn parse(json: &[u8]) -> Result<Info, SendError> {
        let v: serde_json::Value = serde_json::from_slice(json)
            .map_err(|e| SendError::permanent(format!("the server's INFO is not JSON ({e}): not a NATS server?")))?;
        Ok(Info {
            max_payload: v["max_payload"].as_u64().and_then(|n| usize::try_from(n).ok()).unwrap_or(1 << 20),
            headers: v["headers"].as_bool().unwrap_or(false),
            tls_required: v["tls_required"].as_bool().unwrap_or(false),
            connect_urls: v["connect_urls"]
                .as_array()
                .map(|a| a.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
        })
    }
}

/// A message to the client: its subject, status (`HMSG` headers'
/// `NATS/1.0 503`), and payload.
pub(super) struct Delivered {
    pub(super) subject: String,
    pub(super) status: Option<u16>,
    pub(super) payload: Vec<u8>,
}

pub(super) struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    /// Bytes of `buf` already taken.
    at: usize,
    out: Vec<u8>,
    pub(super) info: Info,
    /// The inbox the acknowledgements come to: `_INBOX.<random>`.
    pub(super) inbox: String,
    /// Which server (`host:port`), for messages.
    pub(super) server: String,
}

/// What a TLS handshake takes: the client configuration, the name to
/// verify, and which CAs are trusted (for errors).
pub(super) type Handshake = (std::sync::Arc<rustls::ClientConfig>, rustls::pki_types::ServerName<'static>, String);

/// Credentials from the endpoint's user info.
#[derive(Clone)]
pub(super) enum Auth {
    None,
    Token(String),
    User(String, String),
}

impl Conn {
    /// The handshake over `tcp`: the server's `INFO`, TLS when `tls` is
    /// given (or the server requires it, which then fails), `CONNECT`, and a
    /// `PING` answered by `PONG`, which says the server took the `CONNECT`.
    pub(super) fn open(
        tcp: std::net::TcpStream,
        server: String,
        auth: &Auth,
        tls: Option<Handshake>,
        ctx: &SendContext,
    ) -> Result<Conn, SendError> {
        let _ = tcp.set_nodelay(true);
        let mut conn = Conn {
            stream: Stream::Plain(tcp),
            buf: Vec::with_capacity(64 << 10),
            at: 0,
            out: Vec::with_capacity(64 << 10),
            info: Info::default(),
            inbox: format!("_INBOX.{:016x}{:016x}", random(), random()),
            server,
        };
        let line = conn.line(ctx)?;
        let Some(json) = line.strip_prefix(b"INFO ") else {
            return Err(SendError::permanent(format!(
                "{} did not greet with INFO: not a NATS server ({})",
                conn.server,
                crate::escape::sanitize(&String::from_utf8_lossy(&line))
            )));
        };
        conn.info = Info::parse(json)?;
        if !conn.info.headers {
            return Err(SendError::permanent(format!(
                "{} does not take message headers (NATS 2.2 or later is needed for JetStream's Nats-Msg-Id)",
                conn.server
            )));
        }
        match tls {
            Some((config, name, trust)) => {
                // TLS starts after the INFO; nothing else came before it.
                let Conn { stream: Stream::Plain(tcp), buf, at, out, info, inbox, server } = conn else {
                    unreachable!("plain until now")
                };
                let stream = crate::transport::net::handshake(tcp, config, name, ctx.deadline, &trust)?;
                conn = Conn { stream, buf, at, out, info, inbox, server };
            }
            None if conn.info.tls_required => {
                return Err(SendError::permanent(format!(
                    "{} requires TLS: use a tls:// endpoint (and NatsConfig::tls for its CAs)",
                    conn.server
                )));
            }
            None => {}
        }
        let mut connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": !matches!(conn.stream, Stream::Plain(_)),
            "name": "ringship",
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "headers": true,
            "no_responders": true,
        });
        match auth {
            Auth::None => {}
            Auth::Token(token) => connect["auth_token"] = token.as_str().into(),
            Auth::User(user, pass) => {
                connect["user"] = user.as_str().into();
                connect["pass"] = pass.as_str().into();
            }
        }
        conn.out.extend_from_slice(format!("CONNECT {connect}\r\nPING\r\n").as_bytes());
        conn.flush(ctx)?;
        loop {
            let line = conn.line(ctx)?;
            if line == b"PONG" {
                break;
            }
            conn.control(&line)?;
        }
        let sub = format!("SUB {}.> 1\r\n", conn.inbox);
        conn.out.extend_from_slice(sub.as_bytes());
        Ok(conn)
    }

    /// Queues an `HPUB` (sent by the next [`flush`](Self::flush)).
    pub(super) fn publish(&mut self, subject: &str, reply: &str, headers: &[(&str, String)], payload: &[u8]) {
        let mut head = b"NATS/1.0\r\n".to_vec();
        for (k, v) in headers {
            head.extend_from_slice(k.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(v.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let total = head.len() + payload.len();
        self.out.extend_from_slice(format!("HPUB {subject} {reply} {} {total}\r\n", head.len()).as_bytes());
        self.out.extend_from_slice(&head);
        self.out.extend_from_slice(payload);
        self.out.extend_from_slice(b"\r\n");
    }

    /// The bytes an `HPUB` of these takes against the server's
    /// `max_payload` (headers and payload).
    pub(super) fn message_len(headers: &[(&str, String)], payload: &[u8]) -> usize {
        12 + headers.iter().map(|(k, v)| k.len() + v.len() + 4).sum::<usize>() + payload.len()
    }

    /// Bytes queued and not yet written.
    pub(super) fn queued(&self) -> usize {
        self.out.len()
    }

    pub(super) fn flush(&mut self, ctx: &SendContext) -> Result<(), SendError> {
        let mut at = 0;
        while at < self.out.len() {
            self.slice(ctx)?;
            match self.stream.write(&self.out[at..]) {
                Ok(0) => return Err(SendError::retryable(format!("{} closed the connection", self.server))),
                Ok(n) => at += n,
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(retryable(&format!("writing to {}", self.server), &e)),
            }
        }
        self.out.clear();
        self.slice(ctx)?;
        match self.stream.flush() {
            Ok(()) => Ok(()),
            Err(e) if is_timeout(&e) => Ok(()),
            Err(e) => Err(retryable(&format!("writing to {}", self.server), &e)),
        }
    }

    /// Whether a whole protocol line is already read (a message's line;
    /// its payload may still be coming).
    pub(super) fn has_line(&self) -> bool {
        self.buf[self.at..].windows(2).any(|w| w == b"\r\n")
    }

    /// The next message to this client, answering the server's `PING`s
    /// on the way.
    pub(super) fn next_message(&mut self, ctx: &SendContext) -> Result<Delivered, SendError> {
        loop {
            let line = self.line(ctx)?;
            let text = String::from_utf8_lossy(&line).into_owned();
            let mut parts = text.split_ascii_whitespace();
            match parts.next() {
                Some("MSG") => {
                    let f: Vec<&str> = parts.collect();
                    let (subject, len) = match f.as_slice() {
                        [s, _sid, len] | [s, _sid, _, len] => (*s, parse_len(len)?),
                        _ => return Err(self.garbled(&text)),
                    };
                    let payload = self.take(len, ctx)?;
                    return Ok(Delivered { subject: subject.to_owned(), status: None, payload });
                }
                Some("HMSG") => {
                    let f: Vec<&str> = parts.collect();
                    let (subject, head, total) = match f.as_slice() {
                        [s, _sid, h, t] | [s, _sid, _, h, t] => (*s, parse_len(h)?, parse_len(t)?),
                        _ => return Err(self.garbled(&text)),
                    };
                    if head > total {
                        return Err(self.garbled(&text));
                    }
                    let all = self.take(total, ctx)?;
                    // `NATS/1.0 503` (no responders), or `NATS/1.0` alone.
                    let status = all[..head]
                        .split(|&b| b == b'\r')
                        .next()
                        .and_then(|l| std::str::from_utf8(l).ok())
                        .and_then(|l| l.strip_prefix("NATS/1.0"))
                        .and_then(|rest| rest.split_whitespace().next().and_then(|code| code.parse().ok()));
                    return Ok(Delivered { subject: subject.to_owned(), status, payload: all[head..].to_vec() });
                }
                _ => self.control(&line)?,
            }
        }
    }

    /// A protocol line that is no message: `PING`, `+OK`, `INFO`, `-ERR`.
    fn control(&mut self, line: &[u8]) -> Result<(), SendError> {
        if line == b"PING" {
            self.out.extend_from_slice(b"PONG\r\n");
            return Ok(());
        }
        if line == b"+OK" || line == b"PONG" {
            return Ok(());
        }
        if let Some(json) = line.strip_prefix(b"INFO ") {
            if let Ok(info) = Info::parse(json) {
                self.info.connect_urls = info.connect_urls;
            }
            return Ok(());
        }
        if let Some(err) = line.strip_prefix(b"-ERR") {
            let why = String::from_utf8_lossy(err).trim().trim_matches('\'').to_owned();
            let message = format!("{} answered -ERR '{}'", self.server, crate::escape::sanitize(&why));
            let lower = why.to_ascii_lowercase();
            // Credentials and permissions fail the same way until fixed.
            return Err(
                if lower.contains("authorization") || lower.contains("permissions") || lower.contains("authentication")
                {
                    SendError::permanent(message)
                } else {
                    SendError::retryable(message)
                },
            );
        }
        Err(self.garbled(&String::from_utf8_lossy(line)))
    }

    fn garbled(&self, line: &str) -> SendError {
        SendError::retryable(format!(
            "{} sent a line that is not NATS protocol: {}",
            self.server,
            crate::escape::sanitize(line)
        ))
    }

    /// Short socket timeouts, so that cancellation is seen within 20 ms.
    fn slice(&self, ctx: &SendContext) -> Result<(), SendError> {
        crate::transport::net::deadline_slice(self.stream.tcp(), ctx)
    }

    /// Reads more into the buffer.
    fn fill(&mut self, ctx: &SendContext) -> Result<(), SendError> {
        if self.at > 0 && self.at == self.buf.len() {
            self.buf.clear();
            self.at = 0;
        } else if self.at > 32 << 10 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        let mut chunk = [0u8; 16 << 10];
        loop {
            self.slice(ctx)?;
            if !self.out.is_empty() {
                // A PONG owed to the server goes first.
                self.flush(ctx)?;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(SendError::retryable(format!("{} closed the connection", self.server))),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(retryable(&format!("reading from {}", self.server), &e)),
            }
        }
    }

    /// The next protocol line, without its CRLF.
    fn line(&mut self, ctx: &SendContext) -> Result<Vec<u8>, SendError> {
        loop {
            if let Some(end) = self.buf[self.at..].windows(2).position(|w| w == b"\r\n") {
                let line = self.buf[self.at..self.at + end].to_vec();
                self.at += end + 2;
                return Ok(line);
            }
            if self.buf.len() - self.at > MAX_LINE {
                return Err(SendError::retryable(format!("{} sent a line longer than {MAX_LINE} bytes", self.server)));
            }
            self.fill(ctx)?;
        }
    }

    /// `len` bytes of payload and their CRLF.
    fn take(&mut self, len: usize, ctx: &SendContext) -> Result<Vec<u8>, SendError> {
        while self.buf.len() - self.at < len + 2 {
            self.fill(ctx)?;
        }
        let payload = self.buf[self.at..self.at + len].to_vec();
        self.at += len + 2;
        Ok(payload)
    }

    /// Whether the server closed the connection, or sent something while
    /// it was idle (a `PING`, an acknowledgement come late), since it was
    /// last used: then a fresh one is made rather than the old one's
    /// leftovers sorted out. (Over TLS, what the server sent is read into
    /// the TLS buffer and taken by the next read.)
    pub(super) fn stale(&mut self) -> bool {
        let tcp = self.stream.tcp();
        if tcp.set_nonblocking(true).is_err() {
            return true;
        }
        let mut probe = [0u8; 1];
        let stale = match &mut self.stream {
            Stream::Plain(s) => !matches!(s.peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            Stream::Tls(s) => loop {
                match s.conn.read_tls(&mut s.sock) {
                    Ok(0) => break true,
                    Ok(_) => match s.conn.process_new_packets() {
                        Ok(state) if state.peer_has_closed() => break true,
                        Ok(_) => {}
                        Err(_) => break true,
                    },
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            },
        };
        self.stream.tcp().set_nonblocking(false).is_err() || stale
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut | std::io::ErrorKind::Interrupted)
}

fn parse_len(s: &str) -> Result<usize, SendError> {
    s.parse().map_err(|_| SendError::retryable(format!("a NATS message length {s:?} that is no number")))
}

/// 64 random bits for the inbox name: the standard library's hasher keys
/// come from the OS's randomness (no `rand` crate for this).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish()
}
