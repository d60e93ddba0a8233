//! [`Storage`] on a plain file: `pread` and `pwrite`, `fdatasync`, and
//! `fadvise` for the page cache.

use std::fs::File;
use std::io;
use std::num::NonZeroU64;
use std::os::unix::fs::FileExt;

use super::Storage;

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
        // Asking for cached bytes costs the kernel a look-up per page,
        // which adds up over a recovery scan of a large cached ring: a
        // range whose first and last bytes are cached is taken to be.
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
