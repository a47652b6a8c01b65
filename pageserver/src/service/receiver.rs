//! Each timeline's WAL receiver on its core: built from the timeline's
//! persisted source (the safekeepers holding the same tenant and timeline
//! ids, or a Postgres 17 primary through a slot), fed by ingest that starts
//! from an import or resumes from the timeline itself after a restart
//! (either way storing only what the shard keeps, `crate::shard_filter`), and
//! run until its task is dropped (timeline or shard deleted) or a fatal
//! error, which the timeline's status then shows.

use std::rc::Rc;

use anyhow::{Result, anyhow};
use quire_safekeeper::wire::TimelineKey;

use super::core::{Core, ServedTimeline, TenantShard};
use super::settings::WalSourceSettings;
use crate::ingest::WalIngest;
use crate::ingest::resume::wal_resume_lsn;
use crate::wal_receiver::conninfo::ConnInfo;
use crate::wal_receiver::primary::PrimarySource;
use crate::wal_receiver::safekeepers::SafekeeperSource;
use crate::wal_receiver::{FollowPolicy, WalSource, spawn_forever};

/// L0 layers past which ingest waits for compaction (maintenance compacts
/// from 4).
pub const L0_MAX: usize = 16;

/// The receiver's source for `served`, if it has one.
pub fn source_of(shard: &TenantShard, served: &ServedTimeline) -> Result<Option<WalSource>> {
    let settings = &served.settings;
    Ok(match &settings.wal_source {
        None => None,
        Some(WalSourceSettings::Safekeepers { safekeepers, token }) => {
            Some(WalSource::Safekeepers(SafekeeperSource {
                safekeepers: safekeepers.clone(),
                key: TimelineKey {
                    tenant: shard.tenant.0,
                    timeline: served.id.0,
                },
                segment_size: settings.segment_size,
                token: token.clone(),
                report_durable: shard.identity.count() == 1,
            }))
        }
        Some(WalSourceSettings::Primary { conninfo, slot }) => {
            let conninfo = ConnInfo::parse(conninfo).map_err(|e| anyhow!("primary: {e}"))?;
            Some(WalSource::Primary(
                PrimarySource::new(
                    conninfo,
                    slot,
                    settings.system_identifier,
                    settings.segment_size,
                )
                .map_err(|e| anyhow!("primary: {e}"))?,
            ))
        }
    })
}

/// Starts `served`'s receiver (when it has a source): with `fresh` ingest
/// state from an import at the timeline's last record LSN, or else
/// resumed from the timeline at the start of the WAL segment holding it
/// (never below the timeline's own WAL start, when known).
pub async fn start(
    core: &Core,
    shard: &TenantShard,
    served: &Rc<ServedTimeline>,
    fresh: Option<WalIngest>,
) -> Result<()> {
    let Some(source) = source_of(shard, served)? else {
        return Ok(());
    };
    let timeline = Rc::clone(&served.timeline);
    let redo = Some((Rc::clone(&core.redo), shard.redo_key()));
    let (ingest, from) = if let Some(ingest) = fresh {
        (ingest, timeline.last_record_lsn())
    } else {
        let from = wal_resume_lsn(
            timeline.last_record_lsn(),
            served.settings.segment_size,
            served.settings.wal_start_lsn()?,
        );
        (WalIngest::resume(Rc::clone(&timeline), redo).await?, from)
    };
    // Every shard takes the whole stream and stores what it keeps.
    let ingest = ingest.with_shard(shard.filter());
    eprintln!(
        "pageserver: core {}: timeline {}/{} follows {} from {from}",
        core.index,
        shard.tenant,
        served.id,
        source.describe()
    );
    let policy = FollowPolicy {
        l0_max: Some(L0_MAX),
        upload_lag_max: shard.remote.is_some().then_some(core.shared.upload_lag_max),
        ..FollowPolicy::default()
    };
    let task = spawn_forever(
        ingest,
        source,
        (from, policy),
        Rc::clone(&served.receiver_gauges),
    );
    let weak = Rc::downgrade(served);
    let index = core.index;
    let watcher = quire_io::spawn_local(async move {
        let ended = task.await;
        let why = match ended {
            Ok(stats) => format!("the receiver ended after {} bytes", stats.bytes),
            Err(error) => format!("{error:#}"),
        };
        eprintln!("pageserver: core {index}: WAL receiver stopped: {why}");
        if let Some(served) = weak.upgrade() {
            *served.receiver_error.borrow_mut() = Some(why);
        }
    });
    *served.receiver.borrow_mut() = Some(watcher);
    Ok(())
}
