//! The append path: sizes checked, seqs reserved, frames laid out and
//! written at the head in one `pwrite` under `ring.state`, room made first.

use std::time::{Duration, Instant};

use super::background::PREFETCH_STEP;
use super::evict::Room;
use super::frame::{HEADER_LEN, encode_pad, encode_record, frame_size};
use super::meta::DATA_OFFSET;
use super::scan::next_lap;
use super::state::{Flight, RingState};
use super::{RingCore, frame, now_nanos};
use crate::sync::atomic::Ordering;
use crate::{Error, FullPolicy, Result};

/// Where a batch's frames go: the buffer's segments (a batch is smaller
/// than the ring, so it wraps at most once) with their ring positions.
struct Layout {
    /// (position, offset in the buffer) of each segment.
    segments: [(u64, usize); 2],
    nseg: usize,
    /// The head after the batch.
    new_head: u64,
    first_seq: u64,
    /// The lap end the batch crosses, if it leaves bytes unused there.
    lap_end: Option<(u64, u64)>,
    /// The batch's timestamp.
    ts: u64,
}

impl Layout {
    /// The flight of a batch of `n` records laid out here.
    fn flight(&self, n: u64) -> Flight {
        Flight {
            first: self.first_seq,
            last: self.first_seq + n - 1,
            end: self.new_head,
            lap_end: self.lap_end,
            ts: self.ts,
            written: false,
            failed: false,
        }
    }
}

/// The spans of a batch's segments (at most two: a batch wraps at most
/// once): (offset in the data area, start and end in the buffer).
struct Spans {
    spans: [(u64, usize, usize); 2],
    len: usize,
}

impl Spans {
    fn as_slice(&self) -> &[(u64, usize, usize)] {
        &self.spans[..self.len]
    }
}

/// A write buffer grown beyond this by a large batch is not kept.
pub(super) const WRITE_BUF_KEEP: usize = 256 << 10;

/// Bytes past the published head that appends may have reserved while
/// another is still writing: an append that would reserve beyond waits
/// for the flights before it (unless none is in flight). So after a kill
/// every frame written past a span left unwritten lies within this many
/// bytes of it, where recovery looks (`recovery::chain_head`).
pub(crate) const IN_FLIGHT_BYTES: u64 = 1 << 20;

impl RingCore {
    pub(super) fn poisoned_error(st: &RingState) -> Result<()> {
        if st.closed {
            return Err(Error::Closed);
        }
        match &st.poisoned {
            Some(path) => Err(Error::Poisoned { path: path.clone() }),
            None => Ok(()),
        }
    }

    pub(super) fn reject(st: &mut RingState, n: u64, err: Error) -> Error {
        st.counts.rejected = crate::stats::bounded_add(st.counts.rejected, n);
        st.unsaved_losses = true;
        err
    }

    /// An append refused by `err` before any of it was written: counted as
    /// rejected, unless `err` poisoned the ring (a poisoned ring counts no
    /// refusal; the next open's recovery counts what it finds).
    pub(super) fn refuse_unwritten(st: &mut RingState, n: u64, err: Error) -> Error {
        if st.poisoned.is_some() || st.closed { err } else { Self::reject(st, n, err) }
    }

    pub(super) fn append_batch<P: AsRef<[u8]>>(&self, payloads: &[P]) -> Result<(u64, u64)> {
        // Waiting for room ends at this instant (none: the timeout is too
        // far ahead to name one).
        let deadline = match self.config.full {
            FullPolicy::Block(t) => Some((Instant::now().checked_add(t), t)),
            _ => None,
        };
        loop {
            if let Some(placed) = self.try_append_batch(payloads, deadline)? {
                return Ok(placed);
            }
        }
    }

    /// One attempt of [`append_batch`](Self::append_batch): `None` if it
    /// waited for room and the seq reservation it had checked was used up
    /// meanwhile (by appenders that ran while it waited).
    pub(super) fn try_append_batch<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
        deadline: Option<(Option<Instant>, Duration)>,
    ) -> Result<Option<(u64, u64)>> {
        let n = payloads.len() as u64;
        // Sizes first: a batch refused for them must not reserve seqs (a
        // power loss would count the reserved ones lost as well).
        let (frames, refusal) = self.check_sizes(payloads);
        let mut st = loop {
            let st = self.state.lock();
            let covered = st.reserved().1 + n - 1 <= st.seq_reserved;
            if refusal.is_some() || covered || st.poisoned.is_some() || st.closed {
                break st;
            }
            drop(st);
            // Another appender may use the new reservation up before this
            // one takes the lock again: check again.
            if let Err(e) = self.ensure_reserved(n, 0) {
                return Err(Self::refuse_unwritten(&mut self.state.lock(), n, e));
            }
        };
        Self::poisoned_error(&st)?;
        if let Some(err) = refusal {
            return Err(Self::reject(&mut st, n, err));
        }
        let ts = now_nanos();
        // The frames are laid out in a buffer the state keeps between
        // appends (another append writing meanwhile has it: then a new one).
        let mut buf = std::mem::take(&mut st.write_buf);
        let placed = self.place(&mut st, payloads, &mut buf, frames, ts, deadline);
        let published = match placed {
            // A copy into the map costs less than taking the lock again:
            // written and published under this hold.
            Ok(Some(layout)) if self.config.mapped_writes => {
                let written = self.write_layout(&buf, &layout);
                self.publish(&mut st, n, buf, &layout, written).map(Some)
            }
            Ok(Some(layout)) => {
                drop(st);
                // The write, with no lock held: appenders on other threads
                // reserve and write meanwhile, each into its own span
                // (LOCKS.md).
                let written = self.write_layout(&buf, &layout);
                st = self.state.lock();
                self.publish(&mut st, n, buf, &layout, written).map(Some)
            }
            refused => {
                Self::keep_write_buf(&mut st, buf);
                refused.map(|_| None)
            }
        };
        let wake_background = self.ask_background(&mut st);
        drop(st);
        if wake_background {
            self.background.wake.notify();
        }
        let Some((first, last, checkpoint_due)) = published? else {
            return Ok(None);
        };
        if checkpoint_due {
            // The batch is written and will be read and shipped: failing
            // the append now would have the caller append it again under
            // new seqs. The losses stay unsaved, so the next checkpoint
            // (the next append's, or sync's or close's, which report an
            // error) writes them.
            let _ = self.write_checkpoint(false);
        }
        Ok(Some((first, last)))
    }

    fn keep_write_buf(st: &mut RingState, buf: Vec<u8>) {
        if buf.capacity() <= WRITE_BUF_KEEP && buf.capacity() > st.write_buf.capacity() {
            st.write_buf = buf;
        }
    }

    /// The frames' total size, and the error refusing the batch for its
    /// sizes, if any.
    fn check_sizes<P: AsRef<[u8]>>(&self, payloads: &[P]) -> (u64, Option<Error>) {
        let (frames, largest) = payloads
            .iter()
            .map(|p| frame_size(p.as_ref().len()))
            .fold((0, 0), |(sum, largest), size| (sum + size, size.max(largest)));
        let refusal = if let Some(p) = payloads.iter().find(|p| p.as_ref().len() > self.geometry.max_len) {
            Some(Error::RecordTooLarge { len: p.as_ref().len(), max: self.geometry.max_len })
        } else if frames + largest > self.geometry.cap {
            // A batch that wraps leaves the bytes before the end of the
            // data area unused, fewer than the frame that did not fit
            // there: it must fit with them, or its last frames would land
            // on its first.
            Some(Error::BatchTooLarge { needed: frames + largest, capacity: self.geometry.cap })
        } else {
            None
        };
        (frames, refusal)
    }

    /// After an append, under `ring.state`: what the background thread is
    /// to do. Returns whether to wake it.
    fn ask_background(&self, st: &mut RingState) -> bool {
        // Half the reservation used: have the background thread renew it,
        // so no append has to wait for that fsync (I6).
        let (head, next_seq) = st.reserved();
        let renew = !self.reservation.renew_asked.load(Ordering::Relaxed)
            && !st.extending
            && next_seq + self.renew_margin() > st.seq_reserved;
        if renew {
            self.reservation.renew_asked.store(true, Ordering::Relaxed);
        }
        // The head crossed into another prefetch step: have the background
        // thread bring in the bytes ahead, so that no append waits for the
        // disk or for the kernel to prepare pages.
        let prefetch = head / PREFETCH_STEP != st.prefetch_step;
        if prefetch {
            st.prefetch_step = head / PREFETCH_STEP;
            self.background.prefetch_from.store(head, Ordering::Relaxed);
        }
        renew || prefetch
    }

    /// Lays out a batch at the reserved head, making room first, and
    /// reserves its span and seqs as a flight; see
    /// [`append_batch`](Self::append_batch). `None` if it waited and the
    /// seq reservation no longer covers the batch.
    fn place<P: AsRef<[u8]>>(
        &self,
        st: &mut crate::sync::MutexGuard<'_, RingState>,
        payloads: &[P],
        buf: &mut Vec<u8>,
        frames: u64,
        ts: u64,
        deadline: Option<(Option<Instant>, Duration)>,
    ) -> Result<Option<Layout>> {
        let n = payloads.len() as u64;
        buf.reserve(frames as usize + HEADER_LEN);
        let layout = loop {
            // Lay the frames out from the reserved head.
            let layout = self.lay_out(st, payloads, buf, ts);
            let room = if !st.in_flight.is_empty() && layout.new_head - st.head > IN_FLIGHT_BYTES {
                Ok(Room::Writing)
            } else {
                self.make_room(st, layout.new_head)
            };
            st.debug_check("make_room");
            match room.map_err(|e| Self::refuse_unwritten(st, n, e))? {
                Room::Ready => break layout,
                Room::Writing => {
                    // The span to free reaches into frames still being
                    // written, or too much is in flight: wait for them to
                    // be published.
                    st.flight_waiters += 1;
                    self.flights.wait(st);
                    st.flight_waiters -= 1;
                }
                Room::MustNotEvict => {
                    let Some((at, total)) = deadline else {
                        return Err(Self::reject(st, n, Error::Full { needed: frames }));
                    };
                    if !self.wait_for_room(st, at) {
                        return Err(Self::reject(st, n, Error::BlockTimeout(total)));
                    }
                }
            }
            Self::poisoned_error(st)?;
            // Appenders that ran while this one waited may have used up
            // the seq reservation it checked.
            if st.reserved().1 + n - 1 > st.seq_reserved {
                return Ok(None);
            }
        };
        if !self.config.mapped_writes {
            st.in_flight.push_back(layout.flight(n));
        }
        Ok(Some(layout))
    }

    /// After the write: marks the flight written and publishes every
    /// flight written from the oldest on (head, `next_seq`, readers
    /// woken). A failed write is undone if no later append reserved
    /// anything; otherwise the ring is poisoned. Returns the first and last
    /// seq and whether a checkpoint is due.
    fn publish(
        &self,
        st: &mut RingState,
        n: u64,
        buf: Vec<u8>,
        layout: &Layout,
        written: std::result::Result<(), (std::io::Error, usize)>,
    ) -> Result<(u64, u64, bool)> {
        let first = layout.first_seq;
        // With mapped writes the copy was made under this hold: no flight.
        let own = (!self.config.mapped_writes)
            .then(|| st.in_flight.iter().position(|f| f.first == first).expect("the append's own flight"));
        if let Err((e, segments)) = written {
            let err = Error::io("write", &self.data_path, e);
            let result = if let Some(at) = own.filter(|&at| at + 1 < st.in_flight.len()) {
                // Later appends hold seqs after these: they cannot be taken
                // back. What reached the disk is for recovery to judge.
                st.in_flight[at].failed = true;
                self.poisoned.store(true, Ordering::Release);
                st.poisoned.get_or_insert_with(|| self.data_path.clone());
                err
            } else {
                // The newest reservation: nothing follows its span, which
                // goes back to the next append, and its seqs with it.
                if own.is_some() {
                    st.in_flight.pop_back();
                }
                self.undo_failed_write(st, n, &self.spans(&buf, layout).as_slice()[..=segments], err)
            };
            if st.flight_waiters > 0 {
                self.flights.notify_all();
            }
            Self::keep_write_buf(st, buf);
            return Err(result);
        }
        Self::keep_write_buf(st, buf);
        // By each batch's timestamp, not another clock read; a wall clock
        // that jumped either way makes a checkpoint due.
        let interval = u64::try_from(self.config.checkpoint_interval.as_nanos()).unwrap_or(u64::MAX);
        let mut due = false;
        let mut published = false;
        let mut direct = None;
        match own {
            Some(at) => st.in_flight[at].written = true,
            None => direct = Some(layout.flight(n)),
        }
        let written_front = |st: &mut RingState| {
            if st.in_flight.front().is_some_and(|f| f.written) { st.in_flight.pop_front() } else { None }
        };
        while let Some(f) = direct.take().or_else(|| written_front(st)) {
            st.head = f.end;
            st.next_seq = f.last + 1;
            due |= st.unsaved_losses && f.ts.abs_diff(st.last_checkpoint) >= interval;
            if let Some((end, unused)) = f.lap_end {
                // A checkpoint per lap keeps every lap end a crash recovery
                // may find between the checkpoint and the oldest record, so
                // that the bytes it counts overwritten leave the padding out.
                st.note_lap_end(end, unused);
                due = true;
            }
            published = true;
        }
        if published {
            self.commit.written_seq.store(st.next_seq - 1, Ordering::Release);
            if let Some(reader) = &st.reader {
                reader.notify();
            }
            if st.flight_waiters > 0 {
                self.flights.notify_all();
            }
        }
        Ok((first, first + n - 1, due))
    }

    /// Waits until every append that reserved seqs up to `seq` has written
    /// its frames (or failed).
    pub(super) fn wait_written(&self, seq: u64) {
        let mut st = self.state.lock();
        while st.writing_through(seq) {
            st.flight_waiters += 1;
            self.flights.wait(&mut st);
            st.flight_waiters -= 1;
        }
    }

    /// Lays the frames of `payloads` out in `buf` from the head, with a
    /// pad before the end of the data area when a frame does not fit there.
    fn lay_out<P: AsRef<[u8]>>(&self, st: &RingState, payloads: &[P], buf: &mut Vec<u8>, ts: u64) -> Layout {
        buf.clear();
        let cap = self.geometry.cap;
        let (head, first_seq) = st.reserved();
        // Frames reserved behind an append still writing say so: a kill
        // may leave that append's span unwritten below them.
        let behind = !st.in_flight.is_empty();
        let mut layout = Layout { segments: [(0, 0); 2], nseg: 0, new_head: head, first_seq, lap_end: None, ts };
        let mut pos = head;
        let mut seg_start = (pos, 0usize);
        for (i, p) in payloads.iter().enumerate() {
            let p = p.as_ref();
            let size = frame_size(p.len());
            let room = cap - pos % cap;
            if size > room {
                if room >= HEADER_LEN as u64 {
                    encode_pad(buf, layout.first_seq + i as u64, pos, (room - HEADER_LEN as u64) as usize);
                }
                pos = next_lap(pos, cap);
                layout.lap_end = Some((pos, room));
            }
            // A segment never crosses the end of the data area.
            if pos % cap == 0 && pos != seg_start.0 {
                if buf.len() > seg_start.1 {
                    layout.segments[layout.nseg] = seg_start;
                    layout.nseg += 1;
                }
                seg_start = (pos, buf.len());
            }
            encode_record(buf, layout.first_seq + i as u64, ts, pos, p, behind);
            pos += size;
        }
        layout.segments[layout.nseg] = seg_start;
        layout.nseg += 1;
        layout.new_head = pos;
        layout
    }

    /// `FullPolicy::Block`: waits for acks to free room, until `at` (none:
    /// too far ahead to name). Returns whether to try again (`false`: the
    /// time is up).
    fn wait_for_room(&self, st: &mut crate::sync::MutexGuard<'_, RingState>, at: Option<Instant>) -> bool {
        let Some(at) = at else {
            self.room.wait(st);
            return true;
        };
        let now = Instant::now();
        let timed_out = now >= at || self.room.wait_for(st, at - now) && Instant::now() >= at;
        !timed_out
    }

    /// The laid-out frames' spans: (offset in the data area, start and end
    /// in the buffer) per segment (segment i ends where segment i + 1
    /// starts).
    fn spans(&self, buf: &[u8], layout: &Layout) -> Spans {
        let segments = &layout.segments[..layout.nseg];
        let mut spans = Spans { spans: [(0, 0, 0); 2], len: segments.len() };
        for (i, &(seg_pos, from)) in segments.iter().enumerate() {
            spans.spans[i] = (seg_pos % self.geometry.cap, from, segments.get(i + 1).map_or(buf.len(), |s| s.1));
        }
        spans
    }

    /// Writes the laid-out frames, one `pwrite` per segment, with no lock
    /// held. A failure names the segment it came at.
    fn write_layout(&self, buf: &[u8], layout: &Layout) -> std::result::Result<(), (std::io::Error, usize)> {
        for (i, &(off, from, to)) in self.spans(buf, layout).as_slice().iter().enumerate() {
            debug_assert!(off + (to - from) as u64 <= self.geometry.cap);
            self.data.write_at(&buf[from..to], DATA_OFFSET + off).map_err(|e| (e, i))?;
        }
        Ok(())
    }

    /// After a failed write, zeroes whatever the batch may have written, so
    /// no part of it can be recovered: then it was cleanly refused and is
    /// counted as rejected. If even that fails, what reached the disk is
    /// unknown: the ring is poisoned and recovery at the next open decides
    /// (records that made it are kept; delivery is at-least-once).
    pub(super) fn undo_failed_write(
        &self,
        st: &mut RingState,
        n: u64,
        spans: &[(u64, usize, usize)],
        err: Error,
    ) -> Error {
        // Filled with a marker rather than zeros: the fill may cover frames
        // the batch was to replace (evicted, but newer than the last
        // checkpoint), and crash recovery must not mistake the gap for
        // space the writer never reached (see `recovery::chain_head`).
        let fill = |len: usize| frame::UNDONE.iter().copied().cycle().take(len).collect::<Vec<u8>>();
        let undone =
            spans.iter().all(|&(off, from, to)| self.data.write_at(&fill(to - from), DATA_OFFSET + off).is_ok());
        if undone {
            Self::reject(st, n, err)
        } else {
            self.poisoned.store(true, Ordering::Release);
            st.poisoned.get_or_insert_with(|| self.data_path.clone());
            err
        }
    }
}
