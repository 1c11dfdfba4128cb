//! Hugepage pool counters from sysfs.

use std::io;
use std::path::{Path, PathBuf};

use crate::HugePageError;

/// Root of the per-size hugepage counters.
const SYSFS_HUGEPAGES: &str = "/sys/kernel/mm/hugepages";

/// Reserved and free hugepages per size, as reported by the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HugePageStatus {
    /// Reserved 2 MiB pages (`hugepages-2048kB/nr_hugepages`).
    pub total_2m: u64,
    /// Free 2 MiB pages (`hugepages-2048kB/free_hugepages`).
    pub free_2m: u64,
    /// Reserved 1 GiB pages (`hugepages-1048576kB/nr_hugepages`).
    pub total_1g: u64,
    /// Free 1 GiB pages (`hugepages-1048576kB/free_hugepages`).
    pub free_1g: u64,
}

/// Reads the hugepage counters from `/sys/kernel/mm/hugepages/hugepages-*/`.
///
/// A missing directory (size not supported by the CPU/kernel) counts as 0 pages.
pub fn status() -> Result<HugePageStatus, HugePageError> {
    status_at(Path::new(SYSFS_HUGEPAGES))
}

pub(crate) fn status_at(root: &Path) -> Result<HugePageStatus, HugePageError> {
    let (total_2m, free_2m) = read_size(&root.join("hugepages-2048kB"))?;
    let (total_1g, free_1g) = read_size(&root.join("hugepages-1048576kB"))?;
    Ok(HugePageStatus {
        total_2m,
        free_2m,
        total_1g,
        free_1g,
    })
}

fn read_size(dir: &Path) -> Result<(u64, u64), HugePageError> {
    if !dir.is_dir() {
        return Ok((0, 0));
    }
    Ok((
        read_counter(dir.join("nr_hugepages"))?,
        read_counter(dir.join("free_hugepages"))?,
    ))
}

fn read_counter(path: PathBuf) -> Result<u64, HugePageError> {
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(source) => return Err(HugePageError::StatusRead { path, source }),
    };
    let value = text.trim();
    value.parse().map_err(|_| HugePageError::StatusParse {
        value: value.to_owned(),
        path,
    })
}
