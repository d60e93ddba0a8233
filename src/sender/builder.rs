//! Configuring and starting a [`Shipper`](super::Shipper): every setting
//! is checked before any thread starts.

use std::sync::Arc;
use std::time::Duration;

use super::health::Health;
use super::machine::MachineConfig;
use super::{
    CALLBACK_QUEUE, Callbacks, Clock, Handle, LossCallback, Phase, Shipper, ShipperConfig, ShipperCore, StallCallback,
    check_endpoint, run_callbacks, spawn_worker, supervise,
};
use crate::stats::{LossFeed, LossRange};
use crate::sync::{LEVEL_SENDER_HANDLE, Mutex, Signal};
use crate::transport::{CancelToken, Endpoint, TransportFactory};
use crate::{Error, Result, Ring};

/// Longest duration a shipper setting may name (a year).
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// Configures a [`Shipper`]. Every knob has a default but the endpoint and
/// the transport.
pub struct ShipperBuilder {
    pub(super) ring: Arc<Ring>,
    pub(super) endpoint: Option<Endpoint>,
    pub(super) factory: Option<Box<dyn TransportFactory>>,
    pub(super) cfg: ShipperConfig,
    pub(super) abandon_after: Option<Duration>,
    pub(super) supervise_every: Option<Duration>,
    pub(super) on_stall: Option<StallCallback>,
    pub(super) on_loss: Option<LossCallback>,
}

impl ShipperBuilder {
    pub(super) fn new(ring: Arc<Ring>) -> Self {
        ShipperBuilder {
            ring,
            endpoint: None,
            factory: None,
            cfg: ShipperConfig {
                machine: MachineConfig {
                    max_batch_records: 1000,
                    max_batch_bytes: 1 << 20,
                    linger: Duration::from_millis(10),
                    backoff_initial: Duration::from_millis(100),
                    backoff_max: Duration::from_secs(30),
                },
                send_timeout: Duration::from_secs(10),
                abandon_after: Duration::ZERO,
                stall_after: Duration::from_secs(30),
                supervise_every: Duration::ZERO,
                seed: 0x5eed,
            },
            abandon_after: None,
            supervise_every: None,
            on_stall: None,
            on_loss: None,
        }
    }

    /// The endpoint to start with (required).
    #[must_use]
    pub fn endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Makes the transports (required); called on the worker's thread, and
    /// again for each replacement of a stuck worker. A panic in it is
    /// caught, shown in health, and the factory asked again after a
    /// backoff.
    #[must_use]
    pub fn transport(mut self, factory: impl TransportFactory + 'static) -> Self {
        self.factory = Some(Box::new(factory));
        self
    }

    /// Most records in a batch (default 1000).
    #[must_use]
    pub fn max_batch_records(mut self, n: usize) -> Self {
        self.cfg.machine.max_batch_records = n;
        self
    }

    /// Most payload bytes in a batch, roughly: a batch stops at the first
    /// record that reaches it (default 1 MiB).
    #[must_use]
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.cfg.machine.max_batch_bytes = n;
        self
    }

    /// How long a partial batch waits for more records (default 10 ms).
    #[must_use]
    pub fn linger(mut self, d: Duration) -> Self {
        self.cfg.machine.linger = d;
        self
    }

    /// Deadline given to each send (default 10 s).
    #[must_use]
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.cfg.send_timeout = d;
        self
    }

    /// A send still running this long after it started is abandoned with
    /// its worker, which a fresh one replaces (default twice `send_timeout`).
    #[must_use]
    pub fn abandon_after(mut self, d: Duration) -> Self {
        self.abandon_after = Some(d);
        self
    }

    /// First retry delay; doubles per attempt with jitter (default 100 ms).
    #[must_use]
    pub fn backoff_initial(mut self, d: Duration) -> Self {
        self.cfg.machine.backoff_initial = d;
        self
    }

    /// Longest retry delay, also used after a non-retryable error (default 30 s).
    #[must_use]
    pub fn backoff_max(mut self, d: Duration) -> Self {
        self.cfg.machine.backoff_max = d;
        self
    }

    /// Records pending with no acknowledgement for this long is a stall
    /// (default 30 s).
    #[must_use]
    pub fn stall_after(mut self, d: Duration) -> Self {
        self.cfg.stall_after = d;
        self
    }

    /// How often the supervisor looks (default a tenth of the smaller of
    /// `stall_after` and `abandon_after`, between 5 ms and 1 s).
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    #[must_use]
    pub fn supervise_every(mut self, d: Duration) -> Self {
        self.supervise_every = Some(d);
        self
    }

    /// Seed of the retry jitter (for reproducible tests).
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    #[must_use]
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.cfg.seed = seed;
        self
    }

    /// Called when a stall is detected, on ringship's callback thread with
    /// no lock held: a slow callback delays only later callbacks (stall
    /// notices beyond 16 waiting are dropped and counted in
    /// [`SenderStats::callbacks_dropped`](crate::SenderStats::callbacks_dropped)); it may call into the shipper.
    #[must_use]
    pub fn on_stall(mut self, f: impl Fn(&Health) + Send + Sync + 'static) -> Self {
        self.on_stall = Some(Box::new(f));
        self
    }

    /// Called with the loss ranges the ring recorded since the last call
    /// (overwritten, damaged, skipped), on ringship's callback thread with
    /// no lock held. While the callback is busy, ranges wait, merged by
    /// cause; none is dropped.
    #[must_use]
    pub fn on_loss(mut self, f: impl Fn(&[LossRange]) + Send + Sync + 'static) -> Self {
        self.on_loss = Some(Box::new(f));
        self
    }

    /// The settings, checked, with the defaults derived from them filled in.
    fn settings(&self) -> Result<ShipperConfig> {
        let mut cfg = self.cfg;
        let m = cfg.machine;
        if m.max_batch_records == 0 || m.max_batch_bytes == 0 {
            return Err(Error::Config("max_batch_records and max_batch_bytes must be at least 1".into()));
        }
        // Each duration set (unset: a default derived below), whether zero
        // is allowed. None may be too long to add to an instant, as
        // deadlines are (`Duration::MAX` is a natural way to write "never",
        // and would panic there).
        let durations = [
            ("linger", Some(m.linger), true),
            ("send_timeout", Some(cfg.send_timeout), false),
            ("abandon_after", self.abandon_after, true),
            ("backoff_max", Some(m.backoff_max), true),
            ("stall_after", Some(cfg.stall_after), false),
            ("supervise_every", self.supervise_every, true),
        ];
        for (name, d, zero_allowed) in durations {
            let Some(d) = d else { continue };
            if d.is_zero() && !zero_allowed {
                return Err(Error::Config(format!("{name} must be longer than zero")));
            }
            if d > MAX_DURATION {
                return Err(Error::Config(format!("{name} must be at most {} days", MAX_DURATION.as_secs() / 86_400)));
            }
        }
        if m.backoff_initial.is_zero() || m.backoff_initial > m.backoff_max {
            return Err(Error::Config("backoff_initial must be above zero and at most backoff_max".into()));
        }
        cfg.abandon_after = self.abandon_after.unwrap_or(cfg.send_timeout * 2);
        if cfg.abandon_after <= cfg.send_timeout {
            return Err(Error::Config("abandon_after must be longer than send_timeout".into()));
        }
        if cfg.abandon_after > MAX_DURATION {
            return Err(Error::Config(format!(
                "abandon_after (twice send_timeout unless set) must be at most {} days",
                MAX_DURATION.as_secs() / 86_400
            )));
        }
        cfg.supervise_every = self.supervise_every.unwrap_or_else(|| {
            (cfg.stall_after.min(cfg.abandon_after) / 10).clamp(Duration::from_millis(5), Duration::from_secs(1))
        });
        Ok(cfg)
    }

    /// Starts the worker and supervisor threads.
    ///
    /// # Errors
    /// [`Error::Config`] for a missing endpoint or transport, or a value
    /// out of range (a duration of zero where one is needed, or of more
    /// than 365 days).
    pub fn start(self) -> Result<Shipper> {
        let cfg = self.settings()?;
        let endpoint = self.endpoint.ok_or_else(|| Error::Config("the shipper needs an endpoint".into()))?;
        let factory = self.factory.ok_or_else(|| Error::Config("the shipper needs a transport".into()))?;
        check_endpoint(&*factory, &endpoint)?;
        let shared = Arc::new(ShipperCore::new(self.ring, cfg, factory, endpoint, Clock::Real));
        let thread_error = |what: &str, e: std::io::Error| Error::Io { op: "spawn", path: what.into(), source: e };
        let (has_on_stall, has_on_loss) = (self.on_stall.is_some(), self.on_loss.is_some());
        let tx = if has_on_stall || has_on_loss {
            let (tx, rx) = crossbeam_channel::bounded(CALLBACK_QUEUE);
            let (on_stall, on_loss) = (self.on_stall, self.on_loss);
            crate::threads::spawn("ringship-callbacks", move || {
                run_callbacks(&rx, on_stall.as_ref(), on_loss.as_ref());
            })
            .map_err(|e| thread_error("the callback thread", e))?;
            Some(tx)
        } else {
            None
        };
        if has_on_loss {
            shared.ring.watch_losses();
        }
        let initial = shared.ring.stats();
        let stop = Arc::new(Signal::new());
        let stop_rx = Arc::clone(&stop);
        let s = Arc::clone(&shared);
        let cb = Callbacks { tx, on_stall: has_on_stall, backlog: LossFeed::default() };
        // The supervisor first: if it cannot start, no worker is left
        // shipping with nobody to stop it.
        let supervisor = crate::threads::spawn("ringship-supervisor", move || supervise(&s, &stop_rx, &initial, cb))
            .map_err(|e| thread_error("the supervisor thread", e))?;
        spawn_worker(&shared, 1);
        let phase = Phase::Running { supervisor: Some((stop, supervisor)) };
        let handle = Handle {
            shared,
            phase: Mutex::new(LEVEL_SENDER_HANDLE, "sender.handle", phase),
            finished: CancelToken::new(),
        };
        Ok(Shipper { handle: Arc::new(handle) })
    }
}
