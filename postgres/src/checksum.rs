//! Data page checksums, as a cluster initialized with `--data-checksums`
//! stores them in `pd_checksum` (bytes 8..10 of the page header).
//!
//! The algorithm: the page is read as 64 rows of 32 little-endian `u32`
//! words; 32 running sums, each started at its own constant, take one word
//! per row (`sum = (sum ^ word) * FNV_PRIME ^ ((sum ^ word) >> 17)`),
//! then two rounds of zero words; the sums are folded by XOR, the block
//! number is mixed in by XOR, and the result is reduced to `1..=65535` (mod
//! 65535, plus one). `pd_checksum` itself counts as zero. A new page (all
//! zero, `pd_upper == 0`) carries no checksum. Checked against the pages
//! of a real checksummed cluster (`tests/tests/page_checksum.rs`).

use crate::types::BLCKSZ;

/// Lanes of the checksum.
const LANES: usize = 32;

/// The FNV-1a prime.
const FNV_PRIME: u32 = 16_777_619;

/// Each lane's starting value.
const LANE_STARTS: [u32; LANES] = [
    0x5B1F_36E9,
    0xB852_5960,
    0x02AB_50AA,
    0x1DE6_6D2A,
    0x79FF_467A,
    0x9BB9_F8A3,
    0x217E_7CD2,
    0x83E1_3D2C,
    0xF8D4_474F,
    0xE39E_B970,
    0x42C6_AE16,
    0x9932_16FA,
    0x7B09_3B5D,
    0x98DA_FF3C,
    0xF718_902A,
    0x0B1C_9CDB,
    0xE58F_764B,
    0x1876_36BC,
    0x5D7B_3BB1,
    0xE73D_E7DE,
    0x92BE_C979,
    0xCCA6_C0B2,
    0x304A_0979,
    0x85AA_43D4,
    0x7831_25BB,
    0x6CA8_EAA2,
    0xE407_EAC6,
    0x4B5C_FC3E,
    0x9FBF_8C76,
    0x15CA_20BE,
    0xF2CA_9FD3,
    0x959B_D756,
];

/// Where `pd_checksum` is in a page.
pub const CHECKSUM_OFFSET: usize = 8;

/// Where `pd_upper` is in a page.
const UPPER_OFFSET: usize = 14;

fn mix(sum: u32, word: u32) -> u32 {
    let t = sum ^ word;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// The checksum of `page` as block `block` of its fork (its own
/// `pd_checksum` left out).
pub fn page_checksum(page: &[u8; BLCKSZ], block: u32) -> u16 {
    let mut sums = LANE_STARTS;
    for (row, words) in page.chunks_exact(LANES * 4).enumerate() {
        for (lane, word) in words.chunks_exact(4).enumerate() {
            let mut bytes = [word[0], word[1], word[2], word[3]];
            // pd_checksum is the low half of word 2 of row 0.
            if row == 0 && lane == CHECKSUM_OFFSET / 4 {
                bytes[0] = 0;
                bytes[1] = 0;
            }
            sums[lane] = mix(sums[lane], u32::from_le_bytes(bytes));
        }
    }
    for _ in 0..2 {
        for sum in &mut sums {
            *sum = mix(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, sum| acc ^ sum) ^ block;
    // The remainder is below 65535, so the sum fits.
    u16::try_from(folded % 65_535 + 1).unwrap_or(u16::MAX)
}

/// Whether `page` is new: never initialized, so it has no checksum.
pub fn page_is_new(page: &[u8; BLCKSZ]) -> bool {
    page[UPPER_OFFSET] == 0 && page[UPPER_OFFSET + 1] == 0
}

/// Sets `page`'s `pd_checksum` for block `block` (a new page is left as it
/// is).
pub fn set_page_checksum(page: &mut [u8; BLCKSZ], block: u32) {
    if page_is_new(page) {
        return;
    }
    let checksum = page_checksum(page, block);
    page[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 2].copy_from_slice(&checksum.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_checksum_and_the_block_number_are_what_change_it() {
        let mut page = [0u8; BLCKSZ];
        page[UPPER_OFFSET] = 0x20;
        for (i, byte) in page.iter_mut().enumerate().skip(24) {
            *byte = u8::try_from(i % 251).unwrap_or(0);
        }
        let sum = page_checksum(&page, 7);
        assert_ne!(sum, 0);
        page[CHECKSUM_OFFSET] = 0xAB;
        assert_eq!(page_checksum(&page, 7), sum, "pd_checksum counts as zero");
        assert_ne!(page_checksum(&page, 8), sum, "the block number is mixed in");
        set_page_checksum(&mut page, 7);
        assert_eq!(
            u16::from_le_bytes([page[CHECKSUM_OFFSET], page[CHECKSUM_OFFSET + 1]]),
            sum
        );
        let mut new = [0u8; BLCKSZ];
        set_page_checksum(&mut new, 3);
        assert!(new.iter().all(|b| *b == 0), "a new page stays zero");
    }
}
