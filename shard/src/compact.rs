//! L0 → L1 compaction: merging the whole-key-space L0 delta layers into
//! delta layers partitioned by key.
//!
//! Reads of a key then touch one L1 layer per compacted LSN range instead of
//! every L0. The L0s' entries are merged in (key, LSN) order and cut into
//! partitions of about `target_bytes` of values, never splitting one key's
//! history; each partition becomes a layer covering its key range over the
//! L0s' whole LSN range. The new layers are made durable and published in
//! one metadata change that also drops the L0s; their files are deleted
//! only after that, so a crash leaves either the old or the new set listed
//! (unlisted files are deleted on load).
//!
//! A lone L0 between two images is rewritten as one L1 over the keys it
//! holds, so the L0 count (the debt that holds ingest) always falls.
//!
//! L0s are merged only in runs that no image layer's LSN falls inside: an
//! image sits on the last LSN of the L0 below it, and a merged layer that
//! spanned it would hide it from reads (the layer map's search relies on
//! layers of one key overlapping in LSN only at such an image).

use std::rc::Rc;

use quire_layerfmt::format::LeafEntry;
use quire_postgres::{Key, Lsn};

use crate::layer_builder::LayerBuilder;
use crate::layer_file::{LayerFile, LayerKindName, LayerName};
use crate::timeline::{Timeline, TimelineError};

/// Whether a layer is an L0 delta (the whole key space).
pub fn is_l0(name: &LayerName) -> bool {
    name.kind == LayerKindName::Delta && name.key_start == Key::MIN && name.key_end == Key::MAX
}

/// How many L0 layers `timeline` has: its compaction debt.
pub fn l0_count(timeline: &Timeline) -> usize {
    timeline
        .layer_map()
        .layers()
        .iter()
        .filter(|l| is_l0(l.name()))
        .count()
}

impl Timeline {
    /// Compacts the L0 layers into L1 layers of about `target_bytes` of
    /// values each, when there are at least `min_l0` of them. Returns the
    /// number of L0 layers compacted.
    pub async fn compact_l0(
        &self,
        min_l0: usize,
        target_bytes: u64,
    ) -> Result<usize, TimelineError> {
        let _maintenance = self.maintenance.lock().await;
        let map = self.layer_map();
        let mut l0: Vec<Rc<LayerFile>> = map
            .layers()
            .iter()
            .filter(|l| is_l0(l.name()))
            .cloned()
            .collect();
        if l0.len() < min_l0.max(1) {
            return Ok(0);
        }
        l0.sort_by_key(|layer| layer.name().lsn_start);
        let image_lsns: Vec<Lsn> = map
            .names()
            .into_iter()
            .filter(|name| name.kind == LayerKindName::Image)
            .map(|name| name.lsn_start)
            .collect();
        let mut compacted = 0;
        let mut run: Vec<Rc<LayerFile>> = Vec::new();
        for layer in l0 {
            if let Some(previous) = run.last() {
                // An image on the previous run's last LSN, or in the gap a
                // GC left before this layer, would end up inside the merge.
                let from = Lsn(previous.name().lsn_end.0 - 1);
                let to = Lsn(layer.name().lsn_end.0 - 1);
                if image_lsns.iter().any(|image| *image >= from && *image < to) {
                    compacted += self
                        .compact_run(std::mem::take(&mut run), target_bytes)
                        .await?;
                }
            }
            run.push(layer);
        }
        if !run.is_empty() {
            compacted += self.compact_run(run, target_bytes).await?;
        }
        Ok(compacted)
    }

    /// Merges `l0` (sorted by LSN, no image inside their range) into L1s.
    async fn compact_run(
        &self,
        l0: Vec<Rc<LayerFile>>,
        target_bytes: u64,
    ) -> Result<usize, TimelineError> {
        let lsn_start = l0[0].name().lsn_start;
        let lsn_end = l0
            .iter()
            .map(|l| l.name().lsn_end)
            .max()
            .unwrap_or(lsn_start);

        let mut entries: Vec<(Key, Lsn, usize, LeafEntry)> = Vec::new();
        for (index, layer) in l0.iter().enumerate() {
            for entry in layer.entries().await? {
                entries.push((entry.key(), Lsn(entry.lsn.get()), index, entry));
            }
        }
        entries.sort_by_key(|(key, lsn, _, _)| (*key, *lsn));

        let partitions = partition(&entries, target_bytes);
        // A lone L0 (images on both sides, as image creation between
        // flushes leaves them) would come out as one layer under the same
        // name and stay L0 for good, its debt holding ingest forever: it
        // becomes an L1 over the key range it holds instead.
        let lone = l0.len() == 1 && partitions.len() == 1;
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(0);
        };
        let (first_key, last_key) = (first.0, last.0);
        if lone && first_key == Key::MIN && last_key.next().is_none() {
            return Ok(0);
        }
        let mut new_layers = Vec::with_capacity(partitions.len());
        for (i, range) in partitions.iter().enumerate() {
            let key_start = if lone {
                first_key
            } else if i == 0 {
                Key::MIN
            } else {
                entries[range.start].0
            };
            let key_end = if lone {
                last_key.next().unwrap_or(Key::MAX)
            } else {
                partitions
                    .get(i + 1)
                    .map_or(Key::MAX, |next| entries[next.start].0)
            };
            let name = LayerName {
                kind: LayerKindName::Delta,
                key_start,
                key_end,
                lsn_start,
                lsn_end,
            };
            let mut builder =
                LayerBuilder::create(&self.dir, name, self.tenant_id, self.id).await?;
            for (key, lsn, index, entry) in &entries[range.clone()] {
                let value = l0[*index].read_entry(entry).await?;
                builder.add(*key, *lsn, &value).await?;
            }
            let name = builder.finish().await?;
            let file = LayerFile::open_in(&self.dir, name, &self.core).await?;
            new_layers.push(Rc::new(file));
        }

        let removed: Vec<LayerName> = l0.iter().map(|layer| *layer.name()).collect();
        let disk_consistent = self.disk_consistent_lsn();
        self.publish(&removed, new_layers, disk_consistent, None)
            .await?;
        for name in &removed {
            crate::layer_file::remove_if_present(&self.dir.join(name.to_string())).await?;
        }
        Ok(removed.len())
    }
}

/// Index ranges of `entries` (sorted by key) holding about `target_bytes`
/// of values each, cut only where the key changes. Always at least one.
fn partition(
    entries: &[(Key, Lsn, usize, LeafEntry)],
    target_bytes: u64,
) -> Vec<std::ops::Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for i in 0..entries.len() {
        if i > start && bytes >= target_bytes && entries[i].0 != entries[i - 1].0 {
            ranges.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += u64::from(entries[i].3.length.get());
    }
    ranges.push(start..entries.len());
    ranges
}
