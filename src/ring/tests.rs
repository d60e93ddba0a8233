use std::sync::Arc;

use crate::sim::SimDisk;
use crate::sync::{Signal, Woken};
use crate::{Ring, RingConfig, SyncPolicy};

/// A shipper's worker sleeps until woken: every append, through the
/// shipper or on the ring directly, must wake it, and a refused one
/// need not.
#[test]
fn every_append_wakes_the_reader() {
    let disk = SimDisk::new(1, crate::sim::Faults::NONE);
    let config = RingConfig::default().capacity(64 << 10).max_record_len(1024).sync(SyncPolicy::Never);
    let (ring, _) = Ring::open_on(disk.file("ring.data"), disk.file("ring.meta"), config).unwrap();
    let reader = Arc::new(Signal::new());
    ring.wake_on_append(Arc::clone(&reader));
    assert_eq!(reader.wait_timeout(std::time::Duration::ZERO), Woken::TimedOut);
    ring.append(b"one").unwrap();
    assert_eq!(reader.wait_timeout(std::time::Duration::ZERO), Woken::Notified);
    ring.append_batch(&[b"two", b"six"]).unwrap();
    assert_eq!(reader.wait_timeout(std::time::Duration::ZERO), Woken::Notified);
    assert!(ring.append(&[0; 2000]).is_err());
    assert_eq!(reader.wait_timeout(std::time::Duration::ZERO), Woken::TimedOut);
}
