//! Each tenant shard's attachment to object storage, when the pageserver
//! has one (`--remote`; the rules are `docs/format/remote-storage.md`):
//! the generation the shard writes as, claimed in the background when the
//! shard is created or loaded, and each timeline's upload task, which
//! brings the remote copy up to the timeline's durable metadata whenever
//! that changes ([`crate::remote::Uploader`]) and publishes the
//! remote-consistent LSN: the WAL receiver never reports more than that
//! upstream, so the safekeepers (or a primary's slot) keep every WAL byte
//! object storage does not hold yet.
//!
//! A pageserver restart claims a new generation only while the one it
//! held is still the newest (or the newest was claimed by this very
//! pageserver, its record lost in a crash): one that another pageserver
//! superseded stays superseded, writes nothing more and stops following
//! the timeline's WAL. The tasks run on
//! the shard's core and await the remote runtime's bounded queue; nothing
//! on the GetPage path touches them.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use quire_io::Task;
use quire_net::id::{ShardIdentity, TenantId};
use quire_postgres::Lsn;
use quire_remote::generation::GenerationRecord;
use quire_remote::ops::DELETE_BATCH_MAX;
use quire_remote::{
    CheckGeneration, ClaimGeneration, Delete, Generation, GenerationStatus, Get, Id, LatestIndex,
    LayerFileName, List, RemoteStorage,
};
use quire_shard::metadata::TimelineMetadata;
use quire_shard::residence::LayerFetch;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::admin::AdminError;
use super::core::ServedTimeline;
use super::files;
use super::residence::RemoteLayer;
use super::settings::{self, ShardSettings};
use crate::remote::{SyncOutcome, Uploader};

/// How often a timeline's upload task looks for a changed metadata.
const UPLOAD_PERIOD: Duration = Duration::from_secs(1);
/// How often an idle timeline checks that its generation is still current.
const IDLE_CHECK_PERIOD: Duration = Duration::from_secs(10);
/// The longest wait between attempts after failures (claims and syncs).
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Bytes of a generation object read at most.
const GENERATION_BYTES_MAX: u64 = 4096;

/// This pageserver's identity in generation objects (`DIR/node.json`),
/// made once at the first start.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeIdentity {
    /// 32 hex digits, random.
    pub node_id: String,
}

impl NodeIdentity {
    /// The identity stored in `root`, made and stored if there is none.
    pub fn load_or_create(root: &Path) -> Result<NodeIdentity> {
        let path = root.join("node.json");
        if path.exists() {
            return files::load(&path);
        }
        let mut bytes = [0u8; 16];
        std::io::Read::read_exact(
            &mut std::fs::File::open("/dev/urandom").context("open /dev/urandom")?,
            &mut bytes,
        )
        .context("read /dev/urandom")?;
        let identity = NodeIdentity {
            node_id: Id(bytes).to_string(),
        };
        files::store(&path, &identity)?;
        Ok(identity)
    }

    /// The holder written into the generations this node claims.
    pub fn holder(&self) -> String {
        format!("pageserver {}", self.node_id)
    }
}

/// A tenant shard's attachment to object storage.
pub struct ShardRemote {
    /// The remote runtime.
    pub storage: RemoteStorage,
    /// The shard's name there.
    pub shard: quire_remote::TenantShard,
    /// The generation it writes as, once claimed.
    pub generation: Cell<Option<Generation>>,
    /// A newer generation seen: this attachment writes nothing more.
    pub superseded: Cell<Option<Generation>>,
    /// Why the last claim failed, while it has not succeeded.
    pub claim_error: RefCell<Option<String>>,
    /// The claim task, while it runs.
    claim: RefCell<Option<Task<()>>>,
}

impl ShardRemote {
    /// Starts the attachment of the shard in `dir` (claiming its
    /// generation in the background), when there is object storage.
    /// `claimed`: the generation an attach has just claimed for it.
    pub fn start(
        storage: Option<&RemoteStorage>,
        holder: &str,
        (dir, tenant, identity): (&Path, TenantId, ShardIdentity),
        claimed: Option<Generation>,
    ) -> Option<Rc<ShardRemote>> {
        let storage = storage?.clone();
        let remote = Rc::new(ShardRemote {
            storage,
            shard: quire_remote::TenantShard {
                tenant: Id(tenant.0),
                number: identity.number(),
                count: identity.count(),
            },
            generation: Cell::new(claimed),
            superseded: Cell::new(None),
            claim_error: RefCell::new(None),
            claim: RefCell::new(None),
        });
        if claimed.is_some() {
            return Some(remote);
        }
        let task = quire_io::spawn_local(claim_until_done(
            Rc::downgrade(&remote),
            dir.to_path_buf(),
            holder.to_owned(),
        ));
        *remote.claim.borrow_mut() = Some(task);
        Some(remote)
    }

    /// What the admin API shows.
    pub fn status(&self) -> Value {
        json!({
            "generation": self.generation.get().map(Generation::get),
            "superseded_by": self.superseded.get().map(Generation::get),
            "claim_error": *self.claim_error.borrow(),
        })
    }
}

/// Claims the shard's generation, retrying with backoff until it is done
/// (or the shard is gone).
async fn claim_until_done(remote: Weak<ShardRemote>, dir: PathBuf, holder: String) {
    let mut failures = 0u32;
    loop {
        let Some(shard) = remote.upgrade() else {
            return;
        };
        match claim(&shard, &dir, &holder).await {
            Ok(()) => {
                shard.claim_error.borrow_mut().take();
                return;
            }
            Err(error) => {
                let text = format!("{error:#}");
                if failures == 0 || failures.is_multiple_of(10) {
                    eprintln!(
                        "pageserver: {}: claiming a generation failed (will retry): {text}",
                        shard.shard.prefix()
                    );
                }
                *shard.claim_error.borrow_mut() = Some(text);
                failures += 1;
            }
        }
        drop(shard);
        quire_io::sleep(backoff(failures)).await;
    }
}

/// One claim: the held generation checked, a new one claimed and stored in
/// `shard.json` (or the shard found superseded).
async fn claim(remote: &ShardRemote, dir: &Path, holder: &str) -> Result<()> {
    let path = settings::shard_file(dir);
    let mut stored: ShardSettings = files::load(&path)?;
    if stored.generation.is_none() {
        // A shard this pageserver made, never claimed: if object storage
        // already has generations of it, it is another attachment's tenant
        // (made again here under its ids), which only an attach may take.
        let existing = remote
            .storage
            .call(List {
                prefix: remote.shard.generations_prefix(),
            })
            .await?
            .iter()
            .filter_map(|object| Generation::parse_hex(quire_remote::names::base_name(&object.key)))
            .max();
        if let Some(newer) = existing
            && holder_of(remote, newer).await? != holder
        {
            eprintln!(
                "pageserver: {}: object storage already holds generation {newer} of this shard: it is not claimed here (attach the tenant to take it over)",
                remote.shard.prefix()
            );
            remote.superseded.set(Some(newer));
            return Ok(());
        }
    }
    if let Some(held) = stored.generation.and_then(Generation::new) {
        let status = remote
            .storage
            .call(CheckGeneration {
                shard: remote.shard,
                generation: held,
            })
            .await?;
        if let GenerationStatus::Superseded(newer) = status {
            // Claimed by this node before a crash lost its record here?
            let newer_holder = holder_of(remote, newer).await?;
            if newer_holder != holder {
                eprintln!(
                    "pageserver: {}: superseded: generation {newer} ({newer_holder}) is newer than ours, {held}; this pageserver writes nothing more for the shard",
                    remote.shard.prefix(),
                );
                remote.superseded.set(Some(newer));
                return Ok(());
            }
        }
    }
    let generation = remote
        .storage
        .call(ClaimGeneration {
            shard: remote.shard,
            holder: holder.to_owned(),
        })
        .await?;
    stored.generation = Some(generation.get());
    files::store(&path, &stored)?;
    eprintln!(
        "pageserver: {}: claimed generation {generation}",
        remote.shard.prefix()
    );
    remote.generation.set(Some(generation));
    Ok(())
}

/// Who claimed `generation` of the shard (its generation object's holder).
async fn holder_of(remote: &ShardRemote, generation: Generation) -> Result<String> {
    let record = remote
        .storage
        .call(Get {
            key: remote.shard.generation_key(generation),
            max_bytes: GENERATION_BYTES_MAX,
        })
        .await?;
    let record = GenerationRecord::decode(&record)
        .map_err(|what| anyhow!("generation object {generation}: {what}"))?;
    Ok(record.holder)
}

/// What a timeline's upload task shows.
#[derive(Default)]
pub struct UploadGauges {
    /// Syncs that ended with the index uploaded.
    pub syncs: Cell<u64>,
    /// Layer files uploaded.
    pub layers_uploaded: Cell<u64>,
    /// Layer objects deleted.
    pub layers_deleted: Cell<u64>,
    /// Why the last sync failed, until one succeeds.
    pub last_error: RefCell<Option<String>>,
}

/// Starts `served`'s upload task, when its shard has object storage; until
/// its first sync nothing is reported upstream as durable.
pub fn start_uploads(remote: Option<&Rc<ShardRemote>>, served: &Rc<ServedTimeline>, core: usize) {
    let Some(remote) = remote else {
        return;
    };
    served.receiver_gauges.remote_consistent.set(Some(Lsn(0)));
    let task = quire_io::spawn_local(upload_loop(Rc::clone(remote), Rc::downgrade(served), core));
    *served.uploads.borrow_mut() = Some(task);
}

/// Syncs `served` with object storage whenever its durable metadata
/// changes, until it is dropped or the shard is superseded.
async fn upload_loop(remote: Rc<ShardRemote>, served: Weak<ServedTimeline>, core: usize) {
    let mut uploader: Option<Uploader> = None;
    let mut synced: Option<TimelineMetadata> = None;
    let mut failures = 0u32;
    let mut last_check = Instant::now();
    loop {
        quire_io::sleep(if failures == 0 {
            UPLOAD_PERIOD
        } else {
            backoff(failures)
        })
        .await;
        let Some(timeline) = served.upgrade() else {
            return;
        };
        if let Some(newer) = remote.superseded.get() {
            stop_following(&timeline, newer);
            return;
        }
        let Some(generation) = remote.generation.get() else {
            continue;
        };
        let metadata = timeline.timeline.durable_metadata().await;
        if synced.as_ref() == Some(&metadata) {
            // Nothing to upload: still look now and then whether another
            // attachment took over, so that this one lets its WAL source go.
            if last_check.elapsed() >= IDLE_CHECK_PERIOD {
                last_check = Instant::now();
                let status = remote
                    .storage
                    .call(CheckGeneration {
                        shard: remote.shard,
                        generation,
                    })
                    .await;
                if let Ok(GenerationStatus::Superseded(newer)) = status {
                    eprintln!(
                        "pageserver: core {core}: timeline {}/{}: superseded by generation {newer}",
                        remote.shard.prefix(),
                        timeline.id
                    );
                    remote.superseded.set(Some(newer));
                    stop_following(&timeline, newer);
                    return;
                }
            }
            continue;
        }
        last_check = Instant::now();
        let dir = timeline.timeline.directory().to_path_buf();
        let id = timeline.id;
        let name = format!("core {core}: timeline {}/{id}", remote.shard.prefix());
        let outcome = sync_once(&remote, &mut uploader, generation, id.0, &dir, &metadata).await;
        let gauges = &timeline.upload_gauges;
        match outcome {
            Ok(SyncOutcome::Current {
                remote_consistent_lsn,
                uploaded,
                deleted,
            }) => {
                failures = 0;
                gauges.syncs.set(gauges.syncs.get() + 1);
                gauges
                    .layers_uploaded
                    .set(gauges.layers_uploaded.get() + uploaded as u64);
                gauges
                    .layers_deleted
                    .set(gauges.layers_deleted.get() + deleted as u64);
                gauges.last_error.borrow_mut().take();
                timeline
                    .receiver_gauges
                    .remote_consistent
                    .set(Some(remote_consistent_lsn));
                if let Some(uploader) = &uploader {
                    learn_remote_copies(&remote.storage, uploader, &timeline);
                }
                synced = Some(metadata);
            }
            Ok(SyncOutcome::Superseded(newer)) => {
                eprintln!(
                    "pageserver: {name}: superseded by generation {newer}: uploads stop, nothing more is deleted or reported"
                );
                remote.superseded.set(Some(newer));
                stop_following(&timeline, newer);
                return;
            }
            Err(error) => {
                let text = format!("{error:#}");
                if failures == 0 || failures.is_multiple_of(10) {
                    eprintln!("pageserver: {name}: upload failed (will retry): {text}");
                }
                *gauges.last_error.borrow_mut() = Some(text);
                failures += 1;
            }
        }
    }
}

/// Tells `served`'s layers that the last index lists where their objects
/// are: they may be evicted from then on.
fn learn_remote_copies(storage: &RemoteStorage, uploader: &Uploader, served: &ServedTimeline) {
    let shard = uploader.shard();
    let timeline = Id(served.id.0);
    let listed = uploader.uploaded();
    served.timeline.set_remote_copies(&|name| {
        let file_name = LayerFileName::new(&name.to_string())?;
        let layer = listed.get(&file_name)?;
        let copy: Rc<dyn LayerFetch> = Rc::new(RemoteLayer::new(storage, shard, timeline, layer));
        Some(copy)
    });
}

/// Stops `served`'s WAL receiver: a superseded attachment ingests nothing
/// more, and its source (a primary's walsender waiting at shutdown for a
/// flush report it would never get) is let go. Reads go on being served
/// at what it had.
fn stop_following(served: &ServedTimeline, newer: Generation) {
    if served.receiver.borrow_mut().take().is_some() {
        *served.receiver_error.borrow_mut() = Some(format!(
            "superseded by generation {newer} in object storage: this pageserver no longer follows the timeline"
        ));
    }
}

/// One sync, the uploader made first from the newest index at or below
/// our generation (what an earlier attachment uploaded is not sent again).
async fn sync_once(
    remote: &ShardRemote,
    uploader: &mut Option<Uploader>,
    generation: Generation,
    timeline: [u8; 16],
    dir: &Path,
    metadata: &TimelineMetadata,
) -> Result<SyncOutcome> {
    if uploader.is_none() {
        let previous = remote
            .storage
            .call(LatestIndex {
                shard: remote.shard,
                timeline: Id(timeline),
                at_most: generation,
            })
            .await?;
        // A disk older than what object storage holds (a restored copy, a
        // tenant made again under ids that exist there) must not become
        // the remote copy: its first sync would delete the newer layers.
        if let Some(index) = &previous
            && Lsn(index.disk_consistent_lsn) > metadata.disk_consistent_lsn
        {
            bail!(
                "object storage holds this timeline through {} (index of generation {}), past this disk's {}: nothing is uploaded or reported; detach the tenant and attach it",
                Lsn(index.disk_consistent_lsn),
                index.generation,
                metadata.disk_consistent_lsn
            );
        }
        *uploader = Some(Uploader::new(
            remote.storage.clone(),
            remote.shard,
            timeline,
            generation,
            previous.as_ref(),
        ));
    }
    let uploader = uploader.as_mut().ok_or_else(|| anyhow!("no uploader"))?;
    Ok(uploader.sync(dir, metadata).await?)
}

/// What the admin API shows of a timeline's uploads.
pub fn timeline_status(served: &ServedTimeline) -> Value {
    let gauges = &served.upload_gauges;
    json!({
        "remote_consistent_lsn": served.receiver_gauges.remote_consistent.get().map(|lsn| lsn.to_string()),
        "syncs": gauges.syncs.get(),
        "layers_uploaded": gauges.layers_uploaded.get(),
        "layers_deleted": gauges.layers_deleted.get(),
        "last_error": *gauges.last_error.borrow(),
    })
}

/// Deletes the shard's objects in object storage, once the shard's tasks
/// have stopped and its local files are gone: the indexes first (an attach
/// racing it finds no index, rather than one naming deleted layers), then
/// the layers; only objects of its own generation or earlier, and only
/// while that generation is current (checked before each batch). The
/// generation objects stay: with them gone, a superseded pageserver would
/// find its generation current again, or claim generation 1 anew. A
/// superseded attachment, or one never claimed, deletes nothing.
pub async fn delete_remote(remote: &ShardRemote) -> Result<Value, AdminError> {
    remote.claim.borrow_mut().take();
    let prefix = remote.shard.prefix();
    let refuse = |why: String| Ok(json!({"objects_deleted": 0, "kept": why}));
    if let Some(newer) = remote.superseded.get() {
        return refuse(format!("superseded by generation {newer}"));
    }
    let Some(generation) = remote.generation.get() else {
        return refuse("no generation was claimed: the objects are not this pageserver's".into());
    };
    let failed = |what: &str, e: quire_remote::RemoteError| {
        AdminError::new(502, format!("{prefix}: {what}: {e}"))
    };
    let listed = remote
        .storage
        .call(List {
            prefix: format!("{prefix}/timelines/"),
        })
        .await
        .map_err(|e| failed("list its objects", e))?;
    // Indexes (false) before layers (true); newer generations' objects stay.
    let mut keys: Vec<(bool, String)> = listed
        .into_iter()
        .filter_map(|object| {
            let base = quire_remote::names::base_name(&object.key);
            let (_, written_by) = Generation::parse_suffix(base)?;
            let is_index = quire_remote::names::index_generation(base).is_some();
            (written_by <= generation).then_some((!is_index, object.key))
        })
        .collect();
    keys.sort();
    let mut deleted = 0;
    for batch in keys.chunks(DELETE_BATCH_MAX) {
        let status = remote
            .storage
            .call(CheckGeneration {
                shard: remote.shard,
                generation,
            })
            .await
            .map_err(|e| failed("check the generation", e))?;
        if let GenerationStatus::Superseded(newer) = status {
            return Ok(json!({
                "objects_deleted": deleted,
                "kept": format!("superseded by generation {newer} midway"),
            }));
        }
        remote
            .storage
            .call(Delete {
                keys: batch.iter().map(|(_, key)| key.clone()).collect(),
            })
            .await
            .map_err(|e| failed("delete its objects", e))?;
        deleted += batch.len();
    }
    eprintln!("pageserver: {prefix}: deleted {deleted} objects from object storage");
    Ok(json!({"objects_deleted": deleted}))
}

/// The wait after `failures` failures in a row: 1 s doubling to 30 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(BACKOFF_MAX)
}
