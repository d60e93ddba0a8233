//! Transports that misbehave on command, for the sender tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use ringship::{
    Batch, Endpoint, MemoryReceiver, Ring, SendContext, SendError, SendErrorKind, Shipper, ShipperBuilder, Transport,
};

use crate::common::{TempRing, small};

/// How an endpoint behaves.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Accept every batch.
    Deliver,
    /// Hang until the send is cancelled or its deadline passes.
    HangHonouringCancel,
    /// Hang, ignoring cancellation and deadline, until `release` is set.
    HangIgnoringCancel,
    /// Hang like `HangIgnoringCancel`, then deliver once `release` is set:
    /// an endpoint that accepts a batch long after its send was given up.
    HangThenDeliver,
    /// Fail with this kind `n` times, then deliver.
    FailThenDeliver(SendErrorKind, u64),
    /// Always fail with this kind.
    Fail(SendErrorKind),
    /// Take this long, then deliver; fail at once as cancelled if the
    /// token fires first (a slow but honest endpoint).
    DelayThenDeliver(Duration),
    /// Panic inside `send` (user code that panics).
    Panic,
}

/// Behaviour per endpoint address, changeable while the test runs.
#[derive(Clone, Default)]
pub struct Script {
    pub behaviors: Arc<Mutex<HashMap<String, Behavior>>>,
    pub receiver: MemoryReceiver,
    /// Set to let every ignoring hang return.
    pub release: Arc<AtomicBool>,
    pub sends: Arc<AtomicU64>,
    pub transports_made: Arc<AtomicU64>,
    failures_left: Arc<Mutex<HashMap<String, u64>>>,
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, address: &str, b: Behavior) {
        if let Behavior::FailThenDeliver(_, n) = b {
            self.failures_left.lock().insert(address.to_owned(), n);
        }
        self.behaviors.lock().insert(address.to_owned(), b);
    }

    /// Sleeps until `release` is set, ignoring any cancellation.
    fn wait_for_release(&self) {
        while !self.release.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A factory for `Shipper::builder(..).transport(..)`.
    pub fn factory(&self) -> impl Fn() -> Box<dyn Transport> + Send + Sync + 'static {
        let s = self.clone();
        move || {
            s.transports_made.fetch_add(1, Ordering::SeqCst);
            Box::new(ScriptedTransport { script: s.clone() }) as Box<dyn Transport>
        }
    }
}

pub struct ScriptedTransport {
    script: Script,
}

impl Transport for ScriptedTransport {
    fn send(&mut self, endpoint: &Endpoint, batch: &Batch, ctx: &SendContext) -> Result<(), SendError> {
        let s = &self.script;
        s.sends.fetch_add(1, Ordering::SeqCst);
        let b = s.behaviors.lock().get(endpoint.address()).cloned().unwrap_or(Behavior::Deliver);
        match b {
            Behavior::Deliver => s.receiver.transport().send(endpoint, batch, ctx),
            Behavior::HangHonouringCancel => {
                if ctx.wait_cancelled(ctx.remaining()) {
                    Err(SendError::cancelled())
                } else {
                    Err(SendError::timed_out())
                }
            }
            Behavior::HangIgnoringCancel => {
                s.wait_for_release();
                Err(SendError::retryable("released"))
            }
            Behavior::HangThenDeliver => {
                s.wait_for_release();
                // Past its deadline and cancelled by now, yet accepted.
                let late = SendContext::new(Duration::from_secs(1));
                s.receiver.transport().send(endpoint, batch, &late)
            }
            Behavior::FailThenDeliver(kind, _) => {
                let mut left = s.failures_left.lock();
                let n = left.entry(endpoint.address().to_owned()).or_insert(0);
                if *n > 0 {
                    *n -= 1;
                    Err(SendError::new(kind, "scripted failure"))
                } else {
                    drop(left);
                    s.receiver.transport().send(endpoint, batch, ctx)
                }
            }
            Behavior::Fail(kind) => Err(SendError::new(kind, format!("scripted {kind:?} failure"))),
            Behavior::DelayThenDeliver(d) => {
                if ctx.wait_cancelled(d.min(ctx.remaining())) {
                    Err(SendError::cancelled())
                } else {
                    s.receiver.transport().send(endpoint, batch, ctx)
                }
            }
            Behavior::Panic => panic!("scripted transport panic"),
        }
    }
}

/// A ring of `cap` bytes in `t` (`common::small`).
pub fn ring(t: &TempRing, cap: u64) -> Ring {
    Ring::open(&t.dir, small(cap)).unwrap().0
}

/// A shipper of `ring` to `address` through `script`, with short
/// timings.
pub fn builder(ring: impl Into<Arc<Ring>>, script: &Script, address: &str) -> ShipperBuilder {
    Shipper::builder(ring)
        .endpoint(Endpoint::new(address))
        .transport(script.factory())
        .linger(Duration::from_millis(2))
        .backoff_initial(Duration::from_millis(5))
        .backoff_max(Duration::from_millis(50))
        .send_timeout(Duration::from_millis(200))
}

/// The seqs `address` received, sorted, without duplicates.
pub fn seqs(script: &Script, address: &str) -> Vec<u64> {
    let mut v: Vec<u64> = script.receiver.received(address).records.iter().map(|r| r.seq).collect();
    v.sort_unstable();
    v.dedup();
    v
}
