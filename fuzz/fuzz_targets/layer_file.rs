//! Fuzz target: arbitrary bytes as a layer file (`quire_layerfmt`), opened,
//! scrubbed and read.
//!
//! The first byte chooses whether the rest is the file as it is, or the
//! file with its checksums made to match again (every block's table entry,
//! the table's CRC, the summary's CRC, as the writer computes them), so
//! that the checks behind the checksums (summary regions, index nodes,
//! leaf chains, value extents) are reached. The file is read from memory
//! through the same `BlockSource` contract the block cache keeps. Open,
//! the scrub (`verify_all`), the leaf walk, and lookups and value reads of
//! the first entries must return values or `LayerError`s, never panic or
//! allocate past the file's size. Seeds are image and delta layers the
//! project's writer produced (`fuzz/seeds/`).
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use quire_layerfmt::format::{LEAF_FANOUT, LeafEntry, SUMMARY_CRC_OFFSET, crc};
use quire_layerfmt::reader::check_block;
use quire_layerfmt::{BLOCK_SIZE, BlockSource, LayerError, LayerReader};
use quire_postgres::Lsn;

/// The file, in memory.
struct Memory(Vec<u8>);

impl BlockSource for Memory {
    type Block = Vec<u8>;

    fn block_count(&self) -> u32 {
        u32::try_from(self.0.len() / BLOCK_SIZE).unwrap_or(u32::MAX)
    }

    async fn read_block(&self, block: u32, expected: Option<u32>) -> Result<Vec<u8>, LayerError> {
        let start = block as usize * BLOCK_SIZE;
        let Some(bytes) = self.0.get(start..start + BLOCK_SIZE) else {
            return Err(LayerError::Read {
                file: "fuzz".into(),
                block,
                what: "past the end".into(),
            });
        };
        if let Some(expected) = expected {
            check_block("fuzz", block, bytes, expected)?;
        }
        Ok(bytes.to_vec())
    }
}

/// Runs a future that never waits (the source is memory).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}

fn u32_at(bytes: &[u8], at: usize) -> usize {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize
}

/// Recomputes every checksum the summary's table fields point at, as
/// `LayerWriter` does; leaves the file alone where they point outside it.
fn reseal(file: &mut [u8]) {
    let first = u32_at(file, 144);
    let count = u32_at(file, 148);
    let blocks = file.len() / BLOCK_SIZE;
    if first == 0 || first + count > blocks || first * 4 > count * BLOCK_SIZE {
        return;
    }
    let table = first * BLOCK_SIZE;
    for block in 1..first {
        let value = crc(&file[block * BLOCK_SIZE..(block + 1) * BLOCK_SIZE]);
        file[table + 4 * block..table + 4 * block + 4].copy_from_slice(&value.to_le_bytes());
    }
    file[table..table + 4].fill(0);
    let table_crc = crc(&file[table..table + count * BLOCK_SIZE]);
    file[152..156].copy_from_slice(&table_crc.to_le_bytes());
    let summary_crc = crc(&file[..SUMMARY_CRC_OFFSET]);
    file[SUMMARY_CRC_OFFSET..SUMMARY_CRC_OFFSET + 4].copy_from_slice(&summary_crc.to_le_bytes());
    let block0 = crc(&file[..BLOCK_SIZE]);
    file[table..table + 4].copy_from_slice(&block0.to_le_bytes());
}

fuzz_target!(|input: &[u8]| {
    let [mode, bytes @ ..] = input else {
        return;
    };
    let mut file = bytes.to_vec();
    file.resize(file.len().next_multiple_of(BLOCK_SIZE).max(BLOCK_SIZE), 0);
    if mode & 1 == 1 {
        reseal(&mut file);
    }
    let source = Memory(file);
    block_on(async {
        let Ok(reader) = LayerReader::open("fuzz", &source).await else {
            return;
        };
        assert!(reader.memory_bytes() <= source.0.len() + 1024);
        let scrubbed = reader.verify_all(&source).await;
        let mut entries: Vec<LeafEntry> = Vec::new();
        let walked = reader
            .for_each_leaf(&source, |leaf| {
                entries.extend_from_slice(leaf);
                Ok(())
            })
            .await;
        if scrubbed.is_ok() && walked.is_ok() {
            assert!(entries.len() <= source.0.len() / 40);
        }
        for entry in entries.iter().take(8) {
            if let Ok(value) = reader.read_value(&source, entry).await {
                assert_eq!(value.as_ref().len(), entry.length.get() as usize);
            }
            let key = entry.key();
            let _ = reader
                .newest_at_or_below(&source, key, Lsn(entry.lsn.get()))
                .await;
            let mut chain = Vec::new();
            let below = Lsn(entry.lsn.get().saturating_add(1));
            if reader
                .entries_for_reconstruction(&source, key, below, &mut chain)
                .await
                .is_ok()
            {
                // The walk stops at a leaf's end once it took the layer's entry count.
                let bound = reader.summary().entry_count.get() + LEAF_FANOUT as u64;
                assert!(chain.len() as u64 <= bound);
            }
        }
    });
});
