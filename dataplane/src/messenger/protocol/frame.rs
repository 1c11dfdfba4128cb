//! Frames as the protocol core sees them: received frames point into receive buffers;
//! frames to send are staged (preamble, small bodies, epilogue) in the session's staging
//! buffer and refer to large payloads by reference.

use std::io::IoSlice;

use crate::buf::{Buf, BufList};
use crate::secure::Sealer;
use crate::stack::Segment;
use crate::wire::{self, FrameHead, Preamble, Tag, EPILOGUE_LEN, PREAMBLE_LEN};
use zerocopy::IntoBytes;

/// Payloads up to this size are copied into the staging buffer next to their preamble
/// instead of being sent by reference.
///
/// Why a copy here: every `writev` segment costs the kernel a fixed amount of work (a loop
/// iteration, a user-copy setup, a check) that is larger than copying 256 bytes, and a
/// small-message stream would otherwise need three segments per message (preamble, payload,
/// epilogue) and hit `IOV_MAX` after ~340 messages. Staged, thousands of small frames go out
/// as one contiguous segment. Larger payloads are never copied.
pub const INLINE_MAX: usize = 256;

/// A received, fully validated frame. `front` and `data` are slices of the receive buffer.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Frame kind.
    pub tag: Tag,
    /// Flag bits (see `wire::FLAG_*`).
    pub flags: u8,
    /// Message priority.
    pub priority: u8,
    /// Application message type (messages only).
    pub msg_type: u16,
    /// Sequence number (messages only).
    pub seq: u64,
    /// Piggy-backed acknowledgement, valid when `flags` has `FLAG_ACK_VALID`.
    pub ack: u64,
    /// Front segment (handshake and close bodies).
    pub front: Buf,
    /// Data segment (message payload).
    pub data: Buf,
    /// A message's data segment when it arrived scattered over several buffers a stack lent
    /// (see [`FrameDecoder::adopt`](super::FrameDecoder::adopt)): the pieces in order, with
    /// `data` empty. `None` otherwise (boxed: every frame carries the field).
    pub data_parts: Option<Box<BufList>>,
}

impl Frame {
    /// The acknowledgement this frame carries, if any.
    pub fn ack(&self) -> Option<u64> {
        if self.tag == Tag::Ack || self.flags & wire::FLAG_ACK_VALID != 0 {
            Some(self.ack)
        } else {
            None
        }
    }
}

/// What a frame being sent stands for, so the session knows what to do once it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxKind {
    /// A sequenced application message. The message itself stays with the session (held
    /// for resending on lossless connections), which finds it by `seq`.
    Message {
        /// Its sequence number.
        seq: u64,
    },
    /// A batch of small messages with consecutive sequence numbers from `first`, held in the
    /// session like single messages.
    Batch {
        /// Sequence number of the first record.
        first: u64,
        /// Number of records.
        count: u16,
    },
    /// A control frame (hello, ack, keepalive, close).
    Control,
}

/// How a frame's body is protected on the wire.
pub(crate) enum Guard<'a> {
    /// A crc32c of the body in the epilogue (plain mode).
    Crc,
    /// The transport checks the body (both ends offered `wire::FEATURE_TRANSPORT_CRC`): the
    /// frame carries `wire::FLAG_TRANSPORT_CHECKED` and a zero epilogue, and nobody reads
    /// the body for a crc. Only for message and batch frames.
    Transport,
    /// Sealed with the session's keys (secure mode).
    Sealed(&'a mut Sealer),
}

/// What a plain frame's epilogue holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Epi {
    /// The crc, computed while the body is staged.
    Compute,
    /// A crc the sending thread computed already (used when the payload goes by reference).
    Known(u32),
    /// Zero: the transport checks the body.
    Zero,
}

impl<'a> From<Option<&'a mut Sealer>> for Guard<'a> {
    /// Secure mode when there is a sealer, else a crc.
    fn from(s: Option<&'a mut Sealer>) -> Guard<'a> {
        s.map_or(Guard::Crc, Guard::Sealed)
    }
}

/// A frame queued for sending. Its staged bytes live in the session's staging buffer at
/// `stage_off`: `head_len` bytes before the payload (preamble, front, and the payload itself
/// when it is small) and `tail_len` bytes after it (the epilogue when the payload is sent by
/// reference).
#[derive(Debug)]
pub struct TxFrame {
    stage_off: usize,
    head_len: usize,
    tail_len: usize,
    external: bool,
    kind: TxKind,
    len: usize,
}

impl TxFrame {
    /// Encodes a frame of `kind` around `front` (a control body) and `payload` (a message's
    /// payload, empty for control frames), appending its staged bytes to `stage`, protected
    /// as `guard` says.
    ///
    /// A payload larger than [`INLINE_MAX`] is not copied: [`IovBuilder::frame`] must then be
    /// given the same payload.
    pub(crate) fn encode(
        stage: &mut Vec<u8>,
        head: FrameHead,
        front: &[u8],
        kind: TxKind,
        payload: &[Buf],
        guard: Guard<'_>,
    ) -> TxFrame {
        match guard {
            Guard::Sealed(s) => TxFrame::encode_sealed(stage, head, front, kind, payload, s),
            Guard::Crc => TxFrame::encode_plain(stage, head, front, kind, payload, Epi::Compute),
            Guard::Transport => TxFrame::encode_plain(stage, head, front, kind, payload, Epi::Zero),
        }
    }

    /// [`TxFrame::encode`] for a message (no front) whose payload crc the sending thread
    /// computed already (`payload_crc`, see `Message::memo_crc`): a plain frame then takes it
    /// instead of reading the payload again.
    pub(crate) fn encode_message(
        stage: &mut Vec<u8>,
        head: FrameHead,
        kind: TxKind,
        payload: &[Buf],
        payload_crc: Option<u32>,
        guard: Guard<'_>,
    ) -> TxFrame {
        let epi = match payload_crc {
            Some(crc) => Epi::Known(crc),
            None => Epi::Compute,
        };
        match guard {
            Guard::Sealed(s) => TxFrame::encode_sealed(stage, head, &[], kind, payload, s),
            Guard::Crc => TxFrame::encode_plain(stage, head, &[], kind, payload, epi),
            Guard::Transport => TxFrame::encode_plain(stage, head, &[], kind, payload, Epi::Zero),
        }
    }

    /// Sequence number of the (first) message the frame carries.
    pub(crate) fn first_seq(&self) -> Option<u64> {
        match self.kind {
            TxKind::Message { seq } => Some(seq),
            TxKind::Batch { first, .. } => Some(first),
            TxKind::Control => None,
        }
    }

    /// How many messages the frame carries.
    pub(crate) fn messages(&self) -> usize {
        match self.kind {
            TxKind::Message { .. } => 1,
            TxKind::Batch { count, .. } => usize::from(count),
            TxKind::Control => 0,
        }
    }

    /// Starts a frame whose body is staged after it (a message batch, a sealed frame): reserves
    /// room at the end of `stage` for its preamble, written by [`TxFrame::close_staged`].
    /// Returns where the frame starts.
    pub(crate) fn open_staged(stage: &mut Vec<u8>) -> usize {
        let off = stage.len();
        stage.extend_from_slice(&[0; PREAMBLE_LEN]);
        off
    }

    /// Appends one message to a batch as a record (head, then the payload copied: the batch
    /// paths only take small payloads, up to [`INLINE_MAX`] in the session's own batches and
    /// up to `BLOCK_COPY_MAX` in sender-encoded record blocks; see there for why).
    #[inline]
    pub(crate) fn batch_append(stage: &mut Vec<u8>, msg_type: u16, payload: &BufList) {
        let len = payload.len();
        // Bounded by the callers (at most a few KiB).
        stage.extend_from_slice(&wire::encode_record_head(len as u32, msg_type));
        for b in payload.bufs() {
            stage.extend_from_slice(b);
        }
    }

    /// Closes the frame that [`TxFrame::open_staged`] started at `off`, whose front
    /// (`head.front_len` bytes) and data are staged after it: writes its preamble with the
    /// data length filled in and one crc over the body (or a zero epilogue when the transport
    /// checks it), or seals the body in place in secure mode. Batches (records as data) and
    /// single messages staged this way take the same shape.
    pub(crate) fn close_staged(
        stage: &mut Vec<u8>,
        off: usize,
        mut head: FrameHead,
        kind: TxKind,
        guard: Guard<'_>,
    ) -> TxFrame {
        let body = stage.len() - off - PREAMBLE_LEN;
        // Bounded by the callers (small control bodies, a batch of a few KiB, a message
        // within the size limit).
        head.data_len = (body - head.front_len as usize) as u32;
        match guard {
            Guard::Crc | Guard::Transport => {
                let checked = matches!(guard, Guard::Transport);
                if checked {
                    head.flags |= wire::FLAG_TRANSPORT_CHECKED;
                }
                stage[off..off + PREAMBLE_LEN].copy_from_slice(Preamble::new(&head).as_bytes());
                if body > 0 {
                    let crc = if checked {
                        0
                    } else {
                        wire::crc32c(&stage[off + PREAMBLE_LEN..])
                    };
                    stage.extend_from_slice(&wire::encode_epilogue(crc));
                }
            }
            Guard::Sealed(s) => {
                head.flags |= wire::FLAG_SEALED;
                stage[off..off + PREAMBLE_LEN].copy_from_slice(&wire::encode_preamble(&head));
                let (aad, records) = stage[off..].split_at_mut(PREAMBLE_LEN);
                let tag = s.seal(aad, records);
                stage.extend_from_slice(&tag);
            }
        }
        let len = stage.len() - off;
        TxFrame {
            stage_off: off,
            head_len: len,
            tail_len: 0,
            external: false,
            kind,
            len,
        }
    }

    /// Where the frame's staged bytes start in the staging buffer.
    pub(crate) fn stage_off(&self) -> usize {
        self.stage_off
    }

    /// True when the payload is sent by reference rather than staged.
    pub(crate) fn is_external(&self) -> bool {
        self.external
    }

    /// Secure mode: preamble (flagged sealed, authenticated as associated data), then the
    /// encrypted front and payload, then the tag.
    ///
    /// Why a copy here: encryption writes new bytes, and the caller's payload buffer is
    /// shared (it stays held for resending and may be referenced elsewhere), so the
    /// ciphertext goes into the staging buffer: one copy, made by the cipher itself as it
    /// encrypts in place there.
    fn encode_sealed(
        stage: &mut Vec<u8>,
        mut head: FrameHead,
        front: &[u8],
        kind: TxKind,
        payload: &[Buf],
        sealer: &mut Sealer,
    ) -> TxFrame {
        head.front_len = front.len() as u32;
        let off = TxFrame::open_staged(stage);
        stage.extend_from_slice(front);
        for b in payload {
            stage.extend_from_slice(b);
        }
        TxFrame::close_staged(stage, off, head, kind, Guard::Sealed(sealer))
    }

    /// Plain mode: preamble, front, the payload when it is small (else it is sent by
    /// reference), then the epilogue. Everything is written straight into `stage` after
    /// one reservation, and the payload crc is computed in the same pass that copies it, or,
    /// for a payload sent by reference with no front, taken from `Epi::Known` when given;
    /// with `Epi::Zero` (the transport checks the payload) nothing reads the payload.
    fn encode_plain(
        stage: &mut Vec<u8>,
        mut head: FrameHead,
        front: &[u8],
        kind: TxKind,
        payload: &[Buf],
        epi: Epi,
    ) -> TxFrame {
        let data_len: usize = payload.iter().map(Buf::len).sum();
        // Lengths were bounded by the sender (message size limit, small control bodies).
        head.front_len = front.len() as u32;
        head.data_len = data_len as u32;
        let external = data_len > INLINE_MAX;
        let has_epilogue = front.len() + data_len > 0;
        let epilogue_len = if has_epilogue { EPILOGUE_LEN } else { 0 };
        let len = PREAMBLE_LEN + front.len() + data_len + epilogue_len;
        if epi == Epi::Zero {
            head.flags |= wire::FLAG_TRANSPORT_CHECKED;
        }
        let stage_off = stage.len();
        stage.reserve(if external { len - data_len } else { len });
        stage.extend_from_slice(Preamble::new(&head).as_bytes());
        let mut crc = 0;
        if !front.is_empty() {
            stage.extend_from_slice(front);
            if epi != Epi::Zero {
                crc = wire::crc32c_append(crc, front);
            }
        }
        match epi {
            Epi::Zero => {
                if !external {
                    for b in payload {
                        stage.extend_from_slice(b);
                    }
                }
            }
            Epi::Known(known) if external && front.is_empty() => {
                debug_assert_eq!(
                    known,
                    wire::payload_crc(payload.iter().map(|b| &b[..])),
                    "a payload crc computed by the sender no longer matches its payload"
                );
                crc = known;
            }
            _ => {
                for b in payload {
                    crc = wire::crc32c_append(crc, b);
                    if !external {
                        stage.extend_from_slice(b);
                    }
                }
            }
        }
        let head_len = stage.len() - stage_off;
        if has_epilogue {
            stage.extend_from_slice(&wire::encode_epilogue(crc));
        }
        let (head_len, tail_len) = if external {
            (head_len, epilogue_len)
        } else {
            (head_len + epilogue_len, 0)
        };
        TxFrame {
            stage_off,
            head_len,
            tail_len,
            external,
            kind,
            len,
        }
    }

    /// Total encoded length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a frame has at least a preamble.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// One piece of a gather list [`IovBuilder`] builds: an `IoSlice` for `writev`, or a
/// [`Segment`] that keeps a payload as its `Buf` for stacks that send it without copying
/// ([`ConnectedSocket::send_segments`](crate::stack::ConnectedSocket::send_segments)).
pub(crate) trait Gather<'a>: Sized {
    /// Whether the head of a frame whose payload is sent by reference starts a new piece
    /// (not merged with the staged bytes before it), so that a stack sees where such a frame
    /// begins: a piece of staged bytes followed by a payload is exactly that frame's head.
    /// `writev` gains nothing from it; [`Segment`] lists have it.
    const SPLIT_AT_EXTERNAL_FRAMES: bool;
    /// Staged bytes.
    fn staged(s: &'a [u8]) -> Self;
    /// `b[off..]`, a payload sent by reference.
    fn payload(b: &'a Buf, off: usize) -> Self;
    /// Bytes covered.
    fn bytes(&self) -> usize;
}

impl<'a> Gather<'a> for IoSlice<'a> {
    const SPLIT_AT_EXTERNAL_FRAMES: bool = false;

    #[inline]
    fn staged(s: &'a [u8]) -> Self {
        IoSlice::new(s)
    }

    #[inline]
    fn payload(b: &'a Buf, off: usize) -> Self {
        IoSlice::new(b.as_slice().get(off..).unwrap_or(&[]))
    }

    #[inline]
    fn bytes(&self) -> usize {
        self.len()
    }
}

impl<'a> Gather<'a> for Segment<'a> {
    const SPLIT_AT_EXTERNAL_FRAMES: bool = true;

    fn staged(s: &'a [u8]) -> Self {
        Segment::Staged(s)
    }

    fn payload(buf: &'a Buf, off: usize) -> Self {
        Segment::Shared { buf, off }
    }

    fn bytes(&self) -> usize {
        self.len()
    }
}

/// Builds a gather list over staged frames, merging adjacent staged bytes into one slice.
pub(crate) struct IovBuilder<'a, 'o, G: Gather<'a>> {
    stage: &'a [u8],
    out: &'o mut Vec<G>,
    run: Option<(usize, usize)>,
    max: usize,
    /// Bytes added so far, and the most worth offering in one call.
    bytes: usize,
    max_bytes: usize,
}

impl<'a, 'o, G: Gather<'a>> IovBuilder<'a, 'o, G> {
    pub(crate) fn new(stage: &'a [u8], out: &'o mut Vec<G>, max: usize) -> Self {
        IovBuilder {
            stage,
            out,
            run: None,
            max: max.max(1),
            bytes: 0,
            max_bytes: usize::MAX,
        }
    }

    /// Stops taking new frames once `max_bytes` are in the list: a socket takes at most what
    /// its buffer has free, so building a longer list only to rebuild it on the next
    /// writable event is wasted work (a user-space TCP socket takes far less per call than
    /// a kernel one).
    pub(crate) fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes.max(1);
        self
    }

    /// Slices used so far, counting the pending staged run as one.
    fn slots_used(&self) -> usize {
        self.out.len() + usize::from(self.run.is_some())
    }

    /// Whether another slice fits.
    pub(crate) fn has_room(&self) -> bool {
        self.slots_used() < self.max
    }

    /// Whether another frame is worth adding (slices left, and under the byte budget).
    pub(crate) fn wants_more(&self) -> bool {
        self.has_room() && self.bytes < self.max_bytes
    }

    /// Adds staged bytes, extending the pending run when they follow it. False if a new slice
    /// was needed and none is left.
    fn stage_range(&mut self, start: usize, end: usize) -> bool {
        if start >= end {
            return true;
        }
        if let Some((_, e)) = &mut self.run {
            if *e == start {
                *e = end;
                self.bytes += end - start;
                return true;
            }
        }
        if !self.has_room() {
            return false;
        }
        self.flush_run();
        self.run = Some((start, end));
        self.bytes += end - start;
        true
    }

    /// Adds `b[off..]`, a payload sent by reference. False if no slice is left.
    fn external(&mut self, b: &'a Buf, off: usize) -> bool {
        if !self.has_room() {
            return false;
        }
        self.flush_run();
        self.out.push(G::payload(b, off));
        self.bytes += b.len() - off;
        true
    }

    fn flush_run(&mut self) {
        if let Some((s, e)) = self.run.take() {
            self.out.push(G::staged(&self.stage[s..e]));
        }
    }

    /// Adds `f`, skipping its first `skip` bytes (already written). `payload` is the one the
    /// frame was encoded with (only read when it is sent by reference). Returns false if the
    /// slice budget ran out part-way: the rest of the frame goes in a later `writev` (the
    /// session tracks partly written frames by byte offset).
    pub(crate) fn frame(&mut self, f: &TxFrame, payload: &'a [Buf], mut skip: usize) -> bool {
        let head = (f.stage_off, f.stage_off + f.head_len);
        if G::SPLIT_AT_EXTERNAL_FRAMES && f.external && skip == 0 {
            self.flush_run();
        }
        if skip < f.head_len {
            if !self.stage_range(head.0 + skip, head.1) {
                return false;
            }
            skip = 0;
        } else {
            skip -= f.head_len;
        }
        if f.external {
            for b in payload {
                if skip >= b.len() {
                    skip -= b.len();
                    continue;
                }
                if !self.external(b, skip) {
                    return false;
                }
                skip = 0;
            }
        }
        if f.tail_len > 0 && skip < f.tail_len {
            return self.stage_range(head.1 + skip, head.1 + f.tail_len);
        }
        true
    }

    /// Finishes the list.
    pub(crate) fn finish(mut self) {
        self.flush_run();
    }
}
