//! The connection to a syslog receiver: the TCP stream and the RELP
//! session state it carries, the connect that tries each resolved address
//! in turn, the check that the receiver has not closed an idle connection,
//! and writes and flushes bounded by a send's deadline and cancellation
//! (socket timeouts of at most 20 ms, so a cancel is seen promptly), with
//! I/O errors mapped to retryable send errors. The RELP commands carried
//! over it are in `relp`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::Kind;
use crate::transport::{SendContext, SendError};

pub(super) struct Connection {
    pub(super) address: String,
    pub(super) kind: Kind,
    pub(super) stream: Stream,
    pub(super) next_txnr: u64,
    pub(super) inbox: Vec<u8>,
}

/// The connection's byte stream: plain TCP, or TLS over it.
pub(super) enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket under it, for timeouts and polling.
    pub(super) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            #[cfg(feature = "tls")]
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// The TLS handshake over `tcp`, by `deadline`: a stream to send over, or
/// why not (a certificate or setting the server refuses, or that refuses
/// the server's, permanently; anything else retried). `trust` says which
/// CAs were trusted, for the error.
#[cfg(feature = "tls")]
pub(super) fn handshake(
    tcp: TcpStream,
    config: std::sync::Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    deadline: Instant,
    trust: &str,
) -> Result<Stream, SendError> {
    let fail = |e: &dyn std::fmt::Display| {
        let text = format!("TLS handshake: {e}");
        crate::tls::failure(&text, trust).unwrap_or_else(|| SendError::retryable(crate::escape::sanitize(&text)))
    };
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| fail(&e))?;
    let mut tcp = tcp;
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SendError::timed_out());
        }
        tcp.set_read_timeout(Some(left)).and_then(|()| tcp.set_write_timeout(Some(left))).map_err(|e| fail(&e))?;
        match conn.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(SendError::timed_out());
            }
            Err(e) => return Err(fail(&e)),
        }
    }
    Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

pub(super) fn retryable(what: &str, e: &io::Error) -> SendError {
    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
        SendError::timed_out()
    } else {
        SendError::retryable(format!("{what}: {e}"))
    }
}

/// Connects to the first of `addrs` that answers, in order (a host name
/// may resolve to an IPv6 address nobody listens on, then an IPv4 one).
/// Each address gets an equal share of the time left before `deadline`.
pub(super) fn connect_any(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, SendError> {
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
    /// Whether the receiver closed or reset the connection, or sent
    /// something unasked (a RELP `serverclose`), since it was last used:
    /// then it must not carry another batch.
    pub(super) fn closed_by_peer(&mut self) -> bool {
        let tcp = self.stream.tcp();
        if tcp.set_nonblocking(true).is_err() {
            return true;
        }
        let idle = match &mut self.stream {
            Stream::Plain(s) => matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
            // TLS records may arrive unasked and mean nothing (TLS 1.3
            // session tickets): read them, and look at what they held.
            #[cfg(feature = "tls")]
            Stream::Tls(s) => loop {
                match s.conn.read_tls(&mut s.sock) {
                    Ok(0) => break false,
                    Ok(_) => match s.conn.process_new_packets() {
                        Ok(state) if state.peer_has_closed() || state.plaintext_bytes_to_read() > 0 => break false,
                        Ok(_) => {}
                        Err(_) => break false,
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                    Err(_) => break false,
                }
            },
        };
        self.stream.tcp().set_nonblocking(false).is_err() || !idle
    }

    pub(super) fn deadline_io(&self, ctx: &SendContext) -> Result<(), SendError> {
        if ctx.cancel.is_cancelled() {
            return Err(SendError::cancelled());
        }
        let left = ctx.remaining();
        if left.is_zero() {
            return Err(SendError::timed_out());
        }
        // Short slices, so cancellation is seen within 20 ms.
        let slice = Some(left.min(Duration::from_millis(20)));
        let tcp = self.stream.tcp();
        tcp.set_write_timeout(slice).and_then(|()| tcp.set_read_timeout(slice)).map_err(|e| retryable("socket", &e))
    }

    pub(super) fn write_all(&mut self, mut buf: &[u8], ctx: &SendContext) -> Result<(), SendError> {
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

    pub(super) fn flush(&mut self, ctx: &SendContext) -> Result<(), SendError> {
        self.deadline_io(ctx)?;
        self.stream.flush().map_err(|e| retryable("flushing", &e))
    }
}
