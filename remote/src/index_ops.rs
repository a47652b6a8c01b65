//! A timeline's index in object storage: [`UploadIndex`] replaces the
//! index of the generation that wrote it, [`LatestIndex`] finds and reads
//! the newest index at or below a generation (where an attachment starts
//! from), checking that the object's name and content agree.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::RemoteError;
use crate::index::{INDEX_BYTES_MAX, TimelineIndex};
use crate::names::{Generation, Id, TenantShard, base_name, index_generation};
use crate::ops::{Get, PutBytes, WriteMode, list_objects};
use crate::service::{Context, Operation};

/// Uploads `index` as `index-g<its generation>` of the timeline.
pub struct UploadIndex {
    /// The tenant shard.
    pub shard: TenantShard,
    /// The timeline.
    pub timeline: Id,
    /// The index (its generation names the object).
    pub index: TimelineIndex,
}

impl Operation for UploadIndex {
    type Output = ();
    const NAME: &'static str = "upload_index";

    async fn run(self, ctx: Arc<Context>) -> Result<(), RemoteError> {
        let key = self.shard.index_key(self.timeline, self.index.generation);
        let bytes = self.index.encode().map_err(|source| RemoteError::Index {
            key: key.clone(),
            source,
        })?;
        PutBytes {
            key,
            bytes: Bytes::from(bytes),
            mode: WriteMode::Overwrite,
        }
        .run(ctx)
        .await
    }
}

/// Reads the newest index of a timeline whose generation is at most
/// `at_most`; `None` if there is none.
pub struct LatestIndex {
    /// The tenant shard.
    pub shard: TenantShard,
    /// The timeline.
    pub timeline: Id,
    /// The highest generation whose index may be read (the reader's own).
    pub at_most: Generation,
}

impl Operation for LatestIndex {
    type Output = Option<TimelineIndex>;
    const NAME: &'static str = "latest_index";

    async fn run(self, ctx: Arc<Context>) -> Result<Option<TimelineIndex>, RemoteError> {
        // Layer objects (`delta-…`, `image-…`) sort before `index`, index
        // objects (`index-g…`) after it: the listing starts there.
        let folder = self.shard.timeline_prefix(self.timeline);
        let folder = folder.trim_end_matches('/');
        let listed = list_objects(&ctx, folder, Some(&format!("{folder}/index"))).await?;
        let newest = listed
            .iter()
            .filter_map(|object| Some((index_generation(base_name(&object.key))?, object)))
            .filter(|(generation, _)| *generation <= self.at_most)
            .max_by_key(|(generation, _)| *generation);
        let Some((generation, object)) = newest else {
            return Ok(None);
        };
        let bytes = Get {
            key: object.key.clone(),
            max_bytes: INDEX_BYTES_MAX as u64,
        }
        .run(ctx)
        .await?;
        let index = TimelineIndex::decode(&bytes).map_err(|source| RemoteError::Index {
            key: object.key.clone(),
            source,
        })?;
        if index.generation != generation {
            return Err(RemoteError::Corrupt {
                key: object.key.clone(),
                what: format!(
                    "an index of generation {} under this name",
                    index.generation
                ),
            });
        }
        Ok(Some(index))
    }
}
