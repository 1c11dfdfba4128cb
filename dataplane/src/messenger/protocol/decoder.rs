//! Streaming frame decoder over pool buffers.
//!
//! Bytes are read straight into a pool chunk; complete frames are split off that chunk as
//! refcounted [`Buf`]s (no copy) and their segments are slices of it. A frame larger than a
//! chunk gets a buffer of its exact size (its length was checked against the limits first),
//! and the rest of its bytes are read directly into that buffer, so a large payload lands where
//! the dispatcher will see it.
//!
//! Buffers a stack lends (RDMA receive buffers and write chunks) are decoded in place. A large
//! message frame that spans several of them is not copied into one buffer: its payload is
//! gathered as a list of slices of the buffers it arrived in ([`Frame::data_parts`]).

use crate::buf::{Buf, BufList, BufMut, BufPool};
use crate::secure::{Opener, TAG_LEN};
use crate::wire::{self, Limits, Tag, EPILOGUE_LEN, PREAMBLE_LEN};

use super::{Fault, Frame};

/// Don't issue a read into less spare room than this; take a fresh chunk instead.
const MIN_READ_ROOM: usize = 1024;

/// Message frames at least this long that continue into a lent buffer are gathered from the
/// buffers they arrived in instead of being copied into one (see [`FrameDecoder::adopt`]).
/// Below it, copying the straddling part is cheaper than a list of pieces.
pub const GATHER_MIN: usize = 64 * 1024;

/// A message frame being gathered from the buffers its bytes arrived in.
#[derive(Debug)]
struct Gather {
    /// The frame's bytes so far, in order; the first piece holds its preamble and front.
    parts: Vec<Buf>,
    /// Bytes in `parts`.
    have: usize,
    /// The frame's length on the wire.
    total: usize,
}

impl Gather {
    fn rest(&self) -> usize {
        self.total - self.have
    }
}

/// Turns a byte stream into validated [`Frame`]s.
#[derive(Debug)]
pub struct FrameDecoder {
    limits: Limits,
    rx: Option<BufMut>,
    /// A lent buffer queued behind `rx`: it becomes `rx` once `rx` is decoded to its end.
    /// Only set while `rx` ends exactly at a frame boundary (see `adopt`); anything that
    /// adds bytes first moves it into `rx` (`unqueue`), so bytes stay in order.
    next: Option<BufMut>,
    /// Total length of the frame at the front of `rx`, once its preamble has been parsed
    /// (while gathering: the bytes the gathered frame still needs).
    need: usize,
    /// A large message frame being gathered from lent buffers (see `adopt`); decoded before
    /// anything in `rx`.
    gather: Option<Gather>,
    /// The smallest message frame that is gathered ([`GATHER_MIN`] unless set).
    gather_min: usize,
    /// The stack has lent buffers (`adopt`): a large frame then starts gathering as soon as
    /// it outgrows its buffer, since most of it will arrive lent.
    lends: bool,
    /// Bytes of the frames delivered gathered.
    gathered: u64,
    /// Bytes copied to move a partial frame into a fresh buffer (observability of the one copy
    /// the receive path can make).
    copied: u64,
    /// Secure mode: opens every frame after the handshake, in place.
    opener: Option<Opener>,
    /// The transport checks every payload byte (our hellos offer
    /// [`wire::FEATURE_TRANSPORT_CRC`]): message and batch frames flagged
    /// [`wire::FLAG_TRANSPORT_CHECKED`] are taken without a payload crc. Without it such a
    /// frame is refused.
    trust_transport: bool,
}

impl FrameDecoder {
    /// A decoder enforcing `limits`.
    pub fn new(limits: Limits) -> FrameDecoder {
        FrameDecoder {
            limits,
            rx: None,
            next: None,
            need: 0,
            gather: None,
            gather_min: GATHER_MIN,
            lends: false,
            gathered: 0,
            copied: 0,
            opener: None,
            trust_transport: false,
        }
    }

    /// Accepts message and batch frames the peer flagged
    /// [`wire::FLAG_TRANSPORT_CHECKED`] (no payload crc) when `trust` is set: for a
    /// connection whose transport checks every byte and whose hellos offer
    /// [`wire::FEATURE_TRANSPORT_CRC`] ([`Session::set_checked_transport`]). Set before the
    /// first frame; the peer flags frames only once both ends offered it.
    ///
    /// [`Session::set_checked_transport`]: super::Session::set_checked_transport
    pub fn trust_transport(&mut self, trust: bool) {
        self.trust_transport = trust;
    }

    /// Secure mode from the next frame on: every frame must arrive sealed and open with
    /// `opener`, except a plaintext hello reply (a refusal; the session rejects an unsealed
    /// acceptance).
    pub fn set_opener(&mut self, opener: Opener) {
        self.opener = Some(opener);
    }

    /// True once secure mode is on.
    pub fn is_sealed(&self) -> bool {
        self.opener.is_some()
    }

    /// Bytes copied so far to move partial frames across buffer boundaries.
    pub fn copied_bytes(&self) -> u64 {
        self.copied
    }

    /// Sets the smallest message frame that is gathered from lent buffers rather than copied
    /// together (default [`GATHER_MIN`]). Tuning and fuzzing: a small value sends every
    /// straddling message frame down the gathering path.
    pub fn set_gather_min(&mut self, bytes: usize) {
        self.gather_min = bytes;
    }

    /// Bytes of the message frames delivered gathered, as lists of the buffers they arrived
    /// in (counted when a frame is complete).
    pub fn gathered_bytes(&self) -> u64 {
        self.gathered
    }

    /// Lets go of the receive buffer when no partial frame is pending, so an idle connection
    /// holds no buffer (the next read takes a fresh one from the pool).
    pub fn release_idle(&mut self) {
        if self.pending() == 0 {
            self.rx = None;
            self.need = 0;
        }
    }

    /// Bytes received but not yet decoded (a partial frame).
    pub fn pending(&self) -> usize {
        self.rx.as_ref().map_or(0, |b| b.len())
            + self.next.as_ref().map_or(0, |b| b.len())
            + self.gather.as_ref().map_or(0, |g| g.have)
    }

    /// Takes `b`, a buffer a stack lent ([`ConnectedSocket::read_lent`]), as the receive
    /// buffer, so the frames in it are cut from it without a copy. With a partial frame
    /// pending, the bytes of `b` that complete it are copied after it (into buffers from
    /// `pool`) and the rest of `b` is decoded in place once that frame is. Returns how many
    /// of `b`'s bytes stay where they are (all of them unless a frame straddled into it).
    ///
    /// A pending message frame of at least the gather minimum ([`GATHER_MIN`] unless
    /// [set](FrameDecoder::set_gather_min)) is not copied: its bytes so
    /// far and those of `b` (and of the lent buffers after it) are gathered as they are, and
    /// the frame's payload is handed on as a list of those pieces ([`Frame::data_parts`]).
    /// Bytes a copying read adds meanwhile (a piece too small to be lent) become one piece.
    ///
    /// [`ConnectedSocket::read_lent`]: crate::stack::ConnectedSocket::read_lent
    pub fn adopt(&mut self, mut b: BufMut, pool: &BufPool) -> usize {
        let n = b.len();
        self.lends = true;
        if self.pending() == 0 {
            self.rx = Some(b);
            self.need = 0;
            return n;
        }
        // Normally decoded already; see `read_buf`.
        self.unqueue(pool);
        let mut moved = 0;
        // A frame straddles into `b`: copy only the bytes that complete it (as a read into
        // our own buffer would), then queue the rest of `b` to be decoded in place. A large
        // message frame is gathered instead, once its preamble and front are complete.
        loop {
            if self.gather.is_some() || self.start_gather() {
                self.gather_lent(b);
                return n - moved;
            }
            if b.is_empty() {
                break;
            }
            let have = self.rx.as_ref().map_or(0, |r| r.len());
            let need = match self.front_len() {
                // Only the head of a frame to gather.
                Ok(Some(len)) => match self.gatherable() {
                    Some((head, _)) if have < head => head,
                    _ => len,
                },
                Ok(None) => PREAMBLE_LEN,
                // A bad preamble: `decode` reports it; keep the bytes in order meanwhile.
                Err(_) => usize::MAX,
            };
            if have >= need {
                break;
            }
            let k = (need - have).min(b.len());
            self.append(pool, &b.filled()[..k]);
            moved += k;
            drop(b.split_to(k));
        }
        if !b.is_empty() {
            self.next = Some(b);
        }
        n - moved
    }

    /// Gathering: adds the bytes of the lent buffer `b` that belong to the frame as a piece;
    /// the rest of `b` is decoded in place after it.
    fn gather_lent(&mut self, mut b: BufMut) {
        // What a copying read added to the gathered frame goes first.
        self.feed_gather();
        if let Some(g) = self.gather.as_mut().filter(|g| g.rest() > 0) {
            let k = g.rest().min(b.len());
            g.parts.push(b.split_to(k));
            g.have += k;
        }
        if !b.is_empty() {
            if self.rx.as_ref().is_some_and(|r| !r.is_empty()) {
                // The frame completed inside `rx`: `b` comes after the rest of it.
                self.next = Some(b);
            } else {
                self.rx = Some(b);
            }
        }
        self.need = self.gather.as_ref().map_or(0, Gather::rest);
    }

    /// The frame at the front of `rx` is to be gathered rather than copied when it continues
    /// into a lent buffer: a message frame of at least `gather_min` bytes on a connection
    /// that is not sealed (opening a sealed frame needs it contiguous). Returns the length of
    /// its head (preamble and front, kept contiguous in its first piece) and its total.
    fn gatherable(&self) -> Option<(usize, usize)> {
        if self.opener.is_some() {
            return None;
        }
        let p = wire::parse_preamble(self.rx.as_ref()?.filled(), &self.limits).ok()??;
        let total = p.frame_len();
        let ok = p.tag() == Ok(Tag::Message)
            && p.flags & wire::FLAG_SEALED == 0
            && total >= self.gather_min;
        ok.then_some((PREAMBLE_LEN + p.front_len.get() as usize, total))
    }

    /// Starts gathering the partial frame in `rx` when it is [`gatherable`](Self::gatherable)
    /// and its head is complete.
    fn start_gather(&mut self) -> bool {
        let Some((head, total)) = self.gatherable() else {
            return false;
        };
        let have = self.rx.as_ref().map_or(0, |r| r.len());
        if have < head || have >= total {
            return false;
        }
        // `rx` holds only this frame's bytes (it is pending, and shorter than the frame).
        let Some(first) = self.rx.take().map(BufMut::freeze) else {
            return false;
        };
        self.gather = Some(Gather {
            have: first.len(),
            parts: vec![first],
            total,
        });
        true
    }

    /// Moves the bytes of `rx` that belong to the gathered frame into its pieces.
    fn feed_gather(&mut self) {
        let (Some(g), Some(rx)) = (self.gather.as_mut(), self.rx.as_mut()) else {
            return;
        };
        let k = g.rest().min(rx.len());
        if k > 0 {
            g.parts.push(rx.split_to(k));
            g.have += k;
        }
    }

    /// The gathered frame, complete: its payload as a list of slices of its pieces, checked
    /// against its epilogue unless the transport checks payloads.
    fn gathered_frame(&mut self, g: Gather) -> Result<Frame, Fault> {
        let first = g.parts.first().map(Buf::as_slice).unwrap_or(&[]);
        let Some(p) = wire::parse_preamble(first, &self.limits)? else {
            return Err(Fault::Protocol("gathered frame lost its preamble".into()));
        };
        let (flags, front_len, data_len) = (
            p.flags,
            p.front_len.get() as usize,
            p.data_len.get() as usize,
        );
        let unchecked = flags & wire::FLAG_TRANSPORT_CHECKED != 0;
        check_unchecked(self.trust_transport, p.tag()?, unchecked)?;
        let front_end = PREAMBLE_LEN + front_len;
        let data_end = front_end + data_len;
        let mut data = BufList::new();
        let mut epilogue = [0u8; EPILOGUE_LEN];
        let mut at = 0;
        for part in &g.parts {
            let (start, end) = (at, at + part.len());
            at = end;
            let (lo, hi) = (start.max(front_end), end.min(data_end));
            if lo < hi {
                data.push(part.slice(lo - start..hi - start));
            }
            let (lo, hi) = (start.max(data_end), end.min(data_end + EPILOGUE_LEN));
            if lo < hi {
                epilogue[lo - data_end..hi - data_end]
                    .copy_from_slice(&part[lo - start..hi - start]);
            }
        }
        let front = match g.parts.first() {
            Some(f) if front_len > 0 => f.slice(PREAMBLE_LEN..front_end),
            _ => Buf::new(),
        };
        if !unchecked {
            wire::verify_epilogue(
                std::iter::once(front.as_slice()).chain(data.iter().map(|b| b.as_slice())),
                &epilogue,
            )?;
        }
        self.gathered += g.total as u64;
        Ok(Frame {
            tag: Tag::Message,
            flags,
            priority: p.priority,
            msg_type: p.msg_type.get(),
            seq: p.seq.get(),
            ack: p.ack.get(),
            front,
            data: Buf::new(),
            data_parts: Some(Box::new(data)),
        })
    }

    /// Copies `src` after the bytes in `rx` (through buffers from `pool`).
    fn append(&mut self, pool: &BufPool, mut src: &[u8]) {
        self.copied += src.len() as u64;
        while !src.is_empty() {
            // `room` always offers some (a fresh buffer has MIN_READ_ROOM at least).
            let m = self.room(pool).extend_from_slice(src);
            src = &src[m..];
        }
    }

    /// Moves a queued lent buffer's bytes after `rx` (a copy), so that bytes added next
    /// come after them.
    fn unqueue(&mut self, pool: &BufPool) {
        if let Some(q) = self.next.take() {
            self.append(pool, q.filled());
        }
    }

    /// Total length of the frame at the front of `rx`, once its preamble is there.
    fn front_len(&self) -> Result<Option<usize>, Fault> {
        let Some(rx) = self.rx.as_ref() else {
            return Ok(None);
        };
        match wire::parse_preamble(rx.filled(), &self.limits)? {
            None => Ok(None),
            Some(p) => Self::framed_len(
                self.opener.is_some(),
                p.tag()?,
                p.flags,
                p.front_len.get() as usize,
                p.data_len.get() as usize,
                p.frame_len(),
            )
            .map(Some),
        }
    }

    /// The length a frame with this preamble takes on the wire: sealed frames carry a tag
    /// instead of the epilogue. Refuses frames that do not fit the connection's mode.
    fn framed_len(
        secure: bool,
        tag: Tag,
        flags: u8,
        front_len: usize,
        data_len: usize,
        frame_len: usize,
    ) -> Result<usize, Fault> {
        let sealed = flags & wire::FLAG_SEALED != 0;
        match (secure, sealed) {
            (false, false) => Ok(frame_len),
            // Lengths were bounded by `parse_preamble`: no overflow.
            (true, true) => Ok(PREAMBLE_LEN + front_len + data_len + TAG_LEN),
            (true, false) if tag == Tag::HelloReply => Ok(frame_len),
            (true, false) => Err(Fault::Insecure(format!(
                "unsealed {tag:?} frame on a secure connection"
            ))),
            (false, true) => Err(Fault::Insecure(format!(
                "sealed {tag:?} frame but no keys were agreed"
            ))),
        }
    }

    /// The buffer to read into next, with room for at least the rest of the current frame.
    /// Takes a chunk from `pool`, or a heap buffer when the frame is larger than a chunk or the
    /// pool is exhausted (receiving never fails for lack of pool buffers).
    pub fn read_buf(&mut self, pool: &BufPool) -> &mut BufMut {
        // A queued lent buffer is normally decoded before the next read; should decoding
        // have stopped early (a close frame), its bytes go first, in order.
        self.unqueue(pool);
        self.room(pool)
    }

    /// `read_buf` without the queued buffer.
    fn room(&mut self, pool: &BufPool) -> &mut BufMut {
        let outgrown = |d: &Self| {
            d.rx.as_ref()
                .is_some_and(|r| !r.is_empty() && r.len() + r.remaining() < d.need)
        };
        if self.gather.is_none() && self.lends && outgrown(self) {
            // A large frame outgrew its buffer on a stack that lends: gather it from here
            // (most of it will come in lent buffers) rather than take a buffer of its whole
            // size that those would leave unused.
            self.start_gather();
        }
        if self.gather.is_some() {
            // Gathering: what a copying read brings becomes pieces of the frame, so it is
            // read into pool buffers (one piece each once full) instead of a buffer of the
            // whole rest, which the lent buffers that carry most of it would leave unused.
            if self.rx.as_ref().is_some_and(|r| r.remaining() > 0) {
                return self
                    .rx
                    .get_or_insert_with(|| BufMut::with_capacity(PREAMBLE_LEN));
            }
            self.feed_gather();
            if self.rx.as_ref().is_none_or(|r| r.is_empty()) {
                let fresh = pool.alloc().unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "receive pool exhausted, using a heap buffer");
                    BufMut::for_frame(pool.buf_size().max(MIN_READ_ROOM))
                });
                return self.rx.insert(fresh);
            }
        }
        let have = self.rx.as_ref().map_or(0, |b| b.len());
        let want_total = self.need.max(PREAMBLE_LEN);
        let room = self.rx.as_ref().map_or(0, |b| b.remaining());
        // A fresh buffer when there is none, when the current frame cannot fit in what is left
        // of this one, when nothing is pending and only a sliver of room is left, or when no
        // room is left at all (bytes not yet parsed fill it: decoding stopped at a close
        // frame, so `need` says nothing about them).
        let replace = self.rx.is_none()
            || have + room < want_total
            || room == 0
            || (have == 0 && room < MIN_READ_ROOM);
        if replace {
            let cap = want_total.max(have + MIN_READ_ROOM).max(pool.buf_size());
            let mut fresh = if cap <= pool.buf_size() {
                match pool.alloc() {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::debug!(error = %e, "receive pool exhausted, using a heap buffer");
                        BufMut::for_frame(cap)
                    }
                }
            } else {
                BufMut::for_frame(cap)
            };
            if let Some(old) = self.rx.take() {
                // The one copy on the receive path: the head of a frame that straddles the
                // end of a chunk (at most one frame's worth, usually a few bytes) moves to the
                // fresh buffer so the frame ends up contiguous.
                let partial = old.filled();
                let n = fresh.extend_from_slice(partial);
                debug_assert_eq!(n, partial.len());
                self.copied += n as u64;
            }
            self.rx = Some(fresh);
        }
        // Set above whenever it was missing; the fallback only satisfies the type.
        self.rx
            .get_or_insert_with(|| BufMut::with_capacity(PREAMBLE_LEN))
    }

    /// Decodes every complete frame in the buffer, calling `on_frame` for each. Stops at the
    /// first invalid frame with the error; the connection must then be closed.
    pub fn decode(
        &mut self,
        mut on_frame: impl FnMut(Frame) -> Result<(), Fault>,
    ) -> Result<(), Fault> {
        self.decode_keyed(|f| on_frame(f).map(|()| None))
    }

    /// As [`decode`](FrameDecoder::decode), but `on_frame` may return the opener agreed in
    /// the handshake frame it was given: secure mode then starts with the very next frame,
    /// even one already in the buffer.
    pub fn decode_keyed(
        &mut self,
        mut on_frame: impl FnMut(Frame) -> Result<Option<Opener>, Fault>,
    ) -> Result<(), Fault> {
        loop {
            if let Some(rest) = self.gather.as_ref().map(Gather::rest) {
                if rest > 0 {
                    // Bytes a copying read brought become a piece once their buffer is full
                    // or they complete the frame (see `room`), not one piece per read.
                    let (len, room) = self
                        .rx
                        .as_ref()
                        .map_or((0, 0), |r| (r.len(), r.remaining()));
                    if len < rest && room > 0 {
                        self.need = rest;
                        return Ok(());
                    }
                    self.feed_gather();
                    if self.gather.as_ref().is_some_and(|g| g.rest() > 0) {
                        self.need = rest;
                        return Ok(());
                    }
                }
                self.need = 0;
                if let Some(g) = self.gather.take() {
                    let frame = self.gathered_frame(g)?;
                    if let Some(opener) = on_frame(frame)? {
                        self.opener = Some(opener);
                    }
                }
                continue;
            }
            if self.rx.as_ref().is_none_or(|r| r.is_empty()) && self.next.is_some() {
                // The current buffer ended at a frame boundary: go on in the queued one.
                self.rx = self.next.take();
            }
            let Some(rx) = self.rx.as_mut() else {
                return Ok(());
            };
            let filled = rx.filled();
            let (tag, flags, priority, msg_type, seq, ack, front_len, data_len, frame_len) =
                match wire::parse_preamble(filled, &self.limits)? {
                    None => {
                        self.need = PREAMBLE_LEN;
                        return Ok(());
                    }
                    Some(p) => (
                        p.tag()?,
                        p.flags,
                        p.priority,
                        p.msg_type.get(),
                        p.seq.get(),
                        p.ack.get(),
                        p.front_len.get() as usize,
                        p.data_len.get() as usize,
                        p.frame_len(),
                    ),
                };
            let sealed = flags & wire::FLAG_SEALED != 0;
            let frame_len = Self::framed_len(
                self.opener.is_some(),
                tag,
                flags,
                front_len,
                data_len,
                frame_len,
            )?;
            if filled.len() < frame_len {
                self.need = frame_len;
                return Ok(());
            }
            self.need = 0;
            let front_end = PREAMBLE_LEN + front_len;
            let data_end = front_end + data_len;
            if let (true, Some(opener)) = (sealed, self.opener.as_mut()) {
                let bytes = &mut rx.filled_mut()[..frame_len];
                let (aad, rest) = bytes.split_at_mut(PREAMBLE_LEN);
                let (payload, mac) = rest.split_at_mut(front_len + data_len);
                opener.open(aad, payload, mac)?;
            }
            let unchecked = flags & wire::FLAG_TRANSPORT_CHECKED != 0;
            check_unchecked(self.trust_transport, tag, unchecked)?;
            let mut data = rx.split_to(frame_len);
            if !sealed && !unchecked && front_len + data_len > 0 {
                let bytes = data.as_slice();
                wire::verify_epilogue(
                    [&bytes[PREAMBLE_LEN..front_end], &bytes[front_end..data_end]],
                    &bytes[data_end..data_end + EPILOGUE_LEN],
                )?;
            }
            let front = if front_len > 0 {
                data.slice(PREAMBLE_LEN..front_end)
            } else {
                Buf::new()
            };
            // In place: no reference-count traffic for the common data-only frame.
            data.narrow(front_end..data_end);
            if let Some(opener) = on_frame(Frame {
                tag,
                flags,
                priority,
                msg_type,
                seq,
                ack,
                front,
                data,
                data_parts: None,
            })? {
                self.opener = Some(opener);
            }
            if tag == Tag::Close {
                return Ok(());
            }
        }
    }
}

/// Refuses a frame without a payload crc on a connection that did not agree to that.
fn check_unchecked(trust_transport: bool, tag: Tag, unchecked: bool) -> Result<(), Fault> {
    // `parse_preamble` refused the flag on any other kind of frame; whether this
    // connection agreed to it is the decoder's question.
    if unchecked && !trust_transport {
        return Err(Fault::Protocol(format!(
            "{tag:?} frame without a payload crc, which this connection did not \
             agree to (feature transport-crc not offered here)"
        )));
    }
    Ok(())
}
