//! What a page-protocol frame can get wrong, named precisely enough for a
//! log line and for the `BadRequest` answer's message.
//!
//! [`FrameError::Length`] is the one error after which the stream's frame
//! boundaries are lost (the connection closes); every other error is
//! [`FrameError::Body`], about one whole frame that can be skipped.

use quire_postgres::Lsn;
use quire_postgres::types::BlockNo;

use super::{BLOCKS_PER_REQUEST_MAX, ERROR_MESSAGE_BYTES_MAX, FRAME_HEADER_BYTES, TOKEN_BYTES_MAX};
use crate::id::ShardIdentityError;

/// A frame that does not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header's length is below the header or above the direction's
    /// maximum: the frame's end is unknown, nothing after it can be read.
    #[error(
        "frame {request_id} of kind 0x{kind:02X} claims {length} bytes: a frame is {FRAME_HEADER_BYTES} to {max} bytes"
    )]
    Length {
        /// The length claimed.
        length: u32,
        /// The direction's maximum.
        max: u32,
        /// The header's kind byte.
        kind: u8,
        /// The header's request id.
        request_id: u64,
    },
    /// A whole frame whose kind or body breaks the spec; the stream goes on
    /// after its `frame_bytes`.
    #[error("frame {request_id} of kind 0x{kind:02X}: {reason}")]
    Body {
        /// The header's request id.
        request_id: u64,
        /// The header's kind byte.
        kind: u8,
        /// The whole frame's length, header included.
        frame_bytes: u32,
        /// What was wrong.
        reason: BodyError,
    },
}

impl FrameError {
    /// Whether the frame's end is known, so the next frame can be read.
    pub fn boundary_known(&self) -> bool {
        matches!(self, FrameError::Body { .. })
    }

    /// The request id the header named (what an error answer echoes).
    pub fn request_id(&self) -> u64 {
        match self {
            FrameError::Length { request_id, .. } | FrameError::Body { request_id, .. } => {
                *request_id
            }
        }
    }

    /// The kind byte the header named.
    pub fn kind(&self) -> u8 {
        match self {
            FrameError::Length { kind, .. } | FrameError::Body { kind, .. } => *kind,
        }
    }
}

/// What is wrong inside a frame (or with a message being encoded).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// A kind byte this direction does not have.
    #[error("unknown kind")]
    UnknownKind,
    /// Non-zero bytes where the layout reserves zeros.
    #[error("reserved byte at offset {offset} of the frame is not zero")]
    Reserved {
        /// Offset from the frame's start.
        offset: u32,
    },
    /// A body longer or shorter than its layout.
    #[error("{message} body of {body_bytes} bytes: its layout has {expected}")]
    Length {
        /// The message.
        message: &'static str,
        /// Bytes the body has.
        body_bytes: u32,
        /// Bytes its layout (and its own counts) call for.
        expected: u64,
    },
    /// A `Hello` without the magic.
    #[error("magic {0:02X?} is not QPGS")]
    Magic([u8; 4]),
    /// A version range that is empty or starts at 0.
    #[error("version range {min} to {max} is empty or starts at 0")]
    VersionRange {
        /// Lowest.
        min: u16,
        /// Highest.
        max: u16,
    },
    /// Shard fields that do not make a shard.
    #[error("{0}")]
    Shard(#[from] ShardIdentityError),
    /// A token longer than the limit.
    #[error("token of {0} bytes: at most {TOKEN_BYTES_MAX}")]
    TokenLength(u64),
    /// A token with bytes outside printable ASCII.
    #[error("token is not printable ASCII")]
    TokenNotAscii,
    /// `request_lsn` 0.
    #[error("request_lsn 0 is not an LSN")]
    RequestLsnZero,
    /// `RequestLsn::At` given the wire's "latest" value.
    #[error("request_lsn FFFFFFFF/FFFFFFFF is latest, not an LSN")]
    RequestLsnLatest,
    /// `not_modified_since` at the wire's "latest" value.
    #[error("not_modified_since FFFFFFFF/FFFFFFFF is not an LSN")]
    NotModifiedSinceLatest,
    /// `not_modified_since` above `request_lsn`.
    #[error("not_modified_since {not_modified_since} is above request_lsn {request_lsn}")]
    NotModifiedSinceAfterRequest {
        /// The read's LSN.
        request_lsn: Lsn,
        /// The promise, above it.
        not_modified_since: Lsn,
    },
    /// A fork number above 3.
    #[error("fork {0}: expected 0 to 3")]
    Fork(u8),
    /// An SLRU number above 2.
    #[error("SLRU {0}: expected 0 (pg_xact), 1 (multixact offsets) or 2 (multixact members)")]
    Slru(u8),
    /// Block `0xFFFFFFFF`.
    #[error("block 4294967295 is InvalidBlockNumber")]
    InvalidBlock,
    /// A `GetPages` count of 0 or above the maximum.
    #[error("GetPages of {0} blocks: expected 1 to {BLOCKS_PER_REQUEST_MAX}")]
    BlockCount(u32),
    /// A `GetPages` range past `MaxBlockNumber`.
    #[error("GetPages of {count} blocks from {first} goes past block 4294967294")]
    BlockRange {
        /// First block.
        first: BlockNo,
        /// Count.
        count: u32,
    },
    /// An answer served at 0 or at "latest".
    #[error("served LSN {0:#X} is not a position")]
    ServedLsn(u64),
    /// A page count an answer cannot have.
    #[error("{message} answer with {count} pages: expected {min} to {max}")]
    PageCount {
        /// The answer.
        message: &'static str,
        /// Its count.
        count: u64,
        /// Fewest allowed.
        min: u32,
        /// Most allowed.
        max: u32,
    },
    /// Page bytes that are not whole pages (encoding only).
    #[error("{message} pages of {bytes} bytes: not whole 8192-byte pages")]
    PageBytes {
        /// The answer.
        message: &'static str,
        /// Bytes given.
        bytes: u64,
    },
    /// An `Exists` byte other than 0 or 1.
    #[error("exists byte {0}: expected 0 or 1")]
    ExistsByte(u8),
    /// A `HelloOk` field out of its range.
    #[error("HelloOk {field} {value}: expected {min} to {max}")]
    Limit {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u32,
        /// Lowest allowed.
        min: u32,
        /// Highest allowed.
        max: u32,
    },
    /// An error code this version does not define.
    #[error("error code {0} is not defined")]
    ErrorCode(u16),
    /// Error flags other than bit 0.
    #[error("error flags {0:#04X}: only bit 0 is defined")]
    ErrorFlags(u8),
    /// Details an error code does not define.
    #[error("error code {code} with details {detail1:#X}, {detail2:#X} it does not define")]
    ErrorDetail {
        /// The code.
        code: u16,
        /// First detail.
        detail1: u64,
        /// Second detail.
        detail2: u64,
    },
    /// An error message longer than the limit.
    #[error("error message of {0} bytes: at most {ERROR_MESSAGE_BYTES_MAX}")]
    MessageLength(u64),
    /// An error message that is not UTF-8.
    #[error("error message is not UTF-8")]
    MessageNotUtf8,
    /// A page-reply prefix asked for a kind that carries no pages.
    #[error("kind 0x{0:02X} does not carry pages")]
    NotAPageReply(u8),
}
