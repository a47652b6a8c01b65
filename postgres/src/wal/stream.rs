//! The streaming WAL decoder: raw WAL bytes in, whole checked records out.
//!
//! Fed arbitrary chunks of WAL in LSN order, starting at a record boundary
//! (or at a page boundary, where a record continued from earlier pages is
//! skipped), it validates every page header it crosses, reassembles records
//! split across pages and segments, checks each record's length, resource
//! manager, back link and CRC-32C, and yields records with their start and
//! end LSN. After `XLOG_SWITCH` it skips to the next segment. Bad bytes give
//! a [`WalDecodeError`] naming the LSN and what was wrong; after one, the
//! decoder keeps returning it. It never panics on input and buffers at most
//! one record plus the unconsumed input.

use crate::lsn::Lsn;
use crate::types::{MAXALIGN, XLOG_BLCKSZ, is_valid_wal_segment_size};
use crate::wal::page::{
    LONG_PAGE_HEADER_SIZE, PageHeaderError, SHORT_PAGE_HEADER_SIZE,
    XLP_FIRST_IS_OVERWRITE_CONTRECORD, decode_page_header,
};
use crate::wal::record::{XLOG_RECORD_HEADER_SIZE, XLOG_RECORD_MAX_SIZE, XLOG_SWITCH, check_crc};
use crate::wal::rmgr::{RM_XLOG_ID, rmgr_id_is_valid};

/// `MAXALIGN` as a byte count: records start at multiples of it.
const RECORD_ALIGN: usize = 8;
const _: () = assert!(RECORD_ALIGN as u64 == MAXALIGN);

/// One whole record, borrowed from the decoder until its next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// LSN of the record's first byte (what `pg_waldump` prints as `lsn`).
    pub start: Lsn,
    /// LSN just past its last byte (`EndRecPtr`; a redo sets the page LSN to it).
    pub end: Lsn,
    /// `xl_tot_len` bytes: the `XLogRecord` header, then the body.
    pub bytes: &'a [u8],
}

impl Record<'_> {
    /// An owned copy.
    pub fn to_raw(&self) -> RawRecord {
        RawRecord {
            start: self.start,
            end: self.end,
            bytes: self.bytes.to_vec(),
        }
    }
}

/// One whole record as it was written, header included, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawRecord {
    /// LSN of the record's first byte (what `pg_waldump` prints as `lsn`).
    pub start: Lsn,
    /// LSN just past its last byte (`EndRecPtr`; a redo sets the page LSN to it).
    pub end: Lsn,
    /// `xl_tot_len` bytes: the `XLogRecord` header, then the body.
    pub bytes: Vec<u8>,
}

/// Where and why the WAL stopped making sense.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{lsn} {kind}")]
pub struct WalDecodeError {
    /// The LSN of the offending page header or record.
    pub lsn: Lsn,
    /// What was wrong.
    pub kind: WalErrorKind,
}

/// What was wrong with the WAL at some LSN.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WalErrorKind {
    /// A page header failed validation.
    #[error("invalid page header: {0}")]
    PageHeader(#[from] PageHeaderError),
    /// A page that should continue a record does not say so.
    #[error("page lacks the continuation flag of the record at {record}")]
    MissingContinuation {
        /// The record being reassembled.
        record: Lsn,
    },
    /// A page continues a record where a new one should start.
    #[error("page continues a record, but a new record starts here")]
    UnexpectedContinuation,
    /// A continuation page disagrees about how much of the record is left.
    #[error("continuation of {record} claims {found} bytes left, {expected} expected")]
    WrongRemainingLength {
        /// The record being reassembled.
        record: Lsn,
        /// `xlp_rem_len`.
        found: u32,
        /// What the record's length implies.
        expected: u32,
    },
    /// `xl_tot_len` is impossible (0 is what the end of written WAL looks like).
    #[error("invalid record length {0}")]
    InvalidRecordLength(u32),
    /// `xl_rmid` names no resource manager.
    #[error("invalid resource manager id {0}")]
    InvalidRmgr(u8),
    /// `xl_prev` does not point at the previous record.
    #[error("record's previous link {found} should be {expected}")]
    WrongPrevLink {
        /// `xl_prev`.
        found: Lsn,
        /// The start of the record before.
        expected: Lsn,
    },
    /// The first record's `xl_prev` does not point before it.
    #[error("record's previous link {0} does not point before it")]
    PrevLinkNotBefore(Lsn),
    /// The record's CRC-32C does not match its bytes.
    #[error("incorrect record checksum {stored:#010x}, computed {computed:#010x}")]
    BadChecksum {
        /// `xl_crc`.
        stored: u32,
        /// Over the body and the header's first 20 bytes.
        computed: u32,
    },
    /// A record claims to begin at a position that is not one.
    #[error("record start is not 8-byte aligned")]
    UnalignedStart,
    /// The WAL reaches the last page of the 64-bit LSN space, where no
    /// Postgres writes (its end would not be an LSN).
    #[error("WAL page at the end of the LSN space")]
    EndOfLsnSpace,
}

#[derive(Debug)]
enum State {
    /// At the first byte fed; if it is a page boundary and the page continues
    /// a record, that record's tail is skipped.
    Start,
    /// A record starts at the current position.
    BetweenRecords,
    /// Skipping the tail of a record that began before the stream did:
    /// `left` more record bytes, excluding page headers.
    SkippingContinuation { left: u32 },
    /// Discarding bytes up to a position (alignment padding, or the rest of
    /// a segment after `XLOG_SWITCH`).
    SkippingTo(Lsn),
    /// Reassembling, in `assembly`, a record of `total` bytes that started
    /// at `start` and crosses a page or input boundary.
    InRecord { start: Lsn, total: u32 },
}

/// The bytes being decoded, and how many of them are consumed:
/// `bytes[consumed]` is at the decoder's position.
struct Input<'a> {
    bytes: &'a [u8],
    consumed: usize,
}

impl Input<'_> {
    fn rest(&self) -> &[u8] {
        &self.bytes[self.consumed..]
    }
}

/// Where a decoded record's bytes are.
enum Found {
    /// In `input.bytes[at..at + len]`: the record lay whole in one page of the input.
    InInput {
        start: Lsn,
        end: Lsn,
        at: usize,
        len: usize,
    },
    /// In `assembly`.
    Assembled { start: Lsn, end: Lsn },
}

/// The decoder; see the module documentation.
#[derive(Debug)]
pub struct WalStreamDecoder {
    segment_size: u32,
    /// Input not consumed yet is `input[consumed..filled]`; `input[consumed]`
    /// is at `position`. Past `filled` is room for the next bytes.
    input: Vec<u8>,
    filled: usize,
    consumed: usize,
    position: Lsn,
    state: State,
    /// The record being reassembled (or just reassembled), reused.
    assembly: Vec<u8>,
    system_id: Option<u64>,
    timeline: Option<u32>,
    previous_record: Option<Lsn>,
    failure: Option<WalDecodeError>,
}

impl WalStreamDecoder {
    /// A decoder for WAL of `segment_size`-byte segments whose first fed
    /// byte is at `start`: a record boundary, or a page boundary. A segment
    /// size Postgres would not accept (see
    /// [`crate::types::is_valid_wal_segment_size`]), or a start in the last
    /// page of the LSN space, makes every call fail.
    pub fn new(start: Lsn, segment_size: u32) -> WalStreamDecoder {
        let page_start = start.0 - u64::from(start.page_offset(XLOG_BLCKSZ));
        let failure = if !is_valid_wal_segment_size(segment_size) {
            Some(error(
                start,
                PageHeaderError::InvalidSegmentSize(segment_size),
            ))
        } else if page_start.checked_add(u64::from(XLOG_BLCKSZ)).is_none() {
            Some(error(start, WalErrorKind::EndOfLsnSpace))
        } else {
            None
        };
        WalStreamDecoder {
            segment_size,
            input: Vec::new(),
            filled: 0,
            consumed: 0,
            position: start,
            state: State::Start,
            assembly: Vec::new(),
            system_id: None,
            timeline: None,
            previous_record: None,
            failure,
        }
    }

    /// Requires every long page header to carry this system identifier.
    #[must_use]
    pub fn with_system_id(mut self, system_id: u64) -> WalStreamDecoder {
        self.system_id = Some(system_id);
        self
    }

    /// Requires the first record's `xl_prev` to be `previous`.
    #[must_use]
    pub fn with_previous_record(mut self, previous: Lsn) -> WalStreamDecoder {
        self.previous_record = Some(previous);
        self
    }

    /// The LSN of the next byte the decoder will look at.
    pub fn position(&self) -> Lsn {
        self.position
    }

    /// Whether the decoder stands between records (nothing half-read).
    pub fn is_between_records(&self) -> bool {
        matches!(
            self.state,
            State::BetweenRecords | State::Start | State::SkippingTo(_)
        )
    }

    /// The system identifier of the long page headers seen (or required).
    pub fn system_id(&self) -> Option<u64> {
        self.system_id
    }

    /// Moves what is not consumed yet to the front of the input buffer.
    fn compact(&mut self) {
        if self.consumed > 0 {
            self.input.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
    }

    /// Appends the next bytes of WAL.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.compact();
        let end = self.filled + bytes.len();
        if end > self.input.len() {
            self.input.resize(end, 0);
        }
        self.input[self.filled..end].copy_from_slice(bytes);
        self.filled = end;
    }

    /// Appends the next bytes of WAL, without copying them when everything
    /// fed before has been consumed.
    pub fn feed_owned(&mut self, bytes: Vec<u8>) {
        if self.consumed == self.filled {
            self.filled = bytes.len();
            self.input = bytes;
            self.consumed = 0;
        } else {
            self.feed(&bytes);
        }
    }

    /// Lets `read` put the next bytes of WAL straight into the decoder's
    /// buffer (at least `room` bytes of space are offered; the buffer is
    /// allocated once and reused, so nothing is copied or zeroed per
    /// read); returns what `read` returned. `read` gives the number of
    /// bytes it wrote.
    pub fn fill_with<E>(
        &mut self,
        room: usize,
        read: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        self.compact();
        if self.input.len() - self.filled < room {
            self.input.resize(self.filled + room, 0);
        }
        let n = read(&mut self.input[self.filled..])?;
        self.filled += n.min(self.input.len() - self.filled);
        Ok(n)
    }

    /// Decodes the next bytes of WAL where they lie: each whole record is
    /// handed to `on_record`, borrowed straight from `bytes` when it lies
    /// in one page of them (no copy), else reassembled. What `bytes` ends
    /// with short of a whole record is kept for the next call (a record's
    /// first pages in the reassembly buffer, or the few bytes of an
    /// unfinished page header or record length), so any split of the WAL
    /// into calls decodes the same. Stops at the first error, from the WAL
    /// or from `on_record`.
    pub fn decode_slice<E: From<WalDecodeError>>(
        &mut self,
        bytes: &[u8],
        mut on_record: impl FnMut(Record<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rest = bytes;
        if self.consumed < self.filled {
            // Bytes kept from before come first: a page of the new ones is
            // enough to get past them.
            let joined = rest.len().min(XLOG_BLCKSZ as usize);
            self.feed(&rest[..joined]);
            rest = &rest[joined..];
            while let Some(record) = self.next_record()? {
                on_record(record)?;
            }
            if self.consumed < self.filled {
                self.feed(rest);
                while let Some(record) = self.next_record()? {
                    on_record(record)?;
                }
                return Ok(());
            }
        }
        if let Some(failure) = &self.failure {
            return Err(failure.clone().into());
        }
        let mut input = Input {
            bytes: rest,
            consumed: 0,
        };
        loop {
            while let Some((start, at, len)) = self.next_in_page(&mut input) {
                on_record(Record {
                    start,
                    end: Lsn(start.0 + len as u64),
                    bytes: &rest[at..at + len],
                })?;
            }
            match self.decode_next(&mut input) {
                Ok(None) => break,
                Ok(Some(Found::InInput {
                    start,
                    end,
                    at,
                    len,
                })) => on_record(Record {
                    start,
                    end,
                    bytes: &rest[at..at + len],
                })?,
                Ok(Some(Found::Assembled { start, end })) => on_record(Record {
                    start,
                    end,
                    bytes: &self.assembly,
                })?,
                Err(failure) => {
                    self.failure = Some(failure.clone());
                    return Err(failure.into());
                }
            }
        }
        self.consumed = 0;
        self.filled = 0;
        self.feed(&rest[input.consumed..]);
        Ok(())
    }

    /// The common case, taken without the general state machine: between
    /// records, mid-page, the next record lies whole on this page of the
    /// input with its padding, passes every check and is not
    /// `XLOG_SWITCH`. Returns its start and where it is in the input, having
    /// moved past it and its padding; `None` leaves everything else
    /// (including every error) to [`Self::decode_next`].
    #[inline]
    fn next_in_page(&mut self, input: &mut Input<'_>) -> Option<(Lsn, usize, usize)> {
        if !matches!(self.state, State::BetweenRecords) {
            return None;
        }
        let start = self.position;
        let page_offset = start.page_offset(XLOG_BLCKSZ);
        if page_offset == 0 || !start.0.is_multiple_of(MAXALIGN) {
            return None;
        }
        let at = input.consumed;
        let rest = &input.bytes[at..];
        let length_bytes = rest.get(..4)?;
        let len = u32::from_le_bytes([
            length_bytes[0],
            length_bytes[1],
            length_bytes[2],
            length_bytes[3],
        ]) as usize;
        let padded = len.next_multiple_of(RECORD_ALIGN);
        let page_left = (XLOG_BLCKSZ - page_offset) as usize;
        if len < XLOG_RECORD_HEADER_SIZE || len > page_left || padded > rest.len() {
            return None;
        }
        let bytes = &rest[..len];
        let mut prev = [0u8; 8];
        prev.copy_from_slice(&bytes[8..16]);
        if !rmgr_id_is_valid(bytes[17])
            || Some(Lsn(u64::from_le_bytes(prev))) != self.previous_record
            || is_switch(bytes)
            || check_crc(bytes).is_err()
        {
            return None;
        }
        self.advance(input, padded);
        self.previous_record = Some(start);
        Some((start, at, len))
    }

    /// The next whole record, `Ok(None)` if more input is needed first.
    pub fn next_record(&mut self) -> Result<Option<Record<'_>>, WalDecodeError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        let buffer = std::mem::take(&mut self.input);
        let mut input = Input {
            bytes: &buffer[..self.filled],
            consumed: self.consumed,
        };
        let found = match self.next_in_page(&mut input) {
            Some((start, at, len)) => Ok(Some(Found::InInput {
                start,
                end: Lsn(start.0 + len as u64),
                at,
                len,
            })),
            None => self.decode_next(&mut input),
        };
        self.consumed = input.consumed;
        self.input = buffer;
        match found {
            Ok(None) => Ok(None),
            Ok(Some(Found::InInput {
                start,
                end,
                at,
                len,
            })) => Ok(Some(Record {
                start,
                end,
                bytes: &self.input[at..at + len],
            })),
            Ok(Some(Found::Assembled { start, end })) => Ok(Some(Record {
                start,
                end,
                bytes: &self.assembly,
            })),
            Err(error) => {
                self.failure = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Moves `bytes` further along `input`.
    fn advance(&mut self, input: &mut Input<'_>, bytes: usize) {
        input.consumed += bytes;
        self.position = Lsn(self.position.0 + bytes as u64);
    }

    fn decode_next(&mut self, input: &mut Input<'_>) -> Result<Option<Found>, WalDecodeError> {
        loop {
            if let State::SkippingTo(target) = self.state {
                let gap = target.0.saturating_sub(self.position.0);
                let step = usize::try_from(gap)
                    .unwrap_or(usize::MAX)
                    .min(input.rest().len());
                self.advance(input, step);
                if self.position < target {
                    return Ok(None);
                }
                self.state = State::BetweenRecords;
            }
            if self.position.page_offset(XLOG_BLCKSZ) == 0 && !self.read_page_header(input)? {
                return Ok(None);
            }
            match &mut self.state {
                State::Start | State::BetweenRecords => match self.start_record(input)? {
                    Started::NeedInput => return Ok(None),
                    Started::Whole(found) => return Ok(Some(found)),
                    Started::Partial => {}
                },
                State::SkippingContinuation { left } => {
                    let left_now = *left;
                    let step = self.step_within_page(input, left_now);
                    if step == 0 {
                        return Ok(None);
                    }
                    self.advance(input, step as usize);
                    let left_after = left_now - step;
                    if left_after == 0 {
                        self.state = self.align_after_record();
                    } else {
                        self.state = State::SkippingContinuation { left: left_after };
                    }
                }
                State::SkippingTo(_) => {}
                State::InRecord { .. } => {
                    if let Some(record) = self.continue_record(input)? {
                        return Ok(Some(record));
                    }
                    if !matches!(self.state, State::InRecord { .. }) {
                        continue;
                    }
                    if input.rest().is_empty() {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// How many of `wanted` bytes can be taken now without crossing a page.
    fn step_within_page(&self, input: &Input<'_>, wanted: u32) -> u32 {
        let page_left = XLOG_BLCKSZ - self.position.page_offset(XLOG_BLCKSZ);
        let available = u32::try_from(input.rest().len()).unwrap_or(u32::MAX);
        wanted.min(page_left).min(available)
    }

    /// The state after a record (or skipped continuation) ends at the current position.
    fn align_after_record(&self) -> State {
        match self.position.align_up(MAXALIGN) {
            Some(aligned) if aligned != self.position => State::SkippingTo(aligned),
            _ => State::BetweenRecords,
        }
    }

    /// Reads and checks the page header at the current (page-aligned)
    /// position. Returns false if more input is needed.
    fn read_page_header(&mut self, input: &mut Input<'_>) -> Result<bool, WalDecodeError> {
        let page = self.position;
        // Refusing the last page keeps every position the decoder reaches
        // (and every record end) a valid LSN.
        if page.checked_add(u64::from(XLOG_BLCKSZ)).is_none() {
            return Err(error(page, WalErrorKind::EndOfLsnSpace));
        }
        let size = if page.segment_offset(self.segment_size) == 0 {
            LONG_PAGE_HEADER_SIZE
        } else {
            SHORT_PAGE_HEADER_SIZE
        };
        if input.rest().len() < size {
            return Ok(false);
        }
        let header = decode_page_header(&input.rest()[..size], page, self.segment_size)
            .map_err(|e| error(page, e))?;
        if let Some(long) = header.long {
            match self.system_id {
                Some(expected) if expected != long.system_id => {
                    return Err(error(
                        page,
                        PageHeaderError::WrongSystemId {
                            found: long.system_id,
                            expected,
                        },
                    ));
                }
                _ => self.system_id = Some(long.system_id),
            }
        }
        if let Some(previous) = self.timeline.filter(|previous| header.timeline < *previous) {
            return Err(error(
                page,
                PageHeaderError::TimelineBackwards {
                    found: header.timeline,
                    previous,
                },
            ));
        }
        self.timeline = Some(header.timeline);
        match &self.state {
            State::InRecord { .. } if header.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0 => {
                // After a crash, Postgres abandons a record whose tail never
                // reached disk and writes new WAL from this page on; the
                // partial record is dropped (XLOG_OVERWRITE_CONTRECORD
                // records this).
                self.state = State::BetweenRecords;
            }
            State::InRecord { start, total } => {
                if !header.is_contrecord() {
                    return Err(error(
                        page,
                        WalErrorKind::MissingContinuation { record: *start },
                    ));
                }
                let expected = total - record_len(&self.assembly);
                if header.remaining_length != expected {
                    return Err(error(
                        page,
                        WalErrorKind::WrongRemainingLength {
                            record: *start,
                            found: header.remaining_length,
                            expected,
                        },
                    ));
                }
            }
            State::SkippingContinuation { left } => {
                if !header.is_contrecord() || header.remaining_length != *left {
                    return Err(error(
                        page,
                        WalErrorKind::WrongRemainingLength {
                            record: page,
                            found: header.remaining_length,
                            expected: *left,
                        },
                    ));
                }
            }
            State::Start => {
                if header.is_contrecord() && header.remaining_length > 0 {
                    self.state = State::SkippingContinuation {
                        left: header.remaining_length,
                    };
                } else {
                    self.state = State::BetweenRecords;
                }
            }
            State::BetweenRecords => {
                if header.is_contrecord() {
                    return Err(error(page, WalErrorKind::UnexpectedContinuation));
                }
            }
            State::SkippingTo(_) => {}
        }
        self.advance(input, size);
        Ok(true)
    }

    /// Begins the record at the current position: whole when it lies in
    /// one page of the input (no copy), else reassembly starts.
    fn start_record(&mut self, input: &mut Input<'_>) -> Result<Started, WalDecodeError> {
        let start = self.position;
        if !start.0.is_multiple_of(MAXALIGN) {
            return Err(error(start, WalErrorKind::UnalignedStart));
        }
        // Records start 8-aligned and a page holds a multiple of 8 bytes, so
        // xl_tot_len always lies on the record's first page.
        let Some(length_bytes) = input.rest().get(..4) else {
            return Ok(Started::NeedInput);
        };
        let total = u32::from_le_bytes([
            length_bytes[0],
            length_bytes[1],
            length_bytes[2],
            length_bytes[3],
        ]);
        if (total as usize) < XLOG_RECORD_HEADER_SIZE || total > XLOG_RECORD_MAX_SIZE {
            return Err(error(start, WalErrorKind::InvalidRecordLength(total)));
        }
        let page_left = XLOG_BLCKSZ - start.page_offset(XLOG_BLCKSZ);
        let len = total as usize;
        if total <= page_left && input.rest().len() >= len {
            let at = input.consumed;
            let bytes = &input.bytes[at..at + len];
            self.check_header(start, bytes)?;
            check_crc(bytes).map_err(|kind| error(start, kind))?;
            let end = Lsn(start.0 + u64::from(total));
            // The padding to the next 8-byte boundary lies on the same page
            // (a page holds a multiple of 8 bytes): when it is here too,
            // step over it now.
            let padded = len.next_multiple_of(RECORD_ALIGN);
            if padded <= input.rest().len() && !is_switch(bytes) {
                self.advance(input, padded);
                self.previous_record = Some(start);
                self.state = State::BetweenRecords;
            } else {
                self.advance(input, len);
                self.finish_record(start, end, is_switch(bytes));
            }
            return Ok(Started::Whole(Found::InInput {
                start,
                end,
                at,
                len,
            }));
        }
        self.assembly.clear();
        self.assembly.reserve(len.min(64 * 1024));
        self.state = State::InRecord { start, total };
        Ok(Started::Partial)
    }

    /// Copies what is available of the current record into `assembly`;
    /// yields it when whole.
    fn continue_record(&mut self, input: &mut Input<'_>) -> Result<Option<Found>, WalDecodeError> {
        let State::InRecord { start, total } = self.state else {
            return Ok(None);
        };
        let had = self.assembly.len();
        let step = self.step_within_page(input, total - record_len(&self.assembly)) as usize;
        if step == 0 {
            return Ok(None);
        }
        self.assembly.extend_from_slice(&input.rest()[..step]);
        self.advance(input, step);
        if had < XLOG_RECORD_HEADER_SIZE && self.assembly.len() >= XLOG_RECORD_HEADER_SIZE {
            self.check_header(start, &self.assembly)?;
        }
        if self.assembly.len() < total as usize {
            return Ok(None);
        }
        check_crc(&self.assembly).map_err(|kind| error(start, kind))?;
        let end = self.position;
        let is_switch = is_switch(&self.assembly);
        self.finish_record(start, end, is_switch);
        Ok(Some(Found::Assembled { start, end }))
    }

    /// Moves past a whole record ending at `end`.
    fn finish_record(&mut self, start: Lsn, end: Lsn, is_switch: bool) {
        self.previous_record = Some(start);
        self.state = if is_switch {
            let segment = u64::from(self.segment_size);
            // An XLOG_SWITCH ends the segment: the next record starts at the
            // next segment (or right here if the record ended exactly there).
            // In the last segment of the LSN space there is no next one.
            let next = end.0.div_ceil(segment).checked_mul(segment);
            State::SkippingTo(Lsn(next.unwrap_or(u64::MAX)))
        } else {
            self.align_after_record()
        };
    }

    fn check_header(&self, start: Lsn, header: &[u8]) -> Result<(), WalDecodeError> {
        let rmid = header[17];
        if !rmgr_id_is_valid(rmid) {
            return Err(error(start, WalErrorKind::InvalidRmgr(rmid)));
        }
        let mut prev = [0u8; 8];
        prev.copy_from_slice(&header[8..16]);
        let found = Lsn(u64::from_le_bytes(prev));
        match self.previous_record {
            Some(expected) if found != expected => {
                return Err(error(
                    start,
                    WalErrorKind::WrongPrevLink { found, expected },
                ));
            }
            // The first record read: its predecessor lies somewhere before it.
            None if found >= start => {
                return Err(error(start, WalErrorKind::PrevLinkNotBefore(found)));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The length of a partly reassembled record; never more than its `u32` total.
fn record_len(bytes: &[u8]) -> u32 {
    u32::try_from(bytes.len()).unwrap_or(u32::MAX)
}

fn error(lsn: Lsn, kind: impl Into<WalErrorKind>) -> WalDecodeError {
    WalDecodeError {
        lsn,
        kind: kind.into(),
    }
}

/// Whether a whole record is `XLOG_SWITCH`.
fn is_switch(record: &[u8]) -> bool {
    record[17] == RM_XLOG_ID && record[16] & 0xF0 == XLOG_SWITCH
}

/// What starting a record produced.
enum Started {
    /// Not even its length is here yet.
    NeedInput,
    /// The whole record, found in the input.
    Whole(Found),
    /// Reassembly has begun.
    Partial,
}
