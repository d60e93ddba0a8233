//! The connection to a syslog receiver: the TCP stream and the RELP
//! session state it carries, the connect that tries each resolved address
//! in turn, the check that the receiver has not closed an idle connection,
//! and writes and flushes bounded by a send's deadline and cancellation
//! (socket timeouts of at most 20 ms, so a cancel is seen promptly), with
//! I/O errors mapped to retryable send errors. The RELP commands carried
//! over it are in `relp`.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::Kind;
use crate::transport::{SendContext, SendError};

pub(super) struct Connection {
    pub(super) address: String,
    pub(super) kind: Kind,
    pub(super) stream: TcpStream,
    pub(super) next_txnr: u64,
    pub(super) inbox: Vec<u8>,
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
    pub(super) fn closed_by_peer(&self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return true;
        }
        let idle = matches!(self.stream.peek(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        self.stream.set_nonblocking(false).is_err() || !idle
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
        self.stream
            .set_write_timeout(slice)
            .and_then(|()| self.stream.set_read_timeout(slice))
            .map_err(|e| retryable("socket", &e))
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
