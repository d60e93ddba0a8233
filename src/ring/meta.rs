//! The data file header and the checkpoint slots of the meta file.
//!
//! Byte layouts are in docs/FORMAT.md; this module is their only reader and
//! writer.

use crate::stats::{LossCause, LossList, LossRange};

/// Version of the on-disk format this build reads and writes.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Magic of the data file header.
pub(crate) const DATA_MAGIC: &[u8; 8] = b"RSHPDATA";
/// Magic of a checkpoint slot.
pub(crate) const META_MAGIC: &[u8; 8] = b"RSHPMETA";
/// The data area starts here in the data file.
pub(crate) const DATA_OFFSET: u64 = 4096;
/// Size of one checkpoint slot; the meta file holds two.
pub(crate) const SLOT_LEN: usize = 4096;
const DATA_HEADER_LEN: usize = 36;
const LOSS_LEN: usize = 56;
const FIXED_LEN: usize = 184;

/// The data file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DataHeader {
    pub(crate) ring_id: u64,
    pub(crate) capacity: u64,
}

/// Why a header could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HeaderError {
    BadMagic,
    Version(u32),
    Checksum,
}

impl DataHeader {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(DATA_OFFSET as usize);
        b.extend_from_slice(DATA_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&(DATA_HEADER_LEN as u32).to_le_bytes());
        b.extend_from_slice(&self.ring_id.to_le_bytes());
        b.extend_from_slice(&self.capacity.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.resize(DATA_OFFSET as usize, 0);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < DATA_HEADER_LEN || &b[0..8] != DATA_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if crc32c::crc32c(&b[..32]) != u32_at(b, 32) {
            return Err(HeaderError::Checksum);
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        Ok(DataHeader { ring_id: u64_at(b, 16), capacity: u64_at(b, 24) })
    }
}

/// One checkpoint: everything recovery cannot derive from the frames.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) ring_id: u64,
    pub(crate) generation: u64,
    pub(crate) capacity: u64,
    pub(crate) next_seq: u64,
    pub(crate) head_pos: u64,
    pub(crate) tail_seq: u64,
    pub(crate) tail_pos: u64,
    pub(crate) tail_ts: u64,
    pub(crate) settled_seq: u64,
    pub(crate) settled_pos: u64,
    pub(crate) ack_seq: u64,
    pub(crate) durable_seq: u64,
    pub(crate) rejected: u64,
    pub(crate) acked: u64,
    pub(crate) overwritten: u64,
    pub(crate) overwritten_bytes: u64,
    pub(crate) corrupted: u64,
    pub(crate) lost_unsynced: u64,
    pub(crate) clean: bool,
    pub(crate) boot_id: Option<[u8; 16]>,
    pub(crate) losses: LossList,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

impl Checkpoint {
    /// Which slot this checkpoint goes to.
    pub(crate) fn slot(&self) -> u64 {
        self.generation % 2
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SLOT_LEN);
        let len = FIXED_LEN + self.losses.ranges.len() * LOSS_LEN;
        b.extend_from_slice(META_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&(len as u32).to_le_bytes());
        for v in [
            self.ring_id,
            self.generation,
            self.capacity,
            self.next_seq,
            self.head_pos,
            self.tail_seq,
            self.tail_pos,
            self.tail_ts,
            self.settled_seq,
            self.settled_pos,
            self.ack_seq,
            self.durable_seq,
            self.rejected,
            self.acked,
            self.overwritten,
            self.overwritten_bytes,
            self.corrupted,
            self.lost_unsynced,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let flags = u32::from(self.clean) | (u32::from(self.boot_id.is_some()) << 1);
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&self.boot_id.unwrap_or_default());
        b.extend_from_slice(&(self.losses.ranges.len() as u32).to_le_bytes());
        debug_assert_eq!(b.len(), FIXED_LEN);
        for r in &self.losses.ranges {
            for v in [r.first_seq, r.last_seq, r.first_ts, r.last_ts, r.count, r.bytes] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.push(r.cause.code());
            b.extend_from_slice(&[0; 7]);
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        debug_assert!(b.len() <= SLOT_LEN);
        b
    }

    pub(crate) fn decode(b: &[u8]) -> Result<Self, HeaderError> {
        if b.len() < FIXED_LEN + 4 || &b[0..8] != META_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let len = u32_at(b, 12) as usize;
        if !(FIXED_LEN..=SLOT_LEN - 4).contains(&len)
            || b.len() < len + 4
            || crc32c::crc32c(&b[..len]) != u32_at(b, len)
        {
            return Err(HeaderError::Checksum);
        }
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(HeaderError::Version(version));
        }
        let v = |i: usize| u64_at(b, 16 + 8 * i);
        let flags = u32_at(b, 160);
        let n = u32_at(b, 180) as usize;
        if FIXED_LEN + n * LOSS_LEN != len {
            return Err(HeaderError::Checksum);
        }
        let mut losses = LossList::default();
        for i in 0..n {
            let at = FIXED_LEN + i * LOSS_LEN;
            let cause = LossCause::from_code(b[at + 48]).ok_or(HeaderError::Checksum)?;
            losses.ranges.push(LossRange {
                first_seq: u64_at(b, at),
                last_seq: u64_at(b, at + 8),
                first_ts: u64_at(b, at + 16),
                last_ts: u64_at(b, at + 24),
                count: u64_at(b, at + 32),
                bytes: u64_at(b, at + 40),
                cause,
            });
        }
        Ok(Checkpoint {
            ring_id: v(0),
            generation: v(1),
            capacity: v(2),
            next_seq: v(3),
            head_pos: v(4),
            tail_seq: v(5),
            tail_pos: v(6),
            tail_ts: v(7),
            settled_seq: v(8),
            settled_pos: v(9),
            ack_seq: v(10),
            durable_seq: v(11),
            rejected: v(12),
            acked: v(13),
            overwritten: v(14),
            overwritten_bytes: v(15),
            corrupted: v(16),
            lost_unsynced: v(17),
            clean: flags & 1 != 0,
            boot_id: (flags & 2 != 0).then(|| b[164..180].try_into().expect("16 bytes")),
            losses,
        })
    }
}

/// Picks the newest valid slot. Returns it, how many slots were damaged,
/// and the first version error seen (a slot of an unknown version).
pub(crate) fn pick_checkpoint(slots: [&[u8]; 2]) -> (Option<Checkpoint>, u8, Option<u32>) {
    let mut best: Option<Checkpoint> = None;
    let mut damaged = 0;
    let mut version = None;
    for s in slots {
        match Checkpoint::decode(s) {
            Ok(c) => {
                if best.as_ref().is_none_or(|b| c.generation > b.generation) {
                    best = Some(c);
                }
            }
            Err(HeaderError::Version(v)) => version = Some(v),
            Err(_) if s.iter().all(|&x| x == 0) => {}
            Err(_) => damaged += 1,
        }
    }
    (best, damaged, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        let mut losses = LossList::default();
        losses.add(
            LossRange {
                first_seq: 3,
                last_seq: 9,
                first_ts: 1,
                last_ts: 2,
                count: 7,
                bytes: 700,
                cause: LossCause::Overwritten,
            },
            8,
        );
        Checkpoint {
            ring_id: 42,
            generation: 5,
            capacity: 1 << 20,
            next_seq: 100,
            boot_id: Some([7; 16]),
            clean: true,
            losses,
            ..Checkpoint::default()
        }
    }

    #[test]
    fn checkpoint_round_trips() {
        let c = sample();
        assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn newer_valid_slot_wins_and_damage_is_counted() {
        let a = sample();
        let mut b = sample();
        b.generation = 6;
        let (ea, mut eb) = (a.encode(), b.encode());
        assert_eq!(pick_checkpoint([&ea, &eb]).0.unwrap().generation, 6);
        eb[50] ^= 1;
        let (best, damaged, _) = pick_checkpoint([&ea, &eb]);
        assert_eq!((best.unwrap().generation, damaged), (5, 1));
    }

    #[test]
    fn data_header_round_trips_and_rejects_other_versions() {
        let h = DataHeader { ring_id: 9, capacity: 4096 };
        let mut e = h.encode();
        assert_eq!(DataHeader::decode(&e), Ok(h));
        e[8] = 2;
        assert_eq!(DataHeader::decode(&e), Err(HeaderError::Checksum));
        let crc = crc32c::crc32c(&e[..32]);
        e[32..36].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(DataHeader::decode(&e), Err(HeaderError::Version(2)));
        e[0] = b'X';
        assert_eq!(DataHeader::decode(&e), Err(HeaderError::BadMagic));
    }
}
