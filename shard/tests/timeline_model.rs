//! The timeline against a plain model: random puts of images and records
//! across keys at increasing LSNs, freezes, flushes to L0 layers on disk,
//! restarts (reloading from the metadata), L0 → L1 compactions into key
//! partitions of several sizes, and branches (children reading their
//! parent's history up to the branch point); every GetPage@LSN on
//! every timeline must return exactly the reconstruction inputs the model
//! implies.
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
        timeline: usize,
        key: u32,
        lsn_step: u64,
        image: bool,
        will_init: bool,
        len: usize,
    },
    Freeze {
        timeline: usize,
    },
    Flush {
        timeline: usize,
    },
    Restart,
    Branch {
        timeline: usize,
    },
    Compact {
        timeline: usize,
        target_bytes: u64,
    },
    Get {
        timeline: usize,
        key: u32,
        back: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let value_len = prop_oneof![0usize..100, Just(8192usize), 100usize..3000];
    prop_oneof![
        12 => (0usize..8, 0u32..24, 1u64..4, any::<bool>(), any::<bool>(), value_len)
            .prop_map(|(timeline, key, lsn_step, image, will_init, len)| Op::Put { timeline, key, lsn_step, image, will_init, len }),
        1 => (0usize..8).prop_map(|timeline| Op::Freeze { timeline }),
        1 => (0usize..8).prop_map(|timeline| Op::Flush { timeline }),
        1 => Just(Op::Restart),
        1 => (0usize..8).prop_map(|timeline| Op::Branch { timeline }),
        1 => (0usize..8, prop_oneof![Just(1u64), Just(3000), Just(1 << 20)])
            .prop_map(|(timeline, target_bytes)| Op::Compact { timeline, target_bytes }),
        4 => (0usize..8, 0u32..24, 0u64..200).prop_map(|(timeline, key, back)| Op::Get { timeline, key, back }),
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

/// One timeline under test and its model.
struct Branch {
    timeline: Rc<Timeline>,
    id: [u8; 16],
    dir: std::path::PathBuf,
    /// Parent index and branch LSN.
    parent: Option<(usize, u64)>,
    /// The timeline's own values.
    model: BTreeMap<(u32, u64), Value>,
    lsn: u64,
}

/// What the model says `get(key, lsn)` returns on `branches[index]`.
fn expected(branches: &[Branch], index: usize, key: u32, lsn: u64) -> ReconstructInputs {
    let mut newest_first = Vec::new();
    let mut at = Some((index, lsn));
    'walk: while let Some((index, lsn)) = at {
        for (&(_, value_lsn), value) in branches[index].model.range((key, 0)..=(key, lsn)).rev() {
            newest_first.push((Lsn(value_lsn), value.clone()));
            if value.is_base() {
                break 'walk;
            }
        }
        at = branches[index]
            .parent
            .map(|(parent, branch_lsn)| (parent, lsn.min(branch_lsn)));
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

/// Branches a child off `branches[timeline]` at its current LSN.
async fn branch_off(
    branches: &mut Vec<Branch>,
    timeline: usize,
    dir: &Path,
    core: &Rc<CoreContext>,
) {
    if branches.len() >= 6 {
        return;
    }
    let parent = timeline % branches.len();
    let at = branches[parent].lsn;
    // Ingest reached `at`; the parent's history up to it must survive its
    // restarts, so flush it first (a real parent would re-ingest instead).
    branches[parent].timeline.advance(Lsn(at));
    branches[parent].timeline.freeze();
    branches[parent].timeline.flush().await.unwrap();
    let id = [u8::try_from(branches.len()).unwrap(); 16];
    let child_dir = dir.join(format!("timeline-{}", branches.len()));
    let child = Timeline::branch(
        &child_dir,
        id,
        branches[parent].timeline.clone(),
        Lsn(at),
        core.clone(),
    )
    .await
    .unwrap();
    branches.push(Branch {
        timeline: Rc::new(child),
        id,
        dir: child_dir,
        parent: Some((parent, at)),
        model: BTreeMap::new(),
        lsn: at,
    });
}

/// Drops every timeline and reloads them (parents first) from disk.
async fn restart(branches: &mut [Branch], core: &Rc<CoreContext>) {
    let consistent: Vec<u64> = branches
        .iter()
        .map(|b| b.timeline.disk_consistent_lsn().0)
        .collect();
    for index in 0..branches.len() {
        let ancestor = branches[index]
            .parent
            .map(|(parent, _)| branches[parent].timeline.clone());
        let reloaded = Timeline::load(
            &branches[index].dir,
            TENANT,
            branches[index].id,
            core.clone(),
            ancestor,
        )
        .await
        .unwrap();
        assert_eq!(reloaded.disk_consistent_lsn().0, consistent[index]);
        let branch = &mut branches[index];
        branch.timeline = Rc::new(reloaded);
        // What was not flushed must be re-ingested; the model forgets it.
        branch.model.retain(|&(_, at), _| at < consistent[index]);
        branch.lsn = branch.lsn.max(consistent[index]);
    }
}

async fn run(ops: Vec<Op>, dir: &Path) {
    let core = CoreContext::new(4 << 20);
    let root = dir.join("timeline-0");
    let timeline = Timeline::create(&root, TENANT, TIMELINE, Lsn(100), core.clone())
        .await
        .unwrap();
    let mut branches = vec![Branch {
        timeline: Rc::new(timeline),
        id: TIMELINE,
        dir: root,
        parent: None,
        model: BTreeMap::new(),
        lsn: 100,
    }];
    for op in ops {
        match op {
            Op::Put {
                timeline,
                key: k,
                lsn_step,
                image,
                will_init,
                len,
            } => {
                let count = branches.len();
                let branch = &mut branches[timeline % count];
                branch.lsn += lsn_step;
                let lsn = branch.lsn;
                let value = if image {
                    Value::Image(bytes(lsn, len))
                } else {
                    Value::Record {
                        will_init,
                        bytes: bytes(lsn + 1, len.min(500)),
                    }
                };
                branch
                    .timeline
                    .put(key(k), Lsn(lsn), value.clone())
                    .unwrap();
                branch.model.insert((k, lsn), value);
            }
            Op::Freeze { timeline } => branches[timeline % branches.len()].timeline.freeze(),
            Op::Flush { timeline } => {
                branches[timeline % branches.len()]
                    .timeline
                    .flush()
                    .await
                    .unwrap();
            }
            Op::Branch { timeline } => branch_off(&mut branches, timeline, dir, &core).await,
            Op::Restart => restart(&mut branches, &core).await,
            Op::Compact {
                timeline,
                target_bytes,
            } => {
                branches[timeline % branches.len()]
                    .timeline
                    .compact_l0(1, target_bytes)
                    .await
                    .unwrap();
            }
            Op::Get {
                timeline,
                key: k,
                back,
            } => {
                let index = timeline % branches.len();
                let at = branches[index].lsn.saturating_sub(back);
                let got = branches[index].timeline.get(key(k), Lsn(at)).await.unwrap();
                assert_eq!(
                    got,
                    expected(&branches, index, k, at),
                    "timeline {index} key {k} at {at}"
                );
            }
        }
    }
    for index in 0..branches.len() {
        let lsn = branches[index].lsn;
        for k in 0..24 {
            for at in [100, lsn / 2, lsn.saturating_sub(7), lsn] {
                let got = branches[index].timeline.get(key(k), Lsn(at)).await.unwrap();
                assert_eq!(
                    got,
                    expected(&branches, index, k, at),
                    "final: timeline {index} key {k} at {at}"
                );
            }
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
            let timeline = Timeline::load(&path, TENANT, TIMELINE, core, None).await.unwrap();
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
