//! The seeds of the `timeline_metadata` fuzz target
//! (`fuzz/seeds/timeline_metadata/`): metadata files as the project writes
//! them, for a root timeline and a branch. A seed's first byte is the
//! target's mode (0: the file as is, 1: CRC re-sealed after mutation).
//! The test fails when a committed seed differs from what today's encoder
//! writes; `QUIRE_WRITE_FUZZ_SEEDS=1` writes them instead.

use quire_fuzz_seeds::seed;

use quire_postgres::types::{BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::layer_file::{LayerKindName, LayerName};
use quire_shard::metadata::TimelineMetadata;

fn block(n: u32) -> Key {
    let rel = RelTag {
        spc_oid: 1663,
        db_oid: 5,
        rel_number: 16384,
        fork: ForkNumber::Main,
    };
    Key::rel_block(rel, BlockNo(n))
}

fn with_mode(mode: u8, metadata: &TimelineMetadata) -> Vec<u8> {
    let mut bytes = vec![mode];
    bytes.extend_from_slice(&metadata.encode());
    bytes
}

#[test]
fn timeline_metadata_seeds() {
    let root = TimelineMetadata {
        disk_consistent_lsn: Lsn(0x0152_3A80),
        ancestor: None,
        gc_cutoff_lsn: Lsn(0x0110_0000),
        layers: vec![
            LayerName {
                kind: LayerKindName::Image,
                key_start: Key::MIN,
                key_end: Key::MAX,
                lsn_start: Lsn(0x0100_0028),
                lsn_end: Lsn(0x0100_0029),
            },
            LayerName {
                kind: LayerKindName::Delta,
                key_start: block(0),
                key_end: block(5000),
                lsn_start: Lsn(0x0100_0029),
                lsn_end: Lsn(0x0152_3A80),
            },
        ],
    };
    seed("timeline_metadata", "root.bin", &with_mode(0, &root));
    seed(
        "timeline_metadata",
        "root-resealed.bin",
        &with_mode(1, &root),
    );
    let branch = TimelineMetadata {
        disk_consistent_lsn: Lsn(0x0140_0001),
        ancestor: Some(([0x17; 16], Lsn(0x0140_0000))),
        gc_cutoff_lsn: Lsn(0),
        layers: Vec::new(),
    };
    seed(
        "timeline_metadata",
        "branch-resealed.bin",
        &with_mode(1, &branch),
    );
}
