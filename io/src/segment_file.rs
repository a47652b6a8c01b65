//! Preallocated segment files written in place with direct I/O and
//! `O_DSYNC` (each write is durable when it completes): the safekeeper's
//! WAL segments.
//!
//! A segment is created at its full size (`fallocate`), so an `fdatasync`
//! after a write flushes data only, no size change; its creation is made
//! durable by an fsync of the directory. Writes and reads are whole 8 KiB
//! blocks at block numbers (the caller rewrites a partial last block with
//! its tail zero-filled, as Postgres does with its WAL pages). A range of
//! blocks can be returned to zeros (`punch`), which is how a cut WAL tail
//! disappears without rewriting the rest of the segment.

use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};

use crate::block_file::{BLOCK_SIZE, FileError, sync_directory_of, write_whole_blocks};

fn error(operation: &'static str, path: &Path, source: impl Into<std::io::Error>) -> FileError {
    FileError {
        operation,
        path: path.display().to_string(),
        source: source.into(),
    }
}

/// Bytes per read request (a bounded share of the executor's I/O memory).
const READ_CHUNK: usize = 128 * 1024;

/// An open segment file.
#[derive(Debug)]
pub struct SegmentFile {
    file: DmaFile,
    path: PathBuf,
    size: u64,
}

impl SegmentFile {
    /// Opens `path`, creating it at `size` bytes (a multiple of 8 KiB) if
    /// it does not exist; a new file's name is durable when this returns.
    pub async fn open_or_create(path: &Path, size: u64) -> Result<SegmentFile, FileError> {
        if !size.is_multiple_of(BLOCK_SIZE as u64) || size == 0 {
            return Err(error(
                "create",
                path,
                std::io::Error::other("segment size is not a multiple of 8 KiB"),
            ));
        }
        let existed = path.exists();
        if let Some(dir) = path.parent() {
            crate::direct_io_probe::prime_device_of(dir).await?;
        }
        // O_DSYNC: a write is durable when it completes (one device write
        // with FUA where the device has it), so a WAL flush needs no
        // separate fdatasync round trip.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .custom_flags(libc::O_DSYNC)
            .dma_open(path)
            .await
            .map_err(|e| error("open", path, e))?;
        let on_disk = file.file_size().await.map_err(|e| error("stat", path, e))?;
        if on_disk < size {
            file.pre_allocate(size, false)
                .await
                .map_err(|e| error("fallocate", path, e))?;
            file.fdatasync()
                .await
                .map_err(|e| error("fdatasync", path, e))?;
        }
        if !existed {
            sync_directory_of(path).await?;
        }
        Ok(SegmentFile {
            file,
            path: path.to_owned(),
            size,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check_range(
        &self,
        operation: &'static str,
        first: u32,
        bytes: usize,
    ) -> Result<(), FileError> {
        let end = u64::from(first) * BLOCK_SIZE as u64 + bytes as u64;
        if end > self.size {
            return Err(error(
                operation,
                &self.path,
                std::io::Error::other(format!("blocks past the segment's {} bytes", self.size)),
            ));
        }
        Ok(())
    }

    /// Writes whole blocks at block `first`; durable when it returns
    /// (`O_DSYNC`).
    pub async fn write_blocks(&self, first: u32, bytes: &[u8]) -> Result<(), FileError> {
        self.check_range("write", first, bytes.len())?;
        write_whole_blocks(&self.file, &self.path, first, bytes).await
    }

    /// Reads `count` whole blocks from block `first`.
    pub async fn read_blocks(&self, first: u32, count: u32) -> Result<Vec<u8>, FileError> {
        let len = count as usize * BLOCK_SIZE;
        self.check_range("read", first, len)?;
        let mut out = Vec::with_capacity(len);
        let mut at = u64::from(first) * BLOCK_SIZE as u64;
        while out.len() < len {
            let step = (len - out.len()).min(READ_CHUNK);
            let read = self
                .file
                .read_at_aligned(at, step)
                .await
                .map_err(|e| error("read", &self.path, e))?;
            if read.len() != step {
                return Err(error(
                    "read",
                    &self.path,
                    std::io::Error::other("short read"),
                ));
            }
            out.extend_from_slice(&read);
            at += step as u64;
        }
        Ok(out)
    }

    /// Returns blocks `first..` to zeros (a hole) up to the end of the file.
    pub async fn punch_from(&self, first: u32) -> Result<(), FileError> {
        let offset = u64::from(first) * BLOCK_SIZE as u64;
        if offset >= self.size {
            return Ok(());
        }
        self.file
            .deallocate(offset, self.size - offset)
            .await
            .map_err(|e| error("punch", &self.path, e))
    }

    /// `fdatasync`: every write so far is durable.
    pub async fn sync(&self) -> Result<(), FileError> {
        self.file
            .fdatasync()
            .await
            .map_err(|e| error("fdatasync", &self.path, e))
    }

    /// Closes the file.
    pub async fn close(self) -> Result<(), FileError> {
        self.file
            .close()
            .await
            .map_err(|e| error("close", &self.path, e))
    }
}
