//! Lock shim with levels.
//!
//! Every lock in ringship has a level, and a thread may only take a lock
//! whose level is strictly greater than every lock it already holds. In debug
//! builds (and so in tests) a thread-local checker enforces the order at run
//! time and panics naming both locks when it is broken. Release builds pay
//! nothing for it.
//!
//! The hierarchy (docs/LOCKS.md has the full table):
//!
//! | level | lock | held across |
//! |---|---|---|
//! | 10 | `ring.meta_io` | one checkpoint `pwrite` (never fsync) |
//! | 20 | `ring.state` | one record `pwrite` into the page cache (never fsync) |
//! | 30 | `ring.sync` | nothing: released before every fsync |
//! | 40 | `sender.endpoint` | nothing (cancels the in-flight send's token) |
//! | 50 | `sender.status` | nothing |
//! | 60 | `transport.cancel` | nothing (a token's wait/notify) |
//!
//! The shim exists so that loom (under `cfg(loom)`) can swap the primitives
//! underneath without touching the code that uses them.

use std::time::Duration;

#[cfg(not(loom))]
mod imp {
    pub(crate) use parking_lot::{Condvar, Mutex, MutexGuard};
    pub(crate) use std::sync::atomic;
    pub(crate) use std::thread::{JoinHandle, yield_now};

    pub(crate) fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
        crate::threads::spawn(name, f).expect("spawn a ringship thread")
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::sync::atomic;
    pub(crate) use loom::sync::{Condvar, Mutex, MutexGuard};
    pub(crate) use loom::thread::{JoinHandle, yield_now};

    pub(crate) fn spawn(_name: &str, f: impl FnOnce() + Send + 'static) -> JoinHandle<()> {
        loom::thread::spawn(f)
    }
}

/// Atomics: std's, or loom's under `cfg(loom)`.
pub(crate) use imp::atomic;
/// Lets other threads run: std's, or loom's under `cfg(loom)`.
pub(crate) use imp::yield_now;
/// Starts a named thread: std's, or loom's under `cfg(loom)`.
pub(crate) use imp::{JoinHandle, spawn};

/// `ring.background`: the background thread's handle, taken by `close`.
pub(crate) const LEVEL_RING_BACKGROUND: u8 = 5;
/// `ring.meta_io`: serialises checkpoint writes so generations are ordered.
pub(crate) const LEVEL_META_IO: u8 = 10;
/// `ring.state`: the ring's in-memory state and the append path.
pub(crate) const LEVEL_RING_STATE: u8 = 20;
/// `ring.sync`: the group-commit coordinator.
pub(crate) const LEVEL_SYNC: u8 = 30;
/// `sender.endpoint`: the desired endpoint, its generation, the in-flight token.
pub(crate) const LEVEL_SENDER_ENDPOINT: u8 = 40;
/// `sender.handle`: a shipper's supervisor thread and shutdown phase.
pub(crate) const LEVEL_SENDER_HANDLE: u8 = 45;
/// `sender.status`: health, last error, worker heartbeat.
pub(crate) const LEVEL_SENDER_STATUS: u8 = 50;
/// `transport.cancel`: a cancellation token's waiters.
pub(crate) const LEVEL_CANCEL: u8 = 60;
/// `sender.workers`: the worker threads' handles, current and abandoned.
pub(crate) const LEVEL_SENDER_WORKERS: u8 = 65;
/// `ring.lock_file`: the held directory lock, released by `close`.
pub(crate) const LEVEL_RING_LOCK_FILE: u8 = 68;
/// `signal`: a one-slot wake-up's flag (loom builds only).
#[cfg(loom)]
const LEVEL_SIGNAL: u8 = 70;

// The order checker keeps a thread-local list; loom runs its threads as
// coroutines on one OS thread, so it is off under loom.
#[cfg(all(debug_assertions, not(loom)))]
mod order {
    use std::cell::RefCell;

    thread_local! {
        static HELD: RefCell<Vec<(u8, &'static str)>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn acquire(level: u8, name: &'static str) {
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            if let Some(&(top_level, top_name)) = held.iter().max_by_key(|(l, _)| *l) {
                assert!(
                    level > top_level,
                    "lock order violation: taking `{name}` (level {level}) while holding `{top_name}` (level {top_level})"
                );
            }
            held.push((level, name));
        });
    }

    pub(super) fn release(level: u8, name: &'static str) {
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            if let Some(i) = held.iter().rposition(|&(l, n)| l == level && n == name) {
                held.remove(i);
            }
        });
    }
}

#[cfg(not(all(debug_assertions, not(loom))))]
mod order {
    pub(super) fn acquire(_level: u8, _name: &'static str) {}
    pub(super) fn release(_level: u8, _name: &'static str) {}
}

/// A mutex with a level in the lock hierarchy.
pub(crate) struct Mutex<T> {
    level: u8,
    name: &'static str,
    inner: imp::Mutex<T>,
}

impl<T> Mutex<T> {
    pub(crate) fn new(level: u8, name: &'static str, value: T) -> Self {
        Mutex { level, name, inner: imp::Mutex::new(value) }
    }

    /// Takes the lock. Panics in debug builds if the lock order is broken.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        order::acquire(self.level, self.name);
        #[cfg(not(loom))]
        let inner = self.inner.lock();
        #[cfg(loom)]
        let inner = self.inner.lock().expect("loom mutex poisoned");
        MutexGuard { inner: Some(inner), level: self.level, name: self.name }
    }
}

/// Guard of a [`Mutex`]; releasing it pops the level from the checker.
pub(crate) struct MutexGuard<'a, T> {
    /// Always `Some` outside a condition-variable wait.
    inner: Option<imp::MutexGuard<'a, T>>,
    level: u8,
    name: &'static str,
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        order::release(self.level, self.name);
    }
}

impl<T> std::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.inner.as_ref().expect("guard held")
    }
}

impl<T> std::ops::DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.inner.as_mut().expect("guard held")
    }
}

/// A condition variable that works with [`MutexGuard`].
#[derive(Default)]
pub(crate) struct Condvar(imp::Condvar);

impl Condvar {
    pub(crate) fn new() -> Self {
        Condvar(imp::Condvar::new())
    }

    /// Waits with a timeout; returns `true` if it timed out. (Under loom a
    /// timed wait may return at any point, as a spurious wake-up.)
    pub(crate) fn wait_for<T>(&self, guard: &mut MutexGuard<'_, T>, timeout: Duration) -> bool {
        #[cfg(not(loom))]
        {
            self.0.wait_for(guard.inner.as_mut().expect("guard held"), timeout).timed_out()
        }
        #[cfg(loom)]
        {
            let g = guard.inner.take().expect("guard held");
            let (g, result) = self.0.wait_timeout(g, timeout).expect("loom mutex poisoned");
            guard.inner = Some(g);
            result.timed_out()
        }
    }

    pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
        #[cfg(not(loom))]
        self.0.wait(guard.inner.as_mut().expect("guard held"));
        #[cfg(loom)]
        {
            let g = guard.inner.take().expect("guard held");
            guard.inner = Some(self.0.wait(g).expect("loom mutex poisoned"));
        }
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }
}

/// How a wait on a [`Signal`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    Notified,
    TimedOut,
    Closed,
}

/// A one-slot wake-up: `notify` never blocks and coalesces; `close` wakes
/// the waiter for good. crossbeam-channel and an atomic flag normally, no
/// lock (every append notifies: a mutex here would make appends and
/// `switch_endpoint` contend); a loom mutex and condition variable under
/// loom.
pub(crate) struct Signal {
    #[cfg(not(loom))]
    tx: crossbeam_channel::Sender<()>,
    #[cfg(not(loom))]
    closed: std::sync::atomic::AtomicBool,
    #[cfg(not(loom))]
    rx: crossbeam_channel::Receiver<()>,
    #[cfg(loom)]
    state: Mutex<(bool, bool)>,
    #[cfg(loom)]
    cv: Condvar,
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal").finish_non_exhaustive()
    }
}

impl Signal {
    pub(crate) fn new() -> Self {
        #[cfg(not(loom))]
        {
            let (tx, rx) = crossbeam_channel::bounded(1);
            Signal { tx, closed: std::sync::atomic::AtomicBool::new(false), rx }
        }
        #[cfg(loom)]
        {
            Signal { state: Mutex::new(LEVEL_SIGNAL, "signal", (false, false)), cv: Condvar::new() }
        }
    }

    /// Wakes the waiter (or the next wait); never blocks.
    pub(crate) fn notify(&self) {
        #[cfg(not(loom))]
        let _ = self.tx.try_send(());
        #[cfg(loom)]
        {
            self.state.lock().0 = true;
            self.cv.notify_all();
        }
    }

    /// Wakes the waiter for good: every later wait returns `Closed`.
    pub(crate) fn close(&self) {
        #[cfg(not(loom))]
        {
            // SeqCst with the load: a waiter woken by another notification
            // than this one's (the slot was full) still sees the flag.
            self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = self.tx.try_send(());
        }
        #[cfg(loom)]
        {
            self.state.lock().1 = true;
            self.cv.notify_all();
        }
    }

    /// Whether `close` was called. `close` sets the flag before it
    /// notifies, so a waiter woken by that notification sees it.
    #[cfg(not(loom))]
    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits for a notification, however long it takes.
    pub(crate) fn wait(&self) -> Woken {
        #[cfg(not(loom))]
        {
            if self.is_closed() {
                return Woken::Closed;
            }
            match self.rx.recv() {
                Ok(()) if !self.is_closed() => Woken::Notified,
                _ => Woken::Closed,
            }
        }
        #[cfg(loom)]
        {
            let mut g = self.state.lock();
            while !g.0 && !g.1 {
                self.cv.wait(&mut g);
            }
            if g.1 {
                Woken::Closed
            } else {
                g.0 = false;
                Woken::Notified
            }
        }
    }

    /// Waits for a notification, up to `timeout`.
    pub(crate) fn wait_timeout(&self, timeout: Duration) -> Woken {
        #[cfg(not(loom))]
        {
            if self.is_closed() {
                return Woken::Closed;
            }
            match self.rx.recv_timeout(timeout) {
                Ok(()) if !self.is_closed() => Woken::Notified,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => Woken::TimedOut,
                _ => Woken::Closed,
            }
        }
        #[cfg(loom)]
        {
            let mut g = self.state.lock();
            if !g.0 && !g.1 {
                self.cv.wait_for(&mut g, timeout);
            }
            if g.1 {
                Woken::Closed
            } else if std::mem::take(&mut g.0) {
                Woken::Notified
            } else {
                Woken::TimedOut
            }
        }
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn increasing_order_is_allowed() {
        let a = Mutex::new(1, "a", ());
        let b = Mutex::new(2, "b", ());
        let _ga = a.lock();
        let _gb = b.lock();
    }

    #[test]
    #[should_panic(expected = "lock order violation: taking `low` (level 1) while holding `high` (level 2)")]
    fn decreasing_order_panics_naming_both_locks() {
        let low = Mutex::new(1, "low", ());
        let high = Mutex::new(2, "high", ());
        let _gh = high.lock();
        let _gl = low.lock();
    }

    #[test]
    fn release_lets_a_lower_lock_be_taken_again() {
        let low = Mutex::new(1, "low", ());
        let high = Mutex::new(2, "high", ());
        drop(high.lock());
        let _gl = low.lock();
        let _gh = high.lock();
    }
}
