//! The one error type of the crate.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong in ringship.
///
/// Messages are lowercase and name the file or directory concerned, so that
/// an operator reading a log line knows where to look.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another process (or another `Ring` in this process) holds the ring
    /// directory open (invariant I9). The lock is an `flock` on the
    /// directory's lock file: a child process forked while the ring was
    /// open holds it too, from its fork until it execs or exits, so a
    /// reopen right after `close` in a process that spawns children can
    /// meet this error for that moment.
    #[error("ring directory {dir} is already open in another process or ring handle")]
    Locked {
        /// The directory that is locked.
        dir: PathBuf,
    },
    /// The directory or a file in it is not a ringship ring.
    #[error("{path} is not a ringship ring: {reason}")]
    NotARing {
        /// The offending path.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The ring was written by a format version this build does not read.
    #[error("{path} has ring format version {found}; this build reads version {supported}")]
    UnsupportedVersion {
        /// The file whose version is unknown.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The record is larger than the configured maximum; nothing was written.
    #[error("record of {len} bytes exceeds the maximum record size of {max} bytes")]
    RecordTooLarge {
        /// Size of the rejected payload.
        len: usize,
        /// The maximum: the configured one, or less in a ring whose
        /// capacity on disk is smaller than the configured one.
        max: usize,
    },
    /// The batch cannot fit in the ring even when it is empty: its frames
    /// and its largest frame once more (the most a wrap at the end of the
    /// data area can leave unused) exceed the capacity. Nothing was
    /// written; the records were counted as rejected. Split the batch.
    #[error("batch needs {needed} bytes of ring, more than the ring's capacity of {capacity} bytes can hold")]
    BatchTooLarge {
        /// Ring bytes the batch needs: its frames plus its largest frame.
        needed: u64,
        /// The ring's capacity in bytes.
        capacity: u64,
    },
    /// The ring is full of unacknowledged records and the full policy is
    /// [`FullPolicy::RejectNew`](crate::FullPolicy::RejectNew); the record was
    /// counted as rejected.
    #[error("ring is full: {needed} bytes needed, and only unacknowledged records could be evicted")]
    Full {
        /// Ring bytes the rejected record(s) needed.
        needed: u64,
    },
    /// [`FullPolicy::Block`](crate::FullPolicy::Block) waited its whole timeout
    /// for acknowledgements to free room; the record was counted as rejected.
    #[error("timed out after {0:?} waiting for acknowledgements to free room in the ring")]
    BlockTimeout(Duration),
    /// `ack` named a sequence number that was never assigned.
    #[error("cannot ack seq {seq}: the last assigned seq is {last}")]
    AckBeyondHead {
        /// The seq passed to `ack`.
        seq: u64,
        /// The last seq assigned.
        last: u64,
    },
    /// An earlier write or fsync failed. The kernel may have dropped the
    /// data it covered, so the ring refuses to pretend: close and reopen it,
    /// and recovery will count what was lost.
    #[error("an earlier write or fsync of {path} failed; close and reopen the ring")]
    Poisoned {
        /// The file whose write or fsync failed.
        path: PathBuf,
    },
    /// The ring was closed.
    #[error("the ring is closed")]
    Closed,
    /// The shipper was shut down through another handle, and that shutdown
    /// failed or is still running: the message says which.
    #[error("the shipper is shut down: {0}")]
    ShutDown(String),
    /// An operating-system error, with the file and the operation.
    #[error("could not {op} {path}: {source}")]
    Io {
        /// What ringship was doing.
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { op, path: path.into(), source }
    }

    /// The OS error behind this error, if any (for example to test for
    /// `ENOSPC` with [`std::io::Error::raw_os_error`]).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Shorthand for `Result<T, ringship::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
