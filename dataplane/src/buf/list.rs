//! [`BufList`]: a scatter-gather list of [`Buf`]s.

use std::fmt;
use std::io::IoSlice;

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
    /// The list while it holds at most one buffer (an empty `Buf` when it holds none): a
    /// message's payload is usually one `Buf`, and building, receiving or dropping it must
    /// not allocate nor walk a vector. Empty once `many` is in use.
    one: Buf,
    /// Every buffer once there were two or more: `many[head..]` are live, `many[..head]` are
    /// consumed slots holding empty `Buf`s.
    many: Vec<Buf>,
    head: usize,
    /// Total bytes.
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
        if !self.many.is_empty() {
            self.many.push(b);
        } else if self.one.is_empty() {
            self.one = b;
        } else {
            self.many.reserve(2);
            self.many.push(std::mem::take(&mut self.one));
            self.many.push(b);
        }
    }

    /// Total number of bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the list holds no bytes.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of (non-empty) buffers.
    pub fn buf_count(&self) -> usize {
        self.bufs().len()
    }

    /// The buffers, front to back.
    #[inline]
    pub fn bufs(&self) -> &[Buf] {
        if !self.many.is_empty() {
            &self.many[self.head..]
        } else if self.one.is_empty() {
            &[]
        } else {
            std::slice::from_ref(&self.one)
        }
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
        if other.many.is_empty() {
            self.push(std::mem::take(&mut other.one));
        } else {
            for b in other.many.drain(other.head..) {
                self.push(b);
            }
        }
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
        if self.many.is_empty() {
            // Drops the handle when all of it was consumed, so the chunk can go back.
            self.one.advance(n);
            return;
        }
        while n > 0 {
            let Some(front) = self.many.get_mut(self.head) else {
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
        if self.head == self.many.len() {
            self.many.clear();
            self.head = 0;
        } else if self.head >= COMPACT_THRESHOLD && self.head * 2 >= self.many.len() {
            self.many.drain(..self.head);
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

    /// Copies the first `out.len()` bytes (fewer if the list is shorter) into `out`, across
    /// buffers, and returns how many: for reading a header from a payload that may be split
    /// (a large received message gathered from several buffers) without copying the rest.
    pub fn copy_prefix(&self, out: &mut [u8]) -> usize {
        let mut n = 0;
        for b in self.iter() {
            if n == out.len() {
                break;
            }
            let k = (out.len() - n).min(b.len());
            out[n..n + k].copy_from_slice(&b[..k]);
            n += k;
        }
        n
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
        self.bufs().iter().cloned().collect()
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
        BufList {
            len: b.len(),
            one: b,
            many: Vec::new(),
            head: 0,
        }
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
