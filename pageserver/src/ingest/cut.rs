//! Blocks cut off a fork: truncations (`XLOG_SMGR_TRUNCATE` of the main,
//! visibility-map and free-space-map forks) and forks of a relation file
//! number used again after a drop.
//!
//! A block at or above a fork's new end has no content from the cut on,
//! until WAL writes it again: if the fork grows back over it (WAL naming a
//! later block, or the compute's relation-size message), it must read as
//! the page of zeros Postgres extends with, not as its page from before the
//! cut. So each block cut off gets a cut marker
//! ([`quire_shard::keyspace::block_cut_value`], an empty image: a 40-byte
//! index entry in a layer and no value bytes) at the cut's LSN, on the
//! shard that owns the block; reads above the marker start from nothing,
//! reads below it (a branch before the cut) see the old pages.
//!
//! The blocks marked are those below the size ingest knows (every block
//! that can hold a value: a fork grows to cover every block WAL names or
//! the compute reports), never those past it. A dropped fork is not
//! marked when it is dropped: its size key keeps the size it had
//! ([`quire_shard::keyspace::fork_dropped_value`]), and a later fork of
//! the same relation file number (OID wraparound) marks those blocks when
//! it is created, at its creating record's LSN, except the blocks that
//! record writes itself.

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::{Context, Result};
use quire_postgres::types::{BlockNo, ForkNumber, RelFileLocator, RelTag};
use quire_postgres::wal::effects::PageEffect;
use quire_postgres::{Key, Lsn};
use quire_redo::RedoRecord;
use quire_redo::rust_redo::VM_HEAP_BLOCKS_PER_PAGE;
use quire_shard::keyspace::{ForkSize, block_cut_value};

use super::WalIngest;

/// Heap blocks one free-space-map leaf page covers (`SlotsPerFSMPage`:
/// the leaf nodes of a page's binary tree, 8192 − 24 − 4 − 4095 bytes).
const FSM_SLOTS_PER_PAGE: u64 = 4069;

/// Which forks an `XLOG_SMGR_TRUNCATE` cuts (its flags).
#[derive(Clone, Copy, Debug)]
pub(super) struct TruncatedForks {
    /// `SMGR_TRUNCATE_HEAP`.
    pub(super) main: bool,
    /// `SMGR_TRUNCATE_FSM`.
    pub(super) fsm: bool,
    /// `SMGR_TRUNCATE_VM`.
    pub(super) vm: bool,
}

impl WalIngest {
    /// `XLOG_SMGR_TRUNCATE` of `rel` to `blocks` heap blocks: the main
    /// fork, and the visibility map and free-space map cut to match, as
    /// recovery cuts them; true if it made a Rust redo record.
    pub(super) async fn truncate_relation(
        &mut self,
        rel: RelFileLocator,
        blocks: u32,
        forks: TruncatedForks,
        lsn: Lsn,
    ) -> Result<bool> {
        if forks.main {
            self.cut_fork(RelTag::new(rel, ForkNumber::Main), blocks, lsn)
                .await?;
        }
        if forks.fsm {
            let fsm_blocks = u32::try_from(fsm_blocks_kept(blocks)).unwrap_or(u32::MAX);
            self.cut_fork(RelTag::new(rel, ForkNumber::Fsm), fsm_blocks, lsn)
                .await?;
        }
        if forks.vm {
            return self.truncate_vm(rel, blocks, lsn).await;
        }
        Ok(false)
    }

    /// `visibilitymap_prepare_truncate` as recovery runs it: the map page
    /// holding the new end loses the bits past it, later pages go.
    async fn truncate_vm(
        &mut self,
        rel: RelFileLocator,
        heap_blocks: u32,
        lsn: Lsn,
    ) -> Result<bool> {
        let vm = RelTag::new(rel, ForkNumber::VisibilityMap);
        let Some(&size) = self.sizes.get(&vm) else {
            return Ok(false);
        };
        let map_block = heap_blocks / VM_HEAP_BLOCKS_PER_PAGE;
        let partial = !heap_blocks.is_multiple_of(VM_HEAP_BLOCKS_PER_PAGE);
        let mut rust = false;
        let new_size = if partial {
            if map_block >= size {
                return Ok(false);
            }
            let record = RedoRecord::VmTruncate { heap_blocks };
            self.put_rust(Key::rel_block(vm, BlockNo(map_block)), lsn, &record, false)
                .await?;
            rust = true;
            map_block + 1
        } else {
            map_block
        };
        self.cut_fork(vm, new_size, lsn).await?;
        Ok(rust)
    }

    /// Cuts `rel` to `blocks` at `lsn` if it is longer: the blocks cut off
    /// get their marker, then the size goes down.
    async fn cut_fork(&mut self, rel: RelTag, blocks: u32, lsn: Lsn) -> Result<()> {
        let Some(&size) = self.sizes.get(&rel) else {
            return Ok(());
        };
        if size <= blocks {
            return Ok(());
        }
        self.cut_blocks(rel, blocks..size, lsn, &[]).await?;
        self.set_size(rel, blocks, lsn).await
    }

    /// Before a record creates forks ingest does not know by naming their
    /// blocks, each such fork's earlier life is cut ([`Self::cut_earlier_fork`]).
    pub(super) async fn cut_earlier_forks(&mut self, pages: &[PageEffect], lsn: Lsn) -> Result<()> {
        let mut new_forks: BTreeMap<RelTag, Vec<u32>> = BTreeMap::new();
        for page in pages {
            if !self.sizes.contains_key(&page.rel) {
                new_forks.entry(page.rel).or_default().push(page.block.0);
            }
        }
        for (rel, mut written) in new_forks {
            written.sort_unstable();
            written.dedup();
            self.cut_earlier_fork(rel, lsn, &written).await?;
        }
        Ok(())
    }

    /// `rel` is created at `lsn` (ingest does not know it): if its size
    /// key says a fork of that name was dropped with some blocks, those
    /// blocks are cut, but for `written` (the creating record's own, in
    /// ascending order).
    pub(super) async fn cut_earlier_fork(
        &mut self,
        rel: RelTag,
        lsn: Lsn,
        written: &[u32],
    ) -> Result<()> {
        let earlier = self
            .timeline
            .rc()
            .fork_size(rel, lsn)
            .await
            .with_context(|| format!("read the size of {rel} at {lsn}"))?;
        if let ForkSize::Dropped(Some(blocks)) = earlier {
            self.cut_blocks(rel, 0..blocks, lsn, written).await?;
        }
        Ok(())
    }

    /// Stores the cut marker at `lsn` for each block of `blocks` this
    /// shard keeps, but for `skip` (ascending).
    async fn cut_blocks(
        &mut self,
        rel: RelTag,
        blocks: Range<u32>,
        lsn: Lsn,
        skip: &[u32],
    ) -> Result<()> {
        let filter = self.timeline.filter();
        let marker = block_cut_value();
        for block in blocks {
            // Below a size (at most u32::MAX), so never InvalidBlockNumber.
            let key = Key::rel_block(rel, BlockNo(block));
            if !filter.keeps(&key) || skip.binary_search(&block).is_ok() {
                continue;
            }
            self.timeline.put(key, lsn, marker.clone()).await?;
            self.stats.cut_blocks += 1;
        }
        Ok(())
    }
}

/// The free-space map's size once its heap is cut to `heap_blocks`, as
/// `FreeSpaceMapPrepareTruncateRel` computes it: the map's pages lie in
/// depth-first order (the root, then each second-level page followed by
/// its leaves; three levels cover every heap block), so the leaf covering
/// the new end sits at `leaf + leaf / S + 2` for `S` slots per page; it and
/// everything after it go, unless the new end falls inside it, when it
/// stays (Postgres zeroes its slots past the end, a page change the WAL
/// does not carry).
fn fsm_blocks_kept(heap_blocks: u32) -> u64 {
    let slots = FSM_SLOTS_PER_PAGE;
    let leaf = u64::from(heap_blocks) / slots;
    let position = leaf + leaf / slots + 2;
    if u64::from(heap_blocks).is_multiple_of(slots) {
        position
    } else {
        position + 1
    }
}

#[cfg(test)]
mod tests;
