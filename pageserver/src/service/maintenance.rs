//! Each timeline's background maintenance on its core: L0 → L1 compaction
//! once enough L0 layers pile up, image layers where reads grow expensive,
//! and GC below the PITR window, each step awaited in turn with a yield
//! between them so GetPage tasks on the core keep running. The receiver's
//! back-pressure ([`crate::wal_receiver::FollowPolicy::l0_max`]) holds
//! ingest while the L0 debt is above its limit, so this task can catch up.

use std::rc::{Rc, Weak};
use std::time::{Duration, SystemTime};

use quire_redo::TenantRedo;
use quire_shard::{GcPolicy, ImagePolicy, Timeline};

use super::core::{Core, ServedTimeline, TenantShard};

/// When and how much maintenance runs.
#[derive(Clone, Copy, Debug)]
pub struct MaintenancePolicy {
    /// How often the timeline is looked at.
    pub period: Duration,
    /// Compact once this many L0 layers exist.
    pub compact_l0_at: usize,
    /// L1 layers of about this many bytes of values.
    pub compact_target_bytes: u64,
    /// Image creation thresholds.
    pub image: ImagePolicy,
    /// What GC keeps.
    pub gc: GcPolicy,
    /// How often GC runs.
    pub gc_period: Duration,
}

impl Default for MaintenancePolicy {
    /// A look every 10 s, compaction from 4 L0 layers into 128 MiB L1
    /// layers, the engine's image policy, GC every 5 minutes with the
    /// engine's GC policy (64 MiB of WAL and 7 days).
    fn default() -> MaintenancePolicy {
        MaintenancePolicy {
            period: Duration::from_secs(10),
            compact_l0_at: 4,
            compact_target_bytes: 128 << 20,
            image: ImagePolicy::default(),
            gc: GcPolicy::default(),
            gc_period: Duration::from_secs(300),
        }
    }
}

/// Starts `served`'s maintenance task on this core (kept in it: dropping
/// the timeline ends the task).
pub fn start(core: &Core, shard: &Rc<TenantShard>, served: &Rc<ServedTimeline>) {
    let weak_shard = Rc::downgrade(shard);
    let id = served.id;
    let retain: Rc<dyn Fn() -> Vec<quire_postgres::Lsn>> = Rc::new(move || {
        let Some(shard) = weak_shard.upgrade() else {
            return Vec::new();
        };
        let children = shard.timelines.borrow();
        children
            .values()
            .filter_map(|t| match t.settings.ancestor() {
                Ok(Some((parent, at))) if parent == id => Some(at),
                _ => None,
            })
            .collect()
    });
    let task = quire_io::spawn_local(run(
        Rc::downgrade(served),
        core.redo.for_tenant(shard.redo_key()),
        MaintenancePolicy::default(),
        retain,
        core.index,
    ));
    *served.maintenance.borrow_mut() = Some(task);
}

/// The L0 layers of `timeline`: its compaction debt.
pub fn l0_layers(timeline: &Timeline) -> usize {
    quire_shard::compact::l0_count(timeline)
}

/// Runs maintenance for `served` until it is dropped; `retain` gives the
/// branch points of its children (GC keeps what they read).
pub async fn run(
    served: Weak<ServedTimeline>,
    redo: TenantRedo,
    policy: MaintenancePolicy,
    retain: Rc<dyn Fn() -> Vec<quire_postgres::Lsn>>,
    core: usize,
) {
    let mut last_images_at = None;
    let mut since_gc = Duration::ZERO;
    loop {
        quire_io::sleep(policy.period).await;
        since_gc += policy.period;
        let Some(served) = served.upgrade() else {
            return;
        };
        let timeline = &served.timeline;
        let name = format!("core {core}: timeline {}", served.id);
        if l0_layers(timeline) >= policy.compact_l0_at {
            match timeline
                .compact_l0(policy.compact_l0_at, policy.compact_target_bytes)
                .await
            {
                Ok(n) if n > 0 => eprintln!("pageserver: {name}: compacted {n} L0 layers"),
                Ok(_) => {}
                Err(error) => eprintln!("pageserver: {name}: compaction failed: {error}"),
            }
            quire_io::yield_now().await;
        }
        let disk_consistent = timeline.disk_consistent_lsn();
        if last_images_at != Some(disk_consistent) {
            match timeline.create_image_layers(&redo, policy.image).await {
                Ok(report) if !report.layers.is_empty() => eprintln!(
                    "pageserver: {name}: {} image layers, {} values",
                    report.layers.len(),
                    report.values
                ),
                Ok(_) => {}
                Err(error) => eprintln!("pageserver: {name}: image creation failed: {error}"),
            }
            last_images_at = Some(disk_consistent);
            quire_io::yield_now().await;
        }
        if since_gc >= policy.gc_period {
            since_gc = Duration::ZERO;
            let cutoff = match timeline.gc_cutoff_for(policy.gc, SystemTime::now()).await {
                Ok(cutoff) => cutoff,
                Err(error) => {
                    eprintln!("pageserver: {name}: GC cutoff: {error}");
                    continue;
                }
            };
            match timeline.gc(cutoff, &retain()).await {
                Ok(report) if !report.removed.is_empty() => eprintln!(
                    "pageserver: {name}: GC to {} removed {} layers",
                    report.cutoff,
                    report.removed.len()
                ),
                Ok(_) => {}
                Err(error) => eprintln!("pageserver: {name}: GC failed: {error}"),
            }
        }
    }
}
