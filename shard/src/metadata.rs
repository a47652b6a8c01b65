//! A timeline's metadata file: which layers make it up and up to which LSN
//! its data is on disk. Specified in `docs/format/timeline-metadata.md`.
//!
//! The file is replaced atomically (written to `metadata.tmp` with direct
//! I/O, `fdatasync`, renamed over `metadata`, directory `fsync`), so after a
//! crash it is either the old or the new version, never a mix, and it is
//! checked with a CRC-32C on load.

use std::path::Path;

use quire_io::BlockFileWriter;
use quire_postgres::Lsn;

use crate::layer_file::LayerName;

/// `b"QTLMETA1"`.
const MAGIC: [u8; 8] = *b"QTLMETA1";
/// Bytes before the layer names.
const HEADER_SIZE: usize = 64;
/// The format version written and accepted.
const VERSION: u32 = 2;

/// What the metadata file records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineMetadata {
    /// Every value below this LSN is in the listed layers; WAL is
    /// re-ingested from here after a restart.
    pub disk_consistent_lsn: Lsn,
    /// The parent timeline and the LSN this one branched at, if any.
    pub ancestor: Option<([u8; 16], Lsn)>,
    /// Reads below this LSN are refused: GC may have removed what they
    /// need (never above `disk_consistent_lsn`).
    pub gc_cutoff_lsn: Lsn,
    /// The layers, by name.
    pub layers: Vec<LayerName>,
}

/// Why metadata could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The file is not valid metadata.
    #[error("corrupt timeline metadata {file}: {what}")]
    Corrupt {
        /// The file.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] quire_io::FileError),
}

impl TimelineMetadata {
    /// The file's bytes, padded to whole 8 KiB blocks.
    pub fn encode(&self) -> Vec<u8> {
        let mut names = String::new();
        for name in &self.layers {
            names.push_str(&name.to_string());
            names.push('\n');
        }
        let total = HEADER_SIZE + names.len() + 4;
        let mut bytes = Vec::with_capacity(total.next_multiple_of(quire_io::BLOCK_SIZE));
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_le_bytes());
        bytes.extend_from_slice(&self.disk_consistent_lsn.0.to_le_bytes());
        let (ancestor_id, ancestor_lsn) = self.ancestor.unwrap_or(([0; 16], Lsn(0)));
        bytes.extend_from_slice(&ancestor_id);
        bytes.extend_from_slice(&ancestor_lsn.0.to_le_bytes());
        bytes.extend_from_slice(&u32::from(self.ancestor.is_some()).to_le_bytes());
        bytes.extend_from_slice(
            &u32::try_from(self.layers.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        bytes.extend_from_slice(&self.gc_cutoff_lsn.0.to_le_bytes());
        debug_assert_eq!(bytes.len(), HEADER_SIZE);
        bytes.extend_from_slice(names.as_bytes());
        let crc = quire_checksum::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        bytes.resize(total.next_multiple_of(quire_io::BLOCK_SIZE), 0);
        bytes
    }

    /// Parses and checks a metadata file's bytes.
    pub fn decode(file: &str, bytes: &[u8]) -> Result<TimelineMetadata, MetadataError> {
        let corrupt = |what: &str| MetadataError::Corrupt {
            file: file.to_owned(),
            what: what.to_owned(),
        };
        let u32_at = |at: usize| {
            bytes
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        let u64_at = |at: usize| {
            bytes.get(at..at + 8).map(|b| {
                let mut raw = [0u8; 8];
                raw.copy_from_slice(b);
                u64::from_le_bytes(raw)
            })
        };
        if bytes.get(..8) != Some(&MAGIC[..]) {
            return Err(corrupt("bad magic"));
        }
        if u32_at(8) != Some(VERSION) {
            return Err(corrupt("unknown version"));
        }
        let total = u32_at(12).ok_or_else(|| corrupt("short"))? as usize;
        if total < HEADER_SIZE + 4 || total > bytes.len() {
            return Err(corrupt("length out of bounds"));
        }
        let stored = u32_at(total - 4).ok_or_else(|| corrupt("short"))?;
        if quire_checksum::crc32c(&bytes[..total - 4]) != stored {
            return Err(corrupt("checksum mismatch"));
        }
        let disk_consistent_lsn = Lsn(u64_at(16).ok_or_else(|| corrupt("short"))?);
        let mut ancestor_id = [0u8; 16];
        ancestor_id.copy_from_slice(&bytes[24..40]);
        let ancestor_lsn = Lsn(u64_at(40).ok_or_else(|| corrupt("short"))?);
        let has_ancestor = u32_at(48) == Some(1);
        let count = u32_at(52).ok_or_else(|| corrupt("short"))? as usize;
        let gc_cutoff_lsn = Lsn(u64_at(56).ok_or_else(|| corrupt("short"))?);
        let names = std::str::from_utf8(&bytes[HEADER_SIZE..total - 4])
            .map_err(|_| corrupt("names not UTF-8"))?;
        let layers: Vec<LayerName> = names
            .lines()
            .map(|line| {
                LayerName::parse(line).ok_or_else(|| corrupt(&format!("bad layer name {line:?}")))
            })
            .collect::<Result<_, _>>()?;
        if layers.len() != count {
            return Err(corrupt("layer count mismatch"));
        }
        Ok(TimelineMetadata {
            disk_consistent_lsn,
            ancestor: has_ancestor.then_some((ancestor_id, ancestor_lsn)),
            gc_cutoff_lsn,
            layers,
        })
    }

    /// Replaces `dir/metadata` atomically and durably.
    pub async fn store(&self, dir: &Path) -> Result<(), MetadataError> {
        let writer = BlockFileWriter::create(&dir.join("metadata")).await?;
        writer.write_blocks(0, &self.encode()).await?;
        writer.finish().await?;
        Ok(())
    }

    /// Reads `dir/metadata`.
    pub async fn load(dir: &Path) -> Result<TimelineMetadata, MetadataError> {
        let path = dir.join("metadata");
        let file = quire_io::BlockFile::open(&path, u64::MAX).await?;
        let bytes = file.read_blocks(0, file.blocks()).await?;
        let metadata = TimelineMetadata::decode(&path.display().to_string(), &bytes);
        file.close().await?;
        metadata
    }
}
