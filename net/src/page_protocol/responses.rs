//! Server frames: `HelloOk`, the answers and `Error`, encoded and decoded
//! (docs/protocol/page-service.md, "Handshake" and "Responses"), with the
//! error codes' wire form.

use quire_postgres::Lsn;
use quire_postgres::types::{BLCKSZ, BlockNo};

use super::codec::{
    ERROR_FIXED, PAGES_PREFIX, Reader, Writer, check_hello_ok, check_page_count, check_served,
    in_frame, open, page_count, write_frame,
};
use super::frame::Direction;
use super::{
    BLOCKS_PER_REQUEST_MAX, BodyError, ERROR_MESSAGE_BYTES_MAX, ErrorResponse, FRAME_HEADER_BYTES,
    FrameError, HelloOk, PAGE_BYTES, Response, SLRU_PAGES_PER_SEGMENT, ServerFrame, ServerMessage,
    ServiceError, kind,
};

/// Appends the start of a page-bearing answer to `out`: its header with the
/// whole frame's length and the fields before the pages, so the caller can
/// send the `count` pages straight from its buffers after it. `kind` is
/// [`kind::GET_PAGE_OK`] (`count` 1), [`kind::GET_PAGES_OK`] (1 to 32) or
/// [`kind::SLRU_SEGMENT_OK`] (0 to 32).
pub fn encode_page_reply_prefix(
    out: &mut Vec<u8>,
    request_id: u64,
    kind: u8,
    lsn: Lsn,
    count: u32,
) -> Result<(), BodyError> {
    check_served(lsn)?;
    let (message, min, max, prefix) = match kind {
        kind::GET_PAGE_OK => ("GetPage", 1, 1, 8),
        kind::GET_PAGES_OK => ("GetPages", 1, BLOCKS_PER_REQUEST_MAX, PAGES_PREFIX),
        kind::SLRU_SEGMENT_OK => ("SlruSegment", 0, SLRU_PAGES_PER_SEGMENT, PAGES_PREFIX),
        _ => return Err(BodyError::NotAPageReply(kind)),
    };
    check_page_count(message, u64::from(count), min, max)?;
    let mut w = Writer(out);
    let length = u64::from(FRAME_HEADER_BYTES) + prefix + u64::from(count) * u64::from(PAGE_BYTES);
    w.header(length, kind, request_id);
    w.u64(lsn.0);
    if kind != kind::GET_PAGE_OK {
        w.u32(count);
        w.zeros(4);
    }
    Ok(())
}

impl ServerFrame {
    /// Appends the frame's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        let kind = self.kind();
        let id = self.request_id;
        match &self.message {
            ServerMessage::Response(Response::GetPage { lsn, page }) => {
                encode_pages(out, id, kind, *lsn, 1, &page[..])
            }
            ServerMessage::Response(Response::GetPages { lsn, pages }) => {
                let count = page_count("GetPages", pages, 1, BLOCKS_PER_REQUEST_MAX)?;
                encode_pages(out, id, kind, *lsn, count, pages)
            }
            ServerMessage::Response(Response::SlruSegment { lsn, pages }) => {
                let count = page_count("SlruSegment", pages, 0, SLRU_PAGES_PER_SEGMENT)?;
                encode_pages(out, id, kind, *lsn, count, pages)
            }
            message => write_frame(out, kind, id, |w| encode_server_body(w, message)),
        }
    }

    /// The frame's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Decodes exactly one whole frame.
    pub fn decode(frame: &[u8]) -> Result<ServerFrame, FrameError> {
        let (header, body) = open(frame, Direction::ToClient)?;
        let message = in_frame(header, decode_server_body(header.kind, body))?;
        Ok(ServerFrame {
            request_id: header.request_id,
            message,
        })
    }
}

fn encode_pages(
    out: &mut Vec<u8>,
    request_id: u64,
    kind: u8,
    lsn: Lsn,
    count: u32,
    pages: &[u8],
) -> Result<(), BodyError> {
    encode_page_reply_prefix(out, request_id, kind, lsn, count)?;
    out.extend_from_slice(pages);
    Ok(())
}

fn encode_server_body(w: &mut Writer<'_>, message: &ServerMessage) -> Result<(), BodyError> {
    match message {
        ServerMessage::HelloOk(ok) => {
            check_hello_ok(ok)?;
            w.u16(ok.version);
            w.zeros(2);
            w.u32(ok.frame_bytes_max);
            w.u32(ok.pipeline_depth);
            w.u32(ok.blocks_per_request_max);
            w.u32(ok.lsn_wait_ms);
        }
        ServerMessage::Response(response) => match *response {
            Response::Nblocks { lsn, nblocks } => {
                check_served(lsn)?;
                w.u64(lsn.0);
                w.u32(nblocks);
            }
            Response::Exists { lsn, exists } => {
                check_served(lsn)?;
                w.u64(lsn.0);
                w.u8(u8::from(exists));
            }
            Response::DbSize { lsn, size_bytes } => {
                check_served(lsn)?;
                w.u64(lsn.0);
                w.u64(size_bytes);
            }
            // Page-bearing answers are written by `encode_pages`.
            Response::GetPage { .. } | Response::GetPages { .. } | Response::SlruSegment { .. } => {
                return Err(BodyError::NotAPageReply(response.kind()));
            }
        },
        ServerMessage::Error(error) => encode_error(w, error)?,
    }
    Ok(())
}

fn decode_server_body(kind: u8, body: &[u8]) -> Result<ServerMessage, BodyError> {
    let response = match kind {
        kind::HELLO_OK => {
            let mut r = Reader::new(body, "HelloOk");
            r.expect_len(20)?;
            let version = r.u16()?;
            r.reserved(2)?;
            let ok = HelloOk {
                version,
                frame_bytes_max: r.u32()?,
                pipeline_depth: r.u32()?,
                blocks_per_request_max: r.u32()?,
                lsn_wait_ms: r.u32()?,
            };
            check_hello_ok(&ok)?;
            return Ok(ServerMessage::HelloOk(ok));
        }
        kind::ERROR => return decode_error(body).map(ServerMessage::Error),
        kind::GET_PAGE_OK => {
            let mut r = Reader::new(body, "GetPage");
            r.expect_len(8 + u64::from(PAGE_BYTES))?;
            let lsn = r.served_lsn()?;
            Response::GetPage {
                lsn,
                page: Box::new(r.array::<BLCKSZ>()?),
            }
        }
        kind::GET_PAGES_OK => {
            let (lsn, pages) = decode_pages(body, "GetPages", 1, BLOCKS_PER_REQUEST_MAX)?;
            Response::GetPages { lsn, pages }
        }
        kind::SLRU_SEGMENT_OK => {
            let (lsn, pages) = decode_pages(body, "SlruSegment", 0, SLRU_PAGES_PER_SEGMENT)?;
            Response::SlruSegment { lsn, pages }
        }
        kind::NBLOCKS_OK => {
            let mut r = Reader::new(body, "Nblocks");
            r.expect_len(12)?;
            Response::Nblocks {
                lsn: r.served_lsn()?,
                nblocks: r.u32()?,
            }
        }
        kind::EXISTS_OK => {
            let mut r = Reader::new(body, "Exists");
            r.expect_len(9)?;
            let lsn = r.served_lsn()?;
            let exists = match r.u8()? {
                0 => false,
                1 => true,
                other => return Err(BodyError::ExistsByte(other)),
            };
            Response::Exists { lsn, exists }
        }
        kind::DB_SIZE_OK => {
            let mut r = Reader::new(body, "DbSize");
            r.expect_len(16)?;
            Response::DbSize {
                lsn: r.served_lsn()?,
                size_bytes: r.u64()?,
            }
        }
        _ => return Err(BodyError::UnknownKind),
    };
    Ok(ServerMessage::Response(response))
}

fn decode_pages(
    body: &[u8],
    message: &'static str,
    min: u32,
    max: u32,
) -> Result<(Lsn, Vec<u8>), BodyError> {
    let mut r = Reader::new(body, message);
    r.expect_at_least(PAGES_PREFIX)?;
    let lsn = r.served_lsn()?;
    let count = r.u32()?;
    r.reserved(4)?;
    check_page_count(message, u64::from(count), min, max)?;
    // The frame's length was checked against the maximum, and the count
    // against 32: the copy below is bounded by both.
    r.expect_len(PAGES_PREFIX + u64::from(count) * u64::from(PAGE_BYTES))?;
    Ok((lsn, r.rest().to_vec()))
}

impl ServiceError {
    /// The error's code in the spec's table.
    pub fn code(self) -> u16 {
        match self {
            ServiceError::BadRequest => 1,
            ServiceError::UnsupportedVersion { .. } => 2,
            ServiceError::Unauthenticated => 3,
            ServiceError::Forbidden => 4,
            ServiceError::UnknownTenant => 5,
            ServiceError::UnknownTimeline => 6,
            ServiceError::ShardNotHere => 7,
            ServiceError::WrongShard { .. } => 8,
            ServiceError::NotFound => 9,
            ServiceError::LsnBelowGcCutoff { .. } => 10,
            ServiceError::WalNotIngested { .. } => 11,
            ServiceError::Corrupt => 12,
            ServiceError::RedoFailed => 13,
            ServiceError::Overloaded { .. } => 14,
            ServiceError::ShuttingDown => 15,
            ServiceError::Internal => 16,
        }
    }

    /// `detail1` and `detail2` as the spec's table defines them.
    fn details(self) -> Result<(u64, u64), BodyError> {
        Ok(match self {
            ServiceError::UnsupportedVersion { min, max } => (u64::from(min), u64::from(max)),
            ServiceError::WrongShard { owner, block } => {
                if block == Some(BlockNo::INVALID) {
                    return Err(BodyError::InvalidBlock);
                }
                (
                    u64::from(owner),
                    u64::from(block.unwrap_or(BlockNo::INVALID).0),
                )
            }
            ServiceError::LsnBelowGcCutoff { requested, cutoff } => (requested.0, cutoff.0),
            ServiceError::WalNotIngested {
                waited_for,
                last_ingested,
            } => (waited_for.0, last_ingested.0),
            ServiceError::Overloaded { retry_after_ms } => (u64::from(retry_after_ms), 0),
            _ => (0, 0),
        })
    }

    /// The error a code and its details name.
    fn from_wire(code: u16, detail1: u64, detail2: u64) -> Result<ServiceError, BodyError> {
        let bad = || BodyError::ErrorDetail {
            code,
            detail1,
            detail2,
        };
        let narrow32 = |v: u64| u32::try_from(v).map_err(|_| bad());
        let narrow16 = |v: u64| u16::try_from(v).map_err(|_| bad());
        let error = match code {
            1 => ServiceError::BadRequest,
            2 => ServiceError::UnsupportedVersion {
                min: narrow16(detail1)?,
                max: narrow16(detail2)?,
            },
            3 => ServiceError::Unauthenticated,
            4 => ServiceError::Forbidden,
            5 => ServiceError::UnknownTenant,
            6 => ServiceError::UnknownTimeline,
            7 => ServiceError::ShardNotHere,
            8 => {
                let block = BlockNo(narrow32(detail2)?);
                ServiceError::WrongShard {
                    owner: narrow32(detail1)?,
                    block: (block != BlockNo::INVALID).then_some(block),
                }
            }
            9 => ServiceError::NotFound,
            10 => ServiceError::LsnBelowGcCutoff {
                requested: Lsn(detail1),
                cutoff: Lsn(detail2),
            },
            11 => ServiceError::WalNotIngested {
                waited_for: Lsn(detail1),
                last_ingested: Lsn(detail2),
            },
            12 => ServiceError::Corrupt,
            13 => ServiceError::RedoFailed,
            14 => ServiceError::Overloaded {
                retry_after_ms: narrow32(detail1)?,
            },
            15 => ServiceError::ShuttingDown,
            16 => ServiceError::Internal,
            _ => return Err(BodyError::ErrorCode(code)),
        };
        // Details a code does not define must be zero: then every error has
        // one encoding.
        if error.details()? != (detail1, detail2) {
            return Err(bad());
        }
        Ok(error)
    }
}

fn encode_error(w: &mut Writer<'_>, error: &ErrorResponse) -> Result<(), BodyError> {
    let message = error.message.as_bytes();
    if message.len() as u64 > u64::from(ERROR_MESSAGE_BYTES_MAX) {
        return Err(BodyError::MessageLength(message.len() as u64));
    }
    let (detail1, detail2) = error.error.details()?;
    w.u16(error.error.code());
    w.u8(error.request_kind);
    w.u8(u8::from(error.closes));
    w.u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    w.u64(detail1);
    w.u64(detail2);
    w.bytes(message);
    Ok(())
}

fn decode_error(body: &[u8]) -> Result<ErrorResponse, BodyError> {
    let mut r = Reader::new(body, "Error");
    r.expect_at_least(ERROR_FIXED)?;
    let code = r.u16()?;
    let request_kind = r.u8()?;
    let flags = r.u8()?;
    if flags > 1 {
        return Err(BodyError::ErrorFlags(flags));
    }
    let message_length = r.u32()?;
    if message_length > ERROR_MESSAGE_BYTES_MAX {
        return Err(BodyError::MessageLength(u64::from(message_length)));
    }
    let detail1 = r.u64()?;
    let detail2 = r.u64()?;
    let error = ServiceError::from_wire(code, detail1, detail2)?;
    r.expect_len(ERROR_FIXED + u64::from(message_length))?;
    let message = std::str::from_utf8(r.rest()).map_err(|_| BodyError::MessageNotUtf8)?;
    Ok(ErrorResponse {
        request_kind,
        closes: flags == 1,
        error,
        message: message.to_owned(),
    })
}
