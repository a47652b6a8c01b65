//! Decoding one WAL record: the `XLogRecord` header, block references,
//! full-page images, main data, replication origin and top-level xid.
//!
//! A record is the 24-byte header followed by a run of fragment headers and
//! then the fragments' data, in the same order:
//!
//! | fragment header | payload in the header run | data after the run |
//! | --- | --- | --- |
//! | block id 0..=32 | `fork_flags: u8`, `data_length: u16`, then an image header if `HAS_IMAGE` (`length: u16`, `hole_offset: u16`, `bimg_info: u8`, and `hole_length: u16` if compressed with a hole), then a `RelFileLocator` (12 bytes) unless `SAME_REL`, then `block: u32` | image bytes, then `data_length` bytes |
//! | 255 `DATA_SHORT` | `length: u8` | main data |
//! | 254 `DATA_LONG` | `length: u32` | main data |
//! | 253 `ORIGIN` | `origin: u16` | — |
//! | 252 `TOPLEVEL_XID` | `xid: u32` | — |
//!
//! Decoding checks what Postgres' `DecodeXLogRecord` checks: ascending block
//! ids, consistent data and image lengths, hole rules, and that the lengths
//! add up exactly to the record.

use crate::lsn::Lsn;
use crate::types::{BLCKSZ, BlockNo, ForkNumber, RelFileLocator, TransactionId};
use crate::wal::image::BlockImage;
use crate::wal::stream::WalErrorKind;

/// `SizeOfXLogRecord`.
pub const XLOG_RECORD_HEADER_SIZE: usize = 24;
/// `XLogRecordMaxSize`: the largest record Postgres writes.
pub const XLOG_RECORD_MAX_SIZE: u32 = 1020 * 1024 * 1024;
/// `XLR_MAX_BLOCK_ID`.
pub const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;

const BKPBLOCK_FORK_MASK: u8 = 0x0F;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_HAS_DATA: u8 = 0x20;
const BKPBLOCK_WILL_INIT: u8 = 0x40;
const BKPBLOCK_SAME_REL: u8 = 0x80;

const BKPIMAGE_HAS_HOLE: u8 = 0x01;
const BKPIMAGE_APPLY: u8 = 0x02;
const BKPIMAGE_COMPRESS_PGLZ: u8 = 0x04;
const BKPIMAGE_COMPRESS_LZ4: u8 = 0x08;
const BKPIMAGE_COMPRESS_ZSTD: u8 = 0x10;
const BKPIMAGE_COMPRESSED: u8 =
    BKPIMAGE_COMPRESS_PGLZ | BKPIMAGE_COMPRESS_LZ4 | BKPIMAGE_COMPRESS_ZSTD;

/// `XLOG_SWITCH` (an info value of the `XLOG` resource manager).
pub const XLOG_SWITCH: u8 = 0x40;

/// The fixed header of every record (`XLogRecord`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// `xl_tot_len`: header and body.
    pub total_length: u32,
    /// `xl_xid`.
    pub xid: TransactionId,
    /// `xl_prev`: the previous record's start.
    pub prev: Lsn,
    /// `xl_info`: the low 4 bits are for the WAL machinery, the high 4 the rmgr's.
    pub info: u8,
    /// `xl_rmid`.
    pub rmid: u8,
    /// `xl_crc`.
    pub crc: u32,
}

impl RecordHeader {
    /// Reads the header from a record's first 24 bytes.
    pub fn decode(bytes: &[u8]) -> Result<RecordHeader, RecordError> {
        let Some(fixed) = bytes.get(..XLOG_RECORD_HEADER_SIZE) else {
            return Err(RecordError::Truncated(bytes.len()));
        };
        Ok(RecordHeader {
            total_length: u32_at(fixed, 0),
            xid: TransactionId(u32_at(fixed, 4)),
            prev: Lsn(u64::from(u32_at(fixed, 8)) | (u64::from(u32_at(fixed, 12)) << 32)),
            info: fixed[16],
            rmid: fixed[17],
            crc: u32_at(fixed, 20),
        })
    }

    /// The resource manager's part of `xl_info`.
    pub fn rmgr_info(&self) -> u8 {
        self.info & 0xF0
    }
}

/// One block reference of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRef<'a> {
    /// The block id (0..=32), ascending within a record.
    pub id: u8,
    /// The relation.
    pub rel: RelFileLocator,
    /// The fork.
    pub fork: ForkNumber,
    /// The block.
    pub block: BlockNo,
    /// `BKPBLOCK_WILL_INIT`: redo initialises the page, ignoring its old contents.
    pub will_init: bool,
    /// A full-page image, if the record carries one.
    pub image: Option<BlockImage<'a>>,
    /// The block's data for its rmgr's redo.
    pub data: &'a [u8],
}

/// A decoded record borrowing from the record's bytes.
///
/// Decoding checks every fragment header once and keeps only where things
/// are: block references are read again from their (checked) headers as
/// [`DecodedRecord::blocks`] hands them out. That keeps the value small, so
/// decoding a short record costs little more than reading its header.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DecodedRecord<'a> {
    /// The fixed header.
    pub header: RecordHeader,
    /// The main data.
    pub main_data: &'a [u8],
    /// Replication origin, if recorded.
    pub origin: Option<u16>,
    /// Top-level transaction of a subtransaction's first record, if recorded.
    pub toplevel_xid: Option<TransactionId>,
    /// The run of fragment headers after the fixed header.
    fragment_headers: &'a [u8],
    /// The blocks' images and data, in block order.
    block_payload: &'a [u8],
    image_bytes: u32,
    block_count: u8,
}

impl<'a> DecodedRecord<'a> {
    /// The block references in ascending id order.
    pub fn blocks(&self) -> Blocks<'a> {
        Blocks {
            headers: self.fragment_headers,
            at: 0,
            payload: self.block_payload,
            previous_rel: None,
            left: self.block_count,
        }
    }

    /// The stored bytes of the record's full-page images (what
    /// `pg_waldump --stats` counts as FPI size).
    pub fn image_bytes(&self) -> u32 {
        self.image_bytes
    }

    /// How many block references the record has.
    pub fn block_count(&self) -> usize {
        usize::from(self.block_count)
    }

    /// The block reference with id `id`, if the record has one.
    pub fn block(&self, id: u8) -> Option<BlockRef<'a>> {
        self.blocks().find(|block| block.id == id)
    }
}

impl std::fmt::Debug for DecodedRecord<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedRecord")
            .field("header", &self.header)
            .field("blocks", &self.blocks().collect::<Vec<_>>())
            .field("main_data", &self.main_data)
            .field("origin", &self.origin)
            .field("toplevel_xid", &self.toplevel_xid)
            .finish()
    }
}

/// The block references of a [`DecodedRecord`], read from its fragment
/// headers as they are asked for.
#[derive(Clone, Debug)]
pub struct Blocks<'a> {
    headers: &'a [u8],
    at: usize,
    payload: &'a [u8],
    previous_rel: Option<RelFileLocator>,
    left: u8,
}

impl<'a> Iterator for Blocks<'a> {
    type Item = BlockRef<'a>;

    fn next(&mut self) -> Option<BlockRef<'a>> {
        if self.left == 0 {
            return None;
        }
        // The headers were checked when the record was decoded: the
        // `None`s below cannot happen, and only end the iteration early.
        loop {
            let id = *self.headers.get(self.at)?;
            let Some(skip) = special_fragment_size(id) else {
                break;
            };
            self.at += skip;
        }
        let headers = self.headers;
        let mut at = self.at;
        let id = headers[at];
        let fork_flags = *headers.get(at + 1)?;
        let data_length = le_u16(headers, at + 2)?;
        at += 4;
        let image = if fork_flags & BKPBLOCK_HAS_IMAGE == 0 {
            None
        } else {
            let image = read_image_header(headers, &mut at).ok()?;
            let (bytes, rest) = self.payload.split_at_checked(usize::from(image.length))?;
            self.payload = rest;
            Some(BlockImage {
                bytes,
                hole_offset: image.hole_offset,
                hole_length: image.hole_length,
                info: image.info,
            })
        };
        let rel = if fork_flags & BKPBLOCK_SAME_REL == 0 {
            let rel = RelFileLocator {
                spc_oid: le_u32(headers, at)?,
                db_oid: le_u32(headers, at + 4)?,
                rel_number: le_u32(headers, at + 8)?,
            };
            at += 12;
            self.previous_rel = Some(rel);
            rel
        } else {
            self.previous_rel?
        };
        let block = BlockNo(le_u32(headers, at)?);
        self.at = at + 4;
        let (data, rest) = self.payload.split_at_checked(usize::from(data_length))?;
        self.payload = rest;
        self.left -= 1;
        Some(BlockRef {
            id,
            rel,
            fork: ForkNumber::from_u8(fork_flags & BKPBLOCK_FORK_MASK)?,
            block,
            will_init: fork_flags & BKPBLOCK_WILL_INIT != 0,
            image,
            data,
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

impl ExactSizeIterator for Blocks<'_> {}

/// What is wrong inside a record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The record ends in the middle of a field.
    #[error("record truncated at byte {0}")]
    Truncated(usize),
    /// A fragment header has an id that is not a block id or special id.
    #[error("invalid block id {0}")]
    InvalidBlockId(u8),
    /// Block ids are not strictly ascending.
    #[error("block id {id} follows block id {previous}")]
    OutOfOrderBlock {
        /// The id found.
        id: u8,
        /// The id before it.
        previous: u8,
    },
    /// A fork number above 3.
    #[error("invalid fork number {0}")]
    InvalidFork(u8),
    /// `HAS_DATA` and `data_length` disagree.
    #[error("block {id}: data flag {has_data} with data length {length}")]
    DataLengthMismatch {
        /// Block id.
        id: u8,
        /// `BKPBLOCK_HAS_DATA`.
        has_data: bool,
        /// `data_length`.
        length: u16,
    },
    /// An image's length, hole and compression are inconsistent.
    #[error(
        "block {id}: inconsistent image (length {length}, hole offset {hole_offset}, hole length {hole_length}, info {info:#04x})"
    )]
    BadImage {
        /// Block id.
        id: u8,
        /// `bimg_len`.
        length: u16,
        /// `hole_offset`.
        hole_offset: u16,
        /// `hole_length`.
        hole_length: u16,
        /// `bimg_info`.
        info: u8,
    },
    /// `SAME_REL` on the first block.
    #[error("block {0}: SAME_REL without a previous relation")]
    NoPreviousRel(u8),
    /// The fragment lengths do not add up to the record length.
    #[error("fragments hold {declared} bytes of data, the record has {actual}")]
    LengthMismatch {
        /// Sum of the lengths the headers declare.
        declared: u64,
        /// Bytes after the fragment headers.
        actual: usize,
    },
    /// A full-page image did not restore.
    #[error("block {id}: {reason}")]
    Image {
        /// Block id.
        id: u8,
        /// What failed.
        reason: crate::wal::image::ImageError,
    },
}

/// Little-endian field reads at fixed offsets of a slice the caller has
/// checked to be long enough.
fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// A little-endian `u16` at `at`, if `bytes` reach that far.
fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    bytes.get(at..at + 2).map(|b| u16_at(b, 0))
}

/// A little-endian `u32` at `at`, if `bytes` reach that far.
fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4).map(|b| u32_at(b, 0))
}

/// The next `n` bytes of the fragment header run at `at`, or where it ends.
fn fragment(bytes: &[u8], at: usize, n: usize) -> Result<&[u8], RecordError> {
    bytes.get(at..at + n).ok_or(RecordError::Truncated(at))
}

/// The size of a special fragment header (`None` for a block id).
fn special_fragment_size(id: u8) -> Option<usize> {
    match id {
        XLR_BLOCK_ID_DATA_SHORT => Some(2),
        XLR_BLOCK_ID_DATA_LONG | XLR_BLOCK_ID_TOPLEVEL_XID => Some(5),
        XLR_BLOCK_ID_ORIGIN => Some(3),
        _ => None,
    }
}

/// Decodes a whole record (as [`crate::wal::stream::Record::bytes`]).
///
/// One pass over the fragment headers checks them and adds up the lengths
/// they declare; once those add up to exactly the record, the main data and
/// the blocks' payload are located (and block references read from the
/// headers only when asked for).
///
/// The two commonest layouts (short main data alone; one block without an
/// image and naming its relation, then short main data) are recognised
/// directly, with the same checks; anything else takes the general pass.
pub fn decode_record(bytes: &[u8]) -> Result<DecodedRecord<'_>, RecordError> {
    let header = RecordHeader::decode(bytes)?;
    if let Some(record) = decode_common_layout(bytes, header) {
        return Ok(record);
    }
    decode_any_layout(bytes, header)
}

/// [`decode_record`] without the shortcut for common layouts (fuzzing
/// checks that both agree on every input).
#[doc(hidden)]
pub fn decode_record_general(bytes: &[u8]) -> Result<DecodedRecord<'_>, RecordError> {
    decode_any_layout(bytes, RecordHeader::decode(bytes)?)
}

/// A record of one of the two commonest layouts, when it is one and passes
/// every check; `None` sends it through the general pass.
#[inline]
fn decode_common_layout(bytes: &[u8], header: RecordHeader) -> Option<DecodedRecord<'_>> {
    const HEADER: usize = XLOG_RECORD_HEADER_SIZE;
    let record_len = header.total_length as usize;
    let bytes = bytes.get(..record_len)?;
    let record = |main_at: usize, headers_end: usize, block_count: u8| DecodedRecord {
        header,
        main_data: &bytes[main_at..],
        origin: None,
        toplevel_xid: None,
        fragment_headers: &bytes[HEADER..headers_end],
        block_payload: &bytes[headers_end..main_at],
        image_bytes: 0,
        block_count,
    };
    match *bytes.get(HEADER..HEADER + 2)? {
        // Main data alone.
        [XLR_BLOCK_ID_DATA_SHORT, length] if record_len == HEADER + 2 + usize::from(length) => {
            Some(record(HEADER + 2, HEADER + 2, 0))
        }
        // One block (id, fork_flags, data_length, relation, block number),
        // then the main data's header.
        [id, fork_flags] if id <= XLR_MAX_BLOCK_ID => {
            const PLAIN: u8 = BKPBLOCK_HAS_IMAGE | BKPBLOCK_SAME_REL;
            let fixed = bytes.get(HEADER..HEADER + 22)?;
            let data_length = usize::from(u16_at(fixed, 2));
            let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
            let main_length = usize::from(fixed[21]);
            let headers_end = HEADER + 22;
            let fits = record_len == headers_end + data_length + main_length;
            let plain = fork_flags & PLAIN == 0
                && ForkNumber::from_u8(fork_flags & BKPBLOCK_FORK_MASK).is_some()
                && has_data == (data_length != 0)
                && fixed[20] == XLR_BLOCK_ID_DATA_SHORT;
            (plain && fits).then(|| record(headers_end + data_length, headers_end, 1))
        }
        _ => None,
    }
}

/// The general pass of [`decode_record`].
fn decode_any_layout(bytes: &[u8], header: RecordHeader) -> Result<DecodedRecord<'_>, RecordError> {
    let record_len = (header.total_length as usize).min(bytes.len());
    if record_len < XLOG_RECORD_HEADER_SIZE {
        // `xl_tot_len` below the header's own size.
        return Err(RecordError::Truncated(record_len));
    }
    let bytes = &bytes[..record_len];
    let mut at = XLOG_RECORD_HEADER_SIZE;
    let mut origin = None;
    let mut toplevel_xid = None;
    let mut main_data_length: u32 = 0;
    let mut payload_length: u64 = 0;
    let mut image_bytes: u32 = 0;
    let mut declared: u64 = 0;
    let mut previous_id: Option<u8> = None;
    let mut block_count: u8 = 0;

    while (record_len - at) as u64 > declared {
        let id = bytes[at];
        match id {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_data_length = u32::from(fragment(bytes, at + 1, 1)?[0]);
                declared += u64::from(main_data_length);
                at += 2;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_data_length = u32_at(fragment(bytes, at + 1, 4)?, 0);
                declared += u64::from(main_data_length);
                at += 5;
            }
            XLR_BLOCK_ID_ORIGIN => {
                origin = Some(u16_at(fragment(bytes, at + 1, 2)?, 0));
                at += 3;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                toplevel_xid = Some(TransactionId(u32_at(fragment(bytes, at + 1, 4)?, 0)));
                at += 5;
            }
            id if id <= XLR_MAX_BLOCK_ID => {
                if let Some(previous) = previous_id.filter(|&previous| id <= previous) {
                    return Err(RecordError::OutOfOrderBlock { id, previous });
                }
                let block = check_block_header(bytes, &mut at, id)?;
                if !block.names_rel && previous_id.is_none() {
                    return Err(RecordError::NoPreviousRel(id));
                }
                let length = u32::from(block.image_length) + u32::from(block.data_length);
                declared += u64::from(length);
                payload_length += u64::from(length);
                image_bytes += u32::from(block.image_length);
                previous_id = Some(id);
                block_count += 1;
            }
            other => return Err(RecordError::InvalidBlockId(other)),
        }
    }
    let actual = record_len - at;
    if declared != actual as u64 {
        return Err(RecordError::LengthMismatch { declared, actual });
    }
    // The lengths add up to exactly the rest of the record: the slices
    // below lie within it.
    let headers_end = at;
    #[allow(clippy::cast_possible_truncation)] // at most the record's length
    let payload_end = headers_end + payload_length as usize;
    Ok(DecodedRecord {
        header,
        main_data: &bytes[payload_end..payload_end + main_data_length as usize],
        origin,
        toplevel_xid,
        fragment_headers: &bytes[XLOG_RECORD_HEADER_SIZE..headers_end],
        block_payload: &bytes[headers_end..payload_end],
        image_bytes,
        block_count,
    })
}

/// What checking a block's fragment header found.
struct CheckedBlock {
    /// Bytes of the block's image in the record's payload (0: none).
    image_length: u16,
    /// Bytes of the block's data after it.
    data_length: u16,
    /// Whether it names its relation (else `SAME_REL`: the previous block's).
    names_rel: bool,
}

/// Checks the block header at `*at` (its id byte included) and moves past
/// it. (The block reference itself is read from it again by [`Blocks`].)
fn check_block_header(bytes: &[u8], at: &mut usize, id: u8) -> Result<CheckedBlock, RecordError> {
    // id, fork_flags, data_length.
    let fixed = fragment(bytes, *at, 4)?;
    let fork_flags = fixed[1];
    let data_length = u16_at(fixed, 2);
    *at += 4;
    let fork_number = fork_flags & BKPBLOCK_FORK_MASK;
    if ForkNumber::from_u8(fork_number).is_none() {
        return Err(RecordError::InvalidFork(fork_number));
    }
    let has_data = fork_flags & BKPBLOCK_HAS_DATA != 0;
    if has_data != (data_length != 0) {
        return Err(RecordError::DataLengthMismatch {
            id,
            has_data,
            length: data_length,
        });
    }
    let image_length = if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
        check_image_header(bytes, at, id)?
    } else {
        0
    };
    let names_rel = fork_flags & BKPBLOCK_SAME_REL == 0;
    // The relation (unless SAME_REL) and the block number.
    let rest = if names_rel { 16 } else { 4 };
    fragment(bytes, *at, rest)?;
    *at += rest;
    Ok(CheckedBlock {
        image_length,
        data_length,
        names_rel,
    })
}

/// An image header as stored.
struct ImageHeader {
    length: u16,
    hole_offset: u16,
    hole_length: u16,
    info: u8,
}

/// Reads the image header at `*at` (unchecked) and moves past it; where
/// the run ends short, the offset of the missing field.
fn read_image_header(bytes: &[u8], at: &mut usize) -> Result<ImageHeader, usize> {
    let fixed = bytes.get(*at..*at + 5).ok_or(*at)?;
    let (length, hole_offset, info) = (u16_at(fixed, 0), u16_at(fixed, 2), fixed[4]);
    *at += 5;
    let hole_length = if info & BKPIMAGE_COMPRESSED == 0 {
        // Uncompressed: the image is the page without its hole.
        8192u16.wrapping_sub(length)
    } else if info & BKPIMAGE_HAS_HOLE != 0 {
        let hole = bytes.get(*at..*at + 2).ok_or(*at)?;
        *at += 2;
        u16_at(hole, 0)
    } else {
        0
    };
    Ok(ImageHeader {
        length,
        hole_offset,
        hole_length,
        info,
    })
}

/// Checks the image header at `*at` and moves past it; returns the
/// image's stored length.
fn check_image_header(bytes: &[u8], at: &mut usize, id: u8) -> Result<u16, RecordError> {
    let ImageHeader {
        length,
        hole_offset,
        hole_length,
        info,
    } = read_image_header(bytes, at).map_err(RecordError::Truncated)?;
    let compressed = info & BKPIMAGE_COMPRESSED != 0;
    let has_hole = info & BKPIMAGE_HAS_HOLE != 0;
    let page: u16 = 8192;
    debug_assert_eq!(usize::from(page), BLCKSZ);
    let inconsistent = (has_hole && (hole_offset == 0 || hole_length == 0 || length == page))
        || (!has_hole && (hole_offset != 0 || hole_length != 0))
        || (compressed && length == page)
        || (!has_hole && !compressed && length != page)
        || usize::from(length) > BLCKSZ
        || usize::from(hole_offset) + usize::from(hole_length) > BLCKSZ;
    if inconsistent {
        return Err(RecordError::BadImage {
            id,
            length,
            hole_offset,
            hole_length,
            info,
        });
    }
    Ok(length)
}

/// Whether `bimg_info` asks redo to apply the image (not only to keep it for
/// `wal_consistency_checking`).
pub(crate) fn image_is_applied(info: u8) -> bool {
    info & BKPIMAGE_APPLY != 0
}

/// The compression method `bimg_info` names, if any.
pub(crate) fn image_compression(info: u8) -> Option<crate::wal::image::Compression> {
    use crate::wal::image::Compression;
    if info & BKPIMAGE_COMPRESS_PGLZ != 0 {
        Some(Compression::Pglz)
    } else if info & BKPIMAGE_COMPRESS_LZ4 != 0 {
        Some(Compression::Lz4)
    } else if info & BKPIMAGE_COMPRESS_ZSTD != 0 {
        Some(Compression::Zstd)
    } else {
        None
    }
}

/// Checks `xl_crc`: CRC-32C over the body, then the header up to the CRC.
#[inline]
pub(crate) fn check_crc(record: &[u8]) -> Result<(), WalErrorKind> {
    let stored = u32::from_le_bytes([record[20], record[21], record[22], record[23]]);
    let computed = record_crc(record);
    if stored != computed {
        return Err(WalErrorKind::BadChecksum { stored, computed });
    }
    Ok(())
}

/// The CRC-32C Postgres stores in `xl_crc` for a whole record.
#[inline]
pub fn record_crc(record: &[u8]) -> u32 {
    quire_checksum::crc32c_concat(&record[XLOG_RECORD_HEADER_SIZE..], &record[..20])
}
