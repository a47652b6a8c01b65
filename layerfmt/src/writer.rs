//! Building a layer file in one sequential pass.
//!
//! Values are added in (key, LSN) order. The writer appends them to the
//! value stream and hands out whole 8 KiB blocks as they fill
//! ([`LayerWriter::take_blocks`]), so the caller can write them with
//! `O_DIRECT` while later values arrive. [`LayerWriter::finish`] returns the
//! index and checksum-table blocks, then block 0, which the caller writes
//! last (see the crash analysis in `docs/format/layers.md`). Index entries
//! are kept in memory until then: 40 bytes per value.

use quire_postgres::{Key, Lsn};
use zerocopy::IntoBytes;
use zerocopy::little_endian::{U16, U32, U64};

use crate::LayerError;
use crate::format::{
    BLOCK_SIZE, Compression, FORMAT_VERSION, INTERNAL_FANOUT, InternalEntry, LEAF_FANOUT,
    LayerKind, LeafEntry, NODE_MAGIC, NodeHeader, SUMMARY_CRC_OFFSET, SUMMARY_MAGIC, Summary,
    ValueKind, crc,
};

/// Identity and ranges of the layer being written.
#[derive(Clone, Copy, Debug)]
pub struct LayerDescriptor {
    /// Image or delta.
    pub kind: LayerKind,
    /// Owning tenant.
    pub tenant_id: [u8; 16],
    /// Owning timeline.
    pub timeline_id: [u8; 16],
    /// Keys covered: `[start, end)`.
    pub key_range: (Key, Key),
    /// LSNs covered: `[start, end)` (an image at LSN L covers `[L, L+1)`).
    pub lsn_range: (Lsn, Lsn),
}

/// What the last block-producing call returned, and block 0.
#[derive(Debug)]
pub struct FinishedLayer {
    /// Blocks after those already taken: the value stream's tail, the
    /// index, the checksum table; to be written from block `first_block`.
    pub tail: Vec<u8>,
    /// The block number of the tail's first block.
    pub first_block: u32,
    /// Block 0, to be written last.
    pub block0: Vec<u8>,
    /// The summary written into block 0.
    pub summary: Summary,
}

/// The writer; see the module documentation.
#[derive(Debug)]
pub struct LayerWriter {
    descriptor: LayerDescriptor,
    /// Bytes of the value stream not yet handed out (the unfinished block
    /// at the end; whole blocks before it wait in `ready`).
    ready: Vec<u8>,
    /// Block number of `ready[0]`.
    ready_first_block: u32,
    /// Bytes in the value stream so far.
    stream_len: u64,
    entries: Vec<LeafEntry>,
    /// CRC of every block handed out or pending, in order (block 0 last).
    block_crcs: Vec<u32>,
    last: Option<(Key, Lsn)>,
}

fn misuse(what: String) -> LayerError {
    LayerError::Misuse(what)
}

impl LayerWriter {
    /// A writer for a layer described by `descriptor`.
    pub fn new(descriptor: LayerDescriptor) -> LayerWriter {
        LayerWriter {
            descriptor,
            ready: Vec::new(),
            ready_first_block: 1,
            stream_len: 0,
            entries: Vec::new(),
            block_crcs: Vec::new(),
            last: None,
        }
    }

    /// Values added so far.
    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of the value stream so far (the file grows by about this much).
    pub fn value_bytes(&self) -> u64 {
        self.stream_len
    }

    /// Adds the value of `key` at `lsn`, stored as given (already
    /// compressed when `compression` says so).
    pub fn add(
        &mut self,
        key: Key,
        lsn: Lsn,
        kind: ValueKind,
        will_init: bool,
        compression: Compression,
        value: &[u8],
    ) -> Result<(), LayerError> {
        let (key_start, key_end) = self.descriptor.key_range;
        let (lsn_start, lsn_end) = self.descriptor.lsn_range;
        if key < key_start || key >= key_end {
            return Err(misuse(format!(
                "key {key} outside the layer's range {key_start}..{key_end}"
            )));
        }
        if lsn < lsn_start || lsn >= lsn_end {
            return Err(misuse(format!(
                "LSN {lsn} outside the layer's range {lsn_start}..{lsn_end}"
            )));
        }
        if let Some(last) = self.last.filter(|last| (key, lsn) <= *last) {
            return Err(misuse(format!(
                "({key}, {lsn}) does not follow ({}, {})",
                last.0, last.1
            )));
        }
        if self.descriptor.kind == LayerKind::Image
            && self.last.is_some_and(|(last_key, _)| last_key == key)
        {
            return Err(misuse(format!(
                "an image layer holds one value per key; {key} twice"
            )));
        }
        let length = u32::try_from(value.len())
            .map_err(|_| misuse(format!("value of {} bytes", value.len())))?;
        if value.len() == BLOCK_SIZE {
            // A whole page: start it on a block boundary so it reads in one block.
            let into_block = usize::try_from(self.stream_len % BLOCK_SIZE as u64).unwrap_or(0);
            if into_block != 0 {
                self.append(&vec![0u8; BLOCK_SIZE - into_block]);
            }
        }
        let offset = self.stream_len;
        self.append(value);
        self.entries.push(LeafEntry {
            key: key.to_bytes(),
            flags: LeafEntry::flags_of(will_init, kind, compression),
            pad: 0,
            lsn: U64::new(lsn.0),
            offset: U64::new(offset),
            length: U32::new(length),
        });
        self.last = Some((key, lsn));
        Ok(())
    }

    fn append(&mut self, bytes: &[u8]) {
        let before = self.ready.len();
        self.ready.extend_from_slice(bytes);
        self.stream_len += bytes.len() as u64;
        // CRCs of blocks that just became whole.
        let whole_before = before / BLOCK_SIZE;
        let whole_now = self.ready.len() / BLOCK_SIZE;
        for block in whole_before..whole_now {
            self.block_crcs.push(crc(
                &self.ready[block * BLOCK_SIZE..(block + 1) * BLOCK_SIZE]
            ));
        }
    }

    /// Whole value blocks ready to write, starting at the returned block
    /// number; the partial last block stays until more values fill it.
    pub fn take_blocks(&mut self) -> (u32, Vec<u8>) {
        let whole = self.ready.len() / BLOCK_SIZE * BLOCK_SIZE;
        let rest = self.ready.split_off(whole);
        let blocks = std::mem::replace(&mut self.ready, rest);
        let first = self.ready_first_block;
        self.ready_first_block += u32::try_from(whole / BLOCK_SIZE).unwrap_or(u32::MAX);
        (first, blocks)
    }

    /// Pads the value stream, writes the index and checksum table, and
    /// builds block 0.
    pub fn finish(mut self) -> Result<FinishedLayer, LayerError> {
        let value_bytes = self.stream_len;
        let into_block = self.ready.len() % BLOCK_SIZE;
        if into_block != 0 {
            self.append(&vec![0u8; BLOCK_SIZE - into_block]);
            // The padding is not part of the stream.
            self.stream_len = value_bytes;
        }
        let first_block = self.ready_first_block;
        let value_block_count = to_u32(value_bytes.div_ceil(BLOCK_SIZE as u64))?;
        let index_first_block = 1 + value_block_count;
        let (index, root, height) = build_index(&self.entries, index_first_block)?;
        let index_block_count = to_u32((index.len() / BLOCK_SIZE) as u64)?;
        self.append_blocks(&index);

        // Block 0's CRC is known only once block 0 is; table entry 0 is
        // filled in below, after the summary.
        let checksum_first_block = index_first_block + index_block_count;
        let covered = checksum_first_block as usize;
        let table_bytes = covered * 4;
        let checksum_block_count = to_u32(table_bytes.div_ceil(BLOCK_SIZE) as u64)?;
        let mut summary = Summary {
            magic: SUMMARY_MAGIC,
            format_version: U32::new(FORMAT_VERSION),
            kind: U32::new(self.descriptor.kind as u32),
            tenant_id: self.descriptor.tenant_id,
            timeline_id: self.descriptor.timeline_id,
            key_start: self.descriptor.key_range.0.to_bytes(),
            key_end: self.descriptor.key_range.1.to_bytes(),
            pad: [0; 4],
            lsn_start: U64::new(self.descriptor.lsn_range.0.0),
            lsn_end: U64::new(self.descriptor.lsn_range.1.0),
            entry_count: U64::new(self.entries.len() as u64),
            value_bytes: U64::new(value_bytes),
            value_first_block: U32::new(1),
            value_block_count: U32::new(value_block_count),
            index_first_block: U32::new(index_first_block),
            index_block_count: U32::new(index_block_count),
            index_root_block: U32::new(root),
            index_height: U32::new(height),
            checksum_first_block: U32::new(checksum_first_block),
            checksum_block_count: U32::new(checksum_block_count),
            checksum_table_crc: U32::new(0),
            block_count: U32::new(checksum_first_block + checksum_block_count),
            summary_crc: U32::new(0),
        };
        // The table depends on block 0's CRC and block 0 holds the table's
        // CRC: block 0's table entry covers the block with checksum fields
        // as finally written, so compute the table with a placeholder for
        // entry 0, then block 0, then entry 0 again.
        let mut crcs = Vec::with_capacity(covered);
        crcs.push(0u32);
        crcs.extend_from_slice(&self.block_crcs);
        if crcs.len() != covered {
            return Err(misuse(format!(
                "{} block checksums for {covered} blocks",
                crcs.len()
            )));
        }
        let block0_crc_of = |summary: &Summary| {
            let mut block = vec![0u8; BLOCK_SIZE];
            block[..size_of::<Summary>()].copy_from_slice(summary.as_bytes());
            (crc(&block), block)
        };
        // Entry 0 can't depend on itself: `checksum_table_crc` covers the
        // table's blocks (padding included) with entry 0 zero.
        let mut table = crcs.as_bytes().to_vec();
        table.resize(checksum_block_count as usize * BLOCK_SIZE, 0);
        summary.checksum_table_crc = U32::new(crc(&table));
        summary.summary_crc = U32::new(crc(&summary.as_bytes()[..SUMMARY_CRC_OFFSET]));
        let (block0_crc, block0) = block0_crc_of(&summary);
        table[..4].copy_from_slice(&block0_crc.to_le_bytes());
        self.ready.extend_from_slice(&table);
        Ok(FinishedLayer {
            tail: std::mem::take(&mut self.ready),
            first_block,
            block0,
            summary,
        })
    }

    fn append_blocks(&mut self, blocks: &[u8]) {
        for block in blocks.chunks(BLOCK_SIZE) {
            self.block_crcs.push(crc(block));
        }
        self.ready.extend_from_slice(blocks);
    }
}

fn to_u32(n: u64) -> Result<u32, LayerError> {
    u32::try_from(n).map_err(|_| misuse(format!("layer of {n} blocks is too large")))
}

/// Bulk-builds the B-tree; returns (blocks, root block, height).
fn build_index(entries: &[LeafEntry], first_block: u32) -> Result<(Vec<u8>, u32, u32), LayerError> {
    let mut blocks: Vec<u8> = Vec::new();
    let mut next_block = first_block;
    // Leaves, each remembering its first (key, lsn) for the level above.
    let mut level: Vec<InternalEntry> = Vec::new();
    let chunks: Vec<&[LeafEntry]> = if entries.is_empty() {
        vec![&[]]
    } else {
        entries.chunks(LEAF_FANOUT).collect()
    };
    let leaf_count = chunks.len();
    for (i, chunk) in chunks.iter().enumerate() {
        let next = if i + 1 < leaf_count {
            next_block + 1
        } else {
            0
        };
        let mut block = node(0, chunk.len(), next);
        for (j, entry) in chunk.iter().enumerate() {
            let at = size_of::<NodeHeader>() + j * size_of::<LeafEntry>();
            block[at..at + size_of::<LeafEntry>()].copy_from_slice(entry.as_bytes());
        }
        let (key, lsn) = chunk
            .first()
            .map_or(([0u8; 18], U64::new(0)), |e| (e.key, e.lsn));
        level.push(InternalEntry {
            key,
            pad: [0; 2],
            lsn,
            child: U32::new(next_block),
        });
        blocks.extend_from_slice(&block);
        next_block += 1;
    }
    let mut height = 1;
    while level.len() > 1 {
        let mut above = Vec::new();
        for chunk in level.chunks(INTERNAL_FANOUT) {
            let mut block = node(u8::try_from(height).unwrap_or(u8::MAX), chunk.len(), 0);
            for (j, entry) in chunk.iter().enumerate() {
                let at = size_of::<NodeHeader>() + j * size_of::<InternalEntry>();
                block[at..at + size_of::<InternalEntry>()].copy_from_slice(entry.as_bytes());
            }
            above.push(InternalEntry {
                key: chunk[0].key,
                pad: [0; 2],
                lsn: chunk[0].lsn,
                child: U32::new(next_block),
            });
            blocks.extend_from_slice(&block);
            next_block += 1;
        }
        level = above;
        height += 1;
    }
    let root = next_block - 1;
    if u64::from(height) > 64 {
        return Err(misuse(format!("index of height {height}")));
    }
    Ok((blocks, root, height))
}

fn node(level: u8, count: usize, next: u32) -> Vec<u8> {
    let mut block = vec![0u8; BLOCK_SIZE];
    let header = NodeHeader {
        magic: NODE_MAGIC,
        level,
        pad1: 0,
        count: U16::new(u16::try_from(count).unwrap_or(u16::MAX)),
        next: U32::new(next),
        pad2: [0; 4],
    };
    block[..size_of::<NodeHeader>()].copy_from_slice(header.as_bytes());
    block
}

use std::mem::size_of;
