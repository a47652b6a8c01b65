//! Fuzz target: arbitrary bytes through the whole WAL decoding path.
//!
//! The input's first byte picks the chunk size the bytes are fed in; the
//! rest is WAL of 1 MiB segments, decoded from the address its first page
//! header states when that is a page boundary (seeds are windows of real
//! WAL), else from the second segment's start. Every record that comes
//! out is decoded, its images restored and its effects extracted. The same
//! bytes then go through `decode_slice` (records borrowed from the input)
//! in pieces of another size, which must yield the same records and stop
//! with the same error. The bytes are also decoded as one record on its
//! own (no checksum to pass): it must decode as the general pass does
//! (without the shortcut for common layouts), and the block references it hands out (read
//! from its fragment headers only when asked for) must be as many as it
//! counted, ascend by id and add up to no more than the record. Nothing may panic, hang or allocate without bound;
//! errors are expected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quire_postgres::Lsn;
use quire_postgres::types::BLCKSZ;
use quire_postgres::wal::effects::{page_effects, record_effects};
use quire_postgres::wal::record::{decode_record, decode_record_general};
use quire_postgres::wal::stream::{RawRecord, WalDecodeError, WalStreamDecoder};

const SEGMENT: u32 = 1 << 20;

fuzz_target!(|input: &[u8]| {
    let [chunk_selector, wal @ ..] = input else {
        return;
    };
    check_one_record(wal);
    let chunk = 1 + usize::from(*chunk_selector) * 37;
    let stated = wal.get(8..16).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let start = if stated != 0 && stated % 8192 == 0 { Lsn(stated) } else { Lsn(u64::from(SEGMENT)) };
    let mut decoder = WalStreamDecoder::new(start, SEGMENT);
    let mut page = [0u8; BLCKSZ];
    let mut fed: Vec<RawRecord> = Vec::new();
    let mut fed_error = None;
    'pieces: for piece in wal.chunks(chunk) {
        decoder.feed(piece);
        loop {
            match decoder.next_record() {
                Ok(Some(record)) => {
                    fed.push(record.to_raw());
                    if let Ok(decoded) = decode_record(record.bytes) {
                        for block in decoded.blocks() {
                            if let Some(image) = &block.image {
                                let _ = image.restore(&mut page);
                            }
                        }
                        let _ = page_effects(&decoded, record.end);
                        let _ = record_effects(&decoded);
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    fed_error = Some(error);
                    break 'pieces;
                }
            }
        }
    }

    let mut sliced: Vec<RawRecord> = Vec::new();
    let mut sliced_error = None;
    let mut decoder = WalStreamDecoder::new(start, SEGMENT);
    for piece in wal.chunks(chunk * 3 + 5) {
        let result = decoder.decode_slice(piece, |record| {
            sliced.push(record.to_raw());
            Ok::<(), WalDecodeError>(())
        });
        if let Err(error) = result {
            sliced_error = Some(error);
            break;
        }
    }
    assert_eq!(fed, sliced, "records differ between feed and decode_slice");
    assert_eq!(fed_error, sliced_error, "errors differ between feed and decode_slice");
});

/// `bytes` decoded as one record: its block references agree with it.
fn check_one_record(bytes: &[u8]) {
    // The shortcut for common layouts decides exactly as the general pass.
    assert_eq!(decode_record(bytes), decode_record_general(bytes));
    let Ok(decoded) = decode_record(bytes) else {
        return;
    };
    let blocks: Vec<_> = decoded.blocks().collect();
    assert_eq!(blocks.len(), decoded.block_count());
    assert!(blocks.windows(2).all(|pair| pair[0].id < pair[1].id));
    let payload: usize = blocks
        .iter()
        .map(|block| block.data.len() + block.image.map_or(0, |image| image.bytes.len()))
        .sum();
    assert!(24 + payload + decoded.main_data.len() <= bytes.len());
    let images: usize = blocks
        .iter()
        .map(|block| block.image.map_or(0, |image| image.bytes.len()))
        .sum();
    assert_eq!(images, decoded.image_bytes() as usize);
    for block in &blocks {
        assert_eq!(decoded.block(block.id).as_ref(), Some(block));
    }
}
