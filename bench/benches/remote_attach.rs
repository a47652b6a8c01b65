//! Attaching a timeline of thousands of layers from object storage, and
//! the GetPage@LSN latency of a read whose layer is downloaded on demand.
//!
//! A timeline of `QUIRE_BENCH_ATTACH_LAYERS` image layers (default 2000,
//! each of `QUIRE_BENCH_ATTACH_PAGES` 8 KiB pages, default 16: real layer
//! files from the layer builder, checksummed) is uploaded by the
//! pageserver's uploader to an S3 server (moto on loopback, as the tests
//! use). Then, on an empty directory, in one run:
//! - **lazy attach**, what `quire tenant attach` does per timeline: read the
//!   newest index, write the metadata, load the timeline with every layer
//!   registered as remote (no download);
//! - **eager attach**, the reference: the same, downloading every layer
//!   first (all queued at once; the remote runtime bounds how many run);
//! - **GetPage with a download**: reads of one page each from layers not
//!   on the disk (each read downloads, checks, `fsync`s and opens its
//!   layer), beside reads of the same pages once they are resident (cold
//!   block cache: the O_DIRECT read) and from the cache.
//!
//! Run: `cargo bench -p quire-bench --bench remote_attach`. Ends with one
//! line a script can read: `remote_attach: layers=… lazy_ms=… eager_ms=…
//! download_getpage_p50_ms=… download_getpage_p99_ms=… resident_getpage_p50_us=…`.
#![allow(
    clippy::unwrap_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation
)]

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::time::Instant;

use hdrhistogram::Histogram;
use quire_cluster::S3Server;
use quire_io::{LocalConfig, run_local};
use quire_pageserver::remote::Uploader;
use quire_pageserver::service::residence::copies_of;
use quire_postgres::types::{BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};
use quire_remote::{
    ClaimGeneration, Download, Generation, Id, LatestIndex, RemoteConfig, RemoteStorage,
    TenantShard, Transferred,
};
use quire_shard::layer_builder::LayerBuilder;
use quire_shard::layer_file::{LayerKindName, LayerName};
use quire_shard::metadata::TimelineMetadata;
use quire_shard::{CoreContext, Timeline, Value};

const BUCKET: &str = "quire-bench-attach";
const TENANT: [u8; 16] = [7; 16];
const TIMELINE: [u8; 16] = [8; 16];

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(layer: u32, page: u32) -> Key {
    Key::rel_block(
        RelTag {
            spc_oid: 1663,
            db_oid: 5,
            rel_number: 16_384 + layer,
            fork: ForkNumber::Main,
        },
        BlockNo(page),
    )
}

fn storage(s3: &S3Server) -> RemoteStorage {
    let env = s3.env();
    let config = RemoteConfig::from_url_with_env(&format!("s3://{BUCKET}"), |name| {
        env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
    })
    .unwrap();
    RemoteStorage::start(config, &prometheus::Registry::new()).unwrap()
}

/// Writes `layers` image layers of `pages` pages each into `dir` (layer `i`
/// holds relation `16384 + i` at LSN `0x1000 + i`) and their metadata.
async fn build(dir: &Path, layers: u32, pages: u32) -> TimelineMetadata {
    std::fs::create_dir_all(dir).unwrap();
    let mut names = Vec::with_capacity(layers as usize);
    for i in 0..layers {
        let lsn = Lsn(0x1000 + u64::from(i));
        let name = LayerName {
            kind: LayerKindName::Image,
            key_start: key(i, 0),
            key_end: key(i, pages),
            lsn_start: lsn,
            lsn_end: Lsn(lsn.0 + 1),
        };
        let mut builder = LayerBuilder::create(dir, name, TENANT, TIMELINE)
            .await
            .unwrap();
        for page in 0..pages {
            let mut image = vec![0u8; 8192];
            image[..4].copy_from_slice(&i.to_le_bytes());
            image[4..8].copy_from_slice(&page.to_le_bytes());
            builder
                .add(key(i, page), lsn, &Value::Image(Rc::from(image)))
                .await
                .unwrap();
        }
        names.push(builder.finish().await.unwrap());
    }
    let metadata = TimelineMetadata {
        disk_consistent_lsn: Lsn(0x1000 + u64::from(layers)),
        ancestor: None,
        gc_cutoff_lsn: Lsn(0),
        layers: names,
    };
    metadata.store(dir).await.unwrap();
    metadata
}

fn report(what: &str, histogram: &Histogram<u64>) {
    println!(
        "  {what}: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({} reads)",
        histogram.value_at_quantile(0.5) as f64 / 1e6,
        histogram.value_at_quantile(0.99) as f64 / 1e6,
        histogram.max() as f64 / 1e6,
        histogram.len()
    );
}

#[allow(clippy::too_many_lines)]
fn main() {
    let layers = u32::try_from(env_number("QUIRE_BENCH_ATTACH_LAYERS", 2000)).unwrap();
    let pages = u32::try_from(env_number("QUIRE_BENCH_ATTACH_PAGES", 16)).unwrap();
    let reads = u32::try_from(env_number("QUIRE_BENCH_ATTACH_READS", 200))
        .unwrap()
        .min(layers);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-remote-attach");
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::tempdir_in(&root).unwrap();
    let path = dir.path().to_owned();
    let s3 = S3Server::start(BUCKET).unwrap();
    let storage = storage(&s3);
    let executor = LocalConfig {
        cpu: Some(0),
        io_memory_bytes: 4 << 20,
        name: "remote-attach".into(),
        spin_before_park: None,
    };
    run_local(&executor, move || async move {
        let shard = TenantShard {
            tenant: Id(TENANT),
            number: 0,
            count: 1,
        };
        let generation = storage
            .call(ClaimGeneration {
                shard,
                holder: "bench".into(),
            })
            .await
            .unwrap();
        let source = path.join("source");
        let started = Instant::now();
        let metadata = build(&source, layers, pages).await;
        let built = started.elapsed();
        let started = Instant::now();
        let mut uploader = Uploader::new(storage.clone(), shard, TIMELINE, generation, None);
        uploader.sync(&source, &metadata).await.unwrap();
        let bytes: u64 = uploader.uploaded().values().map(|l| l.size).sum();
        println!(
            "{layers} layers of {pages} pages ({:.1} MiB): built in {:.1} s, uploaded in {:.1} s",
            bytes as f64 / f64::from(1 << 20),
            built.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        let attach_generation = Generation::new(generation.get() + 1).unwrap();

        // Lazy: the index, the metadata, a load registering every layer.
        let core = CoreContext::new(32 << 20);
        let lazy_dir = path.join("lazy");
        let started = Instant::now();
        let index = storage
            .call(LatestIndex {
                shard,
                timeline: Id(TIMELINE),
                at_most: attach_generation,
            })
            .await
            .unwrap()
            .unwrap();
        let index_time = started.elapsed();
        std::fs::create_dir_all(&lazy_dir).unwrap();
        metadata.store(&lazy_dir).await.unwrap();
        let copies = copies_of(&storage, shard, Id(TIMELINE), &index);
        let lazy = Timeline::load_with_remote(
            &lazy_dir,
            TENANT,
            TIMELINE,
            core.clone(),
            None,
            &copies,
        )
        .await
        .unwrap();
        let lazy_time = started.elapsed();
        assert_eq!(core.residence.remote_only_layers.get(), u64::from(layers));

        // Eager: every layer downloaded first, then the load.
        let eager_core = CoreContext::new(32 << 20);
        let eager_dir = path.join("eager");
        let started = Instant::now();
        let index = storage
            .call(LatestIndex {
                shard,
                timeline: Id(TIMELINE),
                at_most: attach_generation,
            })
            .await
            .unwrap()
            .unwrap();
        std::fs::create_dir_all(&eager_dir).unwrap();
        let mut pending = Vec::new();
        for layer in &index.layers {
            let download = Download {
                key: shard.layer_key(Id(TIMELINE), &layer.name, layer.generation),
                local: eager_dir.join(layer.name.as_str()),
                expect: Some(Transferred {
                    size: layer.size,
                    crc32c: layer.crc32c,
                }),
            };
            pending.push(storage.submit(download).await.unwrap());
        }
        for queued in pending {
            queued.await.unwrap();
        }
        metadata.store(&eager_dir).await.unwrap();
        let eager = Timeline::load(&eager_dir, TENANT, TIMELINE, eager_core, None)
            .await
            .unwrap();
        let eager_time = started.elapsed();
        drop(eager);
        println!(
            "attach of {layers} layers: lazy {:.1} ms (reading the index {:.1} ms), eager {:.1} ms (lazy/eager {:.4})",
            lazy_time.as_secs_f64() * 1e3,
            index_time.as_secs_f64() * 1e3,
            eager_time.as_secs_f64() * 1e3,
            lazy_time.as_secs_f64() / eager_time.as_secs_f64()
        );

        // GetPage of a page whose layer is not on the disk, then the same
        // pages resident: cold block cache, then cached.
        let at = metadata.disk_consistent_lsn;
        let mut downloading = Histogram::<u64>::new(3).unwrap();
        let mut resident_cold = Histogram::<u64>::new(3).unwrap();
        let mut resident_cached = Histogram::<u64>::new(3).unwrap();
        let step = (layers / reads).max(1);
        let probes: Vec<Key> = (0..reads).map(|i| key(i * step, i % pages)).collect();
        for probe in &probes {
            let downloads = Cell::new(0);
            let started = Instant::now();
            let inputs = lazy.get_noting(*probe, at, &downloads).await.unwrap();
            downloading
                .record(started.elapsed().as_nanos() as u64)
                .unwrap();
            assert!(inputs.image.is_some() && downloads.get() == 1);
        }
        // The same directory on a fresh core: its caches are cold, the
        // probed layers are on the disk now.
        drop(lazy);
        let core = CoreContext::new(32 << 20);
        let lazy = Timeline::load_with_remote(&lazy_dir, TENANT, TIMELINE, core, None, &copies)
            .await
            .unwrap();
        for probe in &probes {
            let started = Instant::now();
            lazy.get(*probe, at).await.unwrap();
            resident_cold
                .record(started.elapsed().as_nanos() as u64)
                .unwrap();
        }
        for probe in &probes {
            let started = Instant::now();
            lazy.get(*probe, at).await.unwrap();
            resident_cached
                .record(started.elapsed().as_nanos() as u64)
                .unwrap();
        }
        println!("GetPage@LSN of one page:");
        report("its layer downloaded on demand", &downloading);
        report("layer resident, block cache cold (O_DIRECT)", &resident_cold);
        report("layer resident, cached", &resident_cached);
        println!(
            "remote_attach: layers={layers} lazy_ms={:.1} eager_ms={:.1} download_getpage_p50_ms={:.2} download_getpage_p99_ms={:.2} resident_getpage_p50_us={:.1}",
            lazy_time.as_secs_f64() * 1e3,
            eager_time.as_secs_f64() * 1e3,
            downloading.value_at_quantile(0.5) as f64 / 1e6,
            downloading.value_at_quantile(0.99) as f64 / 1e6,
            resident_cold.value_at_quantile(0.5) as f64 / 1e3,
        );
    })
    .unwrap();
}
