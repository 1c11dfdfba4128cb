//! Unit tests. They never change system settings (no writes to nr_hugepages); the hugetlb
//! assertions adapt to whatever the machine has reserved.

use super::*;
use std::path::PathBuf;

const MIB: usize = 1 << 20;

fn must_map(o: &ArenaOptions) -> Arena {
    Arena::map(o).unwrap_or_else(|e| panic!("mapping {o:?} failed: {e}"))
}

fn opts(size: usize) -> ArenaOptions {
    ArenaOptions {
        size,
        ..ArenaOptions::default()
    }
}

fn overcommit_2m() -> u64 {
    std::fs::read_to_string("/proc/sys/vm/nr_overcommit_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Writes a pattern over the whole arena and reads it back; checks it started zeroed.
fn check_rw(arena: &Arena) {
    // SAFETY: the arena owns `len` writable bytes at `as_ptr`, and this test holds the only
    // reference to them for the duration of the slice.
    let mem = unsafe { std::slice::from_raw_parts_mut(arena.as_ptr(), arena.len()) };
    assert!(mem.iter().all(|&b| b == 0), "fresh arena is not zeroed");
    for (i, b) in mem.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    assert!(mem.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
    assert_eq!(mem[mem.len() - 1], ((mem.len() - 1) % 251) as u8);
}

#[test]
fn default_options() {
    let o = ArenaOptions::default();
    assert_eq!(o.size, 0);
    assert_eq!(o.page_size, PageSize::Huge2M);
    assert!(!o.lock && o.allow_fallback && !o.populate);
}

#[test]
fn zero_size_is_an_error() {
    let err = Arena::map(&opts(0)).err().map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|m| m.contains("size 0")),
        "{err:?}"
    );
}

#[test]
fn size_overflow_is_an_error() {
    let err = Arena::map(&opts(usize::MAX - 5)).err();
    assert!(
        matches!(err, Some(HugePageError::SizeOverflow { .. })),
        "{err:?}"
    );
}

#[test]
fn small_arena_with_fallback_always_maps() {
    let before = status().unwrap_or_default();
    let arena = must_map(&opts(4 * MIB));
    assert_eq!(arena.len(), 4 * MIB);
    assert!(!arena.is_empty());
    assert!(!arena.is_locked());
    assert_eq!(arena.as_ptr() as usize % (2 * MIB), 0, "not 2 MiB aligned");
    if before.free_2m >= 2 {
        assert_eq!(arena.backing(), Backing::Hugetlb2M);
        let after = status().unwrap_or_default();
        // The mapping reserves its pages at mmap time (unless another process raced us).
        assert!(after.free_2m <= before.free_2m);
    } else {
        assert!(
            matches!(arena.backing(), Backing::TransparentHuge | Backing::Small),
            "{:?}",
            arena.backing()
        );
    }
    check_rw(&arena);
}

#[test]
fn odd_size_is_rounded_up() {
    assert_eq!(must_map(&opts(4097)).len(), 2 * MIB);
}

#[test]
fn populate_maps_and_is_writable() {
    let arena = must_map(&ArenaOptions {
        populate: true,
        ..opts(2 * MIB + 1)
    });
    assert_eq!(arena.len(), 4 * MIB);
    check_rw(&arena);
}

#[test]
fn base_pages_are_small() {
    let arena = must_map(&ArenaOptions {
        page_size: PageSize::Base,
        populate: true,
        ..opts(10_000)
    });
    assert_eq!(arena.backing(), Backing::Small);
    assert_eq!(
        arena.len(),
        10_000usize.next_multiple_of(sys::base_page_size())
    );
    check_rw(&arena);
}

#[test]
fn no_fallback_beyond_free_2m_pages_is_a_clear_error() {
    let st = status().unwrap_or_default();
    if overcommit_2m() > 0 {
        eprintln!("skipped: nr_overcommit_hugepages > 0, the kernel may grant extra pages");
        return;
    }
    // One page more than is free: the kernel must refuse, whatever is reserved.
    let pages = usize::try_from(st.free_2m + 1).unwrap_or(usize::MAX / (4 * MIB));
    let res = Arena::map(&ArenaOptions {
        allow_fallback: false,
        ..opts(pages * 2 * MIB)
    });
    match res {
        Ok(a) => panic!("mapped {a:?} although only {} pages are free", st.free_2m),
        Err(e @ HugePageError::Unavailable { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("fallback is disabled"), "{msg}");
            assert!(msg.contains("/proc/sys/vm/nr_hugepages"), "{msg}");
            assert!(msg.contains("2 MiB"), "{msg}");
        }
        Err(e) => panic!("unexpected error kind: {e}"),
    }
}

#[test]
fn no_fallback_1g_without_free_pages_is_a_clear_error() {
    let st = status().unwrap_or_default();
    if st.free_1g > 0 {
        eprintln!("skipped: 1 GiB hugepages are reserved on this machine");
        return;
    }
    let res = Arena::map(&ArenaOptions {
        page_size: PageSize::Huge1G,
        allow_fallback: false,
        ..opts(4 * MIB)
    });
    match res {
        Ok(a) => panic!("mapped {a:?} without free 1 GiB pages"),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("hugepages-1048576kB/nr_hugepages"), "{msg}");
            assert!(msg.contains("1 GiB"), "{msg}");
        }
    }
}

#[test]
fn fallback_for_1g_rounds_to_2m() {
    let st = status().unwrap_or_default();
    let arena = must_map(&ArenaOptions {
        page_size: PageSize::Huge1G,
        ..opts(3 * MIB)
    });
    if st.free_1g == 0 {
        assert_eq!(arena.len(), 4 * MIB);
        assert!(!arena.backing().is_hugetlb());
    } else {
        assert_eq!(arena.len(), 1 << 30);
        assert_eq!(arena.backing(), Backing::Hugetlb1G);
    }
}

#[test]
fn lock_is_reported() {
    let root = sys::euid() == 0;
    // Locked at map time.
    match Arena::map(&ArenaOptions {
        lock: true,
        ..opts(2 * MIB)
    }) {
        Ok(a) => {
            assert!(a.is_locked());
            check_rw(&a);
        }
        Err(e) => {
            assert!(!root, "root could not mlock 2 MiB: {e}");
            assert!(e.to_string().contains("ulimit -l"), "{e}");
        }
    }
    // Locked later.
    let mut a = must_map(&opts(2 * MIB));
    assert!(!a.is_locked());
    match a.lock() {
        Ok(()) => {
            assert!(a.is_locked());
            assert!(a.lock().is_ok(), "second lock must be a no-op");
        }
        Err(e) => {
            assert!(!root, "root could not mlock: {e}");
            assert!(!a.is_locked());
        }
    }
}

#[test]
fn lock_error_mentions_memlock() {
    let e = HugePageError::Lock {
        len: 1,
        limit: String::from("8 bytes"),
        source: std::io::Error::from_raw_os_error(libc::ENOMEM),
    };
    let msg = e.to_string();
    assert!(
        msg.contains("RLIMIT_MEMLOCK") && msg.contains("ulimit -l"),
        "{msg}"
    );
}

#[test]
fn status_is_consistent() {
    let st = match status() {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    };
    assert!(st.free_2m <= st.total_2m, "{st:?}");
    assert!(st.free_1g <= st.total_1g, "{st:?}");
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hugepages-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn status_missing_dirs_are_zero_and_garbage_is_an_error() {
    let root = scratch_dir("status");
    let two_m = root.join("hugepages-2048kB");
    std::fs::create_dir_all(&two_m).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(two_m.join("nr_hugepages"), "16\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(two_m.join("free_hugepages"), "3\n").unwrap_or_else(|e| panic!("{e}"));
    let st = status::status_at(&root).map_err(|e| e.to_string());
    assert_eq!(
        st,
        Ok(HugePageStatus {
            total_2m: 16,
            free_2m: 3,
            total_1g: 0,
            free_1g: 0
        })
    );
    std::fs::write(two_m.join("free_hugepages"), "lots\n").unwrap_or_else(|e| panic!("{e}"));
    let err = status::status_at(&root).err().map(|e| e.to_string());
    assert!(
        err.as_deref()
            .is_some_and(|m| m.contains("free_hugepages") && m.contains("lots")),
        "{err:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn arena_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Arena>();
    check::<HugePageError>();
}
