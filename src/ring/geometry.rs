//! The ring's geometry: its capacity on disk and the record sizes it
//! holds, fixed at open.

use super::frame::{self, ALIGN, HEADER_LEN, frame_size};
use crate::RingConfig;

/// Largest capacity a ring may have: 256 TiB, beyond any file system's
/// largest file; a larger value is a mistake, and on disk, damage.
pub(crate) const MAX_CAPACITY: u64 = 1 << 48;

/// `capacity` rounded down to whole frame alignment: the data area a ring
/// of that configured capacity gets.
pub(crate) fn round(capacity: u64) -> u64 {
    capacity & !(ALIGN - 1)
}

/// Smallest capacity that holds one largest record wherever the head is:
/// wrapping at the end of the data area may leave fewer bytes than its
/// frame unused before it.
pub(crate) fn min_capacity(max_record_len: usize) -> u64 {
    2 * frame_size(max_record_len)
}

/// The largest payload of which two frames fit in `cap` bytes (see
/// [`min_capacity`]).
pub(crate) fn largest_record(cap: u64) -> usize {
    let two_frames = round(cap / 2).saturating_sub(HEADER_LEN as u64);
    usize::try_from(two_frames).unwrap_or(usize::MAX)
}

/// Whether a capacity read from disk is one a ring can have.
pub(crate) fn possible_on_disk(cap: u64) -> bool {
    cap == round(cap) && (min_capacity(1)..=MAX_CAPACITY).contains(&cap)
}

/// Sizes fixed when the ring is opened.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Bytes of the data area (a multiple of 8): the one on disk, whatever
    /// is configured.
    pub(crate) cap: u64,
    /// Longest payload an append accepts: the configured limit, lowered to
    /// what `cap` holds.
    pub(crate) max_len: usize,
    /// Longest payload a stored frame may have ([`frame::max_stored_len`]).
    pub(crate) stored_len: usize,
}

impl Geometry {
    /// The geometry of a ring of `cap` bytes opened with `config`.
    pub(crate) fn new(cap: u64, config: &RingConfig) -> Self {
        Geometry { cap, max_len: config.max_record_len_in(cap), stored_len: frame::max_stored_len(cap) }
    }
}
