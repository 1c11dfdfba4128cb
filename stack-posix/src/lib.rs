//! POSIX stack (being written).
