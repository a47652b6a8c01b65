//! A layer file open for reading: the layer's reader, its direct-I/O
//! file, and the core's two block caches (values, index) as the block
//! source.
//!
//! Blocks are checked against the layer's checksum table when read from
//! disk, before they enter the cache; a cached block is served without a
//! second check.

use std::cell::RefCell;
use std::fmt;
use std::mem::size_of;
use std::path::Path;
use std::rc::Rc;

use quire_io::{BlockCache, BlockFile, BlockKey, FileId};
use quire_layerfmt::format::{LayerKind, LeafEntry, ValueKind};
use quire_layerfmt::reader::{ValueBytes, check_block};
use quire_layerfmt::{BlockSource, LayerError, LayerReader};
use quire_postgres::{Key, Lsn};

use crate::layer_name::{LayerKindName, LayerName};
use crate::value::Value;

/// An open layer; see the module documentation.
pub struct OpenLayer {
    name: LayerName,
    reader: LayerReader,
    file: BlockFile,
    caches: LayerCaches,
}

/// The core's two caches a layer reads through: values and index blocks.
#[derive(Clone)]
pub struct LayerCaches {
    /// Value blocks.
    pub values: Rc<RefCell<BlockCache>>,
    /// Index blocks (leaves and internal nodes).
    pub index: Rc<RefCell<BlockCache>>,
}

impl fmt::Debug for OpenLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpenLayer({})", self.name)
    }
}

/// The layer's blocks, through the cache.
struct CachedBlocks<'a> {
    file: &'a BlockFile,
    caches: &'a LayerCaches,
    file_name: &'a str,
}

impl CachedBlocks<'_> {
    /// A block through `cache` (none for block 0 and the checksum table,
    /// which the reader checks itself).
    async fn read_through(
        &self,
        block: u32,
        expected_crc: Option<u32>,
        cache: &RefCell<BlockCache>,
    ) -> Result<Rc<[u8]>, LayerError> {
        let key = BlockKey {
            file: self.file.id(),
            block,
        };
        let cached = if expected_crc.is_some() {
            cache.borrow_mut().get(key)
        } else {
            None
        };
        if let Some(cached) = cached {
            return Ok(cached);
        }
        let read = self
            .file
            .read_blocks(block, 1)
            .await
            .map_err(|e| LayerError::Read {
                file: self.file_name.to_owned(),
                block,
                what: e.to_string(),
            })?;
        let Some(expected) = expected_crc else {
            // Block 0 and the checksum table are checked by the reader itself.
            return Ok(Rc::from(&*read));
        };
        check_block(self.file_name, block, &read, expected)?;
        Ok(cache.borrow_mut().insert_copy(key, &read))
    }
}

/// The layer's blocks from the disk, past the cache (a scrub checks the
/// file, and must not fill the cache with what no read asked for).
struct DiskBlocks<'a> {
    file: &'a BlockFile,
    file_name: &'a str,
}

impl DiskBlocks<'_> {
    async fn read(&self, block: u32, expected_crc: Option<u32>) -> Result<Rc<[u8]>, LayerError> {
        let read = self
            .file
            .read_blocks(block, 1)
            .await
            .map_err(|e| LayerError::Read {
                file: self.file_name.to_owned(),
                block,
                what: e.to_string(),
            })?;
        if let Some(expected) = expected_crc {
            check_block(self.file_name, block, &read, expected)?;
        }
        Ok(Rc::from(&*read))
    }
}

impl BlockSource for DiskBlocks<'_> {
    type Block = Rc<[u8]>;

    fn block_count(&self) -> u32 {
        self.file.blocks()
    }

    async fn read_block(
        &self,
        block: u32,
        expected_crc: Option<u32>,
    ) -> Result<Rc<[u8]>, LayerError> {
        self.read(block, expected_crc).await
    }

    async fn read_index_block(
        &self,
        block: u32,
        expected_crc: u32,
    ) -> Result<Rc<[u8]>, LayerError> {
        self.read(block, Some(expected_crc)).await
    }
}

impl BlockSource for CachedBlocks<'_> {
    type Block = Rc<[u8]>;

    fn block_count(&self) -> u32 {
        self.file.blocks()
    }

    async fn read_block(
        &self,
        block: u32,
        expected_crc: Option<u32>,
    ) -> Result<Rc<[u8]>, LayerError> {
        self.read_through(block, expected_crc, &self.caches.values)
            .await
    }

    async fn read_index_block(
        &self,
        block: u32,
        expected_crc: u32,
    ) -> Result<Rc<[u8]>, LayerError> {
        self.read_through(block, Some(expected_crc), &self.caches.index)
            .await
    }
}

impl OpenLayer {
    /// Opens the layer at `path`, checking its summary and checksum table
    /// and that they match `name`.
    pub async fn open(
        path: &Path,
        name: LayerName,
        id: FileId,
        caches: LayerCaches,
    ) -> Result<OpenLayer, LayerError> {
        let file_name = path.display().to_string();
        let file = BlockFile::open(path, id)
            .await
            .map_err(|e| LayerError::Read {
                file: file_name.clone(),
                block: 0,
                what: e.to_string(),
            })?;
        let source = CachedBlocks {
            file: &file,
            caches: &caches,
            file_name: &file_name,
        };
        let reader = LayerReader::open(&file_name, &source).await?;
        let summary = reader.summary();
        let (key_start, key_end) = summary.key_range();
        let kind = match summary.layer_kind() {
            Some(LayerKind::Image) => LayerKindName::Image,
            _ => LayerKindName::Delta,
        };
        let matches = kind == name.kind
            && key_start == name.key_start
            && key_end == name.key_end
            && summary.lsn_start.get() == name.lsn_start.0
            && summary.lsn_end.get() == name.lsn_end.0
            && summary.block_count.get() == file.blocks();
        if !matches {
            return Err(LayerError::Corrupt {
                file: file_name,
                block: 0,
                region: "summary",
                what: format!("does not describe the layer its name {name} says"),
            });
        }
        Ok(OpenLayer {
            name,
            reader,
            file,
            caches,
        })
    }

    /// What the layer covers.
    pub fn name(&self) -> &LayerName {
        &self.name
    }

    /// Levels of the layer's B-tree index, leaves included.
    pub fn index_height(&self) -> u32 {
        self.reader.summary().index_height.get()
    }

    /// Blocks in the file.
    pub fn block_count(&self) -> u32 {
        self.file.blocks()
    }

    /// Memory held for this open layer (reader state), in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.reader.memory_bytes() + size_of::<Self>()
    }

    fn source(&self) -> CachedBlocks<'_> {
        CachedBlocks {
            file: &self.file,
            caches: &self.caches,
            file_name: self.reader.file(),
        }
    }

    /// Appends to `out`, newest first, the values of `key` below `below`
    /// down to the first base value; returns whether one was found.
    pub async fn collect(
        &self,
        key: Key,
        below: Lsn,
        out: &mut Vec<(Lsn, Value)>,
    ) -> Result<bool, LayerError> {
        let source = self.source();
        let mut entries: Vec<LeafEntry> = Vec::new();
        let complete = self
            .reader
            .entries_for_reconstruction(&source, key, below, &mut entries)
            .await?;
        for entry in &entries {
            out.push((Lsn(entry.lsn.get()), self.value(&source, entry).await?));
        }
        Ok(complete)
    }

    /// Every index entry, in (key, LSN) order.
    pub async fn entries(&self) -> Result<Vec<LeafEntry>, LayerError> {
        let capacity = usize::try_from(self.reader.summary().entry_count.get()).unwrap_or(0);
        let mut entries = Vec::with_capacity(capacity);
        self.reader
            .for_each_leaf(&self.source(), |leaf| {
                entries.extend_from_slice(leaf);
                Ok(())
            })
            .await?;
        Ok(entries)
    }

    /// Adds to `out` the keys in `range` with an entry at or below `lsn`
    /// that `keep` accepts, reading the index leaf by leaf (no entry is
    /// collected, so a layer of many blocks costs its leaves only).
    pub async fn keys_at(
        &self,
        lsn: Lsn,
        range: &std::ops::Range<Key>,
        keep: &dyn Fn(&Key) -> bool,
        out: &mut std::collections::BTreeSet<Key>,
    ) -> Result<(), LayerError> {
        self.reader
            .for_each_leaf(&self.source(), |leaf| {
                for entry in leaf {
                    if entry.lsn.get() > lsn.0 {
                        continue;
                    }
                    let key = entry.key();
                    if range.contains(&key) && keep(&key) {
                        out.insert(key);
                    }
                }
                Ok(())
            })
            .await
    }

    /// The value an index entry points at.
    pub async fn read_entry(&self, entry: &LeafEntry) -> Result<Value, LayerError> {
        self.value(&self.source(), entry).await
    }

    async fn value(
        &self,
        source: &CachedBlocks<'_>,
        entry: &LeafEntry,
    ) -> Result<Value, LayerError> {
        // A one-block value (a page image) is the cached block itself: no copy.
        let bytes: Rc<[u8]> = match self.reader.read_value(source, entry).await? {
            ValueBytes::Block(block) => block,
            ValueBytes::Owned(bytes) => Rc::from(bytes),
        };
        match entry.value_kind() {
            Some(ValueKind::PageImage | ValueKind::Other) => Ok(Value::Image(bytes)),
            Some(ValueKind::WalRecord) => Ok(Value::Record {
                will_init: entry.will_init(),
                bytes,
            }),
            None => Err(LayerError::Corrupt {
                file: self.reader.file().to_owned(),
                block: 0,
                region: "index",
                what: format!("entry flags {:#04x}", entry.flags),
            }),
        }
    }

    /// Reads blocks `first..first + count` from the disk (not the cache)
    /// and checks them; how many it checked (0 past the end).
    pub async fn scrub(&self, first: u32, count: u32) -> Result<u32, LayerError> {
        let source = DiskBlocks {
            file: &self.file,
            file_name: self.reader.file(),
        };
        self.reader.verify_blocks(&source, first, count).await
    }

    /// Checks every block of the file.
    pub async fn verify(&self) -> Result<u32, LayerError> {
        self.reader.verify_all(&self.source()).await
    }

    /// Closes the file and drops its blocks from the cache.
    pub async fn close(self) {
        self.caches.values.borrow_mut().forget_file(self.file.id());
        self.caches.index.borrow_mut().forget_file(self.file.id());
        // A failed close of a read-only file loses nothing.
        let _ = self.file.close().await;
    }
}
