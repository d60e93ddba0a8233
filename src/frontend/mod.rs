//! Front-ends: `tracing`, `log` and the OpenTelemetry SDK appending to a
//! ring. Each event becomes one record, appended on the emitting thread
//! before the macro returns, without waiting for an fsync or for room
//! (`Ring::append_nowait`). docs/FRONTENDS.md gives the record encoding.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::{Error, Ring};

pub(crate) mod json;
#[cfg(feature = "log")]
pub(crate) mod log;
#[cfg(feature = "opentelemetry")]
pub(crate) mod otel;
#[cfg(feature = "tracing")]
pub(crate) mod tracing;

use json::Json;

/// What a front-end could not append as it was: events cut to fit, and
/// events lost. Every front-end has a `stats` method; clones of a
/// front-end share one set of counters.
///
/// An event a front-end appended whole is in the ring and counted there
/// ([`RingStats::appended`](crate::RingStats::appended)); these are the
/// others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FrontEndStats {
    /// Events appended with string values cut or members left out to fit
    /// the ring's [`max_record_len`](Ring::max_record_len); their records
    /// say `"truncated":true` (a `RingWriter` line ends with
    /// `…[truncated]`).
    pub truncated: u64,
    /// Events the ring refused and counted as rejected, so that
    /// [`RingStats::rejected`](crate::RingStats::rejected) and the next gap
    /// notice include them: the ring full under `RejectNew` or `Block`, a
    /// record too large even cut, a failed write.
    pub rejected: u64,
    /// Events refused by a closed or poisoned ring: a closed ring ships
    /// nothing more and a poisoned one writes nothing more, so no gap
    /// notice can carry them, and they are counted here (the first is also
    /// reported through ringship's diagnostics). One exception: an event
    /// whose own write failed and poisoned the ring had a seq, which the
    /// next open's recovery counts as well.
    pub dropped: u64,
    /// Events left out so that shipping never feeds the ring it ships
    /// from: those emitted on ringship's own threads (its workers, and the
    /// transports, factories and callbacks it runs there), and ringship's
    /// own diagnostics (target `ringship`). Other subscribers and
    /// processors still see them.
    pub suppressed: u64,
}

#[derive(Default)]
struct Counters {
    truncated: AtomicU64,
    rejected: AtomicU64,
    dropped: AtomicU64,
    suppressed: AtomicU64,
    /// The first dropped event was reported.
    reported: AtomicBool,
}

/// Whether events of `target` are ringship's own diagnostics, which the
/// front-ends leave out.
#[cfg_attr(not(any(feature = "tracing", feature = "log")), allow(dead_code))]
pub(crate) fn own_target(target: &str) -> bool {
    target.strip_prefix("ringship").is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// A front-end's way into the ring, with its counters.
#[derive(Clone)]
pub(crate) struct Sink {
    ring: Arc<Ring>,
    counters: Arc<Counters>,
    #[cfg(feature = "testing")]
    to: Option<RecordFn>,
}

/// Takes each encoded record in place of the ring (benchmarks).
#[cfg(feature = "testing")]
pub(crate) type RecordFn = Arc<dyn Fn(&[u8]) + Send + Sync>;

impl fmt::Debug for Sink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sink").field("ring", &self.ring.dir()).field("stats", &self.stats()).finish_non_exhaustive()
    }
}

thread_local! {
    /// Each thread encodes into its own buffer, kept between events.
    static SCRATCH: RefCell<Json> = const { RefCell::new(Json::new()) };
}

/// Encode buffers above this size are not kept between events.
const SCRATCH_KEEP: usize = 64 << 10;

impl Sink {
    pub(crate) fn new(ring: Arc<Ring>) -> Self {
        Sink {
            ring,
            counters: Arc::default(),
            #[cfg(feature = "testing")]
            to: None,
        }
    }

    /// A sink that hands each encoded record to `to` instead of the ring
    /// (the benchmarks compare the front-ends' own cost against other
    /// writers with it).
    #[cfg(feature = "testing")]
    pub(crate) fn to(ring: Arc<Ring>, to: RecordFn) -> Self {
        Sink { to: Some(to), ..Sink::new(ring) }
    }

    #[cfg_attr(not(any(feature = "tracing", feature = "opentelemetry")), allow(dead_code))]
    pub(crate) fn ring(&self) -> &Ring {
        &self.ring
    }

    pub(crate) fn stats(&self) -> FrontEndStats {
        let c = &*self.counters;
        FrontEndStats {
            truncated: c.truncated.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            suppressed: c.suppressed.load(Ordering::Relaxed),
        }
    }

    /// Whether an event emitted on this thread is to be left out (counted
    /// as suppressed).
    pub(crate) fn suppressed(&self) -> bool {
        crate::threads::is_own() && self.suppress()
    }

    /// Counts an event left out as suppressed; returns true.
    pub(crate) fn suppress(&self) -> bool {
        self.counters.suppressed.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Encodes one event with `encode` into at most the ring's largest
    /// record, and appends it.
    pub(crate) fn emit(&self, encode: &dyn Fn(&mut Json)) {
        let max = self.ring.max_record_len();
        let encode_and_append = |j: &mut Json| {
            j.encode_within(max, encode);
            self.append(&j.buf, j.truncated());
        };
        // An event emitted while this thread encodes one (by a value's
        // `Debug`, say), or while the thread's locals are being destroyed,
        // gets a buffer of its own.
        let done = SCRATCH.try_with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut j) => {
                encode_and_append(&mut j);
                if j.buf.capacity() > SCRATCH_KEEP {
                    j.buf = Vec::new();
                }
                true
            }
            Err(_) => false,
        });
        if done != Ok(true) {
            encode_and_append(&mut Json::new());
        }
    }

    /// Appends one record, counting what could not be appended.
    pub(crate) fn append(&self, record: &[u8], truncated: bool) {
        #[cfg(feature = "testing")]
        if let Some(to) = &self.to {
            return to(record);
        }
        match self.ring.append_nowait(record) {
            Ok(_) => {
                if truncated {
                    self.counters.truncated.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e @ (Error::Closed | Error::Poisoned { .. })) => self.dropped(&e),
            Err(e @ Error::Io { .. }) if self.ring.poisoned() => self.dropped(&e),
            Err(_) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn dropped(&self, e: &Error) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        if !self.counters.reported.swap(true, Ordering::Relaxed) {
            crate::threads::diag!(
                "a ringship front-end could not append an event: {e}; this and later ones are counted in \
                 FrontEndStats::dropped"
            );
        }
    }

    /// Asks for what was appended to reach the disk, without waiting.
    #[cfg_attr(not(any(feature = "tracing", feature = "log")), allow(dead_code))]
    pub(crate) fn flush(&self) {
        self.ring.sync_soon();
    }
}
