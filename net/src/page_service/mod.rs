//! The page service's connection side (docs/protocol/page-service.md): the
//! handshake read on whichever core accepted the connection, then, on the
//! core owning the shard, pipelined requests answered in order.
//!
//! - [`handshake`]: reading the `Hello` within the handshake timeout, and
//!   the checks every core can make alone (version, token); the owner makes
//!   the rest (tenant, timeline, shard) and sends `HelloOk` or the error.
//! - [`connection`]: the request loop. What one read of the socket brings
//!   is decoded (at most `pipeline_depth` frames ahead), consecutive page
//!   reads among it go to the session as one batch (one vectored lookup,
//!   one redo round trip), and every answer of the round goes out in one
//!   write, in request order.
//! - [`transport`]: the two stream kinds it runs on (TCP, Unix), as one
//!   trait.
//!
//! What a server does with a request is its [`PageSession`]: this module
//! knows frames and limits, never timelines.

pub mod connection;
pub mod handshake;
pub mod transport;

use std::future::Future;
use std::time::Duration;

use quire_postgres::Lsn;
use quire_postgres::key::SlruKind;
use quire_postgres::types::{BlockNo, Oid, RelTag};

use crate::page_protocol::{PIPELINE_DEPTH_DEFAULT, ReadLsn, ServiceError};

pub use connection::serve;
pub use handshake::{Handshake, HandshakeError, check_version, read_hello};
pub use transport::Transport;

/// What bounds a connection: how far it reads ahead and how long it waits.
#[derive(Clone, Copy, Debug)]
pub struct ServiceLimits {
    /// Requests decoded ahead of the one being answered (1 to
    /// [`crate::page_protocol::PIPELINE_DEPTH_MAX`]).
    pub pipeline_depth: u32,
    /// How long a request may wait for WAL up to its `not_modified_since`.
    pub lsn_wait: Duration,
    /// How long the `Hello` may take to arrive whole.
    pub handshake_timeout: Duration,
    /// How long a frame, once begun, may take to arrive whole.
    pub frame_timeout: Duration,
    /// How long a connection may sit without a request (`None`: forever; a
    /// compute's backends keep idle connections for their lives).
    pub idle_timeout: Option<Duration>,
    /// How long one round of answers may take to be written.
    pub write_timeout: Duration,
}

impl Default for ServiceLimits {
    /// Depth 128, WAL wait 10 s, handshake and frame 10 s, no idle limit,
    /// writes 30 s.
    fn default() -> ServiceLimits {
        ServiceLimits {
            pipeline_depth: PIPELINE_DEPTH_DEFAULT,
            lsn_wait: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            frame_timeout: Duration::from_secs(10),
            idle_timeout: None,
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// One page-bearing read of a batch: `count` blocks from `first_block`
/// (a `GetPage` is a read of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRead {
    /// The LSNs of the read.
    pub lsn: ReadLsn,
    /// The fork.
    pub rel: RelTag,
    /// The first block.
    pub first_block: BlockNo,
    /// Blocks, at least 1.
    pub count: u32,
}

/// A request's failure, as its `Error` answer will say it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// The code and details.
    pub error: ServiceError,
    /// For people: what, which tenant, relation, block.
    pub message: String,
}

impl RequestError {
    /// A failure with its message.
    pub fn new(error: ServiceError, message: impl Into<String>) -> RequestError {
        RequestError {
            error,
            message: message.into(),
        }
    }
}

/// What serves a connection's requests, after the handshake bound it to a
/// timeline. Runs on the connection's core; its futures need not be `Send`.
pub trait PageSession {
    /// Reads every read of the batch: `pages[i]` is `reads[i].count` pages
    /// (8192 bytes each) to fill. Returns, per read, the LSN it was served
    /// at or its failure; a failed read's bytes are ignored.
    fn read_pages(
        &self,
        reads: &[PageRead],
        pages: &mut [&mut [u8]],
    ) -> impl Future<Output = Vec<Result<Lsn, RequestError>>>;

    /// A fork's size in blocks.
    fn nblocks(
        &self,
        lsn: ReadLsn,
        rel: RelTag,
    ) -> impl Future<Output = Result<(Lsn, u32), RequestError>>;

    /// Whether a fork exists.
    fn exists(
        &self,
        lsn: ReadLsn,
        rel: RelTag,
    ) -> impl Future<Output = Result<(Lsn, bool), RequestError>>;

    /// A database's size in bytes.
    fn db_size(
        &self,
        lsn: ReadLsn,
        db_oid: Oid,
    ) -> impl Future<Output = Result<(Lsn, u64), RequestError>>;

    /// Appends every page of an SLRU segment to `pages` (at most 32);
    /// returns the LSN and the number of pages.
    fn slru_segment(
        &self,
        lsn: ReadLsn,
        slru: SlruKind,
        segment: u32,
        pages: &mut Vec<u8>,
    ) -> impl Future<Output = Result<(Lsn, u32), RequestError>>;

    /// Whether the server is stopping (or the shard moving away): the
    /// connection answers what it has read with `ShuttingDown` and closes.
    fn stopping(&self) -> bool {
        false
    }

    /// Called for every `Error` the connection loop answers by itself (a
    /// frame that breaks the spec or comes out of turn, a request while
    /// stopping), so the server can count it with the session's own
    /// failures.
    fn frame_refused(&self, _error: ServiceError) {}
}
