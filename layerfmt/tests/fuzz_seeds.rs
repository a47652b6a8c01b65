//! The seeds of the `layer_file` fuzz target (`fuzz/seeds/layer_file/`):
//! image and delta layers as `LayerWriter` writes them, one with a
//! two-level index. A seed's first byte is the target's mode (0: the file
//! as is, 1: checksums re-sealed after mutation). The test fails when a
//! committed seed differs from what today's writer writes;
//! `QUIRE_WRITE_FUZZ_SEEDS=1` writes them instead.
#![allow(clippy::cast_possible_truncation)]

use quire_fuzz_seeds::seed;

use quire_layerfmt::format::Compression;
use quire_layerfmt::writer::LayerDescriptor;
use quire_layerfmt::{BLOCK_SIZE, LayerKind, LayerWriter, ValueKind};
use quire_postgres::types::{BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};

fn key(block: u32) -> Key {
    let rel = RelTag {
        spc_oid: 1663,
        db_oid: 5,
        rel_number: 16384,
        fork: ForkNumber::Main,
    };
    Key::rel_block(rel, BlockNo(block))
}

/// A whole layer file of `(block, lsn, will_init, kind, value)` entries.
fn layer(
    kind: LayerKind,
    lsns: (u64, u64),
    entries: &[(u32, u64, bool, ValueKind, Vec<u8>)],
) -> Vec<u8> {
    let mut writer = LayerWriter::new(LayerDescriptor {
        kind,
        tenant_id: [0x4a; 16],
        timeline_id: [0x17; 16],
        key_range: (key(0), key(100_000)),
        lsn_range: (Lsn(lsns.0), Lsn(lsns.1)),
    });
    let mut file = vec![0u8; BLOCK_SIZE];
    for (block, lsn, will_init, value_kind, value) in entries {
        writer
            .add(
                key(*block),
                Lsn(*lsn),
                *value_kind,
                *will_init,
                Compression::None,
                value,
            )
            .expect("add");
        file.extend_from_slice(&writer.take_blocks().1);
    }
    let finished = writer.finish().expect("finish");
    file.extend_from_slice(&finished.tail);
    file[..BLOCK_SIZE].copy_from_slice(&finished.block0);
    file
}

fn page(seed: u32) -> Vec<u8> {
    (0..BLOCK_SIZE)
        .map(|i| (i as u32 ^ seed.wrapping_mul(2_654_435_761)) as u8)
        .collect()
}

fn with_mode(mode: u8, file: &[u8]) -> Vec<u8> {
    let mut bytes = vec![mode];
    bytes.extend_from_slice(file);
    bytes
}

#[test]
fn layer_file_seeds() {
    let image = layer(
        LayerKind::Image,
        (0x0100_0028, 0x0100_0029),
        &[
            (0, 0x0100_0028, true, ValueKind::PageImage, page(0)),
            (1, 0x0100_0028, true, ValueKind::PageImage, page(1)),
            (
                7,
                0x0100_0028,
                true,
                ValueKind::Other,
                3u32.to_le_bytes().to_vec(),
            ),
        ],
    );
    seed("layer_file", "image-3-keys.bin", &with_mode(0, &image));
    seed(
        "layer_file",
        "image-3-keys-resealed.bin",
        &with_mode(1, &image),
    );

    let delta = layer(
        LayerKind::Delta,
        (0x0100_0028, 0x0200_0000),
        &[
            (0, 0x0100_0100, true, ValueKind::PageImage, page(2)),
            (0, 0x0100_0200, false, ValueKind::WalRecord, vec![0xAB; 300]),
            (
                0,
                0x0100_0300,
                false,
                ValueKind::WalRecord,
                vec![0xCD; 9000],
            ),
            (3, 0x0100_0400, true, ValueKind::WalRecord, vec![0x11; 60]),
            (3, 0x0100_0500, false, ValueKind::WalRecord, vec![0x22; 60]),
        ],
    );
    seed("layer_file", "delta-chains.bin", &with_mode(0, &delta));
    seed(
        "layer_file",
        "delta-chains-resealed.bin",
        &with_mode(1, &delta),
    );

    // More entries than a leaf holds: two leaves under a root.
    let entries: Vec<_> = (0..250u32)
        .map(|i| {
            (
                i / 2,
                0x0100_0000 + u64::from(i) * 8,
                i % 2 == 0,
                ValueKind::WalRecord,
                vec![i as u8; 8],
            )
        })
        .collect();
    let deep = layer(LayerKind::Delta, (0x0100_0000, 0x0200_0000), &entries);
    seed(
        "layer_file",
        "delta-two-levels-resealed.bin",
        &with_mode(1, &deep),
    );
}
