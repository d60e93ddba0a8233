//! Ring configuration.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::frame::MAX_PAYLOAD;
use super::geometry::{self, MAX_CAPACITY};
use crate::ring::storage::Storage;
use crate::{Error, Result};

/// When appended records reach stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncPolicy {
    /// `append` returns once the record is on stable storage. Concurrent
    /// appenders share fsyncs (group commit).
    Always,
    /// A background flusher makes everything appended durable at this
    /// interval; one fsync covers everything appended since the last.
    /// `append` never waits for it.
    Interval(Duration),
    /// Durability is left to the operating system (and to explicit
    /// [`Ring::sync`](crate::Ring::sync) calls).
    Never,
}

/// What `append` does when the ring has no room left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FullPolicy {
    /// Evict the oldest records, as few as the new record needs. Evicting an
    /// unacknowledged record counts it as overwritten, with its range.
    #[default]
    OverwriteOldest,
    /// Refuse the new record with [`Error::Full`] and count it as rejected.
    /// Acknowledged records are still evicted to make room.
    RejectNew,
    /// Wait up to this long for acknowledgements to free room, then fail
    /// with [`Error::BlockTimeout`] and count the record as rejected.
    Block(Duration),
}

/// Wraps the ring's storage, for fault injection in tests. It receives the
/// path of each file and the real storage, and returns what the ring uses.
#[doc(hidden)]
pub type StorageWrapper = Arc<dyn Fn(&Path, Box<dyn Storage>) -> Box<dyn Storage> + Send + Sync>;

/// Configuration of a [`Ring`](crate::Ring); start from [`RingConfig::default`].
#[derive(Clone)]
pub struct RingConfig {
    pub(crate) capacity: u64,
    pub(crate) max_record_len: Option<usize>,
    pub(crate) sync: SyncPolicy,
    pub(crate) full: FullPolicy,
    pub(crate) checkpoint_interval: Duration,
    pub(crate) max_loss_ranges: usize,
    pub(crate) seq_reservation: u64,
    pub(crate) storage_wrapper: Option<StorageWrapper>,
    pub(crate) mapped_writes: bool,
}

/// Most loss ranges a checkpoint can hold.
pub(crate) const MAX_LOSS_RANGES: usize = 48;

/// Largest seq reservation: 2^32 seqs. A power loss may count this many
/// seqs lost that were never handed out, and seqs must stay far below
/// 2^62 (see docs/FORMAT.md).
pub(crate) const MAX_SEQ_RESERVATION: u64 = 1 << 32;

impl Default for RingConfig {
    /// 64 MiB ring, records up to 256 KiB (or a quarter of a smaller
    /// capacity), `Interval(200 ms)`, `OverwriteOldest`.
    fn default() -> Self {
        RingConfig {
            capacity: 64 << 20,
            max_record_len: None,
            sync: SyncPolicy::Interval(Duration::from_millis(200)),
            full: FullPolicy::OverwriteOldest,
            checkpoint_interval: Duration::from_millis(100),
            max_loss_ranges: 32,
            seq_reservation: 65_536,
            storage_wrapper: None,
            mapped_writes: false,
        }
    }
}

impl fmt::Debug for RingConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingConfig")
            .field("capacity", &self.capacity)
            .field("max_record_len", &self.max_record_len)
            .field("sync", &self.sync)
            .field("full", &self.full)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("max_loss_ranges", &self.max_loss_ranges)
            .field("seq_reservation", &self.seq_reservation)
            .field("storage_wrapper", &self.storage_wrapper.is_some())
            .field("mapped_writes", &self.mapped_writes)
            .finish()
    }
}

impl RingConfig {
    /// Size of the data area in bytes, rounded down to a multiple of 8. Fixed
    /// when the ring is created: reopening with another value keeps the one
    /// on disk and says so in the [`RecoveryReport`](crate::RecoveryReport).
    #[must_use]
    pub fn capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// Largest payload `append` accepts (at most 16 MiB - 1). Unset, it is
    /// 256 KiB or a quarter of the capacity, whichever is smaller. The
    /// capacity must hold two frames of it (a frame is the payload plus 32
    /// bytes, rounded up to 8): a record that wraps may leave almost one
    /// frame unused at the end of the data area. A ring opened with another
    /// capacity than it was created with keeps its own, and the limit is
    /// lowered to what its capacity holds.
    #[must_use]
    pub fn max_record_len(mut self, bytes: usize) -> Self {
        self.max_record_len = Some(bytes);
        self
    }

    /// The largest payload `append` accepts with this configuration (in a
    /// new ring, or one created with the same capacity).
    pub(crate) fn record_limit(&self) -> usize {
        self.max_record_len.unwrap_or_else(|| (256 << 10).min(usize::try_from(self.capacity / 4).unwrap_or(usize::MAX)))
    }

    /// The largest payload `append` accepts in a ring of `cap` bytes: an
    /// existing ring keeps its capacity on disk whatever is configured, and
    /// a record two of whose frames it could not hold is too large for it,
    /// not a reason to call the ring full. For a configuration that passed
    /// `validate`, in a ring of the configured capacity, this is
    /// [`max_record_len`](Self::max_record_len).
    pub(crate) fn max_record_len_in(&self, cap: u64) -> usize {
        self.record_limit().min(geometry::largest_record(cap))
    }

    /// The data area a new ring gets: the capacity, rounded down to whole
    /// frame alignment.
    pub(crate) fn data_capacity(&self) -> u64 {
        geometry::round(self.capacity)
    }

    /// The sync policy.
    #[must_use]
    pub fn sync(mut self, policy: SyncPolicy) -> Self {
        self.sync = policy;
        self
    }

    /// The full policy.
    #[must_use]
    pub fn full(mut self, policy: FullPolicy) -> Self {
        self.full = policy;
        self
    }

    /// How often at most evictions of unacknowledged records write a
    /// checkpoint (without fsync), bounding what a crash leaves for
    /// recovery to rediscover from sequence gaps. Zero writes one after
    /// every such append (a `pwrite` of the checkpoint each time).
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    #[must_use]
    pub fn checkpoint_interval(mut self, interval: Duration) -> Self {
        self.checkpoint_interval = interval;
        self
    }

    /// How many loss ranges are kept before the oldest merge (1 to 48).
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    #[must_use]
    pub fn max_loss_ranges(mut self, n: usize) -> Self {
        self.max_loss_ranges = n;
        self
    }

    /// How many seqs one durable reservation covers (default 65,536).
    ///
    /// So that a seq is never reused, even after a power loss, the ring
    /// writes and fsyncs a small reservation record before handing out seqs
    /// beyond the last one: once per this many appends. Once half of it is
    /// used, the ring's background thread renews it (as do the
    /// [`SyncPolicy::Interval`] flusher and [`Ring::sync`](crate::Ring::sync)),
    /// so appends do not wait for that fsync; only the first append after
    /// `open`, and appends that use up half a reservation while the renewal's
    /// fsync runs, write one themselves or wait for it. After an unclean
    /// shutdown the seqs between the last record on disk and the
    /// reservation are passed over (`seqs_skipped`), since any of them may
    /// have been handed out: at most this many.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    #[must_use]
    pub fn seq_reservation(mut self, seqs: u64) -> Self {
        self.seq_reservation = seqs;
        self
    }

    /// Writes records into a shared memory map of the data file instead of
    /// handing each append to the kernel with a `pwrite` (off by default).
    ///
    /// An append then costs a copy into the page cache rather than a system
    /// call: a single small append is several times faster (BENCHMARKS.md).
    /// Durability is unchanged: what an append wrote survives `kill -9` (the
    /// page cache keeps it either way), and `sync` and `SyncPolicy::Always`
    /// fsync it as before.
    ///
    /// The price, as with LMDB's `MDB_WRITEMAP`: a store into a page the
    /// kernel has evicted makes it read the page back, and if that read
    /// fails (a bad sector) the process gets `SIGBUS`. To keep that from
    /// happening, the ring has the kernel bring pages in before it stores
    /// into them (`MADV_POPULATE_WRITE`, Linux 5.14 and later, up to 64 KiB
    /// ahead), which reports such a failure as an error: the append fails
    /// with [`Error::Io`](crate::Error::Io) and the ring is poisoned until
    /// reopened. A populated range is trusted for 10 ms, so `SIGBUS` remains
    /// possible only if within those 10 ms the kernel writes back and
    /// evicts such a page and then fails to read it, or if another process,
    /// ignoring the ring's lock, cuts the data file short; and on older
    /// kernels, where stores fault pages in themselves. Write errors proper
    /// still surface from the fsync of `sync` or `SyncPolicy::Always`.
    /// Reads are unaffected (they use `pread`). Pages
    /// written through the map count in the process's resident set until
    /// the writer moves 4 MiB further on, when they are unmapped (they stay
    /// in the page cache): resident memory stays bounded, not proportional
    /// to the ring.
    ///
    /// Latency: on a ring's first lap, a store into a page never touched
    /// makes the kernel bring in its whole readahead window at once (the
    /// disk's `read_ahead_kb`, 128 KiB by default), and the append that
    /// does it waits for that read, the longer the larger the window
    /// (BENCHMARKS.md, "Tail latency of single appends"). Once the ring has
    /// lapped, its pages are in the page cache and appends do not stall so.
    #[must_use]
    pub fn mapped_writes(mut self, on: bool) -> Self {
        self.mapped_writes = on;
        self
    }

    /// Puts `wrapper` between the ring and each of its files (fault injection).
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    #[must_use]
    pub fn storage_wrapper(mut self, wrapper: StorageWrapper) -> Self {
        self.storage_wrapper = Some(wrapper);
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(8..=MAX_CAPACITY).contains(&self.capacity) {
            return Err(Error::Config(format!(
                "capacity must be between 8 bytes and {MAX_CAPACITY} bytes (256 TiB), got {}",
                self.capacity
            )));
        }
        let max_record_len = self.record_limit();
        if max_record_len == 0 || max_record_len > MAX_PAYLOAD {
            return Err(Error::Config(format!(
                "max_record_len must be between 1 and {MAX_PAYLOAD} bytes, got {max_record_len}"
            )));
        }
        let min = geometry::min_capacity(max_record_len);
        if self.capacity < min {
            return Err(Error::Config(format!(
                "capacity of {} bytes is too small for one record of max_record_len {max_record_len} bytes: at least {min} bytes needed",
                self.capacity
            )));
        }
        if let SyncPolicy::Interval(d) = self.sync {
            if d.is_zero() {
                return Err(Error::Config("SyncPolicy::Interval needs a non-zero interval".into()));
            }
        }
        if !(1..=MAX_SEQ_RESERVATION).contains(&self.seq_reservation) {
            return Err(Error::Config(format!(
                "seq_reservation must be between 1 and {MAX_SEQ_RESERVATION}, got {}",
                self.seq_reservation
            )));
        }
        if !(1..=MAX_LOSS_RANGES).contains(&self.max_loss_ranges) {
            return Err(Error::Config(format!(
                "max_loss_ranges must be between 1 and {MAX_LOSS_RANGES}, got {}",
                self.max_loss_ranges
            )));
        }
        Ok(())
    }
}
