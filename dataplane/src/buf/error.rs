//! Errors of the buffer module.

/// Failure to create a [`BufPool`](super::BufPool) or to allocate from it.
#[derive(Debug, thiserror::Error)]
pub enum BufError {
    /// Every chunk of the pool is in use. Not fatal: retry after buffers are released, or
    /// fall back to [`BufMut::with_capacity`](super::BufMut::with_capacity).
    #[error("buffer pool exhausted: all {count} buffers of {buf_size} bytes are in use")]
    Exhausted {
        /// Size of one pool buffer in bytes.
        buf_size: usize,
        /// Number of buffers in the pool.
        count: usize,
    },

    /// The pool's memory arena could not be mapped or locked.
    #[error("cannot set up buffer pool memory: {0}")]
    Arena(#[from] hugepages::HugePageError),

    /// The [`PoolConfig`](super::PoolConfig) is unusable; the message says why.
    #[error("invalid buffer pool configuration: {0}")]
    InvalidConfig(String),
}
