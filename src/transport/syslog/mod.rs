//! Syslog transports: RFC 5424 messages over TCP with RFC 6587 octet
//! counting (`tcp://host:port`), and RELP (`relp://host:port`), the
//! acknowledged protocol rsyslog speaks through imrelp.
//!
//! Each record becomes one RFC 5424 message whose structured data carries
//! its seq, so a receiver can de-duplicate:
//!
//! ```text
//! <14>1 2026-11-24T05:30:57.123456Z host app - - [ringship@32473 seq="42"] payload
//! ```
//!
//! A record whose message would exceed [`SyslogConfig::max_message_len`]
//! goes as several, `[ringship@32473 seq="42" part="1/3"]` and so on: a
//! receiver truncates a longer message and still acknowledges it. No part
//! but the last ends in bytes a receiver strips from a message's end.
//!
//! A gap notice becomes one message with MSGID `gap` and
//! `[ringship-gap@32473 first=".." last=".." count=".." cause=".." rejected=".."]`.
//!
//! Over plain TCP a batch counts as delivered once written to the socket:
//! records in flight when the receiver dies can be lost. Over RELP a batch
//! counts as delivered only when rsyslog has acknowledged every message in
//! it, and anything unacknowledged is sent again.
//!
//! The RELP client is ours (there is no client crate): frames are
//! `TXNR SP COMMAND SP DATALEN [SP DATA] LF`; a session opens with
//! `open` (`relp_version=0`, `commands=syslog`), sends each message as a
//! `syslog` command, and every command is answered by an `rsp` frame whose
//! data starts with a status code (`200 OK`). A session that is not broken
//! ends with `close` when the transport is dropped or the endpoint
//! switched.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{
    Batch, BatchRecord, CancelToken, Endpoint, GapNotice, SendContext, SendError, Transport, TransportFactory,
    run_cancellable,
};

/// Private enterprise number used in structured-data IDs (reserved for
/// documentation examples by RFC 5612).
const PEN: u32 = 32473;
/// Most RELP commands in flight at once.
const RELP_WINDOW: usize = 128;
/// Largest RELP response frame accepted.
const MAX_RSP: usize = 64 << 10;
/// Longest wait for the answer to the `close` that ends a RELP session.
const RELP_CLOSE_WAIT: Duration = Duration::from_millis(500);

/// Settings of a [`SyslogTransport`]; start from [`SyslogConfig::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    hostname: String,
    app_name: String,
    facility: u8,
    severity: u8,
    max_message_len: usize,
}

/// The least `max_message_len`: room for the longest header (a 255-byte
/// host name) and some payload.
pub(crate) const MIN_SYSLOG_MESSAGE_LEN: usize = 1024;

impl Default for SyslogConfig {
    /// The machine's host name (or `-`), APP-NAME `ringship`, facility 1
    /// (user-level), severity 6 (informational), messages of up to 8,096
    /// bytes.
    fn default() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
            .unwrap_or_else(|| "-".to_owned());
        SyslogConfig { hostname, app_name: "ringship".to_owned(), facility: 1, severity: 6, max_message_len: 8096 }
    }
}

impl SyslogConfig {
    /// The HOSTNAME field: 1 to 255 printable US-ASCII characters without
    /// spaces (`-` for none).
    #[must_use]
    pub fn hostname(mut self, name: impl Into<String>) -> Self {
        self.hostname = name.into();
        self
    }

    /// The APP-NAME field: 1 to 48 printable US-ASCII characters without
    /// spaces.
    #[must_use]
    pub fn app_name(mut self, name: impl Into<String>) -> Self {
        self.app_name = name.into();
        self
    }

    /// The facility, 0 to 23.
    #[must_use]
    pub fn facility(mut self, facility: u8) -> Self {
        self.facility = facility;
        self
    }

    /// The severity, 0 to 7.
    #[must_use]
    pub fn severity(mut self, severity: u8) -> Self {
        self.severity = severity;
        self
    }

    /// The longest message the receiver takes whole, at least 1,024 bytes
    /// (the whole message, as rsyslog's `maxMessageSize` counts it). A
    /// receiver truncates a longer message and still acknowledges it
    /// (rsyslog's imrelp and imtcp both do), so a record whose message
    /// would be longer goes as several messages, in order, each with
    /// `part="i/n"` in its structured data: nothing is cut off. A UTF-8
    /// payload is split between characters, and no part but the last ends
    /// in whitespace or a control character, which a receiver may strip
    /// from a message's end.
    #[must_use]
    pub fn max_message_len(mut self, bytes: usize) -> Self {
        self.max_message_len = bytes;
        self
    }

    /// Checks the fields against RFC 5424: a field outside its bounds would
    /// shift the message's fields, and a receiver would no longer find a
    /// record's seq.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) naming the field.
    pub(crate) fn validate(&self) -> Result<(), crate::Error> {
        let field = |name: &str, value: &str, max: usize| {
            if value.is_empty() || value.len() > max || !value.bytes().all(|b| (33..=126).contains(&b)) {
                return Err(crate::Error::Config(format!(
                    "syslog {name} {value:?} must be 1 to {max} printable US-ASCII characters without spaces \
                     (\"-\" for none)"
                )));
            }
            Ok(())
        };
        field("hostname", &self.hostname, 255)?;
        field("app_name", &self.app_name, 48)?;
        if self.facility > 23 || self.severity > 7 {
            return Err(crate::Error::Config(format!(
                "syslog facility {} must be at most 23 and severity {} at most 7",
                self.facility, self.severity
            )));
        }
        if self.max_message_len < MIN_SYSLOG_MESSAGE_LEN {
            return Err(crate::Error::Config(format!(
                "syslog max_message_len {} must be at least {MIN_SYSLOG_MESSAGE_LEN} bytes",
                self.max_message_len
            )));
        }
        Ok(())
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    // Both are in range by construction (day 1..=31, month 1..=12).
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// RFC 3339 UTC timestamp with microseconds.
fn rfc3339(nanos: u64) -> String {
    let secs = nanos / 1_000_000_000;
    let micros = (nanos % 1_000_000_000) / 1000;
    let (y, mo, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let rem = secs % 86_400;
    format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// Formats one record as RFC 5424 messages: one, or, when that would be
/// longer than `cfg.max_message_len`, one per part of the payload.
pub(crate) fn format_record(cfg: &SyslogConfig, r: &BatchRecord) -> Vec<Vec<u8>> {
    let pri = u32::from(cfg.facility) * 8 + u32::from(cfg.severity);
    let ts = rfc3339(r.timestamp);
    let head = |part: &str| {
        format!("<{pri}>1 {ts} {} {} - - [ringship@{PEN} seq=\"{}\"{part}] ", cfg.hostname, cfg.app_name, r.seq)
            .into_bytes()
    };
    let whole = head("");
    if whole.len() + r.payload.len() <= cfg.max_message_len {
        let mut m = whole;
        m.extend_from_slice(&r.payload);
        return vec![m];
    }
    // Room for a part's payload next to the longest part header (no
    // record has a million parts: 16 MiB in parts of at least 500 bytes).
    let room = cfg.max_message_len.saturating_sub(head(" part=\"999999/999999\"").len()).max(4);
    let parts = split_payload(&r.payload, room);
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut m = head(&format!(" part=\"{}/{n}\"", i + 1));
            m.extend_from_slice(chunk);
            m
        })
        .collect()
}

/// Cuts `payload` into pieces of at most `room` bytes (`room` >= 4),
/// between characters if it is UTF-8, so each piece is text on its own.
///
/// No piece but the last ends in a byte a receiver may strip from the end
/// of a message (syslog-ng drops trailing line feeds, rsyslog can drop
/// trailing whitespace and control characters): such a run is moved to
/// the start of the next piece, where nothing strips it. Only a run longer
/// than `room` cannot be kept whole that way: its pieces are all
/// strippable bytes, cut at `room`.
fn split_payload(payload: &[u8], room: usize) -> Vec<&[u8]> {
    let text = std::str::from_utf8(payload).ok();
    let mut parts = Vec::with_capacity(payload.len().div_ceil(room));
    let mut start = 0;
    while start < payload.len() {
        let mut end = (start + room).min(payload.len());
        if let Some(t) = text {
            // A character is at most 4 bytes: one of the 4 cuts before
            // `end` is a boundary, and all of them are past `start`.
            while !t.is_char_boundary(end) {
                end -= 1;
            }
        }
        if end < payload.len() {
            let mut keep = end;
            while keep > start {
                let (len, strippable) = last_char(payload, text, keep);
                if !strippable {
                    break;
                }
                keep -= len;
            }
            // `keep == start`: the whole piece is strippable bytes, a run
            // longer than `room` that no cut can keep whole.
            if keep > start {
                end = keep;
            }
        }
        parts.push(&payload[start..end]);
        start = end;
    }
    parts
}

/// The last character of `payload[..end]` (its last byte if `payload` is
/// not UTF-8; `end` > 0 and on a character boundary): its length in bytes,
/// and whether a receiver may strip it from the end of a message.
fn last_char(payload: &[u8], text: Option<&str>, end: usize) -> (usize, bool) {
    match text.and_then(|t| t[..end].chars().next_back()) {
        Some(c) => (c.len_utf8(), strippable_char(c)),
        None => (1, strippable_byte(payload[end - 1])),
    }
}

/// Whether a receiver may strip `c` from the end of a message: whitespace
/// (line feeds, carriage returns, spaces, tabs, and Unicode's, which a
/// downstream `trim` takes) and control characters (NUL...).
fn strippable_char(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

/// [`strippable_char`] for a payload that is not UTF-8: space and the
/// ASCII control bytes.
fn strippable_byte(b: u8) -> bool {
    b == b' ' || b.is_ascii_control()
}

/// Formats a gap notice as an RFC 5424 message with MSGID `gap`.
pub(crate) fn format_gap(cfg: &SyslogConfig, g: &GapNotice) -> Vec<u8> {
    let pri = u32::from(cfg.facility) * 8 + 4; // warning
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
    format!(
        "<{pri}>1 {} {} {} - gap [ringship-gap@{PEN} first=\"{}\" last=\"{}\" count=\"{}\" cause=\"{}\" rejected=\"{}\"] records lost before the next batch",
        rfc3339(now),
        cfg.hostname,
        cfg.app_name,
        g.first_seq,
        g.last_seq,
        g.missing(),
        g.cause_label(),
        g.rejected
    )
    .into_bytes()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Relp,
}

struct Connection {
    address: String,
    kind: Kind,
    stream: TcpStream,
    next_txnr: u64,
    inbox: Vec<u8>,
}

/// Sends batches to rsyslog (or any RFC 5424 receiver) over TCP or RELP,
/// chosen by the endpoint's scheme: `tcp://host:port` or `relp://host:port`.
pub struct SyslogTransport {
    config: SyslogConfig,
    conn: Option<Connection>,
}

impl std::fmt::Debug for SyslogTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogTransport").field("config", &self.config).finish_non_exhaustive()
    }
}

struct SyslogFactory(SyslogConfig);

impl TransportFactory for SyslogFactory {
    fn make(&self) -> Result<Box<dyn Transport>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Box::new(SyslogTransport { config: self.0.clone(), conn: None }))
    }

    fn check_endpoint(&self, endpoint: &Endpoint) -> Result<(), crate::Error> {
        split_address(&endpoint.address).map(|_| ()).map_err(|e| crate::Error::Config(e.message))
    }
}

/// The protocol and `host:port` of a syslog endpoint.
fn split_address(address: &str) -> Result<(Kind, &str), SendError> {
    let refuse = |why: &str| {
        Err(SendError::permanent(format!(
            "the syslog endpoint {address:?} {why}: write tcp://host:port or relp://host:port"
        )))
    };
    let (kind, hostport) = if let Some(rest) = address.strip_prefix("relp://") {
        (Kind::Relp, rest)
    } else if let Some(rest) = address.strip_prefix("tcp://") {
        (Kind::Tcp, rest)
    } else {
        return refuse("names no tcp:// or relp:// scheme");
    };
    let Some((host, port)) = hostport.rsplit_once(':') else {
        return refuse("names no port");
    };
    if host.is_empty() || host == "[]" {
        return refuse("names no host");
    }
    if !matches!(port.parse::<u16>(), Ok(1..)) {
        return refuse("has a port that is not a number from 1 to 65535");
    }
    Ok((kind, hostport))
}

fn retryable(what: &str, e: &io::Error) -> SendError {
    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
        SendError::timed_out()
    } else {
        SendError::retryable(format!("{what}: {e}"))
    }
}

impl SyslogTransport {
    /// A transport with the given settings.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) if a setting breaks RFC 5424
    /// (see [`SyslogConfig::validate`]).
    pub fn new(config: SyslogConfig) -> Result<Self, crate::Error> {
        config.validate()?;
        Ok(SyslogTransport { config, conn: None })
    }

    /// The factory to hand to
    /// [`ShipperBuilder::transport`](crate::ShipperBuilder::transport): it
    /// makes transports with `config`, and refuses an endpoint that is not
    /// `tcp://host:port` or `relp://host:port`.
    ///
    /// # Errors
    /// As [`SyslogTransport::new`].
    pub fn factory(config: SyslogConfig) -> Result<impl TransportFactory + 'static, crate::Error> {
        config.validate()?;
        Ok(SyslogFactory(config))
    }

    fn connect(&mut self, endpoint: &Endpoint, ctx: &SendContext) -> Result<&mut Connection, SendError> {
        // A receiver that closed the connection since the last batch (a
        // restart) leaves it writable: over plain TCP, the next batch would
        // be written into it, reported sent, and lost.
        if let Some(conn) = self.conn.take() {
            let peer_closed = conn.closed_by_peer();
            if !peer_closed && conn.address == endpoint.address {
                self.conn = Some(conn);
            } else if !peer_closed {
                // A switch: the old session ends in order.
                let close = SendContext {
                    deadline: ctx.deadline.min(Instant::now() + RELP_CLOSE_WAIT),
                    cancel: ctx.cancel.clone(),
                };
                conn.close_session(&close);
            }
        }
        if self.conn.is_none() {
            let (kind, hostport) = split_address(&endpoint.address)?;
            // A lookup has no timeout and a connect no cancellation: both
            // run on a helper thread.
            let (hostport, deadline) = (hostport.to_owned(), ctx.deadline);
            let stream = run_cancellable("ringship-connect", ctx, move || {
                let addrs: Vec<SocketAddr> = hostport
                    .to_socket_addrs()
                    .map_err(|e| {
                        let what = format!("resolving {hostport}: {e}");
                        // Not `host:port`: resolving again cannot help.
                        if e.kind() == io::ErrorKind::InvalidInput {
                            SendError::permanent(what)
                        } else {
                            SendError::retryable(what)
                        }
                    })?
                    .collect();
                connect_any(&addrs, deadline)
                    .map_err(|e| SendError { message: format!("{hostport}: {}", e.message), ..e })
            })?;
            let _ = stream.set_nodelay(true);
            let mut conn =
                Connection { address: endpoint.address.clone(), kind, stream, next_txnr: 1, inbox: Vec::new() };
            if kind == Kind::Relp {
                let offer =
                    format!("relp_version=0\nrelp_software=ringship,{}\ncommands=syslog", env!("CARGO_PKG_VERSION"));
                let txnr = conn.send_frame("open", offer.as_bytes(), ctx)?;
                conn.flush(ctx)?;
                conn.expect_ok(txnr, ctx)?;
            }
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected"))
    }
}

/// Connects to the first of `addrs` that answers, in order (a host name
/// may resolve to an IPv6 address nobody listens on, then an IPv4 one).
/// Each address gets an equal share of the time left before `deadline`.
fn connect_any(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, SendError> {
    let mut last = SendError::retryable("resolves to no address");
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SendError::timed_out());
        }
        let share = left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        match TcpStream::connect_timeout(addr, share.max(Duration::from_millis(1))) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = retryable(&format!("connecting to {addr}"), &e),
        }
    }
    Err(last)
}

impl Connection {
    /// Ends the session as RELP asks: a `close` command, then a wait, up
    /// to `ctx`'s deadline, for its `rsp` (rsyslog answers, then closes
    /// the connection). Dropped without it, a session is broken to the
    /// receiver, which logs so. Only for a session with nothing in flight
    /// (a failed send drops its connection instead). Never fails: a
    /// session that cannot be closed so is just dropped. Plain TCP has
    /// nothing to send.
    fn close_session(mut self, ctx: &SendContext) {
        if self.kind == Kind::Relp {
            let _ = self.send_close(ctx);
        }
    }

    /// Sends `close` and reads up to its `rsp` (or a `serverclose`).
    fn send_close(&mut self, ctx: &SendContext) -> Result<(), SendError> {
        let txnr = self.send_frame("close", b"", ctx)?;
        self.flush(ctx)?;
        loop {
            let (got, command, _) = self.read_frame(ctx)?;
            if command == "serverclose" || (command == "rsp" && got == txnr) {
                return Ok(());
            }
        }
    }

    /// Whether the receiver closed or reset the connection, or sent
    /// something unasked (a RELP `serverclose`), since it was last used:
    /// then it must not carry another batch.
    fn closed_by_peer(&self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let idle = matches!(self.stream.peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        self.stream.set_nonblocking(false).is_err() || !idle
    }

    fn deadline_io(&self, ctx: &SendContext) -> Result<(), SendError> {
        if ctx.cancel.is_cancelled() {
            return Err(SendError::cancelled());
        }
        let left = ctx.remaining();
        if left.is_zero() {
            return Err(SendError::timed_out());
        }
        // Short slices, so cancellation is seen within 20 ms.
        let slice = Some(left.min(Duration::from_millis(20)));
        self.stream
            .set_write_timeout(slice)
            .and_then(|()| self.stream.set_read_timeout(slice))
            .map_err(|e| retryable("socket", &e))
    }

    fn write_all(&mut self, mut buf: &[u8], ctx: &SendContext) -> Result<(), SendError> {
        while !buf.is_empty() {
            self.deadline_io(ctx)?;
            match self.stream.write(buf) {
                Ok(0) => return Err(SendError::retryable("the receiver closed the connection")),
                Ok(n) => buf = &buf[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(retryable("writing", &e)),
            }
        }
        Ok(())
    }

    fn flush(&mut self, ctx: &SendContext) -> Result<(), SendError> {
        self.deadline_io(ctx)?;
        self.stream.flush().map_err(|e| retryable("flushing", &e))
    }

    /// Sends one RELP command; returns its transaction number.
    fn send_frame(&mut self, command: &str, data: &[u8], ctx: &SendContext) -> Result<u64, SendError> {
        let txnr = self.next_txnr;
        self.next_txnr = if self.next_txnr >= 999_999_999 { 1 } else { self.next_txnr + 1 };
        let mut frame = format!("{txnr} {command} {}", data.len()).into_bytes();
        if !data.is_empty() {
            frame.push(b' ');
            frame.extend_from_slice(data);
        }
        frame.push(b'\n');
        self.write_all(&frame, ctx)?;
        Ok(txnr)
    }

    /// Reads the next RELP frame: (txnr, command, data).
    fn read_frame(&mut self, ctx: &SendContext) -> Result<(u64, String, Vec<u8>), SendError> {
        loop {
            if let Some(frame) = parse_frame(&self.inbox)? {
                let (txnr, command, data, used) = frame;
                self.inbox.drain(..used);
                return Ok((txnr, command, data));
            }
            if self.inbox.len() > MAX_RSP {
                return Err(SendError::retryable("oversized RELP response"));
            }
            self.deadline_io(ctx)?;
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(SendError::retryable("the RELP server closed the connection")),
                Ok(n) => self.inbox.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(retryable("reading", &e)),
            }
        }
    }

    /// Reads the response to `txnr`, which must be `200`.
    fn expect_ok(&mut self, txnr: u64, ctx: &SendContext) -> Result<(), SendError> {
        let (got, command, data) = self.read_frame(ctx)?;
        if command == "serverclose" {
            return Err(SendError::retryable("the RELP server closed the session"));
        }
        if command != "rsp" || got != txnr {
            return Err(SendError::retryable(format!("RELP: expected rsp {txnr}, got {command} {got}")));
        }
        if !data.starts_with(b"200") {
            return Err(SendError::retryable(format!("RELP: {}", String::from_utf8_lossy(&data))));
        }
        Ok(())
    }
}

/// A parsed RELP frame: transaction number, command, data, bytes used.
pub(crate) type Frame = (u64, String, Vec<u8>, usize);

/// Parses one RELP frame at the start of `buf`; `None` if incomplete.
pub(crate) fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, SendError> {
    let bad = || SendError::retryable("malformed RELP frame");
    let Some(sp1) = buf.iter().take(12).position(|&b| b == b' ') else {
        return if buf.len() >= 12 { Err(bad()) } else { Ok(None) };
    };
    let txnr: u64 = std::str::from_utf8(&buf[..sp1]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let rest = &buf[sp1 + 1..];
    let Some(sp2) = rest.iter().take(33).position(|&b| b == b' ') else {
        return if rest.len() >= 33 { Err(bad()) } else { Ok(None) };
    };
    let command = std::str::from_utf8(&rest[..sp2]).map_err(|_| bad())?.to_owned();
    let rest = &rest[sp2 + 1..];
    let Some(end) = rest.iter().take(10).position(|&b| b == b' ' || b == b'\n') else {
        return if rest.len() >= 10 { Err(bad()) } else { Ok(None) };
    };
    let len: usize = std::str::from_utf8(&rest[..end]).ok().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    if len > MAX_RSP {
        return Err(bad());
    }
    let header = sp1 + 1 + sp2 + 1 + end;
    if len == 0 {
        // No data: LF ends the frame (a space before it is tolerated).
        let lf = header + usize::from(rest[end] == b' ');
        return match buf.get(lf) {
            None => Ok(None),
            Some(b'\n') => Ok(Some((txnr, command, Vec::new(), lf + 1))),
            Some(_) => Err(bad()),
        };
    }
    // SP DATA LF
    let need = header + 1 + len + 1;
    if buf.len() < need {
        return Ok(None);
    }
    if buf[header] != b' ' || buf[need - 1] != b'\n' {
        return Err(bad());
    }
    Ok(Some((txnr, command, buf[header + 1..need - 1].to_vec(), need)))
}

/// A transport is dropped when its worker ends (a shutdown, or a stuck
/// worker replaced): an open RELP session ends with `close`, waiting at
/// most 500 ms for the answer.
impl Drop for SyslogTransport {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let ctx = SendContext { deadline: Instant::now() + RELP_CLOSE_WAIT, cancel: CancelToken::new() };
            conn.close_session(&ctx);
        }
    }
}

impl Transport for SyslogTransport {
    fn send(&mut self, endpoint: &Endpoint, batch: &Batch, ctx: &SendContext) -> Result<(), SendError> {
        let mut messages: Vec<Vec<u8>> = Vec::with_capacity(batch.records.len() + 1);
        if let Some(g) = &batch.gap {
            messages.push(format_gap(&self.config, g));
        }
        messages.extend(batch.records.iter().flat_map(|r| format_record(&self.config, r)));
        let result = (|| {
            let conn = self.connect(endpoint, ctx)?;
            match conn.kind {
                Kind::Tcp => {
                    let mut out = Vec::new();
                    for m in &messages {
                        out.extend_from_slice(format!("{} ", m.len()).as_bytes());
                        out.extend_from_slice(m);
                    }
                    conn.write_all(&out, ctx)?;
                    conn.flush(ctx)
                }
                Kind::Relp => {
                    let mut pending = std::collections::VecDeque::new();
                    for m in &messages {
                        if pending.len() >= RELP_WINDOW {
                            conn.flush(ctx)?;
                            let txnr = pending.pop_front().expect("window is full");
                            conn.expect_ok(txnr, ctx)?;
                        }
                        pending.push_back(conn.send_frame("syslog", m, ctx)?);
                    }
                    conn.flush(ctx)?;
                    while let Some(txnr) = pending.pop_front() {
                        conn.expect_ok(txnr, ctx)?;
                    }
                    Ok(())
                }
            }
        })();
        if result.is_err() {
            // A broken or abandoned session is not reused: the next send
            // opens a fresh one and resends the whole batch.
            self.conn = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(1_795_500_000_123_456_789), "2026-11-24T06:00:00.123456Z"); // date -u -d @1795500000
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn records_format_as_rfc5424_with_their_seq() {
        let cfg = SyslogConfig { hostname: "h".into(), ..SyslogConfig::default() };
        let r = BatchRecord { seq: 42, timestamp: 0, payload: bytes::Bytes::from_static(b"hello") };
        assert_eq!(
            format_record(&cfg, &r),
            vec![b"<14>1 1970-01-01T00:00:00.000000Z h ringship - - [ringship@32473 seq=\"42\"] hello".to_vec()]
        );
    }

    /// A record too long for one message goes in parts, each at most
    /// `max_message_len`, numbered, that join to the payload byte for
    /// byte; UTF-8 text is cut between characters. Before, the record went
    /// as one message, which rsyslog truncated to 8 KiB and acknowledged.
    #[test]
    fn a_record_longer_than_a_message_goes_in_parts() {
        let host = "h".repeat(255);
        let cfg = SyslogConfig { hostname: host.clone(), max_message_len: 1024, ..SyslogConfig::default() };
        let text = "abc-é-€-𝄞-".repeat(700);
        let binary: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for payload in [text.into_bytes(), binary] {
            let r = BatchRecord { seq: 7, timestamp: 0, payload: bytes::Bytes::from(payload.clone()) };
            let messages = format_record(&cfg, &r);
            let n = messages.len();
            assert!(n > 1 && n <= payload.len() / 500 + 1, "{n} parts");
            let mut joined = Vec::new();
            for (i, m) in messages.iter().enumerate() {
                assert!(m.len() <= 1024, "part {i}: {} bytes", m.len());
                let head = format!(
                    "<14>1 1970-01-01T00:00:00.000000Z {host} ringship - - [ringship@32473 seq=\"7\" part=\"{}/{n}\"] ",
                    i + 1
                );
                assert!(m.starts_with(head.as_bytes()), "part {i}");
                let chunk = &m[head.len()..];
                if std::str::from_utf8(&payload).is_ok() {
                    assert!(std::str::from_utf8(chunk).is_ok(), "part {i} cut inside a character");
                }
                joined.extend_from_slice(chunk);
            }
            assert!(joined == payload, "parts do not join to the payload");
        }
        // Exactly at the limit: one message, no part.
        let cfg = SyslogConfig { hostname: "h".into(), max_message_len: 1024, ..SyslogConfig::default() };
        let head = format_record(&cfg, &BatchRecord { seq: 7, timestamp: 0, payload: bytes::Bytes::new() })[0].len();
        let fits = BatchRecord { seq: 7, timestamp: 0, payload: bytes::Bytes::from(vec![b'x'; 1024 - head]) };
        assert_eq!(format_record(&cfg, &fits).len(), 1);
        let over = BatchRecord { payload: bytes::Bytes::from(vec![b'x'; 1025 - head]), ..fits };
        assert_eq!(format_record(&cfg, &over).len(), 2);
    }

    /// Whether `chunk` ends in a byte a receiver may strip from a
    /// message's end: a space or ASCII control byte, or, in UTF-8 text,
    /// any whitespace or control character.
    fn ends_strippable(chunk: &[u8], utf8: bool) -> bool {
        match chunk.last() {
            Some(&b) if b == b' ' || b.is_ascii_control() => true,
            Some(_) if utf8 => {
                let c = std::str::from_utf8(chunk).expect("a UTF-8 part").chars().next_back();
                c.is_some_and(|c| c.is_whitespace() || c.is_control())
            }
            _ => false,
        }
    }

    /// Random records of words, multibyte characters, and line feeds,
    /// carriage returns, spaces, tabs and NULs alone and in runs; one in
    /// four is made invalid UTF-8 (0xff bytes here and there).
    fn random_records(seed: u64, count: usize, max_len: usize) -> Vec<Vec<u8>> {
        let pieces = "\n|\n\n\n|\r\n| |    |\t|\0|word|x-y.z|é|€|𝄞|ab𝄞é€|\u{a0}|\u{2028}|\u{85}";
        let pieces: Vec<&str> = pieces.split('|').collect();
        let mut rng = seed | 1;
        let mut next = move |n: usize| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % n as u64) as usize
        };
        (0..count)
            .map(|_| {
                let len = next(max_len + 1);
                let mut r = Vec::with_capacity(len + 64);
                while r.len() < len {
                    match next(8) {
                        0 => r.extend(std::iter::repeat_n(b'\n', 1 + next(40))),
                        1 => r.extend(std::iter::repeat_n(b' ', 1 + next(40))),
                        _ => r.extend_from_slice(pieces[next(pieces.len())].as_bytes()),
                    }
                }
                if next(4) == 0 && !r.is_empty() {
                    for _ in 0..=next(3) {
                        let at = next(r.len());
                        r[at] = 0xff;
                    }
                }
                r
            })
            .collect()
    }

    /// A receiver strips a message's trailing line feeds (syslog-ng) or
    /// whitespace and control characters (rsyslog can): a part ending in
    /// them came back short, and so did the record joined from its parts.
    /// No part but a record's last ends in such a byte now, every message
    /// fits the limit, and the parts join to the record byte for byte.
    /// Before, a part was cut wherever the limit fell, often just after a
    /// line feed or a space.
    #[test]
    fn no_part_ends_in_bytes_a_receiver_strips() {
        const HEADER: &str = "<14>1 1970-01-01T00:00:00.000000Z h ringship - - ";
        let cfg = SyslogConfig { hostname: "h".into(), max_message_len: 1024, ..SyslogConfig::default() };
        let mut split = 0;
        for (seq, payload) in random_records(0x5eed_1717, 300, 6000).into_iter().enumerate() {
            let utf8 = std::str::from_utf8(&payload).is_ok();
            let r = BatchRecord { seq: seq as u64, timestamp: 0, payload: bytes::Bytes::from(payload.clone()) };
            let messages = format_record(&cfg, &r);
            let n = messages.len();
            if n > 1 {
                split += 1;
            }
            let mut joined = Vec::new();
            for (i, m) in messages.iter().enumerate() {
                assert!(m.len() <= 1024, "seq {seq} part {i}: {} bytes", m.len());
                let part = if n == 1 { String::new() } else { format!(" part=\"{}/{n}\"", i + 1) };
                let head = format!("{HEADER}[ringship@32473 seq=\"{seq}\"{part}] ");
                assert!(m.starts_with(head.as_bytes()), "seq {seq} part {i}");
                let chunk = &m[head.len()..];
                if utf8 {
                    assert!(std::str::from_utf8(chunk).is_ok(), "seq {seq} part {i} cut inside a character");
                }
                if i + 1 < n {
                    assert!(!chunk.is_empty(), "seq {seq} part {i} is empty");
                    assert!(
                        !ends_strippable(chunk, utf8),
                        "seq {seq} part {}/{n} ends in {:?}",
                        i + 1,
                        &chunk[chunk.len().saturating_sub(8)..]
                    );
                }
                joined.extend_from_slice(chunk);
            }
            assert!(joined == payload, "seq {seq}: the parts do not join to the record");
        }
        assert!(split > 100, "only {split} records went in parts");
    }

    /// A run of strippable bytes longer than a part cannot be kept whole
    /// (every part inside it is all strippable): those parts are cut at
    /// the limit, and the rest of the record still splits as above.
    #[test]
    fn a_strippable_run_longer_than_a_part_is_cut_at_the_limit() {
        for room in 4..=24 {
            for payload in random_records(room as u64, 40, 400) {
                let utf8 = std::str::from_utf8(&payload).is_ok();
                let parts = split_payload(&payload, room);
                for (i, part) in parts.iter().enumerate() {
                    assert!(!part.is_empty() && part.len() <= room, "room {room}: part {i} of {} bytes", part.len());
                    if utf8 {
                        assert!(std::str::from_utf8(part).is_ok(), "room {room}: part {i} cut inside a character");
                    }
                    if i + 1 < parts.len() && ends_strippable(part, utf8) {
                        // Only a part wholly inside a run ends so.
                        let all = if utf8 {
                            std::str::from_utf8(part).unwrap().chars().all(|c| c.is_whitespace() || c.is_control())
                        } else {
                            part.iter().all(|&b| b == b' ' || b.is_ascii_control())
                        };
                        assert!(all, "room {room}: part {i} ends in a strippable byte: {part:?}");
                    }
                }
                assert!(parts.concat() == payload, "room {room}: the parts do not join to the record");
            }
        }
        let lfs = [b"ab".as_slice(), [b'\n'; 10].as_slice(), b"cd".as_slice()].concat();
        let expected: Vec<&[u8]> = vec![&b"ab"[..], &b"\n\n\n\n"[..], &b"\n\n\n\n"[..], &b"\n\ncd"[..]];
        assert_eq!(split_payload(&lfs, 4), expected, "the run of line feeds starts a part");
    }

    #[test]
    fn relp_frames_parse_whole_or_not_at_all() {
        let f = b"12 rsp 6 200 OK\n3 serverclose 0\n";
        let (txnr, cmd, data, used) = parse_frame(f).unwrap().unwrap();
        assert_eq!((txnr, cmd.as_str(), &data[..], used), (12, "rsp", &b"200 OK"[..], 16));
        let (txnr, cmd, data, _) = parse_frame(&f[used..]).unwrap().unwrap();
        assert_eq!((txnr, cmd.as_str(), data.len()), (3, "serverclose", 0));
        for cut in 0..15 {
            assert!(parse_frame(&f[..cut]).unwrap().is_none(), "cut at {cut}");
        }
        assert!(parse_frame(b"x rsp 6 200 OK\n").is_err());
        assert!(parse_frame(b"1 rsp 3 200 OK\n").is_err());
        // No data, with or without a space before the LF: all of it used.
        let f = b"3 rsp 0 \n4 rsp 0\n";
        let (txnr, _, data, used) = parse_frame(f).unwrap().unwrap();
        assert_eq!((txnr, data.len(), used), (3, 0, 9));
        assert_eq!(parse_frame(&f[used..]).unwrap().unwrap().0, 4);
        assert!(parse_frame(b"3 rsp 0 ").unwrap().is_none());
        assert!(parse_frame(b"3 rsp 0 x").is_err());
    }

    #[test]
    fn settings_that_break_rfc5424_are_refused() {
        let ok = SyslogConfig { hostname: "h".into(), ..SyslogConfig::default() };
        assert!(SyslogTransport::new(ok.clone()).is_ok());
        assert!(SyslogTransport::new(SyslogConfig { hostname: "-".into(), ..ok.clone() }).is_ok());
        for (bad, field) in [
            (SyslogConfig { app_name: "my app".into(), ..ok.clone() }, "app_name"),
            (SyslogConfig { app_name: "a".repeat(49), ..ok.clone() }, "app_name"),
            (SyslogConfig { hostname: String::new(), ..ok.clone() }, "hostname"),
            (SyslogConfig { hostname: "höst".into(), ..ok.clone() }, "hostname"),
            (SyslogConfig { facility: 24, ..ok.clone() }, "facility"),
            (SyslogConfig { severity: 8, ..ok.clone() }, "severity"),
            (SyslogConfig { max_message_len: MIN_SYSLOG_MESSAGE_LEN - 1, ..ok.clone() }, "max_message_len"),
        ] {
            let err = SyslogTransport::factory(bad).err().expect("refused");
            assert!(matches!(&err, crate::Error::Config(m) if m.contains(field)), "{err}");
        }
    }

    fn one_record_batch(seq: u64) -> Batch {
        let r = BatchRecord { seq, timestamp: 0, payload: bytes::Bytes::from_static(b"hello") };
        Batch { records: vec![r], gap: None }
    }

    fn ctx() -> SendContext {
        SendContext { deadline: Instant::now() + Duration::from_secs(5), cancel: crate::transport::CancelToken::new() }
    }

    /// Reads one octet-counted message from `s`.
    fn read_message(s: &mut TcpStream) -> String {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut len = Vec::new();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() && b[0] != b' ' {
            len.push(b[0]);
        }
        let mut m = vec![0u8; String::from_utf8(len).unwrap().parse().unwrap()];
        s.read_exact(&mut m).unwrap();
        String::from_utf8(m).unwrap()
    }

    /// A receiver that restarts while the connection is idle: the next
    /// batch goes over a new connection, not into the closed one (where
    /// it was written, reported sent, and lost).
    #[test]
    fn a_connection_the_receiver_closed_is_not_reused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = Endpoint::new(format!("tcp://{}", listener.local_addr().unwrap()));
        let mut t = SyslogTransport::new(SyslogConfig { hostname: "h".into(), ..SyslogConfig::default() }).unwrap();
        t.send(&endpoint, &one_record_batch(1), &ctx()).unwrap();
        let (mut first, _) = listener.accept().unwrap();
        assert!(read_message(&mut first).contains("seq=\"1\""));
        drop(first);
        // Let the close reach the sender's socket.
        std::thread::sleep(Duration::from_millis(50));
        t.send(&endpoint, &one_record_batch(2), &ctx()).unwrap();
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut second = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("batch 2 went into the closed connection: no new one ({e})"),
            }
        };
        second.set_nonblocking(false).unwrap();
        assert!(read_message(&mut second).contains("seq=\"2\""));
    }

    /// The commands a fake RELP server received, and when it answered `close`.
    type RelpSession = (Vec<String>, Option<Instant>);

    /// A RELP server on loopback for one session: answers each command
    /// with `200 OK` but `close`, which it answers (an empty `rsp`, as
    /// librelp does) after `close_delay`, or never if `None`. Its thread
    /// returns the commands received, in order, and when it answered
    /// `close`.
    fn fake_relp_server(close_delay: Option<Duration>) -> (Endpoint, std::thread::JoinHandle<RelpSession>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = Endpoint::new(format!("relp://{}", listener.local_addr().unwrap()));
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut inbox: Vec<u8> = Vec::new();
            let mut commands: Vec<String> = Vec::new();
            let mut answered: Option<Instant> = None;
            let mut buf = [0u8; 4096];
            loop {
                while let Some((txnr, command, _, used)) = parse_frame(&inbox).unwrap() {
                    inbox.drain(..used);
                    if command != "close" {
                        s.write_all(format!("{txnr} rsp 6 200 OK\n").as_bytes()).unwrap();
                    } else if let Some(delay) = close_delay {
                        std::thread::sleep(delay);
                        answered = Some(Instant::now());
                        s.write_all(format!("{txnr} rsp 0\n").as_bytes()).unwrap();
                    }
                    commands.push(command);
                }
                // Until the client closes the connection (or 5 s pass).
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return (commands, answered),
                    Ok(n) => inbox.extend_from_slice(&buf[..n]),
                }
            }
        });
        (endpoint, server)
    }

    /// A transport dropped (its worker ended: a shutdown) ends its RELP
    /// session with `close` and waits for the answer, so that rsyslog does
    /// not log a broken session at every shutdown; a server that never
    /// answers holds the drop up for `RELP_CLOSE_WAIT` at most.
    #[test]
    fn a_dropped_transport_closes_its_relp_session_and_waits_for_the_answer() {
        let cfg = SyslogConfig { hostname: "h".into(), ..SyslogConfig::default() };
        let (endpoint, server) = fake_relp_server(Some(Duration::from_millis(150)));
        let mut t = SyslogTransport::new(cfg.clone()).unwrap();
        t.send(&endpoint, &one_record_batch(1), &ctx()).unwrap();
        drop(t);
        let dropped = Instant::now();
        let (commands, answered) = server.join().unwrap();
        assert_eq!(commands, ["open", "syslog", "close"]);
        assert!(dropped >= answered.expect("close answered"), "the drop did not wait for the answer to close");

        let (endpoint, server) = fake_relp_server(None);
        let mut t = SyslogTransport::new(cfg).unwrap();
        t.send(&endpoint, &one_record_batch(2), &ctx()).unwrap();
        let started = Instant::now();
        drop(t);
        let waited = started.elapsed();
        assert!(
            waited >= RELP_CLOSE_WAIT / 2 && waited < RELP_CLOSE_WAIT + Duration::from_secs(2),
            "waited {waited:?} for an answer that never came"
        );
        let (commands, answered) = server.join().unwrap();
        assert_eq!((commands, answered), (vec!["open".to_owned(), "syslog".into(), "close".into()], None));
    }

    /// A host name's first address may have no listener (`localhost` as
    /// `::1` for a receiver on 127.0.0.1): the next ones are tried.
    #[test]
    fn every_resolved_address_is_tried_in_turn() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let s = connect_any(&[closed, open.local_addr().unwrap()], deadline).unwrap();
        assert_eq!(s.peer_addr().unwrap(), open.local_addr().unwrap());
        let err = connect_any(&[closed], deadline).unwrap_err();
        assert_eq!(err.kind, crate::transport::SendErrorKind::Retryable);
        assert!(err.message.contains(&closed.to_string()), "{err}");
    }

    #[test]
    fn an_endpoint_that_is_not_host_and_port_is_a_permanent_failure() {
        let mut t = SyslogTransport::new(SyslogConfig { hostname: "h".into(), ..SyslogConfig::default() }).unwrap();
        let err = t.send(&Endpoint::new("tcp://127.0.0.1"), &one_record_batch(1), &ctx()).unwrap_err();
        assert_eq!(err.kind, crate::transport::SendErrorKind::Permanent, "{err}");
    }
}
