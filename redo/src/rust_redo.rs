//! Redo that needs no Postgres: `pg_xact` status bits, multixact offsets and
//! members, and visibility-map bits, applied to an 8 KiB page in place.
//!
//! Each routine does exactly what Postgres 17's own code does to the page
//! (`clog.c` `TransactionIdSetStatusBit`, `multixact.c` `RecordNewMultiXact`,
//! `visibilitymap.c` `visibilitymap_clear` and
//! `visibilitymap_prepare_truncate` as recovery runs them: no page LSN is
//! set). Full-page images never get here: ingest stores them as images.
//! The oracle (`quire verify`) compares every page these produce with the
//! page Postgres wrote.

use quire_postgres::types::BLCKSZ;
use quire_postgres::wal::effects::set_page_lsn;

const _: () = assert!(BLCKSZ == 8192, "the page layouts below assume 8 KiB pages");

use crate::record::RedoRecord;

/// Transactions per `pg_xact` page (2 bits each).
pub const CLOG_XACTS_PER_PAGE: u32 = 8192 * 4;
/// Multixact offset entries per page (4 bytes each).
pub const MULTIXACT_OFFSETS_PER_PAGE: u32 = 8192 / 4;
/// Member groups per members page: 4 flag bytes and 4 xids per group.
const MEMBER_GROUPS_PER_PAGE: u32 = 8192 / 20;
/// Members per members page.
pub const MULTIXACT_MEMBERS_PER_PAGE: u32 = MEMBER_GROUPS_PER_PAGE * 4;
/// Where the map starts on a visibility-map page (after the page header).
const VM_MAP_START: usize = 24;
/// Heap blocks per visibility-map page (2 bits each).
pub use quire_postgres::wal::vm::VM_HEAP_BLOCKS_PER_PAGE;

/// A Rust record that cannot be applied as given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Rust redo: {0}")]
pub struct RustRedoError(pub String);

/// Applies a non-Postgres record to `page`.
pub fn apply(page: &mut [u8; BLCKSZ], record: &RedoRecord<'_>) -> Result<(), RustRedoError> {
    match record {
        RedoRecord::Postgres { .. } => Err(RustRedoError(
            "a Postgres WAL record needs a redo process".into(),
        )),
        RedoRecord::ClogSetStatus { status, xids } => {
            if !(1..=3).contains(status) {
                return Err(RustRedoError(format!(
                    "transaction status {status} is not committed, aborted or sub-committed"
                )));
            }
            for xid in xids {
                let in_page = xid.0 % CLOG_XACTS_PER_PAGE;
                let byte = (in_page / 4) as usize;
                let shift = (in_page % 4) * 2;
                page[byte] = (page[byte] & !(0b11 << shift)) | (status << shift);
            }
            Ok(())
        }
        RedoRecord::MultiXactOffsets(entries) => {
            for (mid, offset) in entries {
                let at = (mid % MULTIXACT_OFFSETS_PER_PAGE) as usize * 4;
                page[at..at + 4].copy_from_slice(&offset.to_le_bytes());
            }
            Ok(())
        }
        RedoRecord::MultiXactMembers(members) => {
            for (offset, xid, status) in members {
                let group = ((offset / 4) % MEMBER_GROUPS_PER_PAGE) as usize * 20;
                let slot = (offset % 4) as usize;
                page[group + slot] = *status;
                let at = group + 4 + slot * 4;
                page[at..at + 4].copy_from_slice(&xid.0.to_le_bytes());
            }
            Ok(())
        }
        RedoRecord::VmClear { heap_blocks, bits } => {
            if bits & !0b11 != 0 {
                return Err(RustRedoError(format!("visibility bits 0x{bits:02X}")));
            }
            for block in heap_blocks {
                let (byte, shift) = vm_position(*block);
                page[byte] &= !(bits << shift);
            }
            Ok(())
        }
        RedoRecord::VmClearLogged {
            lsn,
            heap_blocks,
            bits,
        } => {
            if *bits != 0b11 && *bits != 0b10 {
                return Err(RustRedoError(format!("visibility bits 0x{bits:02X}")));
            }
            // visibilitymap_clear_locked: a block counts as changed when any
            // of its bits under the mask was set; the LSN moves only then.
            let mut changed = false;
            for block in heap_blocks {
                let (byte, shift) = vm_position(*block);
                let mask = bits << shift;
                if page[byte] & mask != 0 {
                    page[byte] &= !mask;
                    changed = true;
                }
            }
            if changed {
                set_page_lsn(page, *lsn);
            }
            Ok(())
        }
        RedoRecord::VmTruncate { heap_blocks } => {
            let (byte, shift) = vm_position(*heap_blocks);
            page[byte + 1..].fill(0);
            page[byte] &= (1u8 << shift).wrapping_sub(1);
            Ok(())
        }
    }
}

/// The byte of a visibility-map page and the bit shift of a heap block.
fn vm_position(heap_block: u32) -> (usize, u32) {
    let in_page = heap_block % VM_HEAP_BLOCKS_PER_PAGE;
    (VM_MAP_START + (in_page / 4) as usize, (in_page % 4) * 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quire_postgres::types::TransactionId;

    #[test]
    fn logged_map_clears_move_the_lsn_only_when_a_bit_changes() {
        let mut page = [0u8; BLCKSZ];
        page[VM_MAP_START] = 0b1111_0011; // heap blocks 0 (both bits), 2, 3
        let lsn = quire_postgres::Lsn(0x2_0000_0040);
        let frozen_only = RedoRecord::VmClearLogged {
            lsn,
            heap_blocks: vec![1],
            bits: 0b10,
        };
        apply(&mut page, &frozen_only).expect("applies");
        assert_eq!(page[..8], [0; 8], "block 1 had no bits: no LSN");
        let clear = RedoRecord::VmClearLogged {
            lsn,
            heap_blocks: vec![0, 3],
            bits: 0b11,
        };
        apply(&mut page, &clear).expect("applies");
        assert_eq!(page[VM_MAP_START], 0b0011_0000);
        assert_eq!(page[..8], [2, 0, 0, 0, 0x40, 0, 0, 0]);
        let all_visible_alone = RedoRecord::VmClearLogged {
            lsn,
            heap_blocks: vec![2],
            bits: 0b01,
        };
        assert!(apply(&mut page, &all_visible_alone).is_err());
    }

    #[test]
    fn clog_bits_follow_postgres_layout() {
        let mut page = [0u8; BLCKSZ];
        let record = RedoRecord::ClogSetStatus {
            status: 1,
            xids: vec![
                TransactionId(4),
                TransactionId(7),
                TransactionId(32_768 + 5),
            ],
        };
        apply(&mut page, &record).expect("applies");
        // xid 4: byte 1, bits 0-1; xid 7: byte 1, bits 6-7; xid 32773: byte 1, bits 2-3.
        assert_eq!(page[1], 0b0100_0101);
        let abort = RedoRecord::ClogSetStatus {
            status: 2,
            xids: vec![TransactionId(7)],
        };
        apply(&mut page, &abort).expect("applies");
        assert_eq!(page[1], 0b1000_0101);
    }

    #[test]
    fn vm_truncate_keeps_bits_below_the_new_size() {
        let mut page = [0xFFu8; BLCKSZ];
        apply(&mut page, &RedoRecord::VmTruncate { heap_blocks: 6 }).expect("applies");
        assert_eq!(page[VM_MAP_START], 0xFF);
        assert_eq!(page[VM_MAP_START + 1], 0x0F);
        assert!(page[VM_MAP_START + 2..].iter().all(|&b| b == 0));
        assert_eq!(page[0], 0xFF, "the header is not touched");
    }

    #[test]
    fn multixact_members_use_groups_of_four() {
        let mut page = [0u8; BLCKSZ];
        let record = RedoRecord::MultiXactMembers(vec![(5, TransactionId(0xAABB), 3)]);
        apply(&mut page, &record).expect("applies");
        assert_eq!(page[21], 3);
        assert_eq!(&page[28..32], &0xAABBu32.to_le_bytes());
    }
}
