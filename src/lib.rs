//! ringship: crash-safe ring-buffer telemetry shipping.
//!
//! A host service appends records (log lines, audit events, metric samples)
//! from any thread; ringship keeps them in a bounded ring on local disk that
//! survives `kill -9` and power loss, and is exact about every record it
//! loses: when the ring is full it evicts the oldest records and counts each
//! unacknowledged one, with its sequence range, time span and size.
//!
//! - **Bounded**: the data file is preallocated and never grows.
//! - **Crash-safe**: every frame is checksummed (CRC32C) and checked when
//!   read; recovery truncates a torn tail, damage is skipped and counted,
//!   and a ring never refuses to open over a bad record.
//! - **Exact**: `appended = acked + pending + overwritten + rejected +
//!   corrupted + lost_unsynced + refused` holds at every moment and after
//!   any crash, and every counter survives restarts.
//!
//! Linux only: the ring uses Linux file APIs (`fallocate`, `posix_fadvise`,
//! `preadv2`) and the kernel's boot id.
//!
//! ```
//! use ringship::{Ring, RingConfig, SyncPolicy};
//!
//! # fn main() -> Result<(), ringship::Error> {
//! # let tmp = tempfile::tempdir().unwrap();
//! # let dir = tmp.path().join("ring");
//! let config = RingConfig::default()
//!     .capacity(1 << 20)
//!     .sync(SyncPolicy::Never);
//! let (ring, report) = Ring::open(&dir, config)?;
//! assert!(report.created);
//!
//! let seq = ring.append(b"user=alice action=login")?;
//! let batch = ring.read(seq, 100, 1 << 20)?;
//! assert_eq!(&batch.records[0].payload[..], b"user=alice action=login");
//! ring.ack(seq)?;
//!
//! let stats = ring.stats();
//! assert_eq!((stats.appended, stats.acked), (1, 1));
//! assert!(stats.identity_holds());
//! ring.close()?;
//! # Ok(())
//! # }
//! ```
//!
//! To ship the records, hand the ring to a [`Shipper`] with an [`Endpoint`]
//! and a [`Transport`]: it batches, retries, acknowledges only what the
//! endpoint accepted, can be re-pointed with [`Shipper::switch_endpoint`] at
//! any moment without waiting, and reports stalls and losses.
//!
//! The on-disk format is specified in `docs/FORMAT.md`, the lock hierarchy
//! in `docs/LOCKS.md`, the sender's state machine in `docs/SENDER.md`.

#![deny(unsafe_code)]
#![deny(missing_docs)]

/// The README's code blocks, compiled as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(any(feature = "syslog", feature = "tracing", feature = "log", feature = "opentelemetry", feature = "inspect"))]
mod civil;
mod error;
#[cfg(any(feature = "http", feature = "tls", feature = "tracing", feature = "log", feature = "opentelemetry"))]
mod escape;
#[cfg(any(feature = "tracing", feature = "log", feature = "opentelemetry"))]
mod frontend;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "inspect")]
#[doc(hidden)]
pub mod inspect;
#[cfg(all(test, loom))]
mod loom_models;
mod redact;
mod ring;
mod sender;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod sim;
mod stats;
mod sync;
mod threads;
#[cfg(feature = "tls")]
mod tls;
mod transport;

pub use error::{Error, Result};
#[cfg(any(feature = "tracing", feature = "log", feature = "opentelemetry"))]
pub use frontend::FrontEndStats;
#[cfg(feature = "log")]
pub use frontend::log::RingLogger;
#[cfg(feature = "opentelemetry")]
pub use frontend::otel::{RingLogProcessor, RingSpanProcessor};
#[cfg(feature = "tracing")]
pub use frontend::tracing::{RingLayer, RingWriter};
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub use ring::config::StorageWrapper;
pub use ring::config::{FullPolicy, RingConfig, SyncPolicy};
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub use ring::storage::Storage;
pub use ring::{ReadBatch, Record, Ring};
pub use sender::{Health, HealthState, SenderStats, Shipper, ShipperBuilder, ShutdownReport};
pub use stats::{LossCause, LossRange, RecoveryReport, RingStats};
#[cfg(feature = "tls")]
pub use tls::{Tls, TlsVersion};
pub use transport::{
    Batch, BatchRecord, Endpoint, GapNotice, MemoryReceiver, MemoryTransport, Received, SendContext, SendError,
    SendErrorKind, Transport, TransportFactory,
};
#[cfg(feature = "http")]
pub use transport::{BodyFormat, HttpConfig, HttpTransport, Proxy};
#[cfg(feature = "nats")]
pub use transport::{NatsConfig, NatsTransport};
#[cfg(feature = "otlp")]
pub use transport::{OtlpConfig, OtlpEncoding, OtlpTransport};
#[cfg(feature = "syslog")]
pub use transport::{SyslogConfig, SyslogTransport};
