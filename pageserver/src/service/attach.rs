//! Attaching a tenant shard from object storage (`quire tenant attach`,
//! `POST /v1/tenant/<tenant>/attach`) onto a pageserver that does not hold
//! it: a new generation is claimed first, which supersedes whichever
//! pageserver held the shard before (it stops writing at its next check);
//! then, per timeline, the newest index at or below that generation is
//! read and the timeline's metadata written from it; its layers are not
//! downloaded: each is fetched (and checked against the size and CRC-32C
//! the index lists) when a read first needs it ([`super::residence`]). The timeline settings are made from the stored control file (the
//! system identifier and segment size) and the WAL source given. The shard
//! is then loaded as at a restart: each timeline resumes ingest from its
//! disk-consistent LSN, from the WAL the safekeepers kept above the
//! remote-consistent LSN, and uploads again under the new generation.
//! Reading the control file for the settings fetches the layers holding
//! it, so an attach answers after its first few downloads, not all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;

use anyhow::{Context, anyhow};
use quire_net::id::TimelineId;
use quire_postgres::Lsn;
use quire_remote::{
    ClaimGeneration, Generation, Id, LatestIndex, ListFolders, RemoteStorage, TimelineIndex,
};
use quire_shard::Timeline;
use quire_shard::layer_file::LayerName;
use quire_shard::metadata::TimelineMetadata;
use serde_json::{Value, json};

use super::admin::AdminError;
use super::core::Core;
use super::files;
use super::residence::copies_of;
use super::settings::{self, AncestorSettings, ShardSettings, TimelineSettings, WalSourceSettings};
use crate::import::stored_control;

/// Attaches the shard `settings` names onto `core` (see the module
/// documentation); what was attached.
pub async fn attach_shard(
    core: &Core,
    settings: ShardSettings,
    wal_source: Option<WalSourceSettings>,
) -> Result<Value, AdminError> {
    let storage = core.shared.remote.clone().ok_or_else(|| {
        AdminError::new(
            400,
            "this pageserver has no object storage (--remote) to attach from",
        )
    })?;
    let tenant = settings.tenant_id()?;
    let identity = settings.identity()?;
    if core.shard(tenant, identity.number()).is_some() {
        return Err(AdminError::new(
            409,
            format!(
                "tenant {tenant} shard {} is here already",
                identity.number()
            ),
        ));
    }
    let dir = settings::shard_dir(&core.shared.root, tenant, identity);
    if dir.exists() {
        return Err(AdminError::new(409, format!("{} exists", dir.display())));
    }
    // Reserved before the first await: a second attach of the shard (a
    // retry, another client) is refused instead of sharing the directory.
    let key = (tenant, identity.number());
    if !core.attaching.borrow_mut().insert(key) {
        return Err(AdminError::new(
            409,
            format!(
                "tenant {tenant} shard {} is being attached",
                identity.number()
            ),
        ));
    }
    let _reserved = Reservation { core, key };
    let shard = quire_remote::TenantShard {
        tenant: Id(tenant.0),
        number: identity.number(),
        count: identity.count(),
    };
    let generation = storage
        .call(ClaimGeneration {
            shard,
            holder: core.shared.holder.clone(),
        })
        .await
        .map_err(|e| AdminError::new(502, format!("claim a generation: {e}")))?;
    eprintln!(
        "pageserver: core {}: {}: attaching as generation {generation}",
        core.index,
        shard.prefix()
    );
    let mut settings = settings;
    settings.generation = Some(generation.get());
    let fetched = fetch_shard(
        core, &storage, shard, generation, &dir, &settings, wal_source,
    )
    .await;
    let timelines = match fetched {
        Ok(timelines) => timelines,
        Err(error) => {
            // Nothing half-attached stays: a retry starts anew (and claims
            // a newer generation).
            let _ = std::fs::remove_dir_all(&dir);
            return Err(error);
        }
    };
    if let Err(error) = core.load_shard_as(&dir, &settings, Some(generation)).await {
        core.shards
            .borrow_mut()
            .remove(&(tenant, identity.number()));
        let _ = std::fs::remove_dir_all(&dir);
        return Err(AdminError::from(error));
    }
    Ok(json!({
        "core": core.index,
        "generation": generation.get(),
        "timelines": timelines,
    }))
}

/// Frees an attach's reservation however the attach ends.
struct Reservation<'a> {
    core: &'a Core,
    key: (quire_net::id::TenantId, u32),
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.core.attaching.borrow_mut().remove(&self.key);
    }
}

/// Downloads every timeline of the shard into `dir` and writes its
/// metadata and settings, and the shard's; what each timeline holds.
async fn fetch_shard(
    core: &Core,
    storage: &RemoteStorage,
    shard: quire_remote::TenantShard,
    generation: Generation,
    dir: &Path,
    settings: &ShardSettings,
    wal_source: Option<WalSourceSettings>,
) -> Result<Vec<Value>, AdminError> {
    let indexes = newest_indexes(storage, shard, generation).await?;
    files::create_dir_durably(&dir.join("timelines"))?;
    let mut attached = Vec::new();
    // Roots first: a branch's settings come from its ancestor's.
    let mut made: BTreeMap<[u8; 16], TimelineSettings> = BTreeMap::new();
    for (id, index) in parents_first(&indexes)? {
        let timeline_dir = settings::timeline_dir(dir, TimelineId(id));
        // No layer is downloaded here: each is fetched when a read first
        // needs it.
        files::create_dir_durably(&timeline_dir)?;
        let ancestor = index.ancestor.map(|(parent, lsn)| (parent.0, Lsn(lsn)));
        metadata_of(index, ancestor)?
            .store(&timeline_dir)
            .await
            .map_err(|e| anyhow!("timeline {}: {e}", Id(id)))?;
        let timeline_settings = match ancestor {
            None => {
                // The control file stored at the timeline's end names the
                // cluster it belongs to.
                let copies = copies_of(storage, shard, Id(id), index);
                let loaded = Timeline::load_with_remote(
                    &timeline_dir,
                    shard.tenant.0,
                    id,
                    Rc::clone(&core.context),
                    None,
                    &copies,
                )
                .await
                .map_err(|e| anyhow!("timeline {}: {e}", Id(id)))?;
                let control = stored_control(&loaded, loaded.last_record_lsn())
                    .await
                    .with_context(|| format!("timeline {}", Id(id)))?;
                TimelineSettings {
                    timeline: Id(id).to_string(),
                    ancestor: None,
                    system_identifier: control.system_identifier.get(),
                    segment_size: control.xlog_seg_size.get(),
                    wal_source: wal_source.clone(),
                    wal_start: None,
                }
            }
            Some((parent, lsn)) => {
                let parent_settings = made.get(&parent).ok_or_else(|| {
                    AdminError::new(
                        502,
                        format!(
                            "timeline {}: its ancestor {} has no index",
                            Id(id),
                            Id(parent)
                        ),
                    )
                })?;
                TimelineSettings {
                    timeline: Id(id).to_string(),
                    ancestor: Some(AncestorSettings {
                        timeline: Id(parent).to_string(),
                        lsn: lsn.to_string(),
                    }),
                    system_identifier: parent_settings.system_identifier,
                    segment_size: parent_settings.segment_size,
                    // A primary feeds one timeline; safekeepers hold each
                    // timeline under its own ids.
                    wal_source: match &wal_source {
                        Some(WalSourceSettings::Primary { .. }) => None,
                        other => other.clone(),
                    },
                    wal_start: None,
                }
            }
        };
        files::store(
            &settings::timeline_file(dir, TimelineId(id)),
            &timeline_settings,
        )?;
        attached.push(json!({
            "timeline_id": Id(id).to_string(),
            "layers": index.layers.len(),
            "bytes": index.layers.iter().map(|l| l.size).sum::<u64>(),
            "disk_consistent_lsn": Lsn(index.disk_consistent_lsn).to_string(),
            "index_generation": index.generation.get(),
        }));
        made.insert(id, timeline_settings);
    }
    files::store(&settings::shard_file(dir), settings)?;
    Ok(attached)
}

/// The newest index at or below `generation` of each timeline the shard
/// has in object storage.
async fn newest_indexes(
    storage: &RemoteStorage,
    shard: quire_remote::TenantShard,
    generation: Generation,
) -> Result<BTreeMap<[u8; 16], TimelineIndex>, AdminError> {
    let remote_error = |what: &str, e: quire_remote::RemoteError| {
        AdminError::new(502, format!("{}: {what}: {e}", shard.prefix()))
    };
    let folders = storage
        .call(ListFolders {
            prefix: format!("{}/timelines/", shard.prefix()),
        })
        .await
        .map_err(|e| remote_error("list the timelines", e))?;
    let ids: BTreeSet<[u8; 16]> = folders
        .iter()
        .filter_map(|folder| timeline_of_folder(folder))
        .collect();
    let mut indexes = BTreeMap::new();
    for id in ids {
        let index = storage
            .call(LatestIndex {
                shard,
                timeline: Id(id),
                at_most: generation,
            })
            .await
            .map_err(|e| remote_error("read an index", e))?;
        if let Some(index) = index {
            indexes.insert(id, index);
        }
    }
    if indexes.is_empty() {
        return Err(AdminError::new(
            404,
            format!("{}: object storage holds no timeline of it", shard.prefix()),
        ));
    }
    Ok(indexes)
}

/// The local metadata an index stands for.
fn metadata_of(
    index: &TimelineIndex,
    ancestor: Option<([u8; 16], Lsn)>,
) -> Result<TimelineMetadata, AdminError> {
    let layers = index
        .layers
        .iter()
        .map(|layer| {
            LayerName::parse(layer.name.as_str()).ok_or_else(|| {
                AdminError::new(
                    502,
                    format!(
                        "the index lists {:?}, not a layer name",
                        layer.name.as_str()
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TimelineMetadata {
        disk_consistent_lsn: Lsn(index.disk_consistent_lsn),
        ancestor,
        gc_cutoff_lsn: Lsn(index.gc_cutoff_lsn),
        layers,
    })
}

/// The timelines in an order where each comes after its ancestor; an
/// ancestor without an index (or a cycle) is an error.
fn parents_first(
    indexes: &BTreeMap<[u8; 16], TimelineIndex>,
) -> Result<Vec<([u8; 16], &TimelineIndex)>, AdminError> {
    let mut ordered: Vec<([u8; 16], &TimelineIndex)> = Vec::with_capacity(indexes.len());
    let mut placed = BTreeSet::new();
    while ordered.len() < indexes.len() {
        let before = ordered.len();
        for (id, index) in indexes {
            let ready = match index.ancestor {
                None => true,
                Some((parent, _)) => placed.contains(&parent.0),
            };
            if ready && !placed.contains(id) {
                placed.insert(*id);
                ordered.push((*id, index));
            }
        }
        if ordered.len() == before {
            return Err(AdminError::new(
                502,
                "some timelines' ancestors have no index in object storage",
            ));
        }
    }
    Ok(ordered)
}

/// The timeline id of a folder `tenants/<shard>/timelines/<timeline>`.
fn timeline_of_folder(folder: &str) -> Option<[u8; 16]> {
    let rest = folder.trim_end_matches('/').split("/timelines/").nth(1)?;
    if rest.contains('/') {
        return None;
    }
    rest.parse::<TimelineId>().ok().map(|id| id.0)
}

#[cfg(test)]
mod tests {
    use super::timeline_of_folder;

    #[test]
    fn timeline_ids_come_from_folder_names() {
        let id = "0123456789abcdef0123456789abcdef";
        assert!(timeline_of_folder(&format!("tenants/{id}-s0of1/timelines/{id}")).is_some());
        assert!(timeline_of_folder(&format!("tenants/{id}-s0of1/timelines/{id}/")).is_some());
        assert_eq!(timeline_of_folder("tenants/x/generations"), None);
        assert_eq!(
            timeline_of_folder(&format!("tenants/x/timelines/{id}/index-g1")),
            None,
            "an object, not a folder"
        );
        assert_eq!(timeline_of_folder("tenants/x/timelines/nothex"), None);
    }
}
