//! A timeline's metadata file: which layers make it up and up to which LSN
//! its data is on disk. Specified in `docs/format/timeline-metadata.md`.
//!
//! The file is replaced atomically (written to `metadata.tmp` with direct
//! I/O, `fdatasync`, renamed over `metadata`, directory `fsync`), so after a
//! crash it is either the old or the new version, never a mix, and it is
//! checked with a CRC-32C on load. Values a checksum cannot vouch for (a
//! GC cutoff above the disk-consistent LSN, a branch point at or above it,
//! a layer name not spelled as written, a layer listed twice) are refused
//! on load as corruption too.

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
        if bytes.get(..total - 4).map(quire_checksum::crc32c) != Some(stored) {
            return Err(corrupt("checksum mismatch"));
        }
        let disk_consistent_lsn = Lsn(u64_at(16).ok_or_else(|| corrupt("short"))?);
        let ancestor_id: [u8; 16] = bytes
            .get(24..40)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("short"))?;
        let ancestor_lsn = Lsn(u64_at(40).ok_or_else(|| corrupt("short"))?);
        let ancestor = match u32_at(48) {
            Some(1) => Some((ancestor_id, ancestor_lsn)),
            Some(0) if ancestor_id == [0; 16] && ancestor_lsn == Lsn(0) => None,
            _ => return Err(corrupt("ancestor fields are neither set nor zero")),
        };
        let count = u32_at(52).ok_or_else(|| corrupt("short"))? as usize;
        let gc_cutoff_lsn = Lsn(u64_at(56).ok_or_else(|| corrupt("short"))?);
        if gc_cutoff_lsn > disk_consistent_lsn {
            return Err(corrupt("GC cutoff above the disk-consistent LSN"));
        }
        // A branch's own values start after its branch point, and the
        // disk-consistent LSN starts there and never decreases.
        if ancestor.is_some_and(|(_, at)| at >= disk_consistent_lsn) {
            return Err(corrupt("branch point at or above the disk-consistent LSN"));
        }
        let names = bytes
            .get(HEADER_SIZE..total - 4)
            .and_then(|names| std::str::from_utf8(names).ok())
            .ok_or_else(|| corrupt("names not UTF-8"))?;
        if !names.is_empty() && !names.ends_with('\n') {
            return Err(corrupt("last layer name not ended by a newline"));
        }
        let layers: Vec<LayerName> = names
            .split_terminator('\n')
            .map(|line| {
                LayerName::parse(line).ok_or_else(|| corrupt(&format!("bad layer name {line:?}")))
            })
            .collect::<Result<_, _>>()?;
        if layers.len() != count {
            return Err(corrupt("layer count mismatch"));
        }
        let distinct: std::collections::HashSet<&LayerName> = layers.iter().collect();
        if distinct.len() != layers.len() {
            return Err(corrupt("a layer is listed twice"));
        }
        Ok(TimelineMetadata {
            disk_consistent_lsn,
            ancestor,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer_file::LayerKindName;
    use quire_postgres::Key;

    fn layer(lsn: u64) -> LayerName {
        LayerName {
            kind: LayerKindName::Delta,
            key_start: Key::MIN,
            key_end: Key::MAX,
            lsn_start: Lsn(lsn),
            lsn_end: Lsn(lsn + 0x10),
        }
    }

    fn sample() -> TimelineMetadata {
        TimelineMetadata {
            disk_consistent_lsn: Lsn(0x500),
            ancestor: Some(([3; 16], Lsn(0x100))),
            gc_cutoff_lsn: Lsn(0x200),
            layers: vec![layer(0x100), layer(0x200)],
        }
    }

    /// `metadata` with its header field at `at` replaced and the CRC fixed.
    fn forged(metadata: &TimelineMetadata, at: usize, field: &[u8]) -> Vec<u8> {
        let mut bytes = metadata.encode();
        bytes[at..at + field.len()].copy_from_slice(field);
        let total = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
        let crc = quire_checksum::crc32c(&bytes[..total - 4]);
        bytes[total - 4..total].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn round_trips() {
        let metadata = sample();
        assert_eq!(
            TimelineMetadata::decode("m", &metadata.encode()).unwrap(),
            metadata
        );
        let root = TimelineMetadata {
            ancestor: None,
            layers: Vec::new(),
            ..sample()
        };
        assert_eq!(TimelineMetadata::decode("m", &root.encode()).unwrap(), root);
    }

    /// Checksummed files whose values cannot be: refused as corrupt.
    #[test]
    fn values_a_checksum_cannot_vouch_for_are_corrupt() {
        let metadata = sample();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "GC cutoff above",
                forged(&metadata, 56, &0x600u64.to_le_bytes()),
            ),
            (
                "branch point at the end",
                forged(&metadata, 40, &0x500u64.to_le_bytes()),
            ),
            (
                "branch point at the top of the LSN space",
                forged(&metadata, 40, &u64::MAX.to_le_bytes()),
            ),
            ("has_ancestor 2", forged(&metadata, 48, &2u32.to_le_bytes())),
            (
                "no ancestor but an id",
                forged(
                    &TimelineMetadata {
                        ancestor: None,
                        ..sample()
                    },
                    24,
                    &[9; 16],
                ),
            ),
            (
                "a layer twice",
                TimelineMetadata {
                    layers: vec![layer(0x100), layer(0x100)],
                    ..sample()
                }
                .encode(),
            ),
        ];
        for (what, bytes) in cases {
            assert!(
                matches!(
                    TimelineMetadata::decode("m", &bytes),
                    Err(MetadataError::Corrupt { .. })
                ),
                "{what}"
            );
        }
    }

    /// A name `from_str_radix` would read but `Display` never writes names
    /// another file: refused, as is a name not ended by a newline.
    #[test]
    fn layer_names_must_be_spelled_as_written() {
        let name = layer(0x100).to_string();
        assert_eq!(LayerName::parse(&name), Some(layer(0x100)));
        let signed = name.replacen("00", "+0", 1);
        assert_eq!(LayerName::parse(&signed), None, "{signed}");
        assert_eq!(LayerName::parse(&name.to_uppercase()), None);
        let mut metadata = sample();
        metadata.layers.truncate(1);
        let mut bytes = metadata.encode();
        let newline = HEADER_SIZE + name.len();
        bytes[newline] = b'\r';
        let total = HEADER_SIZE + name.len() + 1 + 4;
        let crc = quire_checksum::crc32c(&bytes[..total - 4]);
        bytes[total - 4..total].copy_from_slice(&crc.to_le_bytes());
        assert!(TimelineMetadata::decode("m", &bytes).is_err());
    }
}
