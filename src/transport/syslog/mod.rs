//! Syslog transports: RFC 5424 messages over TCP with RFC 6587 octet
//! counting (`tcp://host:port`), over TLS as RFC 5425 says
//! (`tls://host:port`), and RELP (`relp://host:port`, over TLS
//! `relp+tls://host:port`), the acknowledged protocol rsyslog speaks
//! through imrelp.
//!
//! Each record becomes one RFC 5424 message whose structured data carries
//! its seq and its ring's id, so a receiver can de-duplicate by (ring id,
//! seq):
//!
//! ```text
//! <14>1 2026-11-24T05:30:57.123456Z host app - - [ringship@32473 seq="42" ring="5f1e0c9a7d3b2e41"] payload
//! ```
//!
//! A record whose message would exceed [`SyslogConfig::max_message_len`]
//! goes as several, `[ringship@32473 seq="42" part="1/3" ring=".."]` and so on: a
//! receiver truncates a longer message and still acknowledges it. No part
//! but the last ends in bytes a receiver strips from a message's end.
//!
//! A gap notice becomes one message with MSGID `gap` and
//! `[ringship-gap@32473 first=".." last=".." count=".." cause=".." rejected=".." refused=".." ring=".."]`.
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
//!
//! This file holds the settings, the transport and its factory, and the
//! parsing of endpoint addresses. RFC 5424 formatting is in `message`,
//! the TCP connection and its deadline-bounded I/O in `connection`, and
//! RELP framing and the session in `relp`.

mod connection;
mod message;
mod relp;
#[cfg(test)]
mod tests;

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

use super::{Batch, CancelToken, Endpoint, SendContext, SendError, Transport, TransportFactory, run_cancellable};
use connection::{Connection, Stream, connect_any};
use message::{format_gap, format_record};
#[cfg(fuzzing)]
pub(crate) use relp::parse_frame;
use relp::{RELP_CLOSE_WAIT, RELP_WINDOW};

/// Settings of a [`SyslogTransport`]; start from [`SyslogConfig::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    hostname: String,
    app_name: String,
    facility: u8,
    severity: u8,
    max_message_len: usize,
    #[cfg(feature = "tls")]
    tls: crate::Tls,
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
        SyslogConfig {
            hostname,
            app_name: "ringship".to_owned(),
            facility: 1,
            severity: 6,
            max_message_len: 8096,
            #[cfg(feature = "tls")]
            tls: crate::Tls::default(),
        }
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

    /// The TLS settings for `tls://` and `relp+tls://` endpoints
    /// ([`Tls::default`](crate::Tls::default): the system's CAs, no client
    /// certificate).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, tls: crate::Tls) -> Self {
        self.tls = tls;
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

/// The protocol an endpoint names: RFC 5424 over plain TCP with octet
/// counting, or RELP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Relp,
}

/// Sends batches to rsyslog (or any RFC 5424 receiver) over TCP or RELP,
/// with or without TLS, chosen by the endpoint's scheme: `tcp://host:port`,
/// `tls://host:port`, `relp://host:port` or `relp+tls://host:port`.
pub struct SyslogTransport {
    config: SyslogConfig,
    conn: Option<Connection>,
    /// The TLS client configuration, made at the first TLS connection and
    /// again when a file behind it changed.
    #[cfg(feature = "tls")]
    tls: crate::tls::RustlsCache,
}

impl std::fmt::Debug for SyslogTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyslogTransport").field("config", &self.config).finish_non_exhaustive()
    }
}

struct SyslogFactory(SyslogConfig);

impl TransportFactory for SyslogFactory {
    fn make(&self) -> Result<Box<dyn Transport>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Box::new(SyslogTransport::with(self.0.clone())))
    }

    fn check_endpoint(&self, endpoint: &Endpoint) -> Result<(), crate::Error> {
        let (_, tls, _) = split_address(&endpoint.address).map_err(|e| crate::Error::Config(e.message))?;
        #[cfg(feature = "tls")]
        if tls {
            let loaded = self.0.tls.load()?;
            self.0.tls.rustls_config(&loaded)?;
        }
        #[cfg(not(feature = "tls"))]
        if tls {
            return Err(crate::Error::Config(format!(
                "the syslog endpoint {:?} asks for TLS, which this build of ringship leaves out: enable the \
                 `tls` feature",
                crate::redact::url(&endpoint.address)
            )));
        }
        Ok(())
    }
}

/// The protocol, whether over TLS, and `host:port` of a syslog endpoint.
fn split_address(address: &str) -> Result<(Kind, bool, &str), SendError> {
    let refuse = |why: &str| {
        Err(SendError::permanent(format!(
            "the syslog endpoint {:?} {why}: write tcp://host:port, tls://host:port, relp://host:port or \
             relp+tls://host:port",
            crate::redact::url(address)
        )))
    };
    let schemes = [
        ("relp://", Kind::Relp, false),
        ("relp+tls://", Kind::Relp, true),
        ("tcp://", Kind::Tcp, false),
        ("tls://", Kind::Tcp, true),
    ];
    let Some((kind, tls, hostport)) =
        schemes.iter().find_map(|&(scheme, kind, tls)| address.strip_prefix(scheme).map(|rest| (kind, tls, rest)))
    else {
        return refuse("names no tcp://, tls://, relp:// or relp+tls:// scheme");
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
    Ok((kind, tls, hostport))
}

impl SyslogTransport {
    /// A transport with the given settings.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) if a setting breaks RFC 5424
    /// (see [`SyslogConfig`]).
    pub fn new(config: SyslogConfig) -> Result<Self, crate::Error> {
        config.validate()?;
        Ok(SyslogTransport::with(config))
    }

    fn with(config: SyslogConfig) -> Self {
        SyslogTransport {
            config,
            conn: None,
            #[cfg(feature = "tls")]
            tls: crate::tls::RustlsCache::default(),
        }
    }

    /// The factory to hand to
    /// [`ShipperBuilder::transport`](crate::ShipperBuilder::transport): it
    /// makes transports with `config`, and refuses an endpoint that is not
    /// `tcp://host:port`, `tls://host:port`, `relp://host:port` or
    /// `relp+tls://host:port`, and (for TLS) TLS files it cannot use.
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
        if let Some(mut conn) = self.conn.take() {
            let peer_closed = conn.closed_by_peer();
            if !peer_closed && conn.address == endpoint.address {
                self.conn = Some(conn);
            } else if !peer_closed {
                // A switch: the old session ends in order.
                let close = SendContext::until(ctx.deadline.min(Instant::now() + RELP_CLOSE_WAIT), ctx.cancel.clone());
                conn.close_session(&close);
            }
        }
        if self.conn.is_none() {
            let (kind, tls, hostport) = split_address(&endpoint.address)?;
            #[cfg(feature = "tls")]
            let tls = if tls {
                let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
                let (config, trust, name) = self.tls.get(&self.config.tls, host)?;
                Some((config, name, trust))
            } else {
                None
            };
            #[cfg(not(feature = "tls"))]
            if tls {
                return Err(SendError::permanent("TLS asked for, and this build of ringship has no `tls` feature"));
            }
            // A lookup has no timeout, a connect no cancellation and a
            // handshake neither: they run on a helper thread.
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
                let tcp = connect_any(&addrs, deadline)
                    .map_err(|e| SendError { message: format!("{hostport}: {}", e.message), ..e })?;
                let _ = tcp.set_nodelay(true);
                #[cfg(feature = "tls")]
                if let Some((config, name, trust)) = tls {
                    return crate::transport::net::handshake(tcp, config, name, deadline, &trust)
                        .map_err(|e| SendError { message: format!("{hostport}: {}", e.message), ..e });
                }
                Ok(Stream::Plain(tcp))
            })?;
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

/// A transport is dropped when its worker ends (a shutdown, or a stuck
/// worker replaced): an open RELP session ends with `close`, waiting at
/// most 500 ms for the answer.
impl Drop for SyslogTransport {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let ctx = SendContext::until(Instant::now() + RELP_CLOSE_WAIT, CancelToken::new());
            conn.close_session(&ctx);
        }
    }
}

impl Transport for SyslogTransport {
    fn send(&mut self, endpoint: &Endpoint, batch: &Batch, ctx: &SendContext) -> Result<(), SendError> {
        let mut messages: Vec<Vec<u8>> = Vec::with_capacity(batch.records.len() + 1);
        if let Some(g) = &batch.gap {
            messages.push(format_gap(&self.config, batch.ring_id, g));
        }
        messages.extend(batch.records.iter().flat_map(|r| format_record(&self.config, batch.ring_id, r)));
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
