//! What the socket-level transports (syslog, RELP, NATS) share: the byte
//! stream, plain TCP or TLS over it; the connect that tries each resolved
//! address in turn; the TLS handshake by a deadline; and I/O errors as
//! send errors.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::transport::{SendContext, SendError};

/// The connection's byte stream: plain TCP, or TLS over it.
pub(crate) enum Stream {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// The TCP socket under it, for timeouts and polling.
    pub(crate) fn tcp(&self) -> &TcpStream {
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
pub(crate) fn handshake(
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

pub(crate) fn retryable(what: &str, e: &io::Error) -> SendError {
    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
        SendError::timed_out()
    } else {
        SendError::retryable(format!("{what}: {e}"))
    }
}

/// Connects to the first of `addrs` that answers, in order (a host name
/// may resolve to an IPv6 address nobody listens on, then an IPv4 one).
/// Each address gets an equal share of the time left before `deadline`.
pub(crate) fn connect_any(addrs: &[SocketAddr], deadline: Instant) -> Result<TcpStream, SendError> {
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

/// Socket timeouts of at most 20 ms, and no more than the send has left,
/// so that blocking reads and writes see a cancellation within 20 ms; or
/// why the send must stop now (cancelled, or out of time).
pub(crate) fn deadline_slice(tcp: &TcpStream, ctx: &SendContext) -> Result<(), SendError> {
    if ctx.cancel.is_cancelled() {
        return Err(SendError::cancelled());
    }
    let left = ctx.remaining();
    if left.is_zero() {
        return Err(SendError::timed_out());
    }
    let slice = Some(left.min(Duration::from_millis(20)));
    tcp.set_write_timeout(slice).and_then(|()| tcp.set_read_timeout(slice)).map_err(|e| retryable("socket", &e))
}
