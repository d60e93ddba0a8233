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

/// `ring.meta_io`: serialises checkpoint writes so generations are ordered.
pub(crate) const LEVEL_META_IO: u8 = 10;
/// `ring.state`: the ring's in-memory state and the append path.
pub(crate) const LEVEL_RING_STATE: u8 = 20;
/// `ring.sync`: the group-commit coordinator.
pub(crate) const LEVEL_SYNC: u8 = 30;
/// `sender.endpoint`: the desired endpoint, its generation, the in-flight token.
pub(crate) const LEVEL_SENDER_ENDPOINT: u8 = 40;
/// `sender.status`: health, last error, worker heartbeat.
pub(crate) const LEVEL_SENDER_STATUS: u8 = 50;
/// `transport.cancel`: a cancellation token's waiters.
pub(crate) const LEVEL_CANCEL: u8 = 60;

#[cfg(debug_assertions)]
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

/// A mutex with a level in the lock hierarchy.
pub(crate) struct Mutex<T> {
    level: u8,
    name: &'static str,
    inner: parking_lot::Mutex<T>,
}

impl<T> Mutex<T> {
    pub(crate) const fn new(level: u8, name: &'static str, value: T) -> Self {
        Mutex { level, name, inner: parking_lot::Mutex::new(value) }
    }

    /// Takes the lock. Panics in debug builds if the lock order is broken.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(debug_assertions)]
        order::acquire(self.level, self.name);
        MutexGuard { inner: self.inner.lock(), level: self.level, name: self.name }
    }
}

/// Guard of a [`Mutex`]; releasing it pops the level from the checker.
pub(crate) struct MutexGuard<'a, T> {
    inner: parking_lot::MutexGuard<'a, T>,
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    level: u8,
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    name: &'static str,
}

impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        order::release(self.level, self.name);
    }
}

impl<T> std::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> std::ops::DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

/// A condition variable that works with [`MutexGuard`].
#[derive(Default)]
pub(crate) struct Condvar(parking_lot::Condvar);

impl Condvar {
    pub(crate) fn new() -> Self {
        Condvar(parking_lot::Condvar::new())
    }

    /// Waits with a timeout; returns `true` if it timed out.
    pub(crate) fn wait_for<T>(&self, guard: &mut MutexGuard<'_, T>, timeout: Duration) -> bool {
        self.0.wait_for(&mut guard.inner, timeout).timed_out()
    }

    pub(crate) fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
        self.0.wait(&mut guard.inner);
    }

    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
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
