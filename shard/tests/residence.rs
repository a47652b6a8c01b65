//! Layers not on the local disk: a timeline whose layers were written and
//! then moved away (to a "remote" directory, fetched by copying the file
//! back, written beside its target, `fsync`ed and renamed as the object
//! store's download does) loads with every layer remote, reads every value
//! as before, downloads each layer once however many reads wait for it,
//! fails a read cleanly when the fetch fails and serves it on the next
//! try, evicts only layers with a remote copy (a read holding an evicted
//! layer goes on reading it), replaces a local file whose block fails its
//! check (or whose summary does, at a load) by its remote copy, and
//! compacts and removes evicted layers; without a remote copy a damaged
//! block stays an error naming file and block.
#![allow(clippy::unwrap_used, clippy::cast_possible_truncation)]

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use quire_io::{LocalConfig, run_local};
use quire_postgres::types::{BlockNo, ForkNumber, RelTag};
use quire_postgres::{Key, Lsn};
use quire_shard::residence::{LayerFetch, LocalFuture};
use quire_shard::timeline::RemoteCopies;
use quire_shard::{CoreContext, Timeline, Value};

const TENANT: [u8; 16] = [5; 16];
const TIMELINE: [u8; 16] = [6; 16];
const KEYS: u32 = 64;

fn key(block: u32) -> Key {
    Key::rel_block(
        RelTag {
            spc_oid: 1663,
            db_oid: 1,
            rel_number: 30_000,
            fork: ForkNumber::Main,
        },
        BlockNo(block),
    )
}

fn image(block: u32, round: u64) -> Rc<[u8]> {
    (0..8192usize)
        .map(|n| (n as u64 * 13 + u64::from(block) * 7 + round) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A layer's copy in another directory; fetching copies it back. `fail`
/// makes the next fetches fail (as an unreachable store would).
#[derive(Debug)]
struct CopiedLayer {
    source: PathBuf,
    size: u64,
    fetches: Rc<Cell<u32>>,
    fail: Rc<Cell<bool>>,
}

impl LayerFetch for CopiedLayer {
    fn size(&self) -> u64 {
        self.size
    }

    fn fetch<'a>(&'a self, path: &'a Path) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(async move {
            // A wait, so that other reads pile up behind this download.
            quire_io::sleep(std::time::Duration::from_millis(20)).await;
            if self.fail.get() {
                return Err("the store is unreachable".to_owned());
            }
            self.fetches.set(self.fetches.get() + 1);
            let temporary = path.with_extension("download");
            std::fs::copy(&self.source, &temporary).map_err(|e| e.to_string())?;
            std::fs::File::open(&temporary)
                .and_then(|f| f.sync_all())
                .map_err(|e| e.to_string())?;
            std::fs::rename(&temporary, path).map_err(|e| e.to_string())
        })
    }
}

fn flip_byte(file: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut handle = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut byte = [0u8];
    handle.seek(SeekFrom::Start(at)).unwrap();
    handle.read_exact(&mut byte).unwrap();
    byte[0] ^= 0x40;
    handle.seek(SeekFrom::Start(at)).unwrap();
    handle.write_all(&byte).unwrap();
    handle.sync_all().unwrap();
}

/// Writes three rounds of every key, each flushed to its own L0 layer.
async fn write(dir: &Path, core: &Rc<CoreContext>) -> Lsn {
    let timeline = Timeline::create(dir, TENANT, TIMELINE, Lsn(100), core.clone())
        .await
        .unwrap();
    let mut lsn = 100;
    for round in 0..3 {
        for block in 0..KEYS {
            lsn += 8;
            timeline
                .put(key(block), Lsn(lsn), Value::Image(image(block, round)))
                .await
                .unwrap();
        }
        timeline.advance(Lsn(lsn));
        timeline.freeze();
        timeline.flush().await.unwrap();
    }
    Lsn(lsn)
}

async fn check_all(timeline: &Timeline, at: Lsn) {
    for block in 0..KEYS {
        let inputs = timeline.get(key(block), at).await.unwrap();
        let (_, got) = inputs.image.unwrap();
        assert_eq!(got, image(block, 2), "block {block}");
    }
}

/// A timeline written in `local` whose layers were all moved to `remote`,
/// with their copies; the fetch counter and the failure switch.
struct Moved {
    at: Lsn,
    copies: RemoteCopies,
    fetches: Rc<Cell<u32>>,
    fail: Rc<Cell<bool>>,
}

async fn moved_away(local: &Path, remote: &Path) -> Moved {
    std::fs::create_dir_all(remote).unwrap();
    let at = write(local, &CoreContext::new(8 << 20)).await;
    // Every layer goes "remote".
    let fetches = Rc::new(Cell::new(0));
    let fail = Rc::new(Cell::new(false));
    let mut copies = RemoteCopies::new();
    let metadata = quire_shard::metadata::TimelineMetadata::load(local)
        .await
        .unwrap();
    assert_eq!(metadata.layers.len(), 3);
    for name in &metadata.layers {
        let source = remote.join(name.to_string());
        std::fs::rename(local.join(name.to_string()), &source).unwrap();
        let size = std::fs::metadata(&source).unwrap().len();
        let copy: Rc<dyn LayerFetch> = Rc::new(CopiedLayer {
            source,
            size,
            fetches: fetches.clone(),
            fail: fail.clone(),
        });
        copies.insert(*name, copy);
    }
    Moved {
        at,
        copies,
        fetches,
        fail,
    }
}

fn executor() -> LocalConfig {
    LocalConfig {
        cpu: None,
        io_memory_bytes: 2 << 20,
        name: "residence".into(),
        spin_before_park: None,
    }
}

#[test]
fn layers_come_back_on_demand_and_leave_under_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("timeline");
    let remote = dir.path().join("remote");
    run_local(&executor(), move || async move {
        let Moved {
            at,
            copies,
            fetches,
            fail,
        } = moved_away(&local, &remote).await;
        let core = CoreContext::new(8 << 20);
        assert!(
            Timeline::load(&local, TENANT, TIMELINE, core.clone(), None)
                .await
                .is_err(),
            "a load without the remote copies must fail"
        );
        let timeline =
            Timeline::load_with_remote(&local, TENANT, TIMELINE, core.clone(), None, &copies)
                .await
                .unwrap();
        assert_eq!(core.residence.remote_only_layers.get(), 3);
        assert_eq!(core.residence.resident_layers.get(), 0);

        // A failed fetch fails the reads waiting for it; the next try works.
        fail.set(true);
        let error = timeline.get(key(0), at).await.unwrap_err();
        assert!(error.to_string().contains("unreachable"), "{error}");
        assert_eq!(core.residence.download_failures.get(), 1);
        fail.set(false);

        // Many reads at once: the newest layer is downloaded once.
        let downloads = Cell::new(0);
        let reads = (0..KEYS).map(|block| timeline.get_noting(key(block), at, &downloads));
        for (block, inputs) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            let (_, got) = inputs.unwrap().image.unwrap();
            assert_eq!(got, image(block as u32, 2));
        }
        assert_eq!(fetches.get(), 1, "one download for the newest layer");
        assert!(downloads.get() >= 1);
        check_all(&timeline, at).await;

        // Older LSNs need the older layers.
        let older = timeline
            .get(key(3), Lsn(at.0 - 8 * u64::from(KEYS)))
            .await
            .unwrap();
        assert_eq!(older.image.unwrap().1, image(3, 1));
        assert_eq!(fetches.get(), 2);

        // Eviction: a read holding the layer keeps reading it.
        let map = timeline.layer_map();
        let newest = map.layers().first().unwrap().clone();
        let held = newest.layer(&Cell::new(0)).await.unwrap();
        assert!(newest.evict().unwrap());
        assert!(!newest.is_resident());
        assert!(!local.join(newest.name().to_string()).exists());
        let mut out = Vec::new();
        assert!(held.collect(key(5), Lsn(at.0 + 1), &mut out).await.unwrap());
        drop(held);
        check_all(&timeline, at).await;
        assert_eq!(fetches.get(), 3, "the evicted layer came back");

        // Compaction reads evicted layers and removes them; its new layer
        // has no remote copy, so it cannot be evicted.
        for layer in timeline.layer_map().layers() {
            layer.evict().unwrap();
        }
        assert_eq!(core.residence.resident_layers.get(), 0);
        timeline.compact_l0(1, 128 << 20).await.unwrap();
        check_all(&timeline, at).await;
        for layer in timeline.layer_map().layers() {
            assert!(!layer.has_remote());
            assert!(!layer.evict().unwrap(), "no remote copy: kept");
        }
        let reloaded = Timeline::load(&local, TENANT, TIMELINE, CoreContext::new(8 << 20), None)
            .await
            .unwrap();
        check_all(&reloaded, at).await;
        // Without a remote copy, bit rot stays an error naming file and
        // block.
        let layer = reloaded.layer_map().layers().first().unwrap().clone();
        let file = local.join(layer.name().to_string());
        drop((layer, reloaded));
        flip_byte(&file, 8192 + 4000);
        let reloaded = Timeline::load(&local, TENANT, TIMELINE, CoreContext::new(8 << 20), None)
            .await
            .unwrap();
        let layer = reloaded.layer_map().layers().first().unwrap().clone();
        let failed = layer.verify().await.unwrap_err().to_string();
        assert!(
            failed.contains(&file.display().to_string()) && failed.contains("block 1"),
            "{failed}"
        );
    })
    .unwrap();
}

#[test]
fn damaged_files_are_replaced_by_their_copies() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("timeline");
    let remote = dir.path().join("remote");
    run_local(&executor(), move || async move {
        let Moved {
            at, copies, fail, ..
        } = moved_away(&local, &remote).await;
        let core = CoreContext::new(8 << 20);
        let timeline =
            Timeline::load_with_remote(&local, TENANT, TIMELINE, core.clone(), None, &copies)
                .await
                .unwrap();
        check_all(&timeline, at).await;
        let newest = timeline.layer_map().layers().first().unwrap().clone();
        // Bit rot in a resident layer with a remote copy: the read finds the
        // block failing its check, the copy replaces the file, the read
        // is served.
        drop(timeline);
        let newest_file = local.join(newest.name().to_string());
        drop(newest);
        flip_byte(&newest_file, 8192 + 4000);
        let core = CoreContext::new(8 << 20);
        let timeline =
            Timeline::load_with_remote(&local, TENANT, TIMELINE, core.clone(), None, &copies)
                .await
                .unwrap();
        // While the copy cannot be fetched, the damaged block's reads fail
        // and the file stays: its other blocks still serve.
        fail.set(true);
        let mut failed = 0;
        for block in 0..KEYS {
            if timeline.get(key(block), at).await.is_err() {
                failed += 1;
            }
        }
        assert!(failed > 0 && failed < KEYS, "{failed} reads failed");
        assert!(newest_file.exists());
        fail.set(false);
        check_all(&timeline, at).await;
        // Found twice: the repair that failed, the one that worked.
        assert_eq!(core.residence.corrupt_blocks.get(), 2);
        assert_eq!(core.residence.repairs.get(), 1);
        for layer in timeline.layer_map().layers() {
            if layer.is_resident() {
                layer.verify().await.unwrap();
            }
        }
        // The scrub finds damage no read has met, and repairs it.
        drop(timeline);
        flip_byte(&newest_file, 2 * 8192 + 10);
        let core = CoreContext::new(8 << 20);
        let timeline =
            Timeline::load_with_remote(&local, TENANT, TIMELINE, core.clone(), None, &copies)
                .await
                .unwrap();
        let map = timeline.layer_map();
        let layer = map
            .layers()
            .iter()
            .find(|layer| local.join(layer.name().to_string()) == newest_file)
            .unwrap();
        let mut first = 0;
        while let Some(checked) = layer.scrub(first, 4).await.unwrap() {
            if checked == 0 {
                break;
            }
            first += checked;
        }
        assert_eq!(u64::from(first), core.residence.scrubbed_blocks.get());
        assert_eq!(core.residence.repairs.get(), 1);
        check_all(&timeline, at).await;
        drop(map);

        // A damaged summary: the load replaces the file by its copy.
        drop(timeline);
        flip_byte(&newest_file, 100);
        let core = CoreContext::new(8 << 20);
        let timeline =
            Timeline::load_with_remote(&local, TENANT, TIMELINE, core.clone(), None, &copies)
                .await
                .unwrap();
        check_all(&timeline, at).await;
        assert_eq!(core.residence.corrupt_blocks.get(), 1);
    })
    .unwrap();
}
