//! Layer file formats, pure: bytes in, bytes out.
//!
//! This crate owns the byte layout of image and delta layers, specified in
//! `docs/format/layers.md`: the summary block ([`format::Summary`]), the
//! value stream, the B-tree index of fixed-size entries read in place
//! ([`format::LeafEntry`], [`format::InternalEntry`]), and the checksum
//! table that covers every block. [`writer::LayerWriter`] builds a file in
//! one sequential pass; [`reader::LayerReader`] looks values up through a
//! [`reader::BlockSource`] that another crate implements (direct I/O and the
//! block cache live in `io`). Corruption is a typed [`LayerError`] naming
//! the file, block and region; nothing here does I/O or takes a clock.
#![forbid(unsafe_code)]

pub mod format;
pub mod reader;
pub mod writer;

pub use format::{BLOCK_SIZE, LayerKind, ValueKind};
pub use reader::{BlockSource, LayerReader};
pub use writer::LayerWriter;

/// Why a layer could not be written or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    /// Bytes that fail a check: the layer is corrupt.
    #[error("corrupt layer {file}: block {block} ({region}): {what}")]
    Corrupt {
        /// The layer file.
        file: String,
        /// The block.
        block: u32,
        /// Which region the block belongs to.
        region: &'static str,
        /// What was wrong.
        what: String,
    },
    /// The block source failed (an I/O error, described by it).
    #[error("reading layer {file} block {block}: {what}")]
    Read {
        /// The layer file.
        file: String,
        /// The block.
        block: u32,
        /// The source's description.
        what: String,
    },
    /// The writer was used against its contract (unsorted keys, a key or
    /// LSN outside the layer's ranges, an oversized value).
    #[error("layer writer: {0}")]
    Misuse(String),
}

impl LayerError {
    /// Whether the file's bytes differ from what was written: a block
    /// failing its checksum or cut short, or a summary failing its own.
    /// Another copy of the file may then be whole. (A structural error in
    /// checksummed bytes was written so: every copy has it.)
    pub fn is_damage(&self) -> bool {
        match self {
            LayerError::Corrupt { region, what, .. } => {
                *region == "block" || what.starts_with("checksum")
            }
            _ => false,
        }
    }
}
