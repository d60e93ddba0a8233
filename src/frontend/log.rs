//! The `log` front-end.

use std::sync::Arc;

use log::kv::{self, VisitSource};

use super::json::Json;
use super::{FrontEndStats, Sink};
use crate::{Error, Result, Ring};

/// A [`log::Log`] that appends each record to a ring as one JSON record:
/// its time, level, target, message and key-values (docs/FRONTENDS.md),
/// encoded as [`RingLayer`](crate::RingLayer) encodes `tracing` events.
///
/// As the layer, it appends before the `log!` macro returns, never waits
/// for an fsync or for room, and leaves out records logged on ringship's
/// own threads; [`stats`](Self::stats) counts records cut to fit and
/// records lost. `flush` has ringship's background thread make what was
/// logged durable, without waiting for it.
///
/// ```no_run
/// # fn main() -> Result<(), ringship::Error> {
/// use std::sync::Arc;
///
/// let (ring, _) = ringship::Ring::open("/var/lib/myapp/telemetry", ringship::RingConfig::default())?;
/// ringship::RingLogger::new(Arc::new(ring)).install(log::LevelFilter::Info)?;
/// log::info!(user = "alice"; "logged in");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct RingLogger {
    sink: Sink,
}

impl RingLogger {
    /// A logger appending to `ring`.
    pub fn new(ring: Arc<Ring>) -> Self {
        RingLogger { sink: Sink::new(ring) }
    }

    /// Records cut to fit and records lost so far.
    pub fn stats(&self) -> FrontEndStats {
        self.sink.stats()
    }

    /// Installs this logger as the process's `log` logger and sets the
    /// maximum level. Keep a clone to read its [`stats`](Self::stats).
    ///
    /// # Errors
    /// [`Error::Config`] if a logger is already installed: the `log` crate
    /// takes one per process, once.
    pub fn install(self, max_level: log::LevelFilter) -> Result<()> {
        log::set_boxed_logger(Box::new(self)).map_err(|_| {
            Error::Config(
                "a `log` logger is already installed in this process (the log crate takes one, once); \
                 install the RingLogger first, or combine loggers yourself"
                    .into(),
            )
        })?;
        log::set_max_level(max_level);
        Ok(())
    }
}

impl log::Log for RingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if super::own_target(record.target()) || self.sink.suppressed() {
            return;
        }
        let now = crate::ring::now_nanos();
        self.sink.emit(&|j| {
            j.key("ts");
            j.timestamp(now);
            j.key("level");
            j.str(record.level().as_str());
            j.key("target");
            j.str(record.target());
            j.key("message");
            j.fmt(*record.args());
            let m = j.mark();
            j.key("fields");
            j.open_object();
            let _ = record.key_values().visit(&mut Pairs { j: &mut *j });
            j.close_or_rollback(m);
            j.finish();
        });
    }

    fn flush(&self) {
        self.sink.flush();
    }
}

/// Writes key-values as members, each left out if it would pass the limit.
struct Pairs<'a> {
    j: &'a mut Json,
}

impl<'kvs> VisitSource<'kvs> for Pairs<'_> {
    fn visit_pair(&mut self, key: kv::Key<'kvs>, value: kv::Value<'kvs>) -> std::result::Result<(), kv::Error> {
        let j = &mut *self.j;
        let m = j.mark();
        j.key(key.as_str());
        if let Some(v) = value.to_u64() {
            j.u64(v);
        } else if let Some(v) = value.to_i64() {
            j.i64(v);
        } else if let Some(v) = value.to_bool() {
            j.bool(v);
        } else if let Some(v) = value.to_borrowed_str() {
            j.str(v);
        } else if let Some(v) = value.to_f64() {
            j.f64(v);
        } else {
            j.fmt(format_args!("{value}"));
        }
        j.keep(m);
        Ok(())
    }
}
