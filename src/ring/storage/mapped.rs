//! [`Storage`] whose writes are copies into a shared memory map of the
//! file: the opt-in write path, and the only `unsafe` code of the crate.

use std::fs::File;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::{FileStorage, Storage};

/// [`Storage`] on a real file whose writes are copies into a shared memory
/// map of it (see
/// [`RingConfig::mapped_writes`](crate::RingConfig::mapped_writes)).
///
/// The map covers the file as it was when mapped; a write beyond it (after
/// [`set_len`](Storage::set_len) extended the file) goes through `pwrite`.
/// Everything else is the plain file's: reads use `pread`, and
/// [`sync_data`](Storage::sync_data) is `fdatasync`, which writes back pages
/// dirtied through the map as well.
pub(crate) struct MappedFile {
    file: FileStorage,
    pub(super) map: memmap2::MmapRaw,
    /// The `RELEASE_CHUNK` of the map written last. When writes move on to
    /// another, this one's pages are unmapped from the process (they stay in
    /// the page cache), so the process's resident set holds the chunk being
    /// written rather than every page of the ring it ever wrote. `prefetch`
    /// (on the ring's background thread) reads it to unmap what it mapped
    /// in chunks the writer has left meanwhile.
    writing_chunk: AtomicUsize,
    /// The part of the map populated for writing last (`MADV_POPULATE_WRITE`),
    /// from `populated_from` to `populated_to`, and when (a coarse monotonic
    /// clock, in ms). Appends on several threads write at once, each its
    /// own span: a thread reading one of these while another stores them
    /// only populates again, or leaves its stores to fault the pages in.
    populated_from: AtomicUsize,
    populated_to: AtomicUsize,
    populated_at: AtomicU64,
    /// `MADV_POPULATE_WRITE` is unknown to this kernel (before Linux 5.14):
    /// stores fault pages in themselves, as they did before it.
    populate_unsupported: AtomicBool,
}

/// Granularity of releasing written pages of the map.
pub(super) const RELEASE_CHUNK: usize = 4 << 20;

/// Bytes of the map populated at a time ahead of the writer.
const POPULATE_AHEAD: usize = 64 << 10;

/// A populated range older than this is populated again before a store
/// into it: the kernel may have written back and evicted its pages since.
pub(super) const POPULATED_FOR_MS: u64 = 10;

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
    // concurrently (each append writes only the span it reserved under
    // `ring.state`, and the spans of appends in flight are disjoint), and
    // these stores never leave `start..start + src.len()`, so stores do
    // not race one another. Another process changing the file underneath is
    // outside Rust's memory model and harmless to raw stores; one cutting
    // the file shorter than the map (ignoring the ring's lock) between
    // `populate` and these stores raises SIGBUS, as documented on
    // `RingConfig::mapped_writes`.
    unsafe {
        let dst = map.as_mut_ptr().add(start);
        let mut i = 0;
        while i < src.len() && (dst.add(i) as usize) % 8 != 0 {
            std::ptr::write_volatile(dst.add(i), src[i]);
            i += 1;
        }
        // 16-byte stores halve the store count. A vector store is one
        // instruction, so a kill still leaves a prefix.
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
        // faulting them in directly would have the kernel read its whole
        // read-around window (the device's, which can be megabytes) at
        // each fault.
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
