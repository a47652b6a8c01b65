//! The on-disk structs of `docs/format/layers.md`, declared as `repr(C)`
//! structs of little-endian alignment-1 fields so that blocks are read in
//! place (`zerocopy`) and the layout is checked at compile time.

use std::mem::{offset_of, size_of};

use quire_postgres::Key;
use quire_postgres::key::KEY_SIZE;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Every block of a layer file is this many bytes.
pub const BLOCK_SIZE: usize = 8192;
/// `b"QUIRELYR"`.
pub const SUMMARY_MAGIC: [u8; 8] = *b"QUIRELYR";
/// `b"QLIX"`.
pub const NODE_MAGIC: [u8; 4] = *b"QLIX";
/// The format this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Image or delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum LayerKind {
    /// Every key of a range at one LSN.
    Image = 1,
    /// Changes to a key range over an LSN range.
    Delta = 2,
}

/// What a value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueKind {
    /// A page image (8192 bytes uncompressed).
    PageImage,
    /// A WAL record to apply on the previous value.
    WalRecord,
    /// Other data defined by the key space (sizes, directories, files).
    Other,
}

/// How a value is compressed in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Stored as is.
    None,
    /// A zstd frame.
    Zstd,
    /// An LZ4 block.
    Lz4,
}

/// Block 0.
#[derive(
    Clone, Copy, Debug, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct Summary {
    /// [`SUMMARY_MAGIC`].
    pub magic: [u8; 8],
    /// [`FORMAT_VERSION`].
    pub format_version: U32,
    /// [`LayerKind`] as a number.
    pub kind: U32,
    /// Owning tenant.
    pub tenant_id: [u8; 16],
    /// Owning timeline.
    pub timeline_id: [u8; 16],
    /// First key covered (inclusive).
    pub key_start: [u8; KEY_SIZE],
    /// End of the key range (exclusive).
    pub key_end: [u8; KEY_SIZE],
    /// Zero.
    pub pad: [u8; 4],
    /// Start of the LSN range (inclusive).
    pub lsn_start: U64,
    /// End of the LSN range (exclusive).
    pub lsn_end: U64,
    /// Index entries.
    pub entry_count: U64,
    /// Bytes used in the value stream.
    pub value_bytes: U64,
    /// First value block (1).
    pub value_first_block: U32,
    /// Value blocks.
    pub value_block_count: U32,
    /// First index block.
    pub index_first_block: U32,
    /// Index blocks.
    pub index_block_count: U32,
    /// The root node.
    pub index_root_block: U32,
    /// Levels, leaves included.
    pub index_height: U32,
    /// First checksum-table block.
    pub checksum_first_block: U32,
    /// Checksum-table blocks.
    pub checksum_block_count: U32,
    /// CRC-32C of the table's blocks (padding included), entry 0 as zero.
    pub checksum_table_crc: U32,
    /// Blocks in the file.
    pub block_count: U32,
    /// CRC-32C of the bytes before this field.
    pub summary_crc: U32,
}

const _: () = assert!(size_of::<Summary>() == 164);
const _: () = assert!(offset_of!(Summary, key_start) == 48);
const _: () = assert!(offset_of!(Summary, lsn_start) == 88);
const _: () = assert!(offset_of!(Summary, value_first_block) == 120);
const _: () = assert!(offset_of!(Summary, checksum_table_crc) == 152);
/// Where `summary_crc` is; the CRC covers every byte before it.
pub const SUMMARY_CRC_OFFSET: usize = 160;
const _: () = assert!(offset_of!(Summary, summary_crc) == SUMMARY_CRC_OFFSET);

impl Summary {
    /// The layer's kind, if the field holds a known one.
    pub fn layer_kind(&self) -> Option<LayerKind> {
        match self.kind.get() {
            1 => Some(LayerKind::Image),
            2 => Some(LayerKind::Delta),
            _ => None,
        }
    }

    /// The key range `[start, end)`.
    pub fn key_range(&self) -> (Key, Key) {
        (
            Key::from_bytes_unchecked(self.key_start),
            Key::from_bytes_unchecked(self.key_end),
        )
    }
}

/// The header of every index node.
#[derive(
    Clone, Copy, Debug, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct NodeHeader {
    /// [`NODE_MAGIC`].
    pub magic: [u8; 4],
    /// 0 for leaves.
    pub level: u8,
    /// Zero.
    pub pad1: u8,
    /// Entries in the node.
    pub count: U16,
    /// Leaves: the next leaf's block, 0 for the last.
    pub next: U32,
    /// Zero.
    pub pad2: [u8; 4],
}

const _: () = assert!(size_of::<NodeHeader>() == 16);

/// Flag bit: the value needs no earlier value (a page image, or a
/// page-initialising WAL record).
pub const FLAG_WILL_INIT: u8 = 0x01;

/// One index entry of a leaf.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct LeafEntry {
    /// Encoded key.
    pub key: [u8; KEY_SIZE],
    /// Will-init, value kind, compression (see the spec).
    pub flags: u8,
    /// Zero.
    pub pad: u8,
    /// The value's LSN.
    pub lsn: U64,
    /// Offset in the value stream.
    pub offset: U64,
    /// Length in the value stream.
    pub length: U32,
}

const _: () = assert!(size_of::<LeafEntry>() == 40);
const _: () = assert!(offset_of!(LeafEntry, lsn) == 20);

/// One index entry of an internal node.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct InternalEntry {
    /// First key of the child's subtree.
    pub key: [u8; KEY_SIZE],
    /// Zero.
    pub pad: [u8; 2],
    /// First LSN of the child's subtree (with `key`).
    pub lsn: U64,
    /// The child's block.
    pub child: U32,
}

const _: () = assert!(size_of::<InternalEntry>() == 32);

/// Leaf entries per node.
pub const LEAF_FANOUT: usize = (BLOCK_SIZE - size_of::<NodeHeader>()) / size_of::<LeafEntry>();
/// Internal entries per node.
pub const INTERNAL_FANOUT: usize =
    (BLOCK_SIZE - size_of::<NodeHeader>()) / size_of::<InternalEntry>();
const _: () = assert!(LEAF_FANOUT == 204);
const _: () = assert!(INTERNAL_FANOUT == 255);

impl LeafEntry {
    /// Packs the flag byte.
    pub fn flags_of(will_init: bool, kind: ValueKind, compression: Compression) -> u8 {
        let kind_bits = match kind {
            ValueKind::PageImage => 0,
            ValueKind::WalRecord => 1,
            ValueKind::Other => 2,
        };
        let compression_bits = match compression {
            Compression::None => 0,
            Compression::Zstd => 1,
            Compression::Lz4 => 2,
        };
        u8::from(will_init) | (kind_bits << 1) | (compression_bits << 3)
    }

    /// Whether the value needs no earlier value.
    pub fn will_init(&self) -> bool {
        self.flags & FLAG_WILL_INIT != 0
    }

    /// The value's kind (`None` for an undefined code).
    pub fn value_kind(&self) -> Option<ValueKind> {
        match (self.flags >> 1) & 0x3 {
            0 => Some(ValueKind::PageImage),
            1 => Some(ValueKind::WalRecord),
            2 => Some(ValueKind::Other),
            _ => None,
        }
    }

    /// The value's compression (`None` for an undefined code).
    pub fn compression(&self) -> Option<Compression> {
        match (self.flags >> 3) & 0x3 {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            2 => Some(Compression::Lz4),
            _ => None,
        }
    }

    /// The key (field by field; validity is the key space's business).
    pub fn key(&self) -> Key {
        Key::from_bytes_unchecked(self.key)
    }
}

/// CRC-32C as the format uses it everywhere.
pub fn crc(bytes: &[u8]) -> u32 {
    quire_checksum::crc32c(bytes)
}
