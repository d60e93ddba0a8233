//! The ring's geometry: its capacity on disk and the record sizes it
//! holds, fixed at open.

use super::frame;
use crate::RingConfig;

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
