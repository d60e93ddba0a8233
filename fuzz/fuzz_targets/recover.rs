//! Recovery from an arbitrary ring directory: arbitrary bytes in the data
//! file and both checkpoint slots (and the reservation records). Opening
//! never panics; whatever opens keeps the accounting identity, and reads
//! and appends work on it.
#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use ringship::sim::{Faults, SimDisk};
use ringship::{Ring, RingConfig, Storage, SyncPolicy};

/// Refuses to grow a file past 1 MiB, as a small disk would: a header may
/// claim any capacity.
struct Small(Box<dyn Storage>);

impl Storage for Small {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset + buf.len() as u64 > 1 << 20 {
            return Err(io::Error::from_raw_os_error(28));
        }
        self.0.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        if len > 1 << 20 {
            return Err(io::Error::from_raw_os_error(28));
        }
        self.0.set_len(len)
    }
}

fuzz_target!(|data: &[u8]| {
    // First 16384 bytes (or fewer) are the meta file, the rest the data
    // file.
    let split = data.len().min(16384);
    let (meta, rest) = data.split_at(split);
    let disk = SimDisk::new(1, Faults::NONE);
    let m = disk.file("ring.meta");
    let d = disk.file("ring.data");
    m.write_at(meta, 0).unwrap();
    d.write_at(rest, 0).unwrap();
    let config = RingConfig::default().capacity(8192).max_record_len(512).sync(SyncPolicy::Never);
    let Ok((ring, _report)) = Ring::open_on(Box::new(Small(d)), Box::new(Small(m)), config) else {
        return;
    };
    let s = ring.stats();
    assert!(s.identity_holds(), "{s:?}");
    let batch = ring.read(1, 1000, 1 << 20).unwrap();
    assert!(batch.records.windows(2).all(|w| w[0].seq < w[1].seq), "records out of order");
    assert!(batch.records.len() as u64 <= s.pending + s.acked);
    // After the read every pending record was delivered or found damaged,
    // and no delivered record is also counted lost.
    let after = ring.stats();
    assert!(after.identity_holds(), "{after:?}");
    let delivered_pending = batch.records.iter().filter(|r| r.seq > after.ack_seq).count() as u64;
    assert_eq!(delivered_pending, after.pending, "{after:?}");
    let losses = ring.losses();
    for r in &batch.records {
        assert!(
            !losses.iter().any(|l| l.first_seq <= r.seq && r.seq <= l.last_seq),
            "seq {} delivered and counted lost: {losses:?}",
            r.seq
        );
    }
    if let Ok(seq) = ring.append(b"after recovery") {
        assert!(seq > s.last_seq, "seq {seq} reused (last was {})", s.last_seq);
        assert!(ring.stats().identity_holds());
    }
});
