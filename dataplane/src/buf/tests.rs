//! Tests of the buffer module.

use std::io::{IoSlice, Read};
use std::sync::mpsc;
use std::thread;

use super::*;

fn pool(buf_size: usize, count: usize) -> BufPool {
    small_pool(buf_size, count, false)
}

fn small_pool(buf_size: usize, count: usize, hugepages: bool) -> BufPool {
    BufPool::new(&PoolConfig {
        buf_size,
        count,
        hugepages,
        lock: false,
        prefault: false,
    })
    .unwrap_or_else(|e| panic!("pool of {count} x {buf_size}: {e}"))
}

fn alloc(p: &BufPool) -> BufMut {
    p.alloc().unwrap_or_else(|e| panic!("alloc: {e}"))
}

fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed.wrapping_mul(31) + i) as u8)
        .collect()
}

fn ranges_overlap(a: &Buf, b: &Buf) -> bool {
    let (a0, a1) = (a.as_ptr() as usize, a.as_ptr() as usize + a.len());
    let (b0, b1) = (b.as_ptr() as usize, b.as_ptr() as usize + b.len());
    a0 < b1 && b0 < a1
}

#[test]
fn types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<BufPool>();
    send_sync::<Buf>();
    send_sync::<BufList>();
    send_sync::<BufError>();
    fn send<T: Send>() {}
    send::<BufMut>();
}

#[test]
fn pool_config_defaults() {
    let c = PoolConfig::default();
    assert_eq!(
        (c.buf_size, c.count, c.hugepages, c.lock),
        (65536, 1024, true, false)
    );
}

#[test]
fn invalid_configs_are_rejected() {
    for (buf_size, count, needle) in [
        (0, 4, "buf_size is 0"),
        (4096, 0, "count is 0"),
        (usize::MAX / 2, 4, "overflow"),
    ] {
        let cfg = PoolConfig {
            buf_size,
            count,
            ..PoolConfig::default()
        };
        match BufPool::new(&cfg) {
            Err(e @ BufError::InvalidConfig(_)) => {
                assert!(e.to_string().contains(needle), "{e}")
            }
            other => panic!("{cfg:?} gave {other:?}"),
        }
    }
}

#[test]
fn alloc_until_exhausted_then_free_one() {
    for hugepages in [false, true] {
        let p = small_pool(4096, 4, hugepages);
        assert_eq!((p.capacity(), p.buf_size(), p.available()), (4, 4096, 4));
        let mut held: Vec<BufMut> = (0..4).map(|_| alloc(&p)).collect();
        assert_eq!(p.available(), 0);
        match p.alloc() {
            Err(e @ BufError::Exhausted { .. }) => {
                assert!(matches!(
                    e,
                    BufError::Exhausted {
                        buf_size: 4096,
                        count: 4
                    }
                ));
                let msg = e.to_string();
                assert!(msg.contains("exhausted") && msg.contains("4096"), "{msg}");
            }
            other => panic!("expected Exhausted, got {other:?}"),
        }
        held.pop();
        assert_eq!(p.available(), 1);
        let again = alloc(&p);
        assert_eq!(again.capacity(), 4096);
        assert_eq!(p.available(), 0);
        drop(held);
        drop(again);
        assert_eq!(p.available(), 4);
    }
}

#[test]
fn pool_memory_is_the_arenas() {
    let p = small_pool(64 * 1024, 64, true);
    assert!(p.arena_len() >= 64 * 64 * 1024);
    assert!(!p.contains(std::ptr::null()));
    assert!(p.contains(p.arena_ptr()));
    assert!(!p.contains(p.arena_ptr().wrapping_add(p.arena_len())));
    let st = hugepages::status().unwrap_or_default();
    if st.free_2m >= 2 {
        assert_eq!(p.backing(), hugepages::Backing::Hugetlb2M);
    }
    let mut seen = Vec::new();
    for _ in 0..64 {
        let mut b = alloc(&p);
        let ptr = b.spare_mut().as_ptr();
        assert!(p.contains(ptr));
        assert!(p.contains(ptr.wrapping_add(b.capacity() - 1)));
        assert!(
            b.spare_mut().iter().all(|&x| x == 0),
            "fresh pool memory not zeroed"
        );
        seen.push((ptr as usize, b));
    }
    seen.sort_by_key(|(p, _)| *p);
    for w in seen.windows(2) {
        assert!(w[0].0 + 64 * 1024 <= w[1].0, "chunks overlap");
    }
    let other = small_pool(4096, 1, false);
    assert!(!other.contains(seen[0].0 as *const u8));
}

#[test]
fn locked_pool() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let res = BufPool::new(&PoolConfig {
        buf_size: 4096,
        count: 16,
        hugepages: true,
        lock: true,
        prefault: false,
    });
    match res {
        Ok(p) => assert!(format!("{p:?}").contains("locked: true"), "{p:?}"),
        Err(e) => {
            assert!(!root, "root could not lock a 64 KiB pool: {e}");
            assert!(e.to_string().contains("ulimit -l"), "{e}");
        }
    }
}

#[test]
fn chunk_returns_only_after_last_reference() {
    let p = pool(1024, 2);
    let mut m = alloc(&p);
    m.extend_from_slice(b"abcdef");
    let head = m.split_to(3);
    let tail = m.freeze();
    let clone = head.clone();
    let slice = tail.slice(1..);
    assert_eq!(p.available(), 1);
    drop(head);
    drop(tail);
    assert_eq!(p.available(), 1, "chunk returned while clones live");
    assert_eq!(&clone[..], b"abc");
    assert_eq!(&slice[..], b"ef");
    drop(clone);
    assert_eq!(p.available(), 1);
    // The last reference drops on another thread.
    let h = thread::spawn(move || {
        assert_eq!(&slice[..], b"ef");
        drop(slice);
    });
    h.join()
        .unwrap_or_else(|_| panic!("dropping thread panicked"));
    assert_eq!(p.available(), 2);
    assert_eq!(
        p.handle_count(),
        1,
        "chunk did not give back its pool reference"
    );
}

#[test]
fn unused_bufmut_and_empty_freeze_release_the_chunk() {
    let p = pool(256, 1);
    drop(alloc(&p));
    assert_eq!(p.available(), 1);
    let empty = alloc(&p).freeze();
    assert!(empty.is_empty());
    assert_eq!(p.available(), 1, "empty Buf pinned the chunk");
    let mut m = alloc(&p);
    assert!(m.split_to(0).is_empty());
    m.extend_from_slice(b"x");
    let b = m.freeze();
    assert_eq!(p.available(), 0);
    assert!(b.slice(1..).is_empty());
    drop(b);
    assert_eq!(p.available(), 1);
}

#[test]
fn split_to_pieces_never_overlap_and_read_back() {
    let p = pool(4096, 1);
    let mut m = alloc(&p);
    let base = m.spare_mut().as_ptr();
    let mut pieces = Vec::new();
    let mut expect = Vec::new();
    for i in 0..20 {
        let data = pattern(i, 7 + i * 13);
        assert_eq!(m.extend_from_slice(&data), data.len());
        // Split only part of what is filled, so that filled bytes stay behind.
        let n = data.len() / 2 + 1;
        let before_consumed = m.consumed();
        let piece = m.split_to(n);
        assert_eq!(m.consumed(), before_consumed + n);
        assert_eq!(piece.as_ptr(), base.wrapping_add(before_consumed));
        pieces.push(piece);
        expect.push((before_consumed, n));
    }
    // Fill the rest of the chunk with 0xff; no piece may see it.
    let spare = m.remaining();
    m.spare_mut().fill(0xff);
    m.advance(spare);
    assert_eq!(m.remaining(), 0);
    assert_eq!(m.capacity() + m.consumed(), 4096);
    let last = m.freeze();
    let mut all = Vec::new();
    for i in 0..20 {
        all.extend_from_slice(&pattern(i, 7 + i * 13));
    }
    for (piece, (off, n)) in pieces.iter().zip(&expect) {
        assert_eq!(&piece[..], &all[*off..off + n]);
        assert!(p.contains(piece.as_ptr()));
        assert!(!ranges_overlap(piece, &last));
    }
    for (i, a) in pieces.iter().enumerate() {
        for b in &pieces[i + 1..] {
            assert!(!ranges_overlap(a, b));
        }
    }
    assert_eq!(
        &last[..all.len() - expect.iter().map(|e| e.1).sum::<usize>()],
        &all[expect.iter().map(|e| e.1).sum::<usize>()..]
    );
    assert!(last[last.len() - spare..].iter().all(|&b| b == 0xff));
}

#[test]
fn read_path_reads_into_spare_and_splits_frames() {
    // Three length-prefixed frames, read in small pieces like a socket would deliver.
    let mut wire = Vec::new();
    for i in 0..3u8 {
        let body = pattern(i as usize, 100 + i as usize);
        wire.push(body.len() as u8);
        wire.extend_from_slice(&body);
    }
    let mut src = std::io::Cursor::new(wire.clone());
    let p = pool(1024, 1);
    let mut m = alloc(&p);
    let mut frames = Vec::new();
    loop {
        let spare = m.spare_mut();
        let want = spare.len().min(37);
        let n = src.read(&mut spare[..want]).unwrap_or(0);
        if n == 0 {
            break;
        }
        m.advance(n);
        while let Some(&flen) = m.filled().first() {
            let flen = flen as usize;
            if m.len() < 1 + flen {
                break;
            }
            drop(m.split_to(1));
            frames.push(m.split_to(flen));
        }
    }
    assert_eq!(frames.len(), 3);
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(&f[..], &pattern(i, 100 + i)[..]);
        assert!(p.contains(f.as_ptr()), "frame was copied out of the pool");
    }
    assert_eq!(m.consumed(), wire.len());
}

#[test]
fn extend_from_slice_copies_what_fits() {
    let mut m = BufMut::with_capacity(10);
    assert_eq!((m.capacity(), m.len(), m.remaining()), (10, 0, 10));
    assert!(m.is_empty());
    assert_eq!(m.extend_from_slice(b"0123456"), 7);
    assert_eq!(m.extend_from_slice(b"789abc"), 3);
    assert_eq!(m.extend_from_slice(b"z"), 0);
    assert_eq!(m.filled(), b"0123456789");
    assert_eq!(m.remaining(), 0);
    assert!(m.spare_mut().is_empty());
}

#[test]
fn heap_bufmut_is_zeroed_and_splits_share_memory() {
    let mut m = BufMut::with_capacity(1 << 20);
    assert!(m.spare_mut().iter().all(|&b| b == 0));
    let base = m.spare_mut().as_ptr();
    m.spare_mut()[..5].copy_from_slice(b"hello");
    m.advance(5);
    let a = m.split_to(2);
    let b = m.freeze();
    assert_eq!((&a[..], &b[..]), (&b"he"[..], &b"llo"[..]));
    assert_eq!(a.as_ptr(), base);
    assert_eq!(b.as_ptr(), base.wrapping_add(2));
    assert!(format!("{a:?}").contains("heap"));
}

#[cfg(not(debug_assertions))]
#[test]
fn over_advance_is_clamped() {
    let mut m = BufMut::with_capacity(8);
    m.advance(5);
    m.advance(100);
    assert_eq!((m.len(), m.remaining()), (8, 0));
    let mut l = BufList::from(Buf::from_static(b"abc"));
    l.advance(10);
    assert!(l.is_empty() && l.buf_count() == 0);
}

#[cfg(debug_assertions)]
#[test]
#[should_panic(expected = "spare bytes")]
fn over_advance_trips_debug_assert() {
    let mut m = BufMut::with_capacity(8);
    m.advance(9);
}

#[test]
#[should_panic(expected = "out of bounds")]
fn bufmut_split_past_filled_panics() {
    let mut m = BufMut::with_capacity(8);
    m.advance(2);
    let _ = m.split_to(3);
}

#[test]
fn buf_slice_bounds() {
    let b = Buf::from_static(b"0123456789");
    assert_eq!(&b.slice(..)[..], b"0123456789");
    assert_eq!(&b.slice(2..5)[..], b"234");
    assert_eq!(&b.slice(2..=5)[..], b"2345");
    assert_eq!(&b.slice(..3)[..], b"012");
    assert_eq!(&b.slice(7..)[..], b"789");
    assert!(b.slice(10..).is_empty());
    assert!(b.slice(4..4).is_empty());
    assert_eq!(b.slice(3..).as_ptr(), b.as_ptr().wrapping_add(3));
    assert!(b.try_slice(..11).is_none());
    assert!(b.try_slice(11..).is_none());
    assert!(b.try_slice(..=10).is_none());
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = b.try_slice(5..4);
    assert!(reversed.is_none());
    let excl = (
        std::ops::Bound::Excluded(usize::MAX),
        std::ops::Bound::Unbounded,
    );
    assert!(b.try_slice(excl).is_none());
    assert!(b.try_slice(..=usize::MAX).is_none());
    assert_eq!(b.try_slice(9..=9).as_deref(), Some(&b"9"[..]));
    // Slices of slices.
    assert_eq!(&b.slice(2..8).slice(1..3)[..], b"34");
}

#[test]
#[should_panic(expected = "out of bounds")]
fn buf_slice_out_of_range_panics() {
    let _ = Buf::from_static(b"abc").slice(1..4);
}

#[test]
fn buf_split_to() {
    let mut b = Buf::from_vec(b"headerbody".to_vec());
    let p = b.as_ptr();
    let h = b.split_to(6);
    assert_eq!((&h[..], &b[..]), (&b"header"[..], &b"body"[..]));
    assert_eq!(h.as_ptr(), p);
    assert_eq!(b.as_ptr(), p.wrapping_add(6));
    let rest = b.split_to(4);
    assert!(b.is_empty());
    assert_eq!(&rest[..], b"body");
}

#[test]
#[should_panic(expected = "out of bounds")]
fn buf_split_past_end_panics() {
    let _ = Buf::from_static(b"ab").split_to(3);
}

#[test]
fn buf_traits_and_conversions() {
    let p = pool(64, 1);
    let mut m = alloc(&p);
    m.extend_from_slice(b"same");
    let pooled = m.freeze();
    let heap = Buf::copy_from_slice(b"same");
    let stat = Buf::from("same");
    assert_eq!(pooled, heap);
    assert_eq!(heap, stat);
    assert_eq!(stat, Buf::from(&b"same"[..]));
    assert_eq!(Buf::from(b"same".to_vec()), pooled);
    assert_ne!(pooled, Buf::from("other"));
    assert!(pooled == b"same"[..]);
    assert_eq!(pooled.as_ref(), b"same");
    assert_eq!(pooled.iter().count(), 4); // via Deref
    let dbg = format!("{pooled:?}");
    assert!(dbg.contains("len: 4") && dbg.contains("pool"), "{dbg}");
    assert!(!dbg.contains("same") && !dbg.contains("115"), "{dbg}");
    assert!(format!("{stat:?}").contains("static"));
    assert!(Buf::new().is_empty() && Buf::default().is_empty());
    assert!(Buf::from_vec(Vec::new()).is_empty());
    let mut h = std::collections::HashSet::new();
    h.insert(pooled.clone());
    assert!(h.contains(&heap));
}

#[test]
fn zero_copy_from_vec_and_io_slices() {
    let v = pattern(1, 5000);
    let v_ptr = v.as_ptr();
    let b = Buf::from_vec(v);
    assert_eq!(b.as_ptr(), v_ptr, "from_vec copied");
    let p = pool(4096, 2);
    let mut m = alloc(&p);
    let chunk_ptr = m.spare_mut().as_ptr();
    m.extend_from_slice(b"pooled bytes");
    let pooled = m.freeze();
    assert_eq!(pooled.as_ptr(), chunk_ptr, "freeze copied");
    let stat = Buf::from_static(b"static");
    let list: BufList = [b.clone(), pooled.clone(), stat.clone()]
        .into_iter()
        .collect();
    let mut iov = Vec::new();
    assert_eq!(list.io_slices(&mut iov, 16), 3);
    for (s, b) in iov.iter().zip([&b, &pooled, &stat]) {
        assert_eq!(s.as_ptr(), b.as_ptr());
        assert_eq!(s.len(), b.len());
    }
    let clone = b.clone();
    assert_eq!(clone.as_ptr(), v_ptr, "clone copied");
}

#[test]
fn buflist_basics() {
    let mut l = BufList::new();
    assert!(l.is_empty());
    assert_eq!(l.contiguous(), Some(&[][..]));
    l.push(Buf::new());
    l.push(Buf::from_static(b""));
    assert_eq!(l.buf_count(), 0, "empty bufs must be skipped");
    l.push(Buf::from_static(b"abc"));
    assert_eq!(l.contiguous(), Some(&b"abc"[..]));
    l.push(Buf::from_vec(b"defg".to_vec()));
    assert_eq!((l.len(), l.buf_count()), (7, 2));
    assert_eq!(l.contiguous(), None);
    assert_eq!(l.to_vec(), b"abcdefg");
    let mut head = [0u8; 5];
    assert_eq!(l.copy_prefix(&mut head), 5);
    assert_eq!(&head, b"abcde");
    let mut all = [0u8; 9];
    assert_eq!(l.copy_prefix(&mut all), 7);
    assert_eq!(&all[..7], b"abcdefg");
    let mut other = BufList::from(b"hi".to_vec());
    other.push(Buf::from("jk"));
    l.append(other);
    assert_eq!((l.len(), l.buf_count()), (11, 4));
    assert_eq!(l.to_vec(), b"abcdefghijk");
    let mut empty = BufList::new();
    empty.append(l.clone());
    assert_eq!(empty.to_vec(), l.to_vec());
    assert_eq!(l.iter().map(Buf::len).collect::<Vec<_>>(), vec![3, 4, 2, 2]);
    assert_eq!((&l).into_iter().count(), 4);
    assert_eq!(l.bufs().len(), 4);
    let dbg = format!("{l:?}");
    assert!(dbg.contains("len: 11"), "{dbg}");
    let one = BufList::from(Buf::from("x"));
    assert_eq!(one.len(), 1);
}

#[test]
fn buflist_advance_across_boundaries() {
    let mut l: BufList = ["abc", "defg", "hi", "jklmn"]
        .into_iter()
        .map(Buf::from)
        .collect();
    let all = l.to_vec();
    let mut consumed = 0;
    for step in [1, 2, 5, 0, 3, 2] {
        l.advance(step);
        consumed += step;
        assert_eq!(l.to_vec(), &all[consumed..], "after consuming {consumed}");
        assert_eq!(l.len(), all.len() - consumed);
        let mut iov = Vec::new();
        let n = l.io_slices(&mut iov, 64);
        assert_eq!(n, l.buf_count());
        let joined: Vec<u8> = iov.iter().flat_map(|s| s.iter().copied()).collect();
        assert_eq!(joined, &all[consumed..]);
    }
    assert_eq!(consumed, 13);
    assert_eq!(l.buf_count(), 1);
    assert_eq!(l.contiguous(), Some(&b"n"[..]));
    l.advance(1);
    assert!(l.is_empty() && l.buf_count() == 0);
    l.push(Buf::from("again"));
    assert_eq!(l.to_vec(), b"again");
}

#[test]
fn buflist_io_slices_respects_max_and_appends() {
    let l: BufList = (0..10).map(|i| Buf::from_vec(pattern(i, 3))).collect();
    let prefix = Buf::from_static(b"pre");
    let mut iov = vec![IoSlice::new(&prefix)];
    assert_eq!(l.io_slices(&mut iov, 4), 4);
    assert_eq!(iov.len(), 5);
    assert_eq!(iov[1].as_ptr(), l.bufs()[0].as_ptr());
    assert_eq!(iov[4].as_ptr(), l.bufs()[3].as_ptr());
    assert_eq!(l.io_slices(&mut iov, 0), 0);
    let mut iov2 = Vec::new();
    assert_eq!(l.io_slices(&mut iov2, 100), 10);
}

#[test]
fn buflist_many_advances_compact_correctly() {
    let bufs: Vec<Buf> = (0..200)
        .map(|i| Buf::from_vec(pattern(i, 1 + i % 7)))
        .collect();
    let mut l: BufList = bufs.iter().cloned().collect();
    let all = l.to_vec();
    let mut consumed = 0;
    let mut i = 0;
    while !l.is_empty() {
        let step = (i % 5) + 1;
        let step = step.min(l.len());
        l.advance(step);
        consumed += step;
        i += 1;
        assert_eq!(l.len(), all.len() - consumed);
        assert_eq!(l.bufs().iter().map(Buf::len).sum::<usize>(), l.len());
        if i % 17 == 0 {
            assert_eq!(l.to_vec(), &all[consumed..]);
            l.push(Buf::from_static(b"+"));
            l.advance(0);
            let mut expect = all[consumed..].to_vec();
            expect.push(b'+');
            assert_eq!(l.to_vec(), expect);
            // Remove the marker again by rebuilding without it.
            let keep = l.len() - 1;
            let rebuilt: BufList = l.iter().cloned().collect::<BufList>();
            let mut fresh = BufList::new();
            let mut left = keep;
            for b in rebuilt.iter() {
                let take = b.len().min(left);
                fresh.push(b.slice(..take));
                left -= take;
            }
            l = fresh;
        }
    }
}

#[test]
fn buflist_advance_releases_pool_chunks() {
    let p = pool(128, 4);
    let mut l = BufList::new();
    for i in 0..4 {
        let mut m = alloc(&p);
        m.extend_from_slice(&pattern(i, 100));
        l.push(m.freeze());
    }
    assert_eq!(p.available(), 0);
    l.advance(150);
    assert_eq!(p.available(), 1, "fully written chunk not released");
    assert_eq!(l.bufs()[0].len(), 50);
    l.advance(250);
    assert_eq!(p.available(), 4);
    assert!(l.is_empty());
}

#[test]
fn pool_outlives_its_handles_while_bufs_live() {
    let p = pool(512, 2);
    let mut m = alloc(&p);
    m.extend_from_slice(b"survivor");
    let b = m.freeze();
    let weak_count_probe = p.clone();
    drop(p);
    assert_eq!(weak_count_probe.handle_count(), 2); // probe + the chunk's reference
    drop(weak_count_probe);
    let t = thread::spawn(move || b.to_vec());
    let bytes = t.join().unwrap_or_else(|_| panic!("reader panicked"));
    assert_eq!(bytes, b"survivor");
}

#[test]
fn multithread_stress_no_leak() {
    const THREADS: usize = 4;
    const ITERS: usize = 20_000;
    let p = pool(2048, 32);
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS)
        .map(|_| mpsc::channel::<(usize, Buf)>())
        .unzip();
    let mut handles = Vec::new();
    for (t, rx) in rxs.into_iter().enumerate() {
        let p = p.clone();
        let next = txs[(t + 1) % THREADS].clone();
        handles.push(thread::spawn(move || {
            let mut received = 0usize;
            let mut exhausted = 0usize;
            let check = |(seed, b): (usize, Buf)| {
                let expect = pattern(seed, 64 + seed % 500);
                assert_eq!(&b[..], &expect[..b.len()]);
            };
            for i in 0..ITERS {
                let seed = t * ITERS + i;
                let mut m = match p.alloc() {
                    Ok(m) => m,
                    Err(BufError::Exhausted { .. }) => {
                        exhausted += 1;
                        // Drain what others sent us to free chunks, then move on.
                        while let Ok(msg) = rx.try_recv() {
                            check(msg);
                            received += 1;
                        }
                        thread::yield_now();
                        continue;
                    }
                    Err(e) => panic!("{e}"),
                };
                let data = pattern(seed, 64 + seed % 500);
                m.extend_from_slice(&data);
                let head = m.split_to(data.len() / 2);
                let whole_clone = head.clone();
                drop(m.freeze());
                // Send one clone away, keep (and drop) the other here.
                if next.send((seed, whole_clone)).is_err() {
                    break;
                }
                assert_eq!(&head[..], &data[..data.len() / 2]);
                drop(head);
                while let Ok(msg) = rx.try_recv() {
                    check(msg);
                    received += 1;
                }
            }
            drop(next);
            (rx, received, exhausted)
        }));
    }
    drop(txs);
    let mut leftovers = Vec::new();
    for h in handles {
        let (rx, received, _exhausted) = h.join().unwrap_or_else(|_| panic!("worker panicked"));
        leftovers.push((rx, received));
    }
    let mut total = 0;
    for (rx, received) in leftovers {
        total += received + rx.try_iter().count();
    }
    assert!(total > 0);
    assert_eq!(p.available(), p.capacity(), "chunks leaked");
    assert_eq!(p.handle_count(), 1, "pool references leaked");
}

#[test]
fn large_frame_buffers_are_recycled_and_small_ones_are_not() {
    use crate::buf::recycle;
    // An unusual size, so that no other test running in parallel asks for this one.
    let cap = (5 << 20) + 123;
    let mut m = BufMut::for_frame(cap);
    assert!(m.capacity() >= cap && m.capacity() <= cap + cap / 8);
    let n = m.extend_from_slice(&vec![0xEE; cap]);
    assert_eq!(n, cap);
    let b = m.freeze();
    let first = b.as_slice().as_ptr();
    let view = b.slice(10..20);
    drop(b);
    // A view still holds the buffer: nothing is recycled yet.
    let mut again = BufMut::for_frame(cap);
    let second: *const u8 = again.spare_mut().as_ptr();
    assert_ne!(second, first);
    drop(again);
    drop(view);
    let (count, bytes) = recycle::cached();
    assert!(
        count >= 1 && bytes >= cap,
        "kept: {count} buffers, {bytes} bytes"
    );
    assert!(count <= recycle::MAX_CACHED && bytes <= recycle::MAX_CACHED_BYTES);
    // The same allocation comes back for a frame of about the same size, with its old
    // (initialised) bytes: `for_frame` promises no zeroes.
    let mut reused = BufMut::for_frame(cap - 1000);
    let p: *const u8 = reused.spare_mut().as_ptr();
    assert!(
        p == first || p == second,
        "a kept buffer is handed out again"
    );
    // Small buffers are left to the allocator.
    drop(BufMut::for_frame(1000).freeze());
    assert!(recycle::cached().1 >= bytes - (cap + cap / 8));
}

/// Pages of `[ptr, ptr + len)` resident in memory (`mincore`).
fn resident_pages(ptr: *const u8, len: usize) -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap();
    let pages = len.div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: `ptr` is the page-aligned start of a live mapping of at least `len` bytes (a
    // pool's arena, kept alive by the caller), and `vec` has one byte per page of it.
    let r = unsafe { libc::mincore(ptr as *mut libc::c_void, len, vec.as_mut_ptr()) };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|b| **b & 1 != 0).count()
}

#[test]
fn prefault_maps_every_page_in_at_creation() {
    let cfg = |prefault| PoolConfig {
        buf_size: 64 * 1024,
        count: 64,
        hugepages: false,
        lock: false,
        prefault,
    };
    let page = 4096;
    let p = BufPool::new(&cfg(true)).unwrap();
    let len = p.arena_len();
    assert_eq!(
        resident_pages(p.arena_ptr(), len),
        len / page,
        "every page resident before any buffer was used"
    );
    let lazy = BufPool::new(&cfg(false)).unwrap();
    assert!(
        resident_pages(lazy.arena_ptr(), lazy.arena_len()) < len / page / 2,
        "without prefault the pages come in on first touch"
    );
}

#[test]
fn the_chunk_freed_last_is_allocated_first() {
    let p = pool(4096, 8);
    let at = |b: &mut BufMut| b.spare_mut().as_ptr() as usize;
    let mut first = alloc(&p);
    let mut a = alloc(&p);
    let mut b = alloc(&p);
    let (pa, pb) = (at(&mut a), at(&mut b));
    assert_ne!(at(&mut first), pa);
    drop(a);
    drop(b);
    // Still warm in cache: the last one back goes out again first, then the one before.
    let mut again_b = alloc(&p);
    let mut again_a = alloc(&p);
    assert_eq!(at(&mut again_b), pb);
    assert_eq!(at(&mut again_a), pa);
    assert_eq!(p.available(), 8 - 3);
    drop((first, again_a, again_b));
    assert_eq!(p.available(), 8);
}
