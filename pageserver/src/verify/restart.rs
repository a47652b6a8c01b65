//! `quire verify --restart-midway`: ingest stopped halfway, the timeline
//! reloaded from disk and ingest resumed from it (see the parent module).

use std::io::Write;
use std::path::Path;
use std::rc::Rc;

use anyhow::Result;
use quire_postgres::Lsn;
use quire_redo::RedoPool;
use quire_shard::{CoreContext, Timeline};

use super::{CACHE_BYTES, TENANT, TENANT_ID, TIMELINE_ID, ingest_wal};
use crate::import::read_control;
use crate::ingest::{IngestStats, WalIngest, wal_restart_lsn};

/// Ingests `pg_wal` from `start` to the record at `until` with a restart
/// in between (see the module documentation); returns the resumed ingest,
/// the end of the last record and the counters of both halves.
pub(super) async fn ingest_with_restart(
    mut ingest: WalIngest,
    pgdata: &Path,
    dir: &Path,
    (start, until): (Lsn, Lsn),
    pool: &Rc<RedoPool>,
    out: &mut impl Write,
) -> Result<(WalIngest, Lsn, IngestStats)> {
    let wal_dir = pgdata.join("pg_wal");
    let midway = Lsn(start.0 + (until.0 - start.0) / 2);
    let stopped = ingest_wal(&mut ingest, &wal_dir, start, midway).await?;
    ingest.flush().await?;
    let mut stats = ingest.stats();
    let carried = ingest.vm_pages_without_map().clone();
    // The last reference to the timeline: its layers and the core's cache go.
    drop(ingest);
    let core = CoreContext::new(CACHE_BYTES);
    let timeline = Rc::new(Timeline::load(dir, TENANT_ID, TIMELINE_ID, core, None).await?);
    let resumed_at = timeline.last_record_lsn();
    let mut ingest = WalIngest::resume(timeline, Some((Rc::clone(pool), TENANT))).await?;
    ingest.carry_vm_pages_without_map(carried);
    let segment_size = read_control(pgdata)?.xlog_seg_size.get();
    writeln!(
        out,
        "restarted midway: ingested to {stopped}, flushed, reloaded the timeline at {resumed_at}, resumed with {} relation forks and {} SLRU pages, WAL read again from {}",
        ingest.relation_sizes().len(),
        ingest.slru_pages().len(),
        wal_restart_lsn(resumed_at, segment_size),
    )?;
    let last = ingest_wal(&mut ingest, &wal_dir, resumed_at, until).await?;
    stats += ingest.stats();
    Ok((ingest, last, stats))
}
