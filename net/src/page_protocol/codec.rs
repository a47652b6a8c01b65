//! The codec's shared parts: writing and reading little-endian fields, the
//! frame header of a whole frame, and the checks of every field the spec
//! constrains. `requests` and `responses` lay out the bodies
//! (docs/protocol/page-service.md).
//!
//! Decoding checks every constrained field (lengths exact, reserved bytes
//! zero, counts and LSNs in range), so a frame that decodes re-encodes to
//! the same bytes. Encoding refuses what decoding would refuse, with the
//! same checks, and leaves the output as it was when it does.

use quire_postgres::Lsn;
use quire_postgres::key::SlruKind;
use quire_postgres::types::{BLCKSZ, BlockNo, ForkNumber, RelTag};

use super::frame::{Direction, FrameHeader};
use super::{
    BLOCKS_PER_REQUEST_MAX, BodyError, FRAME_HEADER_BYTES, FrameError, HelloOk, LATEST_LSN_WIRE,
    PIPELINE_DEPTH_MAX, RESPONSE_FRAME_BYTES_MAX, RESPONSE_FRAME_BYTES_MIN, ReadLsn, RequestLsn,
    TOKEN_BYTES_MAX,
};

/// Bytes of every request body's LSN pair.
pub(super) const LSNS: u64 = 16;
/// Bytes of a relation fork on the wire.
pub(super) const REL: u64 = 16;
/// Bytes before the pages of a `GetPages` or `SlruSegment` answer's body.
pub(super) const PAGES_PREFIX: u64 = 16;
/// Bytes of an `Error` body before its message.
pub(super) const ERROR_FIXED: u64 = 24;

pub(super) struct Writer<'a>(pub(super) &'a mut Vec<u8>);

impl Writer<'_> {
    pub(super) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(super) fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn zeros(&mut self, n: usize) {
        self.0.resize(self.0.len() + n, 0);
    }
    pub(super) fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    pub(super) fn header(&mut self, length: u64, kind: u8, request_id: u64) {
        // Every caller's length is bounded by a frame maximum, far below 4 GiB.
        self.u32(u32::try_from(length).unwrap_or(u32::MAX));
        self.u8(kind);
        self.zeros(3);
        self.u64(request_id);
    }
    pub(super) fn read_lsn(&mut self, lsn: ReadLsn) {
        self.u64(match lsn.request() {
            RequestLsn::Latest => LATEST_LSN_WIRE,
            RequestLsn::At(at) => at.0,
        });
        self.u64(lsn.not_modified_since().0);
    }
    pub(super) fn rel(&mut self, rel: RelTag) {
        self.u32(rel.spc_oid);
        self.u32(rel.db_oid);
        self.u32(rel.rel_number);
        self.u8(rel.fork as u8);
        self.zeros(3);
    }
}

pub(super) struct Reader<'a> {
    body: &'a [u8],
    at: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    pub(super) fn new(body: &'a [u8], message: &'static str) -> Reader<'a> {
        Reader {
            body,
            at: 0,
            message,
        }
    }
    pub(super) fn body_bytes(&self) -> u32 {
        u32::try_from(self.body.len()).unwrap_or(u32::MAX)
    }
    /// Refuses a body whose length is not `expected`.
    pub(super) fn expect_len(&self, expected: u64) -> Result<(), BodyError> {
        if self.body.len() as u64 == expected {
            Ok(())
        } else {
            Err(self.length_error(expected))
        }
    }
    /// Refuses a body shorter than `fixed`, the part read before its counts.
    pub(super) fn expect_at_least(&self, fixed: u64) -> Result<(), BodyError> {
        if self.body.len() as u64 >= fixed {
            Ok(())
        } else {
            Err(self.length_error(fixed))
        }
    }
    pub(super) fn length_error(&self, expected: u64) -> BodyError {
        BodyError::Length {
            message: self.message,
            body_bytes: self.body_bytes(),
            expected,
        }
    }
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], BodyError> {
        let bytes = self
            .at
            .checked_add(n)
            .and_then(|end| self.body.get(self.at..end))
            .ok_or_else(|| self.length_error(self.at as u64 + n as u64))?;
        self.at += n;
        Ok(bytes)
    }
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], BodyError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub(super) fn u8(&mut self) -> Result<u8, BodyError> {
        self.array::<1>().map(|[b]| b)
    }
    pub(super) fn u16(&mut self) -> Result<u16, BodyError> {
        self.array().map(u16::from_le_bytes)
    }
    pub(super) fn u32(&mut self) -> Result<u32, BodyError> {
        self.array().map(u32::from_le_bytes)
    }
    pub(super) fn u64(&mut self) -> Result<u64, BodyError> {
        self.array().map(u64::from_le_bytes)
    }
    pub(super) fn reserved(&mut self, n: usize) -> Result<(), BodyError> {
        let first = self.at;
        let bytes = self.take(n)?;
        match bytes.iter().position(|b| *b != 0) {
            None => Ok(()),
            Some(i) => Err(BodyError::Reserved {
                offset: u32::try_from(first + i)
                    .unwrap_or(u32::MAX)
                    .saturating_add(FRAME_HEADER_BYTES),
            }),
        }
    }
    pub(super) fn read_lsn(&mut self) -> Result<ReadLsn, BodyError> {
        let request = match self.u64()? {
            LATEST_LSN_WIRE => RequestLsn::Latest,
            lsn => RequestLsn::At(Lsn(lsn)),
        };
        ReadLsn::new(request, Lsn(self.u64()?))
    }
    pub(super) fn served_lsn(&mut self) -> Result<Lsn, BodyError> {
        let lsn = self.u64()?;
        check_served(Lsn(lsn))?;
        Ok(Lsn(lsn))
    }
    pub(super) fn rel(&mut self) -> Result<RelTag, BodyError> {
        let spc_oid = self.u32()?;
        let db_oid = self.u32()?;
        let rel_number = self.u32()?;
        let fork_byte = self.u8()?;
        let fork = ForkNumber::from_u8(fork_byte).ok_or(BodyError::Fork(fork_byte))?;
        self.reserved(3)?;
        Ok(RelTag {
            spc_oid,
            db_oid,
            rel_number,
            fork,
        })
    }
    pub(super) fn block(&mut self) -> Result<BlockNo, BodyError> {
        let block = BlockNo(self.u32()?);
        check_block(block)?;
        Ok(block)
    }
    pub(super) fn rest(&mut self) -> &'a [u8] {
        let rest = self.body.get(self.at..).unwrap_or_default();
        self.at = self.body.len();
        rest
    }
}

pub(super) fn check_served(lsn: Lsn) -> Result<(), BodyError> {
    if lsn.0 == 0 || lsn.0 == LATEST_LSN_WIRE {
        return Err(BodyError::ServedLsn(lsn.0));
    }
    Ok(())
}

pub(super) fn check_block(block: BlockNo) -> Result<(), BodyError> {
    if block == BlockNo::INVALID {
        return Err(BodyError::InvalidBlock);
    }
    Ok(())
}

pub(super) fn check_range(first: BlockNo, count: u32) -> Result<(), BodyError> {
    if count == 0 || count > BLOCKS_PER_REQUEST_MAX {
        return Err(BodyError::BlockCount(count));
    }
    if u64::from(first.0) + u64::from(count) - 1 > u64::from(BlockNo::MAX.0) {
        return Err(BodyError::BlockRange { first, count });
    }
    Ok(())
}

pub(super) fn check_versions(min: u16, max: u16) -> Result<(), BodyError> {
    if min == 0 || min > max {
        return Err(BodyError::VersionRange { min, max });
    }
    Ok(())
}

pub(super) fn check_token(token: &[u8]) -> Result<(), BodyError> {
    if token.len() as u64 > u64::from(TOKEN_BYTES_MAX) {
        return Err(BodyError::TokenLength(token.len() as u64));
    }
    if !token.iter().all(u8::is_ascii_graphic) {
        return Err(BodyError::TokenNotAscii);
    }
    Ok(())
}

pub(super) fn check_limit(
    field: &'static str,
    value: u32,
    min: u32,
    max: u32,
) -> Result<(), BodyError> {
    if value < min || value > max {
        return Err(BodyError::Limit {
            field,
            value,
            min,
            max,
        });
    }
    Ok(())
}

pub(super) fn check_hello_ok(ok: &HelloOk) -> Result<(), BodyError> {
    check_limit("version", u32::from(ok.version), 1, u32::from(u16::MAX))?;
    check_limit(
        "frame_bytes_max",
        ok.frame_bytes_max,
        RESPONSE_FRAME_BYTES_MIN,
        RESPONSE_FRAME_BYTES_MAX,
    )?;
    check_limit("pipeline_depth", ok.pipeline_depth, 1, PIPELINE_DEPTH_MAX)?;
    check_limit(
        "blocks_per_request_max",
        ok.blocks_per_request_max,
        1,
        BLOCKS_PER_REQUEST_MAX,
    )
}

pub(super) fn slru_from_u8(n: u8) -> Result<SlruKind, BodyError> {
    match n {
        0 => Ok(SlruKind::Clog),
        1 => Ok(SlruKind::MultiXactOffsets),
        2 => Ok(SlruKind::MultiXactMembers),
        _ => Err(BodyError::Slru(n)),
    }
}

/// The page count of `pages` (whole pages, `min..=max` of them).
pub(super) fn page_count(
    message: &'static str,
    pages: &[u8],
    min: u32,
    max: u32,
) -> Result<u32, BodyError> {
    if !pages.len().is_multiple_of(BLCKSZ) {
        return Err(BodyError::PageBytes {
            message,
            bytes: pages.len() as u64,
        });
    }
    let count = (pages.len() / BLCKSZ) as u64;
    check_page_count(message, count, min, max)?;
    u32::try_from(count).map_err(|_| BodyError::PageCount {
        message,
        count,
        min,
        max,
    })
}

pub(super) fn check_page_count(
    message: &'static str,
    count: u64,
    min: u32,
    max: u32,
) -> Result<(), BodyError> {
    if count < u64::from(min) || count > u64::from(max) {
        return Err(BodyError::PageCount {
            message,
            count,
            min,
            max,
        });
    }
    Ok(())
}

/// Splits a whole frame into its checked header and body.
pub(super) fn open(frame: &[u8], direction: Direction) -> Result<(FrameHeader, &[u8]), FrameError> {
    let header = FrameHeader::peek(frame, direction)?.ok_or(FrameError::Length {
        length: u32::try_from(frame.len()).unwrap_or(u32::MAX),
        max: direction.frame_bytes_max(),
        kind: frame.get(4).copied().unwrap_or(0),
        request_id: 0,
    })?;
    let body_error = |reason| FrameError::Body {
        request_id: header.request_id,
        kind: header.kind,
        frame_bytes: header.length,
        reason,
    };
    if frame.len() != header.frame_len() {
        return Err(body_error(BodyError::Length {
            message: "frame",
            body_bytes: u32::try_from(frame.len().saturating_sub(16)).unwrap_or(u32::MAX),
            expected: u64::from(header.length - FRAME_HEADER_BYTES),
        }));
    }
    let (head, body) = frame.split_at(FRAME_HEADER_BYTES as usize);
    if let Some(i) = head.get(5..8).and_then(|r| r.iter().position(|b| *b != 0)) {
        return Err(body_error(BodyError::Reserved {
            offset: 5 + u32::try_from(i).unwrap_or(0),
        }));
    }
    Ok((header, body))
}

/// Wraps a body error with its frame's header.
pub(super) fn in_frame<T>(
    header: FrameHeader,
    result: Result<T, BodyError>,
) -> Result<T, FrameError> {
    result.map_err(|reason| FrameError::Body {
        request_id: header.request_id,
        kind: header.kind,
        frame_bytes: header.length,
        reason,
    })
}

/// Writes a frame: the header, then `body`'s bytes; on an error `out` is
/// left as it was.
pub(super) fn write_frame(
    out: &mut Vec<u8>,
    kind: u8,
    request_id: u64,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), BodyError>,
) -> Result<(), BodyError> {
    let start = out.len();
    let mut w = Writer(out);
    w.header(0, kind, request_id);
    if let Err(error) = body(&mut w) {
        out.truncate(start);
        return Err(error);
    }
    let length = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    if let Some(field) = out.get_mut(start..start + 4) {
        field.copy_from_slice(&length.to_le_bytes());
    }
    Ok(())
}
