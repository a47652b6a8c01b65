//! Layer files on disk through direct I/O: reading whole blocks, and
//! writing a new file durably.
//!
//! Reads take block numbers, never byte offsets, so every read is an aligned
//! multiple of 8 KiB: a misaligned O_DIRECT read cannot be expressed.
//! Writing follows the fsync discipline of `docs/format/layers.md`: blocks
//! go to `<name>.tmp`, block 0 last, then `fdatasync`, rename to the final
//! name, and `fsync` of the directory. Only after that is the file durable
//! under its name.

use std::path::{Path, PathBuf};

use glommio::io::DmaFile;

use crate::cache::FileId;
use crate::read_buf::ReadBuf;

/// The block size of every file this module reads or writes.
pub const BLOCK_SIZE: usize = 8192;

/// Why a file operation failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{operation} {path}: {source}")]
pub struct FileError {
    /// What was being done.
    pub operation: &'static str,
    /// The file.
    pub path: String,
    /// The cause.
    pub source: std::io::Error,
}

fn file_error(
    operation: &'static str,
    path: &Path,
    source: impl Into<std::io::Error>,
) -> FileError {
    FileError {
        operation,
        path: path.display().to_string(),
        source: source.into(),
    }
}

/// An open file read in whole blocks with O_DIRECT.
#[derive(Debug)]
pub struct BlockFile {
    file: DmaFile,
    id: FileId,
    path: PathBuf,
    blocks: u32,
}

impl BlockFile {
    /// Opens `path` for direct reads; `id` names it in the block cache.
    pub async fn open(path: &Path, id: FileId) -> Result<BlockFile, FileError> {
        let file = DmaFile::open(path)
            .await
            .map_err(|e| file_error("open", path, e))?;
        let size = file
            .file_size()
            .await
            .map_err(|e| file_error("stat", path, e))?;
        if size % BLOCK_SIZE as u64 != 0 {
            return Err(file_error(
                "open",
                path,
                std::io::Error::other(format!("size {size} is not a multiple of {BLOCK_SIZE}")),
            ));
        }
        let blocks = u32::try_from(size / BLOCK_SIZE as u64)
            .map_err(|_| file_error("open", path, std::io::Error::other("too many blocks")))?;
        Ok(BlockFile {
            file,
            id,
            path: path.to_owned(),
            blocks,
        })
    }

    /// The cache identity.
    pub fn id(&self) -> FileId {
        self.id
    }

    /// The path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Blocks in the file.
    pub fn blocks(&self) -> u32 {
        self.blocks
    }

    /// Reads `count` blocks from `first` in one request, into the
    /// executor's I/O memory (no copy). Nothing but the bounds and length
    /// checks stands between the caller and the O_DIRECT read, so this is
    /// also the physical-limit peer benchmarks measure the engine against.
    pub async fn read_blocks(&self, first: u32, count: u32) -> Result<ReadBuf, FileError> {
        if count == 0 || first.checked_add(count).is_none_or(|end| end > self.blocks) {
            return Err(file_error(
                "read",
                &self.path,
                std::io::Error::other(format!("blocks {first}+{count} of {}", self.blocks)),
            ));
        }
        let result = self
            .file
            .read_at_aligned(
                u64::from(first) * BLOCK_SIZE as u64,
                count as usize * BLOCK_SIZE,
            )
            .await
            .map_err(|e| file_error("read", &self.path, e))?;
        if result.len() != count as usize * BLOCK_SIZE {
            return Err(file_error(
                "read",
                &self.path,
                std::io::Error::other("short read"),
            ));
        }
        Ok(ReadBuf::new(result))
    }

    /// Reads several single blocks at once: all requests are submitted
    /// together and complete in any order.
    pub async fn read_scattered(&self, blocks: &[u32]) -> Result<Vec<ReadBuf>, FileError> {
        let reads = blocks.iter().map(|&block| self.read_blocks(block, 1));
        futures::future::try_join_all(reads).await
    }

    /// Closes the file.
    pub async fn close(self) -> Result<(), FileError> {
        self.file
            .close()
            .await
            .map_err(|e| file_error("close", &self.path, e))
    }
}

/// A new file being written block by block, made durable by [`finish`](Self::finish).
#[derive(Debug)]
pub struct BlockFileWriter {
    file: DmaFile,
    temporary: PathBuf,
    destination: PathBuf,
}

impl BlockFileWriter {
    /// Starts `destination` as `destination.tmp` (replacing a stale one).
    pub async fn create(destination: &Path) -> Result<BlockFileWriter, FileError> {
        let mut temporary = destination.as_os_str().to_owned();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        if let Some(dir) = temporary.parent() {
            crate::direct_io_probe::prime_device_of(dir).await?;
        }
        let file = DmaFile::create(&temporary)
            .await
            .map_err(|e| file_error("create", &temporary, e))?;
        Ok(BlockFileWriter {
            file,
            temporary,
            destination: destination.to_owned(),
        })
    }

    /// Writes whole blocks starting at block `first` (`bytes` holds a
    /// multiple of 8 KiB).
    pub async fn write_blocks(&self, first: u32, bytes: &[u8]) -> Result<(), FileError> {
        if bytes.is_empty() {
            return Ok(());
        }
        write_whole_blocks(&self.file, &self.temporary, first, bytes).await
    }

    /// Makes the file durable under its final name: `fdatasync`, close,
    /// rename, `fsync` of the directory.
    pub async fn finish(self) -> Result<PathBuf, FileError> {
        self.file
            .fdatasync()
            .await
            .map_err(|e| file_error("fdatasync", &self.temporary, e))?;
        self.file
            .close()
            .await
            .map_err(|e| file_error("close", &self.temporary, e))?;
        glommio::io::rename(&self.temporary, &self.destination)
            .await
            .map_err(|e| file_error("rename", &self.temporary, e))?;
        sync_directory_of(&self.destination).await?;
        Ok(self.destination)
    }
}

/// Writes whole blocks of `bytes` at block `first` of `file` (at `path`),
/// through an aligned buffer of the executor's (registered) memory.
pub(crate) async fn write_whole_blocks(
    file: &DmaFile,
    path: &Path,
    first: u32,
    bytes: &[u8],
) -> Result<(), FileError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(BLOCK_SIZE) {
        return Err(file_error(
            "write",
            path,
            std::io::Error::other("not whole blocks"),
        ));
    }
    let mut buffer = file.alloc_dma_buffer(bytes.len());
    buffer.as_bytes_mut().copy_from_slice(bytes);
    let written = file
        .write_at(buffer, u64::from(first) * BLOCK_SIZE as u64)
        .await
        .map_err(|e| file_error("write", path, e))?;
    if written != bytes.len() {
        return Err(file_error(
            "write",
            path,
            std::io::Error::other("short write"),
        ));
    }
    Ok(())
}

/// `fsync`s the directory holding `path`, so a rename into it is durable.
pub async fn sync_directory_of(path: &Path) -> Result<(), FileError> {
    let directory = path.parent().unwrap_or_else(|| Path::new("."));
    let handle = glommio::io::Directory::open(directory)
        .await
        .map_err(|e| file_error("open", directory, e))?;
    handle
        .sync()
        .await
        .map_err(|e| file_error("fsync", directory, e))?;
    handle
        .close()
        .await
        .map_err(|e| file_error("close", directory, e))
}

/// Removes a file.
pub async fn remove_file(path: &Path) -> Result<(), FileError> {
    glommio::io::remove(path)
        .await
        .map_err(|e| file_error("remove", path, e))
}
