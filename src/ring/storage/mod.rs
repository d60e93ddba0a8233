//! The storage the ring runs on: a small trait, and real files.
//!
//! The ring reaches its two files only through [`Storage`], so tests can put
//! a fault-injecting implementation underneath (the test kit's storage
//! wrapper). Plain files are in `file`, memory-mapped writes (and all the
//! crate's `unsafe`) in `mapped`.

mod file;
mod mapped;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;
use std::ops::Range;

/// A fixed-size file the ring reads and writes at offsets.
///
/// Implementations must be usable from many threads at once: reads and
/// writes of disjoint ranges may run concurrently.
#[allow(clippy::len_without_is_empty, reason = "a ring file is never empty")]
pub trait Storage: Send + Sync {
    /// Fills `buf` from `offset`; reading past the end is an error.
    ///
    /// # Errors
    /// Any I/O error, or `UnexpectedEof` past the end. `EIO` (raw OS error
    /// 5) means "some of these bytes cannot be read": the ring reads the
    /// range again 4 KiB block by block, and takes each block that fails
    /// with `EIO` again as damage (docs/FORMAT.md, "Unreadable blocks").
    /// Any other error fails the open, eviction or read that needed the
    /// bytes.
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

    /// Forgets cached bytes, so that later reads return what the device
    /// holds. Called after a failed [`sync_data`]: Linux then marks the
    /// failed pages clean though the disk may not hold them, and reads
    /// would go on returning bytes that a power loss, or the kernel
    /// reclaiming the pages, can take back. Best effort; writes not yet
    /// synced stay. The default does nothing.
    ///
    /// [`sync_data`]: Storage::sync_data
    fn drop_cache(&self) {}

    /// Brings `offset..offset + len` into memory ahead of reads or writes
    /// there, so that the [`read_at`] or [`write_at`] that gets there does
    /// not wait for the kernel to read those bytes from the device. The
    /// ring calls it with no lock held: recovery and readers ahead of
    /// where they read (the default path has the kernel's own read-ahead
    /// off), and, through [`prefetch_for_write`], `open` and the ring's
    /// background thread a little ahead of where it writes next. Best
    /// effort: it changes no bytes, and a failure is left for the read or
    /// write that needs them to report. The default does nothing; a
    /// wrapper should forward it.
    ///
    /// [`read_at`]: Storage::read_at
    /// [`write_at`]: Storage::write_at
    /// [`prefetch_for_write`]: Storage::prefetch_for_write
    fn prefetch(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }

    /// [`prefetch`] for bytes about to be written: a storage may also
    /// prepare them for writing (the ring's mapped writes map those pages
    /// writable, so that stores take no page faults). The default calls
    /// [`prefetch`]; a wrapper should forward both.
    ///
    /// [`prefetch`]: Storage::prefetch
    fn prefetch_for_write(&self, offset: u64, len: u64) {
        self.prefetch(offset, len);
    }

    /// An identifier of the current boot of the machine, so recovery can
    /// tell a process crash (page cache intact) from a power loss. `None`
    /// when unknown; recovery then assumes a power loss may have happened.
    fn boot_id(&self) -> Option<[u8; 16]> {
        current_boot_id()
    }
}

/// What a block that cannot be read is taken to hold: bytes no decoder
/// accepts (a frame's kind byte of 0xFF is neither a record's nor a pad's;
/// a checkpoint's or reservation's magic and CRC fail), so it is skipped
/// and counted as damage like any other.
pub(crate) const UNREADABLE: u8 = 0xFF;

/// Reads `buf` from `offset` as [`Storage::read_at`] does, except that an
/// `EIO` (a bad sector, say) does not fail the read: the range is read
/// again 4 KiB block by block, and each block that fails with `EIO` once
/// more is filled with [`UNREADABLE`]. A ring whose disk has a bad sector
/// thus opens, appends and ships around it, counting the records there as
/// corrupted, instead of failing every open, eviction or read that
/// reaches it (a crash loop that only deleting the ring would end).
///
/// Returns the file ranges filled (none, and no allocation, normally).
///
/// # Errors
/// Any error other than `EIO`, from the whole read or from a block.
pub(crate) fn read_or_fill(storage: &dyn Storage, buf: &mut [u8], offset: u64) -> io::Result<Vec<Range<u64>>> {
    const BLOCK: u64 = 4096;
    let eio = |e: &io::Error| e.raw_os_error() == Some(rustix::io::Errno::IO.raw_os_error());
    match storage.read_at(buf, offset) {
        Err(e) if eio(&e) => {}
        other => return other.map(|()| Vec::new()),
    }
    let mut filled: Vec<Range<u64>> = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let pos = offset + at as u64;
        let len = ((BLOCK - pos % BLOCK) as usize).min(buf.len() - at);
        let block = &mut buf[at..at + len];
        match storage.read_at(block, pos) {
            Ok(()) => {}
            Err(e) if eio(&e) => {
                block.fill(UNREADABLE);
                match filled.last_mut() {
                    Some(last) if last.end == pos => last.end = pos + len as u64,
                    _ => filled.push(pos..pos + len as u64),
                }
            }
            Err(e) => return Err(e),
        }
        at += len;
    }
    Ok(filled)
}

/// Bytes in the ranges [`read_or_fill`] returns.
pub(crate) fn filled_bytes(filled: &[Range<u64>]) -> u64 {
    filled.iter().map(|r| r.end - r.start).sum()
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

/// Turns the kernel's own read-ahead off for `file` (`POSIX_FADV_RANDOM`),
/// best effort; reads then bring in what they ask for and no more, and the
/// ring asks for what it needs ahead of time ([`Storage::prefetch`]).
///
/// For the data file: read-ahead fills the page cache with large folios
/// (Linux 6.16 and later on ext4), and a small `pwrite` into one walks the
/// buffer of every block in the folio, twice: a full ring whose pages came
/// back from the disk that way (after a reboot) pays several times the
/// cost per small append (BENCHMARKS.md, "Tail latency of single
/// appends"). Pages brought in by `prefetch` and by the ring's writes are
/// small. Only the `pwrite` path needs this: a mapped write takes its
/// fault once per folio, not once per record.
pub(crate) fn no_read_ahead(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Random);
}

pub(crate) use file::FileStorage;
pub(crate) use mapped::MappedFile;
