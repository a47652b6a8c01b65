//! Layers written by `LayerWriter` read back through `LayerReader` exactly as
//! a plain model says, and a flipped bit in any block is reported, never
//! served.
// Test helpers may unwrap: their inputs are the test's own.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;
use quire_layerfmt::format::{Compression, LeafEntry, SUMMARY_CRC_OFFSET, Summary, crc};
use quire_layerfmt::reader::check_block;
use quire_layerfmt::writer::LayerDescriptor;
use quire_layerfmt::{
    BLOCK_SIZE, BlockSource, LayerError, LayerKind, LayerReader, LayerWriter, ValueKind,
};
use quire_postgres::types::{BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

/// Runs a future that never waits (every block source here is memory).
fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}

/// A layer file in memory; counts block reads, and among them index reads.
struct MemoryFile {
    bytes: Vec<u8>,
    reads: RefCell<u32>,
    index_reads: RefCell<u32>,
}

impl BlockSource for MemoryFile {
    type Block = Vec<u8>;

    fn block_count(&self) -> u32 {
        u32::try_from(self.bytes.len() / BLOCK_SIZE).unwrap()
    }

    async fn read_block(
        &self,
        block: u32,
        expected_crc: Option<u32>,
    ) -> Result<Vec<u8>, LayerError> {
        *self.reads.borrow_mut() += 1;
        let start = block as usize * BLOCK_SIZE;
        let Some(bytes) = self.bytes.get(start..start + BLOCK_SIZE) else {
            return Err(LayerError::Read {
                file: "memory".into(),
                block,
                what: "past the end".into(),
            });
        };
        if let Some(expected) = expected_crc {
            check_block("memory", block, bytes, expected)?;
        }
        Ok(bytes.to_vec())
    }

    async fn read_index_block(&self, block: u32, expected_crc: u32) -> Result<Vec<u8>, LayerError> {
        *self.index_reads.borrow_mut() += 1;
        self.read_block(block, Some(expected_crc)).await
    }
}

fn rel() -> RelTag {
    RelTag {
        spc_oid: 1663,
        db_oid: 5,
        rel_number: 16384,
        fork: ForkNumber::Main,
    }
}

fn key(block: u32) -> Key {
    Key::rel_block(rel(), BlockNo(block))
}

/// The model: `(block, lsn) → (will_init, value)`.
type Model = BTreeMap<(u32, u64), (bool, Vec<u8>)>;

fn write_layer(kind: LayerKind, model: &Model, lsn_range: (Lsn, Lsn)) -> Vec<u8> {
    let descriptor = LayerDescriptor {
        kind,
        tenant_id: [1; 16],
        timeline_id: [2; 16],
        key_range: (key(0), key(u32::MAX - 1)),
        lsn_range,
    };
    let mut writer = LayerWriter::new(descriptor);
    let mut file = vec![0u8; BLOCK_SIZE];
    let take = |writer: &mut LayerWriter, file: &mut Vec<u8>| {
        let (first, blocks) = writer.take_blocks();
        assert_eq!(
            file.len(),
            first as usize * BLOCK_SIZE,
            "blocks come in order"
        );
        file.extend_from_slice(&blocks);
    };
    for (&(block, lsn), (will_init, value)) in model {
        let kind = if value.len() == BLOCK_SIZE {
            ValueKind::PageImage
        } else {
            ValueKind::WalRecord
        };
        writer
            .add(
                key(block),
                Lsn(lsn),
                kind,
                *will_init,
                Compression::None,
                value,
            )
            .unwrap();
        take(&mut writer, &mut file);
    }
    let finished = writer.finish().unwrap();
    assert_eq!(file.len(), finished.first_block as usize * BLOCK_SIZE);
    file.extend_from_slice(&finished.tail);
    file[..BLOCK_SIZE].copy_from_slice(&finished.block0);
    assert_eq!(
        file.len(),
        finished.summary.block_count.get() as usize * BLOCK_SIZE
    );
    file
}

fn value(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (seed as usize * 131 + i * 7) as u8)
        .collect()
}

/// What reconstruction of `block` below `lsn` must return from the model.
fn expected_chain(model: &Model, block: u32, below: u64) -> (Vec<u64>, bool) {
    let mut lsns = Vec::new();
    for (&(_, lsn), (will_init, _)) in model.range((block, 0)..(block, below)).rev() {
        lsns.push(lsn);
        if *will_init {
            return (lsns, true);
        }
    }
    (lsns, false)
}

fn check_layer(model: &Model, file: Vec<u8>, probe_lsns: &[u64]) {
    let source = MemoryFile {
        bytes: file,
        reads: RefCell::new(0),
        index_reads: RefCell::new(0),
    };
    let reader = block_on(LayerReader::open("memory", &source)).unwrap();
    assert_eq!(reader.summary().entry_count.get(), model.len() as u64);
    let blocks: Vec<u32> = model.keys().map(|(b, _)| *b).collect();
    for &block in blocks.iter().chain(&[7_777_777]) {
        for &below in probe_lsns {
            let mut out: Vec<LeafEntry> = Vec::new();
            let complete = block_on(reader.entries_for_reconstruction(
                &source,
                key(block),
                Lsn(below),
                &mut out,
            ))
            .unwrap();
            let (expected, expected_complete) = expected_chain(model, block, below);
            let got: Vec<u64> = out.iter().map(|e| e.lsn.get()).collect();
            assert_eq!(
                (got.clone(), complete),
                (expected, expected_complete),
                "block {block} below {below}"
            );
            for (entry, lsn) in out.iter().zip(got) {
                let bytes = block_on(reader.read_value(&source, entry)).unwrap();
                assert_eq!(bytes.as_ref(), model[&(block, lsn)].1.as_slice());
                assert_eq!(entry.will_init(), model[&(block, lsn)].0);
            }
        }
    }
    let mut scanned = 0;
    block_on(reader.for_each_leaf(&source, |entries| {
        scanned += entries.len();
        Ok(())
    }))
    .unwrap();
    assert_eq!(scanned, model.len());
    assert!(block_on(reader.verify_all(&source)).is_ok());
}

#[test]
fn an_image_page_reads_in_one_block() {
    let mut model = Model::new();
    model.insert((1, 100), (true, value(1, 100)));
    model.insert((2, 100), (true, value(2, BLOCK_SIZE)));
    let file = write_layer(LayerKind::Image, &model, (Lsn(100), Lsn(101)));
    let source = MemoryFile {
        bytes: file,
        reads: RefCell::new(0),
        index_reads: RefCell::new(0),
    };
    let reader = block_on(LayerReader::open("memory", &source)).unwrap();
    *source.reads.borrow_mut() = 0;
    let entry = block_on(reader.newest_at_or_below(&source, key(2), Lsn(100)))
        .unwrap()
        .unwrap();
    // The lookup read the index alone, and through the index path (a
    // caching source keeps those blocks apart from values).
    assert_eq!(*source.reads.borrow(), *source.index_reads.borrow());
    assert!(*source.index_reads.borrow() >= 1);
    *source.reads.borrow_mut() = 0;
    *source.index_reads.borrow_mut() = 0;
    let bytes = block_on(reader.read_value(&source, &entry)).unwrap();
    assert!(matches!(
        bytes,
        quire_layerfmt::reader::ValueBytes::Block(_)
    ));
    assert_eq!(*source.reads.borrow(), 1, "one block for a page image");
    assert_eq!(
        *source.index_reads.borrow(),
        0,
        "a value is not an index block"
    );
    assert_eq!(bytes.as_ref(), value(2, BLOCK_SIZE).as_slice());
    assert!(
        block_on(reader.newest_at_or_below(&source, key(3), Lsn(100)))
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_large_delta_layer_has_a_deep_index_and_bounded_lookups() {
    let mut model = Model::new();
    for block in 0..3000u32 {
        for step in 0..20u64 {
            let lsn = 1000 + step * 10 + u64::from(block % 7);
            let will_init = step % 8 == 0;
            let len = if will_init {
                BLOCK_SIZE
            } else {
                30 + (block as usize * 13 + step as usize) % 300
            };
            model.insert(
                (block, lsn),
                (will_init, value(lsn ^ u64::from(block), len)),
            );
        }
    }
    let file = write_layer(LayerKind::Delta, &model, (Lsn(1000), Lsn(2000)));
    let source = MemoryFile {
        bytes: file,
        reads: RefCell::new(0),
        index_reads: RefCell::new(0),
    };
    let reader = block_on(LayerReader::open("memory", &source)).unwrap();
    let height = reader.summary().index_height.get();
    assert!(
        height >= 3,
        "60,000 entries need three levels, got {height}"
    );
    *source.reads.borrow_mut() = 0;
    let entry = block_on(reader.newest_at_or_below(&source, key(1234), Lsn(1100)))
        .unwrap()
        .unwrap();
    assert_eq!(*source.reads.borrow(), height, "one block per level");
    assert!(entry.lsn.get() <= 1100);
    // The internal nodes stay resident: a lookup elsewhere in the layer reads
    // one leaf, plus each internal node of its path not read before (below
    // the root, at most one per level).
    *source.reads.borrow_mut() = 0;
    block_on(reader.newest_at_or_below(&source, key(1234), Lsn(1150))).unwrap();
    assert_eq!(
        *source.reads.borrow(),
        1,
        "a warm path reads its leaf alone"
    );
    *source.reads.borrow_mut() = 0;
    block_on(reader.newest_at_or_below(&source, key(2900), Lsn(1100))).unwrap();
    assert!(
        *source.reads.borrow() < height,
        "the root was read again: {} reads",
        source.reads.borrow()
    );
    check_layer(&model, source.bytes, &[1000, 1001, 1050, 1095, 1999, 5000]);
}

#[test]
fn a_flipped_bit_in_any_block_is_reported() {
    let mut model = Model::new();
    for block in 0..400u32 {
        model.insert(
            (block, 10),
            (
                true,
                value(
                    u64::from(block),
                    if block % 3 == 0 { BLOCK_SIZE } else { 500 },
                ),
            ),
        );
    }
    let file = write_layer(LayerKind::Image, &model, (Lsn(10), Lsn(11)));
    let blocks = file.len() / BLOCK_SIZE;
    for block in 0..blocks {
        for bit in [0usize, 8191 * 8 + 7, (block * 977) % (BLOCK_SIZE * 8)] {
            let mut corrupt = file.clone();
            corrupt[block * BLOCK_SIZE + bit / 8] ^= 1 << (bit % 8);
            let source = MemoryFile {
                bytes: corrupt,
                reads: RefCell::new(0),
                index_reads: RefCell::new(0),
            };
            let outcome = block_on(async {
                let reader = LayerReader::open("memory", &source).await?;
                reader.verify_all(&source).await
            });
            match outcome {
                Err(LayerError::Corrupt {
                    block: reported, ..
                }) => {
                    // Block 0's and the table's damage may be reported on either.
                    let _ = reported;
                }
                other => panic!("block {block} bit {bit}: {other:?}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn delta_layers_match_the_model(
        entries in prop::collection::btree_map(
            (0u32..300, 1u64..500),
            (any::<bool>(), prop_oneof![0usize..64, 100usize..3000, Just(BLOCK_SIZE)]),
            0..600,
        ),
    ) {
        let model: Model = entries
            .into_iter()
            .map(|((block, lsn), (will_init, len))| ((block, lsn), (will_init, value(lsn * 1000 + u64::from(block), len))))
            .collect();
        let file = write_layer(LayerKind::Delta, &model, (Lsn(1), Lsn(500)));
        check_layer(&model, file, &[1, 2, 100, 250, 499, 500, 10_000]);
    }
}

/// Rewrites block 0's summary with `change` and a CRC that matches again
/// (what a buggy writer or a deliberate forgery would leave).
fn forge_summary(file: &mut [u8], change: impl FnOnce(&mut Summary)) {
    let (mut summary, _) = Summary::read_from_prefix(&file[..BLOCK_SIZE]).unwrap();
    change(&mut summary);
    file[..size_of::<Summary>()].copy_from_slice(summary.as_bytes());
    let summary_crc = crc(&file[..SUMMARY_CRC_OFFSET]);
    file[SUMMARY_CRC_OFFSET..SUMMARY_CRC_OFFSET + 4].copy_from_slice(&summary_crc.to_le_bytes());
}

/// A summary whose checksummed fields claim more than the file holds is
/// `Corrupt` before anything is allocated on its word (a table of 2^31
/// blocks was a 16 TiB allocation: an abort, not an error).
#[test]
fn summaries_claiming_more_than_the_file_are_corrupt() {
    let mut model = Model::new();
    for block in 0..50 {
        model.insert((block, 10), (true, value(u64::from(block), 300)));
    }
    let file = write_layer(LayerKind::Delta, &model, (Lsn(1), Lsn(20)));
    let forged = |change: &dyn Fn(&mut Summary)| {
        let mut forged = file.clone();
        forge_summary(&mut forged, change);
        forged
    };
    let mut truncated = file.clone();
    truncated.truncate(file.len() - BLOCK_SIZE);
    let mut extended = file.clone();
    extended.extend_from_slice(&[0; BLOCK_SIZE]);
    let cases = [
        (
            "huge checksum table",
            forged(&|s: &mut Summary| {
                let count = 0x7FFF_0000;
                s.checksum_block_count = U32::new(count);
                s.block_count = U32::new(s.checksum_first_block.get() + count);
            }),
        ),
        (
            "more entries than the index holds",
            forged(&|s: &mut Summary| s.entry_count = U64::new(u64::MAX)),
        ),
        (
            "a table of more blocks than its entries need",
            forged(&|s: &mut Summary| {
                s.checksum_block_count = U32::new(s.checksum_block_count.get() + 1);
                s.block_count = U32::new(s.block_count.get() + 1);
            }),
        ),
        ("a file a block short", truncated),
        ("a file a block long", extended),
    ];
    for (what, forged) in cases {
        let source = MemoryFile {
            bytes: forged,
            reads: RefCell::new(0),
            index_reads: RefCell::new(0),
        };
        let outcome = block_on(LayerReader::open("memory", &source));
        assert!(
            matches!(outcome, Err(LayerError::Corrupt { block: 0, .. })),
            "{what}: {outcome:?}"
        );
        assert_eq!(*source.reads.borrow(), 1, "{what}: only block 0 is read");
    }
}
