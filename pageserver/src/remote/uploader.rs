//! Uploads a timeline in the order `docs/format/remote-storage.md` sets:
//! each layer the local metadata lists and the last uploaded index does
//! not, then an index of that metadata, then a check that the generation
//! is still current, and only then the deletion of layers the new index no
//! longer lists and the remote-consistent LSN a caller may report.
//!
//! It runs on any executor (a core's included): every remote operation is
//! submitted to [`RemoteStorage`]'s bounded queue, awaiting room there when
//! it is full, so a slow store holds the caller back instead of growing a
//! queue.

use std::collections::BTreeMap;
use std::path::Path;

use quire_postgres::Lsn;
use quire_remote::ops::DELETE_BATCH_MAX;
use quire_remote::{
    CheckGeneration, Delete, Generation, GenerationStatus, Id, IndexLayer, LayerFileName,
    RemoteError, RemoteStorage, TenantShard, TimelineIndex, UploadFile, UploadIndex,
};
use quire_shard::metadata::TimelineMetadata;

/// Why a sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum UploaderError {
    /// A layer name no object name can carry.
    #[error("layer {0:?} cannot be named in object storage")]
    LayerName(String),
    /// The remote operation failed (after its retries).
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// What a sync achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncOutcome {
    /// The index is uploaded and the generation was current after it:
    /// WAL below `remote_consistent_lsn` may be removed.
    Current {
        /// The uploaded index's disk-consistent LSN.
        remote_consistent_lsn: Lsn,
        /// Layers uploaded by this sync.
        uploaded: usize,
        /// Layer objects deleted by this sync.
        deleted: usize,
    },
    /// A newer generation exists: nothing was deleted and no LSN may be
    /// reported. The uploader stops writing (every later sync answers
    /// this without touching the store).
    Superseded(Generation),
}

/// One timeline's uploads, for one generation of its tenant shard.
pub struct Uploader {
    storage: RemoteStorage,
    shard: TenantShard,
    timeline: Id,
    generation: Generation,
    /// What the last uploaded index lists (at attach: the index attached
    /// from), by name.
    uploaded: BTreeMap<LayerFileName, IndexLayer>,
    /// Layers no uploaded index lists any more, still to be deleted.
    doomed: Vec<IndexLayer>,
    superseded: Option<Generation>,
}

impl Uploader {
    /// An uploader for `generation`, starting from `previous`, the index
    /// the attachment started from (`None` for a new timeline).
    pub fn new(
        storage: RemoteStorage,
        shard: TenantShard,
        timeline: [u8; 16],
        generation: Generation,
        previous: Option<&TimelineIndex>,
    ) -> Uploader {
        Uploader {
            storage,
            shard,
            timeline: Id(timeline),
            generation,
            uploaded: previous
                .map(|index| {
                    index
                        .layers
                        .iter()
                        .map(|layer| (layer.name.clone(), layer.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            doomed: Vec::new(),
            superseded: None,
        }
    }

    /// Brings the remote copy up to `metadata`, whose layers are files in
    /// `dir`, durable (the metadata lists only such).
    pub async fn sync(
        &mut self,
        dir: &Path,
        metadata: &TimelineMetadata,
    ) -> Result<SyncOutcome, UploaderError> {
        if let Some(newer) = self.superseded {
            return Ok(SyncOutcome::Superseded(newer));
        }
        // 1. Layers the last index lacks, all queued before any is awaited.
        let mut layers = BTreeMap::new();
        let mut uploads = Vec::new();
        for layer in &metadata.layers {
            let file_name = layer.to_string();
            let name = LayerFileName::new(&file_name)
                .ok_or_else(|| UploaderError::LayerName(file_name.clone()))?;
            if let Some(listed) = self.uploaded.get(&name) {
                layers.insert(name, listed.clone());
                continue;
            }
            let upload = UploadFile {
                local: dir.join(&file_name),
                key: self.shard.layer_key(self.timeline, &name, self.generation),
            };
            uploads.push((name, self.storage.submit(upload).await?));
        }
        let uploaded_now = uploads.len();
        for (name, pending) in uploads {
            let sent = pending.await?;
            layers.insert(
                name.clone(),
                IndexLayer {
                    name,
                    size: sent.size,
                    crc32c: sent.crc32c,
                    generation: self.generation,
                },
            );
        }
        // 2. The index, listing only layers whose upload completed.
        let index = TimelineIndex {
            generation: self.generation,
            disk_consistent_lsn: metadata.disk_consistent_lsn.0,
            gc_cutoff_lsn: metadata.gc_cutoff_lsn.0,
            ancestor: metadata.ancestor.map(|(id, lsn)| (Id(id), lsn.0)),
            layers: layers.values().cloned().collect(),
        };
        self.storage
            .call(UploadIndex {
                shard: self.shard,
                timeline: self.timeline,
                index,
            })
            .await?;
        let dropped: Vec<IndexLayer> = self
            .uploaded
            .values()
            .filter(|layer| !layers.contains_key(&layer.name))
            .cloned()
            .collect();
        self.doomed.extend(dropped);
        self.uploaded = layers;
        // A name listed again under the same object (a layer re-made with
        // the same name by this generation) must not be deleted.
        let uploaded = &self.uploaded;
        self.doomed.retain(|doomed| {
            uploaded
                .get(&doomed.name)
                .is_none_or(|listed| listed.generation != doomed.generation)
        });
        // 3. Current after that upload? Only then delete or report.
        let status = self
            .storage
            .call(CheckGeneration {
                shard: self.shard,
                generation: self.generation,
            })
            .await?;
        if let GenerationStatus::Superseded(newer) = status {
            self.superseded = Some(newer);
            return Ok(SyncOutcome::Superseded(newer));
        }
        let deleted = self.delete_doomed().await?;
        Ok(SyncOutcome::Current {
            remote_consistent_lsn: metadata.disk_consistent_lsn,
            uploaded: uploaded_now,
            deleted,
        })
    }

    /// Deletes what no uploaded index lists, in batches; a batch that
    /// fails stays doomed for the next sync.
    async fn delete_doomed(&mut self) -> Result<usize, UploaderError> {
        let mut deleted = 0;
        while !self.doomed.is_empty() {
            let batch: Vec<IndexLayer> =
                self.doomed.iter().take(DELETE_BATCH_MAX).cloned().collect();
            let keys = batch
                .iter()
                .map(|layer| {
                    self.shard
                        .layer_key(self.timeline, &layer.name, layer.generation)
                })
                .collect();
            self.storage.call(Delete { keys }).await?;
            self.doomed.drain(..batch.len());
            deleted += batch.len();
        }
        Ok(deleted)
    }

    /// What the last uploaded index lists (at first: the index it started
    /// from), by name.
    pub fn uploaded(&self) -> &BTreeMap<LayerFileName, IndexLayer> {
        &self.uploaded
    }

    /// The shard it writes for.
    pub fn shard(&self) -> TenantShard {
        self.shard
    }

    /// The generation it writes as.
    pub fn generation(&self) -> Generation {
        self.generation
    }
}
