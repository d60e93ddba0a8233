//! Model-based test: random sequences of append / read / ack / sync /
//! reopen against a plain in-memory model of the ring, checking every
//! record's bytes and every counter after each step.
//!
//! The model knows nothing of files, frames or recovery: it keeps the
//! records that must still be in the ring, evicting the oldest by the same
//! size rule the ring documents (frames of `round_up(32 + len, 8)` bytes,
//! never straddling the end of the ring).

mod common;

use std::collections::VecDeque;

use common::{TempRing, assert_identity, payload};
use proptest::prelude::*;
use ringship::{LossCause, Ring, RingConfig, SyncPolicy};

const CASES: u32 = 64;
const MAX_OPS: usize = 80;
/// The seq reservation, the most a reopen after a crash skips: small, so
/// that renewals, and skips across several crashes, are exercised.
const RESERVATION: u64 = 64;

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    AppendBatch(Vec<usize>),
    Read { skip: u64, max_records: usize, max_bytes: usize },
    Ack(u8),
    Sync,
    Reopen { clean: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..300).prop_map(Op::Append),
        2 => proptest::collection::vec(0usize..200, 1..8).prop_map(Op::AppendBatch),
        3 => (0u64..20, 1usize..20, 1usize..2000).prop_map(|(skip, max_records, max_bytes)| Op::Read { skip, max_records, max_bytes }),
        3 => any::<u8>().prop_map(Op::Ack),
        1 => Just(Op::Sync),
        1 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
    ]
}

struct ModelRecord {
    seq: u64,
    pos: u64,
    size: u64,
    payload: Vec<u8>,
}

#[derive(Default)]
struct Model {
    cap: u64,
    head: u64,
    next_seq: u64,
    /// Seqs passed over by reopens after unclean shutdowns.
    skipped: u64,
    ack_seq: u64,
    acked: u64,
    overwritten: u64,
    overwritten_bytes: u64,
    live: VecDeque<ModelRecord>,
}

impl Model {
    fn append(&mut self, payload: Vec<u8>) {
        let size = (32 + payload.len() as u64).next_multiple_of(8);
        if self.head % self.cap + size > self.cap {
            self.head = (self.head / self.cap + 1) * self.cap;
        }
        let end = self.head + size;
        while let Some(front) = self.live.front() {
            if end - front.pos <= self.cap {
                break;
            }
            if front.seq > self.ack_seq {
                self.overwritten += 1;
                self.overwritten_bytes += front.size;
            }
            self.live.pop_front();
        }
        self.live.push_back(ModelRecord { seq: self.next_seq, pos: self.head, size, payload });
        self.head = end;
        self.next_seq += 1;
    }

    fn ack(&mut self, seq: u64) {
        if seq <= self.ack_seq {
            return;
        }
        let newly = self.live.iter().filter(|r| r.seq > self.ack_seq && r.seq <= seq).count() as u64;
        self.acked += newly;
        self.ack_seq = seq;
    }

    fn pending(&self) -> impl Iterator<Item = &ModelRecord> {
        self.live.iter().filter(|r| r.seq > self.ack_seq)
    }
}

fn check(ring: &Ring, model: &Model) -> Result<(), TestCaseError> {
    let s = ring.stats();
    assert_identity(&s);
    prop_assert_eq!(s.last_seq, model.next_seq - 1);
    prop_assert_eq!(s.appended, model.next_seq - 1 - model.skipped);
    prop_assert_eq!(s.seqs_skipped, model.skipped);
    prop_assert_eq!(s.acked, model.acked);
    prop_assert_eq!(s.overwritten, model.overwritten, "stats {:?}", s);
    // Exact after crashes too: the padding at lap ends is not counted.
    prop_assert_eq!(s.overwritten_bytes, model.overwritten_bytes, "stats {:?}", s);
    prop_assert_eq!(s.pending, model.pending().count() as u64);
    prop_assert_eq!((s.corrupted, s.rejected, s.lost_unsynced), (0, 0, 0));
    let (skipped, lost): (Vec<_>, Vec<_>) = ring.losses().into_iter().partition(|l| l.cause == LossCause::Skipped);
    prop_assert_eq!(lost.iter().map(|l| l.count).sum::<u64>(), model.overwritten);
    prop_assert_eq!(skipped.iter().map(|l| l.count).sum::<u64>(), model.skipped);
    // Everything pending reads back byte-exact, in order.
    let batch = ring.read(model.ack_seq + 1, usize::MAX, usize::MAX).unwrap();
    let want: Vec<u64> = model.pending().map(|r| r.seq).collect();
    let got: Vec<u64> = batch.records.iter().map(|r| r.seq).collect();
    prop_assert_eq!(got, want);
    for (g, w) in batch.records.iter().zip(model.pending()) {
        prop_assert!(g.payload[..] == w.payload[..], "payload of seq {} differs", g.seq);
    }
    let used = model.live.front().map_or(0, |f| model.head - f.pos);
    prop_assert!(s.used_bytes >= used && s.used_bytes <= model.cap, "used {} model {}", s.used_bytes, used);
    let _ = model.live.iter().map(|r| r.size).sum::<u64>();
    Ok(())
}

fn run(cap: u64, ops: Vec<Op>, mapped: bool) -> Result<(), TestCaseError> {
    let t = TempRing::new();
    let config = RingConfig::default()
        .capacity(cap)
        .max_record_len(400)
        .sync(SyncPolicy::Never)
        .seq_reservation(RESERVATION)
        .mapped_writes(mapped);
    let mut ring = Some(Ring::open(&t.dir, config.clone()).unwrap().0);
    let mut model = Model { cap, next_seq: 1, ..Model::default() };
    let mut n = 0u64;
    for op in ops {
        let r = ring.as_ref().unwrap();
        match op {
            Op::Append(len) => {
                n += 1;
                let p = payload(n, len);
                prop_assert_eq!(r.append(&p).unwrap(), model.next_seq);
                model.append(p);
            }
            Op::AppendBatch(lens) => {
                let ps: Vec<Vec<u8>> = lens
                    .iter()
                    .map(|&l| {
                        n += 1;
                        payload(n, l)
                    })
                    .collect();
                let (first, last) = r.append_batch(&ps).unwrap();
                prop_assert_eq!((first, last), (model.next_seq, model.next_seq + ps.len() as u64 - 1));
                for p in ps {
                    model.append(p);
                }
            }
            Op::Read { skip, max_records, max_bytes } => {
                let from = model.ack_seq + 1 + skip;
                let b = r.read(from, max_records, max_bytes).unwrap();
                let want: Vec<_> = model.live.iter().filter(|m| m.seq >= from).collect();
                prop_assert!(b.records.len() <= max_records);
                prop_assert!(b.records.len() <= want.len());
                prop_assert_eq!(b.records.is_empty(), want.is_empty());
                for (g, w) in b.records.iter().zip(&want) {
                    prop_assert_eq!(g.seq, w.seq);
                    prop_assert!(g.payload[..] == w.payload[..], "payload of seq {} differs", g.seq);
                }
                if let Some(last) = b.records.last() {
                    prop_assert_eq!(b.next_seq, last.seq + 1);
                }
            }
            Op::Ack(frac) => {
                let last = model.next_seq - 1;
                let seq = model.ack_seq + (last - model.ack_seq) * u64::from(frac) / 255;
                r.ack(seq).unwrap();
                model.ack(seq);
            }
            Op::Sync => {
                prop_assert_eq!(r.sync().unwrap(), model.next_seq - 1);
            }
            Op::Reopen { clean } => {
                let old = ring.take().unwrap();
                if clean {
                    old.close().unwrap();
                }
                drop(old);
                // A dropped ring's background thread may still be renewing
                // the reservation; it lets the directory go once done.
                let (reopened, report) = loop {
                    match Ring::open(&t.dir, config.clone()) {
                        Ok(x) => break x,
                        Err(ringship::Error::Locked { .. }) => std::thread::sleep(std::time::Duration::from_millis(2)),
                        Err(e) => panic!("{e}"),
                    }
                };
                prop_assert_eq!(report.clean_shutdown, clean);
                prop_assert_eq!(report.damaged_records, 0);
                prop_assert_eq!(report.records_recovered, model.live.len() as u64);
                // After a crash, seqs up to the reservation may have been
                // handed out: none is used again.
                let skip = reopened.stats().last_seq + 1 - model.next_seq;
                prop_assert!(report.seqs_skipped >= skip, "{:?}", report);
                prop_assert!(if clean { skip == 0 } else { skip <= RESERVATION + 1 }, "skipped {}", skip);
                model.skipped += skip;
                model.next_seq += skip;
                ring = Some(reopened);
            }
        }
        check(ring.as_ref().unwrap(), &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn ring_matches_model(cap in (256u64..1024).prop_map(|c| c * 8), ops in proptest::collection::vec(op(), 1..MAX_OPS)) {
        run(cap, ops, false)?;
    }

    /// The same with `RingConfig::with_mapped_writes`.
    #[test]
    fn ring_matches_model_with_mapped_writes(cap in (256u64..1024).prop_map(|c| c * 8), ops in proptest::collection::vec(op(), 1..MAX_OPS)) {
        run(cap, ops, true)?;
    }
}
