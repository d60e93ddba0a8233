//! Transports: how a batch reaches an endpoint.
//!
//! A [`Transport`] sends one [`Batch`] to one [`Endpoint`] per call,
//! blocking, and must return by the [`SendContext`]'s deadline or soon after
//! its [`CancelToken`] fires. ringship never relies on that: a transport that
//! ignores both is abandoned by the supervisor and replaced with a fresh one
//! from the [`TransportFactory`].

#[cfg(feature = "http")]
mod http;
mod memory;
#[cfg(feature = "nats")]
mod nats;
#[cfg(any(feature = "syslog", feature = "nats"))]
mod net;
#[cfg(feature = "otlp")]
mod otlp;
#[cfg(feature = "syslog")]
mod syslog;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

#[cfg(feature = "http")]
pub use http::{BodyFormat, HttpConfig, HttpTransport, Proxy};
pub use memory::{MemoryReceiver, MemoryTransport, Received};
#[cfg(feature = "nats")]
pub use nats::{NatsConfig, NatsTransport};
#[cfg(feature = "otlp")]
pub use otlp::{OtlpConfig, OtlpEncoding, OtlpTransport};
#[cfg(fuzzing)]
pub(crate) use syslog::parse_frame;
#[cfg(feature = "syslog")]
pub use syslog::{SyslogConfig, SyslogTransport};

use crate::stats::LossCause;
use crate::sync::atomic::{AtomicBool, Ordering};
use crate::sync::{Condvar, LEVEL_CANCEL, Mutex};
use std::sync::atomic::AtomicU64;

/// Where batches go: an address a transport understands (a URL, a
/// `host:port`) and headers to send with every batch (auth tokens).
///
/// Its `Display` and `Debug` forms are redacted: the address without its
/// user info, with its query values masked (`https://***@host/ingest?api_key=***`),
/// and the headers' names without their values. ringship shows only
/// those, and scrubs the secrets from every error it keeps.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub(crate) address: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl Endpoint {
    /// An endpoint with no headers; `address` is in the transport's own
    /// syntax (an `https://` URL, `relp://host:port`).
    pub fn new(address: impl Into<String>) -> Self {
        Endpoint { address: address.into(), headers: Vec::new() }
    }

    /// Adds a header, for transports that carry them. The HTTP transport
    /// refuses an endpoint whose headers name one it sets itself:
    /// `Content-Type`, `Content-Encoding`, `Content-Length`,
    /// `Transfer-Encoding` or an `X-Ringship-` header of its protocol.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The headers, in the order added.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::redact::url(&self.address))
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<String> = self.headers.iter().map(|(k, _)| format!("{k}: ***")).collect();
        f.debug_struct("Endpoint")
            .field("address", &crate::redact::url(&self.address))
            .field("headers", &headers)
            .finish()
    }
}

/// One record in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchRecord {
    /// Its sequence number: receivers de-duplicate on it (delivery is
    /// at-least-once).
    pub seq: u64,
    /// When it was appended, nanoseconds since the Unix epoch.
    pub timestamp: u64,
    /// Its bytes.
    pub payload: Bytes,
}

/// Tells the receiver which records before a batch will never arrive.
///
/// Seqs `first_seq..=last_seq` were lost (overwritten before they were
/// acknowledged, or damaged); `rejected` counts records refused at append
/// since the previous notice (they never had seqs), `refused` records the
/// receiver refused since the previous notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GapNotice {
    /// First missing seq (0 with `last_seq` 0 when only `rejected` or
    /// `refused` is set).
    pub first_seq: u64,
    /// Last missing seq.
    pub last_seq: u64,
    /// Timestamp (or lower bound) of the first missing record; 0 if
    /// unknown.
    pub first_ts: u64,
    /// Timestamp (or upper bound) of the last missing record; 0 if unknown.
    pub last_ts: u64,
    /// Why they are missing (`Mixed` when several causes); says nothing
    /// when no seq is missing (a notice of rejections only), and
    /// transports then write `none`.
    pub cause: LossCause,
    /// Records refused at append since the previous notice.
    pub rejected: u64,
    /// Records the receiver refused since the previous notice (they had
    /// seqs: [`Ring::losses`](crate::Ring::losses) names their batches'
    /// ranges, cause [`LossCause::Refused`]).
    pub refused: u64,
}

impl GapNotice {
    /// Missing seqs in the notice.
    pub fn missing(&self) -> u64 {
        if self.last_seq >= self.first_seq && self.first_seq > 0 { self.last_seq - self.first_seq + 1 } else { 0 }
    }

    /// The cause as transports write it: `none` when no seq is missing.
    #[cfg(any(feature = "http", feature = "syslog", feature = "nats"))]
    pub(crate) fn cause_label(&self) -> &'static str {
        if self.missing() == 0 { "none" } else { self.cause.as_str() }
    }
}

/// What a transport sends: records in seq order, and a gap notice when
/// records before them were lost.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Batch {
    /// The id of the ring the records come from ([`Ring::id`](crate::Ring::id)):
    /// a receiver de-duplicates by (ring id, seq).
    pub ring_id: u64,
    /// The records, in consecutive seqs: the sender ends a batch before a
    /// missing seq, and the next batch's gap notice names it.
    pub records: Vec<BatchRecord>,
    /// Records lost just before this batch, if any.
    pub gap: Option<GapNotice>,
}

impl Batch {
    /// Seq of the first record.
    pub fn first_seq(&self) -> u64 {
        self.records.first().map_or(0, |r| r.seq)
    }

    /// Seq of the last record.
    pub fn last_seq(&self) -> u64 {
        self.records.last().map_or(0, |r| r.seq)
    }

    /// Payload bytes.
    pub fn payload_bytes(&self) -> usize {
        self.records.iter().map(|r| r.payload.len()).sum()
    }
}

/// A one-way cancellation signal shared between the sender and a send.
#[derive(Clone)]
pub(crate) struct CancelToken(Arc<CancelInner>);

struct CancelInner {
    cancelled: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CancelToken").field(&self.is_cancelled()).finish()
    }
}

impl Default for CancelToken {
    fn default() -> Self {
        Self::new()
    }
}

impl CancelToken {
    /// A token that has not fired.
    pub(crate) fn new() -> Self {
        CancelToken(Arc::new(CancelInner {
            cancelled: AtomicBool::new(false),
            lock: Mutex::new(LEVEL_CANCEL, "transport.cancel", ()),
            cv: Condvar::new(),
        }))
    }

    /// Fires the token; never blocks.
    pub(crate) fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::Release);
        let _g = self.0.lock.lock();
        self.0.cv.notify_all();
    }

    /// Whether the token has fired.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::Acquire)
    }

    /// Sleeps up to `timeout`, waking early if the token fires. Returns
    /// whether it fired.
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> bool {
        // A timeout too long to end at an instant waits for the token alone.
        let deadline = Instant::now().checked_add(timeout);
        let mut g = self.0.lock.lock();
        while !self.is_cancelled() {
            let Some(deadline) = deadline else {
                self.0.cv.wait(&mut g);
                continue;
            };
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            self.0.cv.wait_for(&mut g, deadline - now);
        }
        self.is_cancelled()
    }
}

/// Runs `work` on a helper thread named `name` and waits for its result,
/// returning `Cancelled` soon after `ctx`'s token fires and `TimedOut` at
/// its deadline, whether or not `work` has returned: for blocking calls
/// that take no cancellation of their own (a DNS lookup, a connect, a
/// request). A helper left behind runs on until `work` returns, and its
/// result is dropped, so `work` must bound itself (by the deadline).
#[cfg(any(feature = "http", feature = "syslog", feature = "nats"))]
pub(crate) fn run_cancellable<T: Send + 'static>(
    name: &str,
    ctx: &SendContext,
    work: impl FnOnce() -> Result<T, SendError> + Send + 'static,
) -> Result<T, SendError> {
    use std::sync::mpsc;
    if ctx.cancel.is_cancelled() {
        return Err(SendError::cancelled());
    }
    let (tx, rx) = mpsc::sync_channel(1);
    crate::threads::spawn(name, move || {
        let _ = tx.send(work());
    })
    .map_err(|e| SendError::retryable(format!("spawning the {name} thread: {e}")))?;
    loop {
        if ctx.cancel.is_cancelled() {
            return Err(SendError::cancelled());
        }
        match rx.recv_timeout(Duration::from_millis(5).min(ctx.remaining().max(Duration::from_millis(1)))) {
            Ok(outcome) => return outcome,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(SendError::retryable(format!("the {name} thread died")));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if ctx.remaining().is_zero() {
                    return Err(SendError::timed_out());
                }
            }
        }
    }
}

/// What a send said beyond its result: records of the batch the endpoint
/// refused, and whether it refused the batch's gap notice too.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SendAnswer {
    pub(crate) refused: u64,
    pub(crate) notice_refused: bool,
}

/// What a transport gets with each send.
#[derive(Debug, Clone)]
pub struct SendContext {
    pub(crate) deadline: Instant,
    pub(crate) cancel: CancelToken,
    /// Records of the batch the endpoint refused ([`SendContext::refuse`]).
    pub(crate) refused: Arc<AtomicU64>,
    /// The endpoint refused the batch's gap notice too.
    pub(crate) notice_refused: Arc<AtomicBool>,
}

impl SendContext {
    /// A context with `timeout` left and a token no one fires: for tests of
    /// a transport.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub fn new(timeout: Duration) -> Self {
        SendContext::until(Instant::now() + timeout, CancelToken::new())
    }

    /// A context ending at `deadline`, cancelled by `cancel`.
    pub(crate) fn until(deadline: Instant, cancel: CancelToken) -> Self {
        SendContext { deadline, cancel, refused: Arc::default(), notice_refused: Arc::default() }
    }

    /// Tells the shipper that the endpoint took the batch but refused
    /// `records` of its records for good: a partial acceptance, such as
    /// OTLP's `partial_success`. Then return `Ok(())`: the batch is
    /// acknowledged, and that many of its records are counted refused
    /// ([`RingStats::refused`](crate::RingStats::refused), a loss range
    /// with [`LossCause::Refused`], `on_loss` and the next gap notice)
    /// instead of acknowledged. They are never sent again. Calls add up;
    /// more than the batch holds counts all of it. Refusing nothing, or
    /// returning an error instead, changes nothing.
    pub fn refuse(&self, records: u64) {
        self.refused.fetch_add(records, Ordering::Relaxed);
    }

    /// Records refused so far ([`refuse`](Self::refuse)).
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Tells the shipper that the endpoint refused the batch's gap notice
    /// as well as its records: the next notice names its seqs again.
    #[cfg_attr(not(feature = "otlp"), allow(dead_code))]
    pub(crate) fn refuse_notice(&self) {
        self.notice_refused.store(true, Ordering::Relaxed);
    }

    /// What the send said beyond its result.
    pub(crate) fn answer(&self) -> SendAnswer {
        SendAnswer { refused: self.refused(), notice_refused: self.notice_refused.load(Ordering::Relaxed) }
    }

    /// Return by then, with [`SendErrorKind::TimedOut`] if not done.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time left before the deadline (zero if past it).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Whether the send is cancelled (its endpoint was switched away from,
    /// or the shipper is stopping): return soon, with
    /// [`SendErrorKind::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Sleeps up to `timeout`, waking early if the send is cancelled.
    /// Returns whether it is.
    pub fn wait_cancelled(&self, timeout: Duration) -> bool {
        self.cancel.wait_timeout(timeout)
    }
}

/// Whether retrying a failed send can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// Try again later (connection refused, 5xx, 429, 408...).
    Retryable,
    /// The endpoint refused the batch and will refuse it again (4xx): the
    /// batch stays in the ring, health reports the error, and the sender
    /// keeps retrying at the longest backoff until the endpoint changes.
    Permanent,
    /// The send's cancellation token fired.
    Cancelled,
    /// The deadline passed.
    TimedOut,
    /// The endpoint refused the batch for its size (HTTP 413): the sender
    /// sends the same records again at once in batches of half as many
    /// records and bytes, and keeps to that size for this endpoint until
    /// full batches pass again, then grows it back toward the configured
    /// limits. A single record refused so would be refused forever: it is
    /// counted refused ([`RingStats::refused`](crate::RingStats::refused))
    /// and announced in the next gap notice, and shipping goes on.
    TooLarge,
}

/// A failed send. It displays as a sentence saying what the shipper does
/// about it: "the send failed and is retried: connection refused".
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SendError {
    /// Whether retrying can help.
    pub kind: SendErrorKind,
    /// What happened, for health and logs.
    pub message: String,
    /// The endpoint asked to wait this long before retrying (Retry-After).
    pub retry_after: Option<Duration>,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.message;
        match self.kind {
            SendErrorKind::Retryable => write!(f, "the send failed and is retried: {m}"),
            SendErrorKind::Permanent => write!(f, "the endpoint refused the batch, and retrying will not help: {m}"),
            SendErrorKind::Cancelled => write!(f, "the send was cancelled: {m}"),
            SendErrorKind::TimedOut => write!(f, "the send ran past its deadline: {m}"),
            SendErrorKind::TooLarge => write!(f, "the endpoint refused the batch as too large: {m}"),
        }
    }
}

impl std::error::Error for SendError {}

impl SendError {
    /// A failure of the given kind.
    pub fn new(kind: SendErrorKind, message: impl Into<String>) -> Self {
        SendError { kind, message: message.into(), retry_after: None }
    }

    /// A retryable failure.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::new(SendErrorKind::Retryable, message)
    }

    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::new(SendErrorKind::Permanent, message)
    }

    /// The send was cancelled.
    pub fn cancelled() -> Self {
        Self::new(SendErrorKind::Cancelled, "an endpoint switch or shutdown fired its token")
    }

    /// The deadline passed.
    pub fn timed_out() -> Self {
        Self::new(SendErrorKind::TimedOut, "no answer in time")
    }

    /// The endpoint refused the batch for its size.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(SendErrorKind::TooLarge, message)
    }

    /// Asks the sender to wait at least `after` before retrying.
    #[must_use]
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

/// Sends batches to endpoints. One transport is used by one worker thread
/// at a time.
pub trait Transport: Send {
    /// Sends `batch` to `endpoint`. `Ok` means the endpoint accepted every
    /// record of the batch; only then are they acknowledged in the ring.
    ///
    /// # Errors
    /// A [`SendError`] saying whether retrying can help.
    fn send(&mut self, endpoint: &Endpoint, batch: &Batch, ctx: &SendContext) -> Result<(), SendError>;
}

/// Makes fresh transports, so a stuck one can be replaced.
///
/// Any closure returning a transport is a factory (`move || receiver.transport()`),
/// and so is one returning `Result<impl Transport, E>` for an error `E` that
/// converts into `Box<dyn Error + Send + Sync>` (an `io::Error`, a `String`),
/// when making one can fail. The transports' own factories
/// ([`HttpTransport::factory`](crate::HttpTransport::factory),
/// [`SyslogTransport::factory`](crate::SyslogTransport::factory)) also check
/// endpoints.
pub trait TransportFactory: Send + Sync {
    /// A new transport. Called on the worker's thread, again for each
    /// replacement of a stuck worker.
    ///
    /// # Errors
    /// Why no transport could be made (a certificate file, an address). The
    /// shipper shows it in [`Health::last_error`](crate::Health::last_error)
    /// and asks again after a backoff, as it does when this panics.
    fn make(&self) -> Result<Box<dyn Transport>, Box<dyn std::error::Error + Send + Sync>>;

    /// Checks that this factory's transports can send to `endpoint`: the
    /// shipper calls it at start and before every switch, so that a typo in
    /// a configuration reload is refused while shipping goes on to the
    /// endpoint in use. Accepts every endpoint unless overridden.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) saying what is wrong with it.
    fn check_endpoint(&self, endpoint: &Endpoint) -> crate::Result<()> {
        let _ = endpoint;
        Ok(())
    }
}

/// What a closure used as a [`TransportFactory`] may return.
mod made {
    use super::Transport;

    /// A transport, or the error that kept one from being made.
    pub trait Made {
        fn into_transport(self) -> Result<Box<dyn Transport>, Box<dyn std::error::Error + Send + Sync>>;
    }

    impl<T: Transport + 'static> Made for T {
        fn into_transport(self) -> Result<Box<dyn Transport>, Box<dyn std::error::Error + Send + Sync>> {
            Ok(Box::new(self))
        }
    }

    impl<T: Transport + 'static, E: Into<Box<dyn std::error::Error + Send + Sync>>> Made for Result<T, E> {
        fn into_transport(self) -> Result<Box<dyn Transport>, Box<dyn std::error::Error + Send + Sync>> {
            match self {
                Ok(t) => Ok(Box::new(t)),
                Err(e) => Err(e.into()),
            }
        }
    }
}

impl<F, M> TransportFactory for F
where
    F: Fn() -> M + Send + Sync,
    M: made::Made,
{
    fn make(&self) -> Result<Box<dyn Transport>, Box<dyn std::error::Error + Send + Sync>> {
        self().into_transport()
    }
}

impl Transport for Box<dyn Transport> {
    fn send(&mut self, endpoint: &Endpoint, batch: &Batch, ctx: &SendContext) -> Result<(), SendError> {
        (**self).send(endpoint, batch, ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_wakes_a_waiter() {
        let t = CancelToken::new();
        let t2 = t.clone();
        let h = std::thread::spawn(move || t2.wait_timeout(Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        t.cancel();
        assert!(h.join().unwrap());
    }

    #[test]
    fn a_wait_too_long_to_end_at_an_instant_waits_for_the_token() {
        let t = CancelToken::new();
        let t2 = t.clone();
        let h = std::thread::spawn(move || t2.wait_timeout(Duration::MAX));
        std::thread::sleep(Duration::from_millis(20));
        t.cancel();
        assert!(h.join().unwrap());
    }

    /// Work that ignores both the token and the deadline (it would succeed
    /// three seconds on) is left behind: the caller gets the cancellation,
    /// or the timeout, not the late success.
    #[cfg(any(feature = "http", feature = "syslog", feature = "nats"))]
    #[test]
    fn run_cancellable_returns_on_cancel_and_at_the_deadline() {
        let slow = || {
            std::thread::sleep(Duration::from_secs(3));
            Ok(())
        };
        let ctx = SendContext::until(Instant::now() + Duration::from_secs(60), CancelToken::new());
        let cancel = ctx.cancel.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            cancel.cancel();
        });
        assert_eq!(run_cancellable("test", &ctx, slow).unwrap_err().kind, SendErrorKind::Cancelled);
        canceller.join().unwrap();
        let ctx = SendContext::until(Instant::now() + Duration::from_millis(20), CancelToken::new());
        assert_eq!(run_cancellable("test", &ctx, slow).unwrap_err().kind, SendErrorKind::TimedOut);
    }

    /// A send error reads as a sentence saying what happens next, never
    /// as a Rust variant name.
    #[test]
    fn send_errors_display_as_sentences() {
        let cases = [
            (SendError::retryable("connection refused"), "the send failed and is retried: connection refused"),
            (SendError::timed_out(), "the send ran past its deadline: no answer in time"),
            (SendError::permanent("HTTP 400"), "the endpoint refused the batch, and retrying will not help: HTTP 400"),
        ];
        for (err, text) in cases {
            assert_eq!(err.to_string(), text);
            assert!(!text.contains(&format!("{:?}", err.kind)));
        }
    }

    #[test]
    fn wait_times_out_without_cancel() {
        let t = CancelToken::new();
        assert!(!t.wait_timeout(Duration::from_millis(10)));
    }
}
