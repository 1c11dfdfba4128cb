//! Raw FFI to DPDK: the bindgen output for a small allowlist (EAL, mempool, ethdev control
//! functions) and the C shim (`csrc/shim.c`) that exports DPDK's static-inline fast-path
//! functions. Everything `unsafe` about DPDK is confined to this module and [`safe`].

#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    missing_docs,
    clippy::all
)]

pub mod safe;

use std::marker::{PhantomData, PhantomPinned};

/// A DPDK packet buffer, only ever handled through pointers.
#[repr(C)]
pub struct rte_mbuf {
    _private: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

/// A DPDK memory pool, only ever handled through pointers.
#[repr(C)]
pub struct rte_mempool {
    _private: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
