//! [`BufList`]: a scatter-gather list of [`Buf`]s.

use std::fmt;
use std::io::IoSlice;

use smallvec::SmallVec;

use super::Buf;

/// Once this many consumed slots pile up at the front (and they are at least half of the
/// vector), they are compacted away.
const COMPACT_THRESHOLD: usize = 16;

/// Scatter-gather list of [`Buf`]s, like Ceph's `bufferlist`.
///
/// Appending moves `Buf` handles, never bytes; [`io_slices`](BufList::io_slices) points
/// `writev` at the original memory, and [`advance`](BufList::advance) trims what a (short)
/// write consumed. Empty `Buf`s are never stored.
#[derive(Default)]
pub struct BufList {
    /// `bufs[head..]` are live; `bufs[..head]` are consumed slots holding empty `Buf`s.
    /// Two buffers are stored inline: a message's payload is usually one `Buf`, and building
    /// or receiving it must not allocate.
    bufs: SmallVec<[Buf; 2]>,
    head: usize,
    /// Total bytes in `bufs[head..]`.
    len: usize,
}

impl BufList {
    /// An empty list.
    pub fn new() -> Self {
        BufList::default()
    }

    /// Appends `b` (no copy); empty buffers are skipped.
    pub fn push(&mut self, b: Buf) {
        if b.is_empty() {
            return;
        }
        self.len += b.len();
        self.bufs.push(b);
    }

    /// Total number of bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the list holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of (non-empty) buffers.
    pub fn buf_count(&self) -> usize {
        self.bufs.len() - self.head
    }

    /// The buffers, front to back.
    pub fn bufs(&self) -> &[Buf] {
        &self.bufs[self.head..]
    }

    /// Iterates over the buffers, front to back.
    pub fn iter(&self) -> std::slice::Iter<'_, Buf> {
        self.bufs().iter()
    }

    /// Moves all buffers of `other` to the end of `self` (no byte copy).
    pub fn append(&mut self, mut other: BufList) {
        if self.is_empty() {
            *self = other;
            return;
        }
        self.len += other.len;
        self.bufs.extend(other.bufs.drain(other.head..));
    }

    /// Consumes `n` bytes from the front: fully consumed buffers are dropped (releasing their
    /// memory), a partially consumed one is re-sliced. Used after a short `writev`.
    ///
    /// `n > len()` is a caller bug: it trips a `debug_assert!` and empties the list in release
    /// builds.
    pub fn advance(&mut self, n: usize) {
        debug_assert!(
            n <= self.len,
            "BufList::advance({n}) past the end of {} bytes",
            self.len
        );
        let mut n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            let Some(front) = self.bufs.get_mut(self.head) else {
                break;
            };
            if front.len() > n {
                front.advance(n);
                break;
            }
            n -= front.len();
            // Drop the handle now so the chunk can go back to its pool.
            *front = Buf::new();
            self.head += 1;
        }
        if self.head == self.bufs.len() {
            self.bufs.clear();
            self.head = 0;
        } else if self.head >= COMPACT_THRESHOLD && self.head * 2 >= self.bufs.len() {
            self.bufs.drain(..self.head);
            self.head = 0;
        }
    }

    /// Pushes up to `max` [`IoSlice`]s pointing at the buffers' own memory onto `out`, front
    /// to back; returns how many were pushed.
    pub fn io_slices<'a>(&'a self, out: &mut Vec<IoSlice<'a>>, max: usize) -> usize {
        let before = out.len();
        out.extend(self.iter().take(max).map(|b| IoSlice::new(b.as_slice())));
        out.len() - before
    }

    /// Copies all bytes into one `Vec` (tests, debugging).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for b in self.iter() {
            v.extend_from_slice(b);
        }
        v
    }

    /// The bytes as one slice if they are contiguous (0 or 1 buffers), else `None`.
    pub fn contiguous(&self) -> Option<&[u8]> {
        match self.bufs() {
            [] => Some(&[]),
            [b] => Some(b.as_slice()),
            _ => None,
        }
    }
}

impl Clone for BufList {
    fn clone(&self) -> Self {
        BufList {
            bufs: self.bufs().iter().cloned().collect(),
            head: 0,
            len: self.len,
        }
    }
}

impl fmt::Debug for BufList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BufList")
            .field("len", &self.len)
            .field("bufs", &self.bufs())
            .finish()
    }
}

impl From<Buf> for BufList {
    /// Inlined, across crates too: every message built by an application or received
    /// starts here.
    #[inline]
    fn from(b: Buf) -> Self {
        let len = b.len();
        let mut bufs = SmallVec::new();
        if len > 0 {
            bufs.push(b);
        }
        BufList { bufs, head: 0, len }
    }
}

impl From<Vec<u8>> for BufList {
    fn from(v: Vec<u8>) -> Self {
        BufList::from(Buf::from_vec(v))
    }
}

impl FromIterator<Buf> for BufList {
    fn from_iter<I: IntoIterator<Item = Buf>>(iter: I) -> Self {
        let mut l = BufList::new();
        l.extend(iter);
        l
    }
}

impl Extend<Buf> for BufList {
    fn extend<I: IntoIterator<Item = Buf>>(&mut self, iter: I) {
        for b in iter {
            self.push(b);
        }
    }
}

impl<'a> IntoIterator for &'a BufList {
    type Item = &'a Buf;
    type IntoIter = std::slice::Iter<'a, Buf>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}
