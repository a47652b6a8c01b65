//! Corruption through the engine: a timeline with delta layers (L0 and L1)
//! and image layers is written and closed; then, one at a time, a bit is
//! flipped in every block of every layer file. For each flip the timeline
//! is reloaded with a cold cache; loading may refuse the layer, and
//! otherwise every read must give the intact value or a corruption error
//! naming the file and block, never another value, and a scrub of the
//! damaged layer must report the block.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use quire_io::{LocalConfig, run_local};
use quire_layerfmt::LayerError;
use quire_postgres::types::{BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::{CoreContext, ImagePolicy, Timeline, TimelineError, Value, materialize};
use support::AppendRedo;

mod support;

const TENANT: [u8; 16] = [5; 16];
const TIMELINE: [u8; 16] = [6; 16];

fn key(n: u32) -> Key {
    Key::rel_block(
        RelTag {
            spc_oid: 1663,
            db_oid: 2,
            rel_number: 30000,
            fork: ForkNumber::Main,
        },
        BlockNo(n),
    )
}

async fn build(dir: &Path) -> Vec<Lsn> {
    let core = CoreContext::new(8 << 20);
    let timeline = Timeline::create(dir, TENANT, TIMELINE, Lsn(100), core)
        .await
        .unwrap();
    let mut lsn = 100;
    let mut read_points = Vec::new();
    for round in 0..6u64 {
        for n in 0..40u32 {
            lsn += 1;
            let bytes: Rc<[u8]> = (0..if n % 4 == 0 {
                8192
            } else {
                300 + n as usize * 10
            })
                .map(|i| (i as u64 * 13 + lsn) as u8)
                .collect::<Vec<u8>>()
                .into();
            let value = if n % 4 == 0 || round == 0 {
                Value::Image(bytes)
            } else {
                Value::Record {
                    will_init: false,
                    bytes,
                }
            };
            timeline.put(key(n), Lsn(lsn), value).await.unwrap();
        }
        timeline.freeze();
        timeline.flush().await.unwrap();
        read_points.push(Lsn(lsn));
        if round == 3 {
            timeline.compact_l0(2, 64 << 10).await.unwrap();
            let policy = ImagePolicy {
                partition_keys: 16,
                max_delta_layers: 1,
                max_chain_records: 1,
            };
            let report = timeline
                .create_image_layers(&AppendRedo, policy)
                .await
                .unwrap();
            assert!(!report.layers.is_empty());
        }
    }
    read_points
}

/// Every (key, LSN) read's value, or the first corruption error.
async fn read_all(
    timeline: &Timeline,
    points: &[Lsn],
) -> Vec<((u32, Lsn), Result<Option<Rc<[u8]>>, LayerError>)> {
    let mut out = Vec::new();
    for &at in points {
        for n in 0..40 {
            let result = match timeline.get(key(n), at).await {
                Ok(inputs) => Ok(materialize(&AppendRedo, key(n), at, &inputs).await.unwrap()),
                Err(TimelineError::Layer(error)) => Err(error),
                Err(other) => panic!("read of {n} at {at}: unexpected error {other}"),
            };
            out.push(((n, at), result));
        }
    }
    out
}

async fn run(dir: &Path) {
    let points = build(dir).await;
    let intact: BTreeMap<(u32, Lsn), Option<Rc<[u8]>>> = {
        let timeline = Timeline::load(dir, TENANT, TIMELINE, CoreContext::new(8 << 20), None)
            .await
            .unwrap();
        read_all(&timeline, &points)
            .await
            .into_iter()
            .map(|(at, value)| (at, value.unwrap()))
            .collect()
    };
    let mut layers: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "metadata")
        .collect();
    layers.sort();
    let kinds: Vec<bool> = layers
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("image")
        })
        .collect();
    assert!(kinds.contains(&true) && kinds.contains(&false));

    let (mut flips, mut refused_on_load, mut failed_reads) = (0, 0, 0);
    for path in &layers {
        let original = std::fs::read(path).unwrap();
        let blocks = original.len() / 8192;
        for block in 0..blocks {
            let offset = block * 8192 + (block * 2_654_435_761 + 17) % 8192;
            let mut damaged = original.clone();
            damaged[offset] ^= 1 << (block % 8);
            std::fs::write(path, &damaged).unwrap();
            flips += 1;
            let loaded =
                Timeline::load(dir, TENANT, TIMELINE, CoreContext::new(8 << 20), None).await;
            match loaded {
                Err(TimelineError::Layer(LayerError::Corrupt { .. })) => refused_on_load += 1,
                Err(other) => panic!(
                    "block {block} of {}: load failed oddly: {other}",
                    path.display()
                ),
                Ok(timeline) => {
                    for (at, result) in read_all(&timeline, &points).await {
                        match result {
                            Ok(value) => assert!(
                                value == intact[&at],
                                "block {block} of {}: read {at:?} served a wrong value",
                                path.display()
                            ),
                            Err(LayerError::Corrupt { block: bad, .. }) => {
                                assert_eq!(bad as usize, block, "the error names another block");
                                failed_reads += 1;
                            }
                            Err(other) => panic!("unexpected error {other}"),
                        }
                    }
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    let layer = timeline
                        .layer_map()
                        .layers()
                        .iter()
                        .find(|l| l.name().to_string() == name)
                        .unwrap()
                        .clone();
                    let scrub = layer.verify().await;
                    assert!(
                        matches!(scrub, Err(LayerError::Corrupt { block: bad, .. }) if bad as usize == block),
                        "block {block} of {}: scrub gave {scrub:?}",
                        path.display()
                    );
                }
            }
        }
        std::fs::write(path, &original).unwrap();
    }
    println!(
        "{} layers, {flips} blocks flipped: {refused_on_load} refused on load, {failed_reads} reads failed with a corruption error, no wrong value served",
        layers.len()
    );
    assert!(failed_reads > 0);
}

#[test]
fn flipped_bits_are_reported_never_served() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().to_owned();
    run_local(
        &LocalConfig {
            io_memory_bytes: 2 << 20,
            ..LocalConfig::default()
        },
        move || async move { run(&path).await },
    )
    .unwrap();
}
