//! The connection to a syslog receiver: the TCP stream and the RELP
//! session state it carries, the connect that tries each resolved address
//! in turn, the check that the receiver has not closed an idle connection,
//! and writes and flushes bounded by a send's deadline and cancellation
//! (socket timeouts of at most 20 ms, so a cancel is seen promptly), with
//! I/O errors mapped to retryable send errors. The RELP commands carried
//! over it are in `relp`.

use std::io::{self, Write};

use super::Kind;
pub(super) use crate::transport::net::{Stream, connect_any, retryable};
use crate::transport::{SendContext, SendError};

pub(super) struct Connection {
    pub(super) address: String,
    pub(super) kind: Kind,
    pub(super) stream: Stream,
    pub(super) next_txnr: u64,
    pub(super) inbox: Vec<u8>,
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
        crate::transport::net::deadline_slice(self.stream.tcp(), ctx)
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
