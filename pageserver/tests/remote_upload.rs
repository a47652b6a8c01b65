//! The pageserver's `Uploader` against a real S3 server (moto), run on an
//! `io` executor as a core would run it: layers go up before the index
//! that lists them, a layer the metadata drops is deleted only after an
//! index without it, and a generation superseded by a second attachment
//! uploads no deletion and reports no remote-consistent LSN, while the
//! newer generation builds on the layers the older one uploaded.

use std::path::Path;

use futures::executor::block_on;
use quire_cluster::S3Server;
use quire_pageserver::remote::{SyncOutcome, Uploader};
use quire_postgres::{Key, Lsn};
use quire_remote::{
    ClaimGeneration, Download, Generation, LatestIndex, LayerFileName, List, RemoteConfig,
    RemoteStorage, TenantShard, TimelineIndex, Transferred,
};
use quire_shard::layer_file::{LayerKindName, LayerName};
use quire_shard::metadata::TimelineMetadata;

const TIMELINE: [u8; 16] = [0x22; 16];

fn layer(n: usize) -> LayerName {
    LayerName {
        kind: LayerKindName::Delta,
        key_start: Key::MIN,
        key_end: Key::MAX,
        lsn_start: Lsn(0x100 * n as u64),
        lsn_end: Lsn(0x100 * (n as u64 + 1)),
    }
}

/// Writes layer `n`'s file (pseudo-random bytes; layer 2 big enough for a
/// multipart upload) and returns its bytes.
fn write_layer(dir: &Path, n: usize) -> Vec<u8> {
    let len = if n == 2 { 6 << 20 } else { 8192 * (n + 1) };
    let mut state = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[5]
        })
        .collect();
    std::fs::write(dir.join(layer(n).to_string()), &bytes).expect("write a layer file");
    bytes
}

fn metadata(layers: &[usize], disk_consistent_lsn: u64) -> TimelineMetadata {
    TimelineMetadata {
        disk_consistent_lsn: Lsn(disk_consistent_lsn),
        ancestor: None,
        gc_cutoff_lsn: Lsn(0),
        layers: layers.iter().map(|&n| layer(n)).collect(),
    }
}

/// Runs one sync on an `io` executor of its own.
fn sync_on_core(
    mut uploader: Uploader,
    dir: &Path,
    metadata: TimelineMetadata,
) -> (Uploader, SyncOutcome) {
    let dir = dir.to_owned();
    quire_io::run_local(&quire_io::LocalConfig::default(), move || async move {
        let outcome = uploader.sync(&dir, &metadata).await.expect("sync");
        (uploader, outcome)
    })
    .expect("run the executor")
}

fn name(n: usize) -> LayerFileName {
    LayerFileName::new(&layer(n).to_string()).expect("a layer name")
}

#[test]
fn uploads_in_order_and_a_superseded_generation_deletes_nothing() {
    let server = S3Server::start("quire-test").unwrap();
    let env = server.env();
    let mut config = RemoteConfig::from_url_with_env("s3://quire-test/ps", |var| {
        env.iter().find(|(k, _)| *k == var).map(|(_, v)| v.clone())
    })
    .unwrap();
    config.limits.part_size = 5 << 20;
    let storage = RemoteStorage::start(config, &prometheus::Registry::new()).unwrap();
    let shard = TenantShard::unsharded([0x11; 16]);
    let claim = |holder: &str| {
        block_on(storage.call(ClaimGeneration {
            shard,
            holder: holder.to_owned(),
        }))
        .unwrap()
    };
    let latest = |at_most: Generation| -> TimelineIndex {
        block_on(storage.call(LatestIndex {
            shard,
            timeline: quire_remote::Id(TIMELINE),
            at_most,
        }))
        .unwrap()
        .expect("an index")
    };
    let objects = || -> Vec<String> {
        block_on(storage.call(List {
            prefix: shard.timeline_prefix(quire_remote::Id(TIMELINE)),
        }))
        .unwrap()
        .into_iter()
        .map(|o| o.key.rsplit('/').next().unwrap_or_default().to_owned())
        .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<Vec<u8>> = (0..5).map(|n| write_layer(dir.path(), n)).collect();

    let first = claim("first");
    let uploader = Uploader::new(storage.clone(), shard, TIMELINE, first, None);
    let (uploader, outcome) = sync_on_core(uploader, dir.path(), metadata(&[0, 1, 2], 0x300));
    assert_eq!(
        outcome,
        SyncOutcome::Current {
            remote_consistent_lsn: Lsn(0x300),
            uploaded: 3,
            deleted: 0
        }
    );
    let index = latest(first);
    assert_eq!(index.disk_consistent_lsn, 0x300);
    for (n, file) in files.iter().enumerate().take(3) {
        let listed = index.layer(&name(n)).expect("listed");
        assert_eq!(listed.size, file.len() as u64);
        assert_eq!(listed.crc32c, quire_checksum::crc32c(file));
        assert_eq!(listed.generation, first);
    }

    // Layer 0 compacted away, layer 3 new: one upload, one deletion after
    // the index that no longer lists it.
    let (uploader, outcome) = sync_on_core(uploader, dir.path(), metadata(&[1, 2, 3], 0x400));
    assert_eq!(
        outcome,
        SyncOutcome::Current {
            remote_consistent_lsn: Lsn(0x400),
            uploaded: 1,
            deleted: 1
        }
    );
    let g = |n: usize, generation: Generation| format!("{}-g{generation}", layer(n));
    assert_eq!(
        objects(),
        [
            g(1, first),
            g(2, first),
            g(3, first),
            format!("index-g{first}")
        ]
    );

    supersede(&storage, shard, dir.path(), uploader, &files);
    storage.shutdown();
}

/// A second attachment supersedes the first (which then deletes nothing and
/// reports nothing) and builds on its layers.
fn supersede(
    storage: &RemoteStorage,
    shard: TenantShard,
    dir: &Path,
    uploader: Uploader,
    files: &[Vec<u8>],
) {
    let claim = |holder: &str| {
        block_on(storage.call(ClaimGeneration {
            shard,
            holder: holder.to_owned(),
        }))
        .expect("claim")
    };
    let latest = |at_most: Generation| -> TimelineIndex {
        block_on(storage.call(LatestIndex {
            shard,
            timeline: quire_remote::Id(TIMELINE),
            at_most,
        }))
        .expect("latest index")
        .expect("an index")
    };
    let objects = || -> Vec<String> {
        block_on(storage.call(List {
            prefix: shard.timeline_prefix(quire_remote::Id(TIMELINE)),
        }))
        .expect("list")
        .into_iter()
        .map(|o| o.key.rsplit('/').next().unwrap_or_default().to_owned())
        .collect()
    };
    let first = uploader.generation();
    let g = |n: usize, generation: Generation| format!("{}-g{generation}", layer(n));
    // A second attachment claims the next generation and starts from the
    // first's index.
    let second = claim("second");
    let attached = latest(second);
    assert_eq!(attached.generation, first);
    assert_eq!(attached.disk_consistent_lsn, 0x400);

    // The first goes on: it may still upload under its own names, but it
    // deletes nothing and reports no LSN, then stops writing.
    let uploads_before = storage.metrics().uploads.get();
    let (uploader, outcome) = sync_on_core(uploader, dir, metadata(&[2, 3, 4], 0x500));
    assert_eq!(outcome, SyncOutcome::Superseded(second));
    assert!(
        objects().contains(&g(1, first)),
        "a superseded generation deleted a layer the newer one lists"
    );
    let uploads_after = storage.metrics().uploads.get();
    let (_, outcome) = sync_on_core(uploader, dir, metadata(&[2, 3, 4], 0x600));
    assert_eq!(outcome, SyncOutcome::Superseded(second));
    assert_eq!(storage.metrics().uploads.get(), uploads_after);
    assert!(uploads_after > uploads_before);

    // The newer generation lists the first's layers under their names and
    // uploads its own under its generation.
    let newer = Uploader::new(storage.clone(), shard, TIMELINE, second, Some(&attached));
    let (_, outcome) = sync_on_core(newer, dir, metadata(&[1, 2, 3, 4], 0x500));
    assert_eq!(
        outcome,
        SyncOutcome::Current {
            remote_consistent_lsn: Lsn(0x500),
            uploaded: 1,
            deleted: 0
        }
    );
    let index = latest(second);
    assert_eq!(index.generation, second);
    let generations: Vec<u32> = (1..5)
        .map(|n| index.layer(&name(n)).expect("listed").generation.get())
        .collect();
    assert_eq!(
        generations,
        [first.get(), first.get(), first.get(), second.get()]
    );

    // What the index lists downloads to the bytes written.
    let listed = index.layer(&name(2)).expect("listed").clone();
    let back = dir.join("back");
    block_on(storage.call(Download {
        key: shard.layer_key(quire_remote::Id(TIMELINE), &listed.name, listed.generation),
        local: back.clone(),
        expect: Some(Transferred {
            size: listed.size,
            crc32c: listed.crc32c,
        }),
    }))
    .expect("remote storage operation");
    assert!(std::fs::read(&back).expect("remote storage operation") == files[2]);
}
