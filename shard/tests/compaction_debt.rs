//! Compaction always pays the L0 debt down: L0 layers that image layers
//! separate (image creation between every flush, as the pageserver's
//! maintenance does while a load writes) are each rewritten as an L1, so
//! the L0 count that holds ingest falls, and every read is unchanged.
//!
//! Before, each such L0 was a run of one that compaction skipped: the
//! count stayed above the receiver's limit and ingest was held for good
//! (seen under `pgbench -i -s 16` on a local cluster).
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use quire_io::{LocalConfig, run_local};
use quire_postgres::types::{BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::compact::l0_count;
use quire_shard::{CoreContext, ImagePolicy, Timeline, Value, materialize};
use support::AppendRedo;

mod support;

const KEYS: u32 = 40;
const ROUNDS: u64 = 6;

fn key(block: u32) -> Key {
    Key::rel_block(
        RelTag {
            spc_oid: 1663,
            db_oid: 5,
            rel_number: 16_400,
            fork: ForkNumber::Main,
        },
        BlockNo(block),
    )
}

async fn read_all(timeline: &Timeline, at: Lsn) -> Vec<Option<std::rc::Rc<[u8]>>> {
    let mut pages = Vec::new();
    for block in 0..KEYS {
        let inputs = timeline.get(key(block), at).await.unwrap();
        pages.push(
            materialize(&AppendRedo, key(block), at, &inputs)
                .await
                .unwrap(),
        );
    }
    pages
}

#[test]
fn l0_layers_between_images_are_compacted() {
    run_local(&LocalConfig::default(), || async {
        let dir = tempfile::tempdir().unwrap();
        let timeline = Timeline::create(
            dir.path(),
            [7; 16],
            [8; 16],
            Lsn(0x1000),
            CoreContext::new(8 << 20),
        )
        .await
        .unwrap();
        let policy = ImagePolicy {
            partition_keys: 16,
            max_delta_layers: 1,
            max_chain_records: 1,
        };
        let mut lsn = 0x1000;
        let mut ends = Vec::new();
        for round in 0..ROUNDS {
            for block in 0..KEYS {
                lsn += 0x10;
                let value = if round == 0 {
                    Value::Image(vec![block as u8; 8192].into())
                } else {
                    Value::Record {
                        will_init: false,
                        bytes: vec![round as u8; 40].into(),
                    }
                };
                timeline.put(key(block), Lsn(lsn), value).await.unwrap();
            }
            timeline.advance(Lsn(lsn + 8));
            timeline.freeze();
            timeline.flush().await.unwrap();
            ends.push(Lsn(lsn));
            timeline
                .create_image_layers(&AppendRedo, policy)
                .await
                .unwrap();
        }
        let l0_before = l0_count(&timeline);
        assert!(
            l0_before >= 4,
            "{l0_before} L0 layers: the test needs at least 4"
        );
        let mut before = Vec::new();
        for at in &ends {
            before.push(read_all(&timeline, *at).await);
        }

        let compacted = timeline.compact_l0(4, 128 << 20).await.unwrap();
        assert_eq!(compacted, l0_before, "every L0 compacted");
        assert_eq!(l0_count(&timeline), 0, "no L0 left");
        for (at, want) in ends.iter().zip(&before) {
            assert!(
                read_all(&timeline, *at).await == *want,
                "reads at {at} changed"
            );
        }
        for layer in timeline.layer_map().layers() {
            layer.verify().await.unwrap();
        }

        // And the same after a reload from disk.
        let reloaded = Timeline::load(
            dir.path(),
            [7; 16],
            [8; 16],
            CoreContext::new(8 << 20),
            None,
        )
        .await
        .unwrap();
        assert_eq!(l0_count(&reloaded), 0);
        for (at, want) in ends.iter().zip(&before) {
            assert!(
                read_all(&reloaded, *at).await == *want,
                "reads at {at} changed after reload"
            );
        }
    })
    .unwrap();
}
