//! The timeline against a plain model: random puts of images and records
//! across keys at increasing LSNs, relation sizes set and dropped, freezes,
//! flushes to L0 layers on disk, restarts (reloading from the metadata),
//! L0 → L1 compactions into key partitions of several sizes, image
//! creation with several thresholds, GC with moving cutoffs, and branches
//! (children reading their parent's history up to the branch point).
//!
//! An empty image on a relation block is its cut marker: the block reads
//! as one without a value from it on, through compaction, image layers and
//! GC (`Timeline::get` returns no image for it).
//!
//! Every GetPage@LSN on every timeline inside retention must return the
//! reconstruction inputs the model implies: the same records when no image
//! layer intervenes, and otherwise a suffix of them on an image that the
//! test's record kind turns into the same value. Reads below a GC cutoff
//! must be refused. Relation sizes, existence and database sizes likewise.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::collections::BTreeMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proptest::prelude::*;
use quire_io::{LocalConfig, run_local};
use quire_postgres::types::{BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::keyspace::{database_range, dropped_value, size_value};
use quire_shard::{
    CoreContext, ImagePolicy, ReconstructInputs, Timeline, TimelineError, Value, materialize,
};
use support::AppendRedo;

mod support;

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
    SetSize {
        timeline: usize,
        rel: u32,
        size: Option<u32>,
    },
    GetSizes {
        timeline: usize,
        back: u64,
    },
    Images {
        timeline: usize,
        policy: ImagePolicy,
    },
    Gc {
        timeline: usize,
        keep: u64,
    },
}

/// What the cases exercised, summed over all of them (printed, and checked
/// to be non-zero so the test cannot silently stop covering a path).
static IMAGE_LAYERS: AtomicUsize = AtomicUsize::new(0);
static GC_REMOVED: AtomicUsize = AtomicUsize::new(0);
static REFUSED_READS: AtomicUsize = AtomicUsize::new(0);
static READS_ON_IMAGES: AtomicUsize = AtomicUsize::new(0);
static READS_OF_CUT_BLOCKS: AtomicUsize = AtomicUsize::new(0);

/// Model key ids: 0..24 are relation blocks, `SIZE_KEYS + r` the size of relation `r`.
const SIZE_KEYS: u32 = 100;
const RELATIONS: u32 = 3;

fn rel(r: u32) -> RelTag {
    RelTag {
        spc_oid: 1663,
        db_oid: 5,
        rel_number: 16384 + r,
        fork: ForkNumber::Main,
    }
}

fn all_keys() -> impl Iterator<Item = u32> {
    (0..24).chain(SIZE_KEYS..SIZE_KEYS + RELATIONS)
}

fn op() -> impl Strategy<Value = Op> {
    // An empty image on a relation block is its cut marker.
    let value_len = prop_oneof![Just(0usize), 0usize..100, Just(8192usize), 100usize..3000];
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
        2 => (0usize..8, 0..RELATIONS, prop::option::of(0u32..5000))
            .prop_map(|(timeline, rel, size)| Op::SetSize { timeline, rel, size }),
        1 => (0usize..8, 0u64..200).prop_map(|(timeline, back)| Op::GetSizes { timeline, back }),
        1 => (0usize..8, prop_oneof![Just(1usize), Just(4), Just(100)], 1usize..4, 1usize..6)
            .prop_map(|(timeline, partition_keys, max_delta_layers, max_chain_records)| Op::Images {
                timeline,
                policy: ImagePolicy { partition_keys, max_delta_layers, max_chain_records },
            }),
        1 => (0usize..8, prop_oneof![Just(0u64), 0u64..100]).prop_map(|(timeline, keep)| Op::Gc { timeline, keep }),
    ]
}

fn key(n: u32) -> Key {
    if n >= SIZE_KEYS {
        Key::rel_size(rel(n - SIZE_KEYS))
    } else {
        Key::rel_block(rel(n % RELATIONS), BlockNo(n))
    }
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
    /// The GC cutoff the timeline reported.
    gc_cutoff: u64,
}

/// Whether the model allows a read at `lsn` on `branches[index]`.
fn readable(branches: &[Branch], index: usize, lsn: u64) -> bool {
    lsn >= branches[index].gc_cutoff
        && match branches[index].parent {
            Some((parent, at)) if lsn < at => readable(branches, parent, lsn),
            _ => true,
        }
}

/// Checks the engine's answer against the model's: the same value after
/// redo, from a suffix of the model's records on an image at least as new.
async fn check_get(branches: &[Branch], index: usize, k: u32, at: u64, context: &str) {
    let got = branches[index].timeline.get(key(k), Lsn(at)).await;
    if !readable(branches, index, at) {
        assert!(
            matches!(got, Err(TimelineError::BelowGcCutoff { .. })),
            "{context}: timeline {index} key {k} at {at} below the GC cutoff gave {got:?}"
        );
        REFUSED_READS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let got = got.unwrap();
    let raw = expected_raw(branches, index, k, at);
    if k < SIZE_KEYS
        && raw
            .image
            .as_ref()
            .is_some_and(|(_, bytes)| bytes.is_empty())
    {
        READS_OF_CUT_BLOCKS.fetch_add(1, Ordering::Relaxed);
    }
    let want = expected(branches, index, k, at);
    if got == want {
        return;
    }
    READS_ON_IMAGES.fetch_add(1, Ordering::Relaxed);
    let keep = got.records.len();
    assert!(
        keep <= want.records.len()
            && got.records[..] == want.records[want.records.len() - keep..]
            && got.image.as_ref().map(|(lsn, _)| *lsn) >= want.image.as_ref().map(|(lsn, _)| *lsn),
        "{context}: timeline {index} key {k} at {at}: {} is no suffix of {}",
        brief(&got),
        brief(&want)
    );
    let got_value = materialize(&AppendRedo, key(k), Lsn(at), &got)
        .await
        .unwrap();
    let want_value = materialize(&AppendRedo, key(k), Lsn(at), &want)
        .await
        .unwrap();
    assert!(
        got_value == want_value,
        "{context}: timeline {index} key {k} at {at}: values differ: {} vs {}",
        brief(&got),
        brief(&want)
    );
}

/// Inputs without their bytes, for messages.
fn brief(inputs: &ReconstructInputs) -> String {
    let image = inputs
        .image
        .as_ref()
        .map(|(lsn, bytes)| (lsn.0, bytes.len()));
    let records: Vec<(u64, bool)> = inputs
        .records
        .iter()
        .map(|(lsn, value)| (lsn.0, value.is_base()))
        .collect();
    format!("image {image:?} records {records:?}")
}

/// Checks relation sizes, existence and the database size at `at`.
async fn check_sizes(branches: &[Branch], index: usize, at: u64) {
    let timeline = &branches[index].timeline;
    if !readable(branches, index, at) {
        return;
    }
    let mut database = 0u64;
    for r in 0..RELATIONS {
        let want = match expected(branches, index, SIZE_KEYS + r, at).image {
            Some((_, bytes)) if bytes.len() == 4 => {
                Some(u32::from_le_bytes(bytes[..].try_into().unwrap()))
            }
            _ => None,
        };
        assert_eq!(
            timeline.rel_size(rel(r), Lsn(at)).await.unwrap(),
            want,
            "size of {r} at {at}"
        );
        assert_eq!(
            timeline.rel_exists(rel(r), Lsn(at)).await.unwrap(),
            want.is_some()
        );
        database += u64::from(want.unwrap_or(0)) * 8192;
    }
    assert_eq!(
        timeline.database_size(1663, 5, Lsn(at)).await.unwrap(),
        database,
        "database at {at}"
    );
    // The size keys alone, enumerated without collecting block keys, are
    // exactly the size keys among all keys.
    let range = database_range(1663, 5);
    let all = timeline.keys_at(Lsn(at), range.clone()).await.unwrap();
    let sizes = timeline.size_keys_at(Lsn(at), range).await.unwrap();
    assert_eq!(
        sizes,
        all.into_iter().filter(Key::is_rel_size).collect(),
        "size keys at {at}"
    );
}

/// What the model says `get(key, lsn)` returns on `branches[index]`: a
/// relation block whose base is its cut marker (an empty image) has no
/// image, as if it never had a value, and records above it start from
/// nothing.
fn expected(branches: &[Branch], index: usize, key: u32, lsn: u64) -> ReconstructInputs {
    let mut inputs = expected_raw(branches, index, key, lsn);
    if key < SIZE_KEYS
        && inputs
            .image
            .as_ref()
            .is_some_and(|(_, bytes)| bytes.is_empty())
    {
        inputs.image = None;
    }
    inputs
}

/// The model's base and records of `key` at `lsn`, the base as stored.
fn expected_raw(branches: &[Branch], index: usize, key: u32, lsn: u64) -> ReconstructInputs {
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
        gc_cutoff: 0,
    });
}

/// Drops every timeline and reloads them (parents first) from disk.
async fn restart(branches: &mut [Branch], core: &Rc<CoreContext>) {
    let consistent: Vec<u64> = branches
        .iter()
        .map(|b| b.timeline.disk_consistent_lsn().0)
        .collect();
    let cutoffs: Vec<u64> = branches.iter().map(|b| b.gc_cutoff).collect();
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
        assert_eq!(reloaded.gc_cutoff_lsn().0, cutoffs[index]);
        reloaded.set_expensive_read_records(3);
        let branch = &mut branches[index];
        branch.timeline = Rc::new(reloaded);
        // What was not flushed must be re-ingested; the model forgets it.
        branch.model.retain(|&(_, at), _| at < consistent[index]);
        branch.lsn = branch.lsn.max(consistent[index]);
    }
}

#[allow(clippy::too_many_lines, reason = "one arm per operation of the model")]
async fn run(ops: Vec<Op>, dir: &Path) {
    let core = CoreContext::new(4 << 20);
    let root = dir.join("timeline-0");
    let timeline = Timeline::create(&root, TENANT, TIMELINE, Lsn(100), core.clone())
        .await
        .unwrap();
    timeline.set_expensive_read_records(3);
    let mut branches = vec![Branch {
        timeline: Rc::new(timeline),
        id: TIMELINE,
        dir: root,
        parent: None,
        model: BTreeMap::new(),
        lsn: 100,
        gc_cutoff: 0,
    }];
    let trace = std::env::var_os("QUIRE_MODEL_TRACE").is_some();
    for op in ops {
        if trace {
            for (index, branch) in branches.iter().enumerate() {
                let names: Vec<String> = branch
                    .timeline
                    .layer_map()
                    .names()
                    .iter()
                    .map(|n| {
                        format!(
                            "{:?}[{}.{}..{}.{}]@{}..{}",
                            n.kind,
                            n.key_start.field3,
                            n.key_start.field5,
                            n.key_end.field3,
                            n.key_end.field5,
                            n.lsn_start.0,
                            n.lsn_end.0
                        )
                    })
                    .collect();
                eprintln!("  map {index}: {}", names.join(" "));
            }
            eprintln!("op {op:?}");
        }
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
                    .await
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
                check_get(&branches, index, k, at, "get").await;
            }
            Op::SetSize {
                timeline,
                rel,
                size,
            } => {
                let count = branches.len();
                let branch = &mut branches[timeline % count];
                branch.lsn += 1;
                let value = size.map_or_else(dropped_value, size_value);
                let k = SIZE_KEYS + rel;
                branch
                    .timeline
                    .put(key(k), Lsn(branch.lsn), value.clone())
                    .await
                    .unwrap();
                branch.model.insert((k, branch.lsn), value);
            }
            Op::GetSizes { timeline, back } => {
                let index = timeline % branches.len();
                let at = branches[index].lsn.saturating_sub(back);
                check_sizes(&branches, index, at).await;
            }
            Op::Images { timeline, policy } => {
                let index = timeline % branches.len();
                let report = branches[index]
                    .timeline
                    .create_image_layers(&AppendRedo, policy)
                    .await
                    .unwrap();
                IMAGE_LAYERS.fetch_add(report.layers.len(), Ordering::Relaxed);
                if trace {
                    eprintln!("  images {index}: {report:?}");
                }
            }
            Op::Gc { timeline, keep } => {
                let index = timeline % branches.len();
                let retain: Vec<Lsn> = branches
                    .iter()
                    .filter_map(|b| b.parent.filter(|(parent, _)| *parent == index))
                    .map(|(_, at)| Lsn(at))
                    .collect();
                let cutoff = Lsn(branches[index].lsn.saturating_sub(keep));
                let report = branches[index].timeline.gc(cutoff, &retain).await.unwrap();
                if trace {
                    eprintln!("  gc {index}: {report:?}");
                }
                assert!(report.cutoff.0 >= branches[index].gc_cutoff);
                GC_REMOVED.fetch_add(report.removed.len(), Ordering::Relaxed);
                branches[index].gc_cutoff = report.cutoff.0;
            }
        }
    }
    for index in 0..branches.len() {
        let lsn = branches[index].lsn;
        let cutoff = branches[index].gc_cutoff;
        for k in all_keys() {
            for at in [100, lsn / 2, cutoff, lsn.saturating_sub(7), lsn] {
                check_get(&branches, index, k, at, "final").await;
            }
        }
        for at in [cutoff, lsn] {
            check_sizes(&branches, index, at).await;
        }
    }
}

fn on_executor(ops: Vec<Op>) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().to_owned();
    run_local(
        &LocalConfig {
            io_memory_bytes: 1 << 20,
            ..LocalConfig::default()
        },
        move || async move { run(ops, &path).await },
    )
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
fn the_model_test_exercises_images_gc_and_refusals() {
    timeline_matches_the_model();
    let counts = [
        ("image layers written", IMAGE_LAYERS.load(Ordering::Relaxed)),
        ("layers removed by GC", GC_REMOVED.load(Ordering::Relaxed)),
        (
            "reads refused below a GC cutoff",
            REFUSED_READS.load(Ordering::Relaxed),
        ),
        (
            "reads answered from an image layer",
            READS_ON_IMAGES.load(Ordering::Relaxed),
        ),
        (
            "reads of cut relation blocks",
            READS_OF_CUT_BLOCKS.load(Ordering::Relaxed),
        ),
    ];
    for (what, count) in counts {
        println!("{what}: {count}");
        assert!(count > 0, "no {what}: the generator no longer covers it");
    }
}

#[test]
fn stray_and_half_written_layers_are_removed_on_load() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().to_owned();
    let config = LocalConfig {
        io_memory_bytes: 1 << 20,
        ..LocalConfig::default()
    };
    run_local(&config, move || async move {
        let core = CoreContext::new(1 << 20);
        let timeline = Timeline::create(&path, TENANT, TIMELINE, Lsn(10), core.clone()).await.unwrap();
        timeline.put(key(1), Lsn(11), Value::Image(bytes(1, 8192))).await.unwrap();
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
    .unwrap();
}
