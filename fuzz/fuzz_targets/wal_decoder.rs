//! Fuzz target: arbitrary bytes through the whole WAL decoding path.
//!
//! The input's first byte picks the chunk size the bytes are fed in; the
//! rest is WAL of 1 MiB segments, decoded from the address its first page
//! header states when that is a page boundary (seeds are windows of real
//! WAL), else from the second segment's start. Every record that comes
//! out is decoded, its images restored and its effects extracted. Nothing
//! may panic, hang or allocate without bound; errors are expected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quire_postgres::Lsn;
use quire_postgres::types::BLCKSZ;
use quire_postgres::wal::effects::{page_effects, record_effects};
use quire_postgres::wal::record::decode_record;
use quire_postgres::wal::stream::WalStreamDecoder;

const SEGMENT: u32 = 1 << 20;

fuzz_target!(|input: &[u8]| {
    let [chunk_selector, wal @ ..] = input else {
        return;
    };
    let chunk = 1 + usize::from(*chunk_selector) * 37;
    let stated = wal.get(8..16).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    let start = if stated != 0 && stated % 8192 == 0 { Lsn(stated) } else { Lsn(u64::from(SEGMENT)) };
    let mut decoder = WalStreamDecoder::new(start, SEGMENT);
    let mut page = [0u8; BLCKSZ];
    for piece in wal.chunks(chunk) {
        decoder.feed(piece);
        loop {
            match decoder.next_record() {
                Ok(Some(record)) => {
                    if let Ok(decoded) = decode_record(record.bytes) {
                        for block in &decoded.blocks {
                            if let Some(image) = &block.image {
                                let _ = image.restore(&mut page);
                            }
                        }
                        let _ = page_effects(&decoded, record.end);
                        let _ = record_effects(&decoded);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
