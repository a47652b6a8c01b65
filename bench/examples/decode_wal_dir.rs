//! Decodes every record of a directory of WAL segments once, reading each
//! file in chunks through one reused buffer, and prints the counts: a fixed
//! workload for profiling (`perf record`, or `valgrind --tool=callgrind`).
//!
//! `decode_wal_dir DIR [CHUNK_BYTES]`

use std::io::Read;

use anyhow::{Context, Result};
use quire_cluster::wal_segment_files;
use quire_postgres::wal::page::read_segment_header;
use quire_postgres::wal::record::decode_record;
use quire_postgres::wal::stream::WalStreamDecoder;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .context("usage: decode_wal_dir DIR [CHUNK_BYTES]")?;
    let chunk_size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1 << 20);
    let segments = wal_segment_files(std::path::Path::new(&dir))?;
    let first = std::fs::read(&segments[0])?;
    let header = read_segment_header(&first)?;
    let (start, segment_size) = (header.start, header.segment_size);
    let mut decoder = WalStreamDecoder::new(start, segment_size);
    let mut chunk = vec![0u8; chunk_size];
    let (mut records, mut blocks) = (0u64, 0usize);
    'files: for path in &segments {
        let mut file = std::fs::File::open(path)?;
        loop {
            let n = file.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            decoder.feed(&chunk[..n]);
            loop {
                match decoder.next_record() {
                    Ok(Some(record)) => {
                        blocks += decode_record(record.bytes)?.block_count();
                        records += 1;
                    }
                    Ok(None) => break,
                    Err(_) => break 'files,
                }
            }
        }
    }
    println!("{records} records, {blocks} block references");
    Ok(())
}
