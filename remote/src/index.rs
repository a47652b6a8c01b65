//! The per-timeline index (`docs/format/remote-storage.md`, "The index"):
//! which layer objects make up a timeline as one generation last uploaded
//! it, with each layer's size and CRC-32C, the disk-consistent LSN, the
//! ancestor and branch point, and the GC cutoff.
//!
//! Pure: bytes in, bytes out. The bytes come from object storage, so every
//! count and length is checked against what remains before anything is
//! allocated on its word, and any rule broken is [`IndexError`] naming it,
//! never a panic. The encoding is canonical: what decodes re-encodes to the
//! same bytes.

use crate::names::{Generation, Id, LAYER_NAME_MAX, LayerFileName};

/// `b"QRINDEX1"`.
const MAGIC: [u8; 8] = *b"QRINDEX1";
/// The format version written and accepted.
const VERSION: u32 = 1;
/// Bytes before the first layer entry.
const HEADER_SIZE: usize = 72;
/// Bytes of a layer entry before its name.
const ENTRY_FIXED: usize = 18;
/// The `flags` bit saying the timeline has an ancestor.
const FLAG_ANCESTOR: u32 = 1;

/// The largest index accepted (or written).
pub const INDEX_BYTES_MAX: usize = 64 << 20;
/// The most layers an index may list.
pub const INDEX_LAYERS_MAX: usize = 1 << 20;

/// One layer an index lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexLayer {
    /// The layer's local file name.
    pub name: LayerFileName,
    /// The file's length in bytes.
    pub size: u64,
    /// CRC-32C of the whole file.
    pub crc32c: u32,
    /// The generation whose object holds it.
    pub generation: Generation,
}

/// A timeline's index as one generation uploaded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineIndex {
    /// The generation that wrote it.
    pub generation: Generation,
    /// Every value below this LSN is in the listed layers.
    pub disk_consistent_lsn: u64,
    /// Reads below this LSN are refused (never above
    /// `disk_consistent_lsn`).
    pub gc_cutoff_lsn: u64,
    /// The parent timeline and the branch point, if any (the branch point
    /// below `disk_consistent_lsn`).
    pub ancestor: Option<(Id, u64)>,
    /// The layers, sorted by name, each once.
    pub layers: Vec<IndexLayer>,
}

/// Why bytes are not an index, or an index cannot be encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    /// The bytes break a rule of the format.
    #[error("corrupt timeline index: {0}")]
    Corrupt(&'static str),
    /// The value breaks a rule of the format (encoding refuses it).
    #[error("timeline index cannot be written: {0}")]
    Invalid(&'static str),
}

/// Reads little-endian fields off the front of the bytes, each refusing to
/// run past their end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], IndexError> {
        let (head, rest) = self
            .bytes
            .split_at_checked(n)
            .ok_or(IndexError::Corrupt("ends inside a field"))?;
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], IndexError> {
        self.take(N)?
            .try_into()
            .map_err(|_| IndexError::Corrupt("ends inside a field"))
    }

    fn u16(&mut self) -> Result<u16, IndexError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, IndexError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, IndexError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

impl TimelineIndex {
    /// Checks the rules a value must keep to be written (and that decode
    /// enforces on what it reads).
    fn check(&self) -> Result<(), &'static str> {
        if self.gc_cutoff_lsn > self.disk_consistent_lsn {
            return Err("GC cutoff above the disk-consistent LSN");
        }
        if self
            .ancestor
            .is_some_and(|(_, at)| at >= self.disk_consistent_lsn)
        {
            return Err("branch point at or above the disk-consistent LSN");
        }
        if self.layers.len() > INDEX_LAYERS_MAX {
            return Err("too many layers");
        }
        if self.layers.iter().any(|l| l.generation > self.generation) {
            return Err("a layer of a later generation than the index");
        }
        if self
            .layers
            .windows(2)
            .any(|pair| matches!(pair, [a, b] if a.name >= b.name))
        {
            return Err("layers not sorted by name, or one listed twice");
        }
        Ok(())
    }

    /// The index's bytes. Refuses a value breaking a rule of the format
    /// (unsorted or repeated layers, LSNs out of order, too large).
    pub fn encode(&self) -> Result<Vec<u8>, IndexError> {
        self.check().map_err(IndexError::Invalid)?;
        let names: usize = self.layers.iter().map(|l| l.name.as_str().len()).sum();
        let total = HEADER_SIZE + self.layers.len() * ENTRY_FIXED + names + 4;
        if total > INDEX_BYTES_MAX {
            return Err(IndexError::Invalid("larger than the most an index may be"));
        }
        let too_large = |_| IndexError::Invalid("larger than the most an index may be");
        let mut bytes = Vec::with_capacity(total);
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&u32::try_from(total).map_err(too_large)?.to_le_bytes());
        bytes.extend_from_slice(&self.generation.get().to_le_bytes());
        let (flags, ancestor_lsn, ancestor_id) = match self.ancestor {
            Some((id, lsn)) => (FLAG_ANCESTOR, lsn, id.0),
            None => (0, 0, [0; 16]),
        };
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&self.disk_consistent_lsn.to_le_bytes());
        bytes.extend_from_slice(&self.gc_cutoff_lsn.to_le_bytes());
        bytes.extend_from_slice(&ancestor_lsn.to_le_bytes());
        bytes.extend_from_slice(&ancestor_id);
        let count = u32::try_from(self.layers.len()).map_err(too_large)?;
        bytes.extend_from_slice(&count.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(bytes.len(), HEADER_SIZE);
        for layer in &self.layers {
            let name = layer.name.as_str().as_bytes();
            // A LayerFileName is at most LAYER_NAME_MAX bytes.
            let length = u16::try_from(name.len()).map_err(too_large)?;
            bytes.extend_from_slice(&layer.size.to_le_bytes());
            bytes.extend_from_slice(&layer.crc32c.to_le_bytes());
            bytes.extend_from_slice(&layer.generation.get().to_le_bytes());
            bytes.extend_from_slice(&length.to_le_bytes());
            bytes.extend_from_slice(name);
        }
        let crc = quire_checksum::crc32c(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(bytes.len(), total);
        Ok(bytes)
    }

    /// Parses and checks an index object's bytes (exactly the object).
    pub fn decode(bytes: &[u8]) -> Result<TimelineIndex, IndexError> {
        let corrupt = IndexError::Corrupt;
        if bytes.len() > INDEX_BYTES_MAX {
            return Err(corrupt("larger than the most an index may be"));
        }
        let mut header = Reader { bytes };
        if header.array::<8>()? != MAGIC {
            return Err(corrupt("bad magic"));
        }
        if header.u32()? != VERSION {
            return Err(corrupt("unknown version"));
        }
        let total = usize::try_from(header.u32()?).map_err(|_| corrupt("length out of bounds"))?;
        if total != bytes.len() || total < HEADER_SIZE + 4 {
            return Err(corrupt("length field does not match the object's size"));
        }
        let (body, stored) = bytes
            .split_last_chunk::<4>()
            .ok_or(corrupt("ends inside a field"))?;
        if quire_checksum::crc32c(body) != u32::from_le_bytes(*stored) {
            return Err(corrupt("checksum mismatch"));
        }
        let generation = Generation::new(header.u32()?).ok_or(corrupt("generation 0"))?;
        let flags = header.u32()?;
        let disk_consistent_lsn = header.u64()?;
        let gc_cutoff_lsn = header.u64()?;
        let ancestor_lsn = header.u64()?;
        let ancestor_id: [u8; 16] = header.array()?;
        let ancestor = match flags {
            FLAG_ANCESTOR => Some((Id(ancestor_id), ancestor_lsn)),
            0 if ancestor_id == [0; 16] && ancestor_lsn == 0 => None,
            0 => return Err(corrupt("ancestor fields set without the ancestor flag")),
            _ => return Err(corrupt("unknown flags")),
        };
        let count = usize::try_from(header.u32()?).map_err(|_| corrupt("too many layers"))?;
        if header.u32()? != 0 {
            return Err(corrupt("reserved field not zero"));
        }
        // The header reader ran over `body`'s first HEADER_SIZE bytes; the
        // entries are the rest of `body`.
        let mut entries = Reader {
            bytes: body
                .get(HEADER_SIZE..)
                .ok_or(corrupt("ends inside a field"))?,
        };
        if count > INDEX_LAYERS_MAX {
            return Err(corrupt("too many layers"));
        }
        if count.saturating_mul(ENTRY_FIXED + 1) > entries.bytes.len() {
            return Err(corrupt("layer count larger than the entries present"));
        }
        let mut layers = Vec::with_capacity(count);
        for _ in 0..count {
            let size = entries.u64()?;
            let crc32c = entries.u32()?;
            let generation =
                Generation::new(entries.u32()?).ok_or(corrupt("a layer of generation 0"))?;
            let length = usize::from(entries.u16()?);
            if length == 0 || length > LAYER_NAME_MAX {
                return Err(corrupt("layer name length out of bounds"));
            }
            let name = std::str::from_utf8(entries.take(length)?)
                .ok()
                .and_then(LayerFileName::new)
                .ok_or(corrupt("a layer name an object name cannot carry"))?;
            layers.push(IndexLayer {
                name,
                size,
                crc32c,
                generation,
            });
        }
        if !entries.bytes.is_empty() {
            return Err(corrupt("bytes after the last layer entry"));
        }
        let index = TimelineIndex {
            generation,
            disk_consistent_lsn,
            gc_cutoff_lsn,
            ancestor,
            layers,
        };
        index.check().map_err(corrupt)?;
        Ok(index)
    }

    /// The layer named `name`, if listed.
    pub fn layer(&self, name: &LayerFileName) -> Option<&IndexLayer> {
        self.layers
            .binary_search_by(|l| l.name.cmp(name))
            .ok()
            .and_then(|at| self.layers.get(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, generation: u32) -> IndexLayer {
        IndexLayer {
            name: LayerFileName::new(name).unwrap(),
            size: 8192 * 3,
            crc32c: 0xdead_beef,
            generation: Generation::new(generation).unwrap(),
        }
    }

    fn sample() -> TimelineIndex {
        TimelineIndex {
            generation: Generation::new(4).unwrap(),
            disk_consistent_lsn: 0x0152_3a80,
            gc_cutoff_lsn: 0x0110_0000,
            ancestor: Some((Id([7; 16]), 0x0100_0000)),
            layers: vec![
                layer("delta-a", 2),
                layer("delta-b", 4),
                layer("image-a", 1),
            ],
        }
    }

    /// Encodes `index` with the header field at `at` replaced and the CRC
    /// made right again.
    fn forged(index: &TimelineIndex, at: usize, field: &[u8]) -> Vec<u8> {
        let mut bytes = index.encode().unwrap();
        bytes[at..at + field.len()].copy_from_slice(field);
        reseal(&mut bytes);
        bytes
    }

    fn reseal(bytes: &mut [u8]) {
        let end = bytes.len() - 4;
        let crc = quire_checksum::crc32c(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
    }

    fn check_corrupt(bytes: &[u8], what: &str) {
        match TimelineIndex::decode(bytes) {
            Err(IndexError::Corrupt(_)) => {}
            other => panic!("{what}: {other:?}"),
        }
    }

    #[test]
    fn round_trips() {
        let index = sample();
        let bytes = index.encode().unwrap();
        assert_eq!(TimelineIndex::decode(&bytes).unwrap(), index);
        let root = TimelineIndex {
            ancestor: None,
            layers: Vec::new(),
            ..sample()
        };
        assert_eq!(
            TimelineIndex::decode(&root.encode().unwrap()).unwrap(),
            root
        );
        assert_eq!(
            index
                .layer(&LayerFileName::new("delta-b").unwrap())
                .map(|l| l.generation.get()),
            Some(4)
        );
        assert!(
            index
                .layer(&LayerFileName::new("delta-c").unwrap())
                .is_none()
        );
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused() {
        let bytes = sample().encode().unwrap();
        for len in 0..bytes.len() {
            check_corrupt(&bytes[..len], &format!("cut at {len}"));
        }
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            check_corrupt(&flipped, &format!("bit flipped at {at}"));
        }
        let mut longer = bytes.clone();
        longer.push(0);
        check_corrupt(&longer, "a byte past the length");
    }

    /// Checksummed indexes whose values cannot be: refused as corrupt.
    #[test]
    fn values_a_checksum_cannot_vouch_for_are_corrupt() {
        let index = sample();
        let root = TimelineIndex {
            ancestor: None,
            ..sample()
        };
        let at_entry = |n: usize| {
            // The n-th entry's offset: names are 7 bytes each here.
            HEADER_SIZE + n * (ENTRY_FIXED + 7)
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("version 2", forged(&index, 8, &2u32.to_le_bytes())),
            ("generation 0", forged(&index, 16, &0u32.to_le_bytes())),
            ("unknown flag", forged(&index, 20, &3u32.to_le_bytes())),
            (
                "GC cutoff above",
                forged(&index, 32, &0x0200_0000u64.to_le_bytes()),
            ),
            (
                "branch point at the end",
                forged(&index, 40, &0x0152_3a80u64.to_le_bytes()),
            ),
            (
                "no ancestor but an LSN",
                forged(&root, 40, &1u64.to_le_bytes()),
            ),
            ("no ancestor but an id", forged(&root, 48, &[1; 16])),
            ("reserved", forged(&index, 68, &1u32.to_le_bytes())),
            ("count one more", forged(&index, 64, &4u32.to_le_bytes())),
            ("count one less", forged(&index, 64, &2u32.to_le_bytes())),
            ("count huge", forged(&index, 64, &u32::MAX.to_le_bytes())),
            (
                "layer generation 0",
                forged(&index, at_entry(0) + 12, &0u32.to_le_bytes()),
            ),
            (
                "layer generation later",
                forged(&index, at_entry(0) + 12, &5u32.to_le_bytes()),
            ),
            (
                "name length 0",
                forged(&index, at_entry(0) + 16, &0u16.to_le_bytes()),
            ),
            (
                "name length past the end",
                forged(&index, at_entry(2) + 16, &200u16.to_le_bytes()),
            ),
            (
                "upper-case name",
                forged(&index, at_entry(0) + ENTRY_FIXED, b"D"),
            ),
            (
                "names out of order",
                forged(&index, at_entry(0) + ENTRY_FIXED, b"image-z"),
            ),
            (
                "name repeated",
                forged(&index, at_entry(1) + ENTRY_FIXED, b"delta-a"),
            ),
            ("name index", {
                let mut bytes = TimelineIndex {
                    layers: vec![layer("indey", 1)],
                    ..sample()
                }
                .encode()
                .unwrap();
                bytes[HEADER_SIZE + ENTRY_FIXED + 4] = b'x';
                reseal(&mut bytes);
                bytes
            }),
        ];
        for (what, bytes) in cases {
            check_corrupt(&bytes, what);
        }
    }

    #[test]
    fn values_breaking_the_rules_are_not_written() {
        let cases = [
            TimelineIndex {
                layers: vec![layer("b", 1), layer("a", 1)],
                ..sample()
            },
            TimelineIndex {
                layers: vec![layer("a", 1), layer("a", 2)],
                ..sample()
            },
            TimelineIndex {
                layers: vec![layer("a", 5)],
                ..sample()
            },
            TimelineIndex {
                gc_cutoff_lsn: u64::MAX,
                ..sample()
            },
            TimelineIndex {
                ancestor: Some((Id([1; 16]), u64::MAX)),
                ..sample()
            },
        ];
        for index in cases {
            assert!(
                matches!(index.encode(), Err(IndexError::Invalid(_))),
                "{index:?}"
            );
        }
    }

    #[test]
    fn thousands_of_layers_round_trip() {
        let layers: Vec<IndexLayer> = (0..5000)
            .map(|n| layer(&format!("delta-{n:08x}"), 1 + n % 4))
            .collect();
        let index = TimelineIndex { layers, ..sample() };
        let bytes = index.encode().unwrap();
        assert_eq!(TimelineIndex::decode(&bytes).unwrap(), index);
    }
}
