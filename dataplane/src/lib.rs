//! dataplane: a message transport with one messenger over POSIX, RDMA and DPDK stacks.
