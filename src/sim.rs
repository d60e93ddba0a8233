//! A simulated disk that lies the way real disks do, for tests.
//!
//! [`SimDisk`] holds files in memory and keeps, for each, what a reader
//! sees (the page cache) apart from what is on stable storage. Everything is
//! driven by a seed, so a failing run replays exactly:
//!
//! - writes go to the cache at once and reach stable storage only at a
//!   successful `sync_data`;
//! - [`SimDisk::power_loss`] keeps each unsynced write or drops it, on its
//!   own (so later writes can survive while earlier ones do not: reordering),
//!   tears a kept write at 512-byte sector granularity, may flip a bit of
//!   stable storage, and changes the boot id;
//! - [`SimDisk::process_crash`] loses nothing: the page cache survives;
//! - `sync_data` can fail: like Linux, the unsynced writes are then marked
//!   clean whether they reached the disk or not, so a later fsync succeeds
//!   without them;
//! - `write_at` can fail with `ENOSPC`.
//!
//! Give the ring its files with [`Ring::open_on`](crate::Ring::open_on).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::ring::storage::Storage;

/// Sector size: a torn write keeps or loses whole sectors.
pub const SECTOR: usize = 512;

/// Which faults the disk injects, with what probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Chance that an unsynced write is lost at a power loss.
    pub lose_unsynced: f64,
    /// Chance that a kept unsynced write is torn (some sectors lost).
    pub tear: f64,
    /// Chance that a power loss also flips one bit of stable storage.
    pub bit_flip: f64,
    /// Chance that a `sync_data` fails.
    pub fsync_failure: f64,
    /// Chance that a `write_at` fails with `ENOSPC`.
    pub enospc: f64,
}

impl Faults {
    /// No faults at all: a perfect disk, on which a power loss keeps every
    /// unsynced write (set `lose_unsynced` to 1.0 for "everything unsynced
    /// is lost").
    pub const NONE: Faults = Faults { lose_unsynced: 0.0, tear: 0.0, bit_flip: 0.0, fsync_failure: 0.0, enospc: 0.0 };
}

/// How many faults the disk injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Power losses.
    pub power_losses: u64,
    /// Process crashes.
    pub process_crashes: u64,
    /// Unsynced writes lost at a power loss.
    pub lost_writes: u64,
    /// Writes torn at a power loss.
    pub torn_writes: u64,
    /// Bits flipped.
    pub bit_flips: u64,
    /// Failed fsyncs.
    pub fsync_failures: u64,
    /// Writes refused with ENOSPC.
    pub enospc: u64,
    /// Damage done at rest between runs ([`SimDisk::damage_at_rest`]).
    pub damage_at_rest: u64,
    /// Process crashes that cut the last write between pages
    /// ([`SimDisk::process_crash_mid_write`]).
    pub cut_writes: u64,
}

/// Damage done to a file at rest, between two runs of the ring, with no
/// power loss (the boot id stays the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// One bit flipped at the offset.
    BitFlip,
    /// The range zeroed.
    Zeros,
    /// The range overwritten with bytes from the disk's random stream.
    Garbage,
    /// The file cut short at the offset (the range's length is ignored).
    Truncate,
}

#[derive(Default)]
struct SimFile {
    cache: Vec<u8>,
    stable: Vec<u8>,
    /// Writes since the last successful sync, in order.
    unsynced: Vec<(u64, Vec<u8>)>,
}

struct SimState {
    files: HashMap<String, SimFile>,
    /// The range of the last write to each file: where its newest bytes are.
    last_write: HashMap<String, (u64, u64)>,
    rng: u64,
    faults: Faults,
    boot: u64,
    counts: FaultCounts,
}

impl SimState {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, p: f64) -> bool {
        #[expect(clippy::cast_precision_loss, reason = "53 bits of randomness are plenty")]
        let x = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        x < p
    }
}

fn put(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let end = offset as usize + data.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[offset as usize..end].copy_from_slice(data);
}

/// A deterministic, seeded, fault-injecting in-memory disk. Clones share
/// the same disk.
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock();
        f.debug_struct("SimDisk").field("files", &st.files.len()).field("counts", &st.counts).finish()
    }
}

impl SimDisk {
    /// A disk with the given seed and faults.
    pub fn new(seed: u64, faults: Faults) -> Self {
        SimDisk {
            state: Arc::new(Mutex::new(SimState {
                files: HashMap::new(),
                last_write: HashMap::new(),
                rng: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
                faults,
                boot: 1,
                counts: FaultCounts::default(),
            })),
        }
    }

    /// Changes the faults injected from now on.
    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().faults = faults;
    }

    /// The file `name` (created empty if new) as ring storage.
    pub fn file(&self, name: &str) -> Box<dyn Storage> {
        self.state.lock().files.entry(name.to_owned()).or_default();
        Box::new(SimStorage { disk: self.clone(), name: name.to_owned() })
    }

    /// A process crash: the page cache survives, nothing is lost.
    pub fn process_crash(&self) {
        self.state.lock().counts.process_crashes += 1;
    }

    /// A power loss: unsynced writes are kept, torn or lost, a bit of stable
    /// storage may flip, and the machine boots again.
    pub fn power_loss(&self) {
        let mut st = self.state.lock();
        st.counts.power_losses += 1;
        st.boot += 1;
        let mut names: Vec<String> = st.files.keys().cloned().collect();
        names.sort();
        for name in &names {
            let unsynced = std::mem::take(&mut st.files.get_mut(name).expect("file").unsynced);
            for (offset, data) in unsynced {
                let faults = st.faults;
                if st.chance(faults.lose_unsynced) {
                    st.counts.lost_writes += 1;
                    continue;
                }
                if st.chance(faults.tear) && data.len() > 1 {
                    st.counts.torn_writes += 1;
                    // Keep a random subset of the write's sectors.
                    let mut at = 0;
                    while at < data.len() {
                        let boundary = ((offset as usize + at) / SECTOR + 1) * SECTOR - offset as usize;
                        let end = boundary.min(data.len());
                        if st.next() % 2 == 0 {
                            put(&mut st.files.get_mut(name).expect("file").stable, offset + at as u64, &data[at..end]);
                        }
                        at = end;
                    }
                    continue;
                }
                put(&mut st.files.get_mut(name).expect("file").stable, offset, &data);
            }
        }
        let flip = st.faults.bit_flip;
        if !names.is_empty() && st.chance(flip) {
            let pick = (st.next() % names.len() as u64) as usize;
            let f = st.files.get_mut(&names[pick]).expect("file");
            if !f.stable.is_empty() {
                let len = f.stable.len() as u64;
                let _ = f;
                let bit = st.next() % (len * 8);
                let f = st.files.get_mut(&names[pick]).expect("file");
                f.stable[(bit / 8) as usize] ^= 1 << (bit % 8);
                st.counts.bit_flips += 1;
            }
        }
        for f in st.files.values_mut() {
            f.cache.clone_from(&f.stable);
        }
    }

    /// Damages `name` at rest: what the page cache and the disk both hold
    /// changes, as a failing disk, a stray write or an operator's tool
    /// would change it between two runs.
    pub fn damage_at_rest(&self, name: &str, damage: Damage, offset: u64, len: u64) {
        let mut st = self.state.lock();
        st.counts.damage_at_rest += 1;
        let garbage: Vec<u8> = (0..len).map(|_| st.next() as u8).collect();
        let bit = st.next() % 8;
        let f = st.files.entry(name.to_owned()).or_default();
        for image in [&mut f.cache, &mut f.stable] {
            let start = (offset as usize).min(image.len());
            let end = (offset + len).min(image.len() as u64) as usize;
            match damage {
                Damage::BitFlip => {
                    if start < image.len() {
                        image[start] ^= 1 << bit;
                    }
                }
                Damage::Zeros => image[start..end].fill(0),
                Damage::Garbage => image[start..end].copy_from_slice(&garbage[..end - start]),
                Damage::Truncate => image.truncate(start),
            }
        }
        if damage == Damage::Truncate {
            let cut = offset;
            f.unsynced.retain(|(o, _)| *o < cut);
        }
    }

    /// A process crash (SIGKILL) in the middle of the last write to
    /// `name`: a fatal signal can stop a multi-page `write` between pages,
    /// so the pages after a random page boundary keep what the disk held.
    /// Returns whether the last write spanned a page boundary to cut at.
    pub fn process_crash_mid_write(&self, name: &str) -> bool {
        const PAGE: u64 = 4096;
        let mut st = self.state.lock();
        st.counts.process_crashes += 1;
        let pick = st.next();
        let Some(f) = st.files.get_mut(name) else { return false };
        let Some((offset, data)) = f.unsynced.pop() else { return false };
        let end = offset + data.len() as u64;
        let first_boundary = (offset / PAGE + 1) * PAGE;
        if first_boundary >= end {
            f.unsynced.push((offset, data));
            return false;
        }
        let boundaries = (end - 1 - first_boundary) / PAGE + 1;
        let cut = first_boundary + (pick % boundaries) * PAGE;
        let kept = (cut - offset) as usize;
        f.unsynced.push((offset, data[..kept].to_vec()));
        // What those bytes held before the write: the disk's, with the
        // earlier writes not yet synced on top.
        for at in cut..end {
            let mut byte = f.stable.get(at as usize).copied().unwrap_or(0);
            for (o, d) in &f.unsynced {
                if (*o..*o + d.len() as u64).contains(&at) {
                    byte = d[(at - o) as usize];
                }
            }
            f.cache[at as usize] = byte;
        }
        st.counts.cut_writes += 1;
        true
    }

    /// The offset and length of the last write to `name`: the newest bytes.
    pub fn last_write(&self, name: &str) -> Option<(u64, u64)> {
        self.state.lock().last_write.get(name).copied()
    }

    /// The faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        self.state.lock().counts
    }

    /// Length of file `name` as a reader sees it.
    pub fn len(&self, name: &str) -> u64 {
        self.state.lock().files.get(name).map_or(0, |f| f.cache.len() as u64)
    }

    /// Whether the disk holds no files.
    pub fn is_empty(&self) -> bool {
        self.state.lock().files.is_empty()
    }
}

struct SimStorage {
    disk: SimDisk,
    name: String,
}

impl Storage for SimStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let st = self.disk.state.lock();
        let f = &st.files[&self.name];
        let end = offset as usize + buf.len();
        if end > f.cache.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of a simulated file"));
        }
        buf.copy_from_slice(&f.cache[offset as usize..end]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.disk.state.lock();
        let p = st.faults.enospc;
        if st.chance(p) {
            st.counts.enospc += 1;
            return Err(io::Error::from_raw_os_error(28));
        }
        st.last_write.insert(self.name.clone(), (offset, buf.len() as u64));
        let f = st.files.get_mut(&self.name).expect("file");
        put(&mut f.cache, offset, buf);
        f.unsynced.push((offset, buf.to_vec()));
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.disk.state.lock();
        let p = st.faults.fsync_failure;
        let failed = st.chance(p);
        let unsynced = std::mem::take(&mut st.files.get_mut(&self.name).expect("file").unsynced);
        for (offset, data) in unsynced {
            // After a failed fsync each write may or may not have made it;
            // either way it is now "clean" and will not be written again.
            if !failed || st.next() % 2 == 0 {
                put(&mut st.files.get_mut(&self.name).expect("file").stable, offset, &data);
            }
        }
        if failed {
            st.counts.fsync_failures += 1;
            return Err(io::Error::from_raw_os_error(5));
        }
        Ok(())
    }

    fn drop_cache(&self) {
        // What the page cache would show once its clean pages are gone:
        // the stable bytes, with the writes not yet synced on top.
        let mut st = self.disk.state.lock();
        let f = st.files.get_mut(&self.name).expect("file");
        let mut cache = f.stable.clone();
        cache.resize(f.cache.len(), 0);
        for (offset, data) in &f.unsynced {
            put(&mut cache, *offset, data);
        }
        f.cache = cache;
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.disk.len(&self.name))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.disk.state.lock();
        // Size changes are treated as durable at once (the ring syncs right
        // after creating a file anyway).
        let f = st.files.get_mut(&self.name).expect("file");
        f.cache.resize(len as usize, 0);
        f.stable.resize(len as usize, 0);
        Ok(())
    }

    fn boot_id(&self) -> Option<[u8; 16]> {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.disk.state.lock().boot.to_le_bytes());
        id[8..].copy_from_slice(b"sim-boot");
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsynced_writes_vanish_at_power_loss_synced_ones_stay() {
        let disk = SimDisk::new(1, Faults { lose_unsynced: 1.0, ..Faults::NONE });
        let f = disk.file("a");
        f.write_at(b"durable", 0).unwrap();
        f.sync_data().unwrap();
        f.write_at(b"DURABLE-NOT", 0).unwrap();
        let mut b = [0; 7];
        f.read_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"DURABLE");
        disk.process_crash();
        f.read_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"DURABLE", "a process crash keeps the page cache");
        let boot = f.boot_id();
        disk.power_loss();
        f.read_at(&mut b, 0).unwrap();
        assert_eq!(&b, b"durable");
        assert_ne!(f.boot_id(), boot);
        assert_eq!(disk.counts().lost_writes, 1);
    }

    #[test]
    fn failed_fsync_marks_writes_clean() {
        let disk = SimDisk::new(3, Faults { fsync_failure: 1.0, ..Faults::NONE });
        let f = disk.file("a");
        f.write_at(&[1; 4096], 0).unwrap();
        assert!(f.sync_data().is_err());
        disk.set_faults(Faults::NONE);
        assert!(f.sync_data().is_ok(), "the next fsync succeeds, whatever the first dropped");
        assert_eq!(disk.counts().fsync_failures, 1);
    }

    #[test]
    fn dropping_the_cache_after_a_failed_fsync_shows_the_disk() {
        let disk = SimDisk::new(7, Faults::NONE);
        let f = disk.file("a");
        f.write_at(&[1; 64], 0).unwrap();
        f.sync_data().unwrap();
        disk.set_faults(Faults { fsync_failure: 1.0, ..Faults::NONE });
        // Many writes, so that some reach the disk and some do not.
        for i in 0..64u8 {
            f.write_at(&[i + 2], u64::from(i)).unwrap();
        }
        assert!(f.sync_data().is_err());
        disk.set_faults(Faults::NONE);
        f.write_at(&[200], 63).unwrap();
        let mut before = [0u8; 64];
        f.read_at(&mut before, 0).unwrap();
        assert_eq!(before[..63], (2..65).collect::<Vec<u8>>()[..], "the page cache shows every write");
        f.drop_cache();
        let mut after = [0u8; 64];
        f.read_at(&mut after, 0).unwrap();
        assert_eq!(after[63], 200, "a write not yet synced stays");
        assert!(after[..63].contains(&1), "some failed writes never reached the disk: {after:?}");
        assert!(after[..63].iter().enumerate().all(|(i, &b)| b == 1 || b == i as u8 + 2), "{after:?}");
        disk.power_loss();
        let mut lost = [0u8; 64];
        f.read_at(&mut lost, 0).unwrap();
        assert_eq!(lost[..63], after[..63], "what the dropped cache showed is what a power loss leaves");
    }

    #[test]
    fn same_seed_same_faults() {
        let run = |seed| {
            let faults = Faults { lose_unsynced: 0.5, tear: 0.5, bit_flip: 1.0, ..Faults::NONE };
            let disk = SimDisk::new(seed, faults);
            let f = disk.file("a");
            for i in 0..20u8 {
                f.write_at(&[i; 1500], u64::from(i) * 700).unwrap();
            }
            disk.power_loss();
            let mut b = vec![0; disk.len("a") as usize];
            f.read_at(&mut b, 0).unwrap();
            (b, disk.counts())
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7).0, run(8).0);
    }

    #[test]
    fn enospc_writes_nothing() {
        let disk = SimDisk::new(1, Faults { enospc: 1.0, ..Faults::NONE });
        let f = disk.file("a");
        assert_eq!(f.write_at(b"x", 0).unwrap_err().raw_os_error(), Some(28));
        assert_eq!(disk.len("a"), 0);
    }
}
