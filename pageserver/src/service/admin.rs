//! The admin operations as they run on the core owning a shard: what the
//! HTTP thread ([`super::http`]) sends each core over its bounded queue,
//! and the handlers that create, delete, describe and maintain shards and
//! timelines. Each reply travels back on a oneshot.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::SystemTime;

use anyhow::{Context, anyhow};
use quire_net::id::{TenantId, TimelineId};
use quire_postgres::Lsn;
use quire_postgres::key::KeyKind;
use quire_postgres::timestamp::TimestampTz;
use quire_shard::compact::is_l0;
use quire_shard::{GcPolicy, ImagePolicy, Timeline};
use serde_json::{Value, json};

use super::core::{Core, ServedTimeline, TenantShard};
use super::files;
use super::remote_sync::ShardRemote;
use super::settings::{self, AncestorSettings, ShardSettings, TimelineSettings, WalSourceSettings};
use crate::import::{import_datadir, read_control};
use crate::ingest::WalIngest;

/// A failed admin operation: the HTTP status it answers with and why.
#[derive(Debug, Clone)]
pub struct AdminError {
    /// 400, 404, 409, 500, ...
    pub status: u16,
    /// What went wrong.
    pub message: String,
}

impl AdminError {
    /// A failure with `status`.
    pub fn new(status: u16, message: impl Into<String>) -> AdminError {
        AdminError {
            status,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for AdminError {
    fn from(error: anyhow::Error) -> AdminError {
        AdminError::new(500, format!("{error:#}"))
    }
}

/// Where a reply goes: a queue of one that the core fills without waiting
/// and the HTTP thread reads with a timeout.
pub type Reply = std::sync::mpsc::SyncSender<Result<Value, AdminError>>;

/// How long creating a branch waits for its parent (on this shard) to
/// ingest the branch point.
const BRANCH_POINT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// How a new timeline starts.
#[derive(Clone, Debug)]
pub enum TimelineOrigin {
    /// From a cleanly stopped cluster's data directory.
    Import {
        /// The data directory.
        pgdata: PathBuf,
    },
    /// As a branch of another timeline of the tenant at an LSN.
    Branch {
        /// The parent.
        ancestor: TimelineId,
        /// The branch point.
        lsn: Lsn,
    },
}

/// What one core is asked to do.
pub enum AdminCommand {
    /// Create a tenant shard (directory and settings) on this core.
    CreateShard {
        /// Its settings.
        settings: ShardSettings,
        /// Where the answer goes.
        reply: Reply,
    },
    /// Attach a tenant shard from object storage onto this core.
    AttachShard {
        /// Its settings (the generation is claimed by the attach).
        settings: ShardSettings,
        /// Where its timelines' WAL comes from.
        wal_source: Option<WalSourceSettings>,
        /// Where the answer goes.
        reply: Reply,
    },
    /// Delete a tenant shard and its files (a detach), and with
    /// `remote_too` its objects in object storage (a tenant delete).
    DeleteShard {
        /// The tenant.
        tenant: TenantId,
        /// The shard number.
        number: u32,
        /// Whether its objects in object storage go too.
        remote_too: bool,
        /// Where the answer goes.
        reply: Reply,
    },
    /// Create a timeline in a shard.
    CreateTimeline {
        /// The tenant.
        tenant: TenantId,
        /// The shard number.
        number: u32,
        /// The new timeline's id.
        timeline: TimelineId,
        /// How it starts.
        origin: TimelineOrigin,
        /// Where its WAL comes from.
        wal_source: Option<WalSourceSettings>,
        /// Where the answer goes.
        reply: Reply,
    },
    /// Describe one timeline of a shard, or all of them.
    Status {
        /// The tenant.
        tenant: TenantId,
        /// The shard number.
        number: u32,
        /// The timeline, or every one.
        timeline: Option<TimelineId>,
        /// Where the answer goes.
        reply: Reply,
    },
    /// The relation forks of a timeline and their sizes, at its last LSN.
    Relations {
        /// The tenant.
        tenant: TenantId,
        /// The shard number.
        number: u32,
        /// The timeline.
        timeline: TimelineId,
        /// Where the answer goes.
        reply: Reply,
    },
    /// Flush, compact L0 layers and create images now.
    Compact {
        /// The tenant.
        tenant: TenantId,
        /// The shard number.
        number: u32,
        /// The timeline.
        timeline: TimelineId,
        /// Where the answer goes.
        reply: Reply,
    },
    /// Evict every layer of a timeline that object storage holds.
    Evict {
        /// The tenant.
        tenant: TenantId,
        /// The shard number.
        number: u32,
        /// The timeline.
        timeline: TimelineId,
        /// Where the answer goes.
        reply: Reply,
    },
    /// The last commit at or before a time (every shard keeps the index;
    /// shard 0 answers for the tenant).
    CommitAtOrBefore {
        /// The tenant.
        tenant: TenantId,
        /// The shard number.
        number: u32,
        /// The timeline.
        timeline: TimelineId,
        /// The time.
        time: TimestampTz,
        /// Where the answer goes.
        reply: Reply,
    },
    /// Stream a basebackup (shard 0's core).
    Basebackup {
        /// What is asked for, and where the tar goes.
        request: super::basebackup::BasebackupRequest,
        /// Where the answer goes before the tar: the LSN, or why not.
        reply: Reply,
    },
    /// Garbage-collect below the PITR window (or the LSN given).
    Gc {
        /// The tenant.
        tenant: TenantId,
        /// The shard number.
        number: u32,
        /// The timeline.
        timeline: TimelineId,
        /// The cutoff asked for, if any (else the default policy's).
        cutoff: Option<Lsn>,
        /// Where the answer goes.
        reply: Reply,
    },
}

/// Runs `command` on `core` and sends its answer.
pub async fn handle(core: Rc<Core>, command: AdminCommand) {
    match command {
        AdminCommand::CreateShard { settings, reply } => {
            let _ = reply.try_send(create_shard(&core, &settings));
        }
        AdminCommand::AttachShard {
            settings,
            wal_source,
            reply,
        } => {
            let attached = super::attach::attach_shard(&core, settings, wal_source).await;
            let _ = reply.try_send(attached);
        }
        AdminCommand::DeleteShard {
            tenant,
            number,
            remote_too,
            reply,
        } => {
            let deleted = match delete_shard(&core, tenant, number) {
                Ok(remote) if remote_too => match remote {
                    Some(remote) => super::remote_sync::delete_remote(&remote).await,
                    None => Ok(json!({})),
                },
                Ok(_) => Ok(json!({})),
                Err(error) => Err(error),
            };
            let _ = reply.try_send(deleted);
        }
        AdminCommand::CreateTimeline {
            tenant,
            number,
            timeline,
            origin,
            wal_source,
            reply,
        } => {
            let created =
                create_timeline(&core, tenant, number, timeline, origin, wal_source).await;
            let _ = reply.try_send(created);
        }
        AdminCommand::Status {
            tenant,
            number,
            timeline,
            reply,
        } => {
            let _ = reply.try_send(status(&core, tenant, number, timeline));
        }
        AdminCommand::Basebackup { request, reply } => {
            super::basebackup::serve(core, request, reply).await;
        }
        AdminCommand::Relations {
            tenant,
            number,
            timeline,
            reply,
        } => {
            let _ = reply.try_send(relations(&core, tenant, number, timeline).await);
        }
        AdminCommand::Compact {
            tenant,
            number,
            timeline,
            reply,
        } => {
            let _ = reply.try_send(compact(&core, tenant, number, timeline).await);
        }
        AdminCommand::Evict {
            tenant,
            number,
            timeline,
            reply,
        } => {
            let _ = reply.try_send(evict(&core, tenant, number, timeline));
        }
        AdminCommand::CommitAtOrBefore {
            tenant,
            number,
            timeline,
            time,
            reply,
        } => {
            let found = commit_at_or_before(&core, tenant, number, timeline, time).await;
            let _ = reply.try_send(found);
        }
        AdminCommand::Gc {
            tenant,
            number,
            timeline,
            cutoff,
            reply,
        } => {
            let _ = reply.try_send(gc(&core, tenant, number, timeline, cutoff).await);
        }
    }
}

pub(super) fn shard_of(
    core: &Core,
    tenant: TenantId,
    number: u32,
) -> Result<Rc<TenantShard>, AdminError> {
    core.shard(tenant, number)
        .ok_or_else(|| AdminError::new(404, format!("no shard {number} of tenant {tenant} here")))
}

pub(super) fn timeline_of(
    shard: &TenantShard,
    id: TimelineId,
) -> Result<Rc<ServedTimeline>, AdminError> {
    shard.timeline(id).ok_or_else(|| {
        AdminError::new(404, format!("tenant {} has no timeline {id}", shard.tenant))
    })
}

fn create_shard(core: &Core, settings: &ShardSettings) -> Result<Value, AdminError> {
    let tenant = settings.tenant_id()?;
    let identity = settings.identity()?;
    if core.shard(tenant, identity.number()).is_some()
        || core
            .attaching
            .borrow()
            .contains(&(tenant, identity.number()))
    {
        return Err(AdminError::new(
            409,
            format!("tenant {tenant} shard {} exists", identity.number()),
        ));
    }
    let dir = settings::shard_dir(&core.shared.root, tenant, identity);
    if dir.exists() {
        return Err(AdminError::new(409, format!("{} exists", dir.display())));
    }
    files::create_dir_durably(&dir.join("timelines"))?;
    files::store(&settings::shard_file(&dir), settings)?;
    core.shards.borrow_mut().insert(
        (tenant, identity.number()),
        Rc::new(TenantShard {
            tenant,
            identity,
            remote: ShardRemote::start(
                core.shared.remote.as_ref(),
                &core.shared.holder,
                (&dir, tenant, identity),
                None,
            ),
            dir,
            timelines: std::cell::RefCell::new(std::collections::HashMap::new()),
        }),
    );
    Ok(json!({"core": core.index}))
}

/// Removes the shard from the core and its files from the disk; its
/// attachment to object storage, if it has one.
fn delete_shard(
    core: &Core,
    tenant: TenantId,
    number: u32,
) -> Result<Option<Rc<ShardRemote>>, AdminError> {
    let shard = core
        .shards
        .borrow_mut()
        .remove(&(tenant, number))
        .ok_or_else(|| {
            AdminError::new(404, format!("no shard {number} of tenant {tenant} here"))
        })?;
    // Stop the receivers before the files go.
    for timeline in shard.timelines.borrow().values() {
        timeline.receiver.borrow_mut().take();
        timeline.maintenance.borrow_mut().take();
        timeline.uploads.borrow_mut().take();
    }
    // The settings file first: a crash midway leaves a directory the next
    // start removes.
    std::fs::remove_file(settings::shard_file(&shard.dir))
        .with_context(|| format!("remove {}", settings::shard_file(&shard.dir).display()))?;
    files::sync_dir(&settings::shard_file(&shard.dir))?;
    std::fs::remove_dir_all(&shard.dir)
        .with_context(|| format!("remove {}", shard.dir.display()))?;
    Ok(shard.remote.clone())
}

async fn create_timeline(
    core: &Core,
    tenant: TenantId,
    number: u32,
    id: TimelineId,
    origin: TimelineOrigin,
    wal_source: Option<WalSourceSettings>,
) -> Result<Value, AdminError> {
    let shard = shard_of(core, tenant, number)?;
    if shard.timeline(id).is_some() {
        return Err(AdminError::new(
            409,
            format!("tenant {tenant} has a timeline {id}"),
        ));
    }
    let dir = settings::timeline_dir(&shard.dir, id);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    let mut fresh = None;
    let (timeline, settings, data_checksums) = match origin {
        TimelineOrigin::Import { pgdata } => {
            let control =
                read_control(&pgdata).map_err(|e| AdminError::new(400, format!("{e:#}")))?;
            let timeline = Timeline::create(
                &dir,
                tenant.0,
                id.0,
                control.checkpoint_lsn(),
                Rc::clone(&core.context),
            )
            .await
            .map_err(|e| anyhow!(e))?;
            let imported = import_datadir(&timeline, &pgdata, shard.filter())
                .await
                .map_err(|e| AdminError::new(400, format!("import {}: {e:#}", pgdata.display())))?;
            timeline.freeze();
            timeline.flush().await.map_err(|e| anyhow!(e))?;
            eprintln!(
                "pageserver: core {}: imported {} pages of {} forks from {} into {tenant}/{id} at {}",
                core.index,
                imported.pages,
                imported.sizes.len(),
                pgdata.display(),
                imported.lsn
            );
            fresh = Some((imported.sizes, imported.slru_pages, imported.checkpoint));
            let settings = TimelineSettings {
                timeline: id.to_string(),
                ancestor: None,
                system_identifier: control.system_identifier.get(),
                segment_size: control.xlog_seg_size.get(),
                wal_source,
                wal_start: Some(imported.lsn.to_string()),
            };
            (timeline, settings, control.data_checksum_version.get() != 0)
        }
        TimelineOrigin::Branch { ancestor, lsn } => {
            let parent = timeline_of(&shard, ancestor)?;
            // The shards of a tenant ingest on their own: this one may not
            // have reached a point another shard resolved (a time, say).
            let _ = quire_io::timeout(BRANCH_POINT_WAIT, parent.timeline.wait_for_lsn(lsn)).await;
            let timeline = Timeline::branch(
                &dir,
                id.0,
                Rc::clone(&parent.timeline),
                lsn,
                Rc::clone(&core.context),
            )
            .await
            .map_err(|e| AdminError::new(400, format!("branch at {lsn}: {e}")))?;
            let settings = TimelineSettings {
                timeline: id.to_string(),
                ancestor: Some(AncestorSettings {
                    timeline: ancestor.to_string(),
                    lsn: lsn.to_string(),
                }),
                system_identifier: parent.settings.system_identifier,
                segment_size: parent.settings.segment_size,
                wal_source,
                wal_start: None,
            };
            (timeline, settings, parent.data_checksums)
        }
    };
    files::store(&settings::timeline_file(&shard.dir, id), &settings)?;
    let lsn = timeline.last_record_lsn();
    let served = Rc::new(ServedTimeline::new(id, timeline, settings, data_checksums));
    shard.timelines.borrow_mut().insert(id, Rc::clone(&served));
    let fresh = fresh.map(|(sizes, slru_pages, checkpoint)| {
        WalIngest::new(
            Rc::clone(&served.timeline),
            sizes,
            slru_pages,
            Some(checkpoint),
            Some((Rc::clone(&core.redo), shard.redo_key())),
        )
    });
    super::maintenance::start(core, &shard, &served);
    super::remote_sync::start_uploads(shard.remote.as_ref(), &served, core.index);
    super::receiver::start(core, &shard, &served, fresh).await?;
    Ok(json!({"timeline_id": id.to_string(), "lsn": lsn.to_string()}))
}

/// One timeline's status.
pub fn timeline_status(shard: &TenantShard, served: &ServedTimeline, core: usize) -> Value {
    let timeline = &served.timeline;
    let gauges = &served.receiver_gauges;
    let receiving = served.receiver.borrow().is_some() && served.receiver_error.borrow().is_none();
    let map = timeline.layer_map();
    let mut l0 = 0usize;
    let mut images = 0usize;
    let mut blocks = 0u64;
    let (mut resident, mut resident_bytes, mut evictable) = (0usize, 0u64, 0usize);
    for layer in map.layers() {
        if layer.is_resident() {
            resident += 1;
            resident_bytes += layer.bytes();
            if layer.has_remote() {
                evictable += 1;
            }
        }
        if is_l0(layer.name()) {
            l0 += 1;
        }
        if layer.name().kind == quire_shard::layer_file::LayerKindName::Image {
            images += 1;
        }
        blocks += u64::from(layer.block_count());
    }
    json!({
        "tenant_id": shard.tenant.to_string(),
        "timeline_id": served.id.to_string(),
        "shard_number": shard.identity.number(),
        "shard_count": shard.identity.count(),
        "core": core,
        "last_record_lsn": timeline.last_record_lsn().to_string(),
        "ingested_lsn": timeline.ingested_lsn().to_string(),
        "disk_consistent_lsn": timeline.disk_consistent_lsn().to_string(),
        "gc_cutoff_lsn": timeline.gc_cutoff_lsn().to_string(),
        "ancestor": served.settings.ancestor.as_ref().map(|a| json!({"timeline_id": a.timeline, "lsn": a.lsn})),
        "system_identifier": served.settings.system_identifier.to_string(),
        "data_checksums": served.data_checksums,
        "layers": {
            "count": map.len(),
            "l0": l0,
            "image": images,
            "bytes": blocks * 8192,
            // On the local disk; the rest are fetched when a read needs them.
            "resident": resident,
            "resident_bytes": resident_bytes,
            "remote_only": map.len() - resident,
            "evictable": evictable,
        },
        "open_layer_bytes": timeline.open_layer_bytes(),
        "wal_source": served.settings.wal_source,
        "receiving": receiving,
        "receiver_error": *served.receiver_error.borrow(),
        "ingest": {
            "wal_bytes_received": gauges.bytes.get(),
            "source_end_lsn": gauges.source_end.get().to_string(),
            // Only while receiving: a stopped receiver's source end is stale.
            "lag_bytes": receiving.then(|| gauges.source_end.get().0.saturating_sub(timeline.ingested_lsn().0)),
            "held_by_l0_debt": gauges.held.get(),
            "held_by_uploads": gauges.held_by_uploads.get(),
            "connections": gauges.connections.get(),
        },
        "maintenance": served.maintenance.borrow().is_some(),
        "remote": shard.remote.as_ref().map(|remote| {
            let mut status = remote.status();
            if let (Some(status), Value::Object(uploads)) =
                (status.as_object_mut(), super::remote_sync::timeline_status(served))
            {
                status.extend(uploads);
            }
            status
        }),
    })
}

fn status(
    core: &Core,
    tenant: TenantId,
    number: u32,
    timeline: Option<TimelineId>,
) -> Result<Value, AdminError> {
    let shard = shard_of(core, tenant, number)?;
    if let Some(id) = timeline {
        let served = timeline_of(&shard, id)?;
        return Ok(timeline_status(&shard, &served, core.index));
    }
    let mut all: Vec<Rc<ServedTimeline>> = shard.timelines.borrow().values().cloned().collect();
    all.sort_by_key(|t| t.id);
    Ok(Value::Array(
        all.iter()
            .map(|t| timeline_status(&shard, t, core.index))
            .collect(),
    ))
}

/// The last commit at or before `time`: `{lsn, commit_time, timestamp}`,
/// or 404 when the readable history holds none that early.
async fn commit_at_or_before(
    core: &Core,
    tenant: TenantId,
    number: u32,
    id: TimelineId,
    time: TimestampTz,
) -> Result<Value, AdminError> {
    let shard = shard_of(core, tenant, number)?;
    let served = timeline_of(&shard, id)?;
    let timeline = &served.timeline;
    let found = timeline
        .commit_at_or_before(time)
        .await
        .map_err(|e| AdminError::new(500, format!("commit-time index of {id}: {e}")))?;
    match found {
        Some(commit) => Ok(json!({
            "lsn": commit.lsn.to_string(),
            "commit_time": commit.time.to_string(),
            "timestamp": time.to_string(),
        })),
        None => Err(AdminError::new(
            404,
            format!(
                "timeline {id} records no commit at or before {time} at or above LSN {} \
                 (commits before its import, or below its GC cutoff, are not known)",
                timeline.lowest_readable_lsn()
            ),
        )),
    }
}

async fn relations(
    core: &Core,
    tenant: TenantId,
    number: u32,
    id: TimelineId,
) -> Result<Value, AdminError> {
    let shard = shard_of(core, tenant, number)?;
    let served = timeline_of(&shard, id)?;
    let timeline = &served.timeline;
    let lsn = timeline.last_record_lsn();
    let keys = timeline
        .size_keys_at(lsn, quire_postgres::Key::MIN..quire_postgres::Key::MAX)
        .await
        .map_err(|e| anyhow!(e))?;
    let mut relations = Vec::new();
    for key in keys {
        let Ok(KeyKind::RelSize(rel)) = key.describe() else {
            continue;
        };
        let Some(blocks) = timeline.rel_size(rel, lsn).await.map_err(|e| anyhow!(e))? else {
            continue;
        };
        relations.push(json!({
            "spc_oid": rel.spc_oid,
            "db_oid": rel.db_oid,
            "rel_number": rel.rel_number,
            "fork": rel.fork.name(),
            "blocks": blocks,
        }));
    }
    Ok(json!({"lsn": lsn.to_string(), "relations": relations}))
}

async fn compact(
    core: &Core,
    tenant: TenantId,
    number: u32,
    id: TimelineId,
) -> Result<Value, AdminError> {
    let shard = shard_of(core, tenant, number)?;
    let served = timeline_of(&shard, id)?;
    let timeline = &served.timeline;
    timeline.freeze();
    let flushed = timeline.flush().await.map_err(|e| anyhow!(e))?;
    let compacted = timeline
        .compact_l0(1, 128 << 20)
        .await
        .map_err(|e| anyhow!(e))?;
    let redo = core.redo.for_tenant(shard.redo_key());
    let images = timeline
        .create_image_layers(&redo, ImagePolicy::default())
        .await
        .map_err(|e| anyhow!(e))?;
    Ok(json!({
        "flushed_layers": flushed,
        "compacted_l0": compacted,
        "image_layers": images.layers.len(),
        "status": timeline_status(&shard, &served, core.index),
    }))
}

fn evict(core: &Core, tenant: TenantId, number: u32, id: TimelineId) -> Result<Value, AdminError> {
    let shard = shard_of(core, tenant, number)?;
    let served = timeline_of(&shard, id)?;
    let evicted = super::residence::evict_timeline(&served).map_err(|e| anyhow!(e))?;
    Ok(json!({
        "evicted": evicted,
        "status": timeline_status(&shard, &served, core.index),
    }))
}

async fn gc(
    core: &Core,
    tenant: TenantId,
    number: u32,
    id: TimelineId,
    cutoff: Option<Lsn>,
) -> Result<Value, AdminError> {
    let shard = shard_of(core, tenant, number)?;
    let served = timeline_of(&shard, id)?;
    let timeline = &served.timeline;
    let requested = match cutoff {
        Some(cutoff) => cutoff,
        None => timeline
            .gc_cutoff_for(GcPolicy::default(), SystemTime::now())
            .await
            .map_err(|e| AdminError::new(500, format!("GC cutoff: {e}")))?,
    };
    // A read at the latest LSN is served at the last record, which may be
    // below the disk-consistent LSN the engine clamps to (an import's is
    // one past it): a cutoff above the last record would refuse them all.
    let cutoff = requested.min(timeline.last_record_lsn());
    let retain: Vec<Lsn> = shard
        .timelines
        .borrow()
        .values()
        .filter_map(|t| match t.settings.ancestor() {
            Ok(Some((parent, at))) if parent == id => Some(at),
            _ => None,
        })
        .collect();
    let report = timeline.gc(cutoff, &retain).await.map_err(|e| anyhow!(e))?;
    Ok(json!({
        "requested_cutoff_lsn": requested.to_string(),
        "gc_cutoff_lsn": report.cutoff.to_string(),
        "removed_layers": report.removed.len(),
        "kept_layers": report.kept,
    }))
}
