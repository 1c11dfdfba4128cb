//! Zero-copy buffers: a hugepage-backed buffer pool, uniquely owned writable buffers,
//! shared immutable byte views and scatter-gather lists.
//!
//! A payload travels from the user to `writev`, and from `read` to the dispatcher, without
//! being copied:
//!
//! * [`BufPool`] carves fixed-size chunks out of one [`hugepages::Arena`] (one memory region
//!   to register with an RDMA NIC). Allocation is a lock-free pop from a bounded queue; an
//!   empty pool is reported as [`BufError::Exhausted`], never by blocking or panicking.
//! * [`BufMut`] is a uniquely owned, writable chunk (or heap allocation). The receive path
//!   reads into [`BufMut::spare_mut`], marks bytes with [`BufMut::advance`] and cuts complete
//!   frames off with [`BufMut::split_to`].
//! * [`Buf`] is an immutable, cheaply clonable view. Pool-backed `Buf`s keep their chunk alive
//!   through a reference count stored in the pool's per-chunk metadata, so allocating,
//!   cloning and dropping never touch the heap allocator. The chunk goes back to the pool when
//!   the last `Buf`/`BufMut` referring to it is dropped, on any thread.
//! * [`BufList`] is a scatter-gather list of `Buf`s (Ceph's `bufferlist`) that hands
//!   [`std::io::IoSlice`]s pointing at the original bytes to `writev`.

#[allow(clippy::module_inception)]
mod buf;
mod buf_mut;
mod error;
mod free_stack;
mod list;
mod pool;
pub mod recycle;

#[cfg(test)]
mod tests;

pub use buf::Buf;
pub use buf_mut::BufMut;
pub use error::BufError;
pub use list::BufList;
pub use pool::{BufPool, PoolConfig};
