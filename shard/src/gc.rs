//! Garbage collection: removing the layers no read can need any more.
//!
//! A timeline keeps every read at or above its GC cutoff answerable, and
//! every read at a child's branch point. The cutoff is the lower of two
//! horizons ([`GcPolicy`]): an LSN distance behind the last record, and a
//! PITR window (the last commit at or before `now - pitr`, from the
//! commit-time index ingest keeps, [`crate::commit_time`]; without one old
//! enough the window keeps everything).
//!
//! A read of a key at `P` walks layers from `P` down and stops at the
//! first image of that key. So a layer covering `[s, e)` is needed by a
//! read at `P` unless `P < s`, or image layers with LSNs in `[e - 1, P]`
//! together cover its whole key range (image layers hold every key that
//! has a value at their LSN, so the walk stops at them); for an image layer
//! at `s` only strictly newer images count, so that images at one LSN never
//! remove each other. A layer is removed
//! when that holds for `P = cutoff` and for every retained branch point
//! `P ≥ s`. The new cutoff is written in the same metadata change that
//! drops the layers; files are deleted only after it is durable.

use std::time::{Duration, SystemTime};

use quire_postgres::Lsn;
use quire_postgres::timestamp::TimestampTz;

use crate::layer_file::{LayerKindName, LayerName};
use crate::timeline::{Timeline, TimelineError};

/// How much history a timeline keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// Bytes of WAL behind the last record that stay readable.
    pub horizon_bytes: u64,
    /// Time behind `now` that stays readable (point-in-time recovery).
    pub pitr: Duration,
}

impl Default for GcPolicy {
    /// 64 MiB of WAL and 7 days.
    fn default() -> GcPolicy {
        GcPolicy {
            horizon_bytes: 64 << 20,
            pitr: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// What a GC did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// The cutoff now in force.
    pub cutoff: Lsn,
    /// Layers removed.
    pub removed: Vec<LayerName>,
    /// Layers kept.
    pub kept: usize,
}

impl Timeline {
    /// The cutoff `policy` allows at `now`: the lower of the LSN distance
    /// behind the last record and the PITR horizon, the last commit at or
    /// before `now - pitr` ([`Timeline::commit_at_or_before`]; with none
    /// recorded that old, the window keeps everything).
    pub async fn gc_cutoff_for(
        &self,
        policy: GcPolicy,
        now: SystemTime,
    ) -> Result<Lsn, TimelineError> {
        let last = self.last_record_lsn();
        let by_distance = Lsn(last.0.saturating_sub(policy.horizon_bytes));
        let by_time = if policy.pitr.is_zero() {
            last
        } else {
            let horizon = now
                .checked_sub(policy.pitr)
                .and_then(TimestampTz::from_system_time);
            match horizon {
                Some(horizon) => self
                    .commit_at_or_before(horizon)
                    .await?
                    .map_or(Lsn(0), |commit| commit.lsn),
                None => Lsn(0),
            }
        };
        Ok(by_distance.min(by_time))
    }

    /// Raises the GC cutoff to `cutoff` (never past the disk-consistent
    /// LSN, never down) and removes the layers no read at or above it, nor
    /// at any of `retain` (the children's branch points), can need.
    pub async fn gc(&self, cutoff: Lsn, retain: &[Lsn]) -> Result<GcReport, TimelineError> {
        let _maintenance = self.maintenance.lock().await;
        let disk_consistent = self.disk_consistent_lsn();
        let old_cutoff = self.gc_cutoff_lsn();
        let cutoff = cutoff.min(disk_consistent).max(old_cutoff);
        let names = self.layer_map().names();
        let images: Vec<LayerName> = names
            .iter()
            .filter(|name| name.kind == LayerKindName::Image)
            .copied()
            .collect();
        let removed: Vec<LayerName> = names
            .iter()
            .filter(|layer| {
                let last = Lsn(layer.lsn_end.0 - 1);
                let points = std::iter::once(cutoff)
                    .chain(retain.iter().copied().filter(|p| *p >= layer.lsn_start));
                points
                    .into_iter()
                    .all(|point| covered_by_images(layer, &images, last, point))
            })
            .copied()
            .collect();
        let report = GcReport {
            cutoff,
            kept: names.len() - removed.len(),
            removed,
        };
        if cutoff == old_cutoff && report.removed.is_empty() {
            return Ok(report);
        }
        self.publish(&report.removed, Vec::new(), disk_consistent, Some(cutoff))
            .await?;
        for name in &report.removed {
            crate::layer_file::remove_if_present(&self.dir.join(name.to_string())).await?;
        }
        Ok(report)
    }
}

/// Whether image layers with LSNs in `[low, high]` together cover
/// `layer`'s key range. An image layer is covered only by strictly newer
/// ones: two images at one LSN must not remove each other.
fn covered_by_images(layer: &LayerName, images: &[LayerName], low: Lsn, high: Lsn) -> bool {
    let low = match layer.kind {
        LayerKindName::Image => Lsn(low.0 + 1),
        LayerKindName::Delta => low,
    };
    if low > high {
        return false;
    }
    let mut candidates: Vec<&LayerName> = images
        .iter()
        .filter(|image| {
            image.lsn_start >= low
                && image.lsn_start <= high
                && image.key_start < layer.key_end
                && image.key_end > layer.key_start
        })
        .collect();
    candidates.sort_by_key(|image| image.key_start);
    let mut covered_to = layer.key_start;
    for image in candidates {
        if image.key_start > covered_to {
            return false;
        }
        covered_to = covered_to.max(image.key_end);
        if covered_to >= layer.key_end {
            return true;
        }
    }
    false
}
