//! The storage the ring runs on: a small trait, and real files.
//!
//! The ring reaches its two files only through [`Storage`], so tests can put
//! a fault-injecting implementation underneath (see
//! [`RingConfig::with_storage_wrapper`](crate::RingConfig::with_storage_wrapper)).

use std::fs::File;
use std::io;
use std::num::NonZeroU64;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// A fixed-size file the ring reads and writes at offsets.
///
/// Implementations must be usable from many threads at once: reads and
/// writes of disjoint ranges may run concurrently.
#[expect(clippy::len_without_is_empty, reason = "a ring file is never empty")]
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
/// buffer of every block in the folio, twice. A full ring whose pages came
/// back from the disk that way (after a reboot) took 3.8 to 4.7 µs per
/// 128-byte append instead of 1.2 to 1.8 (BENCHMARKS.md, "Tail latency of
/// single appends"). Pages brought in by `prefetch` and by the ring's
/// writes are small. Only the `pwrite` path needs this: a mapped write
/// takes its fault once per folio, not once per record.
pub(crate) fn no_read_ahead(file: &File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::Random);
}

/// Whether the byte of `file` at `offset` is in the page cache: a one-byte
/// read that fails rather than wait for the device (`RWF_NOWAIT`). Past
/// the end, or where the kernel cannot tell, it is not.
fn cached(file: &File, offset: u64) -> bool {
    let mut byte = [0u8; 1];
    let bufs = &mut [io::IoSliceMut::new(&mut byte)];
    matches!(rustix::io::preadv2(file, bufs, offset, rustix::io::ReadWriteFlags::NOWAIT), Ok(1))
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

    fn drop_cache(&self) {
        // Clean pages are dropped; dirty ones are written back and stay.
        let _ = rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::DontNeed);
    }

    fn prefetch(&self, offset: u64, len: u64) {
        let Some(nonzero) = NonZeroU64::new(len) else { return };
        // Asking for cached bytes costs the kernel a look-up per page (a
        // recovery scan of a cached 1 GiB ring took 20 to 30 ms longer):
        // a range whose first and last bytes are cached is taken to be.
        if cached(&self.file, offset) && cached(&self.file, offset + len - 1) {
            return;
        }
        // Starts reading whatever is not cached and returns.
        let _ = rustix::fs::fadvise(&self.file, offset, Some(nonzero), rustix::fs::Advice::WillNeed);
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len) {
            // File systems without fallocate: a sized file is the best we can do.
            Err(rustix::io::Errno::OPNOTSUPP) => self.file.set_len(len),
            other => other.map_err(io::Error::from),
        }
    }
}

/// [`Storage`] on a real file whose writes are copies into a shared memory
/// map of it (see
/// [`RingConfig::with_mapped_writes`](crate::RingConfig::with_mapped_writes)).
///
/// The map covers the file as it was when mapped; a write beyond it (after
/// [`set_len`](Storage::set_len) extended the file) goes through `pwrite`.
/// Everything else is the plain file's: reads use `pread`, and
/// [`sync_data`](Storage::sync_data) is `fdatasync`, which writes back pages
/// dirtied through the map as well.
pub(crate) struct MappedFile {
    file: FileStorage,
    map: memmap2::MmapRaw,
    /// The `RELEASE_CHUNK` of the map written last. When writes move on to
    /// another, this one's pages are unmapped from the process (they stay in
    /// the page cache), so the process's resident set holds the chunk being
    /// written rather than every page of the ring it ever wrote. `prefetch`
    /// (on the ring's background thread) reads it to unmap what it mapped
    /// in chunks the writer has left meanwhile.
    writing_chunk: AtomicUsize,
    /// The part of the map populated for writing last (`MADV_POPULATE_WRITE`),
    /// from `populated_from` to `populated_to`, and when (a coarse monotonic
    /// clock, in ms). Only one thread writes at a time (the ring writes under
    /// `ring.state`); the atomics are for `&self`.
    populated_from: AtomicUsize,
    populated_to: AtomicUsize,
    populated_at: AtomicU64,
    /// `MADV_POPULATE_WRITE` is unknown to this kernel (before Linux 5.14):
    /// stores fault pages in themselves, as they did before it.
    populate_unsupported: AtomicBool,
}

/// Granularity of releasing written pages of the map.
const RELEASE_CHUNK: usize = 4 << 20;

/// Bytes of the map populated at a time ahead of the writer.
const POPULATE_AHEAD: usize = 64 << 10;

/// A populated range older than this is populated again before a store
/// into it: the kernel may have written back and evicted its pages since.
const POPULATED_FOR_MS: u64 = 10;

fn coarse_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    let (secs, nanos) = (u64::try_from(t.tv_sec).unwrap_or(0), u64::try_from(t.tv_nsec).unwrap_or(0));
    secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
}

impl MappedFile {
    /// Maps `file` whole, shared.
    pub(crate) fn new(file: File) -> io::Result<Self> {
        let len = usize::try_from(file.metadata()?.len()).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
        let map = memmap2::MmapOptions::new().len(len).map_raw(&file)?;
        Ok(MappedFile {
            file: FileStorage { file },
            map,
            writing_chunk: AtomicUsize::new(usize::MAX),
            populated_from: AtomicUsize::new(0),
            populated_to: AtomicUsize::new(0),
            populated_at: AtomicU64::new(0),
            populate_unsupported: AtomicBool::new(false),
        })
    }

    /// Makes sure the pages under `start..end` of the map are in memory and
    /// mapped writable before stores go there, populating up to
    /// `POPULATE_AHEAD` bytes at a time. A store that faults a page in and
    /// fails to read it (a bad sector under a page the kernel had evicted,
    /// or a file cut short) raises `SIGBUS`; `MADV_POPULATE_WRITE` does the
    /// same work and returns that failure as an error instead, so `append`
    /// fails rather than the process.
    fn populate(&self, start: usize, end: usize) -> io::Result<()> {
        if self.populate_unsupported.load(Ordering::Relaxed) {
            return Ok(());
        }
        let now = coarse_ms();
        let (from, to) = (self.populated_from.load(Ordering::Relaxed), self.populated_to.load(Ordering::Relaxed));
        if from <= start
            && end <= to
            && now.saturating_sub(self.populated_at.load(Ordering::Relaxed)) < POPULATED_FOR_MS
        {
            return Ok(());
        }
        // `madvise` wants a start aligned to the page size (the map itself
        // starts on a page).
        let from = start - start % rustix::param::page_size();
        let mut to = end.saturating_add(POPULATE_AHEAD).min(self.map.len());
        let mut result = self.map.advise_range(memmap2::Advice::PopulateWrite, from, to - from);
        if result.is_err() {
            // Perhaps only a page ahead failed: what this write needs?
            to = end;
            result = self.map.advise_range(memmap2::Advice::PopulateWrite, from, to - from);
        }
        match result {
            Ok(()) => {
                self.populated_from.store(from, Ordering::Relaxed);
                self.populated_to.store(to, Ordering::Relaxed);
                self.populated_at.store(now, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                self.populate_unsupported.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.populated_to.store(0, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Unmaps chunk `chunk`'s pages from the process (`MADV_DONTNEED`),
    /// best effort. For a shared file mapping nothing is lost: written
    /// bytes are in the page cache, and a later store maps the page again.
    #[expect(unsafe_code, reason = "madvise(MADV_DONTNEED) on the shared map; see BENCHMARKS.md (resident memory)")]
    fn release(&self, chunk: usize) {
        let off = chunk.saturating_mul(RELEASE_CHUNK);
        if off >= self.map.len() {
            return;
        }
        let len = RELEASE_CHUNK.min(self.map.len() - off);
        // SAFETY: the range is within the map. `MADV_DONTNEED` discards
        // data only for private mappings; this one is shared and backed by
        // the file, so the pages' contents stay in the page cache (dirty
        // ones still dirty) and later accesses see them. No Rust reference
        // into the map exists (it is only written through raw stores in
        // `copy_forward`), so no reference can observe the unmapping; a
        // concurrent store to the range lands either before the pages are
        // unmapped (and is kept) or faults the page back in.
        let _ = unsafe { self.map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, off, len) };
        // The populated range may have lost pages: populate again.
        self.populated_to.store(0, Ordering::Relaxed);
    }
}

/// Copies `src` into `map` at `start` in ascending address order, one
/// volatile store at a time (16-byte stores where aligned on x86-64, 8-byte
/// words elsewhere where aligned, bytes at the ends), so that a process
/// killed in the middle leaves exactly a prefix written: frames before the
/// one being copied whole, later ones untouched, as a `pwrite` cut short
/// leaves them. A `memcpy` may store in any order, and a kill could then
/// leave a later frame of a batch whole behind a torn one: a hole that
/// recovery would count as damage.
///
/// The caller checked that `start + src.len()` is within the map.
#[expect(unsafe_code, reason = "stores into the shared map, measured in BENCHMARKS.md")]
fn copy_forward(src: &[u8], map: &memmap2::MmapRaw, start: usize) {
    debug_assert!(start + src.len() <= map.len());
    // SAFETY: every store is to `map.as_mut_ptr() + start + i` with
    // `start + i < start + src.len() <= map.len()`, inside the mapping
    // (each loop stores only while its whole store fits in `src`), and
    // word and vector stores are to addresses aligned to their size
    // (8- and 16-byte alignment checked before each loop). The vector loads
    // read `src[i..i + 16]`, in bounds by the same check, unaligned, as
    // `_mm_loadu_si128` allows; SSE2 is part of every x86-64 target.
    // No Rust reference into the map is ever made: its memory is only
    // written, through these raw stores, never read or borrowed, so nothing
    // in Rust observes it change. The ring never writes overlapping ranges
    // concurrently (data writes happen under `ring.state`), so stores do not
    // race one another. Another process changing the file underneath is
    // outside Rust's memory model and harmless to raw stores; one cutting
    // the file shorter than the map (ignoring the ring's lock) between
    // `populate` and these stores raises SIGBUS, as documented on
    // `RingConfig::with_mapped_writes`.
    unsafe {
        let dst = map.as_mut_ptr().add(start);
        let mut i = 0;
        while i < src.len() && (dst.add(i) as usize) % 8 != 0 {
            std::ptr::write_volatile(dst.add(i), src[i]);
            i += 1;
        }
        // 16-byte stores halve the store count: 1 KiB appends 7 % faster
        // (BENCHMARKS.md). A vector store is one instruction, so a kill
        // still leaves a prefix.
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{__m128i, _mm_loadu_si128};
            if i + 8 <= src.len() && (dst.add(i) as usize) % 16 != 0 {
                let word = u64::from_ne_bytes(src[i..i + 8].try_into().expect("8 bytes"));
                #[expect(clippy::cast_ptr_alignment, reason = "aligned: the loop above stops at an 8-byte boundary")]
                std::ptr::write_volatile(dst.add(i).cast::<u64>(), word);
                i += 8;
            }
            while i + 16 <= src.len() {
                #[expect(clippy::cast_ptr_alignment, reason = "`_mm_loadu_si128` loads unaligned")]
                let v = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
                #[expect(clippy::cast_ptr_alignment, reason = "aligned: 16-byte boundary reached just above")]
                std::ptr::write_volatile(dst.add(i).cast::<__m128i>(), v);
                i += 16;
            }
        }
        while i + 8 <= src.len() {
            let word = u64::from_ne_bytes(src[i..i + 8].try_into().expect("8 bytes"));
            #[expect(clippy::cast_ptr_alignment, reason = "aligned: the loop above stops at an 8-byte boundary")]
            std::ptr::write_volatile(dst.add(i).cast::<u64>(), word);
            i += 8;
        }
        while i < src.len() {
            std::ptr::write_volatile(dst.add(i), src[i]);
            i += 1;
        }
    }
}

impl Storage for MappedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_at(buf, offset)
    }

    fn prefetch(&self, offset: u64, len: u64) {
        // Into the page cache only: mapping pages writable ahead of reads
        // would grow the resident set, and a write fault marks a shared
        // page dirty, so the kernel would write back bytes nobody changed.
        self.file.prefetch(offset, len);
    }

    fn prefetch_for_write(&self, offset: u64, len: u64) {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if start >= self.map.len() || len == 0 {
            return self.file.prefetch(offset, len);
        }
        let from = start - start % rustix::param::page_size();
        let to = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX)).min(self.map.len());
        // First the pages of just this range are read in (small ones);
        // faulting them in directly would have the kernel read a window
        // around each fault, 8 MiB on the project's machine.
        self.file.prefetch(from as u64, (to - from) as u64);
        // Then they are mapped writable, as `populate` does, so the writer's
        // stores and its own `populate` find them there and take no faults.
        // A failure is the writer's to meet and report.
        let _ = self.map.advise_range(memmap2::Advice::PopulateWrite, from, to - from);
        // The writer may have moved on since the range was asked for (it
        // starts at the head then), out of chunks it has unmapped behind it:
        // pages mapped here in those would stay mapped until the next lap
        // and grow the resident set. Unmap them again.
        let writing = self.writing_chunk.load(Ordering::Relaxed);
        let chunks = self.map.len().div_ceil(RELEASE_CHUNK);
        let first = from / RELEASE_CHUNK;
        // Chunks from the range's first, in the order the writer goes.
        let ahead = |chunk: usize| (chunk + chunks - first) % chunks;
        // A writer in the chunk just before the range has not reached it
        // (its last write ended in the range's first chunk).
        if writing == usize::MAX || ahead(writing) == chunks - 1 {
            return;
        }
        for chunk in first..=(to - 1) / RELEASE_CHUNK {
            if ahead(chunk) < ahead(writing) {
                self.release(chunk);
            }
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if start.checked_add(buf.len()).is_none_or(|end| end > self.map.len()) {
            return self.file.write_at(buf, offset);
        }
        self.populate(start, start + buf.len())?;
        copy_forward(buf, &self.map, start);
        let chunk = start / RELEASE_CHUNK;
        let previous = self.writing_chunk.swap(chunk, Ordering::Relaxed);
        if previous != chunk && previous != usize::MAX {
            self.release(previous);
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn drop_cache(&self) {
        // The kernel keeps pages a process maps: unmap them all first (the
        // ring is poisoned by then, so no append stores into the map).
        for chunk in 0..self.map.len().div_ceil(RELEASE_CHUNK) {
            self.release(chunk);
        }
        self.file.drop_cache();
    }

    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `len` bytes in a fresh directory (kept alive by the first
    /// element), its path, and an open handle for reading and writing.
    fn sized_file(len: u64) -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        FileStorage { file: file.try_clone().unwrap() }.set_len(len).unwrap();
        (dir, path, file)
    }

    #[test]
    fn mapped_file_writes_reach_the_file_and_past_the_map() {
        let (_dir, path, file) = sized_file(8192);
        let m = MappedFile::new(file).unwrap();
        m.write_at(b"mapped", 4090).unwrap();
        // Past the map (the file grew after it was mapped): pwrite.
        m.set_len(16384).unwrap();
        m.write_at(b"grown", 8190).unwrap();
        m.write_at(b"far", 16000).unwrap();
        m.sync_data().unwrap();
        let mut buf = [0u8; 6];
        m.read_at(&mut buf, 4090).unwrap();
        assert_eq!(&buf, b"mapped");
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(on_disk.len(), 16384);
        assert_eq!(&on_disk[4090..4096], b"mapped");
        assert_eq!(&on_disk[8190..8195], b"grown");
        assert_eq!(&on_disk[16000..16003], b"far");
    }

    /// Prefetching changes no byte, on either storage, wherever it starts
    /// and however far it runs: past the end of the map or of the file
    /// is no error and no panic.
    #[test]
    fn prefetch_changes_no_bytes_and_tolerates_any_range() {
        let len = 64 << 10;
        let (_dir, _, file) = sized_file(len);
        let pattern: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&pattern, 0).unwrap();
        let plain = FileStorage { file: file.try_clone().unwrap() };
        let mapped = MappedFile::new(file.try_clone().unwrap()).unwrap();
        for storage in [&plain as &dyn Storage, &mapped] {
            for (offset, n) in [(0, len), (100, 5000), (len - 1, 1 << 20), (len, 4096), (len + 8192, 1), (3, 0)] {
                storage.prefetch(offset, n);
                storage.prefetch_for_write(offset, n);
            }
            let mut back = vec![0; len as usize];
            storage.read_at(&mut back, 0).unwrap();
            assert!(back == pattern, "prefetch changed bytes");
            assert_eq!(storage.len().unwrap(), len, "prefetch changed the length");
        }
        // A write after a prefetch lands as any other.
        mapped.prefetch_for_write(4096, 8192);
        mapped.write_at(b"after", 5000).unwrap();
        let mut back = [0; 5];
        plain.read_at(&mut back, 5000).unwrap();
        assert_eq!(&back, b"after");
    }

    #[test]
    fn mapped_copies_of_every_length_at_every_alignment_are_exact() {
        // `copy_forward` switches between byte, word and vector stores by
        // alignment and length: each copy must land exactly, touching
        // nothing around it.
        let (_dir, _, file) = sized_file(8192);
        let m = MappedFile::new(file).unwrap();
        let src: Vec<u8> = (0..100u8).map(|b| b.wrapping_mul(37).wrapping_add(1)).collect();
        for start in 4000..4032u64 {
            for len in 0..=src.len() {
                m.write_at(&[0xee; 160], 3980).unwrap();
                m.write_at(&src[..len], start).unwrap();
                let mut got = [0u8; 160];
                m.read_at(&mut got, 3980).unwrap();
                let at = (start - 3980) as usize;
                assert_eq!(&got[at..at + len], &src[..len], "start {start} len {len}");
                assert!(got[..at].iter().chain(&got[at + len..]).all(|&b| b == 0xee), "start {start} len {len}");
            }
        }
    }

    #[test]
    fn a_page_the_kernel_cannot_bring_in_fails_the_write_instead_of_raising_sigbus() {
        // The file is cut short under the map, as another process ignoring
        // the ring's lock could do: a store past the end of the file would
        // raise SIGBUS and kill this test. The write must fail instead, and
        // writes to pages that still exist must go on working.
        let (_dir, path, file) = sized_file(1 << 20);
        let m = MappedFile::new(file).unwrap();
        m.write_at(&[1; 100], 0).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(8192).unwrap();
        // Inside the range the first write populated, once that is old
        // enough to be populated again.
        std::thread::sleep(std::time::Duration::from_millis(POPULATED_FOR_MS + 20));
        assert!(m.write_at(&[2; 100], 20_000).is_err());
        // Past it.
        assert!(m.write_at(&[2; 100], 600_000).is_err());
        m.write_at(&[3; 100], 4096).unwrap();
        let mut buf = [0u8; 100];
        m.read_at(&mut buf, 4096).unwrap();
        assert_eq!(buf, [3; 100]);
    }

    #[test]
    fn released_chunks_keep_their_bytes() {
        let (_dir, _, file) = sized_file(3 * RELEASE_CHUNK as u64);
        let m = MappedFile::new(file).unwrap();
        let at = |chunk: usize, k: usize| (chunk * RELEASE_CHUNK + k * 4096) as u64;
        // Chunk 0, then 1 (chunk 0 released), then 2, then 0 again (a lap).
        for (round, chunk) in [0, 1, 2, 0].into_iter().enumerate() {
            for k in 0..8 {
                m.write_at(&[round as u8 + 1; 100], at(chunk, k)).unwrap();
            }
        }
        let expect = [4u8, 2, 3];
        for (chunk, &byte) in expect.iter().enumerate() {
            for k in 0..8 {
                let mut buf = [0u8; 100];
                m.read_at(&mut buf, at(chunk, k)).unwrap();
                assert_eq!(buf, [byte; 100], "chunk {chunk} page {k}");
            }
        }
    }

    /// Resident KiB of `m`'s map in this process (`/proc/self/smaps`).
    fn mapped_kib(m: &MappedFile) -> u64 {
        let header = format!("{:x}-", m.map.as_ptr() as usize);
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let rss = smaps.lines().skip_while(|l| !l.starts_with(&header)).find_map(|l| l.strip_prefix("Rss:"));
        rss.expect("the map in smaps").trim().trim_end_matches("kB").trim().parse().unwrap()
    }

    #[test]
    fn prefetch_for_write_maps_pages_ahead_of_the_writer_and_unmaps_those_it_left_behind() {
        let chunk = RELEASE_CHUNK as u64;
        let (_dir, _, file) = sized_file(4 * chunk);
        let m = MappedFile::new(file).unwrap();
        let mib = 1 << 20;
        // For reading: into the page cache, not into the map.
        m.prefetch(4096, mib);
        assert_eq!(mapped_kib(&m), 0);
        // For writing, before any write: mapped, kept.
        m.prefetch_for_write(4096, mib);
        assert!(mapped_kib(&m) >= 1024, "{} KiB", mapped_kib(&m));
        // Ahead of a writer in chunk 1 (clear of the 64 KiB its write
        // populated): mapped, kept.
        m.write_at(&[1; 100], chunk).unwrap();
        let before = mapped_kib(&m);
        m.prefetch_for_write(chunk + mib / 4, mib);
        assert!(mapped_kib(&m) >= before + 1000, "{before} -> {} KiB", mapped_kib(&m));
        // Asked for at a head the writer has left since: it moved on to
        // chunk 2 and unmapped chunk 1. What the prefetch maps there is
        // unmapped again.
        m.write_at(&[2; 100], 2 * chunk).unwrap();
        let before = mapped_kib(&m);
        m.prefetch_for_write(chunk + 2 * mib, mib);
        assert!(mapped_kib(&m) < before + 256, "{before} -> {} KiB", mapped_kib(&m));
        // Across the end of chunk 2 into chunk 3, the writer in 2: both kept.
        let before = mapped_kib(&m);
        m.prefetch_for_write(3 * chunk - mib / 2, mib);
        assert!(mapped_kib(&m) >= before + 1000, "{before} -> {} KiB", mapped_kib(&m));
        // The writer's last write ended just short of the range (in the
        // chunk before it): the range is ahead, kept.
        m.write_at(&[3; 100], 4 * chunk - 4096).unwrap();
        let before = mapped_kib(&m);
        m.prefetch_for_write(3 * mib, mib);
        assert!(mapped_kib(&m) >= before + 1000, "{before} -> {} KiB", mapped_kib(&m));
        // Around the end of the map: the writer went on to chunk 1, past
        // chunk 0, which the range is in.
        m.write_at(&[4; 100], chunk).unwrap();
        let before = mapped_kib(&m);
        m.prefetch_for_write(mib, mib);
        assert!(mapped_kib(&m) < before + 256, "{before} -> {} KiB", mapped_kib(&m));
    }

    #[test]
    fn dropping_the_cache_keeps_synced_and_unsynced_bytes() {
        // Clean pages are read back from the disk; dirty ones stay cached.
        for mapped in [false, true] {
            let (_dir, _, file) = sized_file(2 * RELEASE_CHUNK as u64);
            let f: Box<dyn Storage> =
                if mapped { Box::new(MappedFile::new(file).unwrap()) } else { Box::new(FileStorage { file }) };
            f.write_at(&[7; 4096], 0).unwrap();
            f.sync_data().unwrap();
            f.write_at(&[9; 4096], RELEASE_CHUNK as u64 + 8192).unwrap();
            f.drop_cache();
            let mut buf = [0u8; 4096];
            f.read_at(&mut buf, 0).unwrap();
            assert_eq!(buf, [7; 4096], "mapped: {mapped}");
            f.read_at(&mut buf, RELEASE_CHUNK as u64 + 8192).unwrap();
            assert_eq!(buf, [9; 4096], "mapped: {mapped}");
            // Writes after the drop land as before.
            f.write_at(&[5; 100], 4096).unwrap();
            f.read_at(&mut buf[..100], 4096).unwrap();
            assert_eq!(buf[..100], [5; 100], "mapped: {mapped}");
        }
    }
}
