//! Image creation ("image pushdown"): materialising image layers for the
//! key ranges whose reads have become expensive.
//!
//! Images are made at the last LSN on disk, `L = disk_consistent_lsn - 1`,
//! which is the last LSN of the newest delta layers, so the layer map's
//! rule (layers of one key overlap in LSN only where an image sits on the
//! last LSN of a delta below it) holds. The keys that have a value at `L`
//! (this timeline's and its ancestors') are cut into partitions of
//! [`ImagePolicy::partition_keys`] keys; a partition covers the key space
//! from its first key to the next partition's first key (the first from
//! `Key::MIN`, the last to `Key::MAX`) and holds every key that has a value
//! there, so a read of any key in range stops at it.
//!
//! A partition gets an image layer when any of these holds (defaults in
//! [`ImagePolicy::default`]):
//! - at least `max_delta_layers` delta layers above its newest image
//!   overlap it (a read may visit that many layers);
//! - some key's reconstruction at `L` applies at least `max_chain_records`
//!   records;
//! - a GetPage of one of its keys applied at least the timeline's
//!   expensive-read threshold of records
//!   ([`Timeline::set_expensive_read_records`]).
//!
//! Values are materialised through the [`Redo`] interface; a relation
//! block whose newest value is its cut marker keeps the marker. All new layers
//! are made durable, then published in one metadata change.

use std::rc::Rc;

use quire_postgres::{Key, Lsn};

use crate::keyspace::block_cut_value;
use crate::layer_builder::LayerBuilder;
use crate::layer_file::{LayerFile, LayerKindName, LayerName};
use crate::reconstruct::{ReconstructInputs, Redo, materialize};
use crate::timeline::{Timeline, TimelineError};
use crate::value::Value;

/// When image creation materialises a partition; see the module
/// documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImagePolicy {
    /// Keys per image layer (1,024 page images make an 8 MiB layer).
    pub partition_keys: usize,
    /// Delta layers above a partition's newest image that call for a new one.
    pub max_delta_layers: usize,
    /// Records one key's reconstruction may apply before its partition
    /// gets an image.
    pub max_chain_records: usize,
}

impl Default for ImagePolicy {
    fn default() -> ImagePolicy {
        ImagePolicy {
            partition_keys: 1024,
            max_delta_layers: 3,
            max_chain_records: 32,
        }
    }
}

/// What image creation did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageReport {
    /// The image LSN (`None` when nothing is on disk yet).
    pub lsn: Option<Lsn>,
    /// Partitions considered.
    pub partitions: usize,
    /// The layers written.
    pub layers: Vec<LayerName>,
    /// Values materialised into them.
    pub values: usize,
}

impl Timeline {
    /// Writes image layers for the partitions `policy` selects; see the
    /// module documentation.
    pub async fn create_image_layers<R: Redo>(
        &self,
        redo: &R,
        policy: ImagePolicy,
    ) -> Result<ImageReport, TimelineError> {
        let _maintenance = self.maintenance.lock().await;
        let disk_consistent = self.disk_consistent_lsn();
        let mut report = ImageReport::default();
        let Some(image_lsn) = disk_consistent.0.checked_sub(1).map(Lsn) else {
            return Ok(report);
        };
        report.lsn = Some(image_lsn);
        let keys: Vec<Key> = self
            .keys_at(image_lsn, Key::MIN..Key::MAX)
            .await?
            .into_iter()
            .collect();
        let chunks: Vec<&[Key]> = keys.chunks(policy.partition_keys.max(1)).collect();
        report.partitions = chunks.len();
        let existing = self.layer_map().names();
        let mut new_layers = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let key_start = if i == 0 { Key::MIN } else { chunk[0] };
            let key_end = chunks.get(i + 1).map_or(Key::MAX, |next| next[0]);
            let name = LayerName {
                kind: LayerKindName::Image,
                key_start,
                key_end,
                lsn_start: image_lsn,
                lsn_end: Lsn(image_lsn.0 + 1),
            };
            if existing.contains(&name) {
                continue;
            }
            let deltas = self.deltas_above_newest_image(key_start, key_end);
            let expensive = self
                .expensive_keys
                .borrow()
                .range(key_start..key_end)
                .next()
                .is_some();
            let mut inputs: Vec<(Key, ReconstructInputs)> = Vec::with_capacity(chunk.len());
            let mut longest_chain = 0;
            for &key in *chunk {
                let key_inputs = self.get_unchecked(key, image_lsn).await?;
                longest_chain = longest_chain.max(key_inputs.records.len());
                inputs.push((key, key_inputs));
            }
            let imaged_already = inputs.iter().all(|(_, key_inputs)| {
                key_inputs.records.is_empty()
                    && key_inputs.image.as_ref().map(|(lsn, _)| *lsn) == Some(image_lsn)
            });
            let wanted = !imaged_already && deltas >= policy.max_delta_layers
                || expensive
                || longest_chain >= policy.max_chain_records;
            if !wanted {
                continue;
            }
            let mut builder =
                LayerBuilder::create(&self.dir, name, self.tenant_id, self.id).await?;
            for (key, key_inputs) in &inputs {
                match materialize(redo, *key, image_lsn, key_inputs).await? {
                    Some(bytes) => builder.add(*key, image_lsn, &Value::Image(bytes)).await?,
                    // A listed key without a value is a cut relation block:
                    // the marker stays, or an older layer that GC keeps
                    // could show the block's old page again.
                    None if key.is_rel_block() => {
                        builder.add(*key, image_lsn, &block_cut_value()).await?;
                    }
                    None => continue,
                }
                report.values += 1;
            }
            let name = builder.finish().await?;
            let file = LayerFile::open_in(&self.dir, name, &self.core).await?;
            new_layers.push(Rc::new(file));
            report.layers.push(name);
        }
        if new_layers.is_empty() {
            return Ok(report);
        }
        self.publish(&[], new_layers, disk_consistent, None).await?;
        let mut expensive = self.expensive_keys.borrow_mut();
        for name in &report.layers {
            let covered: Vec<Key> = expensive
                .range(name.key_start..name.key_end)
                .copied()
                .collect();
            for key in covered {
                expensive.remove(&key);
            }
        }
        Ok(report)
    }

    /// Delta layers overlapping `[key_start, key_end)` above the newest
    /// image layer that covers all of it.
    fn deltas_above_newest_image(&self, key_start: Key, key_end: Key) -> usize {
        let map = self.layer_map();
        let newest_image = map
            .layers()
            .iter()
            .map(|layer| *layer.name())
            .filter(|name| {
                name.kind == LayerKindName::Image
                    && name.key_start <= key_start
                    && name.key_end >= key_end
            })
            .map(|name| name.lsn_start)
            .max();
        map.layers()
            .iter()
            .map(|layer| *layer.name())
            .filter(|name| {
                name.kind == LayerKindName::Delta
                    && name.key_start < key_end
                    && name.key_end > key_start
                    && newest_image.is_none_or(|image| name.lsn_start > image)
            })
            .count()
    }
}
