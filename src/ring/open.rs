//! Opening a ring directory: lock, create or validate, recover.
//!
//! Creation is safe to interrupt at every step: both files are written
//! under temporary names, synced, then renamed data first, meta second. A
//! data file without a meta file is a ring whose creation (or whose meta
//! file) was lost, and opens with a full recovery scan.

use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::BuildHasher;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::RingCore;
use super::background::Background;
use super::checkpoint::Checkpoints;
use super::commit::GroupCommit;
use super::geometry::Geometry;
use super::meta::{
    Checkpoint, DATA_HEADER_LEN, DATA_OFFSET, DataHeader, FORMAT_VERSION, HeaderError, META_LEN, RESERVATION_OFFSETS,
    Reservation, SLOT_LEN, SYNC_MARK_OFFSETS, decode_sync_mark, encode_sync_mark, pick_checkpoint,
};
use super::recovery::{Input, fresh_state, recover};
use super::reserve::SeqReservation;
use super::storage::{self, FileStorage, MappedFile};
use crate::ring::storage::Storage;
use crate::stats::RecoveryReport;
use crate::sync::atomic::{AtomicBool, AtomicU64};
use crate::sync::{Condvar, LEVEL_RING_LOCK_FILE, LEVEL_RING_STATE, Mutex};
use crate::{Error, Result, RingConfig};

const LOCK_FILE: &str = "ring.lock";
const DATA_FILE: &str = "ring.data";
const META_FILE: &str = "ring.meta";

fn open_rw(path: &Path, create_new: bool) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).create_new(create_new).mode(0o600).open(path)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io("fsync directory", dir, e))
}

/// Writes the header and first checkpoint of a new, empty ring into two
/// empty storages, and syncs them.
fn init_storage(data: &dyn Storage, data_path: &Path, meta: &dyn Storage, meta_path: &Path, cap: u64) -> Result<()> {
    let ring_id = RandomState::new().hash_one(std::process::id()) | 1;
    data.set_len(DATA_OFFSET + cap).map_err(|e| Error::io("preallocate", data_path, e))?;
    data.write_at(&DataHeader { ring_id, capacity: cap }.encode(), 0).map_err(|e| Error::io("write", data_path, e))?;
    data.sync_data().map_err(|e| Error::io("fsync", data_path, e))?;
    meta.set_len(META_LEN).map_err(|e| Error::io("preallocate", meta_path, e))?;
    let ck = Checkpoint { ring_id, generation: 1, capacity: cap, next_seq: 1, tail_seq: 1, ..Checkpoint::default() };
    meta.write_at(&ck.encode(), 0).map_err(|e| Error::io("write", meta_path, e))?;
    meta.sync_data().map_err(|e| Error::io("fsync", meta_path, e))
}

/// Writes a new, empty ring: both files under temporary names, then renamed.
fn create(dir: &Path, data_path: &Path, meta_path: &Path, cap: u64) -> Result<()> {
    let data_tmp = dir.join("ring.data.tmp");
    let meta_tmp = dir.join("ring.meta.tmp");
    // Left by a creation that was interrupted (the directory is locked:
    // no other creation is under way): start again.
    for tmp in [&data_tmp, &meta_tmp] {
        match fs::remove_file(tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("remove", tmp, e)),
            _ => {}
        }
    }
    let result = (|| -> Result<()> {
        let data = open_rw(&data_tmp, true).map_err(|e| Error::io("create", &data_tmp, e))?;
        let meta = open_rw(&meta_tmp, true).map_err(|e| Error::io("create", &meta_tmp, e))?;
        init_storage(&FileStorage { file: data }, &data_tmp, &FileStorage { file: meta }, &meta_tmp, cap)?;
        fs::rename(&data_tmp, data_path).map_err(|e| Error::io("rename", &data_tmp, e))?;
        fs::rename(&meta_tmp, meta_path).map_err(|e| Error::io("rename", &meta_tmp, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&data_tmp);
        let _ = fs::remove_file(&meta_tmp);
    }
    result
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io("create lock file", &path, e))?;
    match fs2::FileExt::try_lock_exclusive(&file) {
        Ok(()) => Ok(file),
        Err(e)
            if e.kind() == io::ErrorKind::WouldBlock
                || e.raw_os_error() == fs2::lock_contended_error().raw_os_error() =>
        {
            Err(Error::Locked { dir: dir.to_path_buf() })
        }
        Err(e) => Err(Error::io("lock", &path, e)),
    }
}

fn not_a_ring(path: &Path, reason: impl Into<String>) -> Error {
    Error::NotARing { path: path.to_path_buf(), reason: reason.into() }
}

fn wrap(config: &RingConfig, path: &Path, storage: Box<dyn Storage>) -> Box<dyn Storage> {
    match &config.storage_wrapper {
        Some(w) => w(path, storage),
        None => storage,
    }
}

/// What the two files say about the ring before recovery.
struct Layout {
    ring_id: u64,
    cap: u64,
    checkpoint: Option<Checkpoint>,
    /// The slot it came from: treated as the durable one, so the next
    /// checkpoints go to the other.
    checkpoint_slot: u64,
    damaged_slots: u8,
    /// The data file's length, if it was short and had to be extended.
    short_len: Option<u64>,
    /// The newest valid seq reservation (0: none).
    reserved: u64,
    reserve_counter: u64,
    /// The largest seq an intact sync mark claims durable (0: none).
    sync_mark: u64,
    /// Bytes of the meta file and the data header that could not be read.
    unreadable: u64,
}

/// Reads the checkpoint slots and the data header, repairing a damaged
/// header from the checkpoint and a short data file by extending it.
fn read_layout(data: &dyn Storage, data_path: &Path, meta: &dyn Storage, meta_path: &Path) -> Result<Layout> {
    read_layout_for(data, data_path, meta, meta_path, true)
}

/// [`read_layout`], repairing nothing unless `repair` (an inspection
/// writes nothing: a short data file reads as zeros past its end, a
/// damaged header is taken from the checkpoint in memory).
fn read_layout_for(
    data: &dyn Storage,
    data_path: &Path,
    meta: &dyn Storage,
    meta_path: &Path,
    repair: bool,
) -> Result<Layout> {
    let mut slots = vec![0u8; META_LEN as usize];
    let meta_len = meta.len().map_err(|e| Error::io("stat", meta_path, e))?;
    let readable = (meta_len as usize).min(slots.len());
    let filled = storage::read_or_fill(meta, &mut slots[..readable], 0).map_err(|e| Error::io("read", meta_path, e))?;
    let mut unreadable = storage::filled_bytes(&filled);
    let picked = pick_checkpoint([&slots[..SLOT_LEN], &slots[SLOT_LEN..2 * SLOT_LEN]]);
    let (damaged_slots, version) = (picked.damaged, picked.version);
    let (ck_slot, ck) = match picked.best {
        Some((slot, c)) => (slot, Some(c)),
        None => (1, None),
    };
    let reservations: Vec<Reservation> =
        RESERVATION_OFFSETS.iter().filter_map(|&at| Reservation::decode(&slots[at as usize..])).collect();
    if let (None, Some(found)) = (&ck, version) {
        return Err(Error::UnsupportedVersion { path: meta_path.to_path_buf(), found, supported: FORMAT_VERSION });
    }

    let data_len = data.len().map_err(|e| Error::io("stat", data_path, e))?;
    let mut header = vec![0u8; (DATA_OFFSET as usize).min(data_len as usize)];
    let filled = storage::read_or_fill(data, &mut header, 0).map_err(|e| Error::io("read", data_path, e))?;
    unreadable += storage::filled_bytes(&filled);
    let mut short_len = None;
    let (ring_id, cap, rewrite_header) = match DataHeader::decode(&header) {
        // Without a checkpoint the header may never have been made durable
        // (a creation whose fsync failed: the kernel marked the page clean
        // without writing it); writing it again lets this open's fsync
        // persist it.
        Ok(h) => (h.ring_id, h.capacity, ck.is_none()),
        Err(HeaderError::Version(found)) => {
            return Err(Error::UnsupportedVersion { path: data_path.to_path_buf(), found, supported: FORMAT_VERSION });
        }
        // A damaged header is repaired from the checkpoint, which repeats it.
        Err(_) => match &ck {
            Some(c) if data_len <= DATA_OFFSET + c.capacity => (c.ring_id, c.capacity, true),
            _ => return Err(not_a_ring(data_path, "no ringship data header")),
        },
    };
    if !super::geometry::possible_on_disk(cap) {
        return Err(not_a_ring(data_path, format!("the header names an impossible capacity of {cap} bytes")));
    }
    if data_len < DATA_OFFSET + cap {
        // Cut short (by a tool, or a file system that lost the
        // preallocation): the missing bytes read as zeros, and recovery
        // counts the records they held.
        if repair {
            data.set_len(DATA_OFFSET + cap).map_err(|e| Error::io("preallocate", data_path, e))?;
        }
        short_len = Some(data_len);
    }
    // Extended only now: a file of another version is refused untouched.
    if meta_len < META_LEN && repair {
        meta.set_len(META_LEN).map_err(|e| Error::io("preallocate", meta_path, e))?;
    }
    if rewrite_header && repair {
        // The header alone: the sync marks after it in the page stay.
        data.write_at(&DataHeader { ring_id, capacity: cap }.encode()[..DATA_HEADER_LEN], 0)
            .map_err(|e| Error::io("write", data_path, e))?;
    }
    let sync_mark =
        SYNC_MARK_OFFSETS.iter().filter_map(|&at| decode_sync_mark(header.get(at as usize..)?)).max().unwrap_or(0);
    let mine = reservations.iter().filter(|r| r.ring_id == ring_id);
    Ok(Layout {
        ring_id,
        cap,
        checkpoint: ck.filter(|c| c.ring_id == ring_id && c.capacity == cap),
        checkpoint_slot: ck_slot,
        damaged_slots,
        short_len,
        reserved: mine.clone().map(|r| r.seq_reserved).max().unwrap_or(0),
        reserve_counter: mine.map(|r| r.counter).max().unwrap_or(0),
        sync_mark,
        unreadable,
    })
}

/// Creates the ring if the directory holds none; returns whether it did.
fn create_if_absent(dir: &Path, data_path: &Path, meta_path: &Path, cap: u64) -> Result<bool> {
    match (data_path.exists(), meta_path.exists()) {
        (false, true) => Err(not_a_ring(data_path, "ring.meta is present but ring.data is missing")),
        (false, false) => {
            for entry in fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))? {
                let name = entry.map_err(|e| Error::io("list", dir, e))?.file_name();
                if !matches!(name.to_str(), Some(LOCK_FILE | "ring.data.tmp" | "ring.meta.tmp")) {
                    return Err(not_a_ring(dir, "the directory is not empty and holds no ring"));
                }
            }
            create(dir, data_path, meta_path, cap)?;
            Ok(true)
        }
        _ => {
            // A creation killed between its two renames leaves `ring.meta.tmp`
            // beside `ring.data`; recovery writes a new `ring.meta`. The
            // directory is locked, so no creation is under way.
            for tmp in ["ring.data.tmp", "ring.meta.tmp"].map(|n| dir.join(n)) {
                match fs::remove_file(&tmp) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io("remove", &tmp, e)),
                    _ => {}
                }
            }
            Ok(false)
        }
    }
}

pub(super) fn open(dir: &Path, config: RingConfig) -> Result<(RingCore, RecoveryReport)> {
    config.validate()?;
    // A file where the directory should be (or under a path component)
    // makes the create fail with "File exists", which names no culprit.
    let file_in_the_way = dir.ancestors().find(|p| p.exists()).filter(|p| !p.is_dir());
    if let Some(file) = file_in_the_way {
        let why = if file == dir {
            "it is a file, not a directory".to_owned()
        } else {
            format!("{} is a file", file.display())
        };
        return Err(not_a_ring(dir, &why));
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("create ring directory", dir, e))?;
    if !dir.is_dir() {
        return Err(not_a_ring(dir, "it is not a directory"));
    }
    let lock_file = lock_dir(dir)?;
    let data_path = dir.join(DATA_FILE);
    let meta_path = dir.join(META_FILE);
    let created = create_if_absent(dir, &data_path, &meta_path, config.data_capacity())?;

    let data_file = open_rw(&data_path, false).map_err(|e| Error::io("open", &data_path, e))?;
    let meta_file = match open_rw(&meta_path, false) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => open_rw(&meta_path, true),
        other => other,
    }
    .map_err(|e| Error::io("open", &meta_path, e))?;
    let data: Box<dyn Storage> = if config.mapped_writes {
        Box::new(MappedFile::new(data_file).map_err(|e| Error::io("map", &data_path, e))?)
    } else {
        storage::no_read_ahead(&data_file);
        Box::new(FileStorage { file: data_file })
    };
    let data = wrap(&config, &data_path, data);
    let meta = wrap(&config, &meta_path, Box::new(FileStorage { file: meta_file }));

    let paths = Paths { dir: dir.to_path_buf(), data: data_path, meta: meta_path };
    open_storages(paths, data, meta, config, created, Some(lock_file))
}

/// Where a ring's storages live, for error messages.
struct Paths {
    dir: PathBuf,
    data: PathBuf,
    meta: PathBuf,
}

/// Opens a ring on two storages that may be empty (a new in-memory or
/// simulated ring), without a directory or a lock.
#[cfg(any(test, feature = "testing"))]
pub(super) fn open_on(
    data: Box<dyn Storage>,
    meta: Box<dyn Storage>,
    config: RingConfig,
) -> Result<(RingCore, RecoveryReport)> {
    config.validate()?;
    let dir = PathBuf::from("<storage>");
    let paths = Paths { data: dir.join(DATA_FILE), meta: dir.join(META_FILE), dir };
    // New storages, or a creation interrupted before its header and first
    // checkpoint were written, are (re)initialised.
    // (The header alone: sync marks after it may have reached the disk
    // when the header did not.)
    let empty =
        is_blank(&*data, &paths.data, DATA_HEADER_LEN as u64)? && is_blank(&*meta, &paths.meta, 2 * SLOT_LEN as u64)?;
    if empty {
        init_storage(&*data, &paths.data, &*meta, &paths.meta, config.data_capacity())?;
    }
    open_storages(paths, data, meta, config, empty, None)
}

/// Whether the first `len` bytes of `storage` (as far as it goes) are zero.
#[cfg(any(test, feature = "testing"))]
fn is_blank(storage: &dyn Storage, path: &Path, len: u64) -> Result<bool> {
    let have = storage.len().map_err(|e| Error::io("stat", path, e))?.min(len);
    let mut buf = vec![0u8; have as usize];
    storage::read_or_fill(storage, &mut buf, 0).map_err(|e| Error::io("read", path, e))?;
    Ok(buf.iter().all(|&b| b == 0))
}

fn open_storages(
    paths: Paths,
    data: Box<dyn Storage>,
    meta: Box<dyn Storage>,
    config: RingConfig,
    created: bool,
    lock_file: Option<File>,
) -> Result<(RingCore, RecoveryReport)> {
    let Paths { dir, data: data_path, meta: meta_path } = paths;
    let layout = read_layout(&*data, &data_path, &*meta, &meta_path)?;
    let boot_id = data.boot_id();
    let (state, report) = recover_state(&*data, &data_path, &layout, &config, created, boot_id)?;
    let Layout { ring_id, cap, checkpoint: ck, checkpoint_slot, reserve_counter, .. } = layout;
    // Both marks claim what recovery took as durable: never more than
    // before (this open may fail before its checkpoint settles the seqs it
    // skipped), and no more than the checkpoint says if a failed fsync
    // voided them. A failed write leaves a mark that claims no more than
    // before either (its checksum fails, or it is as it was).
    let claim = ck.clone().unwrap_or_default().durable_claim(layout.sync_mark, layout.reserved);
    for at in SYNC_MARK_OFFSETS {
        data.write_at(&encode_sync_mark(claim), at).map_err(|e| Error::io("write", &data_path, e))?;
    }
    if let Err(e) = data.sync_data() {
        distrust_cache(&*data, &*meta, ck.as_ref().map(|ck| (checkpoint_slot, ck)));
        return Err(Error::io("fsync", &data_path, e));
    }
    let mut state = state;
    // Recovery moved next_seq past every seq that may have been handed out.
    // The reservation read back may not be durable (its fsync may have
    // failed before a process crash), so none is trusted for new seqs: the
    // first append writes and fsyncs a fresh one.
    state.seq_reserved = state.next_seq - 1;
    state.reserve_writes = reserve_counter;
    // Open prefetches from the head itself (below); appends ask again
    // from the next prefetch step on.
    state.prefetch_step = state.head / super::background::PREFETCH_STEP;
    let generation = ck.map_or(1, |c| c.generation);
    let paths = Paths { dir, data: data_path, meta: meta_path };
    let identity = (ring_id, cap, boot_id, generation, checkpoint_slot);
    let inner = assemble(paths, (data, meta), config, identity, state, report.unreadable_bytes, lock_file);
    if !created {
        // The newest checkpoint may never have been fsynced (acks write
        // theirs without one; a crash can come between close's clean
        // checkpoint and its fsync), and the slot the next one goes to may
        // hold the last durable checkpoint: make the newest durable before
        // overwriting that (docs/FORMAT.md, checkpoint slots).
        inner.sync_meta()?;
    }
    inner.write_checkpoint(false)?;
    inner.sync_meta()?;
    inner.prefetch_ahead();
    Ok((inner, report))
}

/// The ring's core from what an open found: its files, the identity the
/// layout read (ring id, capacity, boot id, checkpoint generation and
/// slot), the state recovered, and the bytes that could not be read.
fn assemble(
    paths: Paths,
    (data, meta): (Box<dyn Storage>, Box<dyn Storage>),
    config: RingConfig,
    (ring_id, cap, boot_id, generation, checkpoint_slot): (u64, u64, Option<[u8; 16]>, u64, u64),
    state: super::state::RingState,
    unreadable: u64,
    lock_file: Option<File>,
) -> RingCore {
    let Paths { dir, data: data_path, meta: meta_path } = paths;
    let (written, head) = (state.next_seq - 1, state.head);
    RingCore {
        dir,
        data_path,
        meta_path,
        data,
        meta,
        geometry: Geometry::new(cap, &config),
        reservation: SeqReservation::new(config.seq_reservation),
        config,
        ring_id,
        boot_id,
        checkpoints: Checkpoints::new(generation, checkpoint_slot),
        state: Mutex::new(LEVEL_RING_STATE, "ring.state", state),
        room: Condvar::new(),
        flights: Condvar::new(),
        background: Background::new(head),
        read_ahead: AtomicU64::new(0),
        unreadable_bytes: AtomicU64::new(unreadable),
        commit: GroupCommit::new(written, head),
        poisoned: AtomicBool::new(false),
        lock_file: Mutex::new(LEVEL_RING_LOCK_FILE, "ring.lock_file", lock_file),
    }
}

/// The state of the ring on `data`: a fresh one for a ring just created,
/// else what recovery finds, with what the open found in the report.
fn recover_state(
    data: &dyn Storage,
    data_path: &Path,
    layout: &Layout,
    config: &RingConfig,
    created: bool,
    boot_id: Option<[u8; 16]>,
) -> Result<(super::state::RingState, RecoveryReport)> {
    let cap = layout.cap;
    let (state, mut report) = if created {
        (fresh_state(cap, config.max_loss_ranges), RecoveryReport::default())
    } else {
        recover(Input {
            data,
            cap,
            max_len: super::frame::max_stored_len(cap),
            max_losses: config.max_loss_ranges,
            checkpoint: layout.checkpoint.clone(),
            boot_now: boot_id,
            reserved: layout.reserved,
            sync_mark: layout.sync_mark,
            data_whole: layout.short_len.is_none(),
        })
        .map_err(|e| Error::io("recover", data_path, e))?
    };
    report.created = created;
    report.damaged_checkpoint_slots = layout.damaged_slots;
    report.capacity_mismatch = cap != config.data_capacity();
    report.data_file_extended_from = layout.short_len;
    report.unreadable_bytes += layout.unreadable;
    Ok((state, report))
}

/// After a failed fsync of the data file during an open: the page cache
/// may hold bytes the disk does not, and the cache's view is what recovery
/// read. The next open must read the disk, and must assume writes were
/// lost, as after a power loss: the checkpoint is written again without a
/// boot id (to the other slot, in the page cache, which a crash of this
/// process keeps), then, if that worked, the data file's cached pages are
/// dropped.
fn distrust_cache(data: &dyn Storage, meta: &dyn Storage, checkpoint: Option<(u64, &Checkpoint)>) {
    if let Some((slot, ck)) = checkpoint {
        // (The sync marks this open wrote claim no more than before: the
        // failed fsync voids none of them.)
        let marked = Checkpoint { boot_id: None, generation: ck.generation + 1, ..ck.clone() };
        if meta.write_at(&marked.encode(), (1 - slot) * SLOT_LEN as u64).is_err() {
            // Without the mark the next open trusts the page cache as after
            // a crash of the process: it must find it as it was.
            return;
        }
    }
    data.drop_cache();
}

/// A storage that reads and never writes: an inspection's. Reads past the
/// end of a file cut short return zeros, as the file extended would.
#[cfg(feature = "inspect")]
struct ReadOnly(FileStorage);

#[cfg(feature = "inspect")]
impl Storage for ReadOnly {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = self.0.len()?;
        let have = usize::try_from(len.saturating_sub(offset)).unwrap_or(usize::MAX).min(buf.len());
        self.0.read_at(&mut buf[..have], offset)?;
        buf[have..].fill(0);
        Ok(())
    }

    fn write_at(&self, _: &[u8], _: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "an inspection writes nothing"))
    }

    fn sync_data(&self) -> io::Result<()> {
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        self.0.len()
    }

    fn set_len(&self, _: u64) -> io::Result<()> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "an inspection writes nothing"))
    }
}

/// What an inspection found beside the ring's state.
#[cfg(feature = "inspect")]
pub(crate) struct Opened {
    pub(crate) report: RecoveryReport,
    pub(crate) checkpoint: Option<Checkpoint>,
}

/// Opens the ring in `dir` to look at it: the same recovery as an open,
/// in memory, without the directory's lock and without writing a byte
/// (the files are opened read-only). For a ring whose owner is running,
/// or a copy taken off a broken machine.
///
/// # Errors
/// [`Error::NotARing`] for a path that is no directory or holds no ring,
/// [`Error::UnsupportedVersion`], or [`Error::Io`].
#[cfg(feature = "inspect")]
pub(super) fn open_read_only(dir: &Path) -> Result<(RingCore, Opened)> {
    if !dir.exists() {
        return Err(not_a_ring(dir, "it does not exist"));
    }
    if !dir.is_dir() {
        return Err(not_a_ring(dir, "it is a file, not a directory"));
    }
    let (data_path, meta_path) = (dir.join(DATA_FILE), dir.join(META_FILE));
    for path in [&data_path, &meta_path] {
        if !path.is_file() {
            return Err(not_a_ring(
                dir,
                format!("it has no {}", path.file_name().unwrap_or_default().to_string_lossy()),
            ));
        }
    }
    let data_file = File::open(&data_path).map_err(|e| Error::io("open", &data_path, e))?;
    let meta_file = File::open(&meta_path).map_err(|e| Error::io("open", &meta_path, e))?;
    let data: Box<dyn Storage> = Box::new(ReadOnly(FileStorage { file: data_file }));
    let meta: Box<dyn Storage> = Box::new(ReadOnly(FileStorage { file: meta_file }));
    let layout = read_layout_for(&*data, &data_path, &*meta, &meta_path, false)?;
    let config = RingConfig::default().capacity(layout.cap);
    let boot_id = data.boot_id();
    let (state, report) = recover_state(&*data, &data_path, &layout, &config, false, boot_id)?;
    let Layout { ring_id, cap, checkpoint: ck, checkpoint_slot, .. } = layout;
    let generation = ck.as_ref().map_or(1, |c| c.generation);
    let paths = Paths { dir: dir.to_path_buf(), data: data_path, meta: meta_path };
    let identity = (ring_id, cap, boot_id, generation, checkpoint_slot);
    let inner = assemble(paths, (data, meta), config, identity, state, report.unreadable_bytes, None);
    Ok((inner, Opened { report, checkpoint: ck }))
}
