//! GetPage reconstruction in the storage engine alone (no network, no
//! redo), with hdrhistogram percentiles, each case beside its physical
//! limit measured in the same run:
//!
//! - (a) a block-cache hit: the page's blocks are all cached;
//! - (b) a cold image read: the page's block was never read, beside an
//!   O_DIRECT 8 KiB read of a block of the same file through the same
//!   io_uring (`quire_io::BlockFile::read_blocks` on a handle of its own:
//!   no cache, no checksum; the two interleaved, sample by sample);
//! - (c) an image plus 1, 8 and 64 deltas, cache warm (inputs returned, not
//!   applied: redo is the redo crate's cost);
//! - blocks read per cold lookup against the B-tree's height;
//! - memory per 1,000 open layers in a layer map (RSS and accounted).
//!
//! Run: `cargo bench -p quire-bench --bench getpage` (pins to CPU 0).
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use hdrhistogram::Histogram;
use quire_io::{BlockFile, LocalConfig, run_local};
use quire_postgres::types::{BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::layer_builder::LayerBuilder;
use quire_shard::layer_file::{LayerFile, LayerKindName, LayerName};
use quire_shard::layer_map::LayerMap;
use quire_shard::{CoreContext, ImagePolicy, ReconstructInputs, Redo, RedoError, Timeline, Value};

/// Keys in the image layer (64 MiB of pages).
const IMAGE_KEYS: u32 = 8192;
/// Keys per chain depth.
const CHAIN_KEYS: u32 = 64;
const CHAIN_DEPTHS: [u32; 3] = [1, 8, 64];

fn key(relation: u32, block: u32) -> Key {
    Key::rel_block(
        RelTag {
            spc_oid: 1663,
            db_oid: 1,
            rel_number: relation,
            fork: ForkNumber::Main,
        },
        BlockNo(block),
    )
}

/// Image creation here never meets a record.
struct ImagesOnly;

impl Redo for ImagesOnly {
    async fn apply(
        &self,
        key: Key,
        lsn: Lsn,
        _inputs: &ReconstructInputs,
    ) -> Result<Vec<u8>, RedoError> {
        Err(RedoError {
            key,
            lsn,
            what: "the benchmark's image creation has no records to apply".into(),
        })
    }
}

/// A deterministic permutation of `0..n` (multiplicative, `n` a power of two).
fn permutation(n: u32, seed: u32) -> Vec<u32> {
    (0..n)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed)) % n)
        .collect()
}

fn page(seed: u32) -> Rc<[u8]> {
    (0..8192u32)
        .map(|i| (i.wrapping_mul(31) ^ seed) as u8)
        .collect::<Vec<u8>>()
        .into()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

fn report(name: &str, h: &Histogram<u64>) {
    println!(
        "{name:<44} p50 {:>8.2} µs  p99 {:>8.2} µs  p99.9 {:>8.2} µs  mean {:>8.2} µs  {:>9.0} reads/s/core  (n={})",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.value_at_quantile(0.999) as f64 / 1000.0,
        h.mean() / 1000.0,
        1e9 / h.mean(),
        h.len()
    );
}

/// Builds the timeline: an image layer of `IMAGE_KEYS` pages at one LSN,
/// then chains of 1, 8 and 64 records above images for `CHAIN_KEYS` keys
/// each, compacted into L1 delta layers.
async fn build(dir: &Path, core: &Rc<CoreContext>) -> (Timeline, Lsn) {
    let timeline = Timeline::create(dir, [1; 16], [2; 16], Lsn(100), core.clone())
        .await
        .unwrap();
    let mut lsn = 100u64;
    for block in 0..IMAGE_KEYS {
        lsn += 1;
        timeline
            .put(key(1, block), Lsn(lsn), Value::Image(page(block)))
            .await
            .unwrap();
    }
    for depth in CHAIN_DEPTHS {
        for block in 0..CHAIN_KEYS {
            lsn += 1;
            timeline
                .put(key(10 + depth, block), Lsn(lsn), Value::Image(page(block)))
                .await
                .unwrap();
        }
    }
    timeline.freeze();
    timeline.flush().await.unwrap();
    let policy = ImagePolicy {
        partition_keys: 1 << 20,
        max_delta_layers: 1,
        max_chain_records: 1,
    };
    timeline
        .create_image_layers(&ImagesOnly, policy)
        .await
        .unwrap();
    // The L0 holding the same pages goes: reads see the image layer only.
    let report = timeline
        .gc(timeline.disk_consistent_lsn(), &[])
        .await
        .unwrap();
    assert_eq!(
        report.removed.len(),
        1,
        "GC should drop the L0 under the image layer"
    );
    for round in 0..64 {
        for depth in CHAIN_DEPTHS {
            if round >= depth {
                continue;
            }
            for block in 0..CHAIN_KEYS {
                lsn += 1;
                let record: Rc<[u8]> = vec![round as u8; 120].into();
                timeline
                    .put(
                        key(10 + depth, block),
                        Lsn(lsn),
                        Value::Record {
                            will_init: false,
                            bytes: record,
                        },
                    )
                    .await
                    .unwrap();
            }
        }
        if round % 8 == 7 {
            timeline.freeze();
            timeline.flush().await.unwrap();
        }
    }
    timeline.freeze();
    timeline.flush().await.unwrap();
    timeline.compact_l0(1, 8 << 20).await.unwrap();
    (timeline, Lsn(lsn))
}

async fn cold_image_vs_pread(timeline: &Timeline, core: &CoreContext, at: Lsn) {
    let image = timeline
        .layer_map()
        .layers()
        .iter()
        .find(|l| l.name().kind == LayerKindName::Image)
        .unwrap()
        .clone();
    let path = timeline.directory().join(image.name().to_string());
    // The peer: a bare O_DIRECT read of one block of the same file (its own
    // handle, no cache, no checksum).
    let raw = BlockFile::open(&path, u64::MAX).await.unwrap();
    let blocks = image.block_count();
    let (mut engine, mut direct) = (histogram(), histogram());
    let keys = permutation(IMAGE_KEYS, 7);
    let raw_blocks = permutation(IMAGE_KEYS, 11);
    let (mut misses_max, mut misses_total) = (0u64, 0u64);
    for (i, block) in keys.iter().enumerate() {
        let before = core.cache_misses();
        let start = Instant::now();
        let inputs = timeline.get(key(1, *block), at).await.unwrap();
        engine.record(start.elapsed().as_nanos() as u64).unwrap();
        assert!(inputs.image.is_some() && inputs.records.is_empty());
        let misses = core.cache_misses() - before;
        misses_max = misses_max.max(misses);
        misses_total += misses;

        let block = 1 + raw_blocks[i] % (blocks - 1);
        let start = Instant::now();
        let read = raw.read_blocks(block, 1).await.unwrap();
        direct.record(start.elapsed().as_nanos() as u64).unwrap();
        assert_eq!(read.len(), 8192);
    }
    raw.close().await.unwrap();
    report("(b) cold image page, engine", &engine);
    report("    O_DIRECT 8 KiB read, same file (limit)", &direct);
    println!(
        "    ratio p50 engine / O_DIRECT: {:.3} (target <= 1.2)",
        engine.value_at_quantile(0.5) as f64 / direct.value_at_quantile(0.5) as f64
    );
    println!(
        "    blocks read per cold lookup: mean {:.2}, max {misses_max}; B-tree height {} + 1 value block (index blocks stay cached across lookups)",
        misses_total as f64 / f64::from(IMAGE_KEYS),
        image.index_height().unwrap_or(0)
    );
}

async fn first_lookup_blocks(dir: &Path) {
    // A cold cache: every block of the path is read once.
    let core = CoreContext::new(64 << 20);
    let timeline = Timeline::load(dir, [1; 16], [2; 16], core.clone(), None)
        .await
        .unwrap();
    let probe = key(1, 4321);
    let levels: u32 = timeline
        .layer_map()
        .layers()
        .iter()
        .filter(|l| l.name().key_start <= probe && probe < l.name().key_end)
        .filter_map(|l| l.index_height())
        .sum();
    let before = core.cache_misses();
    timeline
        .get(probe, timeline.last_record_lsn())
        .await
        .unwrap();
    let misses = core.cache_misses() - before;
    println!(
        "    first lookup with an empty cache: {misses} blocks read; the layers on its path have {levels} index levels, + 1 value block"
    );
    assert!(misses <= u64::from(levels) + 1);
}

async fn hot(timeline: &Timeline, at: Lsn) {
    let mut h = histogram();
    let mut copy = histogram();
    let mut sink = vec![0u8; 8192];
    for round in 0..40_000u32 {
        let block = round % 64;
        let start = Instant::now();
        let inputs = timeline.get(key(1, block), at).await.unwrap();
        h.record(start.elapsed().as_nanos() as u64).unwrap();
        let image = inputs.image.unwrap().1;
        let start = Instant::now();
        sink.copy_from_slice(&image);
        copy.record(start.elapsed().as_nanos().max(1) as u64)
            .unwrap();
    }
    std::hint::black_box(&sink);
    report("(a) block-cache hit, engine", &h);
    report("    8 KiB memcpy of the page (limit)", &copy);
}

async fn chains(timeline: &Timeline, at: Lsn) {
    for depth in CHAIN_DEPTHS {
        let mut h = histogram();
        for round in 0..20_000u32 {
            let start = Instant::now();
            let inputs = timeline
                .get(key(10 + depth, round % CHAIN_KEYS), at)
                .await
                .unwrap();
            h.record(start.elapsed().as_nanos() as u64).unwrap();
            assert_eq!(inputs.records.len(), depth as usize);
        }
        report(&format!("(c) image + {depth} deltas, cache warm"), &h);
    }
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split(' ').nth(1).unwrap().parse().unwrap();
    pages * 4096
}

async fn layer_map_memory(dir: &Path, core: &Rc<CoreContext>) {
    const LAYERS: u32 = 1000;
    let mut names = Vec::new();
    for i in 0..LAYERS {
        let name = LayerName {
            kind: LayerKindName::Delta,
            key_start: key(100 + i, 0),
            key_end: key(100 + i, 100),
            lsn_start: Lsn(1000),
            lsn_end: Lsn(2000),
        };
        let mut builder = LayerBuilder::create(dir, name, [1; 16], [3; 16])
            .await
            .unwrap();
        for block in 0..20 {
            builder
                .add(
                    key(100 + i, block),
                    Lsn(1500),
                    &Value::Record {
                        will_init: true,
                        bytes: vec![1u8; 100].into(),
                    },
                )
                .await
                .unwrap();
        }
        names.push(builder.finish().await.unwrap());
    }
    let before = resident_bytes();
    let mut layers = Vec::new();
    for name in &names {
        layers.push(Rc::new(LayerFile::open_in(dir, *name, core).await.unwrap()));
    }
    let map = layers
        .iter()
        .fold(LayerMap::default(), |map, layer| map.with(layer.clone()));
    let after = resident_bytes();
    let accounted: usize = map.layers().iter().map(|l| l.memory_bytes()).sum();
    println!(
        "memory per 1,000 layers in the map: {} KiB resident growth ({} bytes/layer), {} KiB accounted (reader state + file handle)",
        (after.saturating_sub(before)) / 1024,
        after.saturating_sub(before) / u64::from(LAYERS),
        accounted / 1024
    );
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-getpage");
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::tempdir_in(&root).unwrap();
    let path = dir.path().to_owned();
    let executor = LocalConfig {
        cpu: Some(0),
        io_memory_bytes: 4 << 20,
        name: "getpage".into(),
        spin_before_park: None,
    };
    run_local(&executor, move || async move {
        let core = CoreContext::new(32 << 20);
        // First, while the allocator holds little free memory to reuse.
        std::fs::create_dir_all(path.join("layers")).unwrap();
        layer_map_memory(&path.join("layers"), &core).await;
        let started = Instant::now();
        let (timeline, at) = build(&path.join("timeline"), &core).await;
        println!(
            "built: {} layers in {:.1} s; image layer of {IMAGE_KEYS} pages; chains of {CHAIN_DEPTHS:?} records",
            timeline.layer_map().len(),
            started.elapsed().as_secs_f64()
        );
        hot(&timeline, at).await;
        cold_image_vs_pread(&timeline, &core, at).await;
        first_lookup_blocks(&path.join("timeline")).await;
        chains(&timeline, at).await;
    })
    .unwrap();
}
