//! The in-memory layer: the newest values of a timeline, before they are
//! written to an L0 delta layer.
//!
//! It covers every key from its start LSN on; when frozen it gets an end LSN
//! and takes no more values (shared as `Rc` by readers while it is flushed).
//! Only the index (key → LSN → where the value is) lives in memory. Values
//! are appended to a byte stream whose whole 128 KiB chunks are written to
//! an ephemeral O_DIRECT file in the timeline directory
//! (`ephemeral-<file id>`, created at the first chunk, unlinked after the
//! flush, deleted on load after a crash) and read back through the core's
//! block cache; the partial chunk at the end of the stream, and chunks whose
//! write is still in flight, are served from memory. So memory per layer is
//! bounded by its index plus one chunk, whatever the values' size.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use quire_io::{BLOCK_SIZE, BlockCache, BlockKey, EphemeralFile, FileError, FileId};
use quire_postgres::{Key, Lsn};

use crate::value::Value;

/// Blocks per chunk written to the ephemeral file.
const CHUNK_BLOCKS: u32 = 16;
const CHUNK_BYTES: usize = CHUNK_BLOCKS as usize * BLOCK_SIZE;

/// Where a value is in the layer's stream, and what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueRef {
    offset: u64,
    length: u32,
    /// 0 image, 1 record, 2 will-init record.
    kind: u8,
}

impl ValueRef {
    fn is_base(self) -> bool {
        self.kind != 1
    }
}

/// A chunk cut from the stream, to be written to the ephemeral file.
#[derive(Debug)]
pub struct Chunk {
    first_block: u32,
    bytes: Rc<[u8]>,
}

#[derive(Debug, Default)]
struct Stream {
    /// Bytes appended so far.
    length: u64,
    /// Chunks cut but not yet written, by first block.
    unwritten: BTreeMap<u32, Rc<[u8]>>,
    /// The first block of `tail`.
    tail_first_block: u32,
    /// The stream from `tail_first_block` on (less than a chunk).
    tail: Vec<u8>,
}

/// Values of one LSN range, all keys.
#[derive(Debug)]
pub struct InMemoryLayer {
    start: Lsn,
    end: Cell<Option<Lsn>>,
    /// Per key, values in ascending LSN order.
    index: RefCell<BTreeMap<Key, Vec<(Lsn, ValueRef)>>>,
    stream: RefCell<Stream>,
    path: PathBuf,
    file_id: FileId,
    file: RefCell<Option<Rc<EphemeralFile>>>,
    cache: Rc<RefCell<BlockCache>>,
    /// Chunk writes, one at a time (the first creates the file).
    writing: futures::lock::Mutex<()>,
    values: Cell<usize>,
}

/// A put the layer cannot take.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PutError {
    /// The LSN is below the layer's start, or not above the key's last value.
    #[error("value of {key} at {lsn} is not after {previous}")]
    OutOfOrder {
        /// The key.
        key: Key,
        /// The LSN given.
        lsn: Lsn,
        /// The LSN it must exceed.
        previous: Lsn,
    },
    /// The layer is frozen.
    #[error("the layer is frozen")]
    Frozen,
    /// A value larger than 4 GiB.
    #[error("value of {key} at {lsn} is {length} bytes")]
    TooLarge {
        /// The key.
        key: Key,
        /// The LSN given.
        lsn: Lsn,
        /// Its length.
        length: usize,
    },
}

impl InMemoryLayer {
    /// An open layer for LSNs from `start` on, spilling to a file in `dir`
    /// named after `file_id`, read through `cache`.
    pub fn new(
        start: Lsn,
        dir: &Path,
        file_id: FileId,
        cache: Rc<RefCell<BlockCache>>,
    ) -> InMemoryLayer {
        InMemoryLayer {
            start,
            end: Cell::new(None),
            index: RefCell::new(BTreeMap::new()),
            stream: RefCell::new(Stream::default()),
            path: dir.join(format!("ephemeral-{file_id:016x}")),
            file_id,
            file: RefCell::new(None),
            cache,
            writing: futures::lock::Mutex::new(()),
            values: Cell::new(0),
        }
    }

    /// First LSN covered.
    pub fn start(&self) -> Lsn {
        self.start
    }

    /// End of the LSN range (exclusive), once frozen.
    pub fn end(&self) -> Option<Lsn> {
        self.end.get()
    }

    /// Bytes of values held (in memory and in the file).
    pub fn bytes(&self) -> usize {
        usize::try_from(self.stream.borrow().length).unwrap_or(usize::MAX)
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.values.get()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.values.get() == 0
    }

    /// The ephemeral file's path (it exists once a chunk was written).
    pub fn file_path(&self) -> &Path {
        &self.path
    }

    /// Whether a chunk has been written to the ephemeral file.
    pub fn has_file(&self) -> bool {
        self.file.borrow().is_some()
    }

    /// Stores `value` for `key` at `lsn`. Returns a chunk the caller must
    /// pass to [`InMemoryLayer::write_chunk`] when the stream filled one.
    pub fn put(&self, key: Key, lsn: Lsn, value: &Value) -> Result<Option<Chunk>, PutError> {
        if self.end.get().is_some() {
            return Err(PutError::Frozen);
        }
        if lsn < self.start {
            return Err(PutError::OutOfOrder {
                key,
                lsn,
                previous: self.start,
            });
        }
        let bytes = value.bytes();
        let length = u32::try_from(bytes.len()).map_err(|_| PutError::TooLarge {
            key,
            lsn,
            length: bytes.len(),
        })?;
        let mut index = self.index.borrow_mut();
        let versions = index.entry(key).or_default();
        if let Some(&(previous, _)) = versions.last().filter(|(previous, _)| *previous >= lsn) {
            return Err(PutError::OutOfOrder { key, lsn, previous });
        }
        let kind = match value {
            Value::Image(_) => 0,
            Value::Record {
                will_init: false, ..
            } => 1,
            Value::Record {
                will_init: true, ..
            } => 2,
        };
        let mut stream = self.stream.borrow_mut();
        versions.push((
            lsn,
            ValueRef {
                offset: stream.length,
                length,
                kind,
            },
        ));
        self.values.set(self.values.get() + 1);
        stream.length += u64::from(length);
        stream.tail.extend_from_slice(bytes);
        if stream.tail.len() < CHUNK_BYTES {
            return Ok(None);
        }
        let rest = stream.tail.split_off(CHUNK_BYTES);
        let bytes: Rc<[u8]> = std::mem::replace(&mut stream.tail, rest).into();
        let first_block = stream.tail_first_block;
        stream.tail_first_block += CHUNK_BLOCKS;
        stream.unwritten.insert(first_block, bytes.clone());
        Ok(Some(Chunk { first_block, bytes }))
    }

    /// Writes a chunk [`InMemoryLayer::put`] cut to the ephemeral file.
    /// Until it succeeds the chunk is served from memory.
    pub async fn write_chunk(&self, chunk: Chunk) -> Result<(), FileError> {
        let _writing = self.writing.lock().await;
        let existing = self.file.borrow().clone();
        let file = if let Some(file) = existing {
            file
        } else {
            let file = Rc::new(EphemeralFile::create(&self.path).await?);
            *self.file.borrow_mut() = Some(file.clone());
            file
        };
        file.write_blocks(chunk.first_block, &chunk.bytes).await?;
        self.stream
            .borrow_mut()
            .unwritten
            .remove(&chunk.first_block);
        Ok(())
    }

    /// Freezes the layer at `end` (exclusive), which must cover every value.
    pub fn freeze(&self, end: Lsn) {
        assert!(end >= self.start, "a layer cannot end before it starts");
        self.end.set(Some(end));
    }

    /// Appends to `out`, newest first, the values of `key` below `below`
    /// down to the first base value; returns whether one was found.
    pub async fn collect(
        &self,
        key: Key,
        below: Lsn,
        out: &mut Vec<(Lsn, Value)>,
    ) -> Result<bool, FileError> {
        let mut wanted = Vec::new();
        let mut complete = false;
        if let Some(versions) = self.index.borrow().get(&key) {
            let end = versions.partition_point(|(lsn, _)| *lsn < below);
            for &(lsn, value) in versions[..end].iter().rev() {
                wanted.push((lsn, value));
                if value.is_base() {
                    complete = true;
                    break;
                }
            }
        }
        for (lsn, value) in wanted {
            out.push((lsn, self.value(value).await?));
        }
        Ok(complete)
    }

    /// Every value's place, in (key, LSN) order.
    pub fn entries(&self) -> Vec<(Key, Lsn, ValueRef)> {
        self.index
            .borrow()
            .iter()
            .flat_map(|(key, versions)| versions.iter().map(move |(lsn, at)| (*key, *lsn, *at)))
            .collect()
    }

    /// The keys in `range` with a value at or below `lsn` that `keep`
    /// accepts.
    pub fn keys_at(&self, lsn: Lsn, range: &Range<Key>, keep: &dyn Fn(&Key) -> bool) -> Vec<Key> {
        self.index
            .borrow()
            .range(range.clone())
            .filter(|(key, versions)| {
                keep(key) && versions.first().is_some_and(|(first, _)| *first <= lsn)
            })
            .map(|(key, _)| *key)
            .collect()
    }

    /// Reads a value.
    pub async fn value(&self, at: ValueRef) -> Result<Value, FileError> {
        let bytes = self.read(at.offset, at.length).await?;
        Ok(match at.kind {
            0 => Value::Image(bytes),
            kind => Value::Record {
                will_init: kind == 2,
                bytes,
            },
        })
    }

    async fn read(&self, offset: u64, length: u32) -> Result<Rc<[u8]>, FileError> {
        let block_size = BLOCK_SIZE as u64;
        let end = offset + u64::from(length);
        let mut value = Vec::with_capacity(length as usize);
        let mut position = offset;
        while position < end {
            let block = u32::try_from(position / block_size).unwrap_or(u32::MAX);
            let within = usize::try_from(position % block_size).unwrap_or(0);
            let take = usize::try_from((end - position).min(block_size - position % block_size))
                .unwrap_or(0);
            // From memory (the tail, or a chunk still being written) when
            // it is there, copied straight into the value.
            let held = {
                let stream = self.stream.borrow();
                let source = if block >= stream.tail_first_block {
                    Some((stream.tail_first_block, &stream.tail[..]))
                } else {
                    stream
                        .unwritten
                        .range(..=block)
                        .next_back()
                        .filter(|(first, _)| block < *first + CHUNK_BLOCKS)
                        .map(|(first, chunk)| (*first, &chunk[..]))
                };
                match source {
                    Some((first, bytes)) => {
                        let at = usize::try_from(position - u64::from(first) * block_size)
                            .unwrap_or(usize::MAX);
                        let slice = bytes
                            .get(at..at.saturating_add(take))
                            .ok_or_else(|| self.missing(block))?;
                        value.extend_from_slice(slice);
                        true
                    }
                    None => false,
                }
            };
            if !held {
                let block_bytes = self.file_block(block).await?;
                value.extend_from_slice(&block_bytes[within..within + take]);
            }
            position += take as u64;
        }
        Ok(value.into())
    }

    /// A written block of the ephemeral file, through the cache.
    async fn file_block(&self, block: u32) -> Result<Rc<[u8]>, FileError> {
        let key = BlockKey {
            file: self.file_id,
            block,
        };
        if let Some(cached) = self.cache.borrow_mut().get(key) {
            return Ok(cached);
        }
        let file = self
            .file
            .borrow()
            .clone()
            .ok_or_else(|| self.missing(block))?;
        let read = file.read_block(block).await?;
        Ok(self.cache.borrow_mut().insert_copy(key, &read))
    }

    fn missing(&self, block: u32) -> FileError {
        FileError {
            operation: "read",
            path: self.path.display().to_string(),
            source: std::io::Error::other(format!("block {block} is neither written nor held")),
        }
    }
}

impl Drop for InMemoryLayer {
    fn drop(&mut self) {
        if let Ok(mut cache) = self.cache.try_borrow_mut() {
            cache.forget_file(self.file_id);
        }
    }
}
