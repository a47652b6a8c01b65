//! Sample messages of every kind, with the edges of their fields: what the
//! round trips, the refusals (as valid frames to break) and the fuzz seeds
//! start from.

use super::*;

pub(super) fn rel(fork: ForkNumber) -> RelTag {
    RelTag {
        spc_oid: 1663,
        db_oid: 16_384,
        rel_number: 24_576,
        fork,
    }
}

pub(super) fn latest(nms: u64) -> ReadLsn {
    ReadLsn::latest(Lsn(nms)).unwrap()
}

pub(super) fn at(lsn: u64, nms: u64) -> ReadLsn {
    ReadLsn::new(RequestLsn::At(Lsn(lsn)), Lsn(nms)).unwrap()
}

/// A page whose bytes say which page it is, mostly zeros (so seeds stay
/// small in git).
pub(super) fn page(n: u8) -> [u8; BLCKSZ] {
    let mut page = [0u8; BLCKSZ];
    page[0] = n;
    page[8] = 0xA5;
    page[BLCKSZ - 1] = n ^ 0xFF;
    page
}

pub(super) fn pages(count: u8) -> Vec<u8> {
    (0..count).flat_map(page).collect()
}

pub(super) fn hello(token: &str) -> Hello {
    Hello {
        version_min: 1,
        version_max: 1,
        tenant: "00112233445566778899aabbccddeeff".parse().unwrap(),
        timeline: TimelineId([0x42; 16]),
        shard: ShardIdentity::new(1, 4, 2048).unwrap(),
        token: token.to_owned(),
    }
}

pub(super) fn hello_frame(request_id: u64, hello: Hello) -> ClientFrame {
    ClientFrame {
        request_id,
        message: ClientMessage::Hello(hello),
    }
}

pub(super) fn client(request_id: u64, request: Request) -> ClientFrame {
    ClientFrame {
        request_id,
        message: ClientMessage::Request(request),
    }
}

pub(super) fn get_page(lsn: ReadLsn, fork: ForkNumber, block: u32) -> Request {
    Request::GetPage {
        lsn,
        rel: rel(fork),
        block: BlockNo(block),
    }
}

pub(super) fn get_pages(lsn: ReadLsn, fork: ForkNumber, first: u32, count: u32) -> Request {
    Request::GetPages {
        lsn,
        rel: rel(fork),
        first_block: BlockNo(first),
        count,
    }
}

pub(super) fn slru(lsn: ReadLsn, slru: SlruKind, segment: u32) -> Request {
    Request::SlruSegment { lsn, slru, segment }
}

pub(super) fn server(request_id: u64, response: Response) -> ServerFrame {
    ServerFrame {
        request_id,
        message: ServerMessage::Response(response),
    }
}

pub(super) fn error_frame(
    request_id: u64,
    request_kind: u8,
    error: ServiceError,
    message: &str,
) -> ServerFrame {
    ServerFrame {
        request_id,
        message: ServerMessage::Error(ErrorResponse::new(request_kind, error, message)),
    }
}

pub(super) fn pages_ok(lsn: u64, count: u8) -> Response {
    Response::GetPages {
        lsn: Lsn(lsn),
        pages: pages(count),
    }
}

pub(super) fn slru_ok(lsn: u64, count: u8) -> Response {
    Response::SlruSegment {
        lsn: Lsn(lsn),
        pages: pages(count),
    }
}

pub(super) fn page_ok(lsn: u64, n: u8) -> Response {
    Response::GetPage {
        lsn: Lsn(lsn),
        page: Box::new(page(n)),
    }
}

/// Every client message.
pub(super) fn sample_client_frames() -> Vec<(&'static str, ClientFrame)> {
    use ForkNumber::{Fsm, Init, Main, VisibilityMap};
    let jwt = "eyJhbGciOiJFZERTQSJ9.eyJzY29wZSI6ImNvbXB1dGUifQ.c2lnbmF0dXJl";
    let unsharded = Hello {
        version_min: 1,
        version_max: 7,
        shard: ShardIdentity::unsharded(),
        tenant: TenantId::default(),
        ..hello("")
    };
    let longest = hello(&"t".repeat(TOKEN_BYTES_MAX as usize));
    let max = BlockNo::MAX.0;
    let nblocks = Request::Nblocks {
        lsn: latest(0x100),
        rel: rel(Fsm),
    };
    let exists = Request::Exists {
        lsn: at(0x200, 0x100),
        rel: rel(Main),
    };
    let db_size = Request::DbSize {
        lsn: latest(0x300),
        db_oid: 5,
    };
    vec![
        ("hello", hello_frame(0, hello(jwt))),
        ("hello-no-token", hello_frame(0, unsharded)),
        ("hello-longest-token", hello_frame(u64::MAX, longest)),
        (
            "get-page",
            client(1, get_page(latest(0x1_6B37_4D48), Main, 7)),
        ),
        (
            "get-page-at",
            client(2, get_page(at(0x2_0028, 0x2_0028), VisibilityMap, max)),
        ),
        ("get-pages", client(3, get_pages(latest(0), Main, 64, 16))),
        (
            "get-pages-max",
            client(4, get_pages(at(u64::MAX - 1, 1), Init, max - 31, 32)),
        ),
        ("nblocks", client(5, nblocks)),
        ("exists", client(6, exists)),
        ("db-size", client(7, db_size)),
        (
            "slru-xact",
            client(8, slru(latest(0x400), SlruKind::Clog, 0)),
        ),
        (
            "slru-members",
            client(9, slru(at(0x500, 0), SlruKind::MultiXactMembers, u32::MAX)),
        ),
        (
            "slru-offsets",
            client(10, slru(latest(0x600), SlruKind::MultiXactOffsets, 3)),
        ),
    ]
}

/// Every server message, and an error of every code.
pub(super) fn sample_server_frames() -> Vec<(&'static str, ServerFrame)> {
    let ok = HelloOk {
        version: 1,
        frame_bytes_max: RESPONSE_FRAME_BYTES_MAX,
        pipeline_depth: PIPELINE_DEPTH_DEFAULT,
        blocks_per_request_max: BLOCKS_PER_REQUEST_MAX,
        lsn_wait_ms: 30_000,
    };
    let lsn = 0x1_6B37_4D48;
    let nblocks = Response::Nblocks {
        lsn: Lsn(lsn),
        nblocks: u32::MAX,
    };
    let exists = |lsn, exists| Response::Exists {
        lsn: Lsn(lsn),
        exists,
    };
    let db_size = Response::DbSize {
        lsn: Lsn(lsn),
        size_bytes: 8192 * 1000,
    };
    let mut frames = vec![
        (
            "hello-ok",
            ServerFrame {
                request_id: 0,
                message: ServerMessage::HelloOk(ok),
            },
        ),
        ("get-page-ok", server(1, page_ok(lsn, 1))),
        ("get-pages-ok", server(3, pages_ok(lsn, 2))),
        ("nblocks-ok", server(5, nblocks)),
        ("exists-ok", server(6, exists(0x200, true))),
        ("exists-not", server(6, exists(1, false))),
        ("db-size-ok", server(7, db_size)),
        ("slru-ok", server(8, slru_ok(u64::MAX - 1, 1))),
        ("slru-empty", server(9, slru_ok(lsn, 0))),
    ];
    let errors = sample_errors();
    for (i, (request_kind, error)) in (100..).zip(errors) {
        let message = format!("{error} (test {i}: tenant 0011…, block 7, ünïcödé)");
        frames.push(("error", error_frame(i, request_kind, error, &message)));
    }
    let long = "é".repeat(600);
    frames.push((
        "error-long",
        error_frame(200, kind::GET_PAGE, ServiceError::Corrupt, &long),
    ));
    let closing = ErrorResponse::new(kind::GET_PAGE, ServiceError::Internal, "").closing();
    frames.push((
        "error-empty",
        ServerFrame {
            request_id: 201,
            message: ServerMessage::Error(closing),
        },
    ));
    frames
}

/// The biggest answers: round-tripped, but too big for a fuzz seed.
pub(super) fn largest_server_frames() -> Vec<ServerFrame> {
    vec![
        server(11, pages_ok(0x77, 32)),
        server(12, slru_ok(0x77, 32)),
    ]
}

/// An error of every code, with the request kind it answers.
fn sample_errors() -> Vec<(u8, ServiceError)> {
    vec![
        (kind::GET_PAGE, ServiceError::BadRequest),
        (
            kind::HELLO,
            ServiceError::UnsupportedVersion { min: 1, max: 3 },
        ),
        (kind::HELLO, ServiceError::Unauthenticated),
        (kind::HELLO, ServiceError::Forbidden),
        (kind::HELLO, ServiceError::UnknownTenant),
        (kind::HELLO, ServiceError::UnknownTimeline),
        (kind::HELLO, ServiceError::ShardNotHere),
        (
            kind::GET_PAGES,
            ServiceError::WrongShard {
                owner: 3,
                block: Some(BlockNo(2048)),
            },
        ),
        (
            kind::NBLOCKS,
            ServiceError::WrongShard {
                owner: 0,
                block: None,
            },
        ),
        (kind::SLRU_SEGMENT, ServiceError::NotFound),
        (
            kind::GET_PAGE,
            ServiceError::LsnBelowGcCutoff {
                requested: Lsn(0x10),
                cutoff: Lsn(0x2000),
            },
        ),
        (
            kind::GET_PAGE,
            ServiceError::WalNotIngested {
                waited_for: Lsn(0x9000),
                last_ingested: Lsn(0x8000),
            },
        ),
        (kind::GET_PAGE, ServiceError::Corrupt),
        (kind::GET_PAGE, ServiceError::RedoFailed),
        (
            kind::GET_PAGE,
            ServiceError::Overloaded {
                retry_after_ms: u32::MAX,
            },
        ),
        (kind::EXISTS, ServiceError::ShuttingDown),
        (kind::DB_SIZE, ServiceError::Internal),
        (0x42, ServiceError::BadRequest),
    ]
}
