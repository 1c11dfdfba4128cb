//! crc32c (Castagnoli), the checksum of preambles and payloads.
//!
//! Large inputs go to the `crc32c` crate (hardware, three interleaved streams). Small inputs —
//! every preamble and every small message, i.e. most calls — take a short inline loop over
//! the SSE4.2 `crc32` instruction: the crate's per-call set-up costs more than the whole
//! checksum of 36 or 64 bytes.

/// Below this size the inline loop is used.
const SMALL: usize = 256;

/// crc32c of `data` appended to a previous crc (0 to start), the same value as
/// `crc32c::crc32c_append`.
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
    crc32c::crc32c_append(crc, data)
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
    crc32c::crc32c(data)
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
    }
}
