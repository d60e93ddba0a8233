//! The shipping half: a worker that reads batches from the ring, sends them
//! through a transport and acknowledges them; a supervisor that detects
//! stalls and replaces stuck workers; and `switch_endpoint`, which never
//! waits for anything.

mod builder;
mod callbacks;
mod health;
pub(crate) mod machine;
mod shared;
pub(crate) mod supervisor;
pub(crate) mod switch;
mod worker;

#[cfg(test)]
mod sim;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use builder::ShipperBuilder;
pub use health::{Health, HealthState, SenderStats, ShutdownReport};

use self::callbacks::{CALLBACK_QUEUE, Callbacks, LossCallback, StallCallback, run_callbacks};
pub(crate) use self::shared::panic_message;
use self::shared::{Clock, ShipperConfig, ShipperCore, check_endpoint, spawn_worker};
use self::supervisor::supervise;

use crate::sync::{Mutex, Signal};
use crate::transport::{CancelToken, Endpoint};
use crate::{Error, Result, Ring};

/// Ships the records of a [`Ring`] to an endpoint that can be switched at
/// any moment.
///
/// A worker thread reads batches from the ring, sends them through the
/// transport, and acknowledges them in the ring only once the endpoint
/// accepted them (at-least-once: receivers de-duplicate by seq). A
/// supervisor thread reports a stall when records are pending and nothing is
/// acknowledged for `stall_after`, and replaces a worker whose send runs
/// past `abandon_after` with a fresh one from the transport factory.
///
/// [`Shipper::switch_endpoint`] never waits: it records the new endpoint,
/// cancels a send in flight to an older one and returns.
///
/// A `Shipper` is a handle: clones are cheap and share one shipper, so a
/// metrics thread and a logging layer can each hold one. Any clone can
/// [`shutdown`](Shipper::shutdown) it. Dropping the last clone without a
/// shutdown only signals the threads to stop, leaving the ring to be
/// recovered at the next open.
#[derive(Clone)]
pub struct Shipper {
    handle: Arc<Handle>,
}

/// What the clones of a [`Shipper`] share.
struct Handle {
    shared: Arc<ShipperCore>,
    /// `sender.handle` (level 45): the supervisor thread and how far
    /// shutdown has got.
    phase: Mutex<Phase>,
    /// Fired when a shutdown ends, for the callers waiting on another's.
    finished: CancelToken,
}

enum Phase {
    Running {
        supervisor: Option<(Arc<Signal>, JoinHandle<()>)>,
    },
    ShuttingDown,
    /// The first shutdown's report, or its error's message.
    Done(Box<std::result::Result<ShutdownReport, String>>),
}

/// How long a worker still in its send at the end of a shutdown gets to
/// leave before it is left behind.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(200);

impl std::fmt::Debug for Shipper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipper").field("ring", &self.handle.shared.ring).finish_non_exhaustive()
    }
}

impl Shipper {
    /// Starts configuring a shipper for `ring`.
    pub fn builder(ring: impl Into<Arc<Ring>>) -> ShipperBuilder {
        ShipperBuilder::new(ring.into())
    }

    fn shared(&self) -> &ShipperCore {
        &self.handle.shared
    }

    /// The ring the shipper reads from.
    pub fn ring(&self) -> &Arc<Ring> {
        &self.shared().ring
    }

    /// Appends a record to the ring. See [`Ring::append`].
    ///
    /// # Errors
    /// As [`Ring::append`]; [`Error::Closed`] once shutdown has begun.
    pub fn append(&self, payload: &[u8]) -> Result<u64> {
        self.append_batch(&[payload]).map(|(first, _)| first)
    }

    /// Appends many records in one write. See [`Ring::append_batch`].
    ///
    /// # Errors
    /// As [`Ring::append_batch`]; [`Error::Closed`] once shutdown has begun.
    pub fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(u64, u64)> {
        self.shared().append_batch(payloads)
    }

    /// Points the shipper at `endpoint` and returns its generation.
    ///
    /// Returns at once: it never waits for the send in flight, which is
    /// cancelled if it targets an older endpoint. That batch then goes to
    /// the new endpoint, unless the old one had already accepted it. Rapid
    /// switches coalesce: only the latest matters. Switching to the
    /// endpoint in use (equal address and headers, as a configuration
    /// reload does) returns its generation and changes nothing.
    ///
    /// # Errors
    /// [`Error::Config`] for an endpoint the transport cannot use (see
    /// [`TransportFactory::check_endpoint`](crate::TransportFactory::check_endpoint)), or an address that is empty or
    /// holds whitespace or control characters; shipping goes on to the
    /// endpoint in use.
    pub fn switch_endpoint(&self, endpoint: Endpoint) -> Result<u64> {
        self.shared().switch_endpoint(endpoint)
    }

    /// The endpoint in use.
    pub fn endpoint(&self) -> Endpoint {
        (*self.shared().endpoint.current().1).clone()
    }

    /// Every counter, the ring's included.
    pub fn stats(&self) -> SenderStats {
        self.shared().stats()
    }

    /// The sender's health.
    pub fn health(&self) -> Health {
        self.shared().health()
    }

    /// Stops intake, drains for at most `deadline`, stops the threads, and
    /// syncs and closes the ring, keeping whatever could not be shipped for
    /// the next start.
    ///
    /// Returns within `deadline` plus 200 ms (a worker still in its send
    /// then is left behind, counted in `abandoned_workers`) plus the final
    /// sync, whatever the transport, the factory or the callbacks do:
    /// callbacks still queued run on their own thread afterwards.
    ///
    /// Any clone may call it. A call while another clone's shutdown runs
    /// waits for that one, within its own `deadline` plus the same bound;
    /// a call after it returns the same report.
    ///
    /// # Errors
    /// The ring's sync or checkpoint error (the ring is closed and its
    /// directory released either way); to a later call,
    /// [`Error::ShutDown`] naming that error, or saying that another
    /// clone's shutdown is still running when this call's wait ends.
    pub fn shutdown(&self, deadline: Duration) -> Result<ShutdownReport> {
        let start = Instant::now();
        let supervisor = {
            let mut phase = self.handle.phase.lock();
            match &mut *phase {
                Phase::Running { supervisor } => {
                    let supervisor = supervisor.take();
                    *phase = Phase::ShuttingDown;
                    supervisor
                }
                Phase::ShuttingDown => {
                    drop(phase);
                    return self.await_other_shutdown(start, deadline);
                }
                Phase::Done(done) => return (**done).clone().map_err(Error::ShutDown),
            }
        };
        let result = self.handle.shared.shut_down(start, deadline, supervisor);
        *self.handle.phase.lock() =
            Phase::Done(Box::new(result.as_ref().map(Clone::clone).map_err(ToString::to_string)));
        self.handle.finished.cancel();
        result
    }

    fn await_other_shutdown(&self, start: Instant, deadline: Duration) -> Result<ShutdownReport> {
        let bound = deadline.saturating_add(SHUTDOWN_GRACE).saturating_add(Duration::from_secs(1));
        self.handle.finished.wait_timeout(bound.saturating_sub(start.elapsed()));
        match &*self.handle.phase.lock() {
            Phase::Done(done) => (**done).clone().map_err(Error::ShutDown),
            _ => Err(Error::ShutDown("another handle's shutdown of this shipper is still running".into())),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Signal only; never block.
        self.shared.stop_threads();
        if let Phase::Running { supervisor: Some((stop, _handle)) } = &*self.phase.lock() {
            stop.close();
        }
    }
}
