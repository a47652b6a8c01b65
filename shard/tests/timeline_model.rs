//! The timeline against a plain model: random puts of images and records
//! across keys at increasing LSNs, freezes, flushes to L0 layers on disk,
//! and restarts (reloading from the metadata); every GetPage@LSN must
//! return exactly the reconstruction inputs the model implies.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;

use glommio::LocalExecutorBuilder;
use proptest::prelude::*;
use quire_postgres::types::{BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::{CoreContext, ReconstructInputs, Timeline, Value};

const TENANT: [u8; 16] = [7; 16];
const TIMELINE: [u8; 16] = [9; 16];

#[derive(Clone, Debug)]
enum Op {
    Put {
        key: u32,
        lsn_step: u64,
        image: bool,
        will_init: bool,
        len: usize,
    },
    Freeze,
    Flush,
    Restart,
    Get {
        key: u32,
        back: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0u32..24, 1u64..4, any::<bool>(), any::<bool>(), prop_oneof![0usize..100, Just(8192usize), 100usize..3000])
            .prop_map(|(key, lsn_step, image, will_init, len)| Op::Put { key, lsn_step, image, will_init, len }),
        1 => Just(Op::Freeze),
        1 => Just(Op::Flush),
        1 => Just(Op::Restart),
        4 => (0u32..24, 0u64..200).prop_map(|(key, back)| Op::Get { key, back }),
    ]
}

fn key(n: u32) -> Key {
    Key::rel_block(
        RelTag {
            spc_oid: 1663,
            db_oid: 5,
            rel_number: 16384 + n % 3,
            fork: ForkNumber::Main,
        },
        BlockNo(n),
    )
}

fn bytes(seed: u64, len: usize) -> Rc<[u8]> {
    (0..len)
        .map(|i| (seed as usize * 37 + i * 11) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// What the model says `get(key, lsn)` returns.
fn expected(model: &BTreeMap<(u32, u64), Value>, key: u32, lsn: u64) -> ReconstructInputs {
    let mut newest_first = Vec::new();
    for (&(_, at), value) in model.range((key, 0)..=(key, lsn)).rev() {
        newest_first.push((Lsn(at), value.clone()));
        if value.is_base() {
            break;
        }
    }
    let image = match newest_first.last() {
        Some((at, Value::Image(bytes))) => {
            let image = Some((*at, bytes.clone()));
            newest_first.pop();
            image
        }
        _ => None,
    };
    newest_first.reverse();
    ReconstructInputs {
        image,
        records: newest_first,
    }
}

async fn run(ops: Vec<Op>, dir: &Path) {
    let core = CoreContext::new(4 << 20);
    let mut timeline = Timeline::create(dir, TENANT, TIMELINE, Lsn(100), core.clone())
        .await
        .unwrap();
    let mut model: BTreeMap<(u32, u64), Value> = BTreeMap::new();
    let mut lsn = 100u64;
    for op in ops {
        match op {
            Op::Put {
                key: k,
                lsn_step,
                image,
                will_init,
                len,
            } => {
                lsn += lsn_step;
                let value = if image {
                    Value::Image(bytes(lsn, len))
                } else {
                    Value::Record {
                        will_init,
                        bytes: bytes(lsn + 1, len.min(500)),
                    }
                };
                timeline.put(key(k), Lsn(lsn), value.clone()).unwrap();
                model.insert((k, lsn), value);
            }
            Op::Freeze => timeline.freeze(),
            Op::Flush => {
                timeline.flush().await.unwrap();
            }
            Op::Restart => {
                let disk_consistent = timeline.disk_consistent_lsn().0;
                drop(timeline);
                timeline = Timeline::load(dir, TENANT, TIMELINE, core.clone())
                    .await
                    .unwrap();
                assert_eq!(timeline.disk_consistent_lsn().0, disk_consistent);
                // What was not flushed must be re-ingested; the model forgets it.
                model.retain(|&(_, at), _| at < disk_consistent);
                lsn = lsn.max(disk_consistent);
            }
            Op::Get { key: k, back } => {
                let at = lsn.saturating_sub(back);
                let got = timeline.get(key(k), Lsn(at)).await.unwrap();
                assert_eq!(got, expected(&model, k, at), "key {k} at {at}");
            }
        }
    }
    for k in 0..24 {
        for at in [100, lsn / 2, lsn.saturating_sub(7), lsn] {
            let got = timeline.get(key(k), Lsn(at)).await.unwrap();
            assert_eq!(got, expected(&model, k, at), "final: key {k} at {at}");
        }
    }
}

fn on_executor(ops: Vec<Op>) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().to_owned();
    LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move { run(ops, &path).await })
        .unwrap()
        .join()
        .unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn timeline_matches_the_model(ops in prop::collection::vec(op(), 1..250)) {
        on_executor(ops);
    }
}

#[test]
fn stray_and_half_written_layers_are_removed_on_load() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().to_owned();
    LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move {
            let core = CoreContext::new(1 << 20);
            let timeline = Timeline::create(&path, TENANT, TIMELINE, Lsn(10), core.clone()).await.unwrap();
            timeline.put(key(1), Lsn(11), Value::Image(bytes(1, 8192))).unwrap();
            timeline.freeze();
            timeline.flush().await.unwrap();
            drop(timeline);
            std::fs::write(path.join("delta-garbage.tmp"), b"half a layer").unwrap();
            std::fs::write(
                path.join("delta-000000000000000000000000000000000000-ffffffffffffffffffffffffffffffffffff-0000000000000020-0000000000000030"),
                vec![0u8; 8192],
            )
            .unwrap();
            let timeline = Timeline::load(&path, TENANT, TIMELINE, core).await.unwrap();
            let files: Vec<String> =
                std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
            assert_eq!(files.len(), 2, "metadata and the one listed layer remain: {files:?}");
            let got = timeline.get(key(1), Lsn(11)).await.unwrap();
            assert_eq!(got.image.map(|(at, b)| (at, b.len())), Some((Lsn(11), 8192)));
        })
        .unwrap()
        .join()
        .unwrap();
}
