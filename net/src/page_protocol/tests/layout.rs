//! The bytes against the spec's tables: frame sizes per kind, one frame
//! field by field, page offsets, the page-reply prefix, and the encoder's
//! refusal of messages that break a rule (output left as it was).

use super::*;

fn client_frame_bytes(message: &ClientMessage) -> usize {
    match message {
        ClientMessage::Hello(hello) => 16 + 56 + hello.token.len(),
        ClientMessage::Request(Request::GetPage { .. }) => 52,
        ClientMessage::Request(Request::GetPages { .. }) => 56,
        ClientMessage::Request(Request::Nblocks { .. } | Request::Exists { .. }) => 48,
        ClientMessage::Request(Request::DbSize { .. }) => 36,
        ClientMessage::Request(Request::SlruSegment { .. }) => 40,
    }
}

fn server_frame_bytes(message: &ServerMessage) -> usize {
    match message {
        ServerMessage::HelloOk(_) => 36,
        ServerMessage::Response(Response::GetPage { .. }) => 8216,
        ServerMessage::Response(
            Response::GetPages { pages, .. } | Response::SlruSegment { pages, .. },
        ) => 32 + pages.len(),
        ServerMessage::Response(Response::Nblocks { .. }) => 28,
        ServerMessage::Response(Response::Exists { .. }) => 25,
        ServerMessage::Response(Response::DbSize { .. }) => 32,
        ServerMessage::Error(error) => 40 + error.message.len(),
    }
}

#[test]
fn frame_sizes_are_the_kind_tables() {
    for (name, frame) in sample_client_frames() {
        let bytes = frame.to_bytes().unwrap();
        assert_eq!(bytes.len(), client_frame_bytes(&frame.message), "{name}");
    }
    for (name, frame) in sample_server_frames() {
        let bytes = frame.to_bytes().unwrap();
        assert_eq!(bytes.len(), server_frame_bytes(&frame.message), "{name}");
    }
}

#[test]
fn a_get_page_is_its_field_table_byte_by_byte() {
    let request = get_page(
        at(0x1122_3344_5566_7788, 0x10),
        ForkNumber::Fsm,
        0xA1B2_C3D4,
    );
    let bytes = client(0x0102_0304_0506_0708, request).to_bytes().unwrap();
    let mut expected = vec![52, 0, 0, 0, kind::GET_PAGE, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1];
    expected.extend_from_slice(&0x1122_3344_5566_7788u64.to_le_bytes());
    expected.extend_from_slice(&0x10u64.to_le_bytes());
    for field in [1663u32, 16_384, 24_576] {
        expected.extend_from_slice(&field.to_le_bytes());
    }
    expected.extend_from_slice(&[1, 0, 0, 0, 0xD4, 0xC3, 0xB2, 0xA1]);
    assert_eq!(bytes, expected);

    // Latest is all ones; an answer's pages start at 32, after the count.
    let nblocks = Request::Nblocks {
        lsn: latest(5),
        rel: rel(ForkNumber::Main),
    };
    let latest_bytes = client(1, nblocks).to_bytes().unwrap();
    assert_eq!(&latest_bytes[16..24], &[0xFF; 8]);
    let answer = server(3, pages_ok(9, 2)).to_bytes().unwrap();
    assert_eq!(&answer[24..28], &2u32.to_le_bytes());
    assert_eq!(&answer[32..32 + BLCKSZ], &page(0)[..]);
    assert_eq!(&answer[32 + BLCKSZ..], &page(1)[..]);
}

fn check_prefix(response: Response, count: u32, prefix_bytes: usize) {
    let lsn = match &response {
        Response::GetPage { lsn, .. }
        | Response::GetPages { lsn, .. }
        | Response::SlruSegment { lsn, .. } => *lsn,
        _ => unreachable!("a page-bearing answer"),
    };
    let kind = response.kind();
    let bytes = server(7, response).to_bytes().unwrap();
    let mut prefix = vec![0xEE];
    encode_page_reply_prefix(&mut prefix, 7, kind, lsn, count).unwrap();
    assert_eq!(&prefix[1..], &bytes[..prefix_bytes], "kind {kind:#04X}");
}

fn check_prefix_refused(kind: u8, lsn: u64, count: u32, expected: BodyError) {
    let mut out = vec![1, 2, 3];
    let got = encode_page_reply_prefix(&mut out, 9, kind, Lsn(lsn), count);
    assert_eq!(got, Err(expected));
    assert_eq!(out, [1, 2, 3], "nothing written");
}

#[test]
fn page_reply_prefixes_are_the_frames_first_bytes() {
    check_prefix(page_ok(5, 3), 1, 24);
    check_prefix(pages_ok(5, 3), 3, 32);
    check_prefix(slru_ok(5, 0), 0, 32);
    let count = |message, count, min, max| BodyError::PageCount {
        message,
        count,
        min,
        max,
    };
    let nblocks = kind::NBLOCKS_OK;
    check_prefix_refused(nblocks, 5, 1, BodyError::NotAPageReply(nblocks));
    check_prefix_refused(kind::GET_PAGE_OK, 5, 2, count("GetPage", 2, 1, 1));
    check_prefix_refused(kind::GET_PAGES_OK, 5, 33, count("GetPages", 33, 1, 32));
    check_prefix_refused(kind::GET_PAGES_OK, 5, 0, count("GetPages", 0, 1, 32));
    check_prefix_refused(kind::SLRU_SEGMENT_OK, 0, 1, BodyError::ServedLsn(0));
}

fn check_encode_refused(
    name: &str,
    frame: &dyn Fn(&mut Vec<u8>) -> Result<(), BodyError>,
    expected: BodyError,
) {
    let mut out = vec![9, 9, 9];
    assert_eq!(frame(&mut out), Err(expected), "{name}");
    assert_eq!(out, [9, 9, 9], "{name}: output left as it was");
}

fn refuse_client(name: &str, frame: &ClientFrame, expected: BodyError) {
    check_encode_refused(name, &|out| frame.encode(out), expected);
}

fn refuse_server(name: &str, message: ServerMessage, expected: BodyError) {
    let frame = ServerFrame {
        request_id: 1,
        message,
    };
    check_encode_refused(name, &|out| frame.encode(out), expected);
}

#[test]
fn requests_breaking_a_rule_are_refused_by_the_encoder() {
    use ForkNumber::Main;
    let max = BlockNo::MAX;
    let invalid = get_page(latest(0), Main, BlockNo::INVALID.0);
    refuse_client(
        "invalid block",
        &client(1, invalid),
        BodyError::InvalidBlock,
    );
    let none = get_pages(latest(0), Main, 0, 0);
    refuse_client("no blocks", &client(1, none), BodyError::BlockCount(0));
    let many = get_pages(latest(0), Main, 0, 33);
    refuse_client("33 blocks", &client(1, many), BodyError::BlockCount(33));
    let past = get_pages(latest(0), Main, max.0, 2);
    let range = BodyError::BlockRange {
        first: max,
        count: 2,
    };
    refuse_client("past MaxBlockNumber", &client(1, past), range);
    let spaced = hello_frame(0, hello("a b"));
    refuse_client("space in token", &spaced, BodyError::TokenNotAscii);
    let long = hello_frame(0, hello(&"t".repeat(4097)));
    refuse_client("long token", &long, BodyError::TokenLength(4097));
    let version_0 = Hello {
        version_min: 0,
        ..hello("")
    };
    let range = BodyError::VersionRange { min: 0, max: 1 };
    refuse_client("version 0", &hello_frame(0, version_0), range);
}

#[test]
fn answers_breaking_a_rule_are_refused_by_the_encoder() {
    let response = ServerMessage::Response;
    let count = |message, count, min, max| BodyError::PageCount {
        message,
        count,
        min,
        max,
    };
    let empty = Response::GetPages {
        lsn: Lsn(7),
        pages: Vec::new(),
    };
    refuse_server("no pages", response(empty), count("GetPages", 0, 1, 32));
    let many = response(pages_ok(7, 33));
    refuse_server("33 pages", many, count("GetPages", 33, 1, 32));
    let partial = Response::GetPages {
        lsn: Lsn(7),
        pages: vec![0; 100],
    };
    let bytes = BodyError::PageBytes {
        message: "GetPages",
        bytes: 100,
    };
    refuse_server("part of a page", response(partial), bytes);
    let slru = response(slru_ok(7, 33));
    refuse_server("33 SLRU pages", slru, count("SlruSegment", 33, 0, 32));
    let at_0 = Response::Nblocks {
        lsn: Lsn(0),
        nblocks: 1,
    };
    refuse_server("served at 0", response(at_0), BodyError::ServedLsn(0));
    let at_latest = response(page_ok(u64::MAX, 0));
    refuse_server(
        "served at latest",
        at_latest,
        BodyError::ServedLsn(u64::MAX),
    );
    let no_pipeline = HelloOk {
        version: 1,
        frame_bytes_max: RESPONSE_FRAME_BYTES_MAX,
        pipeline_depth: 0,
        blocks_per_request_max: 32,
        lsn_wait_ms: 0,
    };
    let limit = BodyError::Limit {
        field: "pipeline_depth",
        value: 0,
        min: 1,
        max: 1024,
    };
    refuse_server("no pipeline", ServerMessage::HelloOk(no_pipeline), limit);
    let long = ErrorResponse {
        request_kind: kind::GET_PAGE,
        closes: false,
        error: ServiceError::Corrupt,
        message: "x".repeat(1025),
    };
    let length = BodyError::MessageLength(1025);
    refuse_server("long message", ServerMessage::Error(long), length);
    let wrong_shard = ServiceError::WrongShard {
        owner: 1,
        block: Some(BlockNo::INVALID),
    };
    let invalid = ErrorResponse::new(kind::GET_PAGE, wrong_shard, "");
    refuse_server(
        "at InvalidBlockNumber",
        ServerMessage::Error(invalid),
        BodyError::InvalidBlock,
    );
}
