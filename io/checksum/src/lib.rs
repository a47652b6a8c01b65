//! CRC-32C (Castagnoli), the checksum of Postgres' WAL records and of every
//! byte Quire writes.
//!
//! This crate belongs to `io` (it lives in `io/checksum`): it is the one
//! place Quire calls the CPU's checksum instructions, which Rust only
//! offers as `unsafe` intrinsics. It is a crate of its own so that the pure
//! format crates (`postgres`, `layerfmt`) get fast checksums without
//! depending on the I/O runtime.
//!
//! Why not the `crc32c` crate alone: WAL records average ~240 bytes, and
//! its per-call dispatch costs about as much as checksumming such a record.
//! Long inputs are folded with carry-less multiplies: 128 bytes a step
//! with 512-bit `vpclmulqdq` where the CPU has it, else 64 bytes a step
//! with `pclmulqdq` (four 128-bit lanes); only the last 16 bytes and the
//! tail go through the `crc32` instruction, as do inputs under 128 bytes
//! (measured on this project's AMD Zen 4 host: `crc32` takes 3 cycles and
//! starts one per cycle, so one dependent chain runs at a third of its
//! throughput; folding keeps many multiplies in flight). Without SSE 4.2
//! and PCLMULQDQ (or off x86-64) the `crc32c` crate computes the same
//! values.
//!
//! Values are the finished CRC (initial `!0`, final inversion), as the
//! `crc32c` crate and Postgres' `COMP_CRC32C`/`FIN_CRC32C` produce them;
//! [`crc32c_append`] continues a finished value over more bytes.

#[cfg(target_arch = "x86_64")]
mod x86;

/// CRC-32C of `bytes`.
#[inline]
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c_append(0, bytes)
}

/// CRC-32C of the bytes `crc` was computed over followed by `bytes`:
/// `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
#[inline]
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        return !x86::update(!crc, bytes);
    }
    crc32c::crc32c_append(crc, bytes)
}

/// CRC-32C of `first` followed by `second`, in one call (a WAL record's
/// CRC covers its body, then the start of its header).
#[inline]
pub fn crc32c_concat(first: &[u8], second: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if x86::available() {
        return !x86::update_two(!0, first, second);
    }
    crc32c::crc32c_append(crc32c::crc32c(first), second)
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data bytes
mod tests {
    use super::{crc32c, crc32c_append, crc32c_concat};

    fn check(input: &[u8], expected: u32) {
        assert_eq!(crc32c(input), expected, "crc32c of {input:?}");
        assert_eq!(crc32c::crc32c(input), expected, "reference crate");
    }

    #[test]
    fn known_values() {
        check(b"", 0);
        check(b"123456789", 0xE306_9283);
        check(&[0u8; 32], 0x8A91_36AA);
        check(&[0xFFu8; 32], 0x62A8_AB43);
    }

    #[test]
    fn agrees_with_the_reference_at_every_length_and_offset() {
        let data: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for offset in 0..9 {
            for len in 0..(data.len() - offset) {
                let bytes = &data[offset..offset + len];
                assert_eq!(
                    crc32c(bytes),
                    crc32c::crc32c(bytes),
                    "len {len} at {offset}"
                );
            }
        }
    }

    #[test]
    fn append_continues() {
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 + 3) as u8).collect();
        for split in [0, 1, 20, 63, 64, 65, 127, 128, 129, 1000, 2999, 3000] {
            let (a, b) = data.split_at(split);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data), "split {split}");
            assert_eq!(crc32c_concat(a, b), crc32c(&data), "concat split {split}");
        }
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_bytes_any_split_agree_with_the_reference(
            bytes in proptest::collection::vec(any::<u8>(), 0..20_000),
            split in any::<proptest::sample::Index>(),
            seed in any::<u32>(),
        ) {
            let split = split.index(bytes.len() + 1);
            let (a, b) = bytes.split_at(split);
            prop_assert_eq!(super::crc32c(&bytes), crc32c::crc32c(&bytes));
            prop_assert_eq!(super::crc32c_append(seed, b), crc32c::crc32c_append(seed, b));
            prop_assert_eq!(super::crc32c_concat(a, b), crc32c::crc32c(&bytes));
        }
    }
}
