//! Client frames: `Hello` and the requests, encoded and decoded
//! (docs/protocol/page-service.md, "Handshake" and "Requests").

use quire_postgres::types::BlockNo;

use super::codec::{
    LSNS, REL, Reader, Writer, check_block, check_range, check_token, check_versions, in_frame,
    open, slru_from_u8, write_frame,
};
use super::frame::Direction;
use super::{
    BodyError, ClientFrame, ClientMessage, FrameError, HELLO_FIXED_BYTES, Hello, MAGIC, Request,
    TOKEN_BYTES_MAX, kind,
};
use crate::id::{ShardIdentity, TenantId, TimelineId};

impl ClientFrame {
    /// Appends the frame's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), BodyError> {
        write_frame(out, self.kind(), self.request_id, |w| match &self.message {
            ClientMessage::Hello(hello) => encode_hello(w, hello),
            ClientMessage::Request(request) => encode_request(w, request),
        })
    }

    /// The frame's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Decodes exactly one whole frame.
    pub fn decode(frame: &[u8]) -> Result<ClientFrame, FrameError> {
        let (header, body) = open(frame, Direction::ToServer)?;
        let message = in_frame(header, decode_client_body(header.kind, body))?;
        Ok(ClientFrame {
            request_id: header.request_id,
            message,
        })
    }
}

fn encode_hello(w: &mut Writer<'_>, hello: &Hello) -> Result<(), BodyError> {
    check_versions(hello.version_min, hello.version_max)?;
    check_token(hello.token.as_bytes())?;
    w.bytes(&MAGIC);
    w.u16(hello.version_min);
    w.u16(hello.version_max);
    w.bytes(hello.tenant.as_bytes());
    w.bytes(hello.timeline.as_bytes());
    w.u32(hello.shard.number());
    w.u32(hello.shard.count());
    w.u32(hello.shard.stripe_blocks());
    w.u32(u32::try_from(hello.token.len()).unwrap_or(u32::MAX));
    w.bytes(hello.token.as_bytes());
    Ok(())
}

fn encode_request(w: &mut Writer<'_>, request: &Request) -> Result<(), BodyError> {
    w.read_lsn(request.read_lsn());
    match *request {
        Request::GetPage { rel, block, .. } => {
            check_block(block)?;
            w.rel(rel);
            w.u32(block.0);
        }
        Request::GetPages {
            rel,
            first_block,
            count,
            ..
        } => {
            check_range(first_block, count)?;
            w.rel(rel);
            w.u32(first_block.0);
            w.u32(count);
        }
        Request::Nblocks { rel, .. } | Request::Exists { rel, .. } => w.rel(rel),
        Request::DbSize { db_oid, .. } => w.u32(db_oid),
        Request::SlruSegment { slru, segment, .. } => {
            w.u8(slru as u8);
            w.zeros(3);
            w.u32(segment);
        }
    }
    Ok(())
}

fn decode_client_body(kind: u8, body: &[u8]) -> Result<ClientMessage, BodyError> {
    let message = match kind {
        kind::HELLO => return decode_hello(body).map(ClientMessage::Hello),
        kind::GET_PAGE => "GetPage",
        kind::GET_PAGES => "GetPages",
        kind::NBLOCKS => "Nblocks",
        kind::EXISTS => "Exists",
        kind::DB_SIZE => "DbSize",
        kind::SLRU_SEGMENT => "SlruSegment",
        _ => return Err(BodyError::UnknownKind),
    };
    let mut r = Reader::new(body, message);
    r.expect_len(match kind {
        kind::GET_PAGE => LSNS + REL + 4,
        kind::GET_PAGES => LSNS + REL + 8,
        kind::NBLOCKS | kind::EXISTS => LSNS + REL,
        kind::DB_SIZE => LSNS + 4,
        _ => LSNS + 8,
    })?;
    let lsn = r.read_lsn()?;
    let request = match kind {
        kind::GET_PAGE => Request::GetPage {
            lsn,
            rel: r.rel()?,
            block: r.block()?,
        },
        kind::GET_PAGES => {
            let rel = r.rel()?;
            let first_block = BlockNo(r.u32()?);
            let count = r.u32()?;
            check_range(first_block, count)?;
            Request::GetPages {
                lsn,
                rel,
                first_block,
                count,
            }
        }
        kind::NBLOCKS => Request::Nblocks { lsn, rel: r.rel()? },
        kind::EXISTS => Request::Exists { lsn, rel: r.rel()? },
        kind::DB_SIZE => Request::DbSize {
            lsn,
            db_oid: r.u32()?,
        },
        _ => {
            let slru = slru_from_u8(r.u8()?)?;
            r.reserved(3)?;
            Request::SlruSegment {
                lsn,
                slru,
                segment: r.u32()?,
            }
        }
    };
    Ok(ClientMessage::Request(request))
}

fn decode_hello(body: &[u8]) -> Result<Hello, BodyError> {
    let mut r = Reader::new(body, "Hello");
    r.expect_at_least(u64::from(HELLO_FIXED_BYTES))?;
    let magic = r.array::<4>()?;
    if magic != MAGIC {
        return Err(BodyError::Magic(magic));
    }
    let version_min = r.u16()?;
    let version_max = r.u16()?;
    check_versions(version_min, version_max)?;
    let tenant = TenantId(r.array()?);
    let timeline = TimelineId(r.array()?);
    let number = r.u32()?;
    let count = r.u32()?;
    let stripe = r.u32()?;
    let shard = ShardIdentity::new(number, count, stripe)?;
    let token_length = r.u32()?;
    if token_length > TOKEN_BYTES_MAX {
        return Err(BodyError::TokenLength(u64::from(token_length)));
    }
    r.expect_len(u64::from(HELLO_FIXED_BYTES) + u64::from(token_length))?;
    let token = r.rest();
    check_token(token)?;
    // Visible ASCII is UTF-8.
    let token = String::from_utf8(token.to_vec()).map_err(|_| BodyError::TokenNotAscii)?;
    Ok(Hello {
        version_min,
        version_max,
        tenant,
        timeline,
        shard,
        token,
    })
}
