//! What a heap record does to a visibility-map page it names as a block
//! reference, so the storage can apply it without Postgres.
//!
//! Since 17.x (the fix that WAL-logs map clears), heap `INSERT`, `DELETE`,
//! `UPDATE`, `HOT_UPDATE` and `LOCK`, and heap2 `MULTI_INSERT` and `LOCK_UPDATED`
//! register the map page whose bits they clear. Their redo (`heapam.c`,
//! `heap_xlog_vm_clear` and the UPDATE case) clears the named heap blocks'
//! bits on that page and sets the page LSN to the record's end if a bit
//! changed; nothing else on the page moves. [`vm_page_clears`] returns
//! exactly those heap blocks and bits for one block reference, or `None`
//! when the record is not one of these (its map page then goes to
//! Postgres' redo).

use smallvec::SmallVec;

use crate::types::{BLCKSZ, ForkNumber};
use crate::wal::record::DecodedRecord;
use crate::wal::rmgr::{RM_HEAP_ID, RM_HEAP2_ID};

/// Heap blocks one map page covers: `(BLCKSZ - 24) * 4`.
pub const VM_HEAP_BLOCKS_PER_PAGE: u32 = (8192 - 24) * 4;
const _: () = assert!(BLCKSZ == 8192);

/// `VISIBILITYMAP_ALL_VISIBLE | VISIBILITYMAP_ALL_FROZEN`.
const VALID_BITS: u8 = 0x03;
/// `VISIBILITYMAP_ALL_FROZEN`.
const ALL_FROZEN: u8 = 0x02;

/// The bits a record clears on one map page, for these heap blocks (in the
/// order redo clears them). No heap blocks: the page does not change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmPageClear {
    /// Bits cleared for each block (0x03 all-visible and all-frozen, or
    /// 0x02 all-frozen alone).
    pub bits: u8,
    /// Heap blocks whose bits are cleared; all on this map page.
    pub heap_blocks: SmallVec<[u32; 2]>,
}

/// The map page a heap block's bits live on.
pub fn vm_block_of(heap_block: u32) -> u32 {
    heap_block / VM_HEAP_BLOCKS_PER_PAGE
}

/// What the record's block reference `block_id` (a visibility-map page
/// without an image) gets from redo, or `None` when the record is not a map
/// clear this module knows or does not parse.
pub fn vm_page_clears(record: &DecodedRecord<'_>, block_id: u8) -> Option<VmPageClear> {
    let vm = record.block(block_id)?;
    if vm.fork != ForkNumber::VisibilityMap || vm.image.is_some() {
        return None;
    }
    let heap = |id: u8| {
        record
            .blocks()
            .find(|b| b.id == id && b.fork == ForkNumber::Main && b.rel == vm.rel)
            .map(|b| b.block.0)
    };
    let flags_at = |at: usize| record.main_data.get(at).copied();
    let opcode = record.header.info & 0x70;
    let (bits, blocks): (u8, SmallVec<[u32; 2]>) = match (record.header.rmid, opcode, block_id) {
        // INSERT (flags at 2), DELETE (flags at 7), MULTI_INSERT (flags at
        // 0): bit 0x01 says the heap block's bits were cleared.
        (RM_HEAP_ID, 0x00 | 0x10, 1) | (RM_HEAP2_ID, 0x50, 1) => {
            let at = match (record.header.rmid, opcode) {
                (RM_HEAP_ID, 0x00) => 2,
                (RM_HEAP_ID, _) => 7,
                _ => 0,
            };
            let cleared = flags_at(at)? & 0x01 != 0;
            let blocks = if cleared {
                SmallVec::from_slice(&[heap(0)?])
            } else {
                SmallVec::new()
            };
            (VALID_BITS, blocks)
        }
        // LOCK, LOCK_UPDATED: flags at 7, bit 0x01 clears all-frozen only.
        (RM_HEAP_ID | RM_HEAP2_ID, 0x60, 1) => {
            let cleared = flags_at(7)? & 0x01 != 0;
            let blocks = if cleared {
                SmallVec::from_slice(&[heap(0)?])
            } else {
                SmallVec::new()
            };
            (ALL_FROZEN, blocks)
        }
        // UPDATE, HOT_UPDATE: flags at 7, 0x01 old page cleared, 0x02 new
        // page cleared; block 0 is the new heap page, 1 the old one when
        // it differs, 2 the map page of the new one (which also takes the
        // old one's bits when they share it), 3 the old one's map page.
        (RM_HEAP_ID, 0x20 | 0x40, 2 | 3) => {
            let flags = flags_at(7)?;
            let (old_cleared, new_cleared) = (flags & 0x01 != 0, flags & 0x02 != 0);
            let new_block = heap(0)?;
            let old_block = heap(1).unwrap_or(new_block);
            let mut blocks = SmallVec::new();
            if old_cleared || new_cleared {
                if block_id == 2 {
                    if old_cleared && vm_block_of(old_block) == vm.block.0 {
                        blocks.push(old_block);
                    }
                    blocks.push(new_block);
                } else {
                    blocks.push(old_block);
                }
            }
            (VALID_BITS, blocks)
        }
        _ => return None,
    };
    // Redo refuses ("wrong buffer passed to visibilitymap_clear") a heap
    // block whose bits are on another map page: leave that to Postgres.
    if blocks.iter().any(|&b| vm_block_of(b) != vm.block.0) {
        return None;
    }
    Some(VmPageClear {
        bits,
        heap_blocks: blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lsn;
    use crate::types::RelFileLocator;
    use crate::wal::record::decode_record;
    use crate::wal::writer::{BlockToWrite, build_record};

    const REL: RelFileLocator = RelFileLocator {
        spc_oid: 1663,
        db_oid: 5,
        rel_number: 16_384,
    };

    fn block(id: u8, fork: u8, block: u32) -> BlockToWrite<'static> {
        BlockToWrite {
            id,
            rel: REL,
            fork,
            block,
            will_init: false,
            image: None,
            data: &[],
        }
    }

    fn clears(
        rmid: u8,
        info: u8,
        blocks: &[BlockToWrite<'_>],
        main: &[u8],
        id: u8,
    ) -> Option<VmPageClear> {
        let bytes = build_record(rmid, info, 700, Lsn(0x100), blocks, main).unwrap();
        let record = decode_record(&bytes).unwrap();
        vm_page_clears(&record, id)
    }

    #[test]
    fn insert_and_delete_clear_their_heap_block_when_flagged() {
        let blocks = [block(0, 0, 40_000), block(1, 2, 1)];
        let insert = clears(RM_HEAP_ID, 0x00, &blocks, &[5, 0, 0x01], 1).unwrap();
        assert_eq!(
            (insert.bits, &insert.heap_blocks[..]),
            (0x03, &[40_000][..])
        );
        let unflagged = clears(RM_HEAP_ID, 0x80, &blocks, &[5, 0, 0x00], 1).unwrap();
        assert!(unflagged.heap_blocks.is_empty());
        let delete = clears(RM_HEAP_ID, 0x10, &blocks, &[0, 0, 0, 0, 1, 0, 0, 0x01], 1).unwrap();
        assert_eq!(&delete.heap_blocks[..], &[40_000]);
        let multi = clears(RM_HEAP2_ID, 0x50, &blocks, &[0x01, 1, 0, 1, 0], 1).unwrap();
        assert_eq!(&multi.heap_blocks[..], &[40_000]);
    }

    #[test]
    fn locks_clear_all_frozen_only() {
        let blocks = [block(0, 0, 7), block(1, 2, 0)];
        let lock = clears(RM_HEAP_ID, 0x60, &blocks, &[0, 0, 0, 0, 1, 0, 0, 0x01], 1).unwrap();
        assert_eq!((lock.bits, &lock.heap_blocks[..]), (0x02, &[7][..]));
    }

    #[test]
    fn update_map_pages_take_the_blocks_they_cover() {
        let main = [0, 0, 0, 0, 1, 0, 0, 0x03, 0, 0, 0, 0, 2, 0];
        // Old and new heap pages on one map page: VM_NEW clears both.
        let shared = [block(0, 0, 10), block(1, 0, 20), block(2, 2, 0)];
        let both = clears(RM_HEAP_ID, 0x20, &shared, &main, 2).unwrap();
        assert_eq!(&both.heap_blocks[..], &[20, 10]);
        // Different map pages: VM_NEW the new block, VM_OLD the old one.
        let apart = [
            block(0, 0, 40_000),
            block(1, 0, 20),
            block(2, 2, 1),
            block(3, 2, 0),
        ];
        let new = clears(RM_HEAP_ID, 0x20, &apart, &main, 2).unwrap();
        assert_eq!(&new.heap_blocks[..], &[40_000]);
        let old = clears(RM_HEAP_ID, 0x20, &apart, &main, 3).unwrap();
        assert_eq!(&old.heap_blocks[..], &[20]);
        // A HOT update stays on its page: the old block is the new one.
        let hot = [block(0, 0, 9), block(2, 2, 0)];
        let hot_clear = clears(RM_HEAP_ID, 0x40, &hot, &main, 2).unwrap();
        assert_eq!(&hot_clear.heap_blocks[..], &[9, 9]);
    }

    #[test]
    fn other_records_and_mismatched_pages_go_to_postgres() {
        // XLOG_HEAP2_VISIBLE sets bits: not a clear.
        let visible = [block(0, 2, 0), block(1, 0, 3)];
        assert!(clears(RM_HEAP2_ID, 0x40, &visible, &[0; 5], 0).is_none());
        // A map page that does not hold the heap block's bits.
        let wrong = [block(0, 0, 40_000), block(1, 2, 0)];
        assert!(clears(RM_HEAP_ID, 0x00, &wrong, &[5, 0, 0x01], 1).is_none());
        // Main data too short for its flags.
        let short = [block(0, 0, 1), block(1, 2, 0)];
        assert!(clears(RM_HEAP_ID, 0x10, &short, &[0, 0], 1).is_none());
    }
}
