//! WAL page headers (`XLogPageHeaderData`, `XLogLongPageHeaderData`).
//!
//! Every 8 KiB WAL page starts with a short header; the first page of each
//! segment has the long form, which adds the system identifier, segment size
//! and page size. All fields are little-endian (as written on x86-64).
//!
//! | offset | size | field | meaning |
//! | --- | --- | --- | --- |
//! | 0 | 2 | `xlp_magic` | 0xD116 in Postgres 17 |
//! | 2 | 2 | `xlp_info` | flag bits below |
//! | 4 | 4 | `xlp_tli` | timeline of the page's first record |
//! | 8 | 8 | `xlp_pageaddr` | LSN of the page's first byte |
//! | 16 | 4 | `xlp_rem_len` | bytes of a record continued from earlier pages |
//! | 20 | 4 | padding | to 24 (MAXALIGN) |
//! | 24 | 8 | `xlp_sysid` | long header only: `pg_control`'s system identifier |
//! | 32 | 4 | `xlp_seg_size` | long header only |
//! | 36 | 4 | `xlp_xlog_blcksz` | long header only |

use crate::lsn::Lsn;
use crate::types::{TimeLineId, XLOG_BLCKSZ, is_valid_wal_segment_size};

/// `XLOG_PAGE_MAGIC` of Postgres 17.
pub const XLOG_PAGE_MAGIC: u16 = 0xD116;
/// The first record bytes on this page continue a record from earlier pages.
pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
/// This page has the long header.
pub const XLP_LONG_HEADER: u16 = 0x0002;
/// Backup blocks on this page are not needed for recovery.
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// A missing continuation record was overwritten (after a crash).
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
/// Every defined flag.
pub const XLP_ALL_FLAGS: u16 = 0x000F;
/// `SizeOfXLogShortPHD`, rounded up to 8 bytes.
pub const SHORT_PAGE_HEADER_SIZE: usize = 24;
/// `SizeOfXLogLongPHD`, rounded up to 8 bytes.
pub const LONG_PAGE_HEADER_SIZE: usize = 40;

/// A decoded page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    /// `xlp_info`.
    pub info: u16,
    /// `xlp_tli`.
    pub timeline: TimeLineId,
    /// `xlp_pageaddr`.
    pub page_address: Lsn,
    /// `xlp_rem_len`.
    pub remaining_length: u32,
    /// Long header fields: system id, segment size, page size.
    pub long: Option<LongPageHeader>,
}

/// The fields only the first page of a segment carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LongPageHeader {
    /// `xlp_sysid`.
    pub system_id: u64,
    /// `xlp_seg_size`.
    pub segment_size: u32,
    /// `xlp_xlog_blcksz`.
    pub page_size: u32,
}

impl PageHeader {
    /// The header's size on the page (rounded up to 8 bytes).
    pub fn size(&self) -> usize {
        if self.long.is_some() {
            LONG_PAGE_HEADER_SIZE
        } else {
            SHORT_PAGE_HEADER_SIZE
        }
    }

    /// Whether the page's first bytes continue an earlier record.
    pub fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    /// Serialises the header into the first [`PageHeader::size`] bytes of `page`.
    pub fn write(&self, page: &mut [u8]) {
        page[0..2].copy_from_slice(&XLOG_PAGE_MAGIC.to_le_bytes());
        page[2..4].copy_from_slice(&self.info.to_le_bytes());
        page[4..8].copy_from_slice(&self.timeline.to_le_bytes());
        page[8..16].copy_from_slice(&self.page_address.0.to_le_bytes());
        page[16..20].copy_from_slice(&self.remaining_length.to_le_bytes());
        page[20..24].fill(0);
        if let Some(long) = self.long {
            page[24..32].copy_from_slice(&long.system_id.to_le_bytes());
            page[32..36].copy_from_slice(&long.segment_size.to_le_bytes());
            page[36..40].copy_from_slice(&long.page_size.to_le_bytes());
        }
    }
}

/// What is wrong with a page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PageHeaderError {
    /// The magic number is not Postgres 17's.
    #[error("invalid magic number {0:#06x} (Postgres 17 writes 0xd116)")]
    BadMagic(u16),
    /// Undefined flag bits are set.
    #[error("invalid info bits {0:#06x}")]
    BadInfo(u16),
    /// The page claims to be elsewhere in the WAL.
    #[error("page address {found} where {expected} was expected")]
    WrongAddress {
        /// `xlp_pageaddr`.
        found: Lsn,
        /// The LSN the page was read at.
        expected: Lsn,
    },
    /// A segment's first page lacks the long header, or another page has it.
    #[error("long header flag is {found} on a page where it must be {expected}")]
    LongHeaderMismatch {
        /// Whether `XLP_LONG_HEADER` is set.
        found: bool,
        /// Whether it must be.
        expected: bool,
    },
    /// The long header's segment size differs from the stream's.
    #[error("segment size {found} in the long header, expected {expected}")]
    WrongSegmentSize {
        /// `xlp_seg_size`.
        found: u32,
        /// The stream's segment size.
        expected: u32,
    },
    /// The long header's page size is not 8192.
    #[error("WAL page size {0} in the long header, expected 8192")]
    WrongPageSize(u32),
    /// The long header's system identifier differs from the stream's.
    #[error("system identifier {found} differs from the stream's {expected}")]
    WrongSystemId {
        /// `xlp_sysid`.
        found: u64,
        /// The first one seen.
        expected: u64,
    },
    /// The timeline went backwards.
    #[error("timeline {found} after timeline {previous}")]
    TimelineBackwards {
        /// `xlp_tli`.
        found: TimeLineId,
        /// The previous page's.
        previous: TimeLineId,
    },
    /// The segment size the header is read with is not one Postgres
    /// accepts (a power of two from 1 MiB to 1 GiB).
    #[error("invalid WAL segment size {0}")]
    InvalidSegmentSize(u32),
    /// Fewer bytes than the header needs.
    #[error("page header cut short at {0} bytes")]
    Truncated(usize),
}

/// Decodes the header of the page at `page_address` from `bytes` (at least
/// [`LONG_PAGE_HEADER_SIZE`] bytes for a segment's first page and
/// [`SHORT_PAGE_HEADER_SIZE`] otherwise, else an error) and checks the
/// fields that do not depend on the stream's history.
pub fn decode_page_header(
    bytes: &[u8],
    page_address: Lsn,
    segment_size: u32,
) -> Result<PageHeader, PageHeaderError> {
    if !is_valid_wal_segment_size(segment_size) {
        return Err(PageHeaderError::InvalidSegmentSize(segment_size));
    }
    let segment_start = page_address.segment_offset(segment_size) == 0;
    let needed = if segment_start {
        LONG_PAGE_HEADER_SIZE
    } else {
        SHORT_PAGE_HEADER_SIZE
    };
    let Some(bytes) = bytes.get(..needed) else {
        return Err(PageHeaderError::Truncated(bytes.len()));
    };
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let u64_at = |at: usize| (u64::from(u32_at(at + 4)) << 32) | u64::from(u32_at(at));
    let magic = u16_at(0);
    if magic != XLOG_PAGE_MAGIC {
        return Err(PageHeaderError::BadMagic(magic));
    }
    let info = u16_at(2);
    if info & !XLP_ALL_FLAGS != 0 {
        return Err(PageHeaderError::BadInfo(info));
    }
    let has_long = info & XLP_LONG_HEADER != 0;
    if has_long != segment_start {
        return Err(PageHeaderError::LongHeaderMismatch {
            found: has_long,
            expected: segment_start,
        });
    }
    let found = Lsn(u64_at(8));
    if found != page_address {
        return Err(PageHeaderError::WrongAddress {
            found,
            expected: page_address,
        });
    }
    let long = if has_long {
        let long = LongPageHeader {
            system_id: u64_at(24),
            segment_size: u32_at(32),
            page_size: u32_at(36),
        };
        if long.segment_size != segment_size {
            return Err(PageHeaderError::WrongSegmentSize {
                found: long.segment_size,
                expected: segment_size,
            });
        }
        if long.page_size != XLOG_BLCKSZ {
            return Err(PageHeaderError::WrongPageSize(long.page_size));
        }
        Some(long)
    } else {
        None
    };
    Ok(PageHeader {
        info,
        timeline: u32_at(4),
        page_address,
        remaining_length: u32_at(16),
        long,
    })
}

/// What a WAL segment's first page says about the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// LSN of the segment's first byte.
    pub start: Lsn,
    /// The segment size.
    pub segment_size: u32,
    /// The cluster's system identifier.
    pub system_id: u64,
    /// The timeline of the page.
    pub timeline: TimeLineId,
}

/// Reads the long header at the start of a WAL segment file, taking the
/// segment size from the header itself (it must be a power of two from
/// 1 MiB to 1 GiB, and the page address a multiple of it).
pub fn read_segment_header(first_page: &[u8]) -> Result<SegmentHeader, PageHeaderError> {
    let Some(bytes) = first_page.get(..LONG_PAGE_HEADER_SIZE) else {
        return Err(PageHeaderError::LongHeaderMismatch {
            found: false,
            expected: true,
        });
    };
    let segment_size = u32::from_le_bytes([bytes[32], bytes[33], bytes[34], bytes[35]]);
    if !is_valid_wal_segment_size(segment_size) {
        return Err(PageHeaderError::WrongSegmentSize {
            found: segment_size,
            expected: crate::types::DEFAULT_WAL_SEGMENT_SIZE,
        });
    }
    let mut address = [0u8; 8];
    address.copy_from_slice(&bytes[8..16]);
    let start = Lsn(u64::from_le_bytes(address));
    let header = decode_page_header(bytes, start, segment_size)?;
    let Some(long) = header.long else {
        return Err(PageHeaderError::LongHeaderMismatch {
            found: false,
            expected: true,
        });
    };
    Ok(SegmentHeader {
        start,
        segment_size,
        system_id: long.system_id,
        timeline: header.timeline,
    })
}
/// Where the first record that begins in a WAL segment starts, given the
/// segment's bytes from its first page on (as Postgres' `XLogFindNextRecord`
/// finds it): past the continuation of a record from the previous segment
/// that the pages' `xlp_rem_len` announce, rounded up to 8. `None` when the
/// bytes hold no record start (one record's continuation fills them, or
/// they end at a page never written).
pub fn first_record_start(
    segment: &[u8],
    segment_start: Lsn,
    segment_size: u32,
) -> Result<Option<Lsn>, PageHeaderError> {
    let page_size = XLOG_BLCKSZ as usize;
    for (page, bytes) in segment.chunks_exact(page_size).enumerate() {
        let page_start = page * page_size;
        // A segment near the end of the LSN space has no further pages.
        let Some(address) = segment_start.checked_add(page_start as u64) else {
            break;
        };
        if bytes[..2] == [0, 0] {
            // A page never written: the WAL ends before it.
            break;
        }
        let header = decode_page_header(bytes, address, segment_size)?;
        let data_start = header.size();
        let usable = page_size - data_start;
        let remaining = if header.info & XLP_FIRST_IS_CONTRECORD != 0 {
            header.remaining_length as usize
        } else {
            0
        };
        if remaining < usable {
            let start = (data_start + remaining).next_multiple_of(8);
            if start < page_size {
                return Ok(address.checked_add(start as u64));
            }
        }
    }
    Ok(None)
}
