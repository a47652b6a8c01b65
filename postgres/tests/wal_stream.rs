//! The WAL decoder against WAL of known shape from our writer: records of
//! every size, split across pages and segments, fed in arbitrary chunks,
//! with gaps, switches and corruption.
// Test helpers may unwrap and truncate: their inputs are the test's own.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use proptest::prelude::*;
use quire_postgres::Lsn;
use quire_postgres::types::{BLCKSZ, RelFileLocator};
use quire_postgres::wal::page::PageHeaderError;
use quire_postgres::wal::record::decode_record;
use quire_postgres::wal::stream::{RawRecord, WalErrorKind, WalStreamDecoder};
use quire_postgres::wal::writer::{BlockToWrite, WalWriter};

const SEGMENT: u32 = 1 << 20;
const SYSTEM_ID: u64 = 7_300_000_000_000_000_001;
/// The `LogicalMessage` rmgr: any bytes are a valid main data for the stream.
const RMID: u8 = 21;

/// Writes records with main data of the given sizes; returns the WAL bytes
/// (from `start`'s segment) and the records as a decoder must return them.
/// Records as `(start, bytes)`.
type Records = Vec<(Lsn, Vec<u8>)>;

fn write_wal(start: Lsn, sizes: &[usize], switch_after: Option<usize>) -> (Lsn, Vec<u8>, Records) {
    let segment_start = Lsn(start.0 - u64::from(start.segment_offset(SEGMENT)));
    let mut writer = WalWriter::new(segment_start, SEGMENT, SYSTEM_ID, 1).unwrap();
    if start != segment_start {
        writer.skip_to(start).unwrap();
    }
    writer.set_prev_record(Lsn(start.0 - 8));
    let mut expected = Vec::new();
    let mut prev = Lsn(start.0 - 8);
    for (index, &size) in sizes.iter().enumerate() {
        let data: Vec<u8> = (0..size).map(|i| (i * 31 + index) as u8).collect();
        let record =
            quire_postgres::wal::writer::build_record(RMID, 0, index as u32, prev, &[], &data)
                .unwrap();
        let at = writer.append_raw(&record).unwrap();
        expected.push((at, record));
        prev = at;
        if switch_after == Some(index) {
            let switch = writer.switch_segment().unwrap();
            let mut record = vec![0u8; 24];
            record.copy_from_slice(
                &quire_postgres::wal::writer::build_record(0, 0x40, 0, prev, &[], &[]).unwrap(),
            );
            expected.push((switch, record));
            prev = switch;
        }
    }
    (segment_start, writer.into_segments(), expected)
}

/// Decodes `wal` fed in chunks of the given sizes (cycled).
fn decode(start: Lsn, wal: &[u8], chunks: &[usize]) -> (Vec<RawRecord>, Option<WalErrorKind>) {
    decode_with(start, wal, chunks, Api::Feed)
}

/// How the WAL reaches the decoder.
#[derive(Clone, Copy, Debug)]
enum Api {
    /// `feed` (copied in), then `next_record`.
    Feed,
    /// `decode_slice` (records borrowed from the chunk).
    Slice,
    /// The two, chunk by chunk in turn.
    Alternating,
}

fn decode_with(
    start: Lsn,
    wal: &[u8],
    chunks: &[usize],
    api: Api,
) -> (Vec<RawRecord>, Option<WalErrorKind>) {
    let mut decoder = WalStreamDecoder::new(start, SEGMENT);
    let mut records = Vec::new();
    let mut at = 0;
    let mut chunk = 0;
    while at < wal.len() {
        let size = chunks[chunk % chunks.len()].max(1).min(wal.len() - at);
        chunk += 1;
        let bytes = &wal[at..at + size];
        at += size;
        if matches!(api, Api::Slice) || (matches!(api, Api::Alternating) && chunk % 2 == 0) {
            let outcome = decoder.decode_slice(bytes, |record| {
                records.push(record.to_raw());
                Ok::<(), quire_postgres::wal::stream::WalDecodeError>(())
            });
            if let Err(error) = outcome {
                return (records, Some(error.kind));
            }
            continue;
        }
        decoder.feed(bytes);
        loop {
            match decoder.next_record() {
                Ok(Some(record)) => records.push(record.to_raw()),
                Ok(None) => break,
                Err(error) => return (records, Some(error.kind)),
            }
        }
    }
    (records, None)
}

fn check_records(decoded: &[RawRecord], expected: &[(Lsn, Vec<u8>)]) {
    assert_eq!(decoded.len(), expected.len(), "record count");
    for (record, (start, bytes)) in decoded.iter().zip(expected) {
        assert_eq!(record.start, *start);
        assert_eq!(&record.bytes, bytes, "record at {start}");
        assert_eq!(
            record.end.0,
            start.0 + bytes.len() as u64 + headers_crossed(*start, bytes.len())
        );
    }
}

/// Page-header bytes inside a record of `len` bytes starting at `start`.
fn headers_crossed(start: Lsn, len: usize) -> u64 {
    let mut position = start.0;
    let mut left = len as u64;
    let mut headers = 0;
    loop {
        let page_left = 8192 - position % 8192;
        if left <= page_left {
            return headers;
        }
        left -= page_left;
        position += page_left;
        let header = if position.is_multiple_of(u64::from(SEGMENT)) {
            40
        } else {
            24
        };
        headers += header;
        position += header;
    }
}

#[test]
fn records_across_pages_and_segments_in_any_chunking() {
    let sizes = [
        0, 1, 7, 100, 8100, 8168, 8169, 40_000, 1_500_000, 3, 2_200_000, 64,
    ];
    let (start, wal, expected) = write_wal(Lsn(0x0100_0000), &sizes, None);
    for chunks in [&[usize::MAX][..], &[1], &[7, 8192, 3], &[100_000]] {
        let (decoded, error) = decode(start, &wal, chunks);
        assert_eq!(
            error,
            Some(WalErrorKind::InvalidRecordLength(0)),
            "the zeroed tail ends decoding"
        );
        check_records(&decoded, &expected);
    }
}

#[test]
fn a_switch_skips_the_rest_of_the_segment() {
    let (start, wal, expected) = write_wal(Lsn(0x0100_0000), &[100, 9000, 50], Some(1));
    let (decoded, _) = decode(start, &wal, &[4096]);
    check_records(&decoded, &expected);
    assert_eq!(
        decoded[3].start,
        Lsn(0x0110_0028),
        "after the switch, the next segment's first record"
    );
}

#[test]
fn decoding_from_a_page_start_skips_a_continued_record() {
    // A record from segment start through several pages; start decoding at
    // the page after it began.
    let (start, wal, expected) = write_wal(Lsn(0x0100_0000), &[30_000, 10], None);
    let page = 8192usize;
    let mut decoder = WalStreamDecoder::new(Lsn(start.0 + page as u64), SEGMENT);
    decoder.feed(&wal[page..]);
    let second = decoder.next_record().unwrap().unwrap().to_raw();
    assert_eq!((second.start, second.bytes), expected[1].clone());
}

#[test]
fn a_checkpoint_segment_decodes_from_its_start() {
    let mut checkpoint = quire_postgres::control::CheckPoint::zeroed();
    let lsn = Lsn(0x0300_5A38);
    checkpoint.redo.set(lsn.0);
    checkpoint.this_timeline.set(1);
    let wal = quire_postgres::wal::writer::checkpoint_segment(
        &checkpoint,
        lsn,
        Lsn(0x0200_0000),
        16 << 20,
        SYSTEM_ID,
    )
    .unwrap();
    assert_eq!(wal.len(), 16 << 20);
    let mut decoder = WalStreamDecoder::new(Lsn(0x0300_0000), 16 << 20);
    decoder.feed(&wal);
    let record = decoder.next_record().unwrap().unwrap().to_raw();
    assert_eq!(record.start, lsn);
    assert_eq!(record.bytes.len(), 114);
    let checkpoint_record = decode_record(&record.bytes).unwrap();
    assert_eq!(
        checkpoint_record.main_data,
        zerocopy::IntoBytes::as_bytes(&checkpoint)
    );
    assert_eq!(decoder.system_id(), Some(SYSTEM_ID));
}

#[test]
fn blocks_images_and_holes_round_trip() {
    let rel = RelFileLocator {
        spc_oid: 1663,
        db_oid: 5,
        rel_number: 16384,
    };
    let mut page = [0u8; BLCKSZ];
    for (i, byte) in page.iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    page[100..4000].fill(0);
    let blocks = [
        BlockToWrite {
            id: 0,
            rel,
            fork: 0,
            block: 7,
            will_init: false,
            image: Some((&page, 100, 3900)),
            data: b"abc",
        },
        BlockToWrite {
            id: 3,
            rel,
            fork: 2,
            block: 0,
            will_init: true,
            image: Some((&page, 0, 0)),
            data: &[],
        },
    ];
    let record =
        quire_postgres::wal::writer::build_record(10, 0, 9, Lsn(8), &blocks, b"main").unwrap();
    let decoded = decode_record(&record).unwrap();
    assert_eq!(decoded.main_data, b"main");
    assert_eq!(decoded.block_count(), 2);
    let decoded_blocks: Vec<_> = decoded.blocks().collect();
    assert_eq!(decoded_blocks.len(), 2);
    assert_eq!(
        (
            decoded_blocks[1].id,
            decoded_blocks[1].rel,
            decoded_blocks[1].will_init
        ),
        (3, rel, true)
    );
    assert_eq!(decoded.block(3), Some(decoded_blocks[1].clone()));
    assert_eq!(decoded.block(2), None);
    let stored: usize = decoded_blocks
        .iter()
        .map(|block| block.image.map_or(0, |image| image.bytes.len()))
        .sum();
    assert!(stored > 0);
    assert_eq!(decoded.image_bytes() as usize, stored);
    for block in &decoded_blocks {
        let mut restored = [1u8; BLCKSZ];
        block.image.unwrap().restore(&mut restored).unwrap();
        assert_eq!(restored, page);
    }
    assert_eq!(decoded_blocks[0].data, b"abc");
}

#[test]
fn common_layouts_decode_as_the_general_pass_does() {
    use quire_postgres::wal::record::decode_record_general;
    let rel = RelFileLocator {
        spc_oid: 1663,
        db_oid: 5,
        rel_number: 16384,
    };
    let plain = |id: u8, data: &'static [u8]| BlockToWrite {
        id,
        rel,
        fork: 0,
        block: 7,
        will_init: false,
        image: None,
        data,
    };
    let layouts: Vec<(Vec<BlockToWrite<'_>>, &[u8])> = vec![
        (vec![], b"main"),
        (vec![], b""),
        (vec![plain(0, b"abc")], b"main"),
        (vec![plain(0, b"")], b"x"),
        (vec![plain(3, b"abc")], b""),
        (vec![plain(0, b"abc"), plain(1, b"d")], b"main"),
    ];
    for (blocks, main) in layouts {
        let record =
            quire_postgres::wal::writer::build_record(10, 0, 9, Lsn(8), &blocks, main).unwrap();
        let decoded = decode_record(&record).unwrap();
        assert_eq!(Ok(decoded), decode_record_general(&record));
        assert_eq!(decoded.main_data, main);
        assert_eq!(decoded.block_count(), blocks.len());
        for (block, spec) in decoded.blocks().zip(&blocks) {
            assert_eq!((block.id, block.rel, block.data), (spec.id, rel, spec.data));
        }
        // Every damaged variant decides the same through both.
        for at in 0..record.len() {
            for flip in [0x01u8, 0x10, 0x80] {
                let mut damaged = record.clone();
                damaged[at] ^= flip;
                assert_eq!(decode_record(&damaged), decode_record_general(&damaged));
            }
        }
    }
}

#[test]
fn a_record_shorter_than_its_header_is_an_error() {
    // Found by fuzzing: `xl_tot_len` below 24 in bytes given to
    // `decode_record` directly (the stream decoder never passes one).
    let record = quire_postgres::wal::writer::build_record(10, 0, 9, Lsn(8), &[], b"main").unwrap();
    for total in 0..24u32 {
        let mut short = record.clone();
        short[..4].copy_from_slice(&total.to_le_bytes());
        assert!(decode_record(&short).is_err(), "xl_tot_len {total}");
    }
    assert!(decode_record(&record).is_ok());
}

/// Whether `error` is how the decoder must report where the written WAL
/// ends: a zero record length, or, when the last record ends on a page
/// boundary, possibly a zero page header (the writer may or may not have
/// started the next page; Postgres reports either); nothing when the last
/// record fills the written WAL to `wal_end`.
fn is_end_of_wal(error: Option<&WalErrorKind>, expected: &[(Lsn, Vec<u8>)], wal_end: u64) -> bool {
    let end = expected.last().map_or(0, |(lsn, bytes)| {
        (lsn.0 + bytes.len() as u64 + headers_crossed(*lsn, bytes.len())).next_multiple_of(8)
    });
    match error {
        None => end >= wal_end,
        Some(WalErrorKind::InvalidRecordLength(0)) => true,
        Some(WalErrorKind::PageHeader(PageHeaderError::BadMagic(0))) => {
            end.is_multiple_of(BLCKSZ as u64)
        }
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_sizes_any_start_any_chunks(
        sizes in prop::collection::vec(prop_oneof![0usize..200, 0usize..20_000, 0usize..1_200_000], 1..12),
        start_page in 0u64..127,
        start_offset in 5u64..1000,
        chunks in prop::collection::vec(1usize..50_000, 1..8),
        api in prop_oneof![Just(Api::Feed), Just(Api::Slice), Just(Api::Alternating)],
    ) {
        let page = 0x0200_0000 + start_page * 8192;
        let start = Lsn(page + start_offset * 8);
        let (segment_start, wal, expected) = write_wal(start, &sizes, None);
        let (decoded, error) = decode_with(segment_start, &wal, &chunks, api);
        let wal_end = segment_start.0 + wal.len() as u64;
        prop_assert!(is_end_of_wal(error.as_ref(), &expected, wal_end), "ended with {:?}", error);
        check_records(&decoded, &expected);
    }

    #[test]
    fn a_flipped_byte_never_yields_a_wrong_record(
        sizes in prop::collection::vec(0usize..30_000, 1..8),
        flip_at in any::<prop::sample::Index>(),
        flip_bits in 1u8..=255,
        api in prop_oneof![Just(Api::Feed), Just(Api::Slice), Just(Api::Alternating)],
    ) {
        let (start, mut wal, expected) = write_wal(Lsn(0x0100_0000), &sizes, None);
        let used = expected.last().map_or(0, |(lsn, bytes)| (lsn.0 - start.0) as usize + bytes.len() + 1000);
        let at = flip_at.index(used.min(wal.len()));
        wal[at] ^= flip_bits;
        let (decoded, _) = decode_with(start, &wal, &[4099], api);
        // Every record returned is one that was written, in order.
        prop_assert!(decoded.len() <= expected.len());
        for (record, (lsn, bytes)) in decoded.iter().zip(&expected) {
            prop_assert_eq!(record.start, *lsn);
            prop_assert_eq!(&record.bytes, bytes);
        }
    }
}

/// A segment size of 0 (or any size Postgres would refuse) is an error from
/// every entry point, never a division by zero.
#[test]
fn invalid_segment_sizes_are_errors() {
    use quire_postgres::wal::page::{decode_page_header, first_record_start};
    let (start, wal, _) = write_wal(Lsn(0x0100_0028), &[100, 200], None);
    for size in [0, 1, 3 << 20, 1 << 19, 1 << 31] {
        let mut decoder = WalStreamDecoder::new(start, size);
        decoder.feed(&wal[..16_384]);
        let error = decoder.next_record().map(|_| ()).unwrap_err();
        assert_eq!(
            error.kind,
            WalErrorKind::PageHeader(PageHeaderError::InvalidSegmentSize(size))
        );
        let mut decoder = WalStreamDecoder::new(start, size);
        assert!(
            decoder
                .decode_slice(&wal[..16_384], |_| Ok::<
                    (),
                    quire_postgres::wal::stream::WalDecodeError,
                >(()))
                .is_err()
        );
        assert_eq!(
            decode_page_header(&wal, start, size),
            Err(PageHeaderError::InvalidSegmentSize(size))
        );
        assert_eq!(
            first_record_start(&wal, start, size),
            Err(PageHeaderError::InvalidSegmentSize(size))
        );
    }
    // A header cut short is an error too.
    assert_eq!(
        decode_page_header(&wal[..30], start, SEGMENT),
        Err(PageHeaderError::Truncated(30))
    );
}

/// WAL in the last page of the 64-bit LSN space is refused: every position
/// and record end the decoder reports stays an LSN.
#[test]
fn the_last_page_of_the_lsn_space_is_refused() {
    use quire_postgres::wal::page::{PageHeader, XLP_FIRST_IS_CONTRECORD};
    let last_page = Lsn(u64::MAX - 8191);
    // A page continuing a record over the whole page, read from its start.
    let mut page = vec![0u8; BLCKSZ];
    PageHeader {
        info: XLP_FIRST_IS_CONTRECORD,
        timeline: 1,
        page_address: last_page,
        remaining_length: 8168,
        long: None,
    }
    .write(&mut page);
    let (records, error) = decode(last_page, &page, &[BLCKSZ]);
    assert!(records.is_empty());
    assert_eq!(error, Some(WalErrorKind::EndOfLsnSpace));
    // A record ending exactly at 2^64, fed from a record boundary.
    let start = Lsn(u64::MAX - 23);
    let record =
        quire_postgres::wal::writer::build_record(RMID, 0, 1, Lsn(0x100), &[], &[]).unwrap();
    let (records, error) = decode(start, &record, &[record.len()]);
    assert!(records.is_empty());
    assert_eq!(error, Some(WalErrorKind::EndOfLsnSpace));
}
