//! Reading batches of records for shipping.

use bytes::{Bytes, BytesMut};

use super::Inner;
use super::scan::{Found, Scanner, next_lap};
use super::state::Hole;
use crate::stats::LossCause;
use crate::{Error, Result};

/// One record read from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its sequence number.
    pub seq: u64,
    /// When it was appended, nanoseconds since the Unix epoch.
    pub timestamp: u64,
    /// Its bytes, exactly as appended (checked by CRC32C).
    pub payload: Bytes,
}

/// Records read by [`Ring::read`](crate::Ring::read), oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The records, in seq order. Seqs missing between them were lost.
    pub records: Vec<Record>,
    /// The seq to read from next.
    pub next_seq: u64,
}

impl Batch {
    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Payload bytes in the batch.
    pub fn payload_bytes(&self) -> usize {
        self.records.iter().map(|r| r.payload.len()).sum()
    }
}

/// Where a walk found damage that no hole covered yet.
struct NewHole {
    hole: Hole,
}

impl Inner {
    pub(super) fn read(&self, from_seq: u64, max_records: usize, max_bytes: usize) -> Result<Batch> {
        loop {
            let (start_seq, start_pos, head, next_seq, holes) = {
                let st = self.state.lock();
                if st.closed {
                    return Err(Error::Closed);
                }
                let (s, p) = st.start_for(from_seq);
                (s, p, st.head, st.next_seq, st.holes.clone())
            };
            let hole_at = |seq: u64| {
                let at = holes.partition_point(|h| h.last < seq);
                holes.get(at).filter(|h| h.first <= seq).copied()
            };
            let chunk = max_bytes.clamp(64 << 10, 4 << 20);
            let mut scan = Scanner::new(&*self.data, self.cap, self.max_len, chunk);
            let mut out = BytesMut::new();
            let mut found: Vec<(u64, u64, u64, usize, usize)> = Vec::new(); // seq, ts, pos, from, to
            let mut new_holes: Vec<NewHole> = Vec::new();
            let mut p = start_pos;
            let mut expect = start_seq;
            let mut prev_ts = 0;
            let io = |e| Error::io("read", &self.data_path, e);
            while p < head && found.len() < max_records && (found.is_empty() || out.len() < max_bytes) {
                match scan.frame_at(p).map_err(io)? {
                    Found::Wrap => p = next_lap(p, self.cap),
                    Found::Pad(h) => p += h.size(),
                    Found::Record(h) if h.seq >= expect => {
                        if h.seq > expect && hole_at(expect).is_none_or(|k| k.last + 1 < h.seq) {
                            // Intact framing, missing seqs: damage the walk skipped over.
                            new_holes.push(NewHole {
                                hole: Hole {
                                    first: expect,
                                    last: h.seq - 1,
                                    pos: p,
                                    resume_pos: p,
                                    first_ts: prev_ts,
                                    last_ts: h.ts,
                                    cause: LossCause::Corrupted,
                                },
                            });
                        }
                        if h.seq >= from_seq {
                            let payload = scan.payload(&h).map_err(io)?;
                            let from = out.len();
                            out.extend_from_slice(payload);
                            found.push((h.seq, h.ts, p, from, out.len()));
                        }
                        prev_ts = h.ts;
                        expect = h.seq + 1;
                        p += h.size();
                    }
                    Found::Record(_) | Found::Invalid => {
                        if let Some(k) = hole_at(expect).filter(|k| k.resume_pos > p) {
                            p = k.resume_pos;
                            expect = k.last + 1;
                            continue;
                        }
                        let resume = scan.resync(p, head).map_err(io)?;
                        let (q, next) = match resume {
                            Some((q, Found::Record(h) | Found::Pad(h))) => (q, h.seq.max(expect)),
                            _ => (head, next_seq),
                        };
                        if next > expect {
                            new_holes.push(NewHole {
                                hole: Hole {
                                    first: expect,
                                    last: next - 1,
                                    pos: p,
                                    resume_pos: q,
                                    first_ts: prev_ts,
                                    last_ts: prev_ts,
                                    cause: LossCause::Corrupted,
                                },
                            });
                            expect = next;
                        }
                        p = q;
                    }
                }
            }
            let mut st = self.state.lock();
            if st.tail_pos > start_pos {
                // The writer evicted part of what we read while we read it:
                // keep only what was still in the ring afterwards.
                let tail = st.tail_pos;
                let before = found.len();
                found.retain(|r| r.2 >= tail);
                new_holes.retain(|h| h.hole.pos >= tail);
                if found.is_empty() && before > 0 {
                    continue;
                }
            }
            for h in new_holes {
                st.add_hole(h.hole);
            }
            st.note_hint(expect, p);
            drop(st);
            let out = out.freeze();
            let records = found
                .into_iter()
                .map(|(seq, timestamp, _, from, to)| Record {
                    seq,
                    timestamp,
                    payload: out.slice(from..to),
                })
                .collect();
            return Ok(Batch {
                records,
                next_seq: expect.max(from_seq),
            });
        }
    }
}
