//! Front-ends installed process-wide, with a shipper shipping the ring
//! they append to: what user code running on ringship's threads (a
//! transport, its factory, a callback) emits is left out, so shipping
//! never feeds the ring it ships from; ringship's own diagnostics go
//! through `tracing`; a second `log` install is a clear error.
//!
//! One test in this binary: the subscriber and the logger are global.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringship::{
    Batch, Endpoint, Error, Ring, RingConfig, RingLayer, RingLogger, SendContext, SendError, Shipper, SyncPolicy,
    Transport,
};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// A transport that logs through both front-ends on every send.
struct Chatty {
    sent: Arc<AtomicU64>,
}

impl Transport for Chatty {
    fn send(&mut self, _: &Endpoint, batch: &Batch, _: &SendContext) -> Result<(), SendError> {
        tracing::info!(records = batch.records.len(), "sending a batch");
        log::info!("sending {} records", batch.records.len());
        self.sent.fetch_add(batch.records.len() as u64, Ordering::SeqCst);
        Ok(())
    }
}

/// Collects the messages of ringship's own diagnostics (target `ringship`).
#[derive(Clone, Default)]
struct Diagnostics(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Diagnostics {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Msg(String);
        impl tracing::field::Visit for Msg {
            fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write;
                let _ = write!(self.0, "{value:?}");
            }
        }
        if event.metadata().target() == "ringship" {
            let mut m = Msg(String::new());
            event.record(&mut m);
            self.0.lock().unwrap().push(m.0);
        }
    }
}

#[test]
fn events_from_user_code_on_ringship_threads_are_left_out_and_a_second_logger_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let config = RingConfig::default().capacity(1 << 20).sync(SyncPolicy::Never);
    let ring = Arc::new(Ring::open(tmp.path().join("ring"), config).unwrap().0);
    let layer = RingLayer::new(Arc::clone(&ring));
    let diagnostics = Diagnostics::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(layer.clone()).with(diagnostics.clone()),
    )
    .unwrap();
    // A second subscriber is refused, and the first keeps working.
    assert!(tracing_subscriber::registry().with(RingLayer::new(Arc::clone(&ring))).try_init().is_err());
    let logger = RingLogger::new(Arc::clone(&ring));
    logger.clone().install(log::LevelFilter::Info).unwrap();
    match RingLogger::new(Arc::clone(&ring)).install(log::LevelFilter::Info) {
        Err(Error::Config(msg)) => assert!(msg.contains("already installed"), "{msg}"),
        other => panic!("a second install: {other:?}"),
    }

    let sent = Arc::new(AtomicU64::new(0));
    let s2 = Arc::clone(&sent);
    let shipper = Shipper::builder(Arc::clone(&ring))
        .endpoint(Endpoint::new("mem://x"))
        .transport(move || {
            tracing::info!("making a transport");
            Chatty { sent: Arc::clone(&s2) }
        })
        .linger(Duration::from_millis(1))
        .on_loss(|_| tracing::warn!("lost records"))
        .start()
        .unwrap();
    // The host's own events, through both front-ends.
    for i in 0..50 {
        tracing::info!(i, "host event");
        log::info!("host event {i}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sent.load(Ordering::SeqCst) < 100 {
        assert!(std::time::Instant::now() < deadline, "shipped {} of 100", sent.load(Ordering::SeqCst));
        std::thread::sleep(Duration::from_millis(5));
    }
    // Had the transport's events been appended, they would be shipped in
    // turn, and logged again: the ring would keep growing.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(ring.stats().appended, 100, "only the host's events are in the ring");
    assert_eq!(sent.load(Ordering::SeqCst), 100);
    assert!(layer.stats().suppressed >= 2, "{:?}", layer.stats());
    assert!(logger.stats().suppressed >= 1, "{:?}", logger.stats());
    shipper.shutdown(Duration::from_secs(10)).unwrap();

    // A second ring, overwriting while its endpoint refuses everything, with
    // an `on_loss` callback that panics: ringship says so through
    // `tracing`, and nothing of it lands in the first ring.
    let small = RingConfig::default().capacity(64 << 10).sync(SyncPolicy::Never);
    let other = Arc::new(Ring::open(tmp.path().join("other"), small).unwrap().0);
    let refusing = Shipper::builder(Arc::clone(&other))
        .endpoint(Endpoint::new("mem://down"))
        .transport(|| Refusing)
        .on_loss(|_| panic!("the host's callback broke"))
        .start()
        .unwrap();
    for _ in 0..2000 {
        other.append(&[b'x'; 100]).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !diagnostics.0.lock().unwrap().iter().any(|m| m.contains("the host's callback broke")) {
        assert!(std::time::Instant::now() < deadline, "no diagnostic: {:?}", diagnostics.0.lock().unwrap());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(ring.stats().appended, 100, "the diagnostic is not in the first ring");
    refusing.shutdown(Duration::from_millis(100)).unwrap();
}

struct Refusing;

impl Transport for Refusing {
    fn send(&mut self, _: &Endpoint, _: &Batch, _: &SendContext) -> Result<(), SendError> {
        Err(SendError::retryable("down"))
    }
}
