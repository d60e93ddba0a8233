//! RELP, the acknowledged protocol rsyslog speaks through imrelp, on a
//! `Connection`: frames `TXNR SP COMMAND SP DATALEN [SP DATA] LF`, sent
//! with a transaction number and parsed whole or not at all, the `rsp`
//! each command must get (`200 OK`), the `close` that ends a session in
//! order, and the limits on commands in flight, response size and the wait
//! for the answer to `close`. The session opens in
//! `SyslogTransport::connect`.

use std::io::{self, Read};
use std::time::Duration;

use super::Kind;
use super::connection::{Connection, retryable};
use crate::transport::{SendContext, SendError};

/// Most RELP commands in flight at once.
pub(super) const RELP_WINDOW: usize = 128;
/// Largest RELP response frame accepted.
const MAX_RSP: usize = 64 << 10;
/// Longest wait for the answer to the `close` that ends a RELP session.
pub(super) const RELP_CLOSE_WAIT: Duration = Duration::from_millis(500);

impl Connection {
    /// Ends the session as RELP asks: a `close` command, then a wait, up
    /// to `ctx`'s deadline, for its `rsp` (rsyslog answers, then closes
    /// the connection). Dropped without it, a session is broken to the
    /// receiver, which logs so. Only for a session with nothing in flight
    /// (a failed send drops its connection instead). Never fails: a
    /// session that cannot be closed so is just dropped. Plain TCP has
    /// nothing to send.
    pub(super) fn close_session(mut self, ctx: &SendContext) {
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

    /// Sends one RELP command; returns its transaction number.
    pub(super) fn send_frame(&mut self, command: &str, data: &[u8], ctx: &SendContext) -> Result<u64, SendError> {
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
    pub(super) fn expect_ok(&mut self, txnr: u64, ctx: &SendContext) -> Result<(), SendError> {
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
