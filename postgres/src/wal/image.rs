//! Full-page images inside WAL records, and their restoration to a page.
//!
//! An image is the page without its "hole" (the unused space between
//! `pd_lower` and `pd_upper`, when the page has a standard layout), possibly
//! compressed with pglz, LZ4 or zstd (`wal_compression`). Restoring
//! decompresses to `BLCKSZ - hole_length` bytes and re-inserts the hole as
//! zeros, as Postgres' `RestoreBlockImage` does.

use crate::types::BLCKSZ;
use crate::wal::pglz;
use crate::wal::record::{image_compression, image_is_applied};

/// How an image is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Postgres' own LZ.
    Pglz,
    /// LZ4 block format.
    Lz4,
    /// A zstd frame.
    Zstd,
}

/// A full-page image as stored in a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockImage<'a> {
    /// The stored bytes (`bimg_len`).
    pub bytes: &'a [u8],
    /// Where the hole starts.
    pub hole_offset: u16,
    /// How long the hole is (0: none).
    pub hole_length: u16,
    /// `bimg_info`.
    pub info: u8,
}

/// Why an image did not restore.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// Decompression failed or produced the wrong length.
    #[error("{method:?} image does not decompress to {expected} bytes: {detail}")]
    Decompress {
        /// The method.
        method: Compression,
        /// `BLCKSZ - hole_length`.
        expected: usize,
        /// What the decompressor said.
        detail: String,
    },
}

impl BlockImage<'_> {
    /// The compression method, if compressed.
    pub fn compression(&self) -> Option<Compression> {
        image_compression(self.info)
    }

    /// Whether redo applies this image (`BKPIMAGE_APPLY`); an image written
    /// only for `wal_consistency_checking` is not applied.
    pub fn is_applied(&self) -> bool {
        image_is_applied(self.info)
    }

    /// Rebuilds the whole page.
    pub fn restore(&self, page: &mut [u8; BLCKSZ]) -> Result<(), ImageError> {
        let hole_offset = usize::from(self.hole_offset);
        let hole_length = usize::from(self.hole_length);
        let stored = BLCKSZ - hole_length;
        let mut scratch;
        let contents: &[u8] = match self.compression() {
            None => self.bytes,
            Some(method) => {
                scratch = vec![0u8; stored];
                decompress(method, self.bytes, &mut scratch)?;
                &scratch
            }
        };
        // Decoding checked hole_offset + hole_length <= BLCKSZ, and an
        // uncompressed image holds exactly BLCKSZ - hole_length bytes.
        page[..hole_offset].copy_from_slice(&contents[..hole_offset]);
        page[hole_offset..hole_offset + hole_length].fill(0);
        page[hole_offset + hole_length..].copy_from_slice(&contents[hole_offset..]);
        Ok(())
    }
}

fn decompress(method: Compression, input: &[u8], output: &mut [u8]) -> Result<(), ImageError> {
    let expected = output.len();
    let failure = |detail: String| ImageError::Decompress {
        method,
        expected,
        detail,
    };
    match method {
        Compression::Pglz => pglz::decompress(input, output).map_err(|e| failure(e.to_string())),
        Compression::Lz4 => match lz4_flex::block::decompress_into(input, output) {
            Ok(n) if n == expected => Ok(()),
            Ok(n) => Err(failure(format!("produced {n} bytes"))),
            Err(e) => Err(failure(e.to_string())),
        },
        Compression::Zstd => match zstd::bulk::decompress_to_buffer(input, output) {
            Ok(n) if n == expected => Ok(()),
            Ok(n) => Err(failure(format!("produced {n} bytes"))),
            Err(e) => Err(failure(e.to_string())),
        },
    }
}
