//! Hugepage-backed anonymous memory arenas.
//!
//! [`Arena::map`] asks the kernel for hugetlb pages (`MAP_HUGETLB`, 2 MiB or 1 GiB). When
//! none are reserved and fallback is allowed it maps ordinary 4 KiB pages instead and
//! advises the kernel to back them with transparent hugepages (`MADV_HUGEPAGE`), logging a
//! single warning per process that explains how to reserve hugepages. [`Arena::backing`]
//! reports what was actually obtained. Arenas can be pinned with `mlock` so that NIC DMA /
//! RDMA registrations never see them swapped out.
//!
//! [`status`] reads the kernel's hugepage counters.
//!
//! This crate is Linux-only.

mod arena;
mod error;
mod status;
mod sys;

#[cfg(test)]
mod tests;

pub use arena::{Arena, ArenaOptions, Backing, PageSize};
pub use error::HugePageError;
pub use status::{status, HugePageStatus};
