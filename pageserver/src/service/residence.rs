//! Layers on the local disk or only in object storage: each layer an index
//! lists gets its remote copy ([`RemoteLayer`], fetched through the remote
//! runtime when a read first needs it), and one task per core keeps its
//! layers within the disk budget (`--disk-budget-mib`, shared evenly
//! between the cores) by evicting the least recently read layers that
//! object storage holds.
//!
//! Eviction starts when the core's resident layer bytes pass its budget
//! and stops at 90% of it. A layer not yet uploaded is never evicted, so
//! the disk may hold more than the budget while uploads lag (the other
//! layers then keep half the budget, not to thrash); the budget
//! counts layer files only (not the in-memory layers' spill files, nor the
//! metadata).

use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context as _;
use quire_net::id::{TenantId, TimelineId};
use quire_remote::{
    Download, Generation, Id, IndexLayer, LatestIndex, RemoteStorage, TenantShard, TimelineIndex,
    Transferred,
};
use quire_shard::layer_file::{LayerFile, LayerName};
use quire_shard::metadata::TimelineMetadata;
use quire_shard::residence::{LayerFetch, LocalFuture};
use quire_shard::timeline::RemoteCopies;
use quire_shard::{CoreContext, Timeline, TimelineError};

use super::core::{Core, ServedTimeline};
use super::remote_sync::ShardRemote;

/// How often a core looks at its disk use.
const EVICTION_PERIOD: Duration = Duration::from_secs(1);

/// Eviction stops at this share of the budget (per mille), so that one
/// layer past it does not start another round.
const LOW_WATER_PER_MILLE: u64 = 900;

/// One layer's object.
pub struct RemoteLayer {
    storage: RemoteStorage,
    key: String,
    expect: Transferred,
}

impl RemoteLayer {
    /// The object of `layer`, as `shard`'s index of `timeline` lists it.
    pub fn new(
        storage: &RemoteStorage,
        shard: TenantShard,
        timeline: Id,
        layer: &IndexLayer,
    ) -> RemoteLayer {
        RemoteLayer {
            storage: storage.clone(),
            key: shard.layer_key(timeline, &layer.name, layer.generation),
            expect: Transferred {
                size: layer.size,
                crc32c: layer.crc32c,
            },
        }
    }
}

impl std::fmt::Debug for RemoteLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RemoteLayer({})", self.key)
    }
}

impl LayerFetch for RemoteLayer {
    fn size(&self) -> u64 {
        self.expect.size
    }

    fn fetch<'a>(&'a self, path: &'a Path) -> LocalFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.storage
                .call(Download {
                    key: self.key.clone(),
                    local: path.to_owned(),
                    expect: Some(self.expect),
                })
                .await
                .map(|_| ())
                .map_err(|e| format!("{} from object storage: {e}", self.key))
        })
    }
}

/// The remote copies of every layer `index` lists (a name that is not a
/// layer's is left out: no local layer can have it).
pub fn copies_of(
    storage: &RemoteStorage,
    shard: TenantShard,
    timeline: Id,
    index: &TimelineIndex,
) -> RemoteCopies {
    index
        .layers
        .iter()
        .filter_map(|layer| {
            let name = LayerName::parse(layer.name.as_str())?;
            let copy: Rc<dyn LayerFetch> =
                Rc::new(RemoteLayer::new(storage, shard, timeline, layer));
            Some((name, copy))
        })
        .collect()
}

/// The remote copies a timeline in `dir` needs to load: none when every
/// layer its metadata lists is on the local disk, otherwise those the
/// newest index at or below `generation` lists (the one this pageserver
/// last held: an evicted or never downloaded layer is in it, since only
/// uploaded layers are left out of the disk and every later index lists
/// what the metadata still does).
/// With `always`, the copies are read even when every layer is there.
pub async fn copies_for_load(
    remote: Option<&ShardRemote>,
    generation: Option<Generation>,
    dir: &Path,
    (timeline, always): (Id, bool),
) -> anyhow::Result<RemoteCopies> {
    let metadata = TimelineMetadata::load(dir).await?;
    let missing = metadata
        .layers
        .iter()
        .filter(|name| !dir.join(name.to_string()).exists())
        .count();
    if missing == 0 && !always {
        return Ok(RemoteCopies::new());
    }
    let (Some(remote), Some(generation)) = (remote, generation) else {
        anyhow::bail!(
            "{missing} of its layers are not on the local disk, and this pageserver has no object storage or generation to fetch them from"
        );
    };
    let index = remote
        .storage
        .call(LatestIndex {
            shard: remote.shard,
            timeline,
            at_most: generation,
        })
        .await
        .with_context(|| format!("read the index of its {missing} layers not on the local disk"))?
        .ok_or_else(|| {
            anyhow::anyhow!("{missing} of its layers are not on the local disk, and object storage has no index of it")
        })?;
    Ok(copies_of(&remote.storage, remote.shard, timeline, &index))
}

/// Loads the timeline in `dir` with the remote copies its missing layers
/// need; when a present layer's summary or checksum table is damaged, the
/// load is tried again with every layer's copy, so that the copy replaces
/// the damaged file.
pub async fn load_timeline(
    context: &Rc<CoreContext>,
    remote: Option<&ShardRemote>,
    generation: Option<Generation>,
    (dir, tenant, id): (&Path, TenantId, TimelineId),
    ancestor: Option<Rc<Timeline>>,
) -> anyhow::Result<Timeline> {
    let copies = copies_for_load(remote, generation, dir, (Id(id.0), false)).await?;
    let load = |copies: RemoteCopies, ancestor: Option<Rc<Timeline>>| async move {
        Timeline::load_with_remote(dir, tenant.0, id.0, Rc::clone(context), ancestor, &copies).await
    };
    match load(copies, ancestor.clone()).await {
        Err(TimelineError::Layer(damage)) if damage.is_damage() && remote.is_some() => {
            // Without the copies the damage is the error to show.
            let copies = copies_for_load(remote, generation, dir, (Id(id.0), true))
                .await
                .map_err(|e| anyhow::anyhow!("{damage}; and no copy to replace it: {e:#}"))?;
            Ok(load(copies, ancestor).await?)
        }
        other => Ok(other?),
    }
}

/// Copies `core`'s residence counters into its gauges.
pub fn publish(core: &Core, label: &str) {
    let residence = &core.context.residence;
    for (what, value) in [
        ("resident_layers", residence.resident_layers.get()),
        ("resident_bytes", residence.resident_bytes.get()),
        ("remote_only_layers", residence.remote_only_layers.get()),
        ("downloads", residence.downloads.get()),
        ("download_bytes", residence.download_bytes.get()),
        ("download_failures", residence.download_failures.get()),
        ("evictions", residence.evictions.get()),
        ("evicted_bytes", residence.evicted_bytes.get()),
        ("scrubbed_blocks", residence.scrubbed_blocks.get()),
        ("corrupt_blocks", residence.corrupt_blocks.get()),
        ("repairs", residence.repairs.get()),
    ] {
        core.metrics
            .residence
            .with_label_values(&[label, what])
            .set(i64::try_from(value).unwrap_or(i64::MAX));
    }
}

/// Starts `core`'s eviction task when the pageserver has a disk budget
/// (and object storage: without it nothing can be evicted).
pub fn start_eviction(core: &Rc<Core>) {
    let Some(budget) = core.shared.disk_budget else {
        return;
    };
    if core.shared.remote.is_none() {
        return;
    }
    let per_core = budget / u64::try_from(core.shared.cores.max(1)).unwrap_or(1);
    quire_io::spawn_local(eviction_loop(Rc::clone(core), per_core)).detach();
}

async fn eviction_loop(core: Rc<Core>, budget: u64) {
    loop {
        quire_io::sleep(EVICTION_PERIOD).await;
        if core.context.residence.resident_bytes.get() <= budget {
            continue;
        }
        let low_water = budget / 1000 * LOW_WATER_PER_MILLE;
        if let Err(error) = evict_down_to(&core, low_water) {
            eprintln!("pageserver: core {}: eviction: {error}", core.index);
        }
    }
}

/// Evicts every layer of `served` that object storage holds (the admin
/// API's `POST .../evict`); how many it evicted.
pub fn evict_timeline(served: &ServedTimeline) -> Result<usize, quire_io::FileError> {
    let map = served.timeline.layer_map();
    let mut evicted = 0;
    for layer in map.layers() {
        if layer.evict()? {
            evicted += 1;
        }
    }
    Ok(evicted)
}

/// Evicts the least recently read evictable layers of `core` until its
/// resident bytes are at most `target` (raised while layers not uploaded
/// yet hold much of it); how many it evicted.
pub fn evict_down_to(core: &Core, target: u64) -> Result<usize, quire_io::FileError> {
    let mut candidates: Vec<Rc<LayerFile>> = Vec::new();
    let mut pinned = 0u64;
    for shard in core.shards.borrow().values() {
        for served in shard.timelines.borrow().values() {
            let map = served.timeline.layer_map();
            for layer in map.layers().iter().filter(|layer| layer.is_resident()) {
                if layer.has_remote() {
                    candidates.push(Rc::clone(layer));
                } else {
                    pinned += layer.bytes();
                }
            }
        }
    }
    // Layers waiting for their upload count against the budget, but do
    // not push the others below half of it: with more waiting than the
    // budget, evicting every read layer each round would only thrash.
    let target = target.max(pinned.saturating_add(target / 2));
    candidates.sort_by_key(|layer| layer.last_read());
    let residence = &core.context.residence;
    let mut evicted = 0;
    for layer in candidates {
        if residence.resident_bytes.get() <= target {
            break;
        }
        if layer.evict()? {
            evicted += 1;
        }
    }
    Ok(evicted)
}
