//! Secrets stay secret: an endpoint's user info, query string and header
//! values never appear in errors, health, metrics or `Debug` output,
//! whatever quotes them: the HTTP transport's own errors, a transport of
//! the user's that puts them in its errors or panics with them, a factory
//! that fails with them, a configuration refused at a switch.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use common::{TempRing, eventually, small};
use ringship::{
    Batch, Endpoint, Error, HttpConfig, HttpTransport, Ring, SendContext, SendError, Shipper, Transport,
    TransportFactory,
};

const SECRETS: [&str; 5] = ["s3cret-pw", "abc123key", "tok_9f8e7d6c", "svc-user", "acme-tenant"];

fn endpoint(port: u16) -> Endpoint {
    Endpoint::new(format!("http://svc-user:s3cret-pw@127.0.0.1:{port}/ingest?api_key=abc123key&tenant=acme-tenant"))
        .header("Authorization", "Bearer tok_9f8e7d6c")
}

fn assert_clean(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret}: {text}");
    }
}

/// What an operator sees of a shipper: health, its Debug form, the
/// Prometheus text, the endpoint's Display and Debug forms.
fn everything_shown(shipper: &Shipper) -> String {
    let health = shipper.health();
    format!(
        "{health:?}\n{}\n{}\n{:?}\n{:?}",
        shipper.stats().to_prometheus(),
        shipper.endpoint(),
        shipper.endpoint(),
        health.last_error
    )
}

#[test]
fn the_http_transports_errors_and_everything_shown_are_free_of_secrets() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    let shipper = Shipper::builder(ring)
        .endpoint(endpoint(port))
        .transport(HttpTransport::factory(HttpConfig::default()))
        .backoff_initial(Duration::from_millis(5))
        .backoff_max(Duration::from_millis(20))
        .start()
        .unwrap();
    shipper.append(b"x").unwrap();
    eventually("an error", || shipper.health().last_error.is_some());
    let shown = everything_shown(&shipper);
    assert_clean("the shipper", &shown);
    // Redacted, the endpoint is still recognisable.
    assert!(shown.contains(&format!("http://***@127.0.0.1:{port}/ingest?api_key=***&tenant=***")), "{shown}");
    assert!(shown.contains("Authorization: ***"), "{shown}");
    // A switch refused: its error quotes no secret either.
    let bad = Endpoint::new("ftp://svc-user:s3cret-pw@host/?api_key=abc123key");
    match shipper.switch_endpoint(bad) {
        Err(Error::Config(m)) => assert_clean("the refused switch", &m),
        other => panic!("{other:?}"),
    }
    shipper.shutdown(Duration::from_secs(1)).unwrap();
}

/// A transport that quotes its endpoint (address and headers) in every
/// error, and every third send panics quoting them.
struct Leaky(Arc<AtomicU64>);

impl Transport for Leaky {
    fn send(&mut self, endpoint: &Endpoint, _: &Batch, _: &SendContext) -> Result<(), SendError> {
        let quoted = format!("{} {:?}", endpoint.address(), endpoint.headers());
        assert!(self.0.fetch_add(1, SeqCst) % 3 != 2, "sending to {quoted} failed");
        Err(SendError::retryable(format!("could not send to {quoted}")))
    }
}

/// A factory that fails every other time quoting a secret it was given.
struct LeakyFactory(Arc<AtomicU64>);

impl TransportFactory for LeakyFactory {
    fn make(&self) -> Result<Box<dyn Transport>, Box<dyn std::error::Error + Send + Sync>> {
        if self.0.fetch_add(1, SeqCst) % 2 == 0 {
            return Err("cannot log in with password s3cret-pw as svc-user".into());
        }
        Ok(Box::new(Leaky(Arc::new(AtomicU64::new(0)))))
    }

    fn check_endpoint(&self, endpoint: &Endpoint) -> ringship::Result<()> {
        if endpoint.address().contains("refuse") {
            return Err(Error::Config(format!("refusing {} with {:?}", endpoint.address(), endpoint.headers())));
        }
        Ok(())
    }
}

#[test]
fn user_code_that_quotes_secrets_has_them_scrubbed() {
    let t = TempRing::new();
    let ring = Ring::open(&t.dir, small(1 << 20)).unwrap().0;
    let makes = Arc::new(AtomicU64::new(0));
    let shipper = Shipper::builder(ring)
        .endpoint(endpoint(9))
        .transport(LeakyFactory(Arc::clone(&makes)))
        .supervise_every(Duration::from_millis(10))
        .backoff_initial(Duration::from_millis(2))
        .backoff_max(Duration::from_millis(10))
        .start()
        .unwrap();
    shipper.append(b"x").unwrap();
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    // The factory's error, the transport's error and its panic, each seen.
    eventually("every kind of error", || {
        if let Some(e) = shipper.health().last_error {
            assert_clean("health", &e);
            assert_clean("the shipper", &everything_shown(&shipper));
            for (kind, marker) in [("factory", "cannot log in"), ("send", "could not send"), ("panic", "panicked")] {
                if e.contains(marker) {
                    seen.lock().unwrap().insert(kind);
                }
            }
        }
        seen.lock().unwrap().len() == 3
    });
    // The secrets of an endpoint switched to are scrubbed too, and of one
    // refused by the factory's check.
    let next = Endpoint::new("http://other:n3w-s3cret@127.0.0.1:9/x").header("X-Api-Key", "n3w-key-42");
    shipper.switch_endpoint(next).unwrap();
    let refused = Endpoint::new("http://refuse:r3fused-pw@h/").header("X-Api-Key", "r3fused-key");
    match shipper.switch_endpoint(refused) {
        Err(Error::Config(m)) => assert!(!m.contains("r3fused"), "{m}"),
        other => panic!("{other:?}"),
    }
    std::thread::sleep(Duration::from_millis(100));
    eventually("an error from the new endpoint", || {
        shipper.health().last_error.is_some_and(|e| e.contains("127.0.0.1:9/x"))
    });
    let shown = everything_shown(&shipper);
    assert!(!shown.contains("n3w-s3cret") && !shown.contains("n3w-key-42"), "{shown}");
    shipper.shutdown(Duration::from_secs(1)).unwrap();
}
