//! The storage the ring runs on: a small trait, and real files.
//!
//! The ring reaches its two files only through [`Storage`], so tests can put
//! a fault-injecting implementation underneath (see
//! [`RingConfig::with_storage_wrapper`](crate::RingConfig::with_storage_wrapper)).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A fixed-size file the ring reads and writes at offsets.
///
/// Implementations must be usable from many threads at once: reads and
/// writes of disjoint ranges may run concurrently.
#[expect(clippy::len_without_is_empty, reason = "a ring file is never empty")]
pub trait Storage: Send + Sync {
    /// Fills `buf` from `offset`; reading past the end is an error.
    ///
    /// # Errors
    /// Any I/O error, or `UnexpectedEof` past the end.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// Writes all of `buf` at `offset`. After a crash of the process the
    /// bytes are there; after a power loss only if a later [`sync_data`]
    /// returned `Ok`.
    ///
    /// # Errors
    /// Any I/O error, for example `ENOSPC`.
    ///
    /// [`sync_data`]: Storage::sync_data
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Makes every completed write durable (fdatasync). A failure means the
    /// kernel may have dropped those writes: the caller must not retry and
    /// trust them.
    ///
    /// # Errors
    /// Any I/O error.
    fn sync_data(&self) -> io::Result<()>;

    /// Current length in bytes.
    ///
    /// # Errors
    /// Any I/O error.
    fn len(&self) -> io::Result<u64>;

    /// Sets the length, reserving the space (`fallocate` where the file
    /// system has it) so later writes within it cannot fail for space.
    ///
    /// # Errors
    /// Any I/O error, for example `ENOSPC`.
    fn set_len(&self, len: u64) -> io::Result<()>;

    /// An identifier of the current boot of the machine, so recovery can
    /// tell a process crash (page cache intact) from a power loss. `None`
    /// when unknown; recovery then assumes a power loss may have happened.
    fn boot_id(&self) -> Option<[u8; 16]> {
        current_boot_id()
    }
}

/// Reads the kernel's boot id (`/proc/sys/kernel/random/boot_id`).
pub(crate) fn current_boot_id() -> Option<[u8; 16]> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let hex: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
    if hex.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        id[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(id)
}

/// [`Storage`] on a real file.
pub(crate) struct FileStorage {
    pub(crate) file: File,
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len) {
            // File systems without fallocate: a sized file is the best we can do.
            Err(rustix::io::Errno::OPNOTSUPP) => self.file.set_len(len),
            other => other.map_err(io::Error::from),
        }
    }
}
