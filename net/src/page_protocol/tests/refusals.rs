//! Every rule of the spec, broken once in an otherwise valid frame: the
//! frame is refused with the error naming the rule, and the stream decoder
//! consumes it (its boundary is known) instead of stopping.

use super::*;
use crate::id::ShardIdentityError;

type Edits<'a> = &'a [(usize, &'a [u8])];

/// A sample frame's bytes with `edits` written over them (offsets from the
/// frame's start), resized to `resize`, the length field set to match.
fn edited(mut bytes: Vec<u8>, edits: Edits<'_>, resize: Option<usize>) -> Vec<u8> {
    for (offset, data) in edits {
        bytes[*offset..*offset + data.len()].copy_from_slice(data);
    }
    if let Some(len) = resize {
        bytes.resize(len, 0);
    }
    let len = bytes.len();
    set_length(&mut bytes, len);
    bytes
}

/// Decoding `bytes` fails with `reason`, for the frame its header names.
fn check<F: Frame + Debug>(name: &str, bytes: &[u8], reason: BodyError) {
    let expected = FrameError::Body {
        request_id: u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
        kind: bytes[4],
        frame_bytes: header_length(bytes),
        reason,
    };
    let got = F::decode(bytes);
    assert_eq!(got.as_ref().err(), Some(&expected), "{name}: {got:?}");
    let mut decoder = FrameDecoder::<F>::new();
    decoder.feed(bytes);
    let streamed = decoder.next_frame().err();
    assert_eq!(streamed.as_ref(), Some(&expected), "{name}: stream decoder");
    assert_eq!(decoder.buffered(), 0, "{name}: the bad frame is consumed");
}

fn check_client(
    base: &str,
    name: &str,
    edits: Edits<'_>,
    resize: Option<usize>,
    reason: BodyError,
) {
    let (_, frame) = sample_client_frames()
        .into_iter()
        .find(|(n, _)| *n == base)
        .unwrap();
    check::<ClientFrame>(
        name,
        &edited(frame.to_bytes().unwrap(), edits, resize),
        reason,
    );
}

fn check_server(
    base: &str,
    name: &str,
    edits: Edits<'_>,
    resize: Option<usize>,
    reason: BodyError,
) {
    let (_, frame) = sample_server_frames()
        .into_iter()
        .find(|(n, _)| *n == base)
        .unwrap();
    check::<ServerFrame>(
        name,
        &edited(frame.to_bytes().unwrap(), edits, resize),
        reason,
    );
}

fn length(message: &'static str, body_bytes: u32, expected: u64) -> BodyError {
    BodyError::Length {
        message,
        body_bytes,
        expected,
    }
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

#[test]
fn requests_breaking_a_rule_are_refused_naming_it() {
    let gp = |name: &str, edits: Edits<'_>, resize: Option<usize>, reason: BodyError| {
        check_client("get-page", name, edits, resize, reason);
    };
    gp(
        "unknown kind",
        &[(4, &[0x08])],
        None,
        BodyError::UnknownKind,
    );
    gp(
        "a server kind",
        &[(4, &[kind::GET_PAGE_OK])],
        None,
        BodyError::UnknownKind,
    );
    gp("kind 0", &[(4, &[0])], None, BodyError::UnknownKind);
    gp(
        "header reserved",
        &[(6, &[1])],
        None,
        BodyError::Reserved { offset: 6 },
    );
    gp("a byte too many", &[], Some(53), length("GetPage", 37, 36));
    gp("a byte short", &[], Some(51), length("GetPage", 35, 36));
    gp("no body", &[], Some(16), length("GetPage", 0, 36));
    gp("fork 4", &[(44, &[4])], None, BodyError::Fork(4));
    gp(
        "rel reserved",
        &[(46, &[1])],
        None,
        BodyError::Reserved { offset: 46 },
    );
    gp(
        "invalid block",
        &[(48, &[0xFF; 4])],
        None,
        BodyError::InvalidBlock,
    );
    gp(
        "request lsn 0",
        &[(16, &[0; 8])],
        None,
        BodyError::RequestLsnZero,
    );
    gp(
        "nms latest",
        &[(24, &[0xFF; 8])],
        None,
        BodyError::NotModifiedSinceLatest,
    );
    let after = BodyError::NotModifiedSinceAfterRequest {
        request_lsn: Lsn(0x200),
        not_modified_since: Lsn(0x201),
    };
    check_client(
        "exists",
        "nms above",
        &[(24, &0x201u64.to_le_bytes())],
        None,
        after,
    );

    let gps = |name: &str, edits: Edits<'_>, reason: BodyError| {
        check_client("get-pages", name, edits, None, reason);
    };
    gps("no blocks", &[(52, &le32(0))], BodyError::BlockCount(0));
    gps("33 blocks", &[(52, &le32(33))], BodyError::BlockCount(33));
    let range = BodyError::BlockRange {
        first: BlockNo(0xFFFF_FFF0),
        count: 32,
    };
    gps(
        "past MaxBlockNumber",
        &[(48, &le32(0xFFFF_FFF0)), (52, &le32(32))],
        range,
    );

    let slru = |name: &str, edits: Edits<'_>, reason: BodyError| {
        check_client("slru-xact", name, edits, None, reason);
    };
    slru("slru 3", &[(32, &[3])], BodyError::Slru(3));
    slru(
        "slru reserved",
        &[(34, &[7])],
        BodyError::Reserved { offset: 34 },
    );
}

#[test]
fn hellos_breaking_a_rule_are_refused_naming_it() {
    let hi = |name: &str, edits: Edits<'_>, reason: BodyError| {
        check_client("hello", name, edits, None, reason);
    };
    hi("magic", &[(16, b"QPGT")], BodyError::Magic(*b"QPGT"));
    let range = |min, max| BodyError::VersionRange { min, max };
    hi("version 0", &[(20, &[0, 0])], range(0, 1));
    hi(
        "empty versions",
        &[(20, &[3, 0]), (22, &[2, 0])],
        range(3, 2),
    );
    let shard = BodyError::Shard;
    hi(
        "no shards",
        &[(60, &le32(0))],
        shard(ShardIdentityError::Count(0)),
    );
    let number = ShardIdentityError::Number {
        number: 4,
        count: 4,
    };
    hi("shard number", &[(56, &le32(4))], shard(number));
    hi(
        "stripe 0",
        &[(64, &le32(0))],
        shard(ShardIdentityError::Stripe),
    );
    hi(
        "token over 4096",
        &[(68, &le32(4097))],
        BodyError::TokenLength(4097),
    );
    hi(
        "token with a space",
        &[(80, b" ")],
        BodyError::TokenNotAscii,
    );
    hi(
        "token not ASCII",
        &[(72, &[0xC3])],
        BodyError::TokenNotAscii,
    );
    // The sample's token is 60 bytes: claim 61.
    hi(
        "token past the frame",
        &[(68, &le32(61))],
        length("Hello", 116, 117),
    );
    let short = length("Hello", 40, 56);
    check_client("hello", "cut short", &[], Some(56), short);
}

#[test]
fn handshake_answers_breaking_a_rule_are_refused_naming_it() {
    let ok = |name: &str, edits: Edits<'_>, reason: BodyError| {
        check_server("hello-ok", name, edits, None, reason);
    };
    let limit = |field, value, min, max| BodyError::Limit {
        field,
        value,
        min,
        max,
    };
    ok(
        "version 0",
        &[(16, &[0, 0])],
        limit("version", 0, 1, 65_535),
    );
    ok(
        "reserved",
        &[(18, &[0, 1])],
        BodyError::Reserved { offset: 19 },
    );
    let frame = |v| limit("frame_bytes_max", v, 8216, 262_176);
    ok("frame max too small", &[(20, &le32(100))], frame(100));
    ok("frame max too big", &[(20, &le32(262_177))], frame(262_177));
    let depth = |v| limit("pipeline_depth", v, 1, 1024);
    ok("no pipeline", &[(24, &le32(0))], depth(0));
    ok("pipeline too deep", &[(24, &le32(1025))], depth(1025));
    let blocks = |v| limit("blocks_per_request_max", v, 1, 32);
    ok("no blocks", &[(28, &le32(0))], blocks(0));
    ok("33 blocks", &[(28, &le32(33))], blocks(33));
}

#[test]
fn answers_breaking_a_rule_are_refused_naming_it() {
    let ex = |name: &str, edits: Edits<'_>, reason: BodyError| {
        check_server("exists-ok", name, edits, None, reason);
    };
    ex("unknown kind", &[(4, &[0x88])], BodyError::UnknownKind);
    ex(
        "a request kind",
        &[(4, &[kind::EXISTS])],
        BodyError::UnknownKind,
    );
    ex("served at 0", &[(16, &[0; 8])], BodyError::ServedLsn(0));
    ex("exists 2", &[(24, &[2])], BodyError::ExistsByte(2));

    let gps = |name: &str, edits: Edits<'_>, resize: Option<usize>, reason: BodyError| {
        check_server("get-pages-ok", name, edits, resize, reason);
    };
    let count = |count| BodyError::PageCount {
        message: "GetPages",
        count,
        min: 1,
        max: 32,
    };
    gps("zero pages", &[(24, &le32(0))], None, count(0));
    gps("33 pages", &[(24, &le32(33))], None, count(33));
    let body = 16 + 2 * 8192;
    gps(
        "count above the pages",
        &[(24, &le32(3))],
        None,
        length("GetPages", body, 16 + 3 * 8192),
    );
    let cut = Some(16 + body as usize - 1);
    gps(
        "a page short",
        &[],
        cut,
        length("GetPages", body - 1, u64::from(body)),
    );
    gps(
        "pages reserved",
        &[(31, &[1])],
        None,
        BodyError::Reserved { offset: 31 },
    );
    gps(
        "served at latest",
        &[(16, &[0xFF; 8])],
        None,
        BodyError::ServedLsn(u64::MAX),
    );
    let short = length("GetPage", 8199, 8200);
    check_server("get-page-ok", "page cut short", &[], Some(8215), short);
}

#[test]
fn errors_breaking_a_rule_are_refused_naming_it() {
    // The sample with code 9 (NotFound), request id 109.
    let base = sample_server_frames()
        .into_iter()
        .find(|(_, f)| matches!(&f.message, ServerMessage::Error(e) if e.error == ServiceError::NotFound))
        .unwrap()
        .1
        .to_bytes()
        .unwrap();
    let message_bytes = u32::try_from(base.len() - 40).unwrap();
    let err = |name: &str, edits: Edits<'_>, resize: Option<usize>, reason| {
        check::<ServerFrame>(name, &edited(base.clone(), edits, resize), reason);
    };
    let detail = |code, detail1, detail2| BodyError::ErrorDetail {
        code,
        detail1,
        detail2,
    };
    err("code 0", &[(16, &[0, 0])], None, BodyError::ErrorCode(0));
    err("code 17", &[(16, &[17, 0])], None, BodyError::ErrorCode(17));
    err("flags", &[(19, &[2])], None, BodyError::ErrorFlags(2));
    err("a detail it lacks", &[(24, &[1])], None, detail(9, 1, 0));
    err(
        "a second detail it lacks",
        &[(16, &[14, 0]), (32, &[1])],
        None,
        detail(14, 0, 1),
    );
    let wide = (1u64 << 32).to_le_bytes();
    err(
        "owner too wide",
        &[(16, &[8, 0]), (24, &wide)],
        None,
        detail(8, 1 << 32, 0),
    );
    err(
        "version too wide",
        &[(16, &[2, 0]), (24, &[1, 0, 1])],
        None,
        detail(2, 0x1_0001, 0),
    );
    err(
        "message over 1024",
        &[(20, &le32(1025))],
        None,
        BodyError::MessageLength(1025),
    );
    let past = length("Error", 24 + message_bytes, u64::from(25 + message_bytes));
    err(
        "message past the frame",
        &[(20, &le32(message_bytes + 1))],
        None,
        past,
    );
    err(
        "message not UTF-8",
        &[(40, &[0xFF])],
        None,
        BodyError::MessageNotUtf8,
    );
    err("cut short", &[], Some(39), length("Error", 23, 24));
}
