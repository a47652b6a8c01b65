//! The seeds of the `remote_index` fuzz target (`fuzz/seeds/remote_index/`):
//! indexes as the project writes them (a root timeline, a branch, one
//! without layers) and a generation object. A seed's first byte is the
//! target's mode (bit 0: re-sealed after mutation; bit 1: a generation
//! object). The test fails when a committed seed differs from what today's
//! encoders write; `QUIRE_WRITE_FUZZ_SEEDS=1` writes them instead.

use quire_fuzz_seeds::seed;
use quire_remote::generation::GenerationRecord;
use quire_remote::{Generation, Id, IndexLayer, LayerFileName, TimelineIndex};

fn with_mode(mode: u8, bytes: &[u8]) -> Vec<u8> {
    let mut seed = vec![mode];
    seed.extend_from_slice(bytes);
    seed
}

fn layer(name: &str, size: u64, generation: u32) -> IndexLayer {
    IndexLayer {
        name: LayerFileName::new(name).expect("a layer name"),
        size,
        crc32c: quire_checksum::crc32c(name.as_bytes()),
        generation: Generation::new(generation).expect("a generation"),
    }
}

#[test]
fn remote_index_seeds() {
    let key = |n: u32| format!("{:036x}", u128::from(n) << 40);
    let root = TimelineIndex {
        generation: Generation::new(3).unwrap(),
        disk_consistent_lsn: 0x0152_3a80,
        gc_cutoff_lsn: 0x0110_0000,
        ancestor: None,
        layers: vec![
            layer(
                &format!(
                    "delta-{}-{}-0000000001000029-0000000001523a80",
                    key(0),
                    key(5000)
                ),
                3 << 20,
                3,
            ),
            layer(
                &format!(
                    "image-{}-{}-0000000001000028-0000000001000029",
                    key(0),
                    key(u32::MAX)
                ),
                40 << 20,
                1,
            ),
        ],
    };
    let bytes = root.encode().unwrap();
    seed("remote_index", "root.bin", &with_mode(0, &bytes));
    seed("remote_index", "root-resealed.bin", &with_mode(1, &bytes));
    let branch = TimelineIndex {
        generation: Generation::new(1).unwrap(),
        disk_consistent_lsn: 0x0200_0000,
        gc_cutoff_lsn: 0,
        ancestor: Some((Id([0x5a; 16]), 0x0152_3a80)),
        layers: Vec::new(),
    };
    seed(
        "remote_index",
        "branch.bin",
        &with_mode(0, &branch.encode().unwrap()),
    );
    let record = GenerationRecord {
        generation: Generation::new(7).unwrap(),
        holder: "pageserver-1".to_owned(),
    };
    seed(
        "remote_index",
        "generation.bin",
        &with_mode(2, &record.encode().unwrap()),
    );
    seed(
        "remote_index",
        "generation-resealed.bin",
        &with_mode(3, &record.encode().unwrap()),
    );
}
