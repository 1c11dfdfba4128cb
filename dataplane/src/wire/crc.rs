//! crc32c (Castagnoli), the checksum of preambles and payloads.
//!
//! Large inputs go to the `crc-fast` crate: carry-less multiplication folding, 512 bits at a
//! time where the CPU has AVX-512 VPCLMULQDQ (chosen at run time, with a table fallback on
//! other CPUs). On the 2-core Intel Xeon VM of `docs/benchmarks.md` it checksums an 8 KiB
//! block (a batch frame) in 131 ns against 457 ns for the `crc32c` crate's three interleaved
//! `crc32` streams used before: 62 against 18 GB/s (`payload_crc_cost` example). Small inputs — every preamble and every
//! small message, i.e. most calls — take a short inline loop over the SSE4.2 `crc32`
//! instruction: a crate's per-call set-up costs more than the whole checksum of 36 or 64
//! bytes.

/// Below this size the inline loop is used.
const SMALL: usize = 256;

/// crc32c of `data` appended to a previous crc (0 to start): the crc of the two inputs one
/// after the other.
#[inline]
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    if data.is_empty() {
        return crc;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if data.len() < SMALL && std::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2 (checked just above; the check is cached).
            return unsafe { small_sse42(crc, data) };
        }
    }
    large(crc, data)
}

/// [`crc32c_append`] by `crc-fast`. Its digest holds the register before the final inversion,
/// so a previous crc continues from its inverse.
fn large(crc: u32, data: &[u8]) -> u32 {
    let mut d =
        crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    d.update(data);
    // CRC-32/ISCSI is 32 bits wide: the digest's value fits.
    d.finalize() as u32
}

/// crc32c of `data`.
#[inline]
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// crc32c of a fixed-size input (a preamble), the same value as [`crc32c`]. The size being
/// known at compile time, the inline loop is fully unrolled.
#[inline]
pub fn crc32c_array<const N: usize>(data: &[u8; N]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if N < SMALL && std::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2 (checked just above; the check is cached).
            return unsafe { array_sse42(data) };
        }
    }
    large(0, data)
}

/// [`small_sse42`] from 0 for a size known at compile time (unrolled once inlined).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn array_sse42<const N: usize>(data: &[u8; N]) -> u32 {
    // SAFETY: this function has the same target features as `small_sse42`.
    unsafe { small_sse42(0, data) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
#[inline]
unsafe fn small_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u16, _mm_crc32_u32, _mm_crc32_u64, _mm_crc32_u8};
    let mut c = u64::from(!crc);
    let mut rest = data;
    // Four words per iteration: less loop overhead for the typical 64-byte payload.
    while let Some((w, tail)) = rest.split_first_chunk::<32>() {
        for i in 0..4 {
            let mut word = [0u8; 8];
            word.copy_from_slice(&w[i * 8..i * 8 + 8]);
            c = _mm_crc32_u64(c, u64::from_le_bytes(word));
        }
        rest = tail;
    }
    while let Some((w, tail)) = rest.split_first_chunk::<8>() {
        c = _mm_crc32_u64(c, u64::from_le_bytes(*w));
        rest = tail;
    }
    // At most 7 bytes left: one step each of 4, 2 and 1 bytes at most.
    let mut c = c as u32;
    if let Some((w, tail)) = rest.split_first_chunk::<4>() {
        c = _mm_crc32_u32(c, u32::from_le_bytes(*w));
        rest = tail;
    }
    if let Some((w, tail)) = rest.split_first_chunk::<2>() {
        c = _mm_crc32_u16(c, u16::from_le_bytes(*w));
        rest = tail;
    }
    if let Some(b) = rest.first() {
        c = _mm_crc32_u8(c, *b);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vector() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    proptest! {
        #[test]
        fn fixed_size_matches_the_crate(data in proptest::array::uniform32(any::<u8>()), tail in proptest::array::uniform4(any::<u8>())) {
            let mut a = [0u8; 36];
            a[..32].copy_from_slice(&data);
            a[32..].copy_from_slice(&tail);
            prop_assert_eq!(crc32c_array(&a), crc32c::crc32c(&a));
            prop_assert_eq!(crc32c_array(&data), crc32c::crc32c(&data));
            prop_assert_eq!(crc32c_array(&tail), crc32c::crc32c(&tail));
        }

        #[test]
        fn matches_the_crate_for_every_size_and_split(data in proptest::collection::vec(any::<u8>(), 0..700), split in 0usize..700, seed in any::<u32>()) {
            prop_assert_eq!(crc32c_append(seed, &data), crc32c::crc32c_append(seed, &data));
            let s = split.min(data.len());
            prop_assert_eq!(crc32c_append(crc32c(&data[..s]), &data[s..]), crc32c::crc32c(&data));
        }

        /// Sizes where the folding code changes width (16, 64, 256 bytes and up) and blocks as
        /// large as batch frames and payloads, continued from any crc at any split.
        #[test]
        fn large_inputs_match_the_crate(data in proptest::collection::vec(any::<u8>(), 200..20_000), split in 0usize..20_000, seed in any::<u32>()) {
            prop_assert_eq!(crc32c_append(seed, &data), crc32c::crc32c_append(seed, &data));
            let s = split.min(data.len());
            prop_assert_eq!(crc32c_append(crc32c(&data[..s]), &data[s..]), crc32c::crc32c(&data));
        }
    }

    #[test]
    fn every_length_up_to_a_few_blocks_matches_the_crate() {
        let data: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            assert_eq!(
                crc32c(&data[..len]),
                crc32c::crc32c(&data[..len]),
                "length {len}"
            );
        }
        // A megabyte: the widest loop many times over.
        let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        assert_eq!(crc32c_append(7, &big), crc32c::crc32c_append(7, &big));
    }
}
