//! Hugepage arenas (being written).
