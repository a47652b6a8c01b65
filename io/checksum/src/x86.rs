//! The x86-64 implementation: carry-less-multiply folding for long inputs,
//! the `crc32` instruction for the rest.
//!
//! Arithmetic is on bit-reflected polynomials over GF(2) modulo the
//! Castagnoli polynomial. A 16-byte chunk `v` (low qword first in the
//! message) stands for `lo(x)·x^64 + hi(x)`. Moving it `D` bits further
//! along the message multiplies it by `x^D`; `pclmulqdq` of a 64-bit
//! reflected value with a 32-bit reflected constant `k` yields the product
//! times `x^33`, so the constants are `x^(D+31)` for the low qword and
//! `x^(D-33)` for the high one, reduced mod P (computed below at compile
//! time). Folding keeps everything congruent, so the final 16 bytes can be
//! checksummed as if they were the message. Where the CPU has AVX-512 and
//! VPCLMULQDQ, inputs of 256 bytes and more are folded 128 bytes a step,
//! four lanes per instruction.

use std::arch::x86_64::{
    __m128i, __m512i, _mm_clmulepi64_si128, _mm_crc32_u8, _mm_crc32_u32, _mm_crc32_u64,
    _mm_cvtsi128_si64, _mm_extract_epi64, _mm_set_epi64x, _mm_xor_si128, _mm512_clmulepi64_epi128,
    _mm512_extracti32x4_epi32, _mm512_loadu_si512, _mm512_set_epi64, _mm512_xor_si512,
};

/// The Castagnoli polynomial, bit-reflected (without the x^32 term).
const POLY: u32 = 0x82F6_3B78;

/// `x^n mod P`, bit-reflected: bit 31 is the coefficient of `x^0`.
const fn x_pow_mod(n: u32) -> u32 {
    let mut value: u32 = 0x8000_0000;
    let mut i = 0;
    while i < n {
        value = if value & 1 == 0 {
            value >> 1
        } else {
            (value >> 1) ^ POLY
        };
        i += 1;
    }
    value
}

/// Fold constants: (low qword, high qword) for a distance of `bits`.
const fn fold_constants(bits: u32) -> (u64, u64) {
    (x_pow_mod(bits + 31) as u64, x_pow_mod(bits - 33) as u64)
}

/// Four lanes of 16 bytes: each moves 512 bits per step.
const FOLD_BY_4: (u64, u64) = fold_constants(512);
/// Lanes merged into one: 128 bits.
const FOLD_BY_1: (u64, u64) = fold_constants(128);

/// Two 512-bit accumulators of four lanes: each lane moves 1024 bits per step.
const FOLD_BY_8: (u64, u64) = fold_constants(1024);

/// Inputs shorter than this go through `crc32` alone: folding costs a
/// fixed ~30 cycles to start and finish.
const FOLD_MIN: usize = 128;

/// Inputs at least this long are folded 128 bytes a step with 512-bit
/// carry-less multiplies, where the CPU has them.
const WIDE_FOLD_MIN: usize = 256;

/// Whether this CPU has what [`update`] uses (checked once, then cached by std).
#[inline]
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("sse4.2")
        && std::arch::is_x86_feature_detected!("pclmulqdq")
}

/// Whether this CPU also has 512-bit carry-less multiplies.
#[inline]
fn wide_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("vpclmulqdq")
}

/// Advances the CRC register `crc` (not inverted) over `bytes`.
/// Callers check [`available`] first.
#[inline]
pub(crate) fn update(crc: u32, bytes: &[u8]) -> u32 {
    debug_assert!(available());
    // SAFETY: `available()` (checked by every caller, and asserted above in
    // debug builds) found SSE 4.2 and PCLMULQDQ on this CPU, the only
    // target features `update_with_instructions` enables.
    unsafe { update_with_instructions(crc, bytes) }
}

/// Advances the CRC register `crc` (not inverted) over `first`, then `second`.
/// Callers check [`available`] first.
#[inline]
pub(crate) fn update_two(crc: u32, first: &[u8], second: &[u8]) -> u32 {
    debug_assert!(available());
    // SAFETY: as in `update`: the CPU has SSE 4.2 and PCLMULQDQ.
    unsafe { update_two_with_instructions(crc, first, second) }
}

#[target_feature(enable = "sse4.2,pclmulqdq")]
fn update_with_instructions(crc: u32, bytes: &[u8]) -> u32 {
    if bytes.len() < FOLD_MIN {
        return serial(crc, bytes);
    }
    if bytes.len() >= WIDE_FOLD_MIN && wide_available() {
        // SAFETY: `wide_available()` just found AVX-512F and VPCLMULQDQ;
        // SSE 4.2 and PCLMULQDQ are enabled for this function already.
        let (folded, rest) = unsafe { wide_fold(crc, bytes) };
        return serial(folded, rest);
    }
    let (folded, rest) = fold(crc, bytes);
    serial(folded, rest)
}

/// 64 bytes at `at` as four 128-bit lanes.
#[target_feature(enable = "avx512f")]
fn load_wide(bytes: &[u8], at: usize) -> __m512i {
    let chunk = &bytes[at..at + 64];
    // SAFETY: `chunk` is 64 readable bytes (the slice above is bounds
    // checked); the load has no alignment requirement.
    unsafe { _mm512_loadu_si512(chunk.as_ptr().cast()) }
}

/// Each 128-bit lane of `v` moved forward by the distance `constants` stand for.
#[target_feature(enable = "avx512f,vpclmulqdq")]
#[allow(clippy::cast_possible_wrap)] // constants are bit patterns
fn fold_forward_wide(v: __m512i, constants: (u64, u64)) -> __m512i {
    let (low, high) = (constants.0 as i64, constants.1 as i64);
    let k = _mm512_set_epi64(high, low, high, low, high, low, high, low);
    _mm512_xor_si512(
        _mm512_clmulepi64_epi128::<0x00>(v, k),
        _mm512_clmulepi64_epi128::<0x11>(v, k),
    )
}

/// As [`fold`], 128 bytes a step in two 512-bit accumulators (`bytes` at
/// least 128 long); what is left is under 128 bytes.
#[target_feature(enable = "sse4.2,pclmulqdq,avx512f,vpclmulqdq")]
fn wide_fold(crc: u32, bytes: &[u8]) -> (u32, &[u8]) {
    let register = _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, i64::from(crc));
    let mut first = _mm512_xor_si512(load_wide(bytes, 0), register);
    let mut second = load_wide(bytes, 64);
    let mut at = 128;
    while bytes.len() - at >= 128 {
        first = _mm512_xor_si512(fold_forward_wide(first, FOLD_BY_8), load_wide(bytes, at));
        second = _mm512_xor_si512(
            fold_forward_wide(second, FOLD_BY_8),
            load_wide(bytes, at + 64),
        );
        at += 128;
    }
    let merged = _mm512_xor_si512(fold_forward_wide(first, FOLD_BY_4), second);
    let lanes = [
        _mm512_extracti32x4_epi32::<0>(merged),
        _mm512_extracti32x4_epi32::<1>(merged),
        _mm512_extracti32x4_epi32::<2>(merged),
        _mm512_extracti32x4_epi32::<3>(merged),
    ];
    (merge_lanes(lanes), &bytes[at..])
}

#[target_feature(enable = "sse4.2,pclmulqdq")]
fn update_two_with_instructions(crc: u32, first: &[u8], second: &[u8]) -> u32 {
    // The common WAL case (a short record body, then 20 header bytes) in
    // this one call.
    if first.len() < FOLD_MIN && second.len() < FOLD_MIN {
        return serial(serial(crc, first), second);
    }
    let crc = update_with_instructions(crc, first);
    update_with_instructions(crc, second)
}

fn qword(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[target_feature(enable = "sse4.2,pclmulqdq")]
#[allow(clippy::cast_possible_wrap)] // qwords are bit patterns
fn load(bytes: &[u8], at: usize) -> __m128i {
    _mm_set_epi64x(qword(bytes, at + 8) as i64, qword(bytes, at) as i64)
}

/// `v` moved forward by the distance `constants` stand for.
#[target_feature(enable = "sse4.2,pclmulqdq")]
#[allow(clippy::cast_possible_wrap)] // constants are bit patterns
fn fold_forward(v: __m128i, constants: (u64, u64)) -> __m128i {
    let k = _mm_set_epi64x(constants.1 as i64, constants.0 as i64);
    _mm_xor_si128(
        _mm_clmulepi64_si128::<0x00>(v, k),
        _mm_clmulepi64_si128::<0x11>(v, k),
    )
}

/// Folds `bytes` (at least 64 long) 64 bytes at a time; returns the
/// register after the folded part, and what is left (under 64 bytes).
#[target_feature(enable = "sse4.2,pclmulqdq")]
fn fold(crc: u32, bytes: &[u8]) -> (u32, &[u8]) {
    // The register joins the message: XOR it into the first four bytes.
    let mut lanes = [
        _mm_xor_si128(load(bytes, 0), _mm_set_epi64x(0, i64::from(crc))),
        load(bytes, 16),
        load(bytes, 32),
        load(bytes, 48),
    ];
    let mut at = 64;
    while bytes.len() - at >= 64 {
        for (i, lane) in lanes.iter_mut().enumerate() {
            *lane = _mm_xor_si128(fold_forward(*lane, FOLD_BY_4), load(bytes, at + 16 * i));
        }
        at += 64;
    }
    (merge_lanes(lanes), &bytes[at..])
}

/// Folds four consecutive 16-byte lanes into one and checksums it: the
/// register after the bytes the lanes stand for.
#[target_feature(enable = "sse4.2,pclmulqdq")]
#[allow(clippy::cast_sign_loss, clippy::cast_possible_truncation)] // bit patterns; crc32_u64 leaves the upper half zero
fn merge_lanes(lanes: [__m128i; 4]) -> u32 {
    let mut merged = lanes[0];
    for lane in &lanes[1..] {
        merged = _mm_xor_si128(fold_forward(merged, FOLD_BY_1), *lane);
    }
    let low = _mm_cvtsi128_si64(merged) as u64;
    let high = _mm_extract_epi64::<1>(merged) as u64;
    _mm_crc32_u64(_mm_crc32_u64(0, low), high) as u32
}

/// The `crc32` instruction, eight bytes at a time.
#[target_feature(enable = "sse4.2")]
#[allow(clippy::cast_possible_truncation)] // crc32_u64 leaves the upper half zero
fn serial(crc: u32, bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(8);
    let mut register = u64::from(crc);
    for word in words.by_ref() {
        let mut qword = [0u8; 8];
        qword.copy_from_slice(word);
        register = _mm_crc32_u64(register, u64::from_le_bytes(qword));
    }
    let mut crc = register as u32;
    let mut tail = words.remainder();
    if tail.len() >= 4 {
        crc = _mm_crc32_u32(
            crc,
            u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]),
        );
        tail = &tail[4..];
    }
    for &byte in tail {
        crc = _mm_crc32_u8(crc, byte);
    }
    crc
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data bytes
mod tests {
    use super::{available, fold, serial, wide_available, wide_fold};

    /// Both folds, whichever one `update` would pick on this CPU, against
    /// the reference crate (which never folds).
    #[test]
    fn both_folds_agree_with_the_reference() {
        if !available() {
            return;
        }
        let data: Vec<u8> = (0..3000u32)
            .map(|i| (i.wrapping_mul(40_503) >> 7) as u8)
            .collect();
        for len in 128..data.len() {
            let bytes = &data[..len];
            let expected = crc32c::crc32c(bytes);
            // SAFETY: `available()` found SSE 4.2 and PCLMULQDQ.
            let narrow = unsafe {
                let (folded, rest) = fold(!0, bytes);
                !serial(folded, rest)
            };
            assert_eq!(narrow, expected, "narrow fold of {len} bytes");
            if wide_available() {
                // SAFETY: `wide_available()` found AVX-512F and VPCLMULQDQ too.
                let wide = unsafe {
                    let (folded, rest) = wide_fold(!0, bytes);
                    !serial(folded, rest)
                };
                assert_eq!(wide, expected, "wide fold of {len} bytes");
            }
        }
    }
}
