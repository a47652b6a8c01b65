//! Unit tests of the page-protocol codec: round trips of every message and
//! every truncation of it, the stream decoder, the length bound, the LSN rule
//! and answer matching. `refusals` breaks every rule of the spec once,
//! `layout` checks bytes against the spec's tables, `seeds` keeps the fuzz
//! seeds equal to the encoded samples of `samples`.

use std::fmt::Debug;

use quire_postgres::Lsn;
use quire_postgres::key::SlruKind;
use quire_postgres::types::{BLCKSZ, BlockNo, ForkNumber, RelTag};

use super::*;
use crate::id::{ShardIdentity, TenantId, TimelineId};

mod layout;
mod refusals;
mod samples;
mod seeds;

use samples::*;

fn header_length(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[..4].try_into().unwrap())
}

fn set_length(bytes: &mut [u8], length: usize) {
    bytes[..4].copy_from_slice(&u32::try_from(length).unwrap().to_le_bytes());
}

/// One frame's round trip, through every way of reading it, and every
/// truncation of it.
fn check_round_trip<F: Frame + PartialEq + Debug>(name: &str, frame: &F, bytes: &[u8]) {
    assert_eq!(
        header_length(bytes) as usize,
        bytes.len(),
        "{name}: length field"
    );
    assert!(
        bytes.len() <= F::DIRECTION.frame_bytes_max() as usize,
        "{name}: within the maximum"
    );
    assert_eq!(F::decode(bytes).as_ref(), Ok(frame), "{name}: decode");

    let mut followed = bytes.to_vec();
    followed.extend_from_slice(&[0xAB; 21]);
    let (split, taken) = F::split(&followed).unwrap().unwrap();
    assert_eq!(
        (&split, taken),
        (frame, bytes.len()),
        "{name}: split off a longer buffer"
    );

    let mut decoder = FrameDecoder::<F>::new();
    for (i, byte) in bytes.iter().enumerate() {
        let wanted = if i < 16 { 16 - i } else { bytes.len() - i };
        assert_eq!(decoder.wanted(), wanted, "{name}: wanted after {i} bytes");
        assert_eq!(
            decoder.next_frame(),
            Ok(None),
            "{name}: incomplete after {i} bytes"
        );
        decoder.feed(std::slice::from_ref(byte));
    }
    let whole = decoder.next_frame().unwrap();
    assert_eq!(whole.as_ref(), Some(frame), "{name}: fed byte by byte");
    assert_eq!(
        (decoder.buffered(), decoder.next_frame()),
        (0, Ok(None)),
        "{name}: all consumed"
    );

    // Every truncation of a small frame; of a 32-page answer, those near
    // the header, the page boundaries and the end (each costs a copy).
    let truncations: Vec<usize> = if bytes.len() <= 20_000 {
        (0..bytes.len()).collect()
    } else {
        (0..bytes.len())
            .filter(|n| {
                *n < 64
                    || bytes.len() - n < 64
                    || matches!(n % BLCKSZ, 0 | 1 | 31 | 32 | 33)
                    || n % 997 == 0
            })
            .collect()
    };
    for n in truncations {
        let prefix = &bytes[..n];
        assert_eq!(
            F::split(prefix),
            Ok(None),
            "{name}: split of {n} bytes waits"
        );
        let error = F::decode(prefix).unwrap_err();
        assert_eq!(
            error.boundary_known(),
            n >= 16,
            "{name}: decode of {n} bytes: {error}"
        );
        if n >= 16 {
            // The same truncation with a length field that agrees with it:
            // a whole frame whose body is short, refused as such.
            let mut cut = prefix.to_vec();
            set_length(&mut cut, n);
            let error = F::decode(&cut).unwrap_err();
            assert!(
                matches!(&error, FrameError::Body { frame_bytes, .. } if *frame_bytes as usize == n),
                "{name}: {n} bytes with a matching length: {error}"
            );
            assert_eq!(
                F::split(&cut).unwrap_err(),
                error,
                "{name}: split agrees with decode"
            );
        }
    }
}

#[test]
fn every_client_message_round_trips_and_every_truncation_waits_or_is_refused() {
    for (name, frame) in sample_client_frames() {
        let bytes = frame.to_bytes().unwrap();
        check_round_trip(name, &frame, &bytes);
    }
}

#[test]
fn every_server_message_round_trips_and_every_truncation_waits_or_is_refused() {
    let largest = largest_server_frames().into_iter().map(|f| ("largest", f));
    for (name, frame) in sample_server_frames().into_iter().chain(largest) {
        let bytes = frame.to_bytes().unwrap();
        check_round_trip(name, &frame, &bytes);
    }
}

#[test]
fn a_pipeline_fed_in_any_pieces_yields_the_same_frames_and_skips_a_bad_body() {
    let frames: Vec<ClientFrame> = sample_client_frames().into_iter().map(|(_, f)| f).collect();
    let mut stream = Vec::new();
    for frame in &frames[..4] {
        frame.encode(&mut stream).unwrap();
    }
    // A whole frame with a bad body (fork 9) in the middle of the pipeline.
    let bad_at = stream.len();
    frames[3].encode(&mut stream).unwrap();
    stream[bad_at + 16 + 16 + 12] = 9;
    for frame in &frames[4..] {
        frame.encode(&mut stream).unwrap();
    }
    let bad = FrameError::Body {
        request_id: 1,
        kind: kind::GET_PAGE,
        frame_bytes: 52,
        reason: BodyError::Fork(9),
    };
    let mut expected: Vec<_> = frames[..4].iter().cloned().map(Ok).collect();
    expected.push(Err(bad));
    expected.extend(frames[4..].iter().cloned().map(Ok));

    for piece in [1, 2, 7, 16, 52, 1000, stream.len()] {
        let mut decoder = FrameDecoder::<ClientFrame>::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(piece) {
            decoder.feed(chunk);
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => got.push(Ok(frame)),
                    Ok(None) => break,
                    Err(error) => {
                        assert!(error.boundary_known());
                        got.push(Err(error));
                    }
                }
            }
            let bound = REQUEST_FRAME_BYTES_MAX as usize + piece;
            assert!(decoder.buffered() <= bound, "bounded buffer");
        }
        assert_eq!(got, expected, "pieces of {piece} bytes");
        assert_eq!(decoder.buffered(), 0);
    }
}

/// A header claiming `length` bytes: refused at once (`refused`) with
/// only the header fed, and forever after; or taken as a frame boundary.
fn check_length(direction: Direction, length: u32, refused: bool) {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&length.to_le_bytes());
    header[4] = match direction {
        Direction::ToServer => kind::GET_PAGE,
        Direction::ToClient => kind::GET_PAGES_OK,
    };
    header[8] = 77;
    let peeked = FrameHeader::peek(&header, direction);
    let expected = FrameError::Length {
        length,
        max: direction.frame_bytes_max(),
        kind: header[4],
        request_id: 77,
    };
    assert!(!expected.boundary_known());
    if refused {
        assert_eq!(peeked, Err(expected.clone()), "{direction:?} {length}");
    } else {
        assert!(peeked.unwrap().is_some(), "{direction:?} {length}");
    }
    let (first, again, wanted) = match direction {
        Direction::ToServer => drive::<ClientFrame>(&header),
        Direction::ToClient => drive::<ServerFrame>(&header),
    };
    if refused {
        assert_eq!(first.as_ref(), Some(&expected), "{direction:?} {length}");
        assert_eq!(again, first, "the error sticks");
        assert_eq!(wanted, 0);
    } else {
        assert!(
            !matches!(first, Some(FrameError::Length { .. })),
            "{length}: {first:?}"
        );
    }
}

/// Feeds `header`, asks for a frame, feeds more, asks again.
fn drive<F: Frame + Debug>(header: &[u8]) -> (Option<FrameError>, Option<FrameError>, usize) {
    let mut decoder = FrameDecoder::<F>::new();
    decoder.feed(header);
    assert_eq!(decoder.buffered(), 16, "nothing but the header is held");
    let first = decoder.next_frame().err();
    decoder.feed(&[0; 100]);
    let wanted = decoder.wanted();
    (first, decoder.next_frame().err(), wanted)
}

#[test]
fn lengths_out_of_bounds_are_refused_before_any_body_is_buffered() {
    check_length(Direction::ToServer, u32::MAX, true);
    check_length(Direction::ToServer, REQUEST_FRAME_BYTES_MAX + 1, true);
    check_length(Direction::ToServer, REQUEST_FRAME_BYTES_MAX, false);
    check_length(Direction::ToServer, 15, true);
    check_length(Direction::ToServer, 0, true);
    check_length(Direction::ToServer, 16, false);
    check_length(Direction::ToClient, u32::MAX, true);
    check_length(Direction::ToClient, RESPONSE_FRAME_BYTES_MAX + 1, true);
    check_length(Direction::ToClient, RESPONSE_FRAME_BYTES_MAX, false);
    check_length(Direction::ToClient, 3, true);
    // A frame a server may send is too big for a client to send.
    let big = largest_server_frames().remove(0).to_bytes().unwrap();
    assert!(matches!(
        ClientFrame::split(&big),
        Err(FrameError::Length { .. })
    ));
}

fn check_served(lsn: ReadLsn, last_ingested: u64, expected: Option<u64>) {
    let served = lsn.served_at(Lsn(last_ingested));
    assert_eq!(
        served,
        expected.map(Lsn),
        "{lsn:?} ingested {last_ingested:#x}"
    );
}

#[test]
fn the_lsn_rule_serves_at_min_of_request_and_ingested_never_below_not_modified_since() {
    check_served(latest(0x100), 0x50, None);
    check_served(latest(0x100), 0x100, Some(0x100));
    check_served(latest(0x100), 0x900, Some(0x900));
    check_served(latest(0), 0x1, Some(0x1));
    check_served(at(0x500, 0x100), 0x50, None);
    check_served(at(0x500, 0x100), 0x300, Some(0x300));
    check_served(at(0x500, 0x100), 0x900, Some(0x500));
    check_served(at(0x500, 0x500), 0x500, Some(0x500));

    let refuse = |request: RequestLsn, nms: u64, expected: BodyError| {
        assert_eq!(ReadLsn::new(request, Lsn(nms)), Err(expected));
    };
    refuse(RequestLsn::At(Lsn(0)), 0, BodyError::RequestLsnZero);
    refuse(
        RequestLsn::At(Lsn(u64::MAX)),
        0,
        BodyError::RequestLsnLatest,
    );
    refuse(
        RequestLsn::Latest,
        u64::MAX,
        BodyError::NotModifiedSinceLatest,
    );
    let after = BodyError::NotModifiedSinceAfterRequest {
        request_lsn: Lsn(5),
        not_modified_since: Lsn(6),
    };
    refuse(RequestLsn::At(Lsn(5)), 6, after);
}

fn check_answers(answer: &ServerFrame, request: &ClientFrame, expected: bool) {
    assert_eq!(
        answer.answers(request),
        expected,
        "{answer:?} to {request:?}"
    );
}

#[test]
fn an_answer_matches_only_its_request() {
    let two_blocks = client(3, get_pages(latest(0), ForkNumber::Main, 0, 2));
    let one_block = client(3, get_page(latest(0), ForkNumber::Main, 0));
    check_answers(&server(3, pages_ok(1, 2)), &two_blocks, true);
    check_answers(&server(3, pages_ok(1, 1)), &two_blocks, false);
    check_answers(&server(4, pages_ok(1, 2)), &two_blocks, false);
    check_answers(&server(3, pages_ok(1, 2)), &one_block, false);
    check_answers(&server(3, page_ok(1, 0)), &one_block, true);
    let not_found = |kind| error_frame(3, kind, ServiceError::NotFound, "");
    check_answers(&not_found(kind::GET_PAGES), &two_blocks, true);
    check_answers(&not_found(kind::GET_PAGE), &two_blocks, false);
    let hello_ok = &sample_server_frames()[0].1;
    check_answers(hello_ok, &hello_frame(0, hello("")), true);
    check_answers(hello_ok, &hello_frame(1, hello("")), false);
}

fn check_error_answer(kind: u8, error: ServiceError, message: &str, closes: bool, kept: usize) {
    let answer = ErrorResponse::new(kind, error, message);
    assert_eq!(answer.closes, closes, "{error:?} to {kind:#04X}");
    assert_eq!(answer.message.len(), kept, "{error:?}");
    assert!(message.starts_with(&answer.message));
}

#[test]
fn error_answers_cut_their_message_and_close_when_the_spec_says() {
    check_error_answer(
        kind::HELLO,
        ServiceError::UnknownTenant,
        "tenant 00…",
        true,
        12,
    );
    check_error_answer(kind::GET_PAGE, ServiceError::ShuttingDown, "", true, 0);
    check_error_answer(
        kind::GET_PAGE,
        ServiceError::NotFound,
        &"x".repeat(5000),
        false,
        1024,
    );
    // 'é' is two bytes: the cut falls on a character boundary below 1024.
    let odd = format!("x{}", "é".repeat(700));
    check_error_answer(kind::GET_PAGE, ServiceError::Corrupt, &odd, false, 1023);
    let closing = ErrorResponse::new(kind::GET_PAGE, ServiceError::NotFound, "").closing();
    assert!(closing.closes);
}
