//! Writing WAL the way Postgres lays it out: pages with valid headers,
//! records 8-byte aligned and split across pages with continuation headers.
//!
//! Quire writes WAL for two reasons: the segment a compute starts from (one
//! shutdown checkpoint record at any LSN, see [`checkpoint_segment`]), and
//! tests that need WAL of a known shape. A gap before the first record is
//! written as pages whose headers say "the rest of a record continues here",
//! so that `pg_waldump` and our decoder, reading from the segment start,
//! skip the gap instead of stopping at zeros.

use crate::control::CheckPoint;
use crate::lsn::Lsn;
use crate::types::{BLCKSZ, MAXALIGN, RelFileLocator, TimeLineId, XLOG_BLCKSZ};
use crate::wal::page::{
    LONG_PAGE_HEADER_SIZE, LongPageHeader, PageHeader, SHORT_PAGE_HEADER_SIZE,
    XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER,
};
use crate::wal::record::record_crc;
use crate::wal::record::{XLOG_RECORD_HEADER_SIZE, XLOG_SWITCH};
use crate::wal::rmgr::RM_XLOG_ID;

/// `XLOG_CHECKPOINT_SHUTDOWN`.
pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = 0x00;

/// Why the writer cannot do what was asked.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalWriteError {
    /// A target position is behind the insert position.
    #[error("cannot move from {insert} back to {target}")]
    Backwards {
        /// The current insert position.
        insert: Lsn,
        /// The requested position.
        target: Lsn,
    },
    /// A record must start 8-aligned and past its page's header.
    #[error("{0} is not a valid record start (8-aligned, past the page header)")]
    BadRecordStart(Lsn),
    /// The segment size is not a power of two from 1 MiB to 1 GiB.
    #[error("invalid WAL segment size {0}")]
    BadSegmentSize(u32),
    /// A checkpoint's redo pointer must be the record's own LSN.
    #[error("checkpoint redo {redo} differs from the record's LSN {lsn}")]
    RedoMismatch {
        /// `redo`.
        redo: Lsn,
        /// Where the record goes.
        lsn: Lsn,
    },
    /// The record does not fit the WAL address space or the format's length fields.
    #[error("record too large")]
    TooLarge,
}

/// One block reference of a record to write.
#[derive(Clone, Debug)]
pub struct BlockToWrite<'a> {
    /// Block id (ascending, 0..=32).
    pub id: u8,
    /// Relation.
    pub rel: RelFileLocator,
    /// Fork number.
    pub fork: u8,
    /// Block.
    pub block: u32,
    /// `BKPBLOCK_WILL_INIT`.
    pub will_init: bool,
    /// An uncompressed page image and its hole `(offset, length)`.
    pub image: Option<(&'a [u8; BLCKSZ], u16, u16)>,
    /// Block data.
    pub data: &'a [u8],
}

/// Assembles a record's bytes (header with CRC, block headers, data).
pub fn build_record(
    rmid: u8,
    info: u8,
    xid: u32,
    prev: Lsn,
    blocks: &[BlockToWrite<'_>],
    main_data: &[u8],
) -> Result<Vec<u8>, WalWriteError> {
    let mut headers = Vec::new();
    let mut payload = Vec::new();
    let mut previous_rel = None;
    for block in blocks {
        let data_length = u16::try_from(block.data.len()).map_err(|_| WalWriteError::TooLarge)?;
        let same_rel = previous_rel == Some(block.rel);
        let mut flags = block.fork & 0x0F;
        if block.image.is_some() {
            flags |= 0x10;
        }
        if !block.data.is_empty() {
            flags |= 0x20;
        }
        if block.will_init {
            flags |= 0x40;
        }
        if same_rel {
            flags |= 0x80;
        }
        headers.push(block.id);
        headers.push(flags);
        headers.extend_from_slice(&data_length.to_le_bytes());
        if let Some((page, hole_offset, hole_length)) = block.image {
            let stored = BLCKSZ - usize::from(hole_length);
            let length = u16::try_from(stored).map_err(|_| WalWriteError::TooLarge)?;
            headers.extend_from_slice(&length.to_le_bytes());
            headers.extend_from_slice(&hole_offset.to_le_bytes());
            // BKPIMAGE_APPLY, plus HAS_HOLE when there is one.
            headers.push(if hole_length > 0 { 0x03 } else { 0x02 });
            let hole_end = usize::from(hole_offset) + usize::from(hole_length);
            payload.extend_from_slice(&page[..usize::from(hole_offset)]);
            payload.extend_from_slice(&page[hole_end..]);
        }
        if !same_rel {
            headers.extend_from_slice(&block.rel.spc_oid.to_le_bytes());
            headers.extend_from_slice(&block.rel.db_oid.to_le_bytes());
            headers.extend_from_slice(&block.rel.rel_number.to_le_bytes());
        }
        headers.extend_from_slice(&block.block.to_le_bytes());
        payload.extend_from_slice(block.data);
        previous_rel = Some(block.rel);
    }
    if !main_data.is_empty() {
        if let Ok(short) = u8::try_from(main_data.len()) {
            headers.extend_from_slice(&[255, short]);
        } else {
            let long = u32::try_from(main_data.len()).map_err(|_| WalWriteError::TooLarge)?;
            headers.push(254);
            headers.extend_from_slice(&long.to_le_bytes());
        }
        payload.extend_from_slice(main_data);
    }
    let total = XLOG_RECORD_HEADER_SIZE + headers.len() + payload.len();
    let total_length = u32::try_from(total).map_err(|_| WalWriteError::TooLarge)?;
    let mut record = Vec::with_capacity(total);
    record.extend_from_slice(&total_length.to_le_bytes());
    record.extend_from_slice(&xid.to_le_bytes());
    record.extend_from_slice(&prev.0.to_le_bytes());
    record.extend_from_slice(&[info, rmid, 0, 0]);
    record.extend_from_slice(&[0; 4]);
    record.extend_from_slice(&headers);
    record.extend_from_slice(&payload);
    let crc = record_crc(&record);
    record[20..24].copy_from_slice(&crc.to_le_bytes());
    Ok(record)
}

/// Lays records out on WAL pages, from a segment start on.
#[derive(Debug)]
pub struct WalWriter {
    segment_size: u32,
    system_id: u64,
    timeline: TimeLineId,
    start: Lsn,
    bytes: Vec<u8>,
    insert: Lsn,
    prev_record: Lsn,
}

impl WalWriter {
    /// A writer whose output begins at `segment_start` (which must be a
    /// segment boundary); nothing is written until a record or a gap is.
    pub fn new(
        segment_start: Lsn,
        segment_size: u32,
        system_id: u64,
        timeline: TimeLineId,
    ) -> Result<WalWriter, WalWriteError> {
        if !crate::types::is_valid_wal_segment_size(segment_size) {
            return Err(WalWriteError::BadSegmentSize(segment_size));
        }
        if segment_start.segment_offset(segment_size) != 0 {
            return Err(WalWriteError::BadRecordStart(segment_start));
        }
        Ok(WalWriter {
            segment_size,
            system_id,
            timeline,
            start: segment_start,
            bytes: Vec::new(),
            insert: segment_start,
            prev_record: Lsn::INVALID,
        })
    }

    /// Where the next record will start (after page headers are added).
    pub fn insert_position(&self) -> Lsn {
        self.insert
    }

    /// The `xl_prev` the next record will carry.
    pub fn set_prev_record(&mut self, prev: Lsn) {
        self.prev_record = prev;
    }

    fn header_size(&self, page: Lsn) -> usize {
        if page.segment_offset(self.segment_size) == 0 {
            LONG_PAGE_HEADER_SIZE
        } else {
            SHORT_PAGE_HEADER_SIZE
        }
    }

    fn offset(&self, lsn: Lsn) -> usize {
        usize::try_from(lsn.0 - self.start.0).unwrap_or(usize::MAX)
    }

    fn write_page_header(&mut self, continuation: Option<u32>) {
        let page = self.insert;
        let mut info = 0;
        if continuation.is_some() {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        let long = (page.segment_offset(self.segment_size) == 0).then(|| {
            info |= XLP_LONG_HEADER;
            LongPageHeader {
                system_id: self.system_id,
                segment_size: self.segment_size,
                page_size: XLOG_BLCKSZ,
            }
        });
        let header = PageHeader {
            info,
            timeline: self.timeline,
            page_address: page,
            remaining_length: continuation.unwrap_or(0),
            long,
        };
        let at = self.offset(page);
        if self.bytes.len() < at + BLCKSZ {
            self.bytes.resize(at + BLCKSZ, 0);
        }
        header.write(&mut self.bytes[at..at + header.size()]);
        self.insert = Lsn(page.0 + header.size() as u64);
    }

    /// Payload bytes (page headers excluded) from the insert position to `target`.
    fn payload_until(&self, target: Lsn) -> u64 {
        let mut position = self.insert;
        let mut payload = 0;
        while position < target {
            if position.page_offset(XLOG_BLCKSZ) == 0 {
                position = Lsn(position.0 + self.header_size(position) as u64);
                continue;
            }
            let page_end =
                position.0 - u64::from(position.page_offset(XLOG_BLCKSZ)) + u64::from(XLOG_BLCKSZ);
            let step = page_end.min(target.0) - position.0;
            payload += step;
            position = Lsn(position.0 + step);
        }
        payload
    }

    /// Leaves everything up to `target` unused. Pages the gap crosses get
    /// headers that mark their contents as the continuation of a record, so
    /// readers starting at the segment start skip to `target`.
    pub fn skip_to(&mut self, target: Lsn) -> Result<(), WalWriteError> {
        if target < self.insert {
            return Err(WalWriteError::Backwards {
                insert: self.insert,
                target,
            });
        }
        let page_offset = target.page_offset(XLOG_BLCKSZ) as usize;
        let page_start = Lsn(target.0 - page_offset as u64);
        if !target.0.is_multiple_of(MAXALIGN) || page_offset < self.header_size(page_start) {
            return Err(WalWriteError::BadRecordStart(target));
        }
        let mut remaining = self.payload_until(target);
        while self.insert < target {
            if self.insert.page_offset(XLOG_BLCKSZ) == 0 {
                let continuation = u32::try_from(remaining).map_err(|_| WalWriteError::TooLarge)?;
                self.write_page_header((continuation > 0).then_some(continuation));
                continue;
            }
            let page_end = self.insert.0 - u64::from(self.insert.page_offset(XLOG_BLCKSZ))
                + u64::from(XLOG_BLCKSZ);
            let step = page_end.min(target.0) - self.insert.0;
            remaining -= step;
            self.insert = Lsn(self.insert.0 + step);
        }
        Ok(())
    }

    /// Appends a whole record (as [`build_record`] makes it, with `xl_prev`
    /// already set); returns its start LSN.
    pub fn append_raw(&mut self, record: &[u8]) -> Result<Lsn, WalWriteError> {
        if self.insert.page_offset(XLOG_BLCKSZ) == 0 {
            self.write_page_header(None);
        }
        let start = self.insert;
        let mut written = 0;
        while written < record.len() {
            if self.insert.page_offset(XLOG_BLCKSZ) == 0 {
                let left =
                    u32::try_from(record.len() - written).map_err(|_| WalWriteError::TooLarge)?;
                self.write_page_header(Some(left));
            }
            let page_left = (XLOG_BLCKSZ - self.insert.page_offset(XLOG_BLCKSZ)) as usize;
            let step = page_left.min(record.len() - written);
            let at = self.offset(self.insert);
            if self.bytes.len() < at + step {
                self.bytes.resize(at + step, 0);
            }
            self.bytes[at..at + step].copy_from_slice(&record[written..written + step]);
            written += step;
            self.insert = Lsn(self.insert.0 + step as u64);
        }
        self.insert = self
            .insert
            .align_up(MAXALIGN)
            .ok_or(WalWriteError::TooLarge)?;
        self.prev_record = start;
        Ok(start)
    }

    /// Builds and appends a record whose `xl_prev` is the previous record
    /// written (or what [`WalWriter::set_prev_record`] set); returns its start.
    pub fn append(
        &mut self,
        rmid: u8,
        info: u8,
        xid: u32,
        blocks: &[BlockToWrite<'_>],
        main_data: &[u8],
    ) -> Result<Lsn, WalWriteError> {
        let record = build_record(rmid, info, xid, self.prev_record, blocks, main_data)?;
        self.append_raw(&record)
    }

    /// Appends an `XLOG_SWITCH` record and moves to the next segment, leaving
    /// the rest of this one zero (page headers included), as Postgres does.
    pub fn switch_segment(&mut self) -> Result<Lsn, WalWriteError> {
        let start = self.append(RM_XLOG_ID, XLOG_SWITCH, 0, &[], &[])?;
        let segment = u64::from(self.segment_size);
        self.insert = Lsn(self.insert.0.div_ceil(segment) * segment);
        Ok(start)
    }

    /// The bytes written, from the segment start, zero-padded to whole segments.
    pub fn into_segments(mut self) -> Vec<u8> {
        let segment = self.segment_size as usize;
        let len = self.bytes.len().div_ceil(segment).max(1) * segment;
        self.bytes.resize(len, 0);
        self.bytes
    }
}

/// The WAL segment a compute starts from: one shutdown checkpoint record at
/// `lsn`, whose `xl_prev` is `prev` (any LSN below `lsn`), in an otherwise
/// empty segment whose pages before `lsn` read as a skipped continuation.
/// `checkpoint.redo` must equal `lsn`.
pub fn checkpoint_segment(
    checkpoint: &CheckPoint,
    lsn: Lsn,
    prev: Lsn,
    segment_size: u32,
    system_id: u64,
) -> Result<Vec<u8>, WalWriteError> {
    if checkpoint.redo_lsn() != lsn {
        return Err(WalWriteError::RedoMismatch {
            redo: checkpoint.redo_lsn(),
            lsn,
        });
    }
    if prev >= lsn {
        return Err(WalWriteError::Backwards {
            insert: lsn,
            target: prev,
        });
    }
    let segment_start = Lsn(lsn.0 - u64::from(lsn.segment_offset(segment_size)));
    let mut writer = WalWriter::new(
        segment_start,
        segment_size,
        system_id,
        checkpoint.this_timeline.get(),
    )?;
    writer.skip_to(lsn)?;
    writer.set_prev_record(prev);
    writer.append(
        RM_XLOG_ID,
        XLOG_CHECKPOINT_SHUTDOWN,
        0,
        &[],
        zerocopy::IntoBytes::as_bytes(checkpoint),
    )?;
    Ok(writer.into_segments())
}

/// The file name of the segment holding `lsn` (`XLogFileName`).
pub fn segment_file_name(timeline: TimeLineId, lsn: Lsn, segment_size: u32) -> String {
    let segment = lsn.segment_number(segment_size);
    let per_xlogid = 0x1_0000_0000 / u64::from(segment_size);
    format!(
        "{timeline:08X}{:08X}{:08X}",
        segment / per_xlogid,
        segment % per_xlogid
    )
}
