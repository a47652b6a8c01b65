//! The page protocol between a compute and the pageserver, as a pure codec:
//! bytes in, messages out and back, no I/O, no clock.
//! `docs/protocol/page-service.md` is the spec; every layout and limit here
//! is the one it states.
//!
//! This module owns the message set, the protocol's constants and the
//! rules a message must keep ([`ReadLsn`] is built only valid). `requests`
//! and `responses` turn each direction's frames into bytes and back, on the
//! fields and checks of `codec`; `frame` reads frame headers and splits
//! whole frames off a byte stream ([`FrameDecoder`]); `error` names what a
//! frame got wrong. The page service (sockets, shards, waiting for WAL)
//! lives elsewhere and only calls into this.

mod codec;
mod error;
mod frame;
mod requests;
mod responses;
#[cfg(test)]
mod tests;

use quire_postgres::Lsn;
use quire_postgres::key::SlruKind;
use quire_postgres::types::{BLCKSZ, BlockNo, Oid, RelTag};

pub use error::{BodyError, FrameError};
pub use frame::{Direction, Frame, FrameDecoder, FrameHeader};
pub use responses::encode_page_reply_prefix;

use crate::id::{ShardIdentity, TenantId, TimelineId};

/// The first four bytes of a `Hello` body.
pub const MAGIC: [u8; 4] = *b"QPGS";
/// The lowest protocol version this codec speaks.
pub const VERSION_MIN: u16 = 1;
/// The highest protocol version this codec speaks.
pub const VERSION_MAX: u16 = 1;

/// Bytes of a frame header: `length: u32`, `kind: u8`, 3 reserved,
/// `request_id: u64`.
pub const FRAME_HEADER_BYTES: u32 = 16;
/// Bytes of a `Hello` body before its token.
pub const HELLO_FIXED_BYTES: u32 = 56;
/// The longest token a `Hello` carries (what `token` accepts).
pub const TOKEN_BYTES_MAX: u32 = 4096;
/// The longest message an `Error` carries.
pub const ERROR_MESSAGE_BYTES_MAX: u32 = 1024;
/// The most blocks one `GetPages` reads: Postgres 17's `io_combine_limit`
/// ceiling (`PG_IOV_MAX`), the most one `smgrreadv` asks for.
pub const BLOCKS_PER_REQUEST_MAX: u32 = 32;
/// Pages in one SLRU segment (`SLRU_PAGES_PER_SEGMENT`).
pub const SLRU_PAGES_PER_SEGMENT: u32 = 32;
/// The most requests a server may read ahead on one connection.
pub const PIPELINE_DEPTH_MAX: u32 = 1024;
/// The read-ahead a server offers unless configured otherwise.
pub const PIPELINE_DEPTH_DEFAULT: u32 = 128;
/// The largest frame a client sends: a `Hello` with the longest token.
pub const REQUEST_FRAME_BYTES_MAX: u32 = FRAME_HEADER_BYTES + HELLO_FIXED_BYTES + TOKEN_BYTES_MAX;
/// The largest frame a server sends: 32 pages after 32 bytes of header and
/// fields (a full `GetPages` or a whole SLRU segment).
pub const RESPONSE_FRAME_BYTES_MAX: u32 =
    FRAME_HEADER_BYTES + 16 + BLOCKS_PER_REQUEST_MAX * PAGE_BYTES;
/// The smallest `frame_bytes_max` a server may announce: one `GetPage` answer.
pub const RESPONSE_FRAME_BYTES_MIN: u32 = FRAME_HEADER_BYTES + 8 + PAGE_BYTES;
/// A page, as a `u32` for frame arithmetic.
pub const PAGE_BYTES: u32 = 8192;
/// `request_lsn` on the wire for "latest".
pub const LATEST_LSN_WIRE: u64 = u64::MAX;

const _: () = assert!(PAGE_BYTES as usize == BLCKSZ);
const _: () = assert!(REQUEST_FRAME_BYTES_MAX == 4168);
const _: () = assert!(RESPONSE_FRAME_BYTES_MAX == 262_176);

/// Kind bytes. A response's kind is its request's with [`kind::RESPONSE`]
/// set; [`kind::ERROR`] answers any request.
pub mod kind {
    /// `Hello`, the handshake.
    pub const HELLO: u8 = 0x01;
    /// `GetPage`: one block.
    pub const GET_PAGE: u8 = 0x02;
    /// `GetPages`: up to 32 consecutive blocks of one fork.
    pub const GET_PAGES: u8 = 0x03;
    /// `Nblocks`: a fork's size.
    pub const NBLOCKS: u8 = 0x04;
    /// `Exists`: whether a fork exists.
    pub const EXISTS: u8 = 0x05;
    /// `DbSize`: a database's size in bytes.
    pub const DB_SIZE: u8 = 0x06;
    /// `SlruSegment`: every page of an SLRU segment.
    pub const SLRU_SEGMENT: u8 = 0x07;
    /// The bit that makes a request kind its response kind.
    pub const RESPONSE: u8 = 0x80;
    /// `HelloOk`.
    pub const HELLO_OK: u8 = HELLO | RESPONSE;
    /// The `GetPage` answer.
    pub const GET_PAGE_OK: u8 = GET_PAGE | RESPONSE;
    /// The `GetPages` answer.
    pub const GET_PAGES_OK: u8 = GET_PAGES | RESPONSE;
    /// The `Nblocks` answer.
    pub const NBLOCKS_OK: u8 = NBLOCKS | RESPONSE;
    /// The `Exists` answer.
    pub const EXISTS_OK: u8 = EXISTS | RESPONSE;
    /// The `DbSize` answer.
    pub const DB_SIZE_OK: u8 = DB_SIZE | RESPONSE;
    /// The `SlruSegment` answer.
    pub const SLRU_SEGMENT_OK: u8 = SLRU_SEGMENT | RESPONSE;
    /// `Error`, answering any request.
    pub const ERROR: u8 = 0xFF;
}

/// The LSN a read asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestLsn {
    /// The newest the server has ingested (a primary's reads).
    Latest,
    /// This LSN (a standby's replay LSN, a historical read).
    At(Lsn),
}

/// The two LSNs of every request: what to read at, and since when the
/// compute has not changed what it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReadLsn {
    // Invariant: request is Latest or At(l) with 0 < l < LATEST_LSN_WIRE;
    // not_modified_since < LATEST_LSN_WIRE and, with At(l), at most l.
    request: RequestLsn,
    not_modified_since: Lsn,
}

impl ReadLsn {
    /// A read at `request`, of data the compute last changed at or before
    /// `not_modified_since`.
    pub fn new(request: RequestLsn, not_modified_since: Lsn) -> Result<ReadLsn, BodyError> {
        if not_modified_since.0 == LATEST_LSN_WIRE {
            return Err(BodyError::NotModifiedSinceLatest);
        }
        if let RequestLsn::At(lsn) = request {
            if lsn.0 == 0 {
                return Err(BodyError::RequestLsnZero);
            }
            if lsn.0 == LATEST_LSN_WIRE {
                return Err(BodyError::RequestLsnLatest);
            }
            if not_modified_since > lsn {
                return Err(BodyError::NotModifiedSinceAfterRequest {
                    request_lsn: lsn,
                    not_modified_since,
                });
            }
        }
        Ok(ReadLsn {
            request,
            not_modified_since,
        })
    }

    /// A primary's read: the latest page, changed by it last at
    /// `not_modified_since`.
    pub fn latest(not_modified_since: Lsn) -> Result<ReadLsn, BodyError> {
        ReadLsn::new(RequestLsn::Latest, not_modified_since)
    }

    /// What to read at.
    pub fn request(self) -> RequestLsn {
        self.request
    }

    /// The compute did not change what it reads after this LSN.
    pub fn not_modified_since(self) -> Lsn {
        self.not_modified_since
    }

    /// The LSN a server that has ingested up to `last_ingested` serves at
    /// (`min(request, last_ingested)`), or `None` while it has not yet
    /// ingested `not_modified_since` and must wait.
    pub fn served_at(self, last_ingested: Lsn) -> Option<Lsn> {
        if last_ingested < self.not_modified_since {
            return None;
        }
        Some(match self.request {
            RequestLsn::Latest => last_ingested,
            RequestLsn::At(lsn) => lsn.min(last_ingested),
        })
    }
}

/// The handshake a client opens a connection with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The lowest version the client speaks.
    pub version_min: u16,
    /// The highest version the client speaks.
    pub version_max: u16,
    /// The tenant.
    pub tenant: TenantId,
    /// The timeline.
    pub timeline: TimelineId,
    /// Which shard of the tenant, with the tenant's count and stripe.
    pub shard: ShardIdentity,
    /// A signed token (`crate::token`), or empty when the server takes none.
    pub token: String,
}

/// The server's acceptance of a `Hello`, with its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloOk {
    /// The version chosen for the connection.
    pub version: u16,
    /// The largest frame the server sends.
    pub frame_bytes_max: u32,
    /// Requests the server reads ahead.
    pub pipeline_depth: u32,
    /// The most blocks it takes in one `GetPages`.
    pub blocks_per_request_max: u32,
    /// How long it waits for WAL a request needs.
    pub lsn_wait_ms: u32,
}

/// A read a client asks for, after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// One block of a relation fork.
    GetPage {
        /// The LSNs of the read.
        lsn: ReadLsn,
        /// The fork.
        rel: RelTag,
        /// The block (never `InvalidBlockNumber`).
        block: BlockNo,
    },
    /// `count` consecutive blocks of one fork from `first_block`.
    GetPages {
        /// The LSNs of the read (`not_modified_since` the highest over the range).
        lsn: ReadLsn,
        /// The fork.
        rel: RelTag,
        /// The first block.
        first_block: BlockNo,
        /// Blocks, 1 to [`BLOCKS_PER_REQUEST_MAX`].
        count: u32,
    },
    /// A fork's size in blocks.
    Nblocks {
        /// The LSNs of the read.
        lsn: ReadLsn,
        /// The fork.
        rel: RelTag,
    },
    /// Whether a fork exists.
    Exists {
        /// The LSNs of the read.
        lsn: ReadLsn,
        /// The fork.
        rel: RelTag,
    },
    /// A database's size in bytes.
    DbSize {
        /// The LSNs of the read.
        lsn: ReadLsn,
        /// The database.
        db_oid: Oid,
    },
    /// Every page of one SLRU segment.
    SlruSegment {
        /// The LSNs of the read.
        lsn: ReadLsn,
        /// Which SLRU.
        slru: SlruKind,
        /// The segment number.
        segment: u32,
    },
}

impl Request {
    /// The request's kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Request::GetPage { .. } => kind::GET_PAGE,
            Request::GetPages { .. } => kind::GET_PAGES,
            Request::Nblocks { .. } => kind::NBLOCKS,
            Request::Exists { .. } => kind::EXISTS,
            Request::DbSize { .. } => kind::DB_SIZE,
            Request::SlruSegment { .. } => kind::SLRU_SEGMENT,
        }
    }

    /// The request's LSNs.
    pub fn read_lsn(&self) -> ReadLsn {
        match self {
            Request::GetPage { lsn, .. }
            | Request::GetPages { lsn, .. }
            | Request::Nblocks { lsn, .. }
            | Request::Exists { lsn, .. }
            | Request::DbSize { lsn, .. }
            | Request::SlruSegment { lsn, .. } => *lsn,
        }
    }
}

/// What a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMessage {
    /// The handshake, first and once.
    Hello(Hello),
    /// A read.
    Request(Request),
}

/// One client frame: a message and the id the answer will echo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFrame {
    /// Chosen by the client.
    pub request_id: u64,
    /// The message.
    pub message: ClientMessage,
}

impl ClientFrame {
    /// The frame's kind byte.
    pub fn kind(&self) -> u8 {
        match &self.message {
            ClientMessage::Hello(_) => kind::HELLO,
            ClientMessage::Request(request) => request.kind(),
        }
    }
}

/// A successful answer to a request. `lsn` is the LSN it was served at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The page.
    GetPage {
        /// Served at.
        lsn: Lsn,
        /// The page image.
        page: Box<[u8; BLCKSZ]>,
    },
    /// The pages, back to back in block order.
    GetPages {
        /// Served at.
        lsn: Lsn,
        /// 1 to 32 whole pages.
        pages: Vec<u8>,
    },
    /// The fork's size.
    Nblocks {
        /// Served at.
        lsn: Lsn,
        /// Blocks.
        nblocks: u32,
    },
    /// Whether the fork exists.
    Exists {
        /// Served at.
        lsn: Lsn,
        /// Whether it does.
        exists: bool,
    },
    /// The database's size.
    DbSize {
        /// Served at.
        lsn: Lsn,
        /// Bytes of all its relation forks.
        size_bytes: u64,
    },
    /// The segment's pages, in order.
    SlruSegment {
        /// Served at.
        lsn: Lsn,
        /// 0 to 32 whole pages.
        pages: Vec<u8>,
    },
}

impl Response {
    /// The response's kind byte.
    pub fn kind(&self) -> u8 {
        match self {
            Response::GetPage { .. } => kind::GET_PAGE_OK,
            Response::GetPages { .. } => kind::GET_PAGES_OK,
            Response::Nblocks { .. } => kind::NBLOCKS_OK,
            Response::Exists { .. } => kind::EXISTS_OK,
            Response::DbSize { .. } => kind::DB_SIZE_OK,
            Response::SlruSegment { .. } => kind::SLRU_SEGMENT_OK,
        }
    }
}

/// What went wrong with a handshake or a request, with what a program acts
/// on. The codes are the spec's error table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The frame breaks the spec, or came out of turn.
    #[error("bad request")]
    BadRequest,
    /// No version in common; the server speaks `min..=max`.
    #[error("unsupported protocol version: the server speaks {min} to {max}")]
    UnsupportedVersion {
        /// The server's lowest version.
        min: u16,
        /// The server's highest version.
        max: u16,
    },
    /// The token is missing, malformed, does not verify or has expired.
    #[error("unauthenticated")]
    Unauthenticated,
    /// The token does not allow this tenant or scope.
    #[error("forbidden")]
    Forbidden,
    /// No such tenant here.
    #[error("unknown tenant")]
    UnknownTenant,
    /// No such timeline in the tenant.
    #[error("unknown timeline")]
    UnknownTimeline,
    /// This server does not hold the shard (or its count or stripe differ).
    #[error("shard not here")]
    ShardNotHere,
    /// The key belongs to shard `owner`; `block` is the first block not
    /// owned, `None` for a non-block request.
    #[error("wrong shard: owned by shard {owner}")]
    WrongShard {
        /// The owning shard's number.
        owner: u32,
        /// The first block not owned.
        block: Option<BlockNo>,
    },
    /// No such relation fork, block, database or segment at the LSN.
    #[error("not found")]
    NotFound,
    /// The read is below what the timeline keeps.
    #[error("LSN {requested} is below the GC cutoff {cutoff}")]
    LsnBelowGcCutoff {
        /// The LSN asked for.
        requested: Lsn,
        /// The earliest the timeline serves.
        cutoff: Lsn,
    },
    /// `not_modified_since` was not ingested within the wait limit.
    #[error("WAL up to {waited_for} not ingested in time (ingested up to {last_ingested})")]
    WalNotIngested {
        /// The LSN waited for.
        waited_for: Lsn,
        /// The last LSN ingested.
        last_ingested: Lsn,
    },
    /// Stored data failed a check.
    #[error("corrupt data")]
    Corrupt,
    /// Replaying the page's WAL failed.
    #[error("redo failed")]
    RedoFailed,
    /// Too many connections or queued requests; `retry_after_ms` suggests a
    /// wait (0: none).
    #[error("overloaded (retry after {retry_after_ms} ms)")]
    Overloaded {
        /// The suggested wait.
        retry_after_ms: u32,
    },
    /// The server is stopping or the shard moves away: reconnect.
    #[error("shutting down")]
    ShuttingDown,
    /// Anything else (an I/O error).
    #[error("internal error")]
    Internal,
}

/// The answer to a request or handshake that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorResponse {
    /// The kind byte of the request answered, as it was received.
    pub request_kind: u8,
    /// Whether the server closes the connection after this frame.
    pub closes: bool,
    /// What went wrong.
    pub error: ServiceError,
    /// For people: at most [`ERROR_MESSAGE_BYTES_MAX`] bytes of UTF-8.
    pub message: String,
}

impl ErrorResponse {
    /// The answer to a request of kind `request_kind` that failed with
    /// `error`; `message` is cut to [`ERROR_MESSAGE_BYTES_MAX`] bytes (at a
    /// character boundary). It closes the connection when the spec says so
    /// by default: an answer to `Hello`, and `ShuttingDown`.
    pub fn new(request_kind: u8, error: ServiceError, message: &str) -> ErrorResponse {
        let mut end = message.len().min(ERROR_MESSAGE_BYTES_MAX as usize);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        ErrorResponse {
            request_kind,
            closes: request_kind == kind::HELLO || error == ServiceError::ShuttingDown,
            error,
            message: message.get(..end).unwrap_or_default().to_owned(),
        }
    }

    /// The same answer, closing the connection.
    #[must_use]
    pub fn closing(mut self) -> ErrorResponse {
        self.closes = true;
        self
    }
}

/// What a server sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerMessage {
    /// The handshake was accepted.
    HelloOk(HelloOk),
    /// A request's answer.
    Response(Response),
    /// A handshake's or request's failure.
    Error(ErrorResponse),
}

/// One server frame: a message and the id of the request it answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFrame {
    /// The answered request's id.
    pub request_id: u64,
    /// The message.
    pub message: ServerMessage,
}

impl ServerFrame {
    /// The frame's kind byte.
    pub fn kind(&self) -> u8 {
        match &self.message {
            ServerMessage::HelloOk(_) => kind::HELLO_OK,
            ServerMessage::Response(response) => response.kind(),
            ServerMessage::Error(_) => kind::ERROR,
        }
    }

    /// Whether this frame can be the answer to `request`: the same id, the
    /// request's kind (or an error naming it), and for `GetPages` as many
    /// pages as were asked for. A client checks each answer with it against
    /// the request at the head of its queue.
    pub fn answers(&self, request: &ClientFrame) -> bool {
        if self.request_id != request.request_id {
            return false;
        }
        match (&self.message, &request.message) {
            (ServerMessage::Error(error), _) => error.request_kind == request.kind(),
            (
                ServerMessage::Response(Response::GetPages { pages, .. }),
                ClientMessage::Request(Request::GetPages { count, .. }),
            ) => pages.len() as u64 == u64::from(*count) * u64::from(PAGE_BYTES),
            _ => self.kind() == request.kind() | kind::RESPONSE,
        }
    }
}
