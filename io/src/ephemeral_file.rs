//! A scratch file of whole 8 KiB blocks written and read with O_DIRECT:
//! the backing of a timeline's in-memory layer.
//!
//! It is never fsynced and never read after a restart (the timeline's
//! loader deletes it), so durability is not its concern; integrity is: the
//! CRC-32C of every block written is kept in memory and checked on every
//! read, so a block the disk returns damaged is an error, never data.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use glommio::io::DmaFile;

use crate::block_file::{BLOCK_SIZE, FileError, write_whole_blocks};
use crate::read_buf::ReadBuf;

/// The file; see the module documentation.
#[derive(Debug)]
pub struct EphemeralFile {
    file: DmaFile,
    path: PathBuf,
    /// CRC-32C of each block written, by block number.
    crcs: RefCell<Vec<Option<u32>>>,
}

fn error(operation: &'static str, path: &Path, what: impl Into<std::io::Error>) -> FileError {
    FileError {
        operation,
        path: path.display().to_string(),
        source: what.into(),
    }
}

impl EphemeralFile {
    /// Creates (or truncates) the file at `path`.
    pub async fn create(path: &Path) -> Result<EphemeralFile, FileError> {
        if let Some(dir) = path.parent() {
            crate::direct_io_probe::prime_device_of(dir).await?;
        }
        let file = glommio::io::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(path)
            .await
            .map_err(|e| error("create", path, e))?;
        Ok(EphemeralFile {
            file,
            path: path.to_owned(),
            crcs: RefCell::new(Vec::new()),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes whole blocks at block `first` (`bytes` a multiple of 8 KiB).
    pub async fn write_blocks(&self, first: u32, bytes: &[u8]) -> Result<(), FileError> {
        write_whole_blocks(&self.file, &self.path, first, bytes).await?;
        let mut crcs = self.crcs.borrow_mut();
        for (i, block) in bytes.chunks(BLOCK_SIZE).enumerate() {
            let index = first as usize + i;
            if crcs.len() <= index {
                crcs.resize(index + 1, None);
            }
            crcs[index] = Some(quire_checksum::crc32c(block));
        }
        Ok(())
    }

    /// Reads block `block`, which must have been written, and checks it.
    pub async fn read_block(&self, block: u32) -> Result<ReadBuf, FileError> {
        let Some(expected) = self.crcs.borrow().get(block as usize).copied().flatten() else {
            return Err(error(
                "read",
                &self.path,
                std::io::Error::other(format!("block {block} was never written")),
            ));
        };
        let read = self
            .file
            .read_at_aligned(u64::from(block) * BLOCK_SIZE as u64, BLOCK_SIZE)
            .await
            .map_err(|e| error("read", &self.path, e))?;
        if read.len() != BLOCK_SIZE {
            return Err(error(
                "read",
                &self.path,
                std::io::Error::other("short read"),
            ));
        }
        let actual = quire_checksum::crc32c(&read);
        if actual != expected {
            return Err(error(
                "read",
                &self.path,
                std::io::Error::other(format!(
                    "block {block}: checksum {actual:#010x}, written {expected:#010x}"
                )),
            ));
        }
        Ok(ReadBuf::new(read))
    }

    /// Closes and deletes the file.
    pub async fn remove(self) -> Result<(), FileError> {
        self.file
            .close()
            .await
            .map_err(|e| error("close", &self.path, e))?;
        crate::block_file::remove_file(&self.path).await
    }
}
