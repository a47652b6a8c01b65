//! Reading a layer file: summary and checksum table on open, then index
//! lookups and value reads through a [`BlockSource`].
//!
//! The reader holds the summary and the checksum table (4 bytes per block)
//! and asks its source for blocks, passing each block's expected CRC so the
//! source checks it before caching or returning it ([`check_block`]). Index
//! nodes are read in place: entries are `zerocopy` views into the block.
//! Internal index nodes stay resident in the reader once checked.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;

use quire_postgres::key::KEY_SIZE;
use quire_postgres::{Key, Lsn};
use zerocopy::FromBytes;

use crate::LayerError;
use crate::format::{
    BLOCK_SIZE, FORMAT_VERSION, InternalEntry, LEAF_FANOUT, LeafEntry, NODE_MAGIC, NodeHeader,
    SUMMARY_CRC_OFFSET, SUMMARY_MAGIC, Summary, crc,
};

/// Where blocks come from: direct I/O and a block cache, or memory in tests.
pub trait BlockSource {
    /// A block's bytes (8192), however the source holds them.
    type Block: AsRef<[u8]>;

    /// Whole blocks in the file, from its size: what the summary's block
    /// count is checked against before anything is read or allocated on
    /// the summary's word.
    fn block_count(&self) -> u32;

    /// Reads block `block`. When `expected_crc` is given, the source must
    /// check the bytes with [`check_block`] before caching or returning them.
    fn read_block(
        &self,
        block: u32,
        expected_crc: Option<u32>,
    ) -> impl Future<Output = Result<Self::Block, LayerError>>;

    /// Reads block `block` of the layer's index (a leaf or internal node),
    /// checked as [`read_block`](BlockSource::read_block) checks. A source
    /// that caches may keep index blocks apart from values, so that a cold
    /// value costs one read; by default this is `read_block`.
    fn read_index_block(
        &self,
        block: u32,
        expected_crc: u32,
    ) -> impl Future<Output = Result<Self::Block, LayerError>> {
        self.read_block(block, Some(expected_crc))
    }
}

/// Checks a block against its expected CRC-32C.
pub fn check_block(
    file: &str,
    block: u32,
    bytes: &[u8],
    expected_crc: u32,
) -> Result<(), LayerError> {
    if bytes.len() != BLOCK_SIZE {
        return Err(corrupt(
            file,
            block,
            "block",
            format!("{} bytes instead of {BLOCK_SIZE}", bytes.len()),
        ));
    }
    let actual = crc(bytes);
    if actual != expected_crc {
        return Err(corrupt(
            file,
            block,
            "block",
            format!("checksum {actual:#010x} does not match the table's {expected_crc:#010x}"),
        ));
    }
    Ok(())
}

fn corrupt(file: &str, block: u32, region: &'static str, what: String) -> LayerError {
    LayerError::Corrupt {
        file: file.to_owned(),
        block,
        region,
        what,
    }
}

/// A value's bytes: the block itself when the value is exactly one block
/// (an uncompressed page image, read without a copy), else a copy.
#[derive(Debug)]
pub enum ValueBytes<B> {
    /// The value is this whole block.
    Block(B),
    /// The value, gathered from one or more blocks.
    Owned(Vec<u8>),
}

impl<B: AsRef<[u8]>> AsRef<[u8]> for ValueBytes<B> {
    fn as_ref(&self) -> &[u8] {
        match self {
            ValueBytes::Block(block) => block.as_ref(),
            ValueBytes::Owned(bytes) => bytes,
        }
    }
}

/// Internal index nodes a reader keeps resident at most (2 MiB): with
/// about 270 children per node, enough for every internal node of a layer
/// of some 70,000 leaves.
const RESIDENT_NODES_MAX: usize = 256;

/// An open layer.
///
/// The internal (non-leaf) nodes of its index stay resident once read and
/// checked, so that a lookup reads one leaf and the value: a cold read
/// costs two dependent reads whatever the index height, and a warm one
/// touches the block cache twice.
#[derive(Debug)]
pub struct LayerReader {
    file: String,
    summary: Summary,
    crcs: Vec<u32>,
    /// Checked internal nodes by block number, sorted.
    resident: RefCell<Vec<(u32, Rc<[u8]>)>>,
}

impl LayerReader {
    /// Opens `file` through `source`: reads and checks block 0 and the
    /// checksum table. The summary's regions must fit the file the source
    /// holds before the table is read (its size is the summary's word).
    pub async fn open<S: BlockSource>(file: &str, source: &S) -> Result<LayerReader, LayerError> {
        let block0 = source.read_block(0, None).await?;
        let summary = parse_summary(file, block0.as_ref())?;
        let on_disk = source.block_count();
        if summary.block_count.get() != on_disk {
            return Err(corrupt(
                file,
                0,
                "summary",
                format!(
                    "{} blocks in the summary, {on_disk} in the file",
                    summary.block_count.get()
                ),
            ));
        }
        // Within the file (checked above) and the table's exact size
        // (parse_summary): at most 4 bytes per block of a real file.
        let first = summary.checksum_first_block.get();
        let count = summary.checksum_block_count.get();
        let mut table = Vec::with_capacity(count as usize * BLOCK_SIZE);
        for block in first..summary.block_count.get() {
            table.extend_from_slice(source.read_block(block, None).await?.as_ref());
        }
        LayerReader::from_parts(file, block0.as_ref(), &table)
    }

    /// Opens from block 0 and the checksum table's blocks, already read.
    pub fn from_parts(file: &str, block0: &[u8], table: &[u8]) -> Result<LayerReader, LayerError> {
        let summary = parse_summary(file, block0)?;
        let covered = summary.checksum_first_block.get() as usize;
        let first_table_block = summary.checksum_first_block.get();
        let table_len = summary.checksum_block_count.get() as usize * BLOCK_SIZE;
        let Some(table) = table.get(..table_len) else {
            return Err(corrupt(
                file,
                first_table_block,
                "checksum table",
                "shorter than its blocks".into(),
            ));
        };
        // The table's CRC covers its blocks with entry 0 (block 0's own CRC)
        // zero; parse_summary made the table at least a block long.
        let mut zeroed = table.to_vec();
        if let Some(entry0) = zeroed.get_mut(..4) {
            entry0.fill(0);
        }
        if crc(&zeroed) != summary.checksum_table_crc.get() {
            return Err(corrupt(
                file,
                first_table_block,
                "checksum table",
                "table checksum does not match".into(),
            ));
        }
        let crcs: Vec<u32> = table
            .get(..covered * 4)
            .unwrap_or_default()
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let Some(&block0_crc) = crcs.first() else {
            return Err(corrupt(
                file,
                first_table_block,
                "checksum table",
                "covers no block".into(),
            ));
        };
        check_block(file, 0, block0, block0_crc)?;
        Ok(LayerReader {
            file: file.to_owned(),
            summary,
            crcs,
            resident: RefCell::new(Vec::new()),
        })
    }

    /// The summary.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// The layer's file name (for errors and logs).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Memory this reader holds, in bytes (the summary and checksum table).
    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            + self.file.len()
            + self.crcs.len() * 4
            + self.resident.borrow().len() * (BLOCK_SIZE + size_of::<(u32, Rc<[u8]>)>())
    }

    /// A resident internal node.
    fn resident_node(&self, block: u32) -> Option<Rc<[u8]>> {
        let resident = self.resident.borrow();
        resident
            .binary_search_by_key(&block, |(b, _)| *b)
            .ok()
            .and_then(|at| resident.get(at))
            .map(|(_, node)| Rc::clone(node))
    }

    /// Keeps a checked internal node resident (while there is room).
    fn keep_resident(&self, block: u32, bytes: &[u8]) {
        let mut resident = self.resident.borrow_mut();
        if resident.len() >= RESIDENT_NODES_MAX {
            return;
        }
        if let Err(at) = resident.binary_search_by_key(&block, |(b, _)| *b) {
            resident.insert(at, (block, Rc::from(bytes)));
        }
    }

    /// The child of internal node `block` whose subtree holds `target`.
    fn child_for(
        &self,
        block: u32,
        bytes: &[u8],
        header: &NodeHeader,
        target: ([u8; KEY_SIZE], u64),
    ) -> Result<u32, LayerError> {
        let entries = self.internal_entries(block, bytes, header)?;
        let position = entries
            .partition_point(|e| (e.key, e.lsn.get()) <= target)
            .saturating_sub(1);
        match entries.get(position).map(|e| e.child.get()) {
            Some(child) if child < block => Ok(child),
            _ => Err(corrupt(
                &self.file,
                block,
                "index",
                "child pointer out of order".into(),
            )),
        }
    }

    fn expected_crc(&self, block: u32) -> Result<u32, LayerError> {
        self.crcs.get(block as usize).copied().ok_or_else(|| {
            corrupt(
                &self.file,
                block,
                "index",
                "block number past the checksum table".into(),
            )
        })
    }

    async fn block<S: BlockSource>(&self, source: &S, block: u32) -> Result<S::Block, LayerError> {
        source
            .read_block(block, Some(self.expected_crc(block)?))
            .await
    }

    async fn index_block<S: BlockSource>(
        &self,
        source: &S,
        block: u32,
    ) -> Result<S::Block, LayerError> {
        source
            .read_index_block(block, self.expected_crc(block)?)
            .await
    }

    /// The index's entries form a tree; this finds the leaf holding the last
    /// entry ≤ `(key, lsn)` and that entry's position (`None` in the
    /// position when every entry is greater).
    async fn seek<S: BlockSource>(
        &self,
        source: &S,
        key: Key,
        lsn: Lsn,
    ) -> Result<(u32, S::Block, Option<usize>), LayerError> {
        let target = (key.to_bytes(), lsn.0);
        let mut block = self.summary.index_root_block.get();
        for _ in 0..self.summary.index_height.get() {
            if let Some(node) = self.resident_node(block) {
                // Only internal nodes are kept, checked when they were read.
                let header = self.node_header(block, &node)?;
                block = self.child_for(block, &node, &header, target)?;
                continue;
            }
            let bytes = self.index_block(source, block).await?;
            let header = self.node_header(block, bytes.as_ref())?;
            if header.level == 0 {
                let entries = self.leaf_entries(block, bytes.as_ref(), &header)?;
                let position = entries
                    .partition_point(|e| (e.key, e.lsn.get()) <= target)
                    .checked_sub(1);
                return Ok((block, bytes, position));
            }
            let child = self.child_for(block, bytes.as_ref(), &header, target)?;
            self.keep_resident(block, bytes.as_ref());
            block = child;
        }
        Err(corrupt(
            &self.file,
            block,
            "index",
            "no leaf within the index height".into(),
        ))
    }

    fn node_header(&self, block: u32, bytes: &[u8]) -> Result<NodeHeader, LayerError> {
        let (header, _) = NodeHeader::read_from_prefix(bytes)
            .map_err(|_| corrupt(&self.file, block, "index", "short node".into()))?;
        if header.magic != NODE_MAGIC {
            return Err(corrupt(&self.file, block, "index", "bad node magic".into()));
        }
        Ok(header)
    }

    fn leaf_entries<'a>(
        &self,
        block: u32,
        bytes: &'a [u8],
        header: &NodeHeader,
    ) -> Result<&'a [LeafEntry], LayerError> {
        let body = bytes.get(size_of::<NodeHeader>()..).unwrap_or_default();
        let (entries, _) =
            <[LeafEntry]>::ref_from_prefix_with_elems(body, usize::from(header.count.get()))
                .map_err(|_| {
                    corrupt(
                        &self.file,
                        block,
                        "index",
                        "leaf count past the block".into(),
                    )
                })?;
        Ok(entries)
    }

    fn internal_entries<'a>(
        &self,
        block: u32,
        bytes: &'a [u8],
        header: &NodeHeader,
    ) -> Result<&'a [InternalEntry], LayerError> {
        let body = bytes.get(size_of::<NodeHeader>()..).unwrap_or_default();
        let (entries, _) =
            <[InternalEntry]>::ref_from_prefix_with_elems(body, usize::from(header.count.get()))
                .map_err(|_| {
                    corrupt(
                        &self.file,
                        block,
                        "index",
                        "node count past the block".into(),
                    )
                })?;
        if entries.is_empty() {
            return Err(corrupt(
                &self.file,
                block,
                "index",
                "empty internal node".into(),
            ));
        }
        Ok(entries)
    }

    /// The newest entry for `key` at or below `lsn`, if any.
    pub async fn newest_at_or_below<S: BlockSource>(
        &self,
        source: &S,
        key: Key,
        lsn: Lsn,
    ) -> Result<Option<LeafEntry>, LayerError> {
        let (block, bytes, position) = self.seek(source, key, lsn).await?;
        let header = self.node_header(block, bytes.as_ref())?;
        let entries = self.leaf_entries(block, bytes.as_ref(), &header)?;
        Ok(position
            .and_then(|p| entries.get(p).copied())
            .filter(|entry| entry.key == key.to_bytes()))
    }

    /// The entries of `key` below `below`, newest first, down to and
    /// including the first that needs no earlier value (will-init), appended
    /// to `out`. Returns whether such an entry was found (the chain is
    /// complete within this layer).
    pub async fn entries_for_reconstruction<S: BlockSource>(
        &self,
        source: &S,
        key: Key,
        below: Lsn,
        out: &mut Vec<LeafEntry>,
    ) -> Result<bool, LayerError> {
        let wanted = key.to_bytes();
        let Some(mut target_lsn) = below.0.checked_sub(1) else {
            return Ok(false);
        };
        let limit = self.summary.entry_count.get();
        let mut taken = 0u64;
        loop {
            let (block, bytes, position) = self.seek(source, key, Lsn(target_lsn)).await?;
            let header = self.node_header(block, bytes.as_ref())?;
            let entries = self.leaf_entries(block, bytes.as_ref(), &header)?;
            let (Some(upto), Some(first)) =
                (position.and_then(|p| entries.get(..=p)), entries.first())
            else {
                return Ok(false);
            };
            for entry in upto.iter().rev() {
                if entry.key != wanted {
                    return Ok(false);
                }
                out.push(*entry);
                taken += 1;
                if entry.will_init() {
                    return Ok(true);
                }
            }
            // The key's older entries continue in the previous leaf.
            match first.lsn.get().checked_sub(1) {
                Some(next) if first.key == wanted && taken < limit => target_lsn = next,
                _ => return Ok(false),
            }
        }
    }

    /// Reads a value's bytes from the value stream.
    pub async fn read_value<S: BlockSource>(
        &self,
        source: &S,
        entry: &LeafEntry,
    ) -> Result<ValueBytes<S::Block>, LayerError> {
        let offset = entry.offset.get();
        let length = u64::from(entry.length.get());
        let first_block = self.summary.value_first_block.get();
        let end = offset
            .checked_add(length)
            .filter(|end| *end <= self.summary.value_bytes.get());
        let Some(end) = end else {
            return Err(corrupt(
                &self.file,
                first_block,
                "value stream",
                format!("value at {offset}+{length} past the stream"),
            ));
        };
        let block_size = BLOCK_SIZE as u64;
        let start_block = u32::try_from(offset / block_size)
            .unwrap_or(u32::MAX)
            .saturating_add(first_block);
        if length == block_size && offset.is_multiple_of(block_size) {
            return Ok(ValueBytes::Block(self.block(source, start_block).await?));
        }
        let mut value = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
        let mut position = offset;
        let mut block = start_block;
        while position < end {
            let bytes = self.block(source, block).await?;
            let within = usize::try_from(position % block_size).unwrap_or(0);
            let take = usize::try_from((end - position).min(block_size - position % block_size))
                .unwrap_or(0);
            let Some(part) = bytes.as_ref().get(within..within + take) else {
                return Err(corrupt(
                    &self.file,
                    block,
                    "value stream",
                    "short block".into(),
                ));
            };
            value.extend_from_slice(part);
            position += take as u64;
            block = block.saturating_add(1);
        }
        Ok(ValueBytes::Owned(value))
    }

    /// All leaf entries in order, leaf by leaf (for compaction and checks):
    /// calls `visit` with each leaf's entries.
    pub async fn for_each_leaf<S: BlockSource>(
        &self,
        source: &S,
        mut visit: impl FnMut(&[LeafEntry]) -> Result<(), LayerError>,
    ) -> Result<(), LayerError> {
        let mut block = self.summary.index_first_block.get();
        let last = block + self.summary.index_block_count.get();
        loop {
            let bytes = self.index_block(source, block).await?;
            let header = self.node_header(block, bytes.as_ref())?;
            if header.level != 0 {
                return Err(corrupt(
                    &self.file,
                    block,
                    "index",
                    "leaf chain reaches a non-leaf".into(),
                ));
            }
            visit(self.leaf_entries(block, bytes.as_ref(), &header)?)?;
            match header.next.get() {
                0 => return Ok(()),
                next if next > block && next < last => block = next,
                _ => {
                    return Err(corrupt(
                        &self.file,
                        block,
                        "index",
                        "leaf chain out of order".into(),
                    ));
                }
            }
        }
    }

    /// Reads and checks blocks `first..first + count` (those the file
    /// has): one step of a scrub. Returns how many it checked.
    pub async fn verify_blocks<S: BlockSource>(
        &self,
        source: &S,
        first: u32,
        count: u32,
    ) -> Result<u32, LayerError> {
        let covered = u32::try_from(self.crcs.len()).unwrap_or(u32::MAX);
        let end = first.saturating_add(count).min(covered);
        for block in first..end {
            self.block(source, block).await?;
        }
        Ok(end.saturating_sub(first))
    }

    /// Reads every block and checks it: a full scrub of the file.
    pub async fn verify_all<S: BlockSource>(&self, source: &S) -> Result<u32, LayerError> {
        let covered = u32::try_from(self.crcs.len()).unwrap_or(u32::MAX);
        for block in 0..covered {
            self.block(source, block).await?;
        }
        Ok(covered)
    }
}

/// Parses and checks block 0.
pub fn parse_summary(file: &str, block0: &[u8]) -> Result<Summary, LayerError> {
    let (summary, _) = Summary::read_from_prefix(block0)
        .map_err(|_| corrupt(file, 0, "summary", "short block".into()))?;
    if summary.magic != SUMMARY_MAGIC {
        return Err(corrupt(
            file,
            0,
            "summary",
            "not a layer file (bad magic)".into(),
        ));
    }
    let stored = summary.summary_crc.get();
    // read_from_prefix took more than SUMMARY_CRC_OFFSET bytes.
    let actual = crc(block0.get(..SUMMARY_CRC_OFFSET).unwrap_or_default());
    if stored != actual {
        return Err(corrupt(
            file,
            0,
            "summary",
            format!("checksum {actual:#010x} does not match {stored:#010x}"),
        ));
    }
    if summary.format_version.get() != FORMAT_VERSION {
        return Err(corrupt(
            file,
            0,
            "summary",
            format!("format version {}", summary.format_version.get()),
        ));
    }
    if summary.layer_kind().is_none() {
        return Err(corrupt(
            file,
            0,
            "summary",
            format!("layer kind {}", summary.kind.get()),
        ));
    }
    let value_end = summary
        .value_first_block
        .get()
        .checked_add(summary.value_block_count.get());
    let index_end = summary
        .index_first_block
        .get()
        .checked_add(summary.index_block_count.get());
    let table_end = summary
        .checksum_first_block
        .get()
        .checked_add(summary.checksum_block_count.get());
    let regions_ok = summary.value_first_block.get() == 1
        && value_end == Some(summary.index_first_block.get())
        && index_end == Some(summary.checksum_first_block.get())
        && table_end == Some(summary.block_count.get())
        && summary.index_block_count.get() > 0
        && (summary.index_first_block.get()..summary.checksum_first_block.get())
            .contains(&summary.index_root_block.get())
        && (1..=64).contains(&summary.index_height.get())
        // Exactly the blocks the table's entries need (as the writer sizes it).
        && u64::from(summary.checksum_block_count.get())
            == (u64::from(summary.checksum_first_block.get()) * 4).div_ceil(BLOCK_SIZE as u64)
        && summary.value_bytes.get()
            <= u64::from(summary.value_block_count.get()) * BLOCK_SIZE as u64
        // No more entries than the index blocks can hold.
        && summary.entry_count.get()
            <= u64::from(summary.index_block_count.get()) * LEAF_FANOUT as u64;
    if !regions_ok {
        return Err(corrupt(
            file,
            0,
            "summary",
            "regions are inconsistent".into(),
        ));
    }
    Ok(summary)
}

use std::mem::size_of;
