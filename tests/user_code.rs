//! User code that misbehaves: factories and transports that panic, callbacks
//! that block, configuration re-applied in a loop, typos in a reload. The
//! fault class: whatever the host's own code does, shipping either makes
//! progress or health says why, the supervisor lives on, and `shutdown(d)`
//! returns in its bound (I7, I10).

mod common;
#[path = "common/transports.rs"]
mod transports;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{TempRing, eventually, payload};
use ringship::{Endpoint, Error, HealthState, SendErrorKind, Shipper};
use transports::{Behavior, Script, builder, ring, seqs};

/// A factory that panics when asked for a replacement (the worker was
/// abandoned in a hung send): the supervisor lives, health shows the panic,
/// the factory is asked again, and delivery resumes; a later stall is still
/// detected.
#[test]
fn a_panicking_factory_is_retried_and_never_kills_the_supervisor() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("hang", Behavior::HangIgnoringCancel);
    let made = Arc::new(AtomicU64::new(0));
    let (count, inner) = (Arc::clone(&made), script.factory());
    let factory = move || {
        let n = count.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(!(2..=3).contains(&n), "factory down ({n})");
        inner()
    };
    let shipper = Shipper::builder(ring(&t, 1 << 20))
        .endpoint(Endpoint::new("hang"))
        .transport(factory)
        .linger(Duration::from_millis(2))
        .backoff_initial(Duration::from_millis(5))
        .backoff_max(Duration::from_millis(50))
        .send_timeout(Duration::from_millis(50))
        .abandon_after(Duration::from_millis(100))
        .stall_after(Duration::from_millis(300))
        .start()
        .unwrap();
    shipper.append(b"x").unwrap();
    eventually("a replacement was asked for", || made.load(Ordering::SeqCst) >= 2);
    eventually("the factory's panic shows in health", || {
        shipper.health().last_error.is_some_and(|e| e.contains("factory"))
    });
    shipper.switch_endpoint(Endpoint::new("ok")).unwrap();
    eventually("delivered through a transport made after the panics", || shipper.stats().ring.acked == 1);
    assert!(made.load(Ordering::SeqCst) >= 4);
    // Supervision goes on.
    script.set("ok", Behavior::Fail(SendErrorKind::Retryable));
    shipper.append(b"y").unwrap();
    eventually("a later stall is detected", || shipper.health().state == HealthState::Stalled);
    script.release.store(true, Ordering::SeqCst);
}

/// A transport whose `send` panics: a failed send shown in health, a fresh
/// transport, and a switch delivers at once rather than after
/// `abandon_after`.
#[test]
fn a_panicking_send_is_a_failure_not_a_dead_worker() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("p", Behavior::Panic);
    let shipper = builder(ring(&t, 1 << 20), &script, "p")
        .send_timeout(Duration::from_secs(30))
        .abandon_after(Duration::from_secs(60))
        .start()
        .unwrap();
    shipper.append(b"x").unwrap();
    eventually("degraded with the panic", || {
        let h = shipper.health();
        h.state == HealthState::Degraded && h.last_error.is_some_and(|e| e.contains("panicked"))
    });
    let made = script.transports_made.load(Ordering::SeqCst);
    assert!(made >= 2, "the transport that panicked was replaced");
    shipper.switch_endpoint(Endpoint::new("ok")).unwrap();
    eventually("delivered", || shipper.stats().ring.acked == 1);
    assert_eq!(shipper.stats().worker_restarts, 0, "no worker was abandoned");
}

/// Configuration re-applied in a loop: switching to the endpoint in use
/// every 10 ms while sends take 30 ms disturbs no send; a real change (a
/// header) still cancels the send in flight at once.
#[test]
fn re_applying_the_endpoint_in_use_never_disturbs_a_send() {
    const N: u64 = 200;
    let t = TempRing::new();
    let script = Script::new();
    script.set("a", Behavior::DelayThenDeliver(Duration::from_millis(30)));
    let shipper = builder(ring(&t, 1 << 20), &script, "a")
        .max_batch_records(20)
        .send_timeout(Duration::from_secs(5))
        .start()
        .unwrap();
    for i in 1..=N {
        shipper.append(&payload(i, 50)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while shipper.stats().ring.acked < N && Instant::now() < deadline {
        assert_eq!(shipper.switch_endpoint(Endpoint::new("a")).unwrap(), 1, "an equal endpoint keeps its generation");
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = shipper.stats();
    assert_eq!((s.ring.acked, s.cancelled_sends, s.generation), (N, 0, 1), "{s:?}");
    let sends = script.sends.load(Ordering::SeqCst);
    shipper.append(b"more").unwrap();
    eventually("a send in flight", || script.sends.load(Ordering::SeqCst) > sends);
    let changed = Endpoint::new("a").header("authorization", "k2");
    assert_eq!(shipper.switch_endpoint(changed).unwrap(), 2);
    eventually("cancelled and sent again", || shipper.stats().ring.acked == N + 1);
    assert_eq!(shipper.stats().cancelled_sends, 1);
}

/// A typo in a configuration reload is refused, and shipping goes on to
/// the endpoint in use; `start` refuses the same.
#[test]
fn an_empty_or_garbled_endpoint_is_refused() {
    let t = TempRing::new();
    let script = Script::new();
    let shipper = builder(ring(&t, 1 << 20), &script, "a").start().unwrap();
    for bad in ["", "http://a b", "tcp://host:1\n"] {
        let err = shipper.switch_endpoint(Endpoint::new(bad)).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{bad:?}: {err}");
    }
    assert_eq!(shipper.endpoint().address(), "a");
    shipper.append(b"x").unwrap();
    eventually("delivered to the endpoint in use", || shipper.stats().ring.acked == 1);
    let t2 = TempRing::new();
    let err = builder(ring(&t2, 1 << 20), &script, "").start().unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    // A send timeout whose derived abandon_after passes the limit.
    let t3 = TempRing::new();
    let err =
        builder(ring(&t3, 1 << 20), &script, "a").send_timeout(Duration::from_secs(200 * 86_400)).start().unwrap_err();
    assert!(err.to_string().contains("abandon_after"), "{err}");
}

/// A factory that fails (a certificate file missing, say) says why in
/// health and is asked again after a backoff; the transport it makes once
/// it works delivers.
#[test]
fn a_failing_factory_says_why_and_is_asked_again() {
    let t = TempRing::new();
    let script = Script::new();
    let tries = Arc::new(AtomicU64::new(0));
    let (count, inner) = (Arc::clone(&tries), script.factory());
    let factory = move || {
        if count.fetch_add(1, Ordering::SeqCst) < 3 {
            return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "client.pem: no such file"));
        }
        Ok(inner())
    };
    let shipper = Shipper::builder(ring(&t, 1 << 20))
        .endpoint(Endpoint::new("ok"))
        .transport(factory)
        .backoff_initial(Duration::from_millis(5))
        .backoff_max(Duration::from_millis(20))
        .start()
        .unwrap();
    eventually("the factory's error shows in health", || {
        shipper.health().last_error.is_some_and(|e| e.contains("client.pem: no such file"))
    });
    shipper.append(b"x").unwrap();
    eventually("delivered once the factory works", || shipper.stats().ring.acked == 1);
    assert_eq!(tries.load(Ordering::SeqCst), 4);
}

/// Each transport refuses, at start and at a switch, an endpoint it cannot
/// send to (a scheme, host or port missing or wrong), and shipping goes on
/// to the endpoint in use; a factory whose check panics refuses the
/// endpoint too.
#[cfg(all(feature = "http", feature = "syslog"))]
#[test]
fn each_transport_refuses_an_endpoint_it_cannot_use() {
    use ringship::{HttpConfig, HttpTransport, SyslogConfig, SyslogTransport};

    let http = || HttpTransport::factory(HttpConfig::default());
    refuses_bad_endpoints(
        http,
        "http://127.0.0.1:9/in",
        &["htp://logs.example.com/in", "logs.example.com/in", "http://", "http://h:99999/in", "https:///in"],
    );
    refuses_bad_endpoints(
        || SyslogTransport::factory(SyslogConfig::default()).unwrap(),
        "relp://127.0.0.1:9",
        &["relp://host", "udp://host:514", "tcp://:514", "tcp://host:0", "host:514", "relp://h:x"],
    );
    let t = TempRing::new();
    let err = Shipper::builder(ring(&t, 1 << 20))
        .endpoint(Endpoint::new("http://127.0.0.1:9/in").header("Content-Length", "0"))
        .transport(http())
        .start()
        .unwrap_err();
    assert!(err.to_string().contains("Content-Length"), "{err}");
}

#[cfg(all(feature = "http", feature = "syslog"))]
fn refuses_bad_endpoints<F: ringship::TransportFactory + 'static>(factory: impl Fn() -> F, good: &str, bad: &[&str]) {
    let t = TempRing::new();
    let err = Shipper::builder(ring(&t, 1 << 20)).endpoint(Endpoint::new(bad[0])).transport(factory()).start();
    let err = err.unwrap_err();
    assert!(matches!(err, Error::Config(_)) && err.to_string().contains(bad[0]), "{err}");
    let t = TempRing::new();
    let shipper =
        Shipper::builder(ring(&t, 1 << 20)).endpoint(Endpoint::new(good)).transport(factory()).start().unwrap();
    for b in bad {
        let err = shipper.switch_endpoint(Endpoint::new(*b)).unwrap_err();
        assert!(matches!(err, Error::Config(_)) && err.to_string().contains(b), "{b:?}: {err}");
    }
    assert_eq!(shipper.endpoint().address(), good);
    let other = good.replace(":9", ":10");
    shipper.switch_endpoint(Endpoint::new(&other)).unwrap();
    assert_eq!(shipper.endpoint().address(), other);
}

/// A factory's endpoint check is user code: a panic in it refuses the
/// endpoint, and the shipper goes on.
#[test]
fn a_panicking_endpoint_check_refuses_the_endpoint() {
    struct Checker;
    impl ringship::TransportFactory for Checker {
        fn make(&self) -> Result<Box<dyn ringship::Transport>, Box<dyn std::error::Error + Send + Sync>> {
            Err("never".into())
        }
        fn check_endpoint(&self, endpoint: &Endpoint) -> ringship::Result<()> {
            assert_ne!(endpoint.address(), "boom", "the check panics");
            Ok(())
        }
    }
    let t = TempRing::new();
    let shipper = Shipper::builder(ring(&t, 1 << 20)).endpoint(Endpoint::new("a")).transport(Checker).start().unwrap();
    let err = shipper.switch_endpoint(Endpoint::new("boom")).unwrap_err();
    assert!(matches!(err, Error::Config(_)) && err.to_string().contains("panicked"), "{err}");
    assert_eq!(shipper.endpoint().address(), "a");
    assert_eq!(shipper.switch_endpoint(Endpoint::new("b")).unwrap(), 2);
}

/// A callback that blocks for seconds holds up neither the replacement of a
/// stuck worker nor shutdown.
#[test]
fn a_slow_callback_holds_up_neither_supervision_nor_shutdown() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("hang", Behavior::HangIgnoringCancel);
    let shipper = builder(ring(&t, 1 << 20), &script, "hang")
        .send_timeout(Duration::from_millis(50))
        .abandon_after(Duration::from_millis(150))
        .stall_after(Duration::from_millis(50))
        .on_stall(|_| std::thread::sleep(Duration::from_secs(3)))
        .start()
        .unwrap();
    let start = Instant::now();
    shipper.append(b"x").unwrap();
    eventually("stall reported", || shipper.stats().stalls >= 1);
    eventually("worker replaced", || shipper.stats().worker_restarts >= 1);
    assert!(start.elapsed() < Duration::from_secs(2), "replacement waited for on_stall: {:?}", start.elapsed());
    let t0 = Instant::now();
    let report = shipper.shutdown(Duration::from_millis(100)).unwrap();
    // The deadline, the worker's 200 ms grace, and room for the final sync.
    let bound = Duration::from_millis(100) + Duration::from_millis(200) + Duration::from_millis(700);
    assert!(t0.elapsed() < bound, "shutdown took {:?}", t0.elapsed());
    assert_eq!(report.left_pending, 1);
    script.release.store(true, Ordering::SeqCst);
}

/// A small ring overflowing while the endpoint is slow: the incident's own
/// shape. Batches are never held back by the linger while their records
/// are being evicted, so batch after batch is sent.
#[test]
fn a_small_overflowing_ring_ships_batch_after_batch() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("slow", Behavior::DelayThenDeliver(Duration::from_millis(8)));
    let shipper = builder(ring(&t, 64 << 10), &script, "slow")
        .linger(Duration::from_millis(10))
        .send_timeout(Duration::from_secs(5))
        .start()
        .unwrap();
    // About 20,000 records a second of 200 bytes for a second.
    let start = Instant::now();
    for i in 1..=20_000u64 {
        shipper.append(&payload(i, 200)).unwrap();
        if i % 200 == 0 {
            let due = Duration::from_millis(i / 20);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    eventually("drained", || shipper.stats().ring.pending == 0);
    let s = shipper.stats();
    let delivered = seqs(&script, "slow");
    // The ring holds about 280 such records; with 8 ms sends about 125
    // batches go in a second; a shipper starved by the linger sends a couple.
    assert!(s.batches_sent >= 40, "{s:?}");
    assert!(delivered.len() >= 5000, "{} delivered; {s:?}", delivered.len());
    // What receivers really miss: the gap notices name every seq missing
    // at the receiver; records evicted while their batch was in flight
    // were delivered all the same, and are counted apart.
    let got = script.receiver.received("slow");
    let announced: u64 = got.gaps.iter().map(ringship::GapNotice::missing).sum();
    let missing = 20_000 - delivered.len() as u64;
    assert_eq!(announced, missing, "{s:?}");
    assert!(s.overwritten_after_delivery > 0, "with 8 ms sends some records are evicted in flight: {s:?}");
    assert_eq!(s.ring.overwritten, missing + s.overwritten_after_delivery, "{s:?}");
}

/// A callback that re-enters the shipper: `on_stall` switches to a working
/// endpoint and reads health and stats from inside. No deadlock, and the
/// switch delivers.
#[test]
fn a_callback_that_switches_endpoints_from_inside_delivers() {
    let t = TempRing::new();
    let script = Script::new();
    script.set("down", Behavior::Fail(SendErrorKind::Retryable));
    // A weak handle: the callback must not keep the shipper alive.
    let cell: Arc<std::sync::OnceLock<std::sync::Weak<Shipper>>> = Arc::default();
    let inside = Arc::clone(&cell);
    let shipper = Arc::new(
        builder(ring(&t, 1 << 20), &script, "down")
            .stall_after(Duration::from_millis(50))
            .on_stall(move |_| {
                if let Some(s) = inside.get().and_then(std::sync::Weak::upgrade) {
                    let _ = (s.health(), s.stats());
                    s.switch_endpoint(Endpoint::new("up")).unwrap();
                }
            })
            .start()
            .unwrap(),
    );
    cell.set(Arc::downgrade(&shipper)).unwrap();
    for i in 1..=10 {
        shipper.append(&payload(i, 20)).unwrap();
    }
    eventually("delivered after the callback's switch", || shipper.stats().ring.acked == 10);
    assert_eq!(shipper.endpoint().address(), "up");
}

/// A transport whose `Drop` panics, dropped by a worker that was abandoned:
/// the panic is that old worker's, and the worker that replaced it goes on
/// shipping; it is not replaced in turn, tick after tick.
#[test]
fn a_transport_that_panics_when_dropped_does_not_get_its_successor_replaced() {
    struct PanicsOnDrop(Box<dyn ringship::Transport>);
    impl ringship::Transport for PanicsOnDrop {
        fn send(
            &mut self,
            endpoint: &Endpoint,
            batch: &ringship::Batch,
            ctx: &ringship::SendContext,
        ) -> Result<(), ringship::SendError> {
            self.0.send(endpoint, batch, ctx)
        }
    }
    impl Drop for PanicsOnDrop {
        fn drop(&mut self) {
            panic!("transport drop");
        }
    }
    let t = TempRing::new();
    let script = Script::new();
    script.set("hang", Behavior::HangIgnoringCancel);
    script.set("slow", Behavior::DelayThenDeliver(Duration::from_millis(30)));
    let inner = script.factory();
    let shipper = Shipper::builder(ring(&t, 1 << 20))
        .endpoint(Endpoint::new("hang"))
        .transport(move || Box::new(PanicsOnDrop(inner())) as Box<dyn ringship::Transport>)
        .linger(Duration::from_millis(2))
        .backoff_initial(Duration::from_millis(5))
        .send_timeout(Duration::from_millis(50))
        .abandon_after(Duration::from_millis(100))
        .supervise_every(Duration::from_millis(5))
        .start()
        .unwrap();
    shipper.append(b"x").unwrap();
    eventually("abandoned", || shipper.stats().worker_restarts == 1);
    shipper.switch_endpoint(Endpoint::new("slow")).unwrap();
    // The abandoned worker's send returns; its transport panics as it goes.
    script.release.store(true, Ordering::SeqCst);
    for i in 0..20 {
        shipper.append(&payload(i, 10)).unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    eventually("delivered by the replacement", || shipper.stats().ring.pending == 0);
    assert_eq!(shipper.stats().worker_restarts, 1, "the working replacement was replaced");
}
